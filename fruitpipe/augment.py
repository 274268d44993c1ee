"""Training-time augmentations that stand for real photos (issue 11), as deterministic cached views.

The Kaggle photos are studio shots: one fruit, filling the frame, even light, clean JPEGs. Real
photos (a grocery bin, a webcam, a phone) differ in framing, background, colour, sharpness and
compression. Each view below imitates one of those differences on the *output* of
:func:`fruitpipe.imaging.load_image` (``uint8 [224, 224, 3]``), so the served path never changes.

Views are deterministic per (image, view): the random parameters are drawn from a generator seeded
by ``sha256(view name + the preprocessed pixels)``, so a view computed twice (another run, another
machine with the same libraries) gives the same pixels, and the embedding cache, keyed by
(image sha256, view name), stays valid. Changing a view's parameters therefore needs a **new view
name** (old cache entries would otherwise be reused).

=========  ================================================================================
view       what it imitates
=========  ================================================================================
rrcrop     framing: a random resized crop (10-60% of the area cut away, aspect 3:4 to 4:3)
zoomout    a fruit seen from further away: the photo scaled to 35-70% of the side and pasted at
           a random place on a generated background (smooth colour field, stripes, speckle;
           never an evaluation image)
jitter     light and colour: brightness x0.6-1.4, contrast x0.7-1.3, saturation x0.6-1.4, a
           colour cast of up to +-12% per channel (white balance)
blur       focus and motion: a Gaussian blur of radius 0.8-2.2 px (at 224 px)
jpeg       compression: re-encoded as JPEG at quality 12-40 (webcam, messaging apps)
tilt       a hand-held camera: rotated by 10-35 degrees either way, enlarged so no corner shows
=========  ================================================================================
"""

from __future__ import annotations

import hashlib
import io
from typing import Callable, Final

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

Rng = np.random.Generator


def _rng(image: np.ndarray, view: str) -> Rng:
    """The view's generator for this image (see the module docstring)."""
    digest = hashlib.sha256(view.encode() + b"\0" + np.ascontiguousarray(image).tobytes()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _rrcrop(img: Image.Image, rng: Rng) -> Image.Image:
    size = img.size[0]
    area = rng.uniform(0.4, 0.9) * size * size
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = int(round(min(size, np.sqrt(area * aspect))))
    h = int(round(min(size, np.sqrt(area / aspect))))
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    return img.crop((x, y, x + w, y + h)).resize((size, size), Image.Resampling.BILINEAR)


def background(size: int, rng: Rng) -> np.ndarray:
    """A generated background ``uint8 [size, size, 3]``: a smooth random colour field, stripes
    (wood, crates, shelves) or speckle (cloth, counter tops), each with a little pixel noise."""
    kind = int(rng.integers(0, 3))
    base = rng.uniform(30, 230, size=3)
    if kind == 0:  # smooth colour field: a random 3x3 colour grid, upsampled
        grid = np.clip(base + rng.normal(0, 45, size=(3, 3, 3)), 0, 255).astype(np.uint8)
        out = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    elif kind == 1:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(8, 48)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        other = np.clip(base + rng.normal(0, 50, size=3), 0, 255)
        t = (wave[..., None] + 1) / 2
        out = base * t + other * (1 - t)
    else:  # speckle: coarse noise blobs around the base colour
        blobs = rng.normal(0, 30, size=(size // 16, size // 16, 3))
        blobs = np.asarray(Image.fromarray(np.clip(base + blobs, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BILINEAR), np.float32)
        out = blobs
    out = out + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def _zoomout(img: Image.Image, rng: Rng) -> Image.Image:
    size = img.size[0]
    side = int(size * rng.uniform(0.35, 0.7))
    canvas = Image.fromarray(background(size, rng))
    x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
    canvas.paste(img.resize((side, side), Image.Resampling.BILINEAR), (x, y))
    return canvas


def _jitter(img: Image.Image, rng: Rng) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    cast = 1.0 + rng.uniform(-0.12, 0.12, size=3)
    return Image.fromarray(np.clip(np.asarray(img, np.float32) * cast, 0, 255).astype(np.uint8))


def _blur(img: Image.Image, rng: Rng) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.8, 2.2))))


def _jpeg(img: Image.Image, rng: Rng) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(12, 41)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _tilt(img: Image.Image, rng: Rng) -> Image.Image:
    size = img.size[0]
    angle = float(rng.uniform(10, 35) * rng.choice([-1, 1]))
    rotated = img.rotate(angle, resample=Image.Resampling.BILINEAR)
    # The largest centred square free of the rotation's corners: side / (|cos| + |sin|).
    rad = np.deg2rad(abs(angle))
    keep = int(size / (np.cos(rad) + np.sin(rad)))
    off = (size - keep) // 2
    return rotated.crop((off, off, off + keep, off + keep)).resize((size, size), Image.Resampling.BILINEAR)


VIEWS: Final[dict[str, Callable[[Image.Image, Rng], Image.Image]]] = {
    "rrcrop": _rrcrop, "zoomout": _zoomout, "jitter": _jitter, "blur": _blur, "jpeg": _jpeg, "tilt": _tilt,
}


def apply(images: np.ndarray, view: str) -> np.ndarray:
    """The augmentation ``view`` (a key of :data:`VIEWS`) of preprocessed ``uint8 [N, S, S, 3]``
    images, deterministic per image; same shape and dtype. ``KeyError`` for an unknown view."""
    fn = VIEWS[view]
    out = np.empty_like(images)
    for i, arr in enumerate(images):
        out[i] = np.asarray(fn(Image.fromarray(arr), _rng(arr, view)).convert("RGB"))
    return out
