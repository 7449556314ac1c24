"""The review queue: automatic decisions that deserve a human look, most uncertain first.

A decision is uncertain when its fused score is near the threshold, when it matched but the runner-up
individual scored almost as high, or when it created a new individual although the best candidate came close.
Decisions already confirmed, corrected or rejected have left the queue.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from registry.store.catalog import Catalog
from registry.store.tables import Decision, Image, Individual, Sighting


def _uncertainty(decision: Decision) -> tuple[float, str]:
    """Smaller is more uncertain; the reason says which margin is small."""
    ranked = decision.candidates or []
    best = ranked[0]["score"] if ranked else None
    second = ranked[1]["score"] if len(ranked) > 1 else None
    if decision.outcome == "new":
        if best is None:
            return float("inf"), "no candidates"
        return decision.threshold - best, "new individual, but the best candidate came close"
    to_threshold = (decision.score or 0.0) - decision.threshold
    to_runner_up = (decision.score or 0.0) - second if second is not None else float("inf")
    if to_runner_up < to_threshold:
        return to_runner_up, f"runner-up {ranked[1]['code']} scored almost as high"
    return to_threshold, "score just above the threshold"


def queue(catalog: Catalog, species: str | None = None, limit: int = 20, margin: float = 0.15,
          ) -> list[dict[str, Any]]:
    with catalog.transaction() as session:
        query = (select(Decision, Sighting, Image, Individual.code)
                 .join(Sighting, Sighting.decision_id == Decision.id)
                 .join(Image, Image.id == Decision.image_id)
                 .join(Individual, Individual.id == Sighting.individual_id)
                 .where(Sighting.method == "automatic", Sighting.status == "active"))
        if species:
            query = query.where(Image.species == species)
        rows = session.execute(query).all()
        entries = []
        for decision, _sighting, image, code in rows:
            uncertainty, reason = _uncertainty(decision)
            if uncertainty > margin:
                continue
            entries.append({
                "decision": decision.id, "uncertainty": round(uncertainty, 4), "reason": reason,
                "outcome": decision.outcome, "individual": code, "score": decision.score,
                "threshold": decision.threshold, "image": image.path, "species": image.species,
                "captured_at": image.captured_at.isoformat() if image.captured_at else None,
                "candidates": [{"individual": c["code"], "score": c["score"], "best_image_id": c["best_image_id"],
                                "raw": c["images"][0]["raw"] if c.get("images") else {},
                                "calibrated": c["images"][0]["calibrated"] if c.get("images") else {}}
                               for c in (decision.candidates or [])[:5]],
            })
    entries.sort(key=lambda e: (e["uncertainty"], e["decision"]))
    return entries[:limit]
