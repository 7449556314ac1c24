"""What every source of photos (CSV manifests, folders, Camtrap DP packages, MegaDetector output) reads into:
the rows to record, the rows refused with their reasons, warnings, and the deployments a source describes. Its
own module, so the readers (`sources`, `camtrap_dp`, `megadetector`) share the types without importing each
other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.services.recording import PhotoRow

__all__ = ["Manifest", "ManifestError", "PhotoRow", "RowProblem"]


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class RowProblem:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class Manifest:
    path: Path
    format: str
    rows: list[PhotoRow]
    problems: list[RowProblem]
    warnings: list[str]
    deployments: list[Any] = field(default_factory=list)  # camtrap_dp.DeploymentInfo, registered before the rows
