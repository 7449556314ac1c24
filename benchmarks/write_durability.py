"""What durability costs a write: Qdrant Edge upserts of a batch with and without the flush the write path now
makes before marking annotations indexed, and a SQLite commit with `synchronous=NORMAL` and `FULL` (the
catalog's setting). One command, both measured in the same run, ratios printed.

    .venv/bin/python benchmarks/write_durability.py [--batches 30] [--batch-size 8] [--commits 200]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from registry.store.vector_index import VectorPoint
from registry.store.vectors_edge import EdgeIndex


def vector_batches(root: Path, batches: int, size: int, flush: bool) -> float:
    """Mean milliseconds per upsert of `size` 1280-d points (and a flush after each, if asked)."""
    rng = np.random.default_rng(0)
    index = EdgeIndex(root)
    index.ensure_collection("c", 1280)
    began = time.perf_counter()
    for batch in range(batches):
        index.upsert("c", [VectorPoint(batch * size + k + 1, rng.random(1280).astype(np.float32) + 0.01, 1, "sp",
                                       None, None) for k in range(size)])
        if flush:
            index.flush()
    elapsed = time.perf_counter() - began
    index.close()
    return elapsed / batches * 1000


def sqlite_commits(path: Path, commits: int, synchronous: str) -> float:
    """Mean milliseconds per one-row commit in WAL mode."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE t (x INTEGER)")
    began = time.perf_counter()
    for k in range(commits):
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?)", (k,))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - began
    db.close()
    return elapsed / commits * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--commits", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = vector_batches(root / "plain", args.batches, args.batch_size, flush=False)
        flushed = vector_batches(root / "flushed", args.batches, args.batch_size, flush=True)
        normal = sqlite_commits(root / "normal.sqlite", args.commits, "NORMAL")
        full = sqlite_commits(root / "full.sqlite", args.commits, "FULL")
    print(f"vector upsert of {args.batch_size} points: {plain:.1f} ms without flush, {flushed:.1f} ms with "
          f"(x{flushed / plain:.1f}, +{flushed - plain:.1f} ms per written batch)")
    print(f"SQLite commit (WAL): {normal:.2f} ms synchronous=NORMAL, {full:.2f} ms FULL "
          f"(+{full - normal:.2f} ms per commit)")


if __name__ == "__main__":
    main()
