"""Throughput of the offline profile on this machine: reference ingestion (images/s) and identification
(seconds per photo, rerank included), on a synthetic population. One command, one run:

    .venv/bin/python benchmarks/pipeline_throughput.py --individuals 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from registry import synth
from registry.service import Registry
from registry.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--individuals", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.generate(root / "photos", individuals=args.individuals, seasons=2, seed=args.seed)
        settings = Settings(data_dir=root / "registry", profile="offline")
        Registry.init(settings)
        with Registry(Settings.load(settings.data_dir)) as registry:
            _ = registry.pipeline  # model loading is not part of the per-image cost
            start = time.perf_counter()
            reference = registry.ingest(root / "photos" / "season1" / "manifest.csv", "s1", "reference")
            ingest_s = time.perf_counter() - start
            start = time.perf_counter()
            identify = registry.ingest(root / "photos" / "season2" / "manifest.csv", "s2", "identify")
            identify_s = time.perf_counter() - start
    print(f"device: cpu, torch threads {torch.get_num_threads()}")
    print(f"reference ingestion: {reference.added} photos in {ingest_s:.1f} s = {reference.added / ingest_s:.2f} img/s")
    print(f"identify + record:   {identify.added} photos in {identify_s:.1f} s = "
          f"{identify_s / identify.added:.2f} s/photo (target <= 3 s)")


if __name__ == "__main__":
    main()
