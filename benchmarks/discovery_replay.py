"""Discovery replayed on stored pair scores: how a season's unknown animals cluster under each clustering rule.

    .venv/bin/python benchmarks/discovery_replay.py --build DIR [--set holstein] [--data ../shared/data]
    .venv/bin/python benchmarks/discovery_replay.py --labelled DIR [--draws 3]
    .venv/bin/python benchmarks/discovery_replay.py --replay DIR [--diagnose]

`--build` (~12 min on Holstein on a 2-core CPU: 7 to record, 5 for three labelled samples) follows `accuracy_real.py
--discover` up to the moment discovery starts: the same split, the registry built from the reference and calibrated,
the queries recorded one at a time. It then stores what discovery sees: the calibrated, fused pair scores among the
provisional new individuals' photos, the same among the labelled photos the cut is chosen on, and every query's
recorded individual and true identity. `--replay` (seconds, no torch) clusters those stored scores under every rule
of `registry.curation.discovery` and prints, per rule, the cut chosen on the labelled photos, ARI on them, ARI of
the unknown animals and of every query photo after discovery (as `accuracy_real.py --discover` reports), and the
best ARI any cut could reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from accuracy_real import PROTOCOLS  # the same splits as accuracy_real.py --discover


def build(out: Path, data: Path, name: str, engine: str) -> None:
    from sqlalchemy import select

    from registry.curation.discovery import DiscoveryService, Unit
    from registry.evaluate import experiments
    from registry.ingest.sources import read_manifest
    from registry.services.registry import Registry
    from registry.settings import Settings
    from registry.store.tables import Annotation, Image

    protocol = PROTOCOLS[name]
    out.mkdir(parents=True, exist_ok=True)
    split = experiments.split_manifest(data / protocol["manifest"], out, max_identities=protocol["max_identities"])
    started = time.perf_counter()
    report = experiments.run(Path(split["reference"]), Path(split["queries"]), out, protocol="sequential",
                             limit=protocol["limit"], engine=engine, say=lambda m: print(m, file=sys.stderr))
    print(f"recorded in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    truth_of = {str(r.image.resolve()): r.identity or "" for r in read_manifest(Path(split["queries"])).rows}
    reference_names = {r.identity for r in read_manifest(Path(split["reference"])).rows}
    with Registry(Settings.load(out / "registry")) as registry:
        with registry.catalog.transaction() as session:
            paths = dict(session.execute(select(Annotation.id, Image.path).join(Image, Image.id == Annotation.image_id)
                                         ).all())
            times = dict(session.execute(select(Annotation.id, Image.captured_at)
                                         .join(Image, Image.id == Annotation.image_id)).all())
        queries = [a for a, p in paths.items() if str(Path(p).resolve()) in truth_of]
        recorded = registry.catalog.individual_codes_of(queries)
        service = DiscoveryService(registry)
        stored: dict[str, np.ndarray] = {}
        for species in registry.catalog.species():
            units = service.provisional("evaluation-queries", species)
            photos = [Unit(f"photo-{a}", species, [a], individual_id=u.individual_id) for u in units
                      for a in u.annotations]
            began = time.perf_counter()
            stored[f"{species}/provisional"] = service.similarity(photos, species)
            seconds = time.perf_counter() - began
            stored[f"{species}/provisional_ids"] = np.array([p.annotations[0] for p in photos])
            print(f"{species}: {len(photos)} provisional photos of {len(units)} individuals scored in {seconds:.0f} s",
                  file=sys.stderr)
    np.savez_compressed(out / "provisional.npz", **stored)
    queries_table = [{"annotation": a, "recorded": recorded.get(a, ""),
                      "truth": truth_of[str(Path(paths[a]).resolve())],
                      "known": truth_of[str(Path(paths[a]).resolve())] in reference_names,
                      "captured_at": str(times[a]) if times[a] else None} for a in queries]
    (out / "queries.json").write_text(json.dumps({"queries": queries_table, "overall": report["overall"],
                                                  "clustering": report["clustering"],
                                                  "clustering_unknown": report["clustering_unknown"]}, indent=1))
    print(f"stored in {out}", file=sys.stderr)


def score_labelled(out: Path, draws: int) -> None:
    """The labelled photos the cut is chosen on, as `DiscoveryService.choose_cut` samples them (one sample per
    seed), scored like the season's photos."""
    from registry.curation.discovery import DiscoveryService
    from registry.services.registry import Registry
    from registry.settings import Settings

    stored: dict[str, np.ndarray] = {}
    with Registry(Settings.load(out / "registry")) as registry:
        service = DiscoveryService(registry)
        for species in registry.catalog.species():
            for seed in range(draws):
                began = time.perf_counter()
                labelled = service.labelled_units(species, seed=seed)
                stored[f"{species}/labelled/{seed}"] = service.similarity(labelled, species)
                stored[f"{species}/labelled_truth/{seed}"] = np.array([u.truth for u in labelled])
                print(f"{species}: labelled sample {seed}, {len(labelled)} photos scored in "
                      f"{time.perf_counter() - began:.0f} s", file=sys.stderr)
    np.savez_compressed(out / "labelled.npz", **stored)


def season_labels(queries: list[dict], ids: list[int], labels: list[int]) -> dict[int, str]:
    """Every query photo's individual after discovery: each provisional individual follows the cluster most of
    its photos fell in (as `DiscoveryService.discover` applies it)."""
    from registry.curation.discovery import majority_cluster

    recorded = {q["annotation"]: q["recorded"] for q in queries}
    label_of = dict(zip(ids, labels, strict=True))
    members: dict[str, list[int]] = {}
    for a in ids:
        members.setdefault(recorded[a], []).append(a)
    for photos in members.values():
        winner = majority_cluster(photos, label_of)
        for a in photos:
            recorded[a] = f"cluster-{winner}"
    return recorded


def replay(out: Path) -> None:
    from sklearn.metrics import adjusted_rand_score

    from registry.curation.discovery import CUT_GRID, METHODS, cluster

    provisional, labelled = np.load(out / "provisional.npz"), np.load(out / "labelled.npz")
    table = json.loads((out / "queries.json").read_text())
    queries = table["queries"]
    unknown = [q for q in queries if not q["known"]]
    print(f"recorded one at a time: ARI all queries {table['clustering']['ari']:.3f}, unknown animals "
          f"{table['clustering_unknown']['ari']:.3f} ({table['clustering_unknown']['individuals_created']} "
          f"individuals made for {table['clustering_unknown']['individuals_true']})")
    print("| species | labelled sample | rule | cut | ARI labelled | ARI unknown after | ARI all after | chosen |")
    print("|---|---|---|---|---|---|---|---|")
    for species in sorted({k.split("/")[0] for k in provisional.files}):
        similarity = provisional[f"{species}/provisional"]
        ids = provisional[f"{species}/provisional_ids"].tolist()

        def after(method: str, cut: float, similarity: np.ndarray = similarity, ids: list = ids,
                  ) -> tuple[float, float]:
            now = season_labels(queries, ids, cluster(similarity, method, cut))
            return (adjusted_rand_score([q["truth"] for q in unknown], [now[q["annotation"]] for q in unknown]),
                    adjusted_rand_score([q["truth"] for q in queries], [now[q["annotation"]] for q in queries]))

        chosen_all = []
        draws = sorted(int(k.rsplit("/", 1)[1]) for k in labelled.files if k.startswith(f"{species}/labelled/"))
        for seed in draws:
            sample = labelled[f"{species}/labelled/{seed}"]
            truth = labelled[f"{species}/labelled_truth/{seed}"].tolist()
            rows = []
            for method in METHODS:  # as choose_cut: best ARI, simplest rule first, the middle of its plateau
                scored = [(adjusted_rand_score(truth, cluster(sample, method, float(cut))), float(cut))
                          for cut in CUT_GRID]
                best = max(a for a, _ in scored)
                plateau = [c for a, c in scored if a >= best - 1e-9]
                rows.append((best, method, plateau[len(plateau) // 2]))
            top = max(best for best, _, _ in rows)
            chosen = next(r for r in rows if r[0] >= top - 1e-9)
            for best, method, cut in rows:
                unknown_ari, all_ari = after(method, cut)
                mark = "**yes**" if (best, method, cut) == chosen else ""
                if mark:
                    chosen_all.append(all_ari)
                print(f"| {species} | {seed} ({len(truth)} photos) | {method} | {cut:.2f} | {best:.3f} | "
                      f"{unknown_ari:.3f} | {all_ari:.3f} | {mark} |")
        if chosen_all:
            print(f"{species}: ARI of every query photo after discovery, as chosen on each labelled sample: "
                  f"{' '.join(f'{a:.3f}' for a in chosen_all)} (mean {np.mean(chosen_all):.3f})")
        oracle = max((after(method, float(cut))[1], method, float(cut)) for method in METHODS for cut in CUT_GRID)
        print(f"{species}: the best any rule and cut could reach on this season: ARI all {oracle[0]:.3f} "
              f"({oracle[1]} at {oracle[2]:.2f})")


def other_rules() -> dict[str, Callable[[np.ndarray, float], list[int]]]:
    """Clustering rules the registry does not use, kept to show what they reach on the same stored scores."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import squareform

    def scipy_linkage(method: str) -> Callable[[np.ndarray, float], list[int]]:
        def rule(m: np.ndarray, cut: float) -> list[int]:
            distance = 1.0 - np.clip(m, 0.0, 1.0)
            np.fill_diagonal(distance, 0.0)
            tree = linkage(squareform(distance, checks=False), method=method)
            return fcluster(tree, t=1.0 - cut + 1e-9, criterion="distance").tolist()
        return rule

    def nearest(m: np.ndarray, k: int) -> np.ndarray:
        masked = m.copy()
        np.fill_diagonal(masked, -np.inf)
        edges = np.zeros(m.shape, dtype=bool)
        edges[np.repeat(np.arange(len(m)), k), np.argsort(-masked, axis=1, kind="stable")[:, :k].ravel()] = True
        return edges

    def mutual_components(k: int) -> Callable[[np.ndarray, float], list[int]]:
        def rule(m: np.ndarray, cut: float) -> list[int]:
            edges = nearest(m, k)
            return connected_components(edges & edges.T & (m >= cut), directed=False)[1].tolist()
        return rule

    def shared_neighbours(k: int) -> Callable[[np.ndarray, float], list[int]]:
        def rule(m: np.ndarray, cut: float) -> list[int]:
            member = nearest(m, k).astype(float)
            np.fill_diagonal(member, 1.0)
            return scipy_linkage("average")(np.sqrt(member @ member.T / (k + 1) * np.clip(m, 0, 1)), cut)
        return rule

    def profiles(m: np.ndarray, cut: float) -> list[int]:
        centred = m - m.mean(axis=1, keepdims=True)
        centred /= np.linalg.norm(centred, axis=1, keepdims=True) + 1e-9
        return scipy_linkage("average")(np.clip(centred @ centred.T, 0.0, 1.0), cut)

    return {"single": scipy_linkage("single"), "complete": scipy_linkage("complete"),
            "weighted": scipy_linkage("weighted"),
            **{f"mutual-{k} components": mutual_components(k) for k in (1, 2, 3, 5)},
            **{f"shared {k}-neighbours x score": shared_neighbours(k) for k in (3, 5, 8)},
            "score profiles' correlation": profiles}


def diagnose(out: Path) -> None:
    """Why the season clusters as it does: how the pair scores of one animal and of two compare, and what other
    rules reach (the cut the first labelled sample chooses, and the best cut on the season: an upper bound)."""
    from scipy.sparse.csgraph import connected_components
    from sklearn.metrics import adjusted_rand_score, roc_auc_score

    from registry.curation.discovery import CUT_GRID

    provisional, labelled = np.load(out / "provisional.npz"), np.load(out / "labelled.npz")
    queries = json.loads((out / "queries.json").read_text())["queries"]
    unknown = [q for q in queries if not q["known"]]
    truth_of = {q["annotation"]: q["truth"] for q in queries}
    for species in sorted({k.split("/")[0] for k in provisional.files}):
        similarity = provisional[f"{species}/provisional"]
        ids = provisional[f"{species}/provisional_ids"].tolist()
        sample, sample_truth = labelled[f"{species}/labelled/0"], labelled[f"{species}/labelled_truth/0"].tolist()
        truth = np.array([truth_of[a] for a in ids])
        upper = np.triu_indices(len(ids), 1)
        one = (truth[:, None] == truth[None, :])[upper]
        scores = similarity[upper]
        masked = similarity.copy()
        np.fill_diagonal(masked, -np.inf)
        print(f"{species}: pair scores among the {len(ids)} provisional photos: one animal median "
              f"{np.median(scores[one]):.3f}, two animals {np.median(scores[~one]):.3f}, AUC "
              f"{roc_auc_score(one, scores):.3f}; at or above 0.8: {int((one & (scores >= 0.8)).sum())} pairs of one "
              f"animal, {int((~one & (scores >= 0.8)).sum())} of two; nearest photo of the same animal for "
              f"{np.mean(truth[masked.argmax(axis=1)] == truth):.2f} of the photos")

        def season(labels: list[int], ids: list[int] = ids) -> float:
            now = season_labels(queries, ids, labels)
            return adjusted_rand_score([q["truth"] for q in unknown], [now[q["annotation"]] for q in unknown])

        for floor in (0.5, 0.7):
            oracle = connected_components((truth[:, None] == truth[None, :]) & (similarity >= floor),
                                          directed=False)[1].tolist()
            print(f"{species}: only the true pairs scoring >= {floor} joined: ARI unknown animals {season(oracle):.3f}")
        print(f"| {species}: other rule | cut (labelled) | ARI unknown after | best cut on the season |")
        print("|---|---|---|---|")
        for name, rule in other_rules().items():
            chosen = max((adjusted_rand_score(sample_truth, rule(sample, float(c))), -float(c)) for c in CUT_GRID)
            best = max((season(rule(similarity, float(c))), float(c)) for c in CUT_GRID)
            print(f"| {name} | {-chosen[1]:.2f} | {season(rule(similarity, -chosen[1])):.3f} | "
                  f"{best[0]:.3f} at {best[1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, help="Record the season and store what discovery sees in this folder.")
    parser.add_argument("--replay", type=Path, help="Cluster the scores stored in this folder under every rule.")
    parser.add_argument("--labelled", type=Path,
                        help="Score the labelled samples again with the current code, in a folder --build made.")
    parser.add_argument("--diagnose", action="store_true",
                        help="Also print how one animal's pair scores compare with two animals' and what other "
                             "clustering rules reach on the stored scores.")
    parser.add_argument("--draws", type=int, default=3, help="Labelled samples (seeds) to choose the cut on.")
    parser.add_argument("--set", default="holstein", choices=sorted(PROTOCOLS))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--engine", default="mnn", help="Local matching engine (mnn: the descriptor engine).")
    args = parser.parse_args()
    if not (args.build or args.replay or args.labelled):
        parser.error("give --build DIR, --labelled DIR or --replay DIR")
    if args.build:
        if not (args.data / PROTOCOLS[args.set]["manifest"]).exists():
            sys.exit(f"skipped: {args.data / PROTOCOLS[args.set]['manifest']} is absent (set --data)")
        build(args.build, args.data, args.set, args.engine)
    if args.build or args.labelled:
        score_labelled(args.build or args.labelled, args.draws)
    replay(args.build or args.labelled or args.replay)
    if args.diagnose:
        diagnose(args.build or args.labelled or args.replay)


if __name__ == "__main__":
    main()
