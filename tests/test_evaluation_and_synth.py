"""Accuracy measures against hand-computed cases, and the synthetic generator's determinism."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from registry.decide.metrics import Prediction, evaluate, sequential_predictions
from registry.evaluate import synth


def test_baks_baus_balanced_over_identities_and_averaged_over_species() -> None:
    predictions = [
        # nyala known: A right twice, B wrong once -> per identity 1.0 and 0.0 -> BAKS 0.5
        Prediction("nyala", "A", True, "A", 1), Prediction("nyala", "A", True, "A", 1),
        Prediction("nyala", "B", True, "A", 3),
        # nyala unknown: C said new (right), D matched (wrong) -> BAUS 0.5
        Prediction("nyala", "C", False, None), Prediction("nyala", "D", False, "A"),
        # cow: all correct
        Prediction("cow", "E", True, "E", 1), Prediction("cow", "F", False, None),
    ]
    result = evaluate(predictions)
    nyala = result["per_species"]["nyala"]
    assert (nyala["baks"], nyala["baus"], nyala["score"]) == (0.5, 0.5, 0.5)
    assert nyala["top1"] == pytest.approx(2 / 3) and nyala["top5"] == 1.0 and nyala["queries"] == 5
    overall = result["overall"]
    assert overall["baks"] == 0.75 and overall["baus"] == 0.75 and overall["score"] == pytest.approx(0.75)
    assert overall["queries"] == 7


def test_all_unknown_queries_and_identities_absent_from_queries() -> None:
    only_new = evaluate([Prediction("x", "A", False, None), Prediction("x", "B", False, "A")])
    assert only_new["overall"]["baks"] is None and only_new["overall"]["score"] == 0.5


def test_sequential_judging_follows_individuals_created_on_the_way() -> None:
    events = [
        ("s", "A", "match", "S-1", ["S-1"]),  # known from the reference
        ("s", "N", "new", "S-2", ["S-1"]),  # new animal, correctly created
        ("s", "N", "match", "S-2", ["S-2", "S-1"]),  # its second photo finds it
        ("s", "M", "match", "S-1", ["S-1"]),  # a new animal wrongly matched
        ("s", "M", "new", "S-3", ["S-1"]),  # now M is registered (under S-1), so "new" is wrong
    ]
    predictions = sequential_predictions(events, {"S-1": "A"})
    assert [p.known for p in predictions] == [True, False, True, False, True]
    assert [p.predicted for p in predictions] == ["A", None, "N", "A", None]
    result = evaluate(predictions)["overall"]
    # known: A 1/1, N 1/1, M 0/1 -> 2/3 ; unknown: N 1/1, M 0/1 -> 1/2
    assert result["baks"] == pytest.approx(2 / 3) and result["baus"] == 0.5
    assert result["score"] == pytest.approx(math.sqrt(1 / 3))


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_synthetic_population_is_deterministic_with_returning_and_new_animals(tmp_path: Path) -> None:
    a = synth.generate(tmp_path / "a", individuals=3, seasons=2, seed=11, photos_per_sighting=(1, 2))
    synth.generate(tmp_path / "b", individuals=3, seasons=2, seed=11, photos_per_sighting=(1, 2))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    s1 = {r.identity for r in a if r.season == 1}
    s2 = {r.identity for r in a if r.season == 2}
    assert len(s1) == 3 and s2 - s1  # new animals appear in season 2
    header = (tmp_path / "a" / "season2" / "manifest.csv").read_text().splitlines()[0]
    assert header == ",".join(synth.MANIFEST_COLUMNS)
    other = synth.generate(tmp_path / "c", individuals=3, seasons=1, seed=12, photos_per_sighting=(1, 1))
    assert other[0].path.read_bytes() != a[0].path.read_bytes()
