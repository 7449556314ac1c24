"""Discover: a season's new animals decided together.

Identification decides one photo at a time, so every photo of an animal the registry has never seen becomes its
own new individual, and the next photo of that animal must match that one photo. Discovery looks at all of a
survey's provisional new individuals at once: each pair of their photos is scored like a query meets a candidate
(every matcher, calibrated and fused by the policy in force), the photos are clustered by average linkage (on
every pair, or only between mutual nearest neighbours) with the method and cut under which the registry's own
labelled photos cluster closest to the truth (adjusted Rand index), and each individual follows the cluster most
of its photos fell in. Individuals that share a cluster are a proposed animal: applied, they are merged into the
first (audited curation, undoable one merge at a time).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from registry.curation.curator import Curator
from registry.decide.scoring import CandidateScore
from registry.services.calibrating import same_side
from registry.store.catalog import CatalogError
from registry.store.tables import Annotation, Image, Individual, Sighting, Survey

if TYPE_CHECKING:
    from registry.services.port import RegistryPort as Registry

UNKNOWN = "unknown animal"  # the one owner of every photo being discovered: none of them is another's background
CUT_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


@dataclass
class Unit:
    """What is clustered: one provisional individual (or, when choosing the cut, one labelled individual's photos
    seen as a stranger) and its annotations."""

    key: str  # an individual's code, or a label
    species: str
    annotations: list[int]
    individual_id: int | None = None  # as the vector index knows it: never another unit's background
    truth: str | None = None  # the known identity, where there is one (cut selection, evaluation)


@dataclass
class Proposal:
    """Individuals that discovery says are one animal."""

    species: str
    individuals: list[str]
    cohesion: float  # the weakest pair of photos' score inside the cluster (average linkage merges above the cut)
    annotations: list[int] = field(default_factory=list)
    photos: dict[str, list[int]] = field(default_factory=dict)  # each individual's annotations

    def to_json(self) -> dict[str, Any]:
        return {"species": self.species, "individuals": self.individuals, "cohesion": round(self.cohesion, 4),
                "annotations": self.annotations, "photos": self.photos}


def visit_of(photo: dict[str, Any]) -> tuple[str, Any]:
    """One visit of an animal to the camera: its event where one is recorded, else its capture time (a clip's
    frames share it), else the photo alone."""
    if photo.get("event_id") is not None:
        return ("event", photo["event_id"])
    if photo.get("captured_at") is not None:
        return ("time", photo["captured_at"])
    return ("photo", photo["annotation_id"])


def whole_visits(photos: list[dict[str, Any]], max_photos: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Up to `max_photos` of one animal's photos, whole visits at a time in random order (the last one cut at
    the budget), in annotation order."""
    visits: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for photo in photos:
        visits.setdefault(visit_of(photo), []).append(photo)
    groups = list(visits.values())
    picked: list[dict[str, Any]] = []
    for k in rng.permutation(len(groups)).tolist():
        picked += groups[k][: max_photos - len(picked)]
        if len(picked) >= max_photos:
            break
    return sorted(picked, key=lambda p: p["annotation_id"])


def majority_cluster(photos: list[int], label_of: dict[int, int]) -> int:
    """The cluster most of an individual's photos fell in (ties: the lowest label), which the individual follows."""
    votes = Counter(label_of[a] for a in photos)
    return min(votes, key=lambda label: (-votes[label], label))


METHODS = ("average", "mutual-1", "mutual-2", "mutual-3")


def mutual_neighbours(similarity: np.ndarray, k: int) -> np.ndarray:
    """The similarity kept only between units that are each among the other's `k` most similar: a ranking is
    what the matchers get right (the right animal first), their absolute scores between two strangers from one
    camera much less (AnimalCLEF's cows), and averages over such pairs chain animals together."""
    n = len(similarity)
    if n < 2:
        return similarity.copy()
    masked = similarity.copy()
    np.fill_diagonal(masked, -np.inf)
    nearest = np.argsort(-masked, axis=1)[:, : min(k, n - 1)]
    close = np.zeros((n, n), dtype=bool)
    close[np.repeat(np.arange(n), nearest.shape[1]), nearest.ravel()] = True
    return np.where(close & close.T, similarity, 0.0)


def cluster(similarity: np.ndarray, method: str, cut: float) -> list[int]:
    """Cluster labels: average linkage on the similarity (`average`) or on its mutual-`k` neighbours only."""
    if method == "average":
        return average_linkage(similarity, cut)
    return average_linkage(mutual_neighbours(similarity, int(method.split("-")[1])), cut)


def average_linkage(similarity: np.ndarray, cut: float) -> list[int]:
    """Cluster labels by average linkage on 1 - similarity (SciPy), merged while the average similarity between
    two clusters stays at or above `cut`."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(similarity)
    if n < 2:
        return list(range(n))
    distance = 1.0 - np.clip(similarity, 0.0, 1.0)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    return [int(label) for label in fcluster(tree, t=1.0 - cut + 1e-9, criterion="distance")]


class DiscoveryService:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # --- what is discovered -------------------------------------------------------------------------------
    def provisional(self, survey: str, species: str | None = None) -> list[Unit]:
        """The survey's provisional new individuals: created by a decision ("new"), never merged, every active
        sighting automatic and in this survey (nobody vouched for them, no other season saw them)."""
        catalog = self.registry.catalog
        with catalog.transaction() as session:
            survey_id = session.scalar(select(Survey.id).where(Survey.name == survey))
            if survey_id is None:
                raise CatalogError(f"no survey named {survey!r} in the registry")
            rows = session.execute(
                select(Individual.code, Individual.species, Sighting.annotation_id, Sighting.method,
                       Image.survey_id, Individual.id)
                .join(Sighting, Sighting.individual_id == Individual.id)
                .join(Annotation, Annotation.id == Sighting.annotation_id)
                .join(Image, Image.id == Annotation.image_id)
                .where(Individual.created_by_decision_id.is_not(None), Individual.merged_into_id.is_(None),
                       Individual.retired_at.is_(None), Sighting.status == "active",
                       Annotation.status == "indexed")
                .where(Individual.id.in_(select(Sighting.individual_id).join(
                    Annotation, Annotation.id == Sighting.annotation_id).join(
                    Image, Image.id == Annotation.image_id).where(Image.survey_id == survey_id)))
                .order_by(Individual.id, Sighting.annotation_id)).all()
        units: dict[str, Unit] = {}
        spoiled: set[str] = set()
        for code, sp, annotation_id, method, image_survey, individual_id in rows:
            if species is not None and sp != species:
                continue
            if method != "automatic" or image_survey != survey_id:
                spoiled.add(code)
            units.setdefault(code, Unit(code, sp, [], individual_id=individual_id)).annotations.append(annotation_id)
        return [u for code, u in units.items() if code not in spoiled]

    # --- scoring ------------------------------------------------------------------------------------------
    def similarity(self, units: list[Unit], species: str) -> np.ndarray:
        """Each pair of units' score under the policy in force: the best over their photos' pairs, every matcher
        calibrated and fused. The known individuals retrieval would shortlist for a photo are its background
        (scenery shared with known animals does not vote); the photos being discovered are one owner, so two
        photos of one new animal never cancel each other."""
        registry = self.registry
        identifier = registry.identification
        local = registry.pipeline.local
        scorer = registry.scorer.for_species(species)
        hidden = tuple(sorted({u.individual_id for u in units if u.individual_id is not None}))
        annotation_ids = [a for u in units for a in u.annotations]
        unit_of = {a: k for k, u in enumerate(units) for a in u.annotations}
        # ALIKED, and the second local matcher where the species uses one: the scorer fuses what queries get
        second = identifier.second_for(species)
        matchers = [local] + ([second] if second is not None else [])
        features = {m.name: identifier.candidate_features(annotation_ids, matcher=m) for m in matchers}
        vectors = {name: registry.index.vectors(c, annotation_ids) for name, c in registry.collections.items()}
        budget = registry.settings.local.for_species(species).max_keypoints
        viewpoints = self._viewpoints(annotation_ids)
        out = np.zeros((len(units), len(units)))
        present = [a for a in annotation_ids if all(a in f for f in features.values())
                   and all(a in v for v in vectors.values())]
        neighbours = self._neighbours(present, vectors[registry.pipeline.primary.name], local.engine)
        for position, query in enumerate(present):
            others = [a for a in present[position + 1:] if unit_of[a] != unit_of[query]
                      and same_side({"viewpoint": viewpoints.get(query)}, {"viewpoint": viewpoints.get(a)})
                      and (neighbours is None or a in neighbours[query] or query in neighbours[a])]
            if not others:
                continue
            raws: list[dict[str, float]] = [{name: float(np.dot(v[query], v[other])) for name, v in vectors.items()}
                                            for other in others]
            for matcher in matchers:
                mine = features[matcher.name]
                background = identifier.background_of(  # known animals only: none of those being discovered
                    mine[query], vectors[registry.pipeline.primary.name][query], species, viewpoints.get(query),
                    budget, (query,), hidden, matcher) if matcher.distinctive else None
                scores = matcher.pair_scores(mine[query], [mine[a] for a in others], budget=budget,
                                             owners=[UNKNOWN] * len(others), background=background)
                for raw, local_scores in zip(raws, scores, strict=True):
                    raw.update(local_scores)
            for other, raw in zip(others, raws, strict=True):
                candidate = CandidateScore(other, 0, raw)
                scorer.score(candidate, species)
                i, j = unit_of[query], unit_of[other]
                out[i, j] = out[j, i] = max(out[i, j], candidate.score)
        return out

    NEIGHBOURS = 12  # photos each photo is matched with when pairs are expensive (LightGlue), by global similarity

    def _neighbours(self, photos: list[int], vectors: dict[int, np.ndarray], engine: str,
                    ) -> dict[int, set[int]] | None:
        """Which pairs are worth matching: every pair under the descriptor engine (~2 ms a pair); under LightGlue
        (~365 ms a pair on a CPU) each photo's `NEIGHBOURS` most similar photos by the primary embedding."""
        if engine == "mnn" or len(photos) <= self.NEIGHBOURS + 1:
            return None
        matrix = np.stack([vectors[a] for a in photos])
        similarity = matrix @ matrix.T
        np.fill_diagonal(similarity, -np.inf)
        nearest = np.argsort(-similarity, axis=1)[:, : self.NEIGHBOURS]
        return {a: {photos[j] for j in row} for a, row in zip(photos, nearest, strict=True)}

    def _viewpoints(self, annotation_ids: list[int]) -> dict[int, str | None]:
        with self.registry.catalog.transaction() as session:
            return dict(session.execute(select(Annotation.id, Annotation.viewpoint)
                                        .where(Annotation.id.in_(annotation_ids))).all())  # type: ignore[arg-type]

    # --- the cut ------------------------------------------------------------------------------------------
    def labelled_units(self, species: str, max_individuals: int = 30, max_photos: int = 12, seed: int = 0,
                       ) -> list[Unit]:
        """Labelled photos of up to `max_individuals` individuals, each photo standing alone as a new animal would
        (its `truth` the individual): what the cut is chosen on. Each individual's photos are taken the way a
        season brings an unknown animal, whole visits at a time (its event, a burst, where one is recorded; else
        the photos sharing a capture time, a video's frames), visits in random order, up to `max_photos`. Three
        random photos per individual (the first sample) were mostly pairs from different visits, harder than a
        season and with other clusters' sizes: on Holstein they chose a rule that clustered the season worse
        (ARI 0.580, against 0.682, 0.682, 0.629 with this sample's first three draws, where the best rule and cut
        reach 0.682; benchmarks/discovery_replay.py)."""
        items = self.registry.catalog.labelled_annotations(species)
        by_individual: dict[int, list[dict[str, Any]]] = {}
        for item in items:
            by_individual.setdefault(item["individual_id"], []).append(item)
        rng = np.random.default_rng(seed)
        chosen = sorted(by_individual)
        if len(chosen) > max_individuals:
            chosen = sorted(rng.permutation(chosen)[:max_individuals].tolist())
        units = []
        for individual in chosen:
            units += [Unit(f"photo-{photo['annotation_id']}", species, [photo["annotation_id"]],
                           individual_id=individual, truth=str(individual))
                      for photo in whole_visits(by_individual[individual], max_photos, rng)]
        return units

    def choose_cut(self, species: str, max_individuals: int = 30, max_photos: int = 12, seed: int = 0,
                   ) -> dict[str, Any]:
        """The cut whose clusters agree best with the truth (ARI) on the registry's labelled photos of this
        species, each photo standing alone as a new animal would (scored with its own individual's other photos
        as strangers would be, never as the registry knows them)."""
        from sklearn.metrics import adjusted_rand_score

        units = self.labelled_units(species, max_individuals, max_photos, seed)
        chosen = {u.truth for u in units}
        if len(chosen) < 2 or len(units) < 4:
            return {"cut": None, "reason": f"{len(units)} labelled photos of {len(chosen)} individuals: too few"}
        similarity = self.similarity(units, species)
        truth = [u.truth for u in units]
        by_method = {method: [(float(adjusted_rand_score(truth, cluster(similarity, method, cut))), float(cut))
                              for cut in CUT_GRID] for method in METHODS}
        best = max(ari for scored in by_method.values() for ari, _ in scored)
        method = next(m for m in METHODS if max(ari for ari, _ in by_method[m]) >= best - 1e-9)  # simplest first
        plateau = [cut for ari, cut in by_method[method] if ari >= best - 1e-9]
        return {"cut": float(plateau[len(plateau) // 2]), "method": method, "ari": best, "photos": len(units),
                "individuals": len(chosen),
                "by_method": {m: {f"{cut:.2f}": round(ari, 4) for ari, cut in scored}
                              for m, scored in by_method.items()}}

    # --- discovering --------------------------------------------------------------------------------------
    def discover(self, survey: str, species: str | None = None, cut: float | None = None, apply: bool = False,
                 actor: str = "registry discover", method: str | None = None) -> dict[str, Any]:
        """Proposals for one survey (per species); with `apply`, each proposal's individuals merged into its
        first (the earliest created), one audited merge per absorbed individual."""
        units = self.provisional(survey, species)
        report: dict[str, Any] = {"survey": survey, "species": {}, "proposals": [], "applied": []}
        if units and not self.registry.scorer.probabilities:
            raise CatalogError("discover clusters calibrated pair scores, and this registry is not calibrated: run "
                               "`registry calibrate` on labelled photos of the species first")
        for sp in sorted({u.species for u in units}):
            mine = [u for u in units if u.species == sp]
            chosen = {"cut": cut, "method": method or "average", "reason": "given"} if cut is not None \
                else self.choose_cut(sp)
            entry: dict[str, Any] = {"provisional_individuals": len(mine), "cut": chosen}
            report["species"][sp] = entry
            if chosen.get("cut") is None or len(mine) < 2:
                continue
            # photos are clustered, and each individual follows the cluster most of its photos fell in: the same
            # photos give the same clusters however they were merged before, so discovering again proposes nothing
            photos = [Unit(f"photo-{a}", sp, [a], individual_id=u.individual_id) for u in mine for a in u.annotations]
            similarity = self.similarity(photos, sp)
            labels = cluster(similarity, str(chosen["method"]), float(chosen["cut"]))
            label_of = dict(zip((p.annotations[0] for p in photos), labels, strict=True))
            groups: dict[int, list[int]] = {}
            for index, unit in enumerate(mine):
                groups.setdefault(majority_cluster(unit.annotations, label_of), []).append(index)
            position = {p.annotations[0]: k for k, p in enumerate(photos)}
            for members in groups.values():
                if len(members) < 2:
                    continue
                shown = [position[a] for i in members for a in mine[i].annotations]
                linked = [similarity[i, j] for i, j in combinations(shown, 2) if labels[i] == labels[j]]
                report["proposals"].append(Proposal(
                    sp, [mine[i].key for i in members], float(min(linked)) if linked else 0.0,
                    [a for i in members for a in mine[i].annotations],
                    {mine[i].key: list(mine[i].annotations) for i in members}))
            entry["proposed_animals"] = sum(1 for m in groups.values() if len(m) > 1)
            entry["individuals_after"] = len(groups)
        if apply:
            curator = Curator(self.registry.stores, actor)
            for proposal in report["proposals"]:
                keep, *absorbed = proposal.individuals
                for other in absorbed:
                    change = curator.merge(keep, other, reason=f"{actor}: survey {survey}, one animal by "
                                                               f"discovery (weakest link {proposal.cohesion:.2f})")
                    report["applied"].append({"kept": keep, "absorbed": other, "change": change["change"]})
        report["proposals"] = [p.to_json() for p in report["proposals"]]
        return report

