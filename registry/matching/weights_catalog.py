"""The model catalogue behind `registry models list|download|verify`: which weights each profile needs,
where they were found, and whether they load.

A field station prepares offline use on a connected machine with `registry models download`, which puts every
file into the registry's weights folder; the folder travels with the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from registry.matching.detection import MEGADETECTOR_V5A, MegaDetector
from registry.matching.embedders import EFFICIENTNET_LITE0, EVA02_L_14_336, MEGADESCRIPTOR_L_384
from registry.matching.local_matcher import ALIKED_LIGHTGLUE, ALIKED_N16, DISK_DEPTH, DISK_LIGHTGLUE
from registry.matching.weights import WeightsMismatchError, WeightsNotFoundError, WeightsSpec, file_sha256, resolve
from registry.settings import Settings

# DISK's two files serve the optional second local matcher (`registry calibrate --second-matcher disk`): listed
# and verified on request, not part of any profile
SPECS: dict[str, WeightsSpec] = {s.name: s for s in (MEGADESCRIPTOR_L_384, EVA02_L_14_336, EFFICIENTNET_LITE0,
                                                     ALIKED_N16, ALIKED_LIGHTGLUE, MEGADETECTOR_V5A, DISK_DEPTH,
                                                     DISK_LIGHTGLUE)}
PROFILE_MODELS: dict[str, tuple[str, ...]] = {
    "paper": ("megadescriptor-l-384", "eva02-l-14-336", "aliked-n16", "aliked-lightglue"),
    "offline": ("efficientnet-lite0", "aliked-n16", "aliked-lightglue"),
    "tiny-test": (),
}


@dataclass
class ModelStatus:
    name: str
    resolved: bool
    source: str | None = None
    path: str | None = None
    sha256: str | None = None
    error: str | None = None
    verified: bool | None = None

    def to_json(self) -> dict:
        return self.__dict__.copy()


def names_for(settings: Settings, names: tuple[str, ...] | list[str] = ()) -> list[str]:
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(SPECS)}")
    return list(names) or list(PROFILE_MODELS[settings.profile])


def model_status(settings: Settings, names: tuple[str, ...] | list[str] = (), download: bool = False,
                 ) -> list[ModelStatus]:
    """Resolve each model's weights (fetching them into the weights folder when `download`)."""
    out = []
    for name in names_for(settings, names):
        explicit = Path(settings.weights[name]) if name in settings.weights else None
        try:
            found = resolve(SPECS[name], settings.weights_dir, explicit=explicit,
                            allow_download=download or settings.allow_download)
        except WeightsNotFoundError as exc:
            out.append(ModelStatus(name, False, error=str(exc)))
            continue
        out.append(ModelStatus(name, True, found.source, str(found.path), file_sha256(found.path)))
    return out


def verify(settings: Settings, names: tuple[str, ...] | list[str] = ()) -> list[ModelStatus]:
    """Load every resolved model strictly into its architecture: a truncated or foreign file fails here."""
    from registry.matching import embedders, local_matcher

    loaders = {
        "megadescriptor-l-384": lambda: embedders.load_megadescriptor(settings.weights_dir, _explicit(settings,
                                                                                                    "megadescriptor-l-384")),
        "eva02-l-14-336": lambda: embedders.load_eva02(settings.weights_dir, _explicit(settings, "eva02-l-14-336")),
        "efficientnet-lite0": lambda: embedders.load_efficientnet_lite0(
            settings.weights_dir, _explicit(settings, "efficientnet-lite0")),
        # one object loads both ALIKED files: build it once for whichever of the two is asked first
        "aliked-n16": lambda: aliked(),
        "aliked-lightglue": lambda: aliked(),
        "megadetector-v5a": lambda: MegaDetector(settings.weights_dir, _explicit(settings, "megadetector-v5a")),
        "disk-depth": lambda: disk(),
        "disk-lightglue": lambda: disk(),
    }
    built: dict[str, object] = {}

    def aliked() -> object:
        if "aliked" not in built:
            built["aliked"] = local_matcher.AlikedLightGlue(weights_dir=settings.weights_dir)
        return built["aliked"]

    def disk() -> object:
        if "disk" not in built:
            built["disk"] = local_matcher.DiskLightGlue(weights_dir=settings.weights_dir)
        return built["disk"]

    statuses = model_status(settings, names)
    for status in statuses:
        if not status.resolved:
            continue
        try:
            loaders[status.name]()
            status.verified = True
        except (WeightsMismatchError, ImportError) as exc:
            status.verified, status.error = False, str(exc)
    return statuses


def _explicit(settings: Settings, name: str) -> Path | None:
    return Path(settings.weights[name]) if name in settings.weights else None
