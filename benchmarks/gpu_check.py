"""GPU throughput of the paper profile's models, with random-initialised weights of the real architectures
(weights do not change the cost). Installs nothing, downloads nothing; under 5 minutes on one H100.

    python benchmarks/gpu_check.py            # on the lent GPU machine, after `pip install -e .[offline]`
    python benchmarks/gpu_check.py --quick    # a CPU smoke run of the same code paths

Prints images/s per global model (plain and 5-crop TTA) at several batch sizes under autocast, ALIKED
extraction images/s, LightGlue pairs/s at several pair batch sizes, and the implied end-to-end rates.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from PIL import Image

from registry.matching.embedders import random_embedder
from registry.matching.local_matcher import AlikedLightGlue

warnings.simplefilter("ignore")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _photos(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


def _rate(work, count: int, device: torch.device, repeats: int) -> float:
    work()  # warm-up (cuDNN autotuning, lazy init)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    _sync(device)
    return count * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; cpu threads {torch.get_num_threads()}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batches = (1, 8) if args.quick else (1, 16, 64)
    repeats = 1 if args.quick else 3
    rates: dict[str, float] = {}
    for architecture in ("megadescriptor-l-384", "eva02-l-14-336"):
        embedder = random_embedder(architecture, device=str(device))  # built once, reused for every setting
        for tta in (False, True):
            embedder.tta = tta
            for batch in batches:
                embedder.batch_size = batch
                photos = _photos(batch)
                rate = _rate(lambda e=embedder, p=photos: e.embed(p), batch, device, repeats)
                key = f"{architecture}{' tta5' if tta else ''}"
                rates[key] = max(rates.get(key, 0.0), rate)
                views = batch * (5 if tta else 1)
                width, height = embedder.input_size
                tensor = torch.randn(views, 3, height, width, device=device)

                def model_only(e=embedder, t=tensor) -> None:
                    with torch.inference_mode(), torch.autocast(device.type, dtype=e.autocast or torch.float32,
                                                                enabled=e.autocast is not None):
                        e.model(t)

                model_rate = _rate(model_only, batch, device, repeats)
                print(f"{key:<28} batch {batch:>3}: {rate:8.1f} images/s end to end "
                      f"({model_rate:8.1f} model only; autocast {embedder.autocast})", flush=True)
        del embedder
        if device.type == "cuda":
            torch.cuda.empty_cache()

    matcher = AlikedLightGlue(device=str(device), random_init_for_tests=True)
    photos = _photos(4 if args.quick else 64)
    for extract_batch in (1, 32):
        for autocast in (False, True) if device.type == "cuda" else (False,):
            matcher.extract_batch, matcher.autocast = extract_batch, autocast
            try:
                rate = _rate(lambda: matcher.extract(photos), len(photos), device, repeats)
            except RuntimeError as exc:  # report and go on: the other settings still say something
                print(f"aliked extract batch {extract_batch} autocast {autocast}: failed: {exc}")
                continue
            rates["aliked"] = max(rates.get("aliked", 0.0), rate)
            print(f"{'aliked-n16 extract (512 px)':<28} batch {extract_batch:>3}: {rate:8.1f} images/s "
                  f"(bf16 autocast {autocast})", flush=True)
    matcher.extract_batch, matcher.autocast = 32 if device.type == "cuda" else 1, device.type == "cuda"
    features = matcher.extract(_photos(9 if args.quick else 65, seed=1))
    query, candidates = features[0], features[1:]
    for pair_batch in (1, 8) if args.quick else (1, 8, 32, 64):
        matcher.pair_batch = pair_batch
        rate = _rate(lambda: matcher.match(query, candidates), len(candidates), device, repeats)
        rates["lightglue"] = max(rates.get("lightglue", 0.0), rate)
        print(f"{'lightglue pairs':<28} batch {pair_batch:>3}: {rate:8.1f} pairs/s")

    ingest = 1.0 / (1 / rates["megadescriptor-l-384 tta5"] + 1 / rates["eva02-l-14-336 tta5"] + 1 / rates["aliked"])
    identify = 1.0 / (1 / ingest + 10 / rates["lightglue"])
    print(f"implied ingestion (paper profile, TTA, models only): {ingest:.1f} images/s (target >= 100 on an H100)")
    print(f"implied identification with top-10 rerank: {identify:.1f} images/s (target >= 50 on an H100)")


if __name__ == "__main__":
    main()
