"""The matchers of a pipeline profile, loaded once per process and reused for every image.

`paper`: MegaDescriptor-L-384 + EVA02-L-14-336 global embeddings + ALIKED/LightGlue (the AnimalCLEF 2025 paper).
`offline`: EfficientNet-Lite0 (ImageNet) global embedding + ALIKED/LightGlue, all from packaged weights.
`tiny-test`: random-initialised small architectures for tests of code paths; loud warnings, meaningless scores.

Every profile has one *primary* global embedder (retrieval and WildFusion's global half) and at most one
*complementary* global embedder (EVA02's role: fused with weight 1 - alpha).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from registry.matching.embedders import (
    TorchEmbedder,
    load_efficientnet_lite0,
    load_eva02,
    load_megadescriptor,
    load_trained_embedder,
    tiny_random_embedder,
)
from registry.matching.imaging import ImageError, crop_to_box, load_image, normalise_orientation
from registry.matching.local_matcher import SECOND_MATCHERS, AlikedLightGlue, LocalFeatures
from registry.matching.timing import StageTimes
from registry.settings import Settings


@dataclass
class Described:
    """What the pipeline extracts from one photo: a vector per global embedder and the local features."""

    vectors: dict[str, np.ndarray]
    local: LocalFeatures
    second: LocalFeatures | None = None  # the second local matcher's features, for species that use it


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.profile = settings.profile
        self.device = settings.resolved_device()
        torch.set_grad_enabled(False)
        if self.device == "cuda":  # TF32 matmuls: the accuracy of fp32 embeddings at tensor-core speed
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        options = {"device": self.device, "test_time_augmentation": settings.test_time_augmentation,
                   "batch_size": settings.batch_size, "precision": settings.precision}

        def explicit(name: str) -> Path | None:
            return Path(settings.weights[name]) if name in settings.weights else None

        def load(name: str, base: Callable[[], TorchEmbedder]) -> TorchEmbedder:
            """A version trained by `registry train` where the decision policy names one, else the base weights."""
            trained = settings.trained_weights.get(name)
            return load_trained_embedder(Path(trained), **options) if trained else base()

        random_local = False
        if self.profile == "paper":
            self.embedders: list[TorchEmbedder] = [
                load("megadescriptor-l-384", lambda: load_megadescriptor(
                    settings.weights_dir, explicit("megadescriptor-l-384"), settings.allow_download, **options)),
                load("eva02-l-14-336", lambda: load_eva02(
                    settings.weights_dir, explicit("eva02-l-14-336"), settings.allow_download, **options)),
            ]
        elif self.profile == "offline":
            self.embedders = [load("efficientnet-lite0", lambda: load_efficientnet_lite0(
                settings.weights_dir, explicit("efficientnet-lite0"), **options))]
        elif self.profile == "tiny-test":
            self.embedders = [load(f"tiny-random-{seed}", lambda seed=seed: tiny_random_embedder(seed, **options))
                              for seed in (0, 1)]
            random_local = True
        else:
            raise ValueError(f"unknown profile {self.profile!r}")
        self.options = options
        local = settings.local
        self.local = AlikedLightGlue(
            device=self.device, max_keypoints=local.max_keypoints, long_side=local.long_side,
            min_confidence=local.min_confidence, weights_dir=settings.weights_dir,
            allow_download=settings.allow_download, random_init_for_tests=random_local,
            pair_batch=local.pair_batch, precision=settings.precision, upscale=local.upscale,
            verify=local.verify, engine=local.engine, ratio=local.ratio, runtime=settings.local_runtime,
            distinctive=local.distinctive, box_only=local.box_only, static_scenery=local.static_scenery)
        self._second: AlikedLightGlue | None = None
        self._decoder = ThreadPoolExecutor(max(1, settings.decode_workers), thread_name_prefix="decode")

    @property
    def second(self) -> AlikedLightGlue | None:
        """The second local matcher the settings name (`LocalMatcherSettings.second`), loaded on first use; None
        when they name none. Settings switched by `calibrate` are followed."""
        wanted = self.settings.local.second
        if not wanted:
            return None
        if self._second is None or self._second.name != wanted:
            local = self.settings.local
            self._second = SECOND_MATCHERS[wanted](
                device=self.device, max_keypoints=local.max_keypoints, long_side=local.long_side,
                min_confidence=local.min_confidence, weights_dir=self.settings.weights_dir,
                allow_download=self.settings.allow_download, random_init_for_tests=self.profile == "tiny-test",
                pair_batch=local.pair_batch, precision=self.settings.precision, upscale=local.upscale,
                verify=local.verify, engine=local.engine, ratio=local.ratio, distinctive=local.distinctive,
                box_only=local.box_only)
        self._second.engine = self.settings.local.engine
        self._second.distinctive = self.settings.local.distinctive and self._second.verify
        return self._second

    @property
    def local_matchers(self) -> list[AlikedLightGlue]:
        """ALIKED, then the second local matcher where the settings name one."""
        return [self.local] + ([self.second] if self.second is not None else [])

    def replace_embedder(self, embedder: TorchEmbedder) -> TorchEmbedder:
        """Use `embedder` in the role of the loaded one of the same name (reembedding); returns the old one."""
        for index, current in enumerate(self.embedders):
            if current.name == embedder.name:
                self.embedders[index] = embedder
                return current
        raise KeyError(f"no embedder named {embedder.name!r} in profile {self.profile!r}")

    @property
    def primary(self) -> TorchEmbedder:
        """The embedder used for retrieval and as WildFusion's global matcher."""
        return self.embedders[0]

    @property
    def complementary(self) -> TorchEmbedder | None:
        """The embedder fused with weight 1 - alpha (EVA02 in the paper profile)."""
        return self.embedders[1] if len(self.embedders) > 1 else None

    @property
    def matcher_names(self) -> list[str]:
        return [e.name for e in self.embedders] + [n for m in self.local_matchers for n in m.score_names]

    @property
    def versions(self) -> dict[str, str]:
        return {**{e.name: e.version for e in self.embedders}, **{k: v for m in self.local_matchers
                                                                   for k, v in m.versions.items()}}

    @property
    def working_side(self) -> int:
        """Decode size: large enough for every model's input (and its crops), never the camera's full size."""
        needed = [self.settings.local.long_side, *(max(e.input_size) for e in self.embedders)]
        return int(max(needed) * (1.25 if self.settings.test_time_augmentation else 1.0))

    def load(self, path: Path, species: str, viewpoint: str | None,
             box: tuple[float, float, float, float] | None = None) -> Image.Image:
        """Decode, keep the animal's region (`box`, normalised x y w h, with a margin), bring it to working size
        and apply the species' orientation rule for this viewpoint."""
        image = load_image(path, max_side=None if box else self.working_side)
        if box is not None:
            image = crop_to_box(image, box)
            image.thumbnail((self.working_side, self.working_side), Image.Resampling.BILINEAR)
        return normalise_orientation(image, viewpoint, self.settings.orientation_rules.get(species, {}))

    def load_many(self, paths: list[Path], species: list[str], viewpoints: list[str | None],
                  boxes: list[tuple[float, float, float, float] | None] | None = None,
                  ) -> list[Image.Image | ImageError]:
        """Decode a batch on worker threads (PIL releases the GIL while decoding); failures come back as errors."""
        def one(args: tuple[Path, str, str | None, tuple[float, float, float, float] | None],
                ) -> Image.Image | ImageError:
            try:
                return self.load(*args)
            except ImageError as exc:
                return exc

        boxes = boxes if boxes is not None else [None] * len(paths)
        return list(self._decoder.map(one, zip(paths, species, viewpoints, boxes, strict=True)))

    def describe(self, images: list[Image.Image], timer: StageTimes | None = None,
                 second: list[bool] | None = None) -> list[Described]:
        """Global vectors and local features of each image; `second` marks the images (of species that use it)
        also described by the second local matcher."""
        timer = timer or StageTimes()
        with timer.stage("describe-global"):
            vectors = {e.name: e.embed(images) for e in self.embedders}
        with timer.stage("describe-local"):
            local = self.local.extract(images)
        extra: list[LocalFeatures | None] = [None] * len(images)
        wanted = [i for i, want in enumerate(second or []) if want]
        if wanted and self.second is not None:
            with timer.stage("describe-second"):
                for i, features in zip(wanted, self.second.extract([images[i] for i in wanted]), strict=True):
                    extra[i] = features
        return [Described({name: v[i] for name, v in vectors.items()}, f, extra[i]) for i, f in enumerate(local)]
