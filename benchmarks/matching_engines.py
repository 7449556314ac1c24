"""Today's LightGlue rerank against descriptor matching (mutual nearest neighbours + ratio test + MAGSAC) on the
same queries, the same cached features and the same candidate photos. One command, one run per dev set:

    .venv/bin/python benchmarks/matching_engines.py [--data ../shared/data] [--set nyala] [--queries 60]
    .venv/bin/python benchmarks/matching_engines.py --replay /tmp/matching-engines-nyala.json

On the dev set's open-set split (known queries, as benchmarks/local_matching.py), each query meets every
reference photo of its species and flank. Per query it records, for every candidate photo that any strategy
below reaches, the global similarity, LNBNN votes, LightGlue's scores (confident correspondences, MAGSAC
inliers) where the strategy that needs them reaches the pair, and the descriptor matcher's scores at several
ratio thresholds; the JSON is replayable (`--replay`) without any model. Printed: top-1 of the true individual
(with a 95 % bootstrap interval) and seconds per query of each strategy:

- `lightglue (today)`: the registry's path before this benchmark: LightGlue at 256 keypoints on the best photo of
  the global top-30 individuals, the 4 best of them and LNBNN's 6 best others (2 photos each) at 1024 keypoints;
- `mnn`: descriptor matching at 1024 keypoints on the global top-30 individuals' 2 most similar photos and
  LNBNN's 12 best individuals' 2 best-voted photos (cheap enough to afford three times the pairs);
- `mnn + lightglue top-K`: the same, then LightGlue at 1024 keypoints on the best pair of the K individuals that
  descriptor matching ranks first, which re-orders those K.

Features are the registry's packed 8-bit ones (what identification reads from the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_matching import describe_split

from registry.matching.local_matcher import (
    LocalFeatures,
    PairMatches,
    lnbnn_votes,
    mutual_nearest_matches,
    verified_inliers,
)
from registry.store.feature_store import pack, unpack

RATIOS = (0.8, 0.85, 0.9, 0.95)


def interval(hits: list[int], identities: list[str], resamples: int = 1000) -> tuple[float, float]:
    """95 % percentile bootstrap interval of top-1, resampling identities (one animal's queries are not
    independent draws)."""
    rng = np.random.default_rng(0)
    by_identity: dict[str, list[int]] = {}
    for hit, identity in zip(hits, identities, strict=True):
        by_identity.setdefault(identity, []).append(hit)
    groups = list(by_identity.values())
    values = []
    for _ in range(resamples):
        drawn = [h for i in rng.integers(0, len(groups), len(groups)) for h in groups[i]]
        values.append(np.mean(drawn))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def top_individuals(scores: dict, owners: list[str], n: int) -> list[str]:
    """The `n` individuals whose best photo scores highest (photos keyed by index, as int or JSON str)."""
    best: dict[str, float] = {}
    for j, value in scores.items():
        owner = owners[int(j)]
        best[owner] = max(best.get(owner, -1e9), value)
    return sorted(best, key=lambda o: -best[o])[:n]


def photos_by(values: list[float] | np.ndarray, owners: list[str]) -> dict[str, list[int]]:
    """Each individual's photos, best first."""
    out: dict[str, list[int]] = {}
    for j in sorted(range(len(owners)), key=lambda j: -values[j]):
        out.setdefault(owners[j], []).append(j)
    return out


def today_pairs(record: dict) -> tuple[list[int], list[int]]:
    """(first-pass photos, full-pass photos) of the registry's LightGlue path for one recorded query."""
    owners = record["owners"]
    by_global, by_vote = photos_by(record["global"], owners), photos_by(record["lnbnn"], owners)
    first = [by_global[o][0] for o in list(by_global)[:30]]
    cheap = {j: record["lightglue_256"][str(j)] for j in first}
    chosen_individuals = top_individuals(cheap, owners, 4)
    full = set()
    for owner in chosen_individuals:
        best = by_global[owner][0]
        full |= {best, *[j for j in by_vote.get(owner, []) if j != best][:1]}
    newcomers = [o for o in by_vote if o not in chosen_individuals and record["lnbnn"][by_vote[o][0]] > 0][:6]
    for owner in newcomers:
        full |= set(by_vote[owner][:2])
    return first, sorted(full)


def mnn_pairs(record: dict, individuals: int = 30, lnbnn: int = 12, photos: int = 2) -> list[int]:
    owners = record["owners"]
    by_global, by_vote = photos_by(record["global"], owners), photos_by(record["lnbnn"], owners)
    reach = {j for o in list(by_global)[:individuals] for j in by_global[o][:photos]}
    reach |= {j for o in [o for o in by_vote if record["lnbnn"][by_vote[o][0]] > 0][:lnbnn]
              for j in by_vote[o][:photos]}
    return sorted(reach)


def replay(records: list[dict], lightglue_top: tuple[int, ...] = (1, 2, 3)) -> dict[str, list[int]]:
    """Top-1 hit (0/1) per query of every strategy, from the recorded pair scores."""
    hits: dict[str, list[int]] = {}

    def hit(name: str, ranking: list[str], truth: str) -> None:
        hits.setdefault(name, []).append(int(bool(ranking) and ranking[0] == truth))

    for record in records:
        owners, truth = record["owners"], record["identity"]
        _, full = today_pairs(record)
        for score in ("inliers", "count"):
            values = {j: record[f"lightglue_{score}"][str(j)] for j in full}
            hit(f"lightglue (today), {score}", top_individuals(values, owners, 1), truth)
        reach = mnn_pairs(record)
        for ratio in RATIOS:
            for score in ("inliers", "count"):
                values = {j: record[f"mnn_{ratio:g}_{score}"][str(j)] for j in reach}
                ranking = top_individuals(values, owners, max(lightglue_top))
                hit(f"mnn r{ratio:g}, {score}", ranking, truth)
                if ratio != 0.9 or score != "inliers":
                    continue
                for model in ("homography", "affine"):
                    if f"mnn_0.9_{model}" in record:
                        strict = {j: record[f"mnn_0.9_{model}"][str(j)] for j in reach}
                        hit(f"mnn r0.9, {model} inliers", top_individuals(strict, owners, 1), truth)
                for individuals, lnbnn, photos in ((30, 6, 1), (30, 6, 2), (30, 12, 1), (15, 12, 2)):
                    subset = mnn_pairs(record, individuals, lnbnn, photos)
                    hit(f"mnn r{ratio:g}, inliers, global {individuals} x {photos} photos + LNBNN {lnbnn} x "
                        f"{photos}", top_individuals({j: values[j] for j in subset}, owners, 1), truth)
                for k in lightglue_top:
                    best_pair = {o: max((j for j in reach if owners[j] == o), key=lambda j: values[j])
                                 for o in ranking[:k]}
                    relooked = {j: record["lightglue_inliers"][str(j)] for j in best_pair.values()}
                    hit(f"mnn r{ratio:g}, inliers + lightglue top-{k}", top_individuals(relooked, owners, 1),
                        truth)
    return hits


def geometric_inliers(query: LocalFeatures, candidate: LocalFeatures, matches: PairMatches, model: str) -> float:
    """Correspondences consistent with one homography or one affine map (stricter than the fundamental matrix
    that `verified_inliers` fits: chance matches rarely agree on 4-6 degrees of freedom)."""
    if len(matches.query_idx) < 8:
        return 0.0
    points0 = query.keypoints[matches.query_idx].astype(np.float64)
    points1 = candidate.keypoints[matches.candidate_idx].astype(np.float64)
    scale = max(*query.image_size, *candidate.image_size) / 512.0
    try:
        if model == "homography":
            _, mask = cv2.findHomography(points0, points1, cv2.USAC_MAGSAC, 8.0 * scale, maxIters=2000,
                                         confidence=0.999)
        else:
            _, mask = cv2.estimateAffine2D(points0, points1, method=cv2.RANSAC, ransacReprojThreshold=8.0 * scale,
                                           maxIters=2000, confidence=0.999)
    except cv2.error:
        return 0.0
    return float(mask.sum()) if mask is not None else 0.0


def extend(path: Path, data: Path, name: str, n_queries: int) -> None:
    """Add stricter geometric checks of the descriptor matches (r0.9) to a recorded run's pairs."""
    records = json.loads(path.read_text())
    reference, queries, _, (ref_features, query_features), _ = describe_split(data, name, n_queries)
    for q, (record, query) in enumerate(zip(records, queries, strict=True)):
        same = [i for i, r in enumerate(reference)
                if r.species == query.species and (query.viewpoint is None or r.viewpoint == query.viewpoint)]
        features = [unpack(pack(ref_features[i])) for i in same]
        query_f = unpack(pack(query_features[q]))
        reach = mnn_pairs(record)
        found = mutual_nearest_matches(query_f, [features[j] for j in reach], ratio=0.9)
        for model in ("homography", "affine"):
            record[f"mnn_0.9_{model}"] = {str(j): geometric_inliers(query_f, features[j], m, model)
                                          for j, m in zip(reach, found, strict=True)}
        print(f"query {q + 1}/{len(records)}", file=sys.stderr, end="\r")
    path.write_text(json.dumps(records))


def record_queries(data: Path, name: str, n_queries: int) -> tuple[list[dict], dict[str, float]]:
    reference, queries, matcher, (ref_features, query_features), (ref_vectors, query_vectors) = describe_split(
        data, name, n_queries)
    ref_features = [unpack(pack(f)) for f in ref_features]  # what the registry's cache returns
    query_features = [unpack(pack(f)) for f in query_features]
    seconds: dict[str, float] = {}

    def timed(label: str, began: float, pairs: int = 1) -> None:
        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - began
        seconds[f"{label} pairs"] = seconds.get(f"{label} pairs", 0.0) + pairs

    records = []
    for q, query in enumerate(queries):
        same = [i for i, r in enumerate(reference)
                if r.species == query.species and (query.viewpoint is None or r.viewpoint == query.viewpoint)]
        owners = [reference[i].identity for i in same]
        features = [ref_features[i] for i in same]
        sims = ref_vectors[same] @ query_vectors[q]
        began = time.perf_counter()
        descriptors = np.concatenate([f.descriptors[:256] for f in features]).astype(np.float32)
        photo_of = np.concatenate([[j] * len(f.descriptors[:256]) for j, f in enumerate(features)])
        votes = lnbnn_votes(query_features[q].descriptors[:256].astype(np.float32), descriptors, photo_of)
        timed("lnbnn", began)
        record: dict = {"identity": query.identity, "owners": owners, "global": sims.tolist(),
                        "lnbnn": [votes.get(j, 0.0) for j in range(len(same))]}
        by_global = photos_by(record["global"], owners)
        first = [by_global[o][0] for o in list(by_global)[:30]]
        began = time.perf_counter()
        cheap_query = matcher.truncated(query_features[q], 256)
        cheap = matcher.scores(cheap_query, [matcher.truncated(features[j], 256) for j in first])
        timed("lightglue 256", began, len(first))
        record["lightglue_256"] = {str(j): s for j, s in zip(first, cheap, strict=True)}
        _, full = today_pairs(record)
        reach = mnn_pairs(record)
        for ratio in RATIOS:
            began = time.perf_counter()
            found = mutual_nearest_matches(query_features[q], [features[j] for j in reach], ratio=ratio)
            timed(f"mnn r{ratio:g}", began, len(reach))
            began = time.perf_counter()
            inliers = [verified_inliers(query_features[q], features[j], m, 0.0)
                       for j, m in zip(reach, found, strict=True)]
            timed(f"magsac after mnn r{ratio:g}", began, len(reach))
            record[f"mnn_{ratio:g}_count"] = {str(j): float(len(m.query_idx))
                                              for j, m in zip(reach, found, strict=True)}
            record[f"mnn_{ratio:g}_inliers"] = {str(j): v for j, v in zip(reach, inliers, strict=True)}
        # LightGlue where today's path or a hybrid reaches: today's full pass and the 3 best MNN individuals' best
        ranking = top_individuals(record["mnn_0.9_inliers"], owners, 3)
        hybrid = [max((j for j in reach if owners[j] == o), key=lambda j: record["mnn_0.9_inliers"][str(j)])
                  for o in ranking]
        looked = sorted(set(full) | set(hybrid))
        began = time.perf_counter()
        matches = matcher.match(query_features[q], [features[j] for j in looked])
        timed("lightglue 1024", began, len(looked))
        record["lightglue_count"] = {str(j): float(m.count(matcher.min_confidence))
                                     for j, m in zip(looked, matches, strict=True)}
        record["lightglue_inliers"] = {str(j): verified_inliers(query_features[q], features[j], m,
                                                                matcher.min_confidence)
                                       for j, m in zip(looked, matches, strict=True)}
        records.append(record)
        print(f"query {q + 1}/{len(queries)}", file=sys.stderr, end="\r")
    return records, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--set", default="nyala", choices=("nyala", "holstein"))
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--replay", type=Path, default=None, help="a saved run's pair scores: replay only")
    parser.add_argument("--extend", type=Path, default=None,
                        help="add homography and affine checks of the descriptor matches to a saved run, then replay")
    args = parser.parse_args()
    if args.extend:
        extend(args.extend, args.data, args.set, args.queries)
        args.replay = args.extend
    seconds: dict[str, float] = {}
    if args.replay:
        records = json.loads(args.replay.read_text())
    else:
        records, seconds = record_queries(args.data, args.set, args.queries)
        out = Path(tempfile.gettempdir()) / f"matching-engines-{args.set}.json"
        out.write_text(json.dumps(records))
        print(f"\npair scores: {out}", file=sys.stderr)
    print(f"{len(records)} known queries")
    print("| strategy | top-1 | 95 % interval |\n|---|---|---|")
    for name, hits in replay(records).items():
        low, high = interval(hits, [r["identity"] for r in records])
        print(f"| {name} | {np.mean(hits):.3f} | {low:.3f}–{high:.3f} |")
    if seconds:
        n = len(records)
        print("| step | s/query | ms/pair |\n|---|---|---|")
        for label, total in seconds.items():
            if not label.endswith(" pairs"):
                pairs = seconds.get(f"{label} pairs", n)
                print(f"| {label} | {total / n:.3f} | {1000 * total / max(pairs, 1):.2f} |")


if __name__ == "__main__":
    main()
