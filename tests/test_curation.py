"""Curation with an audit trail, the review queue, histories, match sheets and exports — on SQLite and
PostgreSQL with embedded Qdrant and the offline models."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from registry.curation import exports, review
from registry.curation.curator import CurationError, Curator
from registry.curation.sheets import CAPTION, HEADER, PANEL, render
from registry.ingest.ingestion import Ingestor
from registry.matching.pipeline import Pipeline
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.tables import Decision, Individual, Sighting


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def registry(database_url: str, tmp_path: Path, population: Path, offline_pipeline: Pipeline) -> Registry:
    settings = Settings(data_dir=tmp_path / "reg", database_url=database_url, profile="offline")
    Registry.init(settings)
    registry = Registry(settings, pipeline=offline_pipeline)
    Ingestor(registry).ingest(population / "season1" / "manifest.csv", "season-1", "reference")
    yield registry
    registry.close()


def _state(registry: Registry) -> dict:
    """SQL rows curation may touch, and every vector payload's individual."""
    with registry.catalog.transaction() as session:
        sightings = sorted((s.id, s.image_id, s.individual_id, s.method, s.status)
                           for s in session.scalars(select(Sighting)))
        individuals = sorted((i.id, i.code, i.merged_into_id) for i in session.scalars(select(Individual)))
    payloads = {c: sorted((i, p["individual_id"]) for i, p in registry.index.payloads(c))
                for c in registry.collections.values()}
    return {"sightings": sightings, "individuals": individuals, "payloads": payloads}


def test_merge_then_undo_restores_rows_and_payloads_exactly(registry: Registry) -> None:
    curator = Curator(registry.stores, actor="tester")
    individuals = registry.catalog.individuals()
    keep, absorb = individuals[0]["code"], individuals[1]["code"]
    before = _state(registry)
    merged = curator.merge(keep, absorb, reason="same spots")
    assert merged["summary"] == f"merged {absorb} into {keep}"
    history = registry.catalog.history(absorb)  # the absorbed code resolves to the survivor
    assert history["individual"] == keep and len(history["sightings"]) == 4
    assert history["merges"][0]["summary"] == merged["summary"]
    payload_individuals = {p for c in _state(registry)["payloads"].values() for _, p in c}
    assert individuals[1]["id"] not in payload_individuals
    with pytest.raises(CurationError, match=f"already merged into {keep}"):
        curator.merge(keep, absorb)
    curator.undo(merged["change"], reason="different animals after all")
    assert _state(registry) == before
    with pytest.raises(CurationError, match="already undone"):
        curator.undo(merged["change"])
    assert registry.catalog.history(absorb)["individual"] == absorb


def test_decisions_confirmed_reassigned_rejected_and_histories(registry: Registry, population: Path) -> None:
    curator = Curator(registry.stores, actor="tester")
    known = {r["identity"] for r in _rows(population / "season1" / "manifest.csv")}
    queries = [r for r in _rows(population / "season2" / "manifest.csv") if r["identity"] in known][:3]
    answers = [registry.identify(population / "season2" / q["image"], "synleopard", record=True, survey="season-2")
               for q in queries]
    assert all(a.outcome.outcome == "match" for a in answers)
    first, second, third = answers

    curator.confirm(first.decision_id)
    with pytest.raises(CurationError, match="already confirmed"):
        curator.confirm(first.decision_id)
    other = next(i["code"] for i in registry.catalog.individuals() if i["code"] != second.individual_code)
    moved = curator.reassign(second.decision_id, other, reason="tail notch")
    assert moved["individual"] == other
    curator.reject(third.decision_id, reason="two animals in the photo")

    by_image = registry.catalog.individual_of_image(str(population / "season2" / queries[0]["image"]))
    history = registry.catalog.history(by_image)
    methods = {Path(s["image"]).name: s["method"] for s in history["sightings"]}
    assert methods[Path(queries[0]["image"]).name] == "confirmed"
    assert [s["method"] for s in registry.catalog.history(other)["sightings"]].count("corrected") == 1
    rejected = registry.catalog.history(third.individual_code)["sightings"]
    assert Path(queries[2]["image"]).name not in {Path(s["image"]).name for s in rejected}
    states = registry.catalog.image_states([third.image_id])
    assert states[third.image_id]["individual_id"] is None
    payloads = dict(registry.index.payloads(registry.collections["efficientnet-lite0"]))
    assert payloads[third.image_id].get("individual_id") is None  # a rejected photo is no longer a candidate

    new = curator.reassign(first.decision_id, new=True)
    split_source = registry.catalog.history(new["individual"])
    assert len(split_source["sightings"]) == 1 and split_source["sightings"][0]["method"] == "corrected"
    undone = curator.undo(new["change"])
    assert undone["retired"] == [new["individual"]]
    assert registry.catalog.history(new["individual"])["individual"] == first.individual_code


def test_split_moves_chosen_photos_to_a_new_individual(registry: Registry) -> None:
    curator = Curator(registry.stores)
    code = registry.catalog.individuals()[0]["code"]
    photos = registry.catalog.history(code)["sightings"]
    result = curator.split(code, [photos[0]["sha256"]], reason="two animals")
    assert len(registry.catalog.history(result["individual"])["sightings"]) == 1
    assert len(registry.catalog.history(code)["sightings"]) == len(photos) - 1
    with pytest.raises(CurationError, match="nothing to split"):
        curator.split(result["individual"], [photos[0]["image"]])
    curator.undo(result["change"])
    assert len(registry.catalog.history(code)["sightings"]) == len(photos)


def test_review_queue_of_recorded_decisions_puts_the_most_uncertain_first(registry: Registry,
                                                                         population: Path) -> None:
    registry.calibrate()
    Ingestor(registry).ingest(population / "season2" / "manifest.csv", "season-2", "identify")
    everything = review.queue(registry.catalog, limit=1000, margin=10.0)
    with registry.catalog.transaction() as session:
        recorded = session.scalar(select(func.count()).select_from(Decision))
    assert recorded and len(everything) == recorded  # every automatic decision, none twice
    uncertainties = [e["uncertainty"] for e in everything]
    assert uncertainties == sorted(uncertainties)
    for entry in everything:  # each entry's uncertainty is the smaller of its own margins
        scores = [c["score"] for c in entry["candidates"]]
        if entry["outcome"] == "new":
            expected = entry["threshold"] - scores[0]
        else:
            expected = min(entry["score"] - entry["threshold"],
                           entry["score"] - scores[1] if len(scores) > 1 else float("inf"))
        assert entry["uncertainty"] == pytest.approx(expected, abs=1e-4)
    tight = review.queue(registry.catalog, limit=1000, margin=0.1)
    assert tight == [e for e in everything if e["uncertainty"] <= 0.1]
    first = everything[0]["decision"]
    Curator(registry.stores).confirm(first)
    assert first not in {e["decision"] for e in review.queue(registry.catalog, limit=1000, margin=10.0)}


def test_capture_history_matches_the_truth_and_mark_format(registry: Registry, population: Path,
                                                           tmp_path: Path) -> None:
    Ingestor(registry).ingest(population / "season2" / "manifest.csv", "season-2", "reference")
    truth: dict[str, set[str]] = {}
    for season in (1, 2):
        for row in _rows(population / f"season{season}" / "manifest.csv"):
            truth.setdefault(row["identity"], set()).add(f"season-{season}")
    code_of = {i["name"]: i["code"] for i in registry.catalog.individuals()}
    occasions, matrix, undated = exports.capture_history(registry.catalog, "survey")
    assert occasions == ["season-1", "season-2"] and undated == 0
    assert matrix == {code_of[name]: [int("season-1" in s), int("season-2" in s)] for name, s in truth.items()}
    years, by_year, _ = exports.capture_history(registry.catalog, "year")
    assert years == ["2021", "2022"] and by_year == matrix

    inp = tmp_path / "histories.inp"
    exports.write_capture_history(registry.catalog, inp, "survey", fmt="mark")
    lines = inp.read_text().splitlines()
    assert lines[0].startswith("/*") and lines[0].endswith("*/")
    parsed = {}
    for line in lines[1:]:
        match = re.fullmatch(r"/\* (\S+) \*/ ([01]+) 1;", line)
        assert match, line
        parsed[match.group(1)] = [int(c) for c in match.group(2)]
    assert parsed == matrix

    a, b = sorted(code_of.values())[:2]
    Curator(registry.stores).merge(a, b)
    _, merged, _ = exports.capture_history(registry.catalog, "survey")
    assert b not in merged and merged[a] == [x | y for x, y in zip(matrix[a], matrix[b], strict=True)]
    count = exports.write_sightings(registry.catalog, tmp_path / "sightings.csv")
    rows = _rows(tmp_path / "sightings.csv")
    assert count == len(rows) == registry.catalog.stats()["sightings"]
    assert {r["individual"] for r in rows} == set(merged)


def test_match_sheet_is_rendered(registry: Registry, population: Path, tmp_path: Path) -> None:
    known = {r["identity"] for r in _rows(population / "season1" / "manifest.csv")}
    query = next(r for r in _rows(population / "season2" / "manifest.csv") if r["identity"] in known)
    answer = registry.identify(population / "season2" / query["image"], "synleopard", record=True)
    result = render(registry, answer.decision_id, tmp_path / "sheet.png", candidates=3)
    with PILImage.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (2 * PANEL[0], HEADER + 3 * (PANEL[1] + CAPTION))
    assert result["correspondences_drawn"] >= 40  # the true match's LightGlue correspondences
