"""The vector index at 10k, 100k and 1M points: Qdrant Edge (the registry's embedded engine, through its
`EdgeIndex` backend), qdrant-client's local mode (up to `--local-max` points) and brute-force numpy, side by side.
One command, one run; each engine and size runs in a fresh process (open time and RSS are its own):

    .venv/bin/python benchmarks/vector_index.py --sizes 10000 100000 1000000 --dims 1280 1536

Synthetic unit vectors shaped like re-identification embeddings: 1 000 individuals per species (one species per
100 000 points), each individual a direction, its photos that direction plus noise (cosine to its individual's
other photos ~0.6, to look-alikes ~0.4, to the rest of its species ~0.2), realistic payloads (species,
viewpoint left/right/both, individual, location, survey, photo). Queries are new photos of known individuals,
asked as the registry asks: the grouped query (30 individuals, 1 photo each) filtered on species and viewpoint.

Per run: bulk upsert throughput (points/s) and, for Edge, the optimizer's index build; filtered grouped query
p50/p95; filtered top-10 p50/p95 and recall@10 of the HNSW search against an exact search of the same filter;
open time (load + first query); RSS after the queries; disk. Goal on this machine (issue 15): grouped p95 < 20 ms
at 1M with recall@10 >= 0.98, open < 2 s. Prints a table and writes `--out` JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

INDIVIDUALS_PER_SPECIES = 1000
POINTS_PER_SPECIES = 100_000
VIEWPOINTS = ("left", "right", "both")


def species_count(n: int) -> int:
    return max(1, n // POINTS_PER_SPECIES)


def chunk(n: int, dim: int, start: int, stop: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Points start..stop-1 (ids start+1..), the same whatever the chunking: each individual's direction comes
    from its own seed, each photo's noise from the photo's."""
    species = species_count(n)
    vectors = np.empty((stop - start, dim), dtype=np.float32)
    payloads = []
    for row, k in enumerate(range(start, stop)):
        rng = np.random.default_rng((seed, k))
        s = k % species
        individual = s * INDIVIDUALS_PER_SPECIES + int(rng.integers(0, INDIVIDUALS_PER_SPECIES))
        vectors[row] = centre(individual, dim, seed) + rng.normal(scale=0.8 / np.sqrt(dim), size=dim)
        payloads.append({"species": f"species-{s}", "viewpoint": VIEWPOINTS[int(rng.integers(0, 3))],
                         "individual_id": individual + 1, "location_id": int(rng.integers(1, 50)),
                         "survey_id": int(rng.integers(1, 20)), "image_id": k + 1, "annotation_id": k + 1})
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, payloads


@functools.cache
def direction(kind: int, key: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng((seed, kind, key)).normal(size=dim)
    return v / np.linalg.norm(v)


def centre(individual: int, dim: int, seed: int) -> np.ndarray:
    """An individual's direction: its species' (0.5), its look-alike group's of 20 (0.5) and its own (0.7), so
    similarities are graded as in real embeddings: same individual > look-alikes > same species > others."""
    species, group = individual // INDIVIDUALS_PER_SPECIES, individual // 20
    v = 0.5 * direction(1, species, dim, seed) + 0.5 * direction(2, group, dim, seed) \
        + 0.7 * direction(3, individual, dim, seed)
    return v / np.linalg.norm(v)


def queries(n: int, dim: int, count: int, seed: int = 0) -> list[tuple[np.ndarray, str, str]]:
    rng = np.random.default_rng((seed, 2**31))
    out = []
    species = species_count(n)
    for _ in range(count):
        s = int(rng.integers(0, species))
        individual = s * INDIVIDUALS_PER_SPECIES + int(rng.integers(0, INDIVIDUALS_PER_SPECIES))
        v = centre(individual, dim, seed) + rng.normal(scale=0.8 / np.sqrt(dim), size=dim)
        out.append(((v / np.linalg.norm(v)).astype(np.float32), f"species-{s}", VIEWPOINTS[int(rng.integers(0, 2))]))
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


# --- one engine, one size (in its own process) -----------------------------------------------------------------
def run_index(engine: str, n: int, dim: int, n_queries: int, workdir: Path) -> dict:
    from registry.store import vectors_edge
    from registry.store.vector_index import CandidateFilter, VectorPoint
    from registry.store.vectors_client import ClientIndex
    from registry.store.vectors_edge import EdgeIndex

    def open_index():
        return EdgeIndex(workdir / "edge") if engine == "qdrant-edge" else ClientIndex(path=workdir / "local")

    vectors_edge.OPTIMIZE_EVERY = 10**12  # a bulk load: the optimizer runs once, after it (timed apart)
    result: dict = {"engine": engine, "points": n, "dim": dim}
    index = open_index()
    index.ensure_collection("bench", dim)
    upsert_s = 0.0
    step = 5000
    for start in range(0, n, step):
        vectors, payloads = chunk(n, dim, start, min(n, start + step))
        t0 = time.perf_counter()
        index.upsert("bench", (VectorPoint(p["annotation_id"], v, p["individual_id"], p["species"], p["viewpoint"],
                                           p["survey_id"], p["image_id"], p["location_id"])
                               for v, p in zip(vectors, payloads, strict=True)), batch_size=1000)
        upsert_s += time.perf_counter() - t0
        if start and start % 100_000 == 0:
            print(f"  {engine} {dim}-d: {start} points written", file=sys.stderr, flush=True)
    result["upsert_s"] = upsert_s  # the engine's time, not generating the vectors
    if engine == "qdrant-edge":
        t1 = time.perf_counter()
        index.optimize()
        result["index_build_s"] = time.perf_counter() - t1
    index.close()
    result["load_points_per_s"] = n / (result["upsert_s"] + result.get("index_build_s", 0.0))
    result["upsert_points_per_s"] = n / result["upsert_s"]

    asked = queries(n, dim, n_queries)
    t2 = time.perf_counter()
    index = open_index()
    index.count("bench")  # the shard is loaded on first use
    result["load_s"] = time.perf_counter() - t2
    index.search_individuals("bench", asked[0][0], 30, 1, asked[0][1], asked[0][2])
    result["open_s"] = time.perf_counter() - t2  # load + the first (cold) grouped query

    grouped, top10, recall = [], [], []
    for vector, species, viewpoint in asked:
        a = time.perf_counter()
        hits = index.search_individuals("bench", vector, 30, 1, species, viewpoint)
        grouped.append(time.perf_counter() - a)
        assert len(hits) == 30
        where = CandidateFilter.of(species, viewpoint)
        a = time.perf_counter()
        approx = index.query("bench", vector, 10, where)
        top10.append(time.perf_counter() - a)
        if engine == "qdrant-edge":
            exact = index.query("bench", vector, 10, where, exact=True)
            recall.append(len({h.annotation_id for h in approx} & {h.annotation_id for h in exact}) / 10)
    result.update(grouped_p50_ms=pct(grouped, 50), grouped_p95_ms=pct(grouped, 95), top10_p50_ms=pct(top10, 50),
                  top10_p95_ms=pct(top10, 95), recall_at_10=float(np.mean(recall)) if recall else None,
                  rss_mb=rss_mb(), disk_mb=disk_mb(workdir))
    index.close()
    return result


def run_numpy(n: int, dim: int, n_queries: int) -> dict:
    """Brute force: every vector in RAM (float32), masks for the filters, argsort for the groups."""
    t0 = time.perf_counter()
    matrix = np.empty((n, dim), dtype=np.float32)
    species, viewpoint, individual = (np.empty(n, dtype=np.int32) for _ in range(3))
    for start in range(0, n, 5000):
        vectors, payloads = chunk(n, dim, start, min(n, start + 5000))
        matrix[start:start + len(vectors)] = vectors
        species[start:start + len(vectors)] = [int(p["species"].split("-")[1]) for p in payloads]
        viewpoint[start:start + len(vectors)] = [VIEWPOINTS.index(p["viewpoint"]) for p in payloads]
        individual[start:start + len(vectors)] = [p["individual_id"] for p in payloads]
    result = {"engine": "numpy", "points": n, "dim": dim, "upsert_s": time.perf_counter() - t0}
    grouped, top10 = [], []
    for vector, sp, vp in queries(n, dim, n_queries):
        a = time.perf_counter()
        rows = np.flatnonzero((species == int(sp.split("-")[1]))
                              & ((viewpoint == VIEWPOINTS.index(vp)) | (viewpoint == 2)))
        scores = matrix[rows] @ vector
        order = np.argsort(-scores)
        top10.append(time.perf_counter() - a)
        _, first = np.unique(individual[rows][order], return_index=True)
        best = order[np.sort(first)[:30]]
        assert len(best) == 30
        grouped.append(time.perf_counter() - a)
    result.update(grouped_p50_ms=pct(grouped, 50), grouped_p95_ms=pct(grouped, 95), top10_p50_ms=pct(top10, 50),
                  top10_p95_ms=pct(top10, 95), recall_at_10=1.0, rss_mb=rss_mb(), disk_mb=0.0, open_s=None)
    return result


def child(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="vector-bench-", dir=args.workdir))
    try:
        if args.engine == "numpy":
            result = run_numpy(args.points, args.dim, args.queries)
        else:
            result = run_index(args.engine, args.points, args.dim, args.queries, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)


# --- the table ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[1280, 1536])
    parser.add_argument("--engines", nargs="+", default=["qdrant-edge", "qdrant-local", "numpy"])
    parser.add_argument("--local-max", type=int, default=20_000, help="qdrant-client local mode up to this size")
    parser.add_argument("--numpy-max", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", default=None, help="where the indexes are built (default: the temp folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vector_index.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--points", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    machine = {"cores": os.cpu_count(), "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                                         / 2**30, 1), "python": platform.python_version()}
    print(f"machine: {machine['cores']} cores, {machine['ram_gb']} GiB RAM", flush=True)
    results = []
    for n in args.sizes:
        for dim in args.dims:
            for engine in args.engines:
                if (engine == "qdrant-local" and n > args.local_max) or (engine == "numpy" and n > args.numpy_max):
                    continue
                command = [sys.executable, __file__, "--child", "--engine", engine, "--points", str(n), "--dim",
                           str(dim), "--queries", str(args.queries)] + (["--workdir", args.workdir]
                                                                        if args.workdir else [])
                started = time.perf_counter()
                out = subprocess.run(command, capture_output=True, text=True)
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    print(f"{engine} {n} {dim}-d failed:\n{out.stderr[-2000:]}", flush=True)
                    continue
                result = json.loads(line[len("RESULT "):])
                result["wall_s"] = time.perf_counter() - started
                results.append(result)
                print(row(result), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print()
    print(table(results))
    edge_1m = [r for r in results if r["engine"] == "qdrant-edge" and r["points"] >= 1_000_000]
    for r in edge_1m:
        print(f"goal at {r['points']} points, {r['dim']}-d: grouped p95 {r['grouped_p95_ms']:.1f} ms / 20 ms = "
              f"{r['grouped_p95_ms'] / 20:.2f}; recall@10 {r['recall_at_10']:.3f} (goal >= 0.98); open "
              f"{r['open_s']:.2f} s / 2 s = {r['open_s'] / 2:.2f}")


HEADER = ("| engine | points | dim | load pts/s | index build s | grouped p50 / p95 ms | top-10 p50 / p95 ms | "
          "recall@10 | open s | RSS MB | disk MB |")


def row(r: dict) -> str:
    def f(value: float | None, spec: str = ".1f") -> str:
        return "—" if value is None else format(value, spec)

    load = r["points"] / (r["upsert_s"] + r.get("index_build_s", 0.0))
    return (f"| {r['engine']} | {r['points']:,} | {r['dim']} | {load:,.0f} | {f(r.get('index_build_s'), '.0f')} | "
            f"{r['grouped_p50_ms']:.1f} / {r['grouped_p95_ms']:.1f} | {r['top10_p50_ms']:.1f} / "
            f"{r['top10_p95_ms']:.1f} | {f(r.get('recall_at_10'), '.3f')} | {f(r.get('open_s'), '.2f')} | "
            f"{r['rss_mb']:,.0f} | {r['disk_mb']:,.0f} |")


def table(results: list[dict]) -> str:
    return "\n".join([HEADER, "|" + "---|" * 11] + [row(r) for r in results])


if __name__ == "__main__":
    main()
