"""The HTTP API: a real server process for a smoke test, FastAPI's in-process client for the rest; SQLite and
PostgreSQL; concurrency of writers on the catalog."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate
from PIL import Image

from registry.interfaces import tokens
from registry.interfaces.api import create_app
from registry.matching.pipeline import Pipeline
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import Catalog


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def api(database_url: str, tmp_path: Path, population: Path, offline_pipeline: Pipeline):
    settings = Settings(data_dir=tmp_path / "reg", database_url=database_url, profile="offline",
                        api_max_upload_mb=1.0, api_import_root=str(population))
    Registry.init(settings)
    registry = Registry(settings, pipeline=offline_pipeline)
    registry.ingest(population / "season1" / "manifest.csv", "season-1", "reference")
    registry.calibrate()
    token = tokens.create(registry.store.catalog, "field-team")
    with TestClient(create_app(settings, registry)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def _upload(path: Path) -> dict:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


def test_auth_upload_limits_and_errors(api: TestClient, population: Path) -> None:
    anonymous = TestClient(api.app)
    assert anonymous.get("/health").status_code == 200
    assert anonymous.get("/individuals").status_code == 401
    wrong = anonymous.get("/individuals", headers={"Authorization": "Bearer reg_not-a-token"})
    assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
    photo = population / "season2" / _rows(population / "season2" / "manifest.csv")[0]["image"]
    assert anonymous.post("/identify", files=_upload(photo), data={"species": "synleopard"}).status_code == 401

    text = api.post("/identify", files={"image": ("notes.jpg", b"ranger notes", "image/jpeg")},
                    data={"species": "synleopard"})
    assert text.status_code == 415 and "not a supported image" in text.json()["detail"]
    big = io.BytesIO()
    Image.effect_noise((1200, 1200), 100).convert("RGB").save(big, format="PNG")  # noise: > 1 MB as PNG
    oversized = api.post("/identify", files={"image": ("big.png", big.getvalue(), "image/png")},
                         data={"species": "synleopard"})
    assert oversized.status_code == 413
    missing = api.get("/individuals/NOPE-0001/history")
    assert missing.status_code == 404 and "Traceback" not in missing.text
    traversal = api.post("/ingest", json={"manifest": "../../../etc/passwd", "survey": "x"})
    assert traversal.status_code == 400 and "import folder" in traversal.json()["detail"]


def test_identify_review_curate_export_and_ingest_jobs(api: TestClient, population: Path) -> None:
    known = {r["identity"] for r in _rows(population / "season1" / "manifest.csv")}
    returning = next(r for r in _rows(population / "season2" / "manifest.csv") if r["identity"] in known)
    photo = population / "season2" / returning["image"]
    answer = api.post("/identify", files=_upload(photo),
                      data={"species": "synleopard", "record": "true", "survey": "season-2",
                            "captured_at": returning["captured_at"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["decision"] == "match" and body["decision_id"] and body["by"] == "field-team"
    again = api.post("/identify", files=_upload(photo), data={"species": "synleopard", "record": "true"})
    assert again.status_code == 409 and "already in the registry" in again.json()["detail"]

    history = api.get(f"/individuals/{body['individual']}/history").json()
    assert [s["method"] for s in history["sightings"]].count("automatic") == 1
    assert api.get("/review", params={"margin": 1.0}).json()[0]["decision"] == body["decision_id"]
    confirmed = api.post(f"/decisions/{body['decision_id']}/confirm", json={"reason": "checked spots"})
    assert confirmed.status_code == 200 and confirmed.json()["kind"] == "confirm"
    assert api.post(f"/decisions/{body['decision_id']}/confirm").status_code == 409

    codes = [i["code"] for i in api.get("/individuals").json()]
    merged = api.post("/individuals/merge", json={"keep": codes[0], "absorb": codes[1]}).json()
    assert api.get(f"/individuals/{codes[1]}/history").json()["individual"] == codes[0]
    assert api.post(f"/changes/{merged['change']}/undo").status_code == 200
    capture = api.get("/exports/capture-history", params={"occasion": "survey"}).text.splitlines()
    assert capture[0] == "individual,season-1,season-2" and len(capture) == len(codes) + 1
    mark = api.get("/exports/capture-history", params={"format": "mark"}).text.splitlines()
    assert all(line.endswith(" 1;") for line in mark[1:])
    assert len(api.get("/exports/sightings.csv").text.splitlines()) == 1 + 13

    job = api.post("/ingest", json={"manifest": "season2/manifest.csv", "survey": "season-2", "mode": "identify"})
    assert job.status_code == 202
    for _ in range(300):
        status = api.get(f"/jobs/{job.json()['job']}").json()
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.5)
    assert status["status"] == "done", status
    assert status["report"]["added"] == len(_rows(population / "season2" / "manifest.csv")) - 1
    assert status["done"] == status["total"]


def test_openapi_document_validates(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    validate(document)
    for path in ("/identify", "/ingest", "/individuals", "/individuals/{code}/history", "/review",
                 "/decisions/{decision_id}/confirm", "/decisions/{decision_id}/reassign",
                 "/decisions/{decision_id}/reject", "/individuals/merge", "/exports/sightings.csv", "/health"):
        assert path in document["paths"], path


def test_parallel_record_requests_stay_consistent(api: TestClient, population: Path) -> None:
    photos = [population / "season2" / r["image"] for r in _rows(population / "season2" / "manifest.csv")]
    requests = [*photos, photos[0], photos[1]]  # two photos sent twice, concurrently
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda p: api.post("/identify", files=_upload(p),
                                                   data={"species": "synleopard", "record": "true"}), requests))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == len(photos) and statuses.count(409) == 2
    stats = api.get("/stats").json()
    recorded = [a.json() for a in answers if a.status_code == 200]
    assert stats["images"] == 12 + len(photos) and stats["sightings"] == stats["images"]
    assert stats["decisions"] == len(photos)
    assert stats["individuals"] == 6 + sum(r["decision"] == "new" for r in recorded)


def test_concurrent_writers_never_share_an_individual_code(database_url: str, tmp_path: Path) -> None:
    """Four writers with their own connections create individuals at once (as API workers would)."""
    from registry.store import migrate

    catalog = Catalog(database_url)
    migrate.upgrade(catalog.engine)
    barrier = threading.Barrier(4)

    def writer(_: int) -> list[str]:
        own = Catalog(database_url)
        barrier.wait()
        codes = []
        for _ in range(10):
            with own.transaction() as session:
                codes.append(own.new_individual(session, "nyala").code)
        own.close()
        return codes

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = [c for batch in pool.map(writer, range(4)) for c in batch]
    assert len(codes) == len(set(codes)) == 40
    assert sorted(codes) == [f"NYA-{n:04d}" for n in range(1, 41)]
    catalog.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_process_smoke(tmp_path: Path) -> None:
    home = tmp_path / "reg"
    cli = [sys.executable, "-m", "registry", "--data-dir", str(home)]
    subprocess.run([*cli, "init", "--no-download"], check=True, capture_output=True)
    token = json.loads(subprocess.run([*cli, "--json", "token", "create", "smoke"], check=True,
                                      capture_output=True, text=True).stdout)["token"]
    port = _free_port()
    server = subprocess.Popen([*cli, "serve", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    assert json.loads(response.read())["status"] == "ok"
                    break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/individuals", timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(f"{base}/stats", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["images"] == 0
        busy = subprocess.run([*cli, "stats"], capture_output=True, text=True)
        assert busy.returncode == 1 and f"in use by PID {server.pid}" in busy.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
