"""Manifests and photos from the field: every problem is named by file and line, nothing crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from registry.ingest.manifest import ManifestError
from registry.ingest.sources import read_manifest, read_source
from registry.matching.imaging import ImageError, inspect_image, load_image, normalise_orientation


def _photo(path: Path, size: tuple[int, int] = (64, 48), **save: object) -> Path:
    Image.new("RGB", size, (120, 80, 40)).save(path, **save)
    return path


def test_registry_manifest_rows_are_validated(tmp_path: Path) -> None:
    _photo(tmp_path / "a.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,species,identity,captured_at,latitude,longitude,camera\n"
        "a.jpg,nyala,N1,2024-06-01T08:30:00,-24.1,31.5,cam1\n"
        "b.jpg,nyala,,2024-13-01,,,cam1\n"
        "c.jpg,nyala,N2,,95,,cam2\n"
        "a.jpg,nyala,N1,,,,cam1\n"
        ",nyala,N3,,,,\n"
        "d.jpg,,N4,2024-06-01T08:30:00Z,,,\n"
    )
    parsed = read_manifest(manifest)
    assert parsed.format == "registry"
    assert [r.line for r in parsed.rows] == [2]
    row = parsed.rows[0]
    assert row.image == tmp_path / "a.jpg" and row.identity == "N1" and row.latitude == -24.1
    reasons = {p.line: p.reason for p in parsed.problems}
    assert "not ISO 8601" in reasons[3]
    assert "latitude 95 is outside" in reasons[4]
    assert "duplicate of line 2" in reasons[5]
    assert "no image" in reasons[6]
    assert "no species" in reasons[7]
    assert any("'camera' is not used" in w for w in parsed.warnings)
    assert str(parsed.problems[0]).startswith(f"{manifest}:3:")


def test_animalclef_metadata_is_read_as_it_is(tmp_path: Path) -> None:
    manifest = tmp_path / "metadata.csv"
    manifest.write_text(
        "image_id,identity,path,species,orientation,date,split\n"
        "1,SalamanderID_12,images/1.jpg,salamander,right,2021-05-03,database\n"
        "2,,images/2.jpg,salamander,left,,query\n"
    )
    rows = read_manifest(manifest).rows
    assert rows[0].viewpoint == "right" and rows[0].captured_at.year == 2021
    assert rows[1].identity is None and rows[1].image == tmp_path / "images" / "2.jpg"


def test_manifest_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("photo,animal\nx.jpg,1\n")
    with pytest.raises(ManifestError, match="no image column"):
        read_manifest(bad)
    turtles = tmp_path / "t.csv"
    turtles.write_text("image_id,identity,path,split\n1,a,x.jpg,train\n")
    with pytest.raises(ManifestError, match="--species"):
        read_manifest(turtles)
    assert read_manifest(turtles, default_species="loggerhead").rows[0].species == "loggerhead"


def test_bad_photos_name_the_file(tmp_path: Path) -> None:
    good = _photo(tmp_path / "good.jpg", quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    cases = {"truncated.jpg": "truncated", "empty.jpg": "empty file", "text.jpg": "not an image",
             "missing.jpg": "file not found"}
    for name, reason in cases.items():
        with pytest.raises(ImageError, match=rf"{name}: .*{reason}"):
            inspect_image(tmp_path / name)
    assert inspect_image(good).width == 64


def test_exif_orientation_downscale_and_viewpoint_rotation(tmp_path: Path) -> None:
    image = Image.new("RGB", (200, 100))
    exif = image.getexif()
    exif[0x0112] = 6  # camera held on its side: rotate 90 degrees on display
    image.save(tmp_path / "side.jpg", exif=exif)
    assert load_image(tmp_path / "side.jpg", max_side=None).size == (100, 200)
    _photo(tmp_path / "big.jpg", size=(4000, 3000))
    assert max(load_image(tmp_path / "big.jpg", max_side=512).size) == 512
    rules = {"right": -90.0, "left": 90.0}
    assert normalise_orientation(Image.new("RGB", (30, 10)), "right", rules).size == (10, 30)
    assert normalise_orientation(Image.new("RGB", (30, 10)), "front", rules).size == (30, 10)


def _package(folder: Path, deployments: str, media: str, observations: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datapackage.json").write_text(json.dumps({
        "profile": "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/camtrap-dp-profile.json",
        "resources": [{"name": n, "path": f"{n}.csv"} for n in ("deployments", "media", "observations")]}))
    (folder / "deployments.csv").write_text(deployments)
    (folder / "media.csv").write_text(media)
    (folder / "observations.csv").write_text(observations)
    return folder


def test_camtrap_dp_packages_are_read_row_by_row(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    for name in ("m1.jpg", "m2.jpg", "m3.jpg", "m4.jpg", "m5.jpg"):
        _photo(tmp_path / "pkg" / name)
    package = _package(
        tmp_path / "pkg",
        "deploymentID,locationName,latitude,longitude,deploymentStart,deploymentEnd,cameraModel\n"
        "d1,north pan,-23.9,31.4,2024-06-01T00:00:00Z,2024-06-30T00:00:00Z,Browning\n"
        "d2,south pan,95,31.5,2024-06-01T00:00:00Z,2024-06-30T00:00:00Z,\n"  # latitude out of range
        "d3,ridge,-24.0,31.6,2024-07-01T00:00:00Z,2024-06-01T00:00:00Z,\n",  # ends before it starts
        "mediaID,deploymentID,timestamp,filePath,fileMediatype\n"
        "a,d1,2024-06-02T06:00:00Z,m1.jpg,image/jpeg\n"
        "b,d1,2024-06-03T06:00:00Z,m2.jpg,image/jpeg\n"  # two individuals in one photo
        "c,d9,2024-06-03T06:00:00Z,m3.jpg,image/jpeg\n"  # unknown deployment
        "d,d1,2024-06-04T06:00:00+02:00,https://example.org/m4.jpg,image/jpeg\n"  # a URL
        "e,d1,2024-06-05T06:00:30Z,m5.jpg,image/jpeg\n"  # event-level observation covers it
        "f,d1,2024-06-05T06:00:40Z,clip.mp4,video/mp4\n",
        "observationID,deploymentID,mediaID,eventStart,eventEnd,observationType,scientificName,individualID,sex,"
        "lifeStage,bboxX,bboxY,bboxWidth,bboxHeight\n"
        "o1,d1,a,,,animal,Tragelaphus angasii,NYA-7,female,adult,0.1,0.2,0.3,0.4\n"
        "o2,d1,b,,,animal,Tragelaphus angasii,NYA-7,,,,,,\n"  # two animals in one photo without boxes
        "o3,d1,b,,,animal,Tragelaphus angasii,NYA-8,,,,,,\n"
        "o4,d1,c,,,animal,Tragelaphus angasii,,,,,,,\n"
        "o5,d1,,2024-06-05T06:00:00Z,2024-06-05T06:01:00Z,animal,Tragelaphus angasii,NYA-9,,,,,,\n"
        "o6,d1,a,,,blank,,,,,,,,\n"
        "o7,d1,a,,,animal,Tragelaphus angasii,,,,0.6,0.2,0.5,0.4\n")
    manifest = read_source(package)
    assert manifest.format == "camtrap-dp"
    assert sorted(r.line for r in manifest.rows) == [2, 2, 6]  # photo a holds two boxed animals
    assert sorted(r.box for r in manifest.rows if r.line == 2) == [(0.1, 0.2, 0.3, 0.4), (0.6, 0.2, 0.4, 0.4)]
    by_line = {r.line: r for r in manifest.rows if r.identity or r.line != 2}
    first = by_line[2]
    assert (first.identity, first.species, first.deployment, first.location, first.sex, first.life_stage) == (
        "NYA-7", "Tragelaphus angasii", "d1", "north pan", "female", "adult")
    # the reader keeps the offset; the ingest stores UTC
    assert first.latitude == -23.9 and first.captured_at.isoformat() == "2024-06-02T06:00:00+00:00"
    assert by_line[6].identity == "NYA-9"  # from the event-level observation
    problems = [str(p) for p in manifest.problems]
    assert any("deployments.csv:3: latitude 95.0 is outside" in p for p in problems)
    assert any("deployments.csv:4: deploymentEnd" in p for p in problems)
    assert any("media.csv:3: observations name several individualID values (NYA-7, NYA-8)" in p for p in problems)
    assert any("media.csv:4: deploymentID 'd9' is not in deployments.csv" in p for p in problems)
    assert any("media.csv:5: filePath https://example.org/m4.jpg is a URL" in p for p in problems)
    assert any("1 videos" in w for w in manifest.warnings)
    assert [d.code for d in manifest.deployments] == ["d1"]
    (package / "media.csv").unlink()
    with pytest.raises(ManifestError, match=r"media\.csv is missing"):
        read_source(package)
