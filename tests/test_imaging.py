"""The one preprocessing path against a corpus of malformed and unusual files generated here."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fruitpipe import imaging
from fruitpipe.imaging import InvalidImage, load_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(w: int = 64, h: int = 48) -> Image.Image:
    """Left half red, right half blue: orientation is visible after a rotation."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(arr)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (a decompression bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD = {
    "empty": (b"", "empty"),
    "random_bytes": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not_an_image"),
    "text": (b"hello, this is not a picture\n" * 20, "not_an_image"),
    "truncated_jpeg": (encode(photo(256, 256), "JPEG")[:900], "truncated"),
    "truncated_png": (encode(Image.fromarray(
        np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)), "PNG")[:2000], "truncated"),
    "pixel_bomb": (png_header_only(50_000, 50_000), "too_many_pixels"),
    "huge_dimensions": (png_header_only(100_000, 2), "too_small"),
    "gif": (encode(photo(), "GIF"), "unsupported_format"),
    "bmp": (encode(photo(), "BMP"), "unsupported_format"),
    "tiny": (encode(photo(4, 4), "PNG"), "too_small"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_input_gets_its_typed_error(name: str) -> None:
    data, code = BAD[name]
    with pytest.raises(InvalidImage) as info:
        load_image(data)
    assert info.value.code == code, f"{name}: {info.value}"


def test_too_many_bytes_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidImage) as info:
        load_image(b"\xff\xd8\xff" + b"\0" * 100, max_bytes=50)
    assert info.value.code == "too_large"


def test_huge_but_legal_dimensions_resize_fine() -> None:
    big = Image.new("RGB", (6000, 4000), (10, 200, 30))
    out = load_image(encode(big, "JPEG", quality=50))
    assert out.shape == (224, 224, 3) and abs(int(out[100, 100, 1]) - 200) < 6


def test_animated_gif_is_refused() -> None:
    frames = [photo(), photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0)
    with pytest.raises(InvalidImage) as info:
        load_image(data)
    assert info.value.code == "unsupported_format"


def test_animated_webp_uses_first_frame() -> None:
    frames = [photo(), Image.new("RGB", (64, 48), (0, 255, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    out = load_image(data)
    assert out[112, 10, 0] > 200 and out[112, 10, 1] < 50  # red left half of frame 0


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "LA", "RGBA", "I;16"])
def test_modes_become_rgb(mode: str) -> None:
    base = photo()
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
        fmt = "PNG"
    else:
        img = base.convert(mode)
        fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    out = load_image(encode(img, fmt))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out.max() > 50  # not blanked by a wrong conversion


def test_16_bit_png_keeps_the_high_byte() -> None:
    arr = np.full((32, 32), 200 * 257, np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = load_image(encode(img, "PNG"))
    assert abs(int(out[0, 0, 0]) - 200) <= 1


def test_palette_with_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    img.info["transparency"] = 0  # index 0 (black) is transparent
    out = load_image(encode(img, "PNG", transparency=0))
    assert tuple(out[5, 5]) == (255, 255, 255)


def test_exif_rotation_is_applied() -> None:
    # Stored landscape (left red, right blue) with orientation 6: displayed rotated 90° clockwise,
    # so the displayed image is portrait with red on TOP.
    img = photo(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = imaging.decode(data)
    assert decoded.size == (48, 64)
    out = load_image(data)
    top, bottom = out[10, 112], out[210, 112]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_same_pixels_whatever_the_container() -> None:
    img = photo(224, 224)
    a = load_image(encode(img, "PNG"))
    b = load_image(encode(img, "WEBP", lossless=True))
    assert np.array_equal(a, b)


def test_to_jpeg_keeps_jpeg_and_converts_png() -> None:
    jpg = encode(photo(), "JPEG")
    assert imaging.to_jpeg(jpg) == jpg
    png = encode(photo(), "PNG")
    assert imaging.to_jpeg(png)[:3] == b"\xff\xd8\xff"


def test_zoom_views_are_the_four_quadrants_enlarged() -> None:
    img = np.zeros((224, 224, 3), np.uint8)
    img[:112, :112] = (255, 0, 0)
    img[:112, 112:] = (0, 255, 0)
    img[112:, :112] = (0, 0, 255)
    img[112:, 112:] = (9, 9, 9)
    views = imaging.zoom_views(img)
    assert views.shape == (4, 224, 224, 3) and views.dtype == np.uint8
    assert [tuple(v[112, 112]) for v in views] == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
