"""The vector index on real embedded Qdrant: round trip, filters, payload updates, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from registry.store.vector_index import VectorIndex, VectorPoint, collection_name


def _points(rng: np.random.Generator) -> list[VectorPoint]:
    return [
        VectorPoint(1, rng.normal(size=8), 10, "nyala", "left", 1),
        VectorPoint(2, rng.normal(size=8), 11, "nyala", "right", 1),
        VectorPoint(3, rng.normal(size=8), 12, "cow", None, 2),
    ]


def test_round_trip_filters_payload_update_delete_and_reopen(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    points = _points(rng)
    with VectorIndex(path=tmp_path / "qdrant") as index:
        index.ensure_collection("emb_test", 8)
        index.upsert("emb_test", points)
        hits = index.search("emb_test", points[0].vector * 3.0, limit=5, species="nyala")
        assert hits[0].image_id == 1 and {h.image_id for h in hits} == {1, 2}
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)  # stored L2-normalised, cosine similarity
        assert [h.image_id for h in index.search("emb_test", points[0].vector, 5, "nyala", "right")] == [2]
        assert [h.image_id for h in index.search("emb_test", points[0].vector, 5, "nyala",
                                                 exclude_image_ids=[1])] == [2]
        index.set_individual("emb_test", [2], 10)
        index.delete("emb_test", [3])
    with VectorIndex(path=tmp_path / "qdrant") as reopened:  # everything survived closing
        payloads = dict(reopened.payloads("emb_test"))
        assert set(payloads) == {1, 2}
        assert payloads[2]["individual_id"] == 10 and payloads[1]["species"] == "nyala"
        stored = reopened.vectors("emb_test", [1])[1]
        np.testing.assert_allclose(stored, points[0].vector / np.linalg.norm(points[0].vector), rtol=1e-5)


def test_one_client_per_storage_path_and_dimension_guard(tmp_path: Path) -> None:
    first = VectorIndex(path=tmp_path / "q")
    second = VectorIndex(path=tmp_path / "q")  # embedded Qdrant locks its folder: the client must be shared
    assert first.client is second.client
    first.ensure_collection("c", 4)
    with pytest.raises(ValueError, match="4-d vectors, not 5-d"):
        second.ensure_collection("c", 5)
    first.close()
    second.upsert("c", [VectorPoint(7, np.ones(4), None, "cow")])  # still open for the other user
    second.close()
    with pytest.raises(ValueError, match="zero or not finite"), VectorIndex(path=tmp_path / "q") as index:
        index.upsert("c", [VectorPoint(8, np.zeros(4), None, "cow")])


def test_collection_per_embedder_version() -> None:
    assert collection_name("efficientnet-lite0-abc-plain") != collection_name("efficientnet-lite0-def-plain")
    assert collection_name("a/b c") == "emb_a_b_c"
