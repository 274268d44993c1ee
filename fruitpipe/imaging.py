"""Decode, validate and resize images: the one preprocessing path used by training and serving.

Every image that reaches the model, whether it came through the API, the S3 drop folder or the
training job, goes through :func:`load_image`. Keeping a single function is what guarantees that
the model sees at serving time exactly what it saw in training.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

INPUT_SIZE: Final[int] = 224
MAX_BYTES: Final[int] = 10 * 1024 * 1024  # a phone photo is 2-6 MB
MAX_PIXELS: Final[int] = 40_000_000  # about 7300 x 5500; anything larger is treated as a bomb
MIN_SIDE: Final[int] = 8
SUPPORTED_FORMATS: Final[frozenset[str]] = frozenset({"JPEG", "PNG", "WEBP"})
ERROR_CODES: Final[tuple[str, ...]] = (
    "empty",
    "not_an_image",
    "truncated",
    "too_large",
    "too_many_pixels",
    "too_small",
    "unsupported_format",
)

# Pillow's own bomb check warns at MAX_IMAGE_PIXELS and raises at twice that; we check the header
# ourselves before decoding, so make Pillow's check a hard error at our limit as a second fence.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class InvalidImage(ValueError):
    """An upload that cannot be used as an image. ``code`` is stable and safe to show to clients."""

    def __init__(self, code: str, detail: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Preprocessing:
    """Parameters recorded in every model manifest so a bundle says how its inputs were made."""

    size: int = INPUT_SIZE
    resize: str = "stretch"  # the whole image, aspect ratio not kept (fruit photos are centred)
    resample: str = "bilinear"
    background: str = "white"  # transparent pixels are composited on white

    def as_dict(self) -> dict[str, object]:
        return {"size": self.size, "resize": self.resize, "resample": self.resample,
                "background": self.background}


PREPROCESSING: Final[Preprocessing] = Preprocessing()


def decode(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
           draft_size: int | None = None) -> Image.Image:
    """Validate ``data`` and return an RGB image with EXIF orientation applied.

    ``draft_size`` lets JPEG decoding use DCT scaling (a 640x480 photo is decoded at 320x240 when
    the target is 224): several times faster and what the model gets anyway after resizing.
    """
    if not data:
        raise InvalidImage("empty", "the file is empty")
    if len(data) > max_bytes:
        raise InvalidImage("too_large", f"{len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage("not_an_image", "the data is not a recognised image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage("too_many_pixels", f"more than {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage("not_an_image", f"cannot read the image header ({exc})") from None
    if img.format not in SUPPORTED_FORMATS:
        raise InvalidImage("unsupported_format",
                           f"{img.format or 'unknown'} images are not accepted; use JPEG, PNG or WebP")
    width, height = img.size
    if width * height > max_pixels:
        raise InvalidImage("too_many_pixels", f"{width}x{height} is more than {max_pixels} pixels")
    if min(width, height) < MIN_SIDE:
        raise InvalidImage("too_small", f"{width}x{height}; each side must be at least {MIN_SIDE} px")
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage("truncated", f"the image data is incomplete or corrupt ({exc})") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, grey, CMYK, 16-bit, alpha) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        if img.mode == "I" and arr.max(initial=0) <= 255:
            shift = 0
        else:
            shift = 8
        return Image.fromarray((arr >> shift).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" or img.mode in ("LA", "PA", "RGBA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize(img: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """The model input: ``uint8 [size, size, 3]``, the whole image stretched to a square."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape != (size, size, 3):  # pragma: no cover - to_rgb guarantees RGB
        raise InvalidImage("not_an_image", f"unexpected decoded shape {arr.shape}")
    return arr


def load_image(data: bytes, *, size: int = INPUT_SIZE, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of an uploaded file → model input array. The one preprocessing function."""
    img = decode(data, max_bytes=max_bytes, max_pixels=max_pixels, draft_size=size)
    return resize(img, size)


def zoom_views(image: np.ndarray) -> np.ndarray:
    """The four quadrants of a model input, each enlarged back to full size: ``uint8 [4, S, S, 3]``.

    The not-fruit rule's second look (see :mod:`fruitpipe.rejection`): a photo of several small
    fruit (a row of bananas on a cloth, a bowl of oranges) can sit far from the single-fruit
    training photos as a whole, while each quadrant shows one or two fruit at the scale the
    model knows. Made from the already preprocessed input, so it adds no second decode.
    """
    size = image.shape[0]
    half = size // 2
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    boxes = [(0, 0, half, half), (half, 0, size, half), (0, half, half, size), (half, half, size, size)]
    return np.stack([np.asarray(pil.crop(box).resize((size, size), Image.Resampling.BILINEAR))
                     for box in boxes])


def validate(data: bytes) -> tuple[int, int]:
    """Fully decode ``data`` (raising :class:`InvalidImage`) and return its oriented size."""
    img = decode(data)
    return img.size


def to_jpeg(data: bytes, quality: int = 92) -> bytes:
    """Re-encode a validated upload as a clean RGB JPEG (no metadata) for the dataset store.

    JPEG inputs are stored as they are (no generation loss); other formats are converted.
    """
    img = decode(data)
    if data[:3] == b"\xff\xd8\xff":
        return data
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()
