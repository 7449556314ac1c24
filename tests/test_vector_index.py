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
        assert hits[0].annotation_id == 1 and {h.annotation_id for h in hits} == {1, 2}
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)  # stored L2-normalised, cosine similarity
        assert [h.annotation_id for h in index.search("emb_test", points[0].vector, 5, "nyala", "right")] == [2]
        assert [h.annotation_id for h in index.search("emb_test", points[0].vector, 5, "nyala",
                                                 exclude_annotation_ids=[1])] == [2]
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


def test_viewpoint_rule_and_rejected_points_are_not_candidates(tmp_path: Path) -> None:
    """A known viewpoint sees its own, `both` and unknown-viewpoint references; an unknown viewpoint sees all;
    a point whose sighting was rejected (no individual) is never a candidate and uses no result slot."""
    rng = np.random.default_rng(1)
    query = rng.normal(size=8)
    viewpoints = {1: "left", 2: "right", 3: "both", 4: None, 5: "left"}
    points = [VectorPoint(i, query + rng.normal(scale=0.1, size=8), 100 + i, "nyala", v, 1)
              for i, v in viewpoints.items()]
    with VectorIndex(path=tmp_path / "qdrant") as index:
        index.ensure_collection("emb_vp", 8)
        index.upsert("emb_vp", points)
        index.set_individual("emb_vp", [5], None)  # rejected
        left = {h.annotation_id for h in index.search("emb_vp", query, 10, "nyala", "left")}
        assert left == {1, 3, 4}
        assert {h.annotation_id for h in index.search("emb_vp", query, 10, "nyala", "right")} == {2, 3, 4}
        assert {h.annotation_id for h in index.search("emb_vp", query, 10, "nyala")} == {1, 2, 3, 4}
        assert len(index.search("emb_vp", query, 1, "nyala", "left")) == 1


def test_grouped_query_covers_distinct_individuals_however_many_photos_each_has(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    query = rng.normal(size=16)
    crowd = [VectorPoint(i, query + rng.normal(scale=0.01, size=16), 1, "nyala") for i in range(1, 61)]
    others = [VectorPoint(100 + k, query + rng.normal(scale=0.5 + 0.1 * k, size=16), 2 + k, "nyala")
              for k in range(5)]
    with VectorIndex(path=tmp_path / "qdrant") as index:
        index.ensure_collection("emb_groups", 16)
        index.upsert("emb_groups", crowd + others)
        plain = index.search("emb_groups", query, 30, "nyala")
        assert {h.individual_id for h in plain} == {1}  # ANN top-k alone would see one animal
        hits = index.search_individuals("emb_groups", query, individuals=4, images_per_individual=2,
                                        species="nyala")
        per_individual: dict[int, int] = {}
        for hit in hits:
            per_individual[hit.individual_id] = per_individual.get(hit.individual_id, 0) + 1
        assert len(per_individual) == 4 and max(per_individual.values()) == 2
        assert 1 in per_individual
