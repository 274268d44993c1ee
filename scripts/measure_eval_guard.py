"""Measure the upload guard's bar for evaluation photos (``fruitpipe.evalset.EVAL_NEAR_DUPLICATE``).

Two sides of the bar, with the guard's own functions (:func:`fruitpipe.evalset.thumbnails`,
:meth:`fruitpipe.evalset.Index.nearest`, the indexed crops ``EVAL_CROPS``, every upload compared
as is and mirrored):

* **copies that must be refused**: border crops (``--borders``, the fraction of each side cut
  away, 4-10%), saved as JPEG quality 90, of ``--photos`` real evaluation photos of the shipped
  recipe (evenly spaced over ``fruits/test`` + the test splits of ``fruits_extra`` and
  ``not_fruit``): their distance to their own photo's rows (the photo and its indexed crops);
* **new photos that must not be**: every training photo of the shipped recipe
  (:func:`fruitpipe.recipe.shipped`): its distance to the nearest row of the whole evaluation index
  (generated *heldout* group included), counted under 2.0, 2.5, the bar and 3.0.

    python scripts/measure_eval_guard.py          # about 70 s on one core
    → results/measure_eval_guard.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
THRESHOLDS = (2.0, 2.5, 3.0)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from fruitpipe import evalset, imaging
    from fruitpipe import recipe as rc

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=30, help="evaluation photos to crop")
    parser.add_argument("--borders", type=float, nargs="+", default=[0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10])
    parser.add_argument("--out", type=Path, default=REPO / "results" / "measure_eval_guard.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def views(thumb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return thumb, evalset.mirrored(thumb)  # what UploadGuard.check compares

    with tempfile.TemporaryDirectory(prefix="fruitpipe-guard-") as tmp:
        recipe = rc.shipped(Path(tmp) / "generated")
        recipe.prepare()
        real = [root for root in recipe.evaluation if str(root) not in recipe.generated]
        photos = [path for _, path in rc.images(real)]
        picked = [photos[i] for i in np.linspace(0, len(photos) - 1, args.photos).round().astype(int)]

        crops = []
        for path in tqdm(picked, desc="border crops", unit="photo"):
            data = path.read_bytes()
            own = evalset.Index(np.array(["own"] * len(evalset.EVAL_CROPS)),
                                evalset.thumbnails(data, evalset.EVAL_CROPS),
                                np.array([path.name] * len(evalset.EVAL_CROPS)))
            img = Image.open(io.BytesIO(data)).convert("RGB")
            w, h = img.size
            for b in args.borders:
                buf = io.BytesIO()
                img.crop((int(w * b), int(h * b), int(w * (1 - b)), int(h * (1 - b)))).save(buf, "JPEG", quality=90)
                thumb = evalset.thumbnail(buf.getvalue())
                crops.append({"photo": f"{path.parent.name}/{path.name}", "border": b,
                              "distance": round(min(own.nearest(v)[0] for v in views(thumb)), 3)})

        index = evalset.Index.build(recipe.evaluation, evalset.EVAL_CROPS)
        shas = set(index.shas.tolist())
        training = []
        for label, path in tqdm(rc.images(recipe.train), desc="training photos", unit="photo"):
            data = path.read_bytes()
            try:
                thumb = evalset.thumbnail(data)
            except imaging.InvalidImage:
                continue
            if hashlib.sha256(data).hexdigest() in shas:
                distance, name = 0.0, "(same bytes)"
            else:
                distance, name = min(index.nearest(v) for v in views(thumb))
            training.append({"photo": f"{label}/{path.name}", "distance": round(distance, 3), "nearest": name})

    crop_d = [c["distance"] for c in crops]
    bar = evalset.EVAL_NEAR_DUPLICATE
    train_d = np.array([t["distance"] for t in training])
    result = {
        "bar": bar,
        "border_crops": {
            "photos": len(picked), "borders": args.borders, "crops": len(crops),
            "max": max(crop_d), "median": round(statistics.median(crop_d), 3),
            "refused": int(sum(d < bar for d in crop_d)),
            "farthest": sorted(crops, key=lambda c: -c["distance"])[:5],
        },
        "training_photos": {
            "photos": len(training), "evaluation_rows": len(index.shas),
            "within": {str(t): int((train_d < t).sum()) for t in sorted({*THRESHOLDS, bar})},
            "closest": sorted(training, key=lambda t: t["distance"])[:15],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    c, t = result["border_crops"], result["training_photos"]
    print(f"border crops: {c['crops']} ({c['photos']} photos x {len(args.borders)} borders): max {c['max']}, "
          f"median {c['median']}, refused at {bar}: {c['refused']}")
    print(f"training photos: {t['photos']}; within " + ", ".join(f"{k}: {v}" for k, v in t["within"].items()))
    print(f"{result['seconds']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
