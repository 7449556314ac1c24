"""Calibration, fusion, the open-set rule, sweeps and end-to-end evaluation on real components."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from helpers import in_process

from registry.decide.calibration import (
    CalibrationError,
    Calibrations,
    IsotonicCalibrator,
    LabelledPair,
    LearnedFusion,
    fit_calibrations,
)
from registry.decide.metrics import evaluate, pairwise_clustering
from registry.decide.scoring import CalibratedFusionScorer, CandidateScore, IndividualScore, decide, wildfusion
from registry.evaluate import experiments
from registry.ingest.ingestion import Ingestor
from registry.ingest.manifest import PhotoRow
from registry.matching.pipeline import Pipeline
from registry.services.calibrating import bootstrap_score, same_occasion
from registry.services.registry import Registry
from registry.settings import Settings


def test_isotonic_calibration_is_monotone_bounded_and_survives_storage() -> None:
    rng = np.random.default_rng(0)
    raw = np.concatenate([rng.normal(10, 5, 400), rng.normal(60, 20, 400)])
    same = np.concatenate([np.zeros(400), np.ones(400)])
    calibrator = IsotonicCalibrator.fit(raw, same)
    grid = np.linspace(-50, 200, 500)
    values = calibrator(grid)
    assert np.all(np.diff(values) >= 0) and values.min() >= 0.0 and values.max() <= 1.0
    assert calibrator(0.0) < 0.1 and calibrator(100.0) > 0.9
    again = IsotonicCalibrator.from_json(json.loads(json.dumps(calibrator.to_json())))
    np.testing.assert_array_equal(again(grid), values)
    with pytest.raises(CalibrationError, match="both"):
        IsotonicCalibrator.fit(raw[:10], np.ones(10))


def test_species_calibrators_need_enough_pairs_and_self_pairs_are_refused() -> None:
    rng = np.random.default_rng(1)
    pairs = [LabelledPair(i, i + 1000, "big" if i < 300 else "small", bool(i % 2),
                          {"g": float(rng.random() + (i % 2)), "l": float(i % 2 * 50)}) for i in range(340)]
    fitted = fit_calibrations(pairs, ["g", "l"], min_pairs=50)
    assert set(fitted) == {("g", None), ("l", None), ("g", "big"), ("l", "big")}  # "small": pooled fallback
    calibrations = Calibrations(fitted)
    assert calibrations.calibrate("l", "small", 50.0) == pytest.approx(fitted[("l", None)](50.0))
    with pytest.raises(CalibrationError, match="itself"):
        fit_calibrations([LabelledPair(5, 5, "big", True, {"g": 1.0, "l": 1.0})], ["g", "l"])


def test_fusion_follows_the_paper_and_the_learned_fusion_separates() -> None:
    calibrated = {"mega": 0.8, "aliked": 0.4, "eva": 0.2}
    assert wildfusion(calibrated, "mega", "aliked", None, 0.5) == pytest.approx(0.6)
    assert wildfusion(calibrated, "mega", "aliked", "eva", 0.5) == pytest.approx(0.5 * 0.6 + 0.5 * 0.2)
    assert wildfusion(calibrated, "mega", "aliked", "eva", 1.0) == pytest.approx(0.6)
    rng = np.random.default_rng(2)
    same = rng.random(400) < 0.5
    features = np.clip(np.where(same[:, None], 0.7, 0.3) + rng.normal(0, 0.15, (400, 2)), 0, 1)
    learned = LearnedFusion.fit(["a", "b"], features, same)
    assert all(c > 0 for c in learned.coef)
    assert learned({"a": 0.9, "b": 0.9}) > 0.9 > 0.1 > learned({"a": 0.1, "b": 0.1})


def _ranked(score: float) -> list[IndividualScore]:
    return [IndividualScore(1, "X-1", score, 10, []), IndividualScore(2, "X-2", score / 2, 11, [])]


def test_open_set_rule_at_below_and_above_the_threshold() -> None:
    assert decide(_ranked(0.35), 0.35).outcome == "match"
    assert decide(_ranked(0.3499), 0.35).outcome == "new"
    above = decide(_ranked(0.9), 0.35)
    assert above.outcome == "match" and above.individual_id == 1 and above.score == 0.9
    assert decide([], 0.35).outcome == "new"


def _query(identity: str, known: bool, candidates: list[tuple[int, float, float]]) -> experiments.QueryResult:
    """candidates: (individual id, calibrated global, calibrated local)."""
    scored = [CandidateScore(100 + i, ind, {}, {"g": g, "l": loc}) for i, (ind, g, loc) in enumerate(candidates)]
    return experiments.QueryResult(PhotoRow(1, Path(f"{identity}.jpg"), "sp", identity), known, scored, 0.0)


def test_sweep_best_equals_a_direct_evaluation_at_that_threshold() -> None:
    names = {1: "A", 2: "B", 3: "C"}
    results = [
        _query("A", True, [(1, 0.9, 0.8), (2, 0.3, 0.1)]),
        _query("A", True, [(1, 0.5, 0.4), (3, 0.6, 0.1)]),
        _query("B", True, [(2, 0.4, 0.3), (1, 0.2, 0.2)]),
        _query("N", False, [(1, 0.4, 0.2), (2, 0.1, 0.1)]),
        _query("M", False, [(3, 0.2, 0.1)]),
    ]
    scorer = CalibratedFusionScorer(Calibrations(), "g", "l", None, 0.5)
    found = experiments.sweep(results, names, scorer)
    best = found["best"]["overall"]
    direct = evaluate(experiments.predictions(results, lambda c, _sp: (c.calibrated["g"] + c.calibrated["l"]) / 2,
                                              lambda _sp: best["tau"], names))
    assert direct["overall"]["score"] == pytest.approx(best["score"])
    assert best["score"] == pytest.approx(1.0) and 0.30 < best["tau"] <= 0.35  # B at 0.35, N at 0.30


def test_pairwise_clustering_against_a_hand_count() -> None:
    # truth: {a,b,c} one animal, {d} another; prediction splits c off and joins d to a, b
    metrics = pairwise_clustering(["P", "P", "Q", "P"], ["T", "T", "T", "U"])
    # predicted pairs: (a,b),(a,d),(b,d) = 3; true pairs: (a,b),(a,c),(b,c) = 3; shared: (a,b) = 1
    assert metrics["pairwise_precision"] == pytest.approx(1 / 3)
    assert metrics["pairwise_recall"] == pytest.approx(1 / 3)
    assert metrics["individuals_created"] == 2 and metrics["individuals_true"] == 2
    # ARI by hand: index 1 shared pair, expected 3 * 3 / 6 = 1.5, max (3 + 3) / 2 = 3 -> (1 - 1.5) / (3 - 1.5)
    assert metrics["ari"] == pytest.approx(-1 / 3)
    assert pairwise_clustering(["a", "a", "b"], ["x", "x", "y"])["ari"] == pytest.approx(1.0)


def test_an_occasion_is_one_day_of_one_survey_or_one_deployment() -> None:
    morning, evening = datetime(2024, 5, 1, 7), datetime(2024, 5, 1, 19)
    photo = {"captured_at": morning, "survey_id": 1, "deployment_id": None}
    assert same_occasion(photo, {"captured_at": evening, "survey_id": 1, "deployment_id": None})
    assert not same_occasion(photo, {"captured_at": evening + timedelta(days=1), "survey_id": 1,
                                     "deployment_id": None})
    assert not same_occasion(photo, {"captured_at": evening, "survey_id": 2, "deployment_id": None})
    at_camera = {"captured_at": morning, "survey_id": 1, "deployment_id": 4}
    assert not same_occasion(at_camera, {"captured_at": evening, "survey_id": 1, "deployment_id": 5})
    assert same_occasion(at_camera, {"captured_at": evening, "survey_id": 2, "deployment_id": 4})
    assert not same_occasion({"captured_at": None, "survey_id": 1}, {"captured_at": None, "survey_id": 1})


def test_the_expected_score_interval_widens_with_fewer_identities() -> None:
    rng = np.random.default_rng(0)

    def tops(identities: int) -> list[tuple[bool, str, int | None, float]]:
        out = []
        for k in range(identities):
            known = k % 3 != 0
            right = known and rng.random() < 0.8
            out += [(known, str(k), k if right else -1, float(rng.uniform(0.5, 1.0) if right else rng.uniform(0, 0.6)))
                    for _ in range(3)]
        return out

    narrow, wide = bootstrap_score(tops(120), "x", 0.5), bootstrap_score(tops(12), "x", 0.5)
    assert narrow is not None and wide is not None
    assert wide[1] - wide[0] > narrow[1] - narrow[0] > 0
    assert bootstrap_score(tops(1), "x", 0.5) is None  # one animal: nothing to resample


def test_calibration_pairs_only_pair_photos_of_one_side(
        population: Path, offline_pipeline: Pipeline, tmp_path: Path) -> None:
    """A left and a right flank of one animal share no keypoint: as a "same individual" pair they would teach the
    calibration that matches mean nothing. Every animal here is photographed on both sides."""
    import csv

    rows = []
    for season in ("season1", "season2"):  # returning animals: four photos each
        source = population / season / "manifest.csv"
        with source.open() as handle:
            rows += [{**row, "image": str(source.parent / row["image"])} for row in csv.DictReader(handle)]
    seen: dict[str, int] = {}
    for row in rows:  # alternate flanks within each animal's photos
        seen[row["identity"]] = seen.get(row["identity"], -1) + 1
        row["viewpoint"] = ("left", "right")[seen[row["identity"]] % 2]
    manifest = tmp_path / "sided.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert max(seen.values()) >= 3  # two photos of each side: same-side and cross-side positives both possible
    settings = Settings(data_dir=tmp_path / "reg", profile="offline")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(manifest, "s1", "reference")
        side = {i["annotation_id"]: i["viewpoint"] for i in registry.catalog.labelled_annotations(None)}
        pairs, _ = registry.calibration.sample_pairs(per_class=40, seed=0)
        positives = [p for p in pairs if p.same]
        assert positives
        assert all(side[p.query_annotation_id] == side[p.candidate_annotation_id] for p in positives)


def test_calibration_pairs_from_a_real_registry(population: Path, offline_pipeline: Pipeline,
                                               tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "reg", profile="offline", fusion="wildfusion")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")
        pairs, _ = registry.calibration.sample_pairs(per_class=8, seed=3)
        assert all(p.query_annotation_id != p.candidate_annotation_id for p in pairs)
        keys = {tuple(sorted((p.query_annotation_id, p.candidate_annotation_id))) for p in pairs}
        assert len(keys) == len(pairs)  # no pair twice
        positives = sum(p.same for p in pairs)
        assert 1 <= positives <= 8 and 1 <= len(pairs) - positives <= 8
        assert pairs == registry.calibration.sample_pairs(per_class=8, seed=3)[0]  # fixed seed, same pairs
        assert registry.scorer.name == "raw-local-matches"
        summary = registry.calibrate()
        assert registry.scorer.name.startswith("calibrated-wildfusion")
        assert {"efficientnet-lite0/pooled", "aliked/pooled"} <= set(summary["calibrators"])
        query = sorted((population / "season2" / "images").glob("*.jpg"))[0]
        answer = registry.identify(query, "synleopard")
        best = answer.outcome.ranked[0].images[0]
        assert set(best.calibrated) == {"efficientnet-lite0", "aliked", "aliked-verified", "aliked-distinctive"}
        tuned = summary["self_tuned"]["synleopard"]
        tau = tuned["tau"]  # chosen on simulated open-set queries, then shrunk toward the default by pseudo-queries
        queries = tuned["known_queries"] + tuned["unknown_queries"]
        assert tau == pytest.approx(round((queries * tuned["fitted_tau"] + tuned["prior_queries"] * tuned["prior_tau"])
                                          / (queries + tuned["prior_queries"]), 2))
        low, high = tuned["expected"]["score_ci95"]
        assert 0.0 <= low <= tuned["expected"]["score"] <= high <= 1.0
        # the synthetic season shows each animal on one day only: occasions cannot be held out, and it says so
        assert tuned["occasions"].startswith("too few")
        assert 0.0 <= best.score <= 1.0
        assert answer.outcome.threshold == tau == registry.policy.threshold_for("synleopard")
        assert best.score == pytest.approx((best.calibrated["efficientnet-lite0"] + best.calibrated["aliked"]) / 2)
        assert answer.outcome.policy_version == summary["policy_version"] == registry.policy.version
    with Registry(settings, pipeline=offline_pipeline) as reopened:  # the calibration is stored
        assert reopened.scorer.name.startswith("calibrated-wildfusion")
        # the fusion kind is the policy's: a new version switches the registry to the learned fusion
        reopened.set_policy(reopened.policy.derive("use the learned fusion", "tester", fusion="learned"))
        assert reopened.scorer.name == "calibrated-learned-fusion"
        answer = reopened.identify(query, "synleopard")
        best = answer.outcome.ranked[0].images[0]
        assert best.score == pytest.approx(reopened.scorer.calibrations_for("synleopard").learned(best.calibrated))
        # per-species matching goes into force only with a calibration fitted under it
        before = reopened.policy.version
        with pytest.raises(CalibrationError, match="exceeds"):
            reopened.calibrate(per_class=8, matching={"synleopard": {"max_keypoints": 100_000}})
        with pytest.raises(CalibrationError, match="cannot be set per species"):
            reopened.calibrate(per_class=8, matching={"synleopard": {"long_side": 256}})
        assert reopened.policy.version == before and reopened.settings.local.species == {}
        overrides = {"max_keypoints": 96, "full_rerank_individuals": 1, "lnbnn_individuals": 3, "lnbnn_photos": 2}
        reopened.calibrate(per_class=8, matching={"synleopard": overrides})
        assert reopened.policy.matcher_settings["species"] == {"synleopard": overrides}
        described = reopened.identification.describe([query], ["synleopard"], [None])[0]
        candidates = reopened.identification.candidates(described, "synleopard", None)
        assert max(c.raw["aliked"] for c in candidates) <= 96  # the species' budget, not the described 256
        photos_per_individual: dict[int, int] = {}
        for c in candidates:
            photos_per_individual[c.individual_id] = photos_per_individual.get(c.individual_id, 0) + 1
        # one individual from the cheap pass, the others LNBNN's, each with its two best-voted photos
        assert sorted(photos_per_individual.values())[-2:] == [2, 2] and len(photos_per_individual) <= 4
    with Registry(settings, pipeline=offline_pipeline) as again:  # the overrides are the policy's
        assert again.settings.local.for_species("synleopard").max_keypoints == 96
        assert again.settings.local.for_species("other").max_keypoints == 256


def test_evaluate_and_tune_on_synthetic_data(tmp_path: Path) -> None:
    """The CLI end to end on 8 synthetic animals: evaluate season 2 against season 1 (score >= 0.9), then tune."""
    from registry.evaluate import synth

    photos = tmp_path / "photos"
    synth.generate(photos, individuals=8, seasons=2, seed=7)
    season1, season2 = photos / "season1" / "manifest.csv", photos / "season2" / "manifest.csv"
    report_path = tmp_path / "report.json"
    run = in_process(["evaluate", "--reference", str(season1), "--queries", str(season2), "--out", str(report_path),
                      "--plot", str(tmp_path / "sweep.png"), "--exhaustive", "2", "--shortlist", "20",
                      "--work-dir", str(tmp_path / "work")])
    assert run.returncode == 0, run.stderr
    report = json.loads(report_path.read_text())
    assert set(report["overall"]) == {"baks", "baus", "score", "top1", "top5", "queries", "score_ci95"}
    low, high = report["overall"]["score_ci95"]
    assert low <= report["overall"]["score"] <= high
    assert report["overall"]["score"] >= 0.9
    assert report["per_species"]["synleopard"]["queries"] == report["overall"]["queries"] > 0
    assert any(name.startswith("WildFusion") for name in report["configurations"])
    assert any("tau tuned" in name for name in report["configurations"])
    assert report["exhaustive"]["queries"] == 2
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "score" in run.stdout

    # the evaluation's registry (reference ingested and calibrated) is kept in --work-dir: tune it
    base = ["--data-dir", str(tmp_path / "work" / "registry")]
    step = in_process([*base, "--json", "tune", "--queries", str(season2)])
    assert step.returncode == 0, step.stderr
    tuned = json.loads(step.stdout)
    assert tuned["fusion"] == "calibrated-learned-fusion"  # the offline policy decides with the learned fusion
    assert tuned["score_after_on_these_queries"] >= tuned["score_before"]
    policy = json.loads(in_process([*base, "policy", "show", "--json"]).stdout)
    assert policy["version"] == tuned["policy_version"] and policy["reason"].startswith("tune on")
    assert policy["thresholds"]["synleopard"] == tuned["thresholds"]["synleopard"]
    history = json.loads(in_process([*base, "--json", "policy", "history"]).stdout)
    assert [p["reason"].split()[0] for p in history] == ["registry", "calibrate:", "tune"]
    assert "self-tuned" in history[1]["reason"]
