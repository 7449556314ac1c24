"""The unit is an animal: annotations (boxes), several animals per photo, MegaDetector output, events decided
jointly, location scoping, and the upgrade that turns every existing photo into one whole-image annotation."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers import run_cli
from sqlalchemy import func, select, text

from registry.curation.curator import Curator
from registry.evaluate import synth
from registry.ingest.events import animals, assign_events
from registry.ingest.ingestion import Ingestor
from registry.ingest.sources import read_manifest, read_source
from registry.matching.pipeline import Pipeline
from registry.services.recording import PhotoRow
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store import migrate
from registry.store.catalog import Catalog, CatalogError
from registry.store.stores import Stores
from registry.store.tables import Annotation, Decision, Image, Sighting


@pytest.fixture(scope="module")
def traps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two camera-trap seasons: bursts of 3 photos, half the visits shared by 2-3 animals."""
    root = tmp_path_factory.mktemp("traps")
    synth.generate(root, individuals=6, seasons=2, seed=11, photos_per_sighting=(3, 3), camera_traps=True,
                   group_rate=0.5)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def season1_registry(tmp_path_factory: pytest.TempPathFactory, offline_pipeline: Pipeline, traps: Path) -> Path:
    """A registry holding season 1 of the camera traps as reference annotations (built once, copied per test)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("season1") / "reg", profile="offline")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(traps / "season1" / "manifest.csv", "season-1", "reference")
    return settings.data_dir


def _registry(tmp_path: Path, offline_pipeline: Pipeline, season1: Path) -> Registry:
    """A fresh copy of the season-1 registry, open for writing."""
    import shutil

    shutil.copytree(season1, tmp_path / "reg")
    return Registry(Settings.load(tmp_path / "reg"), pipeline=offline_pipeline)


def test_upgrade_turns_each_photo_into_a_whole_image_annotation_with_its_id(database_url: str) -> None:
    catalog = Catalog(database_url)
    migrate.upgrade(catalog.engine, "0005")
    now = "2024-05-01 10:00:00"
    with catalog.engine.begin() as connection:
        connection.execute(text("INSERT INTO individuals (code, species, species_seq, created_at) "
                                "VALUES ('NYA-0001', 'nyala', 1, :t)"), {"t": now})
        for number in (7, 9):  # ids with a gap: they must survive as annotation ids
            connection.execute(text(
                "INSERT INTO images (id, sha256, path, species, viewpoint, width, height, ingested_at, status) "
                "VALUES (:id, :sha, :path, 'nyala', 'left', 10, 10, :t, 'indexed')"),
                {"id": number, "sha": str(number) * 64, "path": f"/p/{number}.jpg", "t": now})
        connection.execute(text(
            "INSERT INTO decisions (id, image_id, outcome, threshold, candidates, profile, model_versions, "
            "created_at) VALUES (3, 9, 'new', 0.5, '[]', 'offline', '{}', :t)"), {"t": now})
        individual = connection.execute(text("SELECT id FROM individuals")).scalar_one()
        for image, decision, method in ((7, None, "reference"), (9, 3, "automatic")):
            connection.execute(text(
                "INSERT INTO sightings (image_id, individual_id, method, decision_id, status, created_at) "
                "VALUES (:i, :ind, :m, :d, 'active', :t)"),
                {"i": image, "ind": individual, "m": method, "d": decision, "t": now})
    migrate.upgrade(catalog.engine)
    with catalog.transaction() as session:
        annotations = {a.id: a for a in session.scalars(select(Annotation))}
        assert sorted(annotations) == [7, 9]
        assert all(a.image_id == a.id and a.region == "whole" and a.box is None and a.source == "whole-image"
                   and a.species == "nyala" and a.viewpoint == "left" and a.status == "indexed"
                   for a in annotations.values())
        assert sorted(session.scalars(select(Sighting.annotation_id))) == [7, 9]
        assert session.get(Decision, 3).annotation_id == 9
        fresh = catalog.add_annotation(session, session.get(Image, 7), "nyala", box=(0.1, 0.1, 0.5, 0.5))
        assert fresh.id > 9  # the id sequence continues after the ids carried over
    assert catalog.history("NYA-0001")["sightings"][0]["annotation"] in (7, 9)
    catalog.close()


def test_manifest_boxes_are_validated_per_row_and_pixels_are_normalised(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    PILImage.new("RGB", (200, 100)).save(tmp_path / "a.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,species,bbox_x,bbox_y,bbox_w,bbox_h\n"
        "a.jpg,nyala,0.1,0.2,0.3,0.4\n"     # line 2: one animal
        "a.jpg,nyala,0.5,0.2,0.4,0.4\n"     # line 3: a second animal in the same photo
        "a.jpg,nyala,0.1,0.2,0.3,0.4\n"     # line 4: the first box again
        "a.jpg,nyala,0.1,,0.3,0.4\n"        # line 5: incomplete
        "a.jpg,nyala,0.8,0.2,0.5,0.4\n"     # line 6: outside the photo
        "a.jpg,nyala,,,,\n")                # line 7: the whole photo
    parsed = read_manifest(manifest)
    assert [r.box for r in parsed.rows] == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.2, 0.4, 0.4), None]
    assert {p.line: p.reason for p in parsed.problems}.keys() == {4, 5, 6}
    reasons = {p.line: p.reason for p in parsed.problems}
    assert "duplicate of line 2" in reasons[4] and "needs all of" in reasons[5] and "not valid" in reasons[6]
    pixels = tmp_path / "px.csv"
    pixels.write_text("image,species,bbox_x,bbox_y,bbox_w,bbox_h\na.jpg,nyala,20,10,100,50\n")
    assert read_manifest(pixels, bbox_pixels=True).rows[0].box == pytest.approx((0.1, 0.1, 0.5, 0.5))
    assert read_manifest(pixels).problems[0].line == 2  # pixel numbers read as normalised: refused, named


def test_events_follow_deployments_and_time_and_animals_follow_their_boxes() -> None:
    t0 = datetime(2024, 6, 1, 6, 0, 0)

    def row(line: int, seconds: float, deployment: str | None, box=None, image: str | None = None,
            sequence: str | None = None) -> PhotoRow:
        return PhotoRow(line, Path(image or f"/p/{line}.jpg"), "x", captured_at=t0 + timedelta(seconds=seconds),
                        deployment=deployment, box=box, sequence=sequence)

    rows = assign_events([row(2, 0, "A"), row(3, 3, "A"), row(4, 6, "A"), row(5, 300, "A"), row(6, 3, "B"),
                          row(7, 5, None), row(8, 600, "A", sequence="given")], interval_seconds=60)
    sequences = [r.sequence for r in rows]
    assert sequences[0] == sequences[1] == sequences[2] != sequences[3]
    assert sequences[4] not in sequences[:4] and sequences[5] is None and sequences[6] == "given"

    left, right = (0.05, 0.1, 0.4, 0.8), (0.55, 0.1, 0.4, 0.8)
    frames = [row(10 + k, k, "A", box=box, image=f"/p/frame{k}.jpg")
              for k in range(3) for box in ((left, right) if k != 1 else (right, left))]
    tracks = animals(frames)
    assert len(tracks) == 2 and all(len(t) == 3 for t in tracks)
    assert {tuple(r.box for r in t) for t in tracks} == {(left,) * 3, (right,) * 3}
    assert len(animals([row(20 + k, k, "A") for k in range(3)])) == 1  # one animal a frame: one animal


def test_megadetector_output_two_animals_in_a_photo_give_two_annotations_and_sightings(
        tmp_path: Path, offline_pipeline: Pipeline, traps: Path, season1_registry: Path) -> None:
    season2 = traps / "season2"
    md = json.loads((season2 / "megadetector.json").read_text())
    kept = {e["file"]: [d for d in e["detections"] if d["conf"] >= 0.2] for e in md["images"]}
    crowded = next(f for f, found in kept.items() if len(found) >= 2)
    # a photo MegaDetector failed on, and a person: reported and ignored
    md["images"] += [{"file": "images/missing.jpg", "failure": "image access failed"},
                     {"file": crowded, "detections": [{"category": "2", "conf": 0.9, "bbox": [0, 0, 0.1, 0.1]}]}]
    faulty = season2 / "md-with-failure.json"
    faulty.write_text(json.dumps(md))
    parsed = read_source(faulty)
    assert parsed.format == "megadetector"
    assert [p.line for p in parsed.problems] == [len(md["images"]) - 1] and "failed" in parsed.problems[0].reason
    assert any("below --min-conf" in w for w in parsed.warnings)

    with _registry(tmp_path, offline_pipeline, season1_registry) as registry:
        report = Ingestor(registry).ingest(faulty, "season-2", "identify", layout="megadetector")
        assert report.added == sum(len(found) for found in kept.values())
        with registry.catalog.transaction() as session:
            image = session.scalar(select(Image).where(Image.path == str((season2 / crowded).resolve())))
            boxes = session.scalars(select(Annotation).where(Annotation.image_id == image.id)).all()
            assert sorted(a.box for a in boxes) == sorted(tuple(d["bbox"]) for d in kept[crowded])
            assert {a.source for a in boxes} == {"megadetector"} and all(a.confidence >= 0.2 for a in boxes)
            sightings = session.scalars(select(Sighting).where(Sighting.annotation_id.in_([a.id for a in boxes])))
            assert len(list(sightings)) == len(boxes)
        again = Ingestor(registry).ingest(faulty, "season-2", "identify", layout="megadetector")
        assert again.added == 0 and again.already_present == report.added  # per photo and box
        from registry.ingest import doctor
        assert doctor.check(registry)["consistent"]


def test_a_burst_is_one_joint_decision_and_curation_acts_on_all_its_photos(
        tmp_path: Path, offline_pipeline: Pipeline, traps: Path, season1_registry: Path) -> None:
    package = traps / "season2" / "camtrap-dp"
    observations = _rows(package / "observations.csv")
    with _registry(tmp_path, offline_pipeline, season1_registry) as registry:
        report = Ingestor(registry).ingest(package, "season-2", "identify")
        assert report.added == len(observations) and not report.problems
        # one animal per burst and box position: as many decisions as animals, not as photos
        animals_seen = {(o["eventID"], o["bboxX"]) for o in observations}
        with registry.catalog.transaction() as session:
            decisions = session.scalars(select(Decision).where(Decision.event_id.is_not(None))).all()
            assert len(decisions) == len(animals_seen) == report.matched + report.new_individuals
            per_decision = dict(session.execute(select(Sighting.decision_id, func.count())
                                                .group_by(Sighting.decision_id)
                                                .where(Sighting.decision_id.is_not(None))).all())
            assert set(per_decision.values()) == {3}  # each animal's three photos
            joint = decisions[0]
            members = session.scalars(select(Annotation).join(Sighting, Sighting.annotation_id == Annotation.id)
                                      .where(Sighting.decision_id == joint.id)).all()
            assert {a.event_id for a in members} == {joint.event_id} and len({a.image_id for a in members}) == 3
    with Stores(registry.settings, write=True) as stores:
        result = Curator(stores, actor="tester").confirm(joint.id)
        assert result["annotations"] == 3
        with stores.catalog.transaction() as session:
            methods = session.scalars(select(Sighting.method).where(Sighting.decision_id == joint.id)).all()
        assert methods == ["confirmed"] * 3
        Curator(stores, actor="tester").undo(result["change"])
        with stores.catalog.transaction() as session:
            methods = session.scalars(select(Sighting.method).where(Sighting.decision_id == joint.id)).all()
        assert methods == ["automatic"] * 3


def test_identification_can_be_scoped_to_locations(tmp_path: Path, offline_pipeline: Pipeline, traps: Path,
                                                   season1_registry: Path) -> None:
    query = traps / "season2" / _rows(traps / "season2" / "manifest.csv")[0]["image"]
    with _registry(tmp_path, offline_pipeline, season1_registry) as registry:
        everywhere = registry.identify(query, synth.SPECIES)
        states = registry.catalog.annotation_states()
        station_of = {a: s["location_id"] for a, s in states.items()}
        seen = {station_of[c.best_annotation_id] for c in everywhere.outcome.ranked}
        assert len(seen) > 1
        with registry.catalog.transaction() as session:
            from registry.store.tables import Location
            names = dict(session.execute(select(Location.id, Location.name)).all())
        chosen = next(iter(seen))
        scoped = registry.identify(query, synth.SPECIES, locations=[names[chosen]])
        assert scoped.outcome.ranked and all(
            station_of[image.annotation_id] == chosen for c in scoped.outcome.ranked for image in c.images)
        with pytest.raises(CatalogError, match="no location named 'nowhere'"):
            registry.identify(query, synth.SPECIES, locations=["nowhere"])


def test_detect_writes_megadetector_output_that_ingest_reads(tmp_path: Path, traps: Path) -> None:
    """`registry detect` with the test stand-in detector (MegaDetector's interface, random weights): the file is
    MegaDetector batch output, an unreadable photo is a failure entry, and the file says its boxes mean nothing."""
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(traps / "season2" / "images", photos)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "md.json"
    run_cli(tmp_path / "reg", "detect", str(photos), "--out", str(out), "--species", synth.SPECIES,
            "--tiny-random-for-tests")
    written = json.loads(out.read_text())
    assert len(written["images"]) == len(list(photos.iterdir()))
    assert "TESTS ONLY" in written["info"]["detector"]
    assert written["info"]["detector_metadata"]["real_detector"] is False
    parsed = read_source(out, min_confidence=0.0)
    assert [p.reason for p in parsed.problems if "broken.jpg" in p.reason] and len(parsed.problems) == 1
    detected = sum(len(e.get("detections", [])) for e in written["images"])
    assert len(parsed.rows) == detected > 0 and {r.source for r in parsed.rows} == {"megadetector"}
    assert all(r.image.is_file() and r.species == synth.SPECIES for r in parsed.rows)
