"""``fruitpipe train`` and ``fruitpipe evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..cli import UsageError, add_store_arg, command, model_arg
from ..labels import LABELS


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="folder of <class>/ image folders")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to create (absent or empty)")
    p.add_argument("--validation", type=Path, default=None,
                   help="validation folder (default: a hash-based 15%% holdout of --data)")
    p.add_argument("--cache", type=Path, default=None, help="embedding cache folder (append-only shards)")
    p.add_argument("--output-data", type=Path, default=None,
                   help="where metrics.json and the plots go (default: the bundle folder)")
    p.add_argument("--base-model", type=Path, default=None,
                   help="the live bundle; its hyperparameters are reused (the data are retrained) and, "
                        "for a fine-tuned recipe, its block and head are the starting point")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a hyperparameter")
    p.add_argument("--backbone", default=None, metavar="NAME",
                   help="the frozen network: mobilenet_v2 (default), efficientnet_lite0, efficientnet_lite1, "
                        "regnetx_200mf, mobilenet_v3_small, mobilenet_v1 (default with --base-model: its backbone)")
    p.add_argument("--backbone-path", type=Path, default=None,
                   help="a local copy of the backbone's file, or a folder holding it")


def backbone_choice(value: str | None) -> tuple[str | None, Path | None]:
    """``--backbone``: a registry name, or (as before the registry) a MobileNetV2 file or folder.

    Raises:
        UsageError: neither (the message lists the names).
    """
    from ..backbone import SPECS
    if value is None or value in SPECS:
        return value, None
    if Path(value).exists():
        return None, Path(value)
    raise UsageError(f"unknown backbone {value!r}; known: {', '.join(SPECS)}")


@command("train", _train_args)
def _train(args: argparse.Namespace) -> int:
    """Train a model bundle from a class-folder dataset (the training job, run locally)."""
    from ..bundle import read_manifest
    from ..joblog import interactive, quiet_native_stderr
    from ..training import TrainingError, config_for, main_error, train

    if not args.data.is_dir():
        raise UsageError(f"--data {args.data} is not a folder")
    if args.validation is not None and not args.validation.is_dir():
        raise UsageError(f"--validation {args.validation} is not a folder")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UsageError(f"--out {args.out} exists and is not an empty folder")
    values: dict[str, object] = {}
    if args.base_model is not None:
        values.update(read_manifest(args.base_model).raw.get("hyperparameters", {}))
    name, legacy_path = backbone_choice(args.backbone)
    try:
        values.update(dict(item.split("=", 1) for item in args.set))
        if name is not None:
            values["backbone"] = name
        config = config_for(values, args.base_model)
    except (ValueError, TrainingError) as exc:
        raise UsageError(f"bad hyperparameter: {exc}") from None
    backbone_path = args.backbone_path or legacy_path
    started = time.monotonic()
    with quiet_native_stderr():  # a crash shows what was held back; a TrainingError is its own message
        try:
            metrics = train(args.data, args.out, validation_dir=args.validation, cache_dir=args.cache,
                            output_data_dir=args.output_data, config=config,
                            backbone_path=backbone_path, base_model=args.base_model)
        except TrainingError as exc:
            return main_error(exc)
    if interactive():
        print(_summary(args.out, metrics, time.monotonic() - started))
    return 0


def _summary(out: Path, metrics: dict, seconds: float) -> str:
    """The end of ``fruitpipe train`` on a terminal: the bundle, its validation figures, the time."""
    lines = [f"bundle: {out} (version {metrics.get('model_version', '?')})"]
    if metrics.get("n"):
        line = (f"{metrics.get('split', 'validation')}: accuracy {100 * metrics['accuracy']:.1f}% "
                f"macro-F1 {100 * metrics['macro_f1']:.1f}% on {metrics['n']} images")
        if metrics.get("ood_n"):
            line += f"; not-fruit rejected {100 * metrics['ood_rejected_rate']:.1f}% of {metrics['ood_n']}"
        lines.append(line)
    lines.append(f"time: {seconds:.0f} s")
    return "\n".join(lines)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True,
                   help="folder of <class>/ folders; any other folder (e.g. not_fruit/) must be rejected. "
                        "<set>/@split-<name> scores one split (train, val, test) of a set with a MANIFEST.csv, "
                        "e.g. ../shared/data/fruits_extra/@split-test")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the shipped model)")
    add_store_arg(which)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--backbone", default=None, help="a local copy of the backbone the bundle names (file or folder)")


@command("evaluate", _evaluate_args)
def _evaluate(args: argparse.Namespace) -> int:
    """Score a model on a labelled folder, or one split of a set (accuracy, macro-F1, rejection rates)."""
    from ..classifier import Classifier
    from ..evaluation import evaluate

    from ..evaluation import dataset_items
    from ..recipe import SPLIT_PREFIX
    if not (args.data.is_dir() or args.data.name.startswith(SPLIT_PREFIX) and args.data.parent.is_dir()):
        raise UsageError(f"--data {args.data} is not a folder (nor <set>/{SPLIT_PREFIX}<name> of one)")
    try:
        dataset_items(args.data)  # a bad split root says so before the model loads
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    clf = Classifier(model_arg(args), backbone_path=args.backbone)
    try:
        # a bar for a person on a terminal; for a program, nothing (progress= lines are the training job's protocol)
        result = evaluate(clf, args.data, progress=not args.json and sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(result))
        return 0
    if result["n"]:
        print(f"model {result['model_version']}: n={result['n']} accuracy={result['accuracy']:.4f} "
              f"macro_f1={result['macro_f1']:.4f} fruit_rejected_rate={result['fruit_rejected_rate']:.4f}")
    else:
        print(f"model {result['model_version']}: n=0 accuracy=n/a (no fruit images to score: no folder under "
              f"--data is named after a class, {', '.join(LABELS)})")
    if result["ood_n"]:
        print(f"not-fruit images: n={result['ood_n']} rejected={result['ood_rejected_rate']:.4f}")
    for label, m in result["per_class"].items():
        if m["n"]:
            print(f"  {label:14s} precision={m['precision']:.3f} recall={m['recall']:.3f} f1={m['f1']:.3f} n={m['n']}")
    if result["skipped"]:
        print(f"skipped unreadable images: {result['skipped']}", file=sys.stderr)
    return 0
