"""Running evaluations and tuning on labelled photos: the numbers a monitoring program needs before it trusts
the registry's decisions.

The matchers run once per query; every configuration (global only, local only, WildFusion, learned fusion,
tuned thresholds) and every point of the τ/α sweeps is computed from the same stored candidate scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from registry.decide.metrics import (
    Prediction,
    bootstrap_interval,
    evaluate,
    pairwise_clustering,
    sequential_predictions,
)
from registry.decide.scoring import CalibratedFusionScorer, CandidateScore, rank_individuals, wildfusion
from registry.ingest.ingestion import Ingestor
from registry.ingest.manifest import PhotoRow
from registry.ingest.sources import read_manifest, write_manifest
from registry.matching.imaging import ImageError, sha256_of_file
from registry.services.registry import Registry
from registry.settings import Settings

TAUS = np.round(np.arange(0.0, 1.0001, 0.01), 2)
ALPHAS = np.round(np.arange(0.0, 1.0001, 0.1), 1)
ScoreFn = Callable[[CandidateScore, str], float]  # (candidate, species) -> score


@dataclass
class QueryResult:
    """One query photo: its truth and every shortlisted candidate with raw and calibrated scores."""

    row: PhotoRow
    known: bool
    candidates: list[CandidateScore]
    seconds: float
    decided: list[tuple[int, float]] | None = None  # the registry's own ranking (verifier included), best first


# --- splitting ---------------------------------------------------------------------------------------------
def split_manifest(manifest: Path, out_dir: Path, unknown_fraction: float = 0.3, seed: int = 0,
                   default_species: str | None = None, max_identities: int | None = None) -> dict[str, Any]:
    """A deterministic open-set split of one labelled manifest into reference.csv and queries.csv.

    Per species, a `unknown_fraction` of identities (chosen by the seed) are entirely queries: the registry must
    call them new. For the others, photos are grouped by capture time (photos of one clip or burst stay
    together) and the earlier half of the groups is reference, the later half queries. `max_identities`
    keeps a seeded random subset of identities per species (to bound a run's time).
    """
    rows = [r for r in read_manifest(manifest, default_species).rows if r.identity]
    rng = np.random.default_rng(seed)
    reference: list[PhotoRow] = []
    queries: list[PhotoRow] = []
    by_species: dict[str, dict[str, list[PhotoRow]]] = {}
    for row in rows:
        by_species.setdefault(row.species, {}).setdefault(row.identity, []).append(row)  # type: ignore[arg-type]
    for _species, identities in sorted(by_species.items()):
        names = sorted(identities)
        if max_identities and len(names) > max_identities:
            names = sorted(rng.permutation(names)[:max_identities].tolist())
        unknown = set(rng.permutation(names)[: round(len(names) * unknown_fraction)].tolist())
        for name in names:
            photos = sorted(identities[name], key=lambda r: (r.captured_at is None, r.captured_at or 0, r.line))
            if name in unknown:
                queries += photos
                continue
            groups: list[list[PhotoRow]] = []
            for photo in photos:
                if groups and photo.captured_at is not None and groups[-1][0].captured_at == photo.captured_at:
                    groups[-1].append(photo)
                else:
                    groups.append([photo])
            cut = max(1, (len(groups) + 1) // 2)
            reference += [p for g in groups[:cut] for p in g]
            queries += [p for g in groups[cut:] for p in g]
    write_manifest(reference, out_dir / "reference.csv")
    write_manifest(queries, out_dir / "queries.csv")
    return {"reference": str(out_dir / "reference.csv"), "queries": str(out_dir / "queries.csv"),
            "reference_images": len(reference), "query_images": len(queries),
            "unknown_fraction": unknown_fraction, "seed": seed, "max_identities": max_identities}


# --- collecting candidate scores ---------------------------------------------------------------------------
def collect(registry: Registry, rows: list[PhotoRow], known_identities: set[tuple[str, str]],
            progress: Callable[[int], None] | None = None) -> tuple[list[QueryResult], list[str]]:
    """Identify each labelled query without recording it; keep every candidate's scores."""
    results, problems = [], []
    batch = max(1, registry.settings.batch_size)
    identification = registry.identification
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        began = time.perf_counter()
        own = _own_images(registry, chunk)
        described = identification.describe([r.image for r in chunk], [r.species for r in chunk],
                                             [r.viewpoint for r in chunk], [r.box for r in chunk])
        describe_each = (time.perf_counter() - began) / len(chunk)
        for row, item in zip(chunk, described, strict=True):
            if isinstance(item, ImageError):
                problems.append(f"{row.image}: {item}")
                continue
            began = time.perf_counter()
            exclude = own.get(row.image, ())  # a query never matches its own photo
            candidates = identification.candidates(item, row.species, row.viewpoint, exclude,
                                                   deployment=row.deployment, whole_photo=row.box is None)
            outcome = identification.judge(candidates, row.species)  # also fills calibrated scores
            results.append(QueryResult(row, (row.species, row.identity) in known_identities, candidates,
                                       describe_each + time.perf_counter() - began,
                                       [(r.individual_id, r.score) for r in outcome.ranked]))
        if progress:
            progress(len(chunk))
    return results, problems


def _own_images(registry: Registry, rows: list[PhotoRow]) -> dict[Path, tuple[int, ...]]:
    """Query photos that are in the registry themselves (same content), and their annotations' ids."""
    shas = {}
    for row in rows:
        try:
            shas[row.image] = sha256_of_file(row.image)
        except ImageError:
            continue
    ids = registry.catalog.annotations_by_sha(list(shas.values()))
    return {path: tuple(ids[sha]) for path, sha in shas.items() if sha in ids}


def _ranked(result: QueryResult, score: ScoreFn | None) -> list[tuple[int, float]]:
    """Individuals best first under `score` (best photo per individual); None: as the registry decided."""
    if score is None:
        return list(result.decided or [])
    best: dict[int, float] = {}
    for candidate in result.candidates:
        value = score(candidate, result.row.species)
        if value > best.get(candidate.individual_id, -np.inf):
            best[candidate.individual_id] = value
    return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))


def predictions(results: list[QueryResult], score: ScoreFn | None, threshold: Callable[[str], float],
                names: dict[int, str]) -> list[Prediction]:
    """AnimalCLEF predictions under one scoring function and threshold rule."""
    out = []
    for result in results:
        ranked = _ranked(result, score)
        species, truth = result.row.species, result.row.identity or ""
        chosen = names.get(ranked[0][0]) if ranked and ranked[0][1] >= threshold(species) else None
        ranked_names = [names.get(i) for i, _ in ranked]
        rank = ranked_names.index(truth) + 1 if result.known and truth in ranked_names else None
        out.append(Prediction(species, truth, result.known, chosen, rank))
    return out


def _top(results: list[QueryResult], score: ScoreFn) -> list[tuple[int | None, float]]:
    return [(r[0] if r else (None, -np.inf)) for r in (_ranked(q, score) for q in results)]


def sweep(results: list[QueryResult], names: dict[int, str], scorer: CalibratedFusionScorer,
          alphas: np.ndarray = ALPHAS, taus: np.ndarray = TAUS) -> dict[str, Any]:
    """AnimalCLEF score for every (α, τ) on the grid, per species, from stored calibrated scores."""
    if scorer.complementary is None or scorer.learned:  # alpha plays no part in these scores
        alphas = np.array([scorer.alpha])
    species = sorted({r.row.species for r in results})
    grid: dict[str, list[list[float | None]]] = {sp: [] for sp in ["overall", *species]}
    for alpha in alphas:
        tops = _top(results, _fusion_fn(scorer, float(alpha)))
        rows: dict[str, list[float | None]] = {sp: [] for sp in grid}
        for tau in taus:
            preds = [_prediction_from_top(q, top, float(tau), names) for q, top in zip(results, tops, strict=True)]
            report = evaluate(preds)
            rows["overall"].append(report["overall"]["score"])
            for sp in species:
                rows[sp].append(report["per_species"][sp]["score"])
        for sp in grid:
            grid[sp].append(rows[sp])
    best = {}
    for sp, table in grid.items():
        values = np.array([[v if v is not None else -1 for v in row] for row in table], dtype=float)
        ties = np.argwhere(values >= values.max() - 1e-12)  # a plateau: take its middle, the most robust point
        a, t = ties[len(ties) // 2]
        best[sp] = {"alpha": float(alphas[a]), "tau": float(taus[t]), "score": float(values[a, t])}
    return {"alphas": alphas.tolist(), "taus": taus.tolist(), "score": grid, "best": best}


def _prediction_from_top(result: QueryResult, top: tuple[int | None, float], tau: float,
                         names: dict[int, str]) -> Prediction:
    individual, value = top
    chosen = names.get(individual) if individual is not None and value >= tau else None  # type: ignore[arg-type]
    return Prediction(result.row.species, result.row.identity or "", result.known, chosen)


def _fusion_fn(scorer: CalibratedFusionScorer, alpha: float) -> ScoreFn:
    """The score the policy decides with (learned fusion or WildFusion), with alpha overridden for sweeps."""
    return lambda c, species: scorer.fuse(c.calibrated, species, alpha)


def _wildfusion_fn(scorer: CalibratedFusionScorer, alpha: float) -> ScoreFn:
    return lambda c, _sp: wildfusion(c.calibrated, scorer.primary, scorer.local, scorer.complementary, alpha,
                                     scorer.second)


def cross_fitted_tau(results: list[QueryResult], names: dict[int, str], scorer: CalibratedFusionScorer,
                     ) -> tuple[list[Prediction], dict[str, list[float]]]:
    """Tuned-τ predictions without peeking: τ per species is chosen on one half of the queries (split by
    identity) and applied to the other half, both ways."""
    halves: list[list[QueryResult]] = [[], []]
    for result in results:
        halves[hash_identity(result.row.identity or "") % 2].append(result)
    out: list[Prediction] = []
    chosen: dict[str, list[float]] = {}
    for fit, apply in ((0, 1), (1, 0)):
        if not halves[fit] or not halves[apply]:
            continue
        best = sweep(halves[fit], names, scorer, alphas=np.array([scorer.alpha]))["best"]
        taus = {sp: b["tau"] for sp, b in best.items() if sp != "overall"}
        for sp, tau in taus.items():
            chosen.setdefault(sp, []).append(tau)
        out += predictions(halves[apply], _fusion_fn(scorer, scorer.alpha),
                           lambda sp, taus=taus: taus.get(sp, scorer.default_threshold), names)
    return out, chosen


def hash_identity(identity: str) -> int:
    """A stable small hash (Python's own is salted per process)."""
    return sum(identity.encode()) * 2654435761 % 2**32


# --- the evaluation itself ---------------------------------------------------------------------------------
def configurations(registry: Registry, results: list[QueryResult], names: dict[int, str]) -> dict[str, Any]:
    """Accuracy of each scoring configuration on the same candidates."""
    scorer = registry.scorer
    if not isinstance(scorer, CalibratedFusionScorer):
        raise ValueError("the registry is not calibrated: run `registry calibrate` first")
    tau = scorer.threshold_for
    primary, local, complementary = scorer.primary, scorer.local, scorer.complementary
    configs: dict[str, ScoreFn] = {
        f"global only ({primary})": lambda c, _sp: c.calibrated[primary],
        f"local only ({local})": lambda c, _sp: c.calibrated[local],
    }
    verified = registry.pipeline.local.verified_name
    if registry.pipeline.local.verify:
        configs[f"local only, verified ({verified})"] = lambda c, _sp: c.calibrated[verified]
    if complementary:
        configs[f"global only ({complementary})"] = lambda c, _sp: c.calibrated[complementary]
    configs[f"WildFusion (alpha {scorer.alpha:g})"] = _wildfusion_fn(scorer, scorer.alpha)
    if all(c.learned is not None for c in scorer.by_species.values()):
        configs["learned fusion (logistic)"] = lambda c, sp: scorer.calibrations_for(sp).learned(c.calibrated)  # type: ignore[misc]
    out = {name: _with_interval(predictions(results, fn, tau, names)) for name, fn in configs.items()}
    verifiers = {sp: c.verifier for sp, c in scorer.by_species.items()}
    if all(v is not None for v in verifiers.values()) and verifiers:
        taus = {sp: r.get("verifier", {}).get("tau") for sp, r in
                ((registry.policy.expected or {}).get("self_tuned") or {}).items()}
        verified = []
        for result in results:
            verifier = verifiers.get(result.row.species) or verifiers.get("*")
            combine = registry.identification.combine_photos(scorer, result.row.species)
            ranked = verifier.verify(rank_individuals(result.candidates, {}, combine))  # type: ignore[union-attr]
            verified.append(QueryResult(result.row, result.known, result.candidates, result.seconds,
                                        [(r.individual_id, r.score) for r in ranked]))
        out["pair verifier (its self-tuned tau)"] = _with_interval(predictions(
            verified, None, lambda sp: taus.get(sp) if taus.get(sp) is not None else tau(sp), names))
    tuned, chosen = cross_fitted_tau(results, names, scorer)
    if tuned:
        out[f"{scorer.name}, tau tuned per species (2-fold by identity)"] = {**_with_interval(tuned), "taus": chosen}
    return out


def _with_interval(found: list[Prediction]) -> dict[str, Any]:
    """`evaluate` plus a 95 % bootstrap interval of the overall score (identities resampled)."""
    report = evaluate(found)
    report["overall"]["score_ci95"] = bootstrap_interval(found)
    return report


def exhaustive(registry: Registry, rows: list[PhotoRow], known_identities: set[tuple[str, str]],
               names: dict[int, str], shortlist: int = 100,
               progress: Callable[[int], None] | None = None) -> tuple[list[QueryResult], float]:
    """The paper's own path: exact global similarity to every reference image of the species (no ANN), and the
    local matcher on all `shortlist` best images (not one per individual). Returns results and seconds/query."""
    pipeline = registry.pipeline
    primary = pipeline.primary.name
    collection = registry.collections[primary]
    ids = {i["annotation_id"]: i for i in registry.catalog.labelled_annotations()}
    reference_ids = np.array(sorted(ids))
    reference = registry.index.vectors(collection, reference_ids.tolist())
    matrix = np.stack([reference[int(i)] for i in reference_ids])
    species_of = np.array([ids[int(i)]["species"] for i in reference_ids])
    viewpoint_of = np.array([ids[int(i)]["viewpoint"] or "" for i in reference_ids])
    individual_of = {int(i): ids[int(i)]["individual_id"] for i in reference_ids}
    results, spent = [], 0.0
    own = _own_images(registry, rows)
    for row in rows:
        began = time.perf_counter()
        described = registry.identification.describe([row.image], [row.species], [row.viewpoint])[0]
        if isinstance(described, ImageError):
            continue
        similarity = matrix @ described.vectors[primary]
        allowed = species_of == row.species
        if row.viewpoint:  # the registry's viewpoint rule: its own, `both`, or unknown
            allowed &= (viewpoint_of == row.viewpoint) | (viewpoint_of == "both") | (viewpoint_of == "")
        allowed &= ~np.isin(reference_ids, own.get(row.image, ()))  # never the query's own photo
        similarity[~allowed] = -np.inf
        order = np.argsort(-similarity)[: min(shortlist, int(allowed.sum()))]
        primary_score = {int(reference_ids[i]): float(similarity[i]) for i in order}
        chosen = list(primary_score)
        features = registry.identification.candidate_features(chosen)
        second = registry.identification.second_for(row.species)
        found = registry.identification.candidate_features(chosen, matcher=second) if second is not None else {}
        # a photo without features is left out; the species' fusion needs the second matcher's scores where it has one
        chosen = [i for i in chosen if i in features and (second is None or i in found)]
        others = registry.identification.global_similarities(described.vectors, chosen, skip=primary)
        budget = registry.settings.local.for_species(row.species).max_keypoints
        local = pipeline.local.pair_scores(described.local, [features[i] for i in chosen], budget=budget,
                                           owners=[individual_of[i] for i in chosen])
        if second is not None and described.second is not None:
            extra = second.pair_scores(described.second, [found[i] for i in chosen], budget=budget,
                                       owners=[individual_of[i] for i in chosen])
            local = [{**a, **b} for a, b in zip(local, extra, strict=True)]
        candidates = []
        for position, annotation_id in enumerate(chosen):
            raw = {primary: primary_score[annotation_id], **{n: s[annotation_id] for n, s in others.items()},
                   **local[position]}
            candidates.append(CandidateScore(annotation_id, individual_of[annotation_id], raw))
        registry.identification.judge(candidates, row.species)
        seconds = time.perf_counter() - began
        spent += seconds
        results.append(QueryResult(row, (row.species, row.identity) in known_identities, candidates, seconds))
        if progress:
            progress(1)
    return results, spent / max(1, len(results))


def run(reference: Path, queries: Path, work_dir: Path, profile: str = "offline", protocol: str = "closed",
        exhaustive_limit: int = 0, shortlist: int = 100, calibration_pairs: int | None = None,
        limit: int | None = None, plot: Path | None = None, say: Callable[[str], None] = print,
        progress_factory: Callable[[str, int], Any] | None = None, train: Any = None,
        engine: str | None = None, spacetime: bool = True, local: dict[str, Any] | None = None,
        spacetime_verifier: bool | None = None, second_matcher: str | None = None) -> dict[str, Any]:
    """Build a registry from `reference`, calibrate it on its own labels, identify `queries`, report. With
    `train` (a TrainSettings), the global embedder is first fine-tuned on the reference photos alone and the
    registry reembedded (and recalibrated) with it: the queries never train or tune anything. `local`: matching
    settings to change (LocalMatcherSettings fields), for experiments that compare one setting on and off.
    `second_matcher`: measured by the calibration, which keeps it for the species where it separates the
    reference's pairs better (`registry calibrate --second-matcher`)."""
    def bar(label: str, total: int) -> Any:
        return progress_factory(label, total) if progress_factory else None

    settings = Settings.for_profile(profile, data_dir=work_dir / "registry")
    if engine is not None:  # the local matching engine (LocalMatcherSettings.engine); default: the registry's
        settings.local = replace(settings.local, engine=engine)
    if local:
        settings.local = replace(settings.local, **local)
    settings.spacetime = spacetime
    if spacetime_verifier is not None:  # the verifier fitted with space-time evidence or without it
        settings.spacetime_verifier = spacetime_verifier
    Registry.init(settings)
    report: dict[str, Any] = {"reference": str(reference), "queries": str(queries), "profile": profile,
                              "protocol": protocol, "engine": settings.local.engine,
                              "spacetime": spacetime, "local": local or {},
                              "spacetime_verifier": settings.spacetime_verifier, "second_matcher": second_matcher}
    with Registry(Settings.load(settings.data_dir)) as registry:
        query_rows = read_manifest(queries).rows
        if limit and len(query_rows) > limit:  # a seeded random subset, so a bounded run still spans identities
            keep = set(np.random.default_rng(0).permutation(len(query_rows))[:limit].tolist())
            query_rows = [r for i, r in enumerate(query_rows) if i in keep]
        query_rows = sorted(query_rows, key=lambda r: (r.captured_at is None, r.captured_at or 0, r.line))
        started = time.perf_counter()
        progress = bar("reference", len(read_manifest(reference).rows))
        ingest = Ingestor(registry).ingest(reference, "evaluation-reference", "reference",
                                 progress=progress.update if progress else None)
        if progress:
            progress.close()
        report["reference_images"] = ingest.added
        report["skipped"] = [str(p) for p in ingest.problems]
        say(f"reference: {ingest.added} photos in {time.perf_counter() - started:.0f} s; calibrating ...")
        if train is None:
            report["calibration"] = registry.calibrate(per_class=calibration_pairs, second_matcher=second_matcher)
        else:  # reembedding recalibrates with the trained version: calibrating the frozen one first is wasted
            began = time.perf_counter()
            card = registry.training.train(train, say=say)
            moved = registry.embedder_versions.reembed(card["version"], say=say, calibration_pairs=calibration_pairs)
            report["training"] = {"version": card["version"], "seconds": time.perf_counter() - began,
                                  "validation": card["validation"], "best_epoch": card["best_epoch"],
                                  "history": card["history"], "training_set": card["training_set"],
                                  "settings": card["settings"], "policy_version": moved["policy_version"]}
            report["calibration"] = moved["calibration"]
        individuals = registry.catalog.individuals()
        names = {i["id"]: i["name"] for i in individuals}
        known = {(i["species"], i["name"]) for i in individuals}
        if protocol in ("sequential", "discover"):
            report.update(_sequential(registry, queries, query_rows, known, bar, discover=protocol == "discover"))
            return report
        progress = bar("queries", len(query_rows))
        results, problems = collect(registry, query_rows, known, progress.update if progress else None)
        if progress:
            progress.close()
        report["skipped"] += problems
        decided = predictions(results, None, registry.scorer.threshold_for, names)
        actual = evaluate(decided)
        actual["overall"]["score_ci95"] = bootstrap_interval(decided)
        report.update(actual)
        report["seconds_per_query"] = float(np.mean([r.seconds for r in results])) if results else None
        report["configurations"] = configurations(registry, results, names)
        sweep_report = sweep(results, names, registry.scorer)  # type: ignore[arg-type]
        report["sweep"] = {"best": sweep_report["best"], "alphas": sweep_report["alphas"]}
        if plot:
            from registry.evaluate.plots import score_distributions

            true_scores, false_scores = candidate_scores(results, names)
            score_distributions(true_scores, false_scores, sweep_report,
                                registry.scorer.default_threshold, plot)  # type: ignore[attr-defined]
            report["plot"] = str(plot)
        if exhaustive_limit:
            chosen = np.random.default_rng(1).permutation(len(query_rows))[:exhaustive_limit]
            subset = [query_rows[i] for i in sorted(chosen.tolist())]  # known and unknown alike, in time order
            progress = bar("exhaustive", len(subset))
            full, seconds = exhaustive(registry, subset, known, names, shortlist,
                                       progress.update if progress else None)
            if progress:
                progress.close()
            paths = {str(r.row.image) for r in full}
            same = [r for r in results if str(r.row.image) in paths]
            report["exhaustive"] = {
                "queries": len(full), "shortlist": shortlist,
                "exhaustive": {**evaluate(predictions(full, lambda c, _sp: c.score, registry.scorer.threshold_for,
                                                      names))["overall"], "seconds_per_query": seconds},
                "registry_ann": {**evaluate(predictions(same, lambda c, _sp: c.score, registry.scorer.threshold_for,
                                                        names))["overall"],
                                 "seconds_per_query": float(np.mean([r.seconds for r in same])) if same else None},
            }
    return report


def _sequential(registry: Registry, queries: Path, rows: list[PhotoRow], known: set[tuple[str, str]],
                bar: Callable[[str, int], Any], discover: bool = False) -> dict[str, Any]:
    """The registry's real life: each query identified against everything recorded so far, then recorded. With
    `discover`, the season's new animals are then decided together (`registry discover --apply`), and the
    clustering is measured before and after (ARI over every query photo, and over the unknown animals' alone)."""
    ordered = write_manifest(rows, queries.parent / f".{queries.stem}-ordered.csv")
    progress = bar("sequential", len(rows))
    decided: list[tuple[PhotoRow, Any]] = []
    ingest = Ingestor(registry).ingest(ordered, "evaluation-queries", "identify",
                                       progress=progress.update if progress else None,
                                       on_identified=lambda row, ident: decided.append((row, ident)))
    if progress:
        progress.close()
    labels = {i["code"]: i["name"] for i in registry.catalog.individuals() if i["name"]}
    events = [(row.species, row.identity or "", ident.outcome.outcome, ident.individual_code,
               [c.code for c in ident.outcome.ranked]) for row, ident in decided]
    result = evaluate(sequential_predictions(events, labels))
    truth = {str(row.image.resolve()): row.identity or "" for row, _ in decided}
    predicted = {str(row.image.resolve()): ident.individual_code or "" for row, ident in decided}
    keys = sorted(truth)
    result["clustering"] = pairwise_clustering([predicted[k] for k in keys], [truth[k] for k in keys])
    result["skipped"] = [str(p) for p in ingest.problems]
    unknown = [k for k in keys if (species_of[k], truth[k]) not in known] if (
        species_of := {str(row.image.resolve()): row.species for row, _ in decided}) else []
    result["clustering_unknown"] = pairwise_clustering([predicted[k] for k in unknown], [truth[k] for k in unknown])
    if discover:
        from registry.curation.discovery import DiscoveryService

        began = time.perf_counter()
        result["discovery"] = DiscoveryService(registry).discover("evaluation-queries", apply=True,
                                                                  actor="registry evaluate --protocol discover")
        result["discovery"]["seconds"] = time.perf_counter() - began
        annotation_of = {str(row.image.resolve()): ident.annotation_id for row, ident in decided}
        now = registry.catalog.individual_codes_of([a for a in annotation_of.values() if a is not None])
        after = {k: now.get(annotation_of[k], predicted[k]) for k in keys}  # type: ignore[arg-type]
        result["clustering_before_discovery"] = result["clustering"]
        result["clustering"] = pairwise_clustering([after[k] for k in keys], [truth[k] for k in keys])
        result["clustering_unknown_before_discovery"] = result["clustering_unknown"]
        result["clustering_unknown"] = pairwise_clustering([after[k] for k in unknown], [truth[k] for k in unknown])
    return result


def tune(registry: Registry, queries: Path, tune_alpha: bool = True,
         progress: Callable[[int], None] | None = None, actor: str = "registry tune") -> dict[str, Any]:
    """Choose τ per species (and α, for WildFusion) on labelled validation photos that are not recorded,
    maximising the AnimalCLEF score of the score the policy decides with, and put them into force as a new
    policy version. A query photo that is itself in the registry never matches its own image."""
    scorer = registry.scorer
    if not isinstance(scorer, CalibratedFusionScorer):
        raise ValueError("the registry is not calibrated: run `registry calibrate` first")
    individuals = registry.catalog.individuals()
    names = {i["id"]: i["name"] for i in individuals}
    known = {(i["species"], i["name"]) for i in individuals}
    rows = [r for r in read_manifest(queries).rows if r.identity]
    results, problems = collect(registry, rows, known, progress)
    before = evaluate(predictions(results, lambda c, _sp: c.score, scorer.threshold_for, names))
    alphas = ALPHAS if tune_alpha and not scorer.learned else np.array([scorer.alpha])
    found = sweep(results, names, scorer, alphas=alphas)
    alpha = found["best"]["overall"]["alpha"]
    refit = sweep(results, names, scorer, alphas=np.array([alpha]))["best"]
    thresholds = {sp: b["tau"] for sp, b in refit.items() if sp != "overall"}
    tuned = CalibratedFusionScorer(scorer.by_species, scorer.primary, scorer.local, scorer.complementary, alpha,
                                   thresholds, scorer.default_threshold, learned=scorer.learned,
                                   second=scorer.second)
    after = evaluate(predictions(results, _fusion_fn(tuned, alpha), tuned.threshold_for, names))
    expected = {"score": scorer.name if not tuned.learned else tuned.name, "queries": len(results),
                "before": before["overall"]["score"], "after_on_these_queries": after["overall"]["score"],
                "per_species_after": {sp: b["score"] for sp, b in refit.items() if sp != "overall"}}
    policy = registry.set_policy(registry.policy.derive(
        f"tune on {queries.name} ({len(results)} queries)", actor, alpha=alpha, thresholds=thresholds,
        expected=expected))
    return {"queries": len(results), "skipped": problems, "alpha": alpha, "fusion": tuned.name,
            "thresholds": thresholds, "score_before": before["overall"]["score"],
            "score_after_on_these_queries": after["overall"]["score"],
            "per_species_after": expected["per_species_after"], "policy_version": policy.version}


def candidate_scores(results: list[QueryResult], names: dict[int, str]) -> tuple[list[float], list[float]]:
    """The fused score of each query's true individual and of every other candidate individual (the best image
    of each), for the score-distribution plot."""
    true_scores, false_scores = [], []
    for result in results:
        best: dict[int, tuple[float, bool]] = {}
        for candidate in result.candidates:
            same = names.get(candidate.individual_id) == result.row.identity
            if candidate.score > best.get(candidate.individual_id, (-1.0, False))[0]:
                best[candidate.individual_id] = (candidate.score, same)
        for score, same in best.values():
            (true_scores if same else false_scores).append(score)
    return true_scores, false_scores
