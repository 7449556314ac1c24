"""Does a query cost the same on a registry of 100 000 annotations as on one of 1 000? (Issue 15's goal: the
ratio of seconds per query <= 1.3.) One command, one run, offline profile on the CPU:

    .venv/bin/python benchmarks/identify_scale.py [--data ../shared/data] [--sizes 1000 100000] [--queries 20]

A base registry holds `--real` labelled Holstein photos, ingested through the real pipeline (embeddings, ALIKED
features, SQL, Qdrant Edge). Each size's registry is a copy of it filled up to `--sizes` annotations with
synthesised ones, as ingestion would have written them: individuals of the same species with 10 photos each, SQL
rows (photo, annotation, reference sighting), vectors near those of real photos of cows *outside* the registry
(`--distractors`; so they compete in retrieval without being clones of the true cow) and those photos' cached
features (so reranking them costs what a real photo costs). Then the same
`--queries` real photos of the base registry's cows are identified (not recorded) on each; printed: seconds per
query (mean, median, p95) per size, and the ratio largest / smallest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from identify_speed import holstein_split, write_manifest
from sqlalchemy import func, insert, select

from registry.ingest.ingestion import Ingestor
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.tables import Annotation, Image, Individual, Sighting, Species
from registry.store.vector_index import VectorPoint


def fill(settings: Settings, target: int, sources: list[tuple[np.ndarray, object]], seed: int = 0,
         ) -> dict[str, float]:
    """Add synthesised annotations until the registry holds `target`: individuals built from `sources` (vector,
    features) of photos of *other* animals, so they compete with the true one without being its clones."""
    rng = np.random.default_rng(seed)
    began = time.perf_counter()
    with Registry(settings) as registry:
        catalog = registry.catalog
        (collection,) = registry.collections.values()  # the offline profile: one embedder
        with catalog.transaction() as session:
            real = list(session.execute(select(Annotation.id, Annotation.species, Image.sha256)
                                        .join(Image, Image.id == Annotation.image_id)))
            next_image = int(session.scalar(select(func.max(Image.id)))) + 1
            next_annotation = int(session.scalar(select(func.max(Annotation.id)))) + 1
            next_individual = int(session.scalar(select(func.max(Individual.id)))) + 1
        species = real[0][1]
        extra = target - len(real)
        individuals = max(1, extra // 10)
        with catalog.transaction() as session:
            row = session.get(Species, species)
            first_seq = row.next_seq
            row.next_seq += individuals
            prefix = row.code_prefix
            session.execute(insert(Individual), [
                {"id": next_individual + k, "code": f"{prefix}-B{first_seq + k:07d}", "species": species,
                 "species_seq": first_seq + k, "name": f"bulk-{k}"} for k in range(individuals)])
        centres = [sources[int(rng.integers(0, len(sources)))][0] for _ in range(individuals)]
        step = 5000
        for start in range(0, extra, step):
            stop = min(extra, start + step)
            owners = [k % individuals for k in range(start, stop)]
            with catalog.transaction() as session:
                session.execute(insert(Image), [
                    {"id": next_image + k, "sha256": f"{next_image + k:064x}", "path": f"/bulk/{k}.jpg",
                     "width": 512, "height": 384} for k in range(start, stop)])
                session.execute(insert(Annotation), [
                    {"id": next_annotation + k, "image_id": next_image + k, "species": species, "region": "whole",
                     "source": "whole-image", "status": "indexed"} for k in range(start, stop)])
                session.execute(insert(Sighting), [
                    {"annotation_id": next_annotation + k, "individual_id": next_individual + o,
                     "method": "reference", "status": "active"} for k, o in zip(range(start, stop), owners,
                                                                                strict=True)])
            points = []
            for k, o in zip(range(start, stop), owners, strict=True):
                noise = rng.normal(scale=0.5 / np.sqrt(len(centres[o])), size=len(centres[o]))
                points.append(VectorPoint(next_annotation + k, centres[o] + noise, next_individual + o, species,
                                          None, None, next_image + k))
                features = sources[int(rng.integers(0, len(sources)))][1]
                registry.features.put(f"{next_image + k:064x}", features)
            registry.index.upsert(collection, points, batch_size=1000)
            print(f"  filled {stop:,} / {extra:,}", file=sys.stderr, end="\r")
        registry.index.optimize()
    return {"fill_s": time.perf_counter() - began, "individuals_added": individuals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("REGISTRY_SHARED_DATA", "../shared/data")))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--real", type=int, default=200, help="real Holstein photos in the base registry")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--distractors", type=int, default=100, help="photos of cows outside the registry")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    metadata, reference, queries, strangers = holstein_split(args.data, args.real, args.queries)
    print(f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM")
    distractors = strangers[: args.distractors]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        write_manifest(root / "reference.csv", reference, metadata.parent)
        base = Settings.for_profile("offline", data_dir=root / "base")
        Registry.init(base)
        began = time.perf_counter()
        with Registry(Settings.load(base.data_dir)) as registry:
            Ingestor(registry).ingest(root / "reference.csv", "s1", "reference")
        print(f"base registry: {args.real} real photos in {time.perf_counter() - began:.0f} s")
        with Registry(Settings.load(base.data_dir)) as registry:
            described = registry.identification.describe([metadata.parent / r["image"] for r in distractors],
                                                         [r["species"] for r in distractors], [None] * len(distractors))
            primary = registry.pipeline.primary.name
            sources = [(d.vectors[primary], d.local) for d in described if not isinstance(d, Exception)]
        print(f"{len(sources)} photos of {len({r['identity'] for r in distractors})} cows outside the registry "
              "described for the synthesised individuals")
        results = {}
        for size in args.sizes:
            target = root / f"size-{size}"
            shutil.copytree(base.data_dir, target)
            settings = Settings.load(target)
            filled = fill(settings, size, sources)
            times, top1 = [], 0
            with Registry(settings) as registry:
                registry.identify(metadata.parent / queries[0]["image"], queries[0]["species"])  # models loaded
                for query in queries:
                    started = time.perf_counter()
                    answer = registry.identify(metadata.parent / query["image"], query["species"])
                    times.append(time.perf_counter() - started)
                    best = answer.outcome.ranked[0].code if answer.outcome.ranked else None
                    top1 += int(best is not None and registry.catalog.history(best)["name"] == query["identity"])
                annotations = registry.catalog.stats()["annotations"]
            results[size] = times
            print(f"{annotations:>8,} annotations (filled in {filled['fill_s']:.0f} s): "
                  f"{statistics.mean(times):.2f} s per query (median {statistics.median(times):.2f}, "
                  f"p95 {np.percentile(times, 95):.2f}); top-1 {top1 / len(queries):.2f}", flush=True)
            shutil.rmtree(target)
        small, large = min(results), max(results)
        ratio = statistics.mean(results[large]) / statistics.mean(results[small])
        print(f"ratio {large:,} / {small:,} annotations: {ratio:.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
