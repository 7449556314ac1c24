"""web workspace sessions (a browser signed in with a token: cookie key hash, CSRF secret, expiry); each
decision's margin in an indexed column (the review queue becomes one indexed query), filled for past decisions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    from registry.decide.scoring import decision_margin

    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("margin", sa.Float(), nullable=True))
        batch.add_column(sa.Column("margin_reason", sa.String(length=200), nullable=True))
        batch.create_index("ix_decisions_margin", ["margin"])
    decisions = sa.table("decisions", sa.column("id", sa.Integer()), sa.column("outcome", sa.String()),
                         sa.column("threshold", sa.Float()), sa.column("candidates", sa.JSON()),
                         sa.column("margin", sa.Float()), sa.column("margin_reason", sa.String()))
    bind = op.get_bind()
    rows = bind.execute(sa.select(decisions.c.id, decisions.c.outcome, decisions.c.threshold,
                                  decisions.c.candidates)).all()
    for decision_id, outcome, threshold, candidates in rows:
        ranked = candidates or []
        margin, reason = decision_margin(outcome, [c["score"] for c in ranked], [c["code"] for c in ranked],
                                         threshold)
        bind.execute(decisions.update().where(decisions.c.id == decision_id)
                     .values(margin=margin, margin_reason=reason))
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key_sha256", sa.String(length=64), nullable=False, unique=True),
        sa.Column("token_id", sa.Integer(), sa.ForeignKey("api_tokens.id"), nullable=False, index=True),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("web_sessions")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_index("ix_decisions_margin")
        batch.drop_column("margin_reason")
        batch.drop_column("margin")
