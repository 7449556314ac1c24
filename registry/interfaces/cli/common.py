"""What every command shares: opening the registry, output (text or --json), progress, error messages."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from tqdm import tqdm

from registry.ingest.manifest import ManifestError
from registry.matching.imaging import ImageError
from registry.matching.weights import WeightsMismatchError, WeightsNotFoundError
from registry.services.registry import Registry
from registry.store.catalog import CatalogError
from registry.store.locking import RegistryInUseError
from registry.store.stores import RegistryNotInitialisedError, Stores

EXPECTED_ERRORS = (CatalogError, ImageError, ManifestError, RegistryInUseError, RegistryNotInitialisedError,
                   WeightsNotFoundError, WeightsMismatchError, FileExistsError, ValueError)


def progress_bar(label: str, total: int) -> tqdm:
    """A bar with rate and ETA on a terminal; periodic plain lines (every 10 s) when output is a log."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=label, unit="img", file=sys.stderr, dynamic_ncols=interactive,
                mininterval=0.2 if interactive else 10.0, ascii=not interactive)


def root_obj(ctx: click.Context) -> dict[str, Any]:
    return ctx.find_root().obj


def emit(ctx: click.Context, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if root_obj(ctx)["json"] else text)


def open_registry(ctx: click.Context, repairing: bool = False) -> Registry:
    """The registry with its models (loaded on first use) and the writer lock: for commands that describe photos.
    `repairing`: open it even when its vectors are lost (`doctor`, which rebuilds them)."""
    obj = root_obj(ctx)
    return Registry(obj["settings"](), lock_wait=obj["wait"], repairing=repairing)


def open_stores(ctx: click.Context, write: bool = False) -> Stores:
    """The stores without any model: read-only (catalog only, no writer lock) or for curation (with the vector
    index and the writer lock)."""
    obj = root_obj(ctx)
    return Stores(obj["settings"](), write=write, lock_wait=obj["wait"])


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        root_obj(ctx)["json"] = True


def add_json_option(command: click.Command) -> None:
    """`--json` where a user types it, after the command (`registry stats --json`), as well as globally."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_json_option(sub)
        return
    if not any(p.name == "json_output" for p in command.params):
        command.params.append(click.Option(["--json", "json_output"], is_flag=True, expose_value=False,
                                           is_eager=True, callback=_set_json, help="Machine-readable output."))


class RegistryGroup(click.Group):
    """Turns the errors a user can cause (bad input, missing weights, a busy registry) into clear messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
