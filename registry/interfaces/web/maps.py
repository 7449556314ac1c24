"""The individual page's map: sightings placed in Web Mercator at the deepest zoom that fits them, drawn as
circles (no network needed) or over a configured tile server's tiles."""

import math
from typing import Any


def _mercator(latitude: float, longitude: float, zoom: int) -> tuple[float, float]:
    """Web Mercator pixel coordinates at this zoom (256-pixel tiles), as tile servers number them."""
    scale = 256 * 2 ** zoom
    sin = math.sin(math.radians(max(-85.05, min(85.05, latitude))))
    return (longitude + 180) / 360 * scale, (0.5 - math.log((1 + sin) / (1 - sin)) / (4 * math.pi)) * scale


def sighting_map(points: list[tuple[float, float, str]], tile_url: str | None = None, width: int = 360,
                 height: int = 240) -> dict[str, Any]:
    """Sightings placed in a `width` x `height` view (Web Mercator, the deepest zoom that fits them): circles
    only, which needs no network, or over the tiles of `tile_url` (`.../{z}/{x}/{y}.png`) when one is
    configured."""
    if not points:
        return {"points": [], "tiles": []}
    zoom = 1
    for candidate in range(17, 0, -1):
        xy = [_mercator(lat, lon, candidate) for lat, lon, _ in points]
        xs, ys = [x for x, _ in xy], [y for _, y in xy]
        if max(xs) - min(xs) <= width - 40 and max(ys) - min(ys) <= height - 40:
            zoom = candidate
            break
    xy = [_mercator(lat, lon, zoom) for lat, lon, _ in points]
    left = (max(x for x, _ in xy) + min(x for x, _ in xy)) / 2 - width / 2
    top = (max(y for _, y in xy) + min(y for _, y in xy)) / 2 - height / 2
    placed = [{"x": round(x - left, 1), "y": round(y - top, 1), "label": label}
              for (x, y), (_, _, label) in zip(xy, points, strict=True)]
    # a scale bar of a round length, about a quarter of the map wide, true at the sightings' mean latitude
    metres_per_pixel = 156543.03392 * math.cos(math.radians(sum(p[0] for p in points) / len(points))) / 2 ** zoom
    target = metres_per_pixel * width / 4
    nice = max(step * 10 ** power for power in range(0, 8) for step in (1, 2, 5) if step * 10 ** power <= target) \
        if target >= 1 else 1
    scale = {"pixels": round(nice / metres_per_pixel, 1),
             "label": f"{nice / 1000:g} km" if nice >= 1000 else f"{nice:g} m"}
    tiles = []
    if tile_url:
        last = 2 ** zoom - 1
        for tx in range(max(0, int(left // 256)), min(last, int((left + width) // 256)) + 1):
            for ty in range(max(0, int(top // 256)), min(last, int((top + height) // 256)) + 1):
                tiles.append({"href": tile_url.replace("{z}", str(zoom)).replace("{x}", str(tx))
                              .replace("{y}", str(ty)), "x": round(tx * 256 - left, 1),
                              "y": round(ty * 256 - top, 1)})
    return {"points": placed, "tiles": tiles, "zoom": zoom, "scale": scale}
