"""The write path: photos, sightings and decisions into SQL, vectors into the index, in an order that survives
a crash at any point.

Write order: (1) local features are cached (keyed by content, harmless if orphaned); (2) one SQL transaction
writes the image as `pending` with its sighting (and decision); (3) the vectors are upserted with the individual
in their payload; (4) the image is marked `indexed`. A crash after (2) leaves a pending image that
`resume_pending()` re-indexes from its file — every writing command runs it before its first write; a crash
before (2) leaves nothing in SQL, and re-running the same command redoes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from registry.matching.imaging import ImageError
from registry.matching.pipeline import Described
from registry.store import crashpoints
from registry.store.tables import Image, utcnow
from registry.store.vector_index import VectorPoint

if TYPE_CHECKING:
    from registry.services.registry import Registry

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


IndexItem = tuple[int, Described, int, PhotoRow, int | None]  # image id, description, individual, row, survey


class Recorder:
    """Writes photos, sightings and vectors for one open registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._resumed = False

    def add_image(self, session: Session, row: PhotoRow, sha: str, described: Described,
                  survey: str | None) -> Image:
        catalog = self.registry.catalog
        survey_row = catalog.survey(session, survey) if survey else None
        location = catalog.location(session, row.location, row.latitude, row.longitude) if row.location else None
        deployment = catalog.deployment(session, row.deployment, location) if row.deployment else None
        if location is None and deployment is not None and deployment.location_id is not None:
            location_id: int | None = deployment.location_id
        else:
            location_id = location.id if location else None
        width, height = described.local.image_size
        return catalog.add_image(
            session, sha256=sha, path=catalog.paths.stored(row.image), species=row.species,
            viewpoint=row.viewpoint, captured_at=row.captured_at, latitude=row.latitude, longitude=row.longitude,
            survey_id=survey_row.id if survey_row else None, location_id=location_id,
            deployment_id=deployment.id if deployment else None, width=width, height=height)

    def index_many(self, items: list[IndexItem]) -> None:
        """Upsert vectors (one call per collection), then mark the images indexed: the last step of a write."""
        registry = self.registry
        crashpoints.reached("after-sql")
        for position, (name, collection) in enumerate(registry.collections.items()):
            if position:
                crashpoints.reached("between-collections")
            registry.index.upsert(collection, [VectorPoint(image_id, described.vectors[name], individual_id,
                                                           row.species, row.viewpoint, survey_id)
                                               for image_id, described, individual_id, row, survey_id in items])
        crashpoints.reached("after-vectors")
        registry.catalog.mark_indexed([item[0] for item in items])
        crashpoints.reached("after-indexed")

    def record_references(self, batch: list[tuple[PhotoRow, str, Described]], survey: str | None,
                          match_codes: bool = True) -> None:
        """Record a batch of labelled photos: one SQL transaction, one upsert per collection. A manifest identity
        that is an individual's name or (with `match_codes`) its code, of this species, is that individual."""
        self.resume_pending()
        registry = self.registry
        for _, sha, described in batch:
            registry.features.put(sha, described.local)
        crashpoints.reached("after-features")
        written: list[IndexItem] = []
        with registry.catalog.transaction() as session:
            for row, sha, described in batch:
                image = self.add_image(session, row, sha, described, survey)
                individual = registry.catalog.individual_by_label(session, row.species, row.identity,  # type: ignore[arg-type]
                                                                  match_codes)
                if individual is None:
                    individual = registry.catalog.new_individual(session, row.species, name=row.identity)
                elif individual.merged_into_id is not None:
                    individual = registry.catalog.resolve(session, individual.code)
                if individual.retired_at is not None:  # a label brings a retired individual back
                    individual.retired_at = None
                for name in ("sex", "life_stage"):  # a manifest fills what is unknown, never overwrites
                    value = getattr(row, name)
                    if value and value != "unknown" and getattr(individual, name) == "unknown":
                        setattr(individual, name, value)
                registry.catalog.add_sighting(session, image, individual, "reference")
                written.append((image.id, described, individual.id, row, image.survey_id))
        self.index_many(written)

    # --- after a crash ---------------------------------------------------------------------------------
    def resume_pending(self, force: bool = False) -> int:
        """Index images whose SQL rows were written but whose vectors were never confirmed (a crash).

        Run once per process before its first write (and by `doctor --repair`). With several writers sharing
        server stores, only writes older than `resume_grace_seconds` are taken: a younger pending image is most
        likely another worker's write in flight.
        """
        if self._resumed and not force:
            return 0
        self._resumed = True
        settings = self.registry.settings
        older_than = None if settings.needs_exclusive_lock else utcnow() - timedelta(
            seconds=settings.resume_grace_seconds)
        pending = [i.id for i in self.registry.catalog.pending_images(older_than)]
        return len(self.reindex(pending)[0]) if pending else 0

    def reindex(self, image_ids: list[int]) -> tuple[list[int], list[str]]:
        """Describe images again from their files and write their vectors (and cached features), then mark
        them indexed. Returns the images done and the problems (a file gone or damaged: it stays pending)."""
        registry = self.registry
        registry.catalog.mark_pending(image_ids)
        states = registry.catalog.image_states(image_ids)
        done, problems = [], []
        for image_id, state in states.items():
            path = Path(state["path"])
            described = registry.identification.describe([path], [state["species"]], [state["viewpoint"]])[0]
            if isinstance(described, ImageError):
                problems.append(f"image {image_id} cannot be re-indexed, it stays pending: {described}")
                log.warning(problems[-1])
                continue
            registry.features.put(state["sha256"], described.local)
            row = PhotoRow(0, path, state["species"], None, state["viewpoint"])
            self.index_many([(image_id, described, state["individual_id"], row, state["survey_id"])])
            done.append(image_id)
        return done, problems

