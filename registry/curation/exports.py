"""Exports for population analysis: every sighting with its provenance, and capture histories (individual ×
occasion, 0/1) as CSV or as Program MARK's `.inp` encounter histories. Exports reflect merges (a merged
individual's sightings count for the individual it was merged into) and leave rejected sightings out."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from registry.store.catalog import Catalog, CatalogError, follow_merges
from registry.store.tables import Decision, Image, Individual, Sighting, Survey

OCCASIONS = ("survey", "year", "month")
SIGHTING_COLUMNS = ["individual", "species", "name", "captured_at", "survey", "latitude", "longitude", "image",
                    "sha256", "viewpoint", "method", "decision_id", "decision_outcome", "score", "threshold",
                    "scorer"]


def sightings(catalog: Catalog, species: str | None = None) -> Iterator[dict[str, Any]]:
    """Active sightings in time order, each attributed to the individual it resolves to now."""
    with catalog.transaction() as session:
        individuals = {i.id: i for i in session.scalars(select(Individual))}
        merged = catalog.merge_links(session)

        def resolved(individual_id: int) -> Individual:
            return individuals[follow_merges(individual_id, merged.get)]

        query = (select(Sighting, Image, Survey.name, Decision)
                 .join(Image, Image.id == Sighting.image_id)
                 .outerjoin(Survey, Survey.id == Image.survey_id)
                 .outerjoin(Decision, Decision.id == Sighting.decision_id)
                 .where(Sighting.status == "active")
                 .order_by(Image.captured_at.is_(None), Image.captured_at, Image.id))
        if species:
            query = query.where(Image.species == species)
        for sighting, image, survey, decision in session.execute(query):
            individual = resolved(sighting.individual_id)
            yield {
                "individual": individual.code, "species": individual.species, "name": individual.name or "",
                "captured_at": image.captured_at.isoformat() if image.captured_at else "", "survey": survey or "",
                "latitude": image.latitude, "longitude": image.longitude, "image": str(catalog.paths.local(image.path)),
                "sha256": image.sha256, "viewpoint": image.viewpoint or "", "method": sighting.method,
                "decision_id": sighting.decision_id or "", "decision_outcome": decision.outcome if decision else "",
                "score": decision.score if decision else "", "threshold": decision.threshold if decision else "",
                "scorer": (decision.model_versions or {}).get("scorer", "") if decision else "",
            }


def write_sightings(catalog: Catalog, out: Path, species: str | None = None) -> int:
    count = 0
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SIGHTING_COLUMNS)
        writer.writeheader()
        for row in sightings(catalog, species):
            writer.writerow(row)
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


def capture_history(catalog: Catalog, occasion: str = "survey", species: str | None = None,
                    ) -> tuple[list[str], dict[str, list[int]], int]:
    """(occasions in order, individual code -> 0/1 per occasion, sightings without an occasion), for one
    species: a capture history mixing species is meaningless, so a registry of several needs `species`."""
    if occasion not in OCCASIONS:
        raise ValueError(f"occasion must be one of {', '.join(OCCASIONS)}")
    if species is None:
        known = catalog.species()
        if len(known) > 1:
            raise CatalogError(f"this registry holds {len(known)} species ({', '.join(known)}): give --species "
                               "(one capture history per species)")
        species = known[0] if known else None
    occasions, _ = _occasions(catalog, occasion)
    seen: dict[str, set[str]] = {}
    undated = 0
    for row in sightings(catalog, species):
        if occasion == "survey":
            key = row["survey"] or None
        else:
            key = _period(row["captured_at"], occasion) if row["captured_at"] else None
        if key is None:
            undated += 1
            continue
        seen.setdefault(row["individual"], set()).add(key)
    matrix = {code: [int(o in keys) for o in occasions] for code, keys in sorted(seen.items())}
    return occasions, matrix, undated


def write_capture_history(catalog: Catalog, out: Path, occasion: str = "survey", species: str | None = None,
                          fmt: str = "csv") -> dict[str, Any]:
    occasions, matrix, undated = capture_history(catalog, occasion, species)
    with open(out, "w", newline="") as f:
        if fmt == "mark":
            f.write(f"/* capture histories by {occasion}: {' '.join(occasions)} */\n")
            for code, row in matrix.items():
                f.write(f"/* {code} */ {''.join(map(str, row))} 1;\n")
        elif fmt == "csv":
            writer = csv.writer(f)
            writer.writerow(["individual", *occasions])
            for code, row in matrix.items():
                writer.writerow([code, *row])
        else:
            raise ValueError(f"unknown format {fmt!r} (csv or mark)")
    return {"out": str(out), "occasions": occasions, "individuals": len(matrix), "undated_sightings": undated,
            "format": fmt, "species": species or (catalog.species() or [None])[0]}
