"""The paper's matchers: real architectures built offline, hub-layout weights loaded strictly from local files,
the feature cache used on reranks, and decisions that do not depend on the batch size."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from registry.ingest.ingestion import Ingestor
from registry.matching.embedders import (
    MEGADESCRIPTOR_L_384,
    build_eva02,
    five_crop_boxes,
    load_eva02,
    load_megadescriptor,
    random_embedder,
)
from registry.matching.pipeline import Pipeline
from registry.matching.weights import WeightsMismatchError, WeightsNotFoundError, resolve
from registry.services.registry import Registry
from registry.settings import Settings


@pytest.mark.parametrize(("architecture", "dimension", "side", "mean"), [
    ("megadescriptor-l-384", 1536, 384, (0.485, 0.456, 0.406)),
    ("eva02-l-14-336", 768, 336, (0.48145466, 0.4578275, 0.40821073)),
])
def test_paper_architectures_build_offline_with_their_sizes(architecture: str, dimension: int, side: int,
                                                            mean: tuple[float, ...]) -> None:
    with pytest.warns(UserWarning, match="RANDOM-INITIALISED"):
        embedder = random_embedder(architecture)
    assert embedder.dimension == dimension
    assert embedder.input_size == (side, side)
    assert embedder.preprocessing.mean == pytest.approx(mean)
    vectors = embedder.embed([Image.new("RGB", (500, 300), (120, 80, 40))])
    assert vectors.shape == (1, dimension)
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)


def _hub_folder(weights_dir: Path, architecture: str, state: dict[str, torch.Tensor]) -> Path:
    """A MegaDescriptor folder laid out as `registry models download` leaves it (weights + config.json)."""
    folder = weights_dir / MEGADESCRIPTOR_L_384.name
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "pytorch_model.bin")
    config = {"architecture": architecture, "num_classes": 0,
              "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_megadescriptor_loads_a_hub_folder_strictly(tmp_path: Path) -> None:
    """The hub's config.json decides architecture and preprocessing; a small Swin stands in for Swin-L."""
    weights = tmp_path / "weights"
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0)
    _hub_folder(weights, "swin_tiny_patch4_window7_224", swin.state_dict())
    assert resolve(MEGADESCRIPTOR_L_384, weights).source == "weights-dir"
    embedder = load_megadescriptor(weights)
    assert embedder.input_size == (224, 224) and embedder.preprocessing.std == (0.25, 0.25, 0.25)
    assert torch.equal(embedder.model.state_dict()["norm.weight"], swin.state_dict()["norm.weight"])

    truncated = {k: v for i, (k, v) in enumerate(swin.state_dict().items()) if i % 7}
    _hub_folder(weights, "swin_tiny_patch4_window7_224", truncated)
    with pytest.raises(WeightsMismatchError, match="missing"):
        load_megadescriptor(weights)
    foreign = timm.create_model("resnet10t", pretrained=False, num_classes=0).state_dict()
    _hub_folder(weights, "swin_tiny_patch4_window7_224", foreign)
    with pytest.raises(WeightsMismatchError, match="Refusing to run"):
        load_megadescriptor(weights)


def test_paper_weights_missing_offline_name_every_place_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as error:
        load_eva02(tmp_path / "weights")
    message = str(error.value)
    assert "eva02-l-14-336/open_clip_pytorch_model.bin" in message
    assert "Hugging Face cache" in message and "registry models download eva02-l-14-336" in message


def test_eva02_refuses_a_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    partial = {"visual.trunk.cls_token": torch.zeros(1, 1, 1024), "logit_scale": torch.ones(())}
    folder = tmp_path / "eva"
    folder.mkdir()
    torch.save(partial, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(WeightsMismatchError, match="missing"):
        load_eva02(None, explicit=folder)


@pytest.fixture(scope="module")
def paper_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder for the paper profile: a small Swin as MegaDescriptor, the real EVA02-L architecture
    (random weights, bfloat16 file to halve the size). Shapes and code paths are real; scores are not."""
    weights = tmp_path_factory.mktemp("paper") / "weights"
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0)
    _hub_folder(weights, "swin_tiny_patch4_window7_224", swin.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip, _, _ = build_eva02()
    (weights / "eva02-l-14-336").mkdir()
    torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in clip.state_dict().items()},
               weights / "eva02-l-14-336" / "open_clip_pytorch_model.bin")
    return weights


def test_paper_profile_runs_from_local_files(paper_weights: Path, population: Path, tmp_path: Path) -> None:
    settings = Settings.for_profile("paper", data_dir=tmp_path / "reg", batch_size=4)
    settings.test_time_augmentation = False  # keep the CPU test short; TTA is covered by its own test
    settings.weights = {"megadescriptor-l-384": str(paper_weights / "megadescriptor-l-384"),
                        "eva02-l-14-336": str(paper_weights / "eva02-l-14-336")}
    Registry.init(settings)
    pipeline = Pipeline(Settings.load(settings.data_dir))
    assert [e.name for e in pipeline.embedders] == ["megadescriptor-l-384", "eva02-l-14-336"]
    season = population / "season1"
    manifest = season / "first-six.csv"  # image paths are relative to the manifest
    manifest.write_text("\n".join((season / "manifest.csv").read_text().splitlines()[:7]) + "\n")
    with Registry(Settings.load(settings.data_dir), pipeline=pipeline) as registry:
        report = Ingestor(registry).ingest(manifest, "s1", "reference")
        assert report.added == 6 and not report.problems
        assert set(registry.collections) == {"megadescriptor-l-384", "eva02-l-14-336"}
        assert {registry.index.count(c) for c in registry.collections.values()} == {6}
        query = sorted((population / "season2" / "images").glob("*.jpg"))[0]
        answer = registry.identify(query, "synleopard")
    scored = answer.outcome.ranked[0].images[0]
    assert set(scored.raw) == {"megadescriptor-l-384", "eva02-l-14-336", "aliked", "aliked-verified",
                               "aliked-distinctive"}


def test_rerank_reads_cached_candidate_features(offline_pipeline: Pipeline, population: Path,
                                                tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "reg", profile="offline")
    Registry.init(settings)
    query = sorted((population / "season2" / "images").glob("*.jpg"))[0]
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")
        before = offline_pipeline.local.extractions
        first = registry.identify(query, "synleopard")
        reads = registry.features.reads
        second = registry.identify(query, "synleopard")
        assert offline_pipeline.local.extractions - before == 2  # the query each time, never a candidate
        assert len(first.outcome.ranked) > 1
        assert [c.code for c in first.outcome.ranked] == [c.code for c in second.outcome.ranked]
        per_query = registry.features.reads - reads
        assert per_query >= sum(len(c.images) for c in first.outcome.ranked)  # every scored photo, from the cache
        reads = registry.features.reads
        registry.identify(query, "synleopard")
        assert registry.features.reads - reads == per_query


def test_decisions_do_not_depend_on_the_batch_size(population: Path, tmp_path: Path) -> None:
    outcomes = []
    for batch_size in (1, 8):
        settings = Settings(data_dir=tmp_path / f"b{batch_size}", profile="offline", batch_size=batch_size)
        Registry.init(settings)
        with Registry(settings) as registry:
            Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")
            decided: list = []
            Ingestor(registry).ingest(population / "season2" / "manifest.csv", "s2", "identify",
                            on_identified=lambda row, i, decided=decided: decided.append(
                                (row.line, i.outcome.outcome, i.individual_code, round(i.outcome.score or 0, 3))))
            outcomes.append(decided)
    assert outcomes[0] == outcomes[1]
    assert len(outcomes[0]) >= 8


def test_five_crop_tta_averages_the_crops(offline_pipeline: Pipeline, population: Path) -> None:
    embedder = offline_pipeline.primary
    image = Image.open(sorted((population / "season1" / "images").glob("*.jpg"))[0]).convert("RGB")
    boxes = five_crop_boxes(*image.size)
    width, height = image.size
    assert boxes[0][2] - boxes[0][0] == round(width * 0.8) and boxes[1][:2] == (0, 0)
    assert boxes[4][2:] == (width, height)
    crops = [image.crop(box) for box in boxes]
    assert all(c.size == (round(width * 0.8), round(height * 0.8)) for c in crops)
    assert embedder.views(image).shape == (1, 3, *embedder.input_size[::-1])
    assert embedder.tta is False
    per_crop = embedder.embed(crops)
    embedder.tta = True
    try:
        averaged = embedder.embed([image])[0]
    finally:
        embedder.tta = False
    expected = per_crop.mean(axis=0) / np.linalg.norm(per_crop.mean(axis=0))
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    assert float(averaged @ embedder.embed([image])[0]) < 0.9999  # TTA changes the vector
