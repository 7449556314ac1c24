"""Does ingestion memory stay flat with the season's size? Peak RSS of a reference ingest of 1k and 10k photos,
each in a fresh process, and the RSS along the way. One command, one run, ratios printed:

    .venv/bin/python benchmarks/ingest_memory.py --sizes 1000 10000 --long-side 256

Photos: a few hundred synthetic photographs, each stored as many byte-distinct copies (a unique trailer after
the JPEG end marker changes the content hash, not the pixels), so a 10k season costs seconds to make. The
vector index is embedded Qdrant, which keeps every vector in the process's memory: its share is printed as
the vectors' raw size, the part of the growth a Qdrant server would take out of the process.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from registry.evaluate import synth

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
from registry.services.registry import Registry
from registry.settings import Settings

data, manifest, long_side, total = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
samples, done = [], [0]

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def sample():
    while True:
        samples.append((done[0], rss_mb()))
        time.sleep(1.0)

settings = Settings(data_dir=data, profile="offline")
settings.local.long_side = long_side
Registry.init(settings)
with Registry(Settings.load(data)) as registry:
    _ = registry.pipeline, registry.collections
    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    report = Ingestor(registry).ingest(manifest, "s", "reference", progress=lambda n: done.__setitem__(0, done[0] + n))
    seconds = time.perf_counter() - start
    dimension = registry.pipeline.primary.dimension
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
at = lambda share: max((r for n, r in samples if n <= share * total), default=None)
print(json.dumps({"added": report.added, "seconds": seconds, "peak_mb": peak, "rss_10pct": at(0.1),
                  "rss_50pct": at(0.5), "rss_end": samples[-1][1] if samples else None,
                  "vectors_mb": report.added * dimension * 4 / 2**20}))
"""


def make_season(root: Path, photos: int, base_individuals: int = 100) -> Path:
    base = synth.generate(root / "base", individuals=base_individuals, seasons=1, seed=1,
                          photos_per_sighting=(3, 3))
    rows = []
    (root / "season").mkdir(parents=True)
    for number in range(photos):
        record = base[number % len(base)]
        target = root / "season" / f"{number:06d}.jpg"
        target.write_bytes(record.path.read_bytes() + f"copy-{number}".encode())
        rows.append([target.name, record.identity, synth.SPECIES])
    manifest = root / "season" / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "identity", "species"])
        writer.writerows(rows)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--long-side", type=int, default=512, help="ALIKED working size (cost, not memory)")
    args = parser.parse_args()
    results = {}
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            started = time.perf_counter()
            manifest = make_season(root, size)
            made = time.perf_counter() - started
            child = subprocess.run([sys.executable, "-c", CHILD, str(root / "registry"), str(manifest),
                                    str(args.long_side), str(size)], capture_output=True, text=True, check=True)
            results[size] = json.loads(child.stdout.strip().splitlines()[-1])
            r = results[size]
            print(f"{size:>6} photos (made in {made:.0f} s): ingested {r['added']} in {r['seconds']:.0f} s "
                  f"({r['added'] / r['seconds']:.1f} img/s); RSS at 10% {r['rss_10pct']:.0f} MB, 50% "
                  f"{r['rss_50pct']:.0f} MB, end {r['rss_end']:.0f} MB, peak {r['peak_mb']:.0f} MB; "
                  f"vectors held by embedded Qdrant {r['vectors_mb']:.0f} MB", flush=True)
    if len(results) >= 2:
        small, large = min(results), max(results)
        growth = results[large]["peak_mb"] - results[small]["peak_mb"]
        vectors = results[large]["vectors_mb"] - results[small]["vectors_mb"]
        print(f"peak RSS ratio {large}/{small} photos: {results[large]['peak_mb'] / results[small]['peak_mb']:.2f} "
              f"(+{growth:.0f} MB, of which embedded-Qdrant vectors {vectors:.0f} MB)")


if __name__ == "__main__":
    main()
