"""The decision policy in the catalog and the defects a review found, each on real SQLite/PostgreSQL, embedded
Qdrant and the offline models: one shared policy for every machine, per-species calibration, re-sighting
positives, out-of-sample fusion, self-matches, ghost individuals, undo with later matches, capture histories,
resume after a crash, photo roots, labels that are codes, and profiles that cannot be mixed."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from registry.curation import exports
from registry.curation.curator import Curator
from registry.decide.calibration import IsotonicCalibrator, LabelledPair, LearnedFusion
from registry.decide.scoring import LocalMatchScorer
from registry.evaluate import experiments, synth
from registry.ingest import doctor
from registry.ingest.ingestion import Ingestor
from registry.ingest.sources import read_manifest, write_manifest
from registry.matching.imaging import sha256_of_file
from registry.matching.local_matcher import AlikedLightGlue
from registry.matching.pipeline import Pipeline
from registry.services.calibrating import cross_fitted_fusion, is_resighting
from registry.services.registry import ProfileMismatchError, Registry
from registry.settings import Settings
from registry.store.catalog import CatalogError
from registry.store.tables import Annotation, Decision, Image


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "reg", database_url=database_url, profile="offline")
    Registry.init(settings)
    return settings


@pytest.fixture
def registry(settings: Settings, population: Path, offline_pipeline: Pipeline) -> Registry:
    registry = Registry(settings, pipeline=offline_pipeline)
    Ingestor(registry).ingest(population / "season1" / "manifest.csv", "season-1", "reference")
    yield registry
    registry.close()


def _returning(population: Path, n: int = 1) -> list[Path]:
    known = {r["identity"] for r in _rows(population / "season1" / "manifest.csv")}
    return [population / "season2" / r["image"] for r in _rows(population / "season2" / "manifest.csv")
            if r["identity"] in known][:n]


# --- one decision policy, in the catalog ---------------------------------------------------------------------
def test_a_second_machine_decides_with_the_catalogs_policy(registry: Registry, tmp_path: Path, population: Path,
                                                          offline_pipeline: Pipeline) -> None:
    """Another data directory (no settings file of its own) on the same catalog decides with the stored policy:
    same calibrations, same tau, same profile; and every decision names the policy version it used."""
    summary = registry.calibrate()
    tuned = registry.set_policy(registry.policy.derive("field tau", "tester", thresholds={"synleopard": 0.77}))
    assert tuned.version == summary["policy_version"] + 1
    photo = _returning(population)[0]
    here = registry.identify(photo, "synleopard")
    other = Settings.load(tmp_path / "elsewhere", database_url=registry.settings.sqlalchemy_url)
    assert not other.exists
    with Registry(other, pipeline=offline_pipeline) as second:
        assert second.policy.version == tuned.version and second.settings.profile == "offline"
        assert second.scorer.name == registry.scorer.name
        assert second.scorer.threshold_for("synleopard") == 0.77
    recorded = registry.identify(photo, "synleopard", record=True, survey="season-2")
    with registry.catalog.transaction() as session:
        decision = session.get(Decision, recorded.decision_id)
        assert decision.policy_id == tuned.version and decision.threshold == 0.77
    assert here.outcome.threshold == 0.77


def test_calibrating_one_species_keeps_the_others(tmp_path: Path, offline_pipeline: Pipeline) -> None:
    database_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"  # policy logic: one database kind is enough
    lynx_root = tmp_path / "lynx"
    synth.generate(lynx_root, individuals=5, seasons=1, seed=11, photos_per_sighting=(2, 2))
    leopards = tmp_path / "leopards"
    synth.generate(leopards, individuals=5, seasons=1, seed=12, photos_per_sighting=(2, 2))
    lynx_manifest = lynx_root / "season1" / "manifest.csv"
    rows = [r.__class__(**{**r.__dict__, "species": "synlynx"}) for r in read_manifest(lynx_manifest).rows]
    write_manifest(rows, lynx_root / "season1" / "lynx.csv")
    settings = Settings(data_dir=tmp_path / "reg", database_url=database_url, profile="offline")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(leopards / "season1" / "manifest.csv", "s1", "reference")
        Ingestor(registry).ingest(lynx_root / "season1" / "lynx.csv", "s1", "reference")
        everything = registry.calibrate(per_class=60)
        lynx_only = registry.calibrate(per_class=60, species="synlynx")
        policy = registry.policy
        assert policy.calibration_batches == {"*": everything["batch"], "synlynx": lynx_only["batch"]}
        scorer = registry.scorer
        assert scorer.calibrations_for("synleopard") is not scorer.calibrations_for("synlynx")
        assert ("aliked", "synlynx") in scorer.calibrations_for("synlynx").isotonic
        codes = {i["species"]: i["code"] for i in registry.catalog.individuals()}
        assert codes["synleopard"].split("-")[0] != codes["synlynx"].split("-")[0]  # both species got codes


def test_tuning_never_matches_a_query_with_its_own_photo(registry: Registry, population: Path) -> None:
    registry.calibrate()
    rows = read_manifest(population / "season1" / "manifest.csv").rows  # photos that are references themselves
    ids = registry.catalog.annotations_by_sha([sha256_of_file(r.image) for r in rows])
    own = {r.image: ids[sha256_of_file(r.image)][0] for r in rows}
    known = {(i["species"], i["name"]) for i in registry.catalog.individuals()}
    results, _ = experiments.collect(registry, rows, known)
    assert len(results) == len(rows)
    for result in results:
        assert own[result.row.image] not in {c.annotation_id for c in result.candidates}


def test_calibration_positives_are_resightings(registry: Registry, population: Path) -> None:
    Ingestor(registry).ingest(population / "season2" / "manifest.csv", "season-2", "reference")
    gap = registry.settings.calibration_min_gap_hours
    by_id = {i["annotation_id"]: i for i in registry.catalog.labelled_annotations()}
    pairs, summary = registry.calibration.sample_pairs(per_class=30, seed=1)
    positives = [p for p in pairs if p.same]
    assert positives and summary["positives_without_resightings"] == []
    assert all(is_resighting(by_id[p.query_annotation_id], by_id[p.candidate_annotation_id], gap) for p in positives)
    # the rule itself: another survey, or far enough apart in time; a burst is neither
    from datetime import datetime, timedelta

    t0 = datetime(2024, 1, 1, 6)
    photo = {"survey_id": 1, "captured_at": t0}
    assert not is_resighting(photo, {"survey_id": 1, "captured_at": t0 + timedelta(seconds=2)}, 1.0)
    assert is_resighting(photo, {"survey_id": 1, "captured_at": t0 + timedelta(hours=2)}, 1.0)
    assert is_resighting(photo, {"survey_id": 2, "captured_at": None}, 1.0)


def test_learned_fusion_is_fitted_out_of_sample() -> None:
    """A matcher of pure noise looks informative to a fusion fitted on in-sample isotonic outputs (isotonic
    regression memorises noise on a few hundred pairs); fitted out of fold, the fusion gives it much less
    weight. Over ten seeded draws of 120 pairs with two informative matchers and one of noise."""
    matchers = ["a", "b", "noise"]
    naive_weights, honest_weights = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        same = rng.random(120) < 0.5
        pairs = [LabelledPair(q, 1000 + q, "x", bool(s), {"a": float(s) + rng.normal(0, 1.0),
                                                          "b": float(s) + rng.normal(0, 1.0),
                                                          "noise": float(rng.normal())})
                 for q, s in enumerate(same)]
        y = same.astype(float)
        in_sample = np.column_stack([IsotonicCalibrator.fit(np.array([p.raw[m] for p in pairs]), y)(
            np.array([p.raw[m] for p in pairs])) for m in matchers])
        naive_weights.append(LearnedFusion.fit(matchers, in_sample, y).coef[2])
        honest = cross_fitted_fusion(pairs, matchers, seed=seed)
        honest_weights.append(honest.coef[2])
        assert min(honest.coef[:2]) > 1.0  # the informative matchers keep their weight
    assert np.mean(honest_weights) < 0.5 * np.mean(naive_weights)


def test_local_matcher_version_names_every_setting_that_changes_scores(tmp_path: Path) -> None:
    def version(**kw: object) -> str:
        with pytest.warns(UserWarning, match="RANDOMLY"):
            return AlikedLightGlue(random_init_for_tests=True, weights_dir=tmp_path, **kw).version  # type: ignore[arg-type]

    base = version()
    variants = [version(max_keypoints=1024), version(long_side=640), version(min_confidence=0.2),
                version(pair_batch=8), version(engine="mnn"), version(engine="mnn", ratio=0.8)]
    assert len({base, *variants}) == 7
    # LightGlue's confidence and batching do not change descriptor matches: the same version, same calibrations
    assert version(engine="mnn", min_confidence=0.2, pair_batch=8) == version(engine="mnn")
    assert LocalMatchScorer("aliked", 40).name == "raw-local-matches"


def test_calibrations_never_apply_to_other_model_versions(registry: Registry) -> None:
    registry.calibrate()
    policy = registry.policy
    assert policy.applies_to(registry.pipeline.versions)
    other = {**registry.pipeline.versions, "aliked": registry.pipeline.versions["aliked"] + "-c0.2"}
    assert not policy.applies_to(other)
    from registry.decide.policy import build_scorer

    scorer = build_scorer(policy, {}, other, "efficientnet-lite0", "aliked", None)
    assert scorer.name == "raw-local-matches"


def test_a_registry_of_another_profile_is_refused(settings: Settings, offline_pipeline: Pipeline, tmp_path: Path
                                                  ) -> None:
    with Registry(settings, pipeline=offline_pipeline) as registry:
        _ = registry.collections  # the offline embedder is registered
    paper = Settings.for_profile("paper", data_dir=settings.data_dir, database_url=settings.database_url)
    with pytest.raises(ProfileMismatchError, match="profile 'offline'"):
        Registry(paper)
    with pytest.warns(UserWarning, match="RANDOMLY"):
        tiny = Pipeline(Settings.for_profile("tiny-test", data_dir=tmp_path / "tiny"))
    with Registry(settings, pipeline=tiny) as mixed, pytest.raises(ProfileMismatchError, match="efficientnet-lite0"):
        _ = mixed.collections  # not silently given new collections beside the offline ones


# --- defects that changed decisions and counts -----------------------------------------------------------------
def test_a_new_individual_whose_only_sighting_is_reassigned_is_retired(registry: Registry, population: Path,
                                                                       tmp_path: Path) -> None:
    registry.calibrate()
    rows = _rows(population / "season2" / "manifest.csv")
    known = {r["identity"] for r in _rows(population / "season1" / "manifest.csv")}
    newcomer = next(population / "season2" / r["image"] for r in rows if r["identity"] not in known)
    created = registry.identify(newcomer, "synleopard", record=True, survey="season-2")
    assert created.outcome.outcome == "new"
    before = registry.catalog.stats()
    curator = Curator(registry.stores, actor="tester")
    target = registry.catalog.individuals()[0]["code"]
    moved = curator.reassign(created.decision_id, target)
    assert moved["retired"] == [created.individual_code]
    assert registry.catalog.stats()["individuals"] == before["individuals"] - 1
    assert created.individual_code not in {i["code"] for i in registry.catalog.individuals()}
    exports.write_capture_history(registry.catalog, tmp_path / "ch.csv")
    assert created.individual_code not in (tmp_path / "ch.csv").read_text()
    assert registry.catalog.history(created.individual_code)["sightings"] == []  # kept, with its code
    curator.undo(moved["change"])
    assert registry.catalog.stats() == before
    assert created.individual_code in {i["code"] for i in registry.catalog.individuals()}
    rejected = curator.reject(created.decision_id)
    assert rejected["retired"] == [created.individual_code]
    assert doctor.check(registry)["consistent"]


def test_undo_of_reassign_new_keeps_later_sightings_resolving(registry: Registry, population: Path,
                                                              tmp_path: Path) -> None:
    """After `reassign --new` created N, another photo was labelled N (a reference row naming N's code). Undo
    folds N back: that photo resolves to the original individual in SQL and in every vector payload."""
    registry.calibrate()
    first, second = _returning(population, 2)
    answer = registry.identify(first, "synleopard", record=True, survey="season-2")
    curator = Curator(registry.stores, actor="tester")
    split = curator.reassign(answer.decision_id, new=True)
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(f"image,identity,species\n{second},{split['individual']},synleopard\n")
    report = Ingestor(registry).ingest(labelled, "season-2", "reference")
    assert report.added == 1 and registry.catalog.history(split["individual"])["individual"] == split["individual"]
    assert len(registry.catalog.history(split["individual"])["sightings"]) == 2  # the code was the label
    curator.undo(split["change"])
    assert registry.catalog.history(split["individual"])["individual"] == answer.individual_code
    with registry.catalog.transaction() as session:
        annotation_id = session.scalar(select(Annotation.id).join(Image, Image.id == Annotation.image_id)
                                       .where(Image.path == str(second.resolve())))
    state = registry.catalog.annotation_states([annotation_id])[annotation_id]
    for collection in registry.collections.values():
        payload = dict(registry.index.payloads(collection))[annotation_id]
        assert payload["individual_id"] == state["individual_id"]
    assert doctor.check(registry)["consistent"]


def test_capture_history_occasions_come_from_surveys_and_species_are_separate(
        registry: Registry, population: Path, tmp_path: Path) -> None:
    photos = _returning(population, 2)
    for photo in photos:
        answer = registry.identify(photo, "synleopard", record=True, survey="season-2")
        Curator(registry.stores).reject(answer.decision_id, reason="blurred")
    occasions, matrix, _ = exports.capture_history(registry.catalog, "survey")
    assert occasions == ["season-1", "season-2"]  # season 2 detected nobody: still an occasion
    assert all(row[1] == 0 for row in matrix.values())
    other = tmp_path / "cows.csv"
    cow = tmp_path / "cow.jpg"
    shutil.copy(population / "season2" / _rows(population / "season2" / "manifest.csv")[-1]["image"], cow)
    with open(cow, "ab") as f:
        f.write(b"\0")  # another photo's content
    other.write_text(f"image,identity,species\n{cow},daisy,cow\n")
    Ingestor(registry).ingest(other, "barn", "reference")
    with pytest.raises(CatalogError, match="give --species"):
        exports.capture_history(registry.catalog, "survey")
    _, cows, _ = exports.capture_history(registry.catalog, "survey", species="cow")
    assert len(cows) == 1 and next(iter(cows.values())) == [0, 0, 1]


def test_identify_record_resumes_a_write_that_crashed_after_sql(tmp_path: Path, population: Path,
                                                                 offline_pipeline: Pipeline) -> None:
    home = tmp_path / "reg"
    settings = Settings(data_dir=home, profile="offline")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")
    cli = [sys.executable, "-m", "registry", "--data-dir", str(home)]
    first, second = _returning(population, 2)
    crashed = subprocess.run([*cli, "identify", str(first), "--record"], capture_output=True,
                             env={**os.environ, "REGISTRY_CRASH_AT": "after-sql"})
    assert crashed.returncode == -9
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        assert [p["kind"] for p in doctor.check(registry)["problems"]] == ["pending-annotation"]
    subprocess.run([*cli, "identify", str(second), "--record"], check=True, capture_output=True)
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        report = doctor.check(registry)
        assert report["consistent"] and registry.catalog.stats()["decisions"] == 2


def test_writers_resume_only_writes_older_than_the_grace_period(registry: Registry) -> None:
    from datetime import timedelta

    from registry.store.tables import utcnow

    catalog = registry.catalog
    with catalog.transaction() as session:
        young = catalog.add_annotation(session, catalog.add_image(session, sha256="a" * 64, path="/x.jpg", width=1,
                                                                  height=1), "synleopard")
        old = catalog.add_annotation(session, catalog.add_image(session, sha256="b" * 64, path="/y.jpg", width=1,
                                                                height=1), "synleopard")
        old.created_at = utcnow() - timedelta(hours=1)
        young_id, old_id = young.id, old.id
    cutoff = utcnow() - timedelta(seconds=registry.settings.resume_grace_seconds)
    assert catalog.pending_annotations(cutoff) == [old_id]
    assert set(catalog.pending_annotations()) == {young_id, old_id}


def test_photo_paths_are_relative_to_the_root_and_relocate_moves_others(
        tmp_path: Path, population: Path, database_url: str, offline_pipeline: Pipeline) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(population / "season1", archive / "season1")
    settings = Settings(data_dir=tmp_path / "reg", database_url=database_url, profile="offline",
                        photo_root=str(archive))
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(archive / "season1" / "manifest.csv", "s1", "reference")
        with registry.catalog.transaction() as session:
            stored = list(session.scalars(select(Image.path)))
    assert stored and all(not p.startswith("/") and p.startswith("season1/") for p in stored)
    moved = tmp_path / "new-disk"
    archive.rename(moved)
    settings.photo_root = str(moved)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        code = registry.catalog.individuals()[0]["code"]
        assert all(Path(s["image"]).exists() for s in registry.catalog.history(code)["sightings"])
        shutil.rmtree(registry.settings.features_dir)  # features must now come from the moved photos
        answer = registry.identify(_returning(population)[0], "synleopard")
        assert answer.problems == [] and answer.outcome.ranked
        result = registry.catalog.relocate("season1", "gone")
        assert result == {"rewritten": len(stored), "missing_now": len(stored)}
        shutil.rmtree(registry.settings.features_dir)
        answer = registry.identify(_returning(population)[0], "synleopard")
        assert answer.problems and "cannot be read" in answer.problems[0]  # reported, not silently dropped
        registry.catalog.relocate("gone", "season1")
        assert registry.identify(_returning(population)[0], "synleopard").problems == []


def test_a_reference_label_that_is_a_code_is_that_individual(registry: Registry, population: Path,
                                                             tmp_path: Path) -> None:
    target = registry.catalog.individuals()[0]
    photo = _returning(population)[0]
    labelled = tmp_path / "by-code.csv"
    labelled.write_text(f"image,identity,species\n{photo},{target['code']},synleopard\n")
    before = registry.catalog.stats()["individuals"]
    Ingestor(registry).ingest(labelled, "season-2", "reference")
    assert registry.catalog.stats()["individuals"] == before
    assert len(registry.catalog.history(target["code"])["sightings"]) == target["sightings"] + 1


def test_calibrate_chooses_tau_on_simulated_open_set_queries(tmp_path: Path, population: Path,
                                                            offline_pipeline: Pipeline) -> None:
    """Leave-identities-out: hidden individuals' photos must come back "new", the others' must find a re-sighting;
    the chosen tau is the best on those queries and goes into the policy with the score it expects."""
    settings = Settings(data_dir=tmp_path / "reg", profile="offline")  # decision logic: SQLite is enough
    Registry.init(settings)
    registry = Registry(settings, pipeline=offline_pipeline)
    Ingestor(registry).ingest(population / "season1" / "manifest.csv", "season-1", "reference")
    Ingestor(registry).ingest(population / "season2" / "manifest.csv", "season-2", "reference")
    summary = registry.calibrate()
    report = summary["self_tuned"]["synleopard"]
    assert report["tau"] is not None and report["unknown_queries"] > 0 and report["known_queries"] > 0
    policy = registry.policy
    assert policy.threshold_for("synleopard") == report["tau"]
    assert policy.expected["self_tuned"]["synleopard"]["expected"]["score"] == report["expected"]["score"]
    assert report["expected"]["score"] >= 0.8  # synthetic spots: the open-set rule separates them
    # a hidden individual never appears among its own photo's candidates
    item = registry.catalog.labelled_annotations("synleopard")[0]
    ranked = registry.identification.rank_stored(item["annotation_id"], "synleopard", item["viewpoint"],
                                                 registry.scorer, (item["annotation_id"],), (item["individual_id"],))
    assert ranked and item["individual_id"] not in {r.individual_id for r in ranked}
    untuned = registry.calibrate(self_tune=False)
    assert untuned["self_tuned"] == {} and registry.policy.thresholds == {}
    registry.close()


def test_evidence_is_said_in_words_and_a_score_that_tells_nothing_apart_is_left_out() -> None:
    """The match page's evidence: matching points as counts a reviewer reads, the calibrated probability as a
    percentage; a matcher whose calibrated score is the same for every compared photo is not shown."""
    from registry.curation.review import constant_scores, evidence_in_words

    raw = {"aliked": 47.0, "aliked-verified": 31.0, "aliked-distinctive": 20.0, "efficientnet-lite0": 0.71}
    calibrated = {"aliked": 0.4, "aliked-verified": 0.6, "aliked-distinctive": 0.83, "efficientnet-lite0": 0.5}
    words = evidence_in_words(raw, calibrated, set())
    assert words[0] == "47 matching points (31 verified, 20 found on no other candidate) → 83% likely the same animal"
    assert words[1] == "looks alike to efficientnet-lite0: similarity 0.71 → 50% likely the same animal"
    candidates = [{"images": [{"calibrated": {"efficientnet-lite0": 0.5, "aliked": 0.9}}]},
                  {"images": [{"calibrated": {"efficientnet-lite0": 0.5, "aliked": 0.1}}]}]
    hidden = constant_scores(candidates)
    assert hidden == {"efficientnet-lite0"}
    assert [w for w in evidence_in_words(raw, calibrated, hidden) if "efficientnet" in w] == []
    assert constant_scores(candidates[:1]) == set()  # one photo: nothing to compare, nothing hidden
    assert evidence_in_words({"aliked": 1.0}, {}, set()) == ["1 matching point"]
