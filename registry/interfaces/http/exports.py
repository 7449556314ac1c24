"""Exports for mark-recapture and GBIF: sightings, capture histories, the Darwin Core Archive."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from registry.curation import darwin_core, exports
from registry.interfaces.http.access import PathsDep, Reader, ServiceDep

router = APIRouter()


def _via_file(write: Callable[[Path], Any]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        write(out)
        return out.read_text()


@router.get("/exports/sightings.csv", response_class=PlainTextResponse)
def export_sightings(_: Reader, service: ServiceDep, paths: PathsDep, species: str | None = None) -> str:
    return paths.text(_via_file(lambda out: exports.write_sightings(service.reads, out, species)))


@router.get("/exports/capture-history", response_class=PlainTextResponse)
def export_capture_history(_: Reader, service: ServiceDep, occasion: str = "survey", species: str | None = None,
                           format: str = "csv", occasion_days: Annotated[float | None, Query(gt=0)] = None,
                           robust: bool = False) -> str:
    return _via_file(lambda out: exports.write_capture_history(service.reads, out, occasion, species, format,
                                                               occasion_days, None, robust))


@router.get("/exports/dwc.zip", response_class=Response)
def export_dwc(_: Reader, service: ServiceDep, species: str | None = None) -> Response:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dwc.zip"
        darwin_core.export(service.reads, out, species)
        return Response(out.read_bytes(), media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="dwc.zip"'})
