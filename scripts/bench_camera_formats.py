#!/usr/bin/env python3
"""Benchmark: classifying 12 MP camera photos (HEIC, MPO/JPEG, AVIF), end to end, one thread.

    python scripts/bench_camera_formats.py     # writes results/bench_camera_formats.json

The inputs are made here from a real apple photo (../shared/data/fruits/test/freshapples, first
file) enlarged to 4032x3024, the size of a 12 MP phone photo, with some sensor-like grain so the
files have a phone's bitrate (about 2 MB HEIC): a HEIC made like a phone's (512 px
grid tiles and an embedded 320 px thumbnail), the same HEIC without a thumbnail (then the whole
picture is decoded), a JPEG with a second embedded picture (Pillow's MPO, as cameras write) and
an AVIF. Each is timed through ``Classifier.predict_bytes`` (decode + preprocess + int8 LiteRT +
head + rejection) and must be classified ``freshapples``. Target: the phone-like HEIC <= 150 ms.
"""

from __future__ import annotations

import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZE = (4032, 3024)
TARGET_MS = 150.0


def inputs() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    from fruitpipe import imaging  # noqa: F401  (registers HEIF for saving too)
    src = sorted((REPO.parent / "shared" / "data" / "fruits" / "test" / "freshapples").glob("*.jpg"))[0]
    smooth = np.asarray(Image.open(src).convert("RGB").resize(SIZE, Image.Resampling.BICUBIC), np.int16)
    grain = np.random.default_rng(0).normal(0, 4, smooth.shape[:2] + (1,)).astype(np.int16)
    photo = Image.fromarray((smooth + grain).clip(0, 255).astype(np.uint8))  # sensor grain: phone-like file sizes
    preview = photo.resize((1920, 1440))

    def save(fmt: str, **kw: object) -> bytes:
        out = io.BytesIO()
        photo.save(out, fmt, **kw)
        return out.getvalue()

    return {
        "heic_phone_like": save("HEIF", quality=60, thumbnails=[320], grid_tile_size=512,
                                enc_params={"preset": "ultrafast"}),
        "heic_no_thumbnail": save("HEIF", quality=60, grid_tile_size=512, enc_params={"preset": "ultrafast"}),
        "mpo_jpeg": save("MPO", quality=90, save_all=True, append_images=[preview]),
        "avif": save("AVIF", quality=60, speed=10),
    }


def main() -> int:
    from fruitpipe.classifier import Classifier
    from fruitpipe.models_path import default_model_dir

    clf = Classifier(default_model_dir(), num_threads=1)
    rows = {}
    for name, data in inputs().items():
        pred = clf.predict_bytes(data)
        times = []
        for _ in range(3 + 15):
            t = time.perf_counter()
            clf.predict_bytes(data)
            times.append((time.perf_counter() - t) * 1000)
        times = times[3:]
        rows[name] = {"bytes": len(data), "median_ms": round(statistics.median(times), 1),
                      "p90_ms": round(sorted(times)[int(0.9 * len(times))], 1),
                      "predicted_class": pred.predicted_class, "verdict": pred.verdict}
        print(f"{name:20s} {len(data) / 1e6:5.2f} MB  median {rows[name]['median_ms']:7.1f} ms  "
              f"{pred.predicted_class}/{pred.verdict}", flush=True)
    result = {"size": list(SIZE), "threads": 1, "machine": platform.processor() or platform.machine(),
              "target_ms": TARGET_MS, "rows": rows, "command": "python scripts/bench_camera_formats.py",
              "heic_target_met": rows["heic_phone_like"]["median_ms"] <= TARGET_MS}
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "bench_camera_formats.json").write_text(json.dumps(result, indent=2) + "\n")
    wrong = [n for n, r in rows.items() if r["predicted_class"] != "freshapples"]
    if wrong:
        print(f"error: not classified freshapples: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
