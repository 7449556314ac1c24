"""Cached local features: ALIKED keypoints and descriptors computed once per annotation, read many times.

Entries are keyed by `feature_key`: the photo's sha256 for a whole-image annotation, the sha256 plus a digest
of the box for a crop. Files live under `features/<extractor version>/<key[:2]>/<key>.npz`; a new extractor
version (weights, keypoint budget, image size) gets a new folder, so stale features are never matched against
fresh ones.
Writes go to a temporary file renamed into place, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from registry.matching.local_matcher import LocalFeatures


def feature_key(sha256: str, region: str) -> str:
    """The cache key of one annotation's features: its photo's content, and its box unless it is the whole photo
    (so registries made before annotations keep their cache)."""
    if region == "whole":
        return sha256
    return f"{sha256}-{hashlib.sha1(region.encode()).hexdigest()[:12]}"


class FeatureStore:
    def __init__(self, root: Path, extractor_version: str) -> None:
        self.root = Path(root) / re.sub(r"[^A-Za-z0-9_.-]", "_", extractor_version)
        self.reads = 0  # counted so tests and benchmarks can see the cache being used

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, features: LocalFeatures) -> None:
        target = self.path(key)
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

    def get(self, key: str) -> LocalFeatures | None:
        path = self.path(key)
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
