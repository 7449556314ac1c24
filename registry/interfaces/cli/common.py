"""What every command shares: opening the registry, output (text or --json), progress, error messages."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from tqdm import tqdm

from registry.ingest.sources import ManifestError
from registry.matching.imaging import ImageError
from registry.matching.weights import WeightsMismatchError, WeightsNotFoundError
from registry.services.registry import Registry, RegistryNotInitialisedError
from registry.store.catalog import CatalogError
from registry.store.locking import RegistryInUseError

EXPECTED_ERRORS = (CatalogError, ImageError, ManifestError, RegistryInUseError, RegistryNotInitialisedError,
                   WeightsNotFoundError, WeightsMismatchError, FileExistsError, ValueError)


def progress_bar(label: str, total: int) -> tqdm:
    """A bar with rate and ETA on a terminal; periodic plain lines (every 10 s) when output is a log."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=label, unit="img", file=sys.stderr, dynamic_ncols=interactive,
                mininterval=0.2 if interactive else 10.0, ascii=not interactive)


def emit(ctx: click.Context, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if ctx.obj["json"] else text)


def open_registry(ctx: click.Context) -> Registry:
    return Registry(ctx.obj["settings"](), lock_wait=ctx.obj["wait"])


class RegistryGroup(click.Group):
    """Turns the errors a user can cause (bad input, missing weights, a busy registry) into clear messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc




def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
