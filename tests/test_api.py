"""The HTTP API: a real server process for a smoke test, FastAPI's in-process client for the rest; SQLite and
PostgreSQL; concurrency of writers on the catalog."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import in_process
from openapi_spec_validator import validate
from PIL import Image

from registry.ingest.ingestion import Ingestor
from registry.interfaces import tokens
from registry.interfaces.api import create_app
from registry.interfaces.web import sessions
from registry.matching.pipeline import Pipeline
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import Catalog


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest) as f:
        return list(csv.DictReader(f))


def _api_settings(root: Path, database_url: str, population: Path) -> Settings:
    return Settings(data_dir=root / "reg", database_url=database_url, profile="offline", api_max_upload_mb=1.0,
                    api_import_root=str(population))


def _calibrated_registry(settings: Settings, population: Path, pipeline: Pipeline) -> Registry:
    """Season 1's photos as references, calibrated: what every API test starts from."""
    Registry.init(settings)
    registry = Registry(settings, pipeline=pipeline)
    Ingestor(registry).ingest(population / "season1" / "manifest.csv", "season-1", "reference")
    registry.calibrate()
    return registry


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory, population: Path, offline_pipeline: Pipeline) -> Path:
    """The starting registry on SQLite, made once per module; each SQLite test works on a copy of its folder and
    catalog file (a registry folder moves as a whole: paths inside it are relative)."""
    root = tmp_path_factory.mktemp("api-template")
    _calibrated_registry(_api_settings(root, f"sqlite:///{root / 'catalog.sqlite'}", population), population,
                         offline_pipeline).close()
    return root


@pytest.fixture
def api(database_url: str, tmp_path: Path, population: Path, offline_pipeline: Pipeline,
        request: pytest.FixtureRequest):
    settings = _api_settings(tmp_path, database_url, population)
    if database_url == f"sqlite:///{tmp_path / 'catalog.sqlite'}":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copytree(template / "reg", tmp_path / "reg")
        for part in template.glob("catalog.sqlite*"):
            shutil.copy(part, tmp_path / part.name)
        registry = Registry(settings, pipeline=offline_pipeline)
    else:  # PostgreSQL: a fresh database each time
        registry = _calibrated_registry(settings, population, offline_pipeline)
    token = tokens.create(registry.catalog, "field-team", scope="admin")
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
    assert capture[0] == "individual,ch,freq,sex,life_stage,season-1,season-2" and len(capture) == len(codes) + 1
    mark = api.get("/exports/capture-history", params={"format": "mark"}).text.splitlines()
    assert all(re.fullmatch(r"/\* \S+ \*/ [01]+ 1( [01]){5};", line) for line in mark[2:])
    assert len(api.get("/exports/sightings.csv").text.splitlines()) == 1 + 13
    edited = api.post(f"/individuals/{codes[0]}/attributes", json={"sex": "female", "nickname": "Tess"})
    assert edited.status_code == 200 and edited.json()["attributes"]["nickname"] == "Tess"
    assert api.get(f"/individuals/{codes[0]}/history").json()["attributes"]["sex"] == "female"
    assert api.post(f"/individuals/{codes[0]}/attributes", json={"sex": "dragon"}).status_code == 422
    assert api.post(f"/individuals/{codes[0]}/attributes", json={}).status_code == 409  # nothing to edit
    with zipfile.ZipFile(io.BytesIO(api.get("/exports/dwc.zip").content)) as archive:
        occurrences = archive.read("occurrence.csv").decode().splitlines()
    assert len(occurrences) == 1 + 13 and occurrences[0].startswith("occurrenceID,eventID,eventDate")

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


WRITER = """
import sys
from registry.store.catalog import Catalog
url, go, count, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
catalog = Catalog(url)
with catalog.engine.connect():
    open(ready, "w").close()
import os, time
while not os.path.exists(go):  # start together
    time.sleep(0.01)
codes = []
for _ in range(count):
    with catalog.transaction() as session:
        codes.append(catalog.new_individual(session, "nyala").code)
print(" ".join(codes))
"""


@pytest.mark.postgres
def test_writer_processes_in_parallel_never_share_an_individual_code(database_url: str, tmp_path: Path) -> None:
    """Four processes with their own connections create individuals at the same moment (as API workers on
    PostgreSQL would): every code is distinct and the numbering has no gap."""
    if not database_url.startswith("postgresql"):
        pytest.skip("parallel writer processes need a server database (SQLite serialises writers by design)")
    from registry.store import migrate

    catalog = Catalog(database_url)
    migrate.upgrade(catalog.engine)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{k}" for k in range(4)]
    workers = [subprocess.Popen([sys.executable, "-c", WRITER, database_url, str(go), "10", str(r)],
                                stdout=subprocess.PIPE, text=True) for r in ready]
    for _ in range(1200):
        if all(r.exists() for r in ready):
            break
        time.sleep(0.05)
    go.touch()
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers)
    codes = [c for out in outputs for c in out.split()]
    assert len(codes) == len(set(codes)) == 40
    assert sorted(int(c.split("-")[1]) for c in codes) == list(range(1, 41))
    catalog.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_process_smoke(tmp_path: Path) -> None:
    home = tmp_path / "reg"
    cli = [sys.executable, "-m", "registry", "--data-dir", str(home)]
    # the server is a real process; the commands beside it run in this one (they only need to be other clients)
    assert in_process(["--data-dir", str(home), "init", "--no-download"]).returncode == 0
    token = json.loads(in_process(["--data-dir", str(home), "--json", "token", "create", "smoke"]).stdout)["token"]
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
        reading = in_process(["--data-dir", str(home), "stats", "--json"])
        assert reading.returncode == 0 and json.loads(reading.stdout)["images"] == 0  # readers need no lock
        # the server writes the embedded index: a reader counts its points in the catalog, never opens it
        assert json.loads(reading.stdout)["vector_index"]["counted_from"] == "catalog"
        busy = in_process(["--data-dir", str(home), "ingest", str(tmp_path), "--survey", "x", "--species", "s"])
        assert busy.returncode == 1 and f"in use by PID {server.pid}" in busy.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_route_enforces_its_scope(api: TestClient, population: Path) -> None:
    """Walk the OpenAPI document: without a token every route but /health is refused; each scope reaches exactly
    the routes it covers (read: browse; review: identify and decide; admin: everything)."""
    registry = api.app.state.service.registry
    expired = tokens.create(registry.catalog, "expired", scope="admin", expires_days=-1)
    scoped = {s: tokens.create(registry.catalog, f"who-{s}", scope=s) for s in tokens.SCOPES}
    review_routes = {"/identify", "/decisions/{decision_id}/confirm", "/decisions/{decision_id}/reassign",
                     "/decisions/{decision_id}/reject", "/individuals/{code}/attributes"}
    anonymous = TestClient(api.app)
    document = api.get("/openapi.json").json()
    walked = 0
    for path, methods in document["paths"].items():
        url = path.replace("{decision_id}", "999999").replace("{change_id}", "999999").replace(
            "{code}", "NOPE-0001").replace("{sha256}", "0" * 64).replace("{job_id}", "999999").replace(
            "{annotation_id}", "999999")
        for method in methods:
            walked += 1
            def call(token: str | None, method: str = method, url: str = url) -> int:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                return anonymous.request(method.upper(), url, headers=headers, json={}).status_code
            if path == "/health":
                assert call(None) == 200
                continue
            needed = "read" if method == "get" else "review" if path in review_routes else "admin"
            assert call(None) == 401, (method, path)
            assert call(expired) == 401, (method, path)
            for scope, token in scoped.items():
                status = call(token)
                if tokens.allows(scope, needed):
                    assert status not in (401, 403), (scope, method, path, status)
                else:
                    assert status == 403, (scope, method, path, status)
    assert walked >= 18


def test_body_limit_applies_while_streaming_and_before_auth(api: TestClient) -> None:
    """1 MB limit: a bigger body is refused with 413 whether it declares its length or streams without one, and
    an anonymous caller gets 413 too: the body is bounded before anything (auth included) reads it."""
    limit = int(1.0 * 1024 * 1024)
    anonymous = TestClient(api.app)
    declared = anonymous.post("/identify", content=b"x" * (limit + 200_000),
                              headers={"content-type": "multipart/form-data; boundary=b"})
    assert declared.status_code == 413

    def chunks():  # a well-formed multipart upload, sent without a length
        yield (b'--b\r\nContent-Disposition: form-data; name="species"\r\n\r\nsynleopard\r\n'
               b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(40):
            yield b"y" * 65536
        yield b"\r\n--b--\r\n"

    streamed = api.post("/identify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413
    assert api.get("/stats").status_code == 200  # the server is fine afterwards


def test_unrecorded_uploads_are_not_kept_and_errors_name_no_server_path(api: TestClient, population: Path) -> None:
    service = api.app.state.service
    photo = population / "season2" / _rows(population / "season2" / "manifest.csv")[0]["image"]
    answer = api.post("/identify", files=_upload(photo), data={"species": "synleopard"})
    assert answer.status_code == 200 and answer.json()["decision_id"] is None
    assert list(service.uploads.iterdir()) == []
    recorded = api.post("/identify", files=_upload(photo), data={"species": "synleopard", "record": "true"})
    assert recorded.status_code == 200 and len(list(service.uploads.iterdir())) == 1
    again = api.post("/identify", files=_upload(photo), data={"species": "synleopard", "record": "true"})
    assert again.status_code == 409
    assert str(service.uploads) not in again.text and str(service.settings.data_dir) not in again.text


def test_reads_do_not_wait_behind_a_long_write(api: TestClient) -> None:
    service = api.app.state.service
    assert service.lock.acquire(timeout=5)  # an ingest job holds the registry
    try:
        started = time.monotonic()
        for path in ("/stats", "/individuals", "/review", "/changes", "/exports/sightings.csv"):
            assert api.get(path).status_code == 200, path
        assert time.monotonic() - started < 30
    finally:
        service.lock.release()


TOO_BIG = "9" * 20  # > 2**63 - 1: no row can have this id


def test_ids_beyond_64_bits_are_not_found_and_browsers_get_pages(api: TestClient) -> None:
    """An id no database can hold is a 404 on every route that takes one (it used to reach SQL: a 500); a
    person in a browser gets the error as a page with a way back, an API client as JSON."""
    for method, path in (("get", f"/annotations/{TOO_BIG}/history"), ("get", f"/jobs/{TOO_BIG}"),
                         ("post", f"/decisions/{TOO_BIG}/confirm"), ("post", f"/decisions/{TOO_BIG}/reject"),
                         ("post", f"/changes/{TOO_BIG}/undo")):
        answer = getattr(api, method)(path)
        assert answer.status_code == 404, (path, answer.status_code, answer.text)
        assert answer.headers["content-type"].startswith("application/json")
    signed_in = TestClient(api.app)
    key = sessions.sign_in(api.app.state.service.reads, api.headers["Authorization"].removeprefix("Bearer "))
    signed_in.cookies.set(sessions.COOKIE, key)
    for path in (f"/ui/decisions/{TOO_BIG}", f"/ui/thumbs/{TOO_BIG}/160.jpg", f"/ui/decisions/{TOO_BIG}/sheet.png",
                 f"/ui/pairs/{TOO_BIG}/1.json", f"/ui/thumbs/1/{TOO_BIG}.jpg", "/ui/decisions/123456789",
                 "/ui/individuals/NOPE-0001"):
        answer = signed_in.get(path, headers={"Accept": "text/html"})
        assert answer.status_code == 404, (path, answer.status_code)
        assert answer.headers["content-type"].startswith("text/html") and "<h1>Not found</h1>" in answer.text
        assert 'href="/ui/queue"' in answer.text and "Traceback" not in answer.text
    refused = signed_in.get("/ui/queue", params={"margin": "nan"})
    assert refused.status_code == 400 and "margin must be a number from 0 to 10" in refused.text
    for bad in ({"margin": "-1"}, {"margin": "1e308"}, {"survey": "s" * 5000}, {"outcome": "maybe"}):
        answer = signed_in.get("/ui/queue", params=bad)
        assert answer.status_code == 400 and 'role="alert"' in answer.text, bad


def test_attributes_have_bounded_lengths(api: TestClient) -> None:
    """A 200 KB nickname is refused with the reason, through the API and through the workspace's form (the
    curator's own bound), and nothing recorded changes."""
    code = api.get("/individuals").json()[0]["code"]
    before = api.get(f"/individuals/{code}/history").json()["attributes"]
    huge = api.post(f"/individuals/{code}/attributes", json={"nickname": "x" * 200_000})
    assert huge.status_code == 422 and "nickname" in huge.text
    browser = TestClient(api.app)
    key = sessions.sign_in(api.app.state.service.reads, api.headers["Authorization"].removeprefix("Bearer "))
    browser.cookies.set(sessions.COOKIE, key)
    csrf = sessions.browser(api.app.state.service.reads, key).csrf
    posted = browser.post(f"/ui/individuals/{code}/attributes", data={"csrf": csrf, "nickname": "x" * 200_000},
                          follow_redirects=True)
    assert posted.status_code == 200 and "the nickname is 200000 characters long; at most 200" in posted.text
    many = browser.post(f"/ui/individuals/{code}/attributes",
                        data={"csrf": csrf, "alternate_ids": ",".join(f"id-{i}" for i in range(51))},
                        follow_redirects=True)
    assert "at most 50 alternate ids" in many.text
    assert api.get(f"/individuals/{code}/history").json()["attributes"] == before
    assert browser.post(f"/ui/individuals/{code}/attributes", data={"csrf": csrf, "nickname": "y" * 200},
                        follow_redirects=True).status_code == 200
    assert api.get(f"/individuals/{code}/history").json()["attributes"]["nickname"] == "y" * 200
