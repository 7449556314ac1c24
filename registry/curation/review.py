"""The review queue: automatic decisions that deserve a human look, most uncertain first.

A decision is uncertain when its fused score is near the threshold, when it matched but the runner-up
individual scored almost as high, or when it created a new individual although the best candidate came close
(`decide.scoring.decision_margin`, stored with the decision in an indexed column). Decisions already confirmed,
corrected or rejected have left the queue. Every read here is a bounded, indexed query.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, func, select

from registry.decide import spacetime
from registry.store.catalog import Catalog, follow_merges
from registry.store.tables import Annotation, Decision, Image, Individual, Location, Sighting, Survey


def _pending(filters: dict[str, Any]) -> Any:
    """Automatic decisions whose sightings nobody has reviewed yet, within the filters: one indexed query."""
    unreviewed = exists(select(Sighting.id).where(Sighting.decision_id == Decision.id,
                                                  Sighting.method == "automatic", Sighting.status == "active"))
    query = (select(Decision, Annotation, Image)
             .join(Annotation, Annotation.id == Decision.annotation_id)
             .join(Image, Image.id == Annotation.image_id)
             .where(unreviewed))
    if filters.get("margin") is not None:  # None: every unreviewed decision, most uncertain first
        query = query.where(Decision.margin <= filters["margin"])
    if filters.get("species"):
        query = query.where(Annotation.species == filters["species"])
    if filters.get("outcome"):
        query = query.where(Decision.outcome == filters["outcome"])
    if filters.get("survey"):
        query = query.where(Image.survey_id.in_(select(Survey.id).where(Survey.name == filters["survey"])))
    if filters.get("location"):
        query = query.where(Image.location_id.in_(select(Location.id).where(Location.name == filters["location"])))
    return query


def queue(catalog: Catalog, species: str | None = None, limit: int = 20, margin: float | None = 0.15,
          survey: str | None = None, location: str | None = None, outcome: str | None = None,
          ) -> list[dict[str, Any]]:
    """Automatic decisions still unreviewed whose margin (stored at decision time) is at most `margin`, most
    uncertain first (`margin` None: all of them); optionally only one species, survey, location or outcome
    (`match` or `new`)."""
    filters = {"species": species, "margin": margin, "survey": survey, "location": location, "outcome": outcome}
    with catalog.transaction() as session:
        rows = session.execute(_pending(filters).order_by(Decision.margin, Decision.id).limit(limit)).all()
        current = dict(session.execute(
            select(Sighting.decision_id, Individual.code).join(Individual, Individual.id == Sighting.individual_id)
            .where(Sighting.decision_id.in_([d.id for d, _, _ in rows]))).all())
        entries = []
        for decision, annotation, image in rows:
            entries.append({
                "decision": decision.id, "uncertainty": round(decision.margin, 4), "reason": decision.margin_reason,
                "outcome": decision.outcome, "individual": current.get(decision.id), "score": decision.score,
                "threshold": decision.threshold, "image": image.path, "species": annotation.species,
                "annotation": annotation.id, "box": list(annotation.box) if annotation.box else None,
                "annotations": len((decision.model_versions or {}).get("annotations", [])) or 1,
                "captured_at": image.captured_at.isoformat() if image.captured_at else None,
                "candidates": [{"individual": c["code"], "score": c["score"],
                                "best_annotation_id": c.get("best_annotation_id", c.get("best_image_id")),
                "seen": spacetime.in_words(c.get("context") or {}),
                                "raw": c["images"][0]["raw"] if c.get("images") else {},
                                "calibrated": c["images"][0]["calibrated"] if c.get("images") else {}}
                               for c in (decision.candidates or [])[:5]],
            })
    return entries


def count(catalog: Catalog, **filters: Any) -> int:
    """How many decisions are left to review under these filters."""
    with catalog.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(_pending(filters).subquery())) or 0)


def counts(catalog: Catalog, **filters: Any) -> list[dict[str, Any]]:
    """How many decisions are left per species and survey under these filters (one grouped query)."""
    pending = _pending(filters).subquery()
    with catalog.transaction() as session:
        rows = session.execute(
            select(pending.c.species, Survey.name, func.count())
            .select_from(pending).outerjoin(Survey, Survey.id == pending.c.survey_id)
            .group_by(pending.c.species, Survey.name).order_by(func.count().desc())).all()
    return [{"species": species, "survey": survey, "left": int(n)} for species, survey, n in rows]


def neighbours(catalog: Catalog, decision_id: int, **filters: Any) -> dict[str, Any]:
    """The decisions before and after this one in the queue's order, its position and the queue's length: a few
    indexed queries, whatever the queue's size."""
    with catalog.transaction() as session:
        here = session.get(Decision, decision_id)
        total = int(session.scalar(select(func.count()).select_from(_pending(filters).subquery())) or 0)
        if here is None or here.margin is None:
            return {"previous": None, "next": None, "position": None, "total": total}
        key = (here.margin, here.id)
        before = (Decision.margin < key[0]) | ((Decision.margin == key[0]) & (Decision.id < key[1]))
        after = (Decision.margin > key[0]) | ((Decision.margin == key[0]) & (Decision.id > key[1]))
        previous = session.execute(_pending(filters).where(before)
                                   .order_by(Decision.margin.desc(), Decision.id.desc()).limit(1)).first()
        following = session.execute(_pending(filters).where(after)
                                    .order_by(Decision.margin, Decision.id).limit(1)).first()
        in_queue = session.execute(_pending(filters).where(Decision.id == decision_id)).first() is not None
        position = int(session.scalar(select(func.count()).select_from(_pending(filters).where(before).subquery())))
        return {"previous": previous[0].id if previous else None, "next": following[0].id if following else None,
                "position": position if in_queue else None, "total": total}


LOCAL, VERIFIED, DISTINCTIVE = "aliked", "aliked-verified", "aliked-distinctive"


def _same_animal(p: float | None) -> str:
    return f" → {p:.0%} likely the same animal" if p is not None else ""


def evidence_in_words(raw: dict[str, float], calibrated: dict[str, float], hidden: set[str]) -> list[str]:
    """Each matcher's evidence for one compared photo as a reviewer reads it ("47 matching points (31 verified)
    → 83 % likely the same animal"), leaving out matchers in `hidden` (their calibrated score is the same for
    every photo compared: it tells nothing apart)."""
    words = []
    if LOCAL in raw and LOCAL not in hidden:
        parts = []
        if VERIFIED in raw:
            parts.append(f"{round(raw[VERIFIED])} verified")
        if DISTINCTIVE in raw:
            parts.append(f"{round(raw[DISTINCTIVE])} found on no other candidate")
        best = next((calibrated[n] for n in (DISTINCTIVE, VERIFIED, LOCAL) if n in calibrated and n not in hidden),
                    None)
        points = round(raw[LOCAL])
        words.append(f"{points} matching point{'' if points == 1 else 's'}"
                     + (f" ({', '.join(parts)})" if parts else "") + _same_animal(best))
    for name, value in raw.items():
        if name in (LOCAL, VERIFIED, DISTINCTIVE) or name in hidden:
            continue
        words.append(f"looks alike to {name}: similarity {value:.2f}" + _same_animal(calibrated.get(name)))
    return words


def constant_scores(candidates: list[dict[str, Any]]) -> set[str]:
    """Matchers whose calibrated score is identical on every compared photo (an uncalibrated embedding, a flat
    calibrator): a column that tells nothing apart is not shown."""
    seen: dict[str, set[float]] = {}
    compared = 0
    for candidate in candidates:
        for compared_photo in candidate["images"]:
            compared += 1
            for name, value in compared_photo["calibrated"].items():
                seen.setdefault(name, set()).add(round(float(value), 4))
    return {name for name, values in seen.items() if compared > 1 and len(values) == 1}


def decision_detail(catalog: Catalog, decision_id: int) -> dict[str, Any] | None:
    """Everything a match page shows about one decision: the query animal, the ranked candidate individuals
    with each compared photo's raw and calibrated scores, the fused score, tau, the policy version, and what
    its sightings say now (after any review)."""
    with catalog.transaction() as session:
        decision = session.get(Decision, decision_id)
        if decision is None:
            return None
        annotation = session.get(Annotation, decision.annotation_id)
        image = session.get(Image, annotation.image_id)  # type: ignore[union-attr]
        sightings = list(session.scalars(select(Sighting).where(Sighting.decision_id == decision_id)
                                         .order_by(Sighting.id)))
        merged = catalog.merge_links(session)
        current = None
        if sightings:
            individual = session.get(Individual, follow_merges(sightings[0].individual_id, merged.get))
            current = individual.code if individual else None
        survey = session.get(Survey, image.survey_id).name if image.survey_id else None  # type: ignore[union-attr]
        location = session.get(Location, image.location_id).name if image.location_id else None  # type: ignore[union-attr]
        versions = decision.model_versions or {}
        candidates = []
        for rank, c in enumerate(decision.candidates or [], start=1):
            candidates.append({
                "rank": rank, "code": c["code"], "individual_id": c.get("individual_id"), "score": c["score"],
                "best_annotation_id": c.get("best_annotation_id", c.get("best_image_id")),
                "seen": spacetime.in_words(c.get("context") or {}),
                "images": [{"annotation_id": i.get("annotation_id", i.get("image_id")), "raw": i.get("raw", {}),
                            "calibrated": i.get("calibrated", {}), "score": i.get("score")}
                           for i in c.get("images", [])]})
        hidden = constant_scores(candidates)
        for candidate in candidates:
            for compared in candidate["images"]:
                compared["evidence"] = evidence_in_words(compared["raw"], compared["calibrated"], hidden)
        return {
            "hidden_scores": sorted(hidden),
            "decision": decision.id, "outcome": decision.outcome, "score": decision.score,
            "threshold": decision.threshold, "policy_version": decision.policy_id,
            "scorer": versions.get("scorer", ""), "profile": decision.profile,
            "created_at": decision.created_at.isoformat(timespec="seconds"),
            "annotation": annotation.id, "annotations": versions.get("annotations") or [annotation.id],  # type: ignore[union-attr]
            "box": list(annotation.box) if annotation.box else None,  # type: ignore[union-attr]
            "species": annotation.species, "photo": image.path.rsplit("/", 1)[-1],  # type: ignore[union-attr]
            "captured_at": image.captured_at.isoformat(timespec="seconds") if image.captured_at else None,  # type: ignore[union-attr]
            "survey": survey, "location": location,
            "proposed": candidates[0]["code"] if decision.outcome == "match" and candidates else None,
            "individual": current, "method": sightings[0].method if sightings else None,
            "status": sightings[0].status if sightings else None,
            "candidates": candidates, "problems": versions.get("problems", []),
        }
