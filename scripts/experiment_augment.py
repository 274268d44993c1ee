"""Issue 11 (exploration on ``val`` only): which real-photo augmentations and which class balance pay.

Heads on the *frozen* features (stage 1 of :mod:`fruitpipe.finetune`, the same head and settings,
7 outputs: the six classes + ``not_fruit``), trained on ``fruits/train`` + ``fruits_extra`` train +
``not_fruit`` train, in the views of a variant (every training image, fruit and negatives, gets
the variant's views; ``real:`` views only for the photos of ``fruits_extra`` and ``not_fruit``).
Views are :mod:`fruitpipe.augment`'s, cached like the mirror (``embedded once in its life``).

Rule: the seventh output alone, its bar the most lenient that keeps **each** fruit val set
(``fruits/val``, ``fruits_extra/val``) at or under ``--budget`` rejected (as
:func:`fruitpipe.training.calibrate` does for it). Scored on the val splits: accuracy with a
rejected fruit counted wrong, the head alone, fruit rejected, the three ``not_fruit`` val groups.
This ranks variants cheaply (a frozen-feature fit is ~10x cheaper than a block-17 fit); the
chosen variant is then trained as a full model and scored by ``scripts/eval_sets.py``.

    python scripts/experiment_augment.py --seeds 0 1 → results/experiment_augment.json (+ markdown)

Each finished run is written at once, merged into the results file (a run of the same variant and
seed replaced), so ``--variants`` can add to it and an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fruitpipe import augment, features, splits  # noqa: E402
from fruitpipe import recipe as rc  # noqa: E402
from fruitpipe.labels import LABELS  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from experiment_open_set import fit_head, load  # noqa: E402

BASE = ("orig", "flip")
# name -> (views for every training image, views for the real-photo sources only, balance power)
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], float]] = {
    "orig+flip (candidate)": ((), (), 0.0),
    **{f"+ {v}": ((v,), (), 0.0) for v in augment.VIEWS},
    "+ all six": (tuple(augment.VIEWS), (), 0.0),
    "+ all six, real-photo sources only": ((), tuple(augment.VIEWS), 0.0),
    "class balance 0.5 (no new views)": ((), (), 0.5),
    "+ all six + class balance 0.5": (tuple(augment.VIEWS), (), 0.5),
    "+ all six, real-photo sources only + class balance 0.5": ((), tuple(augment.VIEWS), 0.5),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=float, default=0.015)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings")
    parser.add_argument("--out", default="experiment_augment")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from fruitpipe.classifier import Backbone
    from fruitpipe.embeddings import EmbeddingCache
    from fruitpipe.training import balance_weights, not_fruit_bar

    started = time.monotonic()
    backbone, cache = Backbone(None, num_threads=int(os.environ.get("FRUITPIPE_THREADS", "2"))), EmbeddingCache(args.cache)
    wanted = sorted({v for name in args.variants for v in (*VARIANTS[name][0], *VARIANTS[name][1])})
    views = (*BASE, *wanted)
    tr = load(rc.split_roots("train"), views, backbone, cache)
    cache.flush()
    va = load(rc.split_roots("val", named=True), ("orig",), backbone, cache)
    cache.flush()
    print(f"embedded in {time.monotonic() - started:.0f} s", flush=True)

    y7 = np.array([LABELS.index(lab) if lab in LABELS else len(LABELS) for lab in tr["label"]])
    real = tr["set"] != "fruits"
    groups = np.array([f"{s}:{lab if lab in LABELS else 'not_fruit'}" for s, lab in zip(tr["set"], tr["label"])])
    x_tr = {v: features.head_input(features.FROZEN, tr["emb"][v], tr["pooled"][v]) for v in views}
    x_va = features.head_input(features.FROZEN, va["emb"]["orig"], va["pooled"]["orig"])
    fruit_sets = {s: np.flatnonzero(va["set"] == s) for s in ("fruits/val", "fruits_extra/val")}
    nf = va["set"] == "not_fruit/val"
    group_of = np.array([splits.not_fruit_group(lab) if f else "" for lab, f in zip(va["label"], nf)])
    nf_groups = {g: np.flatnonzero(group_of == g) for g in splits.NOT_FRUIT_GROUPS}
    y_va = np.array([LABELS.index(lab) if lab in LABELS else -1 for lab in va["label"]])

    runs: list[dict[str, Any]] = []
    for name in args.variants:
        every, real_only, power = VARIANTS[name]
        for seed in args.seeds:
            t0 = time.monotonic()
            parts = [(v, np.ones(len(y7), bool)) for v in (*BASE, *every)] + [(v, real) for v in real_only]
            x = np.concatenate([x_tr[v][m] for v, m in parts])
            y = np.concatenate([y7[m] for _, m in parts])
            w = balance_weights(np.concatenate([groups[m] for _, m in parts]), power)
            p = fit_head(x, y, w, len(LABELS) + 1, seed).predict(x_va, verbose=0, batch_size=512)
            nf_p = p[:, len(LABELS)]
            pred = p[:, :len(LABELS)].argmax(axis=1)
            # The most lenient bar that rejects at most the budget of each fruit val set (as the job sets it).
            bar = not_fruit_bar([nf_p[idx] for idx in fruit_sets.values()], args.budget)
            rej = nf_p > bar
            row: dict[str, Any] = {"variant": name, "seed": seed, "rows": int(len(y)), "bar": bar,
                                   "fit_seconds": round(time.monotonic() - t0, 1)}
            for s, idx in fruit_sets.items():
                ok = (pred[idx] == y_va[idx])
                row[s] = {"n": len(idx), "accuracy": float((ok & ~rej[idx]).mean()), "head_accuracy": float(ok.mean()),
                          "fruit_rejected_rate": float(rej[idx].mean()),
                          "recall": {lab: float((ok & ~rej[idx])[y_va[idx] == c].mean())
                                     for c, lab in enumerate(LABELS) if (y_va[idx] == c).any()}}
            row["not_fruit/val"] = {g: {"n": len(idx), "rejected_rate": float(rej[idx].mean())} for g, idx in nf_groups.items()}
            runs.append(row)
            save(args.out, args, runs, started)
            print(f"{name} seed={seed} rows={len(y)} fit={row['fit_seconds']} s "
                  f"fruits {row['fruits/val']['accuracy']:.4f} extra {row['fruits_extra/val']['accuracy']:.4f} "
                  f"nf {[round(v['rejected_rate'], 3) for v in row['not_fruit/val'].values()]}", flush=True)

    print(markdown(save(args.out, args, runs, started)))
    return 0


def save(name: str, args: argparse.Namespace, runs: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """Merge ``runs`` into results/<name>.json (same variant and seed: replaced); return the result."""
    path = REPO / "results" / f"{name}.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    mine = {(r["variant"], r["seed"]) for r in runs}
    merged = [r for r in old if (r["variant"], r["seed"]) not in mine] + runs
    order = list(VARIANTS)
    merged.sort(key=lambda r: (order.index(r["variant"]) if r["variant"] in order else len(order), r["seed"]))
    result = {"protocol": __doc__.split("\n\n")[0], "budget": args.budget, "runs": merged,
              "last_run_seconds": round(time.monotonic() - started, 1), "load_average": list(os.getloadavg())}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def markdown(result: dict[str, Any]) -> str:
    """Mean over seeds per variant."""
    lines = ["| variant | training rows | fruits/val acc (head alone) | fruits_extra/val acc (head alone) "
             "| other produce | look-alikes | non-food |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["variant"] for r in result["runs"]):
        rows = [r for r in result["runs"] if r["variant"] == name]
        m = lambda f: 100 * float(np.mean([f(r) for r in rows]))  # noqa: E731
        lines.append(f"| {name} | {rows[0]['rows']} | {m(lambda r: r['fruits/val']['accuracy']):.1f}% "
                     f"({m(lambda r: r['fruits/val']['head_accuracy']):.1f}%) "
                     f"| {m(lambda r: r['fruits_extra/val']['accuracy']):.1f}% "
                     f"({m(lambda r: r['fruits_extra/val']['head_accuracy']):.1f}%) "
                     + " ".join(f"| {m(lambda r, g=g: r['not_fruit/val'][g]['rejected_rate']):.1f}%"
                                for g in splits.NOT_FRUIT_GROUPS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
