"""Calibration from the registry's own labelled photos: sample pairs the way queries meet candidates, score them
with every matcher, fit the calibrators (and the learned fusion, out of sample), and put them into force as a
new version of the decision policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from registry.decide.calibration import (
    CalibrationError,
    Calibrations,
    IsotonicCalibrator,
    LabelledPair,
    LearnedFusion,
    fit_calibrations,
)
from registry.decide.metrics import Prediction, evaluate
from registry.decide.policy import ALL_SPECIES
from registry.decide.scoring import CalibratedFusionScorer, IndividualScore
from registry.decide.verifier import PairVerifier, training_rows
from registry.matching.local_matcher import AlikedLightGlue, Background, LocalFeatures
from registry.settings import LocalMatcherSettings
from registry.store import crashpoints

if TYPE_CHECKING:
    from registry.services.port import RegistryPort as Registry

CROSS_FIT_FOLDS = 5
TAU_GRID = np.round(np.arange(0.0, 1.0001, 0.01), 2)


def is_resighting(a: dict[str, Any], b: dict[str, Any], min_gap_hours: float) -> bool:
    """Two photos of one animal that show it on different occasions: different surveys, or capture times at least
    `min_gap_hours` apart. Frames of one burst or clip are not re-sightings: calibrating on them teaches that
    near-duplicates are what "same animal" looks like, and every stranger then looks like a match."""
    if a["survey_id"] is not None and b["survey_id"] is not None and a["survey_id"] != b["survey_id"]:
        return True
    ta: datetime | None = a["captured_at"]
    tb: datetime | None = b["captured_at"]
    return ta is not None and tb is not None and abs((ta - tb).total_seconds()) >= min_gap_hours * 3600


def same_side(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two photos can show the same side of an animal, as the query path compares them (a known viewpoint
    meets its own, `both` and unknown ones). A left and a right flank of one nyala share no keypoint: as a
    "same individual" pair they teach the calibration that matching keypoints mean nothing."""
    va, vb = a.get("viewpoint"), b.get("viewpoint")
    return va is None or vb is None or va == vb or "both" in (va, vb)


def same_occasion(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two photos of one outing: the same day and the same survey or the same deployment (a camera's season).
    Photos without dates share no occasion (their re-sightings are judged by `is_resighting`)."""
    ta: datetime | None = a["captured_at"]
    tb: datetime | None = b["captured_at"]
    if ta is None or tb is None or ta.date() != tb.date():
        return False
    place_a, place_b = a.get("deployment_id"), b.get("deployment_id")
    if place_a is not None and place_b is not None:
        return bool(place_a == place_b)
    return a["survey_id"] == b["survey_id"]


def bootstrap_score(tops: list[tuple[bool, str, int | None, float]], species: str, tau: float, seed: int = 0,
                    resamples: int = 400) -> list[float] | None:
    """95 % percentile interval of the simulated queries' score at `tau`, resampling identities (one animal's
    queries are not independent draws)."""
    by_identity: dict[str, list[tuple[bool, str, int | None, float]]] = {}
    for top in tops:
        by_identity.setdefault(top[1], []).append(top)
    groups = list(by_identity.values())
    if len(groups) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = [t for i in rng.integers(0, len(groups), len(groups)) for t in groups[i]]
        score = evaluate([Prediction(species, truth, known, str(top) if top is not None and s >= tau else None)
                          for known, truth, top, s in drawn])["overall"]["score"]
        values.append(score if score is not None else 0.0)
    return [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)]


def query_folds(pairs: list[LabelledPair], folds: int, seed: int) -> dict[int, int]:
    """A seeded fold per query photo: all pairs of one query are held out together, as a new query's will be."""
    queries = sorted({p.query_annotation_id for p in pairs})
    return {q: f for q, f in zip(np.random.default_rng(seed).permutation(queries).tolist(),
                                 np.arange(len(queries)) % folds, strict=True)}


def cross_fitted_fusion(pairs: list[LabelledPair], matchers: list[str], folds: int = CROSS_FIT_FOLDS,
                        seed: int = 0) -> LearnedFusion:
    """The learned fusion fitted on out-of-sample calibrated scores: each pair's calibrated scores come from
    isotonic calibrators fitted without the pairs of its query photo (grouped folds), as they will be for a
    new query. In-sample isotonic outputs are over-confident and would teach the fusion to trust them."""
    fold_of = query_folds(pairs, folds, seed)
    calibrated = np.zeros((len(pairs), len(matchers)))
    same = np.array([p.same for p in pairs], dtype=np.float64)
    for fold in range(folds):
        held = np.array([fold_of[p.query_annotation_id] == fold for p in pairs])
        if not held.any():
            continue
        if len(np.unique(same[~held])) < 2:
            raise CalibrationError("too few labelled pairs to cross-fit the learned fusion")
        for column, matcher in enumerate(matchers):
            raw = np.array([p.raw[matcher] for p in pairs])
            calibrated[held, column] = IsotonicCalibrator.fit(raw[~held], same[~held])(raw[held])
    return LearnedFusion.fit(matchers, calibrated, same)


MIN_PAIRS_TO_MEASURE = 20  # positives and negatives each a species needs before a second matcher is judged


def out_of_sample_auc(pairs: list[LabelledPair], matchers: list[str], learned: bool, wildfusion_names: list[str],
                      folds: int = CROSS_FIT_FOLDS, seed: int = 0) -> float | None:
    """AUC of the fused score on labelled pairs, every pair scored by calibrators (and a learned fusion) fitted
    without its query photo's pairs (grouped folds), as a new query's pairs will be. `learned`: the logistic
    fusion over `matchers`; else the mean of the calibrated `wildfusion_names` (the paper's rule)."""
    from sklearn.metrics import roc_auc_score

    same = np.array([p.same for p in pairs], dtype=np.float64)
    if len(np.unique(same)) < 2:
        return None
    fold_of = query_folds(pairs, folds, seed)
    raw = np.array([[p.raw[m] for m in matchers] for p in pairs])
    fused = np.zeros(len(pairs))
    for fold in range(folds):
        held = np.array([fold_of[p.query_annotation_id] == fold for p in pairs])
        if not held.any():
            continue
        if len(np.unique(same[~held])) < 2:
            return None
        calibrators = [IsotonicCalibrator.fit(raw[~held, c], same[~held]) for c in range(len(matchers))]
        train = np.column_stack([f(raw[~held, c]) for c, f in enumerate(calibrators)])
        test = np.column_stack([f(raw[held, c]) for c, f in enumerate(calibrators)])
        if learned:
            fusion = LearnedFusion.fit(matchers, train, same[~held])
            fused[held] = [fusion(dict(zip(matchers, row, strict=True))) for row in test]
        else:
            columns = [matchers.index(m) for m in wildfusion_names]
            fused[held] = test[:, columns].mean(axis=1)
    return float(roc_auc_score(same, fused))


def second_matcher_gain(pairs: list[LabelledPair], base: list[str], second: list[str], learned: bool,
                        base_wildfusion: list[str], second_wildfusion: str, margin: float, seed: int = 0,
                        ) -> dict[str, dict[str, Any]]:
    """Per species: the out-of-sample AUC of the fusion without and with the second local matcher's scores, and
    whether it is kept (better by more than `margin`). A species with too few pairs to tell keeps none."""
    by_species: dict[str, list[LabelledPair]] = {}
    for pair in pairs:
        by_species.setdefault(pair.species, []).append(pair)
    out: dict[str, dict[str, Any]] = {}
    for sp, group in sorted(by_species.items()):
        positives = sum(p.same for p in group)
        if min(positives, len(group) - positives) < MIN_PAIRS_TO_MEASURE:
            out[sp] = {"kept": False, "reason": f"{positives} same-individual and {len(group) - positives} "
                       f"different pairs: too few to measure (needs {MIN_PAIRS_TO_MEASURE} each)"}
            continue
        without = out_of_sample_auc(group, base, learned, base_wildfusion, seed=seed)
        with_second = out_of_sample_auc(group, base + second, learned, [*base_wildfusion, second_wildfusion],
                                        seed=seed)
        if without is None or with_second is None:
            out[sp] = {"kept": False, "reason": "too few pairs in a fold to measure"}
            continue
        out[sp] = {"kept": with_second > without + margin, "auc_without": round(without, 4),
                   "auc_with": round(with_second, 4), "margin": margin, "pairs": len(group)}
    return out


class CalibrationService:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def sample_pairs(self, per_class: int, species: str | None = None, seed: int = 0) -> tuple[list[LabelledPair],
                                                                                                 dict[str, Any]]:
        """Balanced labelled pairs per species, drawn the way queries meet candidates, and what was drawn.

        Each sampled photo is a query to the vector index: its most similar photos of *other* individuals are
        the negatives (the hard ones the query path really reranks); its own individual's photos that are
        re-sightings of it (`is_resighting`) are the positives, retrieved ones first. A species whose photos hold
        no re-sightings at all falls back to any two photos of one individual, and the summary says so.
        """
        rng = np.random.default_rng(seed)
        by_species: dict[str, list[dict[str, Any]]] = {}
        for item in self.registry.catalog.labelled_annotations(species):
            by_species.setdefault(item["species"], []).append(item)
        pairs: list[LabelledPair] = []
        fallback: list[str] = []
        for sp, items in sorted(by_species.items()):
            found, strict = self._species_pairs(sp, items, per_class, rng)
            pairs += found
            if not strict:
                fallback.append(sp)
        return pairs, {"positives_without_resightings": fallback}

    def _species_pairs(self, species: str, items: list[dict[str, Any]], per_class: int,
                       rng: np.random.Generator) -> tuple[list[LabelledPair], bool]:
        registry = self.registry
        gap = registry.settings.calibration_min_gap_hours
        collection = registry.collections[registry.pipeline.primary.name]
        by_id = {i["annotation_id"]: i for i in items}
        images_of: dict[int, list[int]] = {}
        for item in items:
            images_of.setdefault(item["individual_id"], []).append(item["annotation_id"])
        strict = any(is_resighting(by_id[a], by_id[b], gap)
                     for ids in images_of.values() for k, a in enumerate(ids) for b in ids[k + 1:])

        def mate(a: int, b: int) -> bool:
            return a != b and by_id[a]["individual_id"] == by_id[b]["individual_id"] and (
                not strict or is_resighting(by_id[a], by_id[b], gap)) and same_side(by_id[a], by_id[b])

        positives: list[LabelledPair] = []
        negatives: list[LabelledPair] = []
        used: set[tuple[int, int]] = set()

        def add(query: int, other: int, same: bool) -> None:
            key = (min(query, other), max(query, other))
            if query != other and key not in used:
                used.add(key)
                (positives if same else negatives).append(LabelledPair(query, other, species, same))

        for position in rng.permutation(len(items)):
            if len(positives) >= per_class and len(negatives) >= per_class:
                break
            query = items[int(position)]
            query_id, individual = query["annotation_id"], query["individual_id"]
            vector = registry.index.vectors(collection, [query_id]).get(query_id)
            if vector is None:
                continue
            hits = registry.index.search(collection, vector, registry.settings.ann_top_k, species,
                                         query["viewpoint"], exclude_annotation_ids=(query_id,))
            hits = [h.annotation_id for h in hits if h.annotation_id in by_id]
            for other in [i for i in hits if mate(query_id, i)][:2]:
                add(query_id, other, True)
            mates = [i for i in images_of[individual] if mate(query_id, i)]
            if mates:
                add(query_id, int(rng.choice(mates)), True)
            for other in [i for i in hits if by_id[i]["individual_id"] != individual][:3]:
                add(query_id, other, False)
        # Balanced classes: calibrated scores then read as probabilities under even odds, which is what the
        # paper's fixed threshold assumes (an excess of negatives would drag every probability down).
        balanced = min(per_class, len(positives), len(negatives))
        return positives[:balanced] + negatives[:balanced], strict

    def score_pairs(self, pairs: list[LabelledPair], progress: Callable[[int], None] | None = None) -> None:
        """Fill each pair's raw score for every matcher from stored vectors and cached local features.

        A distinctive local score depends on which other animals the query meets: each calibration query meets
        the individuals retrieval would shortlist for it (never its own), as an unknown animal's query does, and
        its positives and negatives are scored apart, so a positive never counts as another animal for a
        negative."""
        registry = self.registry
        by_query: dict[int, list[LabelledPair]] = {}
        for pair in pairs:
            by_query.setdefault(pair.query_annotation_id, []).append(pair)
        matchers = registry.pipeline.local_matchers  # with a second matcher, every pair is scored by both
        owner_of = {i["annotation_id"]: i for i in registry.catalog.labelled_annotations()} \
            if any(m.distinctive for m in matchers) else {}
        for query_id, group in by_query.items():
            ids = [query_id, *(p.candidate_annotation_id for p in group)]
            vectors = {name: registry.index.vectors(c, ids) for name, c in registry.collections.items()}
            budget = registry.settings.local.for_species(group[0].species).max_keypoints
            for pair in group:
                pair.raw = {name: float(np.dot(v[query_id], v[pair.candidate_annotation_id]))
                            for name, v in vectors.items()}
            for local in matchers:
                features = registry.identification.candidate_features(ids, matcher=local)
                if query_id not in features:  # its photo is gone: its pairs stay unscored and are left out
                    continue
                background = self._background(query_id, vectors, features[query_id], owner_of, budget, local) \
                    if local.distinctive else None
                for same in (True, False):
                    part = [p for p in group if p.same == same and p.candidate_annotation_id in features]
                    if not part:
                        continue
                    owners = [owner_of[p.candidate_annotation_id]["individual_id"]
                              if p.candidate_annotation_id in owner_of else ("annotation", p.candidate_annotation_id)
                              for p in part]
                    local_scores = local.pair_scores(features[query_id],
                                                     [features[p.candidate_annotation_id] for p in part],
                                                     budget=budget, owners=owners, background=background)
                    for pair, local_score in zip(part, local_scores, strict=True):
                        pair.raw.update(local_score)
            if progress:
                progress(len(group))

    def _background(self, query_id: int, vectors: dict[str, dict[int, np.ndarray]], query: LocalFeatures,
                    owner_of: dict[int, dict[str, Any]], budget: int, matcher: AlikedLightGlue,
                    ) -> Background | None:
        """The other animals a calibration query meets: retrieval's shortlist for it without its own individual."""
        item = owner_of.get(query_id)
        vector = vectors[self.registry.pipeline.primary.name].get(query_id)
        if item is None or vector is None:
            return None
        return self.registry.identification.background_of(query, vector, item["species"], item["viewpoint"], budget,
                                                          (query_id,), (item["individual_id"],), matcher)

    def self_tune_thresholds(self, scorer: CalibratedFusionScorer, species: str | None, seed: int = 0,
                             progress: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
        """τ per species from simulated open-set queries on the registry's own labelled photos.

        Leave-identities-out: a seeded `self_tune_unknown_fraction` of each species' individuals play the unknown
        animals — their photos query the registry with every photo of their individual hidden, so the right answer
        is "new". Photos of the other individuals play the known queries with every photo of their individual
        from the same occasion hidden (`occasion`: the same survey and day, the same deployment and day; without
        dates, the burst mates that are not re-sightings), so the right answer is a photo of another occasion, as
        a new season's query meets last season's photos; a query without one is not used. Random photos of a
        small reference are easy queries (a near twin is always left), and τ chosen on them was too lenient on
        real ones (expected 0.97, got 0.72 on 40 cow photos).

        Every query is scored as a real one (grouped retrieval, local matching on cached features, this scorer);
        τ is the middle of the plateau that maximises the geometric mean of BAKS and BAUS, then shrunk toward the
        policy's default τ by `self_tune_prior_queries` pseudo-queries (a few dozen simulated queries are a noisy
        sample), and the expected score at it comes with a 95 % bootstrap interval over identities.
        """
        registry = self.registry
        settings = registry.settings
        gap = settings.calibration_min_gap_hours
        rng = np.random.default_rng(seed)
        by_species: dict[str, list[dict[str, Any]]] = {}
        for item in registry.catalog.labelled_annotations(species):
            by_species.setdefault(item["species"], []).append(item)
        out: dict[str, dict[str, Any]] = {}
        for sp, items in sorted(by_species.items()):
            images_of: dict[int, list[dict[str, Any]]] = {}
            for item in items:
                images_of.setdefault(item["individual_id"], []).append(item)
            individuals = sorted(images_of)
            n_unknown = max(1, round(len(individuals) * settings.self_tune_unknown_fraction))
            if len(individuals) < 3 or len(individuals) - n_unknown < 2:
                out[sp] = {"tau": None, "reason": f"{len(individuals)} individuals: too few to simulate unknowns"}
                continue
            unknown = set(rng.permutation(individuals)[:n_unknown].tolist())
            budget = settings.self_tune_queries // 2
            # as in calibration: without any re-sighting (no dates, one survey), any other photo of the animal
            strict = any(is_resighting(a, b, gap) for photos in images_of.values()
                         for k, a in enumerate(photos) for b in photos[k + 1:])

            def mate(a: dict[str, Any], b: dict[str, Any], strict: bool = strict, occasions: bool = True) -> bool:
                return b is not a and (not strict or is_resighting(a, b, gap)) and same_side(a, b) \
                    and not (occasions and same_occasion(a, b))

            unknown_queries = [i for ind in unknown for i in images_of[ind]]
            playing_known = {flag: [i for ind in individuals if ind not in unknown for i in images_of[ind]
                                    if any(mate(i, j, occasions=flag) for j in images_of[ind])]
                             for flag in (True, False)}
            # too few animals seen on two occasions: re-sightings within one occasion will do
            occasions = len(playing_known[True]) >= min(budget, 10)
            known_queries = playing_known[occasions]
            mate = partial(mate, occasions=occasions)
            unknown_queries = [unknown_queries[k] for k in rng.permutation(len(unknown_queries))[:budget]]
            known_queries = [known_queries[k] for k in rng.permutation(len(known_queries))[:budget]]
            if not known_queries or not unknown_queries:
                out[sp] = {"tau": None, "reason": "no photo with a re-sighting to play a known query"}
                continue
            tops: list[tuple[bool, str, int | None, float]] = []  # known?, truth, top individual, its score
            simulated: list[tuple[int | None, list[IndividualScore]]] = []  # (true individual or None, ranked)
            for query in known_queries + unknown_queries:
                individual = query["individual_id"]
                is_known = individual not in unknown
                if is_known:
                    hidden_images = [j["annotation_id"] for j in images_of[individual]
                                     if j is query or not mate(query, j)]
                    hidden_individuals: tuple[int, ...] = ()
                else:
                    hidden_images, hidden_individuals = [query["annotation_id"]], (individual,)
                unseen = tuple(j["annotation_id"] for j in items if occasions and same_occasion(query, j))
                ranked = registry.identification.rank_stored(query["annotation_id"], sp, query["viewpoint"], scorer,
                                                              tuple(hidden_images), hidden_individuals, unseen)
                top = ranked[0] if ranked else None
                tops.append((is_known, str(individual), top.individual_id if top else None,
                             top.score if top else -np.inf))
                simulated.append((individual if is_known else None, ranked))
                if progress:
                    progress(1)

            def at(tau: float, tops: list[tuple[bool, str, int | None, float]] = tops, sp: str = sp) -> dict[str, Any]:
                return evaluate([Prediction(sp, truth, known, str(top) if top is not None and score >= tau else None)
                                 for known, truth, top, score in tops])["overall"]

            values = np.array([s if (s := at(float(tau))["score"]) is not None else -1.0 for tau in TAU_GRID])
            ties = np.flatnonzero(values >= values.max() - 1e-12)  # a plateau: its middle is the most robust
            fitted = float(TAU_GRID[int(ties[len(ties) // 2])])
            prior, weight = registry.policy.default_threshold, settings.self_tune_prior_queries
            tau = self._shrunk(fitted, len(tops))
            block = {k: v for k, v in at(tau).items() if k in ("baks", "baus", "score", "queries")}
            block["score_ci95"] = bootstrap_score(tops, sp, tau, seed)
            out[sp] = {"tau": tau, "fitted_tau": fitted, "prior_tau": prior, "prior_queries": weight,
                       "expected": block, "known_queries": len(known_queries),
                       "unknown_queries": len(unknown_queries), "unknown_individuals": len(unknown),
                       "resightings": strict,
                       "occasions": "held out" if occasions else "too few photos of a second occasion: not held out",
                       "simulated": simulated}
        return out

    @staticmethod
    def _bar(tuned: dict[str, Any]) -> float:
        """What a verifier must beat on a species' simulated queries: the top of the fusion's 95 % interval (its
        score where there is no interval)."""
        expected = tuned.get("expected", {})
        interval = expected.get("score_ci95")
        return float(interval[1]) if interval else float(expected.get("score") or 0.0)

    def _shrunk(self, fitted: float, queries: int) -> float:
        """A tau chosen on `queries` simulated queries, shrunk toward the policy's default tau as if
        `self_tune_prior_queries` queries had chosen that."""
        prior, weight = self.registry.policy.default_threshold, self.registry.settings.self_tune_prior_queries
        return float(np.round((queries * fitted + weight * prior) / (queries + weight), 2))

    def fit_verifier(self, tuned: dict[str, dict[str, Any]], base: str, seed: int = 0,
                     ) -> tuple[PairVerifier | None, dict[str, dict[str, Any]]]:
        """The pair verifier from the simulated queries, and tau per species for its probability, both measured
        out of sample: two folds by query (each query's verified top candidate comes from a verifier fitted on the
        other fold); the stored verifier is then fitted on every query."""
        queries = [(sp, truth, ranked) for sp, found in tuned.items() for truth, ranked in found.get("simulated", [])
                   if ranked]
        # the verifier never sees space-time evidence it was not fitted with (PairVerifier scores its own features)
        spacetime = self.registry.settings.spacetime_verifier
        rows, labels = [], []
        for _sp, truth, ranked in queries:
            r, y = training_rows(ranked, truth, spacetime=spacetime)
            rows += r
            labels += y
        if len(queries) < 20 or sum(labels) < 5 or len(labels) - sum(labels) < 5:
            return None, {}
        fold = np.random.default_rng(seed).permutation(len(queries)) % 2
        verified_tops: list[tuple[str, int | None, int | None, float]] = [("", None, None, 0.0)] * len(queries)
        for k in (0, 1):
            train_rows, train_labels = [], []
            for q, (_sp, truth, ranked) in enumerate(queries):
                if fold[q] != k:
                    r, y = training_rows(ranked, truth, spacetime=spacetime)
                    train_rows += r
                    train_labels += y
            if len(set(train_labels)) < 2:
                return None, {}
            verifier = PairVerifier.fit(train_rows, train_labels, base)
            for q, (sp, truth, ranked) in enumerate(queries):
                if fold[q] == k:
                    top = verifier.verify(ranked)[0]
                    verified_tops[q] = (sp, truth, top.individual_id, top.score)
        out: dict[str, dict[str, Any]] = {}
        for sp in sorted({q[0] for q in queries}):
            mine = [t for t in verified_tops if t[0] == sp]

            def at(tau: float, mine: list[tuple[str, int | None, int | None, float]] = mine) -> dict[str, Any]:
                return evaluate([Prediction(sp, str(truth), truth is not None,
                                            str(top) if top is not None and score >= tau else None)
                                 for sp, truth, top, score in mine])["overall"]

            values = np.array([s if (s := at(float(tau))["score"]) is not None else -1.0 for tau in TAU_GRID])
            ties = np.flatnonzero(values >= values.max() - 1e-12)
            fitted = float(TAU_GRID[int(ties[len(ties) // 2])])
            tau = self._shrunk(fitted, len(mine))
            expected = {k: v for k, v in at(tau).items() if k in ("baks", "baus", "score", "queries")}
            expected["score_ci95"] = bootstrap_score([(truth is not None, str(truth), top, score)
                                                      for _sp, truth, top, score in mine], sp, tau, seed)
            out[sp] = {"tau": tau, "fitted_tau": fitted, "expected": expected}
        return PairVerifier.fit(rows, labels, base), out

    def calibrate(self, per_class: int | None = None, species: str | None = None, seed: int = 0,
                  learned: bool = True, progress: Callable[[int], None] | None = None,
                  actor: str = "registry", self_tune: bool = True, policy_changes: dict[str, Any] | None = None,
                  reason: str = "", matching: dict[str, dict[str, int]] | None = None,
                  engine: str | None = None, distinctive: bool | None = None,
                  static_scenery: bool | None = None, second_matcher: str | None = None) -> dict[str, Any]:
        """Fit isotonic calibrators per matcher (per species where there are enough pairs, pooled otherwise) and
        the cross-fitted learned fusion, store them as one batch, choose tau per species on simulated open-set
        queries (`self_tune_thresholds`), and put it all in force as a new policy version. With `species`, only
        that species' calibrators and tau change; the others' stay as they were.

        `matching`: per-species matching-stage overrides (LocalMatcherSettings.species; {} clears a species')
        that go into force with this calibration, since raw scores fitted under other settings would not fit.
        `engine`: the local matching engine ("mnn" or "lightglue", LocalMatcherSettings.engine) to switch every
        species to, likewise with this calibration; `distinctive`: the distinctive pair score on or off, likewise;
        `static_scenery`: a fixed camera's scenery masked before matching (matching/scenery.py), likewise.
        `second_matcher`: a second local matcher ("disk"; "" for none) to measure on every species' labelled pairs
        and keep for those where it measured better (`second_matcher_gain`); while one is set, every calibration
        measures it again for the species it calibrates."""
        registry = self.registry
        previous = registry.settings.local
        if species is not None and (engine is not None or distinctive is not None or static_scenery is not None
                                    or second_matcher is not None):
            raise CalibrationError("the matching engine and its scores are the registry's, not a species': "
                                   "calibrate every species to change them (drop --species)")
        if species is not None and matching is not None and set(matching) - {species}:
            raise CalibrationError(f"calibrate --species {species} cannot change the matching of "
                                   f"{', '.join(sorted(set(matching) - {species}))}: their calibrations were "
                                   "fitted under the settings in force")
        wanted = previous
        try:
            if engine is not None:
                wanted = replace(wanted, engine=engine)
            if distinctive is not None:
                wanted = replace(wanted, distinctive=distinctive)
            if static_scenery is not None:
                wanted = replace(wanted, static_scenery=static_scenery)
            if second_matcher is not None:
                wanted = replace(wanted, second=second_matcher)
            if matching is not None:
                merged = {**previous.species, **matching}
                wanted = replace(wanted, species={sp: o for sp, o in merged.items() if o})
        except (TypeError, ValueError) as exc:
            message = f"matching overrides {matching}: {exc}" if matching is not None else str(exc)
            raise CalibrationError(message) from exc
        self._match_with(wanted)
        try:
            return self._calibrate(per_class, species, seed, learned, progress, actor, self_tune, policy_changes,
                                   reason)
        except BaseException:  # nothing went into force: keep matching as the policy says
            self._match_with(previous)
            raise

    def _use_second(self, kept: set[str], measured: set[str], species: str | None) -> None:
        """Put the second local matcher's measurement into the matching settings: `use_second` for the species
        that keep it, cleared for the other measured ones (every species, when all were calibrated); a registry
        where no species keeps it after calibrating every species stops loading it (calibrating one species
        never changes the models the others' calibrations were fitted for)."""
        local = self.registry.settings.local
        overrides = {sp: dict(o) for sp, o in local.species.items()}
        for sp in set(overrides) | measured | kept:
            if sp in kept:
                overrides.setdefault(sp, {})["use_second"] = 1
            elif species is None or sp in measured:
                overrides.get(sp, {}).pop("use_second", None)
        overrides = {sp: o for sp, o in overrides.items() if o}
        still = species is not None or any(o.get("use_second") for o in overrides.values())
        self._match_with(replace(local, species=overrides, second=local.second if still else ""))

    def _match_with(self, local: LocalMatcherSettings) -> None:
        """Put matching settings into the loaded matcher (what calibrate may switch without reloading weights)."""
        registry = self.registry
        matcher = registry.pipeline.local
        registry.settings.local = local
        matcher.engine, matcher.distinctive = local.engine, local.distinctive and matcher.verify
        matcher.static_scenery = local.static_scenery
        registry.identification.forget_matching_state()

    def _calibrate(self, per_class: int | None, species: str | None, seed: int, learned: bool,
                   progress: Callable[[int], None] | None, actor: str, self_tune: bool,
                   policy_changes: dict[str, Any] | None, reason: str) -> dict[str, Any]:
        registry = self.registry
        registry.recorder.resume_pending()
        per_class = per_class or registry.settings.calibration_pairs
        pairs, sampling = self.sample_pairs(per_class, species, seed)
        positives = sum(p.same for p in pairs)
        if positives < 2 or len(pairs) - positives < 2:
            raise CalibrationError(
                f"too few labelled pairs to calibrate ({positives} same-individual, {len(pairs) - positives} "
                "different): ingest reference photos with identities (at least two photos of some individuals)")
        self.score_pairs(pairs, progress)
        pipeline = registry.pipeline
        matchers = pipeline.matcher_names
        scored = [p for p in pairs if all(m in p.raw for m in matchers)]  # a photo gone since: its pairs left out
        unscored, pairs = len(pairs) - len(scored), scored
        positives = sum(p.same for p in pairs)
        if positives < 2 or len(pairs) - positives < 2:
            raise CalibrationError(f"too few labelled pairs left to calibrate: {unscored} could not be scored (their "
                                   "photos cannot be read); run `registry doctor`")
        policy = registry.policy
        base_kind = "learned" if policy.fusion == "verifier" else policy.fusion  # what a verifier is fitted over
        second = pipeline.second
        with_second = matchers  # every score the pairs have
        matchers = [m for m in matchers if second is None or m not in second.score_names]
        measured: dict[str, dict[str, Any]] = {}
        if second is not None:  # measure it per species, then keep it only where it measured better
            measured = second_matcher_gain(pairs, matchers, second.score_names, learned and base_kind == "learned",
                                           [pipeline.primary.name, pipeline.local.name], second.name,
                                           registry.settings.second_matcher_margin, seed)
            self._use_second({sp for sp, r in measured.items() if r["kept"]}, set(measured), species)
        kept = sorted(sp for sp, r in measured.items() if r["kept"])

        def fit(group: list[LabelledPair], names: list[str]) -> tuple[dict, LearnedFusion | None]:
            fitted = fit_calibrations(group, names)
            if species is not None:  # the batch serves this species alone: its pooled calibrators are its own
                fitted = {(m, species): c for (m, sp), c in fitted.items() if sp is None} | {
                    key: c for key, c in fitted.items() if key[1] is not None}
            return fitted, cross_fitted_fusion(group, names, seed=seed) if learned else None

        fitted, fusion = fit(pairs, matchers)
        versions = pipeline.versions
        summary = {
            "versions": versions, "pairs": len(pairs), "positives": positives,
            "negatives": len(pairs) - positives, "seed": seed, **sampling, "unscored_pairs": unscored,
            "species": sorted({sp for _, sp in fitted if sp is not None}),
            "pooled_only": [] if species else sorted({p.species for p in pairs} - {sp for _, sp in fitted if sp}),
            "learned_fusion": "cross-fitted" if fusion else None,
            **({"second_matcher": {"name": second.name, "per_species": measured}} if second is not None else {}),
        }
        batch = registry.catalog.save_calibrations(fitted, fusion, len(pairs), summary)
        own_batches = {ALL_SPECIES: (batch, fitted, fusion)}
        if kept:  # the species that keep the second matcher get a batch fitted on their pairs with its scores
            theirs = [p for p in pairs if p.species in kept]
            fitted_second, fusion_second = fit(theirs, with_second)
            second_batch = registry.catalog.save_calibrations(
                fitted_second, fusion_second, len(theirs), {**summary, "pairs": len(theirs), "serves": kept})
            own_batches.update({sp: (second_batch, fitted_second, fusion_second) for sp in kept})
        crashpoints.reached("calibrate-batch-saved")  # a batch no policy names is inert
        same_models = policy.model_versions == versions
        batches = dict(policy.calibration_batches) if species and same_models else {}
        batches[species or ALL_SPECIES] = batch
        batches.update({sp: b for sp, (b, _, _) in own_batches.items() if sp != ALL_SPECIES})
        fusion_kind = base_kind if fusion is not None else "wildfusion"
        thresholds = dict(policy.thresholds) if species and same_models else {}
        tuned: dict[str, dict[str, Any]] = {}
        if self_tune:
            scorer = CalibratedFusionScorer(
                {sp: Calibrations(f, lf) for sp, (_, f, lf) in own_batches.items()}, pipeline.primary.name,
                pipeline.local.name, pipeline.complementary.name if pipeline.complementary else None, policy.alpha,
                learned=fusion_kind == "learned" and fusion is not None,
                second=pipeline.second.name if pipeline.second is not None else None)
            tuned = self.self_tune_thresholds(scorer, species, seed)
            thresholds.update({sp: r["tau"] for sp, r in tuned.items() if r["tau"] is not None})
            verifier, verified = self.fit_verifier(tuned, fusion_kind, seed)
            # the verifier decides only where it measured better than the fusion alone, out of sample, by more than
            # the simulation's noise: above the fusion's whole 95 % interval. Measured on Holstein (250 real
            # queries): a verifier 0.10 better on the simulated queries, inside that interval, scored 0.45 on the
            # real ones where the fusion scored 0.70-0.79 (docs/accuracy.md)
            better = verifier is not None and all(
                (verified.get(sp, {}).get("expected", {}).get("score") or 0.0) > self._bar(r)
                for sp, r in tuned.items() if r["tau"] is not None)
            for sp, r in tuned.items():
                r.pop("simulated", None)
                if sp in verified:
                    r["verifier"] = verified[sp]
            if verifier is not None:
                for saved in sorted({b for b, _, _ in own_batches.values()}):
                    registry.catalog.add_verifier(saved, verifier, {"chosen": better, "per_species": verified})
            if better:
                fusion_kind = "verifier"
                thresholds.update({sp: r["tau"] for sp, r in verified.items()})
        new = registry.set_policy(policy.derive(
            (f"{reason}; " if reason else "")
            + f"calibrate{' --species ' + species if species else ''}: batch {batch} on {len(pairs)} pairs"
            + (f", tau self-tuned for {', '.join(sp for sp, r in tuned.items() if r['tau'] is not None)}"
               if any(r["tau"] is not None for r in tuned.values()) else "")
            + (f", second local matcher {second.name} kept for {', '.join(kept) or 'no species'}" if second else ""),
            actor, model_versions=versions, calibration_batches=batches, fusion=fusion_kind,
            matcher_settings=registry.settings.local.to_json(), thresholds=thresholds,
            expected={"self_tuned": tuned} if tuned else None, **(policy_changes or {})))
        return {**summary, "batch": batch, "policy_version": new.version, "self_tuned": tuned,
                "calibrators": [f"{m}/{sp or 'pooled'}" for m, sp in fitted],
                "learned_fusion": fusion.to_json() if fusion else None}

