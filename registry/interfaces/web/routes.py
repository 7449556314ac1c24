"""The workspace's pages and form posts, assembled: signing in (`signin`), the review queue and match pages
(`review_pages`), individuals (`individual_pages`), a survey's new animals reviewed as groups
(`discovery_pages`), duplicates and the audit trail (`activity`), all sharing
`pages` (templates, the signed-in person, CSRF, curation through the registry's writer). Every read goes
through the catalog's read functions and the review module, every change through `Curator` (an audit row each,
undoable), exactly as the CLI and the API do.

Sign-in exchanges a token for a session cookie (`sessions`); every POST carries the session's CSRF secret, and
the token's scope decides what a page offers and what a post may do (`read` browses, `review` decides and
edits attributes, `admin` also merges and undoes).
"""

from fastapi import APIRouter

from registry.interfaces.web import activity, discovery_pages, individual_pages, review_pages, signin
from registry.interfaces.web.activity import DUPLICATES_REPORT
from registry.interfaces.web.pages import HERE, UI, SignInRequired

__all__ = ["DUPLICATES_REPORT", "HERE", "UI", "SignInRequired", "build_router"]


def build_router() -> APIRouter:
    router = APIRouter(prefix=UI, include_in_schema=False)
    for part in (signin, review_pages, individual_pages, discovery_pages, activity):
        router.include_router(part.router)
    return router
