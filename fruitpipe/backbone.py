"""Provision the frozen int8 MobileNetV2 backbone: pinned address, sha256 check, cache, local override.

The backbone is never committed. It is downloaded once from its pinned public address and checked
against its sha256, or taken from a local copy named by ``FRUITPIPE_BACKBONE`` (a file, or a folder
holding it) or by a CLI flag; that is how machines without internet access run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

FILENAME: Final[str] = "tf2_mobilenet_v2_1.0_224_ptq.tflite"
URL: Final[str] = (
    "https://raw.githubusercontent.com/google-coral/test_data/"
    "104342d2d3480b3e66203073dac24f4e2dbb4c41/" + FILENAME
)
SHA256: Final[str] = "5d3137241276e79c86d14a74fe43581398ae0e815191d3dba45495b810840e8c"
ENV_VAR: Final[str] = "FRUITPIPE_BACKBONE"

# Graph facts of this exact file (see the backbone README): the pooled embedding, and the
# ImageNet classifier (1x1 conv) that follows it, whose weights we reuse for not-fruit detection.
EMBEDDING_TENSOR: Final[int] = 172
EMBEDDING_DIM: Final[int] = 1280
IMAGENET_WEIGHTS_TENSOR: Final[int] = 107
IMAGENET_BIAS_TENSOR: Final[int] = 108
ORIGINAL_OUTPUT_TENSOR: Final[int] = 176
# Two earlier feature maps the head also reads (mean- and max-pooled): they keep finer texture
# (rot spots, bruises) than the final pooled embedding. +1% val/test accuracy, measured (docs/ml.md).
FEATURE_TENSORS: Final[tuple[int, ...]] = (170, 156)  # expanded_conv_17/project [1,7,7,320], expanded_conv_13/add [1,14,14,96]
FEATURE_CHANNELS: Final[tuple[int, ...]] = (320, 96)
# Block 17's input (expanded_conv_16/add [1,7,7,160]): a fine-tuned copy of block 17 runs on it in
# numpy (fruitpipe.block) and replaces tensor 170 in the head's input.
BLOCK_INPUT_TENSOR: Final[int] = 167
OUTPUT_TENSORS: Final[tuple[int, ...]] = (EMBEDDING_TENSOR, *FEATURE_TENSORS, BLOCK_INPUT_TENSOR)


class BackboneError(RuntimeError):
    """The backbone cannot be provisioned; the message says what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """``$FRUITPIPE_CACHE``, else ``$XDG_CACHE_HOME/fruitpipe``, else ``~/.cache/fruitpipe``."""
    if os.environ.get("FRUITPIPE_CACHE"):
        return Path(os.environ["FRUITPIPE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "fruitpipe"


def _candidate(path: Path) -> Path:
    return path / FILENAME if path.is_dir() else path


def _checked(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise BackboneError(f"backbone not found at {path} (from {origin}); point {ENV_VAR} at "
                            f"{FILENAME} or the folder holding it")
    actual = sha256_file(path)
    if actual != SHA256:
        raise BackboneError(f"backbone at {path} (from {origin}) has sha256 {actual}, expected "
                            f"{SHA256}: the file is corrupt or a different model; delete it or point "
                            f"{ENV_VAR} at the right file")
    return path


def resolve(override: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """Return a verified local path to the backbone.

    Order: explicit ``override``, then ``$FRUITPIPE_BACKBONE``, then the cache, then a download
    into the cache. Every path is checked against the pinned sha256.
    """
    if override:
        return _checked(_candidate(Path(override)), "argument")
    env = os.environ.get(ENV_VAR)
    if env:
        return _checked(_candidate(Path(env)), ENV_VAR)
    cached = cache_dir() / FILENAME
    if cached.is_file():
        return _checked(cached, "cache")
    if not download:
        raise BackboneError(f"backbone is not cached at {cached}; set {ENV_VAR} to a local copy")
    return fetch(cached)


def provision(source: str | os.PathLike[str] | None = None) -> Path:
    """Put a verified copy of the backbone in the package cache and return the cached path.

    ``source`` (or ``$FRUITPIPE_BACKBONE``) names a local copy; without one the backbone is
    downloaded. Once provisioned, every command (CLI, server, training job) finds the backbone in
    the cache with no environment variable set. The copy is written under a temporary name and
    renamed, so an interrupted copy never leaves a partial file at the cached path.

    Raises:
        BackboneError: the source is missing or has the wrong sha256, or the download failed.
    """
    cached = cache_dir() / FILENAME
    if cached.is_file() and sha256_file(cached) == SHA256:
        return cached
    origin = source or os.environ.get(ENV_VAR)
    if not origin:
        return fetch(cached)
    src = _checked(_candidate(Path(origin)), "argument" if source else ENV_VAR)
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cached.parent, prefix=".backbone-")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp_name)
        os.replace(tmp_name, cached)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return _checked(cached, "cache")


def fetch(dest: Path, url: str = URL, timeout: float = 60.0) -> Path:
    """Download the backbone to ``dest`` atomically, refusing anything whose sha256 differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".backbone-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        actual = sha256_file(tmp)
        if actual != SHA256:
            raise BackboneError(f"downloaded backbone has sha256 {actual}, expected {SHA256}; "
                                f"refusing it. Download {url} yourself and set {ENV_VAR}")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise BackboneError(f"cannot download the backbone from {url} ({exc}); this machine may be "
                            f"offline: set {ENV_VAR} to a local copy of {FILENAME}") from None
    finally:
        tmp.unlink(missing_ok=True)


# --- graph rewrite -------------------------------------------------------------------------------
# LiteRT reuses intermediate buffers, so the pooled embedding cannot be read after invoke() unless
# it is a graph output. Rather than keep every tensor alive (``experimental_preserve_all_tensors``,
# a debugging option that costs memory), we rewrite the model's output list: a new int32 vector
# [172, 170, 156, 167] is appended at the end of the flatbuffer and SubGraph.outputs is pointed at it.
# Nothing else moves, so every other offset stays valid; the cost per image is unchanged.

def _u32(buf: bytes | bytearray, off: int) -> int:
    return struct.unpack_from("<I", buf, off)[0]


def _field(buf: bytes | bytearray, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the flatbuffer table at ``table`` (None if absent)."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vsize = struct.unpack_from("<H", buf, vtable)[0]
    if 4 + 2 * index >= vsize:
        return None
    rel = struct.unpack_from("<H", buf, vtable + 4 + 2 * index)[0]
    return table + rel if rel else None


def embedding_model(model: bytes, extra: tuple[int, ...] = OUTPUT_TENSORS[1:]) -> bytes:
    """A copy of the backbone whose outputs are the pooled embedding (first), then ``extra`` tensors."""
    buf = bytearray(model)
    root = _u32(buf, 0)
    subgraphs_f = _field(buf, root, 2)  # Model.subgraphs
    if subgraphs_f is None:
        raise BackboneError("backbone flatbuffer has no subgraphs")
    subgraphs = subgraphs_f + _u32(buf, subgraphs_f)
    first = subgraphs + 4 + _u32(buf, subgraphs + 4)
    outputs_f = _field(buf, first, 2)  # SubGraph.outputs
    if outputs_f is None:
        raise BackboneError("backbone flatbuffer has no outputs")
    outputs = outputs_f + _u32(buf, outputs_f)
    count = _u32(buf, outputs)
    current = struct.unpack_from("<i", buf, outputs + 4)[0] if count else None
    if count != 1 or current != ORIGINAL_OUTPUT_TENSOR:
        raise BackboneError(f"unexpected backbone outputs (count {count}, first {current})")
    wanted = (EMBEDDING_TENSOR, *extra)
    buf.extend(b"\0" * (-len(buf) % 4))  # flatbuffer vectors are 4-byte aligned
    vector = len(buf)
    buf.extend(struct.pack(f"<I{len(wanted)}i", len(wanted), *wanted))
    struct.pack_into("<I", buf, outputs_f, vector - outputs_f)  # uoffset: forward, relative to the field
    return bytes(buf)


def main(argv: list[str] | None = None) -> int:
    """``python -m fruitpipe.backbone [SOURCE]``: provision the backbone into the cache, print its path."""
    import sys
    args = sys.argv[1:] if argv is None else argv
    try:
        path = provision(args[0] if args else None)
    except BackboneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
