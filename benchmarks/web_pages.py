"""Server time of the workspace's pages on a registry of `--photos` photos (issue 14's goal: a match page in
< 300 ms on 10 000 photos). One command, one run:

    .venv/bin/python benchmarks/web_pages.py [--photos 10000] [--decisions 2000] [--repeat 20]

Builds the catalog directly in SQL (no models: page rendering reads SQL only; thumbnails are separate
requests and not counted): `--photos` annotated photos of individuals of one species, a fifth of them
sightings decided automatically with 20 ranked candidates each (the shape `identify` records). Then signs in
through the real app (FastAPI's TestClient) and times each page `--repeat` times, printing the median and p95
server time and their ratio to the 300 ms goal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from registry.curation import review
from registry.decide.scoring import decision_margin
from registry.interfaces import tokens
from registry.interfaces.api import create_app
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import Catalog
from registry.store.tables import Annotation, Decision, Image, Individual, Sighting


def build(settings: Settings, photos: int, decisions: int, seed: int = 0) -> list[int]:
    """Individuals with ~10 photos each; the first `decisions` photos' sightings are automatic decisions."""
    rng = np.random.default_rng(seed)
    catalog = Catalog(settings.sqlalchemy_url)
    start = datetime(2020, 1, 1)
    individuals = max(1, photos // 10)
    with catalog.transaction() as session:
        people = [catalog.new_individual(session, "synleopard") for _ in range(individuals)]
        ids = [p.id for p in people]
    decision_ids = []
    batch = 2000
    for offset in range(0, photos, batch):
        with catalog.transaction() as session:
            for k in range(offset, min(photos, offset + batch)):
                image = Image(sha256=f"{k:064x}", path=f"/photos/{k}.jpg", width=512, height=384,
                              captured_at=start + timedelta(hours=int(k)))
                session.add(image)
                session.flush()
                annotation = Annotation(image_id=image.id, species="synleopard", region="whole",
                                        source="whole-image", status="indexed")
                session.add(annotation)
                session.flush()
                owner = ids[k % individuals]
                decision = None
                if k < decisions:
                    ranked = rng.choice(ids, size=min(20, individuals), replace=False)
                    scores = np.sort(rng.uniform(0, 1, size=len(ranked)))[::-1]
                    candidates = [{"individual_id": int(i), "code": f"SYN-{int(i):04d}", "score": float(s),
                                   "best_annotation_id": annotation.id,
                                   "images": [{"annotation_id": annotation.id, "individual_id": int(i),
                                               "raw": {"efficientnet-lite0": float(s), "aliked": 40.0 * s},
                                               "calibrated": {"efficientnet-lite0": float(s), "aliked": float(s)},
                                               "score": float(s)}]}
                                  for i, s in zip(ranked, scores, strict=True)]
                    margin, reason = decision_margin("match", [c["score"] for c in candidates],
                                                     [c["code"] for c in candidates], 0.5)
                    decision = Decision(annotation_id=annotation.id, outcome="match", individual_id=owner,
                                        margin=margin, margin_reason=reason,
                                        score=float(scores[0]), threshold=0.5, candidates=candidates,
                                        profile="offline", model_versions={"scorer": "calibrated-wildfusion",
                                                                           "annotations": [annotation.id]})
                    session.add(decision)
                    session.flush()
                    decision_ids.append(decision.id)
                session.add(Sighting(annotation_id=annotation.id, individual_id=owner,
                                     method="automatic" if decision else "reference",
                                     decision_id=decision.id if decision else None, status="active"))
    catalog.close()
    return decision_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "reg", profile="offline")
        Registry.init(settings)
        began = time.perf_counter()
        decision_ids = build(Settings.load(settings.data_dir), args.photos, args.decisions)
        print(f"built {args.photos} photos, {len(decision_ids)} decisions in {time.perf_counter() - began:.1f} s "
              f"({os.cpu_count()} cores)")
        settings = Settings.load(settings.data_dir)
        token = tokens.create(Catalog(settings.sqlalchemy_url), "bench", "admin")
        with TestClient(create_app(settings)) as client:
            client.post("/ui/login", data={"token": token}, follow_redirects=False)
            with Catalog(settings.sqlalchemy_url).transaction() as session:
                code = session.get(Individual, 1).code  # type: ignore[union-attr]
            pages = {"match page": f"/ui/decisions/{decision_ids[len(decision_ids) // 2]}?margin=10",
                     "review queue": "/ui/queue?margin=10", "individual page": f"/ui/individuals/{code}",
                     "activity": "/ui/activity"}
            left = review.count(Catalog(settings.sqlalchemy_url), margin=10.0)
            assert left == len(decision_ids), (left, len(decision_ids))  # every decision waits in the queue
            print(f"{left} decisions in the review queue")
            print(f"{'page':<16} {'median ms':>10} {'p95 ms':>8} {'goal ms':>8} {'p95/goal':>9}")
            for name, url in pages.items():
                times = []
                for _ in range(args.repeat):
                    began = time.perf_counter()
                    response = client.get(url)
                    times.append((time.perf_counter() - began) * 1000)
                    assert response.status_code == 200, (url, response.status_code)
                p95 = float(np.percentile(times, 95))
                print(f"{name:<16} {statistics.median(times):>10.1f} {p95:>8.1f} {300:>8} {p95 / 300:>9.2f}")


if __name__ == "__main__":
    main()
