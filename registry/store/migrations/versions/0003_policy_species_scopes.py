"""decision policy versions, species code prefixes, retired individuals, token scopes and expiry

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "species",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("code_prefix", sa.String(length=20), nullable=False),
        sa.Column("next_seq", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("code_prefix"),
    )
    op.create_table(
        "decision_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(length=50), nullable=False),
        sa.Column("model_versions", sa.JSON(), nullable=False),
        sa.Column("matcher_settings", sa.JSON(), nullable=False),
        sa.Column("calibration_batches", sa.JSON(), nullable=False),
        sa.Column("fusion", sa.String(length=16), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("default_threshold", sa.Float(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("uncalibrated_threshold", sa.Float(), nullable=False),
        sa.Column("expected", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("fusion IN ('wildfusion', 'learned')", name="ck_decision_policies_fusion"),
        sa.ForeignKeyConstraint(["parent_id"], ["decision_policies.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("individuals") as batch:
        batch.add_column(sa.Column("retired_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("policy_id", sa.Integer(), nullable=True))
        batch.create_index("ix_decisions_policy_id", ["policy_id"], unique=False)
        batch.create_foreign_key("fk_decisions_policy_id", "decision_policies", ["policy_id"], ["id"])
    with op.batch_alter_table("api_tokens") as batch:
        # tokens made before scopes existed could do everything: they keep that
        batch.add_column(sa.Column("scope", sa.String(length=16), nullable=False, server_default="admin"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
        batch.create_check_constraint("ck_api_tokens_scope", "scope IN ('read', 'review', 'admin')")
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("scope", server_default=None)

    # every species that already has individuals keeps the prefix its codes use, and continues its numbering
    connection = op.get_bind()
    rows = connection.execute(sa.text(
        "SELECT species, MAX(species_seq), MIN(code) FROM individuals GROUP BY species ORDER BY species")).all()
    taken: set[str] = set()
    for species, max_seq, code in rows:
        prefix = re.sub(r"-\d+$", "", code)
        if prefix in taken:  # two species shared a prefix (the defect this revision fixes): give a new one
            prefix = f"{prefix}{len(taken) + 1}"
        taken.add(prefix)
        connection.execute(sa.text("INSERT INTO species (name, code_prefix, next_seq, created_at) "
                                   "VALUES (:n, :p, :s, CURRENT_TIMESTAMP)"),
                           {"n": species, "p": prefix, "s": (max_seq or 0) + 1})


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint("ck_api_tokens_scope", type_="check")
        batch.drop_column("expires_at")
        batch.drop_column("scope")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_constraint("fk_decisions_policy_id", type_="foreignkey")
        batch.drop_index("ix_decisions_policy_id")
        batch.drop_column("policy_id")
    with op.batch_alter_table("individuals") as batch:
        batch.drop_column("retired_at")
    op.drop_table("decision_policies")
    op.drop_table("species")
