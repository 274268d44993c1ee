"""Score a model bundle on every evaluation set of issue 11, by set and by not-fruit group.

Sets (``--splits val test``; ``val`` is for choices, ``test`` is read once at the end):

* ``fruits/<split>``: the Kaggle photos (``../shared/data/fruits/val``, ``.../test``);
* ``fruits_extra/<split>``: the photos from other sources, split by :mod:`fruitpipe.splits`;
* ``not_fruit/<split>``: real photos to reject, split the same way, reported by group
  (:func:`fruitpipe.splits.not_fruit_group`: other produce, look-alikes mango / pomegranate / peach /
  guava, non-food cats / dogs / people / packages) and by kind;
* ``generated_not_fruit/<split>``: the generated not-fruit images of :mod:`fruitpipe.ood` (objects,
  textures, faces, noise, solid colours), its ``calib`` group standing for val, ``heldout`` for test.

Fruit sets report accuracy (a rejected fruit counts as wrong), the head's own accuracy, per-class
recall, the fruit-loss rate (share answered ``not_fruit``) and the ``uncertain`` rate; not-fruit
sets the share answered ``not_fruit`` and, for the rest, which class they were taken for. Verdicts
are exactly the served ones (second look included). Backbone outputs come from the embedding cache
(each image embedded once in its life).

    python scripts/eval_sets.py --model models/default --name shipped --splits val test
    → results/eval_sets_shipped.json (+ a markdown table on stdout)

``--without second_look similarity other_fruit confidence not_fruit_output`` switches parts of the
bundle's rejection rule off, for an ablation table on val. ``--fruit-loss 0.01`` (val only)
recalibrates the seventh output's bar on the fruit val sets for that fruit-loss budget, as the
training job does for ``target_fruit_loss`` (:func:`fruitpipe.training.not_fruit_bar`), and scores
with it: the budget is chosen on val.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fruitpipe import recipe as rc  # noqa: E402
from fruitpipe import splits  # noqa: E402
from fruitpipe.labels import LABELS  # noqa: E402


# --without PART: the rejector fields that switch a part of the rule off (fruitpipe.rejection.Rejector).
ABLATIONS: dict[str, dict[str, Any]] = {
    "second_look": {"min_similarity_zoom": None},
    "similarity": {"min_similarity": -1.0, "min_similarity_zoom": None},
    "other_fruit": {"max_other_fruit": 2.0},
    "confidence": {"min_confidence": 0.0},
    "not_fruit_output": {"max_not_fruit": None},
}
WORST = 24  # errors kept per set (results JSON, gallery)
GENERATED = {"val": "calib", "test": "heldout"}  # fruitpipe.ood groups standing for val / test


def sets(split_names: list[str], generated: Path) -> list[tuple[str, Path]]:
    """(set name, root) for every evaluation set of the given splits; the generated not-fruit sets
    (:mod:`fruitpipe.ood`: objects, textures, faces, noise; ``calib`` for val, ``heldout`` for test)
    are made under ``generated``."""
    from fruitpipe import ood

    out = []
    for s in split_names:
        out += [*rc.split_roots(s, named=True).items(), (f"generated_not_fruit/{s}", ood.ensure(generated, GENERATED[s]))]
    return out


def score(clf, root: Path, cache, by_kind: bool = True) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Metrics of one set (see the module docstring); ``by_kind``: folders are not_fruit kinds."""
    from fruitpipe.embeddings import Item, embed_items
    from fruitpipe.evaluation import image_source, metrics_from_predictions

    items = [Item(path, label) for label, path in rc.images([root])]
    emb = embed_items(items, clf.backbone, cache, views=("orig",), progress=False)
    preds = clf.predict_embeddings(emb.views["orig"], emb.pooled["orig"], images=image_source(emb.paths, clf.size),
                                   block_in=emb.block_in["orig"])
    rejected = [p.verdict == "not_fruit" for p in preds]
    out: dict[str, Any] = {"n": len(preds), "skipped": dict(emb.skipped),
                           "second_look_rate": sum("zoom_similarity" in p.scores for p in preds) / max(len(preds), 1)}
    fruit = [i for i, lab in enumerate(emb.labels) if lab in LABELS]
    if fruit:
        m = metrics_from_predictions([emb.labels[i] for i in fruit], [preds[i].predicted_class for i in fruit],
                                     [rejected[i] for i in fruit])
        out.update({k: m[k] for k in ("accuracy", "head_accuracy", "macro_f1", "fruit_rejected_rate", "confusion")})
        out["recall"] = {lab: {"recall": v["recall"], "n": v["n"]} for lab, v in m["per_class"].items()}
        out["uncertain_rate"] = sum(preds[i].verdict == "uncertain" for i in fruit) / len(fruit)
    other = [i for i, lab in enumerate(emb.labels) if lab not in LABELS]
    if other and by_kind:
        groups: dict[str, dict[str, Any]] = {}
        for g in splits.NOT_FRUIT_GROUPS:
            rows = [i for i in other if splits.not_fruit_group(emb.labels[i]) == g]
            taken = Counter(preds[i].predicted_class for i in rows if not rejected[i])
            groups[g] = {"n": len(rows), "rejected_rate": sum(rejected[i] for i in rows) / max(len(rows), 1),
                         "accepted_as": dict(taken.most_common())}
        kinds = sorted({emb.labels[i] for i in other})
        out["not_fruit"] = {
            "n": len(other), "rejected_rate": sum(rejected[i] for i in other) / len(other), "groups": groups,
            "kinds": {k: {"n": sum(emb.labels[i] == k for i in other),
                          "rejected_rate": sum(rejected[i] for i in other if emb.labels[i] == k)
                          / sum(emb.labels[i] == k for i in other)} for k in kinds}}
    elif other:
        out["not_fruit"] = {"n": len(other), "rejected_rate": sum(rejected[i] for i in other) / len(other)}
    out["worst_errors"] = worst_errors(emb.labels, emb.paths, preds)
    out["_fruit_not_fruit"] = [preds[i].scores.get("not_fruit", 0.0) for i in fruit]  # for --fruit-loss; not saved
    return out


def worst_errors(labels: list[str], paths: list[Path], preds: list, keep: int = WORST) -> list[dict[str, Any]]:  # type: ignore[type-arg]
    """The ``keep`` errors answered most surely: a fruit answered with another class or ``not_fruit``,
    or a not-fruit photo answered as a fruit. Sure = the wrong class's probability, or for a
    rejection the ``not_fruit`` output (else 1 - similarity)."""
    out = []
    for label, path, p in zip(labels, paths, preds):
        answer = "not_fruit" if p.verdict == "not_fruit" else p.predicted_class
        truth = label if label in LABELS else "not_fruit"
        if answer == truth:
            continue
        sure = (p.scores.get("not_fruit", 1.0 - p.scores.get("similarity", 0.0)) if answer == "not_fruit"
                else p.confidence)
        out.append({"path": str(path), "truth": label, "answer": answer, "verdict": p.verdict, "sure": round(sure, 4),
                    "scores": {k: round(v, 4) for k, v in p.scores.items()}})
    return sorted(out, key=lambda e: -e["sure"])[:keep]


def gallery(results: dict[str, Any], dest: Path) -> None:
    """An HTML page of every set's worst errors; images are linked (relative paths), not copied."""
    parts = [f"<!doctype html><meta charset=utf-8><title>worst errors: {html.escape(results['model_version'])}</title>",
             "<style>body{font:13px sans-serif} figure{display:inline-block;width:190px;margin:4px;vertical-align:top}"
             " img{width:180px;height:180px;object-fit:contain;background:#eee}</style>",
             f"<h1>Worst errors of {html.escape(results['model_version'])} ({html.escape(', '.join(results['splits']))})</h1>",
             "<p>Made by <code>scripts/eval_sets.py --gallery</code>; sure = the wrong answer's probability "
             "(for a rejection: the not_fruit output).</p>"]
    for name, r in results["sets"].items():
        if name.startswith("generated_"):  # made in a temporary folder: nothing left to link to
            continue
        summary = (f"accuracy {100 * r['accuracy']:.1f}%, fruit rejected {100 * r['fruit_rejected_rate']:.2f}%"
                   if "accuracy" in r else f"answered not_fruit {100 * r['not_fruit']['rejected_rate']:.1f}%")
        parts.append(f"<h2>{html.escape(name)} (n {r['n']}; {summary}): the {len(r['worst_errors'])} surest errors</h2>")
        for e in r["worst_errors"]:
            src = os.path.relpath(e["path"], dest.parent)
            scores = ", ".join(f"{k} {v:.2f}" for k, v in e["scores"].items())
            parts.append(f"<figure><img src='{html.escape(src)}' loading=lazy><figcaption><b>{html.escape(e['truth'])}</b>"
                         f" → {html.escape(e['answer'])} ({e['sure']:.2f})<br><small>{html.escape(scores)}</small>"
                         "</figcaption></figure>")
    dest.write_text("\n".join(parts) + "\n", encoding="utf-8")


def table(results: dict[str, Any]) -> str:
    """The markdown summary of :func:`main`'s results."""
    lines = ["| set | n | accuracy (rejected = wrong) | head alone | fruit rejected | uncertain | min class recall |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in results["sets"].items():
        if "accuracy" in r:
            worst = min(r["recall"].items(), key=lambda kv: kv[1]["recall"] if kv[1]["n"] else 2)
            lines.append(f"| {name} | {r['n']} | {100 * r['accuracy']:.1f}% | {100 * r['head_accuracy']:.1f}% | "
                         f"{100 * r['fruit_rejected_rate']:.2f}% | {100 * r['uncertain_rate']:.1f}% | "
                         f"{worst[0]} {100 * worst[1]['recall']:.0f}% (n {worst[1]['n']}) |")
    lines += ["", "| set | group | n | answered not_fruit | accepted mostly as |", "|---|---|---:|---:|---|"]
    for name, r in results["sets"].items():
        for g, v in r.get("not_fruit", {}).get("groups", {}).items():
            top = ", ".join(f"{k} {n}" for k, n in list(v["accepted_as"].items())[:2])
            lines.append(f"| {name} | {g} | {v['n']} | {100 * v['rejected_rate']:.1f}% | {top} |")
        if "not_fruit" in r and "groups" not in r["not_fruit"]:
            lines.append(f"| {name} | all | {r['not_fruit']['n']} | {100 * r['not_fruit']['rejected_rate']:.1f}% | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--name", required=True, help="results/eval_sets_<name>.json")
    parser.add_argument("--splits", nargs="+", default=["val"], choices=list(splits.SPLITS[1:]))
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings")
    parser.add_argument("--gallery", action="store_true",
                        help="also write results/gallery_<name>.html: each set's worst errors (images linked)")
    parser.add_argument("--without", nargs="+", default=[], choices=sorted(ABLATIONS),
                        help="ablation: score the bundle with these parts of its rejection rule switched off")
    parser.add_argument("--fruit-loss", type=float, default=None,
                        help="val only: recalibrate the not_fruit output's bar for this fruit-loss budget")
    args = parser.parse_args(argv)
    if args.fruit_loss is not None and args.splits != ["val"]:
        parser.error("--fruit-loss chooses a bar: only on --splits val")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from fruitpipe.classifier import Classifier
    from fruitpipe.embeddings import EmbeddingCache

    started = time.monotonic()
    clf = Classifier(args.model, num_threads=1)
    for part in args.without:
        clf.rejector = dataclasses.replace(clf.rejector, **ABLATIONS[part])
    cache = EmbeddingCache(args.cache)
    results: dict[str, Any] = {"model": str(args.model), "model_version": clf.version, "splits": args.splits,
                               "without": args.without,
                               "split_rule": {"fractions": dict(splits.FRACTIONS), "salt": splits.SALT},
                               "sets": {}}
    with tempfile.TemporaryDirectory(prefix="fruitpipe-eval-sets-") as generated:
        todo = sets(args.splits, Path(generated))
        if args.fruit_loss is not None:
            from fruitpipe.training import Config, not_fruit_bar
            if clf.rejector.max_not_fruit is None:
                parser.error("--fruit-loss needs a bundle with a not_fruit output")
            fruit_sets = [score(clf, root, cache)["_fruit_not_fruit"] for name, root in todo if name.startswith("fruit")]
            share = args.fruit_loss - (Config.target_fruit_rejection if clf.rejector.min_similarity > -1 else 0.0)
            bar = not_fruit_bar([np.array(v, np.float32) for v in fruit_sets], share)
            clf.rejector = dataclasses.replace(clf.rejector, max_not_fruit=bar)
            results.update({"fruit_loss": args.fruit_loss, "max_not_fruit": bar})
        for name, root in todo:
            results["sets"][name] = score(clf, root, cache, by_kind=name.startswith("not_fruit/"))
            results["sets"][name].pop("_fruit_not_fruit")
    cache.flush()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load_average"] = list(os.getloadavg())
    out = REPO / "results" / f"eval_sets_{args.name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.gallery:
        gallery(results, REPO / "results" / f"gallery_{args.name}.html")
    print(table(results))
    print(f"\nwrote {out.relative_to(REPO)} ({results['seconds']} s, load average {results['load_average'][0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
