"""Command line: `registry COMMAND`. Every command that produces results takes --json."""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from registry.curation.discovery import METHODS, DiscoveryService
from registry.ingest.ingestion import Ingestor
from registry.ingest.sources import LAYOUTS, count_items, count_rows
from registry.interfaces.cli import curation as cli_curation
from registry.interfaces.cli import training as cli_training
from registry.interfaces.cli.common import (
    RegistryGroup,
    add_json_option,
    emit,
    fmt,
    open_registry,
    open_stores,
    progress_bar,
    root_obj,
)
from registry.matching import weights_catalog
from registry.services.registry import Registry
from registry.settings import PROFILES, Settings
from registry.store.catalog import CatalogError
from registry.store.stores import vector_index_summary


@click.group(cls=RegistryGroup)
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="REGISTRY_HOME", default="registry-data",
              show_default=True, help="Registry folder: SQLite catalog, vector index, feature cache, settings.")
@click.option("--database-url", envvar="REGISTRY_DATABASE_URL", help="SQLAlchemy URL instead of SQLite.")
@click.option("--qdrant-url", envvar="REGISTRY_QDRANT_URL", help="Qdrant server instead of the embedded index.")
@click.option("--qdrant-api-key", envvar="REGISTRY_QDRANT_API_KEY")
@click.option("--wait", type=float, default=0.0, help="Seconds to wait for another process using the registry.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--actor", envvar="REGISTRY_ACTOR", default=None, help="Who makes curation changes (audit trail).")
@click.pass_context
def main(ctx: click.Context, data_dir: Path, database_url: str | None, qdrant_url: str | None,
         qdrant_api_key: str | None, wait: float, as_json: bool, actor: str | None) -> None:
    """Identity registry for individual animals: which animal is this photo, and where has it been seen?"""
    ctx.ensure_object(dict)
    ctx.obj["json"] = as_json or ctx.obj.get("json", False)
    ctx.obj["wait"] = wait
    ctx.obj["actor"] = actor
    ctx.obj["data_dir"] = data_dir
    ctx.obj["settings"] = lambda: Settings.load(data_dir, database_url, qdrant_url, qdrant_api_key)


@main.command()
@click.option("--profile", type=click.Choice(PROFILES), default=None,
              help="Pipeline profile, stored with the registry (default: offline for a new registry).")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Fetch the profile's model weights from the hub when they are not on this machine.")
@click.option("--photo-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Store photo paths relative to this folder (the archive can then move: give the new root).")
@click.option("--engine", type=click.Choice(["lightglue", "mnn"]), default=None,
              help="Local matching engine of a new registry: lightglue (default) or mnn (mutual nearest "
                   "descriptors, ~12x faster per query; measured as accurate on cropped faces and the demo's "
                   "population, not on animals in shared scenery: docs/benchmarks.md).")
@click.pass_context
def init(ctx: click.Context, profile: str | None, download: bool, photo_root: Path | None,
         engine: str | None) -> None:
    """Create a registry, or upgrade an existing one's catalog to the current schema.

    A new registry stores its profile; the profile's model weights are fetched into the registry's weights
    folder when they are not on this machine yet and the hub can be reached (`--no-download` to skip).
    """
    settings: Settings = ctx.obj["settings"]()
    if profile is not None:
        if settings.exists and settings.profile != profile:
            raise click.ClickException(
                f"this registry uses profile {settings.profile!r}; its vectors cannot be mixed with {profile!r}")
        if not settings.exists:
            settings = Settings.for_profile(profile, data_dir=settings.data_dir, database_url=settings.database_url,
                                            qdrant_url=settings.qdrant_url, qdrant_api_key=settings.qdrant_api_key)
    if photo_root is not None:
        settings.photo_root = str(photo_root.resolve())
    if engine is not None:
        if settings.exists:
            raise click.ClickException("an existing registry changes its engine with its calibration: "
                                       f"`registry calibrate --engine {engine}`")
        settings.local = replace(settings.local, engine=engine)
    progress, bars = _moving_bars()
    policy = Registry.init(settings, vector_progress=progress)
    for bar in bars.values():
        bar.close()
    settings.profile = policy.profile
    missing = []
    for status in weights_catalog.model_status(settings, download=download):
        if not status.resolved:
            missing.append(status)
            click.echo(f"warning: {status.name}: {status.error}", err=True)
    emit(ctx, {"data_dir": str(settings.data_dir), "profile": settings.profile,
                "database": settings.display_database, "policy_version": policy.version,
                "missing_models": [m.name for m in missing]},
          f"Registry ready in {settings.data_dir} (profile {settings.profile})."
          + (f" Missing model weights: {', '.join(m.name for m in missing)}." if missing else ""))


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--survey", required=True, help="Survey (season) these photos belong to.")
@click.option("--mode", type=click.Choice(["reference", "identify", "discover"]), default="reference",
              show_default=True,
              help="reference: the manifest's identities are trusted; identify: each photo is identified; "
                   "discover: identified, then the season's new animals are decided together (`registry "
                   "discover --apply`): a new site's photos of one animal become one individual.")
@click.option("--species", default=None, help="Species for sources without a species column (folders).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
              help="csv (registry or AnimalCLEF metadata.csv), identity-folders (one sub-folder per animal), "
                   "plain (a folder of unlabelled photos), camtrap-dp (a Camtrap DP package), megadetector (batch "
                   "output JSON); auto decides from SOURCE.")
@click.option("--megadetector", "megadetector", is_flag=True,
              help="SOURCE is MegaDetector batch output (md.json): each animal detection is one annotation.")
@click.option("--min-conf", "min_confidence", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="MegaDetector detections below this confidence are not used.")
@click.option("--bbox-pixels", is_flag=True, help="The manifest's bbox_x/y/w/h columns are pixels, not 0..1.")
@click.option("--locations", default=None,
              help="identify mode: match only against references photographed at these locations (comma-separated "
                   "names).")
@click.pass_context
def ingest(ctx: click.Context, source: Path, survey: str, mode: str, species: str | None, layout: str,
           megadetector: bool, min_confidence: float, bbox_pixels: bool, locations: str | None) -> None:
    """Add a season of photos from SOURCE: a CSV manifest, a Camtrap DP package, MegaDetector output or a folder.
    Safe to re-run: annotations already in the registry (same photo content, same box) are skipped, and an
    interrupted run finishes where it stopped. In identify mode an event's (burst's) photos of one animal are
    decided together."""
    settings: Settings = ctx.obj["settings"]()
    if megadetector:
        layout = "megadetector"
    total = count_items(source)
    with open_registry(ctx) as registry, progress_bar(f"ingest {survey}", total) as bar:
        report = Ingestor(registry).ingest(
            source, survey, "identify" if mode == "discover" else mode, species, progress=bar.update,
            layout=layout, bbox_pixels=bbox_pixels, min_confidence=min_confidence, locations=_names(locations))
        discovered, not_discovered = None, None
        if mode == "discover":  # the season is recorded whatever discovery says; a refusal is reported, not raised
            try:
                discovered = DiscoveryService(registry).discover(
                    survey, species, apply=True, actor=root_obj(ctx).get("actor") or "registry ingest --mode discover")
            except CatalogError as exc:
                not_discovered = str(exc)
    data = report.to_json()
    if discovered is not None:
        data["discovered"] = discovered
    if not_discovered is not None:
        data["not_discovered"] = not_discovered
    reports = settings.data_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    stem = f"ingest-{datetime.now():%Y%m%d-%H%M%S}-{re.sub(r'[^A-Za-z0-9_.-]', '_', survey)}"
    problems_path = reports / f"{stem}-problems.csv"
    with open(problems_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "row", "reason"])
        writer.writerows([p.source, p.line, p.reason] for p in report.problems)
    data["problems_file"] = str(problems_path)
    report_path = reports / f"{stem}.json"
    report_path.write_text(json.dumps(data, indent=2) + "\n")
    data["report"] = str(report_path)
    if report.added == 0 and report.already_present and not report.problems:
        lines = [f"{survey}: nothing new: all {report.already_present} photos are already in the registry."]
    else:
        lines = [f"{survey}: {report.added} added, {report.already_present} already in the registry, "
                 f"{len(report.problems)} skipped."]
    if report.resumed:
        lines.append(f"  finished {report.resumed} photos left pending by an interrupted run")
    if mode in ("identify", "discover"):
        lines.append(f"  decisions: {data['matched']} matched to known individuals, "
                     f"{data['new_individuals']} new individuals")
    if discovered is not None:
        lines.append("  discovered: " + _discovered_line(discovered))
    if not_discovered is not None:
        lines.append(f"  discovery not run: {not_discovered}")
    lines += [f"  skipped {p}" for p in report.problems[:20]]
    if len(report.problems) > 20:
        lines.append(f"  ... and {len(report.problems) - 20} more in {problems_path}")
    lines += [f"  note: {w}" for w in report.warnings[:10]]
    lines.append(f"  report: {report_path} (problems: {problems_path})")
    emit(ctx, data, "\n".join(lines))
    if report.problems:
        ctx.exit(3)  # something was skipped: scripts can tell a clean season from a partial one


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--species", default=None, help="Species of the photos (default: the registry's only species).")
@click.option("--viewpoint", default=None)
@click.option("--record", is_flag=True, help="Record each decision as a sighting (or a new individual).")
@click.option("--survey", default=None, help="Survey to file recorded photos under.")
@click.option("--box", default=None, help="The animal's box in the photo: x,y,w,h normalised to 0..1 (top-left "
                                          "origin); default: the whole photo.")
@click.option("--locations", default=None,
              help="Match only against references photographed at these locations (comma-separated names).")
@click.pass_context
def identify(ctx: click.Context, images: tuple[Path, ...], species: str | None, viewpoint: str | None,
             record: bool, survey: str | None, box: str | None, locations: str | None) -> None:
    """Identify photos (or the animal in --box): ranked candidate individuals with scores, and the decision."""
    region = _box(box)
    results, lines = [], []
    with open_registry(ctx) as registry:
        if species is None:
            known = registry.catalog.species()
            if len(known) != 1:
                raise click.UsageError(f"give --species; this registry holds {', '.join(known) or 'no photos yet'}")
            species = known[0]
        for image in images:
            result = registry.identify(image, species, viewpoint, record=record, survey=survey, box=region,
                                       locations=_names(locations))
            results.append(result.to_json())
            outcome = result.outcome
            verdict = (f"match {outcome.ranked[0].code}" if outcome.outcome == "match" else "new individual")
            if result.individual_code:
                verdict += f" -> recorded as {result.individual_code} (decision {result.decision_id})"
            lines.append(f"{image}: {verdict}  (score {outcome.score}, threshold {outcome.threshold})")
            lines += [f"   {rank}. {c.code:<12} score {c.score:8.2f}"
                      for rank, c in enumerate(outcome.ranked[:5], start=1)]
    emit(ctx, results, "\n".join(lines))


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _box(text: str | None) -> tuple[float, float, float, float] | None:
    if not text:
        return None
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: give x,y,w,h (four numbers)", param_hint="--box") from exc
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 - x + 1e-6 and 0 < h <= 1 - y + 1e-6):
        raise click.BadParameter(f"{text!r}: normalised x,y,w,h inside the photo", param_hint="--box")
    return (x, y, w, h)


@main.command()
@click.option("--species", default=None, help="Only this species (default: every species).")
@click.option("--margin", type=float, default=0.1, show_default=True,
              help="List pairs whose best cross-match is at least tau minus this.")
@click.option("--photos", "photos_per_individual", type=int, default=2, show_default=True,
              help="Photos of each individual matched against the others.")
@click.pass_context
def duplicates(ctx: click.Context, species: str | None, margin: float, photos_per_individual: int) -> None:
    """Possible duplicates: pairs of individuals whose photos match each other (reviewed in the workspace's
    "Possible duplicates" page, merged there or with `registry merge`)."""
    from registry.interfaces.web.routes import DUPLICATES_REPORT
    from registry.services.duplicates import find_duplicates

    settings: Settings = ctx.obj["settings"]()
    with open_registry(ctx) as registry:
        total = len(registry.catalog.individuals(species))
        with progress_bar("duplicates", total) as bar:
            report = find_duplicates(registry, species, margin, photos_per_individual, progress=bar.update)
    out = settings.data_dir / "reports" / DUPLICATES_REPORT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"{report['checked']} individuals checked: {len(report['pairs'])} possible duplicates ({out})"]
    lines += [f"  {p['individual']} ~ {p['other']}  score {p['score']:.3f} (tau {p['threshold']:.3f})"
              for p in report["pairs"][:20]]
    emit(ctx, {**report, "report": str(out)}, "\n".join(lines))


@main.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="MegaDetector batch output to write (md.json); ingest it with `registry ingest OUT --megadetector`.")
@click.option("--species", default=None, help="Species of the animals (MegaDetector only says 'animal').")
@click.option("--weights", "weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="MegaDetector v5a weights (md_v5a.0.0.pt); default: the registry's weights folder.")
@click.option("--tiny-random-for-tests", "tiny", is_flag=True, hidden=True,
              help="A random detector with MegaDetector's interface: meaningless boxes, for tests only.")
@click.pass_context
def detect(ctx: click.Context, photos: tuple[Path, ...], out: Path, species: str | None, weights: Path | None,
           tiny: bool) -> None:
    """Find the animals in PHOTOS (files or folders) with MegaDetector and write its batch output."""
    from registry.ingest.sources import IMAGE_SUFFIXES
    from registry.matching.detection import MegaDetector, TinyRandomDetector, write_batch_output
    from registry.matching.weights import WeightsNotFoundError

    settings: Settings = ctx.obj["settings"]()
    files = sorted({p.resolve() for photo in photos
                    for p in ([photo] if photo.is_file() else photo.rglob("*"))
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES})
    try:
        detector = TinyRandomDetector() if tiny else MegaDetector(settings.weights_dir, weights,
                                                                  settings.allow_download)
    except (ImportError, WeightsNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    with progress_bar("detect", len(files)) as bar:
        result = write_batch_output(detector, files, out, species, progress=bar.update)
    emit(ctx, result, f"{result['photos']} photos, {result['detections']} detections, {result['failures']} "
                      f"unreadable -> {out}" + ("" if detector.real else "  (TEST DETECTOR: boxes are meaningless)"))


@main.command()
@click.option("--species", default=None)
@click.pass_context
def individuals(ctx: click.Context, species: str | None) -> None:
    """List individuals with their number of sightings."""
    with open_stores(ctx) as stores:
        rows = stores.catalog.individuals(species)
    lines = [f"{r['code']:<12} {r['species']:<14} {r['name'] or '':<20} {r['sightings']:>4} sightings  "
             f"{r['first_seen'] or ''} .. {r['last_seen'] or ''}" for r in rows]
    emit(ctx, rows, "\n".join(lines) or "no individuals")


@main.command()
@click.pass_context
def stats(ctx: click.Context) -> None:
    """Counts of individuals, images, annotations, sightings, decisions; the vector index's engine and points."""
    with open_stores(ctx) as stores:
        data: dict[str, Any] = dict(stores.catalog.stats())
        data["vector_index"] = vector_index_summary(stores)
    lines = [f"{k:<16} {v}" for k, v in data.items() if k != "vector_index"]
    vectors = data["vector_index"]
    lines.append(f"{'vector index':<16} {vectors['engine']}, {vectors['points']} points"
                 + (" (counted in the catalog: the index is open in another process)"
                    if vectors["counted_from"] == "catalog" else ""))
    emit(ctx, data, "\n".join(lines))


def _discovered_line(report: dict[str, Any]) -> str:
    parts = []
    for sp, entry in report["species"].items():
        cut = entry["cut"]
        how = (f"{cut.get('method', 'average')} linkage, cut {cut['cut']:.2f}"
               + (f" (ARI {cut['ari']:.2f} on {cut['photos']} labelled photos)"
                                          if "ari" in cut else "")) if cut.get("cut") is not None \
            else f"not clustered ({cut.get('reason')})"
        parts.append(f"{sp}: {entry['provisional_individuals']} provisional individuals"
                     + (f" -> {entry['individuals_after']} animals" if "individuals_after" in entry else "")
                     + f", {how}")
    merged = f"; {len(report['applied'])} merges applied (each undoable)" if report["applied"] else ""
    return "; ".join(parts or ["no provisional individuals in this survey"]) + merged


@main.command()
@click.option("--survey", required=True, help="The survey whose new individuals are decided together.")
@click.option("--species", default=None, help="Only this species.")
@click.option("--cut", type=click.FloatRange(0, 1), default=None,
              help="Cluster where pairs score at least this (default: chosen on the labelled photos by ARI).")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="average: average linkage over every pair; mutual-K: only between units each among the other's K "
                   "most similar (default: chosen with the cut; with --cut, average).")
@click.option("--apply", "apply_", is_flag=True,
              help="Merge each proposed animal's individuals into one (audited, each merge undoable).")
@click.pass_context
def discover(ctx: click.Context, survey: str, species: str | None, cut: float | None, method: str | None,
             apply_: bool) -> None:
    """Decide a survey's new animals together: its provisional new individuals (each made by one "new" decision,
    nobody vouched for them) are scored pair by pair and clustered; each cluster of two or more is one animal.
    Without --apply, only the proposals are shown."""
    with open_registry(ctx) as registry:
        report = DiscoveryService(registry).discover(survey, species, cut, apply_,
                                                     actor=root_obj(ctx).get("actor") or "registry discover",
                                                     method=method)
    lines = [f"{survey}: " + _discovered_line(report)]
    for proposal in report["proposals"]:
        lines.append(f"  one animal ({proposal['species']}, weakest link {proposal['cohesion']:.2f}): "
                     + ", ".join(proposal["individuals"]))
    if report["proposals"] and not apply_:
        lines.append("  (proposals only: --apply merges them)")
    emit(ctx, report, "\n".join(lines))


@main.command()
@click.option("--species", default=None, help="Only this species' labelled photos.")
@click.option("--pairs", type=int, default=None, help="Same-individual pairs (and as many others) per species.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--learned/--no-learned", default=True, show_default=True, help="Also fit the learned fusion.")
@click.option("--self-tune/--no-self-tune", default=True, show_default=True,
              help="Choose tau per species on simulated open-set queries of the labelled photos.")
@click.option("--matching", default=None, metavar="JSON",
              help='Per-species matching overrides put in force with this calibration, e.g. '
                   '\'{"cow": {"lnbnn_individuals": 20, "lnbnn_photos": 2}}\' ({} clears a species\'); fields: '
                   'max_keypoints (at most the described budget), first_pass_keypoints, full_rerank_individuals, '
                   'lnbnn_individuals, lnbnn_photos.')
@click.option("--engine", type=click.Choice(["mnn", "lightglue"]), default=None,
              help="Switch the local matching engine (mutual nearest descriptors, ~2 ms a pair, or LightGlue, "
                   "~365 ms a pair on a 2-core CPU) with this calibration; every species is recalibrated.")
@click.option("--distinctive/--no-distinctive", default=None,
              help="Switch the distinctive pair score on or off with this calibration: correspondences count only "
                   "where they match the candidate's animal better than any other shortlisted animal (scenery "
                   "several animals share never votes). On by default in new registries.")
@click.option("--static-scenery/--no-static-scenery", default=None,
              help="Switch the fixed-camera scenery mask on or off with this calibration: keypoints of a "
                   "deployment's whole photos that recur at the same place in its photos of other animals are "
                   "dropped before matching. Off by default.")
@click.option("--second-matcher", type=click.Choice(["disk", "none"]), default=None,
              help="Measure a second local matcher (DISK + LightGlue) on every species' labelled pairs and keep it "
                   "for the species where the fusion with it separates them better (out of sample, by more than "
                   "the setting second_matcher_margin); 'none' drops it. Costs ~0.4-0.6 s of CPU per photo.")
@click.pass_context
def calibrate(ctx: click.Context, species: str | None, pairs: int | None, seed: int, learned: bool,
              self_tune: bool, matching: str | None, engine: str | None, distinctive: bool | None,
              static_scenery: bool | None, second_matcher: str | None) -> None:
    """Fit each matcher's score calibration (isotonic) on the registry's labelled photos, choose tau per species
    on simulated open-set queries (leave-identities-out), and put both in force as a new decision policy."""
    overrides = None
    if matching is not None:
        try:
            overrides = json.loads(matching)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON ({exc})", param_hint="--matching") from exc
        if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
            raise click.BadParameter('give {"SPECIES": {"FIELD": VALUE, ...}, ...}', param_hint="--matching")
    with open_registry(ctx) as registry:
        total = 2 * (pairs or registry.settings.calibration_pairs) * max(1, len(registry.catalog.species()))
        with progress_bar("calibration pairs", total) as bar:
            summary = registry.calibrate(pairs, species, seed, learned, progress=bar.update,
                                         actor=root_obj(ctx).get("actor") or "registry calibrate",
                                         self_tune=self_tune, matching=overrides, engine=engine,
                                         distinctive=distinctive, static_scenery=static_scenery,
                                         second_matcher={"none": ""}.get(second_matcher, second_matcher))
    second = summary.get("second_matcher")
    emit(ctx, summary, f"calibrated on {summary['pairs']} labelled pairs ({summary['positives']} same individual, "
          f"{summary['negatives']} different): {', '.join(summary['calibrators'])}"
          + (f"; second local matcher {second['name']}: " + ", ".join(
              f"{sp} {'kept' if r['kept'] else 'not kept'} ("
              + (f"AUC {r['auc_without']:.3f} without, {r['auc_with']:.3f} with" if "auc_with" in r
                 else r["reason"]) + ")" for sp, r in second["per_species"].items()) if second else "")
          + (f"; pooled only (too few pairs): {', '.join(summary['pooled_only'])}" if summary["pooled_only"] else "")
          + "".join(f"; {sp}: {_expected_text(r)}" for sp, r in summary["self_tuned"].items())
          + f"; decision policy version {summary['policy_version']} in force")


@main.command()
@click.option("--queries", type=click.Path(exists=True, path_type=Path), required=True,
              help="Labelled validation photos (not recorded); identities may or may not be in the registry.")
@click.option("--alpha/--no-alpha", "tune_alpha", default=True, show_default=True, help="Also choose alpha.")
@click.pass_context
def tune(ctx: click.Context, queries: Path, tune_alpha: bool) -> None:
    """Choose the open-set threshold per species (and alpha) that maximises the AnimalCLEF score; store them."""
    from registry.evaluate import experiments

    with open_registry(ctx) as registry, progress_bar("validation", count_rows(queries)) as bar:
        result = experiments.tune(registry, queries, tune_alpha, progress=bar.update,
                                  actor=root_obj(ctx).get("actor") or "registry tune")
    emit(ctx, result, f"{result['fusion']}: alpha {result['alpha']:g}; thresholds "
          + ", ".join(f"{sp} {tau:.2f}" for sp, tau in result["thresholds"].items())
          + f" (score before {fmt(result['score_before'])}, after on these photos "
          + f"{fmt(result['score_after_on_these_queries'])}); decision policy version {result['policy_version']}")


@main.command()
@click.argument("manifest", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--reference", type=click.Path(exists=True, path_type=Path), help="Labelled reference manifest.")
@click.option("--queries", type=click.Path(exists=True, path_type=Path), help="Labelled query manifest.")
@click.option("--split", is_flag=True, help="Split MANIFEST into reference and queries (open set) first.")
@click.option("--unknown-fraction", type=float, default=0.3, show_default=True)
@click.option("--max-identities", type=int, default=None, help="With --split: a seeded subset of identities.")
@click.option("--species", default=None, help="Species for manifests without a species column.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--protocol", type=click.Choice(["closed", "sequential", "discover"]), default="closed",
              show_default=True,
              help="closed: queries against the reference only; sequential: each query recorded before the next; "
                   "discover: sequential, then the season's new animals decided together (ARI before and after).")
@click.option("--profile", type=click.Choice(PROFILES), default="offline", show_default=True)
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Keep the evaluation registry here (default: a temporary folder).")
@click.option("--exhaustive", "exhaustive_limit", type=int, default=0,
              help="Also run the paper's exhaustive path on the first N queries, with wall time.")
@click.option("--shortlist", type=int, default=100, show_default=True, help="Exhaustive path's shortlist size B.")
@click.option("--limit", type=int, default=None, help="Only N queries (a seeded random subset, run in time order).")
@click.option("--calibration-pairs", type=int, default=None)
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="PNG of score distributions and sweep.")
@click.option("--out", "json_out", type=click.Path(path_type=Path), default=None, help="Write the JSON report here.")
@click.option("--train", "train_epochs", type=int, default=None, metavar="EPOCHS",
              help="First fine-tune the global embedder on the reference photos for EPOCHS epochs (`registry "
                   "train`), reembed and recalibrate; the queries never train.")
@click.option("--engine", type=click.Choice(["mnn", "lightglue"]), default=None,
              help="The evaluation registry's local matching engine (default: a new registry's).")
@click.pass_context
def evaluate(ctx: click.Context, manifest: Path | None, reference: Path | None, queries: Path | None, split: bool,
             unknown_fraction: float, max_identities: int | None, species: str | None, seed: int, protocol: str,
             profile: str, work_dir: Path | None, exhaustive_limit: int, shortlist: int, limit: int | None,
             calibration_pairs: int | None, plot: Path | None, json_out: Path | None,
             train_epochs: int | None, engine: str | None) -> None:
    """Accuracy on labelled photos: BAKS, BAUS, their geometric mean, top-1/top-5, per species and overall."""
    import tempfile

    from registry.evaluate import experiments

    with tempfile.TemporaryDirectory(prefix="registry-evaluate-") as tmp:
        work = work_dir or Path(tmp)
        if work_dir and (work / "registry").exists():
            raise click.UsageError(f"{work / 'registry'} exists: choose an empty --work-dir")
        split_info = None
        if split:
            if manifest is None:
                raise click.UsageError("--split needs a MANIFEST")
            split_info = experiments.split_manifest(manifest, work, unknown_fraction, seed, species, max_identities)
            reference, queries = Path(split_info["reference"]), Path(split_info["queries"])
        if reference is None or queries is None:
            raise click.UsageError("give --reference and --queries, or MANIFEST --split")
        say = (lambda _m: None) if ctx.obj["json"] else (lambda m: click.echo(m, err=True))
        recipe = None
        if train_epochs:
            from registry.learning.trainer import TrainSettings

            recipe = TrainSettings(epochs=train_epochs)
        report = experiments.run(reference, queries, work, profile, protocol, exhaustive_limit, shortlist,
                                 calibration_pairs, limit, plot, say, progress_bar, train=recipe, engine=engine)
        report["split"] = split_info
    if json_out:
        json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    emit(ctx, report, _evaluation_text(report))


def _evaluation_text(report: dict[str, Any]) -> str:
    def line(name: str, block: dict[str, Any]) -> str:
        ci = block.get("score_ci95")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        return (f"  {name:<58} BAKS {fmt(block['baks'])}  BAUS {fmt(block['baus'])}  score {fmt(block['score'])}"
                f"{interval}  top-1 {fmt(block['top1'])}  top-5 {fmt(block['top5'])}  queries {block['queries']}")

    lines = [f"reference {report['reference_images']} photos; protocol {report['protocol']}"]
    if "training" in report:
        t = report["training"]
        lines.append(f"trained {t['version']} on the reference ({t['seconds']:.0f} s, best epoch {t['best_epoch']}): "
                     f"held-out validation score {fmt(t['validation']['before']['score'])} -> "
                     f"{fmt(t['validation']['best']['val_score'])}")
    lines.append(line("registry decisions", report["overall"]))
    for species, block in report["per_species"].items():
        lines.append(line(f"  {species}", block))
    for name, result in report.get("configurations", {}).items():
        lines.append(line(name, result["overall"]))
    for key, label in (("clustering_before_discovery", "clustering, one photo at a time"),
                       ("clustering", "clustering" + (", after discovery" if "discovery" in report else "")),
                       ("clustering_unknown_before_discovery", "unknown animals only, one photo at a time"),
                       ("clustering_unknown", "unknown animals only"
                        + (", after discovery" if "discovery" in report else ""))):
        if key in report:
            c = report[key]
            lines.append(f"  {label}: ARI {fmt(c.get('ari'))}, pairwise precision {fmt(c['pairwise_precision'])} "
                         f"recall {fmt(c['pairwise_recall'])} F1 {fmt(c['pairwise_f1'])}; individuals created "
                         f"{c['individuals_created']} vs true {c['individuals_true']}")
    if "sweep" in report:
        b = report["sweep"]["best"]["overall"]
        lines.append(f"  sweep: best alpha {b['alpha']:g}, tau {b['tau']:.2f} -> score {fmt(b['score'])}"
                     " (chosen on these queries: an upper bound)")
    if "exhaustive" in report:
        e = report["exhaustive"]
        for name in ("registry_ann", "exhaustive"):
            lines.append(f"  {name:<18} score {fmt(e[name]['score'])}  top-1 {fmt(e[name]['top1'])}  "
                         f"{e[name]['seconds_per_query']:.2f} s/query  ({e['queries']} queries)")
    if report.get("plot"):
        lines.append(f"  plot: {report['plot']}")
    if report.get("skipped"):
        lines.append(f"  skipped {len(report['skipped'])} photos (see --out JSON)")
    return "\n".join(lines)


@main.command()
@click.option("--repair", is_flag=True, help="Rewrite vectors, payloads and cached features from SQL and photos.")
@click.pass_context
def doctor(ctx: click.Context, repair: bool) -> None:
    """Check that SQL, the vector index and the feature cache agree (and repair them with --repair)."""
    from registry.ingest import doctor as checks

    with open_registry(ctx, repairing=True) as registry:
        result = checks.check(registry, repair=repair)
    lines = [f"{result['annotations']} annotations checked: "
             + ("consistent." if result["consistent"] else f"{len(result['problems'])} problems")]
    for p in result["problems"][:50]:
        lines.append(f"  {p['kind']:<18} annotation {p['annotation_id']:<7} {p['collection'] or '':<40} {p['detail']}"
                     + ("  [repaired]" if p["repaired"] else ""))
    if repair and result["problems"]:
        lines.append(f"repaired {result['repaired']}, left {result['unrepaired']}")
    elif result["problems"]:
        lines.append("run `registry doctor --repair` to fix them")
    for r in result["unfinished_reembeds"]:
        lines.append(f"  unfinished reembed: {r['version']} has {r['vectors']} of {r['annotations']} vectors and "
                     "is not "
                     f"in force; `registry reembed --model {r['version']}` finishes it")
    emit(ctx, result, "\n".join(lines))
    if result["unrepaired"]:
        ctx.exit(5)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes (more than one needs PostgreSQL and a Qdrant server).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Serve the HTTP API (OpenAPI document at /openapi.json, interactive docs at /docs)."""
    import os

    import uvicorn

    settings: Settings = ctx.obj["settings"]()
    if workers > 1 and settings.needs_exclusive_lock:
        raise click.UsageError("several workers need --database-url (PostgreSQL) and --qdrant-url (a Qdrant server)")
    if workers > 1:  # each worker builds its own app from the environment
        os.environ["REGISTRY_HOME"] = str(settings.data_dir)
        for name, value in (("REGISTRY_DATABASE_URL", settings.database_url),
                            ("REGISTRY_QDRANT_URL", settings.qdrant_url),
                            ("REGISTRY_QDRANT_API_KEY", settings.qdrant_api_key)):
            if value:
                os.environ[name] = value
        uvicorn.run("registry.interfaces.api:app_from_environment", factory=True, host=host, port=port, workers=workers)
        return
    from registry.interfaces.api import create_app

    uvicorn.run(create_app(settings, Registry(settings, lock_wait=ctx.obj["wait"])), host=host, port=port)


@main.group("token")
def token_group() -> None:
    """Bearer tokens for the HTTP API."""


@token_group.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "review", "admin"]), default="review", show_default=True,
              help="read: browse; review: also identify and decide; admin: also ingest, merge, split, undo.")
@click.option("--expires-days", type=float, default=None, help="The token stops working after this many days.")
@click.pass_context
def token_create(ctx: click.Context, name: str, scope: str, expires_days: float | None) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    from registry.interfaces import tokens

    with open_stores(ctx) as stores:
        token = tokens.create(stores.catalog, name, scope, expires_days)
    emit(ctx, {"name": name, "token": token, "scope": scope, "expires_days": expires_days},
         f"{scope} token for {name} (shown once, keep it secret):\n{token}")


@token_group.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    from registry.interfaces import tokens

    with open_stores(ctx) as stores:
        rows = tokens.listing(stores.catalog)
    emit(ctx, rows, "\n".join(f"{r['name']:<30} {r['scope']:<7} created {r['created_at']}"
                               + (f"  expires {r['expires_at']}" if r["expires_at"] else "")
                               + (f"  revoked {r['revoked_at']}" if r["revoked_at"] else "") for r in rows)
         or "no tokens")


@token_group.command("revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    from registry.interfaces import tokens

    with open_stores(ctx) as stores:
        tokens.revoke(stores.catalog, name)
    emit(ctx, {"revoked": name}, f"token {name} revoked")


def _moving_bars() -> tuple[Any, dict[str, Any]]:
    """A progress callback for moving vectors between engines: a bar per collection."""
    bars: dict[str, Any] = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.get(name) or bars.setdefault(name, progress_bar(f"moving {name}", total))
        bar.n = done
        bar.refresh()

    return progress, bars


@cli_training.vectors_group.command("migrate")
@click.option("--to-server", "to_server", metavar="URL", default=None,
              help="Instead: copy this registry's embedded vectors to a Qdrant server or cluster at URL (then run "
                   "with --qdrant-url URL).")
@click.option("--to-server-api-key", default=None, envvar="REGISTRY_QDRANT_API_KEY")
@click.pass_context
def vectors_migrate(ctx: click.Context, to_server: str | None, to_server_api_key: str | None) -> None:
    """Copy local-mode collections (`<data dir>/qdrant/`) into Qdrant Edge; resumable, checked by count. The old
    folder stays until you delete it (`registry init` runs the same step). With --to-server, copy the embedded
    collections to a Qdrant server instead."""
    from registry.store.locking import RegistryLock
    from registry.store.vector_migration import copy_to_server, migrate_legacy_vectors

    settings: Settings = root_obj(ctx)["settings"]()
    lock = RegistryLock(settings.data_dir)
    lock.acquire(wait=root_obj(ctx)["wait"])
    try:
        progress, bars = _moving_bars()
        if to_server:
            copied = copy_to_server(settings, to_server, to_server_api_key, progress=progress)
            result = {"collections": copied, "skipped": [], "moved": bool(copied), "to": to_server}
        else:
            result = migrate_legacy_vectors(settings, progress=progress)
        for bar in bars.values():
            bar.close()
    finally:
        lock.release()
    moved = result["collections"]
    emit(ctx, result, "nothing to move: the vectors are in Qdrant Edge" if not result["moved"] else
         "moved into Qdrant Edge: " + ", ".join(f"{n} ({c} points)" for n, c in moved.items())
         + (f"; already there: {', '.join(result['skipped'])}" if result["skipped"] else ""))


@main.group("models")
def models_group() -> None:
    """Model weights: the profile's (where, fetching, checking) and trained versions (list, export, install)."""


@models_group.command("list")
@click.argument("names", nargs=-1)
@click.pass_context
def models_list(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Each model of the profile (or NAMES): found or not, where, and its SHA-256."""
    settings: Settings = root_obj(ctx)["settings"]()
    statuses = weights_catalog.model_status(settings, names)
    _emit_models(ctx, settings, statuses)
    if not all(s.resolved for s in statuses):
        ctx.exit(4)


@models_group.command("download")
@click.argument("names", nargs=-1)
@click.pass_context
def models_download(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Fetch weights into the registry's weights folder (on a connected machine, before going offline)."""
    settings: Settings = root_obj(ctx)["settings"]()
    statuses = weights_catalog.model_status(settings, names, download=True)
    _emit_models(ctx, settings, statuses)
    if not all(s.resolved for s in statuses):
        ctx.exit(4)


@models_group.command("verify")
@click.argument("names", nargs=-1)
@click.pass_context
def models_verify(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Load each model strictly into its architecture: truncated or foreign files fail."""
    settings: Settings = root_obj(ctx)["settings"]()
    statuses = weights_catalog.verify(settings, names)
    _emit_models(ctx, settings, statuses)
    if not all(s.resolved and s.verified for s in statuses):
        ctx.exit(4)


def _emit_models(ctx: click.Context, settings: Settings, statuses: list[weights_catalog.ModelStatus]) -> None:
    lines = [f"profile {settings.profile}; weights folder {settings.weights_dir}"]
    for s in statuses:
        if s.resolved:
            check = {True: "  verified", False: "  FAILED", None: ""}[s.verified]
            lines.append(f"  {s.name:<22} {s.source:<12} sha256 {s.sha256[:16]}  {s.path}{check}")
            if s.verified is False:
                lines.append(f"      {s.error}")
        else:
            lines.append(f"  {s.name:<22} MISSING\n      " + (s.error or "").replace("\n", "\n      "))
    emit(ctx, [s.to_json() for s in statuses], "\n".join(lines))


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--individuals", "n_individuals", type=int, default=20, show_default=True)
@click.option("--seasons", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--camera-traps", is_flag=True,
              help="Photos from camera stations in bursts; each season also as a Camtrap DP package.")
@click.option("--fixed-scenery", is_flag=True,
              help="With --camera-traps: each station's camera sees the same scenery in every photo.")
@click.pass_context
def synth(ctx: click.Context, out_dir: Path, n_individuals: int, seasons: int, seed: int, camera_traps: bool,
          fixed_scenery: bool) -> None:
    """Generate a synthetic spotted population: images and manifests with true identities."""
    from registry.evaluate import synth as synthetic

    if fixed_scenery and not camera_traps:
        raise click.UsageError("--fixed-scenery describes camera stations: add --camera-traps")
    with tqdm(desc="synth", unit="img", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        records = synthetic.generate(out_dir, n_individuals, seasons, seed, progress=bar.update,
                                     camera_traps=camera_traps, fixed_scenery=fixed_scenery)
    data = {"out_dir": str(out_dir), "images": len(records), "individuals": len({r.identity for r in records}),
            "manifests": [str(out_dir / f"season{k}" / "manifest.csv") for k in range(1, seasons + 1)]}
    if camera_traps:
        data["camtrap_dp"] = [str(out_dir / f"season{k}" / "camtrap-dp") for k in range(1, seasons + 1)]
    emit(ctx, data, f"{data['images']} photos of {data['individuals']} individuals in {out_dir}; manifests:\n  "
          + "\n  ".join(data["manifests"])
          + ("\nCamtrap DP packages:\n  " + "\n  ".join(data["camtrap_dp"]) if camera_traps else ""))


@main.command()
@click.option("--individuals", "n_individuals", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.pass_context
def demo(ctx: click.Context, n_individuals: int, seed: int) -> None:
    """Synthesise two seasons, ingest season 1 as reference, identify season 2 photo by photo, report."""
    from registry.evaluate.demo import run_demo

    data_dir = ctx.obj["data_dir"]
    if ctx.parent and ctx.parent.get_parameter_source("data_dir") == click.core.ParameterSource.DEFAULT:
        data_dir = Path("registry-demo")  # never mix the demo into the default registry
    started = time.monotonic()
    say = (lambda _m: None) if ctx.obj["json"] else click.echo
    report = run_demo(data_dir, n_individuals, seed, say=say, progress_factory=progress_bar)
    e = report["overall"]
    lines = [
        "",
        f"Demo finished in {time.monotonic() - started:.0f} s. Registry: {report['registry']}",
        f"  reference photos (season 1): {report['reference_images']}",
        f"  decisions (season 2):       {report['decisions']}  -> {report['matched']} matched to a known "
        f"individual, {report['new_individuals_created']} new individuals created "
        f"(truth: {report['new_individuals_in_truth']} animals were new)",
        f"  accuracy against the truth: BAKS {fmt(e['baks'])}  BAUS {fmt(e['baus'])}  "
        f"score (geometric mean) {fmt(e['score'])}  top-1 {fmt(e['top1'])}",
        f"  registry now: {report['stats']['individuals']} individuals, {report['stats']['images']} images, "
        f"{report['stats']['sightings']} sightings",
    ]
    if report["history_sample"]:
        h = report["history_sample"]
        lines.append(f"  sample history: registry --data-dir {report['registry']} history {h['individual']}")
        for s in h["sightings"]:
            lines.append(f"    {s['captured_at']}  {s['survey']:<20} {s['method']:<10} {Path(s['image']).name}")
    registry_dir = report["registry"]
    report["workspace"] = {"url": "http://127.0.0.1:8000/", "serve": f"registry --data-dir {registry_dir} serve",
                           "token": f"registry --data-dir {registry_dir} token create reviewer --scope admin"}
    lines += ["", "Review the decisions in the web workspace:",
              f"  {report['workspace']['token']}   # prints a token once: paste it on the sign-in page",
              f"  {report['workspace']['serve']}",
              f"  then open {report['workspace']['url']}"]
    emit(ctx, report, "\n".join(lines))


@main.group("policy")
def policy_group() -> None:
    """The decision policy: profile, model versions, calibrations, fusion, alpha and tau per species."""


def _policy_text(p: dict[str, Any]) -> str:
    taus = ", ".join(f"{sp} {tau:.2f}" for sp, tau in sorted(p["thresholds"].items())) or "none"
    batches = ", ".join(f"{sp} batch {b}" for sp, b in sorted(p["calibration_batches"].items())) or "not calibrated"
    return (f"version {p['version']} ({p['created_at']}, by {p['created_by']}): {p['reason']}\n"
            f"  profile {p['profile']}; fusion {p['fusion']}, alpha {p['alpha']:g}; tau {p['default_threshold']:.2f}"
            f" (per species: {taus}); calibrations: {batches}; before calibration: "
            f"{p['uncalibrated_threshold']:g} LightGlue matches"
            + "".join(f"\n  {sp}: {_expected_text(r)}"
                      for sp, r in sorted(((p.get("expected") or {}).get("self_tuned") or {}).items())))


def _expected_text(tuned: dict[str, Any]) -> str:
    """What self-tuning expects of a species' tau: the score on its simulated queries, with its interval."""
    if tuned.get("tau") is None:
        return f"tau not tuned ({tuned.get('reason')})"
    expected = tuned["expected"]
    interval = expected.get("score_ci95")
    shrunk = (f" (fitted {tuned['fitted_tau']:.2f}, shrunk toward {tuned['prior_tau']:.2f} by "
              f"{tuned['prior_queries']} pseudo-queries)" if "fitted_tau" in tuned else "")
    return (f"tau {tuned['tau']:.2f}{shrunk}; expected score {fmt(expected['score'])}"
            + (f" [95 % {interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
            + f" on {tuned['known_queries']} known + {tuned['unknown_queries']} simulated unknown queries"
            + (f"; occasions {tuned['occasions']}" if "occasions" in tuned else ""))


@policy_group.command("show")
@click.pass_context
def policy_show(ctx: click.Context) -> None:
    """The policy in force."""
    with open_stores(ctx) as stores:
        policy = stores.catalog.current_policy()
    data = policy.to_json() if policy else None
    emit(ctx, data, _policy_text(data) if data else "no decision policy yet: run `registry init`")


@policy_group.command("history")
@click.pass_context
def policy_history(ctx: click.Context) -> None:
    """Every version, oldest first."""
    with open_stores(ctx) as stores:
        rows = [p.to_json() for p in stores.catalog.policy_history()]
    emit(ctx, rows, "\n".join(_policy_text(p) for p in rows) or "no decision policy yet")


@main.command()
@click.argument("old")
@click.argument("new")
@click.pass_context
def relocate(ctx: click.Context, old: str, new: str) -> None:
    """Rewrite stored photo paths that start with OLD to start with NEW (an archive that moved)."""
    with open_stores(ctx, write=True) as stores:
        result = stores.catalog.relocate(old, new)
    emit(ctx, result, f"{result['rewritten']} photo paths moved from {old} to {new}"
         + (f"; {result['missing_now']} of them are not found at the new place" if result["missing_now"] else ""))


for _command in [*cli_curation.COMMANDS, *cli_training.COMMANDS]:
    main.add_command(_command)
for _command in cli_training.MODEL_COMMANDS:
    models_group.add_command(_command)
add_json_option(main)


if __name__ == "__main__":
    main()
