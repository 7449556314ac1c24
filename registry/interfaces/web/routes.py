"""The workspace's pages and form posts. Every read goes through the catalog's read functions and the review
module, every change through `Curator` (an audit row each, undoable), exactly as the CLI and the API do.

Sign-in exchanges a token for a session cookie (`sessions`); every POST carries the session's CSRF secret, and
the token's scope decides what a page offers and what a post may do (`read` browses, `review` decides and
edits attributes, `admin` also merges and undoes).

No `from __future__ import annotations` here: FastAPI resolves the routes' `Annotated` dependencies from the
annotations themselves, and the aliases live inside `build_router`.
"""

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from registry.curation import review
from registry.curation.curator import CurationError, Curator
from registry.interfaces.web import sessions
from registry.interfaces.web.sessions import COOKIE, Browser
from registry.interfaces.web.thumbnails import Thumbnails
from registry.matching.imaging import ImageError
from registry.store.catalog import CatalogError

if TYPE_CHECKING:
    from registry.interfaces.service import Service

HERE = Path(__file__).resolve().parent
UI = "/ui"  # the workspace's pages and forms (the JSON API keeps the paths it has always had); "/" leads here
FILTERS = ("species", "survey", "location", "outcome", "margin")
DUPLICATES_REPORT = "duplicates.json"  # under <data dir>/reports, written by `registry duplicates`


class SignInRequired(Exception):
    """Raised by page dependencies; the app turns it into a redirect to the sign-in page."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def _query(filters: dict[str, Any]) -> str:
    kept = {k: v for k, v in filters.items() if v not in (None, "")}
    return ("?" + urlencode(kept)) if kept else ""


def _mercator(latitude: float, longitude: float, zoom: int) -> tuple[float, float]:
    """Web Mercator pixel coordinates at this zoom (256-pixel tiles), as tile servers number them."""
    scale = 256 * 2 ** zoom
    sin = math.sin(math.radians(max(-85.05, min(85.05, latitude))))
    return (longitude + 180) / 360 * scale, (0.5 - math.log((1 + sin) / (1 - sin)) / (4 * math.pi)) * scale


def _map(points: list[tuple[float, float, str]], tile_url: str | None = None, width: int = 360,
         height: int = 240) -> dict[str, Any]:
    """Sightings placed in a `width` x `height` view (Web Mercator, the deepest zoom that fits them): circles
    only, which needs no network, or over the tiles of `tile_url` (`.../{z}/{x}/{y}.png`) when one is
    configured."""
    if not points:
        return {"points": [], "tiles": []}
    zoom = 1
    for candidate in range(17, 0, -1):
        xy = [_mercator(lat, lon, candidate) for lat, lon, _ in points]
        xs, ys = [x for x, _ in xy], [y for _, y in xy]
        if max(xs) - min(xs) <= width - 40 and max(ys) - min(ys) <= height - 40:
            zoom = candidate
            break
    xy = [_mercator(lat, lon, zoom) for lat, lon, _ in points]
    left = (max(x for x, _ in xy) + min(x for x, _ in xy)) / 2 - width / 2
    top = (max(y for _, y in xy) + min(y for _, y in xy)) / 2 - height / 2
    placed = [{"x": round(x - left, 1), "y": round(y - top, 1), "label": label}
              for (x, y), (_, _, label) in zip(xy, points, strict=True)]
    tiles = []
    if tile_url:
        last = 2 ** zoom - 1
        for tx in range(max(0, int(left // 256)), min(last, int((left + width) // 256)) + 1):
            for ty in range(max(0, int(top // 256)), min(last, int((top + height) // 256)) + 1):
                tiles.append({"href": tile_url.replace("{z}", str(zoom)).replace("{x}", str(tx))
                              .replace("{y}", str(ty)), "x": round(tx * 256 - left, 1),
                              "y": round(ty * 256 - top, 1)})
    return {"points": placed, "tiles": tiles, "zoom": zoom}


def build_router(service: "Service") -> APIRouter:
    router = APIRouter(prefix=UI, include_in_schema=False)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    thumbnails = Thumbnails(service.settings.data_dir / "thumbnails", service.reads)

    def person(request: Request) -> Browser:
        found = sessions.browser(service.reads, request.cookies.get(COOKIE))
        if found is None:
            raise SignInRequired(str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""))
        return found

    Person = Annotated[Browser, Depends(person)]

    def allowed(request: Request, csrf: str | None, needed: str) -> Browser:
        """The person behind a form post, if it carries their CSRF secret and their scope covers `needed`."""
        found = sessions.browser(service.reads, request.cookies.get(COOKIE))
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

    def curate(who: Browser, work: Any) -> tuple[dict[str, Any] | None, str | None]:
        """Run a curation through the registry's writer; a refusal comes back as a message for the page."""
        try:
            return service.run(lambda r: work(Curator(r.stores, who.name))), None
        except CatalogError as exc:  # CurationError included: the reason is the reviewer's to read
            return None, str(exc)

    # --- signing in ---------------------------------------------------------------------------------------
    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = f"{UI}/queue", failed: int = 0) -> HTMLResponse:
        return page(request, "login.html", None, next=next if next.startswith("/") else f"{UI}/queue",
                    failed=bool(failed))

    @router.post("/login")
    def login(request: Request, token: Annotated[str, Form()],
              next: Annotated[str, Form()] = f"{UI}/queue") -> Response:
        key = sessions.sign_in(service.reads, token)
        target = next if next.startswith("/") and not next.startswith("//") else f"{UI}/queue"
        if key is None:
            return RedirectResponse(f"{UI}/login?" + urlencode({"next": target, "failed": 1}), status_code=303)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, key, max_age=int(sessions.LIFETIME.total_seconds()), httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    @router.post("/logout")
    def logout(request: Request, csrf: Annotated[str | None, Form()] = None) -> Response:
        allowed(request, csrf, "read")
        sessions.sign_out(service.reads, request.cookies.get(COOKIE))
        response = RedirectResponse(f"{UI}/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @router.get("/")
    def home() -> Response:
        return RedirectResponse(f"{UI}/queue", status_code=303)

    # --- the review queue and match pages ------------------------------------------------------------------
    def _filters(species: str | None, survey: str | None, location: str | None, outcome: str | None,
                 margin: float | None) -> dict[str, Any]:
        return {"species": species or None, "survey": survey or None, "location": location or None,
                "outcome": outcome if outcome in ("match", "new") else None, "margin": margin}

    def _margin(filters: dict[str, Any]) -> dict[str, Any]:
        return {**filters, "margin": filters["margin"] if filters["margin"] is not None
                else service.settings.review_margin}

    def _queue(filters: dict[str, Any], limit: int = 200) -> list[dict[str, Any]]:
        f = _margin(filters)
        return review.queue(service.reads, f["species"], limit, f["margin"], f["survey"], f["location"],
                            f["outcome"])

    @router.get("/queue", response_class=HTMLResponse)
    def queue_page(request: Request, who: Person, species: str | None = None, survey: str | None = None,
                   location: str | None = None, outcome: str | None = None,
                   margin: float | None = None) -> HTMLResponse:
        filters = _filters(species, survey, location, outcome, margin)
        entries = _queue(filters)
        return page(request, "queue.html", who, entries=entries, filters=filters, query=_query(filters),
                    left=review.count(service.reads, **_margin(filters)), species_list=service.reads.species(),
                    margin=_margin(filters)["margin"])

    @router.get("/decisions/{decision_id}", response_class=HTMLResponse)
    def match_page(request: Request, decision_id: int, who: Person, species: str | None = None,
                   survey: str | None = None, location: str | None = None, outcome: str | None = None,
                   margin: float | None = None, done: int | None = None, error: str | None = None,
                   undone: int | None = None, view: str = "individuals") -> HTMLResponse:
        detail = review.decision_detail(service.reads, decision_id)
        if detail is None:
            raise HTTPException(404, f"no decision {decision_id}")
        filters = _filters(species, survey, location, outcome, margin)
        around = review.neighbours(service.reads, decision_id, **_margin(filters))
        position, previous, following = around["position"], around["previous"], around["next"]
        if position is None:  # reviewed already: on to the head of the queue
            head = _queue(filters, limit=1)
            following = head[0]["decision"] if head else None
        change = None
        if done is not None:
            change = next((c for c in Curator.changes_in(service.reads, 20) if c["id"] == done), None)
        return page(request, "match.html", who, d=detail, filters=filters, query=_query(filters),
                    previous=previous, following=following, left=around["total"], position=position, change=change,
                    error=error, undone=undone, view=view if view in ("individuals", "images") else "individuals")

    def _after(decision_id: int, filters: dict[str, Any], result: dict[str, Any] | None, error: str | None,
               ) -> Response:
        """Back to the match page (with the change to undo, or the refusal), or on to the next in the queue."""
        if error is not None:
            return RedirectResponse(f"{UI}/decisions/{decision_id}{_query({**filters, 'error': error})}",
                                    status_code=303)
        head = _queue(filters, limit=1)
        target = head[0]["decision"] if head else decision_id
        return RedirectResponse(f"{UI}/decisions/{target}{_query({**filters, 'done': result['change']})}",  # type: ignore[index]
                                status_code=303)

    def _form_filters(form: dict[str, Any]) -> dict[str, Any]:
        margin = form.get("margin")
        try:
            margin_value = float(margin) if margin not in (None, "") else None
        except ValueError:
            margin_value = None
        return _filters(form.get("species"), form.get("survey"), form.get("location"), form.get("outcome"),
                        margin_value)

    async def _decide(request: Request, decision_id: int, work: Any) -> Response:
        """A review form on a match page: CSRF and scope checked, `work(curator, form)` run, then on."""
        form = dict(await request.form())
        who = allowed(request, form.get("csrf"), "review")  # type: ignore[arg-type]
        result, error = curate(who, lambda c: work(c, form))
        return _after(decision_id, _form_filters(form), result, error)

    def _reassign(curator: Curator, decision_id: int, form: dict[str, Any]) -> dict[str, Any]:
        new = form.get("new") == "1"
        target = None if new else (str(form.get("individual") or "").strip() or None)
        if not new and target is None:
            raise CurationError("name the individual, or choose new individual")
        return curator.reassign(decision_id, target, new=new, reason="corrected in the workspace")

    @router.post("/decisions/{decision_id}/confirm")
    async def confirm(request: Request, decision_id: int) -> Response:
        return await _decide(request, decision_id, lambda c, _f: c.confirm(decision_id, "confirmed in the workspace"))

    @router.post("/decisions/{decision_id}/reassign")
    async def reassign(request: Request, decision_id: int) -> Response:
        return await _decide(request, decision_id, lambda c, f: _reassign(c, decision_id, f))

    @router.post("/decisions/{decision_id}/reject")
    async def reject(request: Request, decision_id: int) -> Response:
        return await _decide(request, decision_id, lambda c, _f: c.reject(decision_id, "rejected in the workspace"))

    @router.post("/changes/{change_id}/undo")
    async def undo(request: Request, change_id: int) -> Response:
        form = dict(await request.form())
        who = allowed(request, form.get("csrf"), "admin")  # type: ignore[arg-type]
        result, error = curate(who, lambda c: c.undo(change_id, "undone in the workspace"))
        back = str(form.get("back") or f"{UI}/activity")
        back = back if back.startswith("/") and not back.startswith("//") else f"{UI}/activity"
        separator = "&" if "?" in back else "?"
        message = urlencode({"error": error} if error else {"undone": result["change"]})  # type: ignore[index]
        return RedirectResponse(f"{back}{separator}{message}", status_code=303)

    @router.get("/decisions/{decision_id}/sheet.png")
    def match_sheet(decision_id: int, who: Person) -> Response:
        """The query beside its best candidates with LightGlue's correspondences drawn (made on request)."""
        from registry.curation import sheets

        out = service.settings.data_dir / "sheets" / f"decision-{decision_id}.png"
        if not out.is_file():
            try:
                service.run(lambda r: sheets.render(r, decision_id, out, candidates=3))
            except (ValueError, ImageError) as exc:
                raise HTTPException(404, str(exc)) from exc
        return FileResponse(out, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/thumbs/{annotation_id}/{size}.jpg")
    def thumbnail(annotation_id: int, size: int, who: Person) -> Response:
        try:
            path = thumbnails.path(annotation_id, size)
        except KeyError as exc:
            raise HTTPException(404, f"no thumbnail for {exc.args[0]}") from exc
        except ImageError as exc:
            raise HTTPException(404, "the photo cannot be read on the server") from exc
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    # --- individuals ------------------------------------------------------------------------------------------
    @router.get("/individuals", response_class=HTMLResponse)
    def individuals_page(request: Request, who: Person, species: str | None = None, q: str = "") -> HTMLResponse:
        rows = service.reads.individuals(species or None)
        if q:
            needle = q.lower()
            rows = [r for r in rows if needle in r["code"].lower() or needle in (r["name"] or "").lower()
                    or needle in (r["nickname"] or "").lower()]
        return page(request, "individuals.html", who, rows=rows[:500], total=len(rows), q=q, species=species,
                    species_list=service.reads.species())

    @router.get("/individuals/{code}", response_class=HTMLResponse)
    def individual_page(request: Request, code: str, who: Person, error: str | None = None,
                        undone: int | None = None, done: int | None = None) -> HTMLResponse:
        try:
            history = service.reads.history(code)
        except CatalogError as exc:
            raise HTTPException(404, str(exc)) from exc
        points = [(s["latitude"], s["longitude"], (s["captured_at"] or "")[:10]) for s in history["sightings"]
                  if s["latitude"] is not None and s["longitude"] is not None]
        return page(request, "individual.html", who, h=history, map=_map(points, service.settings.web_tile_url),
                    error=error, undone=undone, done=done, tile_url=service.settings.web_tile_url)

    @router.post("/individuals/{code}/attributes")
    async def edit_attributes(request: Request, code: str) -> Response:
        form = dict(await request.form())
        who = allowed(request, form.get("csrf"), "review")  # type: ignore[arg-type]
        values: dict[str, Any] = {name: form.get(name) for name in ("sex", "life_stage", "nickname", "notes")
                                  if form.get(name) is not None}
        if form.get("alternate_ids") is not None:
            values["alternate_ids"] = [v.strip() for v in str(form["alternate_ids"]).split(",") if v.strip()]
        result, error = curate(who, lambda c: c.edit(code, "edited in the workspace", **values))
        suffix = urlencode({"error": error} if error else {"done": result["change"]})  # type: ignore[index]
        return RedirectResponse(f"{UI}/individuals/{code}?{suffix}", status_code=303)

    @router.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request, who: Person, a: str, b: str) -> HTMLResponse:
        try:
            first, second = service.reads.history(a), service.reads.history(b)
        except CatalogError as exc:
            raise HTTPException(404, str(exc)) from exc
        return page(request, "compare.html", who, a=first, b=second)

    @router.post("/individuals/merge")
    async def merge(request: Request) -> Response:
        form = dict(await request.form())
        who = allowed(request, form.get("csrf"), "admin")  # type: ignore[arg-type]
        keep, absorb = str(form.get("keep") or ""), str(form.get("absorb") or "")
        result, error = curate(who, lambda c: c.merge(keep, absorb, "merged in the workspace"))
        if error:
            return RedirectResponse(f"{UI}/compare?" + urlencode({"a": keep, "b": absorb}) + "&" +
                                    urlencode({"error": error}), status_code=303)
        return RedirectResponse(f"{UI}/individuals/{keep}?done={result['change']}", status_code=303)  # type: ignore[index]

    # --- possible duplicates and the audit trail -----------------------------------------------------------------
    @router.get("/duplicates", response_class=HTMLResponse)
    def duplicates_page(request: Request, who: Person) -> HTMLResponse:
        report_path = service.settings.data_dir / "reports" / DUPLICATES_REPORT
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        return page(request, "duplicates.html", who, report=report)

    @router.get("/activity", response_class=HTMLResponse)
    def activity_page(request: Request, who: Person, undone: int | None = None,
                      error: str | None = None) -> HTMLResponse:
        return page(request, "activity.html", who, changes=Curator.changes_in(service.reads, 200), undone=undone,
                    error=error)

    return router
