"""The JSON API's routes, a module per resource (reads, exports, identification, ingestion jobs, curation), each
a plain `APIRouter` of module-level functions; `interfaces/api.py` assembles them into the app with its
middleware, error handlers, the docs page and the web workspace."""
