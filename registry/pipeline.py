"""The matchers of a pipeline profile, loaded once per process and reused for every image.

`offline`: EfficientNet-Lite0 (ImageNet) global embedding + ALIKED/LightGlue, all from packaged weights.
`tiny-test`: random-initialised architectures for tests of code paths; loud warnings, meaningless scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from registry.decision import LocalMatchScorer, Scorer
from registry.embedders import GlobalEmbedder, load_efficientnet_lite0, tiny_random_embedder
from registry.imaging import load_image, normalise_orientation
from registry.local_matcher import AlikedLightGlue, LocalFeatures
from registry.settings import Settings


@dataclass
class Described:
    """What the pipeline extracts from one photo."""

    vector: np.ndarray
    local: LocalFeatures


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.profile = settings.profile
        self.device = settings.resolved_device()
        torch.set_grad_enabled(False)
        explicit = settings.weights.get("efficientnet-lite0")
        if self.profile == "offline":
            self.embedder: GlobalEmbedder = load_efficientnet_lite0(
                settings.weights_dir, Path(explicit) if explicit else None, self.device,
                settings.test_time_augmentation, settings.batch_size)
            random_local = False
        elif self.profile == "tiny-test":
            self.embedder = tiny_random_embedder(device=self.device)
            random_local = True
        else:
            raise ValueError(f"unknown profile {self.profile!r}")
        local = settings.local
        self.local = AlikedLightGlue(
            device=self.device, max_keypoints=local.max_keypoints, long_side=local.long_side,
            min_confidence=local.min_confidence, weights_dir=settings.weights_dir,
            allow_download=settings.allow_download, random_init_for_tests=random_local)
        self.scorer: Scorer = LocalMatchScorer(self.local.name)

    @property
    def versions(self) -> dict[str, str]:
        return {self.embedder.name: self.embedder.version, self.local.name: self.local.version,
                "scorer": self.scorer.name}

    def load(self, path: Path, species: str, viewpoint: str | None) -> Image.Image:
        """Decode at working size and apply the species' orientation rule for this viewpoint."""
        max_side = max(self.settings.local.long_side, 512)
        image = load_image(path, max_side=max_side)
        return normalise_orientation(image, viewpoint, self.settings.orientation_rules.get(species, {}))

    def describe(self, images: list[Image.Image]) -> list[Described]:
        vectors = self.embedder.embed(images)
        local = self.local.extract(images)
        return [Described(v, f) for v, f in zip(vectors, local, strict=True)]
