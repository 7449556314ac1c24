"""pairs of individuals a person declared different animals (a dismissed possible duplicate, never proposed
again)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 01:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "distinct_pairs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("first_id", sa.Integer(), sa.ForeignKey("individuals.id"), nullable=False, index=True),
        sa.Column("second_id", sa.Integer(), sa.ForeignKey("individuals.id"), nullable=False, index=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("first_id", "second_id", name="uq_distinct_pairs"),
        sa.CheckConstraint("first_id < second_id", name="ck_distinct_pairs_order"),
    )


def downgrade() -> None:
    op.drop_table("distinct_pairs")
