"""Issue 11 (on ``val`` only): compare recipe variants, and ensembles of their seeds, with honest bars.

Trains, with the training job, one bundle per (variant, seed) on ``train`` alone (``refit=false``,
the shipped recipe's data and hyperparameters plus the variant's ``KEY=VALUE`` overrides), its bars
calibrated on half A of every validation set (:func:`experiment_refit.halves`), and scores:

* each bundle alone;
* per variant with several seeds, the **average of the seeds' seven-way softmax outputs** (a deep
  ensemble: Lakshminarayanan, Pritzel and Blundell, "Simple and Scalable Predictive Uncertainty
  Estimation using Deep Ensembles", NeurIPS 2017), each member with its own block 17 and head;

The seventh output's bar is recalibrated for each of them exactly as the training job does
(:func:`fruitpipe.training.not_fruit_bar`, 1.5% of each fruit source), on one half of every
validation set (:func:`experiment_refit.halves`, cut by photo group), and scored on the other half,
both ways (A→B and B→A), so every validation photo is scored once by a bar it did not set. The
similarity bars are the (first) member's own, set on half A. Verdicts are the served rule (second look included).

    python scripts/experiment_recipe.py --variants hidden=128 hidden=256 --seeds 0 1
    → results/experiment_recipe.json (+ markdown); ``--bundles B0 B1`` scores bundles already trained
    (calibrated on half A) instead

``test`` is not read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from fruitpipe import recipe as rc  # noqa: E402
from fruitpipe import splits  # noqa: E402
from fruitpipe.labels import LABELS  # noqa: E402

FRUIT_SETS = ("fruits/val", "fruits_extra/val")


def outputs(clfs: list, root: Path, cache) -> dict[str, Any]:  # type: ignore[type-arg,no-untyped-def]
    """Every member's seven-way output on one root, plus what the rule needs."""
    from fruitpipe.embeddings import Item, embed_items
    from fruitpipe.evaluation import image_source

    items = [Item(path, label) for label, path in rc.images([root])]
    emb = embed_items(items, clfs[0].backbone, cache, views=("orig",), progress=False)
    e, pooled, block_in = emb.views["orig"], emb.pooled["orig"], emb.block_in["orig"]
    return {"labels": emb.labels, "paths": emb.paths, "embedding": e, "images": image_source(emb.paths, clfs[0].size),
            "p7": [c.head(c.head_input(e, pooled, block_in)) for c in clfs]}


def verdicts(clf, data: dict[str, Any], p7: np.ndarray, rows: np.ndarray, bar: float):  # type: ignore[no-untyped-def]
    """(top class index, rejected) of ``rows`` under the first bundle's rule with ``max_not_fruit = bar``."""
    from fruitpipe.rejection import split_not_fruit

    rejector = dataclasses.replace(clf.rejector, max_not_fruit=bar)
    probs, nf = split_not_fruit(p7[rows])
    e = data["embedding"][rows]
    scores = rejector.scores(e, clf.backbone.imagenet_probs(e), probs, nf)
    rejector.take_second_look(scores, lambda r: clf.zoom_similarity(data["images"](rows[r])))
    return probs.argmax(axis=1), rejector.not_fruit(scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["hidden=128"],
                        help="each a comma-separated list of KEY=VALUE overrides of the recipe (hidden=256,seed=...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--bundles", type=Path, nargs="+", default=[],
                        help="score these train-only bundles (calibrated on half A) instead of training")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings")
    parser.add_argument("--share", type=float, default=0.015, help="fruit share the seventh output may reject per source")
    parser.add_argument("--fixed-bars", type=float, nargs="*", default=[],
                        help="also score fixed max_not_fruit bars (not calibrated), e.g. 0.5")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "experiment_recipe.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from experiment_refit import NAMES, halves, train

    from fruitpipe.classifier import Classifier
    from fruitpipe.embeddings import EmbeddingCache
    from fruitpipe.rejection import split_not_fruit
    from fruitpipe.training import not_fruit_bar

    with tempfile.TemporaryDirectory(prefix="fruitpipe-recipe-") as tmp_name:
        tmp = Path(tmp_name)
        recipe = rc.candidate(generated=tmp / "generated")
        recipe.prepare()
        bundles: dict[str, list[Path]] = {}
        if args.bundles:
            bundles = {b.name: [b] for b in args.bundles}
            if len(args.bundles) > 1:
                bundles["ensemble of the bundles"] = list(args.bundles)
        else:
            half_of: dict[Path, str] = {}
            for root in recipe.validation:
                half_of.update(halves(root))
            rc.link_dataset(tmp / "train", recipe.train)
            rc.link_dataset(tmp / "val-a", recipe.validation, keep=lambda p: half_of.get(p.resolve()) == "a")
            for variant in args.variants:
                members = []
                for seed in args.seeds:
                    hp = {**recipe.hyperparameters, "refit": "false", "seed": str(seed),
                          **dict(kv.split("=", 1) for kv in variant.split(","))}
                    out = tmp / f"{variant}-seed-{seed}".replace(",", "_").replace("=", "_")
                    seconds = train(tmp / "train", tmp / "val-a", out, hp, args.cache)
                    print(f"trained {variant} seed {seed} in {seconds:.0f} s", flush=True)
                    bundles[f"{variant}, seed {seed}"] = [out]
                    members.append(out)
                if len(members) > 1:
                    bundles[f"{variant}, ensemble of {len(members)} seeds"] = members
        paths = sorted({p for ps in bundles.values() for p in ps})
        clfs = [Classifier(b, num_threads=1) for b in paths]
        cache = EmbeddingCache(args.cache)
        data, half = {}, {}
        for name, root in zip(NAMES, recipe.validation):
            data[name] = outputs(clfs, root, cache)
            where = halves(root)
            half[name] = np.array([where[Path(p).resolve()] for p in data[name]["paths"]])
        cache.flush()
        configs = {name: [paths.index(p) for p in ps] for name, ps in bundles.items()}
        results: dict[str, Any] = {"variants": args.variants, "seeds": args.seeds,
                                   "versions": {str(p): c.version for p, c in zip(paths, clfs)},
                                   "share": args.share, "load_average": os.getloadavg()[0], "configs": {}}
        runs = [(cname, members, None) for cname, members in configs.items()]
        runs += [(f"{cname}, bar {bar}", members, bar) for bar in args.fixed_bars for cname, members in configs.items()]
        for cname, members, fixed in runs:
            p7 = {n: np.mean([d["p7"][i] for i in members], axis=0) for n, d in data.items()}
            tally: dict[str, dict[str, float]] = {}
            bars = {}
            for calib, scored in (("a", "b"), ("b", "a")):
                per_source = [split_not_fruit(p7[n][half[n] == calib])[1][
                    [lab in LABELS for lab, h in zip(data[n]["labels"], half[n]) if h == calib]] for n in FRUIT_SETS]
                bar = not_fruit_bar(per_source, args.share) if fixed is None else fixed
                bars[f"{calib}->{scored}"] = bar
                for n, d in data.items():
                    rows = np.flatnonzero(half[n] == scored)
                    top, rejected = verdicts(clfs[members[0]], d, p7[n], rows, bar)
                    labels = [d["labels"][r] for r in rows]
                    for i, lab in enumerate(labels):
                        key = n if lab in LABELS else f"{n}:{splits.not_fruit_group(lab) if n.startswith('not_fruit') else 'all'}"
                        t = tally.setdefault(key, {"n": 0, "right": 0, "head_right": 0, "rejected": 0})
                        t["n"] += 1
                        t["rejected"] += int(rejected[i])
                        if lab in LABELS:
                            t["head_right"] += int(LABELS[top[i]] == lab)
                            t["right"] += int(LABELS[top[i]] == lab and not rejected[i])
            results["configs"][cname] = {"bars": bars, "sets": tally}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    """Markdown: per config, both halves pooled."""
    from experiment_refit import markdown

    lines = []
    for cname, r in results["configs"].items():
        s = r["sets"]
        cells = [f"{100 * s[n]['right'] / s[n]['n']:.1f}% ({100 * s[n]['rejected'] / s[n]['n']:.2f}%)" for n in FRUIT_SETS]
        cells += [f"{100 * s[k]['rejected'] / s[k]['n']:.1f}%" for k in
                  ("not_fruit/val:other_produce", "not_fruit/val:look_alike", "not_fruit/val:non_food",
                   "generated_not_fruit/calib:all")]
        lines.append(f"| {cname} | {' / '.join(f'{b:.2f}' for b in r['bars'].values())} | " + " | ".join(cells) + " |")
    return markdown(["model", "bars A→B / B→A", "fruits/val acc (rejected)", "fruits_extra/val acc (rejected)"], lines)


if __name__ == "__main__":
    sys.exit(main())
