"""Generated not-fruit images (from installed packages, plus synthetic ones): ``OUT/not_fruit/``.

These calibrate and measure not-fruit rejection. Sources are split into two groups by *source*,
never by crop: ``calib`` (the training job calibrates its thresholds on them) and ``heldout``
(never seen in training or calibration; part of the frozen evaluation set, see
:mod:`fruitpipe.recipe`). Package images (scikit-image, matplotlib) are never committed: they are
made on demand, identically every time (fixed seed, deterministic JPEG encoding).

    python scripts/make_ood_set.py --out /tmp/ood-calib --group calib
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .labels import OOD_FOLDER

GROUPS = ("calib", "heldout")

# Each package source belongs to exactly one group.
SKIMAGE_CALIB = ["astronaut", "coffee", "camera", "rocket", "horse", "hubble_deep_field", "brick",
                 "gravel", "coins", "page", "immunohistochemistry", "logo"]
SKIMAGE_HELDOUT = ["chelsea", "stereo_motorcycle", "retina", "grass", "moon", "text",
                   "cell", "clock", "colorwheel", "microaneurysms", "checkerboard", "cat"]
MPL_HELDOUT = ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"]


def _skimage(name: str) -> np.ndarray | None:
    from skimage import data
    try:
        img = getattr(data, name)()
    except Exception as exc:  # noqa: BLE001 - a missing optional image is just skipped
        print(f"skip skimage.{name}: {exc}", file=sys.stderr)
        return None
    if isinstance(img, tuple):
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        img = (255 * (img - img.min()) / max(float(img.max() - img.min()), 1e-6)).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


def _crops(img: Image.Image, rng: np.random.Generator, n: int) -> Iterator[Image.Image]:
    """The whole image, then ``n`` random crops covering 30-80% of each side."""
    yield img
    w, h = img.size
    for _ in range(n):
        f = rng.uniform(0.3, 0.8)
        cw, ch = max(16, int(w * f)), max(16, int(h * f))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        yield img.crop((x, y, x + cw, y + ch))


def _faces(rng: np.random.Generator, start: int, stop: int) -> Iterator[Image.Image]:
    from skimage import data
    path = Path(data.__file__).parent / "lfw_subset.npy"
    if not path.is_file():
        return
    faces = np.load(path)
    for face in faces[start:stop]:
        arr = (255 * face).clip(0, 255).astype(np.uint8)
        yield Image.fromarray(arr, "L").convert("RGB").resize((160, 160), Image.Resampling.BICUBIC)


def _synthetic(rng: np.random.Generator, kind: str, n: int) -> Iterator[Image.Image]:
    font = ImageFont.load_default()
    for i in range(n):
        if kind == "noise":
            yield Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        elif kind == "solid":
            yield Image.new("RGB", (224, 224), tuple(int(c) for c in rng.integers(0, 256, 3)))
        elif kind == "gradient":
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = np.linspace(0, 1, 224)[None, :, None] if i % 2 else np.linspace(0, 1, 224)[:, None, None]
            arr = (a * (1 - t) + b * t) * np.ones((224, 224, 1))
            yield Image.fromarray(arr.astype(np.uint8))
        elif kind == "text":
            img = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(180, 256, 3)))
            draw = ImageDraw.Draw(img)
            words = ["invoice", "total", "hello world", "fruitpipe", "lorem ipsum", "meeting 10:30",
                     "receipt", "page 3", "TODO", "dear sir"]
            for line in range(8):
                draw.text((10, 10 + 28 * line), " ".join(rng.choice(words, 3)), fill=(0, 0, 0), font=font)
            yield img
        elif kind == "shapes":
            img = Image.new("RGB", (224, 224), tuple(int(c) for c in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x0, y0 = rng.integers(0, 180, 2)
                x1, y1 = x0 + rng.integers(20, 120), y0 + rng.integers(20, 120)
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                (draw.rectangle if rng.random() < 0.5 else draw.line)([int(x0), int(y0), int(x1), int(y1)],
                                                                      fill=colour)
            yield img


def generate(group: str, seed: int = 0) -> Iterator[tuple[str, Image.Image]]:
    """(name, image) pairs of one group."""
    rng = np.random.default_rng(seed + (0 if group == "calib" else 1))
    names = SKIMAGE_CALIB if group == "calib" else SKIMAGE_HELDOUT
    for name in names:
        arr = _skimage(name)
        if arr is None:
            continue
        for i, crop in enumerate(_crops(Image.fromarray(arr), rng, 6)):
            yield f"skimage-{name}-{i}", crop
    if group == "heldout":
        import matplotlib
        sample = Path(matplotlib.get_data_path()) / "sample_data"
        for fname in MPL_HELDOUT:
            if (sample / fname).is_file():
                with Image.open(sample / fname) as im:
                    img = im.convert("RGB")
                for i, crop in enumerate(_crops(img, rng, 6)):
                    yield f"mpl-{Path(fname).stem}-{i}", crop
    start, stop = (0, 100) if group == "calib" else (100, 200)
    for i, face in enumerate(_faces(rng, start, stop)):
        yield f"lfw-{start + i}", face
    kinds = ["noise", "solid", "gradient"] if group == "calib" else ["text", "shapes"]
    for kind in kinds:
        for i, img in enumerate(_synthetic(rng, kind, 10)):
            yield f"synthetic-{kind}-{i}", img


def write(folder: Path, group: str, seed: int = 0) -> int:
    """Write one group's images as ``folder/<group>-<name>.jpg`` (JPEG quality 90); returns the count.

    Needs scikit-image (and matplotlib for the held-out group), both in ``fruitpipe[train]`` (what `make run` installs).
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, img in generate(group, seed):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=90)
        (folder / f"{group}-{name}.jpg").write_bytes(buf.getvalue())
        n += 1
    return n


def ensure(root: Path, group: str) -> Path:
    """``root/ood-<group>`` holding ``not_fruit/*.jpg``, generated once (temporary folder + rename,
    so a crash never leaves a half-made set). Returns that dataset folder."""
    if group not in GROUPS:
        raise ValueError(f"unknown not-fruit group {group!r}; expected one of {GROUPS}")
    dest = Path(root) / f"ood-{group}"
    if (dest / OOD_FOLDER).is_dir():
        return dest
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".ood-{group}."))
    try:
        if write(tmp / OOD_FOLDER, group) == 0:
            raise RuntimeError(f"no not-fruit image could be made for group {group!r}")
        try:
            os.rename(tmp, dest)
        except OSError:  # another process made it first
            if not (dest / OOD_FOLDER).is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
