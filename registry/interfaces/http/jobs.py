"""Ingestion jobs: `POST /ingest` starts a season from the server's import folder in the background, `GET
/jobs/{id}` shows its progress and report (photos named without server paths)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from registry.ingest.ingestion import Ingestor
from registry.ingest.sources import LAYOUTS, count_items
from registry.interfaces.http.access import Admin, PathsDep, Reader, ServiceDep
from registry.interfaces.service import Service
from registry.store.tables import Job, utcnow

log = logging.getLogger(__name__)
router = APIRouter()


class IngestRequest(BaseModel):
    manifest: str  # a CSV or folder inside the server's import folder (api_import_root)
    survey: str
    mode: str = "reference"
    species: str | None = None
    layout: str = "auto"


@router.post("/ingest", status_code=202)
def ingest(user: Admin, service: ServiceDep, body: IngestRequest) -> dict[str, Any]:
    """Start ingesting a season that lies in the server's import folder; poll GET /jobs/{id}."""
    if body.mode not in ("reference", "identify") or body.layout not in LAYOUTS:
        raise HTTPException(400, f"mode must be reference or identify, layout one of {', '.join(LAYOUTS)}")
    source = (service.import_root / body.manifest).resolve()
    if not source.is_relative_to(service.import_root):
        raise HTTPException(400, "the manifest must be inside the server's import folder")
    if not source.exists():
        raise HTTPException(404, f"{body.manifest} is not in the import folder")
    with service.reads.transaction() as session:
        job = Job(kind="ingest", status="queued", report={"request": body.model_dump(), "by": user.name})
        session.add(job)
        session.flush()
        job_id = job.id
    threading.Thread(target=run_ingest, args=(service, job_id, source, body), daemon=True).start()
    return {"job": job_id, "status": "queued", "poll": f"/jobs/{job_id}"}


@router.get("/jobs/{job_id:rowid}")
def job_status(job_id: int, _: Reader, service: ServiceDep, paths: PathsDep) -> dict[str, Any]:
    with service.reads.transaction() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return paths.redact({"job": job.id, "kind": job.kind, "status": job.status, "done": job.done,
                             "total": job.total, "report": job.report, "error": job.error,
                             "finished_at": job.finished_at.isoformat() if job.finished_at else None})


def run_ingest(service: Service, job_id: int, source: Path, body: IngestRequest) -> None:
    """A background ingest: progress and the final report go to the `jobs` row."""
    catalog = service.reads

    def update(**fields: Any) -> None:
        with catalog.transaction() as session:
            job = session.get(Job, job_id)
            for key, value in fields.items():
                setattr(job, key, value)

    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        update(done=done[0])

    try:
        total = count_items(source)
        update(status="running", total=total)
        report = service.run(lambda r: Ingestor(r).ingest(source, body.survey, body.mode, body.species,
                                                          progress=progress, layout=body.layout,
                                                          allowed_root=service.import_root),
                             timeout=3600)
        update(status="done", report=report.to_json(), finished_at=utcnow())
    except Exception as exc:  # recorded on the job for the caller; the traceback goes to the server log
        log.exception("ingest job %s failed", job_id)
        update(status="failed", error=str(exc), finished_at=utcnow())
