"""Possible duplicates (a check the server runs as a background job, or `registry duplicates`; pairs declared
different animals are never proposed again) and the audit trail with its filters."""

import json
from datetime import datetime, timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from registry.curation.curator import Curator
from registry.interfaces.web import background
from registry.interfaces.web.pages import UI, Person, ServiceDep, allowed, curate, page, service_of
from registry.services.duplicates import find_duplicates

router = APIRouter()
DUPLICATES_REPORT = "duplicates.json"  # under <data dir>/reports, written by `registry duplicates`


@router.get("/duplicates", response_class=HTMLResponse)
def duplicates_page(request: Request, who: Person, service: ServiceDep, error: str | None = None,
                    done: str | None = None) -> HTMLResponse:
    report_path = service.settings.data_dir / "reports" / DUPLICATES_REPORT
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    if report is not None:  # pairs declared different since the report was written are gone from it
        dismissed = {tuple(sorted(p)) for p in service.reads.distinct_codes()}
        report["pairs"] = [p for p in report["pairs"] if tuple(sorted((p["individual"], p["other"]))) not in dismissed]
    check = background.latest(service, "duplicates")
    return page(request, "duplicates.html", who, report=report, check=check, running=background.running(check),
                error=error[:2000] if error else None, done=done[:200] if done else None)


@router.post("/duplicates/check")
async def start_check(request: Request) -> Response:
    """Start the duplicates check as a background job on the server (one at a time); the page shows its
    progress. It runs under the registry's writer lock, like an ingest."""
    service = service_of(request)
    form = dict(await request.form())
    who = allowed(request, form.get("csrf"), "review")  # type: ignore[arg-type]
    background.start(service, "duplicates", who.name, len(service.reads.individuals()),
                     service.settings.data_dir / "reports" / DUPLICATES_REPORT,
                     lambda registry, progress: find_duplicates(registry, progress=progress),
                     lambda report: {"pairs": len(report["pairs"])})
    return RedirectResponse(f"{UI}/duplicates", status_code=303)


@router.post("/duplicates/distinct")
async def not_the_same(request: Request) -> Response:
    """"Not the same animal": the pair is never proposed again."""
    form = dict(await request.form())
    who = allowed(request, form.get("csrf"), "review")  # type: ignore[arg-type]
    first, second = str(form.get("a") or "")[:200], str(form.get("b") or "")[:200]
    _, error = curate(service_of(request), who,
                      lambda c: c.declare_distinct(first, second, "not the same animal (workspace)"))
    message = {"error": error} if error else {"done": f"{first} and {second} are different animals"}
    return RedirectResponse(f"{UI}/duplicates?" + urlencode(message), status_code=303)


KINDS = ("confirm", "reassign", "reject", "merge", "split", "edit", "undo")


@router.get("/activity", response_class=HTMLResponse)
def activity_page(request: Request, who: Person, service: ServiceDep, undone: int | None = None,
                  error: str | None = None, kind: str = "", person: str = "", individual: str = "",
                  since: str = "", until: str = "") -> HTMLResponse:
    """The audit trail, filtered by kind, person, individual and date (until: that day included)."""
    filters = {"kind": kind, "person": person, "individual": individual, "since": since, "until": until}
    problem, start, end = None, None, None
    if kind and kind not in KINDS:
        problem = f"kind must be one of {', '.join(KINDS)}"
    elif len(person) > 200 or len(individual) > 200:
        problem = "a person or an individual is named in at most 200 characters"
    else:
        try:
            start = datetime.strptime(since, "%Y-%m-%d") if since else None
            end = datetime.strptime(until, "%Y-%m-%d") + timedelta(days=1) if until else None
        except ValueError:
            problem = "give dates as YYYY-MM-DD"
    changes = [] if problem else Curator.changes_in(service.reads, 200, kind=kind or None, actor=person or None,
                                                     individual=individual or None, since=start, until=end)
    response = page(request, "activity.html", who, changes=changes, undone=undone, kinds=KINDS, filters=filters,
                    error=problem or (error[:2000] if error else None))
    if problem:
        response.status_code = 400
    return response
