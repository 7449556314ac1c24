"""Local matching on real photos: how well each first pass shortlists, and what the full keypoint budget buys.

    .venv/bin/python benchmarks/local_matching.py [--data ../shared/data] [--set nyala] [--queries 40]

On the dev set's open-set split (benchmarks/accuracy_real.py's protocol, known queries only), every query is
compared with every reference photo of its species (and flank, where the species is flank-specific). Printed:
recall@K of the true individual for each first pass (global embedding; LNBNN over the reference descriptors at
the cheap and at the full budget; LightGlue at the cheap budget on the global shortlist), then top-1 after the
full-budget LightGlue rerank of each shortlist, counting confident correspondences or MAGSAC inliers, and the
seconds per query of each step, all measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from registry.evaluate import experiments
from registry.ingest.sources import read_manifest
from registry.matching.embedders import load_efficientnet_lite0
from registry.matching.imaging import load_image
from registry.matching.local_matcher import AlikedLightGlue, LocalFeatures, lnbnn_votes, verified_inliers


def recall_at(ranked: list[str], truth: str, ks: tuple[int, ...]) -> list[int]:
    return [int(truth in ranked[:k]) for k in ks]


def simulate_shortlists(results: list[dict]) -> dict[str, float]:
    """Top-1 of the registry's full-pass strategies replayed on every pair's full-budget scores: the cheap pass's
    4 individuals (their global-best photo, plus their best LNBNN-voted others up to `photos`) and LNBNN's best
    `individuals` others (their `photos` best-voted photos); an individual scores by its best photo or by the
    noisy-OR of its best `combine` photos, each photo's MAGSAC inliers or correspondences mapped to (0, 1) by
    n / (n + 20) (a stand-in for the registry's calibration, monotone like it)."""
    out: dict[str, float] = {}
    for lnbnn in ("cheap", "full"):
        for individuals, photos in ((12, 1), (12, 2), (6, 2), (4, 3)):
            for combine in (1, 2):
                for score in ("inliers", "count"):
                    hits, pairs = [], []
                    for r in results:
                        owners, votes, sims = r["owners"], r[f"lnbnn_{lnbnn}"], r["global"]
                        by_vote: dict[str, list[int]] = {}
                        for j in sorted(range(len(owners)), key=lambda j: -votes[j]):
                            by_vote.setdefault(owners[j], []).append(j)
                        by_global: dict[str, list[int]] = {}
                        for j in sorted(range(len(owners)), key=lambda j: -sims[j]):
                            by_global.setdefault(owners[j], []).append(j)
                        chosen, first = set(), set(r["cheap_on_global"][:4])
                        for owner in first:
                            best = by_global[owner][0]
                            chosen |= {best, *[j for j in by_vote.get(owner, []) if j != best][: photos - 1]}
                        for owner in [o for o in by_vote if o not in first][:individuals]:
                            chosen |= set(by_vote[owner][:photos])
                        chosen = {j for j in chosen if r[score][j] >= 0}
                        grouped: dict[str, list[float]] = {}
                        for j in chosen:
                            grouped.setdefault(owners[j], []).append(r[score][j] / (r[score][j] + 20.0))
                        combined = {o: 1 - float(np.prod([1 - v for v in sorted(vs, reverse=True)[:combine]]))
                                    for o, vs in grouped.items()}
                        hits.append(int(max(combined, key=lambda o: combined[o]) == r["identity"]))
                        pairs.append(len(chosen))
                    out[f"cheap top-4 + LNBNN-{lnbnn} top-{individuals}, {photos} photos each ({np.mean(pairs):.0f} "
                        f"pairs), {score}, combine {combine}"] = float(np.mean(hits))
    return out


def describe_split(data: Path, name: str, n_queries: int, budget: int = 1024, long_side: int = 512) -> tuple:
    """The dev set's split (benchmarks/accuracy_real.py's protocol), `n_queries` seeded known queries, every photo
    described at `budget` keypoints and embedded; cached in the temp folder so a rerun skips the description.
    -> (reference rows, query rows, matcher, (reference features, query features), (reference vectors, query's))"""
    manifest = data / name / "metadata.csv"
    if not manifest.exists():
        sys.exit(f"{manifest} not found: give --data or set REGISTRY_SHARED_DATA")
    with tempfile.TemporaryDirectory() as tmp:
        split = experiments.split_manifest(manifest, Path(tmp), max_identities=30 if name == "holstein" else None)
        reference = read_manifest(Path(split["reference"])).rows
        queries = read_manifest(Path(split["queries"])).rows
    known = {r.identity for r in reference}
    rng = np.random.default_rng(0)
    queries = [q for q in queries if q.identity in known]
    queries = [queries[i] for i in sorted(rng.permutation(len(queries))[:n_queries])]
    matcher = AlikedLightGlue(max_keypoints=budget, long_side=long_side, upscale=True)
    embedder = load_efficientnet_lite0(None)
    began = time.perf_counter()
    photos = reference + queries
    cache = Path(tempfile.gettempdir()) / f"local-matching-{name}-{matcher.extractor_version}.npz"
    features, vectors = [], []
    if cache.exists():  # the same photos described at the same settings: reruns skip the slow part
        with np.load(cache, allow_pickle=False) as stored:
            keys = [str(p.image) for p in photos]
            if list(stored["keys"]) == keys:
                vectors = stored["vectors"]
                features = [LocalFeatures(stored[f"k{i}"], stored[f"d{i}"], tuple(stored[f"s{i}"]))
                            for i in range(len(keys))]
    if not features:
        for start in range(0, len(photos), 8):
            images = [load_image(p.image, max_side=1024) for p in photos[start : start + 8]]
            features += matcher.extract(images)
            vectors.append(embedder.embed(images))
        vectors = np.concatenate(vectors)
        np.savez(cache, keys=np.asarray([str(p.image) for p in photos]), vectors=vectors,
                 **{f"k{i}": f.keypoints for i, f in enumerate(features)},
                 **{f"d{i}": f.descriptors for i, f in enumerate(features)},
                 **{f"s{i}": np.asarray(f.image_size) for i, f in enumerate(features)})
    print(f"described {len(photos)} photos in {time.perf_counter() - began:.0f} s "
          f"({np.mean([len(f) for f in features]):.0f} keypoints each)", file=sys.stderr)
    split_at = len(reference)
    return (reference, queries, matcher, (features[:split_at], features[split_at:]),
            (vectors[:split_at], vectors[split_at:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--set", default="nyala", choices=("nyala", "holstein"))
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--cheap", type=int, default=256)
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--shortlist", type=int, default=8, help="individuals reranked at the full budget")
    parser.add_argument("--photos", type=int, default=2, help="photos per individual reranked at the full budget")
    parser.add_argument("--replay", type=Path, default=None,
                        help="replay the strategies on a saved --exhaustive run's pair scores, nothing else")
    parser.add_argument("--exhaustive", action="store_true",
                        help="also replay shortlist strategies (LNBNN individuals x photos per individual) on the "
                             "full-budget scores of every pair they can reach")
    args = parser.parse_args()
    if args.replay:
        for name, value in simulate_shortlists(json.loads(args.replay.read_text())).items():
            print(f"| {name} | {value:.3f} |")
        return
    reference, queries, matcher, (ref_features, query_features), (ref_vectors, query_vectors) = describe_split(
        args.data, args.set, args.queries, args.budget, args.long_side)
    ks = (1, 5, 10, 20)
    recalls: dict[str, list[list[int]]] = {}
    top1: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, began: float) -> None:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - began

    exhaustive: list[dict] = []
    for q, query in enumerate(queries):
        same = [i for i, r in enumerate(reference)
                if r.species == query.species and (query.viewpoint is None or r.viewpoint == query.viewpoint)]
        owners = [reference[i].identity for i in same]
        rankings: dict[str, list[str]] = {}
        t = time.perf_counter()
        sims = ref_vectors[same] @ query_vectors[q]
        best: dict[str, float] = {}
        for owner, s in zip(owners, sims, strict=True):
            best[owner] = max(best.get(owner, -1.0), float(s))
        rankings["global"] = sorted(best, key=lambda o: -best[o])
        timed("global", t)
        for budget in (args.cheap, args.budget):
            t = time.perf_counter()
            desc = np.concatenate([ref_features[i].descriptors[:budget] for i in same]).astype(np.float32)
            owner_of = np.concatenate([[j] * len(ref_features[i].descriptors[:budget]) for j, i in enumerate(same)])
            votes = lnbnn_votes(query_features[q].descriptors[:budget].astype(np.float32), desc,
                                np.asarray([owners[j] for j in owner_of]))
            rankings[f"lnbnn-{budget}"] = sorted(votes, key=lambda o: -votes[o])
            timed(f"lnbnn-{budget}", t)
        t = time.perf_counter()
        shortlist = rankings["global"][:30]
        first_photo = {}
        for j, i in enumerate(same):
            if owners[j] in shortlist and (owners[j] not in first_photo
                                           or sims[j] > sims[same.index(first_photo[owners[j]])]):
                first_photo[owners[j]] = i
        cheap_query = matcher.truncated(query_features[q], args.cheap)
        cheap = matcher.scores(cheap_query, [matcher.truncated(ref_features[first_photo[o]], args.cheap)
                                             for o in shortlist])
        order = np.argsort(-np.asarray(cheap), kind="stable")
        rankings[f"lightglue-{args.cheap} on global top-30"] = [shortlist[i] for i in order]
        timed(f"lightglue-{args.cheap} on global top-30", t)
        for name, ranking in rankings.items():
            recalls.setdefault(name, []).append(recall_at(ranking, query.identity, ks))
        for name in (f"lnbnn-{args.budget}", f"lnbnn-{args.cheap}", f"lightglue-{args.cheap} on global top-30"):
            t = time.perf_counter()
            chosen = rankings[name][: args.shortlist]
            # each chosen individual's photos most similar by the global embedding, at most --photos of them
            by_owner: dict[str, list[tuple[float, int]]] = {}
            for j, i in enumerate(same):
                if owners[j] in chosen:
                    by_owner.setdefault(owners[j], []).append((-float(sims[j]), i))
            pairs = [(owner, i) for owner, found in by_owner.items() for _, i in sorted(found)[: args.photos]]
            matches = matcher.match(query_features[q], [ref_features[i] for _, i in pairs])
            count: dict[str, float] = {}
            inliers: dict[str, float] = {}
            for (owner, i), m in zip(pairs, matches, strict=True):
                count[owner] = max(count.get(owner, 0), m.count(matcher.min_confidence))
                inliers[owner] = max(inliers.get(owner, 0),
                                     verified_inliers(query_features[q], ref_features[i], m, matcher.min_confidence))
            for label, scores in (("count", count), ("inliers", inliers)):
                winner = max(scores, key=lambda o: scores[o]) if scores else None
                top1.setdefault(f"{name} -> lightglue-{args.budget} {label}", []).append(
                    int(winner == query.identity))
            timed(f"{name} -> rerank", t)
        if args.exhaustive:
            # every pair any replayed strategy can reach: LNBNN's 20 best individuals x their 3 best photos (both
            # budgets) and the cheap pass's 4; matching every same-flank photo would cost ~4 min per query here
            image_votes = {}
            for budget in (args.cheap, args.budget):
                desc = np.concatenate([ref_features[i].descriptors[:budget] for i in same]).astype(np.float32)
                photo_of = np.concatenate([[j] * len(ref_features[i].descriptors[:budget])
                                           for j, i in enumerate(same)])
                votes = lnbnn_votes(query_features[q].descriptors[:budget].astype(np.float32), desc, photo_of)
                image_votes[budget] = [votes.get(j, 0.0) for j in range(len(same))]
            reach = set()
            for values in image_votes.values():
                by_owner: dict[str, list[int]] = {}
                for j in sorted(range(len(same)), key=lambda j: -values[j]):
                    by_owner.setdefault(owners[j], []).append(j)
                for owner in list(by_owner)[:20]:
                    reach.update(by_owner[owner][:3])
            for owner in rankings[f"lightglue-{args.cheap} on global top-30"][:4]:
                reach.add(max((j for j in range(len(same)) if owners[j] == owner), key=lambda j: sims[j]))
            reach = sorted(reach)
            t = time.perf_counter()
            matches = matcher.match(query_features[q], [ref_features[same[j]] for j in reach])
            pair_count = [-1.0] * len(same)
            pair_inliers = [-1.0] * len(same)
            for j, m in zip(reach, matches, strict=True):
                pair_count[j] = m.count(matcher.min_confidence)
                pair_inliers[j] = verified_inliers(query_features[q], ref_features[same[j]], m, matcher.min_confidence)
            timed(f"union lightglue-{args.budget}", t)
            exhaustive.append({"identity": query.identity, "owners": owners, "global": sims.tolist(),
                               "count": pair_count, "inliers": pair_inliers,
                               "lnbnn_cheap": image_votes[args.cheap], "lnbnn_full": image_votes[args.budget],
                               "cheap_on_global": rankings[f"lightglue-{args.cheap} on global top-30"]})
        print(f"query {q + 1}/{len(queries)}", file=sys.stderr, end="\r")
    n = len(queries)
    if exhaustive:
        out = Path(tempfile.gettempdir()) / f"local-matching-{args.set}-exhaustive.json"
        out.write_text(json.dumps(exhaustive))
        print(f"every pair's scores: {out}", file=sys.stderr)
        for name, value in simulate_shortlists(exhaustive).items():
            top1.setdefault(f"replayed: {name}", []).append(value)
    print(f"\n{args.set}: {n} known queries, {len(reference)} reference photos, budget {args.budget} "
          f"(cheap {args.cheap}), long side {args.long_side}, shortlist {args.shortlist} individuals x "
          f"{args.photos} photos")
    print("| first pass | " + " | ".join(f"recall@{k}" for k in ks) + " | s/query |")
    print("|---|" + "---|" * (len(ks) + 1))
    for name, rows in recalls.items():
        means = np.mean(rows, axis=0)
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {seconds.get(name, 0) / n:.2f} |")
    print("| two-stage | top-1 |\n|---|---|")
    for name, hits in top1.items():
        print(f"| {name} | {np.mean(hits):.3f} |")
    for name, total in seconds.items():
        if name.endswith("rerank"):
            print(f"{name}: {total / n:.2f} s/query")


if __name__ == "__main__":
    main()
