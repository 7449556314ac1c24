"""The pair verifier: "is this candidate individual the query's animal?" from more than one photo's score.

Per candidate individual it sees the fused score of its best photo, each matcher's calibrated score there, the
margin to the best *other* individual, how many of its photos were compared and how well they agree, and where
the query and the individual have times or places, how far and how long apart they were seen (decide/spacetime).
A logistic regression (coefficients stored as JSON in the calibration batch, never a pickle) fitted on simulated
open-set queries of the registry's own labelled photos, out of sample; the decision then uses its probability.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from registry.decide.scoring import IndividualScore

VERIFIER = "fusion:verifier"
RANK_FEATURES = ("score", "margin", "photos", "agreement")


def candidate_features(ranked: list[IndividualScore], index: int, spacetime: bool = True) -> dict[str, float]:
    """The verifier's view of the `index`-th ranked individual (`spacetime`: with the space-time evidence)."""
    candidate = ranked[index]
    others = [r.score for k, r in enumerate(ranked) if k != index]
    best_image = candidate.images[0]
    rest = [c.score for c in candidate.images[1:]]
    features = {"score": candidate.score, "margin": candidate.score - (max(others) if others else 0.0),
                "photos": float(np.log1p(len(candidate.images))),
                "agreement": float(np.mean(rest)) if rest else candidate.score}
    features.update({f"calibrated:{m}": v for m, v in sorted(best_image.calibrated.items())})
    if spacetime:
        features.update(candidate.context)  # space-time evidence, where the query and the individual have it
    return features


@dataclass
class PairVerifier:
    features: list[str]
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    base: str = "learned"  # the fusion whose scores it was fitted on ("learned" or "wildfusion")

    @classmethod
    def fit(cls, rows: list[dict[str, float]], labels: list[bool], base: str = "learned") -> PairVerifier:
        names = sorted({k for row in rows for k in row})
        x = np.array([[row.get(k, 0.0) for k in names] for row in rows], dtype=np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        model = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / scale, np.asarray(labels))
        return cls(names, model.coef_[0], float(model.intercept_[0]), mean, scale, base)

    def __call__(self, features: dict[str, float]) -> float:
        x = (np.array([features.get(k, 0.0) for k in self.features]) - self.mean) / self.scale
        return float(expit(float(np.dot(self.coef, x)) + self.intercept))  # no overflow far from the boundary

    def verify(self, ranked: list[IndividualScore]) -> list[IndividualScore]:
        """The candidates re-scored by the verifier's probability, best first."""
        scored = [replace(r, score=self(candidate_features(ranked, k))) for k, r in enumerate(ranked)]
        return sorted(scored, key=lambda s: (-s.score, s.individual_id))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "logistic-verifier", "features": self.features, "coef": self.coef.tolist(),
                "intercept": self.intercept, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "base": self.base}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PairVerifier:
        return cls(list(data["features"]), np.asarray(data["coef"]), float(data["intercept"]),
                   np.asarray(data["mean"]), np.asarray(data["scale"]), data.get("base", "learned"))


def training_rows(ranked: list[IndividualScore], truth: int | None, top: int = 3, spacetime: bool = True,
                  ) -> tuple[list[dict[str, float]], list[bool]]:
    """Rows from one simulated query: its `top` candidates, labelled by whether each is the true individual
    (`truth` None: the query's animal is unknown, so every candidate is wrong)."""
    rows, labels = [], []
    for k in range(min(top, len(ranked))):
        rows.append(candidate_features(ranked, k, spacetime))
        labels.append(truth is not None and ranked[k].individual_id == truth)
    return rows, labels
