"""Curation with an audit trail, the review queue, histories, match sheets and exports — on SQLite and
PostgreSQL with embedded Qdrant and the offline models."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import zipfile
from datetime import datetime
from pathlib import Path

import frictionless
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from registry.curation import camtrap_dp, darwin_core, exports, review, secr
from registry.curation.curator import CurationError, Curator
from registry.curation.sheets import CAPTION, HEADER, PANEL, render
from registry.ingest.ingestion import Ingestor
from registry.matching.pipeline import Pipeline
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import CatalogError
from registry.store.tables import Decision, Individual, Sighting


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def registry(database_url: str, tmp_path: Path, population: Path, offline_pipeline: Pipeline) -> Registry:
    settings = Settings(data_dir=tmp_path / "reg", database_url=database_url, profile="offline")
    Registry.init(settings)
    registry = Registry(settings, pipeline=offline_pipeline)
    Ingestor(registry).ingest(population / "season1" / "manifest.csv", "season-1", "reference")
    yield registry
    registry.close()


def _state(registry: Registry) -> dict:
    """SQL rows curation may touch, and every vector payload's individual."""
    with registry.catalog.transaction() as session:
        sightings = sorted((s.id, s.annotation_id, s.individual_id, s.method, s.status)
                           for s in session.scalars(select(Sighting)))
        individuals = sorted((i.id, i.code, i.merged_into_id) for i in session.scalars(select(Individual)))
    payloads = {c: sorted((i, p["individual_id"]) for i, p in registry.index.payloads(c))
                for c in registry.collections.values()}
    return {"sightings": sightings, "individuals": individuals, "payloads": payloads}


def test_merge_then_undo_restores_rows_and_payloads_exactly(registry: Registry) -> None:
    curator = Curator(registry.stores, actor="tester")
    individuals = registry.catalog.individuals()
    keep, absorb = individuals[0]["code"], individuals[1]["code"]
    before = _state(registry)
    merged = curator.merge(keep, absorb, reason="same spots")
    assert merged["summary"] == f"merged {absorb} into {keep}"
    history = registry.catalog.history(absorb)  # the absorbed code resolves to the survivor
    assert history["individual"] == keep and len(history["sightings"]) == 4
    assert history["merges"][0]["summary"] == merged["summary"]
    payload_individuals = {p for c in _state(registry)["payloads"].values() for _, p in c}
    assert individuals[1]["id"] not in payload_individuals
    with pytest.raises(CurationError, match=f"already merged into {keep}"):
        curator.merge(keep, absorb)
    curator.undo(merged["change"], reason="different animals after all")
    assert _state(registry) == before
    with pytest.raises(CurationError, match="already undone"):
        curator.undo(merged["change"])
    assert registry.catalog.history(absorb)["individual"] == absorb


def test_decisions_confirmed_reassigned_rejected_and_histories(registry: Registry, population: Path) -> None:
    curator = Curator(registry.stores, actor="tester")
    known = {r["identity"] for r in _rows(population / "season1" / "manifest.csv")}
    queries = [r for r in _rows(population / "season2" / "manifest.csv") if r["identity"] in known][:3]
    answers = [registry.identify(population / "season2" / q["image"], "synleopard", record=True, survey="season-2")
               for q in queries]
    assert all(a.outcome.outcome == "match" for a in answers)
    first, second, third = answers

    curator.confirm(first.decision_id)
    with pytest.raises(CurationError, match="already confirmed"):
        curator.confirm(first.decision_id)
    other = next(i["code"] for i in registry.catalog.individuals() if i["code"] != second.individual_code)
    moved = curator.reassign(second.decision_id, other, reason="tail notch")
    assert moved["individual"] == other
    curator.reject(third.decision_id, reason="two animals in the photo")

    by_image = registry.catalog.individual_of_image(str(population / "season2" / queries[0]["image"]))
    history = registry.catalog.history(by_image)
    methods = {Path(s["image"]).name: s["method"] for s in history["sightings"]}
    assert methods[Path(queries[0]["image"]).name] == "confirmed"
    assert [s["method"] for s in registry.catalog.history(other)["sightings"]].count("corrected") == 1
    rejected = registry.catalog.history(third.individual_code)["sightings"]
    assert Path(queries[2]["image"]).name not in {Path(s["image"]).name for s in rejected}
    states = registry.catalog.annotation_states([third.annotation_id])
    assert states[third.annotation_id]["individual_id"] is None
    payloads = dict(registry.index.payloads(registry.collections["efficientnet-lite0"]))
    assert payloads[third.annotation_id].get("individual_id") is None  # a rejected photo is no longer a candidate

    new = curator.reassign(first.decision_id, new=True)
    split_source = registry.catalog.history(new["individual"])
    assert len(split_source["sightings"]) == 1 and split_source["sightings"][0]["method"] == "corrected"
    undone = curator.undo(new["change"])
    assert undone["retired"] == [new["individual"]]
    assert registry.catalog.history(new["individual"])["individual"] == first.individual_code


def test_split_moves_chosen_photos_to_a_new_individual(registry: Registry) -> None:
    curator = Curator(registry.stores)
    code = registry.catalog.individuals()[0]["code"]
    photos = registry.catalog.history(code)["sightings"]
    result = curator.split(code, [photos[0]["sha256"]], reason="two animals")
    assert len(registry.catalog.history(result["individual"])["sightings"]) == 1
    assert len(registry.catalog.history(code)["sightings"]) == len(photos) - 1
    with pytest.raises(CurationError, match="nothing to split"):
        curator.split(result["individual"], [photos[0]["image"]])
    curator.undo(result["change"])
    assert len(registry.catalog.history(code)["sightings"]) == len(photos)


def test_review_queue_of_recorded_decisions_puts_the_most_uncertain_first(registry: Registry,
                                                                         population: Path) -> None:
    registry.calibrate()
    Ingestor(registry).ingest(population / "season2" / "manifest.csv", "season-2", "identify")
    everything = review.queue(registry.catalog, limit=1000, margin=10.0)
    with registry.catalog.transaction() as session:
        recorded = session.scalar(select(func.count()).select_from(Decision))
    assert recorded and len(everything) == recorded  # every automatic decision, none twice
    uncertainties = [e["uncertainty"] for e in everything]
    assert uncertainties == sorted(uncertainties)
    for entry in everything:  # each entry's uncertainty is the smaller of its own margins
        scores = [c["score"] for c in entry["candidates"]]
        if entry["outcome"] == "new":
            expected = entry["threshold"] - scores[0]
        else:
            expected = min(entry["score"] - entry["threshold"],
                           entry["score"] - scores[1] if len(scores) > 1 else float("inf"))
        assert entry["uncertainty"] == pytest.approx(expected, abs=1e-4)
    tight = review.queue(registry.catalog, limit=1000, margin=0.1)
    assert tight == [e for e in everything if e["uncertainty"] <= 0.1]
    first = everything[0]["decision"]
    Curator(registry.stores).confirm(first)
    assert first not in {e["decision"] for e in review.queue(registry.catalog, limit=1000, margin=10.0)}


def test_capture_history_matches_the_truth_and_mark_format(registry: Registry, population: Path,
                                                           tmp_path: Path) -> None:
    Ingestor(registry).ingest(population / "season2" / "manifest.csv", "season-2", "reference")
    truth: dict[str, set[str]] = {}
    for season in (1, 2):
        for row in _rows(population / f"season{season}" / "manifest.csv"):
            truth.setdefault(row["identity"], set()).add(f"season-{season}")
    code_of = {i["name"]: i["code"] for i in registry.catalog.individuals()}
    occasions, matrix, undated = exports.capture_history(registry.catalog, "survey")
    assert occasions == ["season-1", "season-2"] and undated == 0
    assert matrix == {code_of[name]: [int("season-1" in s), int("season-2" in s)] for name, s in truth.items()}
    years, by_year, _ = exports.capture_history(registry.catalog, "year")
    assert years == ["2021", "2022"] and by_year == matrix

    inp = tmp_path / "histories.inp"
    exports.write_capture_history(registry.catalog, inp, "survey", fmt="mark")
    lines = inp.read_text().splitlines()
    assert lines[0].startswith("/*") and lines[0].endswith("*/") and "female male" in lines[1]
    parsed = {}
    for line in lines[2:]:
        match = re.fullmatch(r"/\* (\S+) \*/ ([01]+) 1 0 0 0 0 0;", line)  # covariates: nothing recorded
        assert match, line
        parsed[match.group(1)] = [int(c) for c in match.group(2)]
    assert parsed == matrix
    csv_path = tmp_path / "histories.csv"
    exports.write_capture_history(registry.catalog, csv_path, "survey")
    assert {r["individual"]: r["ch"] for r in _rows(csv_path)} == {
        code: "".join(map(str, row)) for code, row in matrix.items()}

    # explicit occasions, fixed-length occasions and the robust design, against the truth from the manifests
    dates = {f"season-{k}": sorted(r["captured_at"][:10] for r in _rows(population / f"season{k}" / "manifest.csv"))
             for k in (1, 2)}
    ranges_file = tmp_path / "occasions.csv"
    ranges_file.write_text("start,end,label\n" + "".join(f"{d[0]},{d[-1]},{s}\n" for s, d in dates.items()))
    ranged, by_range, _ = exports.capture_history(registry.catalog, ranges=exports.read_occasions(ranges_file))
    assert ranged == ["season-1", "season-2"] and by_range == matrix
    robust = exports.write_capture_history(registry.catalog, tmp_path / "robust.csv", robust=True)
    days = [f"{s}/{d}" for s, ds in dates.items() for d in sorted(set(ds))]
    assert robust["occasions"] == days
    assert robust["time_intervals"] == [int(a.split("/")[0] != b.split("/")[0]) for a, b in itertools.pairwise(days)]
    weekly, by_week, _ = exports.capture_history(registry.catalog, occasion_days=7)
    assert weekly[0] == min(dates["season-1"]) and all(sum(row) >= 1 for row in by_week.values())
    bad = tmp_path / "bad-occasions.csv"
    bad.write_text("start,end\n2022-01-10,2022-01-01\n")
    with pytest.raises(CatalogError, match=r"bad-occasions\.csv:2: end"):
        exports.read_occasions(bad)

    a, b = sorted(code_of.values())[:2]
    Curator(registry.stores).merge(a, b)
    _, merged, _ = exports.capture_history(registry.catalog, "survey")
    assert b not in merged and merged[a] == [x | y for x, y in zip(matrix[a], matrix[b], strict=True)]
    count = exports.write_sightings(registry.catalog, tmp_path / "sightings.csv")
    rows = _rows(tmp_path / "sightings.csv")
    assert count == len(rows) == registry.catalog.stats()["sightings"]
    assert {r["individual"] for r in rows} == set(merged)


def test_match_sheet_is_rendered(registry: Registry, population: Path, tmp_path: Path) -> None:
    known = {r["identity"] for r in _rows(population / "season1" / "manifest.csv")}
    query = next(r for r in _rows(population / "season2" / "manifest.csv") if r["identity"] in known)
    answer = registry.identify(population / "season2" / query["image"], "synleopard", record=True)
    result = render(registry, answer.decision_id, tmp_path / "sheet.png", candidates=3)
    with PILImage.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (2 * PANEL[0], HEADER + 3 * (PANEL[1] + CAPTION))
    assert result["correspondences_drawn"] >= 40  # the correspondences the engine counted for the true match


def test_attributes_are_edited_with_audit_and_undo_and_places_come_from_the_manifest(
        registry: Registry, population: Path, tmp_path: Path) -> None:
    rows = _rows(population / "season2" / "manifest.csv")[:4]
    manifest = tmp_path / "placed.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "identity", "species", "captured_at", "latitude", "longitude", "location",
                         "deployment", "sex", "life_stage"])
        places = [("waterhole", "wh-cam1", "female", "adult"), ("waterhole", "wh-cam1", "", ""),
                  ("ridge", "wh-cam1", "", ""),  # one deployment, two locations: the row is refused
                  ("ridge", "ridge-cam2", "dragon", "")]  # not a sex
        for row, (location, deployment, sex, stage) in zip(rows, places, strict=True):
            writer.writerow([str(population / "season2" / row["image"]), "Tess", row["species"], row["captured_at"],
                             row["latitude"], row["longitude"], location, deployment, sex, stage])
    report = Ingestor(registry).ingest(manifest, "season-2", "reference")
    reasons = [str(p) for p in report.problems]
    assert report.added == 2 and len(reasons) == 2
    assert any(":4: deployment 'wh-cam1' is at location 'waterhole'" in r for r in reasons)
    assert any(":5: sex 'dragon' is not one of female, male, unknown" in r for r in reasons)
    history = registry.catalog.history("Tess")
    assert history["attributes"]["sex"] == "female" and history["attributes"]["life_stage"] == "adult"
    assert {(s["location"], s["deployment"]) for s in history["sightings"]} == {("waterhole", "wh-cam1")}

    curator = Curator(registry.stores, actor="tester")
    code = history["individual"]
    before = registry.catalog.history(code)["attributes"]
    edited = curator.edit(code, reason="seen with calf", life_stage="subadult", nickname="Tess the Bold",
                          alternate_ids=["Wildbook:ZB-12", "Wildbook:ZB-12", " park:7 "])
    assert edited["attributes"]["alternate_ids"] == ["Wildbook:ZB-12", "park:7"]
    after = registry.catalog.history(code)
    assert after["attributes"]["life_stage"] == "subadult" and after["attributes"]["nickname"] == "Tess the Bold"
    assert after["merges"][-1]["summary"].startswith(f"edited {code}: life_stage 'subadult'")
    with pytest.raises(CurationError, match="not one of"):
        curator.edit(code, sex="hermaphrodite")
    with pytest.raises(CurationError, match="already has"):
        curator.edit(code, life_stage="subadult")
    exported = tmp_path / "sightings.csv"
    exports.write_sightings(registry.catalog, exported)
    mine = [r for r in _rows(exported) if r["individual"] == code]
    assert {(r["sex"], r["life_stage"], r["location"], r["deployment"]) for r in mine} == {
        ("female", "subadult", "waterhole", "wh-cam1")}

    registry.catalog.set_scientific_name("synleopard", "Panthera synthetica")
    package = tmp_path / "camtrap"
    result = camtrap_dp.export(registry.catalog, package)
    assert result["media"] == result["observations"] == len(_rows(exported)) > 0 and result["problems"] == []
    for table in ("deployments", "media", "observations"):  # every field as Camtrap DP 1.0 specifies it
        report = frictionless.Resource(path=f"{table}.csv", basepath=str(package),
                                       schema=frictionless.Schema.from_descriptor(camtrap_dp.table_schema(table))
                                       ).validate()
        assert report.valid, report.flatten(["type", "message"])
    observations = {r["individualID"]: r for r in _rows(package / "observations.csv")}
    tess = observations[code]
    assert (tess["sex"], tess["lifeStage"], tess["classificationMethod"], tess["classifiedBy"]) == (
        "female", "subadult", "human", "reference label")
    assert tess["scientificName"] == "Panthera synthetica" and tess["deploymentID"] == "wh-cam1"
    media = {r["mediaID"]: r for r in _rows(package / "media.csv")}
    assert set(media) >= {r["mediaID"] for r in _rows(package / "observations.csv")}
    assert all((package / m["filePath"]).resolve().is_file() for m in media.values())  # relative to the package
    descriptor = json.loads((package / "datapackage.json").read_text())
    assert descriptor["profile"].endswith("/1.0/camtrap-dp-profile.json")
    assert descriptor["taxonomic"] == [{"scientificName": "Panthera synthetica"}]

    again = curator.edit(code, notes="limps on the left hind leg")
    with pytest.raises(CurationError, match="edited again"):
        curator.undo(edited["change"])  # a later edit must be undone first
    curator.undo(again["change"])
    curator.undo(edited["change"])
    assert registry.catalog.history(code)["attributes"] == before


Detections = dict[tuple[str, int, str], int]


def _read_capthist(capt: Path, traps: Path) -> tuple[Detections, dict[str, tuple[float, float, str]]]:
    """The two DENSITY-format files as secr's read.capthist reads them: '#' starts a comment, fields are
    separated by white space; capt = Session ID Occasion Detector, traps = Detector X Y usage."""
    detections: Detections = {}
    for line in capt.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            _session, animal, occasion, detector = line.split()
            detections[(animal, int(occasion), detector)] = detections.get((animal, int(occasion), detector), 0) + 1
    detectors = {}
    for line in traps.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            label, x, y, usage = line.split()
            assert set(usage) <= {"0", "1"} and "_" not in label
            detectors[label] = (float(x), float(y), usage)
    return detections, detectors


def test_a_camera_trap_season_goes_in_as_camtrap_dp_and_comes_out_in_the_standards(
        tmp_path: Path, offline_pipeline: Pipeline) -> None:
    """Season 1 from its manifest (stations, bursts, true identities), season 2 as a Camtrap DP package identified
    by the registry; secr, Darwin Core, photo folders and Camtrap DP out, each checked against the truth."""
    from registry.evaluate import synth

    synth.generate(tmp_path / "traps", individuals=6, seasons=2, seed=3, photos_per_sighting=(2, 2),
                   camera_traps=True)
    season1, package = tmp_path / "traps" / "season1" / "manifest.csv", tmp_path / "traps" / "season2" / "camtrap-dp"
    rows = _rows(season1)
    settings = Settings(data_dir=tmp_path / "reg", profile="offline")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        assert Ingestor(registry).ingest(season1, "season-1", "reference").added == len(rows)
        codes = {r["name"]: r["code"] for r in registry.catalog.individuals()}
        with pytest.raises(CatalogError, match="not projected"):
            secr.export(registry.catalog, tmp_path / "bad", epsg=4326)
        result = secr.export(registry.catalog, tmp_path / "secr", epsg=32736, occasion_days=7)
        detections, detectors = _read_capthist(tmp_path / "secr" / "capt.txt", tmp_path / "secr" / "traps.txt")
        dwc = darwin_core.export(registry.catalog, tmp_path / "dwc.zip")
        photos = exports.write_photos(registry.catalog, tmp_path / "by-individual")

        report = Ingestor(registry).ingest(package, "season-2", "identify")
        media, observed = _rows(package / "media.csv"), _rows(package / "observations.csv")
        assert report.added == len(observed) >= len(media) and report.problems == []  # a box each
        exported = camtrap_dp.export(registry.catalog, tmp_path / "out")

    # secr: one detection per animal, occasion and station, as read.capthist reads the two files
    first = min(datetime.fromisoformat(r["captured_at"]) for r in rows).replace(hour=0, minute=0, second=0)
    truth = {(codes[r["identity"]], (datetime.fromisoformat(r["captured_at"]) - first).days // 7 + 1, r["location"])
             for r in rows}
    assert set(detections) == truth and set(detections.values()) == {1} and result["detections"] == len(truth)
    # the same detections for oSCR: trap numbers index oscr_tdf.csv's rows
    traps_numbered = {row["trap"]: row for row in _rows(tmp_path / "secr" / "oscr_tdf.csv")}
    label_of = {row["detector"]: row for row in _rows(tmp_path / "secr" / "detectors.csv")}
    assert len(traps_numbered) == len(label_of)
    edf = {(r["individual"], int(r["occasion"]), r["trap"]) for r in _rows(tmp_path / "secr" / "oscr_edf.csv")}
    number = {label: str(k) for k, label in enumerate(label_of, start=1)}
    assert edf == {(code, occasion, number[detector]) for code, occasion, detector in detections}
    assert set(detectors) == {r["location"] for r in rows}
    assert all(detectors[d][2][o - 1] == "1" for _, o, d in truth)  # used when it detected
    where = {name: (lat, lon) for name, lat, lon in synth.STATIONS}
    for a, b in itertools.combinations(sorted(detectors), 2):  # projected distances vs great-circle distances
        (ax, ay, _), (bx, by, _) = detectors[a], detectors[b]
        (lat1, lon1), (lat2, lon2) = map(lambda n: tuple(math.radians(v) for v in where[n]), (a, b))
        great_circle = 2 * 6_371_000 * math.asin(math.sqrt(
            math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2))
        assert abs(math.hypot(ax - bx, ay - by) - great_circle) < 0.005 * great_circle

    with zipfile.ZipFile(tmp_path / "dwc.zip") as z:
        assert set(z.namelist()) == {"occurrence.csv", "meta.xml", "eml.xml"}
        occurrences = list(csv.DictReader(io.StringIO(z.read("occurrence.csv").decode())))
        meta = z.read("meta.xml").decode()
    assert dwc["occurrences"] == len(occurrences) == len(rows)
    for term in ("occurrenceID", "eventID", "eventDate", "basisOfRecord", "organismID", "scientificName", "sex",
                 "lifeStage", "decimalLatitude", "decimalLongitude", "geodeticDatum", "locationID", "identifiedBy",
                 "identificationVerificationStatus", "associatedMedia"):
        assert term in occurrences[0] and f"http://rs.tdwg.org/dwc/terms/{term}" in meta
    assert {o["basisOfRecord"] for o in occurrences} == {"HumanObservation"}  # reference labels
    assert sorted({o["organismID"] for o in occurrences}) == sorted(codes.values())
    assert {o["locationID"] for o in occurrences} == {r["location"] for r in rows}

    per_folder = {d.name: sorted(f.name for f in d.iterdir()) for d in (tmp_path / "by-individual").iterdir()}
    expected: dict[str, int] = {}
    for row in rows:
        expected[codes[row["identity"]]] = expected.get(codes[row["identity"]], 0) + 1
    assert {k: len(v) for k, v in per_folder.items()} == expected and photos["photos"] == len(rows)

    # Camtrap DP out: every table valid against the 1.0 fields; the package's photos gained individualID
    for table in ("deployments", "media", "observations"):
        schema = frictionless.Schema.from_descriptor(camtrap_dp.table_schema(table))
        checked = frictionless.Resource(path=f"{table}.csv", basepath=str(tmp_path / "out"), schema=schema).validate()
        assert checked.valid, checked.flatten(["type", "message"])
    observations = _rows(tmp_path / "out" / "observations.csv")
    machine = [o for o in observations if o["classificationMethod"] == "machine"]
    assert len(machine) == len(observed) and all(o["individualID"] for o in machine)
    # every observation of the package came back out, with its box, in the photo it was in
    name_of = {m["mediaID"]: m["fileName"] for m in media}
    out_names = {m["mediaID"]: m["fileName"] for m in _rows(tmp_path / "out" / "media.csv")}

    def boxes(rows_: list[dict], names: dict) -> list[tuple]:
        return sorted((names[o["mediaID"]], *(round(float(o[k]), 4) if o[k] else None
                                              for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight")))
                      for o in rows_)

    assert boxes(machine, out_names) == boxes(observed, name_of)
    assert {o["eventID"].split("/")[-1] for o in machine} == {o["eventID"] for o in observed}
    assert all(o["classifiedBy"].startswith("registry decision policy v") for o in machine)
    assert exported["problems"] == [] and exported["media"] == len({r["image"] for r in rows}) + len(media)
    out_deployments = {d["deploymentID"]: d for d in _rows(tmp_path / "out" / "deployments.csv")}
    for code, source in {d["deploymentID"]: d for d in _rows(package / "deployments.csv")}.items():
        assert out_deployments[code]["deploymentStart"] == source["deploymentStart"]  # its operating interval
