"""Benchmark: full training from an empty embedding cache, then a retrain after adding 100 images.

Both runs are the real job (``python -m fruitpipe train``, a new process each: TensorFlow import
included) on ../shared/data/fruits train (+ val for calibration). The 100 added images are taken
from the test split (new photos for the cache). Writes results/bench_training.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FRUITS = REPO.parent / "shared" / "data" / "fruits"


def link_tree(dest: Path, split: str) -> None:
    for folder in sorted((FRUITS / split).iterdir()):
        (dest / folder.name).mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            (dest / folder.name / f.name).symlink_to(f)


def run(data: Path, cache: Path, out: Path, *extra: str) -> tuple[float, dict[str, str]]:
    cmd = [sys.executable, "-m", "fruitpipe", "train", "--data", str(data), "--validation",
           str(FRUITS / "val"), "--cache", str(cache), "--out", str(out), *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, check=True)
    elapsed = time.perf_counter() - t
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line and " " not in line)
    return elapsed, values


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fruitpipe-bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        data, cache = tmp / "data", tmp / "cache"
        link_tree(data, "train")
        full_s, full = run(data, cache, tmp / "m1")
        pools = [sorted(d.iterdir()) for d in sorted((FRUITS / "test").iterdir())]
        added = 0
        while added < 100:  # round-robin over the classes
            pool = pools[added % len(pools)]
            f = pool[added // len(pools)]
            (data / f.parent.name / f.name).symlink_to(f)
            added += 1
        # As the local backend retrains: from the live model (a fine-tuned recipe warm-starts from it).
        retrain_s, re = run(data, cache, tmp / "m2", "--base-model", str(tmp / "m1"))
    result = {"full_from_empty_cache_s": full_s, "full_embedded_new": int(full["embedded_new"]),
              "retrain_after_adding_s": retrain_s, "added_images": added,
              "retrain_embedded_new": int(re["embedded_new"]), "retrain_cached": int(re["cached"]),
              "retrain_warm_start": re.get("warm_start") == "1",
              "full_validation_accuracy": float(full["accuracy"]), "retrain_validation_accuracy": float(re["accuracy"])}
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "bench_training.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| training run (train split, val for calibration) | wall s | embedded new | cached | val accuracy |\n"
          "|---|---:|---:|---:|---:|")
    print(f"| full, empty cache | {full_s:.1f} | {full['embedded_new']} | {full['cached']} | {float(full['accuracy']):.4f} |")
    print(f"| retrain after adding {added} images{' (warm start)' if result['retrain_warm_start'] else ''} "
          f"| {retrain_s:.1f} | {re['embedded_new']} | {re['cached']} | {float(re['accuracy']):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
