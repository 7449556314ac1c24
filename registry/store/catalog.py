"""The catalog: surveys, individuals, images and their annotations, sightings and decisions in SQL (SQLite or
PostgreSQL).

Write helpers take a `Session` so the caller composes one transaction per recorded decision; read queries
open their own session. The schema itself is created only by the Alembic migrations (`registry.store.migrate`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from registry.decide.calibration import LEARNED_FUSION, Calibrations, IsotonicCalibrator, LearnedFusion
from registry.decide.policy import DecisionPolicy
from registry.decide.scoring import decision_margin
from registry.decide.spacetime import Seen
from registry.decide.verifier import VERIFIER, PairVerifier
from registry.matching.imaging import sha256_of_file
from registry.store.feature_store import feature_key
from registry.store.photo_paths import PhotoPaths
from registry.store.photo_paths import relocate as relocate_path
from registry.store.tables import (
    Annotation,
    Calibration,
    Change,
    Decision,
    DecisionPolicyRow,
    Deployment,
    DistinctPair,
    Event,
    Image,
    Individual,
    Location,
    Sighting,
    Species,
    Survey,
    region_of,
    utcnow,
)


class CatalogError(RuntimeError):
    pass


class DuplicateImageError(CatalogError):
    pass


class UnknownIndividualError(CatalogError):
    pass


def species_prefix(species: str) -> str:
    """The preferred code prefix of a species (its first three letters); `Catalog` makes it unique."""
    letters = re.sub(r"[^A-Za-z]", "", species).upper()
    return (letters[:3] or "IND").ljust(3, "X")


def prefix_candidates(species: str) -> Iterator[str]:
    """Prefixes to try, in order, until one is free: SYN, SYNL, SYNLY, ... then SYN2, SYN3, ..."""
    letters = re.sub(r"[^A-Za-z]", "", species).upper() or "IND"
    first = species_prefix(species)
    yield first
    for length in range(4, min(len(letters), 8) + 1):
        yield letters[:length]
    for number in itertools.count(2):
        yield f"{first}{number}"


def follow_merges(start: int, merged_into: Callable[[int], int | None]) -> int:
    """The individual `start` belongs to now: follow `merged_into` links to the end (a cycle is an error)."""
    seen = {start}
    current = start
    while (nxt := merged_into(current)) is not None:
        if nxt in seen:
            raise CatalogError(f"the merge chain of individual {start} loops")
        seen.add(nxt)
        current = nxt
    return current


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Python's sqlite3 opens a transaction only before the first INSERT/UPDATE/DELETE, so SAVEPOINTs,
            # DDL and reads that come first run outside any transaction and commit on their own. SQLAlchemy's
            # pysqlite recipe: the driver never begins or commits by itself, SQLAlchemy says BEGIN (below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=FULL")  # a committed decision survives a power cut
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


class Catalog:
    def __init__(self, url: str, photo_root: str | Path | None = None) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.paths = PhotoPaths(photo_root)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed on success, rolled back entirely on any error."""
        with self._sessions() as session, session.begin():
            yield session

    # --- surveys ---------------------------------------------------------------------------------------
    def survey_names(self) -> list[str]:
        """Every survey's name, newest first."""
        with self.transaction() as session:
            return list(session.scalars(select(Survey.name).order_by(Survey.id.desc())))

    def survey(self, session: Session, name: str, create: bool = True) -> Survey | None:
        survey = session.scalar(select(Survey).where(Survey.name == name))
        if survey is None and create:
            survey = Survey(name=name)
            session.add(survey)
            session.flush()
        return survey

    def location(self, session: Session, name: str, latitude: float | None = None,
                 longitude: float | None = None, time_zone: str | None = None) -> Location:
        """The location of this name, created on first use (with the first coordinates and time zone given for
        it; a zone given later fills one that is unknown)."""
        found = session.scalar(select(Location).where(Location.name == name))
        if found is not None and found.time_zone is None and time_zone:
            found.time_zone = time_zone
        if found is None:
            found = Location(name=name, latitude=latitude, longitude=longitude, time_zone=time_zone)
            try:
                with session.begin_nested():
                    session.add(found)
            except IntegrityError:  # another writer created it first
                found = session.scalar(select(Location).where(Location.name == name))
        return found  # type: ignore[return-value]

    def deployment(self, session: Session, code: str, location: Location | None = None) -> Deployment:
        """The deployment of this code, created on first use at `location`; a code already placed at another
        location is refused (one camera interval has one place)."""
        found = session.scalar(select(Deployment).where(Deployment.code == code))
        if found is None:
            found = Deployment(code=code, location_id=location.id if location else None)
            try:
                with session.begin_nested():
                    session.add(found)
            except IntegrityError:
                found = session.scalar(select(Deployment).where(Deployment.code == code))
        if location is not None and found.location_id not in (None, location.id):  # type: ignore[union-attr]
            placed = session.get(Location, found.location_id)  # type: ignore[union-attr]
            raise CatalogError(f"deployment {code!r} is at location {placed.name!r}, "  # type: ignore[union-attr]
                               f"not {location.name!r}")
        if location is not None and found.location_id is None:  # type: ignore[union-attr]
            found.location_id = location.id  # type: ignore[union-attr]
        return found  # type: ignore[return-value]

    def location_zones(self) -> dict[str, str]:
        """Location name -> the time zone its cameras keep, for the locations whose zone is known."""
        with self._sessions() as session:
            return dict(session.execute(select(Location.name, Location.time_zone)  # type: ignore[arg-type]
                                        .where(Location.time_zone.is_not(None))).all())

    def register_deployments(self, deployments: list[Any]) -> None:
        """Locations (with coordinates) and deployments (with operating intervals and setup notes) from a
        source that describes them (a Camtrap DP package); what is already known is completed, not changed."""
        with self.transaction() as session:
            for info in deployments:
                location = (self.location(session, info.location, info.latitude, info.longitude)
                            if info.location else None)
                if location is not None and location.latitude is None and info.latitude is not None:
                    location.latitude, location.longitude = info.latitude, info.longitude
                deployment = self.deployment(session, info.code, location)
                deployment.started_at = deployment.started_at or info.started_at
                deployment.ended_at = deployment.ended_at or info.ended_at
                deployment.setup = deployment.setup or info.setup

    # --- images and annotations ----------------------------------------------------------------------------
    def image_by_sha(self, session: Session, sha256: str) -> Image | None:
        return session.scalar(select(Image).where(Image.sha256 == sha256))

    def annotations_by_sha(self, sha256s: list[str]) -> dict[str, list[int]]:
        """sha256 -> the ids of the annotations in that photo, for those of these photos that are catalogued."""
        out: dict[str, list[int]] = {}
        if not sha256s:
            return out
        with self._sessions() as session:
            for sha, annotation_id in session.execute(select(Image.sha256, Annotation.id)
                                                      .join(Annotation, Annotation.image_id == Image.id)
                                                      .where(Image.sha256.in_(sha256s)).order_by(Annotation.id)):
                out.setdefault(sha, []).append(annotation_id)
        return out

    def known_regions(self, sha256s: list[str]) -> set[tuple[str, str]]:
        """(photo content, region) of the annotations already catalogued in these photos (one query a batch)."""
        if not sha256s:
            return set()
        with self._sessions() as session:
            return set(session.execute(select(Image.sha256, Annotation.region)  # type: ignore[arg-type]
                                       .join(Annotation, Annotation.image_id == Image.id)
                                       .where(Image.sha256.in_(sha256s))).all())

    def add_image(self, session: Session, **fields: Any) -> Image:
        """Insert a photo; a photo already catalogued (same content) is refused by name."""
        existing = self.image_by_sha(session, fields["sha256"])
        if existing is not None:
            raise DuplicateImageError(
                f"{fields.get('path')}: this photo is already in the registry as image {existing.id} "
                f"({existing.path}, sha256 {existing.sha256[:12]}…)"
            )
        image = Image(**fields)
        try:
            with session.begin_nested():
                session.add(image)
        except IntegrityError as exc:
            raise DuplicateImageError(
                f"{fields.get('path')}: a photo with sha256 {fields['sha256'][:12]}… was added concurrently"
            ) from exc
        return image

    def add_annotation(self, session: Session, image: Image, species: str, viewpoint: str | None = None,
                       box: tuple[float, float, float, float] | None = None, source: str = "whole-image",
                       confidence: float | None = None, event: Event | None = None) -> Annotation:
        """One animal in a photo, in state `pending`; the same box of the same photo twice is refused by name."""
        region = region_of(box)
        existing = session.scalar(select(Annotation).where(Annotation.image_id == image.id,
                                                           Annotation.region == region))
        if existing is not None:
            raise DuplicateImageError(f"{image.path}: this animal ({'whole photo' if box is None else region}) is "
                                      f"already in the registry as annotation {existing.id}")
        x, y, w, h = box if box is not None else (None, None, None, None)
        annotation = Annotation(image_id=image.id, species=species, viewpoint=viewpoint, region=region, bbox_x=x,
                                bbox_y=y, bbox_w=w, bbox_h=h, confidence=confidence, source=source,
                                event_id=event.id if event is not None else None, status="pending")
        try:
            with session.begin_nested():
                session.add(annotation)
        except IntegrityError as exc:
            raise DuplicateImageError(f"{image.path}: annotation {region} was added concurrently") from exc
        return annotation

    def event(self, session: Session, code: str, deployment_id: int | None, when: datetime | None) -> Event:
        """The event of this code (created on first use); its interval grows with each photo placed in it."""
        found = session.scalar(select(Event).where(Event.code == code))
        if found is None:
            found = Event(code=code, deployment_id=deployment_id, started_at=when, ended_at=when)
            try:
                with session.begin_nested():
                    session.add(found)
            except IntegrityError:
                found = session.scalar(select(Event).where(Event.code == code))
        if when is not None:
            found.started_at = min(found.started_at or when, when)  # type: ignore[union-attr]
            found.ended_at = max(found.ended_at or when, when)  # type: ignore[union-attr]
        return found  # type: ignore[return-value]

    def relocate(self, old: str, new: str) -> dict[str, int]:
        """Rewrite stored photo paths under `old` to lie under `new` (whole path components), in one transaction."""
        rewritten = missing = 0
        with self.transaction() as session:
            for image in session.scalars(select(Image)):
                moved = relocate_path(image.path, old, new)
                if moved is None:
                    continue
                image.path = moved
                rewritten += 1
                missing += not self.paths.local(moved).exists()
        return {"rewritten": rewritten, "missing_now": missing}

    def pending_annotations(self, older_than: datetime | None = None) -> list[int]:
        """Annotations written to SQL whose vectors were never confirmed (only those written before
        `older_than`)."""
        with self._sessions() as session:
            query = select(Annotation.id).where(Annotation.status == "pending").order_by(Annotation.id)
            if older_than is not None:
                query = query.where(Annotation.created_at < older_than)
            return list(session.scalars(query))

    def mark_indexed(self, annotation_ids: list[int]) -> None:
        self._set_status(annotation_ids, "indexed")

    def mark_pending(self, annotation_ids: list[int]) -> None:
        """Back to pending: the vectors must be (re)written before the annotation counts as indexed."""
        self._set_status(annotation_ids, "pending")

    def _set_status(self, annotation_ids: list[int], status: str) -> None:
        if not annotation_ids:
            return
        with self.transaction() as session:
            for start in range(0, len(annotation_ids), 1000):
                session.execute(update(Annotation).where(Annotation.id.in_(annotation_ids[start:start + 1000]))
                                .values(status=status))

    def annotation_states(self, annotation_ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
        """What the vector index should hold for each annotation: the individual its active sighting resolves to
        (following merges; None when the sighting was rejected), plus what is needed to describe it again."""
        with self._sessions() as session:
            query = (select(Annotation, Image.sha256, Image.path, Image.survey_id, Image.location_id,
                            Sighting.individual_id, Sighting.status)
                     .join(Image, Image.id == Annotation.image_id)
                     .outerjoin(Sighting, Sighting.annotation_id == Annotation.id).order_by(Annotation.id))
            if annotation_ids is not None:
                query = query.where(Annotation.id.in_(annotation_ids))
            rows = session.execute(query).all()
            merged = self.merge_links(session)
        out = {}
        for annotation, sha, path, survey_id, location_id, individual_id, sighting_status in rows:
            if sighting_status != "active":
                individual_id = None
            elif individual_id is not None:
                individual_id = follow_merges(individual_id, merged.get)
            out[annotation.id] = {
                "status": annotation.status, "sha256": sha, "path": str(self.paths.local(path)),
                "image_id": annotation.image_id, "box": annotation.box,
                "feature_key": feature_key(sha, annotation.region), "species": annotation.species,
                "viewpoint": annotation.viewpoint, "survey_id": survey_id, "location_id": location_id,
                "individual_id": individual_id}
        return out

    # --- individuals -----------------------------------------------------------------------------------
    def merge_links(self, session: Session) -> dict[int, int]:
        """individual id -> the individual it was merged into, for every merged individual."""
        return dict(session.execute(select(Individual.id, Individual.merged_into_id)
                                    .where(Individual.merged_into_id.is_not(None))).all())  # type: ignore[arg-type]

    def _species_row(self, session: Session, species: str) -> Species:
        """The species' row, created with the first free code prefix on its first individual."""
        row = session.get(Species, species)
        if row is not None:
            return row
        for prefix in prefix_candidates(species):
            if session.scalar(select(Species.name).where(Species.code_prefix == prefix)) is not None:
                continue
            try:
                with session.begin_nested():
                    session.add(Species(name=species, code_prefix=prefix, next_seq=1))
            except IntegrityError:  # another writer registered this species (or took the prefix) meanwhile
                row = session.get(Species, species, populate_existing=True)
                if row is not None:
                    return row
                continue
            return session.get(Species, species)  # type: ignore[return-value]
        raise AssertionError("unreachable: prefix candidates are endless")

    def new_individual(
        self, session: Session, species: str, name: str | None = None, decision: Decision | None = None
    ) -> Individual:
        """Create an individual with the next stable code for its species (e.g. NYA-0008).

        The number comes from one atomic `UPDATE species SET next_seq = next_seq + 1 ... RETURNING`, which row-locks
        the species until the transaction ends: concurrent writers (API workers on PostgreSQL) get distinct
        numbers without retries, and the prefix is unique per species, so codes never collide.
        """
        prefix = self._species_row(session, species).code_prefix
        taken = session.execute(
            update(Species).where(Species.name == species).values(next_seq=Species.next_seq + 1)
            .returning(Species.next_seq)
        ).scalar_one() - 1
        session.expire_all()  # the species row changed under the ORM
        individual = Individual(
            code=f"{prefix}-{taken:04d}", species=species, species_seq=taken, name=name,
            created_by_decision_id=decision.id if decision is not None else None,
        )
        session.add(individual)
        session.flush()
        return individual

    def individual_by_label(self, session: Session, species: str, label: str,
                            match_codes: bool = True) -> Individual | None:
        """A manifest's identity: an individual of this species named so, or (`match_codes`) whose code it is."""
        found = session.scalar(select(Individual).where(Individual.species == species, Individual.name == label))
        if found is not None or not match_codes:
            return found
        return session.scalar(select(Individual).where(Individual.species == species, Individual.code == label))

    def reconcile_retired(self, session: Session, individual_ids: set[int]) -> list[tuple[Individual, bool]]:
        """The one rule for retirement: an individual (not merged into another) is retired exactly when it has
        no active sighting. Applied to these individuals after any change to their sightings; returns those
        changed now, each with whether it was retired (True) or brought back (False)."""
        session.flush()
        if not individual_ids:
            return []
        sighted = set(session.scalars(select(Sighting.individual_id).where(
            Sighting.individual_id.in_(individual_ids), Sighting.status == "active").distinct()))
        changed = []
        for individual in session.scalars(select(Individual).where(Individual.id.in_(individual_ids),
                                                                    Individual.merged_into_id.is_(None))
                                          .order_by(Individual.id)):
            if individual.id in sighted and individual.retired_at is not None:
                individual.retired_at = None
                changed.append((individual, False))
            elif individual.id not in sighted and individual.retired_at is None:
                individual.retired_at = utcnow()
                changed.append((individual, True))
        session.flush()
        return changed

    def lock_individuals(self, session: Session, individual_ids: list[int]) -> dict[int, Individual]:
        """Row-lock these individuals (in id order, so two writers never wait on each other in a circle) and
        read them as committed now: a concurrent merge of the same two individuals waits, then sees this one's
        result. SQLite has one writer at a time already."""
        query = (select(Individual).where(Individual.id.in_(individual_ids)).order_by(Individual.id)
                 .execution_options(populate_existing=True))
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        return {i.id: i for i in session.scalars(query)}

    @contextmanager
    def serialised(self, name: str) -> Iterator[None]:
        """One process at a time in this block, across every process sharing the catalog (PostgreSQL's advisory
        lock; SQLite registries have one writing process already). Curation rewrites vector payloads in it, so
        a payload read from SQL is never overwritten by one read before it."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as connection, connection.begin():
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})
            yield

    def resolve(self, session: Session, key: str) -> Individual:
        """An individual by code or name, following merges to the individual it now belongs to."""
        individual = session.scalar(select(Individual).where(Individual.code == key))
        if individual is None:
            matches = list(session.scalars(select(Individual).where(Individual.name == key)))
            if len(matches) > 1:
                raise UnknownIndividualError(
                    f"{key!r} names {len(matches)} individuals of different species; use the code "
                    f"({', '.join(m.code for m in matches)})"
                )
            individual = matches[0] if matches else None
        if individual is None:
            raise UnknownIndividualError(f"no individual with code or name {key!r}")
        if individual.merged_into_id is None:
            return individual
        final = follow_merges(individual.id, lambda i: session.get(Individual, i).merged_into_id)  # type: ignore[union-attr]
        return session.get(Individual, final)  # type: ignore[return-value]

    def distinct_pairs(self) -> set[tuple[int, int]]:
        """Pairs of individual ids (lower first) a person declared different animals."""
        with self.transaction() as session:
            return {(a, b) for a, b in session.execute(select(DistinctPair.first_id, DistinctPair.second_id))}

    def distinct_codes(self) -> list[tuple[str, str]]:
        """`distinct_pairs` by individual code."""
        pairs = self.distinct_pairs()
        with self.transaction() as session:
            codes = self.codes(session, {i for pair in pairs for i in pair})
        return [(codes[a], codes[b]) for a, b in sorted(pairs)]

    def codes(self, session: Session, individual_ids: set[int]) -> dict[int, str]:
        if not individual_ids:
            return {}
        rows = session.execute(select(Individual.id, Individual.code).where(Individual.id.in_(individual_ids)))
        return {individual_id: code for individual_id, code in rows}

    # --- sightings and decisions -----------------------------------------------------------------------
    def add_sighting(
        self, session: Session, annotation: Annotation, individual: Individual, method: str,
        decision: Decision | None = None,
    ) -> Sighting:
        sighting = Sighting(annotation_id=annotation.id, individual_id=individual.id, method=method,
                            decision_id=decision.id if decision is not None else None, status="active")
        session.add(sighting)
        session.flush()
        return sighting

    def add_decision(self, session: Session, **fields: Any) -> Decision:
        if "margin" not in fields:  # the review queue's order, from the ranked candidates as recorded
            ranked = fields.get("candidates") or []
            fields["margin"], fields["margin_reason"] = decision_margin(
                fields["outcome"], [c["score"] for c in ranked], [c["code"] for c in ranked], fields["threshold"])
        decision = Decision(**fields)
        session.add(decision)
        session.flush()
        return decision

    # --- calibration -----------------------------------------------------------------------------------
    def labelled_annotations(self, species: str | None = None) -> list[dict[str, Any]]:
        """Annotations whose individual a person vouched for (reference labels, confirmed or corrected
        decisions)."""
        with self.transaction() as session:
            query = (select(Annotation.id, Annotation.species, Annotation.viewpoint, Image.survey_id,
                            Image.captured_at, Sighting.individual_id, Image.deployment_id, Annotation.event_id)
                     .join(Image, Image.id == Annotation.image_id)
                     .join(Sighting, Sighting.annotation_id == Annotation.id)
                     .where(Sighting.status == "active", Sighting.method.in_(("reference", "confirmed", "corrected")),
                            Annotation.status == "indexed")
                     .order_by(Annotation.id))
            if species is not None:
                query = query.where(Annotation.species == species)
            rows = session.execute(query).all()
            merged = self.merge_links(session)
        # a merged individual's annotations belong to the survivor
        return [{"annotation_id": annotation_id, "species": sp, "viewpoint": viewpoint, "survey_id": survey_id,
                 "captured_at": captured_at, "individual_id": follow_merges(individual_id, merged.get),
                 "deployment_id": deployment_id, "event_id": event_id}
                for (annotation_id, sp, viewpoint, survey_id, captured_at, individual_id, deployment_id,
                     event_id) in rows]

    def seen(self, individual_ids: list[int], exclude_annotations: tuple[int, ...] = ()) -> dict[int, list[Seen]]:
        """Where and when each individual was sighted (active sightings; a photo without coordinates takes its
        location's), leaving out some annotations (a simulated query's hidden photos)."""
        with self.transaction() as session:
            rows = session.execute(
                select(Sighting.individual_id, Image.captured_at, Image.latitude, Image.longitude,
                       Location.latitude, Location.longitude)
                .join(Annotation, Annotation.id == Sighting.annotation_id)
                .join(Image, Image.id == Annotation.image_id)
                .outerjoin(Location, Location.id == Image.location_id)
                .where(Sighting.individual_id.in_(individual_ids), Sighting.status == "active",
                       Sighting.annotation_id.not_in(exclude_annotations))).all()
        out: dict[int, list[Seen]] = {}
        for individual_id, when, lat, lon, place_lat, place_lon in rows:
            placed = lat is not None and lon is not None
            out.setdefault(individual_id, []).append(
                Seen(when, lat if placed else place_lat, lon if placed else place_lon))
        return out

    def seen_in(self, annotation_id: int) -> Seen:
        """Where and when this annotation's photo was taken."""
        with self.transaction() as session:
            row = session.execute(
                select(Image.captured_at, Image.latitude, Image.longitude, Location.latitude, Location.longitude)
                .join(Annotation, Annotation.image_id == Image.id)
                .outerjoin(Location, Location.id == Image.location_id)
                .where(Annotation.id == annotation_id)).first()
        if row is None:
            return Seen(None, None, None)
        when, lat, lon, place_lat, place_lon = row
        placed = lat is not None and lon is not None
        return Seen(when, lat if placed else place_lat, lon if placed else place_lon)

    def individual_codes_of(self, annotation_ids: list[int]) -> dict[int, str]:
        """The individual (its code) each annotation's active sighting belongs to now."""
        with self.transaction() as session:
            return dict(session.execute(  # type: ignore[arg-type]
                select(Sighting.annotation_id, Individual.code)
                .join(Individual, Individual.id == Sighting.individual_id)
                .where(Sighting.annotation_id.in_(annotation_ids), Sighting.status == "active")).all())

    def save_calibrations(self, fitted: dict[tuple[str, str | None], IsotonicCalibrator],
                          learned: LearnedFusion | None, n_pairs: int, summary: dict[str, Any]) -> int:
        """Store a set of calibrators fitted together as one batch; returns the batch (a policy names it)."""
        with self.transaction() as session:
            if session.get_bind().dialect.name == "postgresql":  # two calibrations at once get distinct batches
                session.execute(text("LOCK TABLE calibrations IN SHARE ROW EXCLUSIVE MODE"))
            batch = (session.scalar(select(func.max(Calibration.batch))) or 0) + 1
            for (matcher, species), calibrator in fitted.items():
                session.add(Calibration(matcher=matcher, species=species, model=calibrator.to_json(),
                                        n_pairs=n_pairs, inputs_summary=summary, batch=batch))
            if learned is not None:
                session.add(Calibration(matcher=LEARNED_FUSION, species=None, model=learned.to_json(),
                                        n_pairs=n_pairs, inputs_summary=summary, batch=batch))
        return batch

    def load_calibrations(self, batches: set[int]) -> dict[int, Calibrations]:
        """The calibrators of each of these batches."""
        out: dict[int, Calibrations] = {}
        if not batches:
            return out
        with self._sessions() as session:
            for row in session.scalars(select(Calibration).where(Calibration.batch.in_(batches))
                                       .order_by(Calibration.id)):
                found = out.setdefault(row.batch, Calibrations())
                if row.matcher == LEARNED_FUSION:
                    found.learned = LearnedFusion.from_json(row.model)
                elif row.matcher == VERIFIER:
                    found.verifier = PairVerifier.from_json(row.model)
                else:
                    found.isotonic[(row.matcher, row.species)] = IsotonicCalibrator.from_json(row.model)
        return out

    def add_verifier(self, batch: int, verifier: PairVerifier, summary: dict[str, Any]) -> None:
        """The pair verifier fitted on a batch's simulated queries joins that batch."""
        with self.transaction() as session:
            session.add(Calibration(matcher=VERIFIER, species=None, model=verifier.to_json(),
                                    n_pairs=int(summary.get("rows", 0)), inputs_summary=summary, batch=batch))

    def newest_calibration_batch(self, versions: dict[str, str] | None) -> tuple[int, dict[str, str]] | None:
        """The newest batch (fitted for these model versions, if given) and its versions; for adopting a registry
        made before decision policies."""
        with self._sessions() as session:
            for batch, summary in session.execute(select(Calibration.batch, Calibration.inputs_summary)
                                                  .order_by(Calibration.batch.desc())):
                found = (summary or {}).get("versions")
                if found and (versions is None or found == versions):
                    return int(batch), found
        return None

    # --- the decision policy -----------------------------------------------------------------------------
    @staticmethod
    def _policy(row: DecisionPolicyRow) -> DecisionPolicy:
        return DecisionPolicy(
            profile=row.profile, fusion=row.fusion, alpha=row.alpha, default_threshold=row.default_threshold,
            uncalibrated_threshold=row.uncalibrated_threshold, matcher_settings=dict(row.matcher_settings),
            model_versions=dict(row.model_versions), embedder_weights=dict(row.embedder_weights or {}),
            calibration_batches={k: int(v) for k, v in row.calibration_batches.items()},
            thresholds={k: float(v) for k, v in row.thresholds.items()}, expected=row.expected,
            created_by=row.created_by, reason=row.reason, version=row.id, parent=row.parent_id,
            created_at=row.created_at)

    def current_policy(self) -> DecisionPolicy | None:
        """The policy in force: the newest version."""
        with self._sessions() as session:
            row = session.scalar(select(DecisionPolicyRow).order_by(DecisionPolicyRow.id.desc()).limit(1))
            return self._policy(row) if row is not None else None

    def save_policy(self, policy: DecisionPolicy) -> DecisionPolicy:
        """Store a new version (it is in force from now on, for every process sharing this catalog)."""
        with self.transaction() as session:
            row = DecisionPolicyRow(
                profile=policy.profile, model_versions=policy.model_versions,
                matcher_settings=policy.matcher_settings, calibration_batches=policy.calibration_batches,
                embedder_weights=policy.embedder_weights, fusion=policy.fusion, alpha=policy.alpha,
                default_threshold=policy.default_threshold,
                thresholds=policy.thresholds, uncalibrated_threshold=policy.uncalibrated_threshold,
                expected=policy.expected, created_by=policy.created_by, reason=policy.reason,
                parent_id=policy.parent)
            session.add(row)
            session.flush()
            return self._policy(row)

    def policy_history(self) -> list[DecisionPolicy]:
        with self._sessions() as session:
            return [self._policy(r) for r in session.scalars(select(DecisionPolicyRow).order_by(DecisionPolicyRow.id))]

    # --- read queries ----------------------------------------------------------------------------------
    def history(self, key: str) -> dict[str, Any]:
        """An individual's sightings in time order (one query for the sightings, whatever their number)."""
        with self._sessions() as session:
            individual = self.resolve(session, key)
            members = [individual.id, *session.scalars(
                select(Individual.id).where(Individual.merged_into_id == individual.id))]
            rows = session.execute(
                select(Sighting, Annotation, Image, Survey.name, Decision.score, Location.name, Deployment.code)
                .join(Annotation, Sighting.annotation_id == Annotation.id)
                .join(Image, Annotation.image_id == Image.id)
                .outerjoin(Survey, Image.survey_id == Survey.id)
                .outerjoin(Decision, Sighting.decision_id == Decision.id)
                .outerjoin(Location, Image.location_id == Location.id)
                .outerjoin(Deployment, Image.deployment_id == Deployment.id)
                .where(Sighting.individual_id.in_(members), Sighting.status == "active")
                .order_by(Image.captured_at.is_(None), Image.captured_at, Image.id, Annotation.id)
            ).all()
            sightings = [
                {
                    "captured_at": _iso(image.captured_at),
                    "survey": survey_name,
                    "location": location_name,
                    "deployment": deployment_code,
                    "latitude": image.latitude,
                    "longitude": image.longitude,
                    "image": str(self.paths.local(image.path)),
                    "sha256": image.sha256,
                    "annotation": annotation.id,
                    "box": list(annotation.box) if annotation.box else None,
                    "event_id": annotation.event_id,
                    "method": sighting.method,
                    "decision_id": sighting.decision_id,
                    "score": score,
                }
                for sighting, annotation, image, survey_name, score, location_name, deployment_code in rows
            ]
            dates = [s["captured_at"] for s in sightings if s["captured_at"]]
            codes = [individual.code, *session.scalars(select(Individual.code).where(Individual.id.in_(members)))]
            mentions = re.compile(r"\b(" + "|".join(re.escape(c) for c in set(codes)) + r")\b")
            merges = [{"change": c.id, "kind": c.kind, "summary": c.summary, "when": _iso(c.created_at),
                       "undone_by": c.undone_by_id}
                      for c in session.scalars(select(Change).where(Change.kind.in_(("merge", "split", "edit")))
                                               .order_by(Change.id))
                      if mentions.search(c.summary)]
            return {
                "individual": individual.code,
                "species": individual.species,
                "name": individual.name,
                "attributes": {"sex": individual.sex, "life_stage": individual.life_stage,
                               "nickname": individual.nickname, "alternate_ids": individual.alternate_ids or [],
                               "notes": individual.notes},
                "asked_for": key,
                "first_seen": min(dates) if dates else None,
                "last_seen": max(dates) if dates else None,
                "surveys": len({s["survey"] for s in sightings if s["survey"]}),
                "sightings": sightings,
                "merges": merges,
            }

    def image_by_key(self, session: Session, key: str) -> Image | None:
        """A photo by sha256 or path (a photo under another name is found by its content)."""
        if re.fullmatch(r"[0-9a-f]{64}", key):
            return session.scalar(select(Image).where(Image.sha256 == key))
        path = Path(key)
        image = session.scalar(select(Image).where(Image.path == self.paths.stored(path)))
        if image is None and path.is_file():
            image = session.scalar(select(Image).where(Image.sha256 == sha256_of_file(path)))
        return image

    def annotation_by_key(self, session: Session, key: str) -> Annotation:
        """An annotation by id, or by its photo (path or sha256) when the photo holds one animal."""
        if key.isdigit():
            found = session.get(Annotation, int(key))
            if found is None:
                raise UnknownIndividualError(f"no annotation {key} in the registry")
            return found
        image = self.image_by_key(session, key)
        if image is None:
            raise UnknownIndividualError(f"no image {key!r} in the registry")
        annotations = list(session.scalars(select(Annotation).where(Annotation.image_id == image.id)
                                           .order_by(Annotation.id)))
        if len(annotations) != 1:
            raise UnknownIndividualError(
                f"image {key!r} holds {len(annotations)} annotations; name one by its id "
                f"({', '.join(str(a.id) for a in annotations) or 'none'})")
        return annotations[0]

    def individual_of_image(self, key: str) -> str:
        """The code of the individual an annotation (its id, or its photo's path or sha256) is a sighting of,
        following merges."""
        with self._sessions() as session:
            annotation = self.annotation_by_key(session, key)
            sighting = session.scalar(select(Sighting).where(Sighting.annotation_id == annotation.id))
            if sighting is None:
                raise UnknownIndividualError(f"image {key!r} has no sighting")
            code = session.get(Individual, sighting.individual_id).code  # type: ignore[union-attr]
            return self.resolve(session, code).code

    def individuals(self, species: str | None = None) -> list[dict[str, Any]]:
        with self._sessions() as session:
            query = (
                select(Individual, func.count(Sighting.id), func.min(Image.captured_at), func.max(Image.captured_at))
                .outerjoin(Sighting, (Sighting.individual_id == Individual.id) & (Sighting.status == "active"))
                .outerjoin(Annotation, Sighting.annotation_id == Annotation.id)
                .outerjoin(Image, Annotation.image_id == Image.id)
                .where(Individual.merged_into_id.is_(None), Individual.retired_at.is_(None))
                .group_by(Individual.id)
                .order_by(Individual.species, Individual.species_seq)
            )
            if species:
                query = query.where(Individual.species == species)
            return [
                {"id": ind.id, "code": ind.code, "species": ind.species, "name": ind.name, "sightings": n,
                 "first_seen": _iso(first), "last_seen": _iso(last), "sex": ind.sex, "life_stage": ind.life_stage,
                 "nickname": ind.nickname}
                for ind, n, first, last in session.execute(query).all()
            ]

    def species_rows(self) -> list[dict[str, Any]]:
        """Every species with individuals: its code prefix and scientific name."""
        with self._sessions() as session:
            return [{"name": s.name, "code_prefix": s.code_prefix, "scientific_name": s.scientific_name}
                    for s in session.scalars(select(Species).order_by(Species.name))]

    def set_scientific_name(self, species: str, scientific_name: str) -> None:
        if species not in self.species():
            raise CatalogError(f"no photos of species {species!r} in the registry; known: "
                               f"{', '.join(self.species()) or 'none'}")
        with self.transaction() as session:
            self._species_row(session, species).scientific_name = scientific_name.strip() or None

    def species(self) -> list[str]:
        with self._sessions() as session:
            return list(session.scalars(select(Annotation.species).distinct().order_by(Annotation.species)))

    def stats(self) -> dict[str, int]:
        with self._sessions() as session:
            def count(model: Any, *where: Any) -> int:
                return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

            return {
                "individuals": count(Individual, Individual.merged_into_id.is_(None), Individual.retired_at.is_(None)),
                "images": count(Image),
                "annotations": count(Annotation),
                "sightings": count(Sighting, Sighting.status == "active"),
                "decisions": count(Decision),
                "surveys": count(Survey),
                "pending_annotations": count(Annotation, Annotation.status == "pending"),
            }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None
