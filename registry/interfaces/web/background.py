"""Long work the server runs for a page (a duplicates check, discovering a survey's new animals): a `jobs` row
per run with its progress, the work itself under the registry's writer lock (like an ingest), its report
written to a file under `<data dir>/reports/` that the page reads; one run of a kind at a time."""

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from registry.interfaces.service import Service
from registry.store.tables import Job, utcnow

log = logging.getLogger(__name__)


class JobStopped(Exception):
    """The server is stopping: a running job gives up at its next progress step (recorded as failed)."""


def latest(service: Service, kind: str) -> dict[str, Any] | None:
    """The newest job of this kind: its status and progress."""
    with service.reads.transaction() as session:
        job = session.scalar(select(Job).where(Job.kind == kind).order_by(Job.id.desc()).limit(1))
        return None if job is None else {"id": job.id, "status": job.status, "done": job.done, "total": job.total,
                                         "error": job.error, "report": job.report}


def running(job: dict[str, Any] | None) -> bool:
    return job is not None and job["status"] in ("queued", "running")


def start(service: Service, kind: str, by: str, total: int, out: Path,
          work: Callable[[Any, Callable[[int], None]], dict[str, Any]], summary: Callable[[dict], dict]) -> bool:
    """Start `work(registry, progress)` in the background unless a job of this kind is running; its report goes
    to `out` (written whole, then renamed), `summary(report)` to the job row. Returns whether it started."""
    if running(latest(service, kind)):
        return False
    with service.reads.transaction() as session:
        job = Job(kind=kind, status="queued", total=total, report={"by": by})
        session.add(job)
        session.flush()
        job_id = job.id

    def update(**fields: Any) -> None:
        with service.reads.transaction() as session:
            row = session.get(Job, job_id)
            for key, value in fields.items():
                setattr(row, key, value)

    def run() -> None:
        done = [0]

        def progress(n: int) -> None:
            if service.closing.is_set():
                raise JobStopped("the server stopped before the job ended; start it again")
            done[0] += n
            update(done=done[0])

        try:
            update(status="running")
            report = service.run(lambda registry: work(registry, progress), timeout=3600)
            out.parent.mkdir(parents=True, exist_ok=True)
            temporary = out.with_name(f"{out.name}.{job_id}.tmp")
            temporary.write_text(json.dumps(report, indent=2) + "\n")
            temporary.replace(out)
            update(status="done", done=max(done[0], total), report={"by": by, **summary(report)},
                   finished_at=utcnow())
        except JobStopped as exc:
            update(status="failed", error=str(exc), finished_at=utcnow())
        except Exception as exc:  # recorded on the job for the page; the traceback goes to the server log
            log.exception("%s job %s failed", kind, job_id)
            update(status="failed", error=str(exc)[:2000], finished_at=utcnow())

    threading.Thread(target=run, daemon=True, name=f"{kind}-{job_id}").start()
    return True
