"""SageMaker-style entry point: channels and hyperparameters from the environment, or arguments.

SageMaker sets ``SM_CHANNEL_TRAIN``, ``SM_CHANNEL_VALIDATION``, optionally ``SM_CHANNEL_CACHE``,
``SM_MODEL_DIR`` and ``SM_OUTPUT_DATA_DIR``, and writes hyperparameters to
``/opt/ml/input/config/hyperparameters.json`` (all values are strings). Run locally, the same
values come from arguments. Everything else lives in :mod:`fruitpipe.training`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import os
from pathlib import Path
from typing import Sequence

HYPERPARAMETERS = Path("/opt/ml/input/config/hyperparameters.json")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training_job", description=__doc__)
    p.add_argument("--data", type=Path, default=_env_path("SM_CHANNEL_TRAIN"))
    p.add_argument("--validation", type=Path, default=_env_path("SM_CHANNEL_VALIDATION"))
    p.add_argument("--cache", type=Path, default=_env_path("SM_CHANNEL_CACHE"))
    p.add_argument("--out", type=Path, default=_env_path("SM_MODEL_DIR"))
    p.add_argument("--base-model", type=Path, default=_env_path("SM_CHANNEL_BASE_MODEL"),
                   help="the live bundle: a fine-tuned recipe warm-starts from its block and head")
    p.add_argument("--output-data", type=Path, default=_env_path("SM_OUTPUT_DATA_DIR"))
    p.add_argument("--hyperparameters", type=Path,
                   default=Path(os.environ.get("SM_HYPERPARAMETERS_FILE", HYPERPARAMETERS)))
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a hyperparameter")
    return p.parse_args(argv)


def _shards(cache: Path | None) -> set[str]:
    return {p.name for p in cache.iterdir() if p.is_file()} if cache and cache.is_dir() else set()


def _export_new_shards(cache: Path | None, before: set[str], output_data: Path | None) -> None:
    """Copy the cache shards this run wrote into ``<output-data>/cache/``. On SageMaker the cache
    channel's folder is thrown away with the instance; ``output.tar.gz`` is what comes back, and
    the pipeline's evaluate step copies these shards into ``cache/embeddings/`` (only new names)."""
    if cache is None or output_data is None:
        return
    new = sorted(_shards(cache) - before)
    if new:
        (output_data / "cache").mkdir(parents=True, exist_ok=True)
        for name in new:
            shutil.copy2(cache / name, output_data / "cache" / name)
    print(f"cache_shards_exported={len(new)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from fruitpipe.backbone import BackboneError
    from fruitpipe.training import Config, TrainingError, main_error, train

    args = parse(argv)
    if args.data is None or args.out is None:
        print("error: need --data and --out (or SM_CHANNEL_TRAIN and SM_MODEL_DIR)", flush=True)
        return 2
    values: dict[str, object] = {}
    try:
        if args.hyperparameters.is_file():
            values.update(json.loads(args.hyperparameters.read_text(encoding="utf-8")))
        values.update(dict(item.split("=", 1) for item in args.set))
        config = Config.from_mapping(values)
        if args.validation is not None and not any(args.validation.iterdir()):
            args.validation = None
        before = _shards(args.cache)
        train(args.data, args.out, validation_dir=args.validation, cache_dir=args.cache,
              output_data_dir=args.output_data, config=config, base_model=args.base_model)
        _export_new_shards(args.cache, before, args.output_data)
    except (TrainingError, BackboneError, FileNotFoundError, ValueError, OSError) as exc:
        return main_error(exc)
    return 0
