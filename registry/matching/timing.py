"""Where an identification's time goes: seconds per stage, reported with every answer and recorded decision.

Stages (in the order they run): decode, describe-global, describe-local, describe-second (the second local
matcher, for species that use one), retrieval (the vector index's shortlist and the cached features it needs),
lnbnn, first-pass, full-pass (the local matcher on the pairs that decide), distinctiveness (each query keypoint's
best match in every shortlisted photo: which correspondences are the candidate's animal, not the scenery),
verification (MAGSAC), second-matcher (the second matcher's pairs), decision (calibration, fusion, ranking, the
open-set rule), recording.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

STAGES = ("decode", "describe-global", "describe-local", "describe-second", "retrieval", "lnbnn", "first-pass",
          "full-pass", "distinctiveness", "verification", "second-matcher", "decision", "recording")


class StageTimes:
    """Seconds spent in each stage; a stage entered twice (an event's photos) adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def share(self, fraction: float) -> StageTimes:
        """A part of a batch's times (one photo's share of describing a batch together)."""
        part = StageTimes()
        part.seconds = {name: seconds * fraction for name, seconds in self.seconds.items()}
        return part

    def to_json(self) -> dict[str, float]:
        """Stages in running order (seconds, to 0.1 ms) and their total."""
        out = {name: round(self.seconds[name], 4) for name in STAGES if name in self.seconds}
        out["total"] = round(sum(self.seconds.values()), 4)
        return out
