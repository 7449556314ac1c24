"""The decision policy: everything that turns raw matcher scores into "this individual" or "a new one".

One versioned record in the catalog (the newest is in force for every machine sharing the catalog, and every
decision names the version it used): the profile and model versions the calibrations were fitted for, the
local-matcher settings that change raw scores, the calibration batch per species, the fusion kind, alpha, and
the open-set threshold per species. A change (calibrate, tune) writes a new version; nothing edits one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from registry.decide.calibration import Calibrations
from registry.decide.scoring import CalibratedFusionScorer, LocalMatchScorer, Scorer

FUSIONS = ("wildfusion", "learned", "verifier")
ALL_SPECIES = "*"


@dataclass(frozen=True)
class DecisionPolicy:
    profile: str
    fusion: str  # "wildfusion" (the paper's rule) or "learned" (logistic over calibrated scores)
    alpha: float
    default_threshold: float
    uncalibrated_threshold: float
    matcher_settings: dict[str, Any] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)  # what the calibrations were fitted for
    embedder_weights: dict[str, str] = field(default_factory=dict)  # embedder -> trained checkpoint in use
    calibration_batches: dict[str, int] = field(default_factory=dict)  # species or "*" -> calibration batch
    thresholds: dict[str, float] = field(default_factory=dict)  # species -> tau (else default_threshold)
    expected: dict[str, Any] | None = None
    created_by: str = "registry"
    reason: str = ""
    version: int | None = None  # the catalog row; None until stored
    parent: int | None = None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not {self.fusion!r}")

    def threshold_for(self, species: str) -> float:
        return float(self.thresholds.get(species, self.default_threshold))

    def applies_to(self, model_versions: dict[str, str]) -> bool:
        """Calibrations are only valid for the exact model versions (weights, matcher settings) they came from."""
        return bool(self.calibration_batches) and self.model_versions == model_versions

    def derive(self, reason: str, created_by: str, **changes: Any) -> DecisionPolicy:
        """The next version: this one with `changes`, not yet stored."""
        return dataclasses.replace(self, reason=reason, created_by=created_by, parent=self.version, version=None,
                                   created_at=None, **changes)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["created_at"] = self.created_at.isoformat(timespec="seconds") if self.created_at else None
        return data


def build_scorer(policy: DecisionPolicy, calibrations: dict[int, Calibrations], model_versions: dict[str, str],
                 primary: str, local: str, complementary: str | None, second: str | None = None) -> Scorer:
    """The scorer a policy prescribes for these models: calibrated fusion when its calibrations were fitted for
    exactly these model versions, raw LightGlue match counts otherwise (and the decision says so)."""
    uncalibrated = LocalMatchScorer(local, policy.uncalibrated_threshold)
    if not policy.applies_to(model_versions):
        return uncalibrated
    by_species = {sp: calibrations[batch] for sp, batch in policy.calibration_batches.items() if batch in calibrations}
    verified = policy.fusion == "verifier" and all(c.verifier is not None for c in by_species.values())
    base = next(iter(by_species.values())).verifier.base if verified and by_species else policy.fusion
    learned = base == "learned" and all(c.learned is not None for c in by_species.values())
    return CalibratedFusionScorer(by_species, primary, local, complementary, policy.alpha, dict(policy.thresholds),
                                  policy.default_threshold, learned=learned, verified=verified,
                                  fallback=uncalibrated, second=second)
