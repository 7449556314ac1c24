"""The review queue, the match page and its decisions (confirm, reassign, reject), undo, the match sheet and
thumbnails. Reads through the review module, changes through `Curator`, exactly as the CLI and the API do."""

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from registry.curation import review
from registry.curation.curator import CurationError, Curator
from registry.interfaces.service import Service
from registry.interfaces.web.pages import (
    UI,
    Person,
    ServiceDep,
    allowed,
    curate,
    local_target,
    page,
    query_string,
    service_of,
    thumbnails_of,
)
from registry.matching.imaging import ImageError

router = APIRouter()


def _filters(species: str | None, survey: str | None, location: str | None, outcome: str | None,
             margin: float | None) -> dict[str, Any]:
    return {"species": species or None, "survey": survey or None, "location": location or None,
            "outcome": outcome if outcome in ("match", "new") else None, "margin": margin}


def _margin(service: Service, filters: dict[str, Any]) -> dict[str, Any]:
    return {**filters, "margin": filters["margin"] if filters["margin"] is not None
            else service.settings.review_margin}


def _queue(service: Service, filters: dict[str, Any], limit: int = 200) -> list[dict[str, Any]]:
    f = _margin(service, filters)
    return review.queue(service.reads, f["species"], limit, f["margin"], f["survey"], f["location"], f["outcome"])


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request, who: Person, service: ServiceDep, species: str | None = None,
               survey: str | None = None, location: str | None = None, outcome: str | None = None,
               margin: float | None = None) -> HTMLResponse:
    filters = _filters(species, survey, location, outcome, margin)
    entries = _queue(service, filters)
    return page(request, "queue.html", who, entries=entries, filters=filters, query=query_string(filters),
                left=review.count(service.reads, **_margin(service, filters)), species_list=service.reads.species(),
                margin=_margin(service, filters)["margin"])


@router.get("/decisions/{decision_id}", response_class=HTMLResponse)
def match_page(request: Request, decision_id: int, who: Person, service: ServiceDep, species: str | None = None,
               survey: str | None = None, location: str | None = None, outcome: str | None = None,
               margin: float | None = None, done: int | None = None, error: str | None = None,
               undone: int | None = None, view: str = "individuals") -> HTMLResponse:
    detail = review.decision_detail(service.reads, decision_id)
    if detail is None:
        raise HTTPException(404, f"no decision {decision_id}")
    filters = _filters(species, survey, location, outcome, margin)
    around = review.neighbours(service.reads, decision_id, **_margin(service, filters))
    position, previous, following = around["position"], around["previous"], around["next"]
    if position is None:  # reviewed already: on to the head of the queue
        head = _queue(service, filters, limit=1)
        following = head[0]["decision"] if head else None
    change = None
    if done is not None:
        change = next((c for c in Curator.changes_in(service.reads, 20) if c["id"] == done), None)
    return page(request, "match.html", who, d=detail, filters=filters, query=query_string(filters),
                previous=previous, following=following, left=around["total"], position=position, change=change,
                error=error, undone=undone, view=view if view in ("individuals", "images") else "individuals")


def _after(service: Service, decision_id: int, filters: dict[str, Any], result: dict[str, Any] | None,
           error: str | None) -> Response:
    """Back to the match page (with the change to undo, or the refusal), or on to the next in the queue."""
    if error is not None:
        return RedirectResponse(f"{UI}/decisions/{decision_id}{query_string({**filters, 'error': error})}",
                                status_code=303)
    head = _queue(service, filters, limit=1)
    target = head[0]["decision"] if head else decision_id
    return RedirectResponse(f"{UI}/decisions/{target}{query_string({**filters, 'done': result['change']})}",  # type: ignore[index]
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
    service = service_of(request)
    form = dict(await request.form())
    who = allowed(request, form.get("csrf"), "review")  # type: ignore[arg-type]
    result, error = curate(service, who, lambda c: work(c, form))
    return _after(service, decision_id, _form_filters(form), result, error)


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
    result, error = curate(service_of(request), who, lambda c: c.undo(change_id, "undone in the workspace"))
    back = local_target(str(form.get("back") or f"{UI}/activity"), f"{UI}/activity")
    separator = "&" if "?" in back else "?"
    message = urlencode({"error": error} if error else {"undone": result["change"]})  # type: ignore[index]
    return RedirectResponse(f"{back}{separator}{message}", status_code=303)


@router.get("/decisions/{decision_id}/sheet.png")
def match_sheet(decision_id: int, who: Person, service: ServiceDep) -> Response:
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
def thumbnail(request: Request, annotation_id: int, size: int, who: Person) -> Response:
    try:
        path = thumbnails_of(request).path(annotation_id, size)
    except KeyError as exc:
        raise HTTPException(404, f"no thumbnail for {exc.args[0]}") from exc
    except ImageError as exc:
        raise HTTPException(404, "the photo cannot be read on the server") from exc
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
