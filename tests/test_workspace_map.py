"""The individual page's map: sightings placed in Web Mercator at the deepest zoom that fits them, tiles only
when a tile server is configured, numbered as tile servers number them."""

from __future__ import annotations

import math

from registry.interfaces.web.maps import sighting_map as _map


def _tile(latitude: float, longitude: float, zoom: int) -> tuple[int, int]:
    """The slippy-map tile of a point (the OpenStreetMap wiki's formula)."""
    n = 2 ** zoom
    lat = math.radians(latitude)
    return int((longitude + 180) / 360 * n), int((1 - math.asinh(math.tan(lat)) / math.pi) / 2 * n)


def test_sightings_fit_the_view_and_sit_on_their_tiles() -> None:
    points = [(-24.0, 31.5, "a"), (-24.045, 31.55, "b"), (-24.02, 31.52, "c")]
    offline = _map(points)
    assert offline["tiles"] == [] and len(offline["points"]) == 3
    assert all(20 <= p["x"] <= 340 and 20 <= p["y"] <= 220 for p in offline["points"])
    tiled = _map(points, "https://tiles.example/{z}/{x}/{y}.png")
    zoom = tiled["zoom"]
    assert _map(points, None)["points"] == tiled["points"]
    for (lat, lon, _), placed in zip(points, tiled["points"], strict=True):
        tx, ty = _tile(lat, lon, zoom)
        under = [t for t in tiled["tiles"] if t["href"] == f"https://tiles.example/{zoom}/{tx}/{ty}.png"]
        assert len(under) == 1  # the point's own tile is drawn, and where the point is
        assert under[0]["x"] <= placed["x"] < under[0]["x"] + 256 and under[0]["y"] <= placed["y"] < under[0]["y"] + 256
    wider = _map([(-24.0, 31.5, "a"), (-25.0, 32.5, "b")], "t/{z}/{x}/{y}")
    assert wider["zoom"] < zoom  # further apart: a wider view


def test_the_scale_bar_measures_true_distance() -> None:
    """The bar's length in pixels, at the map's zoom and the sightings' latitude, is the distance it is labelled
    with: checked against the great-circle distance between two points that far apart on the map."""
    points = [(-24.0, 31.5, "a"), (-24.045, 31.55, "b")]
    placed = _map(points)
    scale = placed["scale"]
    metres = float(scale["label"].split()[0]) * (1000 if scale["label"].endswith("km") else 1)
    assert str(scale["label"].split()[0])[0] in "125"  # a round length
    assert 30 <= scale["pixels"] <= 180  # about a quarter of the 360-px map, never wider than half
    a, b = placed["points"]
    pixels = math.hypot(a["x"] - b["x"], a["y"] - b["y"])
    radius = 6_371_000
    lat1, lat2 = math.radians(points[0][0]), math.radians(points[1][0])
    dlat, dlon = lat2 - lat1, math.radians(points[1][1] - points[0][1])
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    true_metres = 2 * radius * math.asin(math.sqrt(h))
    assert abs(true_metres / pixels - metres / scale["pixels"]) / (true_metres / pixels) < 0.01
