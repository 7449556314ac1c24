"""Cached local features: ALIKED keypoints and descriptors computed once per annotation, read many times.

Entries are keyed by `feature_key`: the photo's sha256 for a whole-image annotation, the sha256 plus a digest
of the box for a crop. All entries of one extractor version (weights, keypoint budget, image size) live in one
SQLite file, `features/<extractor version>/features.sqlite` (a new version gets a new folder, so stale features
are never matched against fresh ones): one row per annotation instead of one file, each write a transaction (a
crash never leaves a half-written entry; WAL lets readers and writers of several processes share it).

Entries are packed: keypoints as 1/32-pixel fixed point (uint16), descriptors as 8-bit codes with one float16
scale per keypoint (`precision="int8"`, the default: 134 bytes per keypoint, half of float16's 260) or as
float16. `benchmarks/feature_cache.py` measures what the 8-bit codes change in LightGlue's scores on real photos.
Caches written before (one `.npz` file per entry) are still read, and moved into the file when read.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import struct
import threading
from pathlib import Path

import numpy as np

from registry.matching.local_matcher import LocalFeatures

PRECISIONS = ("int8", "float16")
_HEADER = struct.Struct("<BIHHH")  # format (1: int8, 2: float16), keypoints, descriptor size, width, height
_FIXED_POINT = 32.0  # keypoint coordinates in 1/32 px: up to 2047 px wide


def feature_key(sha256: str, region: str) -> str:
    """The cache key of one annotation's features: its photo's content, and its box unless it is the whole photo
    (so registries made before annotations keep their cache)."""
    if region == "whole":
        return sha256
    return f"{sha256}-{hashlib.sha1(region.encode()).hexdigest()[:12]}"


def pack(features: LocalFeatures, precision: str = "int8") -> bytes:
    keypoints = np.asarray(features.keypoints, dtype=np.float32).reshape(-1, 2)
    descriptors = np.asarray(features.descriptors, dtype=np.float32)
    dimension = descriptors.shape[1] if descriptors.ndim == 2 else 128
    descriptors = descriptors.reshape(len(keypoints), dimension)
    width, height = (int(v) for v in features.image_size)
    fixed = np.clip(np.round(keypoints * _FIXED_POINT), 0, 65535).astype("<u2")
    parts = [_HEADER.pack(1 if precision == "int8" else 2, len(keypoints), dimension, width, height),
             fixed.tobytes()]
    if precision == "int8":
        scale = np.abs(descriptors).max(axis=1, keepdims=True) if len(descriptors) else np.ones((0, 1))
        scale[scale == 0] = 1.0
        codes = np.round(descriptors / scale * 127.0).astype(np.int8)
        parts += [scale.astype("<f2").tobytes(), codes.tobytes()]
    elif precision == "float16":
        parts.append(descriptors.astype("<f2").tobytes())
    else:
        raise ValueError(f"unknown feature precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return b"".join(parts)


def unpack(blob: bytes) -> LocalFeatures:
    kind, n, dimension, width, height = _HEADER.unpack_from(blob)
    offset = _HEADER.size
    keypoints = np.frombuffer(blob, "<u2", n * 2, offset).reshape(n, 2).astype(np.float32) / _FIXED_POINT
    offset += n * 4
    if kind == 1:
        scale = np.frombuffer(blob, "<f2", n, offset).astype(np.float32).reshape(n, 1)
        offset += n * 2
        codes = np.frombuffer(blob, np.int8, n * dimension, offset).reshape(n, dimension).astype(np.float32)
        descriptors = codes * (scale / 127.0)
        norms = np.linalg.norm(descriptors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        descriptors = (descriptors / norms).astype(np.float16)
    elif kind == 2:
        descriptors = np.frombuffer(blob, "<f2", n * dimension, offset).reshape(n, dimension).copy()
    else:
        raise ValueError(f"unknown packed feature format {kind}")
    return LocalFeatures(keypoints, descriptors, (width, height))


class FeatureStore:
    def __init__(self, root: Path, extractor_version: str, precision: str = "int8") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown feature precision {precision!r}; known: {', '.join(PRECISIONS)}")
        self.root = Path(root) / re.sub(r"[^A-Za-z0-9_.-]", "_", extractor_version)
        self.precision = precision
        self.reads = 0  # counted so tests and benchmarks can see the cache being used
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def db_path(self) -> Path:
        return self.root / "features.sqlite"

    def _conn(self) -> sqlite3.Connection:
        if self._db is not None and not self.db_path.exists():  # the cache folder was deleted: start a new one
            self._db.close()
            self._db = None
        if self._db is None:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, timeout=60, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a kill -9 loses nothing committed; features are derived
            db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def legacy_path(self, key: str) -> Path:
        """Where caches written before packing kept an entry (one .npz per annotation)."""
        return self.root / key[:2] / f"{key}.npz"

    def has(self, key: str) -> bool:
        with self._lock:
            found = self._conn().execute("SELECT 1 FROM features WHERE key = ?", (key,)).fetchone()
        return found is not None or self.legacy_path(key).exists()

    def put(self, key: str, features: LocalFeatures) -> None:
        blob = pack(features, self.precision)
        with self._lock:
            self._conn().execute("INSERT OR REPLACE INTO features (key, data) VALUES (?, ?)", (key, blob))

    def delete(self, key: str) -> None:
        with self._lock:
            self._conn().execute("DELETE FROM features WHERE key = ?", (key,))
        self.legacy_path(key).unlink(missing_ok=True)

    def get(self, key: str) -> LocalFeatures | None:
        with self._lock:
            row = self._conn().execute("SELECT data FROM features WHERE key = ?", (key,)).fetchone()
        if row is None:
            return self._get_legacy(key)
        try:
            features = unpack(row[0])
        except (ValueError, struct.error):
            self.delete(key)  # a damaged entry is recomputed, never matched
            return None
        self.reads += 1
        return features

    def get_many(self, keys: list[str]) -> dict[str, LocalFeatures]:
        """The cached features of several entries in one read (a query's candidates); missing keys are absent."""
        wanted = list(dict.fromkeys(keys))
        rows: list[tuple[str, bytes]] = []
        with self._lock:
            connection = self._conn()
            for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows += connection.execute(f"SELECT key, data FROM features WHERE key IN ({marks})", chunk).fetchall()
        out: dict[str, LocalFeatures] = {}
        for key, blob in rows:
            try:
                out[key] = unpack(blob)
            except (ValueError, struct.error):
                self.delete(key)  # a damaged entry is recomputed, never matched
        self.reads += len(out)
        for key in wanted:
            if key not in out and (legacy := self._get_legacy(key)) is not None:
                out[key] = legacy
        return out

    def _get_legacy(self, key: str) -> LocalFeatures | None:
        path = self.legacy_path(key)
        try:
            with np.load(path) as data:
                features = LocalFeatures(data["keypoints"], data["descriptors"],
                                         (int(data["image_size"][0]), int(data["image_size"][1])))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            return None
        self.put(key, features)  # moved into the packed file on first read
        path.unlink(missing_ok=True)
        self.reads += 1
        return unpack(pack(features, self.precision))  # what every later read returns

    def count(self) -> int:
        with self._lock:
            return int(self._conn().execute("SELECT count(*) FROM features").fetchone()[0])
