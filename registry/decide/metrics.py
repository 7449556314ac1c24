"""AnimalCLEF's accuracy measures for open-set identification.

BAKS: balanced accuracy on queries whose individual is already known (accuracy per true identity, averaged
over identities). BAUS: the same for queries of individuals not yet known, where the right answer is "new".
The score is their geometric mean; with several species, each measure is averaged over species.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

NEW = None  # a prediction of "new individual"


@dataclass(frozen=True)
class Prediction:
    species: str
    truth: str  # the query's true identity
    known: bool  # whether that identity was in the registry when the query was asked
    predicted: str | None  # the true identity the chosen individual stands for, or None for "new"
    rank: int | None = None  # 1-based rank of the true identity among the candidates (known queries)


def _balanced(correct_by_identity: dict[str, list[bool]]) -> float | None:
    if not correct_by_identity:
        return None
    return sum(sum(v) / len(v) for v in correct_by_identity.values()) / len(correct_by_identity)


def _geometric_mean(baks: float | None, baus: float | None) -> float | None:
    """The AnimalCLEF score; with only one kind of query, the one measure there is."""
    if baks is None or baus is None:
        return baks if baus is None else baus
    return math.sqrt(baks * baus)


def _species_block(predictions: list[Prediction]) -> dict[str, float | int | None]:
    known: dict[str, list[bool]] = defaultdict(list)
    unknown: dict[str, list[bool]] = defaultdict(list)
    top1: list[bool] = []
    top5: list[bool] = []
    for p in predictions:
        if p.known:
            known[p.truth].append(p.predicted == p.truth)
            top1.append(p.rank == 1)
            top5.append(p.rank is not None and p.rank <= 5)
        else:
            unknown[p.truth].append(p.predicted is NEW)
    baks, baus = _balanced(known), _balanced(unknown)
    score = _geometric_mean(baks, baus)
    return {
        "baks": baks, "baus": baus, "score": score,
        "top1": sum(top1) / len(top1) if top1 else None,
        "top5": sum(top5) / len(top5) if top5 else None,
        "queries": len(predictions),
    }


def evaluate(predictions: Iterable[Prediction]) -> dict:
    """{"overall": {baks, baus, score, top1, top5, queries}, "per_species": {species: same keys}}."""
    by_species: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_species[p.species].append(p)
    per_species = {s: _species_block(ps) for s, ps in sorted(by_species.items())}

    def mean(key: str) -> float | None:
        values = [b[key] for b in per_species.values() if b[key] is not None]
        return sum(values) / len(values) if values else None  # type: ignore[arg-type]

    baks, baus = mean("baks"), mean("baus")
    overall = {
        "baks": baks, "baus": baus,
        "score": _geometric_mean(baks, baus),
        "top1": mean("top1"), "top5": mean("top5"),
        "queries": sum(b["queries"] for b in per_species.values()),  # type: ignore[misc]
    }
    return {"overall": overall, "per_species": per_species}


def sequential_predictions(
    events: Iterable[tuple[str, str, str, str | None, list[str]]],
    reference_labels: dict[str, str],
) -> list[Prediction]:
    """Judge decisions made one after another, as the registry lives.

    `events`: (species, true identity, outcome, chosen individual code, ranked candidate codes) in the order
    the decisions were made. `reference_labels`: individual code -> true identity for individuals created from
    labelled reference images. An individual created by a "new" decision stands for the true identity of the
    photo that created it. A query is "known" when its identity had been registered before it was asked.
    """
    meaning = dict(reference_labels)
    registered = set(reference_labels.values())
    predictions = []
    for species, truth, outcome, code, ranked in events:
        known = truth in registered
        if outcome == "new":
            predicted = NEW
            if code is not None:
                meaning.setdefault(code, truth)
        else:
            predicted = meaning.get(code or "", f"?{code}")
        rank = None
        if known:
            ranked_truths = [meaning.get(c) for c in ranked]
            rank = ranked_truths.index(truth) + 1 if truth in ranked_truths else None
        predictions.append(Prediction(species, truth, known, predicted, rank))
        registered.add(truth)  # recorded now, under whichever individual the decision chose
    return predictions


def pairwise_clustering(predicted: list[str], truth: list[str]) -> dict[str, float | int]:
    """Pairwise precision, recall and F1 of a clustering against the truth (pairs of images put together), the
    adjusted Rand index (AnimalCLEF 2026's clustering measure; scikit-learn's), and the number of clusters made and
    true: how a registry's individuals compare to the real animals."""
    def pairs(counts: Iterable[int]) -> int:
        return sum(n * (n - 1) // 2 for n in counts)

    together = pairs(Counter(zip(predicted, truth, strict=True)).values())
    predicted_pairs = pairs(Counter(predicted).values())
    true_pairs = pairs(Counter(truth).values())
    precision = together / predicted_pairs if predicted_pairs else 1.0
    recall = together / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    from sklearn.metrics import adjusted_rand_score

    return {"pairwise_precision": precision, "pairwise_recall": recall, "pairwise_f1": f1,
            "ari": float(adjusted_rand_score(truth, predicted)) if truth else 1.0,
            "individuals_created": len(set(predicted)), "individuals_true": len(set(truth)), "images": len(truth)}


def bootstrap_interval(predictions: list[Prediction], key: str = "score", resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float] | None:
    """A percentile bootstrap interval of an overall measure, resampling *identities* (with all their queries)
    within each species, since a balanced accuracy averages over identities and one animal's photos are not
    independent draws."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, bool], dict[str, list[Prediction]]] = defaultdict(lambda: defaultdict(list))
    for p in predictions:
        groups[(p.species, p.known)][p.truth].append(p)
    if not groups:
        return None
    pools = [list(identities.values()) for identities in groups.values()]
    values = []
    def copy(p: Prediction, draw: int) -> Prediction:  # an identity drawn twice counts as two identities
        truth = f"{p.truth}#{draw}"
        return replace(p, truth=truth, predicted=truth if p.predicted == p.truth else p.predicted)

    for _ in range(resamples):
        sample = [copy(p, draw) for pool in pools
                  for draw, k in enumerate(rng.integers(0, len(pool), len(pool))) for p in pool[int(k)]]
        value = evaluate(sample)["overall"][key]
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
