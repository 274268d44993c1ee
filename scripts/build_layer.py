#!/usr/bin/env python3
"""Build the Lambda assets without Docker: the runtime layer and the function code.

    python scripts/build_layer.py [--arch x86_64|arm64] [--force]

* ``layers/build/<arch>/python/`` — ``layers/requirements.txt`` installed with
  ``pip install --platform manylinux_2_27_<arch> (… up to 2_34) --python-version 3.12 --implementation cp
  --only-binary=:all: -t …`` (Amazon Linux 2023, glibc 2.34, is what python3.12 Lambdas run on),
  then pruned (tests, caches, type stubs, C headers).
* ``layers/build/function/`` — ``fruitpipe/``, ``functions/``, ``models/default/`` and the backbones
  (MobileNetV2 as ``backbone/<file>``, every other registered one the build machine can provision as
  ``backbone/<zoo folder>/<file>``; resolved and checksum-verified by :mod:`fruitpipe.backbone`).

Prints (and writes ``layers/build/size-report.json``) the unzipped sizes; fails above Lambda's
250 MB limit and warns above the project's 150 MB target. The layer is rebuilt only when the
requirements or this script change (a stamp file holds their hash).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "layers" / "build"
REQUIREMENTS = REPO / "layers" / "requirements.txt"
# pip does not widen a --platform tag to older glibc versions, so every accepted tag is listed.
GLIBC_TAGS = ("manylinux2014", "manylinux_2_17", "manylinux_2_24", "manylinux_2_27", "manylinux_2_28",
              "manylinux_2_34")
PLATFORMS = {"x86_64": "x86_64", "arm64": "aarch64"}
PYTHON_VERSION = "3.12"
LAMBDA_LIMIT_MB = 250
TARGET_MB = 150
STAMP = ".build-stamp"

# What a serving process never imports. Kept: *.dist-info (tiny; importlib.metadata needs them).
PRUNE_DIRS = {"__pycache__", "tests", "test", "testing_data", "include"}
PRUNE_SUFFIXES = (".pyc", ".pyi", ".c", ".h", ".pxd", ".md")
KEEP_DIRS = {"numpy/testing"}  # imported by numpy internals on some paths
# LiteRT ships more than the CPU interpreter: the GPU (WebGPU) accelerator, the CompiledModel
# runtime (dlopen'ed by that API only; the Interpreter links libpywrap_litert_common.so alone),
# NPU vendor compiler plugins and ahead-of-time tools. Lambda has no GPU/NPU: about 40 MB saved.
# The layer smoke test (tests/aws/test_layer.py) proves the Interpreter still classifies.
PRUNE_PATHS = ("ai_edge_litert/libLiteRtWebGpuAccelerator.so", "ai_edge_litert/libLiteRt.so",
               "ai_edge_litert/tools", "ai_edge_litert/vendors", "ai_edge_litert/aot")
# Also never loaded by a serving process (about 5 MB): Pillow's FreeType text rendering (ImageFont,
# and the libraries only it links: FreeType, HarfBuzz, libpng, Brotli; Pillow's PNG codec is its
# own), the Swagger UI bundle of Powertools' event handler (FastAPI serves the API; /docs uses
# fastapi-offline's copy) and fastapi-offline's ReDoc bundle (no /redoc route).
PRUNE_GLOBS = ("PIL/_imagingft.*.so", "pillow.libs/libfreetype-*", "pillow.libs/libharfbuzz-*",
               "pillow.libs/libpng16-*", "pillow.libs/libbrotli*", "aws_lambda_powertools/event_handler/openapi/swagger_ui",
               "fastapi_offline/static/redoc.standalone.js")
# pillow-heif ships its libraries (libheif, libde265, and x265, which libheif links although
# Lambda only decodes) with their symbol tables: stripping them saves about 3 MB.
STRIP_GLOBS = ("_pillow_heif.*.so", "pillow_heif.libs/*.so*")


def layer_dir(arch: str) -> Path:
    return BUILD / arch


def function_dir() -> Path:
    return BUILD / "function"


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def prune(site: Path) -> int:
    """Delete what serving never needs; returns the bytes saved."""
    before = tree_size(site)
    for path in sorted(site.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        rel = path.relative_to(site).as_posix()
        if any(rel == k or rel.startswith(k + "/") for k in KEEP_DIRS):
            continue
        if path.is_dir() and path.name in PRUNE_DIRS and ".dist-info" not in rel:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in PRUNE_SUFFIXES and ".dist-info" not in rel:
            path.unlink()
    targets = [site / rel for rel in PRUNE_PATHS + ("bin",)] + [p for g in PRUNE_GLOBS for p in site.glob(g)]
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    strip = shutil.which("strip")
    if strip is None:
        print("warning: no `strip` (binutils); pillow-heif's libraries keep their symbols", file=sys.stderr)
    else:
        libs = [str(p) for g in STRIP_GLOBS for p in site.glob(g)]
        if libs and subprocess.run([strip, "--strip-unneeded", *libs]).returncode != 0:
            print("warning: strip failed (another architecture?); the libraries keep their symbols",
                  file=sys.stderr)
    return before - tree_size(site)


def build_layer(arch: str) -> Path:
    if arch not in PLATFORMS:
        raise SystemExit(f"--arch must be one of {', '.join(PLATFORMS)}")
    out = layer_dir(arch)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    site = tmp / "python"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           *[arg for tag in GLIBC_TAGS for arg in ("--platform", f"{tag}_{PLATFORMS[arch]}")],
           "--python-version", PYTHON_VERSION, "--implementation", "cp",
           "--abi", "cp312", "--only-binary=:all:", "--no-compile", "--target", str(site),
           "-r", str(REQUIREMENTS)]
    print("layer:", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    saved = prune(site)
    print(f"layer: pruned {saved / 1e6:.1f} MB", flush=True)
    compile_for_312(site)
    (tmp / STAMP).write_text(_digest(REQUIREMENTS, Path(__file__)))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def python312() -> str | None:
    """A CPython 3.12 to byte-compile with (pyenv's, if present)."""
    env = {**os.environ, "PYENV_VERSION": os.environ.get("PYENV_VERSION", "3.12.1")}
    for exe in ("python3.12",):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                                 capture_output=True, text=True, env=env, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.stdout.strip() == "True":
            return exe
    return None


def compile_for_312(root: Path) -> None:
    """Ship .pyc files: /opt and /var/task are read-only in Lambda, so without them every cold
    start would compile every imported module again. ``unchecked-hash`` pycs stay valid whatever
    the mtimes in the zip are."""
    exe = python312()
    if exe is None:
        print("warning: no python3.12 found; shipping without .pyc (slower cold starts)", file=sys.stderr)
        return
    env = {**os.environ, "PYENV_VERSION": os.environ.get("PYENV_VERSION", "3.12.1")}
    subprocess.run([exe, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                    str(root)], check=False, env=env, stdout=subprocess.DEVNULL)


def ensure_layer(arch: str = "x86_64", force: bool = False) -> Path:
    """The layer folder for ``arch``, built if missing or stale."""
    out = layer_dir(arch)
    stamp = out / STAMP
    if not force and stamp.is_file() and stamp.read_text() == _digest(REQUIREMENTS, Path(__file__)):
        return out
    return build_layer(arch)


def ensure_runtime_stand_in(arch: str = "x86_64") -> Path:
    """boto3 for 3.12 in ``layers/build/runtime-<arch>``: what the Lambda runtime provides and
    the layer leaves out. Used only by the local smoke test, never deployed."""
    out = BUILD / f"runtime-{arch}"
    if (out / "boto3").is_dir():
        return out
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *[arg for tag in GLIBC_TAGS for arg in ("--platform", f"{tag}_{PLATFORMS[arch]}")],
                    "--python-version", PYTHON_VERSION, "--implementation", "cp", "--only-binary=:all:",
                    "--target", str(out), "boto3>=1.34,<2"], check=True)
    return out


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "tests"))


def build_function(backbones: tuple[str, ...] = ("mobilenet_v2",)) -> Path:
    """Our code + the default model + the verified backbones: what ``Code.from_asset`` uploads.

    ``backbones``: registered names to package besides MobileNetV2 (the CDK context key
    ``backbones``); each must be provisionable here (cache, ``$FRUITPIPE_MODEL_ZOO`` or its pinned
    download), else :class:`fruitpipe.backbone.BackboneError`: a deployment never silently lacks
    the backbone it was asked to serve.
    """
    sys.path.insert(0, str(REPO))
    from fruitpipe import backbone, bundle

    out = function_dir()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _copy_tree(REPO / "fruitpipe", tmp / "fruitpipe")
    _copy_tree(REPO / "functions", tmp / "functions")
    bundle.verify(REPO / "models" / "default")
    _copy_tree(REPO / "models" / "default", tmp / "models" / "default")
    (tmp / "backbone").mkdir()
    shutil.copy2(backbone.resolve(), tmp / "backbone" / backbone.FILENAME)  # FRUITPIPE_BACKBONE
    # The other backbones asked for, in model-zoo layout (FRUITPIPE_MODEL_ZOO=/var/task/backbone), so
    # the function serves a live bundle on any of them. Only those: each adds 2.6-6.2 MB to every
    # function, and layer + function must stay within 150 MB unzipped.
    for name in backbones:
        spec = backbone.get(name)
        if spec is backbone.DEFAULT:
            continue
        src = backbone.resolve(spec)
        (tmp / "backbone" / spec.folder).mkdir()
        shutil.copy2(src, tmp / "backbone" / spec.folder / spec.filename)
    compile_for_312(tmp)
    # A fixed mtime keeps the asset hash stable across identical builds.
    for path in tmp.rglob("*"):
        os.utime(path, (0, 0))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ensure_function(backbones: tuple[str, ...] = ("mobilenet_v2",)) -> Path:
    """Rebuilt every time (a few MB of copying) so the asset always matches the checkout."""
    return build_function(backbones)


def size_report(arch: str) -> dict[str, float]:
    layer = tree_size(layer_dir(arch)) / 1e6
    function = tree_size(function_dir()) / 1e6
    site = layer_dir(arch) / "python"
    biggest = sorted(((tree_size(p) / 1e6, p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:8]
    report = {"arch": arch, "layer_mb": round(layer, 1), "function_mb": round(function, 1),
              "total_mb": round(layer + function, 1), "target_mb": TARGET_MB, "limit_mb": LAMBDA_LIMIT_MB,
              "largest_packages_mb": {name: round(mb, 1) for mb, name in biggest}}
    (BUILD / "size-report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=os.environ.get("FRUITPIPE_ARCH", "x86_64"), choices=sorted(PLATFORMS))
    parser.add_argument("--force", action="store_true", help="rebuild the layer even if it is up to date")
    parser.add_argument("--backbones", default="mobilenet_v2",
                        help="comma-separated backbones to package (the CDK context key `backbones`)")
    args = parser.parse_args(argv)
    ensure_layer(args.arch, force=args.force)
    ensure_function(tuple(n.strip() for n in args.backbones.split(",") if n.strip()))
    report = size_report(args.arch)
    print(f"unzipped: layer {report['layer_mb']} MB + function {report['function_mb']} MB = "
          f"{report['total_mb']} MB (target ≤ {TARGET_MB} MB, Lambda limit {LAMBDA_LIMIT_MB} MB)")
    print("largest packages (MB):", ", ".join(f"{k} {v}" for k, v in report["largest_packages_mb"].items()))
    if report["total_mb"] > LAMBDA_LIMIT_MB:
        print(f"error: {report['total_mb']} MB exceeds Lambda's unzipped limit", file=sys.stderr)
        return 1
    if report["total_mb"] > TARGET_MB:
        print(f"warning: above the {TARGET_MB} MB target", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
