"""Benchmark: the serving predict path vs the reference's Keras path, in the same run.

Ours: bytes of a 640x480 JPEG → decode + preprocess (fruitpipe.imaging) → int8 LiteRT backbone →
numpy head + rejection, one thread. Baseline: Keras ``model.predict`` of a float MobileNetV2
(``weights=None``: same architecture and cost; no weights can be downloaded here) on the same
image, decoded and resized the way the reference project did. Also a not-fruit photo, which pays
for the rejection's second look (four more backbone passes). Medians; writes results/bench_predict.json (``--name``: another file).
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def photo_640x480() -> bytes:
    from PIL import Image
    src = sorted((REPO.parent / "shared" / "data" / "fruits" / "test" / "freshapples").glob("*.jpg"))[0]
    buf = io.BytesIO()
    Image.open(src).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def not_fruit_640x480() -> bytes:
    from PIL import Image
    from skimage import data
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((640, 480), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def timed(fn, runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="bench_predict", help="results/<name>.json (the bundle: $FRUITPIPE_MODEL)")
    args = parser.parse_args(argv)
    from fruitpipe.classifier import Classifier
    from fruitpipe.models_path import default_model_dir

    data = photo_640x480()
    other = not_fruit_640x480()
    clf = Classifier(default_model_dir(), num_threads=1)
    rejected = clf.predict_bytes(other)
    # A bundle with a not_fruit output (issue 11) may reject it without the second look.
    second_look = "zoom_similarity" in rejected.scores
    if rejected.verdict != "not_fruit" or not (second_look or "not_fruit" in rejected.scores):
        raise SystemExit(f"the not-fruit benchmark photo must take the second look and be rejected: {rejected}")
    from fruitpipe import imaging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from PIL import Image
    model = tf.keras.applications.MobileNetV2(weights=None)

    def keras_path() -> None:
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
        x = tf.keras.applications.mobilenet_v2.preprocess_input(np.asarray(img, np.float32)[None])
        model.predict(x, verbose=0)

    # Interleaved rounds, so a noisy neighbour slows both paths alike.
    ours: list[float] = []
    keras: list[float] = []
    decode_ms: list[float] = []
    not_fruit_ms: list[float] = []
    for _ in range(5):
        ours += timed(lambda: clf.predict_bytes(data), runs=60)
        not_fruit_ms += timed(lambda: clf.predict_bytes(other), runs=12)
        decode_ms += timed(lambda: imaging.load_image(data), runs=30)
        keras += timed(keras_path, runs=6)
    result = {
        "image": "640x480 JPEG", "threads": 1, "machine": platform.processor() or platform.machine(),
        "ours_median_ms": statistics.median(ours), "ours_p90_ms": sorted(ours)[int(0.9 * len(ours))],
        "decode_preprocess_median_ms": statistics.median(decode_ms),
        "not_fruit_median_ms": statistics.median(not_fruit_ms), "not_fruit_second_look": second_look,
        "model_version": clf.version,
        "keras_median_ms": statistics.median(keras), "runs": {"ours": len(ours), "keras": len(keras)},
    }
    result["speedup"] = result["keras_median_ms"] / result["ours_median_ms"]
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| path (640x480 JPEG, 1 thread) | median ms |\n|---|---:|")
    print(f"| fruitpipe predict_bytes (decode+preprocess+int8 LiteRT+head+rejection) | {result['ours_median_ms']:.2f} |")
    print(f"| of which decode + preprocess | {result['decode_preprocess_median_ms']:.2f} |")
    look = "whole image + second look at 4 zoomed quadrants" if second_look else "rejected by the not_fruit output, no second look"
    print(f"| not-fruit photo ({look}) | {result['not_fruit_median_ms']:.2f} |")
    print(f"| Keras MobileNetV2 float model.predict (reference path) | {result['keras_median_ms']:.1f} |")
    print(f"| speed-up | {result['speedup']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
