"""Benchmark: new process → first prediction (import, backbone load, bundle verify, one image).

Each run starts a fresh Python that imports fruitpipe, loads the default bundle, classifies one
JPEG and prints the elapsed time measured from interpreter start (so imports count); the wall time of
the whole process is reported too. Median of several runs; writes results/bench_cold_start.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHILD = r"""
import time, sys
t0 = time.perf_counter()
from fruitpipe.classifier import Classifier
from fruitpipe.models_path import default_model_dir
clf = Classifier(default_model_dir(), num_threads=1)
pred = clf.predict_bytes(open(sys.argv[1], 'rb').read())
print(time.perf_counter() - t0, pred.predicted_class)
"""


def main(runs: int = 7) -> int:
    import time
    image = sorted((REPO.parent / "shared" / "data" / "fruits" / "test" / "freshbanana").glob("*.jpg"))[0]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    inner, wall = [], []
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(image)], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        wall.append(time.perf_counter() - t)
        inner.append(float(out[0]))
    result = {"runs": runs, "first_prediction_median_s": statistics.median(inner),
              "process_wall_median_s": statistics.median(wall), "all_first_prediction_s": inner}
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "bench_cold_start.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| cold start (median of %d) | seconds |\n|---|---:|" % runs)
    print(f"| import + load + verify + first prediction (in process) | {result['first_prediction_median_s']:.3f} |")
    print(f"| whole process incl. interpreter start and exit | {result['process_wall_median_s']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
