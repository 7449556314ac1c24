"""Photos for the browser: each annotation's crop (with the models' margin), resized and cached as JPEG under
`<data dir>/thumbnails/`. The browser only ever names an annotation id and a size, never a path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from registry.matching.imaging import crop_to_box, load_image
from registry.store.catalog import Catalog

SIZES = (160, 320, 640)


class Thumbnails:
    def __init__(self, root: Path, catalog: Catalog) -> None:
        self.root = Path(root)
        self.catalog = catalog

    def path(self, annotation_id: int, size: int) -> Path:
        """The cached thumbnail, made on first request. Raises KeyError for an unknown annotation, ImageError
        when its photo cannot be read."""
        if size not in SIZES:
            raise KeyError(f"size {size} (one of {SIZES})")
        state = self.catalog.annotation_states([annotation_id]).get(annotation_id)
        if state is None:
            raise KeyError(f"annotation {annotation_id}")
        target = self.root / str(size) / f"{state['feature_key']}.jpg"
        if target.is_file():
            return target
        image = load_image(Path(state["path"]), max_side=None if state["box"] else size * 2)
        image = crop_to_box(image, state["box"])
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

