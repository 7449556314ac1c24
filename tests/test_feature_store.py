"""The packed feature cache: what goes in comes out (8-bit within its quantisation step, float16 exactly), old
one-file-per-entry caches are read and moved in, damaged entries are dropped, two processes share the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from registry.matching.local_matcher import LocalFeatures
from registry.store.feature_store import FeatureStore, feature_key, pack, unpack


def _features(rng: np.random.Generator, n: int = 300) -> LocalFeatures:
    descriptors = rng.normal(size=(n, 128)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    keypoints = rng.uniform(0, 511.9, size=(n, 2)).astype(np.float32)
    return LocalFeatures(keypoints, descriptors.astype(np.float16), (512, 384))


def test_pack_round_trip_int8_and_float16() -> None:
    rng = np.random.default_rng(0)
    features = _features(rng)
    for precision, tolerance in (("int8", 0.02), ("float16", 0.0)):
        blob = pack(features, precision)
        back = unpack(blob)
        assert back.image_size == (512, 384) and len(back) == 300
        np.testing.assert_allclose(back.keypoints, features.keypoints, atol=1 / 64)
        cosine = np.sum(back.descriptors.astype(np.float32) * features.descriptors.astype(np.float32), axis=1)
        assert cosine.min() >= 1 - tolerance - 1e-3
    assert len(pack(features, "int8")) < 0.55 * len(pack(features, "float16"))
    assert len(pack(features, "int8")) == 11 + 300 * (4 + 2 + 128)
    with pytest.raises(ValueError, match="precision"):
        pack(features, "int4")
    empty = unpack(pack(LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float16), (5, 5))))
    assert len(empty) == 0


def test_store_put_get_legacy_and_damaged(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    store = FeatureStore(tmp_path, "aliked-n16-x-k1024-s512")
    key = feature_key("ab" * 32, "whole")
    assert feature_key("ab" * 32, "0.1,0.2,0.3,0.4") != key
    assert not store.has(key) and store.get(key) is None
    store.put(key, _features(rng))
    assert store.has(key) and store.count() == 1 and store.get(key) is not None and store.reads == 1

    old = _features(rng, 50)  # a cache written before packing: one .npz per entry
    legacy = store.legacy_path("cd" * 32)
    legacy.parent.mkdir(parents=True)
    np.savez(legacy, keypoints=old.keypoints, descriptors=old.descriptors, image_size=np.asarray([512, 384]))
    assert store.has("cd" * 32)
    moved = store.get("cd" * 32)
    assert moved is not None and len(moved) == 50 and not legacy.exists() and store.count() == 2

    store._conn().execute("UPDATE features SET data = ? WHERE key = ?", (b"\x07junk", key))
    assert store.get(key) is None and not store.has(key)  # dropped, to be described again
    store.close()


def test_a_query_reads_all_its_candidates_in_one_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    store = FeatureStore(tmp_path, "aliked-n16-x-k1024-s512")
    stored = {feature_key(f"{i:02x}" * 32, "whole"): _features(rng, 20 + i) for i in range(700)}  # > one chunk
    for key, features in stored.items():
        store.put(key, features)
    old = _features(rng, 5)
    legacy = store.legacy_path("old-entry")
    legacy.parent.mkdir(parents=True)
    np.savez(legacy, keypoints=old.keypoints, descriptors=old.descriptors, image_size=np.asarray([512, 384]))
    damaged = next(iter(stored))
    store._conn().execute("UPDATE features SET data = ? WHERE key = ?", (b"\x07junk", damaged))
    wanted = [*stored, "old-entry", "missing", "old-entry"]  # a legacy entry, a missing one, a repeat
    found = store.get_many(wanted)
    assert set(found) == (set(stored) - {damaged}) | {"old-entry"}
    for key in list(stored)[1:]:
        assert found[key].image_size == (512, 384) and len(found[key]) == len(stored[key])
        np.testing.assert_array_equal(found[key].keypoints, store.get(key).keypoints)
    assert not store.has(damaged) and not legacy.exists()  # the damaged one dropped, the legacy one moved in
    store.close()


def test_two_processes_share_the_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    store = FeatureStore(tmp_path, "v1")
    store.put("k1", _features(rng, 10))
    code = ("import sys, numpy as np\nfrom registry.store.feature_store import FeatureStore\n"
            "from registry.matching.local_matcher import LocalFeatures\n"
            "s = FeatureStore(sys.argv[1], 'v1')\nassert s.get('k1') is not None\n"
            "s.put('k2', LocalFeatures(np.ones((3, 2), np.float32), np.ones((3, 128), np.float16), (4, 4)))\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    assert store.get("k2") is not None and store.count() == 2
    store.close()
