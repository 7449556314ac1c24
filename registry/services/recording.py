"""The write path: photos, sightings and decisions into SQL, vectors into the index, in an order that survives
a crash at any point.

Write order: (1) local features are cached (keyed by content and box, harmless if orphaned); (2) one SQL
transaction writes the photo, its annotation as `pending` and the sighting (and decision); (3) the vectors are
upserted with the individual in their payload; (4) the annotation is marked `indexed`. A crash after (2) leaves a
pending annotation that
`resume_pending()` re-indexes from its file — every writing command runs it before its first write; a crash
before (2) leaves nothing in SQL, and re-running the same command redoes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from PIL import Image as PILImage
from sqlalchemy.orm import Session

from registry.matching.imaging import ImageError
from registry.matching.pipeline import Described
from registry.store import crashpoints
from registry.store.feature_store import feature_key
from registry.store.tables import Annotation, region_of, utcnow
from registry.store.vector_index import VectorPoint

if TYPE_CHECKING:
    from registry.services.port import RegistryPort as Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhotoRow:
    """One photo to record: from a manifest row, a folder, or a single identify call."""

    line: int  # line number in the source CSV (the header is line 1); 0 when there is no file
    image: Path
    species: str
    identity: str | None = None
    viewpoint: str | None = None
    captured_at: datetime | None = None
    latitude: float | None = None
    longitude: float | None = None
    location: str | None = None  # a camera station or site name (Camtrap DP locationName)
    deployment: str | None = None  # one camera's operating interval at the location (Camtrap DP deploymentID)
    sex: str | None = None  # of a labelled individual: female, male, unknown
    life_stage: str | None = None  # adult, subadult, juvenile, unknown
    box: tuple[float, float, float, float] | None = None  # the animal's normalised x, y, w, h; None: whole photo
    source: str = "whole-image"  # who drew the box: manifest, megadetector, camtrap-dp, manual
    confidence: float | None = None  # the detector's confidence in the box
    sequence: str | None = None  # the event (burst) the photo belongs to: the source's id or one made from time
    time_zone: str | None = None  # the IANA zone of its location's clocks (a manifest's `time_zone` column)

    @property
    def region(self) -> str:
        return region_of(self.box)


class IndexItem(NamedTuple):
    """What the vector index gets for one annotation."""

    annotation_id: int
    described: Described
    individual_id: int | None
    species: str
    viewpoint: str | None
    survey_id: int | None
    image_id: int | None
    location_id: int | None


class Recorder:
    """Writes photos, sightings and vectors for one open registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._resumed = False

    def add_annotation(self, session: Session, row: PhotoRow, sha: str, described: Described,
                       survey: str | None) -> Annotation:
        """The photo (added on its first animal) and this animal's annotation, placed in its event."""
        catalog = self.registry.catalog
        image = catalog.image_by_sha(session, sha)
        if image is None:
            survey_row = catalog.survey(session, survey) if survey else None
            location = (catalog.location(session, row.location, row.latitude, row.longitude, row.time_zone)
                        if row.location else None)
            deployment = catalog.deployment(session, row.deployment, location) if row.deployment else None
            if location is None and deployment is not None and deployment.location_id is not None:
                location_id: int | None = deployment.location_id
            else:
                location_id = location.id if location else None
            width, height = described.local.image_size
            if row.box is not None:  # the described picture is a crop: the photo's own size
                with PILImage.open(row.image) as photo:
                    width, height = photo.size
            image = catalog.add_image(
                session, sha256=sha, path=catalog.paths.stored(row.image), captured_at=row.captured_at,
                latitude=row.latitude, longitude=row.longitude, survey_id=survey_row.id if survey_row else None,
                location_id=location_id, deployment_id=deployment.id if deployment else None, width=width,
                height=height)
        event = None
        if row.sequence:
            event = catalog.event(session, f"{survey or '-'}/{row.sequence}", image.deployment_id, row.captured_at)
        return catalog.add_annotation(session, image, row.species, row.viewpoint, row.box, row.source,
                                      row.confidence, event)

    def item(self, annotation: Annotation, described: Described, individual_id: int | None) -> IndexItem:
        image = annotation.image
        return IndexItem(annotation.id, described, individual_id, annotation.species, annotation.viewpoint,
                         image.survey_id, image.id, image.location_id)

    def index_many(self, items: list[IndexItem]) -> None:
        """Upsert vectors (one call per collection), make them durable, then mark the annotations indexed: the
        last step of a write. SQL never says `indexed` about a vector that a power cut could still lose."""
        registry = self.registry
        crashpoints.reached("after-sql")
        for position, (name, collection) in enumerate(registry.collections.items()):
            if position:
                crashpoints.reached("between-collections")
            registry.index.upsert(collection, [
                VectorPoint(item.annotation_id, item.described.vectors[name], item.individual_id, item.species,
                            item.viewpoint, item.survey_id, item.image_id, item.location_id) for item in items])
        registry.index.flush()
        crashpoints.reached("after-vectors")
        registry.catalog.mark_indexed([item.annotation_id for item in items])
        crashpoints.reached("after-indexed")

    def write(self, batch: list[tuple[PhotoRow, str, Described]], survey: str | None,
              record: Callable[[Session, list[Annotation]], list[int | None]]) -> list[IndexItem]:
        """The crash-safe write protocol, written once for every writer (reference ingest, identify ingest,
        `identify --record`, the API and the workspace): (1) local features cached; (2) one SQL transaction with
        the photos, their annotations (pending) and what `record` adds for them (sightings, a decision, new
        individuals), which returns the individual of each annotation; (3) vectors upserted and flushed;
        (4) annotations marked indexed. An exception anywhere in (2) leaves nothing in SQL; a crash after it
        leaves pending annotations that `resume_pending` finishes."""
        self.resume_pending()
        registry = self.registry
        for row, sha, described in batch:
            self.cache_features(feature_key(sha, row.region), described)
        crashpoints.reached("after-features")
        with registry.catalog.transaction() as session:
            annotations = [self.add_annotation(session, row, sha, described, survey) for row, sha, described in batch]
            crashpoints.reached("after-annotations")
            individuals = record(session, annotations)
            crashpoints.reached("before-commit")
            items = [self.item(annotation, described, individual)
                     for annotation, (_row, _sha, described), individual in zip(annotations, batch, individuals,
                                                                                 strict=True)]
        try:
            self.index_many(items)
        except BaseException:
            self._resumed = False  # committed but not indexed: this process's next write finishes it first
            raise
        return items

    def record_references(self, batch: list[tuple[PhotoRow, str, Described]], survey: str | None,
                          match_codes: bool = True) -> None:
        """Record a batch of labelled photos: one SQL transaction, one upsert per collection. A manifest identity
        that is an individual's name or (with `match_codes`) its code, of this species, is that individual."""
        catalog = self.registry.catalog

        def label(session: Session, annotations: list[Annotation]) -> list[int | None]:
            individuals: list[int | None] = []
            for annotation, (row, _sha, _described) in zip(annotations, batch, strict=True):
                individual = catalog.individual_by_label(session, row.species, row.identity,  # type: ignore[arg-type]
                                                         match_codes)
                if individual is None:
                    individual = catalog.new_individual(session, row.species, name=row.identity)
                elif individual.merged_into_id is not None:
                    individual = catalog.resolve(session, individual.code)
                for name in ("sex", "life_stage"):  # a manifest fills what is unknown, never overwrites
                    value = getattr(row, name)
                    if value and value != "unknown" and getattr(individual, name) == "unknown":
                        setattr(individual, name, value)
                catalog.add_sighting(session, annotation, individual, "reference")
                crashpoints.reached("after-sighting")
                individuals.append(individual.id)
            catalog.reconcile_retired(session, set(individuals))  # a label brings a retired individual back
            return individuals

        self.write(batch, survey, label)

    # --- after a crash ---------------------------------------------------------------------------------
    def resume_pending(self, force: bool = False) -> int:
        """Index annotations whose SQL rows were written but whose vectors were never confirmed (a crash).

        Run once per process before its first write (and by `doctor --repair`). With several writers sharing
        server stores, only writes older than `resume_grace_seconds` are taken: a younger pending annotation is
        most likely another worker's write in flight.
        """
        if self._resumed and not force:
            return 0
        self._resumed = True
        settings = self.registry.settings
        older_than = None if settings.needs_exclusive_lock else utcnow() - timedelta(
            seconds=settings.resume_grace_seconds)
        pending = self.registry.catalog.pending_annotations(older_than)
        return len(self.reindex(pending)[0]) if pending else 0

    def cache_features(self, key: str, described: Described) -> None:
        """Cache a photo's local features: ALIKED's, and the second matcher's where it was described by one."""
        registry = self.registry
        registry.features.put(key, described.local)
        second = registry.pipeline.second if described.second is not None else None
        if second is not None:
            registry.features_of(second).put(key, described.second)

    def reindex(self, annotation_ids: list[int]) -> tuple[list[int], list[str]]:
        """Describe annotations again from their photos and write their vectors (and cached features), then mark
        them indexed. Returns the annotations done and the problems (a file gone or damaged: it stays pending)."""
        registry = self.registry
        registry.catalog.mark_pending(annotation_ids)
        states = registry.catalog.annotation_states(annotation_ids)
        done, problems = [], []
        for annotation_id, state in states.items():
            path = Path(state["path"])
            described = registry.identification.describe([path], [state["species"]], [state["viewpoint"]],
                                                          [state["box"]])[0]
            if isinstance(described, ImageError):
                problems.append(f"annotation {annotation_id} cannot be re-indexed, it stays pending: {described}")
                log.warning(problems[-1])
                continue
            self.cache_features(state["feature_key"], described)
            self.index_many([IndexItem(annotation_id, described, state["individual_id"], state["species"],
                                       state["viewpoint"], state["survey_id"], state["image_id"],
                                       state["location_id"])])
            done.append(annotation_id)
        return done, problems
