#!/usr/bin/env python3
"""Fuzz :func:`fruitpipe.imaging.load_image`: mutated images must raise ``InvalidImage`` or nothing.

    python scripts/fuzz_imaging.py --inputs 1000000 --workers 1     # the long run (docs/api.md)
    python scripts/fuzz_imaging.py --seconds 30                      # what the CI test does
    python scripts/fuzz_imaging.py --atheris -- -atheris_runs=100000 # coverage-guided, if atheris is installed

The seed corpus is generated here (small JPEG, PNG, WebP, animated WebP, GIF, TIFF, BMP, MPO,
HEIC and AVIF files, some with EXIF), so nothing is committed or downloaded. Each input is one seed
mutated by 1-8 random edits (bit flips, byte overwrites with interesting values, inserted,
deleted or duplicated runs, a splice with another seed, a truncation); input ``i`` of a run with
``--seed S`` is always the same bytes, so a finding replays with ``--replay S i``. Any exception
other than ``InvalidImage`` is a finding: it is printed with its input index and saved under
``--out`` (default ``results/tmp/fuzz/``, not committed). Exit status 1 when there is any finding.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import random
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fruitpipe import imaging  # noqa: E402

EDITS = [1, 1, 1, 1, 2, 2, 3, 4, 6, 8]  # mostly small edits, so mutants get past the header checks
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFE, 0x10, 0x20, 0x40]
INTERESTING_WORDS = [b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00", b"\x00\x00\x00\x00",
                     b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00", b"\x00\x01\x00\x00"]


def _photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    arr[..., 2] = rng.integers(0, 256, (h, w), dtype=np.uint8) // 4
    return Image.fromarray(arr)


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def seed_corpus() -> dict[str, bytes]:
    """Small, valid files of every format the intake may meet (decodable in well under 1 ms each)."""
    a, b = _photo(32, 24, 0), _photo(24, 32, 1)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    exif[0x010F] = "fuzz camera"
    rgba = a.convert("RGBA")
    rgba.putalpha(128)
    return {
        "jpeg": _save(a, "JPEG", quality=80),
        "jpeg_exif": _save(a, "JPEG", quality=60, exif=exif.tobytes()),
        "jpeg_progressive_grey": _save(a.convert("L"), "JPEG", progressive=True),
        "jpeg_cmyk": _save(a.convert("CMYK"), "JPEG"),
        "png": _save(a, "PNG"),
        "png_exif": _save(a, "PNG", exif=exif.tobytes()),
        "png_rgba": _save(rgba, "PNG"),
        "png_palette": _save(a.convert("P"), "PNG", transparency=0),
        "png_16bit": _save(Image.fromarray(np.asarray(a.convert("L"), np.uint16) * 257), "PNG"),
        "apng": _save(a, "PNG", save_all=True, append_images=[b.resize(a.size)], duration=100),
        "webp_lossy": _save(a, "WEBP", quality=50),
        "webp_lossless_alpha": _save(rgba, "WEBP", lossless=True, exif=exif.tobytes()),
        "webp_animated": _save(a, "WEBP", save_all=True, append_images=[b.resize(a.size)], duration=100),
        "gif": _save(a, "GIF"),
        "gif_animated": _save(a, "GIF", save_all=True, append_images=[b.resize(a.size)], loop=0),
        "tiff": _save(a, "TIFF", exif=exif.tobytes()),
        "tiff_deflate": _save(a, "TIFF", compression="tiff_adobe_deflate"),
        "bmp": _save(a, "BMP"),
        "mpo": _save(a, "MPO", save_all=True, append_images=[b.resize(a.size)]),
        "heic": _save(a, "HEIF", quality=50),
        "avif": _save(a, "AVIF", quality=50, speed=10),
    }


def mutate(data: bytes, corpus: list[bytes], rng: random.Random) -> bytes:
    """One to eight (mostly one or two) random edits of ``data`` (see the module docstring)."""
    buf = bytearray(data)
    for _ in range(rng.choice(EDITS)):
        n = len(buf)
        op = rng.randrange(8)
        pos = rng.randrange(n) if n else 0
        if op == 0 and n:  # flip a bit
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # an interesting byte
            buf[pos] = rng.choice(INTERESTING)
        elif op == 2 and n:  # an interesting 16/32-bit value (lengths, sizes, offsets)
            word = rng.choice(INTERESTING_WORDS)
            buf[pos:pos + len(word)] = word
        elif op == 3 and n:  # delete a run
            del buf[pos:pos + rng.randint(1, 64)]
        elif op == 4:  # insert random bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == 5 and n:  # duplicate a run
            run = buf[pos:pos + rng.randint(1, 128)]
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = run
        elif op == 6:  # splice: the head of this file, the tail of another
            other = rng.choice(corpus)
            buf = buf[:pos] + other[rng.randrange(len(other)):]
        elif op == 7 and n > 8:  # truncate
            del buf[rng.randint(8, n):]
    return bytes(buf)


def input_for(seed: int, index: int, names: list[str], corpus: list[bytes]) -> tuple[str, bytes]:
    """Input ``index`` of a run with ``seed``: the same bytes on every machine and worker count."""
    rng = random.Random(seed * 1_000_003 + index)
    k = rng.randrange(len(corpus))
    return names[k], mutate(corpus[k], corpus, rng)


def check(data: bytes) -> str | None:
    """None when ``load_image`` returns an array or raises ``InvalidImage``; else the traceback."""
    try:
        out = imaging.load_image(data)
        if out.shape != (imaging.INPUT_SIZE, imaging.INPUT_SIZE, 3) or out.dtype != np.uint8:
            return f"bad output {out.shape} {out.dtype}"
    except imaging.InvalidImage:
        return None
    except Exception:  # noqa: BLE001 - exactly what the fuzzer looks for
        return traceback.format_exc(limit=8)
    return None


def run_range(seed: int, start: int, stop: int, deadline: float | None = None,
              out: Path | None = None) -> dict[str, object]:
    """Check inputs ``start..stop-1`` (or until ``deadline``): counts, accepted, codes, findings."""
    corpus_map = seed_corpus()
    names, corpus = list(corpus_map), list(corpus_map.values())
    codes: dict[str, int] = {}
    findings: list[dict[str, object]] = []
    done = ok = 0
    for i in range(start, stop):
        if deadline is not None and i % 16 == 0 and time.monotonic() > deadline:
            break
        name, data = input_for(seed, i, names, corpus)
        try:
            imaging.load_image(data)
            ok += 1
        except imaging.InvalidImage as exc:
            codes[exc.code] = codes.get(exc.code, 0) + 1
        except Exception:  # noqa: BLE001
            tb = traceback.format_exc(limit=8)
            findings.append({"index": i, "seed_file": name, "error": tb.strip().splitlines()[-1]})
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"finding-{seed}-{i}.bin").write_bytes(data)
                (out / f"finding-{seed}-{i}.txt").write_text(tb)
        done += 1
    return {"inputs": done, "accepted": ok, "codes": codes, "findings": findings}


def _worker(args: tuple[int, int, int, float | None, str | None]) -> dict[str, object]:
    seed, start, stop, deadline, out = args
    return run_range(seed, start, stop, deadline, Path(out) if out else None)


def run(inputs: int, seed: int = 0, workers: int = 1, seconds: float | None = None,
        out: Path | None = None, chunk: int = 20_000) -> dict[str, object]:
    """The mutation loop over ``inputs`` inputs (or ``seconds``), in ``workers`` processes."""
    t0 = time.monotonic()
    deadline = t0 + seconds if seconds else None
    jobs = [(seed, s, min(s + chunk, inputs), deadline, str(out) if out else None)
            for s in range(0, inputs, chunk)]
    total: dict[str, object] = {"inputs": 0, "accepted": 0, "codes": {}, "findings": []}
    if workers > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers) as pool:
            parts = pool.imap_unordered(_worker, jobs)
            for part in parts:
                _merge(total, part)
    else:
        for job in jobs:
            _merge(total, _worker(job))
            if deadline is not None and time.monotonic() > deadline:
                break
    total.update(seed=seed, workers=workers, seconds=round(time.monotonic() - t0, 1),
                 pillow=Image.__version__, seeds=len(seed_corpus()))
    return total


def _merge(total: dict, part: dict) -> None:  # type: ignore[type-arg]
    total["inputs"] += part["inputs"]
    total["accepted"] += part["accepted"]
    for code, n in part["codes"].items():
        total["codes"][code] = total["codes"].get(code, 0) + n
    total["findings"].extend(part["findings"])


def run_atheris(argv: list[str], out: Path) -> None:  # pragma: no cover - optional tool
    import atheris  # type: ignore[import-not-found]

    def one_input(data: bytes) -> None:
        try:
            imaging.load_image(data)
        except imaging.InvalidImage:
            pass

    corpus_dir = out / "corpus"  # libFuzzer adds the inputs that found new coverage here
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for name, data in seed_corpus().items():
        (corpus_dir / name).write_bytes(data)
    atheris.instrument_all()  # coverage of the Python side: Pillow's plugins, pillow-heif, ours
    atheris.Setup([sys.argv[0], *argv, str(corpus_dir)], one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "tmp" / "fuzz")
    parser.add_argument("--replay", nargs=2, type=int, metavar=("SEED", "INDEX"), help="re-run one input")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided with atheris (args after --)")
    args, rest = parser.parse_known_args(argv)
    if args.atheris:
        run_atheris([a for a in rest if a != "--"], args.out)
        return 0
    if args.replay:
        corpus_map = seed_corpus()
        name, data = input_for(args.replay[0], args.replay[1], list(corpus_map), list(corpus_map.values()))
        problem = check(data)
        print(f"seed file {name}, {len(data)} bytes:", problem or "ok (array or InvalidImage)")
        return 1 if problem else 0
    warnings.simplefilter("ignore")  # Pillow warns about many a broken tag; only exceptions count
    result = run(args.inputs, args.seed, args.workers, args.seconds, args.out)
    result["command"] = "python scripts/fuzz_imaging.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(json.dumps(result, indent=2))
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
