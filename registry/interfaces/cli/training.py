"""CLI: learning the registry's species (`train`), moving to a trained version (`reembed`), trained models
between registries (`models trained|export|install`), and removing old vectors (`vectors prune`)."""

from __future__ import annotations

from pathlib import Path

import click

from registry.interfaces.cli.common import emit, fmt, open_registry, progress_bar, root_obj
from registry.learning.trainer import TrainingError, TrainSettings


@click.command()
@click.option("--species", default=None, help="Only this species' labelled photos (default: every species).")
@click.option("--epochs", type=int, default=TrainSettings.epochs, show_default=True)
@click.option("--batch-size", type=int, default=TrainSettings.batch_size, show_default=True)
@click.option("--input-size", type=int, default=TrainSettings.input_size, show_default=True,
              help="Square input in pixels; photos are letterboxed (aspect ratio kept).")
@click.option("--lr", "learning_rate", type=float, default=TrainSettings.learning_rate, show_default=True)
@click.option("--loss", type=click.Choice(["subcenter-arcface", "arcface"]), default=TrainSettings.loss,
              show_default=True)
@click.option("--margin", "margin_degrees", type=float, default=TrainSettings.margin_degrees, show_default=True,
              help="ArcFace angular margin, degrees.")
@click.option("--scale", type=float, default=TrainSettings.scale, show_default=True)
@click.option("--flip", "flips", multiple=True, help="Species whose pattern may be mirrored (never flank-specific).")
@click.option("--max-minutes", type=float, default=None, help="Stop after this long; the best epoch is kept.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--reembed/--no-reembed", "then_reembed", default=False, show_default=True,
              help="Put the trained version in force right away (reembed + recalibrate).")
@click.pass_context
def train(ctx: click.Context, species: str | None, then_reembed: bool, flips: tuple[str, ...],
          **recipe: float) -> None:
    """Fine-tune the global embedder on this registry's labelled photos (sub-center ArcFace); registers a new
    embedder version. Identification changes only after `registry reembed`."""
    quiet = root_obj(ctx)["json"]
    say = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
    settings = TrainSettings(**recipe, flips=list(flips))  # type: ignore[arg-type]
    with open_registry(ctx) as registry:
        try:
            card = registry.training.train(settings, species, say)
        except TrainingError as exc:
            raise click.ClickException(str(exc)) from exc
        result = {"trained": card}
        if then_reembed:
            result["reembed"] = _reembed(ctx, registry, card["version"], say)
    best = card["validation"]["best"]
    before = card["validation"]["before"]
    emit(ctx, result, f"trained {card['version']} in {card['seconds']:.0f} s on {card['training_set']['train_photos']} "
         f"photos ({card['training_set']['classes']} classes); held-out identities: open-set score "
         f"{fmt(before['score'])} -> {fmt(best['val_score'])}, top-1 {fmt(before['top1'])} -> "
         f"{fmt(best['val_top1'])} (epoch {card['best_epoch']})"
         + ("\n  no epoch beat the starting weights on the held-out identities: the version keeps them (only the "
            "letterboxed input differs); reembedding it gains little" if card["best_epoch"] == 0 else "")
         + f"\n  checkpoint {card['checkpoint']}"
         + ("" if then_reembed else f"\n  put it in force: registry reembed --model {card['version']}"))


def _reembed(ctx: click.Context, registry, version: str | None, say) -> dict:  # type: ignore[no-untyped-def]
    versions = registry.embedder_versions
    total = sum(1 for s in registry.catalog.annotation_states().values() if s["status"] == "indexed")
    with progress_bar("reembed", total) as bar:
        return versions.reembed(version, say=say, progress=bar.update, actor=root_obj(ctx).get("actor") or "registry")


@click.command()
@click.option("--model", "version", default=None, help="Trained version (default: the newest trained one).")
@click.pass_context
def reembed(ctx: click.Context, version: str | None) -> None:
    """Move every image's vector to a trained embedder version, recalibrate, and switch the decision policy to
    it in one step (resumable: run it again after an interruption). The old vectors stay until
    `registry vectors prune`."""
    quiet = root_obj(ctx)["json"]
    say = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
    with open_registry(ctx) as registry:
        result = _reembed(ctx, registry, version, say)
    if result.get("already_in_force"):
        emit(ctx, result, f"{result['version']} is already in force")
        return
    emit(ctx, result, f"{result['annotations']} annotations now searched with {result['version']} "
         f"({result['reembedded']} embedded in this run); decision policy version {result['policy_version']}; "
         f"the previous vectors ({result['previous_collection']}) stay until `registry vectors prune`")


@click.command("trained")
@click.pass_context
def models_trained(ctx: click.Context) -> None:
    """Every embedder version of this registry: in force, parent, validation, vectors."""
    with open_registry(ctx) as registry:
        rows = registry.embedder_versions.list()
    lines = [f"{'*' if r['in_force'] else ' '} {r['version']:<48} vectors {r['vectors']:>7}"
             + (f"  trained from {r['parent']}, validation score {fmt(r['validation_score'])}" if r["trained"] else "")
             + ("  (pruned)" if r["pruned_at"] else "") for r in rows]
    emit(ctx, rows, "\n".join(lines) or "no embedder versions yet")


@click.command("export")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--model", "version", default=None, help="Trained version (default: the newest trained one).")
@click.pass_context
def models_export(ctx: click.Context, target: Path, version: str | None) -> None:
    """Write a trained model (weights, card, training curve) as one zip for another registry."""
    with open_registry(ctx) as registry:
        path = registry.embedder_versions.export(version, target)
    emit(ctx, {"exported": str(path)}, f"exported to {path}")


@click.command("install")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def models_install(ctx: click.Context, archive: Path) -> None:
    """Install a model exported from another registry of the same embedder; `registry reembed` puts it in force."""
    with open_registry(ctx) as registry:
        result = registry.embedder_versions.install(archive)
    emit(ctx, result, f"installed {result['version']}; put it in force: registry reembed --model {result['version']}")


@click.group("vectors")
def vectors_group() -> None:
    """The vector index's collections, one per embedder version."""


@vectors_group.command("prune")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.pass_context
def vectors_prune(ctx: click.Context, dry_run: bool) -> None:
    """Delete the vectors of embedder versions not in force (after a reembed)."""
    with open_registry(ctx) as registry:
        pruned = registry.embedder_versions.prune(dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    emit(ctx, pruned, "\n".join(f"{verb} {p['collection']} ({p['vectors']} vectors of {p['version']})"
                                for p in pruned) or "nothing to prune: only the version in force has vectors")


COMMANDS = [train, reembed, vectors_group]
MODEL_COMMANDS = [models_trained, models_export, models_install]
