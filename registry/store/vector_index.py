"""The vector index: one Qdrant collection per embedder version, same code for embedded and server Qdrant.

Point ids are image ids, so SQL and Qdrant can always be compared one to one. Payloads carry what a
filter or a consistency check needs: image, individual, species, viewpoint, survey.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

_LOCAL_CLIENTS: dict[str, tuple[QdrantClient, int]] = {}
_LOCAL_LOCK = threading.Lock()


@dataclass(frozen=True)
class VectorPoint:
    annotation_id: int
    vector: np.ndarray
    individual_id: int | None
    species: str
    viewpoint: str | None = None
    survey_id: int | None = None
    image_id: int | None = None  # the photo the annotation is in
    location_id: int | None = None


@dataclass(frozen=True)
class Hit:
    annotation_id: int
    score: float  # cosine similarity
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def individual_id(self) -> int | None:
        return self.payload.get("individual_id")


def collection_name(embedder_version: str) -> str:
    """A collection per embedder version: a model change can never mix vectors from two models."""
    return "emb_" + re.sub(r"[^A-Za-z0-9_-]", "_", embedder_version)


class VectorIndex:
    """Thin, typed layer over qdrant-client. Embedded (`path`) or server (`url`), same calls."""

    def __init__(self, path: Path | None = None, url: str | None = None, api_key: str | None = None) -> None:
        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (embedded Qdrant) or url (Qdrant server)")
        self._key = str(Path(path).resolve()) if path is not None else None
        if self._key is not None:
            # embedded Qdrant locks its folder: one client per storage path per process, shared and counted
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

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- collections -----------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dimension: int) -> None:
        if self.client.collection_exists(name):
            info = self.client.get_collection(name)
            size = info.config.params.vectors.size  # type: ignore[union-attr]
            if size != dimension:
                raise ValueError(f"collection {name!r} holds {size}-d vectors, not {dimension}-d")
            return
        self.client.create_collection(
            name, vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE)
        )
        if self._key is not None:
            return  # embedded Qdrant filters by scanning; payload indexes only matter on a server
        for key, schema in (("species", models.PayloadSchemaType.KEYWORD),
                            ("viewpoint", models.PayloadSchemaType.KEYWORD),
                            ("individual_id", models.PayloadSchemaType.INTEGER),
                            ("location_id", models.PayloadSchemaType.INTEGER)):
            self.client.create_payload_index(name, key, field_schema=schema)

    def drop_collection(self, name: str) -> None:
        self.client.delete_collection(name)

    def collections(self) -> list[str]:
        return [c.name for c in self.client.get_collections().collections]

    # --- writes ----------------------------------------------------------------------------------------
    def upsert(self, collection: str, points: Iterable[VectorPoint], batch_size: int = 256) -> None:
        batch: list[models.PointStruct] = []
        for point in points:
            vector = np.asarray(point.vector, dtype=np.float32)
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(norm) or norm == 0:
                raise ValueError(f"annotation {point.annotation_id}: embedding is zero or not finite")
            batch.append(models.PointStruct(
                id=point.annotation_id,
                vector=(vector / norm).tolist(),
                payload={"annotation_id": point.annotation_id, "image_id": point.image_id,
                         "individual_id": point.individual_id, "species": point.species,
                         "viewpoint": point.viewpoint, "survey_id": point.survey_id,
                         "location_id": point.location_id},
            ))
            if len(batch) >= batch_size:
                self.client.upsert(collection, batch, wait=True)
                batch = []
        if batch:
            self.client.upsert(collection, batch, wait=True)

    def set_individual(self, collection: str, annotation_ids: list[int], individual_id: int | None) -> None:
        """Point the images' vectors at an individual (None: no longer a candidate). Images without vectors yet
        (pending) are skipped: they get the right payload when they are indexed."""
        existing = [int(p.id) for p in self.client.retrieve(collection, ids=annotation_ids, with_payload=False,
                                                              with_vectors=False)] if annotation_ids else []
        if existing:
            self.client.set_payload(collection, {"individual_id": individual_id},
                                    points=models.PointIdsList(points=existing), wait=True)

    def set_payload(self, collection: str, annotation_ids: list[int], values: dict[str, Any]) -> None:
        """Set payload keys of these points (e.g. the location, for points written before it was carried)."""
        if annotation_ids:
            self.client.set_payload(collection, values, points=models.PointIdsList(points=annotation_ids), wait=True)

    def delete(self, collection: str, annotation_ids: list[int]) -> None:
        if annotation_ids:
            self.client.delete(collection, points_selector=models.PointIdsList(points=annotation_ids), wait=True)

    # --- reads -----------------------------------------------------------------------------------------
    @staticmethod
    def candidate_filter(species: str, viewpoint: str | None, exclude_annotation_ids: Iterable[int] = (),
                         exclude_individuals: Iterable[int] = (),
                         location_ids: Iterable[int] | None = None) -> models.Filter:
        """Points a query of this species and viewpoint may match: same species; an individual (a rejected
        sighting's point has none); and for a known viewpoint, references of that viewpoint, of `both`, or of
        unknown viewpoint (an unknown query viewpoint matches every viewpoint); with `location_ids`, only references
        photographed at those locations."""
        must: list[models.Condition] = [models.FieldCondition(key="species", match=models.MatchValue(value=species))]
        if viewpoint:
            must.append(models.Filter(should=[
                models.FieldCondition(key="viewpoint", match=models.MatchAny(any=sorted({viewpoint, "both"}))),
                models.IsNullCondition(is_null=models.PayloadField(key="viewpoint")),
                models.IsEmptyCondition(is_empty=models.PayloadField(key="viewpoint")),
            ]))
        if location_ids is not None:  # identification scoped to some locations (a catalogue spanning regions)
            must.append(models.FieldCondition(key="location_id", match=models.MatchAny(any=sorted(location_ids))))
        must_not: list[models.Condition] = [
            models.IsNullCondition(is_null=models.PayloadField(key="individual_id")),
            models.IsEmptyCondition(is_empty=models.PayloadField(key="individual_id")),
        ]
        excluded = list(exclude_annotation_ids)
        if excluded:
            must_not.append(models.HasIdCondition(has_id=excluded))
        hidden = list(exclude_individuals)
        if hidden:  # simulated unknown animals: their own individual is hidden from the search
            must_not.append(models.FieldCondition(key="individual_id", match=models.MatchAny(any=hidden)))
        return models.Filter(must=must, must_not=must_not)

    def search(
        self, collection: str, vector: np.ndarray, limit: int, species: str, viewpoint: str | None = None,
        exclude_annotation_ids: Iterable[int] = (),
    ) -> list[Hit]:
        """Top-`limit` candidate images (see `candidate_filter`) by cosine similarity."""
        vector = np.asarray(vector, dtype=np.float32)
        response = self.client.query_points(
            collection, query=(vector / np.linalg.norm(vector)).tolist(), limit=limit,
            query_filter=self.candidate_filter(species, viewpoint, exclude_annotation_ids), with_payload=True,
        )
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def search_individuals(
        self, collection: str, vector: np.ndarray, individuals: int, images_per_individual: int, species: str,
        viewpoint: str | None = None, exclude_annotation_ids: Iterable[int] = (),
        exclude_individuals: Iterable[int] = (), location_ids: Iterable[int] | None = None,
    ) -> list[Hit]:
        """The `individuals` most similar individuals (Qdrant's grouped query, grouped by individual), each with
        its `images_per_individual` most similar annotations, however many photos each individual has."""
        vector = np.asarray(vector, dtype=np.float32)
        response = self.client.query_points_groups(
            collection, query=(vector / np.linalg.norm(vector)).tolist(), group_by="individual_id",
            limit=individuals, group_size=images_per_individual,
            query_filter=self.candidate_filter(species, viewpoint, exclude_annotation_ids, exclude_individuals,
                                               location_ids),
            with_payload=True,
        )
        hits = [Hit(int(p.id), float(p.score), dict(p.payload or {})) for g in response.groups for p in g.hits]
        return sorted(hits, key=lambda h: -h.score)

    def count(self, collection: str) -> int:
        return self.client.count(collection, exact=True).count

    def payloads(self, collection: str, batch: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every point's id and payload (for consistency checks against the catalog)."""
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
        """Every annotation a query of this species and viewpoint may match (`candidate_filter`) -> its individual:
        the reference set of the one-vs-many local scoring."""
        query_filter = self.candidate_filter(species, viewpoint, exclude_annotation_ids, exclude_individuals,
                                             location_ids)
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
