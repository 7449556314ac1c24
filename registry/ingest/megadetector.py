"""Reading MegaDetector batch output (`md.json`): each detection of an `animal` category at or above the
confidence threshold is one animal — one annotation, with the detector's box and confidence.

The format (MegaDetector's batch-processing output, v1.x): `detection_categories` maps category ids to names;
`images[]` each have `file` (relative to the JSON's folder, or absolute), `detections[]` with `category`,
`conf` and `bbox [x_min, y_min, width, height]` normalised to the photo, or a `failure` — reported, not fatal.
MegaDetector says "animal", not which species: the species comes from `--species` (or the file's
`info.species`, which this registry writes for synthetic seasons).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from registry.ingest.manifest import Manifest, ManifestError, RowProblem
from registry.services.recording import PhotoRow

ANIMAL = "animal"


def read_batch_output(path: Path, default_species: str | None = None, min_confidence: float = 0.2) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: MegaDetector file not found") from exc
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("detection_categories"), dict):
        raise ManifestError(f"{path}: not MegaDetector batch output (needs 'images' and 'detection_categories')")
    animal = {str(k) for k, v in data["detection_categories"].items() if str(v).lower() == ANIMAL}
    if not animal:
        raise ManifestError(f"{path}: no category named 'animal' in detection_categories "
                            f"{data['detection_categories']}")
    species = default_species or (data.get("info") or {}).get("species")
    if not species:
        raise ManifestError(f"{path}: MegaDetector does not name species; give --species")
    rows: list[PhotoRow] = []
    problems: list[RowProblem] = []
    below = empty = 0
    for index, entry in enumerate(data["images"]):
        where = index + 1  # the entry's position in images[] (1-based) stands in for a line number
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"].strip():
                raise ValueError("an image entry without 'file'")
            if entry.get("failure"):
                raise ValueError(f"{entry['file']}: MegaDetector failed on it ({entry['failure']})")
            file = Path(entry["file"])
            image = file if file.is_absolute() else path.parent / file
            detections = entry.get("detections") or []
            if not isinstance(detections, list):
                raise ValueError(f"{entry['file']}: 'detections' is not a list")
            found: list[PhotoRow] = []  # an entry goes in whole or is reported whole
            for number, detection in enumerate(detections):
                if not isinstance(detection, dict):
                    raise ValueError(f"{entry['file']}: detection {number} is not an object")
                if str(detection.get("category")) not in animal:
                    continue
                conf = float(detection.get("conf", 0))
                if not math.isfinite(conf):
                    raise ValueError(f"{entry['file']}: detection {number} confidence {conf} is not a number")
                if conf < min_confidence:
                    below += 1
                    continue
                box = detection.get("bbox")
                if not (isinstance(box, list) and len(box) == 4):
                    raise ValueError(f"{entry['file']}: detection {number} has no bbox [x, y, width, height]")
                x, y, w, h = (float(v) for v in box)
                if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or x < 0 or y < 0 \
                        or x > 1 or y > 1:
                    raise ValueError(f"{entry['file']}: detection {number} bbox {box} is not normalised")
                found.append(PhotoRow(line=where, image=image, species=species, box=(x, y, min(w, 1 - x),
                                                                                     min(h, 1 - y)),
                                      source="megadetector", confidence=conf))
            rows += found
            empty += not found
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            problems.append(RowProblem(str(path), where, str(exc)))
    warnings = []
    if below:
        warnings.append(f"{path}: {below} animal detections below --min-conf {min_confidence} not used")
    if empty:
        warnings.append(f"{path}: {empty} photos without an animal detection at or above {min_confidence}")
    return Manifest(path, "megadetector", rows, problems, warnings)
