"""Finding the animals in a photo: MegaDetector (where its weights are on this machine), written as MegaDetector
batch output so the registry ingests its own detections exactly as it ingests anybody's (`registry ingest
md.json --megadetector`).

`MegaDetector` runs MDv5 through the `megadetector` package (its `load_detector`; `pip install megadetector`),
with the weights found by the same resolver as every other model (`registry models download megadetector-v5a`
on a connected machine, or a local file). `TinyRandomDetector` has the same interface and a random-initialised
network: it exists so the code path is tested where no detector weights are, and its boxes mean nothing; it
says so in every file it writes.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from registry.matching.imaging import ImageError, load_image
from registry.matching.weights import WeightsSpec, resolve

log = logging.getLogger(__name__)

MEGADETECTOR_V5A = WeightsSpec(
    "megadetector-v5a", "md_v5a.0.0.pt",
    urls=("https://github.com/agentmorris/MegaDetector/releases/download/v5.0/md_v5a.0.0.pt",))
CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}  # MegaDetector's
OUTPUT_THRESHOLD = 0.005  # detections kept in the file; `ingest --min-conf` chooses which become annotations


@dataclass(frozen=True)
class Detection:
    category: str  # a key of CATEGORIES
    confidence: float
    box: tuple[float, float, float, float]  # normalised x_min, y_min, width, height

    def to_json(self) -> dict[str, Any]:
        return {"category": self.category, "conf": round(self.confidence, 3),
                "bbox": [round(v, 4) for v in self.box]}


class Detector(Protocol):
    name: str
    real: bool  # False: a test stand-in whose boxes mean nothing

    def detect(self, image: Image.Image) -> list[Detection]: ...


class MegaDetector:
    """MegaDetector v5 via the `megadetector` package (YOLOv5 inference code), on this machine's weights."""

    real = True

    def __init__(self, weights_dir: Path | None, explicit: Path | None = None, allow_download: bool = False) -> None:
        found = resolve(MEGADETECTOR_V5A, weights_dir, explicit, allow_download)
        try:
            from megadetector.detection.run_detector import load_detector
        except ImportError as exc:
            raise ImportError("running MegaDetector needs its inference package: pip install megadetector "
                              "(or run MegaDetector elsewhere and ingest its md.json)") from exc
        self.name = f"MegaDetector v5a ({found.path.name})"
        self.model = load_detector(str(found.path))

    def detect(self, image: Image.Image) -> list[Detection]:
        result = self.model.generate_detections_one_image(image, "photo", detection_threshold=OUTPUT_THRESHOLD)
        if result.get("failure"):
            raise ImageError(f"MegaDetector failed: {result['failure']}")
        return [Detection(str(d["category"]), float(d["conf"]), tuple(float(v) for v in d["bbox"]))  # type: ignore[arg-type]
                for d in result.get("detections") or []]


class TinyRandomDetector:
    """A random-initialised convolutional detector with MegaDetector's interface: a few boxes per photo from
    a 4x4 grid of cells. For tests of the code path only; never use its output as detections."""

    real = False

    def __init__(self, seed: int = 0, max_boxes: int = 3) -> None:
        warnings.warn("TinyRandomDetector: random weights, meaningless boxes (tests only)", stacklevel=2)
        generator = torch.Generator().manual_seed(seed)
        self.name = f"tiny-random-detector (seed {seed}; TESTS ONLY, boxes are meaningless)"
        self.max_boxes = max_boxes
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Conv2d(8, 5, 1))  # per cell: objectness, x, y, w, h
        with torch.no_grad():
            for parameter in self.net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        self.net.eval()

    def detect(self, image: Image.Image) -> list[Detection]:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB").resize((128, 128)), dtype=np.float32) / 255.0)
        with torch.no_grad():
            out = self.net(pixels.permute(2, 0, 1)[None])[0].reshape(5, 16).T.sigmoid()
        found = []
        for cell in torch.argsort(out[:, 0], descending=True)[: self.max_boxes].tolist():
            conf, dx, dy, w, h = (float(v) for v in out[cell])
            x0, y0 = (cell % 4 + dx) / 4 * 0.8, (cell // 4 + dy) / 4 * 0.8
            w, h = min(0.1 + 0.4 * w, 1 - x0), min(0.1 + 0.4 * h, 1 - y0)
            found.append(Detection("1", conf, (x0, y0, w, h)))
        return found


def write_batch_output(detector: Detector, photos: Iterable[Path], out: Path, species: str | None = None,
                       relative_to: Path | None = None, progress: Callable[[int], None] | None = None,
                       ) -> dict[str, Any]:
    """Run `detector` over `photos` and write MegaDetector batch output (format 1.4) to `out`: file paths
    relative to `out`'s folder (or `relative_to`), a photo that cannot be read recorded as a `failure`."""
    out = Path(out)
    base = Path(relative_to or out.parent).resolve()
    images, failures, detections = [], 0, 0
    for photo in photos:
        photo = Path(photo).resolve()
        name = photo.relative_to(base).as_posix() if photo.is_relative_to(base) else str(photo)
        try:
            found = detector.detect(load_image(photo, max_side=1280))
        except ImageError as exc:
            images.append({"file": name, "failure": str(exc)})
            failures += 1
        else:
            images.append({"file": name, "detections": [d.to_json() for d in found]})
            detections += len(found)
        if progress:
            progress(1)
    info: dict[str, Any] = {"format_version": "1.4", "detector": detector.name,
                            "detector_metadata": {"real_detector": detector.real}}
    if species:
        info["species"] = species
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "detection_categories": CATEGORIES, "images": images}, indent=1) + "\n")
    return {"out": str(out), "photos": len(images), "failures": failures, "detections": detections,
            "detector": detector.name, "real": detector.real}
