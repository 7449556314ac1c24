"""ALIKED's dense backbone run by ONNX Runtime on CPUs, where it measures faster than eager PyTorch.

Describing a photo is the one model call every query pays for (~0.6 s of ALIKED-n16 at 512 px on a 2-core CPU,
most of it in the dense backbone's SELU activations, normalisation and upsampling, which ONNX Runtime fuses).
Only the backbone (image -> dense feature map, score map) moves: keypoint detection and the deformable
descriptor head stay kornia's, so keypoints and descriptors are kornia's up to float rounding (a test compares
them on real photos). Each padded image size gets its own exported graph, traced once from the loaded weights
and kept in the machine's cache (`default_cache_dir`), so nothing is traced twice and the graph is always the
weights' own (its file name carries their digest).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

DIVISOR = 32  # ALIKED pads images to a multiple of 32 pixels


def default_threads() -> int:
    """OMP_NUM_THREADS when set (as PyTorch reads it: processes sharing a machine split its cores), else every core."""
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # not macOS
    return max(1, cores or 1)


def default_cache_dir() -> Path:
    """Where exported graphs are kept: shared by every registry on the machine (the file names carry the weights'
    digest and the image size, so one never serves other weights); `REGISTRY_ONNX_CACHE` overrides."""
    if os.environ.get("REGISTRY_ONNX_CACHE"):
        return Path(os.environ["REGISTRY_ONNX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "animal-id-registry" / "onnx"


_SESSIONS: dict[Path, Any] = {}  # one session per graph file per process, whichever pipeline asks
_SESSIONS_LOCK = threading.Lock()


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _DenseBackbone(nn.Module):
    """kornia's `ALIKED.extract_dense_map` on an already padded image (padding stays in PyTorch)."""

    def __init__(self, aliked: nn.Module) -> None:
        super().__init__()
        self.aliked = aliked

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.aliked
        x1 = a.block1(image)
        x2 = a.block2(a.pool2(x1))
        x3 = a.block3(a.pool4(x2))
        x4 = a.block4(a.pool4(x3))
        x1, x2, x3, x4 = a.gate(a.conv1(x1)), a.gate(a.conv2(x2)), a.gate(a.conv3(x3)), a.gate(a.conv4(x4))
        x1234 = torch.cat([x1, a.upsample2(x2), a.upsample8(x3), a.upsample32(x4)], dim=1)
        return F.normalize(x1234, p=2, dim=1), torch.sigmoid(a.score_head(x1234))


class OnnxBackbone:
    """A drop-in for `aliked.extract_dense_map` that runs the backbone in ONNX Runtime."""

    def __init__(self, aliked: nn.Module, cache_dir: Path | None = None, threads: int | None = None,
                 fallback: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """`fallback`: the PyTorch backbone to use, with a warning, for a size whose graph cannot be exported or
        loaded (`local_runtime: auto`); without one such a failure is an error naming the graph's path."""
        import onnxruntime
        from kornia.feature.aliked.aliked import InputPadder

        self._padder_type = InputPadder
        self.module = _DenseBackbone(aliked).eval()
        digest = hashlib.sha256()
        for name, tensor in sorted(aliked.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        self.weights_tag = digest.hexdigest()[:12]
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.options = onnxruntime.SessionOptions()
        self.options.intra_op_num_threads = threads or default_threads()
        self.options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # PyTorch runs next
        self.fallback = fallback
        self._failed: set[tuple[int, ...]] = set()

    def _session(self, shape: tuple[int, ...]) -> Any:
        import onnxruntime

        path = self.cache_dir / f"aliked-dense-{self.weights_tag}-{'x'.join(map(str, shape))}.onnx"
        with _SESSIONS_LOCK:
            if path not in _SESSIONS:
                if not path.exists():
                    self.cache_dir.mkdir(parents=True, exist_ok=True)
                    partial = path.with_suffix(f".{os.getpid()}.tmp")
                    log.info("exporting ALIKED's backbone for %s-pixel images to ONNX (once per size): %s",
                             "x".join(map(str, shape[-2:])), path)
                    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                        # the tracer notes that shapes become constants: intended, one graph per padded size
                        warnings.simplefilter("ignore", torch.jit.TracerWarning)
                        torch.onnx.export(self.module, (torch.zeros(shape),), str(partial), input_names=["image"],
                                          output_names=["features", "scores"], opset_version=17, dynamo=False)
                    partial.replace(path)  # whole or absent, whoever else exports the same size
                _SESSIONS[path] = onnxruntime.InferenceSession(str(path), self.options,
                                                               providers=["CPUExecutionProvider"])
            return _SESSIONS[path]

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padder = self._padder_type(image.shape[-2], image.shape[-1], DIVISOR)
        padded = padder.pad(image).contiguous()
        shape = tuple(padded.shape)
        if shape in self._failed and self.fallback is not None:
            return self.fallback(image)
        try:
            session = self._session(shape)
        except Exception as exc:
            where = self.cache_dir / f"aliked-dense-{self.weights_tag}-{'x'.join(map(str, shape))}.onnx"
            if self.fallback is None:
                raise RuntimeError(f"ALIKED's backbone could not run in ONNX Runtime ({where}): {exc}; set "
                                   "local_runtime to 'torch' or 'auto' in settings.json") from exc
            log.warning("ALIKED's backbone stays in PyTorch for %s-pixel images: %s (%s)",
                        "x".join(map(str, shape[-2:])), exc, where)
            self._failed.add(shape)
            return self.fallback(image)
        features, scores = session.run(None, {"image": padded.cpu().numpy()})
        return padder.unpad(torch.from_numpy(features)), padder.unpad(torch.from_numpy(scores))
