"""New animals decided together, reviewed as groups: discovery (`curation.discovery`) runs on the server as a
background job for one survey; each proposal (provisional individuals that look like one animal) is accepted
whole, accepted with some photos split off (left as they are), or merged into a known animal. Every merge goes
through `Curator`, audited and undoable, exactly as `registry discover --apply` does."""

import json
import re
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from registry.curation.curator import CurationError, Curator
from registry.curation.discovery import DiscoveryService
from registry.interfaces.web import background
from registry.interfaces.web.pages import UI, Person, ServiceDep, allowed, curate, page, service_of
from registry.store.catalog import CatalogError

router = APIRouter()
KIND = "discover"


def _report_path(service: Any, survey: str) -> Any:
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", survey)[:80]
    return service.settings.data_dir / "reports" / f"discover-{slug}.json"


def _current(service: Any, codes: list[str]) -> dict[str, str]:
    """Each code's individual now (following merges): a proposal whose codes all lead to one animal is done."""
    out = {}
    with service.reads.transaction() as session:
        for code in codes:
            try:
                out[code] = service.reads.resolve(session, code).code
            except CatalogError:  # a code that no longer resolves: shown as it was
                out[code] = code
    return out


@router.get("/discover", response_class=HTMLResponse)
def discover_page(request: Request, who: Person, service: ServiceDep, survey: str | None = None,
                  error: str | None = None, done: str | None = None) -> HTMLResponse:
    surveys = service.reads.survey_names()
    if survey is not None and survey not in surveys:
        raise HTTPException(404, f"no survey {survey[:200]!r}")
    job = background.latest(service, KIND)
    report = None
    if survey is not None and _report_path(service, survey).is_file():
        report = json.loads(_report_path(service, survey).read_text())
        for proposal in report["proposals"]:
            now = _current(service, proposal["individuals"])
            proposal["now"] = now
            proposal["settled"] = len(set(now.values())) == 1
    return page(request, "discover.html", who, surveys=surveys, survey=survey, report=report, job=job,
                running=background.running(job), error=error[:2000] if error else None,
                done=done[:300] if done else None)


@router.post("/discover/run")
async def run_discovery(request: Request) -> Response:
    """Discover a survey's new animals together, on the server (proposals only; people accept them here)."""
    service = service_of(request)
    form = dict(await request.form())
    who = allowed(request, form.get("csrf"), "review")  # type: ignore[arg-type]
    survey = str(form.get("survey") or "")
    if survey not in service.reads.survey_names():
        raise HTTPException(404, f"no survey {survey[:200]!r}")

    def work(registry: Any, progress: Any) -> dict[str, Any]:
        report = DiscoveryService(registry).discover(survey)
        progress(1)
        return report

    background.start(service, KIND, who.name, 1, _report_path(service, survey), work,
                     lambda report: {"survey": survey, "proposals": len(report["proposals"])})
    return RedirectResponse(f"{UI}/discover?" + urlencode({"survey": survey}), status_code=303)


@router.post("/discover/accept")
async def accept(request: Request) -> Response:
    """Merge the chosen individuals of one proposal: into the first chosen (accept), or into a known animal.
    Individuals left unticked are split off: they stay as they are."""
    service = service_of(request)
    form = await request.form()
    who = allowed(request, form.get("csrf"), "admin")  # type: ignore[arg-type]  (merges, as everywhere)
    survey = str(form.get("survey") or "")[:200]
    chosen = [str(code)[:200] for code in form.getlist("individual")][:200]
    into = str(form.get("into") or "").strip()[:200]

    def merge_all(curator: Curator) -> dict[str, Any]:
        keep = into or (chosen[0] if chosen else "")
        others = [code for code in chosen if code != keep]
        if not keep or (not into and not others):
            raise CurationError("tick at least two photos to make one animal of them, or name a known animal")
        changes = [curator.merge(keep, code, reason=f"one animal, reviewed in the workspace (survey {survey})")
                   ["change"] for code in others]
        return {"kept": keep, "changes": changes}

    result, error = curate(service, who, merge_all)
    message = {"error": error} if error else {
        "done": f"{len(result['changes'])} merged into {result['kept']}"}  # type: ignore[index]
    return RedirectResponse(f"{UI}/discover?" + urlencode({"survey": survey, **message}), status_code=303)
