"""initial catalog

Revision ID: 0001
Revises:
Create Date: 2026-11-26 19:58:10.473087
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("matcher", sa.String(length=100), nullable=False),
        sa.Column("species", sa.String(length=100), nullable=True),
        sa.Column("model", sa.JSON(), nullable=False),
        sa.Column("n_pairs", sa.Integer(), nullable=False),
        sa.Column("inputs_summary", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "embedders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("collection", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("collection"),
        sa.UniqueConstraint("name", "version", name="uq_embedders_name_version"),
    )
    op.create_table(
        "individuals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("species", sa.String(length=100), nullable=False),
        sa.Column("species_seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by_decision_id", sa.Integer(), nullable=True),
        sa.Column("merged_into_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["merged_into_id"],
            ["individuals.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code"),
        sa.UniqueConstraint("species", "name", name="uq_individuals_species_name"),
        sa.UniqueConstraint("species", "species_seq", name="uq_individuals_species_seq"),
    )
    with op.batch_alter_table("individuals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_individuals_merged_into_id"), ["merged_into_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_individuals_species"), ["species"], unique=False)

    op.create_table(
        "surveys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("season", sa.String(length=100), nullable=True),
        sa.Column("year", sa.Integer(), nullable=True),
        sa.Column("start_date", sa.Date(), nullable=True),
        sa.Column("end_date", sa.Date(), nullable=True),
        sa.Column("area", sa.String(length=200), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("species", sa.String(length=100), nullable=False),
        sa.Column("viewpoint", sa.String(length=50), nullable=True),
        sa.Column("captured_at", sa.DateTime(), nullable=True),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("survey_id", sa.Integer(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("ingested_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'indexed')", name="ck_images_status"),
        sa.ForeignKeyConstraint(
            ["survey_id"],
            ["surveys.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_images_captured_at"), ["captured_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_images_species"), ["species"], unique=False)
        batch_op.create_index(batch_op.f("ix_images_survey_id"), ["survey_id"], unique=False)

    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("individual_id", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("profile", sa.String(length=50), nullable=False),
        sa.Column("model_versions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("outcome IN ('match', 'new')", name="ck_decisions_outcome"),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.ForeignKeyConstraint(
            ["individual_id"],
            ["individuals.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_decisions_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_decisions_individual_id"), ["individual_id"], unique=False)

    # individuals <-> decisions reference each other: this key is added once both tables exist
    with op.batch_alter_table("individuals", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_individuals_created_by_decision", "decisions", ["created_by_decision_id"], ["id"]
        )

    op.create_table(
        "sightings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("individual_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "method IN ('reference', 'automatic', 'confirmed', 'corrected')", name="ck_sightings_method"
        ),
        sa.CheckConstraint("status IN ('active', 'rejected')", name="ck_sightings_status"),
        sa.ForeignKeyConstraint(
            ["decision_id"],
            ["decisions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.ForeignKeyConstraint(
            ["individual_id"],
            ["individuals.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id"),
    )
    with op.batch_alter_table("sightings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sightings_decision_id"), ["decision_id"], unique=False)
        batch_op.create_index("ix_sightings_individual_status", ["individual_id", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("individuals", schema=None) as batch_op:
        batch_op.drop_constraint("fk_individuals_created_by_decision", type_="foreignkey")
    with op.batch_alter_table("sightings", schema=None) as batch_op:
        batch_op.drop_index("ix_sightings_individual_status")
        batch_op.drop_index(batch_op.f("ix_sightings_decision_id"))

    op.drop_table("sightings")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_decisions_individual_id"))
        batch_op.drop_index(batch_op.f("ix_decisions_image_id"))

    op.drop_table("decisions")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_survey_id"))
        batch_op.drop_index(batch_op.f("ix_images_species"))
        batch_op.drop_index(batch_op.f("ix_images_captured_at"))

    op.drop_table("images")
    op.drop_table("surveys")
    with op.batch_alter_table("individuals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_individuals_species"))
        batch_op.drop_index(batch_op.f("ix_individuals_merged_into_id"))

    op.drop_table("individuals")
    op.drop_table("embedders")
    op.drop_table("calibrations")
