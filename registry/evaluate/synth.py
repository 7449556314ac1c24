"""Synthetic population of a spotted species, so a fresh clone can demo and test with nothing downloaded.

Each individual owns a unique coat (spots and blotches on a body shape). Every photograph of it is a new
rendering: random pose (rotation, scale, perspective), lighting, blur, sensor noise, background clutter and
partial occlusion. Seasons mix returning and new individuals. Everything is deterministic from the seed.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SPECIES = "synleopard"
BODY_SIZE = (640, 360)  # canonical coat texture, width x height
PHOTO_SIZE = (512, 384)
MANIFEST_COLUMNS = ["image", "identity", "species", "viewpoint", "captured_at", "latitude", "longitude"]


@dataclass(frozen=True)
class Coat:
    """An individual's identity: the coat pattern every photograph of it shares."""

    identity: str
    base_rgb: tuple[int, int, int]
    spots: np.ndarray  # (n, 6): x, y in [0, 1], radii rx, ry (fraction of body height), angle, darkness


@dataclass(frozen=True)
class SynthRecord:
    path: Path
    identity: str
    season: int
    captured_at: datetime


def make_coat(identity: str, rng: np.random.Generator) -> Coat:
    base = tuple(int(c) for c in rng.integers([170, 120, 60], [225, 175, 110]))
    n_spots = int(rng.integers(55, 90))
    xy = rng.uniform(0.04, 0.96, size=(n_spots, 2))
    radius = rng.gamma(2.2, 0.018, size=(n_spots, 1)) + 0.012
    aspect = rng.uniform(0.55, 1.0, size=(n_spots, 1))
    angle = rng.uniform(0, math.pi, size=(n_spots, 1))
    darkness = rng.uniform(0.55, 0.95, size=(n_spots, 1))
    spots = np.hstack([xy, radius, radius * aspect, angle, darkness])
    return Coat(identity, base, spots)  # type: ignore[arg-type]


def _ellipse_polygon(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 18) -> list[tuple]:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + xi * ca - yi * sa, cy + xi * sa + yi * ca) for xi, yi in zip(x, y, strict=True)]


def render_coat(coat: Coat) -> Image.Image:
    """Canonical RGBA texture of the coat on an elliptical body (alpha = body mask)."""
    w, h = BODY_SIZE
    texture = Image.new("RGB", (w, h), coat.base_rgb)
    draw = ImageDraw.Draw(texture)
    for x, y, rx, ry, angle, dark in coat.spots:
        colour = tuple(int(c * (1 - dark)) for c in coat.base_rgb)
        cx, cy = x * w, y * h
        draw.polygon(_ellipse_polygon(cx, cy, rx * h, ry * h, angle), fill=colour)
        if rx * h > 9:  # large spots become rosettes with a lighter centre, as in real spotted cats
            inner = tuple(int(c * 0.85) for c in coat.base_rgb)
            draw.polygon(_ellipse_polygon(cx, cy, rx * h * 0.45, ry * h * 0.45, angle), fill=inner)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse([4, 4, w - 5, h - 5], fill=255)
    texture = texture.filter(ImageFilter.GaussianBlur(0.8))
    texture.putalpha(mask.filter(ImageFilter.GaussianBlur(2)))
    return texture


def _perspective_coeffs(dst: list[tuple[float, float]], src: list[tuple[float, float]]) -> list[float]:
    """Coefficients for PIL's PERSPECTIVE transform, which maps output (dst) pixels to input (src) pixels."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    a = np.array(rows, dtype=np.float64)
    b = np.array([c for pt in src for c in pt], dtype=np.float64)
    return np.linalg.solve(a, b).tolist()


def random_scenery(rng: np.random.Generator) -> Image.Image:
    w, h = PHOTO_SIZE
    top = rng.integers(60, 200, size=3)
    bottom = rng.integers(40, 160, size=3)
    ramp = np.linspace(0, 1, h)[:, None, None]
    grad = (top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp).repeat(w, axis=1)
    image = Image.fromarray(grad.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(15, 40))):  # vegetation and rocks: clutter unrelated to any individual
        colour = tuple(int(c) for c in rng.integers(20, 190, size=3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            draw.line([(x, y), (x + rng.normal(0, 60), y + rng.normal(0, 60))], fill=colour,
                      width=int(rng.integers(1, 6)))
        else:
            r = rng.uniform(4, 30)
            draw.ellipse([x - r, y - r, x + r, y + r * rng.uniform(0.4, 1.0)], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))


def photograph(texture: Image.Image, rng: np.random.Generator, difficulty: float = 1.0,
               scenery: Image.Image | None = None) -> Image.Image:
    """One photograph of an individual: pose, lighting, blur, noise, clutter and occlusion drawn from rng;
    in front of `scenery` (a fixed camera's view) when given, else of clutter drawn for this photo alone."""
    w, h = PHOTO_SIZE
    tw, th = texture.size
    scale = rng.uniform(0.62, 0.85) * w / tw
    angle = math.radians(rng.normal(0, 12 * difficulty))
    cx = w / 2 + rng.normal(0, 18)
    cy = h / 2 + rng.normal(0, 14)
    corners = [(-tw / 2, -th / 2), (tw / 2, -th / 2), (tw / 2, th / 2), (-tw / 2, th / 2)]
    dst = []
    for x, y in corners:
        jx, jy = rng.normal(0, 0.05 * difficulty, size=2)  # perspective: each corner moves independently
        x, y = x * (1 + jx), y * (1 + jy)
        xr = (x * math.cos(angle) - y * math.sin(angle)) * scale + cx
        yr = (x * math.sin(angle) + y * math.cos(angle)) * scale + cy
        dst.append((xr, yr))
    src = [(0.0, 0.0), (float(tw), 0.0), (float(tw), float(th)), (0.0, float(th))]
    warped = texture.transform((w, h), Image.Transform.PERSPECTIVE, _perspective_coeffs(dst, src),
                               resample=Image.Resampling.BILINEAR)
    photo = random_scenery(rng) if scenery is None else scenery.copy()
    photo.paste(warped, (0, 0), warped)

    draw = ImageDraw.Draw(photo)
    for _ in range(int(rng.integers(0, 3))):  # occluding grass stems / branches in front of the animal
        colour = tuple(int(c) for c in rng.integers(30, 120, size=3))
        x0 = rng.uniform(0, w)
        draw.line([(x0, h), (x0 + rng.normal(0, 50), rng.uniform(0, h * 0.6))], fill=colour,
                  width=int(rng.integers(4, 14)))

    pixels = np.asarray(photo, dtype=np.float32)
    gain = rng.uniform(0.7, 1.25) * rng.uniform(0.9, 1.1, size=3)  # exposure and colour cast
    gamma = rng.uniform(0.8, 1.25)
    pixels = 255.0 * np.clip(pixels * gain / 255.0, 0, 1) ** gamma
    pixels += rng.normal(0, rng.uniform(1, 6), size=pixels.shape)
    photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return photo.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.1))))


def generate(
    out_dir: Path,
    individuals: int = 20,
    seasons: int = 2,
    seed: int = 0,
    photos_per_sighting: tuple[int, int] = (2, 3),
    return_rate: float = 0.7,
    new_per_season: float = 0.3,
    progress: Callable[[int], None] | None = None,
    camera_traps: bool = False,
    group_rate: float = 0.25,
    fixed_scenery: bool = False,
) -> list[SynthRecord]:
    """Write seasons `season1/ … seasonK/` with images and a `manifest.csv` each; return every record.

    Season 1 has `individuals` animals. Each later season sees a `return_rate` share of all animals known so
    far again, plus `new_per_season × individuals` animals never seen before.

    `camera_traps`: the photos come from camera stations (`STATIONS`, one deployment per station and season,
    operating the whole season): each animal lives near a home station and is photographed in bursts (the
    photos of one visit seconds apart at one station); with probability `group_rate` a visit is shared with one
    or two other animals, whose frames then hold 2–3 animals side by side (one manifest row per animal, with its
    bounding box). The manifests gain `location`, `deployment` and the box columns; each season also gets a
    Camtrap DP package `camtrap-dp/` (deployments, media, one media-level observation per animal with its box,
    `eventID` per burst; no identities: true identities stay in the manifests) and MegaDetector batch output
    `megadetector.json` for the same photos (a detection per animal, and now and then a faint false one).
    `fixed_scenery` (camera traps): each station's camera sees the same scenery in every photo (lighting, noise
    and blur still change), as a fixed camera does; otherwise every photo has clutter of its own.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    coats: dict[str, Coat] = {}
    textures: dict[str, Image.Image] = {}
    records: list[SynthRecord] = []
    next_id = 1

    def new_identity() -> str:
        nonlocal next_id
        identity = f"ind_{next_id:04d}"
        next_id += 1
        coats[identity] = make_coat(identity, rng)
        textures[identity] = render_coat(coats[identity])
        return identity

    present = [new_identity() for _ in range(individuals)]
    home: dict[str, int] = {}
    # a fixed camera's view per station: one background per place an animal can stand in a frame (up to 3)
    views = [[random_scenery(np.random.default_rng((seed, station, slot))) for slot in range(3)]
             for station in range(len(STATIONS))] if fixed_scenery else None
    for season in range(1, seasons + 1):
        if season > 1:
            known = sorted(coats)
            keep = rng.random(len(known)) < return_rate
            present = [i for i, k in zip(known, keep, strict=True) if k]
            present += [new_identity() for _ in range(max(1, round(new_per_season * individuals)))]
        season_dir = out_dir / f"season{season}"
        (season_dir / "images").mkdir(parents=True, exist_ok=True)
        start = datetime(2020 + season, 6, 1, 6, 0, 0)
        rows: list[list[str]] = []
        detections: dict[str, list[dict]] = {}
        if not camera_traps:
            for identity in present:
                n_photos = int(rng.integers(photos_per_sighting[0], photos_per_sighting[1] + 1))
                for k in range(n_photos):
                    when = start + timedelta(days=float(rng.uniform(0, 60)), minutes=float(rng.uniform(0, 600)))
                    name = f"images/{identity}_s{season}_{k}.jpg"
                    photograph(textures[identity], rng).save(season_dir / name, quality=90)
                    lat, lon = -24.0 + rng.normal(0, 0.05), 31.5 + rng.normal(0, 0.05)
                    rows.append([name, identity, SPECIES, "left", when.isoformat(timespec="seconds"), f"{lat:.5f}",
                                 f"{lon:.5f}"])
                    records.append(SynthRecord(season_dir / name, identity, season, when))
                    if progress:
                        progress(1)
        else:
            visits: list[list[str]] = []
            waiting = list(present)
            while waiting:  # a visit: one animal, or with probability group_rate two or three together
                size = 1 if rng.random() >= group_rate else int(rng.integers(2, 4))
                visits.append(waiting[:size])
                waiting = waiting[size:]
            for number, group in enumerate(visits, start=1):
                for identity in group:
                    if identity not in home:
                        home[identity] = int(rng.integers(len(STATIONS)))
                station = (home[group[0]] + int(rng.choice([0, 0, 0, 1, -1]))) % len(STATIONS)
                visit = start + timedelta(days=float(rng.uniform(0, 60)), minutes=float(rng.uniform(0, 600)))
                n_photos = int(rng.integers(photos_per_sighting[0], photos_per_sighting[1] + 1))
                for k in range(n_photos):
                    when = visit + timedelta(seconds=3 * k)
                    name = f"images/{'+'.join(group)}_s{season}_{k}.jpg"
                    frame, boxes = _frame([textures[i] for i in group], rng,
                                          views[station] if views is not None else None)
                    frame.save(season_dir / name, quality=90)
                    _, lat, lon = STATIONS[station]
                    detections[name] = []
                    for identity, box in zip(group, boxes, strict=True):
                        box_cells = [f"{v:.4f}" for v in box] if len(group) > 1 else ["", "", "", ""]
                        rows.append([name, identity, SPECIES, "left", when.isoformat(timespec="seconds"),
                                     f"{lat:.5f}", f"{lon:.5f}", STATIONS[station][0],
                                     f"{STATIONS[station][0]}-s{season}", f"burst-{season}-{number}", *box_cells])
                        records.append(SynthRecord(season_dir / name, identity, season, when))
                        detections[name].append({"category": "1", "conf": round(float(rng.uniform(0.75, 0.99)), 3),
                                                 "bbox": [round(v, 4) for v in box]})
                    if rng.random() < 0.15:  # a faint false detection (a rock, a branch), below --min-conf
                        detections[name].append({"category": "1", "conf": round(float(rng.uniform(0.05, 0.15)), 3),
                                                 "bbox": [0.02, 0.8, 0.1, 0.15]})
                    if progress:
                        progress(1)
        rows.sort(key=lambda r: r[4])
        columns = MANIFEST_COLUMNS + (CAMERA_TRAP_COLUMNS if camera_traps else [])
        with open(season_dir / "manifest.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
        if camera_traps:
            write_camtrap_package(season_dir, season, rows, start, start + timedelta(days=61))
            write_megadetector(season_dir / "megadetector.json", detections)
    return records


CAMERA_TRAP_COLUMNS = ["location", "deployment", "sequence", "bbox_x", "bbox_y", "bbox_w", "bbox_h"]


def _frame(animals: list[Image.Image], rng: np.random.Generator, views: list[Image.Image] | None = None,
           ) -> tuple[Image.Image, list[tuple[float, float, float, float]]]:
    """One camera-trap frame of these animals side by side (each photographed as usual, in its own part of
    the frame, in front of that part's fixed `views` when given), and each animal's normalised box."""
    if len(animals) == 1:
        return photograph(animals[0], rng, scenery=views[0] if views else None), [(0.08, 0.08, 0.84, 0.84)]
    w, h = PHOTO_SIZE
    frame = Image.new("RGB", (w * len(animals), h))
    boxes = []
    for k, texture in enumerate(animals):
        frame.paste(photograph(texture, rng, scenery=views[k] if views else None), (k * w, 0))
        boxes.append(((k + 0.06) / len(animals), 0.06, 0.88 / len(animals), 0.88))
    return frame, boxes


def write_megadetector(path: Path, detections: dict[str, list[dict]]) -> Path:
    """MegaDetector batch output (format 1.4) for a season's photos, paths relative to the file's folder."""
    import json

    path.write_text(json.dumps({
        "info": {"format_version": "1.4", "detector": "synthetic ground truth (not MegaDetector)",
                 "species": SPECIES},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": [{"file": name, "detections": found} for name, found in sorted(detections.items())],
    }, indent=1) + "\n")
    return path


# camera stations of the camera-trap mode: name, latitude, longitude (a 3 x 2 grid ~5 km apart)
STATIONS = [(f"station-{chr(65 + k)}", round(-24.0 + 0.045 * (k // 2), 5), round(31.5 + 0.05 * (k % 2), 5))
            for k in range(6)]


def write_camtrap_package(season_dir: Path, season: int, rows: list[list[str]], start: datetime,
                          end: datetime) -> Path:
    """The season as a Camtrap DP package next to its images (no individualID: that is the registry's job)."""
    import json

    package = season_dir / "camtrap-dp"
    package.mkdir(exist_ok=True)

    def stamp(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    with open(package / "deployments.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["deploymentID", "locationID", "locationName", "latitude", "longitude", "deploymentStart",
                         "deploymentEnd", "cameraModel"])
        for name, lat, lon in STATIONS:
            writer.writerow([f"{name}-s{season}", name, name, lat, lon, stamp(start), stamp(end), "synthetic"])
    media: dict[str, tuple[str, list[str]]] = {}  # photo -> media id, first row
    for row in rows:
        media.setdefault(row[0], (f"m{season}-{len(media)}", row))
    with open(package / "media.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic",
                         "fileName", "fileMediatype"])
        for name, (media_id, row) in media.items():
            writer.writerow([media_id, row[8], "activityDetection", row[4] + "Z", f"../{name}", "false",
                             Path(name).name, "image/jpeg"])
    with open(package / "observations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd",
                         "observationLevel", "observationType", "scientificName", "count", "bboxX", "bboxY",
                         "bboxWidth", "bboxHeight", "classificationMethod", "classifiedBy"])
        for k, row in enumerate(rows):
            writer.writerow([f"o{season}-{k}", row[8], media[row[0]][0], row[9], row[4] + "Z", row[4] + "Z",
                             "media", "animal", SPECIES, 1, *row[10:14], "human",
                             "synthetic ground truth (species and boxes only)"])
    (package / "datapackage.json").write_text(json.dumps({
        "profile": "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/camtrap-dp-profile.json",
        "name": f"synthetic-season-{season}", "created": stamp(datetime.now()),
        "resources": [{"name": n, "path": f"{n}.csv", "profile": "tabular-data-resource"}
                      for n in ("deployments", "media", "observations")],
    }, indent=2) + "\n")
    return package
