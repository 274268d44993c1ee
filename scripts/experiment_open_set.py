"""Issue 11, step 3 (exploration on ``val`` only): a rejection that has seen real not-fruit photos.

Question: with real negatives in training (``not_fruit`` train split, :mod:`fruitpipe.splits`),
which not-fruit signal, or which combination, rejects the most ``not_fruit`` val photos while every
fruit val set loses at most ``--budget`` of its photos? Heads are trained on the *frozen* features
(stage 1 of :mod:`fruitpipe.finetune` only, the 2112-d ``emb+170mm+156mm`` input: ~10x cheaper
than a block-17 fit), so this ranks signals, not the final model.

Heads (trained on ``fruits/train`` + ``fruits_extra`` train, original + mirrored views):

* ``six``: the six classes, as shipped (no negatives);
* ``seven``: a seventh output ``not_fruit`` trained on the ``not_fruit`` train split (both views).

Signals, oriented so that *higher = more fruit-like*:

* ``p_not_fruit``: the seventh output's probability (negated);
* ``similarity``: cosine to 12 k-means prototypes per class of the training fruit embeddings (the
  shipped main signal, prototypes now also from ``fruits_extra`` train);
* ``other_fruit``: ImageNet's largest other-produce probability (negated), as shipped;
* ``confidence``: the top probability over the six classes (renormalised for ``seven``).

Calibration: every signal's bar is one of the quantiles ``GRID`` of its scores on the pooled fruit
val photos; a rule rejects an image when any of its signals is below its bar; among the bar
combinations that keep **each** fruit val set (``fruits/val``, ``fruits_extra/val``) at or under the
budget, the one with the highest mean rejection over the three ``not_fruit`` val groups wins (so
``not_fruit`` val is the calibration split, as the issue asks). The quadrant second look is not in
this table (it needs four more backbone passes per candidate image; next step).

    python scripts/experiment_open_set.py --seeds 0 1 --budget 0.02 0.01
    → results/experiment_open_set.json (+ markdown on stdout)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fruitpipe import features, splits  # noqa: E402
from fruitpipe import recipe as rc  # noqa: E402
from fruitpipe.labels import LABELS  # noqa: E402

GRID = np.array([0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03])
RULES: dict[str, tuple[str, tuple[str, ...]]] = {  # name -> (head, signals)
    "similarity (shipped signal)": ("six", ("similarity",)),
    "similarity + other_fruit (shipped rule, no second look)": ("six", ("similarity", "other_fruit")),
    "similarity + other_fruit + confidence": ("six", ("similarity", "other_fruit", "confidence")),
    "p_not_fruit": ("seven", ("p_not_fruit",)),
    "p_not_fruit + similarity": ("seven", ("p_not_fruit", "similarity")),
    "p_not_fruit + other_fruit": ("seven", ("p_not_fruit", "other_fruit")),
    "p_not_fruit + confidence": ("seven", ("p_not_fruit", "confidence")),
    "p_not_fruit + similarity + other_fruit": ("seven", ("p_not_fruit", "similarity", "other_fruit")),
    "all four": ("seven", ("p_not_fruit", "similarity", "other_fruit", "confidence")),
}


def load(roots: dict[str, Path], views: tuple[str, ...], backbone, cache) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Cached backbone outputs of every image of ``roots`` (set name -> root), rows tagged by set."""
    from fruitpipe.embeddings import Item, embed_items

    parts = []
    for name, root in roots.items():
        emb = embed_items([Item(p, lab) for lab, p in rc.images([root])], backbone, cache, views=views, progress=False)
        parts.append((name, emb))
    return {"set": np.array([n for n, e in parts for _ in range(len(e))]),
            "label": np.array([lab for _, e in parts for lab in e.labels]),
            "emb": {v: np.concatenate([e.views[v] for _, e in parts]) for v in views},
            "pooled": {v: np.concatenate([e.pooled[v] for _, e in parts]) for v in views}}


def fit_head(x: np.ndarray, y: np.ndarray, weights: np.ndarray, outputs: int, seed: int) -> Any:
    """Stage 1 of :func:`fruitpipe.finetune.fit` (same head and settings), ``outputs`` classes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from fruitpipe.finetune import keras_head
    from fruitpipe.training import Config

    cfg = Config(seed=seed)
    keras.utils.set_random_seed(seed)
    head = keras_head(cfg, outputs)
    head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                 loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing), jit_compile=False)
    head.fit(x, keras.utils.to_categorical(y, outputs), sample_weight=weights, epochs=cfg.epochs,
             batch_size=cfg.batch_size, shuffle=True, verbose=0)
    return head


def calibrate(signals: dict[str, np.ndarray], names: tuple[str, ...], fruit_sets: list[np.ndarray],
              groups: list[np.ndarray], budget: float) -> tuple[dict[str, float], np.ndarray]:
    """The bars (one per signal, a fruit-val quantile of ``GRID``) that keep each fruit set within
    ``budget`` and reject the most of the not-fruit groups (mean over groups); and the reject mask."""
    fruit = np.concatenate(fruit_sets)
    bars = {n: np.quantile(signals[n][fruit], GRID) for n in names}
    best, best_val = None, -1.0
    for combo in itertools.product(range(len(GRID)), repeat=len(names)):
        rej = np.zeros(len(next(iter(signals.values()))), dtype=bool)
        for n, q in zip(names, combo):
            rej |= signals[n] < bars[n][q]
        if any(rej[s].mean() > budget for s in fruit_sets):
            continue
        value = float(np.mean([rej[g].mean() for g in groups]))
        if value > best_val:
            best, best_val = (combo, rej), value
    assert best is not None  # the all-zero quantiles reject nothing
    return {n: float(GRID[q]) for n, q in zip(names, best[0])}, best[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=float, nargs="+", default=[0.02])
    parser.add_argument("--extra-weight", type=float, default=3.0,
                        help="sample weight of fruits_extra training photos (368 vs 3046 Kaggle photos)")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings")
    parser.add_argument("--out", default="experiment_open_set")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from fruitpipe.classifier import Backbone
    from fruitpipe.embeddings import EmbeddingCache
    from fruitpipe.rejection import OTHER_PRODUCE, compute_scores, kmeans_prototypes, normalise

    started = time.monotonic()
    backbone, cache = Backbone(None, num_threads=1), EmbeddingCache(args.cache)
    tr = load(rc.split_roots("train"), ("orig", "flip"), backbone, cache)
    va = load(rc.split_roots("val", named=True), ("orig",), backbone, cache)
    cache.flush()

    views = ("orig", "flip")
    is_fruit_tr = np.isin(tr["label"], LABELS)
    y7 = np.array([LABELS.index(lab) if lab in LABELS else len(LABELS) for lab in tr["label"]])
    w = np.where(tr["set"] == "fruits_extra", args.extra_weight, 1.0)
    x_tr = {v: features.head_input(features.FROZEN, tr["emb"][v], tr["pooled"][v]) for v in views}
    x_va = features.head_input(features.FROZEN, va["emb"]["orig"], va["pooled"]["orig"])
    other = np.array(sorted(OTHER_PRODUCE), dtype=np.int64)
    units = normalise(np.concatenate([tr["emb"][v][is_fruit_tr] for v in views]))
    y_units = np.tile(y7[is_fruit_tr], len(views))
    protos = np.concatenate([kmeans_prototypes(units[y_units == c], 12) for c in range(len(LABELS))])
    imnet = backbone.imagenet_probs(va["emb"]["orig"])

    fruit_sets = [np.flatnonzero(va["set"] == s) for s in ("fruits/val", "fruits_extra/val")]
    nf = va["set"] == "not_fruit/val"
    group_of = np.array([splits.not_fruit_group(lab) if f else "" for lab, f in zip(va["label"], nf)])
    groups = [np.flatnonzero(group_of == g) for g in splits.NOT_FRUIT_GROUPS]
    y_va = np.array([LABELS.index(lab) if lab in LABELS else -1 for lab in va["label"]])

    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        probs = {}
        for head, mask in (("six", is_fruit_tr), ("seven", np.ones(len(y7), dtype=bool))):
            t0 = time.monotonic()
            model = fit_head(np.concatenate([x_tr[v][mask] for v in views]), np.tile(y7[mask], len(views)),
                             np.tile(w[mask], len(views)), len(LABELS) + (head == "seven"), seed)
            p = model.predict(x_va, verbose=0, batch_size=512)
            probs[head] = p
            print(f"seed={seed} head={head} fit_seconds={time.monotonic() - t0:.1f}", flush=True)
        for rule, (head, names) in RULES.items():
            p = probs[head]
            six = p[:, :len(LABELS)] / p[:, :len(LABELS)].sum(axis=1, keepdims=True)
            s = compute_scores(va["emb"]["orig"], imnet, six, other, protos)
            signals = {"similarity": s["similarity"], "other_fruit": -s["other_fruit"], "confidence": s["confidence"],
                       "p_not_fruit": -p[:, len(LABELS)] if head == "seven" else np.zeros(len(p))}
            pred = six.argmax(axis=1)
            for budget in args.budget:
                quantiles, rej = calibrate(signals, names, fruit_sets, groups, budget)
                row: dict[str, Any] = {"rule": rule, "head": head, "seed": seed, "budget": budget,
                                       "quantiles": quantiles}
                for name, idx in zip(("fruits/val", "fruits_extra/val"), fruit_sets):
                    row[name] = {"n": len(idx), "accuracy": float(((pred[idx] == y_va[idx]) & ~rej[idx]).mean()),
                                 "head_accuracy": float((pred[idx] == y_va[idx]).mean()),
                                 "fruit_rejected_rate": float(rej[idx].mean()),
                                 "recall": {lab: float(((pred[idx] == c) & ~rej[idx])[y_va[idx] == c].mean())
                                            for c, lab in enumerate(LABELS) if (y_va[idx] == c).any()}}
                row["not_fruit/val"] = {g: {"n": len(idx), "rejected_rate": float(rej[idx].mean())}
                                        for g, idx in zip(splits.NOT_FRUIT_GROUPS, groups)}
                runs.append(row)

    result = {"protocol": __doc__.split("\n\n")[0], "seeds": args.seeds, "budgets": args.budget,
              "extra_weight": args.extra_weight, "grid": GRID.tolist(), "runs": runs,
              "seconds": round(time.monotonic() - started, 1), "load_average": list(os.getloadavg())}
    (REPO / "results" / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    """Mean over seeds per (rule, budget)."""
    lines = ["| rule | budget | fruits/val acc | fruits_extra/val acc | fruit rejected (fruits / extra) "
             "| other produce | look-alikes | non-food |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rule in RULES:
        for budget in result["budgets"]:
            rows = [r for r in result["runs"] if r["rule"] == rule and r["budget"] == budget]
            m = lambda f: 100 * float(np.mean([f(r) for r in rows]))  # noqa: E731
            lines.append(
                f"| {rule} | {100 * budget:.0f}% | {m(lambda r: r['fruits/val']['accuracy']):.1f}% "
                f"| {m(lambda r: r['fruits_extra/val']['accuracy']):.1f}% "
                f"| {m(lambda r: r['fruits/val']['fruit_rejected_rate']):.2f}% / "
                f"{m(lambda r: r['fruits_extra/val']['fruit_rejected_rate']):.2f}% "
                + " ".join(f"| {m(lambda r, g=g: r['not_fruit/val'][g]['rejected_rate']):.1f}%"
                           for g in splits.NOT_FRUIT_GROUPS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
