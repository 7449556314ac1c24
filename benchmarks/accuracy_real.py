"""Accuracy on the real development sets, one command: the protocol of docs/accuracy.md, then the table.

    .venv/bin/python benchmarks/accuracy_real.py [--data ../shared/data] [--only nyala] [--out-dir DIR]
        [--engine mnn] [--second-matcher disk] [--discover [--discover-only]]

Protocol (offline profile, this CPU): an identity-disjoint open-set split per data set (30 % of the identities
are unknown: all their photos are queries; for the others the earlier half of the photos is reference, grouped by
capture time so a clip or burst stays on one side); the registry is built from the reference, calibrated and
self-tuned on it alone, then every query is identified (never used for training or tuning). Nyala: 300 seeded
random queries, left/right flank passed through. Holstein: 30 seeded identities, split by clip, 250 queries.
Prints BAKS, BAUS, score with a 95 % bootstrap interval (identities resampled), top-1 and top-5 for the
registry's decisions and for every configuration computed from the same candidate scores. `--discover` adds the
discover protocol (AnimalCLEF 2026's view of a season): the same queries recorded one at a time, then
`registry discover --apply` on them; ARI of every query photo's individual against the truth, before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from registry.evaluate import experiments

PROTOCOLS = {
    "nyala": {"manifest": "nyala/metadata.csv", "max_identities": None, "limit": 300},
    "holstein": {"manifest": "holstein/metadata.csv", "max_identities": 30, "limit": 250},
}


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def table(name: str, report: dict) -> list[str]:
    ci = report["overall"].get("score_ci95")
    lines = [f"| {name} | registry decisions (as configured) | {_f(report['overall']['baks'])} | "
             f"{_f(report['overall']['baus'])} | {_f(report['overall']['score'])}"
             + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
             + f" | {_f(report['overall']['top1'])} | {_f(report['overall']['top5'])} | "
             f"{report['overall']['queries']} |"]
    for config, result in report.get("configurations", {}).items():
        block = result.get("overall", result)
        ci = block.get("score_ci95")
        lines.append(f"| {name} | {config} | {_f(block['baks'])} | {_f(block['baus'])} | {_f(block['score'])}"
                     + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                     + f" | {_f(block['top1'])} | {_f(block['top5'])} | {block['queries']} |")
    return lines


def discover_table(name: str, report: dict) -> list[str]:
    """One row of the discover protocol: the sequential decisions, then ARI before and after discovery."""
    overall = report["overall"]
    before, after = report["clustering_before_discovery"], report["clustering"]
    unknown_before, unknown_after = report["clustering_unknown_before_discovery"], report["clustering_unknown"]
    return [f"| {name} | {_f(overall['baks'])} | {_f(overall['baus'])} | {_f(overall['score'])} | "
            f"{_f(before['ari'])} → {_f(after['ari'])} | {_f(unknown_before['ari'])} → {_f(unknown_after['ari'])} | "
            f"{before['individuals_created']} → {after['individuals_created']} ({after['individuals_true']}) | "
            f"{report['discovery']['seconds']:.0f} |"]


def print_second_matcher(name: str, report: dict) -> None:
    """What the calibration measured of a second local matcher on the reference, and whether it kept it."""
    measured = report.get("calibration", {}).get("second_matcher")
    for sp, result in (measured or {}).get("per_species", {}).items():
        print(f"{name}: second matcher {measured['name']} for {sp}: {json.dumps(result)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--only", choices=sorted(PROTOCOLS), action="append")
    parser.add_argument("--out-dir", type=Path, default=None, help="Keep the JSON reports here.")
    parser.add_argument("--limit", type=int, default=None, help="Fewer queries (quicker, wider CI).")
    parser.add_argument("--only-trained", action="store_true", help="With --train: only the trained variant.")
    parser.add_argument("--train", type=int, default=None, metavar="EPOCHS",
                        help="Also fine-tune the embedder on each reference (`registry train`) and report that too.")
    parser.add_argument("--engine", choices=("mnn", "lightglue"), default=None,
                        help="The local matching engine (default: a new registry's).")
    parser.add_argument("--no-spacetime", dest="spacetime", action="store_false",
                        help="Leave space-time evidence out of the pair verifier (to measure what it adds).")
    parser.add_argument("--second-matcher", choices=("disk",), default=None,
                        help="Let the calibration measure a second local matcher (DISK + LightGlue) on the reference "
                             "and keep it where it separates the reference's pairs better (issue 24 §2).")
    parser.add_argument("--discover", action="store_true",
                        help="Also run the discover protocol (queries recorded one at a time, then the season's new "
                             "animals decided together) and report ARI before and after discovery.")
    parser.add_argument("--discover-only", action="store_true",
                        help="With --discover: skip the closed protocol (the discover run alone).")
    args = parser.parse_args()
    chosen = args.only or sorted(PROTOCOLS)
    missing = [n for n in chosen if not (args.data / PROTOCOLS[n]["manifest"]).exists()]
    if missing:
        sys.exit(f"real photos not found under {args.data} for {', '.join(missing)} (give --data or set "
                 "REGISTRY_SHARED_DATA)")
    lines = ["| data | configuration | BAKS | BAUS | score [95 % CI] | top-1 | top-5 | queries |",
             "|---|---|---|---|---|---|---|---|"]
    discover_lines = ["\n| data | recorded one at a time: BAKS | BAUS | score | ARI all queries before → after "
                      "discovery | ARI unknown animals before → after | individuals made before → after (true) | "
                      "discover s |",
                      "|---|---|---|---|---|---|---|---|"]
    variants = [] if args.discover_only else [("", None)]
    if args.train:
        from registry.learning.trainer import TrainSettings

        variants.append((" (trained embedder)", TrainSettings(epochs=args.train)))
        if args.only_trained:
            variants = variants[1:]
    for name in chosen:
        protocol = PROTOCOLS[name]
        for suffix, recipe in variants:
            with tempfile.TemporaryDirectory(prefix=f"accuracy-{name}-") as tmp:
                work = Path(tmp)
                split = experiments.split_manifest(args.data / protocol["manifest"], work,
                                                   max_identities=protocol["max_identities"])
                started = time.perf_counter()
                report = experiments.run(Path(split["reference"]), Path(split["queries"]), work,
                                         limit=args.limit or protocol["limit"], say=lambda m: print(m, file=sys.stderr),
                                         train=recipe, engine=args.engine, spacetime=args.spacetime,
                                         second_matcher=args.second_matcher)
                report["split"] = split
                report["wall_seconds"] = time.perf_counter() - started
            tag = name + ("-trained" if recipe else "")
            if args.out_dir:
                args.out_dir.mkdir(parents=True, exist_ok=True)
                (args.out_dir / f"accuracy_{tag}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
            print_second_matcher(name, report)
            lines += table(name + suffix, report)
            print(f"{tag}: {report['wall_seconds']:.0f} s", file=sys.stderr)
            print("\n".join(lines[-len(report.get("configurations", {})) - 1:]), file=sys.stderr)
        if args.discover:
            with tempfile.TemporaryDirectory(prefix=f"discover-{name}-") as tmp:
                work = Path(tmp)
                split = experiments.split_manifest(args.data / protocol["manifest"], work,
                                                   max_identities=protocol["max_identities"])
                started = time.perf_counter()
                report = experiments.run(Path(split["reference"]), Path(split["queries"]), work, protocol="discover",
                                         limit=args.limit or protocol["limit"], say=lambda m: print(m, file=sys.stderr),
                                         engine=args.engine, spacetime=args.spacetime,
                                         second_matcher=args.second_matcher)
                report["wall_seconds"] = time.perf_counter() - started
            print_second_matcher(name, report)
            if args.out_dir:
                args.out_dir.mkdir(parents=True, exist_ok=True)
                (args.out_dir / f"discover_{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
            discover_lines += discover_table(name, report)
    if variants:
        print("\n".join(lines))
    if args.discover:
        print("\n".join(discover_lines))


if __name__ == "__main__":
    main()
