"""The descriptor matching engine (mutual nearest neighbours + ratio test), how it is switched, and the per-stage
timings every answer carries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import init_registry, rows_of, run_cli
from PIL import Image

from registry.matching.local_matcher import AlikedLightGlue, LocalFeatures, mutual_nearest_matches
from registry.matching.pipeline import Pipeline
from registry.matching.timing import STAGES, StageTimes
from registry.services.registry import Registry
from registry.settings import LocalMatcherSettings, Settings
from registry.store.feature_store import pack, unpack
from registry.store.tables import Decision


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)


def _brute_force(query: np.ndarray, candidate: np.ndarray, ratio: float) -> set[tuple[int, int]]:
    """Mutual nearest neighbours passing the ratio test, the slow and obvious way."""
    q, c = query.astype(np.float64), candidate.astype(np.float64)
    distance = np.sqrt(np.maximum(2 - 2 * q @ c.T, 0))
    out = set()
    for i in range(len(q)):
        order = np.argsort(distance[i])
        j = int(order[0])
        if int(np.argmin(distance[:, j])) == i and distance[i, j] < ratio * distance[i, order[1]]:
            out.add((i, j))
    return out


@pytest.mark.parametrize("ratio", [0.8, 0.95, 1.0])
def test_mutual_nearest_matches_equal_the_brute_force_definition(ratio: float) -> None:
    rng = np.random.default_rng(4)
    shared = rng.normal(size=(60, 128))
    query = _unit(np.concatenate([shared, rng.normal(size=(40, 128))]))
    candidates = [  # some of the query's keypoints seen again with noise, in another order, among others
        _unit(np.concatenate([rng.normal(size=(30, 128)), shared[::-1] + 0.3 * rng.normal(size=(60, 128))])),
        _unit(rng.normal(size=(90, 128))),  # another animal
        _unit(rng.normal(size=(17, 128))),  # fewer keypoints than the query
        _unit(rng.normal(size=(1, 128))),  # too few keypoints for a ratio test: no matches
    ]
    features = [LocalFeatures(np.zeros((len(d), 2), np.float32), d, (512, 512)) for d in candidates]
    found = mutual_nearest_matches(LocalFeatures(np.zeros((100, 2), np.float32), query, (512, 512)), features,
                                   ratio=ratio)
    for matches, candidate in zip(found, candidates, strict=True):
        expected = _brute_force(query, candidate, ratio) if len(candidate) >= 2 else set()
        assert set(zip(matches.query_idx.tolist(), matches.candidate_idx.tolist(), strict=True)) == expected
    if ratio < 1.0:  # the ratio test is what keeps a stranger's chance neighbours out
        assert len(found[0].query_idx) >= 40 and len(found[1].query_idx) < len(found[0].query_idx) / 3


def test_a_photo_matches_a_moved_copy_of_itself_far_better_than_another_animal(
        offline_pipeline: Pipeline, population: Path) -> None:
    """Real ALIKED features of synthetic animals, through the packed 8-bit cache, scored by both engines."""
    season = population / "season1"
    rows = rows_of(season / "manifest.csv")
    first = Image.open(season / rows[0]["image"]).convert("RGB")
    moved = first.rotate(8, resample=Image.Resampling.BICUBIC, translate=(15, -10))
    stranger = next(r for r in rows if r["identity"] != rows[0]["identity"])
    other = Image.open(season / stranger["image"]).convert("RGB")
    mnn = AlikedLightGlue(max_keypoints=512, engine="mnn")
    query, same, different = (unpack(pack(f)) for f in mnn.extract([first, moved, other]))
    scores = mnn.pair_scores(query, [same, different])
    assert scores[0]["aliked-verified"] >= 40
    assert scores[0]["aliked-verified"] > 4 * scores[1]["aliked-verified"]
    lightglue = AlikedLightGlue(max_keypoints=512, engine="lightglue")
    glued = lightglue.pair_scores(query, [same, different])
    assert glued[0]["aliked-verified"] > 4 * glued[1]["aliked-verified"]
    # scores of the two engines are different quantities: calibrations are tied to the engine's version
    assert mnn.version != lightglue.version and "mnn-r0.9" in mnn.version


def test_the_engine_is_checked_and_registries_made_before_it_keep_lightglue() -> None:
    with pytest.raises(ValueError, match="unknown local matching engine 'sift'"):
        LocalMatcherSettings(engine="sift")
    with pytest.raises(ValueError, match="ratio test"):
        LocalMatcherSettings(ratio=1.5)
    assert LocalMatcherSettings.from_json({"max_keypoints": 1024}).engine == "lightglue"
    assert LocalMatcherSettings().engine == "lightglue"  # mnn collapses on nyala (docs/benchmarks.md)


def test_stage_times_add_up_and_refuse_unknown_stages() -> None:
    timer = StageTimes()
    timer.add("full-pass", 0.5)
    timer.add("full-pass", 0.25)
    timer.add("decode", 0.1)
    assert timer.to_json() == {"decode": 0.1, "full-pass": 0.75, "total": 0.85}
    assert timer.share(0.5).to_json()["full-pass"] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="unknown stage"):
        timer.add("lightglue", 1.0)


def test_every_answer_and_recorded_decision_says_where_its_time_went(tmp_path: Path, population: Path) -> None:
    data = tmp_path / "registry"
    init_registry(data, "tiny-test")
    run_cli(data, "ingest", str(population / "season1" / "manifest.csv"), "--mode", "reference",
            "--survey", "s1")
    query = sorted((population / "season2" / "images").glob("*.jpg"))[0]
    answer = json.loads(run_cli(data, "--json", "identify", str(query), "--species", "synleopard").stdout)
    timings = answer[0]["timings"] if isinstance(answer, list) else answer["timings"]
    for stage in ("decode", "describe-global", "describe-local", "retrieval", "full-pass", "verification",
                  "decision"):
        assert timings[stage] > 0, stage
    assert list(timings)[:-1] == [s for s in STAGES if s in timings]  # in running order, then the total
    assert timings["total"] == pytest.approx(sum(v for k, v in timings.items() if k != "total"), abs=1e-3)
    with Registry(Settings.load(data)) as registry:
        recorded = registry.identify(sorted((population / "season2" / "images").glob("*.jpg"))[1], "synleopard",
                                     record=True)
        assert recorded.timings["recording"] > 0
        with registry.catalog.transaction() as session:
            decision = session.get(Decision, recorded.decision_id)
            assert decision is not None and decision.model_versions["timings"]["full-pass"] > 0


def test_calibrate_switches_the_engine_with_its_calibration_or_not_at_all(tmp_path: Path, population: Path) -> None:
    data = tmp_path / "registry"
    init_registry(data, "tiny-test")
    run_cli(data, "ingest", str(population / "season1" / "manifest.csv"), "--mode", "reference",
            "--survey", "s1")
    refused = run_cli(data, "calibrate", "--engine", "mnn", "--species", "synleopard", expect=1)
    assert "drop --species" in refused.stderr + refused.stdout
    with Registry(Settings.load(data)) as registry:
        before = registry.policy
        assert before.matcher_settings["engine"] == "lightglue"
    run_cli(data, "calibrate", "--engine", "mnn", "--pairs", "20", "--no-self-tune")
    with Registry(Settings.load(data)) as registry:
        after = registry.policy
        assert after.matcher_settings["engine"] == "mnn" and after.version > before.version
        assert registry.pipeline.local.engine == "mnn"
        assert "-mnn-r0.9" in after.model_versions["aliked"]
        assert registry.scorer.name.startswith("calibrated")  # its calibrations apply to the engine in force
    changed = run_cli(data, "init", "--engine", "lightglue", expect=1)
    assert "registry calibrate --engine lightglue" in changed.stderr


def test_a_new_registry_can_start_with_descriptor_matching(tmp_path: Path) -> None:
    data = tmp_path / "registry"
    run_cli(data, "init", "--profile", "tiny-test", "--engine", "mnn", "--no-download")
    with Registry(Settings.load(data)) as registry:
        assert registry.policy.matcher_settings["engine"] == "mnn" and registry.pipeline.local.engine == "mnn"


def test_the_onnx_backbone_gives_kornias_keypoints_and_descriptors(tmp_path: Path, population: Path) -> None:
    """ALIKED with its backbone in ONNX Runtime against eager PyTorch, on photos of two sizes (two exported
    graphs): the same keypoints and descriptors up to float rounding, and the graphs are exported once."""
    pytest.importorskip("onnxruntime")
    season = population / "season1"
    rows = rows_of(season / "manifest.csv")
    photos = [Image.open(season / rows[0]["image"]).convert("RGB")]
    other = next(Image.open(season / r["image"]).convert("RGB") for r in rows if r["identity"] != rows[0]["identity"])
    photos.append(other.resize(photos[0].size))  # the same graph on another animal's photo
    photos.append(photos[0].resize((photos[0].width, photos[0].height * 2 // 3)))  # another padded size
    eager = AlikedLightGlue(max_keypoints=512, runtime="torch")
    onnx = AlikedLightGlue(max_keypoints=512, runtime="onnx", compiled_dir=tmp_path / "onnx")
    assert onnx.runtime == "onnx" and eager.runtime == "torch"
    for photo in photos:
        expected, got = eager.extract([photo])[0], onnx.extract([photo])[0]
        assert len(got) == len(expected) and got.image_size == expected.image_size
        distance = np.linalg.norm(expected.keypoints[:, None] - got.keypoints[None], axis=2).min(axis=1)
        assert (distance < 0.05).mean() >= 0.98  # top-k ties may swap a keypoint or two at the budget's edge
        same = np.linalg.norm(expected.keypoints - got.keypoints, axis=1) < 0.05
        cosine = np.sum(expected.descriptors[same].astype(np.float32) * got.descriptors[same].astype(np.float32), 1)
        assert cosine.min() > 0.999
    exported = sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 2
    AlikedLightGlue(max_keypoints=512, runtime="onnx", compiled_dir=tmp_path / "onnx").extract(photos)
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx")) == exported  # reused, not exported again
    with pytest.raises(ValueError, match="unknown local runtime"):
        AlikedLightGlue(max_keypoints=512, runtime="tensorrt")


def test_a_backbone_onnx_cannot_take_stays_in_pytorch_when_asked_for_auto(tmp_path: Path, population: Path) -> None:
    """A cache folder that cannot be made (here: a file stands in its place): `auto` warns and describes with
    PyTorch, the same features as the eager model; `onnx` is an error naming the graph."""
    pytest.importorskip("onnxruntime")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    season = population / "season1"
    photo = Image.open(season / rows_of(season / "manifest.csv")[0]["image"]).convert("RGB")
    expected = AlikedLightGlue(max_keypoints=256, runtime="torch").extract([photo])[0]
    auto = AlikedLightGlue(max_keypoints=256, runtime="auto", compiled_dir=blocked / "onnx")
    assert auto.runtime == "onnx"
    got = auto.extract([photo])[0]
    np.testing.assert_array_equal(got.keypoints, expected.keypoints)
    strict = AlikedLightGlue(max_keypoints=256, runtime="onnx", compiled_dir=blocked / "onnx")
    with pytest.raises(RuntimeError, match="not-a-folder/onnx/aliked-dense-"):
        strict.extract([photo])


def _scenery(seed: int, size: tuple[int, int]) -> Image.Image:
    """A textured backdrop (stones, twigs) of random shapes: what several animals of one site stand in front of."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (120, 110, 90))
    draw = ImageDraw.Draw(image)
    for _ in range(120):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        w, h = rng.integers(4, 30, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 255, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
    return image


def _beside(animal: Image.Image, scenery: Image.Image) -> Image.Image:
    animal = animal.resize((256, 256))
    out = Image.new("RGB", (512, 256))
    out.paste(animal, (0, 0))
    out.paste(scenery.resize((256, 256)), (256, 0))
    return out


def test_keypoints_on_scenery_that_other_animals_share_do_not_vote(offline_pipeline: Pipeline,
                                                                   population: Path) -> None:
    """Real ALIKED features: the query's animal stands in front of scenery that four other animals' photos show
    too. Plain verified correspondences reward the strangers for the scenery; distinctive ones do not, while the
    query's own animal (in front of other scenery) keeps its correspondences."""
    season = population / "season1"
    rows = rows_of(season / "manifest.csv")
    identities = list(dict.fromkeys(r["identity"] for r in rows))[:5]
    first = {i: Image.open(season / next(r["image"] for r in rows if r["identity"] == i)).convert("RGB")
             for i in identities}
    site, elsewhere = _scenery(1, (256, 256)), _scenery(2, (256, 256))
    query_image = _beside(first[identities[0]], site)
    moved = _beside(first[identities[0]], elsewhere).rotate(4, resample=Image.Resampling.BICUBIC, translate=(8, -6))
    matcher = AlikedLightGlue(max_keypoints=512, engine="mnn", distinctive=True)
    query, same, *strangers = (unpack(pack(f)) for f in matcher.extract(
        [query_image, moved, *[_beside(first[i], site) for i in identities[1:]]]))
    scores = matcher.pair_scores(query, [same, *strangers], owners=identities)
    assert "aliked-distinctive" in matcher.score_names and "distinct" in matcher.versions["aliked-distinctive"]
    assert min(s["aliked-verified"] for s in scores[1:]) >= 20  # the shared scenery matches, geometry and all
    assert sum(s["aliked-distinctive"] for s in scores[1:]) <= 0.3 * sum(s["aliked-verified"] for s in scores[1:])
    assert scores[0]["aliked-distinctive"] >= 0.8 * scores[0]["aliked-verified"] >= 10
    assert scores[0]["aliked-distinctive"] > max(s["aliked-distinctive"] for s in scores[1:])
    # one stranger alone, the others' photos only as background (photos the first pass set aside): the same
    alone = matcher.pair_scores(query, [strangers[0]], owners=[identities[1]],
                                background=matcher.background(query, [same, *strangers[1:]],
                                                              [identities[0], *identities[2:]]))
    assert alone[0]["aliked-distinctive"] == scores[1]["aliked-distinctive"]
    # if the strangers were one animal, the scenery would be what it has in common with the query: it votes
    pooled = matcher.pair_scores(query, [same, *strangers], owners=[identities[0]] + [identities[1]] * 4)
    assert all(s["aliked-distinctive"] >= 0.6 * s["aliked-verified"] for s in pooled)
    # without owners every candidate is its own animal
    assert matcher.pair_scores(query, [same, *strangers]) == scores


def test_only_keypoints_inside_the_animals_box_are_matched(offline_pipeline: Pipeline, population: Path) -> None:
    """A group photo: two animals side by side, a box around the left one. Its crop keeps a margin (a strip of
    the neighbour); with `box_only` no keypoint from that margin is described, also after the species'
    orientation rule turns the photo."""
    from registry.matching.imaging import crop_to_box, normalise_orientation

    season = population / "season1"
    rows = rows_of(season / "manifest.csv")
    identities = list(dict.fromkeys(r["identity"] for r in rows))[:2]
    animals = [Image.open(season / next(r["image"] for r in rows if r["identity"] == i)).convert("RGB").resize(
        (300, 300)) for i in identities]
    group = Image.new("RGB", (600, 300))
    group.paste(animals[0], (0, 0))
    group.paste(animals[1], (300, 0))
    box = (0.05, 0.1, 0.4, 0.8)  # the left animal, clear of the right one by 0.1 of the photo
    boxed = AlikedLightGlue(max_keypoints=512, engine="mnn", box_only=True)
    everything = AlikedLightGlue(max_keypoints=512, engine="mnn")
    assert boxed.extractor_version.endswith("-box") and boxed.extractor_version != everything.extractor_version
    for angle in (0, 90, -90):
        crop = normalise_orientation(crop_to_box(group, box), "left", {"left": angle})
        kept, all_ = boxed.extract([crop])[0], everything.extract([crop])[0]
        width, height = kept.image_size
        x0, y0, x1, y1 = crop.info["animal_box"]
        inside = ((all_.keypoints[:, 0] >= x0 * width) & (all_.keypoints[:, 0] <= x1 * width)
                  & (all_.keypoints[:, 1] >= y0 * height) & (all_.keypoints[:, 1] <= y1 * height))
        assert 0 < inside.sum() < len(all_)  # the margin had keypoints of its own
        assert len(kept) == int(inside.sum())
        np.testing.assert_allclose(kept.keypoints, all_.keypoints[inside])
    whole = boxed.extract([group])[0]  # no box: every keypoint
    assert len(whole) == len(everything.extract([group])[0])
