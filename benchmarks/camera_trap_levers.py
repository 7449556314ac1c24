"""Levers that need camera traps, measured on synthetic ones: one command, the same open-set protocol with one
setting off and on (issue 24).

    .venv/bin/python benchmarks/camera_trap_levers.py --lever static-scenery   # a fixed camera's scenery masked
    .venv/bin/python benchmarks/camera_trap_levers.py --lever spacetime        # where and when, for the verifier
        [--individuals 24] [--seed 11] [--engine mnn] [--out FILE]

The synthetic camera-trap population (`registry synth --camera-traps`, with `--fixed-scenery` for the scenery
lever): 6 stations ~5 km apart, each animal near a home station, one visit (a burst of 2-3 photos) per season;
seasons 1-2 are the reference (ingested with their places, times and deployments, calibrated on their own
labels), season 3 the queries (returning animals and new ones: open set). Neither real dev set can measure these:
Holstein photos are ~100 x 190 px face crops from one barn camera (no frame coordinates, no places), nyala has
neither deployments, times nor places. Prints, per arm, BAKS, BAUS, the score with a 95 % bootstrap interval,
top-1 and seconds per query for the registry's decisions, the pair verifier's score (in force or not), and for the
scenery lever the share of the reference keypoints the mask removed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

from registry.evaluate import experiments, synth
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.tables import WHOLE_IMAGE, Annotation, Deployment, Image


def masked_share(work_dir: Path) -> dict[str, float]:
    """How much of the reference photos' keypoints the mask removes, per deployment (its registry reopened)."""
    settings = Settings.load(work_dir / "registry")
    out: dict[str, float] = {}
    with Registry(settings) as registry:
        identifier = registry.identification
        with registry.catalog.transaction() as session:
            rows = session.execute(select(Annotation.id, Deployment.code).join(Image, Image.id == Annotation.image_id)
                                   .join(Deployment, Deployment.id == Image.deployment_id)
                                   .where(Annotation.region == WHOLE_IMAGE)).all()
        by_deployment: dict[str, list[int]] = {}
        for annotation_id, code in rows:
            by_deployment.setdefault(code, []).append(annotation_id)
        for code, ids in sorted(by_deployment.items()):
            plain = identifier.candidate_features(ids, scenery=False)
            scenery = identifier.scenery_of(code)
            kept = [len(scenery.mask(f)) / max(1, len(f)) for f in plain.values()]
            out[code] = float(1.0 - np.mean(kept)) if kept else 0.0
    return out


def joined(manifests: list[Path], out: Path) -> Path:
    """One manifest of several, image paths made absolute."""
    header, rows = None, []
    for manifest in manifests:
        with open(manifest, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            column = header.index("image")
            for row in reader:
                row[column] = str((manifest.parent / row[column]).resolve())
                rows.append(row)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lever", choices=("static-scenery", "spacetime"), default="static-scenery")
    parser.add_argument("--individuals", type=int, default=24)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--engine", default="mnn", help="local matching engine (mnn: ~1 s per query here)")
    parser.add_argument("--out", type=Path, help="write both reports as JSON")
    args = parser.parse_args()
    scenery = args.lever == "static-scenery"
    with tempfile.TemporaryDirectory(prefix=f"{args.lever}-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        records = synth.generate(root / "population", individuals=args.individuals, seasons=3, seed=args.seed,
                                 camera_traps=True, fixed_scenery=scenery)
        print(f"{len(records)} animals photographed at camera stations in {time.perf_counter() - began:.0f} s",
              file=sys.stderr)
        # two seasons of reference (an animal seen on two visits, as a program's catalogue has it: one visit's
        # burst alone teaches calibration only near-duplicates), the third season's photos as queries
        reference = joined([root / "population" / f"season{k}" / "manifest.csv" for k in (1, 2)],
                           root / "reference.csv")
        queries = root / "population" / "season3" / "manifest.csv"
        reports = {}
        arms = ((("scenery votes (off)", False), ("scenery masked (on)", True)) if scenery
                else (("verifier without space-time (off)", False), ("verifier with space-time (on)", True)))
        for arm, on in arms:
            began = time.perf_counter()
            work = root / ("on" if on else "off")
            report = experiments.run(reference, queries, work, engine=args.engine,
                                     local={"static_scenery": on} if scenery else None,
                                     spacetime_verifier=None if scenery else on,
                                     say=lambda line: print(line, file=sys.stderr))
            report["wall_s"] = time.perf_counter() - began
            report["masked_share"] = masked_share(work) if on and scenery else {}
            reports[arm] = report
        print("| arm | BAKS | BAUS | score [95 % CI] | top-1 | s/query | pair verifier's score | "
              "reference keypoints masked |")
        print("|---|---|---|---|---|---|---|---|")
        for arm, report in reports.items():
            o = report["overall"]
            ci = o.get("score_ci95") or [float("nan")] * 2
            share = report["masked_share"]
            masked = f"{np.mean(list(share.values())):.2f} (per deployment {min(share.values()):.2f}-" \
                     f"{max(share.values()):.2f})" if share else "–"
            verifier = next((c.get("overall", c) for name, c in report.get("configurations", {}).items()
                             if name.startswith("pair verifier")), None)
            verified = f"{verifier['score']:.3f}" if verifier else "–"
            print(f"| {arm} | {o['baks']:.3f} | {o['baus']:.3f} | {o['score']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
                  f"{o['top1']:.3f} | {report['seconds_per_query']:.2f} | {verified} | {masked} |")
        print(f"({o['queries']} queries; {args.individuals} animals in season 1; engine {args.engine}; "
              f"seed {args.seed}; lever {args.lever})")
        if args.out:
            args.out.write_text(json.dumps(reports, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
