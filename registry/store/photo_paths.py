"""Where photos are: stored relative to the photo root, so an archive that moves (another disk, another machine)
needs only a new root, or `registry relocate OLD NEW` for paths recorded outside it."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class PhotoPaths:
    """Converts between a photo's path on this machine and the form the catalog stores."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser().resolve() if root else None

    def stored(self, path: Path) -> str:
        """Relative (POSIX) to the root when the photo is under it, else absolute."""
        absolute = Path(path).expanduser().resolve()
        if self.root is not None and absolute.is_relative_to(self.root):
            return PurePosixPath(*absolute.relative_to(self.root).parts).as_posix()
        return str(absolute)

    def public(self, path: str | Path) -> str:
        """How a photo is named outside this machine (a published archive): relative to the photo root, or by
        its file name when it lies outside the root, never a path on the server."""
        stored = self.stored(Path(path)) if Path(path).is_absolute() else str(path)
        return stored if not Path(stored).is_absolute() else Path(stored).name

    def local(self, stored: str) -> Path:
        """The photo's path on this machine."""
        path = Path(stored)
        if path.is_absolute() or self.root is None:
            return path
        return self.root / path


def relocate(stored: str, old: str, new: str) -> str | None:
    """The stored path with prefix `old` replaced by `new` (whole path components only), or None if it is not
    under `old`."""
    old_parts, parts = PurePosixPath(old).parts, PurePosixPath(stored).parts
    if parts[: len(old_parts)] != old_parts:
        return None
    return str(PurePosixPath(new, *parts[len(old_parts):]))
