"""What packing the feature cache costs: bytes per annotation, and LightGlue's scores with 8-bit descriptors
against float16 on real photos. One command, one run:

    .venv/bin/python benchmarks/feature_cache.py [--data ../shared/data] [--sets nyala holstein] [--queries 25]

For each dev set (benchmarks/local_matching.py's split and seeded known queries, photos described at 1024
keypoints), each query is matched, at the full budget, with the two globally closest photos of its 8 globally
closest individuals plus the true individual's (the pairs the registry's full pass scores). Every pair is scored
twice: with the features as ALIKED gave them (float16 descriptors, float32 keypoints) and as the packed cache
returns them (8-bit descriptors, 1/32-px keypoints). Printed per score (confident correspondences, MAGSAC
inliers): the median and 95th percentile of |change|, Spearman correlation, and top-1 individual (best pair)
with each, and whether it changed; then bytes per annotation and the projection to a million annotations.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from local_matching import describe_split
from scipy.stats import spearmanr

from registry.matching.local_matcher import LocalFeatures
from registry.store.feature_store import pack, unpack


def packed(features: LocalFeatures) -> LocalFeatures:
    return unpack(pack(features, "int8"))


def npz_bytes(features: LocalFeatures) -> int:
    """The size of one entry as the cache stored it before packing (one .npz file per annotation)."""
    buffer = io.BytesIO()
    np.savez(buffer, keypoints=features.keypoints.astype(np.float32), descriptors=features.descriptors,
             image_size=np.asarray(features.image_size, dtype=np.int32))
    return buffer.tell()


def run(data: Path, name: str, n_queries: int) -> dict:
    reference, queries, matcher, (ref_f, query_f), (ref_v, query_v) = describe_split(data, name, n_queries)
    names = [matcher.name, matcher.verified_name]
    original: dict[str, list[float]] = {n: [] for n in names}
    quantised: dict[str, list[float]] = {n: [] for n in names}
    top1 = {"float16": 0, "int8": 0, "changed": 0}
    began = time.perf_counter()
    for q, query in enumerate(queries):
        same = [i for i, r in enumerate(reference)
                if r.species == query.species and (query.viewpoint is None or r.viewpoint == query.viewpoint)]
        sims = {i: float(ref_v[i] @ query_v[q]) for i in same}
        best: dict[str, float] = {}
        for i in same:
            best[reference[i].identity] = max(best.get(reference[i].identity, -1.0), sims[i])
        chosen = sorted(best, key=lambda o: -best[o])[:8]
        if query.identity not in chosen:
            chosen.append(query.identity)
        pairs = []
        for owner in chosen:
            photos = sorted((i for i in same if reference[i].identity == owner), key=lambda i: -sims[i])[:2]
            pairs += [(owner, i) for i in photos]
        winners = {}
        for label, transform, store in (("float16", lambda f: f, original), ("int8", packed, quantised)):
            scores = matcher.pair_scores(transform(query_f[q]), [transform(ref_f[i]) for _, i in pairs])
            for n in names:
                store[n] += [s[n] for s in scores]
            by_owner: dict[str, float] = {}
            for (owner, _), s in zip(pairs, scores, strict=True):
                by_owner[owner] = max(by_owner.get(owner, -1.0), s[matcher.verified_name])
            winners[label] = max(by_owner, key=lambda o: by_owner[o])
            top1[label] += int(winners[label] == query.identity)
        top1["changed"] += int(winners["float16"] != winners["int8"])
        print(f"{name}: query {q + 1}/{len(queries)}", file=sys.stderr, end="\r")
    result: dict = {"set": name, "queries": len(queries), "pairs": len(original[names[0]]),
                    "seconds": time.perf_counter() - began, "top1": {k: v / len(queries) for k, v in top1.items()}}
    for n in names:
        a, b = np.asarray(original[n]), np.asarray(quantised[n])
        change = np.abs(a - b)
        result[n] = {"median_abs_change": float(np.median(change)), "p95_abs_change": float(np.percentile(change, 95)),
                     "mean_score": float(a.mean()), "spearman": float(spearmanr(a, b).statistic)}
    sizes = [(len(pack(f, "float16")), len(pack(f, "int8")), npz_bytes(f)) for f in ref_f]
    result["bytes_per_annotation"] = {"float16": float(np.mean([s[0] for s in sizes])),
                                      "int8": float(np.mean([s[1] for s in sizes])),
                                      "npz_before": float(np.mean([s[2] for s in sizes]))}
    result["keypoints"] = float(np.mean([len(f) for f in ref_f]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--sets", nargs="+", default=["nyala", "holstein"])
    parser.add_argument("--queries", type=int, default=25)
    args = parser.parse_args()
    for name in args.sets:
        r = run(args.data, name, args.queries)
        print(f"\n{name}: {r['queries']} queries, {r['pairs']} pairs, {r['seconds']:.0f} s; "
              f"{r['keypoints']:.0f} keypoints per photo")
        print("| score | median abs change | p95 abs change | mean score | Spearman |")
        print("|---|---|---|---|---|")
        for n in ("aliked", "aliked-verified"):
            s = r[n]
            print(f"| {n} | {s['median_abs_change']:.1f} | {s['p95_abs_change']:.1f} | {s['mean_score']:.1f} | "
                  f"{s['spearman']:.4f} |")
        t = r["top1"]
        print(f"top-1 (best MAGSAC pair): float16 {t['float16']:.3f}, int8 {t['int8']:.3f}; winner changed for "
              f"{t['changed']:.3f} of queries")
        b = r["bytes_per_annotation"]
        print(f"bytes per annotation: one .npz file before {b['npz_before'] / 1024:.1f} KB, float16 "
              f"{b['float16'] / 1024:.1f} KB, int8 {b['int8'] / 1024:.1f} KB; a "
              f"million annotations: {b['float16'] * 1e6 / 2**30:.0f} GiB float16, {b['int8'] * 1e6 / 2**30:.0f} GiB "
              f"int8 (+ SQLite's page overhead, ~1-2 %)")


if __name__ == "__main__":
    main()
