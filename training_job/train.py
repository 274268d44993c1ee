"""SageMaker training entry point for fruitpipe: ``python -m training_job [train]``.

Three ways to get the inputs, first match wins, each option overridable by an argument:

* **SageMaker's container contract** (what the job really gets: the image has no
  sagemaker-training toolkit, so no ``SM_*`` variable is set). SageMaker runs
  ``docker run IMAGE train`` (the ``ENTRYPOINT`` plus the argument ``train``) and lays out
  :data:`OPT_ML` (AWS, "How Amazon SageMaker Provides Training Information"):

  - ``input/config/hyperparameters.json`` (every value a string), ``inputdataconfig.json``
    (``{channel: {...}}``), ``resourceconfig.json``;
  - ``input/data/<channel>/``: an ``S3Prefix`` channel's objects by their key relative to the
    prefix, a ``ManifestFile`` channel's objects by their manifest entry (the suffix after the
    manifest's prefix), so ``dataset/<class>/<sha>.jpg`` arrives as ``<channel>/<class>/<sha>.jpg``;
  - the job writes the bundle to ``model/`` (SageMaker uploads it as ``model.tar.gz``), extra
    output to ``output/data/`` (``output.tar.gz``), and on failure a reason to ``output/failure``
    (its first 1024 characters become ``FailureReason`` of ``DescribeTrainingJob``).

  Channels used: ``train``, ``validation``, ``cache`` (the embedding cache), optional
  ``base_model`` (the live bundle, for a warm start).
* **The sagemaker-training toolkit's variables** (``SM_CHANNEL_TRAIN``, ``SM_MODEL_DIR``, ...),
  as a toolkit-based image or a local runner would set them.
* **Arguments** (``--data --out ...``), run by hand.

Hyperparameters are :class:`fruitpipe.training.Config` fields; ``backbone`` (a name in
:data:`fruitpipe.backbone.SPECS`) picks the frozen network, and without it a job with a base model
keeps that model's backbone. Everything else lives in :mod:`fruitpipe.training`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

# SageMaker's fixed root inside the container; tests run the job under a private mount namespace
# with a temporary folder bind-mounted here, so this path is never configurable.
OPT_ML = Path("/opt/ml")
CONFIG = OPT_ML / "input" / "config"
HYPERPARAMETERS = CONFIG / "hyperparameters.json"
FAILURE_REASON_CHARS = 1024  # SageMaker keeps the first 1024 characters of output/failure
# channel name -> argument it fills
CHANNELS = {"train": "data", "validation": "validation", "cache": "cache", "base_model": "base_model"}


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def sagemaker_layout() -> bool:
    """True inside a SageMaker training container without the toolkit: ``inputdataconfig.json``
    exists and no ``SM_*`` variable is set."""
    return (CONFIG / "inputdataconfig.json").is_file() and not any(k.startswith("SM_") for k in os.environ)


def _contract_defaults() -> dict[str, Path | None]:
    """Defaults from :data:`OPT_ML`: a folder for every channel named in ``inputdataconfig.json``."""
    channels = json.loads((CONFIG / "inputdataconfig.json").read_text(encoding="utf-8"))
    out: dict[str, Path | None] = {dest: None for dest in CHANNELS.values()}
    for name in channels:
        if name in CHANNELS:
            out[CHANNELS[name]] = OPT_ML / "input" / "data" / name
    out["out"] = OPT_ML / "model"
    out["output_data"] = OPT_ML / "output" / "data"
    return out


def _toolkit_defaults() -> dict[str, Path | None]:
    return {"data": _env_path("SM_CHANNEL_TRAIN"), "validation": _env_path("SM_CHANNEL_VALIDATION"),
            "cache": _env_path("SM_CHANNEL_CACHE"), "base_model": _env_path("SM_CHANNEL_BASE_MODEL"),
            "out": _env_path("SM_MODEL_DIR"), "output_data": _env_path("SM_OUTPUT_DATA_DIR")}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Arguments over the layout's defaults (SageMaker's ``/opt/ml`` or the toolkit's ``SM_*``)."""
    d = _contract_defaults() if sagemaker_layout() else _toolkit_defaults()
    p = argparse.ArgumentParser(prog="python -m training_job", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=["train"],
                   help="SageMaker starts the container with the argument 'train'")
    p.add_argument("--data", type=Path, default=d["data"])
    p.add_argument("--validation", type=Path, default=d["validation"])
    p.add_argument("--cache", type=Path, default=d["cache"])
    p.add_argument("--out", type=Path, default=d["out"])
    p.add_argument("--base-model", type=Path, default=d["base_model"],
                   help="the live bundle: a fine-tuned recipe warm-starts from its block and head")
    p.add_argument("--output-data", type=Path, default=d["output_data"])
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


def _empty(folder: Path | None) -> bool:
    """An existing folder with nothing in it (a channel SageMaker created but had nothing for)."""
    return folder is not None and folder.is_dir() and not any(folder.iterdir())


def write_failure(reason: str) -> None:
    """SageMaker's failure file (``/opt/ml/output/failure``), only inside its layout."""
    if sagemaker_layout():
        path = OPT_ML / "output" / "failure"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reason[:FAILURE_REASON_CHARS], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one training job; 0 on success, 1 on a training failure, 2 on a usage error."""
    from fruitpipe.backbone import BackboneError
    from fruitpipe.training import TrainingError, config_for, main_error, train

    args = parse(sys.argv[1:] if argv is None else argv)
    if args.data is None or args.out is None:
        reason = "need --data and --out (or SM_CHANNEL_TRAIN and SM_MODEL_DIR, or /opt/ml from SageMaker)"
        print(f"error: {reason}", flush=True)
        write_failure(reason)
        return 2
    values: dict[str, object] = {}
    try:
        if args.hyperparameters.is_file():
            values.update(json.loads(args.hyperparameters.read_text(encoding="utf-8")))
        values.update(dict(item.split("=", 1) for item in args.set))
        # a retrain keeps the base (live) model's backbone unless a "backbone" hyperparameter names one
        config = config_for(values, args.base_model)
        if _empty(args.validation):
            args.validation = None
        before = _shards(args.cache)
        train(args.data, args.out, validation_dir=args.validation, cache_dir=args.cache,
              output_data_dir=args.output_data, config=config, base_model=args.base_model)
        _export_new_shards(args.cache, before, args.output_data)
    except (TrainingError, BackboneError, FileNotFoundError, ValueError, OSError) as exc:
        write_failure(f"{type(exc).__name__}: {exc}")
        return main_error(exc)
    except Exception as exc:  # noqa: BLE001 - SageMaker must still learn why the job died
        write_failure(f"{type(exc).__name__}: {exc}")
        raise
    return 0
