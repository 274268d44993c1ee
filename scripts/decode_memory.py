#!/usr/bin/env python3
"""Peak memory of one decode per format vs :func:`fruitpipe.imaging.decode_cost`'s estimate.

    python scripts/decode_memory.py [--megapixels 12]   # writes results/decode_memory.json

For each accepted format a worst-case file of about ``--megapixels`` (flat colour, so it is small
on disk and the whole cost is the decode) is decoded by :func:`fruitpipe.imaging.load_image` (the
model path) and :func:`fruitpipe.imaging.to_jpeg` (the upload path) in a fresh process, and the
peak RSS growth over the process after imports is reported next to the estimate. The estimate
must not be below the measured peak: that is what makes ``MAX_DECODE_BYTES`` and the decode
budget real bounds. ``imaging.DECODER_COPIES`` comes from this.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FORMATS = {  # name -> (Pillow format, mode, save options)
    "jpeg": ("JPEG", "RGB", {"quality": 90}),
    "png_rgb": ("PNG", "RGB", {}),
    "png_rgba": ("PNG", "RGBA", {}),
    "webp_lossless_rgba": ("WEBP", "RGBA", {"lossless": True}),
    "webp_lossy": ("WEBP", "RGB", {"quality": 50}),
    "heic": ("HEIF", "RGB", {"quality": 50}),
    "avif": ("AVIF", "RGB", {"quality": 50, "speed": 10}),
}


def make(name: str, megapixels: float) -> bytes:
    from PIL import Image, ImageDraw

    from fruitpipe import imaging  # noqa: F401  (registers HEIF)
    fmt, mode, options = FORMATS[name]
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5) // 16 * 16
    height = width * 3 // 4
    img = Image.new(mode, (width, height), (200, 60, 40, 180)[: len(mode)])
    ImageDraw.Draw(img).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4),
                                fill=(40, 160, 60, 255)[: len(mode)])
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); ru_maxrss would carry the parent's peak."""
    Path("/proc/self/clear_refs").write_text("5")


def child(path: str, how: str) -> None:
    """In a fresh process: peak RSS growth of one decode (printed as JSON)."""
    from fruitpipe import imaging
    data = Path(path).read_bytes()
    img = imaging.open_image(data)
    if how == "load_image" or img.format in ("JPEG", "MPO"):  # to_jpeg validates a JPEG drafted too
        imaging._draft(img, imaging.INPUT_SIZE)
    estimate = imaging.decode_cost(img)
    base = _status_kb("VmRSS")
    _reset_peak()
    try:
        imaging.load_image(data) if how == "load_image" else imaging.to_jpeg(data)
        outcome = "ok"
    except imaging.InvalidImage as exc:
        outcome = exc.code
    peak = (_status_kb("VmHWM") - base) * 1024
    print(json.dumps({"estimate_mb": round(estimate / 2**20, 1), "peak_mb": round(peak / 2**20, 1),
                      "size": list(img.size), "outcome": outcome}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "decode_memory.json")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in FORMATS:
            path = Path(tmp) / name
            path.write_bytes(make(name, args.megapixels))
            for how in ("load_image", "to_jpeg"):
                out = subprocess.run([sys.executable, __file__, "--child", str(path), how],
                                     capture_output=True, text=True, check=True)
                row = {"file": name, "bytes": path.stat().st_size, "path": how, **json.loads(out.stdout)}
                row["within_estimate"] = row["peak_mb"] <= row["estimate_mb"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"megapixels": args.megapixels, "rows": rows,
              "command": f"python scripts/decode_memory.py --megapixels {args.megapixels:g}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["within_estimate"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
