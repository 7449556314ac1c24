"""Adding a season: a manifest, a Camtrap DP package, MegaDetector output or a folder streams through in
batches; reference annotations are recorded with their labels; annotations to identify are identified in time
order, an event's (burst's) annotations of one animal together, as one joint decision.

Memory stays flat with the season's size, an annotation already in the registry (same photo content, same box)
is skipped, and a run killed at any point is finished by the next one (the recorder resumes pending writes
first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from registry.ingest.events import animals, assign_events
from registry.ingest.manifest import ManifestError, RowProblem
from registry.ingest.sources import read_source
from registry.matching.imaging import ImageError, sha256_of_file
from registry.matching.pipeline import Described
from registry.matching.timing import StageTimes
from registry.services.identification import Identification
from registry.services.recording import PhotoRow
from registry.services.registry import Registry
from registry.store.catalog import CatalogError
from registry.store.times import to_utc

MODES = ("reference", "identify")


@dataclass
class IngestReport:
    manifest: str
    mode: str
    survey: str
    added: int = 0
    already_present: int = 0
    resumed: int = 0
    matched: int = 0
    new_individuals: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest, "mode": self.mode, "survey": self.survey, "added": self.added,
            "already_present": self.already_present, "resumed_pending": self.resumed,
            "matched": self.matched, "new_individuals": self.new_individuals,
            "skipped": len(self.problems), "problems": [str(p) for p in self.problems],
            "warnings": self.warnings,
        }


def in_utc(rows: list[PhotoRow], location_zones: dict[str, str], registry_zone: str) -> list[PhotoRow]:
    """Rows with every capture time in UTC: a time with an offset converted, a naive one read in the row's time
    zone, else its location's (as recorded, or as another row of this source gives it), else the registry's
    (`store.times`)."""
    given: dict[str, str] = {}
    for row in rows:
        if row.location and row.time_zone:
            given.setdefault(row.location, row.time_zone)
    location_zones = {**given, **location_zones}  # a zone already recorded for a place is kept
    return [replace(row, captured_at=to_utc(row.captured_at, row.time_zone
                                            or location_zones.get(row.location or "") or registry_zone))
            for row in rows]


class Ingestor:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def ingest(
        self,
        manifest_path: Path,
        survey: str,
        mode: str = "reference",
        default_species: str | None = None,
        progress: Callable[[int], None] | None = None,
        layout: str = "auto",
        on_identified: Callable[[PhotoRow, Identification], None] | None = None,
        allowed_root: Path | None = None,
        bbox_pixels: bool = False,
        min_confidence: float = 0.2,
        locations: list[str] | None = None,
    ) -> IngestReport:
        """Add a season. Reference: manifest identities are trusted labels. Identify: each photo is identified
        and recorded in time order, so an animal's second photo finds the individual its first one created.

        `manifest_path` is a CSV (registry or AnimalCLEF format) or a folder (`layout`: one sub-folder per
        identity, or a plain folder of photos). Memory stays flat with the season's size: photos stream through
        in batches, and decisions go to `on_identified` instead of accumulating in the report. `locations`: in
        identify mode, match only against references photographed there.
        """
        if mode not in MODES:
            raise ValueError(f"unknown ingest mode {mode!r} (reference or identify)")
        registry = self.registry
        manifest = read_source(manifest_path, default_species, layout, bbox_pixels, min_confidence)
        scope = registry.identification.location_ids(locations) if mode == "identify" else None
        report = IngestReport(str(manifest_path), mode, survey, problems=list(manifest.problems),
                              warnings=list(manifest.warnings))
        report.resumed = registry.recorder.resume_pending()
        manifest.rows = in_utc(manifest.rows, registry.catalog.location_zones(), registry.settings.time_zone)
        manifest.deployments = [  # operating intervals, like photo times, in UTC
            replace(info, started_at=to_utc(info.started_at, registry.settings.time_zone),
                    ended_at=to_utc(info.ended_at, registry.settings.time_zone)) for info in manifest.deployments]
        if manifest.deployments:  # places and operating intervals first, so photos (and secr usage) find them
            try:
                registry.catalog.register_deployments(manifest.deployments)
            except CatalogError as exc:
                raise ManifestError(f"{manifest_path}: {exc}") from exc
        rows = manifest.rows
        if manifest.format == "camtrap-dp":  # scientific names the registry already knows by its own name
            known = {r["scientific_name"]: r["name"] for r in registry.catalog.species_rows() if r["scientific_name"]}
            rows = [replace(row, species=known.get(row.species, row.species)) for row in rows]
        if allowed_root is not None:  # photos named by a remote caller must stay inside the import folder
            root = Path(allowed_root).resolve()
            outside = [r for r in rows if not r.image.resolve().is_relative_to(root)]
            report.problems += [RowProblem(str(manifest_path), r.line, "photo is outside the import folder")
                                for r in outside]
            rows = [r for r in rows if r.image.resolve().is_relative_to(root)]
        if mode == "reference":
            missing = [r for r in rows if r.identity is None]
            report.problems += [RowProblem(str(manifest_path), r.line, "no identity (reference mode needs one)")
                                for r in missing]
            rows = [r for r in rows if r.identity is not None]
        rows = assign_events(rows, registry.settings.event_interval_seconds,
                             group_by_folder=manifest.format == "megadetector")
        if mode == "identify":  # time order (an event at its first photo's time, kept together), then file order
            def when(row: PhotoRow) -> tuple[bool, Any]:
                return (row.captured_at is None, row.captured_at or 0)

            starts: dict[str, tuple[bool, Any]] = {}
            for row in rows:
                if row.sequence is not None:
                    starts[row.sequence] = min(starts.get(row.sequence, when(row)), when(row))
            rows = sorted(rows, key=lambda r: (starts.get(r.sequence, when(r)) if r.sequence else when(r),  # type: ignore[arg-type]
                                               r.sequence or "", when(r), r.line))

        batch_size = max(1, registry.settings.batch_size)
        seen_in_run: set[tuple[str, str]] = set()
        for batch in self._batches(rows, batch_size, by_event=mode == "identify"):
            hashed: list[tuple[PhotoRow, str]] = []
            for row in batch:
                try:
                    hashed.append((row, sha256_of_file(row.image)))
                except ImageError as exc:
                    report.problems.append(RowProblem(str(manifest_path), row.line, str(exc)))
            catalogued = registry.catalog.known_regions([sha for _, sha in hashed])
            todo: list[tuple[PhotoRow, str]] = []
            for row, sha in hashed:
                if (sha, row.region) in catalogued or (sha, row.region) in seen_in_run:
                    report.already_present += 1
                    continue
                seen_in_run.add((sha, row.region))
                todo.append((row, sha))
            batch_timer = StageTimes()
            described_all = registry.identification.describe(
                [r.image for r, _ in todo], [r.species for r, _ in todo], [r.viewpoint for r, _ in todo],
                [r.box for r, _ in todo], batch_timer)
            good: list[tuple[PhotoRow, str, Described]] = []
            for (row, sha), described in zip(todo, described_all, strict=True):
                if isinstance(described, ImageError):
                    report.problems.append(RowProblem(str(manifest_path), row.line, str(described)))
                    continue
                good.append((row, sha, described))
                report.added += 1
            if mode == "reference" and good:
                # another registry's codes (a Camtrap DP package's individualID) are names here, never our codes
                registry.recorder.record_references(good, survey, match_codes=manifest.format != "camtrap-dp")
            elif good:
                self._identify(good, survey, scope, report, on_identified, batch_timer.share(1 / len(todo)))
            if progress:
                progress(len(batch))
        return report

    @staticmethod
    def _batches(rows: list[PhotoRow], size: int, by_event: bool) -> list[list[PhotoRow]]:
        """Batches of about `size` rows; identifying, an event is never split across two batches."""
        batches: list[list[PhotoRow]] = []
        current: list[PhotoRow] = []
        for k, row in enumerate(rows):
            current.append(row)
            following = rows[k + 1] if k + 1 < len(rows) else None
            same_event = (by_event and following is not None and row.sequence is not None
                          and following.sequence == row.sequence)
            if len(current) >= size and not same_event:
                batches.append(current)
                current = []
        if current:
            batches.append(current)
        return batches

    def _identify(self, good: list[tuple[PhotoRow, str, Described]], survey: str, scope: tuple[int, ...] | None,
                  report: IngestReport, on_identified: Callable[[PhotoRow, Identification], None] | None,
                  described_each: StageTimes) -> None:
        """Identify a batch in time order: each event's animals jointly, every other annotation alone.
        `described_each`: one photo's share of describing the batch (each decision reports its stages)."""
        described_of = {id(row): (row, sha, described) for row, sha, described in good}
        groups: dict[str, list[PhotoRow]] = {}
        order: list[list[PhotoRow]] = []
        for row, _, _ in good:
            if row.sequence is None:
                order.append([row])
            elif row.sequence not in groups:
                groups[row.sequence] = [row]
                order.append(groups[row.sequence])
            else:
                groups[row.sequence].append(row)
        for group in order:
            for animal in animals(group):
                identification = self.registry.identification.identify_and_record(
                    [described_of[id(r)] for r in animal], survey, scope, described_each.share(len(animal)))
                if identification.outcome.outcome == "match":
                    report.matched += 1
                else:
                    report.new_individuals += 1
                if on_identified:
                    for row in animal:
                        on_identified(row, identification)
