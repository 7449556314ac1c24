"""From per-matcher raw scores to a decision: score each candidate, aggregate per individual, open-set rule.

The `Scorer` is the seam between matchers and decisions. `CalibratedFusionScorer` is the paper's rule: each
matcher's raw score is calibrated to a probability, WildFusion = mean(calibrated primary global, calibrated
local), final = alpha * WildFusion + (1 - alpha) * calibrated complementary global (EVA02) when the profile has
one. Before a registry is calibrated, `LocalMatchScorer` decides on raw LightGlue match counts.
Nothing here knows how raw scores were computed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from registry.decide.calibration import Calibrations


@dataclass
class CandidateScore:
    """One candidate image of a query, with each matcher's raw score and the fused score."""

    annotation_id: int
    individual_id: int
    raw: dict[str, float]
    calibrated: dict[str, float] = field(default_factory=dict)
    score: float = 0.0


@dataclass
class IndividualScore:
    """A candidate individual: its best image (or its best images combined) decides its score."""

    individual_id: int
    code: str
    score: float
    best_annotation_id: int
    images: list[CandidateScore]
    # evidence beyond the photos (decide/spacetime.py: where and when it was seen vs the query), for the verifier
    context: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "individual_id": self.individual_id,
            "code": self.code,
            "score": self.score,
            "best_annotation_id": self.best_annotation_id,
            "images": [asdict(c) for c in self.images],
            "context": self.context,
        }


@dataclass
class Outcome:
    outcome: str  # "match" or "new"
    individual_id: int | None
    score: float | None
    threshold: float
    ranked: list[IndividualScore]
    policy_version: int | None = None  # the decision policy that decided
    scorer: str = ""
    probabilities: bool = True  # whether the score is a calibrated probability (else a raw match count)


class Scorer(Protocol):
    name: str
    probabilities: bool  # whether scores are calibrated probabilities (then photos may be combined)

    def score(self, candidate: CandidateScore, species: str) -> None:
        """Fill `candidate.calibrated` and `candidate.score` from `candidate.raw`."""
        ...

    def threshold_for(self, species: str) -> float:
        """The open-set threshold on `candidate.score` for this species."""
        ...

    def rerank(self, ranked: list[IndividualScore], species: str) -> list[IndividualScore]:
        """The ranked individuals as the decision sees them (a pair verifier may re-score them)."""
        ...

    def for_species(self, species: str) -> Scorer:
        """The scorer that decides for this species (a species the policy calibrated nothing for falls back to
        raw match counts, and its decisions say so)."""
        ...


class LocalMatchScorer:
    """Uncalibrated fallback: the candidate's score is its number of confident LightGlue correspondences."""

    name = "raw-local-matches"
    probabilities = False

    def __init__(self, matcher: str, threshold: float) -> None:
        self.matcher = matcher
        self.threshold = threshold

    def score(self, candidate: CandidateScore, species: str) -> None:
        candidate.score = float(candidate.raw.get(self.matcher, 0.0))

    def threshold_for(self, species: str) -> float:
        return self.threshold

    def rerank(self, ranked: list[IndividualScore], species: str) -> list[IndividualScore]:
        return ranked

    def for_species(self, species: str) -> Scorer:
        return self


def wildfusion(calibrated: dict[str, float], primary: str, local: str, complementary: str | None,
               alpha: float, second: str | None = None) -> float:
    """The paper's fused score from calibrated matcher scores: the mean of the calibrated primary global and
    local scores, and of the second local matcher's where the pair has one (as the 2026 winners fused DISK)."""
    parts = [calibrated[primary], calibrated[local]]
    if second is not None and second in calibrated:
        parts.append(calibrated[second])
    fused = sum(parts) / len(parts)
    if complementary is None:
        return fused
    return alpha * fused + (1.0 - alpha) * calibrated[complementary]


class CalibratedFusionScorer:
    """Calibrate every matcher's raw score, then fuse (WildFusion + alpha, or the learned fusion).

    `calibrations` maps a species (or "*", every other species) to the calibrators fitted for it, so one species
    can be recalibrated without touching the others'.
    """

    probabilities = True

    def __init__(self, calibrations: dict[str, Calibrations] | Calibrations, primary: str, local: str,
                 complementary: str | None, alpha: float, thresholds: dict[str, float] | None = None,
                 default_threshold: float = 0.35, learned: bool = False, verified: bool = False,
                 fallback: LocalMatchScorer | None = None, second: str | None = None) -> None:
        if isinstance(calibrations, Calibrations):
            calibrations = {"*": calibrations}
        if learned and any(c.learned is None for c in calibrations.values()):
            raise ValueError("learned fusion requested but none is stored: run `registry calibrate`")
        self.by_species = calibrations
        self.primary, self.local, self.complementary = primary, local, complementary
        self.second = second  # the second local matcher's score name, fused where a pair has it
        self.alpha = alpha
        self.thresholds = thresholds or {}
        self.default_threshold = default_threshold
        self.learned = learned
        self.verified = verified and all(c.verifier is not None for c in calibrations.values())
        self.name = ("calibrated-learned-fusion" if learned else f"calibrated-wildfusion-alpha{alpha:g}") + (
            "+verifier" if self.verified else "")
        self.fallback = fallback

    def for_species(self, species: str) -> Scorer:
        if species in self.by_species or "*" in self.by_species or self.fallback is None:
            return self
        return self.fallback

    def calibrations_for(self, species: str) -> Calibrations:
        found = self.by_species.get(species) or self.by_species.get("*")
        if found is None:
            raise KeyError(f"no calibration for species {species!r}: run `registry calibrate --species {species}`")
        return found

    def score(self, candidate: CandidateScore, species: str) -> None:
        calibrations = self.calibrations_for(species)
        candidate.calibrated = {m: calibrations.calibrate(m, species, raw) for m, raw in candidate.raw.items()}
        candidate.score = self.fuse(candidate.calibrated, species)

    def fuse(self, calibrated: dict[str, float], species: str, alpha: float | None = None) -> float:
        """The score this scorer decides with, from calibrated matcher scores (alpha overridable for sweeps)."""
        if self.learned:
            return self.calibrations_for(species).learned(calibrated)  # type: ignore[misc]
        return wildfusion(calibrated, self.primary, self.local, self.complementary,
                          self.alpha if alpha is None else alpha, self.second)

    def threshold_for(self, species: str) -> float:
        return self.thresholds.get(species, self.default_threshold)

    def rerank(self, ranked: list[IndividualScore], species: str) -> list[IndividualScore]:
        """With the verifier in force, each individual's score is its probability of being the query's animal."""
        if not self.verified or not ranked:
            return ranked
        return self.calibrations_for(species).verifier.verify(ranked)


def rank_individuals(candidates: Iterable[CandidateScore], codes: dict[int, str],
                     combine_photos: int = 1) -> list[IndividualScore]:
    """Group scored candidate images by individual. An individual scores as its best image or, with
    `combine_photos` > 1, as the noisy-OR of its best `combine_photos` images' scores (1 - prod(1 - p)): a second
    photo of the same animal that also matches is evidence the best one alone does not carry."""
    groups: dict[int, list[CandidateScore]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.individual_id, []).append(candidate)
    ranked = []
    for individual_id, images in groups.items():
        images.sort(key=lambda c: c.score, reverse=True)
        score = images[0].score
        if combine_photos > 1 and len(images) > 1:
            missed = 1.0
            for image in images[:combine_photos]:
                missed *= 1.0 - min(max(image.score, 0.0), 1.0)
            score = 1.0 - missed
        ranked.append(IndividualScore(individual_id, codes.get(individual_id, str(individual_id)),
                                      score, images[0].annotation_id, images))
    ranked.sort(key=lambda s: (-s.score, s.individual_id))
    return ranked


NO_MARGIN = 1e9  # a decision with nothing to weigh (no candidate): never uncertain


def decision_margin(outcome: str, scores: list[float], codes: list[str], threshold: float,
                    probabilities: bool = True) -> tuple[float, str]:
    """How close a decision came to going the other way (smaller is more uncertain) and why: a match by its
    distance to tau or to the runner-up individual, whichever is smaller; a new individual by how close its best
    candidate came to tau. Stored with the decision, so the review queue is one indexed query.

    Calibrated scores are probabilities; raw match counts (an uncalibrated scorer) are put on the same scale as
    a fraction of their threshold, so 41 matches against a threshold of 40 (margin 0.025) is as uncertain in
    the queue as it is."""
    scale = 1.0 if probabilities else max(abs(threshold), 1.0)
    if outcome == "new":
        if not scores:
            return NO_MARGIN, "no candidates"
        return (threshold - scores[0]) / scale, "new individual, but the best candidate came close"
    to_threshold = (scores[0] - threshold) / scale
    to_runner_up = (scores[0] - scores[1]) / scale if len(scores) > 1 else NO_MARGIN
    if to_runner_up < to_threshold:
        return to_runner_up, f"runner-up {codes[1]} scored almost as high"
    return to_threshold, "score just above the threshold"


def decide(ranked: list[IndividualScore], threshold: float) -> Outcome:
    """Open-set rule: the best individual if its score reaches the threshold, else a new individual."""
    if ranked and ranked[0].score >= threshold:
        return Outcome("match", ranked[0].individual_id, ranked[0].score, threshold, ranked)
    return Outcome("new", None, ranked[0].score if ranked else None, threshold, ranked)
