"""What the rejection's second look (zoomed quadrants) changes, on photos of several fruit.

Users photograph several fruit at once (a row of bananas, a bowl of oranges). This script makes
such photos from the ``test`` split (each photo repeated 2x2 and 3x3 in one frame, the shape the
data set's few multi-fruit photos have) and scores them with the shipped model twice: with its
second look, and with the whole image only. It also scores the test photos themselves and the
generated not-fruit images (calibration and held-out groups), so the price in rejection is shown
too. Writes ``results/second_look.json`` and prints a table.

    python scripts/eval_second_look.py
    python scripts/eval_second_look.py --model BUNDLE --split val --name second_look_candidate_val
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FRUITS = REPO.parent / "shared" / "data" / "fruits"


def tiled(image: np.ndarray, n: int) -> np.ndarray:
    """``image`` repeated ``n`` x ``n`` times in one frame of the same size."""
    from PIL import Image
    side = image.shape[0] // n
    small = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))
    out = np.full_like(image, 255)
    row = np.concatenate([small] * n, axis=1)
    out[: side * n, : side * n] = np.concatenate([row] * n, axis=0)
    return out


def rejected_rates(clf, images: np.ndarray) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Share answered not_fruit with the second look and with the whole image only."""
    looked = clf.predict_arrays(images)
    saved = clf.rejector
    clf.rejector = dataclasses.replace(saved, min_similarity_zoom=None)
    try:
        whole = clf.predict_arrays(images)
    finally:
        clf.rejector = saved
    return {"n": len(images),
            "with_second_look": float(np.mean([p.verdict == "not_fruit" for p in looked])),
            "whole_image_only": float(np.mean([p.verdict == "not_fruit" for p in whole])),
            "second_look_taken": float(np.mean(["zoom_similarity" in p.scores for p in looked]))}


def load_folder(folder: Path) -> np.ndarray:
    from fruitpipe import imaging
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    return np.stack([imaging.load_image(p.read_bytes()) for p in files])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", help="split of ../shared/data/fruits to tile")
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the shipped model)")
    parser.add_argument("--name", default="second_look", help="results/<name>.json")
    args = parser.parse_args(argv)
    from fruitpipe.classifier import Classifier
    from fruitpipe.labels import LABELS
    from fruitpipe.models_path import default_model_dir

    clf = Classifier(args.model or default_model_dir(), num_threads=2)
    if clf.rejector.min_similarity_zoom is None:
        print("error: the model has no second-look bar", file=sys.stderr)
        return 2
    photos = np.concatenate([load_folder(FRUITS / args.split / label) for label in LABELS])
    sets = {f"{args.split} photos": photos,
            f"{args.split} photos, 2x2 in one frame": np.stack([tiled(p, 2) for p in photos]),
            f"{args.split} photos, 3x3 in one frame": np.stack([tiled(p, 3) for p in photos])}
    with tempfile.TemporaryDirectory() as tmp:
        for group in ("calib", "heldout"):
            subprocess.run([sys.executable, str(REPO / "scripts" / "make_ood_set.py"), "--out",
                            f"{tmp}/{group}", "--group", group], check=True, stdout=subprocess.DEVNULL)
            sets[f"generated not-fruit, {group} group"] = load_folder(Path(tmp) / group)
    result = {"model_version": clf.version, "min_similarity": clf.rejector.min_similarity,
              "min_similarity_zoom": clf.rejector.min_similarity_zoom,
              "sets": {name: rejected_rates(clf, images) for name, images in sets.items()}}
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| images | n | answered not_fruit, whole image only | with the second look | second look taken |")
    print("|---|---:|---:|---:|---:|")
    for name, r in result["sets"].items():
        print(f"| {name} | {r['n']} | {100 * r['whole_image_only']:.1f}% | {100 * r['with_second_look']:.1f}% "
              f"| {100 * r['second_look_taken']:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
