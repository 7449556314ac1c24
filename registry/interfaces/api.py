"""The HTTP API (FastAPI): the same `Registry`, `Curator`, review and export code the CLI uses, over HTTP. This
module assembles the app (body limit, error handlers, docs, the web workspace); the routes live in
`interfaces/http/`, a module per resource.

Every route but `/health` needs a bearer token (`registry token create NAME --scope ...`) whose scope covers it:
`read` browses, `review` also identifies and decides, `admin` also ingests, merges, splits and undoes (reads
need no token when `api_public_reads` is set). Writes that use the models or the embedded vector index run one
at a time in a process; reads go straight to SQL on their own sessions, so they never wait behind an ingest.
Several worker processes are allowed when the catalog is PostgreSQL and the index a Qdrant server. Request
bodies are bounded while they stream in, before anything parses them. Errors never carry stack traces or server
paths: expected ones become 4xx with the reason, anything else a logged 500.
"""

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.curation.curator import CurationError
from registry.ingest.manifest import ManifestError
from registry.interfaces.http import curation, exports, identification, jobs, reads
from registry.interfaces.server_paths import ServerPaths
from registry.interfaces.service import Service
from registry.matching.imaging import ImageError
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import CatalogError, UnknownIndividualError

log = logging.getLogger(__name__)

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

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="Animal identity registry", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Which animal is this photo, and where has it been seen?")
    app.state.service = service
    app.state.paths = ServerPaths(settings, service.import_root, service.uploads)
    app.add_middleware(BodyLimit, limit=int(settings.api_max_upload_mb * 1024 * 1024) + FORM_SLACK)

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
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from registry.interfaces.web import routes as web

    # Swagger UI 5 (swagger-ui-py ships it): it reads OpenAPI 3.1, which FastAPI publishes
    app.mount("/static/swagger", StaticFiles(directory=str(files("swagger_ui") / "static")), name="swagger")
    app.mount("/static", StaticFiles(directory=str(web.HERE / "static")), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        """The OpenAPI page with its scripts from this server (FastAPI's default loads them from a CDN)."""
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Animal identity registry API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger/favicon-32x32.png")

    from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from registry.interfaces.web.pages import error_page, wants_page

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """JSON for API clients; a page with a way back for a person in a browser."""
        if wants_page(request):
            return error_page(request, exc.status_code, str(exc.detail))
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def unreadable(request: Request, exc: RequestValidationError) -> Response:
        if wants_page(request):
            fields = ", ".join(str(e.get("loc", ["?"])[-1]) for e in exc.errors())
            return error_page(request, 400, f"these values cannot be used: {fields}")
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(web.SignInRequired)
    async def sign_in_first(_request: Request, exc: web.SignInRequired) -> Response:
        from urllib.parse import urlencode
        return RedirectResponse(f"{web.UI}/login?" + urlencode({"next": exc.next_url}), status_code=303)

    @app.get("/", include_in_schema=False)
    def workspace() -> Response:
        return RedirectResponse(f"{web.UI}/queue", status_code=303)

    app.include_router(web.build_router())
    for resource in (reads, exports, identification, jobs, curation):  # the JSON API, a module per resource
        app.include_router(resource.router)
    return app


def app_from_environment() -> FastAPI:
    """The app for `uvicorn --factory` (several workers): settings from REGISTRY_HOME and the other variables."""
    return create_app(Settings.load())
