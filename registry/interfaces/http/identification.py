"""`POST /identify`: an uploaded photo (or the animal in a box of it) identified, and with `record` filed as a
sighting or a new individual. Uploads are kept under a name made from their content; one that is not recorded
is removed only if this request created it and nothing in the catalog refers to it."""

from __future__ import annotations

import hashlib
import io
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from PIL import Image as PILImage

from registry.interfaces.http.access import PathsDep, Reviewer, ServiceDep

router = APIRouter()
UPLOAD_TYPES = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}


@router.post("/identify")
def identify(
    user: Reviewer,
    service: ServiceDep,
    paths: PathsDep,
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
    path, created = store_upload(image, service.uploads, service.settings.api_max_upload_mb)
    try:
        result = service.run(lambda r: r.identify(path, species, viewpoint, record=record, survey=survey,
                                                  captured_at=captured_at, latitude=latitude,
                                                  longitude=longitude, box=box))
    finally:
        # only a file this request created, that nothing in the catalog refers to (the same photo may be an
        # earlier sighting's stored copy, or another request may have recorded it meanwhile)
        if not record and created and not service.reads.annotations_by_sha([path.stem]):
            path.unlink(missing_ok=True)
    return paths.redact({**result.to_json(), "image": path.name, "by": user.name})


def store_upload(upload: UploadFile, folder: Path, max_mb: float) -> tuple[Path, bool]:
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
