"""Real packaged weights resolve and load strictly; wrong files are refused; models behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from registry.matching.embedders import EFFICIENTNET_LITE0, five_crops, load_efficientnet_lite0, tiny_random_embedder
from registry.matching.imaging import load_image
from registry.matching.local_matcher import ALIKED_N16, AlikedLightGlue
from registry.matching.weights import (
    WeightsMismatchError,
    WeightsNotFoundError,
    WeightsSpec,
    load_state_dict_strict,
    resolve,
)
from registry.store.feature_store import FeatureStore


def test_resolver_finds_packaged_weights_and_prefers_explicit_files(tmp_path: Path) -> None:
    resolved = resolve(ALIKED_N16, tmp_path / "weights")
    assert resolved.source == "package" and resolved.path.name == "aliked-n16.pth"
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(resolved.path.read_bytes())
    assert resolve(ALIKED_N16, tmp_path / "weights", explicit=explicit).source == "settings"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "aliked-n16.pth").write_bytes(b"x")
    assert resolve(ALIKED_N16, tmp_path / "weights").source == "weights-dir"


def test_resolver_lists_every_place_tried_when_nothing_is_found(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = WeightsSpec("ghost-model", "ghost.pth", package="no_such_weights_package",
                       urls=("https://example.invalid/ghost.pth",))
    with pytest.raises(WeightsNotFoundError) as error:
        resolve(spec, tmp_path / "weights", allow_download=False)
    message = str(error.value)
    for expected in ("weights-dir", "no_such_weights_package", "cache", "not allowed", "registry models download"):
        assert expected in message


def test_strict_loading_refuses_truncated_or_foreign_files() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    state = model.state_dict()
    truncated = {k: v for k, v in state.items() if not k.startswith("2.")}
    with pytest.raises(WeightsMismatchError, match="missing"):
        load_state_dict_strict(model, truncated, "truncated.pth")
    wrong = {**state, "0.weight": torch.zeros(5, 4)}
    with pytest.raises(WeightsMismatchError, match="wrong shape"):
        load_state_dict_strict(model, wrong, "wrong.pth")
    with pytest.raises(WeightsMismatchError, match="unexpected"):
        load_state_dict_strict(model, {**state, "extra.weight": torch.zeros(1)}, "extra.pth")
    doubled = {k: v * 2 for k, v in state.items()}
    load_state_dict_strict(model, doubled, "ok.pth")
    assert torch.equal(model.state_dict()["0.weight"], doubled["0.weight"])


def test_efficientnet_lite0_loads_packaged_weights(tmp_path: Path, population: Path) -> None:
    embedder = load_efficientnet_lite0(tmp_path)
    assert embedder.dimension == 1280 and embedder.input_size == (224, 224)
    assert embedder.weights_sha256 == resolve(EFFICIENTNET_LITE0, tmp_path).sha256
    images = [load_image(p) for p in sorted((population / "season1" / "images").glob("*.jpg"))[:3]]
    vectors = embedder.embed(images)
    assert vectors.shape == (3, 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(embedder.embed(images[:1]), vectors[:1], atol=1e-5)  # batch size changes nothing


def test_five_crop_tta_and_tiny_test_embedder_warns() -> None:
    from PIL import Image

    image = Image.new("RGB", (100, 50))
    crops = five_crops(image, (32, 32))
    assert len(crops) == 5 and all(c.size == (32, 32) for c in crops)
    with pytest.warns(UserWarning, match="RANDOM-INITIALISED"):
        tiny = tiny_random_embedder()
    tiny.tta = True
    assert tiny.embed([image, image]).shape == (2, tiny.dimension)


def test_aliked_lightglue_separates_individuals_and_features_cache(population: Path, tmp_path: Path) -> None:
    matcher = AlikedLightGlue()
    assert set(matcher.weights_sha256) == {"aliked-n16", "aliked-lightglue"}
    paths = sorted((population / "season1" / "images").glob("*.jpg"))
    same = [p for p in paths if p.name.startswith("ind_0001_")][:2]
    other = next(p for p in paths if not p.name.startswith("ind_0001_"))
    query, twin, stranger = matcher.extract([load_image(p) for p in (*same, other)])
    assert len(query) == 256 and query.descriptors.dtype == np.float16
    same_score, other_score = matcher.scores(query, [twin, stranger])
    assert same_score >= 60 > 3 * max(other_score, 1)

    store = FeatureStore(tmp_path, matcher.version)
    store.put("ab" * 32, query)
    loaded = store.get("ab" * 32)
    np.testing.assert_allclose(loaded.keypoints, query.keypoints, atol=1 / 64)  # 1/32 px fixed point
    assert loaded.image_size == query.image_size and store.reads == 1
    assert store.get("cd" * 32) is None
    # the 8-bit codes change the pairs' scores by a few correspondences, not the order
    packed_same, packed_other = matcher.scores(loaded, [twin, stranger])
    assert abs(packed_same - same_score) <= 0.1 * same_score and packed_other < packed_same / 3
