"""Cached local features: ALIKED keypoints and descriptors computed once per image, read many times.

Files live under `features/<extractor version>/<sha[:2]>/<sha256>.npz`; a new extractor version (weights,
keypoint budget, image size) gets a new folder, so stale features are never matched against fresh ones.
Writes go to a temporary file renamed into place, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from registry.matching.local_matcher import LocalFeatures


class FeatureStore:
    def __init__(self, root: Path, extractor_version: str) -> None:
        self.root = Path(root) / re.sub(r"[^A-Za-z0-9_.-]", "_", extractor_version)
        self.reads = 0  # counted so tests and benchmarks can see the cache being used

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.npz"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put(self, sha256: str, features: LocalFeatures) -> None:
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, keypoints=features.keypoints.astype(np.float32),
                         descriptors=features.descriptors.astype(np.float16),
                         image_size=np.asarray(features.image_size, dtype=np.int32))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, sha256: str) -> LocalFeatures | None:
        path = self.path(sha256)
        try:
            with np.load(path) as data:
                features = LocalFeatures(data["keypoints"], data["descriptors"],
                                         (int(data["image_size"][0]), int(data["image_size"][1])))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged entry is recomputed, never matched
            return None
        self.reads += 1
        return features
