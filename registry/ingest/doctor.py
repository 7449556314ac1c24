"""`registry doctor`: check that SQL, the vector index and the feature cache tell the same story, and repair
what can be repaired.

SQL is the source of truth. The vector index must hold exactly one point per indexed annotation in every
embedder's collection, with the individual that annotation's active sighting resolves to and its photo's
location (what `--locations` scoping filters on); the feature cache must hold every indexed annotation's local
features. Repairs only ever rewrite derived data (vectors, payloads, cached features) from SQL and the photo
files; nothing recorded in SQL is changed except an annotation's pending/indexed flag.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from registry.services.registry import Registry


@dataclass
class Problem:
    kind: str  # pending-annotation | missing-vector | orphan-vector | wrong-individual | wrong-location |
    #            missing-features
    collection: str | None
    annotation_id: int
    detail: str
    repaired: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check(registry: Registry, repair: bool = False) -> dict[str, Any]:
    """{"consistent": bool, "problems": [...], "repaired": n, "unrepaired": n} over the whole registry."""
    states = registry.catalog.annotation_states()
    problems: list[Problem] = []
    for annotation_id, state in states.items():
        if state["status"] == "pending":
            problems.append(Problem("pending-annotation", None, annotation_id,
                                    "SQL row written, vectors never confirmed"))
    for name, collection in registry.collections.items():
        seen: set[int] = set()
        for annotation_id, payload in registry.index.payloads(collection):
            seen.add(annotation_id)
            state = states.get(annotation_id)
            if state is None:
                problems.append(Problem("orphan-vector", collection, annotation_id,
                                        "vector of an annotation not in SQL"))
            elif state["status"] == "indexed" and payload.get("individual_id") != state["individual_id"]:
                problems.append(Problem("wrong-individual", collection, annotation_id,
                                        f"payload individual {payload.get('individual_id')}, SQL says "
                                        f"{state['individual_id']}"))
            elif state["status"] == "indexed" and payload.get("location_id") != state["location_id"]:
                problems.append(Problem("wrong-location", collection, annotation_id,
                                        f"payload location {payload.get('location_id')}, SQL says "
                                        f"{state['location_id']}"))
        for annotation_id, state in states.items():
            if state["status"] == "indexed" and annotation_id not in seen:
                problems.append(Problem("missing-vector", collection, annotation_id, f"no vector from {name}"))
    for annotation_id, state in states.items():
        if state["status"] == "indexed" and not registry.features.has(state["feature_key"]):
            problems.append(Problem("missing-features", None, annotation_id, "local features not in the cache"))
    if repair:
        _repair(registry, problems, states)
    unrepaired = [p for p in problems if not p.repaired]
    # not an inconsistency (the version in force is complete), but work left: a reembed that stopped
    unfinished = registry.embedder_versions.unfinished(sum(1 for s in states.values() if s["status"] == "indexed"))
    return {"consistent": not problems, "problems": [p.to_json() for p in problems],
            "repaired": len(problems) - len(unrepaired), "unrepaired": len(unrepaired),
            "annotations": len(states), "unfinished_reembeds": unfinished}


REDESCRIBE = ("pending-annotation", "missing-vector", "missing-features")


def _repair(registry: Registry, problems: list[Problem], states: dict[int, dict[str, Any]]) -> None:
    for problem in problems:
        if problem.kind == "orphan-vector":
            registry.index.delete(problem.collection, [problem.annotation_id])  # type: ignore[arg-type]
            problem.repaired = True
        elif problem.kind == "wrong-individual":
            registry.index.set_individual(problem.collection, [problem.annotation_id],  # type: ignore[arg-type]
                                          states[problem.annotation_id]["individual_id"])
            problem.repaired = True
        elif problem.kind == "wrong-location":
            state = states[problem.annotation_id]
            registry.index.set_payload(problem.collection, [problem.annotation_id],  # type: ignore[arg-type]
                                       {"location_id": state["location_id"], "image_id": state["image_id"]})
            problem.repaired = True
    registry.index.flush()
    # pending annotations, missing vectors and missing features all mean: describe the photo again from its file
    redo = sorted({p.annotation_id for p in problems if p.kind in REDESCRIBE})
    if redo:
        done, failures = registry.recorder.reindex(redo)
        for problem in problems:
            if problem.annotation_id in done and problem.kind in REDESCRIBE:
                problem.repaired = True
        for problem in problems:
            if not problem.repaired:
                problem.detail += "; " + "; ".join(f for f in failures if f"annotation {problem.annotation_id} " in f)
