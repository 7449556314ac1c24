"""Moving a registry's vectors from qdrant-client's local mode (`<data dir>/qdrant/`) into Qdrant Edge.

Resumable: each collection is copied in batches (upserts are idempotent, so a re-run after a crash copies again
what was not confirmed), checked by count, and recorded in `vectors/migrated.json`; when every collection is
there a marker file in the old folder says so. The old folder is left as it was (delete it when `registry doctor`
is content): nothing is lost if the move is interrupted at any point.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.settings import Settings
from registry.store import crashpoints
from registry.store.vector_index import VectorIndex, point_from_payload

MOVED_MARKER = "MOVED-TO-QDRANT-EDGE"
RECORD = "migrated.json"


def _legacy_collections(path: Path) -> list[str]:
    meta = path / "meta.json"
    if not meta.exists():
        return []
    try:
        return sorted(json.loads(meta.read_text()).get("collections", {}))
    except (OSError, ValueError):
        return sorted(p.name for p in (path / "collection").glob("*") if p.is_dir())


def legacy_vectors_pending(settings: Settings) -> bool:
    """A local-mode folder with collections not yet moved, in a registry whose engine is Qdrant Edge."""
    if not settings.uses_embedded_qdrant or settings.vector_engine != "qdrant-edge":
        return False
    path = settings.qdrant_path
    return not (path / MOVED_MARKER).exists() and bool(_legacy_collections(path))


def _write_record(path: Path, record: dict[str, int]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def copy_collection(source: VectorIndex, target: VectorIndex, name: str, dimension: int,
                    progress: Callable[[str, int, int], None] | None = None, batch: int = 512) -> int:
    """Copy one collection's points (vectors and payloads) into another engine; idempotent, so re-runnable."""
    total = source.count(name)
    target.ensure_collection(name, dimension)
    copied = 0
    buffer = []
    for annotation_id, vector, payload in source.points(name, batch):
        buffer.append(point_from_payload(annotation_id, vector, payload))
        if len(buffer) >= batch:
            target.upsert(name, buffer, batch_size=batch)
            copied += len(buffer)
            buffer = []
            crashpoints.reached("migrate-batch")
            if progress:
                progress(name, copied, total)
    if buffer:
        target.upsert(name, buffer, batch_size=batch)
        copied += len(buffer)
        crashpoints.reached("migrate-batch")
    if progress:
        progress(name, copied, total)
    return copied


def copy_to_server(settings: Settings, url: str, api_key: str | None,
                   progress: Callable[[str, int, int], None] | None = None) -> dict[str, int]:
    """Copy the embedded index's collections (Qdrant Edge) to a Qdrant server or cluster, checked by count: how
    an embedded registry moves to servers without describing its photos again."""
    from registry.store.vectors_client import ClientIndex
    from registry.store.vectors_edge import EdgeIndex

    copied = {}
    with EdgeIndex(settings.vectors_path) as source, ClientIndex(url=url, api_key=api_key) as target:
        for name in source.collections():
            if source.count(name) == 0:
                continue
            copy_collection(source, target, name, source.dimension(name), progress)
            if target.count(name) != source.count(name):
                raise RuntimeError(f"copying {name}: {source.count(name)} points here, {target.count(name)} there")
            copied[name] = target.count(name)
    return copied


def migrate_legacy_vectors(settings: Settings, progress: Callable[[str, int, int], None] | None = None,
                           batch: int = 512) -> dict[str, Any]:
    """Copy every local-mode collection into Qdrant Edge; {"collections": {name: points}, "skipped": [...]}."""
    from registry.store.vectors_client import ClientIndex
    from registry.store.vectors_edge import EdgeIndex

    if not legacy_vectors_pending(settings):
        return {"collections": {}, "skipped": [], "moved": False}
    record_path = settings.vectors_path / RECORD
    settings.vectors_path.mkdir(parents=True, exist_ok=True)
    done: dict[str, int] = json.loads(record_path.read_text()) if record_path.exists() else {}
    moved: dict[str, int] = {}
    with ClientIndex(path=settings.qdrant_path) as old, EdgeIndex(settings.vectors_path) as new:
        for name in old.collections():
            total = old.count(name)
            if done.get(name) == total and name in new.collections() and new.count(name) == total:
                continue  # moved by an earlier, interrupted run
            copy_collection(old, new, name, old.dimension(name), progress, batch)
            count = new.count(name)
            if count != total:
                raise RuntimeError(f"moving {name}: {total} points in local mode, {count} in Qdrant Edge")
            done[name] = total
            moved[name] = total
            _write_record(record_path, done)
    (settings.qdrant_path / MOVED_MARKER).write_text(
        f"The vectors in this folder were moved into {settings.vectors_path} (Qdrant Edge).\n"
        "The registry no longer reads them; delete this folder once `registry doctor` reports consistent.\n")
    return {"collections": moved, "skipped": sorted(set(done) - set(moved)), "moved": True}
