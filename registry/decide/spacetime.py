"""Space-time evidence: where and when a candidate individual was seen, against where and when the query was
taken. A re-sighting at the same station within days is likely; one 50 km away five minutes later is not.

Features (for the pair verifier, fitted out of sample like the rest; a species without times or places simply
lacks them, and the indicator features let the verifier learn what their absence means):
`st:has_place`, `st:log_km` (to the individual's nearest sighting), `st:has_time`, `st:log_days` (to its sighting
closest in time), `st:log_kmh` (the speed that sighting would need).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Seen:
    """One sighting's (or the query's) time and place; either may be unknown."""

    when: datetime | None
    latitude: float | None
    longitude: float | None

    @property
    def placed(self) -> bool:
        return self.latitude is not None and self.longitude is not None


def kilometres(a: Seen, b: Seen) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.latitude, a.longitude, b.latitude, b.longitude))  # type: ignore[arg-type]
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(h)))


def features(query: Seen, sightings: list[Seen]) -> dict[str, float]:
    """The verifier's space-time view of one candidate individual (empty: nothing to compare)."""
    out: dict[str, float] = {}
    placed = [s for s in sightings if s.placed] if query.placed else []
    if placed:
        out["st:has_place"] = 1.0
        out["st:log_km"] = math.log1p(min(kilometres(query, s) for s in placed))
    timed = [s for s in sightings if s.when is not None] if query.when is not None else []
    if timed:
        nearest = min(timed, key=lambda s: abs((s.when - query.when).total_seconds()))  # type: ignore[operator]
        hours = abs((nearest.when - query.when).total_seconds()) / 3600  # type: ignore[operator]
        out["st:has_time"] = 1.0
        out["st:log_days"] = math.log1p(hours / 24)
        if query.placed and nearest.placed:
            out["st:log_kmh"] = math.log1p(kilometres(query, nearest) / max(hours, 1 / 60))
    return out


def in_words(context: dict[str, float]) -> str:
    """What a reviewer reads on the match page: "seen 1.2 km away; 3 days apart (0.4 km/h)"."""
    parts = []
    if "st:log_km" in context:
        parts.append(f"nearest sighting {math.expm1(context['st:log_km']):.1f} km away")
    if "st:log_days" in context:
        days = math.expm1(context["st:log_days"])
        parts.append(f"closest in time {days:.1f} days apart" if days >= 1 else
                     f"closest in time {days * 24:.1f} h apart")
        if "st:log_kmh" in context:
            parts.append(f"{math.expm1(context['st:log_kmh']):.1f} km/h to get here")
    return "; ".join(parts)
