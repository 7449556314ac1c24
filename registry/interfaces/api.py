"""The HTTP API (FastAPI): the same `Registry`, `Curator`, review and export code the CLI uses, over HTTP.

Every route but `/health` needs a bearer token (`registry token create NAME --scope ...`) whose scope covers it:
`read` browses, `review` also identifies and decides, `admin` also ingests, merges, splits and undoes (reads
need no token when `api_public_reads` is set). Writes that use the models or the embedded vector index run one
at a time in a process; reads go straight to SQL on their own sessions, so they never wait behind an ingest.
Several worker processes are allowed when the catalog is PostgreSQL and the index a Qdrant server. Request
bodies are bounded while they stream in, before anything parses them. Errors never carry stack traces or server
paths: expected ones become 4xx with the reason, anything else a logged 500.
"""

import contextlib
import hashlib
import io
import json
import logging
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image as PILImage
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.curation import darwin_core, exports, review
from registry.curation.curator import CurationError, Curator
from registry.ingest.ingestion import Ingestor
from registry.ingest.manifest import ManifestError
from registry.ingest.sources import LAYOUTS, count_items
from registry.interfaces import tokens
from registry.interfaces.server_paths import ServerPaths
from registry.interfaces.service import Service
from registry.interfaces.tokens import Caller
from registry.matching.imaging import ImageError
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import CatalogError, UnknownIndividualError
from registry.store.tables import Job, utcnow

log = logging.getLogger(__name__)
UPLOAD_TYPES = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}


class IngestRequest(BaseModel):
    manifest: str  # a CSV or folder inside the server's import folder (api_import_root)
    survey: str
    mode: str = "reference"
    species: str | None = None
    layout: str = "auto"


class ReassignRequest(BaseModel):
    individual: str | None = None
    new: bool = False
    reason: str | None = None


class ReasonRequest(BaseModel):
    reason: str | None = None


class MergeRequest(BaseModel):
    keep: str
    absorb: str
    reason: str | None = None


class SplitRequest(BaseModel):
    images: list[str]
    reason: str | None = None


class AttributesRequest(BaseModel):
    """Only the attributes given change; an empty text clears nickname or notes, [] clears alternate ids."""

    sex: Literal["female", "male", "unknown"] | None = None
    life_stage: Literal["adult", "subadult", "juvenile", "unknown"] | None = None
    nickname: str | None = Field(default=None, max_length=200)
    alternate_ids: list[str] | None = Field(default=None, max_length=50)
    notes: str | None = Field(default=None, max_length=10_000)
    reason: str | None = None


FORM_SLACK = 64 * 1024  # form fields and multipart framing beside the photo
PATH = re.compile(r"(?:[A-Za-z]:)?[\\/](?:[^\s'\"\\/]+[\\/])+([^\s'\"\\/,;:)]+)")


def redact(message: str) -> str:
    """A message fit for a client: server paths shortened to their file name."""
    return PATH.sub(lambda m: m.group(1), message)


class BodyTooLargeError(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body larger than `limit` bytes gets 413 as soon as it is known — from its
    Content-Length, or while it streams — so no route, form parser or auth check ever reads more than that."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        exceeded = refused = False

        async def bounded_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise BodyTooLargeError  # stops the form parser mid-stream
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal refused
            if not exceeded:
                await send(message)
            elif not refused:  # whatever the app made of the interrupted body, the caller gets 413
                refused = True
                await self._refuse(send)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except BodyTooLargeError:
            if not refused:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.limit // (1024 * 1024)} MB"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, registry: Registry | None = None) -> FastAPI:
    service = Service(settings, registry)
    paths = ServerPaths(settings, service.import_root, service.uploads)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="Animal identity registry", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Which animal is this photo, and where has it been seen?")
    app.state.service = service
    app.add_middleware(BodyLimit, limit=int(settings.api_max_upload_mb * 1024 * 1024) + FORM_SLACK)
    bearer = HTTPBearer(auto_error=False)

    def caller(credentials: HTTPAuthorizationCredentials | None) -> Caller | None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            return None
        return tokens.verify(service.reads, credentials.credentials)

    def needs(scope: str) -> Callable[..., Caller | None]:
        def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller | None:
            found = caller(credentials)
            if found is None:
                if scope == "read" and settings.api_public_reads:
                    return None
                raise HTTPException(401, "a valid bearer token is required (registry token create NAME)",
                                    headers={"WWW-Authenticate": "Bearer"})
            if not tokens.allows(found.scope, scope):
                raise HTTPException(403, f"this token's scope is {found.scope!r}; this needs {scope!r}")
            return found
        return check

    Reader = Annotated[Caller | None, Depends(needs("read"))]
    Reviewer = Annotated[Caller, Depends(needs("review"))]
    Admin = Annotated[Caller, Depends(needs("admin"))]

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    for error, status in ((UnknownIndividualError, 404), (CurationError, 409), (CatalogError, 409),
                          (ImageError, 415), (ManifestError, 400), (ValueError, 400)):
        def handler(_request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": redact(str(exc))}, status_code=status)

        app.add_exception_handler(error, handler)

    # --- the web workspace, its assets and the API docs, all served from installed packages ----------------
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from registry.interfaces.web import routes as web

    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
    app.mount("/static", StaticFiles(directory=str(web.HERE / "static")), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        """The OpenAPI page with its scripts from this server (FastAPI's default loads them from a CDN)."""
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Animal identity registry API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger/favicon-32x32.png")

    @app.exception_handler(web.SignInRequired)
    async def sign_in_first(_request: Request, exc: web.SignInRequired) -> Response:
        from urllib.parse import urlencode
        return RedirectResponse(f"{web.UI}/login?" + urlencode({"next": exc.next_url}), status_code=303)

    @app.get("/", include_in_schema=False)
    def workspace() -> Response:
        return RedirectResponse(f"{web.UI}/queue", status_code=303)

    app.include_router(web.build_router(service))

    # --- health and reads ------------------------------------------------------------------------------
    @app.get("/health")
    def health() -> JSONResponse:
        """Liveness and storage reachability (no token needed)."""
        checks: dict[str, Any] = {}
        try:
            with service.reads.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # reported, not raised: this endpoint must always answer
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            service.registry.index.collections()
            checks["vector_index"] = "ok"
        except Exception as exc:
            checks["vector_index"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "degraded", **checks}, status_code=200 if ok else 503)

    @app.get("/individuals")
    def individuals(_: Reader, species: str | None = None) -> list[dict[str, Any]]:
        return service.reads.individuals(species)

    @app.get("/individuals/{code}/history")
    def history(code: str, _: Reader) -> dict[str, Any]:
        return paths.redact(service.reads.history(code))

    @app.get("/images/{sha256}/history")
    def image_history(sha256: str, _: Reader) -> dict[str, Any]:
        """The history of the animal in this photo (a photo holding several animals: use its annotations)."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HTTPException(422, "give the photo's sha256 (64 hex digits)")
        return paths.redact(service.reads.history(service.reads.individual_of_image(sha256)))

    @app.get("/annotations/{annotation_id}/history")
    def annotation_history(annotation_id: int, _: Reader) -> dict[str, Any]:
        """The history of the individual one annotation (one animal in one photo) is a sighting of."""
        return paths.redact(service.reads.history(service.reads.individual_of_image(str(annotation_id))))

    @app.get("/review")
    def review_queue(_: Reader, species: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 20,
                     margin: float = 0.15) -> list[dict[str, Any]]:
        return paths.redact(review.queue(service.reads, species, limit, margin))

    @app.get("/stats")
    def stats(_: Reader) -> dict[str, int]:
        return service.reads.stats()

    @app.get("/exports/sightings.csv", response_class=PlainTextResponse)
    def export_sightings(_: Reader, species: str | None = None) -> str:
        return paths.text(_via_file(lambda out: exports.write_sightings(service.reads, out, species)))

    @app.get("/exports/capture-history", response_class=PlainTextResponse)
    def export_capture_history(_: Reader, occasion: str = "survey", species: str | None = None,
                               format: str = "csv", occasion_days: Annotated[float | None, Query(gt=0)] = None,
                               robust: bool = False) -> str:
        return _via_file(lambda out: exports.write_capture_history(service.reads, out, occasion, species, format,
                                                                   occasion_days, None, robust))

    @app.get("/exports/dwc.zip", response_class=Response)
    def export_dwc(_: Reader, species: str | None = None) -> Response:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "dwc.zip"
            darwin_core.export(service.reads, out, species)
            return Response(out.read_bytes(), media_type="application/zip",
                            headers={"Content-Disposition": 'attachment; filename="dwc.zip"'})

    # --- identification --------------------------------------------------------------------------------
    @app.post("/identify")
    def identify(
        user: Reviewer,
        image: Annotated[UploadFile, File(description="the photo")],
        species: Annotated[str, Form()],
        viewpoint: Annotated[str | None, Form()] = None,
        captured_at: Annotated[datetime | None, Form()] = None,
        latitude: Annotated[float | None, Form(ge=-90, le=90)] = None,
        longitude: Annotated[float | None, Form(ge=-180, le=180)] = None,
        survey: Annotated[str | None, Form()] = None,
        record: Annotated[bool, Form()] = False,
        bbox_x: Annotated[float | None, Form(ge=0, le=1)] = None,
        bbox_y: Annotated[float | None, Form(ge=0, le=1)] = None,
        bbox_w: Annotated[float | None, Form(gt=0, le=1)] = None,
        bbox_h: Annotated[float | None, Form(gt=0, le=1)] = None,
    ) -> dict[str, Any]:
        """Identify an uploaded photo (or the animal in its normalised box `bbox_x, bbox_y, bbox_w, bbox_h`);
        with `record`, file the decision as a sighting or a new individual."""
        parts = (bbox_x, bbox_y, bbox_w, bbox_h)
        if any(v is not None for v in parts) and any(v is None for v in parts):
            raise HTTPException(422, "a box needs all of bbox_x, bbox_y, bbox_w, bbox_h")
        box = parts if bbox_x is not None else None
        if box is not None and (box[0] + box[2] > 1.0001 or box[1] + box[3] > 1.0001):  # type: ignore[operator]
            raise HTTPException(422, "the box must lie inside the photo (x + w and y + h at most 1)")
        path, created = _store_upload(image, service.uploads, settings.api_max_upload_mb)
        try:
            result = service.run(lambda r: r.identify(path, species, viewpoint, record=record, survey=survey,
                                                      captured_at=captured_at, latitude=latitude,
                                                      longitude=longitude, box=box))
        finally:
            # only a file this request created, that nothing in the catalog refers to (the same photo may be
            # an earlier sighting's stored copy, or another request may have recorded it meanwhile)
            if not record and created and not service.reads.annotations_by_sha([path.stem]):
                path.unlink(missing_ok=True)
        return paths.redact({**result.to_json(), "image": path.name, "by": user.name})

    # --- ingestion jobs ---------------------------------------------------------------------------------
    @app.post("/ingest", status_code=202)
    def ingest(user: Admin, body: IngestRequest) -> dict[str, Any]:
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
        threading.Thread(target=_run_ingest, args=(service, job_id, source, body), daemon=True).start()
        return {"job": job_id, "status": "queued", "poll": f"/jobs/{job_id}"}

    @app.get("/jobs/{job_id}")
    def job_status(job_id: int, _: Reader) -> dict[str, Any]:
        with service.reads.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise HTTPException(404, f"no job {job_id}")
            return paths.redact({"job": job.id, "kind": job.kind, "status": job.status, "done": job.done,
                                 "total": job.total, "report": job.report, "error": job.error,
                                 "finished_at": job.finished_at.isoformat() if job.finished_at else None})

    # --- curation ---------------------------------------------------------------------------------------
    @app.post("/decisions/{decision_id}/confirm")
    def confirm(decision_id: int, user: Reviewer, body: ReasonRequest | None = None) -> dict[str, Any]:
        return service.run(lambda r: Curator(r.stores, user.name).confirm(decision_id, body.reason if body else None))

    @app.post("/decisions/{decision_id}/reassign")
    def reassign(decision_id: int, user: Reviewer, body: ReassignRequest) -> dict[str, Any]:
        return service.run(lambda r: Curator(r.stores, user.name).reassign(decision_id, body.individual, body.new,
                                                                          body.reason))

    @app.post("/decisions/{decision_id}/reject")
    def reject(decision_id: int, user: Reviewer, body: ReasonRequest | None = None) -> dict[str, Any]:
        return service.run(lambda r: Curator(r.stores, user.name).reject(decision_id, body.reason if body else None))

    @app.post("/individuals/merge")
    def merge(user: Admin, body: MergeRequest) -> dict[str, Any]:
        return service.run(lambda r: Curator(r.stores, user.name).merge(body.keep, body.absorb, body.reason))

    @app.post("/individuals/{code}/split")
    def split(code: str, user: Admin, body: SplitRequest) -> dict[str, Any]:
        return service.run(lambda r: Curator(r.stores, user.name).split(code, body.images, body.reason))

    @app.post("/individuals/{code}/attributes")
    def edit_attributes(code: str, user: Reviewer, body: AttributesRequest) -> dict[str, Any]:
        values = body.model_dump(exclude={"reason"})
        return service.run(lambda r: Curator(r.stores, user.name).edit(code, body.reason, **values))

    @app.post("/changes/{change_id}/undo")
    def undo(change_id: int, user: Admin, body: ReasonRequest | None = None) -> dict[str, Any]:
        return service.run(lambda r: Curator(r.stores, user.name).undo(change_id, body.reason if body else None))

    @app.get("/changes")
    def changes(_: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return Curator.changes_in(service.reads, limit)

    return app


def _via_file(write: Callable[[Path], Any]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        write(out)
        return out.read_text()


def _store_upload(upload: UploadFile, folder: Path, max_mb: float) -> tuple[Path, bool]:
    """Keep an uploaded photo under a name made from its content (no caller-chosen paths), after checking size
    and that it decodes as an image of a supported type. Returns the path and whether this call created it."""
    limit = int(max_mb * 1024 * 1024)
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"upload larger than {max_mb:g} MB")
    if not data:
        raise HTTPException(400, "empty upload")
    try:
        with PILImage.open(io.BytesIO(data)) as probe:
            kind = probe.format
            probe.verify()
    except Exception as exc:  # PIL raises many types for bad data; all mean the same to the caller
        raise HTTPException(415, f"{upload.filename or 'upload'}: not a supported image") from exc
    if kind not in UPLOAD_TYPES:
        raise HTTPException(415, f"image type {kind} not accepted ({', '.join(UPLOAD_TYPES)})")
    path = folder / (hashlib.sha256(data).hexdigest() + UPLOAD_TYPES[kind])
    if path.exists():
        return path, False
    handle, tmp = tempfile.mkstemp(dir=folder, suffix=".part")  # concurrent uploads of one photo: no clash
    with open(handle, "wb") as f:
        f.write(data)
    Path(tmp).replace(path)
    return path, True


def _run_ingest(service: Service, job_id: int, source: Path, body: IngestRequest) -> None:
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


def app_from_environment() -> FastAPI:
    """The app for `uvicorn --factory` (several workers): settings from REGISTRY_HOME and the other variables."""
    return create_app(Settings.load())
