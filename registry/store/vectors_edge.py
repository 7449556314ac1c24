"""The embedded vector index on Qdrant Edge: one shard per collection under `<data dir>/vectors/<collection>/`.

Qdrant Edge is Qdrant's storage and search engine in this process: segments on disk (memory-mapped), a write-ahead
log (an upsert that returned survives a `kill -9`), payload indexes, and HNSW graphs with int8-quantised vectors
(rescored with the originals) built by its optimizer. Edge runs the optimizer only when asked, so this backend asks
after every `OPTIMIZE_EVERY` written points and when the last user closes a shard it wrote to; until then new points
sit in a small appendable segment that is searched exactly.

A shard's WAL is locked by the process that opened it: like the registry's writer lock, one process at a time. In a
process, every `EdgeIndex` on the same folder shares the open shards (counted, closed by the last user).

Edge has no grouped query; `grouped_query` gives the same answer as Qdrant's `query_points_groups` (individuals
ordered by their best annotation, each with its best `group_size` annotations) from a few plain queries.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as edge

from registry.store.vector_index import (
    INDEXED_INTEGERS,
    INDEXED_KEYWORDS,
    CandidateFilter,
    Hit,
    VectorIndex,
    VectorPoint,
)

OPTIMIZE_EVERY = 50_000  # points written to a shard between optimizer runs (HNSW for full segments)
HNSW = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10_000}  # full_scan_threshold in KB
SEARCH_EF = 128
# int8 scores pick twice the candidates, the original vectors rank them (recall@10 0.99 -> 1.00 in the benchmark)
RESCORE = edge.QuantizationSearchParams(rescore=True, oversampling=2.0)
_GROUP_ROUNDS = 64  # plain queries that look for further individuals (each finds one at least)


class _Shards:
    """The shards of one vectors folder open in this process, shared by every EdgeIndex on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.users = 0
        self.open: dict[str, edge.EdgeShard] = {}
        self.written: dict[str, int] = {}  # points written since the shard's optimizer last ran
        self.dirty: set[str] = set()  # shards updated since their last flush
        self.lock = threading.RLock()


_ROOTS: dict[str, _Shards] = {}
_ROOTS_LOCK = threading.Lock()


def shard_config(dimension: int) -> edge.EdgeConfig:
    return edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(size=dimension, distance=edge.Distance.Cosine),
        hnsw_config=edge.HnswIndexConfig(**HNSW),
        quantization_config=edge.ScalarQuantizationConfig(edge.ScalarType.Int8, quantile=0.99),
    )


class EdgeIndex(VectorIndex):
    engine = "qdrant-edge"

    def __init__(self, root: Path) -> None:
        key = str(Path(root).resolve())
        with _ROOTS_LOCK:
            shards = _ROOTS.get(key)
            if shards is None:
                Path(key).mkdir(parents=True, exist_ok=True)
                shards = _ROOTS[key] = _Shards(Path(key))
            shards.users += 1
        self._shards = shards
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shards = self._shards
        with _ROOTS_LOCK:
            shards.users -= 1
            if shards.users > 0:
                return
            del _ROOTS[str(shards.root)]
        with shards.lock:
            for name, shard in shards.open.items():
                if shards.written.get(name):
                    shard.optimize()
                shard.flush()
                shard.close()
            shards.open.clear()
            shards.dirty.clear()

    # --- shards ------------------------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self._shards.root / name

    def _shard(self, name: str) -> edge.EdgeShard:
        shards = self._shards
        with shards.lock:
            shard = shards.open.get(name)
            if shard is None:
                if not (self._dir(name) / "edge_config.json").exists():
                    raise KeyError(f"no vector collection {name!r} in {shards.root}")
                try:
                    shard = edge.EdgeShard.load(str(self._dir(name)))
                except Exception as exc:  # the engine raises a plain Exception
                    if "WouldBlock" in str(exc):
                        raise RuntimeError(f"the vector index {self._dir(name)} is open in another process "
                                           "(one writer at a time)") from exc
                    raise
                shards.open[name] = shard
            return shard

    def dimension(self, name: str) -> int:
        config = json.loads((self._dir(name) / "edge_config.json").read_text())
        return int(config["vectors"][""]["size"])

    # --- collections -------------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dimension: int) -> None:
        with self._shards.lock:
            if (self._dir(name) / "edge_config.json").exists():
                size = self.dimension(name)
                if size != dimension:
                    raise ValueError(f"collection {name!r} holds {size}-d vectors, not {dimension}-d")
                return
            shutil.rmtree(self._dir(name), ignore_errors=True)  # a creation interrupted before its config
            shard = edge.EdgeShard.create(str(self._dir(name)), shard_config(dimension))
            for key in INDEXED_KEYWORDS:
                shard.update(edge.UpdateOperation.create_field_index(key, edge.PayloadSchemaType.Keyword))
            for key in INDEXED_INTEGERS:
                shard.update(edge.UpdateOperation.create_field_index(key, edge.PayloadSchemaType.Integer))
            shard.flush()
            self._shards.open[name] = shard

    def drop_collection(self, name: str) -> None:
        with self._shards.lock:
            shard = self._shards.open.pop(name, None)
            if shard is not None:
                shard.close()
            self._shards.written.pop(name, None)
            self._shards.dirty.discard(name)
            shutil.rmtree(self._dir(name), ignore_errors=True)

    def collections(self) -> list[str]:
        return sorted(p.parent.name for p in self._shards.root.glob("*/edge_config.json"))

    # --- writes ------------------------------------------------------------------------------------------
    def upsert(self, collection: str, points: Iterable[VectorPoint], batch_size: int = 256) -> None:
        shard = self._shard(collection)
        batch: list[edge.Point] = []
        for point in points:
            batch.append(edge.Point(point.annotation_id, point.unit_vector().tolist(), point.payload()))
            if len(batch) >= batch_size:
                self._write(collection, shard, batch)
                batch = []
        if batch:
            self._write(collection, shard, batch)

    def _write(self, collection: str, shard: edge.EdgeShard, batch: list[edge.Point]) -> None:
        shard.update(edge.UpdateOperation.upsert_points(batch))
        shards = self._shards
        with shards.lock:
            shards.dirty.add(collection)
            shards.written[collection] = shards.written.get(collection, 0) + len(batch)
            if shards.written[collection] >= OPTIMIZE_EVERY:
                shard.optimize()
                shards.written[collection] = 0

    def optimize(self) -> None:
        """Build what the optimizer has planned (HNSW graphs, merged segments) now, for every open shard."""
        with self._shards.lock:
            for name, shard in self._shards.open.items():
                shard.optimize()
                self._shards.written[name] = 0

    def flush(self) -> None:
        """Edge keeps updates in memory (and its WAL buffer) until flushed: SQL marks nothing indexed, and
        curation reports nothing done, before this returns."""
        shards = self._shards
        with shards.lock:
            for name in sorted(shards.dirty):
                shard = shards.open.get(name)
                if shard is not None:
                    shard.flush()
            shards.dirty.clear()

    def set_payload(self, collection: str, annotation_ids: list[int], values: dict[str, Any]) -> None:
        if annotation_ids:
            self._shard(collection).update(edge.UpdateOperation.set_payload(list(annotation_ids), values))
            with self._shards.lock:
                self._shards.dirty.add(collection)

    def delete(self, collection: str, annotation_ids: list[int]) -> None:
        if annotation_ids:
            self._shard(collection).update(edge.UpdateOperation.delete_points(list(annotation_ids)))
            with self._shards.lock:
                self._shards.dirty.add(collection)

    # --- reads -------------------------------------------------------------------------------------------
    def existing(self, collection: str, annotation_ids: list[int]) -> list[int]:
        if not annotation_ids:
            return []
        records = self._shard(collection).retrieve(list(annotation_ids), with_payload=False, with_vector=False)
        return [int(r.id) for r in records]

    @staticmethod
    def translate(where: CandidateFilter, more_must_not: list[Any] | None = None,
                  more_must: list[Any] | None = None) -> edge.Filter:
        must: list[Any] = [edge.FieldCondition(key="species", match=edge.MatchValue(where.species))]
        if where.viewpoint:
            must.append(edge.Filter(should=[
                edge.FieldCondition(key="viewpoint", match=edge.MatchAny(where.viewpoints)),
                edge.IsNullCondition("viewpoint"),
                edge.IsEmptyCondition("viewpoint"),
            ]))
        if where.location_ids is not None:
            must.append(edge.FieldCondition(key="location_id", match=edge.MatchAny(list(where.location_ids))))
        must_not: list[Any] = [edge.IsNullCondition("individual_id"), edge.IsEmptyCondition("individual_id")]
        if where.exclude_annotation_ids:
            must_not.append(edge.HasIdCondition(set(where.exclude_annotation_ids)))
        if where.exclude_individuals:
            must_not.append(edge.FieldCondition(key="individual_id",
                                                match=edge.MatchAny(list(where.exclude_individuals))))
        return edge.Filter(must=must + (more_must or []), must_not=must_not + (more_must_not or []))

    @staticmethod
    def _request(vector: np.ndarray, limit: int, query_filter: edge.Filter, exact: bool = False) -> edge.QueryRequest:
        return edge.QueryRequest(
            limit=limit, query=edge.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist()),
            filter=query_filter, with_payload=True, with_vector=False,
            params=edge.SearchParams(hnsw_ef=max(SEARCH_EF, limit), exact=exact, quantization=RESCORE))

    def query(self, collection: str, vector: np.ndarray, limit: int, where: CandidateFilter,
              exact: bool = False) -> list[Hit]:
        points = self._shard(collection).query(self._request(vector, limit, self.translate(where), exact))
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def grouped_query(self, collection: str, vector: np.ndarray, groups: int, group_size: int,
                      where: CandidateFilter) -> list[Hit]:
        """Individuals in the order of their best annotation: each plain query excludes the individuals already
        found, so the next ones come up; then one batched query per individual fills its group."""
        shard = self._shard(collection)
        limit = max(4 * groups * group_size, 32)
        found: dict[int, list[Hit]] = {}
        exhausted = False
        for round_ in range(_GROUP_ROUNDS):
            seen = [edge.FieldCondition(key="individual_id", match=edge.MatchAny(sorted(found)))] if found else []
            points = shard.query(self._request(vector, limit, self.translate(where, seen)))
            for p in points:
                individual = (p.payload or {}).get("individual_id")
                if individual not in found and len(found) >= groups:
                    continue
                members = found.setdefault(int(individual), [])
                if len(members) < group_size:
                    members.append(Hit(int(p.id), float(p.score), dict(p.payload or {})))
            if len(points) < limit:
                exhausted = round_ == 0  # the first query saw every candidate: the groups are complete
                break
            if len(found) >= groups:
                break
            limit = min(2 * limit, 4096)  # individuals with many photos each: look deeper
        short = [i for i, members in found.items() if len(members) < group_size]
        if short and group_size > 1 and not exhausted:
            requests = [self._request(vector, group_size, self.translate(
                where, more_must=[edge.FieldCondition(key="individual_id", match=edge.MatchValue(i))]))
                for i in short]
            for individual, points in zip(short, shard.query_batch(edge.QueryBatchRequest(requests)), strict=True):
                found[individual] = [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in points]
        return [hit for members in found.values() for hit in members]

    def count(self, collection: str) -> int:
        return int(self._shard(collection).count(edge.CountRequest(exact=True)))

    def count_where(self, collection: str, where: CandidateFilter) -> int:
        return int(self._shard(collection).count(edge.CountRequest(exact=True, filter=self.translate(where))))

    def _scroll(self, collection: str, batch: int, query_filter: edge.Filter | None,
                with_payload: Any) -> Iterator[Any]:
        shard = self._shard(collection)
        offset = None
        while True:
            records, offset = shard.scroll(edge.ScrollRequest(offset=offset, limit=batch, filter=query_filter,
                                                              with_payload=with_payload, with_vector=False))
            yield from records
            if offset is None:
                return

    def payloads(self, collection: str, batch: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
        for record in self._scroll(collection, batch, None, True):
            yield int(record.id), dict(record.payload or {})

    def candidates_of(self, collection: str, species: str, viewpoint: str | None,
                      exclude_annotation_ids: Iterable[int] = (), exclude_individuals: Iterable[int] = (),
                      location_ids: Iterable[int] | None = None, batch: int = 4096) -> dict[int, int]:
        where = CandidateFilter.of(species, viewpoint, exclude_annotation_ids, exclude_individuals, location_ids)
        return {int(r.id): int((r.payload or {})["individual_id"])
                for r in self._scroll(collection, batch, self.translate(where),
                                      edge.PayloadSelector.Include(["individual_id"]))}

    def vectors(self, collection: str, annotation_ids: list[int]) -> dict[int, np.ndarray]:
        if not annotation_ids:
            return {}
        records = self._shard(collection).retrieve(list(annotation_ids), with_payload=False, with_vector=True)
        out = {}
        for record in records:
            vector = record.vector
            if isinstance(vector, dict):  # the default (unnamed) vector
                vector = vector.get("")
            out[int(record.id)] = np.asarray(vector, dtype=np.float32)
        return out
