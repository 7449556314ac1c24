"""The vector index on qdrant-client: a Qdrant server or cluster (`url`), or a local-mode folder (`path`).

Local mode is qdrant-client's prototyping store (every point unpickled at open, filters evaluated in Python): the
embedded store of registries made before Qdrant Edge, opened to migrate them and to compare engines.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from registry.store.vector_index import (
    INDEXED_INTEGERS,
    INDEXED_KEYWORDS,
    CandidateFilter,
    Hit,
    VectorIndex,
    VectorPoint,
)

_LOCAL_CLIENTS: dict[str, tuple[QdrantClient, int]] = {}
_LOCAL_LOCK = threading.Lock()


class ClientIndex(VectorIndex):
    """Thin, typed layer over qdrant-client. Server (`url`) or local mode (`path`), same calls."""

    def __init__(self, path: Path | None = None, url: str | None = None, api_key: str | None = None) -> None:
        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (qdrant-client local mode) or url (Qdrant server)")
        self._key = str(Path(path).resolve()) if path is not None else None
        self.engine = "qdrant-local" if path is not None else "qdrant-server"
        if self._key is not None:
            # local mode locks its folder: one client per storage path per process, shared and counted
            with _LOCAL_LOCK:
                client, users = _LOCAL_CLIENTS.get(self._key, (None, 0))
                if client is None:
                    Path(self._key).mkdir(parents=True, exist_ok=True)
                    client = QdrantClient(path=self._key)
                _LOCAL_CLIENTS[self._key] = (client, users + 1)
            self.client = client
        else:
            self.client = QdrantClient(url=url, api_key=api_key, timeout=60)
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._key is None:
            self.client.close()
            return
        with _LOCAL_LOCK:
            client, users = _LOCAL_CLIENTS[self._key]
            if users <= 1:
                del _LOCAL_CLIENTS[self._key]
                client.close()
            else:
                _LOCAL_CLIENTS[self._key] = (client, users - 1)

    # --- collections -----------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dimension: int) -> None:
        if self.client.collection_exists(name):
            info = self.client.get_collection(name)
            size = info.config.params.vectors.size  # type: ignore[union-attr]
            if size != dimension:
                raise ValueError(f"collection {name!r} holds {size}-d vectors, not {dimension}-d")
            return
        self.client.create_collection(
            name, vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
            **self._cluster_layout(),
        )
        if self._key is not None:
            return  # local mode filters by scanning; payload indexes only matter on a server
        for key in INDEXED_KEYWORDS:
            self.client.create_payload_index(name, key, field_schema=models.PayloadSchemaType.KEYWORD)
        for key in INDEXED_INTEGERS:
            self.client.create_payload_index(name, key, field_schema=models.PayloadSchemaType.INTEGER)

    @staticmethod
    def _cluster_layout() -> dict[str, int]:
        """Shards and replicas of a new collection on a cluster (`REGISTRY_QDRANT_SHARDS`, `..._REPLICAS`)."""
        layout = {}
        for key, variable in (("shard_number", "REGISTRY_QDRANT_SHARDS"),
                              ("replication_factor", "REGISTRY_QDRANT_REPLICAS")):
            if os.environ.get(variable):
                layout[key] = int(os.environ[variable])
        return layout

    def dimension(self, name: str) -> int:
        return int(self.client.get_collection(name).config.params.vectors.size)  # type: ignore[union-attr]

    def drop_collection(self, name: str) -> None:
        self.client.delete_collection(name)

    def collections(self) -> list[str]:
        return [c.name for c in self.client.get_collections().collections]

    # --- writes ----------------------------------------------------------------------------------------
    def upsert(self, collection: str, points: Iterable[VectorPoint], batch_size: int = 256) -> None:
        batch: list[models.PointStruct] = []
        for point in points:
            batch.append(models.PointStruct(id=point.annotation_id, vector=point.unit_vector().tolist(),
                                            payload=point.payload()))
            if len(batch) >= batch_size:
                self.client.upsert(collection, batch, wait=True)
                batch = []
        if batch:
            self.client.upsert(collection, batch, wait=True)

    def set_payload(self, collection: str, annotation_ids: list[int], values: dict[str, Any]) -> None:
        if annotation_ids:
            self.client.set_payload(collection, values, points=models.PointIdsList(points=annotation_ids), wait=True)

    def delete(self, collection: str, annotation_ids: list[int]) -> None:
        if annotation_ids:
            self.client.delete(collection, points_selector=models.PointIdsList(points=annotation_ids), wait=True)

    # --- reads -----------------------------------------------------------------------------------------
    def existing(self, collection: str, annotation_ids: list[int]) -> list[int]:
        if not annotation_ids:
            return []
        return [int(p.id) for p in self.client.retrieve(collection, ids=annotation_ids, with_payload=False,
                                                         with_vectors=False)]

    @staticmethod
    def translate(where: CandidateFilter) -> models.Filter:
        must: list[models.Condition] = [
            models.FieldCondition(key="species", match=models.MatchValue(value=where.species))]
        if where.viewpoint:
            must.append(models.Filter(should=[
                models.FieldCondition(key="viewpoint", match=models.MatchAny(any=where.viewpoints)),
                models.IsNullCondition(is_null=models.PayloadField(key="viewpoint")),
                models.IsEmptyCondition(is_empty=models.PayloadField(key="viewpoint")),
            ]))
        if where.location_ids is not None:
            must.append(models.FieldCondition(key="location_id", match=models.MatchAny(any=list(where.location_ids))))
        must_not: list[models.Condition] = [
            models.IsNullCondition(is_null=models.PayloadField(key="individual_id")),
            models.IsEmptyCondition(is_empty=models.PayloadField(key="individual_id")),
        ]
        if where.exclude_annotation_ids:
            must_not.append(models.HasIdCondition(has_id=list(where.exclude_annotation_ids)))
        if where.exclude_individuals:
            must_not.append(models.FieldCondition(key="individual_id",
                                                  match=models.MatchAny(any=list(where.exclude_individuals))))
        return models.Filter(must=must, must_not=must_not)

    def query(self, collection: str, vector: np.ndarray, limit: int, where: CandidateFilter) -> list[Hit]:
        response = self.client.query_points(collection, query=np.asarray(vector, dtype=np.float32).tolist(),
                                            limit=limit, query_filter=self.translate(where), with_payload=True)
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def grouped_query(self, collection: str, vector: np.ndarray, groups: int, group_size: int,
                      where: CandidateFilter) -> list[Hit]:
        """Qdrant's grouped query, grouped by individual."""
        response = self.client.query_points_groups(
            collection, query=np.asarray(vector, dtype=np.float32).tolist(), group_by="individual_id",
            limit=groups, group_size=group_size, query_filter=self.translate(where), with_payload=True)
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for g in response.groups for p in g.hits]

    def count(self, collection: str) -> int:
        return self.client.count(collection, exact=True).count

    def count_where(self, collection: str, where: CandidateFilter) -> int:
        return self.client.count(collection, count_filter=self.translate(where), exact=True).count

    def payloads(self, collection: str, batch: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
        offset = None
        while True:
            points, offset = self.client.scroll(collection, limit=batch, offset=offset, with_payload=True,
                                                with_vectors=False)
            for p in points:
                yield int(p.id), dict(p.payload or {})
            if offset is None:
                return

    def candidates_of(self, collection: str, species: str, viewpoint: str | None,
                      exclude_annotation_ids: Iterable[int] = (), exclude_individuals: Iterable[int] = (),
                      location_ids: Iterable[int] | None = None, batch: int = 4096) -> dict[int, int]:
        query_filter = self.translate(CandidateFilter.of(species, viewpoint, exclude_annotation_ids,
                                                         exclude_individuals, location_ids))
        out: dict[int, int] = {}
        offset = None
        while True:
            points, offset = self.client.scroll(collection, scroll_filter=query_filter, limit=batch, offset=offset,
                                                with_payload=["individual_id"], with_vectors=False)
            out.update({int(p.id): int((p.payload or {})["individual_id"]) for p in points})
            if offset is None:
                return out

    def vectors(self, collection: str, annotation_ids: list[int]) -> dict[int, np.ndarray]:
        if not annotation_ids:
            return {}
        points = self.client.retrieve(collection, ids=annotation_ids, with_vectors=True, with_payload=False)
        return {int(p.id): np.asarray(p.vector, dtype=np.float32) for p in points}
