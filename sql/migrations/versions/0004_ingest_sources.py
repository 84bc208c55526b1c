"""What ingest last saw under each source name (size, mtime/ETag, outcome), so a rerun skips
unchanged objects before reading them.

Revision ID: 0004_ingest_sources
Revises: 0003_calibration_design
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_ingest_sources"
down_revision = "0003_calibration_design"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uri_key", sa.String(length=64), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=True),
        sa.Column("etag", sa.String(length=128), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("limits_hash", sa.String(length=16), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_objects")),
        sa.UniqueConstraint("uri_key", name=op.f("uq_source_objects_uri_key")),
    )


def downgrade() -> None:
    op.drop_table("source_objects")
