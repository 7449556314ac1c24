"""Identification: from a described photo to ranked candidate individuals and an open-set decision, and
recording that decision as a sighting or a new individual.

Retrieval is Qdrant's grouped query over the primary embedder's collection (the best `rerank_individuals`
individuals, each with its most similar photos); every shortlisted photo is scored by every matcher (raw
scores); the decision policy's scorer calibrates, fuses and applies the open-set rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from registry.decide.scoring import CandidateScore, IndividualScore, Outcome, Scorer, decide, rank_individuals
from registry.matching.imaging import ImageError, sha256_of_file
from registry.matching.local_matcher import LocalFeatures, lnbnn_votes
from registry.matching.pipeline import Described
from registry.services.recording import PhotoRow
from registry.settings import LocalMatcherSettings
from registry.store import crashpoints
from registry.store.catalog import CatalogError
from registry.store.tables import Image

if TYPE_CHECKING:
    from registry.services.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class Identification:
    """The answer for one query photo, and what was recorded (if anything)."""

    path: str
    species: str
    outcome: Outcome
    decision_id: int | None = None
    image_id: int | None = None
    individual_code: str | None = None  # the matched or newly created individual (when recorded)
    problems: list[str] = field(default_factory=list)  # candidates that could not be scored, and why

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.path,
            "species": self.species,
            "decision": self.outcome.outcome,
            "individual": self.individual_code,
            "score": self.outcome.score,
            "threshold": self.outcome.threshold,
            "policy_version": self.outcome.policy_version,
            "scorer": self.outcome.scorer,
            "decision_id": self.decision_id,
            "candidates": [{"individual": c.code, "score": c.score, "best_image_id": c.best_image_id}
                           for c in self.outcome.ranked[:10]],
            "problems": self.problems,
        }


class Identifier:
    """Describe, retrieve, score and decide for one open registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._pool: DescriptorPool | None = None

    # --- describing photos -------------------------------------------------------------------------------
    def describe(self, paths: list[Path], species: list[str], viewpoints: list[str | None],
                 ) -> list[Described | ImageError]:
        """Load and describe photos as one batch; a photo that fails becomes its ImageError."""
        pipeline = self.registry.pipeline
        loaded = pipeline.load_many(paths, species, viewpoints)
        good = [im for im in loaded if not isinstance(im, ImageError)]
        described = iter(pipeline.describe(good)) if good else iter(())
        return [im if isinstance(im, ImageError) else next(described) for im in loaded]

    def candidate_features(self, image_ids: list[int], problems: list[str] | None = None,
                           ) -> dict[int, LocalFeatures]:
        """Cached local features of candidate images, recomputed from the file only if the cache lost them. A
        candidate whose file is missing too is left out and reported in `problems`."""
        registry = self.registry
        with registry.catalog.transaction() as session:
            rows = session.execute(select(Image.id, Image.sha256, Image.path, Image.species, Image.viewpoint)
                                   .where(Image.id.in_(image_ids))).all()
        out = {}
        for image_id, sha, stored, species, viewpoint in rows:
            features = registry.features.get(sha)
            if features is None:
                path = registry.catalog.paths.local(stored)
                try:
                    image = registry.pipeline.load(path, species, viewpoint)
                except ImageError as exc:
                    message = (f"candidate image {image_id} was not compared: its local features are not cached "
                               f"and its photo cannot be read ({exc}); run `registry relocate` or `registry doctor`")
                    log.warning(message)
                    if problems is not None:
                        problems.append(message)
                    continue
                features = registry.pipeline.local.extract([image])[0]
                registry.features.put(sha, features)
            out[image_id] = features
        return out

    def global_similarities(self, vectors: dict[str, np.ndarray], image_ids: list[int],
                            skip: str | None = None) -> dict[str, dict[int, float]]:
        """Cosine similarity of a query's vectors to stored images, per embedder (vectors are unit length)."""
        out: dict[str, dict[int, float]] = {}
        for name, collection in self.registry.collections.items():
            if name == skip:
                continue
            stored = self.registry.index.vectors(collection, image_ids)
            out[name] = {i: float(np.dot(vectors[name], v)) for i, v in stored.items()}
        return out

    # --- identification ----------------------------------------------------------------------------------
    def candidates(self, described: Described, species: str, viewpoint: str | None,
                   exclude: tuple[int, ...] = (), problems: list[str] | None = None,
                   exclude_individuals: tuple[int, ...] = ()) -> list[CandidateScore]:
        """The best individuals by the primary embedding (grouped query), each shortlisted photo scored by every
        matcher (raw scores; calibration and fusion are the scorer's job). `exclude`: image ids never to
        return (the query's own photo when it is already in the registry)."""
        registry = self.registry
        settings, pipeline = registry.settings, registry.pipeline
        local = settings.local.for_species(species)
        primary = pipeline.primary.name
        hits = registry.index.search_individuals(
            registry.collections[primary], described.vectors[primary], settings.rerank_individuals,
            settings.rerank_images_per_individual, species, viewpoint, exclude_image_ids=exclude,
            exclude_individuals=exclude_individuals)
        shortlist = {h.image_id: int(h.individual_id) for h in hits}  # type: ignore[arg-type]
        features = self.candidate_features(list(shortlist), problems)
        image_ids = [i for i in shortlist if i in features]
        matcher = pipeline.local
        if local.first_pass_keypoints and local.full_rerank_individuals:
            image_ids = self._first_pass(described, image_ids, shortlist, features, local)
        if local.lnbnn_individuals:  # the animals whose keypoints vote best, whatever the global embedding says
            ranking = self.lnbnn_ranking(described, species, viewpoint, exclude, exclude_individuals)
            photos_of = dict(ranking)
            chosen = {shortlist[i] for i in image_ids}
            extra: dict[int, int] = {}
            for individual in chosen:  # already in the full pass: also its best-voted other photos
                others = [p for p in photos_of.get(individual, []) if p not in image_ids]
                extra.update({p: individual for p in others[: max(0, local.lnbnn_photos - 1)]})
            newcomers = [individual for individual, _ in ranking if individual not in chosen]
            for individual in newcomers[: local.lnbnn_individuals]:
                extra.update({p: individual for p in photos_of[individual][: max(1, local.lnbnn_photos)]})
            features.update(self.candidate_features(list(extra), problems))
            shortlist.update(extra)
            image_ids += [i for i in extra if i in features]
        sims = self.global_similarities(described.vectors, image_ids)
        local_scores = matcher.pair_scores(described.local, [features[i] for i in image_ids],
                                           budget=local.max_keypoints)
        candidates = []
        for image_id, scores in zip(image_ids, local_scores, strict=True):
            raw = {**{name: by_image[image_id] for name, by_image in sims.items()}, **scores}
            candidates.append(CandidateScore(image_id, shortlist[image_id], raw))
        return candidates

    def _first_pass(self, described: Described, image_ids: list[int], owner: dict[int, int],
                    features: dict[int, LocalFeatures], local: LocalMatcherSettings) -> list[int]:
        """The shortlisted photos of the `full_rerank_individuals` individuals whose photos match best with the
        strongest `first_pass_keypoints` keypoints: the full budget costs ~5x more per pair, so only they get it."""
        matcher = self.registry.pipeline.local
        if len(set(owner[i] for i in image_ids)) <= local.full_rerank_individuals:
            return image_ids
        budget = local.first_pass_keypoints
        cheap = matcher.scores(matcher.truncated(described.local, budget),
                               [matcher.truncated(features[i], budget) for i in image_ids])
        best: dict[int, float] = {}
        for image_id, score in zip(image_ids, cheap, strict=True):
            best[owner[image_id]] = max(best.get(owner[image_id], -1.0), score)
        ranked = sorted(best, key=lambda individual: (-best[individual], individual))
        keep = set(ranked[: local.full_rerank_individuals])
        return [i for i in image_ids if owner[i] in keep]

    def lnbnn_ranking(self, described: Described, species: str, viewpoint: str | None, exclude: tuple[int, ...],
                      exclude_individuals: tuple[int, ...]) -> list[tuple[int, list[int]]]:
        """Individuals as LNBNN (one-vs-many over every reference descriptor of the species, HotSpotter's
        scoring) ranks them, each by its best-voted photo, with its photos best-voted first."""
        registry = self.registry
        local = registry.settings.local.for_species(species)
        budget = local.first_pass_keypoints or local.max_keypoints
        members = registry.index.candidates_of(registry.collections[registry.pipeline.primary.name], species,
                                               viewpoint, exclude, exclude_individuals)
        pool = self.descriptor_pool.get(members, budget)
        if pool is None:
            return []
        descriptors, image_of = pool
        query = registry.pipeline.local.truncated(described.local, budget).descriptors
        votes = lnbnn_votes(query.astype(np.float32), descriptors, image_of)
        by_individual: dict[int, list[tuple[float, int]]] = {}
        for image_id, vote in votes.items():
            by_individual.setdefault(members[int(image_id)], []).append((-vote, int(image_id)))
        for photos in by_individual.values():
            photos.sort()
        ranked = sorted(by_individual, key=lambda i: (by_individual[i][0][0], i))
        return [(i, [image_id for _, image_id in by_individual[i]]) for i in ranked]

    @property
    def descriptor_pool(self) -> DescriptorPool:
        if self._pool is None:
            self._pool = DescriptorPool(self)
        return self._pool

    def judge(self, candidates: list[CandidateScore], species: str) -> Outcome:
        """Score candidates under the policy in force, rank individuals by their best image, open-set rule."""
        registry = self.registry
        scorer = registry.scorer
        for candidate in candidates:
            scorer.score(candidate, species)
        with registry.catalog.transaction() as session:
            codes = registry.catalog.codes(session, {c.individual_id for c in candidates})
        ranked = rank_individuals(candidates, codes, self.combine_photos(scorer, species))
        outcome = decide(scorer.rerank(ranked, species), scorer.threshold_for(species))
        outcome.policy_version = registry.policy.version
        outcome.scorer = scorer.name
        return outcome

    def rank_stored(self, image_id: int, species: str, viewpoint: str | None, scorer: Scorer,
                    hidden_images: tuple[int, ...], hidden_individuals: tuple[int, ...] = ()) -> list[IndividualScore]:
        """Candidate individuals for a photo already in the registry, from its stored vectors and cached features
        (nothing is described again), with some images and individuals hidden: a simulated query."""
        registry = self.registry
        vectors = {name: registry.index.vectors(collection, [image_id]).get(image_id)
                   for name, collection in registry.collections.items()}
        features = self.candidate_features([image_id]).get(image_id)
        if features is None or any(v is None for v in vectors.values()):
            return []
        candidates = self.candidates(Described(vectors, features), species, viewpoint,  # type: ignore[arg-type]
                                     exclude=hidden_images, exclude_individuals=hidden_individuals)
        for candidate in candidates:
            scorer.score(candidate, species)
        return scorer.rerank(rank_individuals(candidates, {}, self.combine_photos(scorer, species)), species)

    def combine_photos(self, scorer: Scorer, species: str) -> int:
        """How many of an individual's best photos its score combines (calibrated probabilities only)."""
        return self.registry.settings.local.for_species(species).combine_photos if scorer.probabilities else 1

    def match(self, described: Described, species: str, viewpoint: str | None, exclude: tuple[int, ...] = (),
              problems: list[str] | None = None) -> Outcome:
        return self.judge(self.candidates(described, species, viewpoint, exclude, problems), species)

    def identify(self, path: Path, species: str, viewpoint: str | None = None, record: bool = False,
                 survey: str | None = None, captured_at: Any = None, latitude: float | None = None,
                 longitude: float | None = None) -> Identification:
        """Identify one photo; with `record`, store the decision as a sighting (or a new individual). A photo
        already in the registry never matches itself."""
        path = Path(path)
        row = PhotoRow(0, path, species, None, viewpoint, captured_at, latitude, longitude)
        sha = sha256_of_file(path)
        with self.registry.catalog.transaction() as session:
            known = self.registry.catalog.image_by_sha(session, sha)
            exclude = (known.id,) if known is not None else ()
        if record and known is not None:
            raise CatalogError(f"{path.name}: this photo is already in the registry as image {known.id}")
        described = self.describe([path], [species], [viewpoint])[0]
        if isinstance(described, ImageError):
            raise described
        if not record:
            problems: list[str] = []
            outcome = self.match(described, species, viewpoint, exclude, problems)
            return Identification(str(path), species, outcome, problems=problems)
        return self.identify_and_record(row, sha, described, survey)

    def identify_and_record(self, row: PhotoRow, sha: str, described: Described,
                            survey: str | None) -> Identification:
        registry = self.registry
        recorder = registry.recorder
        recorder.resume_pending()
        problems: list[str] = []
        outcome = self.match(described, row.species, row.viewpoint, problems=problems)
        registry.features.put(sha, described.local)
        crashpoints.reached("after-features")
        catalog = registry.catalog
        with catalog.transaction() as session:
            image = recorder.add_image(session, row, sha, described, survey)
            decision = catalog.add_decision(
                session, image_id=image.id, outcome=outcome.outcome, individual_id=outcome.individual_id,
                score=outcome.score, threshold=outcome.threshold,
                candidates=[c.to_json() for c in outcome.ranked[:20]], profile=registry.pipeline.profile,
                model_versions={**registry.pipeline.versions, "scorer": outcome.scorer, "problems": problems},
                policy_id=outcome.policy_version)
            if outcome.outcome == "match":
                individual = catalog.resolve(session, outcome.ranked[0].code)
            else:
                individual = catalog.new_individual(session, row.species, decision=decision)
            decision.individual_id = individual.id
            catalog.add_sighting(session, image, individual, "automatic", decision)
            image_id, individual_id, code, survey_id = image.id, individual.id, individual.code, image.survey_id
            decision_id = decision.id
        recorder.index_many([(image_id, described, individual_id, row, survey_id)])
        return Identification(str(row.image), row.species, outcome, decision_id, image_id, code, problems)


class DescriptorPool:
    """The first-pass descriptors of the registry's photos, kept in memory for LNBNN: each photo's features are
    read from the cache once per process; a query's reference set is assembled from them (exclusions applied)."""

    def __init__(self, identifier: Identifier) -> None:
        self.identifier = identifier
        self._by_image: dict[int, np.ndarray] = {}
        self._budget = 0
        self._last: tuple[tuple[int, ...], np.ndarray, np.ndarray] | None = None

    def get(self, members: dict[int, int], budget: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(descriptors (N, 128) float32, image id of each) for the photos in `members`; None if there are none."""
        if budget != self._budget:
            self._by_image, self._budget, self._last = {}, budget, None
        ids = tuple(sorted(members))
        if self._last is not None and self._last[0] == ids:
            return self._last[1], self._last[2]
        missing = [i for i in ids if i not in self._by_image]
        if missing:
            for image_id, features in self.identifier.candidate_features(missing).items():
                self._by_image[image_id] = features.descriptors[:budget]
        present = [i for i in ids if i in self._by_image and len(self._by_image[i])]
        if not present:
            return None
        descriptors = np.concatenate([self._by_image[i] for i in present]).astype(np.float32)
        image_of = np.concatenate([np.full(len(self._by_image[i]), i, dtype=np.int64) for i in present])
        self._last = (ids, descriptors, image_of)
        return descriptors, image_of
