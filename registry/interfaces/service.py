"""What a server process holds: the registry, the lock that serialises its model and vector work, and a catalog
for reads that never waits for that lock. The HTTP API and the web workspace share one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fastapi import HTTPException

from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import Catalog

T = TypeVar("T")


class Service:
    """The registry a server process holds, the lock that serialises its model and vector work, and a catalog
    for reads that never waits for that lock."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry or Registry(settings)
        self.reads = Catalog(settings.sqlalchemy_url, settings.photo_root)
        self.lock = threading.Lock()
        self.closing = threading.Event()  # set when the server stops: long background work ends early
        self.uploads = settings.data_dir / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        root = settings.api_import_root
        self.import_root = Path(root).resolve() if root else (settings.data_dir / "imports").resolve()

    def run(self, work: Callable[[Registry], T], timeout: float = 60.0) -> T:
        if not self.lock.acquire(timeout=timeout):
            raise HTTPException(503, "the registry is busy (an ingest is running); retry later",
                                headers={"Retry-After": "30"})
        try:
            return work(self.registry)
        finally:
            self.lock.release()

    def close(self) -> None:
        """Stop: background work (a page's job) is asked to stop at its next progress step, then the registry
        closes once the lock is free."""
        self.closing.set()
        with self.lock:
            self.registry.close()
            self.reads.close()
