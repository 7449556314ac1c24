"""Events (bursts) and the animals in them.

Camera traps fire bursts: photos of one deployment seconds apart show the same passing animal(s). An event is
the photos of one deployment (or location) within `interval` seconds of the previous one; a sequence id given by
the source (Camtrap DP `eventID`, a manifest's `sequence`) wins over the interval. Within an event, an animal
is followed from frame to frame by the overlap of its boxes, so each animal's annotations are decided together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta

from registry.services.recording import PhotoRow


def assign_events(rows: list[PhotoRow], interval_seconds: float, group_by_folder: bool = False) -> list[PhotoRow]:
    """Rows with `sequence` filled in where the source gave none: consecutive photos (time order) of one
    deployment (else location; else, with `group_by_folder`, the photo's folder) at most `interval_seconds`
    apart share one. A photo without a time or a place is an event of its own (no sequence)."""
    def place(row: PhotoRow) -> str | None:
        if row.deployment or row.location:
            return row.deployment or row.location
        return str(row.image.parent) if group_by_folder else None

    out: dict[int, PhotoRow] = {}
    timed = sorted(((place(r), r.captured_at, k) for k, r in enumerate(rows)
                    if r.sequence is None and place(r) is not None and r.captured_at is not None),
                   key=lambda t: (t[0], t[1], t[2]))
    gap = timedelta(seconds=interval_seconds)
    current, last_place, last_time = None, None, None
    for where, when, k in timed:
        if where != last_place or when - last_time > gap:  # type: ignore[operator]
            current = f"{where}@{when.isoformat(timespec='seconds')}"  # type: ignore[union-attr]
        last_place, last_time = where, when
        out[k] = replace(rows[k], sequence=current)
    return [out.get(k, row) for k, row in enumerate(rows)]


def _iou(a: tuple[float, float, float, float] | None, b: tuple[float, float, float, float] | None) -> float:
    if a is None or b is None:
        return 1.0 if a is b else 0.0
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def animals(rows: Iterable[PhotoRow], min_overlap: float = 0.2) -> list[list[PhotoRow]]:
    """The animals of one event, each as its annotations in time order. Animals of different species are never
    one animal: each species' rows are followed on their own. When every frame shows one animal of a species,
    the burst is one animal; otherwise each box joins the animal whose box in the previous frame overlaps it
    most (intersection over union at least `min_overlap`), else starts a new one."""
    by_species: dict[str, list[PhotoRow]] = {}
    for row in rows:
        by_species.setdefault(row.species, []).append(row)
    return [animal for species in sorted(by_species) for animal in _tracks(by_species[species], min_overlap)]


def _tracks(rows: list[PhotoRow], min_overlap: float) -> list[list[PhotoRow]]:
    """The animals among rows of one species (see `animals`)."""
    frames: dict[str, list[PhotoRow]] = {}
    for row in sorted(rows, key=lambda r: (r.captured_at is None, r.captured_at or 0, r.line)):
        frames.setdefault(str(row.image), []).append(row)
    if all(len(f) == 1 for f in frames.values()):
        return [[f[0] for f in frames.values()]] if frames else []
    tracks: list[list[PhotoRow]] = []
    for frame in frames.values():
        taken: set[int] = set()
        for row in sorted(frame, key=lambda r: r.box or (0, 0, 0, 0)):
            scored = [(_iou(track[-1].box, row.box), k) for k, track in enumerate(tracks)
                      if k not in taken and str(track[-1].image) != str(row.image)]
            best = max(scored, default=(0.0, -1))
            if best[0] >= min_overlap:
                tracks[best[1]].append(row)
                taken.add(best[1])
            else:
                tracks.append([row])
                taken.add(len(tracks) - 1)
    return tracks
