"""annotations (one animal in one photo: what is embedded, indexed, decided and sighted) and events (bursts);
each existing photo becomes one whole-image annotation with the photo's id, so vector points (id = annotation
id), cached features (keyed by content) and decisions stay valid without re-describing anything

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("code", sa.String(length=200), nullable=False, unique=True),
        sa.Column("deployment_id", sa.Integer(), sa.ForeignKey("deployments.id"), nullable=True, index=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id"), nullable=False, index=True),
        sa.Column("species", sa.String(length=100), nullable=False, index=True),
        sa.Column("viewpoint", sa.String(length=50), nullable=True),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("bbox_x", sa.Float(), nullable=True),
        sa.Column("bbox_y", sa.Float(), nullable=True),
        sa.Column("bbox_w", sa.Float(), nullable=True),
        sa.Column("bbox_h", sa.Float(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.Integer(), sa.ForeignKey("events.id"), nullable=True, index=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'indexed')", name="ck_annotations_status"),
        sa.CheckConstraint("source IN ('whole-image', 'manual', 'manifest', 'megadetector', 'camtrap-dp')",
                           name="ck_annotations_source"),
        sa.UniqueConstraint("image_id", "region", name="uq_annotations_image_region"),
    )
    op.execute("INSERT INTO annotations (id, image_id, species, viewpoint, region, source, status, created_at) "
               "SELECT id, id, species, viewpoint, 'whole', 'whole-image', status, ingested_at FROM images")
    if op.get_bind().dialect.name == "postgresql":  # ids were given explicitly: the sequence continues after them
        op.execute("SELECT setval(pg_get_serial_sequence('annotations', 'id'), "
                   "COALESCE((SELECT MAX(id) FROM annotations), 0) + 1, false)")
    for table in ("sightings", "decisions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("annotation_id", sa.Integer(), nullable=True))
            if table == "decisions":
                batch.add_column(sa.Column("event_id", sa.Integer(), nullable=True))
        op.execute(f"UPDATE {table} SET annotation_id = image_id")
        with op.batch_alter_table(table) as batch:
            if table == "decisions":
                batch.drop_index("ix_decisions_image_id")
            batch.drop_column("image_id")
            batch.alter_column("annotation_id", existing_type=sa.Integer(), nullable=False)
            batch.create_foreign_key(f"fk_{table}_annotation", "annotations", ["annotation_id"], ["id"])
            if table == "sightings":
                batch.create_unique_constraint("uq_sightings_annotation", ["annotation_id"])
            else:
                batch.create_index("ix_decisions_annotation_id", ["annotation_id"])
                batch.create_foreign_key("fk_decisions_event", "events", ["event_id"], ["id"])
                batch.create_index("ix_decisions_event_id", ["event_id"])
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_species")
        batch.drop_constraint("ck_images_status", type_="check")
        for column in ("species", "viewpoint", "status"):
            batch.drop_column(column)


def downgrade() -> None:
    """Back to one sighting per photo; refused when a photo holds several annotations (they cannot be folded)."""
    crowded = op.get_bind().execute(sa.text(
        "SELECT image_id FROM annotations GROUP BY image_id HAVING COUNT(*) > 1 LIMIT 1")).first()
    if crowded is not None:
        raise RuntimeError(f"image {crowded[0]} holds several annotations; a photo-per-sighting schema cannot keep "
                           "them: restore the backup taken before upgrading")
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("species", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("viewpoint", sa.String(length=50), nullable=True))
        batch.add_column(sa.Column("status", sa.String(length=16), nullable=True))
    for column in ("species", "viewpoint", "status"):
        op.execute(f"UPDATE images SET {column} = (SELECT a.{column} FROM annotations a WHERE a.image_id = images.id)")
    op.execute("UPDATE images SET species = 'unknown' WHERE species IS NULL")
    op.execute("UPDATE images SET status = 'pending' WHERE status IS NULL")
    with op.batch_alter_table("images") as batch:
        batch.alter_column("species", existing_type=sa.String(length=100), nullable=False)
        batch.alter_column("status", existing_type=sa.String(length=16), nullable=False)
        batch.create_check_constraint("ck_images_status", "status IN ('pending', 'indexed')")
        batch.create_index("ix_images_species", ["species"])
    for table in ("sightings", "decisions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("image_id", sa.Integer(), nullable=True))
        op.execute(f"UPDATE {table} SET image_id = (SELECT a.image_id FROM annotations a "
                   f"WHERE a.id = {table}.annotation_id)")
        with op.batch_alter_table(table) as batch:
            if table == "sightings":
                batch.drop_constraint("uq_sightings_annotation", type_="unique")
            else:
                batch.drop_index("ix_decisions_event_id")
                batch.drop_constraint("fk_decisions_event", type_="foreignkey")
                batch.drop_column("event_id")
                batch.drop_index("ix_decisions_annotation_id")
            batch.drop_constraint(f"fk_{table}_annotation", type_="foreignkey")
            batch.drop_column("annotation_id")
            batch.alter_column("image_id", existing_type=sa.Integer(), nullable=False)
            batch.create_foreign_key(f"fk_{table}_image", "images", ["image_id"], ["id"])
            if table == "sightings":
                batch.create_unique_constraint("uq_sightings_image", ["image_id"])
            else:
                batch.create_index("ix_decisions_image_id", ["image_id"])
    op.drop_table("annotations")
    op.drop_table("events")
