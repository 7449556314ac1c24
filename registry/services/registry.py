"""The registry facade: the one object the CLI (and later the HTTP API) talks to.

Write order, so SQL and Qdrant never disagree after a crash: (1) local features are cached (keyed by
content, harmless if orphaned); (2) one SQL transaction writes the image as `pending` with its sighting and
decision; (3) the vectors are upserted with the individual in their payload; (4) the image is marked
`indexed`. A crash after (2) leaves a pending image that `resume_pending()` (run before every ingest)
re-indexes from its file; a crash before (2) leaves nothing in SQL, and re-running the same ingest redoes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from registry.decide.calibration import CalibrationError, Calibrations, LabelledPair, LearnedFusion, fit_calibrations
from registry.decide.scoring import (
    CalibratedFusionScorer,
    CandidateScore,
    LocalMatchScorer,
    Outcome,
    Scorer,
    decide,
    rank_individuals,
)
from registry.ingest.sources import ManifestRow, RowProblem, read_source
from registry.matching.embedders import TorchEmbedder
from registry.matching.imaging import ImageError, sha256_of_file
from registry.matching.pipeline import Described, Pipeline
from registry.settings import Settings
from registry.store import crashpoints, migrate
from registry.store.catalog import Catalog, CatalogError
from registry.store.feature_store import FeatureStore
from registry.store.locking import RegistryLock
from registry.store.tables import Embedder, Image
from registry.store.vector_index import VectorIndex, VectorPoint, collection_name

log = logging.getLogger(__name__)


class RegistryNotInitialisedError(RuntimeError):
    pass


@dataclass
class Identification:
    """The answer for one query photo, and what was recorded (if anything)."""

    path: str
    species: str
    outcome: Outcome
    decision_id: int | None = None
    image_id: int | None = None
    individual_code: str | None = None  # the matched or newly created individual (when recorded)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.path,
            "species": self.species,
            "decision": self.outcome.outcome,
            "individual": self.individual_code,
            "score": self.outcome.score,
            "threshold": self.outcome.threshold,
            "decision_id": self.decision_id,
            "candidates": [{"individual": c.code, "score": c.score, "best_image_id": c.best_image_id}
                           for c in self.outcome.ranked[:10]],
        }


@dataclass
class IngestReport:
    manifest: str
    mode: str
    survey: str
    added: int = 0
    already_present: int = 0
    resumed: int = 0
    matched: int = 0
    new_individuals: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest, "mode": self.mode, "survey": self.survey, "added": self.added,
            "already_present": self.already_present, "resumed_pending": self.resumed,
            "matched": self.matched, "new_individuals": self.new_individuals,
            "skipped": len(self.problems), "problems": [str(p) for p in self.problems],
            "warnings": self.warnings,
        }


class Registry:
    def __init__(self, settings: Settings, pipeline: Pipeline | None = None, lock_wait: float = 0.0) -> None:
        self.settings = settings
        self._lock = RegistryLock(settings.data_dir, exclusive=settings.needs_exclusive_lock)
        self._lock.acquire(wait=lock_wait)
        try:
            self.catalog = Catalog(settings.sqlalchemy_url)
            current = migrate.current_revision(self.catalog.engine)
            if current is None:
                raise RegistryNotInitialisedError(
                    f"no registry catalog at {settings.sqlalchemy_url}: run `registry init` first")
            if current != migrate.head_revision(self.catalog.engine):
                raise RegistryNotInitialisedError(
                    f"catalog is at schema revision {current}; run `registry init` to upgrade it")
            if settings.uses_embedded_qdrant:
                self.index = VectorIndex(path=settings.qdrant_path)
            else:
                self.index = VectorIndex(url=settings.qdrant_url, api_key=settings.qdrant_api_key)
            self._pipeline = pipeline
            self._collections: dict[str, str] | None = None
            self._scorer: Scorer | None = None
            self._features: FeatureStore | None = None
        except BaseException:
            self._lock.release()
            raise

    # --- lifecycle -------------------------------------------------------------------------------------
    @classmethod
    def init(cls, settings: Settings) -> None:
        """Create or upgrade a registry: run the migrations, store the settings (profile included)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        lock = RegistryLock(settings.data_dir)
        lock.acquire()
        try:
            catalog = Catalog(settings.sqlalchemy_url)
            try:
                migrate.upgrade(catalog.engine)
            finally:
                catalog.close()
            settings.save()
        finally:
            lock.release()

    def close(self) -> None:
        try:
            self.index.close()
            self.catalog.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- models and their storage ----------------------------------------------------------------------
    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self.settings)
        return self._pipeline

    @property
    def features(self) -> FeatureStore:
        if self._features is None:
            self._features = FeatureStore(self.settings.features_dir, self.pipeline.local.version)
        return self._features

    def _register_embedder(self, embedder: TorchEmbedder) -> str:
        """The collection of this embedder version, registered in the `embedders` table (one version only)."""
        name = collection_name(embedder.version)
        with self.catalog.transaction() as session:
            row = session.scalar(select(Embedder).where(Embedder.name == embedder.name,
                                                        Embedder.version == embedder.version))
            if row is None:
                others = list(session.scalars(select(Embedder).where(Embedder.name == embedder.name)))
                if others:
                    raise CatalogError(
                        f"this registry's vectors were made by {embedder.name} version "
                        f"{others[0].version}, but version {embedder.version} is loaded now; "
                        "refusing to mix vectors of two model versions (use the original weights)")
                session.add(Embedder(name=embedder.name, version=embedder.version, dimension=embedder.dimension,
                                     weights_sha256=embedder.weights_sha256, collection=name))
        self.index.ensure_collection(name, embedder.dimension)
        return name

    @property
    def collections(self) -> dict[str, str]:
        """Embedder name -> its Qdrant collection, one per global embedder of the profile."""
        if self._collections is None:
            self._collections = {e.name: self._register_embedder(e) for e in self.pipeline.embedders}
        return self._collections

    @property
    def scorer(self) -> Scorer:
        """Calibrated fusion once `calibrate()` has fitted this pipeline's matchers, raw match counts before."""
        if self._scorer is None:
            pipeline, settings = self.pipeline, self.settings
            calibrations = self.catalog.load_calibrations(pipeline.versions)
            if calibrations.covers(pipeline.matcher_names):
                complementary = pipeline.complementary.name if pipeline.complementary else None
                thresholds = {sp: settings.threshold_for(sp) for sp in settings.species_threshold_offsets}
                self._scorer = CalibratedFusionScorer(
                    calibrations, pipeline.primary.name, pipeline.local.name, complementary, settings.alpha,
                    thresholds, settings.match_threshold,
                    learned=settings.uses_learned_fusion and calibrations.learned is not None)
            else:
                self._scorer = LocalMatchScorer(pipeline.local.name, settings.uncalibrated_threshold)
        return self._scorer

    def _describe(self, paths: list[Path], species: list[str], viewpoints: list[str | None],
                  ) -> list[Described | ImageError]:
        """Load and describe photos as one batch; a photo that fails becomes its ImageError."""
        loaded = self.pipeline.load_many(paths, species, viewpoints)
        good = [im for im in loaded if not isinstance(im, ImageError)]
        described = iter(self.pipeline.describe(good)) if good else iter(())
        return [im if isinstance(im, ImageError) else next(described) for im in loaded]

    def _candidate_features(self, image_ids: list[int]) -> dict[int, Any]:
        """Cached local features of candidate images (recomputed from the file only if the cache lost them)."""
        with self.catalog.transaction() as session:
            rows = session.execute(select(Image.id, Image.sha256, Image.path, Image.species, Image.viewpoint)
                                   .where(Image.id.in_(image_ids))).all()
        out = {}
        for image_id, sha, path, species, viewpoint in rows:
            features = self.features.get(sha)
            if features is None:
                try:
                    image = self.pipeline.load(Path(path), species, viewpoint)
                except ImageError as exc:
                    log.warning("candidate image %s has no cached features and cannot be read: %s",
                                image_id, exc)
                    continue
                features = self.pipeline.local.extract([image])[0]
                self.features.put(sha, features)
            out[image_id] = features
        return out

    def _global_similarities(self, vectors: dict[str, np.ndarray], image_ids: list[int],
                             skip: str | None = None) -> dict[str, dict[int, float]]:
        """Cosine similarity of a query's vectors to stored images, per embedder (vectors are unit length)."""
        out: dict[str, dict[int, float]] = {}
        for name, collection in self.collections.items():
            if name == skip:
                continue
            stored = self.index.vectors(collection, image_ids)
            out[name] = {i: float(np.dot(vectors[name], v)) for i, v in stored.items()}
        return out

    # --- identification --------------------------------------------------------------------------------
    def candidates(self, described: Described, species: str, viewpoint: str | None,
                   exclude: tuple[int, ...] = ()) -> list[CandidateScore]:
        """Retrieve by ANN on the primary embedding, shortlist the best individuals, and score every shortlisted
        image with every matcher (raw scores; calibration and fusion are the scorer's job)."""
        settings, pipeline = self.settings, self.pipeline
        primary = pipeline.primary.name
        hits = self.index.search(self.collections[primary], described.vectors[primary], settings.ann_top_k,
                                 species, viewpoint, exclude_image_ids=exclude)
        per_individual: dict[int, list] = {}
        for hit in hits:  # keep ANN order: the most similar individuals and their most similar images
            if hit.individual_id is None:
                continue
            images = per_individual.setdefault(hit.individual_id, [])
            if len(per_individual) <= settings.rerank_individuals and \
                    len(images) < settings.rerank_images_per_individual:
                images.append(hit)
        shortlisted = [h for hs in per_individual.values() for h in hs]
        features = self._candidate_features([h.image_id for h in shortlisted])
        shortlisted = [h for h in shortlisted if h.image_id in features]
        image_ids = [h.image_id for h in shortlisted]
        others = self._global_similarities(described.vectors, image_ids, skip=primary)
        local_scores = pipeline.local.scores(described.local, [features[i] for i in image_ids])
        candidates = []
        for hit, local_score in zip(shortlisted, local_scores, strict=True):
            raw = {primary: hit.score, **{name: sims[hit.image_id] for name, sims in others.items()},
                   pipeline.local.name: local_score}
            candidates.append(CandidateScore(hit.image_id, int(hit.individual_id), raw))  # type: ignore[arg-type]
        return candidates

    def judge(self, candidates: list[CandidateScore], species: str) -> Outcome:
        """Score candidates (calibrate + fuse), rank individuals by their best image, apply the open-set rule."""
        for candidate in candidates:
            self.scorer.score(candidate, species)
        with self.catalog.transaction() as session:
            codes = self.catalog.codes(session, {c.individual_id for c in candidates})
        return decide(rank_individuals(candidates, codes), self.scorer.threshold_for(species))

    def _match(self, described: Described, species: str, viewpoint: str | None,
               exclude: tuple[int, ...] = ()) -> Outcome:
        return self.judge(self.candidates(described, species, viewpoint, exclude), species)

    def identify(self, path: Path, species: str, viewpoint: str | None = None, record: bool = False,
                 survey: str | None = None, captured_at: Any = None, latitude: float | None = None,
                 longitude: float | None = None) -> Identification:
        """Identify one photo; with `record`, store the decision as a sighting (or a new individual)."""
        path = Path(path)
        row = ManifestRow(0, path, species, None, viewpoint, captured_at, latitude, longitude)
        sha = sha256_of_file(path)
        with self.catalog.transaction() as session:
            known = self.catalog.image_by_sha(session, sha)
            exclude = (known.id,) if known is not None else ()
        if record and known is not None:
            raise CatalogError(f"{path}: this photo is already in the registry as image {known.id} ({known.path})")
        described = self._describe([path], [species], [viewpoint])[0]
        if isinstance(described, ImageError):
            raise described
        if not record:
            return Identification(str(path), species, self._match(described, species, viewpoint, exclude))
        return self._identify_and_record(row, sha, described, survey)

    def _identify_and_record(self, row: ManifestRow, sha: str, described: Described,
                             survey: str | None) -> Identification:
        outcome = self._match(described, row.species, row.viewpoint)
        self.features.put(sha, described.local)
        crashpoints.reached("after-features")
        with self.catalog.transaction() as session:
            image = self._add_image(session, row, sha, described, survey)
            decision = self.catalog.add_decision(
                session, image_id=image.id, outcome=outcome.outcome, individual_id=outcome.individual_id,
                score=outcome.score, threshold=outcome.threshold,
                candidates=[c.to_json() for c in outcome.ranked[:20]], profile=self.pipeline.profile,
                model_versions={**self.pipeline.versions, "scorer": self.scorer.name})
            if outcome.outcome == "match":
                individual = self.catalog.resolve(session, outcome.ranked[0].code)
            else:
                individual = self.catalog.new_individual(session, row.species, decision=decision)
            decision.individual_id = individual.id
            self.catalog.add_sighting(session, image, individual, "automatic", decision)
            image_id, individual_id, code, survey_id = image.id, individual.id, individual.code, image.survey_id
            decision_id = decision.id
        self._index(image_id, described, individual_id, row, survey_id)
        return Identification(str(row.image), row.species, outcome, decision_id, image_id, code)

    def _add_image(self, session: Any, row: ManifestRow, sha: str, described: Described,
                   survey: str | None) -> Image:
        survey_row = self.catalog.survey(session, survey) if survey else None
        width, height = described.local.image_size
        return self.catalog.add_image(
            session, sha256=sha, path=str(row.image.resolve()), species=row.species, viewpoint=row.viewpoint,
            captured_at=row.captured_at, latitude=row.latitude, longitude=row.longitude,
            survey_id=survey_row.id if survey_row else None, width=width, height=height)

    def _index(self, image_id: int, described: Described, individual_id: int, row: ManifestRow,
               survey_id: int | None) -> None:
        self._index_many([(image_id, described, individual_id, row, survey_id)])

    def _index_many(self, items: list[tuple[int, Described, int, ManifestRow, int | None]]) -> None:
        """Upsert vectors (one call per collection), then mark the images indexed: the last step of a write."""
        crashpoints.reached("after-sql")
        for position, (name, collection) in enumerate(self.collections.items()):
            if position:
                crashpoints.reached("between-collections")
            self.index.upsert(collection, [VectorPoint(image_id, described.vectors[name], individual_id,
                                                       row.species, row.viewpoint, survey_id)
                                           for image_id, described, individual_id, row, survey_id in items])
        crashpoints.reached("after-vectors")
        self.catalog.mark_indexed([item[0] for item in items])
        crashpoints.reached("after-indexed")

    def _record_references(self, batch: list[tuple[ManifestRow, str, Described]], survey: str | None) -> None:
        """Record a batch of labelled photos: one SQL transaction, one upsert per collection."""
        for _, sha, described in batch:
            self.features.put(sha, described.local)
        crashpoints.reached("after-features")
        written = []
        with self.catalog.transaction() as session:
            for row, sha, described in batch:
                image = self._add_image(session, row, sha, described, survey)
                individual = self.catalog.individual_by_name(session, row.species, row.identity)  # type: ignore[arg-type]
                if individual is None:
                    individual = self.catalog.new_individual(session, row.species, name=row.identity)
                elif individual.merged_into_id is not None:
                    individual = self.catalog.resolve(session, individual.code)
                self.catalog.add_sighting(session, image, individual, "reference")
                written.append((image.id, described, individual.id, row, image.survey_id))
        self._index_many(written)

    # --- calibration -----------------------------------------------------------------------------------
    def sample_calibration_pairs(self, per_class: int, species: str | None = None, seed: int = 0,
                                 ) -> list[LabelledPair]:
        """Balanced labelled pairs per species, drawn the way queries meet candidates.

        Each sampled image is used as a query against the vector index: its most similar images of other
        individuals are the negatives (the hard ones the query path really reranks), and its own individual's
        images found by retrieval, or drawn at random when retrieval misses them, are the positives.
        An image is never paired with itself, and a pair is used once.
        """
        rng = np.random.default_rng(seed)
        by_species: dict[str, list[dict[str, Any]]] = {}
        for item in self.catalog.labelled_images(species):
            by_species.setdefault(item["species"], []).append(item)
        pairs: list[LabelledPair] = []
        for sp, items in sorted(by_species.items()):
            pairs += self._sample_species_pairs(sp, items, per_class, rng)
        return pairs

    def _sample_species_pairs(self, species: str, items: list[dict[str, Any]], per_class: int,
                              rng: np.random.Generator) -> list[LabelledPair]:
        collection = self.collections[self.pipeline.primary.name]
        individual_of = {i["image_id"]: i["individual_id"] for i in items}
        images_of: dict[int, list[int]] = {}
        for item in items:
            images_of.setdefault(item["individual_id"], []).append(item["image_id"])
        positives: list[LabelledPair] = []
        negatives: list[LabelledPair] = []
        used: set[tuple[int, int]] = set()

        def add(query: int, other: int) -> None:
            key = (min(query, other), max(query, other))
            if query != other and key not in used:
                used.add(key)
                same = individual_of[query] == individual_of[other]
                (positives if same else negatives).append(LabelledPair(query, other, species, same))

        for position in rng.permutation(len(items)):
            if len(positives) >= per_class and len(negatives) >= per_class:
                break
            query = items[int(position)]
            query_id, individual = query["image_id"], query["individual_id"]
            vector = self.index.vectors(collection, [query_id]).get(query_id)
            if vector is None:
                continue
            hits = self.index.search(collection, vector, self.settings.ann_top_k, species, query["viewpoint"],
                                     exclude_image_ids=(query_id,))
            hits = [h.image_id for h in hits if h.image_id in individual_of]
            for other in [i for i in hits if individual_of[i] == individual][:2]:
                add(query_id, other)
            mates = [i for i in images_of[individual] if i != query_id]
            if mates:
                add(query_id, int(rng.choice(mates)))
            for other in [i for i in hits if individual_of[i] != individual][:3]:
                add(query_id, other)
        # Balanced classes: calibrated scores then read as probabilities under even odds, which is what the
        # paper's fixed threshold assumes (an excess of negatives would drag every probability down).
        balanced = min(per_class, len(positives), len(negatives))
        return positives[:balanced] + negatives[:balanced]

    def score_pairs(self, pairs: list[LabelledPair], progress: Callable[[int], None] | None = None) -> None:
        """Fill each pair's raw score for every matcher from stored vectors and cached local features."""
        by_query: dict[int, list[LabelledPair]] = {}
        for pair in pairs:
            by_query.setdefault(pair.query_image_id, []).append(pair)
        local = self.pipeline.local
        for query_id, group in by_query.items():
            ids = [query_id, *(p.candidate_image_id for p in group)]
            features = self._candidate_features(ids)
            vectors = {name: self.index.vectors(collection, ids) for name, collection in self.collections.items()}
            local_scores = local.scores(features[query_id], [features[p.candidate_image_id] for p in group])
            for pair, local_score in zip(group, local_scores, strict=True):
                pair.raw = {name: float(np.dot(v[query_id], v[pair.candidate_image_id])) for name, v in vectors.items()}
                pair.raw[local.name] = local_score
            if progress:
                progress(len(group))

    def calibrate(self, per_class: int | None = None, species: str | None = None, seed: int = 0,
                  learned: bool = True, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Fit and store isotonic calibrators per matcher (per species where there are enough pairs, pooled
        otherwise) and the learned fusion; decisions use them from now on."""
        per_class = per_class or self.settings.calibration_pairs
        pairs = self.sample_calibration_pairs(per_class, species, seed)
        positives = sum(p.same for p in pairs)
        if positives < 2 or len(pairs) - positives < 2:
            raise CalibrationError(
                f"too few labelled pairs to calibrate ({positives} same-individual, {len(pairs) - positives} "
                "different): ingest reference photos with identities (at least two photos of some individuals)")
        self.score_pairs(pairs, progress)
        matchers = self.pipeline.matcher_names
        fitted = fit_calibrations(pairs, matchers)
        calibrations = Calibrations(fitted)
        fusion = None
        if learned:
            calibrated = np.array([[calibrations.calibrate(m, p.species, p.raw[m]) for m in matchers] for p in pairs])
            fusion = LearnedFusion.fit(matchers, calibrated, np.array([p.same for p in pairs]))
        summary = {
            "versions": self.pipeline.versions, "pairs": len(pairs), "positives": positives,
            "negatives": len(pairs) - positives, "seed": seed,
            "species": sorted({sp for _, sp in fitted if sp is not None}),
            "pooled_only": sorted({p.species for p in pairs} - {sp for _, sp in fitted if sp is not None}),
        }
        self.catalog.save_calibrations(fitted, fusion, len(pairs), summary)
        self._scorer = None
        return {**summary, "calibrators": [f"{m}/{sp or 'pooled'}" for m, sp in fitted],
                "learned_fusion": fusion.to_json() if fusion else None}

    # --- ingestion -------------------------------------------------------------------------------------
    def resume_pending(self) -> int:
        """Index images whose SQL rows were written but whose vectors were not confirmed (a crash)."""
        pending = [i.id for i in self.catalog.pending_images()]
        return len(self.reindex(pending)[0]) if pending else 0

    def reindex(self, image_ids: list[int]) -> tuple[list[int], list[str]]:
        """Describe images again from their files and write their vectors (and cached features), then mark
        them indexed. Returns the images done and the problems (a file gone or damaged: it stays pending)."""
        self.catalog.mark_pending(image_ids)
        states = self.catalog.image_states(image_ids)
        done, problems = [], []
        for image_id, state in states.items():
            described = self._describe([Path(state["path"])], [state["species"]], [state["viewpoint"]])[0]
            if isinstance(described, ImageError):
                problems.append(f"image {image_id} cannot be re-indexed, it stays pending: {described}")
                log.warning(problems[-1])
                continue
            self.features.put(state["sha256"], described.local)
            row = ManifestRow(0, Path(state["path"]), state["species"], None, state["viewpoint"])
            self._index(image_id, described, state["individual_id"], row, state["survey_id"])
            done.append(image_id)
        return done, problems

    def ingest(
        self,
        manifest_path: Path,
        survey: str,
        mode: str = "reference",
        default_species: str | None = None,
        progress: Callable[[int], None] | None = None,
        layout: str = "auto",
        on_identified: Callable[[ManifestRow, Identification], None] | None = None,
        allowed_root: Path | None = None,
    ) -> IngestReport:
        """Add a season. Reference: manifest identities are trusted labels. Identify: each photo is identified
        and recorded in time order, so an animal's second photo finds the individual its first one created.

        `manifest_path` is a CSV (registry or AnimalCLEF format) or a folder (`layout`: one sub-folder per
        identity, or a plain folder of photos). Memory stays flat with the season's size: photos stream through
        in batches, and decisions go to `on_identified` instead of accumulating in the report.
        """
        if mode not in ("reference", "identify"):
            raise ValueError(f"unknown ingest mode {mode!r} (reference or identify)")
        manifest = read_source(manifest_path, default_species, layout)
        report = IngestReport(str(manifest_path), mode, survey, problems=list(manifest.problems),
                              warnings=list(manifest.warnings))
        report.resumed = self.resume_pending()
        rows = manifest.rows
        if allowed_root is not None:  # photos named by a remote caller must stay inside the import folder
            root = Path(allowed_root).resolve()
            outside = [r for r in rows if not r.image.resolve().is_relative_to(root)]
            report.problems += [RowProblem(str(manifest_path), r.line, "photo is outside the import folder")
                                for r in outside]
            rows = [r for r in rows if r.image.resolve().is_relative_to(root)]
        if mode == "reference":
            missing = [r for r in rows if r.identity is None]
            report.problems += [RowProblem(str(manifest_path), r.line, "no identity (reference mode needs one)")
                                for r in missing]
            rows = [r for r in rows if r.identity is not None]
        else:  # time order, then file order
            rows = sorted(rows, key=lambda r: (r.captured_at is None, r.captured_at or 0, r.line))

        batch_size = max(1, self.settings.batch_size)
        seen_in_run: set[str] = set()
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            hashed: list[tuple[ManifestRow, str]] = []
            for row in batch:
                try:
                    hashed.append((row, sha256_of_file(row.image)))
                except ImageError as exc:
                    report.problems.append(RowProblem(str(manifest_path), row.line, str(exc)))
            catalogued = self.catalog.known_sha256s([sha for _, sha in hashed])
            todo: list[tuple[ManifestRow, str]] = []
            for row, sha in hashed:
                if sha in catalogued or sha in seen_in_run:
                    report.already_present += 1
                    continue
                seen_in_run.add(sha)
                todo.append((row, sha))
            described_all = self._describe([r.image for r, _ in todo], [r.species for r, _ in todo],
                                           [r.viewpoint for r, _ in todo])
            references: list[tuple[ManifestRow, str, Described]] = []
            for (row, sha), described in zip(todo, described_all, strict=True):
                if isinstance(described, ImageError):
                    report.problems.append(RowProblem(str(manifest_path), row.line, str(described)))
                    continue
                if mode == "reference":
                    references.append((row, sha, described))
                else:
                    identification = self._identify_and_record(row, sha, described, survey)
                    if identification.outcome.outcome == "match":
                        report.matched += 1
                    else:
                        report.new_individuals += 1
                    if on_identified:
                        on_identified(row, identification)
                report.added += 1
            if references:
                self._record_references(references, survey)
            if progress:
                progress(len(batch))
        return report
