"""Reads: health, individuals and their histories, the review queue, stats. Straight to SQL on the service's
read catalog, so they never wait behind an ingest; photos are named without server paths."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from sqlalchemy import text

from registry.curation import review
from registry.interfaces.http.access import PathsDep, Reader, ServiceDep

router = APIRouter()


@router.get("/health")
def health(service: ServiceDep) -> JSONResponse:
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


@router.get("/individuals")
def individuals(_: Reader, service: ServiceDep, species: str | None = None) -> list[dict[str, Any]]:
    return service.reads.individuals(species)


@router.get("/individuals/{code}/history")
def history(code: str, _: Reader, service: ServiceDep, paths: PathsDep) -> dict[str, Any]:
    return paths.redact(service.reads.history(code))


@router.get("/images/{sha256}/history")
def image_history(sha256: str, _: Reader, service: ServiceDep, paths: PathsDep) -> dict[str, Any]:
    """The history of the animal in this photo (a photo holding several animals: use its annotations)."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise HTTPException(422, "give the photo's sha256 (64 hex digits)")
    return paths.redact(service.reads.history(service.reads.individual_of_image(sha256)))


@router.get("/annotations/{annotation_id:rowid}/history")
def annotation_history(annotation_id: int, _: Reader, service: ServiceDep, paths: PathsDep) -> dict[str, Any]:
    """The history of the individual one annotation (one animal in one photo) is a sighting of."""
    return paths.redact(service.reads.history(service.reads.individual_of_image(str(annotation_id))))


@router.get("/review")
def review_queue(_: Reader, service: ServiceDep, paths: PathsDep, species: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 20, margin: float = 0.15) -> list[dict[str, Any]]:
    return paths.redact(review.queue(service.reads, species, limit, margin))


@router.get("/stats")
def stats(_: Reader, service: ServiceDep) -> dict[str, int]:
    return service.reads.stats()
