"""The vector index: one collection per embedder version, one interface, two engines.

- **Qdrant Edge** (`qdrant-edge-py`, the embedded default): Qdrant's own engine in this process, one shard per
  collection under `<data dir>/vectors/`, with HNSW, payload indexes, a write-ahead log and on-disk storage.
- **Qdrant server or cluster** through qdrant-client (`qdrant_url`), for scale and several writers. The same
  backend also opens qdrant-client's *local mode* folders (`<data dir>/qdrant/`, the embedded store of registries
  made before Qdrant Edge): only to migrate them (`registry vectors migrate`) and to compare engines in tests and
  benchmarks.

Point ids are annotation ids, so SQL and the index can always be compared one to one. Payloads carry what a
filter or a consistency check needs: annotation, photo, individual, species, viewpoint, survey, location.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    pass

ENGINES = ("qdrant-edge", "qdrant-server", "qdrant-local")
# payload keys with an index: every filter of `CandidateFilter` uses them
INDEXED_KEYWORDS = ("species", "viewpoint")
INDEXED_INTEGERS = ("individual_id", "location_id", "survey_id")


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

    def payload(self) -> dict[str, Any]:
        return {"annotation_id": self.annotation_id, "image_id": self.image_id, "individual_id": self.individual_id,
                "species": self.species, "viewpoint": self.viewpoint, "survey_id": self.survey_id,
                "location_id": self.location_id}

    def unit_vector(self) -> np.ndarray:
        vector = np.asarray(self.vector, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError(f"annotation {self.annotation_id}: embedding is zero or not finite")
        return vector / norm


@dataclass(frozen=True)
class Hit:
    annotation_id: int
    score: float  # cosine similarity
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def individual_id(self) -> int | None:
        return self.payload.get("individual_id")


@dataclass(frozen=True)
class CandidateFilter:
    """The points a query of this species and viewpoint may match, whatever the engine: same species; an
    individual (a rejected sighting's point has none); for a known viewpoint, references of that viewpoint, of
    `both`, or of unknown viewpoint (an unknown query viewpoint matches every viewpoint); with `location_ids`, only
    references photographed at those locations; never the excluded annotations or individuals."""

    species: str
    viewpoint: str | None = None
    exclude_annotation_ids: tuple[int, ...] = ()
    exclude_individuals: tuple[int, ...] = ()
    location_ids: tuple[int, ...] | None = None

    @classmethod
    def of(cls, species: str, viewpoint: str | None = None, exclude_annotation_ids: Iterable[int] = (),
           exclude_individuals: Iterable[int] = (), location_ids: Iterable[int] | None = None) -> CandidateFilter:
        return cls(species, viewpoint, tuple(exclude_annotation_ids), tuple(exclude_individuals),
                   tuple(sorted(location_ids)) if location_ids is not None else None)

    @property
    def viewpoints(self) -> list[str]:
        return sorted({self.viewpoint, "both"}) if self.viewpoint else []


def collection_name(embedder_version: str) -> str:
    """A collection per embedder version: a model change can never mix vectors from two models."""
    return "emb_" + re.sub(r"[^A-Za-z0-9_-]", "_", embedder_version)


class VectorIndex(ABC):
    """What the registry asks of a vector engine. Every method takes the collection by name."""

    engine: str  # one of ENGINES

    # --- lifecycle ---------------------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- collections -------------------------------------------------------------------------------------
    @abstractmethod
    def ensure_collection(self, name: str, dimension: int) -> None:
        """Create the collection (with its payload indexes) or check that it holds `dimension`-d vectors."""

    @abstractmethod
    def dimension(self, name: str) -> int:
        """The size of the collection's vectors."""

    @abstractmethod
    def drop_collection(self, name: str) -> None: ...

    @abstractmethod
    def collections(self) -> list[str]: ...

    # --- writes ------------------------------------------------------------------------------------------
    @abstractmethod
    def upsert(self, collection: str, points: Iterable[VectorPoint], batch_size: int = 256) -> None:
        """Write points (L2-normalised; a zero or non-finite vector is an error naming its annotation)."""

    def flush(self) -> None:
        """Make every write so far durable (on disk, or acknowledged by the server) before SQL says so. Engines
        whose writes are durable when they return (a Qdrant server, `wait=True`) have nothing to do."""
        return None

    @abstractmethod
    def set_payload(self, collection: str, annotation_ids: list[int], values: dict[str, Any]) -> None:
        """Set payload keys of these points (e.g. the location, for points written before it was carried)."""

    def set_individual(self, collection: str, annotation_ids: list[int], individual_id: int | None) -> None:
        """Point the annotations' vectors at an individual (None: no longer a candidate). Annotations without
        vectors yet (pending) are skipped: they get the right payload when they are indexed."""
        existing = self.existing(collection, annotation_ids)
        if existing:
            self.set_payload(collection, existing, {"individual_id": individual_id})

    @abstractmethod
    def delete(self, collection: str, annotation_ids: list[int]) -> None: ...

    # --- reads -------------------------------------------------------------------------------------------
    @abstractmethod
    def existing(self, collection: str, annotation_ids: list[int]) -> list[int]:
        """Which of these annotations have a point."""

    @abstractmethod
    def query(self, collection: str, vector: np.ndarray, limit: int, where: CandidateFilter) -> list[Hit]:
        """The `limit` candidates (see `CandidateFilter`) most similar to `vector` (cosine)."""

    def search(self, collection: str, vector: np.ndarray, limit: int, species: str, viewpoint: str | None = None,
               exclude_annotation_ids: Iterable[int] = ()) -> list[Hit]:
        """Top-`limit` candidate annotations by cosine similarity."""
        return self.query(collection, _unit(vector), limit, CandidateFilter.of(species, viewpoint,
                                                                              exclude_annotation_ids))

    def search_individuals(
        self, collection: str, vector: np.ndarray, individuals: int, images_per_individual: int, species: str,
        viewpoint: str | None = None, exclude_annotation_ids: Iterable[int] = (),
        exclude_individuals: Iterable[int] = (), location_ids: Iterable[int] | None = None,
    ) -> list[Hit]:
        """The `individuals` most similar individuals (by their best annotation), each with its
        `images_per_individual` most similar annotations, however many photos each individual has."""
        where = CandidateFilter.of(species, viewpoint, exclude_annotation_ids, exclude_individuals, location_ids)
        hits = self.grouped_query(collection, _unit(vector), individuals, images_per_individual, where)
        return sorted(hits, key=lambda h: -h.score)

    @abstractmethod
    def grouped_query(self, collection: str, vector: np.ndarray, groups: int, group_size: int,
                      where: CandidateFilter) -> list[Hit]: ...

    @abstractmethod
    def count(self, collection: str) -> int: ...

    @abstractmethod
    def count_where(self, collection: str, where: CandidateFilter) -> int:
        """How many candidates a query under `where` has (a payload-index count, no vectors read)."""

    @abstractmethod
    def payloads(self, collection: str, batch: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every point's id and payload (for consistency checks against the catalog)."""

    @abstractmethod
    def candidates_of(self, collection: str, species: str, viewpoint: str | None,
                      exclude_annotation_ids: Iterable[int] = (), exclude_individuals: Iterable[int] = (),
                      location_ids: Iterable[int] | None = None, batch: int = 4096) -> dict[int, int]:
        """Every annotation a query of this species and viewpoint may match -> its individual: the reference set
        of the one-vs-many local scoring."""

    @abstractmethod
    def vectors(self, collection: str, annotation_ids: list[int]) -> dict[int, np.ndarray]: ...

    def points(self, collection: str, batch: int = 1024) -> Iterator[tuple[int, np.ndarray, dict[str, Any]]]:
        """Every point with its vector and payload (to move a collection to another engine)."""
        ids: list[int] = []
        payload_of: dict[int, dict[str, Any]] = {}
        for annotation_id, payload in self.payloads(collection, batch):
            ids.append(annotation_id)
            payload_of[annotation_id] = payload
            if len(ids) >= batch:
                yield from self._with_vectors(collection, ids, payload_of)
                ids, payload_of = [], {}
        if ids:
            yield from self._with_vectors(collection, ids, payload_of)

    def _with_vectors(self, collection: str, ids: list[int], payload_of: dict[int, dict[str, Any]],
                      ) -> Iterator[tuple[int, np.ndarray, dict[str, Any]]]:
        vectors = self.vectors(collection, ids)
        for annotation_id in ids:
            if annotation_id in vectors:
                yield annotation_id, vectors[annotation_id], payload_of[annotation_id]


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def point_from_payload(annotation_id: int, vector: np.ndarray, payload: dict[str, Any]) -> VectorPoint:
    return VectorPoint(annotation_id, vector, payload.get("individual_id"), payload["species"],
                       payload.get("viewpoint"), payload.get("survey_id"), payload.get("image_id"),
                       payload.get("location_id"))
