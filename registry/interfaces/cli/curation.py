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
    attributes = data["attributes"]
    described = ", ".join(filter(None, [
        data["name"], attributes["nickname"] and f"\"{attributes['nickname']}\"",
        attributes["sex"] != "unknown" and attributes["sex"],
        attributes["life_stage"] != "unknown" and attributes["life_stage"],
        *(f"alias {a}" for a in attributes["alternate_ids"])]))
    lines = [f"{data['individual']} ({data['species']}{', ' + described if described else ''}): "
             f"{len(data['sightings'])} sightings in {data['surveys']} surveys, "
             f"first {data['first_seen']}, last {data['last_seen']}"]
    if attributes["notes"]:
        lines.append(f"  notes: {attributes['notes']}")
    for s in data["sightings"]:
        how = {"reference": "reference label", "automatic": f"automatic (score {fmt(s['score'])})",
               "confirmed": "confirmed by a reviewer", "corrected": "corrected by a reviewer"}[s["method"]]
        decision = f" decision {s['decision_id']}" if s["decision_id"] else ""
        place = s["deployment"] or s["location"]
        lines.append(f"  {s['captured_at'] or '(no date)'}  {s['survey'] or '-':<22} {how:<28}{decision:<14} "
                     + (f"{place}  " if place else "") + f"{s['image']}")
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
@click.option("--images", "images", multiple=True, required=True,
              help="Annotation id, or photo path or sha256 when the photo holds one animal (repeat).")
@click.option("--reason", default=None)
@click.pass_context
def split(ctx: click.Context, individual: str, images: tuple[str, ...], reason: str | None) -> None:
    """Move these photos' sightings from INDIVIDUAL to a new individual: two animals registered as one."""
    _curate(ctx, "split", individual, list(images), reason=reason)


@click.command()
@click.argument("individual")
@click.option("--sex", type=click.Choice(["female", "male", "unknown"]), default=None)
@click.option("--life-stage", type=click.Choice(["adult", "subadult", "juvenile", "unknown"]), default=None)
@click.option("--nickname", default=None, help="A name the field team uses ('' clears it).")
@click.option("--alternate-id", "alternate_ids", multiple=True,
              help="Its id in another catalogue, e.g. Wildbook:ZB-12 (repeat; replaces the list).")
@click.option("--clear-alternate-ids", is_flag=True)
@click.option("--notes", default=None, help="Free text ('' clears it).")
@click.option("--reason", default=None)
@click.pass_context
def edit(ctx: click.Context, individual: str, sex: str | None, life_stage: str | None, nickname: str | None,
         alternate_ids: tuple[str, ...], clear_alternate_ids: bool, notes: str | None, reason: str | None) -> None:
    """Set an individual's attributes (audited; `registry undo` reverts them)."""
    if alternate_ids and clear_alternate_ids:
        raise click.UsageError("give --alternate-id or --clear-alternate-ids, not both")
    ids = list(alternate_ids) if alternate_ids else ([] if clear_alternate_ids else None)
    _curate(ctx, "edit", individual, reason, sex=sex, life_stage=life_stage, nickname=nickname,
            alternate_ids=ids, notes=notes)


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
@click.option("--occasion-days", type=float, default=None, help="Occasions of N days from the first photo's day.")
@click.option("--occasions", "occasions_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="CSV of explicit occasions: start,end[,label] (ISO dates).")
@click.option("--robust", is_flag=True, help="Robust design: primary = survey, secondary = days within it.")
@click.option("--species", default=None)
@click.option("--format", "fmt_", type=click.Choice(["csv", "mark"]), default="csv", show_default=True,
              help="csv: individual, ch, freq, sex, life_stage, one 0/1 column per occasion (RMark/marked); "
                   "mark: Program MARK .inp (/* code */ ch freq covariates;).")
@click.pass_context
def export_capture_history(ctx: click.Context, out: Path, occasion: str, occasion_days: float | None,
                           occasions_file: Path | None, robust: bool, species: str | None, fmt_: str) -> None:
    """Individual x occasion capture histories (mark-recapture input), one species at a time."""
    from registry.curation import exports

    if sum(bool(x) for x in (occasion_days, occasions_file, robust)) > 1:
        raise click.UsageError("give one of --occasion-days, --occasions and --robust")
    with open_stores(ctx) as stores:
        ranges = exports.read_occasions(occasions_file) if occasions_file else None
        result = exports.write_capture_history(stores.catalog, out, occasion, species, fmt_, occasion_days, ranges,
                                               robust)
    emit(ctx, result, f"{result['individuals']} capture histories over {len(result['occasions'])} occasions "
                       f"({', '.join(result['occasions'][:12])}{' …' if len(result['occasions']) > 12 else ''}) "
                       f"written to {out}"
                       + (f"; time.intervals {result['time_intervals']}" if "time_intervals" in result else "")
                       + (f"; {result['undated_sightings']} sightings had no occasion"
                          if result["undated_sightings"] else ""))


@export.command("camtrap-dp")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--species", default=None)
@click.option("--title", default=None, help="The package's title (and project title).")
@click.pass_context
def export_camtrap_dp(ctx: click.Context, out_dir: Path, species: str | None, title: str | None) -> None:
    """A Camtrap DP 1.0 package (deployments, media, observations with individualID) for GBIF and camera-trap
    platforms."""
    from registry.curation import camtrap_dp

    with open_stores(ctx) as stores:
        result = camtrap_dp.export(stores.catalog, out_dir, species, title)
    emit(ctx, result, f"Camtrap DP package in {out_dir}: {result['deployments']} deployments, {result['media']} "
                      f"media, {result['observations']} observations"
                      + "".join(f"\n  warning: {p}" for p in result["problems"][:20])
                      + (f"\n  … and {len(result['problems']) - 20} more" if len(result["problems"]) > 20 else ""))


@export.command("dwc")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--species", default=None)
@click.option("--title", default=None)
@click.option("--creator", default="identity registry", show_default=True, help="The publishing organisation.")
@click.pass_context
def export_dwc(ctx: click.Context, out: Path, species: str | None, title: str | None, creator: str) -> None:
    """A Darwin Core Archive (occurrence.csv, meta.xml, eml.xml) of every sighting, for GBIF."""
    from registry.curation import darwin_core

    with open_stores(ctx) as stores:
        result = darwin_core.export(stores.catalog, out, species, title, creator)
    emit(ctx, result, f"{result['occurrences']} occurrences of {result['individuals']} individuals written to {out}")


@export.command("secr")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--epsg", type=int, required=True, help="Projected coordinate system for the detectors, in metres "
                                                      "(e.g. 32736 = UTM zone 36S).")
@click.option("--species", default=None, help="Required when the registry holds several species.")
@click.option("--occasion-days", type=float, default=1.0, show_default=True, help="Length of one occasion.")
@click.pass_context
def export_secr(ctx: click.Context, out_dir: Path, epsg: int, species: str | None, occasion_days: float) -> None:
    """Spatial capture-recapture input for R's secr: capt.txt and traps.txt (read.capthist)."""
    from registry.curation import secr

    with open_stores(ctx) as stores:
        result = secr.export(stores.catalog, out_dir, epsg, species, occasion_days)
    emit(ctx, result, f"secr input in {out_dir}: {result['detections']} detections of {result['individuals']} "
                      f"{result['species']} at {result['detectors']} detectors over {result['occasions']} occasions "
                      f"of {occasion_days:g} days from {result['first_day']}"
                      + (f"; {result['skipped_sightings']} sightings without a place or time left out"
                         if result["skipped_sightings"] else ""))


@export.command("photos")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--by", type=click.Choice(["individual"]), default="individual", show_default=True)
@click.option("--species", default=None)
@click.pass_context
def export_photos(ctx: click.Context, out_dir: Path, by: str, species: str | None) -> None:
    """A folder per individual with copies of its photos, in time order."""
    from registry.curation import exports

    with open_stores(ctx) as stores:
        result = exports.write_photos(stores.catalog, out_dir, species)
    emit(ctx, result, f"{result['photos']} photos of {result['individuals']} individuals copied to {out_dir}"
                      + (f"; {len(result['missing'])} photos not found (run `registry relocate`?)"
                         if result["missing"] else ""))


@click.command("species")
@click.argument("name", required=False)
@click.option("--scientific-name", default=None, help="Set the species' scientific name (used by the exports).")
@click.pass_context
def species_command(ctx: click.Context, name: str | None, scientific_name: str | None) -> None:
    """The registry's species with their code prefix and scientific name; set one's scientific name."""
    if scientific_name is not None:
        if name is None:
            raise click.UsageError("give the species NAME whose scientific name to set")
        with open_stores(ctx, write=True) as stores:
            stores.catalog.set_scientific_name(name, scientific_name)
    with open_stores(ctx) as stores:
        rows = [r for r in stores.catalog.species_rows() if name is None or r["name"] == name]
    emit(ctx, rows, "\n".join(f"{r['name']:<20} {r['code_prefix']:<8} {r['scientific_name'] or '(no scientific name)'}"
                              for r in rows) or "no species yet")


COMMANDS = (history, review, confirm, reassign, reject, merge, split, edit, undo, changes, show, export,
            species_command)
