"""Writes land whole or not at all: an exception at every step of both recording paths leaves nothing behind (or
a pending write the next one finishes), the vectors reach the disk before SQL says `indexed`, a lost vector
index is refused and rebuilt, migrations are atomic, and decisions stay within their species and policy.
Real SQLite/PostgreSQL, real Qdrant Edge, the offline models."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import CLI, init_registry, rows_of, season_copy, snapshot
from sqlalchemy import inspect

from registry.decide.calibration import Calibrations, IsotonicCalibrator
from registry.decide.policy import DecisionPolicy, build_scorer
from registry.decide.scoring import LocalMatchScorer, decision_margin
from registry.ingest import doctor
from registry.ingest.events import animals
from registry.ingest.ingestion import Ingestor
from registry.matching.pipeline import Pipeline
from registry.services.recording import PhotoRow
from registry.services.registry import PolicyChangedError, Registry, VectorIndexLostError
from registry.settings import Settings
from registry.store import crashpoints, migrate
from registry.store.catalog import Catalog, CatalogError
from registry.store.crashpoints import InjectedFault

# between-collections is only passed with two global embedders: the kill matrix covers it with tiny-test
FAULT_POINTS = [p for p in crashpoints.WRITE_POINTS if p != "between-collections"]
IN_TRANSACTION = ("after-features", "after-annotations", "after-sighting", "before-commit")


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory, population: Path, offline_pipeline: Pipeline) -> dict:
    """Registries made once and copied by each test: `empty` (initialised) and `reference` (4 labelled photos),
    with the manifests written into them, and the registries an uninterrupted run leaves."""
    root = tmp_path_factory.mktemp("integrity")
    references = season_copy(population, 1, root / "s1", count=4)
    queries = season_copy(population, 2, root / "s2", count=2)
    labelled = season_copy(population, 1, root / "s1-more", count=6)
    more = root / "s1-more" / "more.csv"  # two labelled photos that are not in the reference registry yet
    lines = labelled.read_text().splitlines()
    more.write_text("\n".join([lines[0], *lines[5:7]]) + "\n")
    empty = root / "empty"
    init_registry(empty)
    reference = root / "reference"
    init_registry(reference)
    with Registry(Settings.load(reference), pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(references, "s1", "reference")
    uninterrupted = {}
    for mode, base, manifest in (("reference", reference, more), ("identify", reference, queries)):
        home = root / f"uninterrupted-{mode}"
        shutil.copytree(base, home)
        with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
            Ingestor(registry).ingest(manifest, "s", mode)
        uninterrupted[mode] = snapshot(home)
    return {"empty": empty, "reference": reference, "more": more, "queries": queries,
            "uninterrupted": uninterrupted}


def _copy(base: Path, tmp_path: Path) -> Path:
    home = tmp_path / "reg"
    shutil.copytree(base, home)
    return home


@pytest.mark.parametrize("mode", ["reference", "identify"])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_an_exception_at_every_write_step_loses_nothing_and_the_rerun_equals_an_uninterrupted_run(
    bases: dict, tmp_path: Path, offline_pipeline: Pipeline, mode: str, point: str,
) -> None:
    home = _copy(bases["reference"], tmp_path)
    manifest = bases["more"] if mode == "reference" else bases["queries"]
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        before = registry.catalog.stats()
        with crashpoints.armed(point), pytest.raises(InjectedFault):
            Ingestor(registry).ingest(manifest, "s", mode)
        after = registry.catalog.stats()
        if point in IN_TRANSACTION:  # rolled back whole: not a photo, annotation, sighting or decision
            assert after == before
        else:  # committed: the photo is recorded, its vectors are what is left to do
            assert after["sightings"] > before["sightings"]
        Ingestor(registry).ingest(manifest, "s", mode)  # the same command again, in the same process
        report = doctor.check(registry)
        assert report["consistent"], report
    assert snapshot(home) == bases["uninterrupted"][mode]


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_identify_record_after_a_failed_attempt_records_the_photo_normally(
    bases: dict, tmp_path: Path, offline_pipeline: Pipeline, point: str,
) -> None:
    """The case the review found: an exception after the annotation was added left the photo in SQL without a
    sighting, and the retry refused it as "already in the registry". A failure after the commit leaves the
    sighting recorded (pending until its vectors are written by the next write, or by doctor)."""
    home = _copy(bases["reference"], tmp_path)
    photo = bases["queries"].parent / rows_of(bases["queries"])[0]["image"]
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        before = registry.catalog.stats()
        with crashpoints.armed(point), pytest.raises(InjectedFault):
            registry.identify(photo, "synleopard", record=True)
        if point not in IN_TRANSACTION:
            assert registry.catalog.stats()["sightings"] == before["sightings"] + 1
            with pytest.raises(CatalogError, match="already in the registry"):
                registry.identify(photo, "synleopard", record=True)
            registry.recorder.resume_pending()
            assert doctor.check(registry)["consistent"]
            return
        assert registry.catalog.stats() == before
        recorded = registry.identify(photo, "synleopard", record=True)
        assert recorded.decision_id is not None and recorded.individual_code
        assert registry.catalog.stats()["sightings"] == before["sightings"] + 1
        assert registry.catalog.individual_of_image(str(photo)) == recorded.individual_code


def test_vectors_are_synced_to_disk_before_sql_marks_them_indexed(bases: dict, tmp_path: Path) -> None:
    """A power cut must never leave SQL ahead of the index. Qdrant Edge keeps updates in memory until it is
    flushed (a kill -9 loses nothing, a power cut does), so the syscalls of a real ingest are traced: between
    the SQL commit and the point where annotations are marked indexed there must be a sync (msync/fsync)."""
    if shutil.which("strace") is None:
        if os.environ.get("REGISTRY_REQUIRE_STRACE"):
            pytest.fail("strace is required here (REGISTRY_REQUIRE_STRACE) but not installed")
        pytest.skip("strace is not installed (apt-get install strace)")
    home = _copy(bases["reference"], tmp_path)
    settings = Settings.load(home)
    replace(settings, batch_size=1).save()  # two writes: the second finds its shard open (loading one syncs)
    trace = tmp_path / "trace.txt"
    result = subprocess.run(
        ["strace", "-f", "-e", "trace=fsync,fdatasync,msync,write", "-o", str(trace), *CLI, "--data-dir",
         str(home), "ingest", str(bases["more"]), "--survey", "s"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "REGISTRY_TRACE_POINTS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = trace.read_text().splitlines()
    marks = [k for k, line in enumerate(lines) if "crashpoint after-sql" in line or "crashpoint after-vectors" in line]
    assert len(marks) == 4, "the ingest did not pass the write points twice"
    committed, vectors_done = marks[2], marks[3]
    assert "after-sql" in lines[committed] and "after-vectors" in lines[vectors_done]
    synced = [line for line in lines[committed:vectors_done] if re.search(r"\b(msync|fsync|fdatasync)\(", line)]
    assert synced, "no sync between the vector upsert and marking the annotations indexed"


@pytest.mark.parametrize("loss", ["folder-deleted", "collection-emptied"])
def test_a_lost_vector_index_is_refused_and_doctor_rebuilds_it(
    bases: dict, tmp_path: Path, offline_pipeline: Pipeline, loss: str,
) -> None:
    home = _copy(bases["reference"], tmp_path)
    photo = bases["queries"].parent / rows_of(bases["queries"])[0]["image"]
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        expected = registry.identify(photo, "synleopard")
        collection = next(iter(registry.collections.values()))
        dimension = registry.index.dimension(collection)
    if loss == "folder-deleted":
        shutil.rmtree(home / "vectors")
    else:  # a reset volume: the collection is there, empty
        shutil.rmtree(home / "vectors" / collection)
        from registry.store.vectors_edge import EdgeIndex

        with EdgeIndex(home / "vectors") as index:
            index.ensure_collection(collection, dimension)
    before = snapshot(home)
    with (Registry(Settings.load(home), pipeline=offline_pipeline) as registry,
          pytest.raises(VectorIndexLostError, match=r"doctor --repair")):
        registry.identify(photo, "synleopard", record=True)
    assert snapshot(home)["sightings"] == before["sightings"]  # nothing recorded as a "new individual"
    with Registry(Settings.load(home), pipeline=offline_pipeline, repairing=True) as registry:
        repaired = doctor.check(registry, repair=True)
        assert repaired["unrepaired"] == 0 and repaired["repaired"] >= 4
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        assert doctor.check(registry)["consistent"]
        again = registry.identify(photo, "synleopard")
    assert [c.code for c in again.outcome.ranked[:3]] == [c.code for c in expected.outcome.ranked[:3]]


def test_a_policy_for_other_models_stored_by_another_process_is_refused_not_silently_used(
    bases: dict, tmp_path: Path, offline_pipeline: Pipeline,
) -> None:
    home = _copy(bases["reference"], tmp_path)
    photo = bases["queries"].parent / rows_of(bases["queries"])[0]["image"]
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        first = registry.identify(photo, "synleopard")
        assert first.outcome.policy_version == registry.policy.version
        other = Catalog(registry.settings.sqlalchemy_url)  # another process's connection: a reembed elsewhere
        other.save_policy(registry.policy.derive("reembed into a trained version", "another process",
                                                 embedder_weights={"efficientnet-lite0": "models/v2.pt"}))
        other.close()
        before = registry.catalog.stats()
        with pytest.raises(PolicyChangedError, match="restart"):
            registry.identify(photo, "synleopard", record=True)
        assert registry.catalog.stats() == before


def test_a_failed_upgrade_leaves_no_half_made_tables(database_url: str) -> None:
    catalog = Catalog(database_url)
    try:
        migrate.upgrade(catalog.engine, "0004")
        with catalog.engine.begin() as connection:  # 0005 creates `locations`, then this table: it fails there
            connection.exec_driver_sql("CREATE TABLE deployments (id INTEGER PRIMARY KEY)")
        with pytest.raises(Exception, match="deployments"):
            migrate.upgrade(catalog.engine)
        assert migrate.current_revision(catalog.engine) == "0004"
        assert "locations" not in inspect(catalog.engine).get_table_names()
        with catalog.engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE deployments")
        migrate.upgrade(catalog.engine)
        assert migrate.current_revision(catalog.engine) == migrate.head_revision(catalog.engine)
    finally:
        catalog.close()


# --- decisions within their species and policy ----------------------------------------------------------------
def _row(line: int, species: str, image: str, second: int) -> PhotoRow:
    from datetime import datetime

    return PhotoRow(line, Path(image), species, captured_at=datetime(2026, 5, 1, 6, 0, second), sequence="burst")


def test_an_event_with_two_species_is_decided_as_one_animal_per_species() -> None:
    rows = [_row(2, "nyala", "a.jpg", 0), _row(3, "cattle", "b.jpg", 1), _row(4, "nyala", "c.jpg", 2)]
    found = animals(rows)
    assert sorted(sorted(r.line for r in animal) for animal in found) == [[2, 4], [3]]
    assert all(len({r.species for r in animal}) == 1 for animal in found)


def test_one_animal_with_two_species_is_refused_before_anything_is_written(
    bases: dict, tmp_path: Path, offline_pipeline: Pipeline,
) -> None:
    home = _copy(bases["reference"], tmp_path)
    rows = rows_of(bases["queries"])
    photos = [bases["queries"].parent / r["image"] for r in rows]
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        described = registry.identification.describe(photos, ["synleopard", "otherleopard"], [None, None])
        animal = [(PhotoRow(k, p, sp), f"sha{k}", d) for k, (p, sp, d)
                  in enumerate(zip(photos, ["synleopard", "otherleopard"], described, strict=True))]
        before = registry.catalog.stats()
        with pytest.raises(CatalogError, match="two species"):
            registry.identification.identify_and_record(animal, "s")
        assert registry.catalog.stats() == before


def test_a_species_without_calibration_decides_on_raw_matches_while_a_calibrated_one_uses_its_own() -> None:
    """`calibrate --species X` on a registry with no pooled calibration used to raise KeyError for every
    other species."""
    rng = np.random.default_rng(0)
    calibrator = IsotonicCalibrator.fit(rng.uniform(0, 1, 200), rng.uniform(0, 1, 200) > 0.5)
    versions = {"efficientnet-lite0": "v1", "aliked": "v1"}
    policy = DecisionPolicy(profile="offline", fusion="wildfusion", alpha=1.0, default_threshold=0.4,
                            uncalibrated_threshold=40, model_versions=versions, calibration_batches={"nyala": 1})
    calibrations = Calibrations(isotonic={("efficientnet-lite0", None): calibrator, ("aliked", None): calibrator})
    scorer = build_scorer(policy, {1: calibrations}, versions, "efficientnet-lite0", "aliked", None)
    assert scorer.for_species("nyala") is scorer and scorer.probabilities
    fallback = scorer.for_species("cattle")
    assert isinstance(fallback, LocalMatchScorer) and fallback.threshold_for("cattle") == 40
    assert fallback.name == "raw-local-matches"


def test_review_margins_are_on_one_scale_for_calibrated_and_raw_scorers() -> None:
    raw_margin, _ = decision_margin("match", [41.0, 5.0], ["A", "B"], 40.0, probabilities=False)
    calibrated_margin, _ = decision_margin("match", [0.9, 0.1], ["A", "B"], 0.4)
    assert raw_margin <= 0.15 < calibrated_margin  # 41 against 40 is uncertain; 0.9 against 0.4 is not
    clear, _ = decision_margin("match", [400.0, 5.0], ["A", "B"], 40.0, probabilities=False)
    assert clear > 0.15
    new_margin, _ = decision_margin("new", [38.0], ["A"], 40.0, probabilities=False)
    assert 0 < new_margin <= 0.15


def test_recorded_decisions_name_the_policy_version_and_scorer_that_scored_them(
    bases: dict, tmp_path: Path, offline_pipeline: Pipeline,
) -> None:
    home = _copy(bases["reference"], tmp_path)
    photo = bases["queries"].parent / rows_of(bases["queries"])[0]["image"]
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        registry.set_policy(replace(registry.policy, reason="a later version", version=None, parent=None))
        recorded = registry.identify(photo, "synleopard", record=True)
        from registry.store.tables import Decision

        with registry.catalog.transaction() as session:
            decision = session.get(Decision, recorded.decision_id)
            assert decision.policy_id == registry.policy.version == recorded.outcome.policy_version
            assert decision.model_versions["scorer"] == "raw-local-matches"
            # an uncalibrated decision's margin is a fraction of its threshold, comparable with calibrated ones
            expected, _ = decision_margin(decision.outcome, [c["score"] for c in decision.candidates],
                                          [c["code"] for c in decision.candidates], decision.threshold, False)
            assert decision.margin == pytest.approx(expected)


def test_calibrating_one_species_alone_leaves_the_others_deciding_and_a_failed_calibration_changes_nothing(
    tmp_path: Path, offline_pipeline: Pipeline,
) -> None:
    """`calibrate --species X` on a registry with no pooled calibration used to make every other species'
    identification raise KeyError; a calibration that fails after storing its batch leaves the policy as it was."""
    from registry.evaluate import synth
    from registry.ingest.sources import read_manifest, write_manifest

    lynx_root, leopards = tmp_path / "lynx", tmp_path / "leopards"
    synth.generate(lynx_root, individuals=5, seasons=1, seed=11, photos_per_sighting=(2, 2))
    synth.generate(leopards, individuals=4, seasons=1, seed=12, photos_per_sighting=(2, 2))
    rows = [replace(r, species="synlynx") for r in read_manifest(lynx_root / "season1" / "manifest.csv").rows]
    write_manifest(rows, lynx_root / "season1" / "lynx.csv")
    leopard_rows = rows_of(leopards / "season1" / "manifest.csv")
    held_out = leopards / "season1" / leopard_rows[-1]["image"]
    with open(leopards / "season1" / "manifest.csv") as f:
        lines = f.read().splitlines()
    (leopards / "season1" / "references.csv").write_text("\n".join(lines[:-1]) + "\n")
    settings = Settings(data_dir=tmp_path / "reg", profile="offline")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(leopards / "season1" / "references.csv", "s1", "reference")
        Ingestor(registry).ingest(lynx_root / "season1" / "lynx.csv", "s1", "reference")
        before = registry.policy.version
        with crashpoints.armed("calibrate-batch-saved"), pytest.raises(InjectedFault):
            registry.calibrate(per_class=40, species="synlynx", self_tune=False)
        assert registry.policy.version == before  # the stored batch is named by no policy: nothing changed
        registry.calibrate(per_class=40, species="synlynx", self_tune=False)
        assert set(registry.policy.calibration_batches) == {"synlynx"}
        answer = registry.identify(held_out, "synleopard", record=True)
        assert answer.outcome.scorer == "raw-local-matches"
        assert answer.outcome.threshold == registry.policy.uncalibrated_threshold
        assert answer.decision_id is not None
