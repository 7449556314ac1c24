"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import Catalog
from registry.store.vector_engines import open_vector_index

CLI = [sys.executable, "-m", "registry"]


def run_cli(data: Path, *args: str, env: dict[str, str] | None = None, expect: int | None = 0,
            real_process: bool = False) -> subprocess.CompletedProcess:
    """`registry --data-dir DATA ARGS...`; asserts its exit status unless `expect` is None.

    A real process where the test needs one (`real_process`, or a crash point in `env`: the kill must end a
    process that is not the test's), else the same command in this process (click's runner: the same entry point,
    exit status, stdout and stderr, an unhandled exception's traceback on stderr as Python would print it),
    which spares each call the seconds of importing PyTorch again."""
    command = ["--data-dir", str(data), *args]
    if real_process or any(key.startswith("REGISTRY_CRASH") for key in env or {}):
        result = subprocess.run([*CLI, *command], capture_output=True, text=True, timeout=600,
                                env={**os.environ, **(env or {})})
    else:
        result = in_process(command, env)
    if expect is not None:
        assert result.returncode == expect, result.stderr[-3000:]
    return result


def in_process(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI run by click's test runner, reported as a finished process."""
    import traceback

    from click.testing import CliRunner

    from registry.interfaces.cli.main import main

    outcome = CliRunner(env=env).invoke(main, command, prog_name="registry")
    stderr = outcome.stderr
    if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
        stderr += "".join(traceback.format_exception(outcome.exception))
    return subprocess.CompletedProcess([*CLI, *command], outcome.exit_code, outcome.stdout, stderr)


def rows_of(manifest: Path) -> list[dict[str, str]]:
    with open(manifest) as f:
        return list(csv.DictReader(f))


def season_copy(population: Path, season: int, out: Path, count: int | None = None) -> Path:
    """A copy of a synthetic season's first `count` photos with its manifest (tests may damage it)."""
    source = population / f"season{season}"
    rows = rows_of(source / "manifest.csv")[:count]
    (out / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        shutil.copy(source / row["image"], out / row["image"])
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out / "manifest.csv"


def init_registry(data: Path, profile: str = "offline", batch_size: int = 2) -> None:
    """`registry init --profile PROFILE`, with small batches so that even a small season has several."""
    Registry.init(Settings.for_profile(profile, data_dir=data, batch_size=batch_size))


def snapshot(data: Path) -> dict:
    """Everything a registry holds, keyed by content so that two registries can be compared."""
    settings = Settings.load(data)
    catalog = Catalog(settings.sqlalchemy_url)
    states = catalog.annotation_states()
    with catalog.transaction() as session:
        from sqlalchemy import select

        from registry.store.tables import Decision, Individual, Sighting

        codes = dict(session.execute(select(Individual.id, Individual.code)).all())
        individuals = sorted(session.execute(select(Individual.code, Individual.name, Individual.species)).all())
        sightings = sorted((states[s.annotation_id]["sha256"], codes[s.individual_id], s.method, s.status)
                           for s in session.scalars(select(Sighting)))
        decisions = sorted((states[d.annotation_id]["sha256"], d.outcome, codes.get(d.individual_id),
                            None if d.score is None else round(d.score, 4)) for d in session.scalars(select(Decision)))
    catalog.close()
    index = open_vector_index(settings)
    vectors = {}
    for collection in index.collections():
        vectors[collection] = sorted(
            (states[i]["sha256"], codes.get(p["individual_id"])) for i, p in index.payloads(collection))
    index.close()
    return {"individuals": individuals, "sightings": sightings, "decisions": decisions, "vectors": vectors,
            "statuses": sorted(s["status"] for s in states.values())}
