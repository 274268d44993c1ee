"""The frozen ImageNet backbones: a registry of pinned files, sha256 check, cache, local copies.

A backbone is never committed. :data:`SPECS` names every backbone a bundle may be built on (the
model zoo in ``../shared/models``; each entry's facts come from that folder's README and
``facts.json``, checked by ``tests/test_backbones.py``). :func:`resolve` finds a verified copy:
an explicit path, ``$FRUITPIPE_BACKBONE`` (MobileNetV2 only, as before), a model-zoo folder
``$FRUITPIPE_MODEL_ZOO/<folder>/<file>``, the package cache, then a download from the pinned
address where one exists. Every copy is checked against its sha256.

The module-level constants (``FILENAME``, ``SHA256``, ``EMBEDDING_TENSOR``, ...) are those of the
default backbone, MobileNetV2, which bundles without a ``backbone.name`` were built on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ENV_VAR: Final[str] = "FRUITPIPE_BACKBONE"  # a copy of the default backbone (file or folder)
ZOO_ENV_VAR: Final[str] = "FRUITPIPE_MODEL_ZOO"  # a folder holding <spec.folder>/<spec.filename>
_CORAL: Final[str] = "https://raw.githubusercontent.com/google-coral/test_data/104342d2d3480b3e66203073dac24f4e2dbb4c41/"
_ATU: Final[str] = ("https://raw.githubusercontent.com/weilly0912/ATU_Model_Zoo/"
                    "16742989779cd175d708afd02c3c748a86494027/")


class BackboneError(RuntimeError):
    """The backbone cannot be provisioned or is unknown; the message says what to do."""


@dataclass(frozen=True)
class Spec:
    """One backbone file and the graph facts fruitpipe uses (from its model-zoo README/facts.json).

    Every backbone takes ``uint8 [1, S, S, 3]`` RGB pixels of the image stretch-resized to
    ``input_size`` (:func:`fruitpipe.imaging.load_image`); its input quantization
    (``input_quantization`` = scale, zero point) maps them to what the network was trained on, so
    no other preprocessing is needed. ``embedding_tensor`` is the pooled embedding
    (``embedding_dim`` values, quantized as ``embedding_dtype``). ``imagenet_weights``/``_bias``
    are the tensors of the ImageNet classifier that reads that embedding (None: the file has none);
    ``imagenet_classes`` is 1001 when output 0 is "background", else 1000. ``graph_output`` is the
    file's single original output when the wanted tensors are not graph outputs and the output
    list must be rewritten (:func:`embedding_model`); None when the embedding already is an output.
    The feature-map and block-17 fields exist for MobileNetV2 only (its richer head recipes);
    ``cam_tensor`` is the map the embedding is the global average of (EfficientNet-Lite 160/210, 7x7 /
    8x8; RegNetX 1832, 7x7, NCHW; MobileNetV1 81, 7x7), found in each graph: the input of its MEAN or
    AVERAGE_POOL_2D op. MobileNetV3-Small has none (a 1x1 conv follows its pool).
    """

    name: str
    folder: str  # its folder in the model zoo (../shared/models)
    filename: str
    sha256: str
    url: str | None
    input_size: int
    input_quantization: tuple[float, int]
    embedding_tensor: int
    embedding_dim: int
    embedding_dtype: str = "int8"
    imagenet_weights: int | None = None
    imagenet_bias: int | None = None
    imagenet_classes: int = 0
    graph_output: int | None = None
    feature_tensors: tuple[int, ...] = ()
    feature_channels: tuple[int, ...] = ()
    block_input_tensor: int | None = None
    # The last spatial map whose global average is the embedding ([1, H, W, C], or [1, C, H, W] when
    # cam_layout is "nchw"): Grad-CAM through the pool for bundles without block 17 (fruitpipe.explain).
    cam_tensor: int | None = None
    cam_layout: str = "nhwc"

    @property
    def output_tensors(self) -> tuple[int, ...]:
        """The tensors one forward pass reads: the embedding, then the feature maps and block input."""
        block = () if self.block_input_tensor is None else (self.block_input_tensor,)
        return (self.embedding_tensor, *self.feature_tensors, *block)

    @property
    def has_extras(self) -> bool:
        """Whether the head may read feature maps and fine-tune block 17 (MobileNetV2 only)."""
        return bool(self.feature_tensors) and self.block_input_tensor is not None

    @property
    def quantization(self) -> str:
        """``int8`` or ``uint8``: how the file is quantized (its embedding's type)."""
        return self.embedding_dtype

    def manifest_entry(self) -> dict[str, Any]:
        """What a bundle's manifest records about its backbone (``backbone`` field)."""
        return {"name": self.name, "file": self.filename, "url": self.url, "sha256": self.sha256,
                "input_size": self.input_size, "quantization": self.quantization,
                "input_quantization": list(self.input_quantization),
                "embedding_tensor": self.embedding_tensor, "embedding_dim": self.embedding_dim}


DEFAULT_NAME: Final[str] = "mobilenet_v2"
SPECS: Final[dict[str, Spec]] = {s.name: s for s in (
    # google-coral/test_data @ 104342d; README: ../shared/models/mobilenet_v2_1.0_224_int8. Tensor 172 is
    # the embedding before the 1x1 ImageNet conv (107/108); 170 expanded_conv_17/project [1,7,7,320] and
    # 156 expanded_conv_13/add [1,14,14,96] feed the richer head recipes (+1% val/test, docs/ml.md);
    # 167 expanded_conv_16/add [1,7,7,160] is block 17's input (fruitpipe.block).
    Spec("mobilenet_v2", "mobilenet_v2_1.0_224_int8", "tf2_mobilenet_v2_1.0_224_ptq.tflite",
         "5d3137241276e79c86d14a74fe43581398ae0e815191d3dba45495b810840e8c",
         _CORAL + "tf2_mobilenet_v2_1.0_224_ptq.tflite", 224, (0.007843137718737125, 127), 172, 1280, "int8",
         107, 108, 1001, graph_output=176, feature_tensors=(170, 156), feature_channels=(320, 96),
         block_input_tensor=167),
    # Converted here (tools/zoo/convert.py): no public download, provisioned from a local copy.
    Spec("efficientnet_lite0", "efficientnet_lite0_int8", "efficientnet_lite0_224_int8.tflite",
         "cda7328e41848d199bcde71f8f58e86d27344ee295ccff0fa0aa421026cd0727",
         None, 224, (0.0078125, 127), 161, 1280, "int8", 3, 2, 1000, cam_tensor=160),
    Spec("efficientnet_lite1", "efficientnet_lite1_int8", "efficientnet_lite1_240_int8.tflite",
         "36275bad011ae6fb7ad16f27196adac82572d989b97d0e3794d0f47bcec46acf",
         None, 240, (0.0078125, 127), 211, 1280, "int8", 3, 2, 1000, cam_tensor=210),
    Spec("regnetx_200mf", "regnetx_200mf_int8", "regnetx_200mf_224_int8.tflite",
         "d87510366049ae540bb7c25b9471bb340d405c511c33f3fdd2e0e958aa97f89a",
         None, 224, (1.0, 0), 1834, 368, "int8", 8, 7, 1000, cam_tensor=1832, cam_layout="nchw"),
    # weilly0912/ATU_Model_Zoo @ 1674298, copied unchanged. Tensor 13 is not a graph output (rewrite).
    Spec("mobilenet_v3_small", "mobilenet_v3_small_1.0_224_uint8", "v3-small_224_1.0_uint8.tflite",
         "da341cf06fa50127a72dcbeb140ee5ee98013630aa044260a4c3d45c43fc89ce",
         _ATU + "Classification/mobilenet_v3/v3-small_224_1.0_uint8.tflite", 224, (0.007874015718698502, 128),
         13, 1024, "uint8", 16, 15, 1001, graph_output=19),
    # google-coral/test_data @ 104342d: the extractor alone (its ImageNet head is another file: no
    # ImageNet signal for this backbone).
    Spec("mobilenet_v1", "mobilenet_v1_1.0_224_embedding_uint8",
         "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
         "f409ef4f73fcbb9667841965623c5c8524aac33d41b9bf5f3667161fb4a76319",
         _CORAL + "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", 224, (0.0078125, 128),
         82, 1024, "uint8", cam_tensor=81),
)}
DEFAULT: Final[Spec] = SPECS[DEFAULT_NAME]


def get(name: str | Spec | None = None) -> Spec:
    """The :class:`Spec` called ``name`` (None: the default, MobileNetV2).

    Raises:
        BackboneError: no backbone has that name; the message lists the names.
    """
    if isinstance(name, Spec):
        return name
    if name is None:
        return DEFAULT
    try:
        return SPECS[name]
    except (KeyError, TypeError):
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(SPECS)}") from None


def is_path(value: object) -> bool:
    """Whether ``value`` names a file rather than a registry entry (the signatures from before the
    registry took a path where they now take a spec): a path object, or a string with a path
    separator or a ``.tflite`` suffix."""
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and value not in SPECS and (os.sep in value or value.endswith(".tflite"))


# The default backbone's facts, as module constants (the MobileNetV2-only recipes and older code read these).
FILENAME: Final[str] = DEFAULT.filename
URL: Final[str] = DEFAULT.url or ""
SHA256: Final[str] = DEFAULT.sha256
EMBEDDING_DIM: Final[int] = DEFAULT.embedding_dim
FEATURE_CHANNELS: Final[tuple[int, ...]] = DEFAULT.feature_channels
OUTPUT_TENSORS: Final[tuple[int, ...]] = DEFAULT.output_tensors


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


def _candidate(path: Path, spec: Spec = DEFAULT) -> Path:
    """``path`` itself, or ``spec``'s file inside it (directly, or in its model-zoo folder)."""
    if not path.is_dir():
        return path
    nested = path / spec.folder / spec.filename
    return nested if not (path / spec.filename).is_file() and nested.is_file() else path / spec.filename


def _hint(spec: Spec) -> str:
    if spec is DEFAULT:
        return f"point {ENV_VAR} at {spec.filename} or the folder holding it"
    return f"point {ZOO_ENV_VAR} at a folder holding {spec.folder}/{spec.filename}"


def _checked(path: Path, origin: str, spec: Spec = DEFAULT) -> Path:
    if not path.is_file():
        raise BackboneError(f"backbone {spec.name} not found at {path} (from {origin}); {_hint(spec)}")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise BackboneError(f"backbone at {path} (from {origin}) has sha256 {actual}, expected "
                            f"{spec.sha256} ({spec.name}): the file is corrupt or a different model; "
                            f"delete it or {_hint(spec)}")
    return path


def resolve(spec: Spec | str | None = None, override: str | os.PathLike[str] | None = None, *,
            download: bool = True) -> Path:
    """Return a verified local path to ``spec``'s file (a :class:`Spec`, a name, None: MobileNetV2).

    Order: explicit ``override`` (a file, or a folder holding it or its model-zoo folder), then
    ``$FRUITPIPE_BACKBONE`` (MobileNetV2 only), then ``$FRUITPIPE_MODEL_ZOO/<folder>/<file>``, then
    the cache, then a download into the cache from the pinned address (where one exists). Every
    path is checked against the pinned sha256.

    Raises:
        BackboneError: unknown name, a copy with the wrong sha256, or no copy to be found.
    """
    if is_path(spec):  # the old signature: resolve(override)
        spec, override = None, spec  # type: ignore[assignment]
    spec = get(spec)
    if override:
        return _checked(_candidate(Path(override), spec), "argument", spec)
    env = os.environ.get(ENV_VAR)
    if env and spec is DEFAULT:
        return _checked(_candidate(Path(env), spec), ENV_VAR, spec)
    zoo = os.environ.get(ZOO_ENV_VAR)
    if zoo and (Path(zoo) / spec.folder / spec.filename).is_file():
        return _checked(Path(zoo) / spec.folder / spec.filename, ZOO_ENV_VAR, spec)
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return _checked(cached, "cache", spec)
    if not download or spec.url is None:
        why = "is not cached" if spec.url else "has no public download and is not cached"
        raise BackboneError(f"backbone {spec.name} {why} at {cached}; {_hint(spec)}")
    return fetch(cached, spec.url, spec=spec)


def provision(source: str | os.PathLike[str] | None = None, spec: Spec | str | None = None) -> Path:
    """Put a verified copy of ``spec``'s file (default MobileNetV2) in the package cache; return it.

    ``source`` (or, for MobileNetV2, ``$FRUITPIPE_BACKBONE``; or ``$FRUITPIPE_MODEL_ZOO``) names a
    local copy; without one the file is downloaded from its pinned address. Once provisioned, every
    command (CLI, server, training job) finds it in the cache with no environment variable set. The
    copy is written under a temporary name and renamed, so an interrupted copy never leaves a
    partial file at the cached path.

    Raises:
        BackboneError: the source is missing or has the wrong sha256, or the download failed.
    """
    spec = get(spec)
    cached = cache_dir() / spec.filename
    if cached.is_file() and sha256_file(cached) == spec.sha256:
        return cached
    if source:
        src = _checked(_candidate(Path(source), spec), "argument", spec)
    else:
        cached.unlink(missing_ok=True)  # a stale copy with the wrong sha256
        src = resolve(spec)
        if src == cached:
            return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cached.parent, prefix=".backbone-")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp_name)
        os.replace(tmp_name, cached)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return _checked(cached, "cache", spec)


def fetch(dest: Path, url: str = URL, timeout: float = 60.0, *, spec: Spec = DEFAULT) -> Path:
    """Download ``spec``'s file to ``dest`` atomically, refusing anything whose sha256 differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".backbone-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        actual = sha256_file(tmp)
        if actual != spec.sha256:
            raise BackboneError(f"downloaded backbone has sha256 {actual}, expected {spec.sha256}; "
                                f"refusing it. Download {url} yourself and {_hint(spec)}")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise BackboneError(f"cannot download the backbone from {url} ({exc}); this machine may be "
                            f"offline: {_hint(spec)}") from None
    finally:
        tmp.unlink(missing_ok=True)


# --- graph rewrite -------------------------------------------------------------------------------
# LiteRT reuses intermediate buffers, so the pooled embedding cannot be read after invoke() unless
# it is a graph output. Rather than keep every tensor alive (``experimental_preserve_all_tensors``,
# a debugging option that costs memory), we rewrite the model's output list: a new int32 vector
# (MobileNetV2: [172, 170, 156, 167]) is appended at the end of the flatbuffer and SubGraph.outputs
# is pointed at it. Nothing else moves, so every other offset stays valid; the cost per image is unchanged.

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


def embedding_model(model: bytes, extra: tuple[int, ...] | None = None, *, spec: Spec = DEFAULT) -> bytes:
    """A copy of ``spec``'s file whose outputs are its embedding (first), then ``extra`` tensors
    (default: ``spec``'s feature maps and block input). A file whose embedding already is a graph
    output (``spec.graph_output`` None) is returned unchanged.

    Raises:
        BackboneError: the flatbuffer does not have the single output the spec expects.
    """
    if spec.graph_output is None:
        return model
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
    if count != 1 or current != spec.graph_output:
        raise BackboneError(f"unexpected backbone outputs (count {count}, first {current})")
    wanted = (spec.embedding_tensor, *(spec.output_tensors[1:] if extra is None else extra))
    buf.extend(b"\0" * (-len(buf) % 4))  # flatbuffer vectors are 4-byte aligned
    vector = len(buf)
    buf.extend(struct.pack(f"<I{len(wanted)}i", len(wanted), *wanted))
    struct.pack_into("<I", buf, outputs_f, vector - outputs_f)  # uoffset: forward, relative to the field
    return bytes(buf)


def main(argv: list[str] | None = None) -> int:
    """``python -m fruitpipe.backbone [--backbone NAME] [SOURCE]``: provision a backbone (default
    MobileNetV2) into the cache, print its path. Exit code 2 with one line on error."""
    import sys
    args = list(sys.argv[1:] if argv is None else argv)
    name = None
    if args[:1] == ["--backbone"] and len(args) >= 2:
        name, args = args[1], args[2:]
    try:
        path = provision(args[0] if args else None, spec=name)
    except BackboneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
