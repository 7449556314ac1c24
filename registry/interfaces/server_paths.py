"""No path on the server reaches a client. Answers (histories, the review queue, job reports and their errors,
CSV exports) name photos relative to the photo root, the import folder or the uploads folder, or by file name
when a photo lies outside all of them; photos are also named by id and content hash where that is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.settings import Settings

PATH_KEYS = ("image", "path", "manifest", "associatedMedia")  # values that are one photo's or file's path


class ServerPaths:
    def __init__(self, settings: Settings, import_root: Path, uploads: Path) -> None:
        roots = [Path(settings.photo_root).expanduser().resolve() if settings.photo_root else None,
                 import_root.resolve(), uploads.resolve(), settings.data_dir.resolve()]
        # the longest first, so a folder inside another is cut at its own root
        self.roots = sorted({str(r) for r in roots if r is not None}, key=len, reverse=True)

    def text(self, value: str) -> str:
        """The text with every server folder above the photos and imports cut off."""
        for root in self.roots:
            value = value.replace(root.rstrip("/") + "/", "")
        return value

    def redact(self, value: Any, key: str | None = None) -> Any:
        """A JSON answer with server paths made relative (recursively); a path value outside every known
        folder becomes its file name."""
        if isinstance(value, dict):
            return {k: self.redact(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v, key) for v in value]
        if isinstance(value, str):
            cut = self.text(value)
            if key in PATH_KEYS and Path(cut).is_absolute():
                return Path(cut).name
            return cut
        return value
