"""Integrity under faults: failure kind and attempts of predictions, rejected annotations,
Label Studio project ids stored by title.

Additive only: existing failed predictions get ``failure_kind`` NULL (treated as permanent, so
nothing is retried behind the operator's back) and ``attempts`` 1.

Revision ID: 0002_integrity
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0002_integrity"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failure_kind", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("retry_after", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "annotation_rejects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spec", sa.String(length=64), nullable=False),
        sa.Column("ls_project_id", sa.Integer(), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=False),
        sa.Column("ls_annotation_id", sa.Integer(), nullable=False),
        sa.Column("ls_updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("review_task_id", sa.Integer(), nullable=True),
        sa.Column("annotator", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("result", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["review_task_id"],
            ["review_tasks.id"],
            name=op.f("fk_annotation_rejects_review_task_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_rejects")),
        sa.UniqueConstraint("ls_annotation_id", "ls_updated_at", name="uq_annotation_rejects_ls_version"),
    )
    with op.batch_alter_table("annotation_rejects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_annotation_rejects_spec"), ["spec"], unique=False)
    op.create_table(
        "ls_projects",
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("spec", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("title", name=op.f("pk_ls_projects")),
    )


def downgrade() -> None:
    op.drop_table("ls_projects")
    with op.batch_alter_table("annotation_rejects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_annotation_rejects_spec"))
    op.drop_table("annotation_rejects")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("retry_after")
        batch_op.drop_column("attempts")
        batch_op.drop_column("failure_kind")
