"""The registry's stores opened together: the SQL catalog, the vector index and the writer lock.

No model is loaded here. Readers (`stats`, `history`, exports, the review queue) open the catalog alone, without
the writer lock and without the vector index (the embedded engine locks its shards), so they work while an ingest
or the server runs (SQLite WAL readers never block the writer). Curation opens the vector index too, to keep
payloads in step, and finds its collections in the `embedders` table, so it needs no model either.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from registry.settings import Settings
from registry.store import migrate
from registry.store.catalog import Catalog
from registry.store.locking import RegistryLock
from registry.store.tables import Embedder
from registry.store.vector_engines import open_vector_index
from registry.store.vector_index import VectorIndex
from registry.store.vector_migration import legacy_vectors_pending


class RegistryNotInitialisedError(RuntimeError):
    pass


class Stores:
    """`write=False`: the catalog only, for reading. `write=True`: catalog, vector index and the writer lock."""

    def __init__(self, settings: Settings, write: bool = True, lock_wait: float = 0.0) -> None:
        self.settings = settings
        self.write = write
        self.lock = RegistryLock(settings.data_dir, exclusive=write and settings.needs_exclusive_lock)
        self.lock.acquire(wait=lock_wait)
        self._index: VectorIndex | None = None
        try:
            if settings.database_url is None and not (settings.data_dir / "registry.sqlite").exists():
                raise RegistryNotInitialisedError(
                    f"no registry in {settings.data_dir}: run `registry init` first (or give --data-dir)")
            self.catalog = Catalog(settings.sqlalchemy_url, settings.photo_root)
            try:
                current = migrate.current_revision(self.catalog.engine)
            except OperationalError as exc:
                raise RegistryNotInitialisedError(
                    f"cannot open the registry catalog at {settings.display_database}: {exc.orig}") from exc
            if current is None:
                raise RegistryNotInitialisedError(
                    f"no registry catalog at {settings.display_database}: run `registry init` first")
            if current != migrate.head_revision(self.catalog.engine):
                raise RegistryNotInitialisedError(
                    f"catalog is at schema revision {current}; run `registry init` to upgrade it")
            if write:
                self._index = self._open_index()
        except BaseException:
            self.close()
            raise

    def _open_index(self) -> VectorIndex:
        if legacy_vectors_pending(self.settings):
            raise RegistryNotInitialisedError(
                f"the vectors in {self.settings.qdrant_path} are in qdrant-client's local mode; run `registry init` "
                "(or `registry vectors migrate`) to move them into Qdrant Edge")
        return open_vector_index(self.settings)

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            raise RuntimeError("the registry was opened read-only: the vector index is not open")
        return self._index

    def registered_collections(self) -> dict[str, str]:
        """Embedder name -> collection, as recorded in the catalog (no model needed)."""
        with self.catalog.transaction() as session:
            return {e.name: e.collection for e in session.scalars(select(Embedder).order_by(Embedder.id))}

    def close(self) -> None:
        try:
            if self._index is not None:
                self._index.close()
            catalog = getattr(self, "catalog", None)
            if catalog is not None:
                catalog.close()
        finally:
            self.lock.release()

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def vector_index_summary(stores: Stores) -> dict[str, Any]:
    """{"engine", "points", "collections": {name: points}} for `registry stats`. A read-only opener may find the
    embedded index held by a running writer: then the points are the catalog's indexed annotations per collection
    (what `doctor` checks they equal), marked `"counted_from": "catalog"`."""
    settings = stores.settings
    engine = settings.vector_engine_in_use
    collections = stores.registered_collections()
    counts: dict[str, int] = {}
    counted_from = "index"
    index = stores._index
    # an embedded index is opened only while no writer holds the registry: a reader must never take the shards'
    # write-ahead log from under a writer that is about to open them
    lock = RegistryLock(settings.data_dir, exclusive=index is None and settings.uses_embedded_qdrant)
    try:
        lock.acquire(wait=0.0)
        try:
            if index is None:
                index = open_vector_index(settings)
            try:
                present = set(index.collections())
                counts = {c: (index.count(c) if c in present else 0) for c in collections.values()}
            finally:
                if index is not stores._index:
                    index.close()
        finally:
            lock.release()
    except Exception:  # held by a writer, or the server is down: say so, and count in SQL
        stats = stores.catalog.stats()
        counts = dict.fromkeys(collections.values(), stats["annotations"] - stats["pending_annotations"])
        counted_from = "catalog"
    if legacy_vectors_pending(settings):
        engine = "qdrant-local (run `registry init` to move it into qdrant-edge)"
    return {"engine": engine, "points": sum(counts.values()), "collections": counts, "counted_from": counted_from}
