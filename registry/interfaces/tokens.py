"""Bearer tokens for the HTTP API: created by `registry token create NAME`, shown once, stored as SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from registry.store.catalog import Catalog, CatalogError
from registry.store.tables import ApiToken, utcnow


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(catalog: Catalog, name: str) -> str:
    token = "reg_" + secrets.token_urlsafe(32)
    try:
        with catalog.transaction() as session:
            session.add(ApiToken(name=name, token_sha256=_digest(token)))
    except IntegrityError as exc:
        raise CatalogError(f"a token named {name!r} exists already (revoke it first)") from exc
    return token


def verify(catalog: Catalog, token: str) -> str | None:
    """The token's name if it is valid and not revoked."""
    digest = _digest(token)
    with catalog.transaction() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest, ApiToken.revoked_at.is_(None)))
        return row.name if row is not None and hmac.compare_digest(row.token_sha256, digest) else None


def revoke(catalog: Catalog, name: str) -> None:
    with catalog.transaction() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)))
        if row is None:
            raise CatalogError(f"no active token named {name!r}")
        row.revoked_at = utcnow()
        row.name = f"{row.name}#revoked-{row.id}"  # the name can be reused


def listing(catalog: Catalog) -> list[dict[str, Any]]:
    with catalog.transaction() as session:
        return [{"name": t.name, "created_at": t.created_at.isoformat(timespec="seconds"),
                 "revoked_at": t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else None}
                for t in session.scalars(select(ApiToken).order_by(ApiToken.id))]
