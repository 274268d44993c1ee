"""Train the head together with a fine-tuned block 17 (recipe ``emb+b17mm+156mm``), keras-io style.

Two stages, both on cached backbone outputs (no image is decoded again):

1. the head alone on the frozen features (the backbone's own map 170, already cached and pooled);
2. block 17 and that head together, a few epochs at a lower learning rate.

Stage 2 starting from a trained head is what keeps a fit short: training block and head from
scratch needs ~15 epochs (86 s here) for the same accuracy; 30 head epochs + 4 joint epochs take
~35 s (docs/ml.md). The head normalises its input with batch norm, which follows the block's
features as they move; on export the batch norm is folded into the first dense layer, and block
and head become numpy (:class:`~fruitpipe.block.Block`, :class:`~fruitpipe.head.Head`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import features
from .block import Block
from .head import Head
from .joblog import Epochs, keras_callback, log, stage
from .labels import LABELS

if TYPE_CHECKING:
    from .training import Config

POOLED_170 = 2 * features.FEATURE_CHANNELS[0]  # the pooled-map columns the block replaces


class Inputs(NamedTuple):
    """Cached backbone outputs of N rows: block input ``float32 [N, 7, 7, 160]``, embedding
    ``[N, 1280]``, pooled maps ``[N, 832]``."""

    block_in: np.ndarray
    embedding: np.ndarray
    pooled: np.ndarray

    def head_input(self, block: Block) -> np.ndarray:
        """The head's input with ``block`` in place of tensor 170 (what serving computes)."""
        return features.head_input(features.FINETUNED, self.embedding,
                                   features.with_block(self.pooled, block(self.block_in)))

    def frozen_input(self) -> np.ndarray:
        """The head's input with the backbone's own map 170 (already cached, pooled): what the
        initial block computes, up to int8 rounding (cosine > 0.999, tests/test_block.py)."""
        return features.head_input(features.FROZEN, self.embedding, self.pooled)

    def keras(self) -> list[np.ndarray]:
        """The joint model's inputs: block input, embedding, pooled map 156."""
        return [self.block_in, self.embedding, self.pooled[:, POOLED_170:]]


def export_head(head_model: Any) -> Head:
    """Fold the input batch norm into the first dense layer: ``bn(x) @ W + b == x @ W' + b'``."""
    import keras

    bn = next(layer for layer in head_model.layers if isinstance(layer, keras.layers.BatchNormalization))
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    scale = gamma / np.sqrt(var + bn.epsilon)
    shift = beta - mean * scale
    dense = [layer for layer in head_model.layers if isinstance(layer, keras.layers.Dense)]
    kernels = [np.asarray(d.kernel.numpy(), np.float64) for d in dense]
    biases = [np.asarray(d.bias.numpy(), np.float64) for d in dense]
    biases[0] = shift @ kernels[0] + biases[0]
    kernels[0] = scale[:, None] * kernels[0]
    return Head(kernels=tuple(k.astype(np.float32) for k in kernels), biases=tuple(b.astype(np.float32) for b in biases),
                activations=tuple("relu" if i < len(dense) - 1 else "softmax" for i in range(len(dense))))


def keras_head(cfg: "Config", outputs: int = len(LABELS)) -> Any:
    """Batch norm → dropout → dense ``hidden`` (ReLU) → dropout → dense ``outputs`` (softmax; 6 classes,
    or 7 with a ``not_fruit`` output), on 2112 inputs."""
    import keras

    reg = keras.regularizers.l2(cfg.weight_decay) if cfg.weight_decay else None
    layers: list[Any] = [keras.Input((features.input_dim(features.FINETUNED),)), keras.layers.BatchNormalization(),
                         keras.layers.Dropout(cfg.dropout)]
    if cfg.hidden:
        layers += [keras.layers.Dense(cfg.hidden, activation="relu", kernel_regularizer=reg),
                   keras.layers.Dropout(cfg.dropout)]
    return keras.Sequential(layers + [keras.layers.Dense(outputs, activation="softmax", kernel_regularizer=reg)])


def load_head(head_model: Any, start: Head, x: np.ndarray) -> None:
    """Put a folded numpy head back into the Keras head, exactly: the batch norm gets the mean and
    variance of ``x`` (the head's inputs now) and the first kernel is unfolded to match,
    ``((x - mu) / sd) @ (sd W') + (b' + mu W') == x @ W' + b'``. The weights are then on the scale
    the head was trained on, so stage 2 continues as it would from stage 1."""
    import keras

    bn = next(layer for layer in head_model.layers if isinstance(layer, keras.layers.BatchNormalization))
    dense = [layer for layer in head_model.layers if isinstance(layer, keras.layers.Dense)]
    if [(int(d.kernel.shape[0]), int(d.kernel.shape[1])) for d in dense] != [k.shape for k in start.kernels]:
        raise ValueError("the base model's head has another shape than this recipe's")
    mu, var = x.mean(axis=0).astype(np.float64), x.var(axis=0).astype(np.float64)
    sd = np.sqrt(var + bn.epsilon)
    bn.set_weights([np.ones_like(mu), np.zeros_like(mu), mu, var])
    kernels = [np.asarray(k, np.float64) for k in start.kernels]
    biases = [np.asarray(b, np.float64) for b in start.biases]
    biases[0] = biases[0] + mu @ kernels[0]
    kernels[0] = sd[:, None] * kernels[0]
    for layer, kernel, bias in zip(dense, kernels, biases):
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


def fit(train: Inputs, y: np.ndarray, cfg: "Config", init: Block,
        val: Inputs | None = None, y_val: np.ndarray | None = None,
        start: Head | None = None, sample_weights: np.ndarray | None = None) -> tuple[Head, Block, dict[str, list[float]]]:
    """Stage 1 (head, ``cfg.epochs``) then stage 2 (block + head, ``cfg.finetune_epochs`` at
    ``cfg.finetune_lr``), starting from ``init``. Returns the numpy head and block and the history.

    Warm start (a retrain): with ``start``, the live model's head, and ``init`` its block, stage 1
    is skipped and stage 2 runs ``cfg.warm_epochs`` (see :func:`load_head`).

    With ``cfg.not_fruit_output`` the head has a seventh output and rows with ``y == 6`` are
    not-fruit photos it learns to put there. ``sample_weights``: optional per-row sample weights
    ``float32 [N]`` (class balance, :func:`fruitpipe.training.balance_weights`).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(cfg.seed)
    outputs = len(LABELS) + int(cfg.not_fruit_output)  # y == 6: a not-fruit photo (the 7th output)
    head = keras_head(cfg, outputs)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    y_hot = keras.utils.to_categorical(y, outputs)
    has_val = val is not None and y_val is not None and len(y_val)
    val_hot = keras.utils.to_categorical(y_val, outputs) if has_val else None
    head_epochs, joint_epochs = (0, cfg.warm_epochs) if start is not None else (cfg.epochs, cfg.finetune_epochs)
    total = head_epochs + joint_epochs

    hist1 = None
    if start is not None:
        sample = np.random.default_rng(cfg.seed).permutation(len(y))[:2048]
        load_head(head, start, Inputs(*(a[sample] for a in train)).head_input(init))
    else:
        stage("train_head")
        # jit_compile=False: XLA makes these small convolutions several times slower on CPU (measured).
        head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss, metrics=["accuracy"],
                     jit_compile=False)
        hist1 = head.fit(train.frozen_input(), y_hot, sample_weight=sample_weights, epochs=head_epochs, batch_size=cfg.batch_size, shuffle=True,
                         verbose=0, validation_data=(val.frozen_input(), val_hot) if has_val else None,
                         callbacks=[keras_callback(Epochs(head_epochs, 0, total, desc="head"))])

    stage("finetune_block")
    block_in, emb, pooled_156 = (keras.Input(a.shape[1:]) for a in train.keras())
    convs = {"expand": keras.layers.Conv2D(init.expand.shape[1], 1),
             "depthwise": keras.layers.DepthwiseConv2D(3, padding="same"),
             "project": keras.layers.Conv2D(init.project.shape[1], 1)}
    x = convs["project"](keras.layers.ReLU(6.0)(convs["depthwise"](keras.layers.ReLU(6.0)(convs["expand"](block_in)))))
    joined = keras.layers.Concatenate()([emb, keras.layers.GlobalAveragePooling2D()(x),
                                         keras.layers.GlobalMaxPooling2D()(x), pooled_156])
    model = keras.Model([block_in, emb, pooled_156], head(joined))
    for name, weights in init.keras_weights().items():
        convs[name].set_weights(weights)
    model.compile(optimizer=keras.optimizers.Adam(cfg.finetune_lr), loss=loss, metrics=["accuracy"], jit_compile=False)
    hist2 = model.fit(train.keras(), y_hot, sample_weight=sample_weights, epochs=joint_epochs, batch_size=cfg.batch_size, shuffle=True,
                      verbose=0, validation_data=(val.keras(), val_hot) if has_val else None,
                      callbacks=[keras_callback(Epochs(joint_epochs, head_epochs, total, desc="block 17 + head"))]) if joint_epochs else None

    block = Block.from_keras({name: layer.get_weights() for name, layer in convs.items()})
    numpy_head = export_head(head)
    # The exported numpy block + head must compute what the Keras model computes.
    probe = Inputs(*(a[: min(128, len(y))] for a in train))
    diff = float(np.abs(numpy_head(probe.head_input(block)) - model.predict(probe.keras(), verbose=0)).max())
    if diff > 1e-3:
        from .training import TrainingError
        raise TrainingError(f"numpy block + head differ from the Keras model by {diff}")
    log(export_max_abs_diff=diff)
    history: dict[str, list[float]] = {}
    for hist in (hist1, hist2):
        for k, vals in (hist.history.items() if hist is not None else []):
            history.setdefault(k, []).extend(float(v) for v in vals)
    return numpy_head, block, history
