"""``fruitpipe retrain --aws`` and ``fruitpipe models --aws``: the deployed pipeline from a terminal.

Uses your AWS credentials (boto3's usual chain) and the deployment's names, given as options or as
the ``FRUITPIPE_STATE_MACHINE_ARN`` / ``FRUITPIPE_MODELS_BUCKET`` environment variables (the
stack's outputs). Locally, retraining runs through the service (``POST /retrain`` on
``fruitpipe serve``) or ``fruitpipe train``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..cli import UsageError, command


def _need(value: str | None, option: str, env: str) -> str:
    value = value or os.environ.get(env)
    if not value:
        raise UsageError(f"{option} is required (or set {env})")
    return value


def _retrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aws", action="store_true", required=True, help="start the deployed retrain state machine")
    p.add_argument("--state-machine", help="its ARN (default: $FRUITPIPE_STATE_MACHINE_ARN)")
    p.add_argument("--status", action="store_true", help="only show the latest run's status")
    p.add_argument("--wait", action="store_true", help="follow the run until it ends")


@command("retrain", _retrain_args)
def _retrain(args: argparse.Namespace) -> int:
    """Start a retrain on AWS (one at a time), or show the latest run's status."""
    import boto3

    from ..backends.base import RetrainRunning
    from ..pipeline.trainer import StepFunctionsTrainer

    arn = _need(args.state_machine, "--state-machine", "FRUITPIPE_STATE_MACHINE_ARN")
    trainer = StepFunctionsTrainer(boto3.client("stepfunctions"), boto3.client("sagemaker"), arn)
    if not args.status:
        try:
            trainer.start("manual")
        except RetrainRunning as exc:
            print(f"already running: {exc}", file=sys.stderr)
            return 1
    status = trainer.status()
    while args.wait and status.state == "running":
        print(f"{status.stage} {status.percent:.0f}%", file=sys.stderr, flush=True)
        time.sleep(15)
        status = trainer.status()
    print(json.dumps(status.as_dict(), indent=2, default=str))
    return 0 if status.state != "failed" else 1


def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aws", action="store_true", required=True, help="the deployed S3 model registry")
    p.add_argument("--bucket", help="models bucket (default: $FRUITPIPE_MODELS_BUCKET)")
    p.add_argument("--activate", metavar="VERSION", help="move the live pointer to VERSION (rollback)")


@command("models", _models_args)
def _models(args: argparse.Namespace) -> int:
    """List model versions on AWS, or activate one (rollback / roll forward)."""
    import tempfile
    from pathlib import Path

    from ..backends.aws import S3ModelRegistry
    from ..backends.base import NotFound

    registry = S3ModelRegistry(_need(args.bucket, "--bucket", "FRUITPIPE_MODELS_BUCKET"),
                               Path(tempfile.gettempdir()) / "fruitpipe-cli-models")
    if args.activate:
        try:
            registry.activate(args.activate)
        except (NotFound, ValueError) as exc:
            raise UsageError(str(exc)) from None
        print(f"live: {registry.live_version()}")
        return 0
    for v in registry.versions():
        print(json.dumps(v.as_dict(), default=str))
    return 0
