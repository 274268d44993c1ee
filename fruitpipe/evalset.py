"""Which images a model must never train on, and which it already trains on: the upload guard.

The frozen evaluation set (:mod:`fruitpipe.recipe`) only measures something while no model has
trained on it, so an upload whose content is already in it is refused, and an upload of a seed
training image is reported as a duplicate. "Content" means the same bytes (sha256) or a
near-duplicate: the rule ``../shared/data/*/README.md`` de-duplicated the data with, 16x16
grayscale thumbnails (bilinear), each normalised to mean 128 and standard deviation 32, whose mean
absolute difference is below 1.5 (0-255 scale). A re-encoded, resized or lightly edited copy of a
test photo is caught, and so is a mirrored or border-cropped one (:data:`EVAL_CROPS`); a different
photo of the same fruit is not.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Iterable

import numpy as np
from PIL import Image

from . import imaging, recipe as rc

THUMB: Final[int] = 16  # thumbnail side (px), from ../shared/data/fruits/README.md
THUMB_VERSION: Final[str] = "t3"  # in index file names: indexes of another thumbnail rule are rebuilt
NEAR_DUPLICATE: Final[float] = 1.5  # mean absolute difference, 0-255 scale, same source
# Centre crops of each evaluation image also indexed (a side's fraction kept), and every upload is
# compared mirrored too: a mirrored or border-cropped copy of a test photo is still that photo (the
# second new-user trial uploaded both, and training's flip view would have learnt the first).
EVAL_CROPS: Final[tuple[float, ...]] = tuple(round(1.0 - 0.025 * i, 3) for i in range(11))  # 1.0 ... 0.75
# The bar for those comparisons: a crop between two indexed ones lands a little further away.
# Measured by scripts/measure_eval_guard.py (results/measure_eval_guard.json): 4-10% border crops
# of 30 evaluation photos are at most 2.74 (median 1.24) from their own photo's rows, all 210
# refused (the farthest, a 9% crop, just under the bar); of the shipped recipe's 4,451 training
# photos, 1 is within 2.0 of an evaluation photo, a crop or a mirror of one, 4 within 2.5, 8 within
# 2.75 and 11 within 3.0 (look-alike studio shots or copies across splits): a genuinely new photo
# is refused about twice in a thousand.
EVAL_NEAR_DUPLICATE: Final[float] = 2.75


def thumbnails(data: bytes, crops: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """``float32 [len(crops), 256]``: 16x16 grayscale thumbnails (bilinear, EXIF orientation
    applied) of the image and of its centre crops (``crop``: the fraction of each side kept), each
    normalised to mean 128 and standard deviation 32 (a flat image stays all 128).

    Decoded once by :func:`fruitpipe.imaging.load_image` (the one decode path: its format checks,
    cost bound and decode budget hold here too; a JPEG is decoded at a reduced scale) at 64x64, then
    cropped and reduced to 16x16. Raises :class:`fruitpipe.imaging.InvalidImage` for bytes that are
    no usable image.
    """
    small = Image.fromarray(imaging.load_image(data, size=THUMB * 4)).convert("L")
    out = []
    for crop in crops:
        side = THUMB * 4 * crop
        off = (THUMB * 4 - side) / 2
        a = np.asarray(small.resize((THUMB, THUMB), Image.Resampling.BILINEAR, box=(off, off, off + side, off + side)),
                       dtype=np.float32).reshape(-1)
        sd = float(a.std())
        out.append((a - a.mean()) / sd * 32.0 + 128.0 if sd > 1e-6 else np.full_like(a, 128.0))
    return np.asarray(out, dtype=np.float32)


def thumbnail(data: bytes) -> np.ndarray:
    """``float32 [256]``: the whole image's thumbnail (:func:`thumbnails`), the data READMEs' rule."""
    return thumbnails(data)[0]


def mirrored(thumb: np.ndarray) -> np.ndarray:
    """The thumbnail of the mirror image (left-right) of the image ``thumb`` was made from."""
    return np.ascontiguousarray(thumb.reshape(THUMB, THUMB)[:, ::-1]).reshape(-1)


@dataclass
class Index:
    """sha256s and thumbnails of a set of images (``names``: ``<folder>/<file>`` for messages)."""

    shas: np.ndarray  # str [N]
    thumbs: np.ndarray  # float32 [N, 256]
    names: np.ndarray  # str [N]

    def match(self, shas: str | Iterable[str], thumb: np.ndarray | None, near: float = NEAR_DUPLICATE) -> str | None:
        """The name of an image with one of these sha256s (one or several) or a thumbnail within
        ``near`` (mean absolute difference), else None."""
        hit = np.flatnonzero(np.isin(self.shas, [shas] if isinstance(shas, str) else list(shas)))
        if len(hit):
            return str(self.names[hit[0]])
        if thumb is None or not len(self.thumbs) or float(np.abs(thumb - 128.0).max()) < 1e-3:
            return None  # a flat image (one colour) has no content to compare: only its bytes can match
        distance, name = self.nearest(thumb)
        return name if distance < near else None

    def nearest(self, thumb: np.ndarray) -> tuple[float, str]:
        """``(distance, name)`` of the row closest to ``thumb`` (``float32 [256]``): mean absolute
        difference, 0-255 scale. Raises ValueError for an empty index."""
        if not len(self.thumbs):
            raise ValueError("empty index")
        diff = np.abs(self.thumbs - thumb[None, :]).mean(axis=1)
        best = int(diff.argmin())
        return float(diff[best]), str(self.names[best])

    @classmethod
    def build(cls, roots: tuple[Path, ...] | list[Path], crops: tuple[float, ...] = (1.0,)) -> "Index":
        """Read every image under ``roots`` (unreadable files are left out); one row per image and
        centre crop (``crops``, :func:`thumbnails`)."""
        shas, thumbs, names = [], [], []
        for label, path in rc.images(roots):
            data = path.read_bytes()
            try:
                rows = thumbnails(data, crops)
            except imaging.InvalidImage:
                continue
            thumbs += list(rows)
            shas += [hashlib.sha256(data).hexdigest()] * len(rows)
            names += [f"{label}/{path.name}"] * len(rows)
        return cls(np.array(shas, dtype=str), np.array(thumbs, np.float32).reshape(-1, THUMB * THUMB),
                   np.array(names, dtype=str))

    def save(self, path: Path) -> None:
        """npz via a temporary file + ``os.replace``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, shas=self.shas, thumbs=self.thumbs, names=self.names)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> "Index":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["shas"], data["thumbs"], data["names"])


def cached_index(roots: tuple[Path, ...] | list[Path], folder: Path, name: str,
                 crops: tuple[float, ...] = (1.0,)) -> Index:
    """:meth:`Index.build` once per content of ``roots``, kept as ``folder/<name>-<fingerprint>.npz``."""
    path = Path(folder) / f"{name}-{THUMB_VERSION}-{rc.fingerprint(roots)}.npz"
    if path.is_file():
        try:
            return Index.load(path)
        except (OSError, ValueError, KeyError):
            pass
    index = Index.build(roots, crops)
    if len(index.shas):  # nothing to remember for an empty set
        index.save(path)
    return index


class UploadGuard:
    """Checks an upload against the frozen evaluation set (refuse) and the seed training data
    (duplicate). Indexes are built on first use (a few seconds) and cached under ``folder``."""

    def __init__(self, evaluation: tuple[Path, ...], training: tuple[Path, ...], folder: Path) -> None:
        self.evaluation, self.training, self.folder = tuple(evaluation), tuple(training), Path(folder)
        self._eval: Index | None = None
        self._train: Index | None = None

    def indexes(self) -> tuple[Index, Index]:
        """Build (or load) both indexes now; the server calls this in the background at start."""
        if self._eval is None:
            self._eval = cached_index(self.evaluation, self.folder, "evaluation", EVAL_CROPS)
        if self._train is None:
            self._train = cached_index(self.training, self.folder, "training")
        return self._eval, self._train

    def check(self, raw: bytes, stored_sha: str) -> tuple[str, str, str] | None:
        """``(status, code, detail)`` when the upload must not be added as new, else None:
        ``("rejected", "in_evaluation_set", ...)`` or ``("duplicate", "in_seed_data", ...)``."""
        evaluation, training = self.indexes()
        try:
            thumb: np.ndarray | None = thumbnail(raw)
        except imaging.InvalidImage:
            thumb = None
        shas = {hashlib.sha256(raw).hexdigest(), stored_sha}
        for view in (thumb, mirrored(thumb) if thumb is not None else None):  # one index scan each
            hit = evaluation.match(shas, view, EVAL_NEAR_DUPLICATE)
            if hit:
                return ("rejected", "in_evaluation_set",
                        f"this image is (a copy of) {hit} in the frozen evaluation set, which no model may "
                        "train on: it would make the gate's comparison meaningless")
        hit = training.match(shas, thumb)
        if hit:
            return ("duplicate", "in_seed_data", f"already in the seed training data as {hit}")
        return None
