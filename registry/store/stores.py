"""The registry's stores opened together: the SQL catalog, the vector index and the writer lock.

No model is loaded here. Readers (`stats`, `history`, exports, the review queue) open the catalog alone, without
the writer lock and without the vector index (embedded Qdrant locks its folder), so they work while an ingest
or the server runs (SQLite WAL readers never block the writer). Curation opens the vector index too, to keep
payloads in step, and finds its collections in the `embedders` table, so it needs no model either.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from registry.settings import Settings
from registry.store import migrate
from registry.store.catalog import Catalog
from registry.store.locking import RegistryLock
from registry.store.tables import Embedder
from registry.store.vector_index import VectorIndex


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
        if self.settings.uses_embedded_qdrant:
            return VectorIndex(path=self.settings.qdrant_path)
        return VectorIndex(url=self.settings.qdrant_url, api_key=self.settings.qdrant_api_key)

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
