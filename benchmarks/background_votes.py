"""Background that never votes: pair scores that count only the keypoints distinctive of the candidate's animal,
against today's verified inliers, on the same queries, pairs and cached features. One command per dev set:

    .venv/bin/python benchmarks/background_votes.py [--data ../shared/data] [--set nyala] [--queries 60]
        [--unknown 40] [--engine mnn|lightglue]

On the dev set's open-set split (benchmarks/accuracy_real.py's protocol), `--queries` known and `--unknown`
unknown queries each meet the photos the registry's query path reaches (the global embedding's 30 best
individuals and LNBNN's 12 best, 2 photos each, same flank). Each correspondence (mutual nearest descriptors with
the ratio test, or LightGlue's confident ones) is weighed by how much better it matches this individual than any
*other* individual: d_other, the distance from the query keypoint to its nearest descriptor in photos of other
individuals, against d_match. Strategies:

- `inliers`: MAGSAC-verified correspondences (today);
- `distinctive (shortlist)`: verified correspondences with d_match < r · d_other, d_other over the other
  individuals' photos in the shortlist (costs nothing: the similarity rows are already computed);
- `distinctive (pool)`: the same with d_other over every reference photo of the species at 256 keypoints;
- `margin`: Σ max(0, d_other − d_match) over verified correspondences (LNBNN's weight, per pair);
- `masked before MAGSAC`: background correspondences removed before the geometric check.

Printed per strategy: top-1 on the known queries (95 % bootstrap over identities), the AUC of the best
individual's score (known queries whose top-1 is right vs unknown queries), and the open-set score √(BAKS·BAUS)
with τ chosen on one half of the identities and applied to the other (both ways), and at the best τ.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_matching import describe_split
from matching_engines import interval, mnn_pairs

from registry.evaluate import experiments
from registry.ingest.sources import read_manifest
from registry.matching.imaging import load_image
from registry.matching.local_matcher import (
    LocalFeatures,
    PairMatches,
    lnbnn_votes,
    mutual_nearest_matches,
    verified_mask,
)
from registry.store.feature_store import pack, unpack

RATIOS = (1.0, 0.95, 0.9, 0.8)


def unknown_queries(data: Path, name: str, n: int, matcher) -> tuple[list, list[LocalFeatures], np.ndarray]:
    """`n` seeded queries of identities the reference lacks, described like describe_split's (own cache)."""
    from registry.matching.embedders import load_efficientnet_lite0

    with tempfile.TemporaryDirectory() as tmp:
        split = experiments.split_manifest(data / name / "metadata.csv", Path(tmp),
                                           max_identities=30 if name == "holstein" else None)
        reference = read_manifest(Path(split["reference"])).rows
        queries = read_manifest(Path(split["queries"])).rows
    known = {r.identity for r in reference}
    rng = np.random.default_rng(1)
    queries = [q for q in queries if q.identity not in known]
    queries = [queries[i] for i in sorted(rng.permutation(len(queries))[:n])]
    cache = Path(tempfile.gettempdir()) / f"background-votes-{name}-{n}-{matcher.extractor_version}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return queries, [LocalFeatures(stored[f"k{i}"], stored[f"d{i}"], tuple(stored[f"s{i}"]))
                             for i in range(len(queries))], stored["vectors"]
    embedder = load_efficientnet_lite0(None)
    features, vectors = [], []
    for start in range(0, len(queries), 8):
        images = [load_image(p.image, max_side=1024) for p in queries[start : start + 8]]
        features += matcher.extract(images)
        vectors.append(embedder.embed(images))
    vectors = np.concatenate(vectors)
    np.savez(cache, vectors=vectors, **{f"k{i}": f.keypoints for i, f in enumerate(features)},
             **{f"d{i}": f.descriptors for i, f in enumerate(features)},
             **{f"s{i}": np.asarray(f.image_size) for i, f in enumerate(features)})
    return queries, features, vectors


def distance(similarity: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None))


def score_query(query: LocalFeatures, features: list[LocalFeatures], owners: list[str], reach: list[int],
                pool: tuple[np.ndarray, np.ndarray], matcher, engine: str) -> dict[str, dict[int, float]]:
    """Every strategy's score of each reached photo."""
    q = torch.from_numpy(query.descriptors.astype(np.float32))
    rowmax = {}
    for j in reach:
        rowmax[j] = (q @ torch.from_numpy(features[j].descriptors.astype(np.float32)).T).amax(dim=1).numpy()
    # pool context: each query keypoint's 16 nearest pool descriptors and their owners
    pool_descriptors, pool_owner = pool
    sims, nearest = torch.topk(q @ torch.from_numpy(pool_descriptors).T, 16, dim=1)
    pool_sims, pool_owners = sims.numpy(), pool_owner[nearest.numpy()]
    if engine == "mnn":
        found = mutual_nearest_matches(query, [features[j] for j in reach], 0.9)
    else:
        found = [PairMatches(m.query_idx[k], m.candidate_idx[k], m.confidence[k])
                 for m in matcher.match(query, [features[j] for j in reach]) for k in [m.confidence >= 0.5]]
    out: dict[str, dict[int, float]] = {}
    for j, m in zip(reach, found, strict=True):
        owner = owners[j]
        others = [rowmax[k] for k in reach if owners[k] != owner]
        shortlist_other = np.max(others, axis=0) if others else np.full(len(query), -1.0)
        not_mine = pool_owners != owner
        first_other = np.where(not_mine.any(axis=1), pool_sims[np.arange(len(query)), not_mine.argmax(axis=1)],
                               pool_sims[:, -1])
        qi, ci = m.query_idx, m.candidate_idx
        match_sim = np.sum(query.descriptors[qi].astype(np.float32) * features[j].descriptors[ci].astype(np.float32),
                           axis=1)
        d_match = distance(match_sim)
        verified = verified_mask(query, features[j], PairMatches(qi, ci, match_sim))
        out.setdefault("inliers", {})[j] = float(verified.sum())
        for label, other in (("shortlist", shortlist_other), ("pool", first_other)):
            d_other = distance(other[qi])
            for r in RATIOS:
                keep = d_match < r * d_other
                out.setdefault(f"distinctive ({label}) r{r:g}", {})[j] = float((verified & keep).sum())
            out.setdefault(f"margin ({label})", {})[j] = float(np.clip(d_other - d_match, 0, None)[verified].sum())
            keep = d_match < 0.95 * d_other
            out.setdefault(f"masked before MAGSAC ({label}) r0.95", {})[j] = float(
                verified_mask(query, features[j], PairMatches(qi[keep], ci[keep], match_sim[keep])).sum())
    return out


def open_set(best: list[float], known_right: list[bool], unknown: list[bool], identities: list[str],
             ) -> tuple[float, float, float]:
    """(AUC of known-and-right vs unknown by best score, √(BAKS·BAUS) with τ 2-fold by identity, at the best τ).
    BAKS here is top-1 at τ over the known queries; BAUS the unknown queries called new."""
    best_a, right, unk = np.asarray(best), np.asarray(known_right), np.asarray(unknown)
    pos, neg = best_a[right & ~unk], best_a[unk]
    auc = float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])) if len(pos) and len(neg) else 0.0

    def score(tau: float, rows: np.ndarray) -> float:
        known_rows, unknown_rows = rows & ~unk, rows & unk
        baks = np.mean(right[known_rows] & (best_a[known_rows] >= tau)) if known_rows.any() else 0.0
        baus = np.mean(best_a[unknown_rows] < tau) if unknown_rows.any() else 0.0
        return float(np.sqrt(baks * baus))

    grid = np.unique(np.concatenate([best_a, best_a + 1e-6]))
    everyone = np.ones(len(best_a), dtype=bool)
    best_tau = max(score(t, everyone) for t in grid)
    names = sorted(set(identities))
    fold = {n: i % 2 for i, n in enumerate(np.random.default_rng(0).permutation(names))}
    folds = np.asarray([fold[i] for i in identities])
    held_scores = []
    for f in (0, 1):
        fit, held = folds != f, folds == f
        tau = max(grid, key=lambda t: score(t, fit))
        held_scores.append(score(tau, held))
    return auc, float(np.mean(held_scores)), best_tau


def reached(query, features: LocalFeatures, vector: np.ndarray, reference: list, ref_features: list[LocalFeatures],
            ref_vectors: np.ndarray) -> tuple[list[int], list[str], list[int]]:
    """(the reference photos of the query's species and flank, their identities, the indices among them that the
    query path reaches: the global embedding's 30 best individuals and LNBNN's 12, 2 photos each)."""
    same = [i for i, r in enumerate(reference)
            if r.species == query.species and (query.viewpoint is None or r.viewpoint == query.viewpoint)]
    owners = [reference[i].identity for i in same]
    pool = np.concatenate([ref_features[i].descriptors[:256] for i in same]).astype(np.float32)
    votes = lnbnn_votes(features.descriptors[:256].astype(np.float32), pool,
                        np.concatenate([[j] * len(ref_features[i].descriptors[:256]) for j, i in enumerate(same)]))
    record = {"owners": owners, "global": (ref_vectors[same] @ vector).tolist(),
              "lnbnn": [votes.get(j, 0.0) for j in range(len(same))]}
    return same, owners, mnn_pairs(record)


def print_table(rows: list[tuple[str, bool, list[str], dict[str, dict[int, float]]]]) -> None:
    """Per strategy: top-1 of the known queries with its interval, AUC and the open-set scores, from each query's
    (identity, unknown?, owners of the reference photos, strategy -> photo -> score)."""
    print("| strategy | top-1 | 95 % interval | AUC known-right vs unknown | open-set score (τ 2-fold) | "
          "at best τ |\n|---|---|---|---|---|---|")
    for strategy in rows[0][3]:
        hits, best, right, unk, identities = [], [], [], [], []
        for identity, is_unknown, owners, scores in rows:
            per_individual: dict[str, float] = {}
            for j, value in scores[strategy].items():
                per_individual[owners[j]] = max(per_individual.get(owners[j], -1.0), value)
            winner = max(per_individual, key=lambda o: per_individual[o])
            best.append(per_individual[winner])
            right.append(winner == identity)
            unk.append(is_unknown)
            identities.append(identity)
            if not is_unknown:
                hits.append(int(winner == identity))
        low, high = interval(hits, [r[0] for r in rows if not r[1]])
        auc, held, at_best = open_set(best, right, unk, identities)
        print(f"| {strategy} | {np.mean(hits):.3f} | {low:.3f}–{high:.3f} | {auc:.3f} | {held:.3f} | {at_best:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--set", default="nyala", choices=("nyala", "holstein"))
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--unknown", type=int, default=40)
    parser.add_argument("--engine", default="mnn", choices=("mnn", "lightglue"))
    args = parser.parse_args()
    reference, known, matcher, (ref_features, known_features), (ref_vectors, known_vectors) = describe_split(
        args.data, args.set, args.queries)
    unknown, unknown_features, unknown_vectors = unknown_queries(args.data, args.set, args.unknown, matcher)
    queries = known + unknown
    query_features = [unpack(pack(f)) for f in known_features + unknown_features]
    ref_features = [unpack(pack(f)) for f in ref_features]
    query_vectors = np.concatenate([known_vectors, unknown_vectors])
    began = time.perf_counter()
    rows = []
    for q, query in enumerate(queries):
        same, owners, reach = reached(query, query_features[q], query_vectors[q], reference, ref_features,
                                      ref_vectors)
        features = [ref_features[i] for i in same]
        pool = (np.concatenate([f.descriptors[:256] for f in features]).astype(np.float32),
                np.asarray([owners[j] for j, f in enumerate(features) for _ in range(len(f.descriptors[:256]))]))
        scores = score_query(query_features[q], features, owners, reach, pool, matcher, args.engine)
        rows.append((query.identity, query.identity not in set(owners), owners, scores))
        print(f"query {q + 1}/{len(queries)}", file=sys.stderr, end="\r")
    seconds = (time.perf_counter() - began) / len(queries)
    n_unknown = sum(1 for r in rows if r[1])
    print(f"\n{args.set}, engine {args.engine}: {len(rows) - n_unknown} known + {n_unknown} unknown queries, "
          f"{seconds:.2f} s/query for all strategies")
    print_table(rows)

if __name__ == "__main__":
    main()
