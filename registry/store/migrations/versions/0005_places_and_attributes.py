"""locations and deployments (camera operating intervals), photos placed in them, individual attributes (sex,
life stage, nickname, alternate ids, notes), attribute edits in the audit trail, species' scientific names

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('confirm', 'reassign', 'reject', 'merge', 'split', 'undo')"
NEW_KINDS = "kind IN ('confirm', 'reassign', 'reject', 'merge', 'split', 'undo', 'edit')"


def upgrade() -> None:
    op.create_table(
        "locations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False, unique=True),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("code", sa.String(length=200), nullable=False, unique=True),
        sa.Column("location_id", sa.Integer(), sa.ForeignKey("locations.id"), nullable=True, index=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("setup", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("ended_at IS NULL OR started_at IS NULL OR ended_at >= started_at",
                           name="ck_deployments_interval"),
    )
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("location_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("deployment_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_images_location", "locations", ["location_id"], ["id"])
        batch.create_foreign_key("fk_images_deployment", "deployments", ["deployment_id"], ["id"])
        batch.create_index("ix_images_location_id", ["location_id"])
        batch.create_index("ix_images_deployment_id", ["deployment_id"])
    with op.batch_alter_table("individuals") as batch:
        batch.add_column(sa.Column("sex", sa.String(length=16), nullable=False, server_default="unknown"))
        batch.add_column(sa.Column("life_stage", sa.String(length=16), nullable=False, server_default="unknown"))
        batch.add_column(sa.Column("nickname", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("alternate_ids", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch.create_check_constraint("ck_individuals_sex", "sex IN ('female', 'male', 'unknown')")
        batch.create_check_constraint("ck_individuals_life_stage",
                                      "life_stage IN ('adult', 'subadult', 'juvenile', 'unknown')")
    with op.batch_alter_table("changes") as batch:
        batch.drop_constraint("ck_changes_kind", type_="check")
        batch.create_check_constraint("ck_changes_kind", NEW_KINDS)
    with op.batch_alter_table("species") as batch:
        batch.add_column(sa.Column("scientific_name", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("species") as batch:
        batch.drop_column("scientific_name")
    with op.batch_alter_table("changes") as batch:
        batch.drop_constraint("ck_changes_kind", type_="check")
        batch.create_check_constraint("ck_changes_kind", OLD_KINDS)
    with op.batch_alter_table("individuals") as batch:
        batch.drop_constraint("ck_individuals_life_stage", type_="check")
        batch.drop_constraint("ck_individuals_sex", type_="check")
        for column in ("notes", "alternate_ids", "nickname", "life_stage", "sex"):
            batch.drop_column(column)
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_deployment_id")
        batch.drop_index("ix_images_location_id")
        batch.drop_constraint("fk_images_deployment", type_="foreignkey")
        batch.drop_constraint("fk_images_location", type_="foreignkey")
        batch.drop_column("deployment_id")
        batch.drop_column("location_id")
    op.drop_table("deployments")
    op.drop_table("locations")
