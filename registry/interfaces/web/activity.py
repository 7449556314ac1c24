"""Possible duplicates (the report `registry duplicates` writes) and the audit trail."""

import json

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from registry.curation.curator import Curator
from registry.interfaces.web.pages import Person, ServiceDep, page

router = APIRouter()
DUPLICATES_REPORT = "duplicates.json"  # under <data dir>/reports, written by `registry duplicates`


@router.get("/duplicates", response_class=HTMLResponse)
def duplicates_page(request: Request, who: Person, service: ServiceDep) -> HTMLResponse:
    report_path = service.settings.data_dir / "reports" / DUPLICATES_REPORT
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    return page(request, "duplicates.html", who, report=report)


@router.get("/activity", response_class=HTMLResponse)
def activity_page(request: Request, who: Person, service: ServiceDep, undone: int | None = None,
                  error: str | None = None) -> HTMLResponse:
    return page(request, "activity.html", who, changes=Curator.changes_in(service.reads, 200), undone=undone,
                error=error)
