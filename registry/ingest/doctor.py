"""`registry doctor`: check that SQL, the vector index and the feature cache tell the same story, and repair
what can be repaired.

SQL is the source of truth. The vector index must hold exactly one point per indexed image in every embedder's
collection, with the individual that image's active sighting resolves to; the feature cache must hold every
indexed image's local features. Repairs only ever rewrite derived data (vectors, payloads, cached features)
from SQL and the photo files; nothing recorded in SQL is changed except an image's pending/indexed flag.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from registry.services.registry import Registry


@dataclass
class Problem:
    kind: str  # pending-image | missing-vector | orphan-vector | wrong-individual | missing-features
    collection: str | None
    image_id: int
    detail: str
    repaired: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check(registry: Registry, repair: bool = False) -> dict[str, Any]:
    """{"consistent": bool, "problems": [...], "repaired": n, "unrepaired": n} over the whole registry."""
    states = registry.catalog.image_states()
    problems: list[Problem] = []
    for image_id, state in states.items():
        if state["status"] == "pending":
            problems.append(Problem("pending-image", None, image_id, "SQL row written, vectors never confirmed"))
    for name, collection in registry.collections.items():
        seen: set[int] = set()
        for image_id, payload in registry.index.payloads(collection):
            seen.add(image_id)
            state = states.get(image_id)
            if state is None:
                problems.append(Problem("orphan-vector", collection, image_id, "vector of an image not in SQL"))
            elif state["status"] == "indexed" and payload.get("individual_id") != state["individual_id"]:
                problems.append(Problem("wrong-individual", collection, image_id,
                                        f"payload individual {payload.get('individual_id')}, SQL says "
                                        f"{state['individual_id']}"))
        for image_id, state in states.items():
            if state["status"] == "indexed" and image_id not in seen:
                problems.append(Problem("missing-vector", collection, image_id, f"no vector from {name}"))
    for image_id, state in states.items():
        if state["status"] == "indexed" and not registry.features.has(state["sha256"]):
            problems.append(Problem("missing-features", None, image_id, "local features not in the cache"))
    if repair:
        _repair(registry, problems, states)
    unrepaired = [p for p in problems if not p.repaired]
    # not an inconsistency (the version in force is complete), but work left: a reembed that stopped
    unfinished = registry.models.unfinished(sum(1 for s in states.values() if s["status"] == "indexed"))
    return {"consistent": not problems, "problems": [p.to_json() for p in problems],
            "repaired": len(problems) - len(unrepaired), "unrepaired": len(unrepaired),
            "images": len(states), "unfinished_reembeds": unfinished}


def _repair(registry: Registry, problems: list[Problem], states: dict[int, dict[str, Any]]) -> None:
    for problem in problems:
        if problem.kind == "orphan-vector":
            registry.index.delete(problem.collection, [problem.image_id])  # type: ignore[arg-type]
            problem.repaired = True
        elif problem.kind == "wrong-individual":
            registry.index.set_individual(problem.collection, [problem.image_id],  # type: ignore[arg-type]
                                          states[problem.image_id]["individual_id"])
            problem.repaired = True
    # pending images, missing vectors and missing features all mean: describe the photo again from its file
    redo = sorted({p.image_id for p in problems if p.kind in ("pending-image", "missing-vector", "missing-features")})
    if redo:
        done, failures = registry.recorder.reindex(redo)
        for problem in problems:
            if problem.image_id in done and problem.kind in ("pending-image", "missing-vector", "missing-features"):
                problem.repaired = True
        for problem in problems:
            if not problem.repaired:
                problem.detail += "; " + "; ".join(f for f in failures if f"image {problem.image_id} " in f)
