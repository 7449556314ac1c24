"""Photos for the browser: each annotation's crop (with the models' margin), resized and cached as JPEG under
`<data dir>/thumbnails/`. The browser only ever names an annotation id and a size, never a path. A species'
orientation rule turns the photo as it turned it for the matchers, so the correspondences drawn over it land
where the matcher found them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from registry.matching.imaging import crop_to_box, load_image, normalise_orientation
from registry.store.catalog import Catalog

SIZES = (160, 320, 640)


class Thumbnails:
    def __init__(self, root: Path, catalog: Catalog,
                 orientation_rules: dict[str, dict[str, float]] | None = None) -> None:
        self.root = Path(root)
        self.catalog = catalog
        self.orientation_rules = orientation_rules or {}

    def path(self, annotation_id: int, size: int) -> Path:
        """The cached thumbnail, made on first request. Raises KeyError for an unknown annotation, ImageError
        when its photo cannot be read."""
        if size not in SIZES:
            raise KeyError(f"size {size} (one of {SIZES})")
        state = self.catalog.annotation_states([annotation_id]).get(annotation_id)
        if state is None:
            raise KeyError(f"annotation {annotation_id}")
        rules = self.orientation_rules.get(state["species"], {})
        angle = rules.get(state["viewpoint"] or "", 0) or 0
        turned = f"-r{angle:g}" if angle else ""
        target = self.root / str(size) / f"{state['feature_key']}{turned}.jpg"
        if target.is_file():
            return target
        image = load_image(Path(state["path"]), max_side=None if state["box"] else size * 2)
        image = normalise_orientation(crop_to_box(image, state["box"]), state["viewpoint"], rules)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, "JPEG", quality=85)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

