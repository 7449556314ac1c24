"""A fixed camera's static background: keypoints that recur at the same place in its photos of different animals.

A camera trap photographs the same rocks, stems and fence posts in every frame. Their keypoints match between
any two photos of the station, whichever animals they show, and so vote for the wrong individual. Animals move
and differ; the scenery does not. A keypoint is scenery when a keypoint with a similar descriptor lies at the
same place (within `radius` of the long side) in photos of at least `min_owners` *other* animals (or other
events, where the animals are not known) of the same deployment. The keypoints found so are the deployment's
scenery; `Scenery.mask` drops a photo's keypoints that lie on it before the photo is matched.

Only whole photos are compared (a crop's pixels are not the frame's), all described at the same size.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from registry.matching.local_matcher import LocalFeatures

RADIUS = 0.01  # of the long side: ~5 px at the 512-px description size, a keypoint's localisation error
SIMILARITY = 0.8  # cosine similarity of L2-normalised descriptors that counts as "the same keypoint"
MIN_OWNERS = 2  # other animals whose photos must show the keypoint at the same place
MIN_SHARE = 0.2  # ... and at least this share of the deployment's other animals (one visitor is not scenery)


def _positions(features: LocalFeatures) -> np.ndarray:
    """Keypoints as fractions of the long side (so that photos described at one size compare directly)."""
    return features.keypoints.astype(np.float64) / float(max(features.image_size))


@dataclass(frozen=True)
class Scenery:
    """A deployment's static keypoints (positions as fractions of the long side, descriptors)."""

    positions: np.ndarray  # (M, 2)
    descriptors: np.ndarray  # (M, D) float32
    image_size: tuple[int, int] | None  # the described size it was found at (None: empty)
    photos: int  # how many photos it was found from
    radius: float = RADIUS
    similarity: float = SIMILARITY

    def __len__(self) -> int:
        return len(self.positions)

    def on_scenery(self, features: LocalFeatures) -> np.ndarray:
        """Which of a photo's keypoints lie on the scenery (a bool per keypoint)."""
        found = np.zeros(len(features), dtype=bool)
        if not len(self) or not len(features) or tuple(features.image_size) != self.image_size:
            return found
        tree = cKDTree(self.positions)
        near = tree.query_ball_point(_positions(features), self.radius)
        descriptors = features.descriptors.astype(np.float32)
        for index, neighbours in enumerate(near):
            if neighbours and float(np.max(self.descriptors[neighbours] @ descriptors[index])) >= self.similarity:
                found[index] = True
        return found

    def mask(self, features: LocalFeatures) -> LocalFeatures:
        """The photo without its keypoints on the scenery (the same object when none are)."""
        found = self.on_scenery(features)
        if not found.any():
            return features
        keep = ~found
        return LocalFeatures(features.keypoints[keep], features.descriptors[keep], features.image_size)


def empty(photos: int = 0) -> Scenery:
    return Scenery(np.zeros((0, 2)), np.zeros((0, 0), dtype=np.float32), None, photos)


def find_scenery(photos: Sequence[LocalFeatures], owners: Sequence[Hashable], radius: float = RADIUS,
                 similarity: float = SIMILARITY, min_owners: int = MIN_OWNERS, min_share: float = MIN_SHARE,
                 ) -> Scenery:
    """The keypoints of these photos (one deployment's, whole photos) that recur at the same place in photos of
    enough other animals. Photos described at another size than the most common one are left out."""
    if not photos:
        return empty()
    sizes = [tuple(p.image_size) for p in photos]
    size = max(set(sizes), key=sizes.count)
    chosen = [k for k, p in enumerate(photos) if tuple(p.image_size) == size and len(p)]
    labels = {owners[k] for k in chosen}
    needed = max(min_owners, int(np.ceil(min_share * (len(labels) - 1))))
    if len(labels) - 1 < needed:  # too few animals seen here to tell scenery from an animal
        return empty(len(chosen))
    positions = np.concatenate([_positions(photos[k]) for k in chosen])
    descriptors = np.concatenate([photos[k].descriptors.astype(np.float32) for k in chosen])
    label_ids = {label: n for n, label in enumerate(sorted(labels, key=repr))}
    owner = np.concatenate([np.full(len(photos[k]), label_ids[owners[k]]) for k in chosen])
    pairs = cKDTree(positions).query_pairs(radius, output_type="ndarray")
    if not len(pairs):
        return empty(len(chosen))
    first, second = pairs[:, 0], pairs[:, 1]
    alike = (owner[first] != owner[second]) & (
        np.einsum("ij,ij->i", descriptors[first], descriptors[second]) >= similarity)
    first, second = first[alike], second[alike]
    # distinct other animals each keypoint recurs in: unique (keypoint, other animal) pairs, counted per keypoint
    both = np.concatenate([np.stack([first, owner[second]], 1), np.stack([second, owner[first]], 1)])
    if not len(both):
        return empty(len(chosen))
    both = np.unique(both, axis=0)
    counts = np.bincount(both[:, 0], minlength=len(positions))
    static = counts >= needed
    return Scenery(positions[static], descriptors[static], size, len(chosen), radius, similarity)
