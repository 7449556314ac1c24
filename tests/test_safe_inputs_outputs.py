"""Inputs and outputs that can't hurt anyone: identify without recording deletes only its own upload, no
server path reaches a client, CSV cells never run as formulas, every time is stored in UTC, a Camtrap DP
package's tables stay inside its folder, a damaged model archive replaces nothing, a malformed MegaDetector entry
is reported by its row. Real SQLite, Qdrant Edge, the offline models and FastAPI's in-process client."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import rows_of, season_copy
from sqlalchemy import select

from registry.curation import darwin_core, exports
from registry.curation.spreadsheet_safety import safe_cell
from registry.ingest.ingestion import Ingestor
from registry.ingest.manifest import ManifestError
from registry.ingest.megadetector import read_batch_output
from registry.ingest.sources import read_source
from registry.interfaces import tokens
from registry.interfaces.api import create_app
from registry.matching.embedders import CARD_FORMAT
from registry.matching.pipeline import Pipeline
from registry.services.reembedding import ModelError
from registry.services.registry import Registry
from registry.services.training import TRAINED_DIR
from registry.settings import Settings
from registry.store.tables import Embedder, Image, Location


@pytest.fixture
def registry(tmp_path: Path, population: Path, offline_pipeline: Pipeline):  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path / "reg", profile="offline", photo_root=str(tmp_path / "photos"))
    Registry.init(settings)
    references = season_copy(population, 1, tmp_path / "photos" / "s1", count=4)
    with Registry(settings, pipeline=offline_pipeline) as opened:
        Ingestor(opened).ingest(references, "s1", "reference")
        yield opened


@pytest.fixture
def api(registry: Registry, tmp_path: Path) -> TestClient:  # type: ignore[misc]
    imports = tmp_path / "imports"
    imports.mkdir()
    registry.settings.api_import_root = str(imports)
    token = tokens.create(registry.catalog, "field-team", scope="admin")
    with TestClient(create_app(registry.settings, registry)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def _upload(path: Path) -> dict:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


def test_identify_without_recording_never_deletes_a_recorded_sightings_photo(
    api: TestClient, registry: Registry, population: Path,
) -> None:
    rows = rows_of(population / "season2" / "manifest.csv")
    recorded_photo, fresh_photo = population / "season2" / rows[0]["image"], population / "season2" / rows[1]["image"]
    recorded = api.post("/identify", files=_upload(recorded_photo), data={"species": "synleopard", "record": "true"})
    assert recorded.status_code == 200, recorded.text
    stored = registry.settings.data_dir / "uploads" / recorded.json()["image"]
    assert stored.is_file()
    looked_up = api.post("/identify", files=_upload(recorded_photo), data={"species": "synleopard"})
    assert looked_up.status_code == 200, looked_up.text
    assert stored.is_file(), "identify with record=false deleted the stored photo of a recorded sighting"
    history = api.get(f"/individuals/{recorded.json()['individual']}/history").json()
    assert any(s["sha256"] == stored.stem for s in history["sightings"])
    fresh = api.post("/identify", files=_upload(fresh_photo), data={"species": "synleopard"})
    assert fresh.status_code == 200
    assert not (registry.settings.data_dir / "uploads" / fresh.json()["image"]).exists()  # its own upload: gone


def test_no_server_path_reaches_a_client(api: TestClient, registry: Registry, tmp_path: Path,
                                         population: Path) -> None:
    imports = tmp_path / "imports"
    season = season_copy(population, 2, imports / "s2", count=3)
    with open(season, "a") as f:  # a row whose photo is missing: its problem names the file
        f.write("images/missing.jpg,,synleopard,,,,\n")
    recorded = api.post("/identify", files=_upload(imports / "s2" / rows_of(season)[0]["image"]),
                        data={"species": "synleopard", "record": "true"}).json()
    job = api.post("/ingest", json={"manifest": "s2/manifest.csv", "survey": "s2", "mode": "identify"}).json()
    for _ in range(600):
        status = api.get(f"/jobs/{job['job']}").json()
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.5)
    assert status["status"] == "done", status
    assert any("missing.jpg" in p for p in status["report"]["problems"])
    answers = {
        "job": json.dumps(status),
        "history": api.get(f"/individuals/{recorded['individual']}/history").text,
        "review": api.get("/review", params={"margin": 1e9, "limit": 50}).text,
        "sightings.csv": api.get("/exports/sightings.csv").text,
    }
    archive = zipfile.ZipFile(io.BytesIO(api.get("/exports/dwc.zip").content))
    answers["dwc"] = archive.read("occurrence.csv").decode()
    for name, text in answers.items():
        assert str(tmp_path) not in text, f"{name} names a server path: {text[:500]}"
    history = json.loads(answers["history"])
    assert all(not Path(s["image"]).is_absolute() for s in history["sightings"])


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised_and_numbers_are_not(
    tmp_path: Path, population: Path, offline_pipeline: Pipeline,
) -> None:
    assert [safe_cell(v) for v in ("=1+2", "+1-2", "-x", "@SUM(A1)", "\tx", "\rx", "-1.5", "+3", "cow", -2.0)] == [
        "'=1+2", "'+1-2", "'-x", "'@SUM(A1)", "'\tx", "'\rx", "-1.5", "+3", "cow", -2.0]
    folder = tmp_path / "season"
    manifest = season_copy(population, 1, folder, count=2)
    rows = rows_of(manifest)
    rows[0]["identity"] = "=HYPERLINK(\"http://evil.example\",\"click\")"
    rows[0]["longitude"] = "-1.5"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = Settings(data_dir=tmp_path / "reg", profile="offline")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(manifest, "@season", "reference")
        out = tmp_path / "sightings.csv"
        exports.write_sightings(registry.catalog, out)
        darwin_core.export(registry.catalog, tmp_path / "dwc.zip")
    with open(out) as f:
        written = list(csv.DictReader(f))
    assert {r["name"] for r in written} >= {"'=HYPERLINK(\"http://evil.example\",\"click\")"}
    assert {r["survey"] for r in written} == {"'@season"}
    assert "-1.5" in {r["longitude"] for r in written}
    with zipfile.ZipFile(tmp_path / "dwc.zip") as archive:
        occurrences = archive.read("occurrence.csv").decode()
    assert ",@season," not in occurrences and ",'@season," in occurrences  # the survey is DwC's eventID


def test_every_capture_time_is_stored_in_utc(tmp_path: Path, population: Path, offline_pipeline: Pipeline) -> None:
    """An offset is converted; a naive time is read in the row's zone, else its location's as recorded, else
    the registry's (`time_zone`, here Europe/Prague: UTC+2 in May)."""
    folder = tmp_path / "season"
    manifest = season_copy(population, 1, folder, count=4)
    rows = rows_of(manifest)
    times = [("2026-05-01T08:00:00+02:00", "", "cam-a"), ("2026-05-01T08:00:00", "Africa/Nairobi", "cam-b"),
             ("2026-05-01T09:00:00", "", "cam-b"), ("2026-05-01T08:00:00", "", "")]
    for row, (when, zone, location) in zip(rows, times, strict=True):
        row.update(captured_at=when, time_zone=zone, location=location)
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = Settings(data_dir=tmp_path / "reg", profile="offline", time_zone="Europe/Prague")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        report = Ingestor(registry).ingest(manifest, "s", "reference")
        assert not report.problems, report.problems
        with registry.catalog.transaction() as session:
            stored = {Path(path).name: when for path, when in session.execute(select(Image.path, Image.captured_at))}
            zones = dict(session.execute(select(Location.name, Location.time_zone)).all())
    expected = [datetime(2026, 5, 1, 6), datetime(2026, 5, 1, 5), datetime(2026, 5, 1, 6), datetime(2026, 5, 1, 6)]
    assert [stored[Path(r["image"]).name] for r in rows] == expected
    assert zones == {"cam-a": None, "cam-b": "Africa/Nairobi"}
    bad = tmp_path / "bad.csv"
    bad.write_text("image,species,captured_at,time_zone\nx.jpg,cow,2026-05-01T08:00:00,Mars/Olympus\n")
    assert "Mars/Olympus" in str(read_source(bad).problems[0])


def test_a_camtrap_dp_package_cannot_name_tables_outside_its_folder(tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    (tmp_path / "secret.csv").write_text("deploymentID\nx\n")
    descriptor = {"profile": "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/camtrap-dp-profile.json",
                  "resources": [{"name": "deployments", "path": "../secret.csv"},
                                {"name": "media", "path": "media.csv"},
                                {"name": "observations", "path": "observations.csv"}]}
    (package / "datapackage.json").write_text(json.dumps(descriptor))
    with pytest.raises(ManifestError, match="outside the package folder"):
        read_source(package)
    descriptor["resources"][0]["path"] = "deployments.csv"
    (package / "datapackage.json").write_text(json.dumps(descriptor))
    (package / "deployments.csv").write_text("deploymentID,locationName,latitude,longitude,deploymentStart,"
                                             "deploymentEnd\nd1,cam,0,0,2026-05-01T00:00:00Z,2026-05-02T00:00:00Z\n")
    (package / "media.csv").write_text("mediaID,deploymentID,timestamp,filePath\nm2,d1,2026-05-01T06:00:01Z,"
                                       "photos/a.jpg\n")
    (package / "observations.csv").write_text("observationID,deploymentID,mediaID,eventStart,eventEnd,"
                                              "observationType,scientificName\n"
                                              "o2,d1,m2,,,animal,Tragelaphus angasii\n")
    manifest = read_source(package)  # the tables inside the package are read
    assert [str(r.image) for r in manifest.rows] == [str(package / "photos" / "a.jpg")]


def test_a_malformed_megadetector_entry_is_reported_by_its_row(tmp_path: Path) -> None:
    output = {"detection_categories": {"1": "animal"}, "info": {"species": "nyala"}, "images": [
        {"file": "a.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5]}]},
        {"file": "b.jpg", "detections": ["not a detection"]},
        {"file": "c.jpg", "detections": 7},
        {"file": "d.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2]},
                                         {"category": "1", "conf": "nan", "bbox": [0.5, 0.5, 0.2, 0.2]}]},
        {"file": "e.jpg", "detections": [{"category": "1", "conf": 0.8, "bbox": [0.2, 0.2, 0.3, 0.3]}]},
    ]}
    path = tmp_path / "md.json"
    path.write_text(json.dumps(output))
    manifest = read_batch_output(path)
    assert sorted(r.image.name for r in manifest.rows) == ["a.jpg", "e.jpg"]  # d.jpg is reported whole
    assert sorted(p.line for p in manifest.problems) == [2, 3, 4]


def test_a_damaged_model_archive_replaces_nothing(registry: Registry, tmp_path: Path) -> None:
    registry.collections  # noqa: B018  (registers the base embedder's weights)
    with registry.catalog.transaction() as session:
        parent = session.scalar(select(Embedder.weights_sha256))
    folder = registry.settings.weights_dir / TRAINED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    installed = folder / "model-v2.safetensors"
    installed.write_bytes(b"the model in force")
    card = {"format": CARD_FORMAT, "name": registry.pipeline.primary.name, "weights_sha256": "0" * 64,
            "parent": {"weights_sha256": parent}}
    archive = tmp_path / "model-v2.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("model-v2.json", json.dumps(card))
        zipped.writestr("model-v2.safetensors", b"a damaged copy")
    with pytest.raises(ModelError, match="damaged"):
        registry.embedder_versions.install(archive)
    assert installed.read_bytes() == b"the model in force"
    assert sorted(p.name for p in folder.iterdir()) == ["model-v2.safetensors"]
