"""trained embedder versions (parent, checkpoint, card, pruned), the policy's embedder weights, verifier fusion

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("embedders") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("weights_path", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("card", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("pruned_at", sa.DateTime(), nullable=True))
        batch.create_foreign_key("fk_embedders_parent", "embedders", ["parent_id"], ["id"])
    with op.batch_alter_table("decision_policies") as batch:
        batch.add_column(sa.Column("embedder_weights", sa.JSON(), nullable=True))
        batch.drop_constraint("ck_decision_policies_fusion", type_="check")
        batch.create_check_constraint("ck_decision_policies_fusion", "fusion IN ('wildfusion', 'learned', 'verifier')")


def downgrade() -> None:
    with op.batch_alter_table("decision_policies") as batch:
        batch.drop_constraint("ck_decision_policies_fusion", type_="check")
        batch.create_check_constraint("ck_decision_policies_fusion", "fusion IN ('wildfusion', 'learned')")
        batch.drop_column("embedder_weights")
    with op.batch_alter_table("embedders") as batch:
        batch.drop_constraint("fk_embedders_parent", type_="foreignkey")
        batch.drop_column("pruned_at")
        batch.drop_column("card")
        batch.drop_column("weights_path")
        batch.drop_column("parent_id")
