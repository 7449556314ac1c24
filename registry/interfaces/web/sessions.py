"""Signed-in browsers: a token is exchanged once for a server-side session (a random key in an HttpOnly,
SameSite=Strict cookie; only its SHA-256 is stored) with its own CSRF secret, which every form posts back.

A session lives as long as its token: revoking or expiring the token ends it too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from registry.interfaces import tokens
from registry.store.catalog import Catalog
from registry.store.tables import ApiToken, WebSession, utcnow

COOKIE = "registry_session"
LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class Browser:
    """Who is signed in, with what scope, and the CSRF secret their forms must carry."""

    name: str
    scope: str
    csrf: str

    def may(self, needed: str) -> bool:
        return tokens.allows(self.scope, needed)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def sign_in(catalog: Catalog, token: str) -> str | None:
    """A new session key for a valid token (None for anything else)."""
    caller = tokens.verify(catalog, token.strip())
    if caller is None:
        return None
    key = secrets.token_urlsafe(32)
    with catalog.transaction() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == caller.name, ApiToken.revoked_at.is_(None)))
        session.add(WebSession(key_sha256=_digest(key), token_id=row.id,  # type: ignore[union-attr]
                               csrf=secrets.token_urlsafe(24), expires_at=utcnow() + LIFETIME))
    return key


def browser(catalog: Catalog, key: str | None) -> Browser | None:
    """The signed-in person behind a session key, if the session and its token are both still valid."""
    if not key:
        return None
    now = utcnow()
    with catalog.transaction() as session:
        found = session.execute(
            select(WebSession, ApiToken).join(ApiToken, ApiToken.id == WebSession.token_id)
            .where(WebSession.key_sha256 == _digest(key), WebSession.revoked_at.is_(None),
                   ApiToken.revoked_at.is_(None))).first()
        if found is None:
            return None
        web, token = found
        if web.expires_at <= now or (token.expires_at is not None and token.expires_at <= now):
            return None
        return Browser(token.name, token.scope, web.csrf)


def csrf_ok(person: Browser, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(person.csrf, submitted or "")


def sign_out(catalog: Catalog, key: str | None) -> None:
    if not key:
        return
    with catalog.transaction() as session:
        row = session.scalar(select(WebSession).where(WebSession.key_sha256 == _digest(key)))
        if row is not None and row.revoked_at is None:
            row.revoked_at = utcnow()
