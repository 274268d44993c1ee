"""A small convolutional network trained from scratch: the comparison's custom CNN (issue 12).

Every other model in ``fruitpipe compare`` reuses an ImageNet backbone; this one learns from our
photos alone, so the table shows what the pretrained features are worth. In the spirit of the
keras.io "image classification from scratch" example, kept small enough to train on two CPU
cores in a few minutes:

    uint8 [64, 64, 3] → /255 → 5 x (3x3 conv → batch norm → ReLU → 2x2 max pool), 16-32-64-128-256
    filters → global average pool (256-d) → dropout → dense 7 → softmax

The seven outputs are the six classes and ``not_fruit``, trained on the recipe's non-class folders
(real not-fruit photos), so the network is **scored with its own softmax**: an image whose top
output is ``not_fruit`` is rejected, otherwise it is answered with the top of the six classes
(no threshold is fitted, so no validation set chooses anything beyond the epoch count).
Augmentation during training only: mirror, rotation up to 18 degrees, zoom ±20 %, contrast and
brightness ±20 %.

It is exported as a **full-integer int8 TFLite** model (uint8 input, int8 weights and activations,
int8 output; the representative data set is a sample of the training images) and run by LiteRT,
like the backbones. Input: :func:`fruitpipe.imaging.load_image` at ``size=64`` (the same one
preprocessing function, smaller).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import imaging
from .labels import LABELS, OOD_FOLDER

OUTPUTS: tuple[str, ...] = (*LABELS, OOD_FOLDER)
FILE = "custom_cnn_int8.tflite"


@dataclass(frozen=True)
class CnnConfig:
    """Hyperparameters of the custom CNN (chosen by hand for a few minutes of CPU training)."""

    size: int = 64  # input side in pixels
    filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    dropout: float = 0.3
    epochs: int = 10  # what `make compare` trains (compare.FULL_CNN)
    batch_size: int = 64
    learning_rate: float = 2e-3
    representative: int = 200  # training images that calibrate the int8 quantization
    seed: int = 0


def load_images(items: Sequence[tuple[str, Path]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(folder label, path) pairs → ``uint8 [N, size, size, 3]`` images and ``int64 [N]`` targets
    (index into :data:`OUTPUTS`; every non-class folder is ``not_fruit``). Files that
    :func:`fruitpipe.imaging.load_image` refuses are left out."""
    images, targets = [], []
    for label, path in items:
        try:
            images.append(imaging.load_image(Path(path).read_bytes(), size=size))
        except (imaging.InvalidImage, OSError):
            continue
        targets.append(LABELS.index(label) if label in LABELS else len(LABELS))
    if not images:
        return np.empty((0, size, size, 3), np.uint8), np.empty(0, np.int64)
    return np.stack(images), np.array(targets, dtype=np.int64)


def build(cfg: CnnConfig) -> Any:
    """The network (a Keras model taking raw 0-255 pixels, float32 ``[N, size, size, 3]``)."""
    import keras
    from keras import layers

    inputs = keras.Input((cfg.size, cfg.size, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    for f in cfg.filters:
        x = layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D(name="embedding")(x)
    x = layers.Dropout(cfg.dropout)(x)
    outputs = layers.Dense(len(OUTPUTS), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


def _augment(cfg: CnnConfig) -> Any:
    import keras
    from keras import layers

    return keras.Sequential([layers.RandomFlip("horizontal", seed=cfg.seed),
                             layers.RandomRotation(0.05, seed=cfg.seed),
                             layers.RandomZoom(0.2, seed=cfg.seed),
                             layers.RandomContrast(0.2, seed=cfg.seed),
                             layers.RandomBrightness(0.2, value_range=(0, 255), seed=cfg.seed)], name="augment")


def fit(x: np.ndarray, y: np.ndarray, cfg: CnnConfig, x_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None) -> tuple[Any, dict[str, list[float]]]:
    """Train :func:`build` on ``uint8 [N, size, size, 3]`` images and targets (:data:`OUTPUTS`
    indices), Adam with a cosine-decayed learning rate; returns the model and its per-epoch history
    (``loss``, ``accuracy``, and ``val_*`` with a validation set)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    net, augment = build(cfg), _augment(cfg)
    steps = cfg.epochs * int(np.ceil(len(x) / cfg.batch_size))
    net.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps)),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    train = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=cfg.seed).batch(cfg.batch_size)
             .map(lambda a, b: (augment(tf.cast(a, tf.float32), training=True), b)).prefetch(2))
    val = None
    if x_val is not None and y_val is not None and len(y_val):
        val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(256).map(lambda a, b: (tf.cast(a, tf.float32), b))
    hist = net.fit(train, validation_data=val, epochs=cfg.epochs, verbose=0)
    return net, {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def export_int8(net: Any, representative: np.ndarray) -> bytes:
    """The trained network as a full-integer TFLite model: uint8 input (raw pixels), int8 inside,
    int8 output. ``representative``: ``uint8 [n, size, size, 3]`` training images for calibration.
    Raises ``RuntimeError`` when the converter leaves a float op in the graph."""
    import tensorflow as tf

    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints the traced signature
        converter = tf.lite.TFLiteConverter.from_keras_model(net)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([img[None].astype(np.float32)] for img in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


class CnnClassifier:
    """The exported int8 model on LiteRT: preprocessed images → seven probabilities → answer."""

    def __init__(self, path: Path, *, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self._it = Interpreter(model_path=str(self.path), num_threads=num_threads)
        self._it.allocate_tensors()
        inp, out = self._it.get_input_details()[0], self._it.get_output_details()[0]
        self.size = int(inp["shape"][1])
        self._in, self._out = inp["index"], out["index"]
        self._scale, self._zero = out["quantization"]
        if inp["dtype"] != np.uint8 or out["dtype"] != np.int8 or int(out["shape"][-1]) != len(OUTPUTS):
            raise ValueError(f"{self.path} is not a full-integer {len(OUTPUTS)}-output model")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """``uint8 [N, size, size, 3]`` → ``float32 [N, 7]`` (dequantized softmax, :data:`OUTPUTS` order)."""
        out = np.empty((len(images), len(OUTPUTS)), np.float32)
        for i, img in enumerate(np.asarray(images, np.uint8)):
            self._it.set_tensor(self._in, img[None])
            self._it.invoke()
            out[i] = (self._it.get_tensor(self._out)[0].astype(np.float32) - self._zero) * self._scale
        return out

    def answer(self, probs: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Top class of the six per row, and whether the row is rejected (``not_fruit`` on top)."""
        top = probs[:, : len(LABELS)].argmax(axis=1)
        return [LABELS[int(t)] for t in top], probs.argmax(axis=1) == len(LABELS)

    def predict_bytes(self, data: bytes) -> tuple[str, bool]:
        """Decode, preprocess and classify one encoded image: (class, rejected). Raises ``InvalidImage``."""
        labels, rejected = self.answer(self.probabilities(imaging.load_image(data, size=self.size)[None]))
        return labels[0], bool(rejected[0])


def train(train_items: Sequence[tuple[str, Path]], val_items: Sequence[tuple[str, Path]], out: Path,
          cfg: CnnConfig = CnnConfig()) -> dict[str, Any]:
    """Load, train, export to ``out/`` :data:`FILE`; returns ``history``, ``train_seconds`` (the
    whole call: decoding included), ``n_train``, ``n_val`` and ``params``."""
    started = time.monotonic()
    x, y = load_images(train_items, cfg.size)
    x_val, y_val = load_images(val_items, cfg.size)
    net, history = fit(x, y, cfg, x_val, y_val)
    rng = np.random.default_rng(cfg.seed)
    sample = x[rng.choice(len(x), size=min(cfg.representative, len(x)), replace=False)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / FILE).write_bytes(export_int8(net, sample))
    return {"history": history, "train_seconds": round(time.monotonic() - started, 1), "n_train": int(len(y)),
            "n_val": int(len(y_val)), "params": int(net.count_params())}
