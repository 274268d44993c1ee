"""Reproduce the shipped model ``models/default`` from ../shared/data/fruits (``make train-default``).

The data sets and hyperparameters are :mod:`fruitpipe.recipe`'s (the same recipe every local
retrain uses). Protocol (no test image is used for any choice):
1. hyperparameters were chosen on ``val`` with a head trained on ``train`` (docs/ml.md);
2. the job trains on ``train``, calibrates the rejection thresholds on ``val`` fruit plus the
   *calibration* group of generated not-fruit images (scripts/make_ood_set.py), then refits the
   head and prototypes on train+val (``refit=true``; thresholds kept);
3. the finished bundle is evaluated on ``test`` plus the *held-out* not-fruit group, and those
   figures are written into the manifest (``metrics``) and ``results/default_model.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
FRUITS = SHARED / "data" / "fruits"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=FRUITS)
    parser.add_argument("--out", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings",
                        help="embedding cache (delete it to time a training from scratch)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra hyperparameter for a candidate recipe (e.g. features=emb+b17mm+156mm)")
    parser.add_argument("--results", default="default_model",
                        help="name of the results file: results/<name>.json (candidates: not default_model)")
    parser.add_argument("--recipe", choices=("shipped", "candidate", "studio"), default="shipped",
                        help="candidate: issue 11's recipe (fruitpipe.recipe.candidate: + fruits_extra, + real not-fruit "
                             "photos, 7th output), evaluated on all three test splits; shipped: the candidate when those "
                             "sets are beside --data; studio: the Kaggle photos alone (the model shipped before issue 11)")
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir():
        print(f"error: {args.data}/train not found (../shared beside the checkout?)", file=sys.stderr)
        return 2
    from fruitpipe import recipe as rc

    with tempfile.TemporaryDirectory(prefix="fruitpipe-default-") as tmp_name:
        tmp = Path(tmp_name)
        py = sys.executable
        shipped = {"shipped": rc.shipped, "candidate": rc.candidate, "studio": rc.studio}[args.recipe](
            generated=tmp, fruits=args.data)
        shipped.prepare()
        rc.link_dataset(tmp / "train", shipped.train)
        rc.link_dataset(tmp / "validation", shipped.validation)
        rc.link_dataset(tmp / "test", shipped.evaluation)
        test = tmp / "test"
        hyperparameters = [f"{k}={v}" for k, v in shipped.hyperparameters.items()] + args.set
        staged = tmp / "bundle"
        started = time.monotonic()
        cmd = [py, "-m", "fruitpipe", "train", "--data", str(tmp / "train"), "--validation",
               str(tmp / "validation"), "--cache", str(args.cache), "--out", str(staged),
               "--output-data", str(tmp / "output")]
        for hp in hyperparameters:
            cmd += ["--set", hp]
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            print("error: training failed; models/default is unchanged", file=sys.stderr)
            return 1
        train_seconds = time.monotonic() - started

        from fruitpipe import bundle
        from fruitpipe.classifier import Classifier
        from fruitpipe.evaluation import evaluate
        clf = Classifier(staged)
        result = evaluate(clf, test)
        manifest = bundle.read_manifest(staged)
        validation_metrics = dict(manifest.metrics)
        manifest.metrics = {
            "split": ("test (../shared/data/fruits/test) + held-out generated not_fruit images" if len(shipped.evaluation) <= 2
                      else "test (fruits/test + fruits_extra and not_fruit test splits, fruitpipe.splits)"),
            "accuracy": result["accuracy"], "macro_f1": result["macro_f1"], "n": result["n"],
            "fruit_rejected_rate": result["fruit_rejected_rate"], "ood_n": result["ood_n"],
            "ood_rejected_rate": result["ood_rejected_rate"], "uncertain_rate": result["uncertain_rate"],
            "head_accuracy": result.get("head_accuracy"),
            "per_class": result["per_class"], "confusion": result["confusion"],
            "validation": validation_metrics,
        }
        files = {name: (staged / name).read_bytes() for name in manifest.files}
        if args.out.exists():
            shutil.rmtree(args.out)
        bundle.write(args.out, manifest, files)
        bundle.verify(args.out)
        for extra in ("metrics.json", "confusion.png", "curves.png"):
            if (tmp / "output" / extra).exists():
                (REPO / "results").mkdir(exist_ok=True)
                prefix = "default" if args.results == "default_model" else args.results
                shutil.copy(tmp / "output" / extra, REPO / "results" / f"{prefix}_{extra}")

    size = sum(p.stat().st_size for p in args.out.iterdir())
    summary = {"model_version": manifest.version, "train_seconds": round(train_seconds, 1),
               "bundle_bytes": size, **{k: v for k, v in result.items() if k != "per_class"},
               "per_class": result["per_class"]}
    (REPO / "results").mkdir(exist_ok=True)
    summary["hyperparameters"] = hyperparameters
    (REPO / "results" / f"{args.results}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| metric (test split + held-out not-fruit) | value |\n|---|---:|")
    for key in ("accuracy", "macro_f1", "fruit_rejected_rate", "ood_rejected_rate", "uncertain_rate"):
        print(f"| {key} | {result[key]:.4f} |")
    print(f"| n fruit / n not-fruit | {result['n']} / {result['ood_n']} |")
    print(f"| bundle size (bytes, no backbone) | {size} |")
    print(f"| training wall time (s) | {train_seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
