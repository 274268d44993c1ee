"""LiteRT inference: int8 backbone → 1280-d embedding (+ pooled earlier maps) → head → six probabilities → verdict.

Thread safety: a LiteRT ``Interpreter`` must not be used by two threads at once. A
:class:`Classifier` owns a small pool of interpreters (``workers``, default 1) and lends one to
each call, so one instance can be shared by every request thread of a server; with more workers
than cores, calls simply wait. Everything else (head, rejection rule) is read-only numpy.
"""

from __future__ import annotations

import os
import queue
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import backbone, block, bundle, features, imaging
from .head import Head, softmax
from .labels import LABELS, Verdict
from .rejection import Rejector, prototype_similarity

# Rows of a batch → their preprocessed images ``uint8 [n, 224, 224, 3]``; lets callers that hold
# only embeddings (evaluation, training) load images lazily for the rejection's second look.
ImageSource = Callable[[np.ndarray], np.ndarray]

# Importing LiteRT lazily keeps `fruitpipe --help` and the pure-python modules fast.
_interpreter_cls = None


def _interpreter(model: bytes, num_threads: int):  # type: ignore[no-untyped-def]
    global _interpreter_cls
    if _interpreter_cls is None:
        from ai_edge_litert.interpreter import Interpreter
        _interpreter_cls = Interpreter
    it = _interpreter_cls(model_content=model, num_threads=num_threads)
    it.allocate_tensors()
    return it


@dataclass(frozen=True)
class Prediction:
    predicted_class: str
    confidence: float
    probabilities: dict[str, float]
    verdict: Verdict
    model_version: str
    scores: dict[str, float] = field(default_factory=dict)
    timestamp: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "predicted_class": self.predicted_class,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "verdict": self.verdict,
            "model_version": self.model_version,
            "scores": self.scores,
            "timestamp": self.timestamp,
        }


class Backbone:
    """The int8 backbone as an embedding function, with its ImageNet classifier kept in numpy."""

    def __init__(self, path: Path | None = None, *, num_threads: int = 1, workers: int = 1) -> None:
        self.path = backbone.resolve(path)
        model = backbone.embedding_model(self.path.read_bytes())
        self._pool: queue.Queue = queue.Queue()
        for _ in range(max(1, workers)):
            self._pool.put(_interpreter(model, num_threads))
        it = self._pool.queue[0]
        outs = it.get_output_details()
        if tuple(o["index"] for o in outs) != backbone.OUTPUT_TENSORS:
            raise backbone.BackboneError("output rewrite did not take effect")
        self._input_index = it.get_input_details()[0]["index"]
        # (tensor index, scale, zero point) per output: each is dequantized with its own parameters.
        self._outputs = [(o["index"], *o["quantization"]) for o in outs]
        self._out_scale, self._out_zero = outs[0]["quantization"]
        details = it.get_tensor_details()
        w_q = it.get_tensor(backbone.IMAGENET_WEIGHTS_TENSOR).reshape(1001, -1).astype(np.float32)
        w_scales = details[backbone.IMAGENET_WEIGHTS_TENSOR]["quantization_parameters"]["scales"]
        b_q = it.get_tensor(backbone.IMAGENET_BIAS_TENSOR).astype(np.float32)
        self._imagenet_kernel = np.ascontiguousarray((w_q * w_scales[:, None]).T)  # [1280, 1001]
        self._imagenet_bias = b_q * w_scales * self._out_scale

    @contextmanager
    def _lease(self) -> Iterator[object]:
        it = self._pool.get()
        try:
            yield it
        finally:
            self._pool.put(it)

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``uint8 [N, 224, 224, 3]`` → (``float32 [N, 1280]`` embeddings, ``float32 [N, 832]`` pooled
        maps, ``int8 [N, 7, 7, 160]`` block-17 inputs as the backbone's own codes).

        The embedding feeds the rejection rule and the ImageNet head; the pooled maps (see
        :mod:`fruitpipe.features`) complete the head's input; a fine-tuned block 17 runs on the block
        input (:meth:`block_input`). One forward pass gives all three.
        """
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim == 3:
            images = images[None]
        emb = np.empty((len(images), backbone.EMBEDDING_DIM), dtype=np.float32)
        pooled = np.empty((len(images), features.POOLED_DIM), dtype=np.float32)
        block_in = np.empty((len(images), *block.INPUT_SHAPE), dtype=np.int8)
        (emb_index, scale, zero), *maps, (block_index, _, _) = self._outputs
        with self._lease() as it:
            for i, img in enumerate(images):
                it.set_tensor(self._input_index, img[None])  # type: ignore[attr-defined]
                it.invoke()  # type: ignore[attr-defined]
                q = it.get_tensor(emb_index)  # type: ignore[attr-defined]
                emb[i] = (q.reshape(-1).astype(np.float32) - zero) * scale
                pooled[i] = features.pool_maps(
                    [(it.get_tensor(idx).astype(np.float32) - z) * s for idx, s, z in maps])[0]  # type: ignore[attr-defined]
                block_in[i] = it.get_tensor(block_index)[0]  # type: ignore[attr-defined]
        return emb, pooled, block_in

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`outputs` without the block input: embeddings and pooled maps."""
        emb, pooled, _ = self.outputs(images)
        return emb, pooled

    def block_input(self, codes: np.ndarray) -> np.ndarray:
        """Block-17 input codes ``int8 [N, 7, 7, 160]`` → their ``float32`` values."""
        _, scale, zero = self._outputs[-1]
        return (np.asarray(codes, dtype=np.float32) - zero) * scale

    def embed(self, images: np.ndarray) -> np.ndarray:
        """``uint8 [N, 224, 224, 3]`` → ``float32 [N, 1280]`` (dequantized pooled embeddings)."""
        return self.features(images)[0]

    def imagenet_probs(self, embeddings: np.ndarray) -> np.ndarray:
        """The backbone's own 1001-way ImageNet softmax, computed from the embedding."""
        return softmax(embeddings @ self._imagenet_kernel + self._imagenet_bias)


ZOOM_MEMO_ENV = "FRUITPIPE_ZOOM_MEMO"  # file a training job loads and saves its ZoomMemo in


class ZoomMemo:
    """The four quadrant embeddings of preprocessed images, keyed by the image's sha256 and the
    backbone's: training and the retrain's evaluations ask for the same images' second look again
    and again (calibration, the job's own check, the gate), with other prototypes each time. Off
    unless :func:`remember_zoom` switched it on (serving never keeps it); ``save``/``load`` carry
    it across the processes of a retrain (npz, temporary file + ``os.replace``)."""

    def __init__(self) -> None:
        self.entries: dict[str, np.ndarray] = {}  # key -> float32 [4, 1280]
        self.new = 0

    @staticmethod
    def key(image: np.ndarray) -> str:
        import hashlib
        return hashlib.sha256(backbone.SHA256.encode() + image.tobytes()).hexdigest()

    def save(self, path: Path) -> None:
        import tempfile
        if not self.new:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            keys = sorted(self.entries)
            # float32, exactly what the backbone gave: calibration sets bars just above these scores
            np.savez(fh, keys=np.array(keys), emb=np.stack([self.entries[k] for k in keys]).astype(np.float32))
        os.replace(tmp, path)
        self.new = 0

    def load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                for key, emb in zip(data["keys"], data["emb"]):
                    self.entries.setdefault(str(key), emb)
        except (OSError, KeyError, ValueError):
            pass


_ZOOM_MEMO: ZoomMemo | None = None


def remember_zoom() -> ZoomMemo:
    """Switch the process's :class:`ZoomMemo` on (training and retrain processes) and return it."""
    global _ZOOM_MEMO
    if _ZOOM_MEMO is None:
        _ZOOM_MEMO = ZoomMemo()
    return _ZOOM_MEMO


def zoom_similarity(backbone: Backbone, prototypes: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Best prototype similarity over each image's four zoomed quadrants, ``float32 [N]``.

    Four backbone passes per image (none for an image the :class:`ZoomMemo`, when on, already
    holds); the rejection asks for it only for images it would reject.
    """
    out = np.empty(len(images), dtype=np.float32)
    memo = _ZOOM_MEMO
    for i, image in enumerate(images):
        key = memo.key(image) if memo is not None else None
        emb = memo.entries.get(key) if memo is not None and key is not None else None
        if emb is None:
            emb = backbone.embed(imaging.zoom_views(image))
            if memo is not None and key is not None:
                memo.entries[key] = emb
                memo.new += 1
        out[i] = prototype_similarity(emb, prototypes).max()
    return out


class Classifier:
    """A verified model bundle on a provisioned backbone."""

    def __init__(self, bundle_dir: Path | str, *, backbone_path: Path | str | None = None,
                 num_threads: int | None = None, workers: int = 1,
                 shared_backbone: Backbone | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = bundle.verify(self.bundle_dir)
        threads = num_threads or int(os.environ.get("FRUITPIPE_THREADS", "1"))
        self.backbone = shared_backbone or Backbone(
            Path(backbone_path) if backbone_path else None, num_threads=threads, workers=workers)
        self.head = Head.load(self.bundle_dir / self.manifest.head["file"],
                              [layer["activation"] for layer in self.manifest.head["layers"]])
        # Bundles made before the recipe existed have no "features" entry: embedding only.
        self.recipe = str(self.manifest.head.get("features", features.LEGACY))
        try:
            dim = features.input_dim(self.recipe)
        except ValueError as exc:
            raise bundle.BundleError(str(exc)) from None
        # A fine-tuned block 17 (recipe emb+b17mm+156mm) replaces tensor 170 in the head's input.
        self.block: block.Block | None = None
        if features.uses_block(self.recipe):
            name = self.manifest.head.get("block", {}).get("file")
            if not name:
                raise bundle.BundleError(f"head recipe {self.recipe!r} needs a block file in the manifest")
            try:
                self.block = block.Block.load(self.bundle_dir / name)
            except (OSError, KeyError, ValueError) as exc:
                raise bundle.BundleError(f"cannot load the fine-tuned block {name}: {exc}") from None
        if self.head.input_dim != dim or self.head.output_dim != len(LABELS):
            raise bundle.BundleError(f"head shape {self.head.input_dim}→{self.head.output_dim} does "
                                     f"not map {dim} ({self.recipe}) to {len(LABELS)}")
        self.rejector = Rejector.from_manifest(self.manifest.rejection, self.bundle_dir)
        self.size = int(self.manifest.preprocessing.get("size", imaging.INPUT_SIZE))

    @property
    def version(self) -> str:
        return self.manifest.version

    def predict_arrays(self, images: np.ndarray) -> list[Prediction]:
        """Classify preprocessed ``uint8 [N, 224, 224, 3]`` images (one batch)."""
        images = np.asarray(images, dtype=np.uint8)
        emb, pooled, block_in = self.backbone.outputs(images)
        return self.predict_embeddings(emb, pooled, images=lambda rows: images[rows], block_in=block_in)

    def zoom_similarity(self, images: np.ndarray) -> np.ndarray:
        """The rejection's second look on preprocessed images (see :func:`zoom_similarity`)."""
        return zoom_similarity(self.backbone, self.rejector.prototypes, images)

    def head_input(self, emb: np.ndarray, pooled: np.ndarray | None = None,
                   block_in: np.ndarray | None = None) -> np.ndarray:
        """The head's input for this bundle's recipe from backbone outputs (see :meth:`predict_embeddings`)."""
        if self.block is not None and pooled is not None:
            if block_in is None:
                raise ValueError(f"head recipe {self.recipe!r} needs the block-17 inputs")
            pooled = features.with_block(pooled, self.block(self.backbone.block_input(block_in)))
        return features.head_input(self.recipe, emb, pooled)

    def predict_embeddings(self, emb: np.ndarray, pooled: np.ndarray | None = None,
                           images: ImageSource | None = None,
                           block_in: np.ndarray | None = None) -> list[Prediction]:
        """Classify backbone outputs (:meth:`Backbone.outputs`): embeddings ``float32 [N, 1280]``,
        pooled maps ``[N, 832]`` (needed unless the bundle's recipe is the embedding alone) and
        block-17 input codes ``int8 [N, 7, 7, 160]`` (needed when the bundle has a fine-tuned
        block); evaluation reuses cached ones.

        ``images`` gives the preprocessed images of rows the rejection wants a second look at;
        without it, those rows are judged on the whole image only (stricter, never looser).
        """
        probs = self.head(self.head_input(emb, pooled, block_in))
        scores = self.rejector.scores(emb, self.backbone.imagenet_probs(emb), probs)
        if images is not None:
            self.rejector.take_second_look(scores, lambda rows: self.zoom_similarity(images(rows)))
        top = probs.argmax(axis=1)
        verdicts = self.rejector.verdicts(scores, top)
        stamp = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        return [
            Prediction(
                predicted_class=LABELS[int(top[i])],
                confidence=float(probs[i, top[i]]),
                probabilities={label: float(p) for label, p in zip(LABELS, probs[i])},
                verdict=verdicts[i],
                model_version=self.version,
                scores={name: float(vals[i]) for name, vals in scores.items() if not np.isnan(vals[i])},
                timestamp=stamp,
            )
            for i in range(len(top))
        ]

    def predict_bytes(self, data: bytes) -> Prediction:
        """Decode, preprocess and classify one encoded image. Raises ``InvalidImage``."""
        return self.predict_arrays(imaging.load_image(data, size=self.size)[None])[0]

    def predict_many(self, blobs: Sequence[bytes]) -> list[Prediction | imaging.InvalidImage]:
        """Classify several images in one batch; a bad one yields its error, not an exception."""
        arrays: list[np.ndarray] = []
        slots: list[int] = []
        results: list[Prediction | imaging.InvalidImage] = []
        for data in blobs:
            try:
                arrays.append(imaging.load_image(data, size=self.size))
                slots.append(len(results))
                results.append(imaging.InvalidImage("empty", "placeholder"))
            except imaging.InvalidImage as exc:
                results.append(exc)
        if arrays:
            for slot, pred in zip(slots, self.predict_arrays(np.stack(arrays))):
                results[slot] = pred
        return results
