"""LiteRT inference: frozen backbone (the one the bundle names) → embedding (+ MobileNetV2's pooled
earlier maps and block-17 input) → head → six probabilities → verdict.

Thread safety: a LiteRT ``Interpreter`` must not be used by two threads at once. A
:class:`Classifier` owns a small pool of interpreters (``workers``, default 1) and lends one to
each call, so one instance can be shared by every request thread of a server; with more workers
than cores, calls simply wait. Everything else (head, rejection rule) is read-only numpy.
"""

from __future__ import annotations

import os
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import backbone, block, bundle, features, imaging
from .head import Head, softmax
from .labels import LABELS, OOD_FOLDER, Verdict
from .rejection import Rejector, prototype_similarity, split_not_fruit

# Rows of a batch → their preprocessed images ``uint8 [n, S, S, 3]``; lets callers that hold
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
    """A frozen backbone (:class:`fruitpipe.backbone.Spec`) as an embedding function, with its
    ImageNet classifier (when the file has one) kept in numpy.

    ``Backbone(spec)`` takes a :class:`~fruitpipe.backbone.Spec` or a registry name
    (``"efficientnet_lite0"``); ``path`` (or, for the old signature, a path as first argument)
    names a local copy of the file, else :func:`fruitpipe.backbone.resolve` finds one.
    """

    def __init__(self, spec: backbone.Spec | str | os.PathLike[str] | None = None,
                 path: Path | str | None = None, *, num_threads: int = 1, workers: int = 1) -> None:
        if backbone.is_path(spec):  # Backbone(path): the default backbone's file (signature before the registry)
            spec, path = None, spec  # type: ignore[assignment]
        self.spec = backbone.get(spec)
        self.path = backbone.resolve(self.spec, path)
        model = backbone.embedding_model(self.path.read_bytes(), spec=self.spec)
        self._pool: queue.Queue = queue.Queue()
        for _ in range(max(1, workers)):
            self._pool.put(_interpreter(model, num_threads))
        it = self._pool.queue[0]
        details = it.get_tensor_details()
        if self.spec.graph_output is not None and \
                tuple(o["index"] for o in it.get_output_details()) != self.spec.output_tensors:
            raise backbone.BackboneError("output rewrite did not take effect")
        inp = it.get_input_details()[0]
        self._input_index = inp["index"]
        self.input_shape = tuple(int(v) for v in inp["shape"][1:])  # (S, S, 3)
        # (tensor index, scale, zero point) per output: each is dequantized with its own parameters.
        self._outputs = [(i, *details[i]["quantization"]) for i in self.spec.output_tensors]
        self._out_scale, self._out_zero = details[self.spec.embedding_tensor]["quantization"]
        self.embedding_dtype = np.dtype(self.spec.embedding_dtype)  # of the cached embedding codes
        self.pooled_dim = 2 * sum(self.spec.feature_channels)
        self.block_shape: tuple[int, ...] = (
            tuple(int(v) for v in details[self.spec.block_input_tensor]["shape"][1:])
            if self.spec.block_input_tensor is not None else (0,))
        self._explain_it = None  # feature_map's interpreter, created on first use
        self._explain_lock = threading.Lock()
        self._imagenet_kernel: np.ndarray | None = None
        self._imagenet_bias: np.ndarray | None = None
        if self.spec.imagenet_weights is not None and self.spec.imagenet_bias is not None:
            # The classifier that reads the embedding (1x1 conv or fully connected), dequantized:
            # weights (q - zero) * scale per output row; the int32 bias by its own scale.
            wq = details[self.spec.imagenet_weights]["quantization_parameters"]
            bq = details[self.spec.imagenet_bias]["quantization_parameters"]
            rows = self.spec.imagenet_classes
            w = it.get_tensor(self.spec.imagenet_weights).reshape(rows, -1).astype(np.float32)
            w = (w - wq["zero_points"].astype(np.float32)[:, None]) * wq["scales"].astype(np.float32)[:, None]
            self._imagenet_kernel = np.ascontiguousarray(w.T)  # [D, classes]
            self._imagenet_bias = (it.get_tensor(self.spec.imagenet_bias).astype(np.float32)
                                   * bq["scales"].astype(np.float32))

    def feature_map(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image ``uint8 [S, S, 3]`` → (its embedding ``float32 [1, D]``, the spatial map
        ``spec.cam_tensor`` it is the global average of, ``float32 [H, W, D]``), from one pass.

        For explanations only: it runs a separate interpreter that keeps every tensor
        (``experimental_preserve_all_tensors``, created on first use), never the serving pool.

        Raises:
            ValueError: the backbone has no such map (``spec.cam_tensor`` is None).
        """
        if self.spec.cam_tensor is None:
            raise ValueError(f"backbone {self.spec.name} has no spatial map before its embedding")
        with self._explain_lock:
            if self._explain_it is None:
                import warnings

                from ai_edge_litert.interpreter import Interpreter
                with warnings.catch_warnings():  # "for debugging only": here it is the point, on one image
                    warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
                    self._explain_it = Interpreter(model_content=self.path.read_bytes(), num_threads=1,
                                                   experimental_preserve_all_tensors=True)
                self._explain_it.allocate_tensors()
            it = self._explain_it
            it.set_tensor(self._input_index, np.asarray(image, np.uint8)[None])
            it.invoke()
            details = it.get_tensor_details()
            scale, zero = details[self.spec.cam_tensor]["quantization"]
            fmap = (it.get_tensor(self.spec.cam_tensor)[0].astype(np.float32) - zero) * scale
            emb = (it.get_tensor(self.spec.embedding_tensor).reshape(1, -1).astype(np.float32)
                   - self._out_zero) * self._out_scale
        if self.spec.cam_layout == "nchw":
            fmap = np.transpose(fmap, (1, 2, 0))
        return emb, np.ascontiguousarray(fmap)

    @property
    def has_imagenet(self) -> bool:
        """Whether :meth:`imagenet_probs` gives real probabilities (else NaN)."""
        return self._imagenet_kernel is not None

    @contextmanager
    def _lease(self) -> Iterator[object]:
        it = self._pool.get()
        try:
            yield it
        finally:
            self._pool.put(it)

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``uint8 [N, S, S, 3]`` (S = the spec's input size) → (``float32 [N, D]`` embeddings,
        ``float32 [N, P]`` pooled maps, ``int8 [N, *B]`` block-17 inputs as the backbone's own codes).

        MobileNetV2: D 1280, P 832, B (7, 7, 160). The embedding feeds the rejection rule and the
        ImageNet head; the pooled maps (see :mod:`fruitpipe.features`) complete the head's input; a
        fine-tuned block 17 runs on the block input (:meth:`block_input`). One forward pass gives all
        three. Backbones without those extras give P 0 and B (0,) (empty arrays).

        Raises:
            ValueError: the images are not of this backbone's input size.
        """
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim == 3:
            images = images[None]
        if images.shape[1:] != self.input_shape:
            raise ValueError(f"backbone {self.spec.name} takes images of shape {self.input_shape}, "
                             f"got {images.shape[1:]}")
        n = len(images)
        emb = np.empty((n, self.spec.embedding_dim), dtype=np.float32)
        pooled = np.empty((n, self.pooled_dim), dtype=np.float32)
        block_in = np.empty((n, *self.block_shape), dtype=np.int8)
        (emb_index, scale, zero), *rest = self._outputs
        maps = rest[:len(self.spec.feature_tensors)]
        block_index = rest[-1][0] if self.spec.block_input_tensor is not None else None
        with self._lease() as it:
            for i, img in enumerate(images):
                it.set_tensor(self._input_index, img[None])  # type: ignore[attr-defined]
                it.invoke()  # type: ignore[attr-defined]
                q = it.get_tensor(emb_index)  # type: ignore[attr-defined]
                emb[i] = (q.reshape(-1).astype(np.float32) - zero) * scale
                if maps:
                    pooled[i] = features.pool_maps(
                        [(it.get_tensor(idx).astype(np.float32) - z) * s for idx, s, z in maps])[0]  # type: ignore[attr-defined]
                if block_index is not None:
                    block_in[i] = it.get_tensor(block_index)[0]  # type: ignore[attr-defined]
        return emb, pooled, block_in

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`outputs` without the block input: embeddings and pooled maps."""
        emb, pooled, _ = self.outputs(images)
        return emb, pooled

    def block_input(self, codes: np.ndarray) -> np.ndarray:
        """Block-17 input codes ``int8 [N, 7, 7, 160]`` → their ``float32`` values (MobileNetV2)."""
        if self.spec.block_input_tensor is None:
            return np.zeros((len(codes), 0), np.float32)
        _, scale, zero = self._outputs[-1]
        return (np.asarray(codes, dtype=np.float32) - zero) * scale

    def embed(self, images: np.ndarray) -> np.ndarray:
        """``uint8 [N, S, S, 3]`` → ``float32 [N, D]`` (dequantized pooled embeddings)."""
        return self.features(images)[0]

    def quantize(self, embeddings: np.ndarray) -> np.ndarray:
        """Dequantized embeddings → the backbone's own codes (``embedding_dtype``; lossless round trip)."""
        info = np.iinfo(self.embedding_dtype)
        q = np.rint(np.asarray(embeddings, np.float32) / self._out_scale + self._out_zero)
        return np.clip(q, info.min, info.max).astype(self.embedding_dtype)

    def imagenet_probs(self, embeddings: np.ndarray) -> np.ndarray:
        """The backbone's own ImageNet softmax from the embedding, ``float32 [N, 1001]``: column 0 is
        "background" (0 for backbones with 1000 classes), ImageNet class i is column i + 1
        (the indexing :data:`fruitpipe.rejection.OTHER_PRODUCE` uses). All NaN for a backbone without
        an ImageNet classifier (MobileNetV1's extractor): the rules that read it never fire."""
        embeddings = np.asarray(embeddings, np.float32)
        if self._imagenet_kernel is None:
            return np.full((len(embeddings), 1001), np.nan, np.float32)
        probs = softmax(embeddings @ self._imagenet_kernel + self._imagenet_bias)
        if probs.shape[1] == 1000:
            probs = np.concatenate([np.zeros((len(probs), 1), probs.dtype), probs], axis=1)
        return probs


ZOOM_MEMO_ENV = "FRUITPIPE_ZOOM_MEMO"  # file a training job loads and saves its ZoomMemo in


class ZoomMemo:
    """The four quadrant embeddings of preprocessed images, keyed by the image's sha256 and the
    backbone's: training and the retrain's evaluations ask for the same images' second look again
    and again (calibration, the job's own check, the gate), with other prototypes each time. Off
    unless :func:`remember_zoom` switched it on (serving never keeps it); ``save``/``load`` carry
    it across the processes of a retrain (npz, temporary file + ``os.replace``)."""

    def __init__(self) -> None:
        self.entries: dict[str, np.ndarray] = {}  # key -> float32 [4, D]
        self.new = 0

    @staticmethod
    def key(image: np.ndarray, backbone_sha256: str = backbone.SHA256) -> str:
        import hashlib
        return hashlib.sha256(backbone_sha256.encode() + image.tobytes()).hexdigest()

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
        key = memo.key(image, backbone.spec.sha256) if memo is not None else None
        emb = memo.entries.get(key) if memo is not None and key is not None else None
        if emb is None:
            emb = backbone.embed(imaging.zoom_views(image))
            if memo is not None and key is not None:
                memo.entries[key] = emb
                memo.new += 1
        out[i] = prototype_similarity(emb, prototypes).max()
    return out


class Classifier:
    """A verified model bundle on the backbone its manifest names (MobileNetV2 when it names none).

    The backbone is ``shared_backbone`` when that is the one the manifest names, else
    ``backbones(spec)`` (a server's per-backbone pool), else a new :class:`Backbone`;
    ``backbone_path`` is a local copy of that backbone's file (or a folder holding it).
    """

    def __init__(self, bundle_dir: Path | str, *, backbone_path: Path | str | None = None,
                 num_threads: int | None = None, workers: int = 1,
                 shared_backbone: Backbone | None = None,
                 backbones: Callable[[backbone.Spec], Backbone] | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = bundle.verify(self.bundle_dir)
        spec = self.manifest.backbone
        threads = num_threads or int(os.environ.get("FRUITPIPE_THREADS", "1"))
        if shared_backbone is not None and shared_backbone.spec.sha256 == spec.sha256:
            self.backbone = shared_backbone
        elif backbones is not None:
            self.backbone = backbones(spec)
        else:
            self.backbone = Backbone(spec, Path(backbone_path) if backbone_path else None,
                                     num_threads=threads, workers=workers)
        self.head = Head.load(self.bundle_dir / self.manifest.head["file"],
                              [layer["activation"] for layer in self.manifest.head["layers"]])
        # Bundles made before the recipe existed have no "features" entry: embedding only.
        self.recipe = str(self.manifest.head.get("features", features.LEGACY))
        if self.recipe != features.LEGACY and not spec.has_extras:
            raise bundle.BundleError(f"head recipe {self.recipe!r} needs MobileNetV2's feature maps, "
                                     f"not backbone {spec.name}")
        try:
            dim = features.input_dim(self.recipe, spec.embedding_dim)
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
        # A head with a seventh "not_fruit" output (issue 11) names its outputs; older heads have six.
        outputs = list(self.manifest.head.get("outputs", LABELS))
        if outputs not in (list(LABELS), [*LABELS, OOD_FOLDER]):
            raise bundle.BundleError(f"unknown head outputs {outputs}")
        if self.head.input_dim != dim or self.head.output_dim != len(outputs):
            raise bundle.BundleError(f"head shape {self.head.input_dim}→{self.head.output_dim} does "
                                     f"not map {dim} ({self.recipe}) to {len(outputs)}")
        self.rejector = Rejector.from_manifest(self.manifest.rejection, self.bundle_dir)
        self.size = int(self.manifest.preprocessing.get("size", spec.input_size))
        if self.size != spec.input_size:
            raise bundle.BundleError(f"preprocessing size {self.size} differs from backbone {spec.name}'s "
                                     f"input size {spec.input_size}")

    @property
    def version(self) -> str:
        return self.manifest.version

    def predict_arrays(self, images: np.ndarray) -> list[Prediction]:
        """Classify preprocessed ``uint8 [N, S, S, 3]`` images (one batch; S = :attr:`size`)."""
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
        """Classify backbone outputs (:meth:`Backbone.outputs`): embeddings ``float32 [N, D]``,
        pooled maps ``[N, 832]`` (needed unless the bundle's recipe is the embedding alone) and
        block-17 input codes ``int8 [N, 7, 7, 160]`` (needed when the bundle has a fine-tuned
        block); evaluation reuses cached ones.

        ``images`` gives the preprocessed images of rows the rejection wants a second look at;
        without it, those rows are judged on the whole image only (stricter, never looser).
        """
        probs, not_fruit = split_not_fruit(self.head(self.head_input(emb, pooled, block_in)))
        scores = self.rejector.scores(emb, self.backbone.imagenet_probs(emb), probs, not_fruit)
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
