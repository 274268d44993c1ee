"""How many warm-start epochs a local retrain should run: the real job, the gate's scoring.

Builds the data exactly as a local retrain does (fruitpipe.recipe's sets; uploads filed as
``<sha256>.jpg``: the first N photos per class of ../shared/data/fruits_extra), runs the training
job warm-started from ``models/default`` with each ``warm_epochs`` asked for, and scores every
candidate on the frozen evaluation set with the gate's own code (``local_run.score``), next to the
shipped model. Writes results/warm_retrain.json.

    python scripts/experiment_warm_retrain.py --uploads 2 --epochs 2 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXTRA = REPO.parent / "shared" / "data" / "fruits_extra"


def main(argv: list[str] | None = None) -> int:
    from fruitpipe import gate
    from fruitpipe import recipe as rc
    from fruitpipe.backends.local import default_cache_dir
    from fruitpipe.backends.local_run import embed_set, score
    from fruitpipe.classifier import remember_zoom
    from fruitpipe.labels import LABELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, nargs="+", default=[2], help="photos per class uploaded")
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--cache", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    base = REPO / "models" / "default"
    rows = []
    with tempfile.TemporaryDirectory(prefix="fruitpipe-warm-") as tmp_name:
        tmp = Path(tmp_name)
        recipe = rc.shipped(tmp / "generated")
        recipe.prepare()
        rc.link_dataset(tmp / "validation", recipe.validation)
        rc.link_dataset(tmp / "evaluation", recipe.evaluation)
        remember_zoom()
        backbone, emb = embed_set(tmp / "evaluation", args.cache)
        live = score(base, backbone, emb)
        for n in args.uploads:
            uploads = tmp / f"uploads-{n}"
            for label in LABELS:
                (uploads / label).mkdir(parents=True)
                for p in sorted((EXTRA / label).glob("*.jpg"))[:n]:
                    data = p.read_bytes()
                    (uploads / label / f"{hashlib.sha256(data).hexdigest()}.jpg").write_bytes(data)
            data_dir = tmp / f"data-{n}"
            rc.link_dataset(data_dir, list(recipe.train) + [uploads])
            for epochs in args.epochs:
                out = tmp / f"m-{n}-{epochs}"
                hp = tmp / "hp.json"
                hp.write_text(json.dumps({**recipe.hyperparameters, "warm_epochs": str(epochs)}))
                cmd = [sys.executable, "-m", "training_job", "--data", str(data_dir), "--validation",
                       str(tmp / "validation"), "--out", str(out), "--cache", str(args.cache), "--base-model",
                       str(base), "--hyperparameters", str(hp)]
                t = time.monotonic()
                subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
                seconds = time.monotonic() - t
                cand = score(out, backbone, emb)
                decision = gate.decide(cand, live)
                rows.append({"uploads_per_class": n, "uploads": sum(1 for _ in uploads.rglob("*.jpg")),
                             "warm_epochs": epochs, "job_seconds": round(seconds, 1),
                             "load_average": round(os.getloadavg()[0], 2),
                             **{k: cand[k] for k in ("accuracy", "macro_f1", "fruit_rejected_rate", "ood_rejected_rate")},
                             "promoted": decision.promote, "reason": decision.reason})
                print(json.dumps(rows[-1]), flush=True)
    result = {"live": {k: live[k] for k in ("accuracy", "macro_f1", "fruit_rejected_rate", "ood_rejected_rate")},
              "live_version": live["model_version"], "candidates": rows}
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "warm_retrain.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| uploads | warm epochs | job s | accuracy | macro-F1 | fruit rejected | not-fruit rejected | gate |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    lv = result["live"]
    print(f"| live {result['live_version']} | | | {lv['accuracy']:.2%} | {lv['macro_f1']:.2%} | "
          f"{lv['fruit_rejected_rate']:.2%} | {lv['ood_rejected_rate']:.2%} | |")
    for r in rows:
        print(f"| {r['uploads']} | {r['warm_epochs']} | {r['job_seconds']} | {r['accuracy']:.2%} | {r['macro_f1']:.2%} | "
              f"{r['fruit_rejected_rate']:.2%} | {r['ood_rejected_rate']:.2%} | "
              f"{'promoted' if r['promoted'] else 'rejected'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
