"""End-to-end throughput of the registry on this machine: reference ingestion (images/s: decode, embeddings,
ALIKED, SQL, Qdrant) and identification (seconds per photo: retrieval, LightGlue rerank, decision, record) on a
synthetic population. One command, one run:

    .venv/bin/python benchmarks/pipeline_throughput.py --individuals 20                 # offline profile, CPU
    python benchmarks/pipeline_throughput.py --profile paper --random-paper-weights \\
        --individuals 150 --batch-size 64 --rerank 10                                   # paper profile, GPU

`--random-paper-weights` writes random-initialised MegaDescriptor-L-384 and EVA02-L-14-336 files into the
registry's weights folder and loads them through the real loaders: costs are real, identities are not.
`--weights-from DIR` copies weight files (e.g. the ALIKED ones) into that folder first.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from registry.evaluate import synth
from registry.ingest.ingestion import Ingestor
from registry.services.registry import Registry
from registry.settings import Settings


def write_random_paper_weights(weights_dir: Path) -> None:
    from registry.matching.embedders import build_eva02, build_megadescriptor

    warnings.warn("random-initialised paper weights: throughput only, identities are meaningless", stacklevel=2)
    folder = weights_dir / "megadescriptor-l-384"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(build_megadescriptor().state_dict(), folder / "pytorch_model.bin")
    clip, _, _ = build_eva02()
    folder = weights_dir / "eva02-l-14-336"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()},
               folder / "open_clip_pytorch_model.bin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--individuals", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", default="offline", choices=("offline", "paper"))
    parser.add_argument("--random-paper-weights", action="store_true")
    parser.add_argument("--weights-from", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rerank", type=int, default=None, help="candidate individuals reranked per query")
    parser.add_argument("--no-tta", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        synth.generate(root / "photos", individuals=args.individuals, seasons=2, seed=args.seed)
        print(f"synthesised in {time.perf_counter() - started:.0f} s", flush=True)
        settings = Settings.for_profile(args.profile, data_dir=root / "registry")
        if args.batch_size:
            settings.batch_size = args.batch_size
        if args.rerank:
            settings.rerank_individuals = args.rerank
        if args.no_tta:
            settings.test_time_augmentation = False
        if args.weights_from:
            settings.weights_dir.mkdir(parents=True, exist_ok=True)
            for file in args.weights_from.iterdir():
                shutil.copy(file, settings.weights_dir / file.name)
        if args.random_paper_weights:
            write_random_paper_weights(settings.weights_dir)
        Registry.init(settings)
        with Registry(Settings.load(settings.data_dir)) as registry:
            pipeline = registry.pipeline  # model loading is not part of the per-image cost
            _ = registry.collections
            start = time.perf_counter()
            reference = Ingestor(registry).ingest(root / "photos" / "season1" / "manifest.csv", "s1", "reference")
            ingest_s = time.perf_counter() - start
            start = time.perf_counter()
            identify = Ingestor(registry).ingest(root / "photos" / "season2" / "manifest.csv", "s2", "identify")
            identify_s = time.perf_counter() - start
    device = pipeline.device
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu, torch threads {torch.get_num_threads()}"
    print(f"device: {name}; profile {args.profile}; TTA {settings.test_time_augmentation}; batch size "
          f"{settings.batch_size}; rerank {settings.rerank_individuals} individuals")
    print(f"reference ingestion: {reference.added} photos in {ingest_s:.1f} s = {reference.added / ingest_s:.2f} img/s")
    print(f"identify + record:   {identify.added} photos in {identify_s:.1f} s = "
          f"{identify_s / identify.added:.3f} s/photo = {identify.added / identify_s:.2f} img/s")


if __name__ == "__main__":
    main()
