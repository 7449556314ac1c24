"""The catalog: surveys, individuals, images, sightings and decisions in SQL (SQLite or PostgreSQL).

Write helpers take a `Session` so the caller composes one transaction per recorded decision; read queries
open their own session. The schema itself is created only by the Alembic migrations (`registry.store.migrate`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from registry.decide.calibration import LEARNED_FUSION, Calibrations, IsotonicCalibrator, LearnedFusion
from registry.store.tables import Calibration, Change, Decision, Image, Individual, Sighting, Survey


class CatalogError(RuntimeError):
    pass


class DuplicateImageError(CatalogError):
    pass


class UnknownIndividualError(CatalogError):
    pass


def species_prefix(species: str) -> str:
    letters = re.sub(r"[^A-Za-z]", "", species).upper()
    return (letters[:3] or "IND").ljust(3, "X")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Catalog:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed on success, rolled back entirely on any error."""
        with self._sessions() as session, session.begin():
            yield session

    # --- surveys ---------------------------------------------------------------------------------------
    def survey(self, session: Session, name: str, create: bool = True) -> Survey | None:
        survey = session.scalar(select(Survey).where(Survey.name == name))
        if survey is None and create:
            survey = Survey(name=name)
            session.add(survey)
            session.flush()
        return survey

    # --- images ----------------------------------------------------------------------------------------
    def image_by_sha(self, session: Session, sha256: str) -> Image | None:
        return session.scalar(select(Image).where(Image.sha256 == sha256))

    def known_sha256s(self, sha256s: list[str]) -> set[str]:
        """Which of these photo contents are already catalogued (one query for a whole batch)."""
        if not sha256s:
            return set()
        with self._sessions() as session:
            return set(session.scalars(select(Image.sha256).where(Image.sha256.in_(sha256s))))

    def add_image(self, session: Session, **fields: Any) -> Image:
        """Insert an image in state `pending`; a photo already catalogued (same content) is refused by name."""
        existing = self.image_by_sha(session, fields["sha256"])
        if existing is not None:
            raise DuplicateImageError(
                f"{fields.get('path')}: this photo is already in the registry as image {existing.id} "
                f"({existing.path}, sha256 {existing.sha256[:12]}…)"
            )
        image = Image(status="pending", **fields)
        try:
            with session.begin_nested():
                session.add(image)
        except IntegrityError as exc:
            raise DuplicateImageError(
                f"{fields.get('path')}: a photo with sha256 {fields['sha256'][:12]}… was added concurrently"
            ) from exc
        return image

    def pending_images(self) -> list[Image]:
        with self._sessions() as session:
            return list(session.scalars(select(Image).where(Image.status == "pending").order_by(Image.id)))

    def mark_indexed(self, image_ids: list[int]) -> None:
        if not image_ids:
            return
        with self.transaction() as session:
            for image in session.scalars(select(Image).where(Image.id.in_(image_ids))):
                image.status = "indexed"

    def mark_pending(self, image_ids: list[int]) -> None:
        """Back to pending: the vectors must be (re)written before the image counts as indexed."""
        if not image_ids:
            return
        with self.transaction() as session:
            for image in session.scalars(select(Image).where(Image.id.in_(image_ids))):
                image.status = "pending"

    def image_states(self, image_ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
        """What the vector index should hold for each image: the individual its active sighting resolves to
        (following merges; None when the sighting was rejected), plus what is needed to re-describe it."""
        with self._sessions() as session:
            query = (select(Image.id, Image.status, Image.sha256, Image.path, Image.species, Image.viewpoint,
                            Image.survey_id, Sighting.individual_id, Sighting.status)
                     .outerjoin(Sighting, Sighting.image_id == Image.id).order_by(Image.id))
            if image_ids is not None:
                query = query.where(Image.id.in_(image_ids))
            rows = session.execute(query).all()
            merged = dict(session.execute(select(Individual.id, Individual.merged_into_id)
                                          .where(Individual.merged_into_id.is_not(None))).all())
        out = {}
        for image_id, status, sha, path, species, viewpoint, survey_id, individual_id, sighting_status in rows:
            if sighting_status != "active":
                individual_id = None
            while individual_id in merged:
                individual_id = merged[individual_id]
            out[image_id] = {"status": status, "sha256": sha, "path": path, "species": species,
                             "viewpoint": viewpoint, "survey_id": survey_id, "individual_id": individual_id}
        return out

    # --- individuals -----------------------------------------------------------------------------------
    def new_individual(
        self, session: Session, species: str, name: str | None = None, decision: Decision | None = None
    ) -> Individual:
        """Create an individual with the next stable code for its species (e.g. NYA-0008).

        On PostgreSQL, concurrent writers (API workers) take a transaction-scoped advisory lock per species, so
        the next number is computed by one transaction at a time; the unique (species, sequence) constraint and
        the retry below remain the safety net (and the whole story on SQLite, which serialises writers).
        """
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"individual-code:{species}"})
        for _attempt in range(20):
            seq = (session.scalar(
                select(func.max(Individual.species_seq)).where(Individual.species == species)
            ) or 0) + 1
            individual = Individual(
                code=f"{species_prefix(species)}-{seq:04d}", species=species, species_seq=seq, name=name,
                created_by_decision_id=decision.id if decision is not None else None,
            )
            try:
                with session.begin_nested():
                    session.add(individual)
                return individual
            except IntegrityError:
                continue  # another writer took this number (or the prefix collides): try the next one
        raise CatalogError(f"could not allocate a code for a new {species} individual")

    def individual_by_name(self, session: Session, species: str, name: str) -> Individual | None:
        return session.scalar(select(Individual).where(Individual.species == species, Individual.name == name))

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
        seen = {individual.id}
        while individual.merged_into_id is not None:
            individual = session.get(Individual, individual.merged_into_id)
            if individual is None or individual.id in seen:
                raise CatalogError(f"merge chain of {key!r} is broken")
            seen.add(individual.id)
        return individual

    def codes(self, session: Session, individual_ids: set[int]) -> dict[int, str]:
        if not individual_ids:
            return {}
        rows = session.execute(select(Individual.id, Individual.code).where(Individual.id.in_(individual_ids)))
        return {individual_id: code for individual_id, code in rows}

    # --- sightings and decisions -----------------------------------------------------------------------
    def add_sighting(
        self, session: Session, image: Image, individual: Individual, method: str,
        decision: Decision | None = None,
    ) -> Sighting:
        sighting = Sighting(image_id=image.id, individual_id=individual.id, method=method,
                            decision_id=decision.id if decision is not None else None, status="active")
        session.add(sighting)
        session.flush()
        return sighting

    def add_decision(self, session: Session, **fields: Any) -> Decision:
        decision = Decision(**fields)
        session.add(decision)
        session.flush()
        return decision

    # --- calibration -----------------------------------------------------------------------------------
    def labelled_images(self, species: str | None = None) -> list[dict[str, Any]]:
        """Images whose individual a person vouched for (reference labels, confirmed or corrected decisions)."""
        with self.transaction() as session:
            query = (select(Image.id, Image.species, Image.viewpoint, Sighting.individual_id)
                     .join(Sighting, Sighting.image_id == Image.id)
                     .where(Sighting.status == "active", Sighting.method.in_(("reference", "confirmed", "corrected")),
                            Image.status == "indexed")
                     .order_by(Image.id))
            if species is not None:
                query = query.where(Image.species == species)
            rows = session.execute(query).all()
            merged = dict(session.execute(select(Individual.id, Individual.merged_into_id)
                                          .where(Individual.merged_into_id.is_not(None))).all())
        out = []
        for image_id, sp, viewpoint, individual_id in rows:
            while individual_id in merged:  # a merged individual's images belong to the survivor
                individual_id = merged[individual_id]
            out.append({"image_id": image_id, "species": sp, "viewpoint": viewpoint, "individual_id": individual_id})
        return out

    def save_calibrations(self, fitted: dict[tuple[str, str | None], IsotonicCalibrator],
                          learned: LearnedFusion | None, n_pairs: int, summary: dict[str, Any]) -> None:
        """Store a complete set of calibrators in one transaction (readers take the newest complete set)."""
        with self.transaction() as session:
            batch = (session.scalar(select(func.max(Calibration.batch))) or 0) + 1
            for (matcher, species), calibrator in fitted.items():
                session.add(Calibration(matcher=matcher, species=species, model=calibrator.to_json(),
                                        n_pairs=n_pairs, inputs_summary=summary, batch=batch))
            if learned is not None:
                session.add(Calibration(matcher=LEARNED_FUSION, species=None, model=learned.to_json(),
                                        n_pairs=n_pairs, inputs_summary=summary, batch=batch))

    def load_calibrations(self, versions: dict[str, str]) -> Calibrations:
        """The newest calibration set made with these model versions (empty when there is none)."""
        with self.transaction() as session:
            rows = list(session.scalars(select(Calibration).order_by(Calibration.batch.desc(), Calibration.id)))
        out = Calibrations()
        chosen = None
        for row in rows:
            if chosen is None and (row.inputs_summary or {}).get("versions") == versions:
                chosen = row.batch
            if chosen is None or row.batch != chosen:
                continue
            if row.matcher == LEARNED_FUSION:
                out.learned = LearnedFusion.from_json(row.model)
            else:
                out.isotonic[(row.matcher, row.species)] = IsotonicCalibrator.from_json(row.model)
        return out

    # --- read queries ----------------------------------------------------------------------------------
    def history(self, key: str) -> dict[str, Any]:
        """An individual's sightings in time order (one query for the sightings, whatever their number)."""
        with self._sessions() as session:
            individual = self.resolve(session, key)
            members = [individual.id, *session.scalars(
                select(Individual.id).where(Individual.merged_into_id == individual.id))]
            rows = session.execute(
                select(Sighting, Image, Survey.name, Decision.score)
                .join(Image, Sighting.image_id == Image.id)
                .outerjoin(Survey, Image.survey_id == Survey.id)
                .outerjoin(Decision, Sighting.decision_id == Decision.id)
                .where(Sighting.individual_id.in_(members), Sighting.status == "active")
                .order_by(Image.captured_at.is_(None), Image.captured_at, Image.id)
            ).all()
            sightings = [
                {
                    "captured_at": _iso(image.captured_at),
                    "survey": survey_name,
                    "latitude": image.latitude,
                    "longitude": image.longitude,
                    "image": image.path,
                    "sha256": image.sha256,
                    "method": sighting.method,
                    "decision_id": sighting.decision_id,
                    "score": score,
                }
                for sighting, image, survey_name, score in rows
            ]
            dates = [s["captured_at"] for s in sightings if s["captured_at"]]
            codes = [individual.code, *session.scalars(select(Individual.code).where(Individual.id.in_(members)))]
            mentions = re.compile(r"\b(" + "|".join(re.escape(c) for c in set(codes)) + r")\b")
            merges = [{"change": c.id, "kind": c.kind, "summary": c.summary, "when": _iso(c.created_at),
                       "undone_by": c.undone_by_id}
                      for c in session.scalars(select(Change).where(Change.kind.in_(("merge", "split")))
                                               .order_by(Change.id))
                      if mentions.search(c.summary)]
            return {
                "individual": individual.code,
                "species": individual.species,
                "name": individual.name,
                "asked_for": key,
                "first_seen": min(dates) if dates else None,
                "last_seen": max(dates) if dates else None,
                "surveys": len({s["survey"] for s in sightings if s["survey"]}),
                "sightings": sightings,
                "merges": merges,
            }

    def individual_of_image(self, key: str) -> str:
        """The code of the individual an image (path or sha256) is a sighting of, following merges."""
        from pathlib import Path

        with self._sessions() as session:
            if re.fullmatch(r"[0-9a-f]{64}", key):
                image = session.scalar(select(Image).where(Image.sha256 == key))
            else:
                path = Path(key)
                image = session.scalar(select(Image).where(Image.path == str(path.resolve())))
                if image is None and path.is_file():  # the same photo under another name
                    from registry.matching.imaging import sha256_of_file

                    image = session.scalar(select(Image).where(Image.sha256 == sha256_of_file(path)))
            if image is None:
                raise UnknownIndividualError(f"no image {key!r} in the registry")
            sighting = session.scalar(select(Sighting).where(Sighting.image_id == image.id))
            if sighting is None:
                raise UnknownIndividualError(f"image {key!r} has no sighting")
            code = session.get(Individual, sighting.individual_id).code  # type: ignore[union-attr]
            return self.resolve(session, code).code

    def individuals(self, species: str | None = None) -> list[dict[str, Any]]:
        with self._sessions() as session:
            query = (
                select(Individual, func.count(Sighting.id), func.min(Image.captured_at), func.max(Image.captured_at))
                .outerjoin(Sighting, (Sighting.individual_id == Individual.id) & (Sighting.status == "active"))
                .outerjoin(Image, Sighting.image_id == Image.id)
                .where(Individual.merged_into_id.is_(None))
                .group_by(Individual.id)
                .order_by(Individual.species, Individual.species_seq)
            )
            if species:
                query = query.where(Individual.species == species)
            return [
                {"id": ind.id, "code": ind.code, "species": ind.species, "name": ind.name, "sightings": n,
                 "first_seen": _iso(first), "last_seen": _iso(last)}
                for ind, n, first, last in session.execute(query).all()
            ]

    def species(self) -> list[str]:
        with self._sessions() as session:
            return list(session.scalars(select(Image.species).distinct().order_by(Image.species)))

    def stats(self) -> dict[str, int]:
        with self._sessions() as session:
            def count(model: Any, *where: Any) -> int:
                return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

            return {
                "individuals": count(Individual, Individual.merged_into_id.is_(None)),
                "images": count(Image),
                "sightings": count(Sighting, Sighting.status == "active"),
                "decisions": count(Decision),
                "surveys": count(Survey),
                "pending_images": count(Image, Image.status == "pending"),
            }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None
