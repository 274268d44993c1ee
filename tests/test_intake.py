"""Image intake: the field cases (../shared/cases), real camera formats, the cost bound, the decode
budget and the animation rule, at the imaging layer, through the classifier and the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fruitpipe import imaging
from fruitpipe.api.multipart import extended_params
from fruitpipe.imaging import InvalidImage, load_image

from .conftest import REPO, needs_shared
from .intake_support import BAD_CASES, MPO_APPLE, avif, camera_heic, camera_photos, case, needs_cases


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def halves(w: int = 64, h: int = 48) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(arr)


# ------------------------------------------------------------------ the field cases, imaging layer


@needs_cases
@pytest.mark.parametrize("name", sorted(BAD_CASES))
@pytest.mark.parametrize("step", [load_image, imaging.decode, imaging.to_jpeg, imaging.validate])
def test_bad_case_gets_its_typed_error_at_every_step(name, step):
    with pytest.raises(InvalidImage) as info:
        step(case(name))
    assert info.value.code == BAD_CASES[name], info.value


@needs_cases
def test_costly_decode_is_refused_from_the_header_before_decoding():
    data = case("costly-decode-lossless-alpha.webp")
    img = imaging.open_image(data)  # the header passes the byte and pixel limits...
    assert img.size == (16383, 2441) and img.mode == "RGBA"
    assert imaging.decode_cost(img) > imaging.MAX_DECODE_BYTES  # ...the cost does not
    t0 = time.perf_counter()
    with pytest.raises(InvalidImage, match="would take about"):
        load_image(data)
    assert time.perf_counter() - t0 < 0.5  # nothing was decoded (a decode takes seconds)
    assert imaging.DECODE_BUDGET.in_use == 0


@needs_cases
def test_mpo_is_a_jpeg_decoded_with_the_draft_path():
    data = case(MPO_APPLE)
    img = imaging.open_image(data)
    assert img.format == "MPO" and getattr(img, "n_frames", 1) == 2
    imaging._draft(img, imaging.INPUT_SIZE)
    assert img.size[0] < 640  # DCT scaling took effect (640x480 -> 320x240)
    assert load_image(data).shape == (224, 224, 3)
    assert imaging.to_jpeg(data) == data  # a JPEG is stored as it is


def test_every_decoder_or_metadata_exception_becomes_the_typed_error(monkeypatch):
    """The kind, not the file: whatever a decode step raises, the caller sees InvalidImage."""
    data = encode(halves(), "PNG")
    for exc in (AttributeError("x"), KeyError(1), IndexError(), TypeError(), ZeroDivisionError(),
                RuntimeError(), OSError(), EOFError(), ValueError(), MemoryError()):
        def boom(*_a, _exc=exc, **_k):
            raise _exc
        monkeypatch.setattr(ImageOps, "exif_transpose", boom)
        with pytest.raises(InvalidImage) as info:
            load_image(data)
        assert info.value.code == "truncated" and "EXIF metadata is corrupt" in info.value.detail
        assert type(exc).__name__ not in info.value.detail  # no Python internals for the client
    assert imaging.DECODE_BUDGET.in_use == 0  # every hold was released


# ------------------------------------------------------------------ formats and the animation rule


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP", "ICO", "PPM", "TGA", "PCX", "JPEG2000"])
def test_other_real_formats_are_unsupported_and_the_accepted_ones_are_named(fmt):
    with pytest.raises(InvalidImage) as info:
        load_image(encode(halves(), fmt))
    assert info.value.code == "unsupported_format"
    assert imaging.ACCEPTED_NAMES in info.value.detail


def test_a_bomb_sized_header_of_another_format_is_still_named():
    gif = bytearray(encode(Image.new("P", (16, 16)), "GIF"))
    gif[6:10] = (65535).to_bytes(2, "little") * 2  # logical screen 65535x65535: Pillow's bomb error
    with pytest.raises(InvalidImage) as info:
        load_image(bytes(gif))
    assert info.value.code == "unsupported_format" and info.value.detail.startswith("GIF ")


@pytest.mark.parametrize("fmt,kw", [("WEBP", {"lossless": True}), ("PNG", {}), ("GIF", {})])
def test_animations_one_rule_first_frame_of_accepted_formats(fmt, kw):
    frames = [halves(), Image.new("RGB", (64, 48), (0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **kw)
    if fmt == "GIF":  # GIF is not an accepted format, animated or not
        with pytest.raises(InvalidImage) as info:
            load_image(data)
        assert info.value.code == "unsupported_format"
        return
    out = load_image(data)
    assert out[112, 10, 0] > 200 and out[112, 10, 1] < 50  # frame 0's red left half, not frame 1's green


def test_heic_uses_its_embedded_thumbnail_and_decodes_without_one():
    with_thumb, without = camera_heic(), camera_heic(thumbnail=False)
    img = imaging.open_image(with_thumb)
    assert img.format == "HEIF" and img.size == (1024, 768)
    imaging._draft(img, imaging.INPUT_SIZE)
    assert img.size == (320, 240)  # the thumbnail, not the full picture, is what gets decoded
    a, b = load_image(with_thumb), load_image(without)
    assert a.shape == b.shape == (224, 224, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 6  # same picture


def test_avif_decodes():
    assert imaging.open_image(avif()).format == "AVIF"
    assert load_image(avif()).shape == (224, 224, 3)


def test_non_jpeg_uploads_are_stored_as_jpeg():
    for data in (camera_heic(), avif()):
        stored = imaging.to_jpeg(data)
        assert stored[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(stored)).size == Image.open(io.BytesIO(data)).size


def test_alpha_is_composited_after_resizing_with_the_same_result():
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (300, 400, 4), dtype=np.uint8), "RGBA")
    out = load_image(encode(rgba, "PNG"))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    before = np.asarray(Image.alpha_composite(white, rgba).convert("RGB").resize(
        (224, 224), Image.Resampling.BILINEAR, reducing_gap=None)).astype(int)
    assert np.abs(out.astype(int) - before).max() <= 3  # rounding only


def test_decode_cost_counts_bands_and_the_decoder_copies():
    rgb = imaging.open_image(encode(Image.new("RGB", (100, 100)), "PNG"))
    grey = imaging.open_image(encode(Image.new("L", (100, 100)), "PNG"))
    webp = imaging.open_image(encode(Image.new("RGBA", (100, 100)), "WEBP", lossless=True))
    fixed = imaging.DECODER_FIXED_BYTES
    assert imaging.decode_cost(rgb) - fixed == 100 * 100 * (4 + 4)
    assert imaging.decode_cost(grey) - fixed == 100 * 100 * (1 + 4)
    assert imaging.decode_cost(webp) - fixed == 100 * 100 * (4 * 4 + 4)


def test_decode_budget_makes_costly_decodes_wait():
    budget = imaging.DecodeBudget(100)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(cost):
        with budget.hold(cost):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    # 60 + 60 > 100, and a cost above the capacity holds all of it: never two at once
    threads = [threading.Thread(target=work, args=(cost,)) for cost in (60, 60, 60, 500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert most[0] == 1 and budget.in_use == 0
    small = [threading.Thread(target=work, args=(10,)) for _ in range(5)]  # cheap ones run side by side
    for t in small:
        t.start()
    for t in small:
        t.join(5)
    assert most[0] > 1


def test_extended_parameters_are_decoded_by_the_email_package():
    def filename(cd: bytes) -> str | None:
        return extended_params(cd).get("filename")
    assert filename(b"form-data; name=\"file\"; filename*=UTF-8''pomme%20%C3%A9t%C3%A9.jpg") == "pomme \u00e9t\u00e9.jpg"
    assert filename(b"form-data; name=\"file\"; filename*=\"utf-8''a%22b.jpg\"") == 'a"b.jpg'
    assert filename(b"form-data; name=\"file\"; filename*=iso-8859-1'fr'caf%E9.png") == "caf\u00e9.png"
    assert filename(b"form-data; name=\"file\"; filename*0*=UTF-8''pom; filename*1*=me.jpg") == "pomme.jpg"
    assert filename(b"form-data; name=\"file\"; filename*=UTF-8''%FF%FE.jpg") == "\ufffd\ufffd.jpg"
    assert filename(b"form-data; name=\"file\"; filename=\"a.jpg\"; filename*=UTF-8''b.jpg") is None
    assert extended_params(b"form-data; name*=UTF-8''files; filename*=UTF-8''x.jpg") == {"name": "files", "filename": "x.jpg"}
    assert extended_params(b"form-data; name=\"field\"") == {}


# ------------------------------------------------------------------ real photos are classified


@needs_shared
@needs_cases
def test_camera_photos_of_an_apple_are_apples(classifier):
    for name, data in camera_photos().items():
        pred = classifier.predict_bytes(data)
        assert pred.predicted_class == "freshapples" and pred.verdict == "fresh", (name, pred)


@needs_shared
@needs_cases
def test_batch_isolates_bad_cases(classifier):
    blobs = [case(n) for n in sorted(BAD_CASES)] + list(camera_photos().values())
    results = classifier.predict_many(blobs)
    for name, res in zip(sorted(BAD_CASES), results):
        assert isinstance(res, InvalidImage) and res.code == BAD_CASES[name]
    assert [r.predicted_class for r in results[len(BAD_CASES):]] == ["freshapples"] * 3


# ------------------------------------------------------------------ CLI


@needs_shared
@needs_cases
def test_cli_predict_cases_and_camera_photos(tmp_path: Path):
    from .conftest import BACKBONE_DIR
    paths = []
    for name, data in {**{n: case(n) for n in BAD_CASES}, **camera_photos()}.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    proc = subprocess.run([sys.executable, "-m", "fruitpipe", "predict", *paths], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                                       "FRUITPIPE_BACKBONE": str(BACKBONE_DIR)})
    assert proc.returncode == 2, proc.stderr  # some inputs were bad
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(BAD_CASES)
    for name, code in BAD_CASES.items():
        assert any(name in line and f": {code}:" in line for line in errors), (name, errors)
    preds = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {Path(p["file"]).name: p["predicted_class"] for p in preds} == {n: "freshapples" for n in camera_photos()}
