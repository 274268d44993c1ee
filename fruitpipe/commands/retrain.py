"""``fruitpipe retrain`` and ``fruitpipe models``: retraining and versions from a terminal.

By default (``--api URL``, default ``$FRUITPIPE_API`` or http://127.0.0.1:8000) they talk to any
fruitpipe server, local or AWS, through its HTTP API with the admin token (``--token``,
``$FRUITPIPE_TOKEN`` or ``--token-file``). With ``--aws`` they use your AWS credentials directly
(boto3's usual chain) and the deployment's names, given as options or as the
``FRUITPIPE_STATE_MACHINE_ARN`` / ``FRUITPIPE_MODELS_BUCKET`` environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..cli import UsageError, command
from ..client import ClientError
from .http import add_api_args, api_client


def _need(value: str | None, option: str, env: str) -> str:
    value = value or os.environ.get(env)
    if not value:
        raise UsageError(f"{option} is required (or set {env})")
    return value


def _retrain_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    add_api_args(where, p)
    where.add_argument("--aws", action="store_true", help="start the deployed retrain state machine directly")
    p.add_argument("--state-machine", help="with --aws: its ARN (default: $FRUITPIPE_STATE_MACHINE_ARN)")
    p.add_argument("--status", action="store_true", help="only show the latest run's status")
    p.add_argument("--wait", action="store_true", help="follow the run until it ends")
    p.add_argument("--force", action="store_true", help="retrain even with no new images since the live model")


def _progress_line(status: dict) -> str:
    eta = status.get("eta_seconds")
    return (f"{status.get('percent', 0):5.1f}%  {status.get('stage') or ''}"
            + (f"  (about {eta:.0f} s left)" if isinstance(eta, (int, float)) and status.get("state") == "running" else ""))


@command("retrain", _retrain_args)
def _retrain(args: argparse.Namespace) -> int:
    """Start a retrain (one at a time) and optionally follow it, or show the latest run's status."""
    if args.aws:
        return _retrain_aws(args)
    client = api_client(args, token_required=not args.status)
    try:
        if not args.status:
            try:
                client.retrain(force=args.force)
            except ClientError as exc:
                if exc.code in ("retrain_running", "nothing_new"):
                    print(f"{exc.code}: {exc.detail}", file=sys.stderr)
                    return 1
                raise
        status = client.status()
        while args.wait and status["state"] == "running":
            print(_progress_line(status), file=sys.stderr, flush=True)
            time.sleep(2)
            status = client.status()
    except ClientError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(status, indent=2, default=str))
    return 0 if status["state"] != "failed" else 1


def _retrain_aws(args: argparse.Namespace) -> int:
    import boto3

    from ..backends.base import RetrainRunning
    from ..pipeline.trainer import StepFunctionsTrainer

    arn = _need(args.state_machine, "--state-machine", "FRUITPIPE_STATE_MACHINE_ARN")
    trainer = StepFunctionsTrainer(boto3.client("stepfunctions"), boto3.client("sagemaker"), arn)
    if not args.status:
        try:
            trainer.start("manual", args.force)
        except RetrainRunning as exc:
            print(f"already running: {exc}", file=sys.stderr)
            return 1
    status = trainer.status()
    while args.wait and status.state == "running":
        print(_progress_line(status.as_dict()), file=sys.stderr, flush=True)
        time.sleep(15)
        status = trainer.status()
    print(json.dumps(status.as_dict(), indent=2, default=str))
    return 0 if status.state != "failed" else 1


def _models_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    add_api_args(where, p)
    where.add_argument("--aws", action="store_true", help="the deployed S3 model registry, directly")
    p.add_argument("--bucket", help="with --aws: models bucket (default: $FRUITPIPE_MODELS_BUCKET)")
    p.add_argument("--activate", metavar="VERSION", help="move the live pointer to VERSION (rollback)")


@command("models", _models_args)
def _models(args: argparse.Namespace) -> int:
    """List model versions (one JSON object each), or activate one (rollback / roll forward)."""
    if args.aws:
        return _models_aws(args)
    client = api_client(args, token_required=bool(args.activate))
    try:
        if args.activate:
            print(f"live: {client.activate(args.activate)['live']}")
            return 0
        for v in client.models()["versions"]:
            print(json.dumps(v, default=str))
    except ClientError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _models_aws(args: argparse.Namespace) -> int:
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
