"""Which vector engine a registry uses: the factory that knows every backend, beside them (the `VectorIndex`
interface in `vector_index.py` knows none of them, so the backends import the interface and nothing imports
back)."""

from __future__ import annotations

from registry.settings import Settings
from registry.store.vector_index import VectorIndex


def open_vector_index(settings: Settings) -> VectorIndex:
    """The registry's vector index: a Qdrant server when `qdrant_url` is set, else the embedded engine the
    settings name (Qdrant Edge by default)."""
    if not settings.uses_embedded_qdrant:
        from registry.store.vectors_client import ClientIndex

        return ClientIndex(url=settings.qdrant_url, api_key=settings.qdrant_api_key)
    if settings.vector_engine == "qdrant-local":
        from registry.store.vectors_client import ClientIndex

        return ClientIndex(path=settings.qdrant_path)
    from registry.store.vectors_edge import EdgeIndex

    return EdgeIndex(settings.vectors_path)
