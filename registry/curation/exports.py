"""Exports for population analysis: every sighting with its provenance, and capture histories (individual ×
occasion, 0/1) as CSV or as Program MARK's `.inp` encounter histories. Exports reflect merges (a merged
individual's sightings count for the individual it was merged into) and leave rejected sightings out."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select

from registry.store.catalog import Catalog
from registry.store.tables import Decision, Image, Individual, Sighting, Survey

OCCASIONS = ("survey", "year", "month")
SIGHTING_COLUMNS = ["individual", "species", "name", "captured_at", "survey", "latitude", "longitude", "image",
                    "sha256", "viewpoint", "method", "decision_id", "decision_outcome", "score", "threshold",
                    "scorer"]


def sightings(catalog: Catalog, species: str | None = None) -> Iterator[dict[str, Any]]:
    """Active sightings in time order, each attributed to the individual it resolves to now."""
    with catalog.transaction() as session:
        individuals = {i.id: i for i in session.scalars(select(Individual))}

        def resolved(individual_id: int) -> Individual:
            individual = individuals[individual_id]
            while individual.merged_into_id is not None:
                individual = individuals[individual.merged_into_id]
            return individual

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
                "latitude": image.latitude, "longitude": image.longitude, "image": image.path,
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


def _occasion(row: dict[str, Any], occasion: str) -> str | None:
    if occasion == "survey":
        return row["survey"] or None
    if not row["captured_at"]:
        return None
    return row["captured_at"][:4] if occasion == "year" else row["captured_at"][:7]


def capture_history(catalog: Catalog, occasion: str = "survey", species: str | None = None,
                    ) -> tuple[list[str], dict[str, list[int]], int]:
    """(occasions in order, individual code -> 0/1 per occasion, sightings without an occasion)."""
    if occasion not in OCCASIONS:
        raise ValueError(f"occasion must be one of {', '.join(OCCASIONS)}")
    seen: dict[str, set[str]] = {}
    first_time: dict[str, str] = {}
    undated = 0
    for row in sightings(catalog, species):
        key = _occasion(row, occasion)
        if key is None:
            undated += 1
            continue
        seen.setdefault(row["individual"], set()).add(key)
        if row["captured_at"] and (key not in first_time or row["captured_at"] < first_time[key]):
            first_time[key] = row["captured_at"]
        first_time.setdefault(key, "~" + key)  # surveys without dates sort by name, after dated ones
    occasions = sorted(first_time, key=lambda k: (first_time[k], k))
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
            "format": fmt}
