"""Commands for the people who look after the registry: histories, the review queue, corrections with an audit
trail, match sheets and exports for population analysis."""

from __future__ import annotations

from pathlib import Path

import click

from registry.interfaces.cli.common import emit, fmt, open_registry, open_stores, root_obj


@click.command()
@click.argument("individual", required=False)
@click.option("--image", default=None, help="Find the individual by one of its photos (path or sha256).")
@click.pass_context
def history(ctx: click.Context, individual: str | None, image: str | None) -> None:
    """Where and when an individual (code or name, or --image) has been seen, and how each sighting was decided."""
    if (individual is None) == (image is None):
        raise click.UsageError("give an INDIVIDUAL or --image, not both")
    with open_stores(ctx) as stores:
        key = individual or stores.catalog.individual_of_image(image)  # type: ignore[arg-type]
        data = stores.catalog.history(key)
    lines = [f"{data['individual']} ({data['species']}{', ' + data['name'] if data['name'] else ''}): "
             f"{len(data['sightings'])} sightings in {data['surveys']} surveys, "
             f"first {data['first_seen']}, last {data['last_seen']}"]
    for s in data["sightings"]:
        how = {"reference": "reference label", "automatic": f"automatic (score {fmt(s['score'])})",
               "confirmed": "confirmed by a reviewer", "corrected": "corrected by a reviewer"}[s["method"]]
        decision = f" decision {s['decision_id']}" if s["decision_id"] else ""
        lines.append(f"  {s['captured_at'] or '(no date)'}  {s['survey'] or '-':<22} {how:<28}{decision:<14} "
                     f"{s['image']}")
    for m in data["merges"]:
        lines.append(f"  change {m['change']} ({m['when']}): {m['summary']}"
                     + (f" [undone by change {m['undone_by']}]" if m["undone_by"] else ""))
    emit(ctx, data, "\n".join(lines))


@click.command()
@click.option("--species", default=None)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--margin", type=float, default=0.15, show_default=True,
              help="How close to the threshold (or to the runner-up) a decision must be to need a look.")
@click.pass_context
def review(ctx: click.Context, species: str | None, limit: int, margin: float) -> None:
    """Automatic decisions that deserve a human look, most uncertain first."""
    from registry.curation.review import queue

    with open_stores(ctx) as stores:
        entries = queue(stores.catalog, species, limit, margin)
    lines = []
    for e in entries:
        lines.append(f"decision {e['decision']:<6} {e['outcome']:<5} -> {e['individual']:<10} score {fmt(e['score'])} "
                     f"(threshold {e['threshold']:g}): {e['reason']}  {e['image']}")
        for rank, c in enumerate(e["candidates"][:3], start=1):
            parts = ", ".join(f"{k} {v:.3g}" for k, v in c["calibrated"].items())
            lines.append(f"    {rank}. {c['individual']:<10} {fmt(c['score'])}  ({parts})")
    emit(ctx, entries, "\n".join(lines) or "nothing to review")


def _curate(ctx: click.Context, action: str, *args: object, **kwargs: object) -> None:
    from registry.curation.curator import Curator

    with open_stores(ctx, write=True) as stores:
        result = getattr(Curator(stores, root_obj(ctx).get("actor")), action)(*args, **kwargs)
    emit(ctx, result, f"change {result['change']}: {result['summary']}")


@click.command()
@click.argument("decision", type=int)
@click.option("--reason", default=None)
@click.pass_context
def confirm(ctx: click.Context, decision: int, reason: str | None) -> None:
    """Confirm an automatic decision (its sighting becomes 'confirmed')."""
    _curate(ctx, "confirm", decision, reason=reason)


@click.command()
@click.argument("decision", type=int)
@click.argument("individual", required=False)
@click.option("--new", is_flag=True, help="The photo shows an animal not yet in the registry.")
@click.option("--reason", default=None)
@click.pass_context
def reassign(ctx: click.Context, decision: int, individual: str | None, new: bool, reason: str | None) -> None:
    """Correct a decision: its photo shows INDIVIDUAL (or, with --new, a new individual)."""
    _curate(ctx, "reassign", decision, individual, new=new, reason=reason)


@click.command()
@click.argument("decision", type=int)
@click.option("--reason", default=None)
@click.pass_context
def reject(ctx: click.Context, decision: int, reason: str | None) -> None:
    """Mark a decision's sighting wrong (kept, but no longer counted anywhere)."""
    _curate(ctx, "reject", decision, reason=reason)


@click.command()
@click.argument("keep")
@click.argument("absorb")
@click.option("--reason", default=None)
@click.pass_context
def merge(ctx: click.Context, keep: str, absorb: str, reason: str | None) -> None:
    """Merge ABSORB into KEEP: one animal registered twice. ABSORB keeps its code and resolves to KEEP."""
    _curate(ctx, "merge", keep, absorb, reason=reason)


@click.command()
@click.argument("individual")
@click.option("--images", "images", multiple=True, required=True, help="Photo path, sha256 or image id (repeat).")
@click.option("--reason", default=None)
@click.pass_context
def split(ctx: click.Context, individual: str, images: tuple[str, ...], reason: str | None) -> None:
    """Move these photos' sightings from INDIVIDUAL to a new individual: two animals registered as one."""
    _curate(ctx, "split", individual, list(images), reason=reason)


@click.command()
@click.argument("change", type=int)
@click.option("--reason", default=None)
@click.pass_context
def undo(ctx: click.Context, change: int, reason: str | None) -> None:
    """Revert a confirm, reassignment, rejection, merge or split (if nothing changed those rows since)."""
    _curate(ctx, "undo", change, reason=reason)


@click.command()
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def changes(ctx: click.Context, limit: int) -> None:
    """The audit trail: every curation, newest first."""
    from registry.curation.curator import Curator

    with open_stores(ctx) as stores:
        rows = Curator(stores).changes(limit)
    emit(ctx, rows, "\n".join(f"{r['id']:>5} {r['when']} {r['actor']:<12} {r['kind']:<8} {r['summary']}"
                              + (f"  (why: {r['reason']})" if r["reason"] else "")
                              + (f"  [undone by {r['undone_by']}]" if r["undone_by"] else "") for r in rows)
         or "no changes yet")


@click.command()
@click.argument("decision", type=int)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@click.option("--candidates", type=int, default=3, show_default=True)
@click.pass_context
def show(ctx: click.Context, decision: int, out: Path, candidates: int) -> None:
    """Render a decision's match sheet: the query beside its top candidates, with correspondences and scores."""
    from registry.curation.sheets import render

    with open_registry(ctx) as registry:
        result = render(registry, decision, out, candidates)
    emit(ctx, result, f"match sheet written to {result['out']} ({result['size'][0]}x{result['size'][1]}, "
                      f"{result['correspondences_drawn']} correspondences drawn)")


@click.group()
def export() -> None:
    """Sightings and capture histories for population analysis."""


@export.command("sightings")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--species", default=None)
@click.pass_context
def export_sightings(ctx: click.Context, out: Path, species: str | None) -> None:
    """One row per active sighting, with metadata and decision provenance."""
    from registry.curation import exports

    with open_stores(ctx) as stores:
        count = exports.write_sightings(stores.catalog, out, species)
    emit(ctx, {"out": str(out), "sightings": count}, f"{count} sightings written to {out}")


@export.command("capture-history")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--occasion", type=click.Choice(["survey", "year", "month"]), default="survey", show_default=True)
@click.option("--species", default=None)
@click.option("--format", "fmt_", type=click.Choice(["csv", "mark"]), default="csv", show_default=True,
              help="csv: individual x occasion 0/1 matrix; mark: Program MARK .inp encounter histories.")
@click.pass_context
def export_capture_history(ctx: click.Context, out: Path, occasion: str, species: str | None, fmt_: str) -> None:
    """Individual x occasion capture histories (mark-recapture input)."""
    from registry.curation import exports

    with open_stores(ctx) as stores:
        result = exports.write_capture_history(stores.catalog, out, occasion, species, fmt_)
    emit(ctx, result, f"{result['individuals']} capture histories over {len(result['occasions'])} occasions "
                       f"({', '.join(result['occasions'])}) written to {out}"
                       + (f"; {result['undated_sightings']} sightings had no {occasion}"
                          if result["undated_sightings"] else ""))


COMMANDS = (history, review, confirm, reassign, reject, merge, split, undo, changes, show, export)
