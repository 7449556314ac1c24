"""The registry as a Camtrap DP 1.0 package (deployments, media, observations), the camera-trap exchange format
that GBIF, Agouti and Wildlife Insights read, with each observation's `individualID` and how it was decided.

Every photo is one medium; every active sighting one media-level animal observation (`count` 1) with the
individual's code, sex and life stage, `classificationMethod` machine (automatic decisions) or human (reference
labels, confirmations, corrections), `classifiedBy` the decision policy version or the reviewer, and the
calibrated score as `classificationProbability`. Photos without a deployment are grouped into one deployment
per survey and location, its interval taken from the photos. The table fields follow the Camtrap DP 1.0
specification (`TABLES`: names, types, required, allowed values), so a package can be checked field by field.
"""

from __future__ import annotations

import csv
import json
import mimetypes
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from registry.curation.spreadsheet_safety import safe_row
from registry.store.catalog import Catalog, follow_merges
from registry.store.tables import (
    Annotation,
    Change,
    Decision,
    Deployment,
    Event,
    Image,
    Individual,
    Location,
    Sighting,
    Species,
    Survey,
)

CAMTRAP_DP_VERSION = "1.0"
PROFILE = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_DP_VERSION}/camtrap-dp-profile.json"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str = "string"  # Table Schema types: string, number, integer, boolean, datetime
    required: bool = False
    enum: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


TABLES: dict[str, tuple[FieldSpec, ...]] = {
    "deployments": (
        FieldSpec("deploymentID", required=True), FieldSpec("locationID"), FieldSpec("locationName"),
        FieldSpec("latitude", "number", True, minimum=-90, maximum=90),
        FieldSpec("longitude", "number", True, minimum=-180, maximum=180),
        FieldSpec("coordinateUncertainty", "integer", minimum=1),
        FieldSpec("deploymentStart", "datetime", True), FieldSpec("deploymentEnd", "datetime", True),
        FieldSpec("setupBy"), FieldSpec("cameraID"), FieldSpec("cameraModel"),
        FieldSpec("deploymentComments"),
    ),
    "media": (
        FieldSpec("mediaID", required=True), FieldSpec("deploymentID", required=True),
        FieldSpec("captureMethod", enum=("activityDetection", "timeLapse")),
        FieldSpec("timestamp", "datetime", True), FieldSpec("filePath", required=True),
        FieldSpec("filePublic", "boolean", True), FieldSpec("fileName"), FieldSpec("fileMediatype", required=True),
        FieldSpec("mediaComments"),
    ),
    "observations": (
        FieldSpec("observationID", required=True), FieldSpec("deploymentID", required=True), FieldSpec("mediaID"),
        FieldSpec("eventID"), FieldSpec("eventStart", "datetime", True), FieldSpec("eventEnd", "datetime", True),
        FieldSpec("observationLevel", required=True, enum=("media", "event")),
        FieldSpec("observationType", required=True,
                  enum=("animal", "human", "vehicle", "blank", "unknown", "unclassified")),
        FieldSpec("scientificName"), FieldSpec("count", "integer", minimum=1),
        FieldSpec("lifeStage", enum=("adult", "subadult", "juvenile")), FieldSpec("sex", enum=("female", "male")),
        FieldSpec("individualID"),
        FieldSpec("bboxX", "number", minimum=0, maximum=1), FieldSpec("bboxY", "number", minimum=0, maximum=1),
        FieldSpec("bboxWidth", "number", minimum=1e-15, maximum=1),
        FieldSpec("bboxHeight", "number", minimum=1e-15, maximum=1),
        FieldSpec("classificationMethod", enum=("human", "machine")), FieldSpec("classifiedBy"),
        FieldSpec("classificationTimestamp", "datetime"),
        FieldSpec("classificationProbability", "number", minimum=0, maximum=1),
        FieldSpec("observationComments"),
    ),
}


def table_schema(table: str) -> dict[str, Any]:
    """A Frictionless Table Schema descriptor of one Camtrap DP table (for validating a package)."""
    fields = []
    for spec in TABLES[table]:
        constraints: dict[str, Any] = {"required": spec.required}
        if spec.enum:
            constraints["enum"] = list(spec.enum)
        if spec.minimum is not None:
            constraints["minimum"] = spec.minimum
        if spec.maximum is not None:
            constraints["maximum"] = spec.maximum
        field: dict[str, Any] = {"name": spec.name, "type": spec.type, "constraints": constraints}
        if spec.type == "datetime":
            field["format"] = "%Y-%m-%dT%H:%M:%S%z"
        fields.append(field)
    schema: dict[str, Any] = {"fields": fields, "missingValues": [""]}
    key = {"deployments": "deploymentID", "media": "mediaID", "observations": "observationID"}[table]
    schema["primaryKey"] = [key]
    return schema


def _timestamp(value: datetime | None) -> str:
    """Camtrap DP wants a timezone designator; the catalog stores naive UTC."""
    return value.replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "registry"


def export(catalog: Catalog, out_dir: Path, species: str | None = None, title: str | None = None) -> dict[str, Any]:
    """Write `datapackage.json`, `deployments.csv`, `media.csv` and `observations.csv` under `out_dir`. Returns
    counts and the problems a reader would trip on (a deployment without coordinates, a photo without a time)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with catalog.transaction() as session:
        individuals = {i.id: i for i in session.scalars(select(Individual))}
        merged = catalog.merge_links(session)
        scientific = {s.name: s.scientific_name for s in session.scalars(select(Species))}
        query = (select(Image, Survey.name, Location, Deployment)
                 .outerjoin(Survey, Survey.id == Image.survey_id)
                 .outerjoin(Location, Location.id == Image.location_id)
                 .outerjoin(Deployment, Deployment.id == Image.deployment_id)
                 .order_by(Image.captured_at.is_(None), Image.captured_at, Image.id))
        annotations_query = (select(Annotation, Event.code, Sighting, Decision)
                             .outerjoin(Event, Event.id == Annotation.event_id)
                             .outerjoin(Sighting, (Sighting.annotation_id == Annotation.id)
                                        & (Sighting.status == "active"))
                             .outerjoin(Decision, Decision.id == Sighting.decision_id)
                             .order_by(Annotation.id))
        if species:
            query = query.where(Image.id.in_(select(Annotation.image_id).where(Annotation.species == species)))
            annotations_query = annotations_query.where(Annotation.species == species)
        photos = session.execute(query).all()
        animals: dict[int, list[tuple[Annotation, str | None, Sighting, Decision | None]]] = {}
        for annotation, event_code, sighting, decision in session.execute(annotations_query):
            if sighting is not None:
                animals.setdefault(annotation.image_id, []).append((annotation, event_code, sighting, decision))
        reviewers = _reviewers(session)

        deployments: dict[str, dict[str, Any]] = {}
        media_rows, observation_rows = [], []
        for image, survey, location, deployment in photos:
            if deployment is not None:
                deployment_id = deployment.code
            else:  # the registry's fallback: one deployment per survey and location
                deployment_id = "|".join(filter(None, [survey or "no-survey", location.name if location else None]))
            entry = deployments.setdefault(deployment_id, {
                "row": deployment, "location": location or (deployment.location if deployment else None),
                "times": [], "points": []})
            if image.captured_at:
                entry["times"].append(image.captured_at)
            if image.latitude is not None and image.longitude is not None:
                entry["points"].append((image.latitude, image.longitude))
            path = catalog.paths.local(image.path)
            media_rows.append({
                "mediaID": image.sha256, "deploymentID": deployment_id, "captureMethod": "",
                "timestamp": _timestamp(image.captured_at), "filePath": _relative(path, out_dir),
                "filePublic": "false", "fileName": path.name,
                "fileMediatype": mimetypes.guess_type(path.name)[0] or "image/jpeg", "mediaComments": "",
            })
            if image.captured_at is None:
                problems.append(f"{path.name}: no capture time (media.timestamp is required)")
            for annotation, event_code, sighting, decision in animals.get(image.id, []):
                individual = individuals[follow_merges(sighting.individual_id, merged.get)]
                machine = sighting.method == "automatic"
                if machine and decision is not None:
                    by = f"registry decision policy v{decision.policy_id}" if decision.policy_id else "registry"
                elif sighting.method == "reference":
                    by = "reference label"
                else:
                    by = reviewers.get(sighting.decision_id or -1, "reviewer")
                box = annotation.box or ("", "", "", "")
                observation_rows.append({
                    "observationID": f"obs-{sighting.id}", "deploymentID": deployment_id, "mediaID": image.sha256,
                    "eventID": event_code or "", "eventStart": _timestamp(image.captured_at),
                    "eventEnd": _timestamp(image.captured_at), "observationLevel": "media",
                    "observationType": "animal",
                    "scientificName": scientific.get(annotation.species) or annotation.species, "count": 1,
                    "lifeStage": "" if individual.life_stage == "unknown" else individual.life_stage,
                    "sex": "" if individual.sex == "unknown" else individual.sex,
                    "individualID": individual.code,
                    "bboxX": box[0], "bboxY": box[1], "bboxWidth": box[2], "bboxHeight": box[3],
                    "classificationMethod": "machine" if machine else "human", "classifiedBy": by,
                    "classificationTimestamp": _timestamp(decision.created_at if decision else sighting.created_at),
                    "classificationProbability": _probability(decision) if machine else "",
                    "observationComments": f"sighting method {sighting.method}; annotation {annotation.id} "
                                           f"({annotation.source})",
                })

        for deployment in session.scalars(select(Deployment).order_by(Deployment.id)):
            # a camera that photographed nothing is effort too: every registered deployment is exported
            deployments.setdefault(deployment.code, {"row": deployment, "location": deployment.location,
                                                     "times": [], "points": []})

    deployment_rows = []
    for deployment_id, entry in deployments.items():
        row, location = entry["row"], entry["location"]
        latitude = location.latitude if location and location.latitude is not None else _mean(entry["points"], 0)
        longitude = location.longitude if location and location.longitude is not None else _mean(entry["points"], 1)
        start = (row.started_at if row and row.started_at else min(entry["times"], default=None))
        end = (row.ended_at if row and row.ended_at else max(entry["times"], default=None))
        if latitude is None or longitude is None:
            problems.append(f"deployment {deployment_id}: no coordinates (deployments.latitude/longitude are "
                            "required; give the location's or the photos' coordinates)")
        if start is None:
            problems.append(f"deployment {deployment_id}: no operating interval and no photo with a time")
        deployment_rows.append({
            "deploymentID": deployment_id, "locationID": str(location.id) if location else "",
            "locationName": location.name if location else "",
            "latitude": "" if latitude is None else f"{latitude:.6f}",
            "longitude": "" if longitude is None else f"{longitude:.6f}", "coordinateUncertainty": "",
            "deploymentStart": _timestamp(start), "deploymentEnd": _timestamp(end), "setupBy": "", "cameraID": "",
            "cameraModel": "", "deploymentComments": (row.setup or "") if row else "grouped by the registry",
        })

    for table, rows in (("deployments", deployment_rows), ("media", media_rows), ("observations", observation_rows)):
        with open(out_dir / f"{table}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=[f.name for f in TABLES[table]])
            writer.writeheader()
            writer.writerows(safe_row(row) for row in rows)
    package = _descriptor(title or "Individual identification registry", deployment_rows, media_rows,
                          observation_rows, species)
    (out_dir / "datapackage.json").write_text(json.dumps(package, indent=2) + "\n")
    return {"out": str(out_dir), "deployments": len(deployment_rows), "media": len(media_rows),
            "observations": len(observation_rows), "problems": problems}


def _probability(decision: Decision | None) -> str:
    """The calibrated score of a match (a raw match count before calibration is no probability; a "new"
    decision's score belongs to the runner-up, not to this animal)."""
    if decision is None or decision.outcome != "match" or decision.score is None:
        return ""
    if (decision.model_versions or {}).get("scorer", "raw-local-matches") == "raw-local-matches":
        return ""
    return f"{min(max(decision.score, 0.0), 1.0):.4f}"


def _relative(path: Path, out_dir: Path) -> str:
    """Camtrap DP file paths are URLs or paths relative to the package; a photo elsewhere stays absolute."""
    try:
        return Path(os.path.relpath(path, out_dir)).as_posix()
    except ValueError:  # another drive (Windows)
        return path.as_posix()


def _mean(points: list[tuple[float, float]], axis: int) -> float | None:
    return sum(p[axis] for p in points) / len(points) if points else None


def _reviewers(session: Any) -> dict[int, str]:
    """Who last confirmed or corrected each decision (from the audit trail)."""
    out: dict[int, str] = {}
    for change in session.scalars(select(Change).where(Change.kind.in_(("confirm", "reassign")),
                                                       Change.undone_by_id.is_(None)).order_by(Change.id)):
        match = re.search(r"decision (\d+)", change.summary)
        if match:
            out[int(match.group(1))] = change.actor
    return out


def _descriptor(title: str, deployments: list[dict], media: list[dict], observations: list[dict],
                species: str | None) -> dict[str, Any]:
    latitudes = [float(d["latitude"]) for d in deployments if d["latitude"]]
    longitudes = [float(d["longitude"]) for d in deployments if d["longitude"]]
    times = sorted(m["timestamp"] for m in media if m["timestamp"])
    spatial = None
    if latitudes:
        west, east, south, north = min(longitudes), max(longitudes), min(latitudes), max(latitudes)
        spatial = {"type": "Polygon", "bbox": [west, south, east, north],
                   "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]]}
    names = sorted({o["scientificName"] for o in observations})
    resources = [{"name": table, "path": f"{table}.csv", "profile": "tabular-data-resource", "format": "csv",
                  "mediatype": "text/csv", "encoding": "utf-8",
                  "schema": f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_DP_VERSION}/"
                            f"{table}-table-schema.json"}
                 for table in TABLES]
    return {
        "resources": resources, "profile": PROFILE, "name": _slug(title + (f"-{species}" if species else "")),
        "title": title, "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "contributors": [{"title": "identity registry export", "role": "publisher"}],
        "project": {"title": title, "samplingDesign": "opportunistic", "captureMethod": ["activityDetection"],
                    "individualAnimals": True, "observationLevel": ["media"]},
        "spatial": spatial, "temporal": {"start": times[0][:10] if times else None,
                                         "end": times[-1][:10] if times else None},
        "taxonomic": [{"scientificName": name} for name in names],
    }
