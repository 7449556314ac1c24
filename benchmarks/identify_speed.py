"""Where an identification's time goes, engine against engine, on the real dev sets. One command, one run:

    .venv/bin/python benchmarks/identify_speed.py [--data ../shared/data] [--only nyala] [--queries 40]
        [--engines mnn,mnn:plain,lightglue]

For each dev set (the open-set split of benchmarks/accuracy_real.py: nyala, and 30 Holstein identities split by
clip), one registry is built from the reference photos (reference ingest timed: describe + index + record),
then copied once per local matching engine; each copy is calibrated with its engine (`registry calibrate
--engine`, timed) and identifies the same seeded queries, known and unknown, one at a time and recorded, as
`registry identify --record` does. Printed per data set and engine: seconds per stage (mean and p95, from each
answer's `timings`), seconds per query, top-1 of the known queries and the open-set score (geometric mean of
BAKS and BAUS), and the ratio of each engine's seconds per query to LightGlue's (the engine before issue 23).

`--calibration-pairs` and `--self-tune-queries` bound the calibration (LightGlue's costs ~0.3 s per pair and
~7 s per simulated query on a 2-core CPU, which is what this benchmark exists to show).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from registry.decide.metrics import Prediction, evaluate
from registry.evaluate import experiments
from registry.ingest.ingestion import Ingestor
from registry.ingest.sources import read_manifest
from registry.matching.timing import STAGES
from registry.services.registry import Registry
from registry.settings import Settings

PROTOCOLS = {"nyala": ("nyala/metadata.csv", None), "holstein": ("holstein/metadata.csv", 30)}


def write_manifest(path: Path, rows: list[dict[str, str]], root: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "identity", "species"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"image": str(root / row["image"]), "identity": row["identity"], "species": row["species"]})


def holstein_split(data: Path, n_reference: int, n_queries: int) -> tuple[Path, list, list, list]:
    """(metadata.csv, `n_reference` seeded reference rows, `n_queries` other photos of those cows, the remaining
    rows of cows outside the reference) of the Holstein set (benchmarks/identify_scale.py and calibrate_speed.py
    build their registries from it); exits with a clear message when it is absent."""
    metadata = (data / "holstein" / "metadata.csv").resolve()  # the manifests live in a temp folder
    if not metadata.exists():
        sys.exit(f"{metadata} not found: give --data or set REGISTRY_SHARED_DATA")
    with metadata.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    order = np.random.default_rng(0).permutation(len(rows))
    reference = [rows[i] for i in order[:n_reference]]
    known = {r["identity"] for r in reference}
    queries = [rows[i] for i in order[n_reference:] if rows[i]["identity"] in known][:n_queries]
    strangers = [rows[i] for i in order[n_reference:] if rows[i]["identity"] not in known]
    return metadata, reference, queries, strangers


def run_engine(data_dir: Path, variant: str, queries: list, known: set[tuple[str, str]], pairs: int,
               self_tune_queries: int) -> dict:
    """One engine variant: `mnn` or `lightglue`, with `:plain` for pair scores without the distinctive one."""
    engine, _, option = variant.partition(":")
    settings = Settings.load(data_dir)
    settings.self_tune_queries = self_tune_queries
    out: dict = {"engine": variant}
    with Registry(settings) as registry:
        _ = registry.pipeline, registry.collections  # model loading is not part of any per-query cost
        began = time.perf_counter()
        registry.calibrate(per_class=pairs, engine=engine, distinctive=option != "plain")
        out["calibrate_s"] = time.perf_counter() - began
        names = {i["id"]: i["name"] for i in registry.catalog.individuals()}
        timings, seconds, predictions, top1 = [], [], [], []
        for n, row in enumerate(queries, 1):
            began = time.perf_counter()
            answer = registry.identify(row.image, row.species, row.viewpoint, record=True)
            seconds.append(time.perf_counter() - began)
            timings.append(answer.timings)
            outcome = answer.outcome
            is_known = (row.species, row.identity) in known
            best = outcome.ranked[0] if outcome.ranked else None
            best_name = names.get(best.individual_id) if best else None
            if is_known:
                top1.append(int(best_name == row.identity))
            chosen = names.get(outcome.individual_id) if outcome.outcome == "match" else None
            predictions.append(Prediction(row.species, row.identity, is_known, chosen))
            print(f"{variant}: query {n}/{len(queries)} {seconds[-1]:.2f} s", file=sys.stderr, end="\r")
    overall = evaluate(predictions)["overall"]
    out.update(seconds=seconds, timings=timings, top1=float(np.mean(top1)) if top1 else None,
               score=overall["score"], baks=overall["baks"], baus=overall["baus"], known_queries=len(top1))
    return out


def report(name: str, ingest: dict, results: list[dict]) -> list[str]:
    lines = [f"\n{name}: reference {ingest['photos']} photos in {ingest['seconds']:.0f} s "
             f"({ingest['photos'] / ingest['seconds']:.2f} photos/s)"]
    header = "| stage | " + " | ".join(f"{r['engine']} mean | {r['engine']} p95" for r in results) + " |"
    lines += [header, "|---|" + "---|---|" * len(results)]
    for stage in (*STAGES, "total"):
        cells = []
        for r in results:
            values = np.asarray([t.get(stage, 0.0) for t in r["timings"]])
            cells.append(f"{values.mean():.3f} | {np.percentile(values, 95):.3f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    reference = next((r for r in results if r["engine"] == "lightglue"), results[0])  # today's engine
    base = float(np.mean(reference["seconds"]))
    lines.append("| engine | s/query (wall) | ratio to " + reference["engine"] + " | top-1 | score | BAKS | BAUS "
                 "| calibrate s |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in results:
        mean = float(np.mean(r["seconds"]))
        lines.append(f"| {r['engine']} | {mean:.2f} | {mean / base:.2f} | {r['top1']:.3f} | {r['score']:.3f} | "
                     f"{r['baks']:.3f} | {r['baus']:.3f} | {r['calibrate_s']:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--only", choices=sorted(PROTOCOLS), action="append")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--engines", default="mnn,lightglue",
                        help="comma-separated, run in this order; ratios are to lightglue (today's engine); "
                             "ENGINE:plain leaves out the distinctive pair score (background votes)")
    parser.add_argument("--calibration-pairs", type=int, default=150, help="same-individual pairs per species")
    parser.add_argument("--self-tune-queries", type=int, default=60)
    args = parser.parse_args()
    engines = args.engines.split(",")
    lines = [f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; offline profile; "
             f"{args.queries} queries per data set; calibration {args.calibration_pairs} pairs per class, "
             f"{args.self_tune_queries} simulated queries"]
    for name in args.only or sorted(PROTOCOLS):
        manifest, max_identities = PROTOCOLS[name]
        if not (args.data / manifest).exists():
            sys.exit(f"{args.data / manifest} not found: give --data or set REGISTRY_SHARED_DATA")
        with tempfile.TemporaryDirectory(prefix=f"identify-speed-{name}-") as tmp:
            work = Path(tmp)
            split = experiments.split_manifest(args.data / manifest, work, max_identities=max_identities)
            reference = read_manifest(Path(split["reference"])).rows
            known = {(r.species, r.identity) for r in reference}
            queries = read_manifest(Path(split["queries"])).rows
            chosen = sorted(np.random.default_rng(0).permutation(len(queries))[: args.queries].tolist())
            queries = sorted((queries[i] for i in chosen),
                             key=lambda r: (r.captured_at is None, r.captured_at or 0, r.line))
            base = work / "base"
            Registry.init(Settings.for_profile("offline", data_dir=base))
            with Registry(Settings.load(base)) as registry:
                _ = registry.pipeline, registry.collections
                began = time.perf_counter()
                added = Ingestor(registry).ingest(Path(split["reference"]), "reference", "reference").added
                ingest = {"photos": added, "seconds": time.perf_counter() - began}
            print(f"{name}: reference {added} photos in {ingest['seconds']:.0f} s", file=sys.stderr)
            results = []
            for engine in engines:
                copy = work / engine.replace(":", "-")
                shutil.copytree(base, copy)
                (copy / "settings.json").write_text((base / "settings.json").read_text().replace(str(base),
                                                                                                  str(copy)))
                results.append(run_engine(copy, engine, queries, known, args.calibration_pairs,
                                          args.self_tune_queries))
                print(f"\n{name} {engine}: {np.mean(results[-1]['seconds']):.2f} s/query, top-1 "
                      f"{results[-1]['top1']:.3f}, score {results[-1]['score']:.3f}, calibrated in "
                      f"{results[-1]['calibrate_s']:.0f} s", file=sys.stderr)
                shutil.rmtree(copy)
        lines += report(name, ingest, results)
        print("\n".join(lines[-(len(STAGES) + 8):]), file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
