"""Space-time evidence: where and when a candidate was seen, against the query, for the pair verifier and the
match page."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from helpers import init_registry, run_cli
from sqlalchemy import select

from registry.curation.review import decision_detail
from registry.decide.scoring import CandidateScore, IndividualScore
from registry.decide.spacetime import Seen, features, in_words, kilometres
from registry.decide.verifier import PairVerifier, candidate_features, training_rows
from registry.settings import Settings
from registry.store.catalog import Catalog
from registry.store.tables import Decision

NOON = datetime(2024, 5, 1, 12, 0)


def test_features_measure_distance_time_and_the_speed_a_resighting_would_need() -> None:
    here = Seen(NOON, -24.0, 31.0)
    assert abs(kilometres(here, Seen(None, -23.0, 31.0)) - 111.2) < 0.5  # one degree of latitude
    near_soon = Seen(NOON - timedelta(days=2), -24.001, 31.0)
    far_now = Seen(NOON - timedelta(minutes=5), -23.55, 31.0)  # 50 km, five minutes earlier
    found = features(here, [near_soon, far_now])
    assert np.expm1(found["st:log_km"]) < 0.2  # the nearest sighting, whenever it was
    assert abs(np.expm1(found["st:log_days"]) * 24 * 60 - 5) < 0.01  # the sighting closest in time
    assert np.expm1(found["st:log_kmh"]) > 500  # ... would have needed 600 km/h
    assert "km/h" in in_words(found) and "km away" in in_words(found)
    assert features(Seen(None, None, None), [near_soon]) == {}  # a query without time or place: no evidence
    assert set(features(Seen(NOON, None, None), [near_soon])) == {"st:has_time", "st:log_days"}
    assert features(here, [Seen(None, None, None)]) == {}


def _candidate(individual: int, score: float, context: dict[str, float]) -> IndividualScore:
    image = CandidateScore(individual * 10, individual, {"aliked": score}, {"aliked": score}, score)
    return IndividualScore(individual, f"IND-{individual}", score, image.annotation_id, [image], context)


def test_the_verifier_learns_that_an_impossible_journey_is_not_the_same_animal() -> None:
    """Simulated queries where the photos alone are ambiguous (two candidates of equal score) and the true one was
    seen nearby: fitted on them, the verifier ranks the plausible journey first on new queries."""
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for _ in range(200):
        score = float(rng.uniform(0.3, 0.9))
        true = _candidate(1, score + rng.normal(0, 0.05), features(
            Seen(NOON, -24.0, 31.0), [Seen(NOON - timedelta(days=float(rng.uniform(1, 30))), -24.01, 31.0)]))
        false = _candidate(2, score + rng.normal(0, 0.05), features(
            Seen(NOON, -24.0, 31.0), [Seen(NOON - timedelta(hours=float(rng.uniform(0.1, 2))), -23.5, 31.6)]))
        ranked = sorted([true, false], key=lambda c: -c.score)
        for k in range(2):
            rows.append(candidate_features(ranked, k))
            labels.append(ranked[k].individual_id == 1)
    verifier = PairVerifier.fit(rows, labels)
    assert verifier.coef[verifier.features.index("st:log_kmh")] < 0
    query = Seen(NOON, -24.0, 31.0)
    wrong_first = [_candidate(2, 0.8, features(query, [Seen(NOON - timedelta(minutes=30), -23.5, 31.6)])),
                   _candidate(1, 0.78, features(query, [Seen(NOON - timedelta(days=5), -24.0, 31.01)]))]
    assert verifier.verify(wrong_first)[0].individual_id == 1
    without = PairVerifier.fit([{k: v for k, v in r.items() if not k.startswith("st:")} for r in rows], labels)
    assert without.verify([_candidate(2, 0.8, {}), _candidate(1, 0.78, {})])[0].individual_id == 2

    # the registry's default (settings.spacetime_verifier off): rows without the evidence, and a verifier fitted on
    # them is not moved by the evidence the candidates still carry for the match page
    ambiguous = sorted([_candidate(1, 0.7, wrong_first[1].context), _candidate(2, 0.6, wrong_first[0].context)],
                       key=lambda c: -c.score)
    blind_rows, _ = training_rows(ambiguous, 1, spacetime=False)
    assert blind_rows and not any(k.startswith("st:") for row in blind_rows for k in row)
    blind = PairVerifier.fit([{k: v for k, v in r.items() if not k.startswith("st:")} for r in rows], labels)
    assert blind.verify(wrong_first)[0].individual_id == 2, "evidence the verifier was not fitted with moved it"


def test_a_recorded_decision_keeps_each_candidates_space_time_evidence(tmp_path: Path, population: Path) -> None:
    data = tmp_path / "registry"
    init_registry(data, "tiny-test")
    run_cli(data, "ingest", str(population / "season1" / "manifest.csv"), "--survey", "s1")
    run_cli(data, "ingest", str(population / "season2" / "manifest.csv"), "--survey", "s2", "--mode", "identify")
    catalog = Catalog(Settings.load(data).sqlalchemy_url)
    with catalog.transaction() as session:
        decisions = list(session.scalars(select(Decision)))
    catalog.close()
    assert decisions
    for decision in decisions:  # the synthetic photos have times and coordinates, and so do the references
        top = decision.candidates[0]
        assert {"st:has_place", "st:log_km", "st:has_time", "st:log_days", "st:log_kmh"} <= set(top["context"])
    catalog = Catalog(Settings.load(data).sqlalchemy_url)
    page = decision_detail(catalog, decisions[0].id)  # what the match page shows beside each candidate
    catalog.close()
    assert page is not None and "km away" in page["candidates"][0]["seen"]
