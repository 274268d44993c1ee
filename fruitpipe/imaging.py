"""Decode, validate and resize images: the one preprocessing path used by training and serving.

Every image that reaches the model, whether it came through the API, the S3 drop folder or the
training job, goes through :func:`load_image`. Keeping a single function is what guarantees that
the model sees at serving time exactly what it saw in training.

Hostile input is the normal case here, so the path is built in three fences:

1. **Header only** (:func:`open_image`): size in bytes, format, dimensions. Only the plugins of the
   accepted formats parse the file; another real image format is named and refused.
2. **Cost before decoding** (:func:`decode_cost`): the memory a decode will take is estimated from
   the header (width x height x bytes per pixel x the copies the format's decoder makes x one
   frame) and refused above :data:`MAX_DECODE_BYTES`; every decode then holds its estimate in the
   process-wide :data:`DECODE_BUDGET`, so concurrent decodes wait instead of adding up.
3. **Typed errors**: any exception raised by a decoder or a metadata step (EXIF orientation) becomes
   :class:`InvalidImage`; nothing else leaves this module for bad input.

Multi-frame files (MPO camera JPEGs with a preview picture, animated WebP/PNG, HEIF sequences):
only the first (primary) picture is decoded and classified, in every accepted format, so a file
costs one frame whatever its frame count. GIF, like TIFF and BMP, is not a camera format and is
refused as ``unsupported_format`` whether it is animated or not.
"""

from __future__ import annotations

import ctypes
import io
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Iterator

import numpy as np
import pillow_heif
from PIL import Image, ImageOps

INPUT_SIZE: Final[int] = 224
MAX_BYTES: Final[int] = 10 * 1024 * 1024  # a phone photo is 2-6 MB
MAX_PIXELS: Final[int] = 40_000_000  # about 7300 x 5500; anything larger is treated as a bomb
MIN_SIDE: Final[int] = 8
# The most memory one decode may take (estimated by decode_cost): a 40 MP RGB PNG (328 MB), a 12 MP
# HEIC without thumbnail (203 MB) or a 20 MP WebP fit; a 16383x2441 lossless WebP with alpha (770 MB)
# does not. With the default decode budget (512 MB) two such decodes never run at once.
MAX_DECODE_BYTES: Final[int] = 384 * 1024 * 1024
# Pillow format -> the name clients see. MPO is what Pillow calls a JPEG carrying a second picture.
ACCEPTED_FORMATS: Final[dict[str, str]] = {
    "JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "HEIF": "HEIC/HEIF", "AVIF": "AVIF"}
ACCEPTED_NAMES: Final[str] = "JPEG, PNG, WebP, HEIC/HEIF or AVIF"
# Copies of the raster each decoder holds at its peak (scripts/decode_memory.py measures them):
# JPEG/PNG decode into the image itself; libwebp's animation decoder keeps two canvases and hands
# Pillow a third as bytes; libavif and libheif hold the YUV planes and an RGB buffer besides.
DECODER_COPIES: Final[dict[str, int]] = {"JPEG": 1, "MPO": 1, "PNG": 1, "WEBP": 4, "AVIF": 3, "HEIF": 3}
DECODER_FIXED_BYTES: Final[int] = 8 * 1024 * 1024  # libjpeg's, zlib's, libheif's own buffers
ERROR_CODES: Final[tuple[str, ...]] = (
    "empty",
    "not_an_image",
    "truncated",
    "too_large",
    "too_many_pixels",
    "too_small",
    "unsupported_format",
)
_WHITE: Final[tuple[int, int, int]] = (255, 255, 255)

# HEIC/HEIF through libheif (pillow-heif); AVIF is Pillow's own (libavif). Depth and auxiliary
# images are never needed; embedded thumbnails are what draft() decodes instead of the full image.
pillow_heif.register_heif_opener(thumbnails=True, depth_images=False, aux_images=False)
Image.init()
# The only plugins that parse client data (MPO comes from JPEG's). Filtered so that a Pillow built
# without AVIF still opens the rest (Image.open raises KeyError for an unknown format name).
_OPENERS: Final[tuple[str, ...]] = tuple(f for f in ("JPEG", "PNG", "WEBP", "HEIF", "AVIF") if f in Image.OPEN)
# Pillow's bomb check raises at twice MAX_IMAGE_PIXELS and warns above it; open_image checks
# MAX_PIXELS itself right after the header, so the warning says nothing new.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class InvalidImage(ValueError):
    """An upload that cannot be used as an image. ``code`` is stable and safe to show to clients."""

    def __init__(self, code: str, detail: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class DecodeBudget:
    """Bytes of decode memory in flight in this process: a decode waits until its cost fits.

    This is the bounded pool decodes run in. It bounds what matters (memory), not a thread
    count: small photos (a drafted JPEG costs about 1 MB) decode side by side at full speed on
    the request threads, while costly ones queue, so N parallel worst-case uploads peak at about
    ``capacity`` above the idle process, not N times the worst case.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Hold ``min(cost, capacity)`` bytes for the duration of the block (blocks until free)."""
        cost = min(max(cost, 0), self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self._free >= cost)
            self._free -= cost
        try:
            yield
        finally:
            with self._cond:
                self._free += cost
                self._cond.notify_all()

    @property
    def in_use(self) -> int:
        return self.capacity - self._free


DECODE_BUDGET: Final[DecodeBudget] = DecodeBudget(
    max(MAX_DECODE_BYTES, int(os.environ.get("FRUITPIPE_DECODE_BUDGET_MB", "512")) * 1024 * 1024))


def return_freed_rasters_to_the_os(threshold: int = 8 * 1024 * 1024) -> bool:
    """Make glibc serve allocations of ``threshold`` bytes and more with ``mmap``, so that a freed
    raster goes back to the OS at once. For long-running multi-threaded servers.

    glibc raises its mmap threshold after the first large free (up to 32 MiB, the "dynamic
    threshold" of mallopt(3)); from then on Pillow's 16 MiB image blocks come from per-thread
    arenas that keep them, and four request threads decoding large images left ``fruitpipe serve``
    at 922 MB instead of 506 MB (tests/test_decode_memory.py). A fixed threshold (``M_MMAP_THRESHOLD``,
    which also turns the dynamic one off) stops that. Returns False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD in malloc.h
    except (OSError, AttributeError):
        return False


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


def _identify_other(data: bytes) -> str | None:
    """The format of a real image that is not an accepted one (header parsed by any plugin)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format or "unknown"
    except Image.DecompressionBombError:  # a real header with a bomb's size: name it by its signature
        prefix = data[:16]
        return next((fmt for fmt, (_, accept) in Image.OPEN.items() if accept and accept(prefix) is True),
                    "unknown")
    except Exception:  # noqa: BLE001 - anything unreadable is simply not an image
        return None


def open_image(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read only the header of ``data`` and check it: an unloaded Pillow image of an accepted format.

    Raises :class:`InvalidImage`: ``empty``, ``too_large`` (more than ``max_bytes``),
    ``not_an_image``, ``unsupported_format`` (a real image format that is not accepted; the
    detail names the accepted ones), ``too_many_pixels`` (more than ``max_pixels``), ``too_small``
    (a side under :data:`MIN_SIDE` px).
    """
    if not data:
        raise InvalidImage("empty", "the file is empty")
    if len(data) > max_bytes:
        raise InvalidImage("too_large", f"{len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=_OPENERS)
    except Image.DecompressionBombError:
        raise InvalidImage("too_many_pixels", f"the image has more than {max_pixels} pixels (the limit; "
                           "about 7300 x 5500): scale it down and try again") from None
    except Exception:  # noqa: BLE001 - every parser error is the client's bad file
        other = _identify_other(data)
        if other is not None and other not in ACCEPTED_FORMATS:
            raise InvalidImage("unsupported_format",
                               f"{other} images are not accepted; send {ACCEPTED_NAMES}") from None
        raise InvalidImage("not_an_image", f"the data is not a readable image; send {ACCEPTED_NAMES}") from None
    if img.format not in ACCEPTED_FORMATS:  # pragma: no cover - only accepted openers were tried
        raise InvalidImage("unsupported_format",
                           f"{img.format or 'unknown'} images are not accepted; send {ACCEPTED_NAMES}")
    width, height = img.size
    if width * height > max_pixels:
        raise InvalidImage("too_many_pixels", f"{width}x{height} is more than {max_pixels} pixels (the limit; "
                           "about 7300 x 5500): scale it down and try again")
    if min(width, height) < MIN_SIDE:
        raise InvalidImage("too_small", f"{width}x{height}; each side must be at least {MIN_SIDE} px")
    return img


def decode_cost(img: Image.Image) -> int:
    """Bytes a decode of the (opened, possibly drafted) ``img`` will take at its peak, from its header.

    ``width x height x bytes per pixel x (copies the format's decoder holds) + one RGB working
    copy`` for conversion, orientation and resizing, plus the decoders' own buffers; one frame
    (only the first is decoded).
    Pillow stores 1-bit, L and P images with 1 byte per pixel, 16-bit grey with 2, all else with 4.
    """
    width, height = img.size
    bpp = 1 if img.mode in ("1", "L", "P") else 2 if img.mode.startswith("I;16") else 4
    return width * height * (bpp * DECODER_COPIES.get(img.format or "", 4) + 4) + DECODER_FIXED_BYTES


def _check_cost(img: Image.Image) -> int:
    cost = decode_cost(img)
    if cost > MAX_DECODE_BYTES:
        raise InvalidImage("too_many_pixels", f"decoding this {img.size[0]}x{img.size[1]} {img.mode} "
                           f"{ACCEPTED_FORMATS.get(img.format or '', img.format)} image would take about "
                           f"{cost >> 20} MB; the limit is {MAX_DECODE_BYTES >> 20} MB")
    return cost


def _draft(img: Image.Image, size: int) -> None:
    """Decode less than the full image where the format allows, keeping at least ``size`` px a side:
    JPEG (and MPO) DCT scaling, an embedded HEIF thumbnail. A 640x480 JPEG is then decoded at
    320x240, several times faster, and it is what the model gets anyway after resizing."""
    if img.format in ("JPEG", "MPO", "HEIF"):
        img.draft("RGB", (size, size))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("LA", "PA", "RGBA", "La", "RGBa") or (
        img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info)


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an RGBA image on white: one RGB canvas, the alpha band as the paste mask."""
    out = Image.new("RGB", img.size, _WHITE)
    out.paste(img, (0, 0), img)
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, grey, CMYK, 16-bit, alpha) to 8-bit RGB, same size."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        shift = 0 if img.mode == "I" and arr.max(initial=0) <= 255 else 8
        return Image.fromarray((arr >> shift).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if _has_alpha(img):
        return _on_white(img if img.mode == "RGBA" else img.convert("RGBA"))
    return img.convert("RGB")


def _flatten(img: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """RGB at ``target`` (or the image's size): images with alpha are resized first and composited
    after, so the peak stays at the decoded size (Pillow resizes RGBA premultiplied, so the order
    gives the same picture)."""
    if _has_alpha(img):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # convert() copies even then
        del img
        if target and rgba.size != target:
            rgba = rgba.resize(target, Image.Resampling.BILINEAR, reducing_gap=None)
        return _on_white(rgba)
    rgb = to_rgb(img)
    del img
    if target and rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BILINEAR, reducing_gap=None)
    return rgb


def _decode(img: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """Load an opened image, apply its EXIF orientation and flatten it to RGB (at ``target``),
    holding its cost in :data:`DECODE_BUDGET`. Any decoder or metadata error -> ``truncated``."""
    cost = _check_cost(img)
    with DECODE_BUDGET.hold(cost):
        step = "the pixel data is incomplete or corrupt"
        try:
            img.load()
            step = "the image's EXIF metadata is corrupt (its orientation cannot be read)"
            ImageOps.exif_transpose(img, in_place=True)  # not in place, it copies even when upright
            step = "the pixel data is incomplete or corrupt"
            return _flatten(img, target)
        except InvalidImage:
            raise
        except Exception:  # noqa: BLE001 - struct.error, AttributeError, OSError, ...: all bad input
            raise InvalidImage("truncated", f"{step}; re-save or re-export the photo and try again") from None


def decode(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
           draft_size: int | None = None) -> Image.Image:
    """Validate ``data`` and return a full-size RGB image with its EXIF orientation applied.

    ``draft_size`` lets JPEG and HEIF decoding use DCT scaling / an embedded thumbnail that keeps
    at least that many pixels a side. Raises :class:`InvalidImage` and nothing else for bad input.
    """
    img = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    if draft_size:
        _draft(img, draft_size)
    return _decode(img, None)


def resize(img: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """The model input: ``uint8 [size, size, 3]``, the whole image stretched to a square."""
    arr = np.asarray(_flatten(img, (size, size)), dtype=np.uint8)
    if arr.shape != (size, size, 3):  # pragma: no cover - _flatten guarantees RGB
        raise InvalidImage("not_an_image", f"unexpected decoded shape {arr.shape}")
    return arr


def load_image(data: bytes, *, size: int = INPUT_SIZE, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of an uploaded file → model input ``uint8 [size, size, 3]``. The one preprocessing function.

    Raises :class:`InvalidImage` (see :func:`open_image` for the codes; ``too_many_pixels`` also
    when the decode would take more than :data:`MAX_DECODE_BYTES`; ``truncated`` when the pixel
    data or the metadata cannot be decoded) and no other exception for any input.
    """
    img = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    _draft(img, size)
    return resize(_decode(img, (size, size)), size)


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

    JPEG inputs (MPO included) are validated with a drafted decode (every coefficient is still
    read) and stored as they are (no generation loss); other formats are converted at full size.
    Raises :class:`InvalidImage`.
    """
    img = open_image(data)
    if img.format in ("JPEG", "MPO"):
        _draft(img, INPUT_SIZE)
        _decode(img, (INPUT_SIZE, INPUT_SIZE))
        return data
    rgb = _decode(img, None)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)
    return out.getvalue()
