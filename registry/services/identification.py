"""Identification: from a described photo to ranked candidate individuals and an open-set decision, and
recording that decision as a sighting or a new individual.

Retrieval is Qdrant's grouped query over the primary embedder's collection (the best `rerank_individuals`
individuals, each with its most similar photos); every shortlisted photo is scored by every matcher (raw
scores); the decision policy's scorer calibrates, fuses and applies the open-set rule.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from registry.decide import spacetime
from registry.decide.scoring import (
    CandidateScore,
    IndividualScore,
    Outcome,
    Scorer,
    decide,
    decision_margin,
    rank_individuals,
)
from registry.decide.spacetime import Seen
from registry.matching.imaging import ImageError, sha256_of_file
from registry.matching.local_matcher import AlikedLightGlue, Background, LocalFeatures, lnbnn_votes
from registry.matching.pipeline import Described
from registry.matching.scenery import Scenery, find_scenery
from registry.matching.timing import StageTimes
from registry.services.recording import PhotoRow
from registry.settings import LocalMatcherSettings
from registry.store import crashpoints
from registry.store.catalog import CatalogError
from registry.store.feature_store import feature_key
from registry.store.tables import WHOLE_IMAGE, Annotation, Deployment, Image, Location, Sighting
from registry.store.times import to_utc
from registry.store.vector_index import CandidateFilter

if TYPE_CHECKING:
    from registry.services.port import RegistryPort as Registry

log = logging.getLogger(__name__)


@dataclass
class Identification:
    """The answer for one query photo, and what was recorded (if anything)."""

    path: str
    species: str
    outcome: Outcome
    decision_id: int | None = None
    annotation_id: int | None = None
    individual_code: str | None = None  # the matched or newly created individual (when recorded)
    problems: list[str] = field(default_factory=list)  # candidates that could not be scored, and why
    box: tuple[float, float, float, float] | None = None  # the animal's box in the photo (None: whole photo)
    event_id: int | None = None
    joint: int = 1  # how many annotations (photos of one animal in one event) this decision was made from
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (matching/timing.py)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.path,
            "box": list(self.box) if self.box else None,
            "annotation_id": self.annotation_id,
            "event_id": self.event_id,
            "joint": self.joint,
            "species": self.species,
            "decision": self.outcome.outcome,
            "individual": self.individual_code,
            "score": self.outcome.score,
            "threshold": self.outcome.threshold,
            "policy_version": self.outcome.policy_version,
            "scorer": self.outcome.scorer,
            "decision_id": self.decision_id,
            "candidates": [{"individual": c.code, "score": c.score, "best_annotation_id": c.best_annotation_id}
                           for c in self.outcome.ranked[:10]],
            "problems": self.problems,
            "timings": self.timings,
        }


class Identifier:
    """Describe, retrieve, score and decide for one open registry."""

    # a deployment's scenery is found from at most this many of its photos, spread over its animals
    SCENERY_PHOTOS = 40

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._pool: DescriptorPool | None = None
        self._scenery: dict[str, tuple[int, Scenery]] = {}  # deployment -> (its whole photos then, scenery)

    def forget_matching_state(self) -> None:
        """Drop what was kept from features under the matching settings in force (the descriptor pool, the
        cameras' scenery): calibrate calls it when it switches them."""
        self._pool = None
        self._scenery.clear()

    # --- describing photos -------------------------------------------------------------------------------
    def describe(self, paths: list[Path], species: list[str], viewpoints: list[str | None],
                 boxes: list[tuple[float, float, float, float] | None] | None = None,
                 timer: StageTimes | None = None) -> list[Described | ImageError]:
        """Load and describe photos (or the animals' boxes in them) as one batch; a photo that fails becomes its
        ImageError."""
        pipeline = self.registry.pipeline
        timer = timer or StageTimes()
        with timer.stage("decode"):
            loaded = pipeline.load_many(paths, species, viewpoints, boxes)
        good = [im for im in loaded if not isinstance(im, ImageError)]
        second = [self.second_for(sp) is not None for sp, im in zip(species, loaded, strict=True)
                  if not isinstance(im, ImageError)]
        described = iter(pipeline.describe(good, timer, second)) if good else iter(())
        return [im if isinstance(im, ImageError) else next(described) for im in loaded]

    def second_for(self, species: str) -> AlikedLightGlue | None:
        """The second local matcher where this species uses one (`LocalMatcherSettings.use_second`), else None."""
        settings = self.registry.settings.local
        if not settings.second or not settings.for_species(species).use_second:
            return None
        return self.registry.pipeline.second

    def candidate_features(self, annotation_ids: list[int], problems: list[str] | None = None,
                           scenery: bool = True, matcher: AlikedLightGlue | None = None) -> dict[int, LocalFeatures]:
        """Cached local features of candidate annotations, recomputed from the photo only if the cache lost them
        (or, for the second matcher, were never computed: its features are made on first use). A candidate whose
        photo is missing too is left out and reported in `problems`. With the static-scenery setting on, a whole
        photo from a deployment comes without its ALIKED keypoints on that camera's scenery (`scenery_of`);
        `scenery=False` gives the features as described. `matcher`: whose features (default ALIKED's)."""
        registry = self.registry
        matcher = matcher or registry.pipeline.local
        store = registry.features_of(matcher)
        scenery = scenery and matcher is registry.pipeline.local
        with registry.catalog.transaction() as session:
            rows = session.execute(select(Annotation, Image.sha256, Image.path, Deployment.code)
                                   .join(Image, Image.id == Annotation.image_id)
                                   .outerjoin(Deployment, Deployment.id == Image.deployment_id)
                                   .where(Annotation.id.in_(annotation_ids))).all()
        masking = scenery and registry.settings.local.static_scenery
        out = {}
        cached = store.get_many([feature_key(sha, a.region) for a, sha, _, _ in rows])
        for annotation, sha, stored, deployment in rows:
            key = feature_key(sha, annotation.region)
            features = cached.get(key)
            if features is None:
                path = registry.catalog.paths.local(stored)
                try:
                    image = registry.pipeline.load(path, annotation.species, annotation.viewpoint, annotation.box)
                except ImageError as exc:
                    message = (f"candidate annotation {annotation.id} was not compared: its {matcher.name} features "
                               f"are not cached and its photo cannot be read ({exc}); run `registry relocate` or "
                               "`registry doctor`")
                    log.warning(message)
                    if problems is not None:
                        problems.append(message)
                    continue
                features = matcher.extract([image])[0]
                store.put(key, features)
            if masking and deployment is not None and annotation.region == WHOLE_IMAGE:
                features = self.scenery_of(deployment).mask(features)
            out[annotation.id] = features
        return out

    def deployments_of(self, annotation_ids: list[int]) -> set[str]:
        """The cameras (deployment codes) whole photos among these annotations were taken by."""
        if not annotation_ids:
            return set()
        with self.registry.catalog.transaction() as session:
            return set(session.scalars(
                select(Deployment.code).join(Image, Image.deployment_id == Deployment.id)
                .join(Annotation, Annotation.image_id == Image.id)
                .where(Annotation.id.in_(annotation_ids), Annotation.region == WHOLE_IMAGE).distinct()))

    def without_scenery(self, features: LocalFeatures, deployments: set[str]) -> LocalFeatures:
        """A whole photo without its keypoints on any of these cameras' scenery."""
        for code in sorted(deployments):
            features = self.scenery_of(code).mask(features)
        return features

    def scenery_of(self, deployment: str) -> Scenery:
        """The static scenery of one deployment (matching/scenery.py), found from up to `SCENERY_PHOTOS` of its
        whole photos, spread over the animals in them (their individuals where recorded, else their events).
        Kept in memory; found again once the deployment has a quarter more photos, until it has enough."""
        known = self._scenery.get(deployment)
        if known is not None and known[0] >= self.SCENERY_PHOTOS:  # found from enough photos: no query needed
            return known[1]
        with self.registry.catalog.transaction() as session:
            rows = session.execute(
                select(Annotation.id, Annotation.event_id, Sighting.individual_id)
                .join(Image, Image.id == Annotation.image_id)
                .join(Deployment, Deployment.id == Image.deployment_id)
                .outerjoin(Sighting, (Sighting.annotation_id == Annotation.id) & (Sighting.status == "active"))
                .where(Deployment.code == deployment, Annotation.region == WHOLE_IMAGE)
                .order_by(Annotation.id)).all()
        if known is not None and len(rows) < 1.25 * known[0]:
            return known[1]
        owner_of = {annotation_id: ("individual", individual) if individual is not None
                    else ("event", event) if event is not None else ("photo", annotation_id)
                    for annotation_id, event, individual in rows}
        by_owner: dict[Any, list[int]] = {}
        for annotation_id, owner in owner_of.items():
            by_owner.setdefault(owner, []).append(annotation_id)
        chosen: list[int] = []  # round robin over the animals, so one frequent visitor does not fill the sample
        queues = [list(ids) for ids in by_owner.values()]
        while len(chosen) < self.SCENERY_PHOTOS and any(queues):
            for queue in queues:
                if queue and len(chosen) < self.SCENERY_PHOTOS:
                    chosen.append(queue.pop(0))
        features = self.candidate_features(chosen, scenery=False)
        shown = [i for i in chosen if i in features]
        found = find_scenery([features[i] for i in shown], [owner_of[i] for i in shown])
        self._scenery[deployment] = (len(rows), found)
        return found

    def background_of(self, query: LocalFeatures, vector: np.ndarray, species: str, viewpoint: str | None,
                      budget: int, exclude_annotations: tuple[int, ...] = (),
                      exclude_individuals: tuple[int, ...] = (), matcher: AlikedLightGlue | None = None,
                      ) -> Background:
        """The other animals a photo meets when it is not a live query (a calibration pair, a photo being
        discovered): the individuals retrieval would shortlist for it, as the distinctive score's background
        (of `matcher`'s features, default ALIKED's)."""
        registry = self.registry
        primary = registry.pipeline.primary.name
        hits = registry.index.search_individuals(
            registry.collections[primary], vector, registry.settings.rerank_individuals,
            registry.settings.rerank_images_per_individual, species, viewpoint,
            exclude_annotation_ids=exclude_annotations, exclude_individuals=exclude_individuals)
        owners = {h.annotation_id: h.individual_id for h in hits}
        matcher = matcher or registry.pipeline.local
        features = self.candidate_features(list(owners), matcher=matcher)
        shown = [i for i in owners if i in features]
        return matcher.background(query, [features[i] for i in shown], [owners[i] for i in shown], budget=budget)

    def location_ids(self, names: list[str] | None) -> tuple[int, ...] | None:
        """The ids of these locations (identification scoped to them); an unknown name is an error naming it."""
        if not names:
            return None
        with self.registry.catalog.transaction() as session:
            found = dict(session.execute(select(Location.name, Location.id).where(Location.name.in_(names))).all())
        unknown = [n for n in names if n not in found]
        if unknown:
            raise CatalogError(f"no location named {', '.join(map(repr, unknown))} in the registry")
        return tuple(sorted(found.values()))

    def global_similarities(self, vectors: dict[str, np.ndarray], annotation_ids: list[int],
                            skip: str | None = None) -> dict[str, dict[int, float]]:
        """Cosine similarity of a query's vectors to stored images, per embedder (vectors are unit length)."""
        out: dict[str, dict[int, float]] = {}
        for name, collection in self.registry.collections.items():
            if name == skip:
                continue
            stored = self.registry.index.vectors(collection, annotation_ids)
            out[name] = {i: float(np.dot(vectors[name], v)) for i, v in stored.items()}
        return out

    # --- identification ----------------------------------------------------------------------------------
    def candidates(self, described: Described, species: str, viewpoint: str | None,
                   exclude: tuple[int, ...] = (), problems: list[str] | None = None,
                   exclude_individuals: tuple[int, ...] = (),
                   locations: tuple[int, ...] | None = None, timer: StageTimes | None = None,
                   deployment: str | None = None, whole_photo: bool = True) -> list[CandidateScore]:
        """The best individuals by the primary embedding (grouped query), each shortlisted photo scored by every
        matcher (raw scores; calibration and fusion are the scorer's job). `exclude`: annotations never to
        return (the query's own when it is already in the registry); `locations`: only references photographed
        there. With the static-scenery setting, a whole-photo query (`whole_photo`) loses its keypoints on the
        scenery of its own camera (`deployment`) and of every shortlisted photo's camera, as the shortlisted
        photos lose theirs: a pair is scored the same whether or not the query's camera is known yet."""
        registry = self.registry
        settings, pipeline = registry.settings, registry.pipeline
        timer = timer or StageTimes()
        local = settings.local.for_species(species)
        primary = pipeline.primary.name
        with timer.stage("retrieval"):
            hits = registry.index.search_individuals(
                registry.collections[primary], described.vectors[primary], settings.rerank_individuals,
                settings.rerank_images_per_individual, species, viewpoint, exclude_annotation_ids=exclude,
                exclude_individuals=exclude_individuals, location_ids=locations)
            shortlist = {h.annotation_id: int(h.individual_id) for h in hits}  # type: ignore[arg-type]
            features = self.candidate_features(list(shortlist), problems)
            if settings.local.static_scenery and whole_photo:
                cameras = self.deployments_of(list(shortlist)) | ({deployment} if deployment else set())
                described = Described(described.vectors, self.without_scenery(described.local, cameras),
                                      described.second)
        annotation_ids = [i for i in shortlist if i in features]
        matcher = pipeline.local
        # a cheaper first pass only pays where pairs are expensive (LightGlue); descriptor matching scores every
        # shortlisted photo at the full budget for less than LightGlue's first pass costs
        if local.engine == "lightglue" and local.first_pass_keypoints and local.full_rerank_individuals:
            with timer.stage("first-pass"):
                annotation_ids = self._first_pass(described, annotation_ids, shortlist, features, local)
        if local.lnbnn_individuals:  # the animals whose keypoints vote best, whatever the global embedding says
            with timer.stage("lnbnn"):
                ranking = self.lnbnn_ranking(described, species, viewpoint, exclude, exclude_individuals,
                                             locations)
            photos_of = dict(ranking)
            chosen = {shortlist[i] for i in annotation_ids}
            extra: dict[int, int] = {}
            for individual in chosen:  # already in the full pass: also its best-voted other photos
                others = [p for p in photos_of.get(individual, []) if p not in annotation_ids]
                extra.update({p: individual for p in others[: max(0, local.lnbnn_photos - 1)]})
            newcomers = [individual for individual, _ in ranking if individual not in chosen]
            for individual in newcomers[: local.lnbnn_individuals]:
                extra.update({p: individual for p in photos_of[individual][: max(1, local.lnbnn_photos)]})
            with timer.stage("retrieval"):
                features.update(self.candidate_features(list(extra), problems))
            shortlist.update(extra)
            annotation_ids += [i for i in extra if i in features]
        with timer.stage("retrieval"):
            sims = self.global_similarities(described.vectors, annotation_ids)
        background = None
        if matcher.distinctive:  # photos the first pass set aside still show what other animals look like
            aside = [i for i in shortlist if i in features and i not in set(annotation_ids)]
            with timer.stage("distinctiveness"):
                background = matcher.background(described.local, [features[i] for i in aside],
                                                [shortlist[i] for i in aside], budget=local.max_keypoints)
        local_scores = matcher.pair_scores(described.local, [features[i] for i in annotation_ids],
                                           budget=local.max_keypoints, timer=timer,
                                           owners=[shortlist[i] for i in annotation_ids], background=background)
        second = self.second_for(species)
        if second is not None:
            with timer.stage("second-matcher"):
                annotation_ids, local_scores = self._second_scores(
                    second, described, annotation_ids, local_scores, shortlist, features, local, problems)
        candidates = []
        for annotation_id, scores in zip(annotation_ids, local_scores, strict=True):
            raw = {**{name: by_annotation[annotation_id] for name, by_annotation in sims.items()}, **scores}
            candidates.append(CandidateScore(annotation_id, shortlist[annotation_id], raw))
        return candidates

    def _second_scores(self, second: AlikedLightGlue, described: Described, annotation_ids: list[int],
                       local_scores: list[dict[str, float]], shortlist: dict[int, int],
                       features: dict[int, LocalFeatures], local: LocalMatcherSettings, problems: list[str] | None,
                       ) -> tuple[list[int], list[dict[str, float]]]:
        """The second matcher's scores added to the pairs ALIKED scored at the full budget (the same pairs, the
        same background photos); a pair it cannot score is left out (and reported), since the species' fusion
        needs every score."""
        if described.second is None:
            raise ValueError(f"the query was not described by the second local matcher ({second.name}) that this "
                             "species uses: describe it again under the settings in force")
        aside = [i for i in shortlist if i in features and i not in set(annotation_ids)]
        found = self.candidate_features(annotation_ids + aside, problems, matcher=second)
        background = None
        if second.distinctive:
            shown = [i for i in aside if i in found]
            background = second.background(described.second, [found[i] for i in shown],
                                           [shortlist[i] for i in shown], budget=local.max_keypoints)
        kept = [n for n, i in enumerate(annotation_ids) if i in found]
        scores = second.pair_scores(described.second, [found[annotation_ids[n]] for n in kept],
                                    budget=local.max_keypoints, owners=[shortlist[annotation_ids[n]] for n in kept],
                                    background=background)
        return ([annotation_ids[n] for n in kept],
                [{**local_scores[n], **extra} for n, extra in zip(kept, scores, strict=True)])

    def _first_pass(self, described: Described, annotation_ids: list[int], owner: dict[int, int],
                    features: dict[int, LocalFeatures], local: LocalMatcherSettings) -> list[int]:
        """The shortlisted photos of the `full_rerank_individuals` individuals whose photos match best with the
        strongest `first_pass_keypoints` keypoints: the full budget costs ~5x more per pair, so only they get it."""
        matcher = self.registry.pipeline.local
        if len(set(owner[i] for i in annotation_ids)) <= local.full_rerank_individuals:
            return annotation_ids
        budget = local.first_pass_keypoints
        cheap = matcher.scores(matcher.truncated(described.local, budget),
                               [matcher.truncated(features[i], budget) for i in annotation_ids])
        best: dict[int, float] = {}
        for annotation_id, score in zip(annotation_ids, cheap, strict=True):
            best[owner[annotation_id]] = max(best.get(owner[annotation_id], -1.0), score)
        ranked = sorted(best, key=lambda individual: (-best[individual], individual))
        keep = set(ranked[: local.full_rerank_individuals])
        return [i for i in annotation_ids if owner[i] in keep]

    def lnbnn_ranking(self, described: Described, species: str, viewpoint: str | None, exclude: tuple[int, ...],
                      exclude_individuals: tuple[int, ...], locations: tuple[int, ...] | None = None,
                      ) -> list[tuple[int, list[int]]]:
        """Individuals as LNBNN (one-vs-many over every reference descriptor of the species, HotSpotter's
        scoring) ranks them, each by its best-voted photo, with its photos best-voted first."""
        registry = self.registry
        local = registry.settings.local.for_species(species)
        budget = local.first_pass_keypoints or local.max_keypoints
        members = self.lnbnn_members(described, species, viewpoint, exclude, exclude_individuals, locations)
        pool = self.descriptor_pool.get(members, budget)
        if pool is None:
            return []
        descriptors, image_of = pool
        query = registry.pipeline.local.truncated(described.local, budget).descriptors
        votes = lnbnn_votes(query.astype(np.float32), descriptors, image_of)
        by_individual: dict[int, list[tuple[float, int]]] = {}
        for annotation_id, vote in votes.items():
            by_individual.setdefault(members[int(annotation_id)], []).append((-vote, int(annotation_id)))
        for photos in by_individual.values():
            photos.sort()
        ranked = sorted(by_individual, key=lambda i: (by_individual[i][0][0], i))
        return [(i, [annotation_id for _, annotation_id in by_individual[i]]) for i in ranked]

    def lnbnn_members(self, described: Described, species: str, viewpoint: str | None, exclude: tuple[int, ...],
                      exclude_individuals: tuple[int, ...], locations: tuple[int, ...] | None) -> dict[int, int]:
        """LNBNN's reference photos -> their individual: every candidate photo while there are at most
        `lnbnn_pool_photos` (every registry measured in docs/accuracy.md), else the `lnbnn_pool_photos` photos of
        the individuals closest by the global embedding (a grouped query), so a query costs the same whatever
        the registry's size."""
        registry = self.registry
        collection = registry.collections[registry.pipeline.primary.name]
        limit = registry.settings.lnbnn_pool_photos
        where = CandidateFilter.of(species, viewpoint, exclude, exclude_individuals, locations)
        if registry.index.count_where(collection, where) <= limit:
            return registry.index.candidates_of(collection, species, viewpoint, exclude, exclude_individuals,
                                                locations)
        per_individual = registry.settings.lnbnn_pool_photos_per_individual
        hits = registry.index.search_individuals(
            collection, described.vectors[registry.pipeline.primary.name], max(1, limit // per_individual),
            per_individual, species, viewpoint, exclude, exclude_individuals, locations)
        return {h.annotation_id: int(h.individual_id) for h in hits}  # type: ignore[arg-type]

    @property
    def descriptor_pool(self) -> DescriptorPool:
        if self._pool is None:
            self._pool = DescriptorPool(self)
        return self._pool

    def judge(self, candidates: list[CandidateScore], species: str, timer: StageTimes | None = None,
              query: Seen | None = None) -> Outcome:
        """Score candidates under the policy in force, rank individuals by their best image (with the space-time
        evidence of where and when the query was taken, `query`, for the verifier), open-set rule."""
        with (timer or StageTimes()).stage("decision"):
            return self._judge(candidates, species, query)

    def attach_spacetime(self, ranked: list[IndividualScore], query: Seen | None,
                         hidden: tuple[int, ...] = (), top: int = 10) -> None:
        """Each of the `top` candidate individuals' space-time evidence against the query (decide/spacetime.py),
        from its sightings except the `hidden` annotations."""
        if not self.registry.settings.spacetime or query is None or (query.when is None and not query.placed) \
                or not ranked:
            return
        seen = self.registry.catalog.seen([r.individual_id for r in ranked[:top]], hidden)
        for candidate in ranked[:top]:
            candidate.context = spacetime.features(query, seen.get(candidate.individual_id, []))

    def _judge(self, candidates: list[CandidateScore], species: str, query: Seen | None = None) -> Outcome:
        registry = self.registry
        policy_version, scorer = registry.scorer_in_force()
        scorer = scorer.for_species(species)
        for candidate in candidates:
            scorer.score(candidate, species)
        best: dict[int, CandidateScore] = {}  # a joint decision meets a reference photo once per query photo
        for candidate in candidates:
            if candidate.annotation_id not in best or candidate.score > best[candidate.annotation_id].score:
                best[candidate.annotation_id] = candidate
        candidates = list(best.values())
        with registry.catalog.transaction() as session:
            codes = registry.catalog.codes(session, {c.individual_id for c in candidates})
        ranked = rank_individuals(candidates, codes, self.combine_photos(scorer, species))
        self.attach_spacetime(ranked, query)
        outcome = decide(scorer.rerank(ranked, species), scorer.threshold_for(species))
        outcome.policy_version = policy_version
        outcome.scorer = scorer.name
        outcome.probabilities = scorer.probabilities
        return outcome

    def rank_stored(self, annotation_id: int, species: str, viewpoint: str | None, scorer: Scorer,
                    hidden_images: tuple[int, ...], hidden_individuals: tuple[int, ...] = (),
                    unseen: tuple[int, ...] = ()) -> list[IndividualScore]:
        """Candidate individuals for a photo already in the registry, from its stored vectors and cached features
        (nothing is described again), with some images and individuals hidden: a simulated query. `unseen`:
        sightings the space-time evidence leaves out besides the hidden ones (a simulation that hides the query's
        occasion from its own animal must hide it from every animal, or the evidence would tell them apart)."""
        registry = self.registry
        vectors = {name: registry.index.vectors(collection, [annotation_id]).get(annotation_id)
                   for name, collection in registry.collections.items()}
        features = self.candidate_features([annotation_id]).get(annotation_id)
        second = self.second_for(species)
        second_features = self.candidate_features([annotation_id], matcher=second).get(annotation_id) \
            if second is not None else None
        if features is None or any(v is None for v in vectors.values()) or (second and second_features is None):
            return []
        with registry.catalog.transaction() as session:
            whole = session.scalar(select(Annotation.region).where(Annotation.id == annotation_id)) == WHOLE_IMAGE
        candidates = self.candidates(Described(vectors, features, second_features),  # type: ignore[arg-type]
                                     species, viewpoint,
                                     exclude=hidden_images, exclude_individuals=hidden_individuals,
                                     whole_photo=whole)
        scorer = scorer.for_species(species)
        for candidate in candidates:
            scorer.score(candidate, species)
        ranked = rank_individuals(candidates, {}, self.combine_photos(scorer, species))
        self.attach_spacetime(ranked, registry.catalog.seen_in(annotation_id), (*hidden_images, *unseen))
        return scorer.rerank(ranked, species)

    def combine_photos(self, scorer: Scorer, species: str) -> int:
        """How many of an individual's best photos its score combines (calibrated probabilities only)."""
        return self.registry.settings.local.for_species(species).combine_photos if scorer.probabilities else 1

    def match(self, described: Described, species: str, viewpoint: str | None, exclude: tuple[int, ...] = (),
              problems: list[str] | None = None, locations: tuple[int, ...] | None = None,
              timer: StageTimes | None = None, query: Seen | None = None, whole_photo: bool = True) -> Outcome:
        return self.judge(self.candidates(described, species, viewpoint, exclude, problems, locations=locations,
                                          timer=timer, whole_photo=whole_photo), species, timer, query)

    def identify(self, path: Path, species: str, viewpoint: str | None = None, record: bool = False,
                 survey: str | None = None, captured_at: Any = None, latitude: float | None = None,
                 longitude: float | None = None, box: tuple[float, float, float, float] | None = None,
                 locations: list[str] | None = None) -> Identification:
        """Identify one photo (or the animal in `box`); with `record`, store the decision as a sighting (or a new
        individual). An annotation already in the registry never matches itself."""
        path = Path(path)
        captured_at = to_utc(captured_at, self.registry.settings.time_zone)
        row = PhotoRow(0, path, species, None, viewpoint, captured_at, latitude, longitude, box=box,
                       source="whole-image" if box is None else "manual")
        sha = sha256_of_file(path)
        scope = self.location_ids(locations)
        with self.registry.catalog.transaction() as session:
            known = session.scalar(select(Annotation).join(Image, Image.id == Annotation.image_id)
                                   .where(Image.sha256 == sha, Annotation.region == row.region))
            exclude = (known.id,) if known is not None else ()
        if record and known is not None:
            raise CatalogError(f"{path.name}: this animal is already in the registry as annotation {known.id}")
        timer = StageTimes()
        described = self.describe([path], [species], [viewpoint], [box], timer)[0]
        if isinstance(described, ImageError):
            raise described
        if not record:
            problems: list[str] = []
            outcome = self.match(described, species, viewpoint, exclude, problems, scope, timer,
                                 Seen(captured_at, latitude, longitude), whole_photo=box is None)
            return Identification(str(path), species, outcome, problems=problems, box=box,
                                  timings=timer.to_json())
        return self.identify_and_record([(row, sha, described)], survey, scope, timer)

    def identify_and_record(self, animal: list[tuple[PhotoRow, str, Described]], survey: str | None,
                            locations: tuple[int, ...] | None = None, timer: StageTimes | None = None,
                            ) -> Identification:
        """Decide one animal from its annotations (one, or several photos of it in one event) and record the
        decision: one decision row, a sighting per annotation. An event's photos are judged jointly: every
        photo's candidates are pooled, so each individual is scored by its best pairs over the whole burst."""
        registry = self.registry
        registry.recorder.resume_pending()
        timer = timer or StageTimes()
        problems: list[str] = []
        species, viewpoint = animal[0][0].species, animal[0][0].viewpoint
        others = sorted({row.species for row, _sha, _described in animal} - {species})
        if others:  # one decision is about one animal, and an animal is of one species
            raise CatalogError(f"{animal[0][0].image.name}: one animal's photos name two species "
                               f"({species}, {', '.join(others)}); decide them separately")
        pooled: list[CandidateScore] = []
        for row, _sha, described in animal:
            pooled += self.candidates(described, species, row.viewpoint or viewpoint, problems=problems,
                                      locations=locations, timer=timer, deployment=row.deployment,
                                      whole_photo=row.box is None)
        first = animal[0][0]
        outcome = self.judge(pooled, species, timer, Seen(first.captured_at, first.latitude, first.longitude))
        catalog = registry.catalog
        recorded: dict[str, Any] = {}

        def decide_rows(session: Any, annotations: list[Annotation]) -> list[int | None]:
            first = annotations[0]
            margin, reason = decision_margin(outcome.outcome, [c.score for c in outcome.ranked],
                                             [c.code for c in outcome.ranked], outcome.threshold,
                                             outcome.probabilities)
            decision = catalog.add_decision(
                session, margin=margin, margin_reason=reason, annotation_id=first.id, event_id=first.event_id,
                outcome=outcome.outcome, individual_id=outcome.individual_id, score=outcome.score,
                threshold=outcome.threshold,
                candidates=[c.to_json() for c in outcome.ranked[:20]], profile=registry.pipeline.profile,
                model_versions={**registry.pipeline.versions, "scorer": outcome.scorer, "problems": problems,
                                "annotations": [a.id for a in annotations], "timings": timer.to_json()},
                policy_id=outcome.policy_version)
            if outcome.outcome == "match":
                individual = catalog.resolve(session, outcome.ranked[0].code)
            else:
                individual = catalog.new_individual(session, species, decision=decision)
            decision.individual_id = individual.id
            for annotation in annotations:
                catalog.add_sighting(session, annotation, individual, "automatic", decision)
                crashpoints.reached("after-sighting")
            catalog.reconcile_retired(session, {individual.id})  # a sighting brings a retired individual back
            recorded.update(code=individual.code, decision_id=decision.id, event_id=first.event_id)
            return [individual.id] * len(annotations)

        with timer.stage("recording"):
            items = registry.recorder.write(animal, survey, decide_rows)
        row = animal[0][0]
        return Identification(str(row.image), species, outcome, recorded["decision_id"], items[0].annotation_id,
                              recorded["code"], problems, box=row.box, event_id=recorded["event_id"],
                              joint=len(animal), timings=timer.to_json())


class DescriptorPool:
    """The first-pass descriptors of the registry's photos, kept in memory for LNBNN: each photo's features are
    read from the cache once per process; a query's reference set is assembled from them (exclusions applied)."""

    MAX_CACHED = 20_000  # photos' first-pass descriptors kept (~1.3 GB at 256 keypoints), least recent dropped

    def __init__(self, identifier: Identifier) -> None:
        self.identifier = identifier
        self._by_annotation: OrderedDict[int, np.ndarray] = OrderedDict()
        self._budget = 0
        self._last: tuple[tuple[int, ...], np.ndarray, np.ndarray] | None = None

    def get(self, members: dict[int, int], budget: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(descriptors (N, 128) float32, image id of each) for the photos in `members`; None if there are none."""
        if budget != self._budget:
            self._by_annotation, self._budget, self._last = OrderedDict(), budget, None
        ids = tuple(sorted(members))
        if self._last is not None and self._last[0] == ids:
            return self._last[1], self._last[2]
        missing = [i for i in ids if i not in self._by_annotation]
        if missing:
            for annotation_id, features in self.identifier.candidate_features(missing).items():
                self._by_annotation[annotation_id] = features.descriptors[:budget]
        for i in ids:
            if i in self._by_annotation:
                self._by_annotation.move_to_end(i)
        while len(self._by_annotation) > max(self.MAX_CACHED, len(ids)):
            self._by_annotation.popitem(last=False)
        present = [i for i in ids if i in self._by_annotation and len(self._by_annotation[i])]
        if not present:
            return None
        descriptors = np.concatenate([self._by_annotation[i] for i in present]).astype(np.float32)
        image_of = np.concatenate([np.full(len(self._by_annotation[i]), i, dtype=np.int64) for i in present])
        self._last = (ids, descriptors, image_of)
        return descriptors, image_of
