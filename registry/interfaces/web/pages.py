"""What every workspace page and form shares: the templates, who is signed in (a session cookie) and what their
token's scope lets them do, the CSRF check on every post, and curation run through the registry's writer.

No `from __future__ import annotations` here: FastAPI resolves the routes' `Annotated` dependencies from the
annotations themselves.
"""

import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from registry.curation.curator import Curator
from registry.interfaces.service import Service
from registry.interfaces.web import sessions
from registry.interfaces.web.sessions import COOKIE, Browser
from registry.interfaces.web.thumbnails import Thumbnails
from registry.store.catalog import CatalogError

HERE = Path(__file__).resolve().parent
UI = "/ui"  # the workspace's pages and forms (the JSON API keeps the paths it has always had); "/" leads here
FILTERS = ("species", "survey", "location", "outcome", "margin")
templates = Jinja2Templates(directory=str(HERE / "templates"))


class SignInRequired(Exception):
    """Raised by page dependencies; the app turns it into a redirect to the sign-in page."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def service_of(request: Request) -> Service:
    return request.app.state.service


def thumbnails_of(request: Request) -> Thumbnails:
    """The server's thumbnail cache (made on first use)."""
    state = request.app.state
    if getattr(state, "thumbnails", None) is None:
        service = service_of(request)
        state.thumbnails = Thumbnails(service.settings.data_dir / "thumbnails", service.reads,
                                      service.settings.orientation_rules)
    return state.thumbnails


def person(request: Request) -> Browser:
    """The signed-in person viewing a page; anyone else is sent to sign in first."""
    found = sessions.browser(service_of(request).reads, request.cookies.get(COOKIE))
    if found is None:
        raise SignInRequired(str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""))
    return found


Person = Annotated[Browser, Depends(person)]
ServiceDep = Annotated[Service, Depends(service_of)]


def allowed(request: Request, csrf: str | None, needed: str) -> Browser:
    """The person behind a form post, if it carries their CSRF secret and their scope covers `needed`."""
    found = sessions.browser(service_of(request).reads, request.cookies.get(COOKIE))
    if found is None:
        raise HTTPException(403, "sign in first")
    if not sessions.csrf_ok(found, csrf):
        raise HTTPException(403, "this form is stale or was not sent by the workspace (CSRF check failed)")
    if not found.may(needed):
        raise HTTPException(403, f"your token's scope is {found.scope!r}; this needs {needed!r}")
    return found


def page(request: Request, name: str, who: Browser | None, **context: Any) -> HTMLResponse:
    began = time.perf_counter()
    response = templates.TemplateResponse(request, name, {"who": who, **context})
    response.headers["Server-Timing"] = f"render;dur={(time.perf_counter() - began) * 1000:.1f}"
    response.headers["Cache-Control"] = "no-store"
    return response


def curate(service: Service, who: Browser, work: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Run a curation through the registry's writer; a refusal comes back as a message for the page."""
    try:
        return service.run(lambda r: work(Curator(r.stores, who.name))), None
    except CatalogError as exc:  # CurationError included: the reason is the reviewer's to read
        return None, str(exc)


def query_string(filters: dict[str, Any]) -> str:
    kept = {k: v for k, v in filters.items() if v not in (None, "")}
    return ("?" + urlencode(kept)) if kept else ""


def local_target(target: str, default: str) -> str:
    """A redirect target from a form: a path on this server, never another site."""
    return target if target.startswith("/") and not target.startswith("//") else default


TITLES = {400: "That request cannot be read", 403: "Not allowed", 404: "Not found", 405: "Not allowed here",
          409: "Refused", 413: "Too large", 422: "That request cannot be read"}


def wants_page(request: Request) -> bool:
    """A person in a browser (a workspace path, or a browser asking for HTML) gets errors as pages, not JSON."""
    return request.url.path.startswith(UI) or (
        "text/html" in request.headers.get("accept", "") and not request.headers.get("authorization"))


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """An error as a page with a way back; signed out in another tab, the way back is signing in again."""
    who = sessions.browser(service_of(request).reads, request.cookies.get(COOKIE))
    response = page(request, "error.html", who, status=status, message=message,
                    title=TITLES.get(status, "Something went wrong"),
                    back=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""))
    response.status_code = status
    return response
