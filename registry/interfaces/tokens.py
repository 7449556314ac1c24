"""Bearer tokens for the HTTP API: created by `registry token create NAME`, shown once, stored as SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from registry.store.catalog import Catalog, CatalogError
from registry.store.tables import ApiToken, utcnow


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


SCOPES = ("read", "review", "admin")  # each includes the ones before it


def allows(scope: str, needed: str) -> bool:
    return SCOPES.index(scope) >= SCOPES.index(needed)


@dataclass(frozen=True)
class Caller:
    name: str
    scope: str


def create(catalog: Catalog, name: str, scope: str = "review", expires_days: float | None = None) -> str:
    if scope not in SCOPES:
        raise CatalogError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
    token = "reg_" + secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(days=expires_days) if expires_days is not None else None
    try:
        with catalog.transaction() as session:
            session.add(ApiToken(name=name, token_sha256=_digest(token), scope=scope, expires_at=expires))
    except IntegrityError as exc:
        raise CatalogError(f"a token named {name!r} exists already (revoke it first)") from exc
    return token


def verify(catalog: Catalog, token: str) -> Caller | None:
    """Who the token belongs to and its scope, if it is valid, not revoked and not expired."""
    digest = _digest(token)
    with catalog.transaction() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest, ApiToken.revoked_at.is_(None)))
        if row is None or not hmac.compare_digest(row.token_sha256, digest):
            return None
        if row.expires_at is not None and row.expires_at <= utcnow():
            return None
        return Caller(row.name, row.scope)


def revoke(catalog: Catalog, name: str) -> None:
    with catalog.transaction() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)))
        if row is None:
            raise CatalogError(f"no active token named {name!r}")
        row.revoked_at = utcnow()
        row.name = f"{row.name}#revoked-{row.id}"  # the name can be reused


def listing(catalog: Catalog) -> list[dict[str, Any]]:
    with catalog.transaction() as session:
        return [{"name": t.name, "scope": t.scope, "created_at": t.created_at.isoformat(timespec="seconds"),
                 "expires_at": t.expires_at.isoformat(timespec="seconds") if t.expires_at else None,
                 "revoked_at": t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else None}
                for t in session.scalars(select(ApiToken).order_by(ApiToken.id))]
