"""Reading a Camtrap DP package (`datapackage.json` + `deployments.csv`, `media.csv`, `observations.csv`).

Deployments become the registry's locations and deployments (coordinates, operating interval, camera notes);
each photo (image media; videos are skipped) becomes a row with its deployment's location and coordinates and
its timestamp; an animal observation of the photo (media-level, or event-level covering the photo's time at
its deployment) gives the row its species (`scientificName`) and, with `individualID`, its identity — a
reference label. A media-level observation with a bounding box (`bboxX, bboxY, bboxWidth, bboxHeight`,
normalised) is one animal: one annotation each, so a photo of three animals gives three rows; `eventID` places
the photo in its event (burst). Every problem names the table, the line and the reason; the good rows go on.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from registry.ingest.manifest import Manifest, ManifestError, RowProblem
from registry.services.recording import PhotoRow
from registry.store.tables import LIFE_STAGES, SEXES
from registry.store.times import to_utc

IMAGE_TYPES = ("image/",)


@dataclass(frozen=True)
class DeploymentInfo:
    """A deployment as the package describes it, registered before its photos."""

    code: str
    location: str | None
    latitude: float | None
    longitude: float | None
    started_at: datetime | None
    ended_at: datetime | None
    setup: str | None


def is_package(path: Path) -> bool:
    path = Path(path)
    return (path.is_dir() and (path / "datapackage.json").is_file()) or path.name == "datapackage.json"


def _time(text: str | None, what: str) -> datetime | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{what} {text!r} is not an ISO 8601 date-time") from exc
    return value  # with its offset (Camtrap DP requires one): the ingest converts every time to UTC


def _number(text: str | None, what: str, low: float, high: float) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ValueError(f"{what} {text!r} is not a number") from exc
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is outside [{low}, {high}]")
    return value


def _inside(folder: Path, relative: str) -> Path | None:
    """The package's file at `relative`, or None when that path leaves the package folder (absolute, `..`, a
    link pointing out): a package read from anywhere must not make the server read its other files."""
    root = folder.resolve()
    path = (folder / relative).resolve()
    return path if path.is_relative_to(root) else None


def _table(folder: Path, descriptor: dict, name: str) -> tuple[Path, list[dict[str, str]]]:
    resource = next((r for r in descriptor.get("resources", []) if r.get("name") == name), None)
    relative = resource.get("path") if resource else f"{name}.csv"
    if not isinstance(relative, str):
        raise ManifestError(f"{folder / 'datapackage.json'}: resource {name!r} must have one path")
    path = _inside(folder, relative)
    if path is None:
        raise ManifestError(f"{folder / 'datapackage.json'}: resource {name!r} path {relative!r} is outside the "
                            "package folder; a package names its tables relative to itself")
    if not path.is_file():
        raise ManifestError(f"{folder}: the Camtrap DP table {relative} is missing")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return path, list(csv.DictReader(handle))


def _animal_row(line: int, folder: Path, file_path: str, timestamp: datetime | None, deployment: DeploymentInfo,
                observed: list[tuple[int, dict[str, str]]], default_species: str | None) -> PhotoRow:
    """One animal of a photo, from its observation (or the photo's box-less observations, together)."""
    observations = [o for _, o in observed]

    def one(column: str, allowed: tuple[str, ...] | None = None) -> str | None:
        values = {(o.get(column) or "").strip() for o in observations} - {""}
        if len(values) > 1:
            raise ValueError(f"observations name several {column} values ({', '.join(sorted(values))}) for one "
                             "animal; give each animal its own bounding box")
        if allowed is not None and values - set(allowed):
            raise ValueError(f"{column} {sorted(values)}: Camtrap DP allows {', '.join(allowed[:-1])}")
        return values.pop() if values else None

    species = default_species or one("scientificName")
    if species is None:
        raise ValueError("no scientificName on its observation; give --species")
    box = None
    if len(observations) == 1 and (observations[0].get("bboxX") or "").strip():
        o = observations[0]
        x, y = _number(o.get("bboxX"), "bboxX", 0, 1), _number(o.get("bboxY"), "bboxY", 0, 1)
        w, h = _number(o.get("bboxWidth"), "bboxWidth", 0, 1), _number(o.get("bboxHeight"), "bboxHeight", 0, 1)
        if None in (x, y, w, h) or not w or not h:
            raise ValueError(f"observation on line {observed[0][0]}: a bounding box needs bboxX, bboxY, bboxWidth "
                             "and bboxHeight")
        box = (x, y, min(w, 1 - x), min(h, 1 - y))  # type: ignore[operator]
    image = Path(file_path)  # photos may lie beside the package; a server confines them to its import folder
    return PhotoRow(
        line=line, image=image if image.is_absolute() else folder / image, species=species,
        identity=one("individualID"), captured_at=timestamp, latitude=deployment.latitude,
        longitude=deployment.longitude, location=deployment.location, deployment=deployment.code,
        sex=one("sex", SEXES), life_stage=one("lifeStage", LIFE_STAGES), box=box,
        source="camtrap-dp" if box is not None else "whole-image",
        sequence=one("eventID"))


def read_package(path: Path, default_species: str | None = None) -> Manifest:
    """The package's photos as manifest rows, with its deployments (`Manifest.deployments`)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        descriptor = json.loads((folder / "datapackage.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{folder / 'datapackage.json'}: not a readable data package ({exc})") from exc
    warnings: list[str] = []
    if "camtrap-dp" not in str(descriptor.get("profile", "")):
        warnings.append(f"{folder / 'datapackage.json'}: profile {descriptor.get('profile')!r} is not Camtrap DP; "
                        "read as one anyway")
    problems: list[RowProblem] = []

    deployments_path, deployment_rows = _table(folder, descriptor, "deployments")
    deployments: dict[str, DeploymentInfo] = {}
    for line, row in enumerate(deployment_rows, start=2):
        code = (row.get("deploymentID") or "").strip()
        try:
            if not code:
                raise ValueError("no deploymentID")
            if code in deployments:
                raise ValueError(f"deploymentID {code!r} appears twice")
            start, end = _time(row.get("deploymentStart"), "deploymentStart"), _time(row.get("deploymentEnd"),
                                                                                     "deploymentEnd")
            if start and end and end < start:
                raise ValueError(f"deploymentEnd {end} is before deploymentStart {start}")
            deployments[code] = DeploymentInfo(
                code, (row.get("locationName") or row.get("locationID") or "").strip() or None,
                _number(row.get("latitude"), "latitude", -90, 90),
                _number(row.get("longitude"), "longitude", -180, 180),
                start, end, "; ".join(v for v in ((row.get("cameraModel") or "").strip(),
                                                  (row.get("deploymentComments") or "").strip()) if v) or None)
        except ValueError as exc:
            problems.append(RowProblem(str(deployments_path), line, str(exc)))

    media_path, media_rows = _table(folder, descriptor, "media")
    _observations_path, observation_rows = _table(folder, descriptor, "observations")
    by_media: dict[str, list[tuple[int, dict[str, str]]]] = {}
    by_event: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in enumerate(observation_rows, start=2):
        if (row.get("observationType") or "").strip() != "animal":
            continue
        media_id = (row.get("mediaID") or "").strip()
        if media_id:
            by_media.setdefault(media_id, []).append((line, row))
        else:  # event-level: applies to the deployment's photos between eventStart and eventEnd
            by_event.setdefault((row.get("deploymentID") or "").strip(), []).append((line, row))

    rows: list[PhotoRow] = []
    skipped_videos = without_animal = 0
    seen: set[str] = set()
    for line, media in enumerate(media_rows, start=2):
        try:
            media_id = (media.get("mediaID") or "").strip()
            if not media_id:
                raise ValueError("no mediaID")
            if media_id in seen:
                raise ValueError(f"mediaID {media_id!r} appears twice")
            seen.add(media_id)
            if not (media.get("fileMediatype") or "image/").startswith(IMAGE_TYPES):
                skipped_videos += 1
                continue
            deployment = deployments.get((media.get("deploymentID") or "").strip())
            if deployment is None:
                raise ValueError(f"deploymentID {media.get('deploymentID')!r} is not in deployments.csv")
            file_path = (media.get("filePath") or "").strip()
            if not file_path:
                raise ValueError("no filePath")
            if "://" in file_path:
                raise ValueError(f"filePath {file_path} is a URL; download the photos and give local paths")
            timestamp = _time(media.get("timestamp"), "timestamp")
            observed = list(by_media.get(media_id, []))
            for obs_line, obs in by_event.get(deployment.code, []):
                start, end = _time(obs.get("eventStart"), "eventStart"), _time(obs.get("eventEnd"), "eventEnd")
                if timestamp and start and end and to_utc(start) <= to_utc(timestamp) <= to_utc(end):  # type: ignore[operator]
                    observed.append((obs_line, obs))
            if not observed:
                without_animal += 1
                continue
            boxed = [(n, o) for n, o in observed if (o.get("bboxX") or "").strip()]
            whole = [(n, o) for n, o in observed if not (o.get("bboxX") or "").strip()]
            animals = [[item] for item in boxed]
            if whole and not boxed:  # observations without boxes all describe the whole photo: one animal
                animals.append(whole)
            for group in animals:
                rows.append(_animal_row(line, folder, file_path, timestamp, deployment, group, default_species))
        except ValueError as exc:
            problems.append(RowProblem(str(media_path), line, str(exc)))
    if without_animal:
        warnings.append(f"{media_path}: {without_animal} photos have no animal observation and were not read")
    if skipped_videos:
        warnings.append(f"{media_path}: {skipped_videos} videos skipped (photos only)")
    return Manifest(folder / "datapackage.json", "camtrap-dp", rows, problems, warnings,
                    deployments=list(deployments.values()))
