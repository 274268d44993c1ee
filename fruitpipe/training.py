"""The training job: embed (cached) → train the head with Keras → export → calibrate → evaluate → bundle.

Runs unchanged as ``fruitpipe train``, as a local child process, and in SageMaker
(``training_job/``). Reports through :mod:`fruitpipe.joblog`: ``stage=<name>`` / ``progress=<0-100>`` lines and metrics as
``name=value`` lines (flushed) that SageMaker metric definitions scrape. On any failure it raises
and writes no bundle: files are assembled in a temporary folder, checked by loading them with
the serving :class:`~fruitpipe.classifier.Classifier`, and only then moved into place (manifest last).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import backbone as backbones, bundle, dataset, finetune, imaging
from .joblog import Epochs, keras_callback, log, stage
from .backbone import DEFAULT_NAME as DEFAULT_BACKBONE
from .block import FILE as BLOCK_FILE, Block
from .embeddings import Embedded, EmbeddingCache, Item, embed_folder, embed_items
from .features import DEFAULT as DEFAULT_FEATURES, LEGACY as EMBEDDING_ONLY, head_input, input_dim, uses_block
from .finetune import Inputs
from .head import Head
from .labels import LABELS, OOD_FOLDER
from .rejection import FILE as REJECTION_FILE
from .evaluation import metrics_from_predictions
from .rejection import (OTHER_PRODUCE, Rejector, add_zoom, compute_scores, kmeans_prototypes, normalise,
                        reject_mask, split_not_fruit, zoom_threshold)

# Row indices → the rejection's second-look score of those rows (see Classifier.zoom_similarity).
ZoomScore = Callable[[np.ndarray], np.ndarray]


class TrainingError(RuntimeError):
    """Training cannot produce a model (e.g. a class has no usable image)."""


@dataclass
class Config:
    """Hyperparameters (SageMaker passes them as strings; :meth:`from_mapping` converts)."""

    backbone: str = DEFAULT_BACKBONE  # a name in fruitpipe.backbone.SPECS, recorded in the manifest
    features: str = DEFAULT_FEATURES  # head input recipe (fruitpipe.features); other backbones than MobileNetV2: "emb"
    hidden: int = 128  # 0 = linear head; 128 keeps head + fine-tuned block under 1 MB
    dropout: float = 0.3
    label_smoothing: float = 0.1
    weight_decay: float = 1e-3
    standardize: bool = True  # train on standardized embeddings; folded into the first layer on export
    epochs: int = 30  # head epochs (stage 1 when block 17 is fine-tuned)
    finetune_epochs: int = 8  # block 17 + head epochs after the head alone (recipe emb+b17mm+156mm only)
    finetune_lr: float = 3e-4
    warm_epochs: int = 4  # with a fine-tuned base model: block + head epochs from the base model's own
    batch_size: int = 128
    learning_rate: float = 1e-3
    flip: bool = True  # train on mirrored views too (embedded once, cached)
    # Real-photo augmentations (fruitpipe.augment, cached views; issue 11), comma-separated view names:
    aug_views: str = ""  # for every training image
    aug_views_extra: str = ""  # also for the images of every source but the first (the Kaggle studio photos)
    balance: float = 0.0  # class balance: sample weight (median group / group size) ** balance, group = (source, class)
    refit: bool = False  # after calibration, retrain on train+validation for the final head
    prototypes_per_class: int = 12
    target_fruit_rejection: float = 0.005  # share of validation fruit the similarity rule may reject
    target_other_rejection: float = 0.003  # extra share the other-fruit rule may reject
    target_ood_rejection: float = 0.98  # with not_fruit/ in validation: lower the bar to what this needs
    max_other_fruit: float = 0.8
    min_confidence: float = 0.5
    validation_split: float = 0.15  # used only without a validation channel
    not_fruit_output: bool = False  # a 7th head output trained on the training set's non-class folders (issue 11)
    target_fruit_loss: float = 0.02  # with that output: share of each validation root's fruit the whole rule may reject (issue 11: <= 2%)
    prototype_rejection: bool = True  # False: only the not_fruit output rejects (no similarity, other-fruit, second look)
    head_dtype: str = "int8"  # float32 | float16 | int8 (per-row scales); int8 keeps the 2112x256 head ~0.5 MB
    seed: int = 0

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "Config":
        out = cls()
        known = {f.name: f for f in fields(cls)}
        for key, raw in values.items():
            key = key.replace("-", "_")
            if key not in known:
                raise TrainingError(f"unknown hyperparameter {key!r}")
            kind = type(getattr(out, key))
            if kind is bool:
                value: Any = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
            else:
                value = kind(raw)
            setattr(out, key, value)
        return out




def balance_weights(groups: np.ndarray, power: float, cap: float = 4.0) -> np.ndarray:
    """Sample weights ``float32 [N]`` that lift scarce groups (a group = one class of one source,
    e.g. the 4 rotten apples of ``fruits_extra`` train next to 184 fresh ones):
    ``(median group size / group size) ** power``, clipped to ``[1, cap]``, then scaled to mean 1.
    ``power`` 0 gives all ones."""
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if power <= 0 or not len(names):
        return np.ones(len(groups), np.float32)
    per_group = np.clip((np.median(counts) / counts) ** power, 1.0, cap)
    weights = per_group[inverse]
    return (weights / weights.mean()).astype(np.float32)


_SOURCE = re.compile(r"(s\d+)-")


def source_of(path: Path) -> str:
    """The source of a training image: the root :func:`fruitpipe.recipe.link_dataset` took it from
    (``s<i>`` of its ``s<i>-<name>`` link), or ``""`` for a folder not made that way."""
    m = _SOURCE.match(Path(path).name)
    return m[1] if m else ""


def _view_list(text: str) -> tuple[str, ...]:
    """Comma-separated view names (checked where they are applied: embeddings.apply_view)."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def augmented_outputs(backbone, cache: EmbeddingCache, emb: Embedded, cfg: "Config",  # type: ignore[no-untyped-def]
                      stage_name: str) -> list[tuple[np.ndarray, "Inputs"]]:
    """The augmentation views the config asks for (``aug_views`` for every image of ``emb``,
    ``aug_views_extra`` also for the images of every source but ``s0``), embedded through the cache:
    one ``(rows of emb, their backbone outputs)`` per view. Empty when none is asked for."""
    every, extra = _view_list(cfg.aug_views), _view_list(cfg.aug_views_extra)
    wanted: dict[tuple[str, ...], list[int]] = {}
    for i, path in enumerate(emb.paths):
        views = tuple(dict.fromkeys(every + (extra if source_of(path) not in ("s0", "") else ())))
        if views:
            wanted.setdefault(views, []).append(i)
    out: list[tuple[np.ndarray, Inputs]] = []
    for views, rows in wanted.items():
        items = [Item(emb.paths[i], emb.labels[i], emb.shas[i]) for i in rows]
        got = embed_items(items, backbone, cache, views=views, stage=stage_name)
        if len(got) != len(rows):  # the images were read once already; a file changed under us
            raise TrainingError(f"{len(rows) - len(got)} training images could not be read again for augmentation")
        for v in views:
            out.append((np.array(rows), _outputs(backbone, got, v, np.ones(len(got), dtype=bool))))
    return out


def config_for(values: dict[str, Any], base_model: Path | None = None) -> Config:
    """:meth:`Config.from_mapping` of ``values``; without a ``backbone`` among them, a retrain
    (``base_model``, the live bundle) keeps the base model's backbone.

    Raises:
        TrainingError: an unknown hyperparameter or backbone, or an unreadable base model.
    """
    values = dict(values)
    if base_model is not None and not values.get("backbone"):
        try:
            values["backbone"] = bundle.read_manifest(Path(base_model)).backbone_name
        except bundle.BundleError as exc:
            raise TrainingError(f"cannot warm-start from base model {base_model}: {exc}") from None
    config = Config.from_mapping(values)
    try:
        backbones.get(config.backbone)
    except backbones.BackboneError as exc:
        raise TrainingError(str(exc)) from None
    return config


def _targets(labels: list[str]) -> np.ndarray:
    return np.array([LABELS.index(lab) for lab in labels], dtype=np.int64)


def _holdout(shas: list[str], y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split by a salted image hash (a retrain keeps the same holdout).

    A class whose images would all be held out keeps them for training.
    """
    import hashlib
    draw = [int(hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for sha in shas]
    val = np.array(draw) < share
    for c in np.unique(y):
        if val[y == c].all():
            val[y == c] = False
    return np.flatnonzero(~val), np.flatnonzero(val)


def _outputs(backbone, emb: Embedded, view: str, mask: np.ndarray) -> Inputs:  # type: ignore[no-untyped-def]
    """The cached backbone outputs of the ``mask`` rows of ``emb`` in ``view``, block input dequantized."""
    return Inputs(backbone.block_input(emb.block_in[view][mask]), emb.views[view][mask], emb.pooled[view][mask])


def _warm_start(base_model: Path | None, cfg: Config) -> tuple[Head, Block] | None:
    """The base model's head and block when a warm start is possible; otherwise None (and why)."""
    if base_model is None or not cfg.warm_epochs:
        return None
    try:
        manifest = bundle.verify(Path(base_model))
        recipe = manifest.head.get("features")
        if manifest.backbone_name != cfg.backbone:
            log(warm_start=0, warm_start_reason=f"base model backbone {manifest.backbone_name}")
            return None
        if recipe != cfg.features or "block" not in manifest.head:
            log(warm_start=0, warm_start_reason=f"base model recipe {recipe}")
            return None
        units = [int(layer["units"]) for layer in manifest.head["layers"]]
        if units[:-1] != ([cfg.hidden] if cfg.hidden else []):
            log(warm_start=0, warm_start_reason="base model head has another hidden size")
            return None
        if units[-1] != len(LABELS) + int(cfg.not_fruit_output):
            log(warm_start=0, warm_start_reason="base model head has other outputs")
            return None
        head = Head.load(Path(base_model) / manifest.head["file"], [l["activation"] for l in manifest.head["layers"]])
        block = Block.load(Path(base_model) / manifest.head["block"]["file"])
    except (bundle.BundleError, OSError, KeyError, ValueError) as exc:
        raise TrainingError(f"cannot warm-start from base model {base_model}: {exc}") from None
    log(warm_start=1)
    return head, block


def _rows(inputs: Inputs, idx: np.ndarray) -> Inputs:
    return Inputs(*(a[idx] for a in inputs))


def fit_head(x: np.ndarray, y: np.ndarray, cfg: Config, x_val: np.ndarray | None = None,
             y_val: np.ndarray | None = None, weights: np.ndarray | None = None
             ) -> tuple[Head, dict[str, list[float]], Any]:
    """Train the dense head with Keras; return it as a numpy :class:`Head`, the history and the model.

    ``y`` holds class indices into :data:`LABELS`, and ``len(LABELS)`` for not-fruit photos when
    ``cfg.not_fruit_output`` (the head then has a seventh output). ``weights``: optional per-row
    sample weights ``float32 [N]``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(cfg.seed)
    mu = x.mean(axis=0) if cfg.standardize else np.zeros(x.shape[1], np.float32)
    sd = x.std(axis=0) + 0.05 if cfg.standardize else np.ones(x.shape[1], np.float32)
    x_in = (x - mu) / sd
    reg = keras.regularizers.l2(cfg.weight_decay) if cfg.weight_decay else None
    inputs = keras.Input((x.shape[1],))
    h = keras.layers.Dropout(cfg.dropout)(inputs)
    if cfg.hidden:
        h = keras.layers.Dense(cfg.hidden, activation="relu", kernel_regularizer=reg)(h)
        h = keras.layers.Dropout(cfg.dropout)(h)
    n_out = len(LABELS) + int(cfg.not_fruit_output)
    outputs = keras.layers.Dense(n_out, activation="softmax", kernel_regularizer=reg)(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=["accuracy"])

    val = None
    if x_val is not None and y_val is not None and len(y_val):
        val = ((x_val - mu) / sd, keras.utils.to_categorical(y_val, n_out))
    hist = model.fit(x_in, keras.utils.to_categorical(y, n_out), validation_data=val, sample_weight=weights,
                     epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True, verbose=0,
                     callbacks=[keras_callback(Epochs(cfg.epochs, desc="head"))])
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    kernels = [np.asarray(d.kernel.numpy(), np.float32) for d in dense]
    biases = [np.asarray(d.bias.numpy(), np.float32) for d in dense]
    # Fold the standardization into the first layer: ((x - mu) / sd) @ W + b == x @ W' + b'.
    biases[0] = (biases[0] - (mu / sd) @ kernels[0]).astype(np.float32)
    kernels[0] = (kernels[0] / sd[:, None]).astype(np.float32)
    head = Head(kernels=tuple(kernels), biases=tuple(biases),
                activations=tuple("relu" if i < len(dense) - 1 else "softmax" for i in range(len(dense))))
    # The exported numpy head must compute what Keras computes.
    probe = x[: min(256, len(x))]
    diff = float(np.abs(head(probe) - model.predict((probe - mu) / sd, verbose=0)).max())
    if diff > 1e-4:
        raise TrainingError(f"numpy head differs from the Keras model by {diff}")
    log(export_max_abs_diff=diff)
    return head, {k: [float(v) for v in vals] for k, vals in hist.history.items()}, model


def _quantile_threshold(values: np.ndarray, share: float) -> float:
    return float(np.quantile(values, share)) if len(values) else 0.0


def not_fruit_bar(per_source: list[np.ndarray], share: float) -> float:
    """The ``max_not_fruit`` bar: the lowest that rejects at most ``share`` of every source's fruit
    (``per_source``: the seventh output's probabilities on each validation source's fruit), i.e.
    the most lenient of the per-source bars."""
    bars = []
    for scores in per_source:
        values = np.sort(scores)[::-1]
        allowed = int(np.floor(max(share, 0.0) * len(values)))
        bars.append(float(values[allowed]) if allowed < len(values) else 0.0)
    return max(bars, default=1.0)


def calibrate(cfg: Config, prototypes: np.ndarray, other_classes: np.ndarray, emb_val: np.ndarray,
              imnet_val: np.ndarray, probs_val: np.ndarray,
              ood_similarity: np.ndarray | None = None, ood_zoom: ZoomScore | None = None,
              fruit_zoom: ZoomScore | None = None, not_fruit_val: np.ndarray | None = None,
              fruit_sources: np.ndarray | None = None) -> dict[str, Any]:
    """Choose the thresholds on validation fruit so about the target share is rejected (of each
    validation source, ``fruit_sources``, when given).

    With not-fruit validation images, the similarity bar is lowered to the level that still
    rejects ``target_ood_rejection`` of them, when that is below the fruit-quantile bar: real fruit
    far from the training photos then stays accepted. With their second-look scores
    (``ood_zoom``), the zoom bar is set just above every not-fruit image the first look rejects
    (:func:`fruitpipe.rejection.zoom_threshold`); without not-fruit images there is no zoom bar.

    With the head's seventh output (``not_fruit_val``, its probability on the validation fruit),
    ``max_not_fruit`` is the lowest bar that rejects at most ``target_fruit_loss -
    target_fruit_rejection`` of every validation source's fruit (``fruit_sources``, one label per
    row; default: one source), and the other-fruit rule is off (``min_similarity_other =
    min_similarity``): on the validation sets it added at most a point to the learnt output
    (``scripts/experiment_open_set.py``) while spending the fruit-loss budget.
    """
    scores = compute_scores(emb_val, imnet_val, probs_val, other_classes, prototypes)
    sources = fruit_sources if fruit_sources is not None else np.zeros(len(emb_val), dtype=int)
    if cfg.prototype_rejection:
        # Per validation source (when known), so a small source of harder photos is not the one
        # that pays for the whole set's share: the most lenient of the per-source bars.
        min_sim = min((_quantile_threshold(scores["similarity"][sources == s], cfg.target_fruit_rejection)
                       for s in np.unique(sources)), default=0.0)
        min_zoom = None
        if ood_similarity is not None and len(ood_similarity):
            min_sim = min(min_sim, _quantile_threshold(ood_similarity, cfg.target_ood_rejection))
            if ood_zoom is not None:
                min_zoom = zoom_threshold(ood_zoom(np.flatnonzero(ood_similarity < min_sim)), min_sim)
        if min_zoom is not None and fruit_zoom is not None:
            add_zoom(scores, np.flatnonzero(scores["similarity"] < min_sim), fruit_zoom)
        if not_fruit_val is not None:  # the learnt output replaces the other-fruit rule (val ablation, docs/ml.md)
            min_sim_other = min_sim
        else:
            # Other-fruit rule: the highest similarity bar that rejects at most the extra target share.
            flagged = scores["other_fruit"] >= cfg.max_other_fruit
            base = reject_mask(scores, min_sim, cfg.max_other_fruit, min_sim, min_zoom)
            candidates = np.sort(scores["similarity"][flagged & ~base])
            allowed = int(np.floor(cfg.target_other_rejection * len(emb_val)))
            min_sim_other = float(candidates[allowed] if allowed < len(candidates) else 1.0)
            min_sim_other = max(min_sim_other, min_sim)
        rejected = reject_mask(scores, min_sim, cfg.max_other_fruit, min_sim_other, min_zoom)
    else:  # the learnt output alone (issue 11's ablation): the similarity and other-fruit rules never reject
        min_sim = min_sim_other = -1.0
        min_zoom = None
        rejected = np.zeros(len(emb_val), dtype=bool)
    max_not_fruit = None
    if not_fruit_val is not None:
        # The learnt output gets the budget the similarity rule does not: each source's fruit above the
        # bar are at most (target_fruit_loss - target_fruit_rejection) of it; the most lenient bar wins.
        share = cfg.target_fruit_loss - (cfg.target_fruit_rejection if cfg.prototype_rejection else 0.0)
        max_not_fruit = not_fruit_bar([not_fruit_val[sources == s] for s in np.unique(sources)], share)
        rejected = rejected | (not_fruit_val > max_not_fruit)
    return {
        "method": "+".join((["prototype-similarity+zoom+imagenet-other-produce"] if cfg.prototype_rejection else [])
                           + (["not-fruit-output"] if max_not_fruit is not None else [])),
        "file": REJECTION_FILE,
        "other_classes": [int(c) for c in other_classes],
        "min_similarity": min_sim,
        "min_similarity_zoom": min_zoom,
        "max_other_fruit": cfg.max_other_fruit,
        "min_similarity_other": min_sim_other,
        "min_confidence": cfg.min_confidence,
        **({"max_not_fruit": max_not_fruit, "target_fruit_loss": cfg.target_fruit_loss}
           if max_not_fruit is not None else {}),
        "calibration": {"n": int(len(emb_val)), "fruit_rejected_rate": float(rejected.mean()) if len(rejected) else 0.0,
                        "target_fruit_rejection": cfg.target_fruit_rejection,
                        "target_other_rejection": cfg.target_other_rejection},
    }


def _plots(out: Path, history: dict[str, list[float]], metrics: dict[str, Any]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(history.get(key, []), label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(history[f"val_{key}"], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=80)
    plt.close(fig)
    conf = metrics["confusion"]
    matrix = np.array(conf["matrix"])
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(conf["columns"])), conf["columns"], rotation=45, ha="right")
    ax.set_yticks(range(len(conf["rows"])), conf["rows"])
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = metrics["accuracy"]  # None: no fruit to score
    ax.set_title(f"{metrics.get('split', 'validation')}, accuracy {'n/a' if acc is None else f'{acc:.3f}'}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=80)
    plt.close(fig)


def _place(tmp: Path, out: Path) -> None:
    """Move a finished bundle into ``out`` (absent or empty), manifest last."""
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"output folder {out} is not empty; refusing to overwrite a bundle")
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in tmp.iterdir() if p.name != bundle.MANIFEST) + [bundle.MANIFEST]
    for name in names:
        shutil.move(str(tmp / name), str(out / name))


def train(data_dir: Path, out_dir: Path, *, validation_dir: Path | None = None,
          cache_dir: Path | None = None, output_data_dir: Path | None = None,
          config: Config | None = None, backbone_path: Path | None = None,
          base_model: Path | None = None, backbone: str | None = None) -> dict[str, Any]:
    """Train a bundle from ``data_dir/<class>/*``; return the metrics written to ``metrics.json``.

    ``backbone`` (a name in :data:`fruitpipe.backbone.SPECS`; default ``config.backbone``,
    MobileNetV2) is the frozen network the bundle is built on; its manifest names it. Backbones
    other than MobileNetV2 train a head on the embedding alone (recipe ``emb``). ``backbone_path``
    is a local copy of its file (default: :func:`fruitpipe.backbone.resolve`).
    Raises :class:`TrainingError` (an unknown backbone among others).

    ``base_model`` (the live bundle): when it has the same fine-tuned recipe, its block and head are
    the starting point (a warm start: ``warm_epochs`` of stage 2 instead of both stages).
    """
    from .classifier import ZOOM_MEMO_ENV, Backbone, Classifier, remember_zoom, zoom_similarity
    from .evaluation import evaluate_embeddings, image_source

    # Calibration and the bundle check take a second look at the same validation images.
    memo = remember_zoom()
    memo_path = Path(os.environ[ZOOM_MEMO_ENV]) if os.environ.get(ZOOM_MEMO_ENV) else None
    if memo_path is not None:
        memo.load(memo_path)

    cfg = config or Config()
    if backbone is not None:
        cfg = replace(cfg, backbone=backbone)
    try:
        spec = backbones.get(cfg.backbone)
    except backbones.BackboneError as exc:
        raise TrainingError(str(exc)) from None
    if not spec.has_extras and cfg.features != EMBEDDING_ONLY:
        # Only MobileNetV2 has the feature maps and block 17 the richer recipes read.
        log(features=EMBEDDING_ONLY, features_reason=f"backbone {spec.name} has no feature maps")
        cfg = replace(cfg, features=EMBEDDING_ONLY)
    try:
        input_dim(cfg.features, spec.embedding_dim)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    started = time.monotonic()
    out_dir, output_data_dir = Path(out_dir), Path(output_data_dir or out_dir)
    # Checked before embedding anything: an unusable base model fails in a second, not after minutes.
    start = _warm_start(base_model, cfg) if uses_block(cfg.features) else None
    stage("load_backbone")
    backbone = Backbone(spec, backbone_path, num_threads=int(os.environ.get("FRUITPIPE_THREADS", "2")))
    cache = EmbeddingCache(cache_dir, spec)
    views = ("orig", "flip") if cfg.flip else ("orig",)
    train_emb = embed_folder(Path(data_dir), backbone, cache, views=views, stage="embed_train")
    val_emb = (embed_folder(Path(validation_dir), backbone, cache, views=views, stage="embed_validation")
               if validation_dir else None)
    train_aug = augmented_outputs(backbone, cache, train_emb, cfg, "embed_augmented")
    val_aug = (augmented_outputs(backbone, cache, val_emb, cfg, "embed_augmented_validation")
               if val_emb is not None and cfg.refit else [])
    cache.flush()
    embedded_new = train_emb.embedded_new + (val_emb.embedded_new if val_emb else 0)
    cached = train_emb.cached + (val_emb.cached if val_emb else 0)
    skipped = train_emb.skipped + (val_emb.skipped if val_emb else type(train_emb.skipped)())
    log(embedded_new=embedded_new, cached=cached, skipped=sum(skipped.values()),
        **{f"skipped_{code}": n for code, n in sorted(skipped.items())})
    for path, code in train_emb.skipped_files + (val_emb.skipped_files if val_emb else []):
        print(f"skipped_file={path} reason={code}", flush=True)

    # Keep only class folders for the head (non-class folders in validation are OOD checks).
    fruit = np.array([lab in LABELS for lab in train_emb.labels], dtype=bool)
    y_all = _targets([lab for lab, f in zip(train_emb.labels, fruit) if f])
    # Per view, the backbone outputs of the training fruit (rows of y_all); e: the 1280-d embedding
    # (prototypes, ImageNet head).
    tr_out = {v: _outputs(backbone, train_emb, v, fruit) for v in views}
    # With a not_fruit output: the training set's non-class photos, every view, target len(LABELS).
    negatives = [_outputs(backbone, train_emb, v, ~fruit) for v in views] if cfg.not_fruit_output else []
    if cfg.not_fruit_output and not (~fruit).any():
        raise TrainingError("not_fruit_output needs not-fruit training photos (a non-class folder in the data)")
    log(n_train_not_fruit=int((~fruit).sum()) if cfg.not_fruit_output else 0)
    e_all = {v: tr_out[v].embedding for v in views}
    if val_emb is not None:
        tr_idx, va_idx = np.arange(len(y_all)), None
        vfruit = np.array([lab in LABELS for lab in val_emb.labels], dtype=bool)
        val_full = _outputs(backbone, val_emb, "orig", np.ones(len(val_emb), dtype=bool))
        val_codes = val_emb.block_in["orig"]
        val_fruit = _rows(val_full, vfruit)
        y_val = _targets([l for l, f in zip(val_emb.labels, vfruit) if f])
        val_labels, val_paths = val_emb.labels, val_emb.paths
    else:
        shas = [s for s, f in zip(train_emb.shas, fruit) if f]
        tr_idx, va_idx = _holdout(shas, y_all, cfg.validation_split, cfg.seed)
        val_full = val_fruit = _rows(tr_out["orig"], va_idx)
        val_codes = train_emb.block_in["orig"][fruit][va_idx]
        y_val = y_all[va_idx]
        val_labels = [LABELS[i] for i in y_val]
        val_paths = [p for p, f in zip(train_emb.paths, fruit) if f]
        val_paths = [val_paths[i] for i in va_idx]
    e_val = val_fruit.embedding
    missing = [LABELS[c] for c in range(len(LABELS)) if not (y_all[tr_idx] == c).any()]
    if missing:
        raise TrainingError(f"no usable training image for {', '.join(missing)}")
    log(n_train=len(tr_idx), n_validation=len(y_val))

    # Class-balance groups (Config.balance): the first source (the Kaggle studio photos) or another,
    # and the class ("not_fruit" for every negative). Validation links number their roots alike
    # (s0 = FRUITS/val), so the refit's validation rows fall into the same groups.
    def group_of(paths: list[Path], labels: list[str]) -> np.ndarray:
        return np.array([f"{'s0' if source_of(p) == 's0' else 'other'}:{lab if lab in LABELS else OOD_FOLDER}"
                         for p, lab in zip(paths, labels)], dtype=object)

    groups_tr = group_of(train_emb.paths, train_emb.labels)
    fruit_pos = np.where(fruit, np.cumsum(fruit) - 1, -1)  # train_emb row -> row of y_all (-1: a negative)

    def aug_parts(aug: list[tuple[np.ndarray, Inputs]], pos_of: np.ndarray, y_of: np.ndarray, keep: np.ndarray,
                  groups: np.ndarray) -> tuple[list[Inputs], list[np.ndarray], list[np.ndarray]]:
        """The augmented rows to train on: fruit whose row (``pos_of``) is kept, and negatives when
        the head has a not_fruit output; with their targets and balance groups."""
        parts, ys, gs = [], [], []
        for rows, outs in aug:
            pos = pos_of[rows]
            take = np.flatnonzero(np.where(pos >= 0, keep[np.maximum(pos, 0)], cfg.not_fruit_output))
            parts.append(_rows(outs, take))
            ys.append(np.where(pos[take] >= 0, y_of[np.maximum(pos[take], 0)], len(LABELS)))
            gs.append(groups[rows[take]])
        return parts, ys, gs

    def stack(idx: np.ndarray, extra: list[Inputs] | None = None,
              extra_y: list[np.ndarray] | None = None, extra_g: list[np.ndarray] | None = None
              ) -> tuple[Inputs, np.ndarray, np.ndarray | None]:
        """Rows ``idx`` of the training fruit in every view, the not-fruit photos (if any), their
        augmented views (Config.aug_views*), then ``extra``; targets and class-balance weights."""
        keep = np.zeros(len(y_all), dtype=bool)
        keep[idx] = True
        a_parts, a_y, a_g = aug_parts(train_aug, fruit_pos, y_all, keep, groups_tr)
        parts = [_rows(tr_out[v], idx) for v in views] + negatives + a_parts + (extra or [])
        y = np.concatenate([np.tile(y_all[idx], len(views))] + [np.full(len(n.embedding), len(LABELS)) for n in negatives]
                           + a_y + (extra_y or []))
        g = np.concatenate([np.tile(groups_tr[fruit][idx], len(views))] + [groups_tr[~fruit]] * len(negatives)
                           + a_g + (extra_g or []))
        log(n_train_rows=len(y), n_augmented_rows=int(sum(len(v) for v in a_y)))
        # No weights at all when balance is off: the fit is then exactly the one before class balance existed.
        weights = balance_weights(g, cfg.balance) if cfg.balance > 0 else None
        return Inputs(*(np.concatenate(arrays) for arrays in zip(*parts))), y, weights

    block: Block | None = None
    init_block = Block.from_backbone(backbone.path) if uses_block(cfg.features) else None
    start_head = start[0] if start is not None else None
    if start is not None:
        init_block = start[1]

    def fit(train_in: Inputs, y: np.ndarray, weights: np.ndarray | None, val_in: Inputs | None = None,
            y_v: np.ndarray | None = None) -> tuple[Head, Block | None, dict[str, list[float]]]:
        if init_block is not None:
            return finetune.fit(train_in, y, cfg, init_block, val_in, y_v, start=start_head, sample_weights=weights)
        stage("train_head")
        x_v = head_input(cfg.features, val_in.embedding, val_in.pooled) if val_in is not None else None
        fitted, hist, _ = fit_head(head_input(cfg.features, train_in.embedding, train_in.pooled), y, cfg, x_v, y_v,
                                   weights=weights)
        return fitted, None, hist

    def x_of(rows: Inputs) -> np.ndarray:  # the head's input for the fitted block (what serving computes)
        return rows.head_input(block) if block is not None else head_input(cfg.features, rows.embedding, rows.pooled)

    # A warm-started refit fits once, on train + validation. The rejection thresholds depend only on
    # the frozen embeddings and the prototypes, never on the head (rejection.compute_scores), so the
    # fit on train alone, which only scores validation before the refit, is skipped: the base
    # model's block and head stand in for it during calibration.
    single_fit = start is not None and cfg.refit and len(y_val) > 0
    if single_fit:
        assert start is not None
        head, block, history = start[0], start[1], {}
        log(single_fit=1)
    else:
        train_in, y_tr, w_tr = stack(tr_idx)
        head, block, history = fit(train_in, y_tr, w_tr, val_fruit, y_val)
        del train_in
    x_val, val_x_full = x_of(val_fruit), x_of(val_full)

    stage("calibrate")
    other = np.array(sorted(OTHER_PRODUCE), dtype=np.int64)

    def protos(units: np.ndarray, labels: np.ndarray) -> np.ndarray:
        # Rounded to the float16 the bundle stores, so calibration scores exactly what serving will.
        centres = np.concatenate([kmeans_prototypes(units[labels == c], cfg.prototypes_per_class, seed=cfg.seed)
                                  for c in range(len(LABELS))])
        return centres.astype(np.float16).astype(np.float32)

    prototypes = protos(normalise(np.concatenate([e_all[v][tr_idx] for v in views])),
                        np.tile(y_all[tr_idx], len(views)))
    val_images = image_source(val_paths, spec.input_size)

    def zoom_of(rows: np.ndarray) -> np.ndarray:  # validation rows → second-look score
        return zoom_similarity(backbone, prototypes, val_images(rows)) if len(rows) else np.empty(0, np.float32)

    ood_sim, ood_zoom = None, None
    fruit_rows = np.flatnonzero([lab in LABELS for lab in val_labels])
    if val_emb is not None and not vfruit.all():
        e_ood = val_full.embedding[~vfruit]
        ood_sim = compute_scores(e_ood, backbone.imagenet_probs(e_ood), split_not_fruit(head(val_x_full[~vfruit]))[0],
                                 other, prototypes)["similarity"]
        ood_rows = np.flatnonzero(~vfruit)
        ood_zoom = lambda rows: zoom_of(ood_rows[rows])  # noqa: E731
    six_val, nf_val = split_not_fruit(head(x_val))
    # Validation roots joined by fruitpipe.recipe.link_dataset are named s<i>-<file>: one source each.
    sources = np.array([re.match(r"(s\d+)-", Path(val_paths[i]).name)[1]  # type: ignore[index]
                        if re.match(r"s\d+-", Path(val_paths[i]).name) else "" for i in fruit_rows])
    rejection = calibrate(cfg, prototypes, other, e_val, backbone.imagenet_probs(e_val), six_val, ood_sim,
                          ood_zoom=ood_zoom, fruit_zoom=lambda rows: zoom_of(fruit_rows[rows]),
                          not_fruit_val=nf_val, fruit_sources=sources)
    if single_fit and rejection.get("max_not_fruit") is not None:
        # The seventh output is the head's, and in a single fit the head that scores validation is the
        # base model's, which was refit on these very images: its not_fruit probabilities on them are
        # seen-data low, and a bar set from them is far too strict for unseen fruit. The base model's
        # bar was set on validation it had not seen (before its own refit, as here): it stays. Both
        # are logged (max_not_fruit_calibrated, max_not_fruit_from_base_model: a local run's
        # training_metrics in /retraining-status, recorded by scripts/bench_retrain.py; checked in
        # tests/test_e2e_local_loop.py).
        base_bar = bundle.read_manifest(Path(base_model)).rejection.get("max_not_fruit")  # type: ignore[arg-type]
        if base_bar is not None:
            log(max_not_fruit_calibrated=float(rejection["max_not_fruit"]))
            rejection["max_not_fruit"] = float(base_bar)
            log(max_not_fruit_from_base_model=float(base_bar))
    log(min_similarity=rejection["min_similarity"], min_similarity_zoom=rejection["min_similarity_zoom"])
    honest = None
    if cfg.refit and len(y_val) and not single_fit:
        # Score the pre-refit model on validation now: after the refit it has seen those images.
        pre = Rejector(other, prototypes, rejection["min_similarity"], rejection["max_other_fruit"],
                       rejection["min_similarity_other"], rejection["min_confidence"],
                       rejection["min_similarity_zoom"], rejection.get("max_not_fruit"))
        probs, nf_full = split_not_fruit(head(val_x_full))
        pre_scores = pre.scores(val_full.embedding, backbone.imagenet_probs(val_full.embedding), probs, nf_full)
        pre.take_second_look(pre_scores, zoom_of)
        flags = pre.not_fruit(pre_scores)
        honest = metrics_from_predictions(val_labels, [LABELS[i] for i in probs.argmax(axis=1)], flags)
    if cfg.refit and len(y_val):
        stage("refit")
        # The final head and prototypes see the validation images too; thresholds stay as calibrated.
        # Without a channel the holdout is inside y_all; with one, its fruit joins in every view.
        extra = [_outputs(backbone, val_emb, v, vfruit) for v in views] if val_emb is not None else []
        extra_y = [y_val] * len(extra)
        extra_g = []
        if val_emb is not None:
            groups_val = group_of(val_emb.paths, val_emb.labels)
            extra_g = [groups_val[vfruit]] * len(extra)
            if cfg.not_fruit_output and (~vfruit).any():  # the calibration negatives too
                extra += [_outputs(backbone, val_emb, v, ~vfruit) for v in views]
                extra_y += [np.full(int((~vfruit).sum()), len(LABELS))] * len(views)
                extra_g += [groups_val[~vfruit]] * len(views)
            vpos = np.where(vfruit, np.cumsum(vfruit) - 1, -1)
            a_parts, a_y, a_g = aug_parts(val_aug, vpos, y_val, np.ones(len(y_val), dtype=bool), groups_val)
            extra, extra_y, extra_g = extra + a_parts, extra_y + a_y, extra_g + a_g
        rf_in, y_rf, w_rf = stack(np.arange(len(y_all)), extra, extra_y, extra_g)
        head, block, refit_history = fit(rf_in, y_rf, w_rf)
        history = refit_history if single_fit else history
        # Prototypes from the original and mirrored views only, as before the refit (not the augmented ones).
        n_base = len(views) if val_emb is not None else 0
        prototypes = protos(normalise(np.concatenate([e_all[v] for v in views] + [x.embedding for x in extra[:n_base]])),
                            np.concatenate([np.tile(y_all, len(views))] + [y_val] * n_base))
        del rf_in

    stage("write_bundle")
    work = Path(tempfile.mkdtemp(prefix=".fruitpipe-train-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        staged = work / "bundle"
        head_path, rej_path, block_path = work / "head.npz", work / REJECTION_FILE, work / BLOCK_FILE
        head.save(head_path, dtype=cfg.head_dtype)
        stored = Head.load(head_path, head.activations)
        files = {"head.npz": head_path}
        probe_in = _rows(val_fruit if len(y_val) else tr_out["orig"], np.arange(min(256, len(y_val) or len(y_all))))
        probe = x_of(probe_in)
        if block is not None:
            block.save(block_path)
            files[BLOCK_FILE] = block_path
            stored_x = probe_in.head_input(Block.load(block_path))
        else:
            stored_x = probe
        log(stored_head_max_abs_diff=float(np.abs(stored(stored_x) - head(probe)).max()),
            stored_head_argmax_agreement=float((stored(stored_x).argmax(1) == head(probe).argmax(1)).mean()))
        with open(rej_path, "wb") as fh:
            np.savez_compressed(fh, prototypes=prototypes.astype(np.float16))
        counts = {lab: int((y_all == i).sum()) for i, lab in enumerate(LABELS)}
        tags = dataset.origins_beside(cache_dir)  # on SageMaker: no tag files, the prepare step's map
        origins = Counter(dataset.origin_of(p) or tags.get(Path(p).stem) or dataset.UNTAGGED
                          for p, lab in zip(train_emb.paths, train_emb.labels) if lab in LABELS)
        manifest = bundle.Manifest(
            version=bundle.new_version(salt=str(os.getpid())), created=bundle.now_iso(), labels=LABELS,
            files={}, head={"file": "head.npz", "dtype": cfg.head_dtype, "features": cfg.features,
                            **({"outputs": [*LABELS, OOD_FOLDER]} if cfg.not_fruit_output else {}),
                            "layers": [{"activation": a, "units": int(k.shape[1])}
                                       for a, k in zip(head.activations, head.kernels)],
                            **({"block": {"file": BLOCK_FILE, "dtype": "int8", "init": "backbone expanded_conv_17",
                                          "input_tensor": spec.block_input_tensor}} if block is not None else {})},
            preprocessing=replace(imaging.PREPROCESSING, size=spec.input_size).as_dict(), rejection=rejection,
            training_data={"train": counts, "origins": dict(sorted(origins.items())),
                           "validation_n": int(len(y_val)), "skipped": dict(skipped),
                           "views": list(views), "refit": cfg.refit,
                           "warm_start_from": bundle.read_manifest(Path(base_model)).version if start else None},
            raw={"hyperparameters": asdict(cfg)}, backbone_name=spec.name)
        bundle.write(staged, manifest, {**{n: f.read_bytes() for n, f in files.items()}, REJECTION_FILE: rej_path.read_bytes()})

        stage("evaluate")
        clf = Classifier(staged, shared_backbone=backbone)  # the serving code path, checksums included
        metrics = evaluate_embeddings(clf, val_full.embedding, val_labels, pooled=val_full.pooled, paths=val_paths,
                                      block_in=val_codes)
        if honest is not None:
            seen = metrics
            metrics = {**honest, "uncertain_rate": seen["uncertain_rate"], "skipped": seen["skipped"],
                       "model_version": seen["model_version"], "refit_validation_accuracy": seen["accuracy"]}
        split = ("validation (scored before the train+validation refit)" if honest
                 else "validation (seen: warm-started refit on train+validation)" if single_fit else "validation")
        metrics.update({"split": split,
                        "embedded_new": embedded_new, "cached": cached, "skipped": dict(skipped),
                        "train_seconds": round(time.monotonic() - started, 2),
                        "calibration_fruit_rejected_rate": rejection["calibration"]["fruit_rejected_rate"]})
        manifest.metrics = {k: metrics[k] for k in ("accuracy", "macro_f1", "fruit_rejected_rate",
                                                   "ood_rejected_rate", "n", "ood_n", "split")}
        (staged / bundle.MANIFEST).unlink()
        shutil.rmtree(staged)
        bundle.write(staged, manifest, {**{n: f.read_bytes() for n, f in files.items()}, REJECTION_FILE: rej_path.read_bytes()})
        bundle.verify(staged)
        metrics["model_version"] = manifest.version
        log(accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"],
            fruit_rejected_rate=metrics["fruit_rejected_rate"],
            **({"ood_rejected_rate": metrics["ood_rejected_rate"]} if metrics["ood_n"] else {}))
        _place(staged, out_dir)
        output_data_dir.mkdir(parents=True, exist_ok=True)
        _plots(output_data_dir, history, metrics)
        (output_data_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if memo_path is not None:
        memo.save(memo_path)
    log(train_seconds=round(time.monotonic() - started, 2))
    stage("done")
    return metrics


def main_error(exc: BaseException) -> int:
    print(f"error: training failed: {exc}", file=sys.stderr, flush=True)
    return 1
