"""Named points in the write path where a test can kill the process, as a power cut or `kill -9` would.

Set `REGISTRY_CRASH_AT=<point>` (or `<point>:<n>` for its n-th passage) in a child process; when it reaches
that point it sends itself SIGKILL: no cleanup, no flush, no exception handlers. Unset, a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "after-features",  # local features cached, nothing in SQL yet
    "after-sql",  # image, sighting (and decision) committed as pending; no vectors yet
    "between-collections",  # vectors in the first collection only
    "after-vectors",  # vectors everywhere, image still pending in SQL
    "after-indexed",  # the write completed
    "reembed-batch",  # a batch of vectors written into a new embedder version's collection, no switch yet
    "migrate-batch",  # a batch of vectors copied from local mode into Qdrant Edge, the collection not recorded
)
_passages: dict[str, int] = {}


def reached(point: str) -> None:
    target = os.environ.get("REGISTRY_CRASH_AT")
    if not target:
        return
    name, _, count = target.partition(":")
    if name != point:
        return
    _passages[point] = _passages.get(point, 0) + 1
    if _passages[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
