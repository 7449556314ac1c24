"""The catalog's tables (SQLAlchemy 2 declarative models). Alembic migrations create them; see migrations/.

Nothing is ever deleted: an individual merged into another keeps its row with `merged_into`, a rejected
sighting keeps its row with `status = 'rejected'`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


SIGHTING_METHODS = ("reference", "automatic", "confirmed", "corrected")
SEXES = ("female", "male", "unknown")
LIFE_STAGES = ("adult", "subadult", "juvenile", "unknown")  # Camtrap DP's lifeStage values
ANNOTATION_STATUSES = ("pending", "indexed")  # pending: SQL row written, vectors not yet confirmed in the index
ANNOTATION_SOURCES = ("whole-image", "manual", "manifest", "megadetector", "camtrap-dp")
WHOLE_IMAGE = "whole"  # the region of an annotation that is the whole photo


class Survey(Base):
    __tablename__ = "surveys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    season: Mapped[str | None] = mapped_column(String(100))
    year: Mapped[int | None] = mapped_column(Integer)
    start_date: Mapped[date | None] = mapped_column(Date)
    end_date: Mapped[date | None] = mapped_column(Date)
    area: Mapped[str | None] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Location(Base):
    """A place photos are taken at (a camera station, a transect point): Camtrap DP's locationID/locationName."""

    __tablename__ = "locations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    time_zone: Mapped[str | None] = mapped_column(String(64))  # IANA zone its cameras' clocks keep
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Deployment(Base):
    """One camera at one location for one operating interval (Camtrap DP's deployment): what a detector's
    effort is counted from in spatial capture-recapture."""

    __tablename__ = "deployments"
    __table_args__ = (CheckConstraint("ended_at IS NULL OR started_at IS NULL OR ended_at >= started_at",
                                      name="ck_deployments_interval"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(200), unique=True)
    location_id: Mapped[int | None] = mapped_column(ForeignKey("locations.id"), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    setup: Mapped[str | None] = mapped_column(Text)  # camera model, height, bait: free text
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    location: Mapped[Location | None] = relationship()


class Species(Base):
    """Each species' code prefix (unique across species, so codes never collide) and its next sequence number."""

    __tablename__ = "species"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    code_prefix: Mapped[str] = mapped_column(String(20), unique=True)
    next_seq: Mapped[int] = mapped_column(Integer, default=1)
    scientific_name: Mapped[str | None] = mapped_column(String(200))  # for Darwin Core and Camtrap DP exports
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Individual(Base):
    __tablename__ = "individuals"
    __table_args__ = (
        UniqueConstraint("species", "species_seq", name="uq_individuals_species_seq"),
        UniqueConstraint("species", "name", name="uq_individuals_species_name"),
        CheckConstraint("sex IN ('female', 'male', 'unknown')", name="ck_individuals_sex"),
        CheckConstraint("life_stage IN ('adult', 'subadult', 'juvenile', 'unknown')", name="ck_individuals_life_stage"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)  # stable public code, e.g. NYA-0007
    species: Mapped[str] = mapped_column(String(100), index=True)
    species_seq: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(200))  # a given name or the label used in a manifest
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by_decision_id: Mapped[int | None] = mapped_column(
        ForeignKey("decisions.id", use_alter=True, name="fk_individuals_created_by_decision")
    )
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"), index=True)
    # set when its last active sighting was reassigned or rejected: kept with its code, never counted, undoable
    retired_at: Mapped[datetime | None] = mapped_column(DateTime)
    # attributes a field team records (edited with `registry edit`, audited, exported as Darwin Core sex/lifeStage)
    sex: Mapped[str] = mapped_column(String(16), default="unknown", server_default="unknown")
    life_stage: Mapped[str] = mapped_column(String(16), default="unknown", server_default="unknown")
    nickname: Mapped[str | None] = mapped_column(String(200))
    alternate_ids: Mapped[list | None] = mapped_column(JSON)  # ids in other catalogues, e.g. ["Wildbook:ZB-12"]
    notes: Mapped[str | None] = mapped_column(Text)


class Image(Base):
    """A photo file, once per content (sha256): where and when it was taken. What is identified in it are its
    annotations (one per animal)."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)  # where the photo was read from (path or URI)
    captured_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    survey_id: Mapped[int | None] = mapped_column(ForeignKey("surveys.id"), index=True)
    location_id: Mapped[int | None] = mapped_column(ForeignKey("locations.id", name="fk_images_location"),
                                                    index=True)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id", name="fk_images_deployment"),
                                                      index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    ingested_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    survey: Mapped[Survey | None] = relationship()
    location: Mapped[Location | None] = relationship()
    deployment: Mapped[Deployment | None] = relationship()


class Event(Base):
    """Photos of one deployment taken within the independence interval (a burst or sequence): Camtrap DP's
    eventID. An event's annotations of one animal are decided together."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(200), unique=True)  # the source's sequence id, or a made one
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Annotation(Base):
    """One animal in one photo: the unit that is embedded, described, indexed (Qdrant point id = annotation id),
    matched, decided and sighted. `region` is "whole" or the normalised box "x,y,w,h" (top-left origin, as
    Camtrap DP and MegaDetector write it), so the same box of the same photo is never added twice."""

    __tablename__ = "annotations"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'indexed')", name="ck_annotations_status"),
        CheckConstraint("source IN ('whole-image', 'manual', 'manifest', 'megadetector', 'camtrap-dp')",
                        name="ck_annotations_source"),
        UniqueConstraint("image_id", "region", name="uq_annotations_image_region"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    species: Mapped[str] = mapped_column(String(100), index=True)
    viewpoint: Mapped[str | None] = mapped_column(String(50))
    region: Mapped[str] = mapped_column(String(64), default=WHOLE_IMAGE)
    bbox_x: Mapped[float | None] = mapped_column(Float)
    bbox_y: Mapped[float | None] = mapped_column(Float)
    bbox_w: Mapped[float | None] = mapped_column(Float)
    bbox_h: Mapped[float | None] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)  # the detector's, when a detector drew the box
    source: Mapped[str] = mapped_column(String(16), default="whole-image")
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    image: Mapped[Image] = relationship()
    event: Mapped[Event | None] = relationship()

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """The normalised box, or None for the whole photo."""
        if self.bbox_w is None:
            return None
        return (self.bbox_x, self.bbox_y, self.bbox_w, self.bbox_h)  # type: ignore[return-value]


def region_of(box: tuple[float, float, float, float] | None) -> str:
    """The stored form of a box (4 decimals: well under a pixel of any camera-trap photo)."""
    if box is None:
        return WHOLE_IMAGE
    return ",".join(f"{v:.4f}" for v in box)


class Sighting(Base):
    __tablename__ = "sightings"
    __table_args__ = (
        CheckConstraint(
            "method IN ('reference', 'automatic', 'confirmed', 'corrected')", name="ck_sightings_method"
        ),
        CheckConstraint("status IN ('active', 'rejected')", name="ck_sightings_status"),
        Index("ix_sightings_individual_status", "individual_id", "status"),
        UniqueConstraint("annotation_id", name="uq_sightings_annotation"),  # one animal, one sighting
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", name="fk_sightings_annotation"))
    individual_id: Mapped[int] = mapped_column(ForeignKey("individuals.id"))
    method: Mapped[str] = mapped_column(String(16))
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    annotation: Mapped[Annotation] = relationship()
    individual: Mapped[Individual] = relationship()


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (CheckConstraint("outcome IN ('match', 'new')", name="ck_decisions_outcome"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # the annotation decided (for a joint decision over an event, the first of the animal's annotations; each of
    # them has a sighting pointing here)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", name="fk_decisions_annotation"),
                                               index=True)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", name="fk_decisions_event"), index=True)
    outcome: Mapped[str] = mapped_column(String(8))
    individual_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"), index=True)
    score: Mapped[float | None] = mapped_column(Float)  # fused score of the best candidate individual
    # how close it came to going the other way (decide.scoring.decision_margin): the review queue's order
    margin: Mapped[float | None] = mapped_column(Float, index=True)
    margin_reason: Mapped[str | None] = mapped_column(String(200))
    threshold: Mapped[float] = mapped_column(Float)
    candidates: Mapped[list] = mapped_column(JSON)  # ranked individuals, each with per-matcher scores
    profile: Mapped[str] = mapped_column(String(50))
    model_versions: Mapped[dict] = mapped_column(JSON)
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("decision_policies.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Embedder(Base):
    __tablename__ = "embedders"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_embedders_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(200))
    dimension: Mapped[int] = mapped_column(Integer)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    collection: Mapped[str] = mapped_column(String(200), unique=True)
    # a version trained by `registry train` (or installed from another registry): what it was trained from,
    # its checkpoint (relative to the data directory) and its card (training set, settings, validation)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("embedders.id"))
    weights_path: Mapped[str | None] = mapped_column(String(500))
    card: Mapped[dict | None] = mapped_column(JSON)
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime)  # its collection was deleted (`vectors prune`)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Calibration(Base):
    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    matcher: Mapped[str] = mapped_column(String(100))
    species: Mapped[str | None] = mapped_column(String(100))  # None: pooled over species
    model: Mapped[dict] = mapped_column(JSON)  # the fitted calibration (e.g. isotonic breakpoints)
    n_pairs: Mapped[int] = mapped_column(Integer)
    inputs_summary: Mapped[dict | None] = mapped_column(JSON)
    batch: Mapped[int] = mapped_column(Integer, default=1, index=True)  # calibrators fitted together
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)



class DecisionPolicyRow(Base):
    """One version of the decision policy: everything that turns raw matcher scores into a decision. The newest
    row is in force for every machine that shares the catalog; each decision names the version it used."""

    __tablename__ = "decision_policies"
    __table_args__ = (
        CheckConstraint("fusion IN ('wildfusion', 'learned', 'verifier')", name="ck_decision_policies_fusion"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile: Mapped[str] = mapped_column(String(50))
    model_versions: Mapped[dict] = mapped_column(JSON)  # matcher -> version the calibrations were fitted for
    matcher_settings: Mapped[dict] = mapped_column(JSON)  # local-matcher settings that change raw scores
    # embedder name -> trained checkpoint (relative to the data directory) used instead of the base weights
    embedder_weights: Mapped[dict | None] = mapped_column(JSON)
    calibration_batches: Mapped[dict] = mapped_column(JSON)  # species (or "*": every other) -> batch
    fusion: Mapped[str] = mapped_column(String(16))
    alpha: Mapped[float] = mapped_column(Float)
    default_threshold: Mapped[float] = mapped_column(Float)
    thresholds: Mapped[dict] = mapped_column(JSON)  # species -> tau
    uncalibrated_threshold: Mapped[float] = mapped_column(Float)
    expected: Mapped[dict | None] = mapped_column(JSON)  # what the change measured (before/after scores)
    created_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("decision_policies.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Change(Base):
    """The audit trail of every curation (confirm, reassign, reject, merge, split, attribute edit, undo): who,
    when, why, and the rows before and after, so that `registry undo` can restore exactly what was there."""

    __tablename__ = "changes"
    __table_args__ = (
        CheckConstraint("kind IN ('confirm', 'reassign', 'reject', 'merge', 'split', 'undo', 'edit')",
                        name="ck_changes_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text)  # one readable line: "merged NYA-0004 into NYA-0002"
    before: Mapped[dict] = mapped_column(JSON)
    after: Mapped[dict] = mapped_column(JSON)
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("changes.id"))
    undone_by_id: Mapped[int | None] = mapped_column(ForeignKey("changes.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class ApiToken(Base):
    """Bearer tokens of the HTTP API, stored as SHA-256 hashes (the token itself is shown once)."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("scope IN ('read', 'review', 'admin')", name="ck_api_tokens_scope"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default="admin")  # read < review < admin
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class DistinctPair(Base):
    """Two individuals a person declared different animals ("not the same animal" on a possible duplicate):
    the duplicates check never proposes the pair again. Stored with the lower id first."""

    __tablename__ = "distinct_pairs"
    __table_args__ = (
        UniqueConstraint("first_id", "second_id", name="uq_distinct_pairs"),
        CheckConstraint("first_id < second_id", name="ck_distinct_pairs_order"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_id: Mapped[int] = mapped_column(ForeignKey("individuals.id"), index=True)
    second_id: Mapped[int] = mapped_column(ForeignKey("individuals.id"), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class WebSession(Base):
    """A browser signed in to the workspace with a token: only the cookie key's SHA-256 is stored, with the
    session's CSRF secret; the session ends with its token."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class Job(Base):
    """A long-running request (an ingest started through the API) with its progress and final report."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="ck_jobs_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
