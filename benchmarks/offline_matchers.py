"""What each offline matcher contributes, on a synthetic population (season-2 photos of returning animals
queried against season 1): the global embedding's retrieval rank of the true individual, the separation of
LightGlue match counts, and the per-image / per-pair cost on this machine. One command, one run:

    .venv/bin/python benchmarks/offline_matchers.py --individuals 20 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from registry.evaluate import synth
from registry.matching.embedders import load_efficientnet_lite0
from registry.matching.imaging import load_image
from registry.matching.local_matcher import AlikedLightGlue


def _season(root: Path, season: int) -> tuple[list, list[str]]:
    with open(root / f"season{season}" / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    return [load_image(root / f"season{season}" / r["image"], 512) for r in rows], [r["identity"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--individuals", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.generate(root, individuals=args.individuals, seasons=2, seed=args.seed)
        reference, reference_ids = _season(root, 1)
        queries, query_ids = _season(root, 2)
        for tta in (False, True):
            embedder = load_efficientnet_lite0(root / "weights", test_time_augmentation=tta)
            ref_vectors, query_vectors = embedder.embed(reference), embedder.embed(queries)
            ranks = []
            for vector, identity in zip(query_vectors, query_ids, strict=True):
                if identity not in reference_ids:
                    continue
                best: dict[str, float] = {}
                for similarity, ref_id in zip(ref_vectors @ vector, reference_ids, strict=True):
                    best[ref_id] = max(best.get(ref_id, -1.0), float(similarity))
                ranks.append(sorted(best, key=lambda k: -best[k]).index(identity) + 1)
            r = np.array(ranks)
            recalls = " / ".join(f"{(r <= k).mean():.2f}" for k in (5, 10, 15, 20))
            print(f"global embedding (tta={tta}): {len(r)} known queries, median rank of the true individual "
                  f"{np.median(r):.1f} of {len(set(reference_ids))}; recall@5/10/15/20 = {recalls}")

        matcher = AlikedLightGlue()
        start = time.perf_counter()
        features = matcher.extract(reference[:24])
        extract_s = (time.perf_counter() - start) / len(features)
        same, other, pairs = [], [], 0
        start = time.perf_counter()
        for i in range(len(features)):
            scores = matcher.scores(features[i], features[i + 1 :])
            pairs += len(scores)
            for j, score in zip(range(i + 1, len(features)), scores, strict=True):
                (same if reference_ids[i] == reference_ids[j] else other).append(score)
        pair_s = (time.perf_counter() - start) / pairs
        print(f"LightGlue confident matches: same individual {min(same):.0f}..{max(same):.0f} "
              f"({len(same)} pairs), different individuals {min(other):.0f}..{max(other):.0f} ({len(other)} pairs)")
        print(f"cost: ALIKED {extract_s:.2f} s per 512-px image, LightGlue {pair_s:.3f} s per pair (CPU)")


if __name__ == "__main__":
    main()
