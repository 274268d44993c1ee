"""Issue 11 (on ``val`` only): does the refit on train + validation move the rejection bars?

The shipped protocol (``make train-default``) trains on ``train``, calibrates the rejection bars
on ``val``, then **refits** block 17, the head and the prototypes on train + val and keeps the
bars. A bar is only honest for the model it was set on; whether it still holds after the refit
cannot be checked on ``val`` itself (the refit model has seen it). So this script plays the
protocol inside ``val``: every validation set is cut in two halves **by photo group**
(:func:`fruitpipe.splits.assign`, another salt), half A stands for ``val``, half B for unseen
photos, and two bundles are trained with the training job:

* ``train-only``: trained on ``train``, bars calibrated on A (``refit=false``);
* ``refit``: the same, then refit on train + A with the bars kept (``refit=true``, the shipped
  protocol);

and both are scored on B with the served rule (``scripts/eval_sets.py``'s scoring): accuracy
(rejected fruit = wrong), fruit rejected, the not-fruit groups. A fit is deterministic for its
seed, so the two bundles share the same bars and differ only by the refit.

    python scripts/experiment_refit.py --seeds 0 1 → results/experiment_refit.json (+ markdown)

``test`` is not read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from fruitpipe import recipe as rc  # noqa: E402
from fruitpipe import splits  # noqa: E402

HALVES = {"a": 0.5, "b": 0.5}
SALT = "fruitpipe-refit-halves-v1"
NAMES = ("fruits/val", "generated_not_fruit/calib", "fruits_extra/val", "not_fruit/val")  # recipe order


def halves(root: Path) -> dict[Path, str]:
    """``{resolved image path: "a" | "b"}`` for one validation root, cut by photo group
    (:func:`fruitpipe.splits.group_key` for sets with a ``MANIFEST.csv``, else the file)."""
    items = rc.images([root])
    base = root.parent if root.name.startswith(rc.SPLIT_PREFIX) else root
    by_rel = {f"{path.parent.name}/{path.name}": path for _, path in items}
    if (base / splits.MANIFEST).is_file():
        rows = [r for r in splits.read_manifest(base) if r.path in by_rel]
    else:
        rows = [splits.Row(rel, rel.split("/")[0], rel, "", "") for rel in by_rel]
    return {by_rel[rel].resolve(): half for rel, half in splits.assign(rows, HALVES, salt=SALT).items()}


def train(data: Path, validation: Path, out: Path, hyperparameters: dict[str, str], cache: Path) -> float:
    """Run the training job; returns its wall time (s). Raises CalledProcessError on failure."""
    cmd = [sys.executable, "-m", "fruitpipe", "train", "--data", str(data), "--validation", str(validation),
           "--cache", str(cache), "--out", str(out), "--output-data", str(out.parent / f"{out.name}-output")]
    for k, v in hyperparameters.items():
        cmd += ["--set", f"{k}={v}"]
    started = time.monotonic()
    subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def summary(scored: dict[str, Any]) -> dict[str, Any]:
    """The figures kept per B set (accuracy, fruit rejected, not-fruit groups)."""
    if "accuracy" in scored:
        return {k: scored[k] for k in ("n", "accuracy", "head_accuracy", "fruit_rejected_rate", "uncertain_rate")}
    nf = scored["not_fruit"]
    return {"n": scored["n"], "rejected_rate": nf["rejected_rate"],
            **({"groups": {g: {"n": v["n"], "rejected_rate": v["rejected_rate"]} for g, v in nf["groups"].items()}}
               if "groups" in nf else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings")
    parser.add_argument("--without", nargs="*", default=[], choices=("similarity", "second_look"),
                        help="also score each bundle with these parts of its rule off (eval_sets.py's ablations)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "experiment_refit.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import dataclasses

    from eval_sets import ABLATIONS, score

    from fruitpipe.classifier import Classifier
    from fruitpipe.embeddings import EmbeddingCache

    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update({"protocol": __doc__.split("\n\n")[1].strip(), "salt": SALT, "runs": results.get("runs", {})})
    with tempfile.TemporaryDirectory(prefix="fruitpipe-refit-") as tmp_name:
        tmp = Path(tmp_name)
        recipe = rc.candidate(generated=tmp / "generated")
        recipe.prepare()
        assert len(recipe.validation) == len(NAMES), recipe.validation
        half_of: dict[Path, str] = {}
        for root in recipe.validation:
            half_of.update(halves(root))

        def keep(half: str) -> Callable[[Path], bool]:
            return lambda p: half_of.get(p.resolve()) == half

        rc.link_dataset(tmp / "train", recipe.train)
        rc.link_dataset(tmp / "val-a", recipe.validation, keep=keep("a"))
        b_sets = {}
        for name, root in zip(NAMES, recipe.validation):
            b_sets[name] = tmp / f"b-{name.replace('/', '-')}"
            rc.link_dataset(b_sets[name], [root], keep=keep("b"))
        results["halves"] = {name: {h: sum(1 for p in rc.images([root]) if half_of[p[1].resolve()] == h) for h in HALVES}
                             for name, root in zip(NAMES, recipe.validation)}
        for seed in args.seeds:
            for variant, refit in (("train-only", "false"), ("refit", "true")):
                key = f"{variant} seed {seed}"
                out = tmp / key.replace(" ", "-")
                hp = {**recipe.hyperparameters, "refit": refit, "seed": str(seed)}
                seconds = train(tmp / "train", tmp / "val-a", out, hp, args.cache)
                clf = Classifier(out, num_threads=1)
                cache = EmbeddingCache(args.cache)
                run = {"variant": variant, "seed": seed, "train_seconds": round(seconds, 1),
                       "load_average": os.getloadavg()[0], "rejection": {k: clf.manifest.rejection.get(k) for k in (
                           "min_similarity", "min_similarity_zoom", "max_not_fruit")},
                       "b": {name: summary(score(clf, root, cache, by_kind=name.startswith("not_fruit")))
                             for name, root in b_sets.items()}}
                results["runs"][key] = run
                for part in args.without:
                    rule = clf.rejector
                    clf.rejector = dataclasses.replace(rule, **ABLATIONS[part])
                    results["runs"][f"{key}, without {part}"] = dict(run, b={
                        name: summary(score(clf, root, cache, by_kind=name.startswith("not_fruit")))
                        for name, root in b_sets.items()})
                    clf.rejector = rule
                cache.flush()
                args.out.write_text(json.dumps(results, indent=2) + "\n")
                print(key, json.dumps(run["b"]), flush=True)
    print(table(results))
    return 0


NOT_FRUIT_COLUMNS = ("other produce", "look-alikes", "non-food", "generated")


def markdown(head: list[str], rows: list[str]) -> str:
    """A markdown table: ``head`` cells, then the not-fruit columns; ``rows`` already formatted."""
    cells = [*head, *NOT_FRUIT_COLUMNS]
    return "\n".join(["| " + " | ".join(cells) + " |", "|---|" + "---:|" * (len(cells) - 1), *rows])


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per run, the B-half figures."""
    lines = []
    for key, r in results["runs"].items():
        b = r["b"]
        groups = b["not_fruit/val"]["groups"]
        lines.append(
            f"| {key} | {r['rejection']['max_not_fruit']:.3f} | "
            + " | ".join(f"{100 * b[s]['accuracy']:.1f}% ({100 * b[s]['fruit_rejected_rate']:.2f}%)"
                         for s in ("fruits/val", "fruits_extra/val"))
            + " | " + " | ".join(f"{100 * groups[g]['rejected_rate']:.1f}%" for g in splits.NOT_FRUIT_GROUPS)
            + f" | {100 * b['generated_not_fruit/calib']['rejected_rate']:.1f}% |")
    return markdown(["run", "max_not_fruit", "fruits/val B acc (rejected)", "fruits_extra/val B acc (rejected)"], lines)


if __name__ == "__main__":
    sys.exit(main())
