"""The CLI, the HTTP API and the web workspace. Importing this package registers the `{name:rowid}` path
convertor (`row_ids`) before any route is declared."""

from registry.interfaces import row_ids as _row_ids  # noqa: F401  (registers the convertor)
