# The registry's HTTP API. Built by docker-compose.yml; runs the Alembic migrations, then serves.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 REGISTRY_HOME=/data
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY registry ./registry
RUN pip install --no-cache-dir '.[offline,postgres,server]' && useradd --system --home /data registry \
    && mkdir -p /data && chown registry /data
USER registry
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
# `registry init` creates or upgrades the catalog (Alembic) and keeps the stored profile; then the API starts.
CMD ["sh", "-c", "registry init --profile \"${REGISTRY_PROFILE:-offline}\" && exec registry serve --host 0.0.0.0 --port 8000 --workers \"${REGISTRY_WORKERS:-2}\""]
