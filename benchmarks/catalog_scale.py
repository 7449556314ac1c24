"""The catalog at a national catalogue's size on PostgreSQL: 1 000 000 sightings of 200 000 individuals. One
command, one run (needs a PostgreSQL server; a throwaway database is made on it and dropped afterwards):

    REGISTRY_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:55433/postgres \\
        .venv/bin/python benchmarks/catalog_scale.py [--sightings 1000000] [--individuals 200000]

The schema is the registry's (its migrations); rows are written with COPY, shaped as ingestion writes them: two
species, 20 surveys, 50 locations, a photo and a whole-image annotation per sighting, 30 % of the sightings
automatic decisions with 10 ranked candidates each (a tenth of those uncertain, waiting in the review queue), the
rest reference labels. Then, through the registry's own code: an individual's history (200 random individuals),
the review queue's first page (all species, and one species) and its count, `stats`, the individuals listing of
one species, and the capture-history export of one species (every survey an occasion). Prints p50/p95 and the
ratio to the goal (history and queue p95 < 50 ms), and the PostgreSQL plans of the history and queue queries.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta

import numpy as np
import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from registry.curation import exports, review
from registry.store import migrate
from registry.store.catalog import Catalog

SPECIES = ("nyala", "holstein")
SURVEYS = 20
LOCATIONS = 50


def build(conninfo: str, sightings: int, individuals: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    now = datetime(2026, 1, 1)
    timings = {}
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        began = time.perf_counter()
        for name in SPECIES:
            cur.execute("INSERT INTO species (name, code_prefix, next_seq, created_at) VALUES (%s, %s, %s, %s)",
                        (name, name[:3].upper(), individuals // 2 + 1, now))
        with cur.copy("COPY surveys (id, name, year, created_at) FROM STDIN") as copy:
            for s in range(1, SURVEYS + 1):
                copy.write_row((s, f"season-{2006 + s}", 2006 + s, now))
        with cur.copy("COPY locations (id, name, latitude, longitude, created_at) FROM STDIN") as copy:
            for loc in range(1, LOCATIONS + 1):
                copy.write_row((loc, f"station-{loc:03d}", -24.0 + loc * 0.01, 31.5 + loc * 0.01, now))
        with cur.copy("COPY individuals (id, code, species, species_seq, created_at, sex, life_stage) "
                      "FROM STDIN") as copy:
            for i in range(1, individuals + 1):
                species = SPECIES[i % 2]
                seq = (i + 1) // 2
                copy.write_row((i, f"{species[:3].upper()}-{seq:06d}", species, seq, now, "unknown", "unknown"))
        owners = rng.integers(1, individuals + 1, size=sightings)
        owners[:individuals] = np.arange(1, individuals + 1)  # everybody seen at least once
        rng.shuffle(owners)
        surveys = rng.integers(1, SURVEYS + 1, size=sightings)
        locations = rng.integers(1, LOCATIONS + 1, size=sightings)
        automatic = rng.random(sightings) < 0.3
        uncertain = rng.random(sightings) < 0.1
        with cur.copy("COPY images (id, sha256, path, captured_at, survey_id, location_id, width, height, "
                      "ingested_at) FROM STDIN") as copy:
            for k in range(sightings):
                when = datetime(2006 + int(surveys[k]), 6, 1) + timedelta(minutes=int(rng.integers(0, 60 * 24 * 60)))
                copy.write_row((k + 1, f"{k + 1:064x}", f"season-{surveys[k]}/IMG_{k + 1:07d}.jpg", when,
                                int(surveys[k]), int(locations[k]), 4000, 3000, now))
        with cur.copy("COPY annotations (id, image_id, species, viewpoint, region, source, status, created_at) "
                      "FROM STDIN") as copy:
            for k in range(sightings):
                copy.write_row((k + 1, k + 1, SPECIES[int(owners[k]) % 2], ("left", "right")[k % 2], "whole",
                                "whole-image", "indexed", now))
        decision_of = {}
        with cur.copy("COPY decisions (id, annotation_id, outcome, individual_id, score, margin, margin_reason, "
                      "threshold, candidates, profile, model_versions, created_at) FROM STDIN") as copy:
            for d, k in enumerate(np.flatnonzero(automatic), start=1):
                owner = int(owners[k])
                same = [j for j in rng.integers(1, individuals + 1, size=9) if j % 2 == owner % 2]
                scores = sorted(rng.uniform(0.1, 0.9, size=len(same) + 1), reverse=True)
                margin = float(rng.uniform(0.0, 0.15) if uncertain[k] else rng.uniform(0.2, 0.8))
                candidates = [{"individual_id": int(i), "code": f"X-{int(i)}", "score": float(s),
                               "best_annotation_id": int(k + 1), "images": []}
                              for i, s in zip([owner, *same], scores, strict=False)]
                copy.write_row((d, int(k + 1), "match", owner, float(scores[0]), margin, "margin to the next",
                                0.5, json.dumps(candidates), "offline",
                                json.dumps({"scorer": "calibrated-wildfusion", "annotations": [int(k + 1)]}), now))
                decision_of[int(k)] = d
        with cur.copy("COPY sightings (id, annotation_id, individual_id, method, decision_id, status, created_at) "
                      "FROM STDIN") as copy:
            for k in range(sightings):
                d = decision_of.get(k)
                copy.write_row((k + 1, k + 1, int(owners[k]), "automatic" if d else "reference", d, "active", now))
        for table in ("surveys", "locations", "individuals", "images", "annotations", "decisions", "sightings"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.commit()
        timings["copy_s"] = time.perf_counter() - began
        began = time.perf_counter()
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE")
        timings["analyze_s"] = time.perf_counter() - began
    return timings


def timed(function, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        function()
        out.append((time.perf_counter() - began) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sightings", type=int, default=1_000_000)
    parser.add_argument("--individuals", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = parser.parse_args()
    url = os.environ.get("REGISTRY_BENCH_DATABASE_URL") or os.environ.get("REGISTRY_TEST_DATABASE_URL")
    if not url:
        sys.exit("set REGISTRY_BENCH_DATABASE_URL to a PostgreSQL server (a database is made on it and dropped)")
    admin = make_url(url)
    name = f"registry_bench_{uuid.uuid4().hex[:8]}"
    admin_info = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_info, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        server = conn.execute("SHOW server_version").fetchone()[0]
    bench_url = admin.set(drivername="postgresql+psycopg", database=name)
    try:
        engine = create_engine(bench_url)
        migrate.upgrade(engine)
        engine.dispose()
        print(f"machine: {os.cpu_count()} cores, "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM; PostgreSQL {server}")
        timings = build(bench_url.set(drivername="postgresql").render_as_string(hide_password=False),
                        args.sightings, args.individuals)
        print(f"built {args.sightings:,} sightings of {args.individuals:,} individuals: "
              f"COPY {timings['copy_s']:.0f} s, VACUUM ANALYZE {timings['analyze_s']:.0f} s")
        catalog = Catalog(bench_url.render_as_string(hide_password=False))
        rng = random.Random(0)
        codes = [f"{SPECIES[i % 2][:3].upper()}-{(i + 1) // 2:06d}"
                 for i in (rng.randint(1, args.individuals) for _ in range(args.repeat))]
        history_ms = []
        for code in codes:
            began = time.perf_counter()
            catalog.history(code)
            history_ms.append((time.perf_counter() - began) * 1000)
        rows = [("history of one individual", history_ms, 50.0),
                ("review queue, first 50", timed(lambda: review.queue(catalog, limit=50), args.repeat // 4), 50.0),
                ("review queue, one species", timed(lambda: review.queue(catalog, species="nyala", limit=50),
                                                     args.repeat // 4), 50.0),
                ("review queue count", timed(lambda: review.count(catalog, margin=0.15), 10), None),
                ("stats", timed(catalog.stats, 5), None),
                ("individuals of one species", timed(lambda: catalog.individuals("nyala"), 3), None)]
        began = time.perf_counter()
        occasions, matrix, _ = exports.capture_history(catalog, "survey", "nyala")
        export_s = time.perf_counter() - began
        print("\n| query | median ms | p95 ms | goal ms | p95 / goal |\n|---|---|---|---|---|")
        for label, values, goal in rows:
            p95 = float(np.percentile(values, 95))
            ratio = f"{p95 / goal:.2f}" if goal else "—"
            print(f"| {label} | {statistics.median(values):.1f} | {p95:.1f} | {goal or '—'} | {ratio} |")
        print(f"| capture history export, one species ({len(matrix):,} individuals x {len(occasions)} surveys) | "
              f"{export_s * 1000:.0f} | — | — | — |")
        with psycopg.connect(bench_url.set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
            for label, sql in (
                ("history", "EXPLAIN SELECT * FROM sightings s JOIN annotations a ON a.id = s.annotation_id "
                            "JOIN images i ON i.id = a.image_id WHERE s.individual_id IN (4242) AND "
                            "s.status = 'active' ORDER BY i.captured_at"),
                ("queue", "EXPLAIN SELECT d.id FROM decisions d JOIN annotations a ON a.id = d.annotation_id "
                          "WHERE d.margin <= 0.15 AND EXISTS (SELECT 1 FROM sightings s WHERE s.decision_id = d.id "
                          "AND s.method = 'automatic' AND s.status = 'active') ORDER BY d.margin, d.id LIMIT 50")):
                plan = [r[0] for r in conn.execute(sql).fetchall()]
                print(f"\nplan ({label}):\n  " + "\n  ".join(plan))
        catalog.close()
    finally:
        if not args.keep:
            with psycopg.connect(admin_info, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}")


if __name__ == "__main__":
    main()
