"""Seconds per identification on a registry of real photos at the offline defaults (issue 12's budget: <= 10 s
per query on a 2-core CPU for a registry of 1 000 photos). One command, one run:

    .venv/bin/python benchmarks/identify_speed.py [--data ../shared/data] [--photos 1000] [--queries 20]

Builds a registry of `--photos` labelled Holstein photos (all of one species, so every query is compared with
all of them), then identifies `--queries` other photos of the same cows one at a time (identify mode, recorded)
and prints the per-query time (mean, median, p95) with the registry's size, so the ratio to the budget is read
off one run. `--calibrate` also runs `registry calibrate` first (decisions then use calibrated scores; the
matching work per query is the same).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from registry.ingest.ingestion import Ingestor
from registry.services.registry import Registry
from registry.settings import Settings


def write_manifest(path: Path, rows: list[dict[str, str]], root: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "identity", "species"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"image": str(root / row["image"]), "identity": row["identity"], "species": row["species"]})


def holstein_split(data: Path, n_reference: int, n_queries: int) -> tuple[Path, list, list, list]:
    """(metadata.csv, `n_reference` seeded reference rows, `n_queries` other photos of those cows, the remaining
    rows of cows outside the reference) of the Holstein set; exits with a clear message when it is absent."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per query the defaults must stay under")
    args = parser.parse_args()
    metadata, reference, queries, _ = holstein_split(args.data, args.photos, args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_manifest(root / "reference.csv", reference, metadata.parent)
        write_manifest(root / "queries.csv", queries, metadata.parent)
        settings = Settings.for_profile("offline", data_dir=root / "registry")
        Registry.init(settings)
        with Registry(Settings.load(settings.data_dir)) as registry:
            _ = registry.pipeline, registry.collections  # model loading is not part of the per-query cost
            began = time.perf_counter()
            report = Ingestor(registry).ingest(root / "reference.csv", "reference", "reference")
            added = report.added
            if added < len(reference) * 0.9:
                sys.exit(f"only {added} of {len(reference)} reference photos went in: {report.problems[:3]}")
            ingest_s = time.perf_counter() - began
            print(f"reference: {added} photos in {ingest_s:.0f} s ({added / ingest_s:.2f} img/s)", flush=True)
            if args.calibrate:
                began = time.perf_counter()
                registry.calibrate()
                print(f"calibrated in {time.perf_counter() - began:.0f} s", flush=True)
            seconds = []
            for n, query in enumerate(queries, 1):
                began = time.perf_counter()
                registry.identify(metadata.parent / query["image"], query["species"], record=True)
                seconds.append(time.perf_counter() - began)
                print(f"query {n}/{len(queries)}: {seconds[-1]:.2f} s", file=sys.stderr, end="\r")
            local = registry.settings.local
    times = np.asarray(seconds)
    print(f"\nmachine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; offline profile, "
          f"{local.max_keypoints} keypoints at {local.long_side} px, first pass {local.first_pass_keypoints}, "
          f"full budget for {local.full_rerank_individuals} + {local.lnbnn_individuals} (LNBNN) individuals")
    cows = len({r["identity"] for r in reference})
    print(f"registry of {added} photos ({cows} individuals), {len(times)} queries: mean {times.mean():.2f} s, "
          f"median {np.median(times):.2f} s, p95 {np.percentile(times, 95):.2f} s per query; "
          f"ratio to the {args.budget:.0f} s budget: {times.mean() / args.budget:.2f} (mean), "
          f"{np.percentile(times, 95) / args.budget:.2f} (p95)")


if __name__ == "__main__":
    main()
