"""From per-matcher raw scores to a decision: score each candidate, aggregate per individual, open-set rule.

The `Scorer` is the seam where calibration and fusion slot in: today's `LocalMatchScorer` uses the raw
LightGlue match count; a calibrated scorer maps each matcher's raw score to a probability and fuses them.
Nothing here knows how scores were computed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass
class CandidateScore:
    """One candidate image of a query, with each matcher's raw score and the fused score."""

    image_id: int
    individual_id: int
    raw: dict[str, float]
    calibrated: dict[str, float] = field(default_factory=dict)
    score: float = 0.0


@dataclass
class IndividualScore:
    """A candidate individual: its best image decides its score."""

    individual_id: int
    code: str
    score: float
    best_image_id: int
    images: list[CandidateScore]

    def to_json(self) -> dict:
        return {
            "individual_id": self.individual_id,
            "code": self.code,
            "score": self.score,
            "best_image_id": self.best_image_id,
            "images": [asdict(c) for c in self.images],
        }


@dataclass
class Outcome:
    outcome: str  # "match" or "new"
    individual_id: int | None
    score: float | None
    threshold: float
    ranked: list[IndividualScore]


class Scorer(Protocol):
    name: str

    def score(self, candidate: CandidateScore, species: str) -> None:
        """Fill `candidate.calibrated` and `candidate.score` from `candidate.raw`."""
        ...


class LocalMatchScorer:
    """Foundation scorer: the candidate's score is its number of confident LightGlue correspondences."""

    name = "raw-local-matches"

    def __init__(self, matcher: str = "aliked") -> None:
        self.matcher = matcher

    def score(self, candidate: CandidateScore, species: str) -> None:
        candidate.score = float(candidate.raw.get(self.matcher, 0.0))


def rank_individuals(candidates: Iterable[CandidateScore], codes: dict[int, str]) -> list[IndividualScore]:
    """Group scored candidate images by individual; an individual scores as its best image."""
    groups: dict[int, list[CandidateScore]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.individual_id, []).append(candidate)
    ranked = []
    for individual_id, images in groups.items():
        images.sort(key=lambda c: c.score, reverse=True)
        ranked.append(IndividualScore(individual_id, codes.get(individual_id, str(individual_id)),
                                      images[0].score, images[0].image_id, images))
    ranked.sort(key=lambda s: (-s.score, s.individual_id))
    return ranked


def decide(ranked: list[IndividualScore], threshold: float) -> Outcome:
    """Open-set rule: the best individual if its score reaches the threshold, else a new individual."""
    if ranked and ranked[0].score >= threshold:
        return Outcome("match", ranked[0].individual_id, ranked[0].score, threshold, ranked)
    return Outcome("new", None, ranked[0].score if ranked else None, threshold, ranked)
