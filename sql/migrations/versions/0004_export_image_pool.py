"""Per-spec content-addressed image pool of the dataset versions (zero-copy versions).

Revision ID: 0004_export_image_pool
Revises: 0003_calibration_design
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_export_image_pool"
down_revision = "0004_ingest_sources"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spec", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_images")),
        sa.UniqueConstraint("spec", "name", name="uq_pool_images_spec_name"),
    )


def downgrade() -> None:
    op.drop_table("pool_images")
