"""A registry made on qdrant-client's local mode moves into Qdrant Edge: refused until moved, resumable after a
`kill -9` mid-way, consistent afterwards, and identifying exactly as before."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import run_cli

from registry.ingest.doctor import check
from registry.ingest.ingestion import Ingestor
from registry.matching.pipeline import Pipeline
from registry.services.registry import Registry, RegistryNotInitialisedError
from registry.settings import Settings
from registry.store.vector_migration import MOVED_MARKER


def test_local_mode_registry_moves_into_edge(tmp_path: Path, population: Path, offline_pipeline: Pipeline) -> None:
    settings = Settings(data_dir=tmp_path / "reg", profile="offline", vector_engine="qdrant-local")
    Registry.init(settings)
    with open(population / "season2" / "manifest.csv") as f:
        query = population / "season2" / next(csv.DictReader(f))["image"]
    with Registry(settings, pipeline=offline_pipeline) as registry:
        assert registry.index.engine == "qdrant-local"
        assert Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference").added == 12
        before = registry.identify(query, "synleopard").outcome
    assert not (settings.vectors_path).exists()

    settings.vector_engine = "qdrant-edge"  # what a registry made before Qdrant Edge reads now
    settings.save()
    with pytest.raises(RegistryNotInitialisedError, match="registry init"):
        Registry(settings, pipeline=offline_pipeline)

    killed = run_cli(settings.data_dir, "vectors", "migrate", env={"REGISTRY_CRASH_AT": "migrate-batch"},
                     expect=None)
    assert killed.returncode == -9
    assert not (settings.qdrant_path / MOVED_MARKER).exists()
    with pytest.raises(RegistryNotInitialisedError):  # half moved is still not moved
        Registry(settings, pipeline=offline_pipeline)

    run_cli(settings.data_dir, "init")  # resumes the move
    assert (settings.qdrant_path / MOVED_MARKER).exists()
    stats = json.loads(run_cli(settings.data_dir, "stats", "--json").stdout)
    assert stats["vector_index"]["engine"] == "qdrant-edge"
    assert stats["vector_index"]["points"] == 12 * len(stats["vector_index"]["collections"])
    assert stats["vector_index"]["counted_from"] == "index"
    assert json.loads(run_cli(settings.data_dir, "vectors", "migrate", "--json").stdout)["moved"] is False

    with Registry(Settings.load(settings.data_dir), pipeline=offline_pipeline) as registry:
        assert registry.index.engine == "qdrant-edge"
        assert check(registry)["consistent"]
        after = registry.identify(query, "synleopard").outcome
    assert after.outcome == before.outcome
    assert [c.code for c in after.ranked[:5]] == [c.code for c in before.ranked[:5]]
    assert after.ranked[0].score == pytest.approx(before.ranked[0].score, abs=1e-4)


def test_edge_index_is_one_process_at_a_time(tmp_path: Path) -> None:
    """A second process opening the same shards gets a clear error, not a corrupted index."""
    import subprocess
    import sys

    from registry.store.vectors_edge import EdgeIndex

    with EdgeIndex(tmp_path / "vectors") as index:
        index.ensure_collection("c", 4)
        code = ("from registry.store.vectors_edge import EdgeIndex; import sys\n"
                "i = EdgeIndex(sys.argv[1])\ntry:\n    i.count('c')\nexcept RuntimeError as e:\n    print(e)")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "vectors")], capture_output=True,
                             text=True, timeout=60)
    assert "open in another process" in out.stdout, out.stderr
