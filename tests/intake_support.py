"""Field cases from ../shared/cases and real camera formats made from a real apple photo.

The case files are read where they are (never copied into the repository); tests that need them
skip with a reason when ../shared is not beside the checkout.
"""

from __future__ import annotations

import io
from functools import lru_cache

import pytest
from PIL import Image

from fruitpipe import imaging  # noqa: F401  (registers the HEIF plugin: saving HEIC needs it too)

from .conftest import FRUITS, SHARED

CASES = SHARED / "cases"
needs_cases = pytest.mark.skipif(not CASES.is_dir(), reason="../shared/cases is not beside the checkout")

# Case files that are bad images, and the typed error each must get at every entry point.
BAD_CASES: dict[str, str] = {
    "exif-broken-ifd.jpg": "truncated",
    "exif-broken-chunk.png": "truncated",
    "costly-decode-lossless-alpha.webp": "too_many_pixels",
}
MPO_APPLE = "camera-mpo-apple.jpg"
STAR_MULTIPART = "filename-star-only.multipart"
STAR_BOUNDARY = "XyZbound"
STAR_NAME = "pomme été.jpg"  # what its filename*=UTF-8''pomme%20%C3%A9t%C3%A9.jpg decodes to


def case(name: str) -> bytes:
    return (CASES / name).read_bytes()


def apple_photo() -> Image.Image:
    """A real fresh-apple test photo (classified freshapples by the shipped model)."""
    return Image.open(sorted((FRUITS / "test" / "freshapples").glob("*.jpg"))[0]).convert("RGB")


@lru_cache(maxsize=None)
def camera_heic(width: int = 1024, height: int = 768, thumbnail: bool = True) -> bytes:
    """The apple photo as a phone would store it: HEIC, 512 px grid tiles, a 320 px thumbnail."""
    img = apple_photo().resize((width, height), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "HEIF", quality=70, thumbnails=[320] if thumbnail else [], grid_tile_size=512,
             enc_params={"preset": "ultrafast"})
    return out.getvalue()


@lru_cache(maxsize=None)
def avif(width: int = 640, height: int = 480) -> bytes:
    """The apple photo as AVIF (Pillow's own encoder)."""
    out = io.BytesIO()
    apple_photo().resize((width, height), Image.Resampling.BICUBIC).save(out, "AVIF", quality=70, speed=10)
    return out.getvalue()


def camera_photos() -> dict[str, bytes]:
    """Name -> bytes of apple photos in the real camera formats: MPO (the field case), HEIC, AVIF."""
    return {MPO_APPLE: case(MPO_APPLE), "apple.heic": camera_heic(), "apple.avif": avif()}
