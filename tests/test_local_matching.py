"""One-vs-many LNBNN votes, MAGSAC-verified correspondences, the two-stage budget and the pair verifier."""

from __future__ import annotations

import numpy as np
import pytest

from registry.decide.scoring import CandidateScore, IndividualScore, rank_individuals
from registry.decide.verifier import PairVerifier, candidate_features, training_rows
from registry.matching.local_matcher import AlikedLightGlue, LocalFeatures, PairMatches, lnbnn_votes, verified_inliers
from registry.settings import LEGACY_LOCAL, LocalMatcherSettings


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_lnbnn_votes_for_the_owner_of_distinctive_descriptors_and_ignores_common_ones() -> None:
    rng = np.random.default_rng(0)
    animal_a, animal_b = _unit(rng.normal(size=(50, 128))), _unit(rng.normal(size=(50, 128)))
    grass = _unit(rng.normal(size=(10, 128)))
    # grass appears in more photos than the k neighbours: it is as near to every animal, so it has no margin
    reference = np.concatenate([animal_a, grass, animal_b, grass, grass, grass, grass, grass])
    owners = np.array(["a"] * 60 + ["b"] * 60 + ["c"] * 10 + ["d"] * 10 + ["e"] * 10 + ["f"] * 10)
    query = _unit(np.concatenate([animal_a[:30] + 0.05 * rng.normal(size=(30, 128)), grass]))
    votes = lnbnn_votes(query.astype(np.float32), reference.astype(np.float32), owners, k=4)
    assert max(votes, key=votes.get) == "a"
    assert votes["a"] > 10 * votes.get("b", 0.0)
    grass_only = lnbnn_votes(grass.astype(np.float32), reference.astype(np.float32), owners, k=4)
    assert sum(grass_only.values()) < 1e-3  # keypoints that look like every photo count for nothing
    assert lnbnn_votes(query[:0].astype(np.float32), reference.astype(np.float32), owners) == {}


def _features(points: np.ndarray, size: tuple[int, int] = (512, 512)) -> LocalFeatures:
    return LocalFeatures(points.astype(np.float32), np.zeros((len(points), 128), np.float16), size)


def test_verified_inliers_keep_geometrically_consistent_matches_only() -> None:
    rng = np.random.default_rng(1)
    query = rng.uniform(20, 490, size=(120, 2))
    shifted = query + np.array([12.0, -7.0])  # one rigid motion for the first 80
    shifted[80:] = rng.uniform(20, 490, size=(40, 2))  # 40 matches to random places: background, other animals
    matches = PairMatches(np.arange(120), np.arange(120), np.full(120, 0.9, dtype=np.float32))
    inliers = verified_inliers(_features(query), _features(shifted), matches, min_confidence=0.5)
    assert 75 <= inliers <= 90
    unsure = PairMatches(np.arange(120), np.arange(120), np.full(120, 0.2, dtype=np.float32))
    assert verified_inliers(_features(query), _features(shifted), unsure, min_confidence=0.5) == 0.0
    collinear = np.stack([np.linspace(0, 500, 20), np.full(20, 100.0)], axis=1)
    line = PairMatches(np.arange(20), np.arange(20), np.full(20, 0.9, dtype=np.float32))
    assert verified_inliers(_features(collinear), _features(collinear), line, 0.5) >= 0.0  # degenerate: no crash


def test_the_first_pass_uses_the_strongest_keypoints_of_the_cached_features() -> None:
    features = _features(np.arange(2048, dtype=np.float32).reshape(1024, 2))
    cheap = AlikedLightGlue.truncated(features, 256)
    assert len(cheap) == 256 and np.array_equal(cheap.keypoints, features.keypoints[:256])
    assert AlikedLightGlue.truncated(features, 0) is features


def test_registries_made_before_the_two_stage_matcher_keep_their_settings() -> None:
    old = LocalMatcherSettings.from_json({"max_keypoints": 256, "long_side": 512, "min_confidence": 0.5,
                                          "pair_batch": 0})
    assert old.max_keypoints == 256 and not old.upscale and not old.verify and old.first_pass_keypoints == 0
    assert {k: getattr(old, k) for k in LEGACY_LOCAL} == LEGACY_LOCAL
    new = LocalMatcherSettings()
    assert new.max_keypoints == 1024 and new.upscale and new.verify and new.first_pass_keypoints == 256


def test_per_species_matching_overrides_are_checked_and_scoped() -> None:
    local = LocalMatcherSettings(max_keypoints=512, species={"cow": {"lnbnn_individuals": 20, "max_keypoints": 256}})
    assert local.for_species("cow").lnbnn_individuals == 20 and local.for_species("cow").max_keypoints == 256
    assert local.for_species("nyala") == local and local.for_species("cow").long_side == local.long_side
    assert LocalMatcherSettings.from_json(local.to_json()) == local  # stored in the policy, read back the same
    for bad, message in (({"max_keypoints": 1024}, "exceeds"), ({"long_side": 256}, "cannot be set per species"),
                         ({"lnbnn_photos": -1}, "whole number"), ({"lnbnn_photos": True}, "whole number")):
        with pytest.raises(ValueError, match=message):
            LocalMatcherSettings(max_keypoints=512, species={"cow": bad})


def test_an_individual_can_score_by_the_agreement_of_its_best_photos() -> None:
    photos = [CandidateScore(1, 7, {}, {}, 0.6), CandidateScore(2, 7, {}, {}, 0.5),
              CandidateScore(3, 8, {}, {}, 0.7), CandidateScore(4, 7, {}, {}, 0.1)]
    best = rank_individuals(photos, {})
    assert [(r.individual_id, r.score) for r in best] == [(8, 0.7), (7, 0.6)]
    combined = rank_individuals(photos, {}, combine_photos=2)  # 1 - 0.4 * 0.5: two photos that agree
    assert [r.individual_id for r in combined] == [7, 8]
    assert combined[0].score == pytest.approx(0.8) and combined[0].best_annotation_id == 1
    assert rank_individuals(photos, {}, combine_photos=3)[0].score == pytest.approx(1 - 0.4 * 0.5 * 0.9)


def _ranked(scores: list[list[float]]) -> list[IndividualScore]:
    out = []
    for individual, photos in enumerate(scores, start=1):
        images = [CandidateScore(100 * individual + k, individual, {}, {"global": s, "aliked": s}, s)
                  for k, s in enumerate(photos)]
        out.append(IndividualScore(individual, str(individual), photos[0], images[0].annotation_id, images))
    return out


def test_the_pair_verifier_learns_from_margins_and_agreement_and_round_trips_as_json() -> None:
    rng = np.random.default_rng(2)
    rows, labels = [], []
    for _ in range(200):
        known = rng.random() < 0.5
        best = rng.uniform(0.5, 0.9)
        # a true match stands out from the next individual and its other photos agree; a stranger does not
        ranked = _ranked([[best, best - 0.05], [best - 0.3]] if known else [[best, 0.2], [best - 0.02]])
        r, y = training_rows(ranked, 1 if known else None)
        rows += r
        labels += y
    verifier = PairVerifier.fit(rows, labels)
    clear = verifier.verify(_ranked([[0.7, 0.68], [0.4]]))
    doubtful = verifier.verify(_ranked([[0.7, 0.2], [0.69]]))
    assert clear[0].individual_id == 1 and clear[0].score > doubtful[0].score
    assert set(candidate_features(_ranked([[0.7], [0.6]]), 0)) >= {"score", "margin", "photos", "agreement"}
    again = PairVerifier.from_json(verifier.to_json())
    assert again.verify(_ranked([[0.7, 0.68], [0.4]]))[0].score == pytest.approx(clear[0].score)


def test_an_annotation_box_crops_the_animal_with_a_margin_and_bad_boxes_are_named() -> None:
    from PIL import Image

    from registry.matching.imaging import ImageError, crop_to_box

    photo = Image.new("RGB", (1000, 500))
    crop = crop_to_box(photo, (0.2, 0.2, 0.5, 0.4), margin=0.1)
    assert crop.size == (600, 240)  # 500 + 2 x 50 wide, 200 + 2 x 20 high
    assert crop_to_box(photo, (0.9, 0.9, 0.1, 0.1)).size == (110, 55)  # clipped at the photo's edge
    assert crop_to_box(photo, None) is photo
    with pytest.raises(ImageError, match="not normalised"):
        crop_to_box(photo, (10, 20, 300, 200))
