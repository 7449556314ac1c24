"""each location's time zone (naive camera times are read in it, then stored as UTC); the review margins of
decisions made on raw match counts put on the calibrated scale (a fraction of their threshold)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 15:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RAW_SCORER = "raw-local-matches"


def _remargin(probabilities: bool) -> None:
    from registry.decide.scoring import decision_margin

    decisions = sa.table("decisions", sa.column("id", sa.Integer()), sa.column("outcome", sa.String()),
                         sa.column("threshold", sa.Float()), sa.column("candidates", sa.JSON()),
                         sa.column("model_versions", sa.JSON()), sa.column("margin", sa.Float()),
                         sa.column("margin_reason", sa.String()))
    bind = op.get_bind()
    rows = bind.execute(sa.select(decisions.c.id, decisions.c.outcome, decisions.c.threshold, decisions.c.candidates,
                                  decisions.c.model_versions)).all()
    for decision_id, outcome, threshold, candidates, versions in rows:
        if (versions or {}).get("scorer") != RAW_SCORER:
            continue
        ranked = candidates or []
        margin, reason = decision_margin(outcome, [c["score"] for c in ranked], [c["code"] for c in ranked],
                                         threshold, probabilities)
        bind.execute(decisions.update().where(decisions.c.id == decision_id)
                     .values(margin=margin, margin_reason=reason))


def upgrade() -> None:
    with op.batch_alter_table("locations") as batch:
        batch.add_column(sa.Column("time_zone", sa.String(length=64), nullable=True))
    _remargin(probabilities=False)


def downgrade() -> None:
    _remargin(probabilities=True)
    with op.batch_alter_table("locations") as batch:
        batch.drop_column("time_zone")
