"""Reference ingest and `registry calibrate` on a 1 000-photo labelled reference (issue 23's targets: >= 4 photos/s
ingested, calibration <= 5 minutes on this 2-core CPU). One command, one run:

    .venv/bin/python benchmarks/calibrate_speed.py [--data ../shared/data] [--photos 1000] [--engine mnn]

Ingests `--photos` seeded Holstein photos as a reference (describe + index + record, the registry's defaults) and
calibrates it with the defaults (calibration pairs, self-tuned tau on simulated open-set queries, pair verifier);
prints photos per second, the calibration's seconds and the ratios to the targets, and what calibrate chose.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identify_speed import holstein_split, write_manifest

from registry.ingest.ingestion import Ingestor
from registry.services.registry import Registry
from registry.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--engine", choices=("lightglue", "mnn"), default="mnn",
                        help="local matching engine of the registry (LightGlue calibrates ~25x slower)")
    args = parser.parse_args()
    metadata, rows, _, _ = holstein_split(args.data, args.photos, 0)
    with tempfile.TemporaryDirectory(prefix="calibrate-speed-") as tmp:
        root = Path(tmp)
        write_manifest(root / "reference.csv", rows, metadata.parent)
        settings = Settings.for_profile("offline", data_dir=root / "registry")
        settings.local = replace(settings.local, engine=args.engine)
        Registry.init(settings)
        with Registry(Settings.load(settings.data_dir)) as registry:
            _ = registry.pipeline, registry.collections  # model loading is not part of either figure
            began = time.perf_counter()
            added = Ingestor(registry).ingest(root / "reference.csv", "reference", "reference").added
            ingest_s = time.perf_counter() - began
            print(f"reference: {added} photos in {ingest_s:.0f} s", file=sys.stderr)
            began = time.perf_counter()
            summary = registry.calibrate()
            calibrate_s = time.perf_counter() - began
            engine = registry.settings.local.engine
    tuned = {sp: (r.get("tau"), (r.get("expected") or {}).get("score")) for sp, r in summary["self_tuned"].items()}
    print(f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; offline profile, engine "
          f"{engine}")
    print(f"reference ingest: {added} photos in {ingest_s:.0f} s = {added / ingest_s:.2f} photos/s "
          f"(target >= 4: ratio {added / ingest_s / 4:.2f})")
    print(f"calibrate: {summary['pairs']} pairs, tau and verifier self-tuned {tuned}, in {calibrate_s:.0f} s "
          f"(target <= 300 s: ratio {calibrate_s / 300:.2f})")


if __name__ == "__main__":
    main()
