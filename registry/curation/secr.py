"""Spatial capture-recapture input for R's secr (`read.capthist(captfile, trapfile, detector = "proximity")`).

Detectors are the registry's locations (a deployment without a location is its own detector), at coordinates
projected to metres in the coordinate system the analyst names (an EPSG code, via pyproj). Occasions are
consecutive periods of `occasion_days` from the first day any camera operated; a detector's usage on an
occasion is 1 when one of its deployments operated during it (the deployment's interval, else the span of its
photos). `capt.txt` has one line per detection (`Session ID Occasion Detector`), `traps.txt` one per detector
(`Detector X Y usage`), both in the DENSITY text format secr reads; `detectors.csv` maps the detector labels
(secr allows no spaces, commas or underscores in them) back to the registry's names. The same detections are
written for R's oSCR (`data2oscr(edf, tdf = list(tdf), sess.col = 1, id.col = 2, occ.col = 3, trap.col = 4,
K = occasions, ntraps = detectors)`): `oscr_edf.csv` (session, individual, occasion, trap number) and
`oscr_tdf.csv` (trap number, X, Y, one 0/1 operation column per occasion). A photo holding several animals gives
each of its annotations' individuals a detection.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from registry.curation.spreadsheet_safety import safe_cells
from registry.store.catalog import Catalog, CatalogError, follow_merges
from registry.store.tables import Annotation, Deployment, Image, Individual, Location, Sighting


@dataclass
class _Detector:
    label: str
    name: str
    points: list[tuple[float, float]] = field(default_factory=list)  # (lat, lon) of its photos
    coordinates: tuple[float, float] | None = None  # the location's own (lat, lon)
    intervals: list[tuple[datetime, datetime]] = field(default_factory=list)


def _label(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "detector"
    label, n = base, 1
    while label in taken:
        n += 1
        label = f"{base}-{n}"
    taken.add(label)
    return label


def export(catalog: Catalog, out_dir: Path, epsg: int, species: str | None = None,
           occasion_days: float = 1.0) -> dict[str, Any]:
    """Write capt.txt, traps.txt and detectors.csv for one species. Sightings without a place or a time are
    left out and counted."""
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_epsg(epsg)
    except CRSError as exc:
        raise CatalogError(f"EPSG:{epsg} is not a coordinate reference system pyproj knows ({exc})") from exc
    if not crs.is_projected:
        raise CatalogError(f"EPSG:{epsg} ({crs.name}) is not projected: secr needs coordinates in metres "
                           "(e.g. the UTM zone of the study area)")
    if occasion_days <= 0:
        raise CatalogError("occasion length must be positive")
    every = catalog.species()
    if species is None:
        if len(every) != 1:
            raise CatalogError(f"the registry has several species ({', '.join(every)}): give one (--species)")
        species = every[0]
    elif species not in every:
        raise CatalogError(f"no photos of species {species!r}; known: {', '.join(every) or 'none'}")
    to_metres = Transformer.from_crs(4326, crs, always_xy=True)

    detectors: dict[tuple[str, int], _Detector] = {}
    taken: set[str] = set()
    detections: list[tuple[str, datetime, tuple[str, int]]] = []
    photo_spans: dict[tuple[tuple[str, int], int | None], list[datetime]] = {}
    skipped = 0
    with catalog.transaction() as session:
        individuals = {i.id: i for i in session.scalars(select(Individual))}
        merged = catalog.merge_links(session)
        rows = session.execute(
            select(Image, Location, Deployment, Sighting)
            .outerjoin(Location, Location.id == Image.location_id)
            .outerjoin(Deployment, Deployment.id == Image.deployment_id)
            .join(Annotation, Annotation.image_id == Image.id)
            .outerjoin(Sighting, (Sighting.annotation_id == Annotation.id) & (Sighting.status == "active"))
            .where(Annotation.species == species)).all()
        for image, location, deployment, sighting in rows:
            if location is not None:
                key, name = ("location", location.id), location.name
            elif deployment is not None:
                key, name = ("deployment", deployment.id), deployment.code
            else:
                if sighting is not None:
                    skipped += 1
                continue
            detector = detectors.get(key)
            if detector is None:
                detector = detectors[key] = _Detector(_label(name, taken), name)
                if location is not None and location.latitude is not None and location.longitude is not None:
                    detector.coordinates = (location.latitude, location.longitude)
            if image.latitude is not None and image.longitude is not None:
                detector.points.append((image.latitude, image.longitude))
            if deployment is not None and deployment.started_at and deployment.ended_at:
                interval = (deployment.started_at, deployment.ended_at)
                if interval not in detector.intervals:
                    detector.intervals.append(interval)
            elif image.captured_at is not None:  # no recorded interval: the span of its photos, per deployment
                photo_spans.setdefault((key, deployment.id if deployment else None), []).append(image.captured_at)
            if sighting is None:
                continue
            if image.captured_at is None:
                skipped += 1
                continue
            code = individuals[follow_merges(sighting.individual_id, merged.get)].code
            detections.append((code, image.captured_at, key))
        for (key, _), times in photo_spans.items():
            detectors[key].intervals.append((min(times), max(times)))
        # a camera that operated but photographed none of them is a detector too: its zeros are data
        for deployment, location in session.execute(
                select(Deployment, Location).outerjoin(Location, Location.id == Deployment.location_id)
                .where(Deployment.started_at.is_not(None), Deployment.ended_at.is_not(None))):
            key = ("location", location.id) if location else ("deployment", deployment.id)
            detector = detectors.get(key)
            if detector is None:
                if location is None or location.latitude is None or location.longitude is None:
                    continue
                detector = detectors[key] = _Detector(_label(location.name, taken), location.name,
                                                      coordinates=(location.latitude, location.longitude))
            interval = (deployment.started_at, deployment.ended_at)
            if interval not in detector.intervals:
                detector.intervals.append(interval)  # type: ignore[arg-type]
    placed = {key: d for key, d in detectors.items() if d.coordinates or d.points}
    if not placed:
        raise CatalogError(f"no {species} photo has a location with coordinates: secr needs detector positions")
    starts = [start for d in placed.values() for start, _ in d.intervals]
    ends = [end for d in placed.values() for _, end in d.intervals]
    if not starts:
        raise CatalogError(f"no {species} photo has a capture time and no deployment an interval: secr needs "
                           "occasions")
    first = min(starts).replace(hour=0, minute=0, second=0, microsecond=0)
    length = timedelta(days=occasion_days)
    occasions = max(1, int((max(ends) - first) / length) + 1)

    def occasion(moment: datetime) -> int:
        return int((moment - first) / length) + 1

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    traps = []
    for detector in placed.values():
        latitude, longitude = detector.coordinates or (
            sum(p[0] for p in detector.points) / len(detector.points),
            sum(p[1] for p in detector.points) / len(detector.points))
        x, y = to_metres.transform(longitude, latitude)
        usage = ["0"] * occasions
        for start, end in detector.intervals:
            for k in range(occasion(start), occasion(end) + 1):
                usage[k - 1] = "1"
        traps.append((detector, x, y, "".join(usage)))
    session_name = _label(species, set())
    lines = sorted({(session_name, code, occasion(moment), placed[key].label)
                    for code, moment, key in detections if key in placed},
                   key=lambda r: (r[1], r[2], r[3]))
    with open(out_dir / "capt.txt", "w") as handle:
        handle.write(f"# {species}: detections per individual, occasion ({occasion_days:g} days from "
                     f"{first.date().isoformat()}) and detector\n# Session ID Occasion Detector\n")
        for line in lines:
            handle.write(" ".join(str(v) for v in line) + "\n")
    with open(out_dir / "traps.txt", "w") as handle:
        handle.write(f"# detectors in EPSG:{epsg} ({crs.name}), metres; usage per occasion (1 = operating)\n"
                     "# Detector X Y usage\n")
        for detector, x, y, usage in traps:
            handle.write(f"{detector.label} {x:.1f} {y:.1f} {usage}\n")
    with open(out_dir / "detectors.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["detector", "registry_name", "x", "y", "occasions_operating"])
        for detector, x, y, usage in traps:
            writer.writerow(safe_cells([detector.label, detector.name, f"{x:.1f}", f"{y:.1f}",
                                        usage.count("1")]))
    with open(out_dir / "oscr_edf.csv", "w", newline="") as handle:
        number = {detector.label: k for k, (detector, *_rest) in enumerate(traps, start=1)}
        writer = csv.writer(handle)
        writer.writerow(["session", "individual", "occasion", "trap"])
        for _session, code, occasion_number, label in lines:
            writer.writerow(safe_cells([1, code, occasion_number, number[label]]))
    with open(out_dir / "oscr_tdf.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trap", "x", "y", *(f"occ{k}" for k in range(1, occasions + 1))])
        for k, (_detector, x, y, usage) in enumerate(traps, start=1):
            writer.writerow([k, f"{x:.1f}", f"{y:.1f}", *usage])
    per_individual: dict[str, int] = defaultdict(int)
    for _, code, _, _ in lines:
        per_individual[code] += 1
    return {"out": str(out_dir), "species": species, "epsg": epsg, "detectors": len(traps),
            "occasions": occasions, "first_day": first.date().isoformat(), "detections": len(lines),
            "individuals": len(per_individual), "skipped_sightings": skipped}
