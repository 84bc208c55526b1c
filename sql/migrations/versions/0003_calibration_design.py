"""Sampling design of every routing decision: how an item came to be reviewed and with what probability.

Calibration weights reviewed items by the inverse of their inclusion probability at routing time;
without these columns the review-routed items (chosen *because* a field was low) would be pooled
with the audit sample as if both were random samples of what a threshold lets through.

Revision ID: 0003_calibration_design
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_calibration_design"
down_revision = "0002_integrity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_tasks") as t:
        # "full_review" | "review" | "audit" | "auto"; NULL for rows routed before this revision
        t.add_column(sa.Column("design", sa.String(length=16), nullable=True))
        # probability that this item was reviewed, fixed at routing time (1, 1, audit rate, audit rate)
        t.add_column(sa.Column("inclusion_prob", sa.Float(), nullable=True))
        # the audit rate in force when the item was routed (the predictable floor of inclusion_prob)
        t.add_column(sa.Column("audit_rate", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("review_tasks") as t:
        t.drop_column("audit_rate")
        t.drop_column("inclusion_prob")
        t.drop_column("design")
