"""Benchmark the training job of a local retrain with a recipe of :mod:`fruitpipe.recipe`, 100 new photos.

What the local backend runs for a retrain (:mod:`fruitpipe.backends.local_run`), without the
server around it: ``python -m fruitpipe train`` on the recipe's training roots plus an uploads
folder (the last root, as the backend links it), validated on the recipe's validation roots, with
the recipe's hyperparameters, warm-started from ``--base-model`` (a bundle of that recipe), the
embedding cache already holding the recipe's own images (as after the server's first-start
warm-up). The 100 uploads are ``fruits/test`` photos re-encoded as JPEG (``--quality``, default 90):
new files (new sha256) the cache has not seen before the first run at that quality, so each is embedded in every view the recipe asks for. Only
the time matters here: the model made is thrown away (the photos belong to an evaluation set).

    python scripts/bench_recipe_retrain.py --recipe candidate --base-model BUNDLE --cache DIR
    → results/bench_recipe_retrain_<recipe>.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=("studio", "candidate"), default="candidate",
                        help="candidate: issue 11's recipe (the shipped one); studio: the Kaggle photos alone")
    parser.add_argument("--base-model", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--quality", type=int, default=90,
                        help="JPEG quality of the re-encoded uploads (another value: photos new to the cache again)")
    args = parser.parse_args(argv)
    from PIL import Image

    from fruitpipe import recipe as rc
    from fruitpipe.labels import LABELS

    with tempfile.TemporaryDirectory(prefix="fruitpipe-bench-recipe-") as tmp_name:
        tmp = Path(tmp_name)
        recipe = rc.studio(tmp) if args.recipe == "studio" else rc.candidate(tmp)
        recipe.prepare()
        uploads = tmp / "uploads"
        pools = {lab: sorted((rc.default_fruits() / "test" / lab).glob("*.jpg")) for lab in LABELS}
        for i in range(args.uploads):
            lab = LABELS[i % len(LABELS)]
            src = pools[lab][i // len(LABELS)]
            (uploads / lab).mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.open(src).convert("RGB").save(buf, format="JPEG", quality=args.quality)
            (uploads / lab / f"bench-{src.stem}.jpg").write_bytes(buf.getvalue())
        rc.link_dataset(tmp / "data", [*recipe.train, uploads])
        rc.link_dataset(tmp / "validation", recipe.validation)
        cmd = [sys.executable, "-m", "fruitpipe", "train", "--data", str(tmp / "data"), "--validation",
               str(tmp / "validation"), "--cache", str(args.cache), "--out", str(tmp / "model"),
               "--base-model", str(args.base_model)]
        for key, value in recipe.hyperparameters.items():
            cmd += ["--set", f"{key}={value}"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                              text=True)
        seconds = time.perf_counter() - started
        if proc.returncode:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line and " " not in line.split("=")[0])
    result = {"recipe": args.recipe, "hyperparameters": dict(recipe.hyperparameters), "uploads": args.uploads,
              "quality": args.quality,
              "seconds": round(seconds, 1), "load_average_after": list(os.getloadavg()),
              **{k: values.get(k) for k in ("embedded_new", "cached", "warm_start", "single_fit", "n_train_rows",
                                             "n_augmented_rows", "train_seconds")}}
    (REPO / "results" / f"bench_recipe_retrain_{args.recipe}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
