"""Calibration: each matcher's raw score (cosine similarity, LightGlue match count) becomes the probability that
a pair shows the same individual, so scores of different matchers can be averaged (the paper's WildFusion).

Calibrators are fitted on labelled pairs with isotonic regression (monotone, into [0, 1]) and stored as plain
breakpoints in the `calibrations` table, never as pickles. A learned fusion (logistic regression over the
calibrated scores) is fitted on the same pairs when asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

MIN_PAIRS_PER_SPECIES = 50  # positives and negatives each; below this a species uses the pooled calibrator
LEARNED_FUSION = "fusion:learned"


class CalibrationError(ValueError):
    pass


@dataclass
class IsotonicCalibrator:
    """A monotone map from raw score to probability, evaluated by linear interpolation between breakpoints."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray, same: np.ndarray) -> IsotonicCalibrator:
        raw, same = np.asarray(raw, dtype=np.float64), np.asarray(same, dtype=np.float64)
        if len(np.unique(same)) < 2:
            raise CalibrationError("calibration needs both same-individual and different-individual pairs")
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(raw, same)
        return cls(np.asarray(model.X_thresholds_, dtype=np.float64), np.asarray(model.y_thresholds_, dtype=np.float64))

    def __call__(self, raw: float | np.ndarray) -> np.ndarray:
        return np.interp(raw, self.x, self.y)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "isotonic", "x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IsotonicCalibrator:
        if data.get("kind") != "isotonic":
            raise CalibrationError(f"not an isotonic calibrator: {data.get('kind')!r}")
        return cls(np.asarray(data["x"], dtype=np.float64), np.asarray(data["y"], dtype=np.float64))


@dataclass
class LearnedFusion:
    """Logistic regression over calibrated matcher scores (the paper's untrained MLP slot, trained here)."""

    matchers: list[str]
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, matchers: list[str], calibrated: np.ndarray, same: np.ndarray) -> LearnedFusion:
        model = LogisticRegression(C=1.0, max_iter=1000).fit(calibrated, same)
        return cls(list(matchers), model.coef_[0].astype(np.float64), float(model.intercept_[0]))

    def __call__(self, calibrated: dict[str, float]) -> float:
        z = float(np.dot(self.coef, [calibrated[m] for m in self.matchers]) + self.intercept)
        return float(1.0 / (1.0 + np.exp(-z)))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "logistic", "matchers": self.matchers, "coef": self.coef.tolist(),
                "intercept": self.intercept}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LearnedFusion:
        return cls(list(data["matchers"]), np.asarray(data["coef"], dtype=np.float64), float(data["intercept"]))


@dataclass
class LabelledPair:
    """Two distinct registry images of one species, their raw scores per matcher, and the truth."""

    query_annotation_id: int
    candidate_annotation_id: int
    species: str
    same: bool
    raw: dict[str, float] = field(default_factory=dict)


@dataclass
class Calibrations:
    """Fitted calibrators per (matcher, species); species None is the pooled fallback."""

    isotonic: dict[tuple[str, str | None], IsotonicCalibrator] = field(default_factory=dict)
    learned: LearnedFusion | None = None
    verifier: Any = None  # a decide.verifier.PairVerifier fitted on this batch's simulated queries, if any

    def covers(self, matchers: Iterable[str]) -> bool:
        return all((m, None) in self.isotonic for m in matchers)

    def calibrate(self, matcher: str, species: str, raw: float) -> float:
        calibrator = self.isotonic.get((matcher, species)) or self.isotonic[(matcher, None)]
        return float(calibrator(raw))


def fit_calibrations(pairs: list[LabelledPair], matchers: list[str],
                     min_pairs: int = MIN_PAIRS_PER_SPECIES) -> dict[tuple[str, str | None], IsotonicCalibrator]:
    """One pooled calibrator per matcher, plus one per species that has `min_pairs` positives and negatives."""
    for pair in pairs:
        if pair.query_annotation_id == pair.candidate_annotation_id:
            raise CalibrationError(f"image {pair.query_annotation_id} paired with itself")
    fitted: dict[tuple[str, str | None], IsotonicCalibrator] = {}
    groups: dict[str | None, list[LabelledPair]] = {None: pairs}
    for pair in pairs:
        groups.setdefault(pair.species, []).append(pair)
    for species, group in groups.items():
        positives = sum(p.same for p in group)
        if species is not None and (positives < min_pairs or len(group) - positives < min_pairs):
            continue
        same = np.array([p.same for p in group], dtype=np.float64)
        for matcher in matchers:
            fitted[(matcher, species)] = IsotonicCalibrator.fit(np.array([p.raw[matcher] for p in group]), same)
    return fitted
