"""Possible duplicates: pairs of individuals that may be one animal (two codes given to it in different seasons,
or a missed match). Each individual's photos are matched, as simulated queries, against every *other*
individual of its species (its own hidden); a pair whose best cross-match passes τ, or comes within `margin` of
it, is listed for a person to compare and merge, unless a person declared the two different animals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.services.port import RegistryPort as Registry


def find_duplicates(registry: Registry, species: str | None = None, margin: float = 0.1,
                    photos_per_individual: int = 2, progress: Callable[[int], None] | None = None,
                    ) -> dict[str, Any]:
    scorer = registry.scorer
    states = {a: s for a, s in registry.catalog.annotation_states().items()
              if s["status"] == "indexed" and s["individual_id"] is not None
              and (species is None or s["species"] == species)}
    photos: dict[int, list[int]] = {}
    for annotation_id, state in sorted(states.items()):
        photos.setdefault(state["individual_id"], []).append(annotation_id)
    best: dict[tuple[int, int], dict[str, Any]] = {}
    # "not the same animal", said by a person: those partners are hidden like the individual itself
    partners: dict[int, set[int]] = {}
    for a, b in registry.catalog.distinct_pairs():
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    for individual, annotation_ids in photos.items():
        for annotation_id in annotation_ids[:photos_per_individual]:
            state = states[annotation_id]
            ranked = registry.identification.rank_stored(annotation_id, state["species"], state["viewpoint"],
                                                         scorer, (annotation_id,),
                                                         (individual, *sorted(partners.get(individual, ()))))
            if ranked:
                top = ranked[0]
                threshold = scorer.threshold_for(state["species"])
                key = tuple(sorted((individual, top.individual_id)))
                if top.score >= threshold - margin and (key not in best or top.score > best[key]["score"]):
                    best[key] = {"individual": individual, "other": top.individual_id,
                                 "score": float(top.score), "threshold": float(threshold),
                                 "annotation": annotation_id, "other_annotation": top.best_annotation_id,
                                 "species": state["species"]}
        if progress:
            progress(1)
    with registry.catalog.transaction() as session:
        codes = registry.catalog.codes(session, {i for pair in best for i in pair})
    pairs = sorted(({**p, "individual": codes[p["individual"]], "other": codes[p["other"]]} for p in best.values()),
                   key=lambda p: -p["score"])
    return {"when": datetime.now(UTC).isoformat(timespec="seconds"), "margin": margin, "checked": len(photos),
            "species": species, "pairs": pairs}
