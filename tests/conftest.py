"""Shared fixtures: real SQLite and (when configured) PostgreSQL, real local Qdrant, real packaged weights."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from registry.evaluate import synth
from registry.matching.pipeline import Pipeline
from registry.settings import Settings

torch.set_num_threads(2)
# Code-path tests run the two-stage matcher at a quarter of the default keypoint budget (the full budget's
# accuracy is measured by benchmarks/accuracy_real.py and benchmarks/local_matching.py, not by unit tests).
# One photo per LNBNN individual keeps the full pass at ~10 pairs; two photos per individual are exercised where
# a test sets them (per-species overrides in test_calibration_and_fusion), and combine_photos keeps its default.
os.environ.setdefault("REGISTRY_LOCAL_MATCHER", '{"max_keypoints": 256, "first_pass_keypoints": 128, '
                      '"lnbnn_individuals": 6, "lnbnn_photos": 1}')

# ALIKED's backbone graphs (ONNX Runtime) are exported once per image size for the whole run, CLI processes
# included, and never into the home folder of whoever runs the tests.
os.environ.setdefault("REGISTRY_ONNX_CACHE", tempfile.mkdtemp(prefix="registry-onnx-"))

POSTGRES_URL = os.environ.get("REGISTRY_TEST_DATABASE_URL")
SHARED_DATA = Path(os.environ.get("REGISTRY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _fresh_postgres_database() -> Iterator[str]:
    """A throwaway database on the test server, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(POSTGRES_URL)
    name = f"registry_test_{uuid.uuid4().hex[:10]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each catalog/registry test runs on SQLite and on a real PostgreSQL server when one is configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL variant: set REGISTRY_TEST_DATABASE_URL (.ci/run starts a server and sets it)")
    yield from _fresh_postgres_database()


@pytest.fixture(scope="session")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic seasons: 6 individuals in season 1, returning animals plus 2 new ones in season 2."""
    root = tmp_path_factory.mktemp("population")
    synth.generate(root, individuals=6, seasons=2, seed=3, photos_per_sighting=(2, 2), return_rate=0.7,
                   new_per_season=0.34)
    return root


@pytest.fixture(scope="session")
def offline_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The offline profile with the packaged weights, loaded once for the whole session."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("pipeline"), profile="offline")
    return Pipeline(settings)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "nyala" / "metadata.csv").exists():
        pytest.skip(f"real photos not found at {SHARED_DATA} (set REGISTRY_SHARED_DATA to the shared data folder)")
    return SHARED_DATA
