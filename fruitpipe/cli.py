"""The ``fruitpipe`` command line. Each subcommand is a thin wrapper over the package.

Exit codes (:data:`EXIT_CODES`, README.md's table): 0 done, 1 it ran but nothing changed (a
retrain failed or was cancelled, nothing new to learn, nothing added), 2 bad input or usage (one
line on stderr saying what was wrong), 3 a retrain rejected by the gate.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__


EXIT_CODES = """exit codes:
  0  done (retrain: promoted, or started / still running without --wait; upload: images added or already there)
  1  it ran, but nothing changed: a retrain failed, was cancelled or did not start (nothing new; one is
     running, without --wait); nothing to cancel or stop; another shadow running; upload added nothing
  2  usage error: a bad option or input, a bad or missing token, a server that cannot be reached
  3  retrain: the candidate was rejected by the gate (the live model stays)"""

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, configure: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register a subcommand: ``configure`` adds its arguments, the decorated function runs it."""
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = (configure, fn)
        return fn
    return register


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def default_model() -> Path:
    from .models_path import default_model_dir
    return default_model_dir()


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, HEIC/HEIF, AVIF)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the shipped model)")
    add_store_arg(which)
    which.add_argument("--api", default=None, metavar="URL",
                       help="a running fruitpipe server, local or AWS: POST each image to its /predict "
                            "(the server's live model)")
    p.add_argument("--backbone", default=None, help="a local copy of the backbone the bundle names, file or folder (default: $FRUITPIPE_BACKBONE or $FRUITPIPE_MODEL_ZOO, cache, download)")


def add_store_arg(group: argparse._MutuallyExclusiveGroup) -> None:
    """``--store DIR`` (beside ``--model`` in ``group``): the live model of a local store."""
    group.add_argument("--store", type=Path, default=None,
                       help="a local store (e.g. var/ of fruitpipe serve): its live model, checked against "
                            "the registry's pinned manifest")


def store_live_model(store: Path) -> Path:
    """The live bundle folder of the local store ``store``, its manifest checked against the pin
    recorded by the registry (``models/live.json``, ``manifest.sha256``).

    Raises:
        UsageError: ``store`` has no live pointer (not a store, or nothing published yet).
        fruitpipe.bundle.BundleError: the live bundle was modified since it was published.
    """
    from .backends.base import NotFound
    from .backends.local import LocalRegistry

    pointer = Path(store) / "models" / "live.json"
    if not pointer.is_file():
        raise UsageError(f"--store {store}: no live model ({pointer} is missing; a store is the folder "
                         "fruitpipe serve --store uses, e.g. var)")
    registry = LocalRegistry(Path(store))
    version = registry.live_version()
    if version is None:
        raise UsageError(f"--store {store}: {pointer} names no version")
    try:
        return registry.fetch(version)
    except NotFound as exc:
        raise UsageError(f"--store {store}: live pointer names a missing version: {exc}") from None


def model_arg(args: argparse.Namespace) -> Path:
    """The bundle folder a command's ``--model`` / ``--store`` options name: ``--model`` as given,
    ``--store``'s live model (:func:`store_live_model`, errors as there), else the shipped model."""
    if args.model:
        return args.model
    return store_live_model(args.store) if args.store else default_model()


@command("predict", _predict_args)
def _predict(args: argparse.Namespace) -> int:
    """Classify images; one JSON object per image on stdout (errors on stderr, exit 2)."""
    from .imaging import InvalidImage

    if args.api:
        return _predict_api(args)
    from .classifier import Classifier

    clf = Classifier(model_arg(args), backbone_path=args.backbone)
    status = 0
    for path in args.images:
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"error: {path}: cannot read ({exc.strerror or exc})", file=sys.stderr)
            status = 2
            continue
        try:
            pred = clf.predict_bytes(data)
        except InvalidImage as exc:
            print(f"error: {path}: {exc.code}: {exc.detail}", file=sys.stderr)
            status = 2
            continue
        print(json.dumps({"file": str(path), **pred.as_dict()}), flush=True)
    return status


def _predict_api(args: argparse.Namespace) -> int:
    """``predict --api URL``: each image through the server's ``POST /predict``. A file the server
    refuses (4xx) is one line on stderr and exit status 2, like a local bad image; no answer at all
    stops with exit status 2."""
    from .client import Client, ClientError

    client = Client(args.api)
    status = 0
    for path in args.images:
        if not path.is_file():
            print(f"error: {path}: cannot read (not a file)", file=sys.stderr)
            status = 2
            continue
        try:
            pred = client.predict(path)
        except ClientError as exc:
            if not 400 <= exc.status < 500:
                raise UsageError(str(exc)) from None
            print(f"error: {path}: {exc.code}: {exc.detail}", file=sys.stderr)
            status = 2
            continue
        except OSError as exc:
            print(f"error: {path}: cannot read ({exc.strerror or exc})", file=sys.stderr)
            status = 2
            continue
        print(json.dumps({"file": str(path), **pred}), flush=True)
    return status


def _doc(fn: Handler) -> tuple[str | None, str | None]:
    """A command's ``--help`` texts from its docstring: the first paragraph (the line in
    ``fruitpipe --help``) and the whole text (``fruitpipe CMD --help``), without reST's ````."""
    text = inspect.cleandoc(fn.__doc__ or "").replace("``", "")
    if not text:
        return None, None
    return " ".join(text.split("\n\n")[0].split()), text


def build_parser() -> argparse.ArgumentParser:
    from .commands import service  # noqa: F401  (registers `serve`)
    from .commands import aws as _aws_commands  # noqa: F401  (upload)
    from .commands import ml  # noqa: F401  (registers train, evaluate)
    from .commands import retrain  # noqa: F401  (retrain --aws, models --aws)
    from .commands import compare  # noqa: F401  (registers compare)
    parser = argparse.ArgumentParser(prog="fruitpipe", description="Fresh-vs-rotten fruit classifier.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fruitpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, fn) in _COMMANDS.items():
        summary, description = _doc(fn)
        p = sub.add_parser(name, help=summary, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        configure(p)
        p.set_defaults(handler=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .backbone import BackboneError
    from .bundle import BundleError
    try:
        return int(args.handler(args))
    except (UsageError, BundleError, BackboneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`fruitpipe models --json | head`): stop quietly. Python's own advice
        # (docs.python.org, signal: "Note on SIGPIPE"): point stdout at devnull so the interpreter's
        # final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
