"""Reading a season's manifest: the registry's CSV or the wildlife-datasets / AnimalCLEF `metadata.csv`.

Every row is validated before any work starts. A bad row becomes a `RowProblem` naming the file, the line
and the reason; the good rows go on. A manifest that cannot be read at all raises `ManifestError`.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path

from PIL import Image

from registry.ingest.manifest import Manifest, ManifestError, RowProblem
from registry.services.recording import PhotoRow
from registry.store.tables import LIFE_STAGES, SEXES
from registry.store.times import zone

BOX_COLUMNS = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
REGISTRY_COLUMNS = {"image", "species", "identity", "viewpoint", "captured_at", "latitude", "longitude",
                    "location", "deployment", "sequence", "sex", "life_stage", *BOX_COLUMNS}
ANIMALCLEF_COLUMNS = {"image_id", "identity", "path", "species", "orientation", "date", "split"}
UNKNOWN_IDENTITY = {"", "nan", "none", "null", "unknown", "new_individual"}


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _float(value: str | None, name: str, low: float, high: float) -> float | None:
    text = _text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError as exc:
        raise ValueError(f"{name} {text!r} is not a number") from exc
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} {text} is outside [{low}, {high}]")
    return number


def _choice(value: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    text = _text(value)
    if text is None:
        return None
    if text.lower() not in allowed:
        raise ValueError(f"{name} {text!r} is not one of {', '.join(allowed)}")
    return text.lower()


def _datetime(value: str | None) -> datetime | None:
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"date {text!r} is not ISO 8601 (e.g. 2024-06-01T08:30:00)") from exc
    return parsed  # with its offset when it names one: the ingest converts every time to UTC (store.times)


def _time_zone(value: str | None) -> str | None:
    text = _text(value)
    if text is not None:
        zone(text)  # an unknown zone is this row's problem, named
    return text


def _box(raw: dict[str, str | None], image: Path, pixels: bool) -> tuple[float, float, float, float] | None:
    """The row's bounding box (all four columns or none), normalised; pixel boxes are divided by the photo's
    size."""
    values = [_text(raw.get(c)) for c in BOX_COLUMNS]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ValueError(f"a bounding box needs all of {', '.join(BOX_COLUMNS)}")
    try:
        x, y, w, h = (float(v) for v in values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"bounding box {values} is not four numbers") from exc
    if pixels:
        try:
            with Image.open(image) as photo:
                width, height = photo.size
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {image} to convert its pixel box ({exc})") from exc
        x, y, w, h = x / width, y / height, w / width, h / height
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or x < 0 or y < 0 \
            or x + w > 1.0001 or y + h > 1.0001:
        unit = "pixels, inside the photo" if pixels else "normalised 0..1 with x + w and y + h at most 1"
        raise ValueError(f"bounding box {values} is not valid ({unit}; use --bbox-pixels for pixel boxes)")
    return (x, y, min(w, 1 - x), min(h, 1 - y))


def read_manifest(path: Path, default_species: str | None = None, bbox_pixels: bool = False) -> Manifest:
    """Parse and validate a manifest; image paths are resolved relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            raw_rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: not a readable CSV file ({exc})") from exc
    if not header:
        raise ManifestError(f"{path}: empty manifest (no header row)")
    columns = set(header)
    if "image" in columns:
        fmt, image_col, date_col, view_col = "registry", "image", "captured_at", "viewpoint"
        known = REGISTRY_COLUMNS
    elif {"image_id", "path"} <= columns:
        fmt, image_col, date_col, view_col = "animalclef", "path", "date", "orientation"
        known = ANIMALCLEF_COLUMNS
    else:
        raise ManifestError(
            f"{path}: no image column. Expected 'image' (registry format) or 'image_id' + 'path' "
            f"(wildlife-datasets / AnimalCLEF metadata.csv); found {header}"
        )
    if "species" not in columns and default_species is None:
        raise ManifestError(f"{path}: no 'species' column; give the species on the command line (--species)")
    warnings = [f"{path}: column {c!r} is not used" for c in header if c not in known]

    rows: list[PhotoRow] = []
    problems: list[RowProblem] = []
    seen: dict[str, int] = {}
    placements: dict[str, str | None] = {}  # deployment -> its location, as the first row naming it says
    base = path.parent
    for index, raw in enumerate(raw_rows):
        line = index + 2
        raw = {(k or "").strip(): v for k, v in raw.items()}
        if None in raw.values() and any(v is None for k, v in raw.items() if k):
            problems.append(RowProblem(str(path), line, "row has fewer fields than the header"))
            continue
        try:
            image_text = _text(raw.get(image_col))
            if image_text is None:
                raise ValueError(f"no {image_col}")
            image = Path(image_text)
            image = image if image.is_absolute() else base / image
            species = _text(raw.get("species")) or default_species
            if species is None:
                raise ValueError("no species")
            identity = _text(raw.get("identity"))
            if identity is not None and identity.lower() in UNKNOWN_IDENTITY:
                identity = None
            box = _box(raw, image, bbox_pixels) if fmt == "registry" else None
            row = PhotoRow(
                line=line, image=image, species=species, identity=identity,
                viewpoint=_text(raw.get(view_col)),
                captured_at=_datetime(raw.get(date_col)),
                latitude=_float(raw.get("latitude"), "latitude", -90, 90),
                longitude=_float(raw.get("longitude"), "longitude", -180, 180),
                location=_text(raw.get("location")),
                deployment=_text(raw.get("deployment")),
                sex=_choice(raw.get("sex"), "sex", SEXES),
                life_stage=_choice(raw.get("life_stage"), "life_stage", LIFE_STAGES),
                box=box, source="manifest" if box is not None else "whole-image",
                sequence=_text(raw.get("sequence")),
                time_zone=_time_zone(raw.get("time_zone")),
            )
        except ValueError as exc:
            problems.append(RowProblem(str(path), line, str(exc)))
            continue
        placed = placements.setdefault(row.deployment, row.location) if row.deployment else None
        if row.deployment and row.location and placed != row.location:
            problems.append(RowProblem(str(path), line, f"deployment {row.deployment!r} is at location {placed!r} "
                                                        f"in an earlier row, not {row.location!r}"))
            continue
        key = f"{row.image.resolve()}|{row.region}"  # one photo may hold several animals, each box once
        if key in seen:
            problems.append(RowProblem(str(path), line, f"duplicate of line {seen[key]} ({image_text})"))
            continue
        seen[key] = line
        rows.append(row)
    return Manifest(path, fmt, rows, problems, warnings)


def count_items(source: Path) -> int:
    """How many animals a source names (for progress): a CSV's data rows, a Camtrap DP package's observations,
    a MegaDetector file's detections, or the files under a folder."""
    source = Path(source)
    package = source if source.is_dir() else source.parent
    if (package / "datapackage.json").is_file() and (source.is_dir() or source.name == "datapackage.json"):
        return count_rows(package / "observations.csv")
    if source.is_dir():
        return sum(1 for p in source.rglob("*") if p.is_file())
    if source.suffix.lower() == ".json":
        import json

        try:
            images = json.loads(source.read_text(encoding="utf-8")).get("images") or []
            return sum(len(e.get("detections") or []) for e in images if isinstance(e, dict)) or len(images)
        except (OSError, ValueError, AttributeError):
            return 0
    return count_rows(source) if source.is_file() else 0


def count_rows(path: Path) -> int:
    """Data rows in a CSV file (for progress bars); 0 when the file cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            return max(0, sum(1 for _ in csv.reader(f)) - 1)
    except OSError:
        return 0


def write_manifest(rows: list[PhotoRow], path: Path) -> Path:
    """Write rows as a registry CSV with absolute image paths (so the file can live anywhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "identity", "species", "viewpoint", "captured_at", "latitude", "longitude",
                         "location", "deployment", "sequence", "sex", "life_stage", *BOX_COLUMNS])
        for r in rows:
            writer.writerow([str(r.image.resolve()), r.identity or "", r.species, r.viewpoint or "",
                             r.captured_at.isoformat() if r.captured_at else "",
                             "" if r.latitude is None else r.latitude, "" if r.longitude is None else r.longitude,
                             r.location or "", r.deployment or "", r.sequence or "", r.sex or "",
                             r.life_stage or "", *(r.box if r.box is not None else ("",) * 4)])
    return path


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
LAYOUTS = ("auto", "csv", "identity-folders", "plain", "camtrap-dp", "megadetector")


def _exif_time(path: Path) -> datetime | None:
    """When the camera says the photo was taken (EXIF DateTimeOriginal, else DateTime); header only."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            details = exif.get_ifd(0x8769)
            text = details.get(36867) or exif.get(306)
            offset = details.get(36881)  # OffsetTimeOriginal, "+02:00", where the camera recorded it
    except Exception:  # an unreadable photo is reported when it is decoded, with its own reason
        return None
    try:
        taken = datetime.strptime(str(text).strip(), "%Y:%m:%d %H:%M:%S") if text else None
    except ValueError:
        return None
    if taken is not None and offset:
        try:
            return datetime.fromisoformat(taken.isoformat() + str(offset).strip())
        except ValueError:
            return taken
    return taken


def read_folder(path: Path, species: str | None, layout: str = "auto") -> Manifest:
    """A folder as a manifest: one sub-folder per identity (`identity-folders`), or photos without identities
    (`plain`, searched recursively). Capture times come from EXIF so identify mode keeps time order."""
    path = Path(path)
    if species is None:
        raise ManifestError(f"{path}: a folder has no species column; give the species (--species)")
    entries = sorted(path.iterdir())
    if layout == "auto":  # sub-folders and no photos beside them: one folder per animal
        loose_photos = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES]
        layout = "identity-folders" if any(e.is_dir() for e in entries) and not loose_photos else "plain"
    rows: list[PhotoRow] = []
    warnings: list[str] = []
    if layout == "identity-folders":
        stray = [e.name for e in entries if not e.is_dir()]
        if stray:
            warnings.append(f"{path}: files outside identity folders are not used: {stray[:5]}")
        photos = [(p, d.name) for d in entries if d.is_dir() for p in sorted(d.rglob("*"))]
    elif layout == "plain":
        photos = [(p, None) for p in sorted(path.rglob("*"))]
    else:
        raise ManifestError(f"{path}: unknown folder layout {layout!r}; use identity-folders or plain")
    for number, (photo, identity) in enumerate(p for p in photos if p[0].is_file()):
        if photo.suffix.lower() not in IMAGE_SUFFIXES:
            warnings.append(f"{photo}: not an image file name, not used")
            continue
        rows.append(PhotoRow(number + 1, photo, species, identity, None, _exif_time(photo)))
    return Manifest(path, layout, rows, [], warnings)


def read_source(path: Path, default_species: str | None = None, layout: str = "auto", bbox_pixels: bool = False,
                min_confidence: float = 0.2) -> Manifest:
    """A season's photos from a CSV manifest, a Camtrap DP package (a folder with `datapackage.json`, or that
    file), a MegaDetector batch-output file, or a folder of photos (see `read_folder`)."""
    from registry.ingest import camtrap_dp, megadetector

    path = Path(path)
    if layout not in LAYOUTS:
        raise ManifestError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    if layout == "camtrap-dp" or (layout == "auto" and camtrap_dp.is_package(path)):
        return camtrap_dp.read_package(path, default_species)
    if layout == "megadetector" or (layout == "auto" and path.suffix.lower() == ".json"):
        return megadetector.read_batch_output(path, default_species, min_confidence)
    if path.is_dir():
        if layout == "csv":
            raise ManifestError(f"{path} is a folder, not a CSV manifest")
        return read_folder(path, default_species, layout)
    if layout in ("identity-folders", "plain"):
        raise ManifestError(f"{path} is not a folder (layout {layout})")
    return read_manifest(path, default_species, bbox_pixels)
