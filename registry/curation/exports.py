"""Exports for population analysis: every sighting with its provenance, and capture histories (individual ×
occasion, 0/1) as CSV or as Program MARK's `.inp` encounter histories. Exports reflect merges (a merged
individual's sightings count for the individual it was merged into) and leave rejected sightings out."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from registry.curation.spreadsheet_safety import safe_cells, safe_row
from registry.store.catalog import Catalog, CatalogError, follow_merges
from registry.store.tables import (
    Annotation,
    Decision,
    Deployment,
    Event,
    Image,
    Individual,
    Location,
    Sighting,
    Survey,
)

OCCASIONS = ("survey", "year", "month")
SIGHTING_COLUMNS = ["individual", "species", "name", "sex", "life_stage", "captured_at", "survey", "location",
                    "deployment", "latitude", "longitude", "image", "sha256", "annotation_id", "bbox_x", "bbox_y",
                    "bbox_w", "bbox_h", "event", "viewpoint", "method", "decision_id", "decision_outcome",
                    "score", "threshold", "scorer", "sighting_id"]


def sightings(catalog: Catalog, species: str | None = None) -> Iterator[dict[str, Any]]:
    """Active sightings in time order, each attributed to the individual it resolves to now. Plain columns, not
    ORM rows: an export of a million sightings is dominated by building objects otherwise (measured by
    benchmarks/catalog_scale.py)."""
    with catalog.transaction() as session:
        individuals = {row.id: row for row in session.execute(
            select(Individual.id, Individual.code, Individual.species, Individual.name, Individual.sex,
                   Individual.life_stage))}
        merged = catalog.merge_links(session)

        def resolved(individual_id: int) -> Any:
            if individual_id not in merged:
                return individuals[individual_id]
            return individuals[follow_merges(individual_id, merged.get)]

        # the decision's columns, not the row: its ranked candidates (JSON) are not exported
        query = (select(Sighting.id.label("sighting_id"), Sighting.individual_id, Sighting.method,
                        Sighting.decision_id, Annotation.id.label("annotation_id"), Annotation.bbox_x,
                        Annotation.bbox_y, Annotation.bbox_w, Annotation.bbox_h, Annotation.viewpoint,
                        Image.captured_at, Image.latitude, Image.longitude, Image.path, Image.sha256,
                        Survey.name.label("survey"), Decision.outcome, Decision.score, Decision.threshold,
                        Decision.model_versions, Location.name.label("location"),
                        Deployment.code.label("deployment"), Event.code.label("event"))
                 .join(Annotation, Annotation.id == Sighting.annotation_id)
                 .join(Image, Image.id == Annotation.image_id)
                 .outerjoin(Event, Event.id == Annotation.event_id)
                 .outerjoin(Survey, Survey.id == Image.survey_id)
                 .outerjoin(Decision, Decision.id == Sighting.decision_id)
                 .outerjoin(Location, Location.id == Image.location_id)
                 .outerjoin(Deployment, Deployment.id == Image.deployment_id)
                 .where(Sighting.status == "active")
                 .order_by(Image.captured_at.is_(None), Image.captured_at, Image.id, Annotation.id))
        if species:
            query = query.where(Annotation.species == species)
        for row in session.execute(query.execution_options(yield_per=5000)):
            individual = resolved(row.individual_id)
            boxed = row.bbox_w is not None
            yield {
                "individual": individual.code, "species": individual.species, "name": individual.name or "",
                "sex": individual.sex, "life_stage": individual.life_stage,
                "captured_at": row.captured_at.isoformat() if row.captured_at else "", "survey": row.survey or "",
                "location": row.location or "", "deployment": row.deployment or "",
                "latitude": row.latitude, "longitude": row.longitude, "image": str(catalog.paths.local(row.path)),
                "sha256": row.sha256, "annotation_id": row.annotation_id,
                "bbox_x": row.bbox_x if boxed else "", "bbox_y": row.bbox_y if boxed else "",
                "bbox_w": row.bbox_w if boxed else "", "bbox_h": row.bbox_h if boxed else "",
                "event": row.event or "", "viewpoint": row.viewpoint or "",
                "method": row.method,
                "decision_id": row.decision_id or "", "decision_outcome": row.outcome or "",
                "score": row.score if row.score is not None else "",
                "threshold": row.threshold if row.threshold is not None else "",
                "scorer": (row.model_versions or {}).get("scorer", "") if row.outcome else "",
                "sighting_id": row.sighting_id,
            }


def write_sightings(catalog: Catalog, out: Path, species: str | None = None) -> int:
    count = 0
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SIGHTING_COLUMNS)
        writer.writeheader()
        for row in sightings(catalog, species):
            writer.writerow(safe_row(row))
            count += 1
    return count


def _period(value: str, occasion: str) -> str:
    return value[:4] if occasion == "year" else value[:7]


def _occasions(catalog: Catalog, occasion: str) -> tuple[list[str], dict[str, str]]:
    """The sampling occasions, from the sampling itself rather than from the detections: every survey (ordered
    by its start date or first photo; undated ones after, in the order they were made), or every year/month in
    which any photo was taken. A survey
    in which no animal was identified is still an occasion: its zeros are data."""
    with catalog.transaction() as session:
        if occasion == "survey":
            rows = session.execute(
                select(Survey.name, Survey.start_date, func.min(Image.captured_at), Survey.created_at)
                .outerjoin(Image, Image.survey_id == Survey.id).group_by(Survey.id)).all()
            # dated surveys by date; a survey without dates where it was made, in the order it was made
            keyed = sorted(rows, key=lambda r: (r[1] is None and r[2] is None, str(r[1] or r[2] or r[3]), r[0]))
            return [r[0] for r in keyed], {}
        times = session.scalars(select(Image.captured_at).where(Image.captured_at.is_not(None)).distinct())
        periods = sorted({_period(t.isoformat(), occasion) for t in times})
        return periods, {}


@dataclass(frozen=True)
class OccasionRange:
    """An explicit sampling occasion: photos taken from `start` up to and including `end` (dates or times)."""

    label: str
    start: datetime
    end: datetime


def read_occasions(path: Path) -> list[OccasionRange]:
    """`start,end[,label]` rows (ISO dates or date-times; a date's end covers that whole day), in time order and
    not overlapping; each problem names the file and line."""
    ranges = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"start", "end"} <= set(reader.fieldnames):
            raise CatalogError(f"{path}: needs columns start,end (and optionally label)")
        for line, row in enumerate(reader, start=2):
            try:
                start = datetime.fromisoformat(row["start"].strip())
                end_text = row["end"].strip()
                end = datetime.fromisoformat(end_text)
                if len(end_text) == 10:  # a date: the whole day
                    end = end.replace(hour=23, minute=59, second=59, microsecond=999999)
            except (ValueError, AttributeError) as exc:
                raise CatalogError(f"{path}:{line}: start/end must be ISO dates ({exc})") from exc
            if end < start:
                raise CatalogError(f"{path}:{line}: end {row['end']} is before start {row['start']}")
            if ranges and start <= ranges[-1].end:
                raise CatalogError(f"{path}:{line}: occasions must be in time order and not overlap")
            ranges.append(OccasionRange((row.get("label") or "").strip() or start.date().isoformat(), start, end))
    if not ranges:
        raise CatalogError(f"{path}: no occasions")
    return ranges


def capture_history(catalog: Catalog, occasion: str = "survey", species: str | None = None,
                    occasion_days: float | None = None, ranges: list[OccasionRange] | None = None,
                    robust: bool = False) -> tuple[list[str], dict[str, list[int]], int]:
    """(occasions in order, individual code -> 0/1 per occasion, sightings without an occasion), for one
    species: a capture history mixing species is meaningless, so a registry of several needs `species`.

    Occasions: every survey, year or month (`occasion`), consecutive periods of `occasion_days` from the first
    photo's day, or explicit `ranges`. `robust`: Pollock's robust design, primary occasions = surveys, secondary
    = the days with photos within each (labels `survey/day`)."""
    if occasion not in OCCASIONS:
        raise ValueError(f"occasion must be one of {', '.join(OCCASIONS)}")
    if species is None:
        known = catalog.species()
        if len(known) > 1:
            raise CatalogError(f"this registry holds {len(known)} species ({', '.join(known)}): give --species "
                               "(one capture history per species)")
        species = known[0] if known else None
    rows = list(sightings(catalog, species))
    key_of = _occasion_keys(catalog, occasion, occasion_days, ranges, robust)
    occasions = key_of.occasions
    seen: dict[str, set[str]] = {}
    undated = 0
    for row in rows:
        key = key_of(row)
        if key is None:
            undated += 1
            continue
        seen.setdefault(row["individual"], set()).add(key)
    matrix = {code: [int(o in keys) for o in occasions] for code, keys in sorted(seen.items())}
    return occasions, matrix, undated


class _OccasionKeys:
    """Which occasion a sighting belongs to, and the occasions in order (from the sampling, not the detections:
    a survey or period in which nobody was identified is still an occasion, its zeros are data)."""

    def __init__(self, occasions: list[str], key: Any, primaries: list[str] | None = None) -> None:
        self.occasions = occasions
        self.primaries = primaries  # robust design: each occasion's primary occasion (survey)
        self._key = key

    def __call__(self, row: dict[str, Any]) -> str | None:
        return self._key(row)


def _occasion_keys(catalog: Catalog, occasion: str, occasion_days: float | None,
                   ranges: list[OccasionRange] | None, robust: bool) -> _OccasionKeys:
    def when(row: dict[str, Any]) -> datetime | None:
        return datetime.fromisoformat(row["captured_at"]) if row["captured_at"] else None

    if ranges:
        def in_range(row: dict[str, Any]) -> str | None:
            moment = when(row)
            return next((r.label for r in ranges if moment and r.start <= moment <= r.end), None)
        return _OccasionKeys([r.label for r in ranges], in_range)
    with catalog.transaction() as session:
        times = sorted(t for t in session.scalars(select(Image.captured_at).where(Image.captured_at.is_not(None))))
        surveys, _ = _occasions(catalog, "survey")
        days_by_survey: dict[str, set[str]] = {}
        for name, moment in session.execute(select(Survey.name, Image.captured_at)
                                            .join(Image, Image.survey_id == Survey.id)
                                            .where(Image.captured_at.is_not(None))):
            days_by_survey.setdefault(name, set()).add(moment.date().isoformat())
    if robust:
        pairs = [(survey, day) for survey in surveys for day in sorted(days_by_survey.get(survey, ()))]

        def secondary(row: dict[str, Any]) -> str | None:
            moment = when(row)
            return f"{row['survey']}/{moment.date().isoformat()}" if moment and row["survey"] else None
        return _OccasionKeys([f"{survey}/{day}" for survey, day in pairs], secondary, [p[0] for p in pairs])
    if occasion_days:
        if occasion_days <= 0:
            raise CatalogError("occasion length must be positive")
        if not times:
            return _OccasionKeys([], lambda row: None)
        first = times[0].replace(hour=0, minute=0, second=0, microsecond=0)
        length = timedelta(days=occasion_days)
        count = int((times[-1] - first) / length) + 1
        labels = [(first + k * length).date().isoformat() for k in range(count)]

        def period(row: dict[str, Any]) -> str | None:
            moment = when(row)
            return labels[int((moment - first) / length)] if moment else None
        return _OccasionKeys(labels, period)
    occasions, _ = _occasions(catalog, occasion)
    if occasion == "survey":
        return _OccasionKeys(occasions, lambda row: row["survey"] or None)
    return _OccasionKeys(occasions, lambda row: _period(row["captured_at"], occasion) if row["captured_at"] else None)


MARK_COVARIATES = ("female", "male", "adult", "subadult", "juvenile")  # 0/1 indicators; all 0 = unknown


def write_capture_history(catalog: Catalog, out: Path, occasion: str = "survey", species: str | None = None,
                          fmt: str = "csv", occasion_days: float | None = None,
                          ranges: list[OccasionRange] | None = None, robust: bool = False) -> dict[str, Any]:
    """The capture histories as a CSV RMark/marked read as they are (`individual, ch, freq, sex, life_stage`,
    then one 0/1 column per occasion; `ch` is text) or Program MARK's `.inp` (`/* code */ ch freq covariates;`
    with sex and life-stage indicator covariates)."""
    occasions, matrix, undated = capture_history(catalog, occasion, species, occasion_days, ranges, robust)
    primaries = _occasion_keys(catalog, occasion, occasion_days, ranges, robust).primaries
    attributes = {i["code"]: i for i in catalog.individuals(species)}
    label = ("robust design (survey/day)" if robust else "explicit ranges" if ranges
             else f"{occasion_days:g}-day periods" if occasion_days else occasion)
    with open(out, "w", newline="") as f:
        if fmt == "mark":
            f.write(f"/* capture histories by {label}: {' '.join(occasions)} */\n")
            f.write(f"/* ch freq {' '.join(MARK_COVARIATES)} (individual covariates, 0/1) */\n")
            for code, row in matrix.items():
                about = attributes.get(code, {})
                values = [int(about.get("sex") == c or about.get("life_stage") == c) for c in MARK_COVARIATES]
                f.write(f"/* {code} */ {''.join(map(str, row))} 1 {' '.join(map(str, values))};\n")
        elif fmt == "csv":
            writer = csv.writer(f)
            writer.writerow(["individual", "ch", "freq", "sex", "life_stage", *occasions])
            for code, row in matrix.items():
                about = attributes.get(code, {})
                writer.writerow(safe_cells([code, "".join(map(str, row)), 1, about.get("sex", "unknown"),
                                            about.get("life_stage", "unknown"), *row]))
        else:
            raise ValueError(f"unknown format {fmt!r} (csv or mark)")
    result: dict[str, Any] = {"out": str(out), "occasions": occasions, "individuals": len(matrix),
                              "undated_sightings": undated, "format": fmt,
                              "species": species or (catalog.species() or [None])[0]}
    if primaries is not None:  # RMark's process.data(time.intervals = ...): 0 within a primary, 1 between
        result["time_intervals"] = [int(a != b) for a, b in itertools.pairwise(primaries)]
    return result


def write_photos(catalog: Catalog, out_dir: Path, species: str | None = None) -> dict[str, Any]:
    """A folder per individual (its code) with each of its active sightings: the animal's crop (with the margin
    the models see) for a boxed annotation, a copy of the photo for a whole-image one, named by capture time and
    content hash so they sort in time order: what people ask for to check or share an animal's file. Photos that
    cannot be read from their stored path are reported, not fatal."""
    import shutil

    from registry.matching.imaging import ImageError, crop_to_box, load_image

    out_dir = Path(out_dir)
    copied, missing = 0, []
    folders: set[str] = set()
    for row in sightings(catalog, species):
        source = Path(row["image"])
        folder = out_dir / row["individual"]
        stamp = row["captured_at"].replace(":", "").replace("-", "")[:15] if row["captured_at"] else "undated"
        box = None if row["bbox_x"] == "" else (row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"])
        suffix = source.suffix.lower() if box is None else ".jpg"
        animal = "" if box is None else f"_a{row['annotation_id']}"  # one photo, several animals: one file each
        target = folder / f"{stamp}_{row['sha256'][:10]}{animal}{suffix}"
        if not source.is_file():
            missing.append(str(source))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        folders.add(row["individual"])
        if not target.exists():
            if box is None:
                shutil.copy2(source, target)
            else:
                try:
                    crop_to_box(load_image(source, max_side=None), box).save(target, quality=92)
                except ImageError:
                    missing.append(str(source))
                    continue
        copied += 1
    return {"out": str(out_dir), "individuals": len(folders), "photos": copied, "missing": missing}
