"""A season from the field: bad inputs reported and skipped, re-runs idempotent, `kill -9` at every write step
repaired by re-running, and `registry doctor` finding and fixing planted inconsistencies. Real processes,
real files, real SQLite and embedded Qdrant."""

from __future__ import annotations

import csv
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from helpers import init_registry as _init
from helpers import run_cli
from helpers import season_copy as _season
from helpers import snapshot as _snapshot
from PIL import Image

from registry.ingest import doctor
from registry.ingest.ingestion import Ingestor
from registry.matching.pipeline import Pipeline
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import Catalog
from registry.store.feature_store import FeatureStore
from registry.store.vector_engines import open_vector_index
from registry.store.vector_index import VectorPoint


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest) as f:
        return list(csv.DictReader(f))


def test_a_season_with_planted_bad_inputs(tmp_path: Path, population: Path) -> None:
    manifest = _season(population, 1, tmp_path / "season", count=6)
    folder = manifest.parent
    good = _rows(manifest)
    data = (folder / good[0]["image"]).read_bytes()
    (folder / "images" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "images" / "notes.jpg").write_text("ranger's notes, not a photo")
    (folder / "images" / "empty.jpg").write_bytes(b"")
    Image.new("1", (12000, 12000)).save(folder / "images" / "huge.png")
    header = [*good[0], "camera"]  # an unknown column: reported, ignored
    planted = [
        {"image": "images/truncated.jpg", "identity": "X1"},
        {"image": "images/notes.jpg", "identity": "X2"},
        {"image": "images/missing.jpg", "identity": "X3"},
        {"image": "images/empty.jpg", "identity": "X4"},
        {"image": "images/huge.png", "identity": "X5"},
        {**good[1], "captured_at": "2024-02-30T10:00:00"},  # bad date
        good[2],  # duplicated row
    ]
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for row in good + planted:
            writer.writerow({"species": "synleopard", **row, "camera": "cam-7"})

    home = tmp_path / "reg"
    _init(home)
    first = run_cli(home, "--json", "ingest", str(manifest), "--survey", "s1", expect=3)
    report = json.loads(first.stdout)
    assert report["added"] == 6 and report["skipped"] == 7
    reasons = "\n".join(report["problems"])
    for line, reason in ((8, "truncated"), (9, "not an image"), (10, "file not found"), (11, "empty file"),
                         (12, "too large"), (13, "not ISO 8601"), (14, "duplicate of line 4")):
        assert f"manifest.csv:{line}: " in reasons and reason in reasons, (line, reason, reasons)
    assert any("'camera' is not used" in w for w in report["warnings"])
    with open(report["problems_file"]) as f:
        assert len(list(csv.DictReader(f))) == 7

    again = json.loads(run_cli(home, "--json", "ingest", str(manifest), "--survey", "s1", expect=3).stdout)
    assert again["added"] == 0 and again["already_present"] == 6
    stats = json.loads(run_cli(home, "--json", "stats").stdout)
    assert stats["images"] == 6 and stats["sightings"] == 6 and stats["pending_annotations"] == 0
    renamed = folder / "images" / "same-photo-other-name.jpg"
    shutil.copy(folder / good[3]["image"], renamed)
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(renamed, plain / "x.jpg")
    same = json.loads(run_cli(home, "--json", "ingest", str(plain), "--survey", "s2", "--species", "synleopard",
                           "--mode", "identify").stdout)
    assert same["added"] == 0 and same["already_present"] == 1  # recognised by content, not by name


def test_folder_layouts(tmp_path: Path, population: Path) -> None:
    rows = _rows(population / "season1" / "manifest.csv")
    by_identity = tmp_path / "by-identity"
    for row in rows:
        (by_identity / row["identity"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(population / "season1" / row["image"], by_identity / row["identity"] / Path(row["image"]).name)
    (by_identity / "README.txt").write_text("stray file")
    home = tmp_path / "reg"
    _init(home, batch_size=8)
    report = json.loads(run_cli(home, "--json", "ingest", str(by_identity), "--survey", "s1",
                             "--species", "synleopard").stdout)
    assert report["added"] == len(rows) and report["skipped"] == 0
    names = {i["name"] for i in json.loads(run_cli(home, "--json", "individuals").stdout)}
    assert names == {r["identity"] for r in rows}

    plain = tmp_path / "camera-card"
    (plain / "DCIM").mkdir(parents=True)
    second = _rows(population / "season2" / "manifest.csv")[:3]
    for row in second:
        shutil.copy(population / "season2" / row["image"], plain / "DCIM" / Path(row["image"]).name)
    (plain / "DCIM" / "index.html").write_text("<html></html>")
    missing_species = run_cli(home, "ingest", str(plain), "--survey", "s2", expect=1)
    assert "--species" in missing_species.stderr
    identified = json.loads(run_cli(home, "--json", "ingest", str(plain), "--survey", "s2", "--species",
                                 "synleopard", "--mode", "identify", "--layout", "plain").stdout)
    assert identified["added"] == 3 and identified["matched"] + identified["new_individuals"] == 3
    assert any("index.html" in w for w in identified["warnings"])


UNINTERRUPTED: dict[tuple[str, str], dict] = {}  # an uninterrupted run per profile and mode, made once


@pytest.mark.parametrize(("profile", "mode", "point"), [
    ("offline", "reference", "after-features:2"),
    ("offline", "reference", "after-sql:2"),
    ("offline", "reference", "after-vectors:3"),
    ("tiny-test", "reference", "between-collections:2"),
    ("offline", "identify", "after-features:2"),
    ("offline", "identify", "after-sql:3"),
    ("offline", "identify", "after-vectors:2"),
])
def test_killed_mid_ingest_then_rerun_equals_an_uninterrupted_run(
    tmp_path_factory: pytest.TempPathFactory, population: Path, profile: str, mode: str, point: str,
    offline_pipeline: Pipeline,
) -> None:
    """Only the killed ingest runs as a separate process (SIGKILLed at `point`); the steps around it run in this
    process with the same models, which keeps the matrix fast without changing what it proves."""
    root = tmp_path_factory.mktemp("crash")
    reference = _season(population, 1, root / "s1", count=6)
    queries = _season(population, 2, root / "s2", count=4)  # enough for the third passage of a point
    pipeline = offline_pipeline if profile == "offline" else _tiny_pipeline()

    def ingest(home: Path, season: Path, survey: str, ingest_mode: str) -> None:
        with Registry(Settings.load(home), pipeline=pipeline) as registry:
            Ingestor(registry).ingest(season, survey, ingest_mode)

    def check(home: Path) -> dict:
        with Registry(Settings.load(home), pipeline=pipeline) as registry:
            return doctor.check(registry)

    results = {}
    if (profile, mode) in UNINTERRUPTED:  # the same photos, so the same registry (snapshots are by content)
        results["uninterrupted"] = UNINTERRUPTED[(profile, mode)]
    for name in ("uninterrupted", "killed"):
        if name in results:
            continue
        home = root / name
        _init(home, profile=profile)
        if mode == "identify":
            ingest(home, reference, "s1", "reference")
        season = reference if mode == "reference" else queries
        if name == "killed":
            killed = run_cli(home, "ingest", str(season), "--survey", "s", "--mode", mode,
                          env={"REGISTRY_CRASH_AT": point}, expect=None)
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
            assert check(home)["annotations"] >= 1
        ingest(home, season, "s", mode)
        report = check(home)
        assert report["consistent"], report
        results[name] = _snapshot(home)
    UNINTERRUPTED[(profile, mode)] = results["uninterrupted"]
    assert results["killed"] == results["uninterrupted"]
    assert results["killed"]["statuses"] == ["indexed"] * len(results["killed"]["statuses"])


_TINY: list[Pipeline] = []


def _tiny_pipeline() -> Pipeline:
    """The tiny-test profile's random models, built once (seeded embedders: the same in every process)."""
    if not _TINY:
        with pytest.warns(UserWarning):
            _TINY.append(Pipeline(Settings.for_profile("tiny-test", data_dir=Path("unused"))))
    return _TINY[0]


def test_doctor_finds_and_repairs_planted_inconsistencies(tmp_path: Path, population: Path) -> None:
    home = tmp_path / "reg"
    _init(home, batch_size=8)
    run_cli(home, "ingest", str(population / "season1" / "manifest.csv"), "--survey", "s1")
    assert json.loads(run_cli(home, "--json", "doctor").stdout)["consistent"]
    settings = Settings.load(home)
    catalog = Catalog(settings.sqlalchemy_url)
    states = catalog.annotation_states()
    ids = sorted(states)
    catalog.mark_pending([ids[0]])
    catalog.close()
    index = open_vector_index(settings)
    (collection,) = index.collections()
    index.delete(collection, [ids[1]])
    index.set_individual(collection, [ids[2]], 999)
    index.upsert(collection, [VectorPoint(9999, np.ones(1280, dtype=np.float32), 1, "synleopard", None, None)])
    index.close()
    (version,) = [p.name for p in (home / "features").iterdir() if p.is_dir()]
    cache = FeatureStore(home / "features", version)
    assert cache.has(states[ids[3]]["feature_key"])
    cache.delete(states[ids[3]]["feature_key"])
    cache.close()

    broken = json.loads(run_cli(home, "--json", "doctor", expect=5).stdout)
    kinds = {(p["kind"], p["annotation_id"]) for p in broken["problems"]}
    assert not broken["consistent"]
    assert {("pending-annotation", ids[0]), ("missing-vector", ids[1]), ("wrong-individual", ids[2]),
            ("orphan-vector", 9999), ("missing-features", ids[3])} <= kinds
    repaired = json.loads(run_cli(home, "--json", "doctor", "--repair").stdout)
    assert repaired["unrepaired"] == 0 and repaired["repaired"] == len(repaired["problems"])
    assert json.loads(run_cli(home, "--json", "doctor").stdout) == {
        "consistent": True, "problems": [], "repaired": 0, "unrepaired": 0, "annotations": len(ids),
        "unfinished_reembeds": []}
