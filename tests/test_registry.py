"""Identify and record on synthetic animals with the real offline pipeline, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from registry.ingest.ingestion import Ingestor
from registry.matching.imaging import ImageError
from registry.matching.pipeline import Pipeline
from registry.services.registry import Registry, RegistryNotInitialisedError
from registry.settings import Settings
from registry.store.catalog import CatalogError
from registry.store.locking import RegistryInUseError


def _rows(population: Path, season: int) -> list[dict]:
    with open(population / f"season{season}" / "manifest.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    settings = Settings(data_dir=tmp_path / "reg", database_url=database_url, profile="offline")
    Registry.init(settings)
    return settings


def test_returning_animal_is_matched_and_a_new_one_is_created_once(
    settings: Settings, population: Path, offline_pipeline: Pipeline
) -> None:
    with Registry(settings, pipeline=offline_pipeline) as registry:
        report = Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")
        assert report.added == 12 and not report.problems
        known = {r["identity"] for r in _rows(population, 1)}
        season2 = _rows(population, 2)
        returning = next(r for r in season2 if r["identity"] in known)
        newcomer = next(r["identity"] for r in season2 if r["identity"] not in known)
        first, second = [population / "season2" / r["image"] for r in season2 if r["identity"] == newcomer][:2]

        answer = registry.identify(population / "season2" / returning["image"], "synleopard")
        assert answer.outcome.outcome == "match" and answer.decision_id is None  # not recorded
        matched_name = registry.catalog.history(answer.outcome.ranked[0].code)["name"]
        assert matched_name == returning["identity"]

        existing = {i["code"] for i in registry.catalog.individuals()}
        created = registry.identify(first, "synleopard", record=True, survey="s2")
        code = created.individual_code
        assert created.outcome.outcome == "new" and code not in existing and code.startswith("SYN-")
        found = registry.identify(second, "synleopard", record=True, survey="s2")
        assert found.outcome.outcome == "match" and found.individual_code == code

        with pytest.raises(CatalogError, match="already in the registry"):
            registry.identify(first, "synleopard", record=True)
        stats = registry.catalog.stats()
        assert stats == {"individuals": 7, "images": 14, "annotations": 14, "sightings": 14, "decisions": 2,
                         "surveys": 2, "pending_annotations": 0}
        history = registry.catalog.history(code)
        assert [s["method"] for s in history["sightings"]] == ["automatic", "automatic"]
        created_id = next(i["id"] for i in registry.catalog.individuals() if i["code"] == code)

    # closed and reopened from disk: individuals, sightings and vectors are all still there
    with Registry(Settings.load(settings.data_dir, settings.database_url), pipeline=offline_pipeline) as again:
        assert again.catalog.stats() == stats
        assert again.index.count(again.collections["efficientnet-lite0"]) == 14
        payload = dict(again.index.payloads(again.collections["efficientnet-lite0"]))
        sightings = {s["sha256"] for s in again.catalog.history(code)["sightings"]}
        assert len(sightings) == 2 and sum(1 for p in payload.values() if p["individual_id"] == created_id) == 2
        repeat = Ingestor(again).ingest(population / "season1" / "manifest.csv", "s1", "reference")
        assert repeat.added == 0 and repeat.already_present == 12  # idempotent by content


def test_identify_mode_season_and_bad_inputs_are_reported_by_row(
    settings: Settings, population: Path, offline_pipeline: Pipeline, tmp_path: Path
) -> None:
    season2 = _rows(population, 2)
    manifest = tmp_path / "season2.csv"
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(season2[0]))
        writer.writeheader()
        for r in season2:
            writer.writerow({**r, "image": str(population / "season2" / r["image"])})
        writer.writerow({**season2[0], "image": str(tmp_path / "broken.jpg")})
        writer.writerow({**season2[0], "image": str(tmp_path / "missing.jpg")})
        writer.writerow({**season2[0], "image": "x.jpg", "captured_at": "last tuesday"})
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")
        report = Ingestor(registry).ingest(manifest, "s2", "identify")
        problems = {p.line: p.reason for p in report.problems}
        n = len(season2)
        assert set(problems) == {n + 2, n + 3, n + 4}
        assert "broken.jpg" in problems[n + 2] and "missing.jpg: file not found" in problems[n + 3]
        assert "not ISO 8601" in problems[n + 4]
        assert report.added == n
        truth = {r["identity"] for r in _rows(population, 1)}
        new_truth = {r["identity"] for r in season2} - truth
        assert report.to_json()["new_individuals"] == len(new_truth)  # each newcomer created exactly once
        assert registry.catalog.stats()["sightings"] == 12 + n


def test_second_writer_is_refused_and_uninitialised_registry_explains(
    settings: Settings, tmp_path: Path
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from registry.store.locking import RegistryLock; "
         f"lock = RegistryLock({str(settings.data_dir)!r}); lock.acquire(); print('locked', flush=True); "
         "time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RegistryInUseError, match=f"in use by PID {holder.pid}"):
            Registry(settings)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(RegistryNotInitialisedError, match="registry init"):
        Registry(Settings(data_dir=tmp_path / "empty"))


def test_unreadable_query_names_the_file(settings: Settings, offline_pipeline: Pipeline, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("field notes, not a photo")
    with Registry(settings, pipeline=offline_pipeline) as registry, \
            pytest.raises(ImageError, match=r"notes\.jpg: not an image"):
        registry.identify(text, "synleopard")


def test_a_different_model_version_is_refused(settings: Settings, population: Path,
                                              offline_pipeline: Pipeline) -> None:
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")
    original = offline_pipeline.primary.weights_sha256
    offline_pipeline.primary.weights_sha256 = "f" * 64  # as if other weights were loaded
    try:
        with Registry(settings, pipeline=offline_pipeline) as registry, \
                pytest.raises(CatalogError, match="refusing to mix vectors"):
            registry.identify(population / "season2" / _rows(population, 2)[0]["image"], "synleopard")
    finally:
        offline_pipeline.primary.weights_sha256 = original


def test_lnbnn_votes_over_a_bounded_pool_on_a_large_registry(tmp_path: Path, population: Path,
                                                            offline_pipeline: Pipeline) -> None:
    """Past `lnbnn_pool_photos` candidates, LNBNN votes over the photos of the individuals closest by the global
    embedding (a query's cost stops growing with the registry), and the returning animal is still found."""
    settings = Settings(data_dir=tmp_path / "reg", profile="offline")
    Registry.init(settings)
    settings.lnbnn_pool_photos, settings.lnbnn_pool_photos_per_individual = 6, 2  # 12 references: past it
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")
        returning = next(r for r in _rows(population, 2) if r["identity"] in {x["identity"] for x in
                                                                          _rows(population, 1)})
        query = population / "season2" / returning["image"]
        (described,) = registry.identification.describe([query], ["synleopard"], [None])
        members = registry.identification.lnbnn_members(described, "synleopard", None, (), (), None)
        assert len(members) == 6 and len(set(members.values())) == 3  # 3 individuals x their 2 closest photos
        answer = registry.identify(query, "synleopard")
        assert registry.catalog.history(answer.outcome.ranked[0].code)["name"] == returning["identity"]
