"""The review queue, the match page and its decisions (confirm, reassign, reject), undo, the match sheet and
thumbnails. Reads through the review module, changes through `Curator`, exactly as the CLI and the API do."""

import hashlib
import json
import math
import uuid
from pathlib import Path
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


MAX_FILTER_LENGTH = 200  # a species, survey or place name; longer is not a name
MAX_MARGIN = 10.0  # scores live in [0, 1]: any margin above 1 already lets every decision through


class FilterError(ValueError):
    """A queue filter that cannot be used, with the reason a reviewer reads."""


def _filters(species: str | None, survey: str | None, location: str | None, outcome: str | None,
             margin: str | float | None) -> dict[str, Any]:
    """The queue's filters, checked: names of sane length, a decision kind, a finite margin in [0, 10]
    (empty: no margin, every unreviewed decision, most uncertain first)."""
    for name, value in (("species", species), ("survey", survey), ("location", location)):
        if value is not None and len(value) > MAX_FILTER_LENGTH:
            raise FilterError(f"the {name} filter is {len(value)} characters long; names have at most "
                              f"{MAX_FILTER_LENGTH}")
    if outcome not in (None, "", "match", "new"):
        raise FilterError(f"decision must be 'match' or 'new', not {outcome[:40]!r}")
    value = None
    if margin not in (None, ""):
        try:
            value = float(margin)  # type: ignore[arg-type]
        except ValueError:
            raise FilterError(f"margin must be a number, not {str(margin)[:40]!r}") from None
        if not math.isfinite(value) or not 0 <= value <= MAX_MARGIN:
            raise FilterError(f"margin must be a number from 0 to {MAX_MARGIN:g}, not {str(margin)[:40]}")
    return {"species": species or None, "survey": survey or None, "location": location or None,
            "outcome": outcome or None, "margin": value}


def _queue(service: Service, filters: dict[str, Any], limit: int = 200) -> list[dict[str, Any]]:
    return review.queue(service.reads, filters["species"], limit, filters["margin"], filters["survey"],
                        filters["location"], filters["outcome"])


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request, who: Person, service: ServiceDep, species: str | None = None,
               survey: str | None = None, location: str | None = None, outcome: str | None = None,
               margin: str | None = None, done: str | None = None, error: str | None = None) -> HTMLResponse:
    try:
        filters = _filters(species, survey, location, outcome, margin)
    except FilterError as exc:
        blank = _filters(None, None, None, None, None)
        response = page(request, "queue.html", who, entries=[], filters=blank, query="", left=0, counts=[],
                        species_list=service.reads.species(), error=str(exc), done=None)
        response.status_code = 400
        return response
    entries = _queue(service, filters)
    return page(request, "queue.html", who, entries=entries, filters=filters, query=query_string(filters),
                left=review.count(service.reads, **filters), species_list=service.reads.species(),
                counts=review.counts(service.reads, **filters), error=error,
                done=done if done and len(done) < 2000 else None)


@router.post("/queue/confirm")
async def confirm_selected(request: Request) -> Response:
    """Bulk review: confirm every selected decision, each one its own audited, undoable change. A decision
    someone else reviewed meanwhile is refused and named; the others still go through."""
    service = service_of(request)
    form = await request.form()
    who = allowed(request, form.get("csrf"), "review")  # type: ignore[arg-type]
    chosen = [int(v) for v in form.getlist("decision") if str(v).isdigit() and len(str(v)) <= 18][:500]
    done, refused = [], []
    for decision_id in chosen:
        def confirm_one(curator: Curator, chosen_id: int = decision_id) -> dict[str, Any]:
            return curator.confirm(chosen_id, "confirmed in bulk in the workspace")

        _, error = curate(service, who, confirm_one)
        if error is None:
            done.append(decision_id)
        else:
            refused.append(f"decision {decision_id}: {error}")
    try:
        filters = _form_filters(dict(form))
    except FilterError:
        filters = _filters(None, None, None, None, None)
    message = {"done": f"confirmed {len(done)} decision{'' if len(done) == 1 else 's'}"}
    if refused:
        message["error"] = "; ".join(refused)[:1500]
    return RedirectResponse(f"{UI}/queue{query_string({**filters, **message})}", status_code=303)


@router.get("/decisions/{decision_id:rowid}", response_class=HTMLResponse)
def match_page(request: Request, decision_id: int, who: Person, service: ServiceDep, species: str | None = None,
               survey: str | None = None, location: str | None = None, outcome: str | None = None,
               margin: str | None = None, done: int | None = None, error: str | None = None,
               undone: int | None = None, touched: int | None = None, view: str = "individuals") -> HTMLResponse:
    detail = review.decision_detail(service.reads, decision_id)
    if detail is None:
        raise HTTPException(404, f"no decision {decision_id}")
    try:
        filters = _filters(species, survey, location, outcome, margin)
    except FilterError as exc:
        raise HTTPException(400, str(exc)) from exc
    around = review.neighbours(service.reads, decision_id, **filters)
    position, previous, following = around["position"], around["previous"], around["next"]
    if position is None:  # reviewed already: on to the head of the queue
        head = _queue(service, filters, limit=1)
        following = head[0]["decision"] if head else None
    recent = {c["id"]: c for c in Curator.changes_in(service.reads, 50)}
    change = recent.get(done) if done is not None else None
    reverted = recent.get(undone) if undone is not None else None
    return page(request, "match.html", who, d=detail, filters=filters, query=query_string(filters),
                previous=previous, following=following, left=around["total"], position=position, change=change,
                touched=touched if touched is not None else decision_id, reverted=reverted,
                error=error[:2000] if error else None, undone=undone,
                view=view if view in ("individuals", "images") else "individuals")


def _after(service: Service, decision_id: int, filters: dict[str, Any], result: dict[str, Any] | None,
           error: str | None) -> Response:
    """Back to the match page (with the change to undo, or the refusal), or on to the next in the queue."""
    if error is not None:
        return RedirectResponse(f"{UI}/decisions/{decision_id}{query_string({**filters, 'error': error})}",
                                status_code=303)
    head = _queue(service, filters, limit=1)
    target = head[0]["decision"] if head else decision_id
    after = {**filters, "done": result["change"], "touched": decision_id}  # type: ignore[index]
    return RedirectResponse(f"{UI}/decisions/{target}{query_string(after)}", status_code=303)


def _form_filters(form: dict[str, Any]) -> dict[str, Any]:
    return _filters(form.get("species"), form.get("survey"), form.get("location"), form.get("outcome"),
                    form.get("margin"))


async def _decide(request: Request, decision_id: int, work: Any) -> Response:
    """A review form on a match page: CSRF and scope checked, `work(curator, form)` run, then on."""
    service = service_of(request)
    form = dict(await request.form())
    who = allowed(request, form.get("csrf"), "review")  # type: ignore[arg-type]
    result, error = curate(service, who, lambda c: work(c, form))
    try:
        filters = _form_filters(form)
    except FilterError:
        filters = _filters(None, None, None, None, None)
    return _after(service, decision_id, filters, result, error)


def _reassign(curator: Curator, decision_id: int, form: dict[str, Any]) -> dict[str, Any]:
    new = form.get("new") == "1"
    target = None if new else (str(form.get("individual") or "").strip() or None)
    if not new and target is None:
        raise CurationError("name the individual, or choose new individual")
    return curator.reassign(decision_id, target, new=new, reason="corrected in the workspace")


@router.post("/decisions/{decision_id:rowid}/confirm")
async def confirm(request: Request, decision_id: int) -> Response:
    return await _decide(request, decision_id, lambda c, _f: c.confirm(decision_id, "confirmed in the workspace"))


@router.post("/decisions/{decision_id:rowid}/reassign")
async def reassign(request: Request, decision_id: int) -> Response:
    return await _decide(request, decision_id, lambda c, f: _reassign(c, decision_id, f))


@router.post("/decisions/{decision_id:rowid}/reject")
async def reject(request: Request, decision_id: int) -> Response:
    return await _decide(request, decision_id, lambda c, _f: c.reject(decision_id, "rejected in the workspace"))


@router.post("/changes/{change_id:rowid}/undo")
async def undo(request: Request, change_id: int) -> Response:
    form = dict(await request.form())
    who = allowed(request, form.get("csrf"), "admin")  # type: ignore[arg-type]
    result, error = curate(service_of(request), who, lambda c: c.undo(change_id, "undone in the workspace"))
    back = local_target(str(form.get("back") or f"{UI}/activity"), f"{UI}/activity")
    separator = "&" if "?" in back else "?"
    message = urlencode({"error": error} if error else {"undone": result["change"]})  # type: ignore[index]
    return RedirectResponse(f"{back}{separator}{message}", status_code=303)


@router.get("/decisions/{decision_id:rowid}/sheet.png")
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


@router.get("/pairs/{query_id:rowid}/{candidate_id:rowid}.json")
def pairs(query_id: int, candidate_id: int, who: Person, service: ServiceDep) -> Response:
    """The correspondences between two annotations for the match page to draw (computed once, then kept)."""
    from registry.curation import sheets

    def work(registry: Any) -> Path:
        version = hashlib.sha256(registry.pipeline.local.version.encode()).hexdigest()[:12]
        out = service.settings.data_dir / "pairs" / f"{query_id}-{candidate_id}-{version}.json"
        if not out.is_file():
            found = sheets.correspondences(registry, query_id, candidate_id)
            out.parent.mkdir(parents=True, exist_ok=True)
            temporary = out.with_name(f"{out.name}.{uuid.uuid4().hex}.tmp")
            temporary.write_text(json.dumps(found))
            temporary.replace(out)
        return out

    try:
        out = service.run(work)
    except (ValueError, ImageError) as exc:
        raise HTTPException(404, str(exc)) from exc
    return FileResponse(out, media_type="application/json", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/thumbs/{annotation_id:rowid}/{size:rowid}.jpg")
def thumbnail(request: Request, annotation_id: int, size: int, who: Person) -> Response:
    try:
        path = thumbnails_of(request).path(annotation_id, size)
    except KeyError as exc:
        raise HTTPException(404, f"no thumbnail for {exc.args[0]}") from exc
    except ImageError as exc:
        raise HTTPException(404, "the photo cannot be read on the server") from exc
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
