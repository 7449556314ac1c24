"""Reading photographs safely: content hash, EXIF orientation, downscale on decode, viewpoint rotation.

Every failure names the file, so one bad photo in a season is reported and skipped, never a crash.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# Photos larger than this many pixels are refused (a 12000 x 12000 image would need ~430 MB decoded).
MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """A photo that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    width: int
    height: int


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def _open_checked(path: Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image (unrecognised format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: image too large ({exc})") from exc
    except OSError as exc:
        raise ImageError(f"{path}: unreadable or truncated image ({exc})") from exc
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"{path}: image too large ({image.width}x{image.height} pixels, limit {MAX_PIXELS})")
    return image


def inspect_image(path: Path) -> ImageInfo:
    """Hash and fully decode a photo once, so truncated files are caught at ingestion, not at query time."""
    digest = sha256_of_file(Path(path))
    image = load_image(path, max_side=None)
    return ImageInfo(digest, image.width, image.height)


def load_image(path: Path, max_side: int | None = 1024) -> Image.Image:
    """Decode an RGB photo with EXIF orientation applied, downscaled on decode to at most `max_side`.

    JPEG decoding uses `draft` so a large camera image is decoded at reduced scale instead of held in full.
    """
    image = _open_checked(Path(path))
    try:
        if max_side is not None and image.format == "JPEG":
            image.draft("RGB", (max_side, max_side))
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: unreadable or truncated image data ({exc})") from exc
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return image


ANIMAL_BOX = "animal_box"  # Image.info key: the animal's box in a crop, (x0, y0, x1, y1) as fractions


def normalise_orientation(image: Image.Image, viewpoint: str | None, rules: dict[str, float]) -> Image.Image:
    """Rotate by the species' rule for this viewpoint (degrees, counter-clockwise), e.g. right: -90, left: 90."""
    if not viewpoint or viewpoint not in rules or not rules[viewpoint]:
        return image
    angle = rules[viewpoint]
    rotated = image.rotate(angle, expand=True)
    box = image.info.get(ANIMAL_BOX)
    if box is not None and angle % 90 == 0:  # the box turns with the photo (other angles: no box, every keypoint)
        x0, y0, x1, y1 = box
        for _ in range(int(angle // 90) % 4):  # 90 degrees counter-clockwise: (x, y) -> (y, 1 - x)
            x0, y0, x1, y1 = y0, 1 - x1, y1, 1 - x0
        rotated.info[ANIMAL_BOX] = (x0, y0, x1, y1)
    return rotated


def crop_to_box(image: Image.Image, box: tuple[float, float, float, float] | None,
                margin: float = 0.1) -> Image.Image:
    """The region of one animal: a normalised box (x, y, width, height, top-left origin, as Camtrap DP and
    MegaDetector write them) widened by `margin` of its size on each side and clipped to the photo. Models then
    see the animal, not the scene; `None` keeps the whole photo."""
    if box is None:
        return image
    x, y, w, h = box
    if not (0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1):
        raise ImageError(f"bounding box {box} is not normalised (x, y, width, height in 0..1)")
    left = max(0.0, x - margin * w) * image.width
    top = max(0.0, y - margin * h) * image.height
    right = min(1.0, x + w + margin * w) * image.width
    bottom = min(1.0, y + h + margin * h) * image.height
    crop = image.crop((round(left), round(top), max(round(left) + 1, round(right)),
                       max(round(top) + 1, round(bottom))))
    # where the box itself lies in the crop (fractions): local matching counts only keypoints inside it
    crop.info[ANIMAL_BOX] = (
        (x * image.width - round(left)) / crop.width, (y * image.height - round(top)) / crop.height,
        ((x + w) * image.width - round(left)) / crop.width, ((y + h) * image.height - round(top)) / crop.height)
    return crop

