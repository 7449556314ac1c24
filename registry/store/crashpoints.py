"""Named points in the write paths where a test can break the process: a kill (as a power cut or `kill -9`
would) or an exception (as a full disk, a lost database connection or a bug would).

- `REGISTRY_CRASH_AT=<point>` (or `<point>:<n>` for its n-th passage) in a child process: when it reaches that
  point it sends itself SIGKILL: no cleanup, no flush, no exception handlers.
- `REGISTRY_FAULT_AT=<point>[:<n>]`, or `armed(point, n)` in-process: `InjectedFault` is raised there, so every
  handler and rollback on the way out runs.

- `REGISTRY_PAUSE_AT=<point>:<seconds>`: sleep there (two processes' transactions overlap for certain).
- `REGISTRY_TRACE_POINTS=1`: each point writes `crashpoint <point>` to standard error as it passes, so a test
  running the process under strace sees which writes and syncs came before it.

Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

POINTS = (
    "after-features",  # local features cached, nothing in SQL yet
    "after-annotations",  # inside the transaction: photos and annotations written, no sighting yet
    "after-sighting",  # inside the transaction: a sighting written (and its decision or individual)
    "before-commit",  # inside the transaction: everything written, not committed
    "after-sql",  # image, sighting (and decision) committed as pending; no vectors yet
    "between-collections",  # vectors in the first collection only
    "after-vectors",  # vectors everywhere (flushed), image still pending in SQL
    "after-indexed",  # the write completed
    "curation-in-sql",  # inside a curation's transaction: rows changed, the audit entry not yet written
    "curation-after-sql",  # a curation committed, the vectors' payloads not yet rewritten
    "calibrate-batch-saved",  # a calibration batch stored, no policy names it yet
    "reembed-batch",  # a batch of vectors written into a new embedder version's collection, no switch yet
    "migrate-batch",  # a batch of vectors copied from local mode into Qdrant Edge, the collection not recorded
)
WRITE_POINTS = POINTS[:8]  # the points every recorded photo passes, in order
CURATION_POINTS = ("curation-in-sql", "curation-after-sql")


class InjectedFault(RuntimeError):
    """An exception a test asked for at a named point."""


_passages: dict[str, int] = {}
_TRACE = bool(os.environ.get("REGISTRY_TRACE_POINTS"))
_armed: dict[str, int] = {}  # point -> the passage (counted from arming) at which to raise


def reached(point: str) -> None:
    if _TRACE:  # a marker in the process's syscalls (strace), to check what reached the disk before a point
        os.write(2, f"crashpoint {point}\n".encode())
    if _armed:
        _count_armed(point)
    pause = os.environ.get("REGISTRY_PAUSE_AT")
    if pause and pause.partition(":")[0] == point:  # hold here, so a test can overlap two writers' transactions
        time.sleep(float(pause.partition(":")[2] or 1))
    for variable in ("REGISTRY_CRASH_AT", "REGISTRY_FAULT_AT"):
        target = os.environ.get(variable)
        if not target:
            continue
        name, _, count = target.partition(":")
        if name != point:
            continue
        key = f"{variable}/{point}"
        _passages[key] = _passages.get(key, 0) + 1
        if _passages[key] >= int(count or 1):
            if variable == "REGISTRY_CRASH_AT":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"fault injected at {point}")


def _count_armed(point: str) -> None:
    if point not in _armed:
        return
    _armed[point] -= 1
    if _armed[point] <= 0:
        del _armed[point]
        raise InjectedFault(f"fault injected at {point}")


@contextmanager
def armed(point: str, passage: int = 1) -> Iterator[None]:
    """Raise `InjectedFault` at the `passage`-th passage through `point` within this block (in this process)."""
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}")
    _armed[point] = passage
    try:
        yield
    finally:
        _armed.pop(point, None)
