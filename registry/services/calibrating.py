"""Calibration from the registry's own labelled photos: sample pairs the way queries meet candidates, score them
with every matcher, fit the calibrators (and the learned fusion, out of sample), and put them into force as a
new version of the decision policy.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
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
from registry.decide.policy import ALL_SPECIES

if TYPE_CHECKING:
    from registry.services.registry import Registry

CROSS_FIT_FOLDS = 5


def is_resighting(a: dict[str, Any], b: dict[str, Any], min_gap_hours: float) -> bool:
    """Two photos of one animal that show it on different occasions: different surveys, or capture times at least
    `min_gap_hours` apart. Frames of one burst or clip are not re-sightings: calibrating on them teaches that
    near-duplicates are what "same animal" looks like, and every stranger then looks like a match."""
    if a["survey_id"] is not None and b["survey_id"] is not None and a["survey_id"] != b["survey_id"]:
        return True
    ta: datetime | None = a["captured_at"]
    tb: datetime | None = b["captured_at"]
    return ta is not None and tb is not None and abs((ta - tb).total_seconds()) >= min_gap_hours * 3600


def cross_fitted_fusion(pairs: list[LabelledPair], matchers: list[str], folds: int = CROSS_FIT_FOLDS,
                        seed: int = 0) -> LearnedFusion:
    """The learned fusion fitted on out-of-sample calibrated scores: each pair's calibrated scores come from
    isotonic calibrators fitted without the pairs of its query photo (grouped folds), as they will be for a
    new query. In-sample isotonic outputs are over-confident and would teach the fusion to trust them."""
    queries = sorted({p.query_image_id for p in pairs})
    fold_of = {q: f for q, f in zip(np.random.default_rng(seed).permutation(queries).tolist(),
                                    np.arange(len(queries)) % folds, strict=True)}
    calibrated = np.zeros((len(pairs), len(matchers)))
    same = np.array([p.same for p in pairs], dtype=np.float64)
    for fold in range(folds):
        held = np.array([fold_of[p.query_image_id] == fold for p in pairs])
        if not held.any():
            continue
        if len(np.unique(same[~held])) < 2:
            raise CalibrationError("too few labelled pairs to cross-fit the learned fusion")
        for column, matcher in enumerate(matchers):
            raw = np.array([p.raw[matcher] for p in pairs])
            calibrated[held, column] = IsotonicCalibrator.fit(raw[~held], same[~held])(raw[held])
    return LearnedFusion.fit(matchers, calibrated, same)


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
        for item in self.registry.catalog.labelled_images(species):
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
        by_id = {i["image_id"]: i for i in items}
        images_of: dict[int, list[int]] = {}
        for item in items:
            images_of.setdefault(item["individual_id"], []).append(item["image_id"])
        strict = any(is_resighting(by_id[a], by_id[b], gap)
                     for ids in images_of.values() for k, a in enumerate(ids) for b in ids[k + 1:])

        def mate(a: int, b: int) -> bool:
            return a != b and by_id[a]["individual_id"] == by_id[b]["individual_id"] and (
                not strict or is_resighting(by_id[a], by_id[b], gap))

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
            query_id, individual = query["image_id"], query["individual_id"]
            vector = registry.index.vectors(collection, [query_id]).get(query_id)
            if vector is None:
                continue
            hits = registry.index.search(collection, vector, registry.settings.ann_top_k, species,
                                         query["viewpoint"], exclude_image_ids=(query_id,))
            hits = [h.image_id for h in hits if h.image_id in by_id]
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
        """Fill each pair's raw score for every matcher from stored vectors and cached local features."""
        registry = self.registry
        by_query: dict[int, list[LabelledPair]] = {}
        for pair in pairs:
            by_query.setdefault(pair.query_image_id, []).append(pair)
        local = registry.pipeline.local
        for query_id, group in by_query.items():
            ids = [query_id, *(p.candidate_image_id for p in group)]
            features = registry.identification.candidate_features(ids)
            vectors = {name: registry.index.vectors(c, ids) for name, c in registry.collections.items()}
            local_scores = local.scores(features[query_id], [features[p.candidate_image_id] for p in group])
            for pair, local_score in zip(group, local_scores, strict=True):
                pair.raw = {name: float(np.dot(v[query_id], v[pair.candidate_image_id])) for name, v in vectors.items()}
                pair.raw[local.name] = local_score
            if progress:
                progress(len(group))

    def calibrate(self, per_class: int | None = None, species: str | None = None, seed: int = 0,
                  learned: bool = True, progress: Callable[[int], None] | None = None,
                  actor: str = "registry") -> dict[str, Any]:
        """Fit isotonic calibrators per matcher (per species where there are enough pairs, pooled otherwise) and
        the cross-fitted learned fusion, store them as one batch, and put a new policy version in force.
        With `species`, only that species' calibrators change; the others' stay as they were."""
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
        matchers = registry.pipeline.matcher_names
        fitted = fit_calibrations(pairs, matchers)
        if species is not None:  # the batch serves this species alone: its pooled calibrators are its own
            fitted = {(m, species): c for (m, sp), c in fitted.items() if sp is None} | {
                key: c for key, c in fitted.items() if key[1] is not None}
        fusion = cross_fitted_fusion(pairs, matchers, seed=seed) if learned else None
        versions = registry.pipeline.versions
        summary = {
            "versions": versions, "pairs": len(pairs), "positives": positives,
            "negatives": len(pairs) - positives, "seed": seed, **sampling,
            "species": sorted({sp for _, sp in fitted if sp is not None}),
            "pooled_only": [] if species else sorted({p.species for p in pairs} - {sp for _, sp in fitted if sp}),
            "learned_fusion": "cross-fitted" if fusion else None,
        }
        batch = registry.catalog.save_calibrations(fitted, fusion, len(pairs), summary)
        policy = registry.policy
        same_models = policy.model_versions == versions
        batches = dict(policy.calibration_batches) if species and same_models else {}
        batches[species or ALL_SPECIES] = batch
        fusion_kind = policy.fusion if fusion is not None else "wildfusion"
        new = registry.set_policy(policy.derive(
            f"calibrate{' --species ' + species if species else ''}: batch {batch} on {len(pairs)} pairs",
            actor, model_versions=versions, calibration_batches=batches, fusion=fusion_kind,
            matcher_settings=registry.pipeline.local_settings))
        return {**summary, "batch": batch, "policy_version": new.version,
                "calibrators": [f"{m}/{sp or 'pooled'}" for m, sp in fitted],
                "learned_fusion": fusion.to_json() if fusion else None}


def calibrations_for_policy(registry: Registry) -> dict[int, Calibrations]:
    return registry.catalog.load_calibrations(set(registry.policy.calibration_batches.values()))
