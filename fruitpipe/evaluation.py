"""Evaluate a classifier on a class-folder dataset: the dict the gate, the CLI and the job share.

A folder named as one of the six classes holds fruit of that class; any other folder (e.g.
``not_fruit``) holds images that must be answered ``not_fruit``. Accuracy counts a fruit image
answered ``not_fruit`` as wrong (``uncertain`` still names a class, and that class is scored).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .labels import LABELS


def paired_outcomes(keys: Sequence[str], true: np.ndarray, correct: np.ndarray, rej: np.ndarray) -> dict[str, str]:
    """Per-image outcomes, for a paired comparison of two models scored on the same images.

    ``order`` is a digest of the image keys in scoring order (two outcome records pair up only when
    their orders match); ``correct`` has one ``0``/``1`` per fruit image (answered with its own
    class), ``rejected`` one per not-fruit image (answered ``not_fruit``). About 1 byte an image.
    """
    is_fruit = np.array([t in LABELS for t in true], dtype=bool)
    digest = hashlib.sha256("\n".join(f"{k}\t{t}" for k, t in zip(keys, true)).encode()).hexdigest()[:16]
    return {"order": digest,
            "correct": "".join("1" if c else "0" for c in correct[is_fruit]),
            "rejected": "".join("1" if r else "0" for r in rej[~is_fruit])}


def metrics_from_predictions(true_labels: Sequence[str], predicted: Sequence[str],
                             rejected: Sequence[bool], model_version: str = "",
                             keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics from per-image folder labels, predicted classes and not-fruit flags.

    With ``keys`` (one stable name per image, e.g. ``class/file.jpg``) the result also carries
    ``paired``: the per-image outcomes :func:`fruitpipe.gate.decide` compares pairwise. Without
    fruit images (``n`` 0) the fruit figures (``accuracy``, ``head_accuracy``, ``macro_f1``,
    ``fruit_rejected_rate``) are None, as ``ood_rejected_rate`` is without not-fruit images; a
    class without photos has ``recall`` and ``f1`` None in ``per_class``, and ``precision`` None
    unless some image was answered as it (then 0.0: every one of them was wrong).
    """
    true = np.array(list(true_labels), dtype=object)
    pred = np.array(list(predicted), dtype=object)
    rej = np.asarray(list(rejected), dtype=bool)
    is_fruit = np.array([t in LABELS for t in true], dtype=bool)
    n = int(is_fruit.sum())
    correct = is_fruit & ~rej & (pred == true)
    per_class: dict[str, dict[str, float | int | None]] = {}
    f1s = []
    for label in LABELS:
        tp = int((correct & (true == label)).sum())
        predicted_as = int((~rej & (pred == label)).sum())  # includes OOD images let through
        support = int((true == label).sum())
        if not support:  # no photo of the class: no recall or F1, and a precision only if something was called it
            per_class[label] = {"precision": 0.0 if predicted_as else None, "recall": None, "f1": None, "n": 0}
            continue
        precision = tp / predicted_as if predicted_as else 0.0
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "n": support}
        f1s.append(f1)
    columns = list(LABELS) + ["not_fruit"]
    confusion = [[int(((true == t) & (np.where(rej, "not_fruit", pred) == c)).sum()) for c in columns]
                 for t in LABELS]
    ood_n = int((~is_fruit).sum())
    extra = {"paired": paired_outcomes(keys, true, correct, rej)} if keys is not None else {}
    return {**extra,
        "n": n,
        "accuracy": float(correct.sum() / n) if n else None,
        # the head's own accuracy, as if nothing were rejected: separates head errors from rejection losses
        "head_accuracy": float((is_fruit & (pred == true)).sum() / n) if n else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "per_class": per_class,
        "confusion": {"rows": list(LABELS), "columns": columns, "matrix": confusion},
        "ood_n": ood_n,
        "ood_rejected_rate": float(rej[~is_fruit].mean()) if ood_n else None,
        "fruit_rejected_rate": float(rej[is_fruit].mean()) if n else None,
        "model_version": model_version,
    }


def evaluate_embeddings(classifier, embeddings: np.ndarray, labels: Sequence[str],  # type: ignore[no-untyped-def]
                        skipped: dict[str, int] | None = None,
                        pooled: np.ndarray | None = None,
                        paths: Sequence[Path] | None = None,
                        block_in: np.ndarray | None = None) -> dict[str, Any]:
    """Evaluate on precomputed backbone outputs (the training job reuses its cache).

    With ``paths`` (one per row), images the rejection wants a second look at are loaded again
    through :func:`fruitpipe.imaging.load_image`, so the verdicts are exactly the served ones.
    """
    source = image_source(paths, classifier.size) if paths is not None else None
    preds = classifier.predict_embeddings(embeddings, pooled, images=source, block_in=block_in) if len(labels) else []
    keys = [f"{Path(p).parent.name}/{Path(p).name}" for p in paths] if paths is not None else None
    out = metrics_from_predictions(labels, [p.predicted_class for p in preds],
                                   [p.verdict == "not_fruit" for p in preds], classifier.version, keys=keys)
    out["uncertain_rate"] = float(np.mean([p.verdict == "uncertain" for p in preds])) if preds else 0.0
    out["skipped"] = dict(skipped or {})
    return out


def evaluate(classifier, data_dir: Path | str, progress: bool = False) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Embed every image of ``data_dir`` (through the one preprocessing path) and score it.

    ``data_dir`` is a folder of ``<class>/`` folders (any other folder holds images that must be
    rejected), or a split root ``<set>/@split-<name>`` (:func:`fruitpipe.recipe.split_root`): the
    photos of one split of a set with a ``MANIFEST.csv``. Raises FileNotFoundError (no such folder,
    a split root's set without ``MANIFEST.csv``) and ValueError (an unknown split, no usable images).
    """
    from .embeddings import EmbeddingCache, embed_items
    items = dataset_items(data_dir)
    cache = EmbeddingCache(None, classifier.backbone.spec)  # nothing kept: embedded at the bundle's backbone
    emb = embed_items(items, classifier.backbone, cache, views=("orig",), stage="evaluate", progress=progress)
    if not len(emb):
        raise ValueError(f"no usable images under {data_dir}")
    return evaluate_embeddings(classifier, emb.views["orig"], emb.labels, dict(emb.skipped),
                               pooled=emb.pooled["orig"], paths=emb.paths, block_in=emb.block_in["orig"])


def dataset_items(data_dir: Path | str) -> list:  # list[fruitpipe.embeddings.Item]
    """The images :func:`evaluate` scores, with their folder names as labels: every image under
    ``data_dir/<folder>/``, or the photos of one split for a split root ``<set>/@split-<name>``.
    Raises FileNotFoundError (no such folder, a split root's set without ``MANIFEST.csv``) and
    ValueError (an unknown split)."""
    from . import recipe as rc
    from .embeddings import Item, list_dataset
    root = Path(data_dir)
    if not root.name.startswith(rc.SPLIT_PREFIX):
        return list_dataset(root)
    rc.split_root(root.parent, root.name[len(rc.SPLIT_PREFIX):])  # ValueError for an unknown split
    if not (root.parent / "MANIFEST.csv").is_file():
        raise FileNotFoundError(f"{root}: a split root needs a set with a MANIFEST.csv (fruitpipe.splits); "
                                f"{root.parent} has none")
    return [Item(path=path, label=label) for label, path in rc.images([root])]


def image_source(paths: Sequence[Path], size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Rows → preprocessed images of those files (for the rejection's second look)."""
    from . import imaging

    def load(rows: np.ndarray) -> np.ndarray:
        return np.stack([imaging.load_image(Path(paths[int(i)]).read_bytes(), size=size) for i in rows])
    return load
