"""Embedding a class-folder dataset, with an append-only cache keyed by image content.

Retraining only needs the backbone's embeddings, and the backbone is frozen, so an image is
embedded once in its life. The cache is a folder of shard files (``emb-<time>-<rand>.npz``), each
holding the raw embedding codes (exact: the backbone's output *is* int8, or uint8) of a batch of images,
keyed by the sha256 of the image file, plus the pooled earlier feature maps the head also reads
(float32, exactly what :meth:`Backbone.outputs` returns; see :mod:`fruitpipe.features`) and the
int8 input of block 17 (7.8 KB, exact), which fine-tuning that block needs. A run loads every shard, embeds only what is missing and
appends ONE new shard; shards are never rewritten, so ``aws s3 sync`` uploads only the new one.
A shard records the backbone sha256 and preprocessing it was made with; others are ignored, so
entries of one backbone never serve another (one folder may hold shards of several backbones).
Backbones other than MobileNetV2 have no feature maps or block input: their entries hold empty ones.

Views: ``orig`` is the image as served; ``flip`` is its mirror image, a cheap training-time
augmentation (a mirrored apple is still an apple). Serving only ever computes ``orig``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Final, Iterable, Sequence

import numpy as np

from . import backbone as bb
from . import augment, imaging
from .labels import LABELS, OOD_FOLDER

IMAGE_SUFFIXES: Final[frozenset[str]] = frozenset({".jpg", ".jpeg", ".png", ".webp"})
VIEWS: Final[tuple[str, ...]] = ("orig", "flip")
ALL_VIEWS: Final[tuple[str, ...]] = ("orig", "flip", "vflip", "rot30", "rot-30", "rotb30", "rotb-45", "crop85",
                                     *augment.VIEWS)


def apply_view(images: np.ndarray, view: str) -> np.ndarray:
    """A training-time augmentation of preprocessed ``uint8 [N, S, S, 3]`` images: the fixed
    views above or one of :data:`fruitpipe.augment.VIEWS`. ``ValueError`` for an unknown view."""
    if view == "orig":
        return images
    if view == "flip":
        return np.ascontiguousarray(images[:, :, ::-1, :])
    if view == "vflip":
        return np.ascontiguousarray(images[:, ::-1, :, :])
    if view in augment.VIEWS:  # the real-photo augmentations (issue 11), deterministic per image
        return augment.apply(images, view)
    from PIL import Image
    out = np.empty_like(images)
    for i, arr in enumerate(images):
        img = Image.fromarray(arr)
        size = img.size[0]
        if view.startswith("rotb"):  # black corners, like the data set's own rotated copies
            img = img.rotate(float(view[4:]), resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        elif view.startswith("rot"):
            img = img.rotate(float(view[3:]), resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
        elif view.startswith("crop"):
            side = int(size * int(view[4:]) / 100)
            off = (size - side) // 2
            img = img.crop((off, off, off + side, off + side)).resize((size, size), Image.Resampling.BILINEAR)
        else:
            raise ValueError(f"unknown view {view!r}")
        out[i] = np.asarray(img)
    return out
SHARD_GLOB: Final[str] = "emb-*.npz"
# One cached (image, view): embedding codes [D] (int8 or uint8, the backbone's own), float32 pooled
# maps [P] and int8 block input [*B] (MobileNetV2: 1280, 832, (7, 7, 160); other backbones: P 0, B (0,)).
Entry = tuple[np.ndarray, np.ndarray, np.ndarray]


def cache_tag(spec: bb.Spec | str | None = None) -> str:
    """What an embedding depends on besides the image: the backbone (sha256, tensors read) and the
    preprocessing (at the backbone's input size). Unchanged for MobileNetV2 since before the registry."""
    spec = bb.get(spec)
    # "outputs" versions the shard layout: shards from before the pooled maps are ignored, not misread.
    pre = dataclasses.replace(imaging.PREPROCESSING, size=spec.input_size).as_dict()
    meta = json.dumps({"backbone": spec.sha256, "pre": pre,
                       "outputs": list(spec.output_tensors), "pooled": "mean+max"},
                      sort_keys=True)
    return hashlib.sha256(meta.encode()).hexdigest()[:16]


@dataclass
class Item:
    """One image file of a dataset folder."""

    path: Path
    label: str  # a class name, or the name of a non-class folder (e.g. not_fruit)
    sha256: str = ""


@dataclass
class Embedded:
    """The result of embedding a dataset: one row per usable image and view."""

    labels: list[str]  # folder name per image
    paths: list[Path]
    shas: list[str]
    views: dict[str, np.ndarray]  # view -> float32 [N, D] embeddings (MobileNetV2: D 1280)
    pooled: dict[str, np.ndarray] = field(default_factory=dict)  # view -> float32 [N, 832] pooled maps ([N, 0]: none)
    block_in: dict[str, np.ndarray] = field(default_factory=dict)  # view -> int8 [N, 7, 7, 160] codes ([N, 0]: none)
    skipped: Counter = field(default_factory=Counter)  # error code -> count
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (path, code)
    embedded_new: int = 0
    cached: int = 0

    def __len__(self) -> int:
        return len(self.labels)


def list_dataset(root: Path) -> list[Item]:
    """Every image file under ``root/<folder>/``, sorted; folders not named as classes are kept too."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    items: list[Item] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                items.append(Item(path=path, label=folder.name))
    return items


class EmbeddingCache:
    """A folder of append-only npz shards of one backbone (``spec``, default MobileNetV2):
    (sha256, view) → (embedding codes, float32 pooled maps, int8 block-17 input)."""

    def __init__(self, folder: Path | None, spec: bb.Spec | str | None = None) -> None:
        self.folder = Path(folder) if folder else None
        self.spec = bb.get(spec)
        self.tag = cache_tag(self.spec)
        self._q: dict[tuple[str, str], Entry] = {}
        self._new: dict[tuple[str, str], Entry] = {}
        if self.folder and self.folder.is_dir():
            for shard in sorted(self.folder.glob(SHARD_GLOB)):
                self._load(shard)

    def _load(self, shard: Path) -> None:
        try:
            with np.load(shard, allow_pickle=False) as data:
                if str(data["tag"]) != self.tag:
                    return
                keys, views, q, pooled, blk = (data[k] for k in ("sha256", "view", "q", "pooled", "block_in"))
        except (OSError, KeyError, ValueError) as exc:  # a torn upload must not stop training
            print(f"warning: ignoring unreadable cache shard {shard.name} ({exc})", file=sys.stderr)
            return
        for key, view, row, prow, brow in zip(keys, views, q, pooled, blk):
            self._q[(str(key), str(view))] = (row, prow, brow)

    def __len__(self) -> int:
        return len(self._q)

    def get(self, sha: str, view: str) -> Entry | None:
        return self._q.get((sha, view))

    def put(self, sha: str, view: str, entry: Entry) -> None:
        self._q[(sha, view)] = entry
        self._new[(sha, view)] = entry

    def flush(self) -> Path | None:
        """Append one shard with the entries added since loading (none → no file)."""
        if not self.folder or not self._new:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"emb-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(4).hex()}.npz"
        tmp = self.folder / f".{name}.tmp"
        keys = list(self._new)
        with open(tmp, "wb") as fh:
            np.savez(fh, tag=np.str_(self.tag), sha256=np.array([k[0] for k in keys]),
                     view=np.array([k[1] for k in keys]), q=np.stack([self._new[k][0] for k in keys]),
                     pooled=np.stack([self._new[k][1] for k in keys]),
                     block_in=np.stack([self._new[k][2] for k in keys]))
        os.replace(tmp, self.folder / name)
        self._new.clear()
        return self.folder / name


class Progress:
    """Progress of one embedding stage, on ``stream`` (default stderr: stdout carries results).

    On a terminal a tqdm bar; otherwise ``stage=<stage>`` then ``progress=<percent>`` lines (every
    5%), which the local retrain runner reads from the training job's merged stdout and stderr.
    """

    def __init__(self, stage: str, total: int, stream=None) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream or sys.stderr
        self.total = max(total, 1)
        self.done = 0
        self._last = -1
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=stage.replace("_", " "), unit="img", file=self.stream)
        else:
            print(f"stage={stage}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        pct = int(100 * self.done / self.total)
        if pct // 5 != self._last // 5 or self.done >= self.total:
            if pct != self._last:
                print(f"progress={pct}", file=self.stream, flush=True)
            self._last = pct

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _quantized(backbone, images: np.ndarray) -> list[Entry]:  # type: ignore[no-untyped-def]
    """:meth:`Backbone.outputs` per image, with the embedding as the exact codes the backbone
    produced (lossless round trip); the pooled maps stay float32 as computed."""
    emb, pooled, block_in = backbone.outputs(images)
    return list(zip(backbone.quantize(emb), pooled, block_in))


def dequantize(backbone_scale: float, zero: float, q: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) - zero) * backbone_scale


def embed_items(items: Sequence[Item], backbone, cache: EmbeddingCache,  # type: ignore[no-untyped-def]
                views: Sequence[str] = VIEWS, stage: str = "embed",
                batch: int = 32, progress: bool = True,
                on_skip: Callable[[Path, str], None] | None = None) -> Embedded:
    """Embed ``items`` in every view with ``backbone`` (a :class:`fruitpipe.classifier.Backbone`),
    reading the cache first. Bad files are skipped and counted. Images are preprocessed at the
    backbone's input size.

    Raises:
        ValueError: ``cache`` holds another backbone's embeddings.
    """
    if cache.spec.sha256 != backbone.spec.sha256:
        raise ValueError(f"embedding cache is for backbone {cache.spec.name}, not {backbone.spec.name}")
    scale, zero = backbone._out_scale, backbone._out_zero
    size = backbone.spec.input_size
    result = Embedded(labels=[], paths=[], shas=[], views={v: np.empty(0) for v in views})
    rows: dict[str, list[Entry | None]] = {v: [] for v in views}
    pending: list[tuple[int, np.ndarray, list[str]]] = []  # (row, preprocessed image, missing views)
    bar = Progress(stage, len(items)) if progress else None

    def run_pending() -> None:
        if not pending:
            return
        for view in views:
            todo = [(row, img) for row, img, missing in pending if view in missing]
            if not todo:
                continue
            for (row, _), entry in zip(todo, _quantized(backbone, apply_view(np.stack([img for _, img in todo]), view))):
                cache.put(result.shas[row], view, entry)
                rows[view][row] = entry
        pending.clear()

    for item in items:
        try:
            data = item.path.read_bytes()
        except OSError:
            result.skipped["unreadable"] += 1
            result.skipped_files.append((str(item.path), "unreadable"))
            if bar:
                bar.update()
            continue
        sha = item.sha256 or hashlib.sha256(data).hexdigest()
        hits = [cache.get(sha, v) for v in views]
        if all(h is not None for h in hits):
            row = len(result.labels)
            result.labels.append(item.label)
            result.paths.append(item.path)
            result.shas.append(sha)
            for v, h in zip(views, hits):
                rows[v].append(h)
            result.cached += 1
        else:
            try:
                img = imaging.load_image(data, size=size)
            except imaging.InvalidImage as exc:
                result.skipped[exc.code] += 1
                result.skipped_files.append((str(item.path), exc.code))
                if on_skip:
                    on_skip(item.path, exc.code)
                if bar:
                    bar.update()
                continue
            row = len(result.labels)
            result.labels.append(item.label)
            result.paths.append(item.path)
            result.shas.append(sha)
            for v, h in zip(views, hits):
                rows[v].append(h)  # None until run_pending() fills it
            pending.append((row, img, [v for v, h in zip(views, hits) if h is None]))
            result.embedded_new += 1
            if len(pending) >= batch:
                run_pending()
        if bar:
            bar.update()
    run_pending()
    if bar:
        bar.close()
    empty = (np.empty((0, backbone.spec.embedding_dim), backbone.embedding_dtype),
             np.empty((0, backbone.pooled_dim), np.float32), np.empty((0, *backbone.block_shape), np.int8))
    for v in views:
        done = [r for r in rows[v] if r is not None]
        if len(done) != len(rows[v]):
            raise RuntimeError("internal error: an image was left without backbone outputs")
        q, pooled, block_in = (np.stack([r[i] for r in done]) if done else empty[i] for i in range(3))
        result.views[v] = dequantize(scale, zero, q)
        result.pooled[v] = pooled.astype(np.float32)
        result.block_in[v] = block_in
    return result


def embed_folder(root: Path, backbone, cache: EmbeddingCache,  # type: ignore[no-untyped-def]
                 views: Sequence[str] = VIEWS, stage: str = "embed", progress: bool = True) -> Embedded:
    """:func:`embed_items` over :func:`list_dataset`."""
    return embed_items(list_dataset(root), backbone, cache, views=views, stage=stage, progress=progress)


def split_ood(labels: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (is a class image, is an image that must be rejected)."""
    arr = np.array(list(labels), dtype=object)
    is_class = np.array([lab in LABELS for lab in arr], dtype=bool)
    return is_class, ~is_class


__all__ = ["EmbeddingCache", "Embedded", "Item", "Progress", "VIEWS", "embed_folder", "embed_items",
           "list_dataset", "split_ood", "OOD_FOLDER"]
