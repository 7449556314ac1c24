"""Manifests and photos from the field: every problem is named by file and line, nothing crashes."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from registry.ingest.sources import ManifestError, read_manifest
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
