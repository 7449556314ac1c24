"""Discovery replayed on stored pair scores: how a season's unknown animals cluster under each clustering rule.

    .venv/bin/python benchmarks/discovery_replay.py --build DIR [--set holstein] [--data ../shared/data]
    .venv/bin/python benchmarks/discovery_replay.py --replay DIR

`--build` (one run, ~7 min on Holstein) follows `accuracy_real.py --discover` up to the moment discovery starts:
the same split, the registry built from the reference and calibrated, the queries recorded one at a time. It then
stores what discovery sees: the calibrated, fused pair scores among the provisional new individuals' photos, the
same among the labelled photos the cut is chosen on, and every query's recorded individual and true identity.
`--replay` (seconds, no torch) clusters those stored scores under every rule of `registry.curation.discovery` and
prints, per rule, the cut chosen on the labelled photos, ARI on them, ARI of the unknown animals and of every
query photo after discovery (as `accuracy_real.py --discover` reports), and the best ARI any cut could reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
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
    recorded = {q["annotation"]: q["recorded"] for q in queries}
    label_of = dict(zip(ids, labels, strict=True))
    members: dict[str, list[int]] = {}
    for a in ids:
        members.setdefault(recorded[a], []).append(a)
    for photos in members.values():
        votes = Counter(label_of[a] for a in photos)
        winner = min(votes, key=lambda label: (-votes[label], label))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, help="Record the season and store what discovery sees in this folder.")
    parser.add_argument("--replay", type=Path, help="Cluster the scores stored in this folder under every rule.")
    parser.add_argument("--labelled", type=Path,
                        help="Score the labelled samples again with the current code, in a folder --build made.")
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


if __name__ == "__main__":
    main()
