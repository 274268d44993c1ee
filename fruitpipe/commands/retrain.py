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

from datetime import datetime
from typing import Any

from .. import version_metrics
from ..cli import UsageError, command
from ..client import ClientError
from .http import add_api_args, api_client

# The exit code for a run's end state (README.md, the exit-code table): 0 promoted (or still
# running), 3 rejected by the gate, 1 failed or cancelled (no new model).
EXIT_REJECTED = 3
EXIT_FAILED = 1
EXIT_CODES = {"rejected": EXIT_REJECTED, "failed": EXIT_FAILED, "cancelled": EXIT_FAILED}


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
    p.add_argument("--cancel", action="store_true",
                   help="stop the running retrain before its gate (the live model and the data stay as they were)")
    p.add_argument("--wait", action="store_true",
                   help="follow the run until it ends (the one already running, if one is)")
    p.add_argument("--force", action="store_true", help="retrain even with no new images since the live model")
    p.add_argument("--json", action="store_true", help="print the full status as JSON instead of a summary")


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _figures(m: dict[str, Any] | None) -> str:
    """One evaluation's headline figures (fractions in [0, 1] shown as percentages)."""
    if not m:
        return "–"
    n = f" of {m['n']} fruit photos" if m.get("n") else ""
    ood_n = f" of {m['ood_n']} not-fruit images" if m.get("ood_n") else ""
    return (f"accuracy {_pct(m.get('accuracy'))}{n}, macro-F1 {_pct(m.get('macro_f1'))}, "
            f"not-fruit rejected {_pct(m.get('ood_rejected_rate'))}{ood_n}")


def _duration(started: str | None, finished: str | None) -> str | None:
    try:
        seconds = (datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
                   - datetime.fromisoformat(str(started).replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return None
    return f"{int(seconds // 60)} min {int(seconds % 60)} s" if seconds >= 60 else f"{seconds:.0f} s"


def summary(status: dict[str, Any]) -> str:
    """A few lines for a person: the state, the candidate version, the gate's reason, candidate vs
    live figures on the frozen evaluation set and the time taken. ``status`` is
    ``GET /retraining-status``'s answer (local: ``result`` holds the gate's figures; AWS: they are
    under ``result.evaluation``)."""
    state, r = status.get("state", "idle"), status.get("result") or {}
    ev = r.get("evaluation") if isinstance(r.get("evaluation"), dict) else r
    version = r.get("version") or ev.get("candidate_version")
    head = {"succeeded": f"retrain promoted: {version} is live",
            "rejected": f"retrain rejected by the gate: {version} kept aside, {ev.get('live_version')} stays live",
            "failed": "retrain failed: the live model is unchanged",
            "cancelled": "retrain cancelled: the live model is unchanged",
            "running": f"retrain running: {status.get('percent', 0):.0f}% {status.get('stage') or ''}".rstrip(),
            }.get(state, f"retrain {state}")
    lines = [head]
    if state in ("failed", "cancelled"):
        lines.append(f"  error:     {r.get('failure_reason') or r.get('error') or 'see the log'}")
    if ev.get("reason"):
        lines.append(f"  reason:    {ev['reason']}")
    if ev.get("candidate") or ev.get("live"):
        lines.append(f"  candidate: {_figures(ev.get('candidate'))}")
        lines.append(f"  live:      {_figures(ev.get('live'))}" + (f" ({ev['live_version']})" if ev.get("live_version") else ""))
    took = _duration(status.get("started"), status.get("finished")) if status.get("finished") else None
    if took:
        lines.append(f"  time:      {took} (finished {status['finished']})")
    return "\n".join(lines)


def _report(status: dict[str, Any], as_json: bool, cancelling: bool = False) -> int:
    """Print the status (summary, or JSON with ``--json``); the exit code for its state (a run
    ``--cancel`` just cancelled: 0, it did what was asked)."""
    print(json.dumps(status, indent=2, default=str) if as_json else summary(status))
    if cancelling and status.get("state") == "cancelled":
        return 0
    return EXIT_CODES.get(status.get("state", ""), 0)


def _progress_line(status: dict) -> str:
    eta = status.get("eta_seconds")
    return (f"{status.get('percent', 0):5.1f}%  {status.get('stage') or ''}"
            + (f"  (about {eta:.0f} s left)" if isinstance(eta, (int, float)) and status.get("state") == "running" else ""))


@command("retrain", _retrain_args)
def _retrain(args: argparse.Namespace) -> int:
    """Start a retrain (one at a time) and optionally follow it, or show the latest run's status.

    Prints a summary (``--json``: the full status). Exits 0 promoted (without ``--wait``: started or
    still running), 3 rejected by the gate, 1 failed or cancelled, or not started (nothing new; a run
    is going, without ``--wait``, which follows that run instead); ``--cancel``: 0 cancelled, 1 none running.
    """
    if args.aws:
        return _retrain_aws(args)
    client = api_client(args, token_required=not args.status)
    try:
        if args.cancel:
            try:
                return _report(client.cancel(), args.json, cancelling=True)
            except ClientError as exc:
                if exc.code == "not_running":
                    print(f"{exc.code}: {exc.detail}", file=sys.stderr)
                    return 1
                raise
        if not args.status:
            try:
                client.retrain(force=args.force)
            except ClientError as exc:
                if exc.code == "retrain_running" and args.wait:  # e.g. started by curl or the dashboard
                    print(f"{exc.detail}: following it", file=sys.stderr)
                elif exc.code in ("retrain_running", "nothing_new"):
                    print(f"{exc.code}: {exc.detail}", file=sys.stderr)
                    return 1
                else:
                    raise
        status = client.status()
        while args.wait and status["state"] == "running":
            print(_progress_line(status), file=sys.stderr, flush=True)
            time.sleep(2)
            status = client.status()
    except ClientError as exc:
        raise UsageError(str(exc)) from None
    return _report(status, args.json)


def _retrain_aws(args: argparse.Namespace) -> int:
    import boto3

    from ..backends.base import NotRunning, RetrainRunning
    from ..pipeline.trainer import StepFunctionsTrainer

    arn = _need(args.state_machine, "--state-machine", "FRUITPIPE_STATE_MACHINE_ARN")
    trainer = StepFunctionsTrainer(boto3.client("stepfunctions"), boto3.client("sagemaker"), arn)
    if args.cancel:
        try:
            return _report(trainer.cancel().as_dict(), args.json, cancelling=True)
        except NotRunning as exc:
            print(f"not_running: {exc}", file=sys.stderr)
            return 1
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
    return _report(status.as_dict(), args.json)


def _models_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    add_api_args(where, p)
    where.add_argument("--aws", action="store_true", help="the deployed S3 model registry, directly")
    p.add_argument("--bucket", help="with --aws: models bucket (default: $FRUITPIPE_MODELS_BUCKET)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--activate", metavar="VERSION", help="move the live pointer to VERSION (rollback)")
    action.add_argument("--shadow", metavar="VERSION",
                        help="run VERSION in shadow beside the live model on live requests (never answering "
                             "with it): promoted within the bounds, else held with the reason")
    action.add_argument("--shadow-stop", metavar="VERSION",
                        help="stop the running shadow of VERSION now (never promoted; the live model unchanged)")
    shadow = p.add_argument_group("with --shadow (default: the server's: 200 requests, 3600 s, every request)")
    shadow.add_argument("--requests", type=int, metavar="N", help="shadowed requests before the decision")
    shadow.add_argument("--seconds", type=float, metavar="S", help="time limit in seconds")
    shadow.add_argument("--sample-rate", type=float, metavar="R", help="share of /predict requests shadowed, (0, 1]")
    p.add_argument("--json", action="store_true", help="one JSON object per version instead of a table")


SCORED_ON = {"frozen": "frozen set", "manifest": "test split"}


def scored_on(m: dict[str, Any]) -> str:
    """What a version's shown figures (:func:`fruitpipe.version_metrics.shown`) were scored on, with
    the image counts, e.g. ``"frozen set (740 fruit, 586 not-fruit)"``; "–" when nothing comparable."""
    where = SCORED_ON.get(m.get("source") or "")
    if where is None:
        return "–"
    counts = [f"{m[k]} {what}" for k, what in (("n", "fruit"), ("ood_n", "not-fruit")) if m.get(k)]
    return f"{where} ({', '.join(counts)})" if counts else where


def versions_table(versions: list[dict[str, Any]]) -> str:
    """The versions as a text table: version, created, status, accuracy, macro-F1, the share of
    not-fruit images rejected (``ood_rejected_rate``), what they were scored on (with the fruit and
    not-fruit image counts ``n``, ``ood_n``) and, for a rejected one, the gate's reason. The figures
    are the top-level ones of ``GET /models`` (:func:`fruitpipe.version_metrics.shown`): the frozen
    evaluation set where the version has a score on it (accuracy and macro-F1 over its fruit
    photos, every source pooled), else a held-out test score, else "–"."""
    rows = [("version", "created", "status", "accuracy", "macro-F1", "not-fruit rejected", "scored on", "reason")]
    for v in versions:
        m = version_metrics.shown(v.get("metrics") or {})
        rows.append((v["version"], str(v.get("created", "")).replace("T", " ").replace("Z", "")[:19],
                     v.get("status", ""), _pct(m["accuracy"]), _pct(m["macro_f1"]), _pct(m["ood_rejected_rate"]),
                     scored_on(m), (v.get("reason") or "") if v.get("status") == "rejected" else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    return "\n".join(("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[7]).rstrip() for r in rows)


def _print_versions(versions: list[dict[str, Any]], as_json: bool, shadow: dict[str, Any] | None = None,
                    pointer: dict[str, Any] | None = None) -> None:
    """The versions (``--json``: one object each, the live one with ``live_pointer``: the live
    pointer's record), then, in a table, the latest shadow's line and why the live version is live
    when the pointer says (:func:`live_line`)."""
    if as_json:
        for v in versions:
            print(json.dumps({**v, "live_pointer": pointer} if pointer and v["version"] == pointer.get("version")
                             else v, default=str))
        return
    print(versions_table(versions))
    for line in (shadow_line(shadow), live_line(pointer)):
        if line:
            print(line)


def live_line(pointer: dict[str, Any] | None) -> str | None:
    """One line on why the live version is live when its pointer records a reason (an automatic
    rollback, locally or by the AWS rollback Lambda), e.g. ``live: W since T, from V: automatic
    rollback: p95 ...``; None otherwise. ``pointer``: :func:`fruitpipe.backends.base.pointer_summary`."""
    if not pointer or not pointer.get("reason"):
        return None
    return f"live: {pointer.get('version')} since {pointer.get('updated')}, from {pointer.get('previous')}: {pointer['reason']}"


def shadow_line(state: dict[str, Any] | None) -> str | None:
    """One line on the latest shadow (``GET /models`` → ``shadow``), or None when there is none."""
    if not state:
        return None
    status = state.get("status")
    if status == "running":
        seen = state["seen"].get("n", 0) if isinstance(state.get("seen"), dict) else None  # the API's counts
        return (f"shadow: {state.get('version')} running since {state.get('started')}: "
                + (f"{seen} of " if seen is not None else "decided after ")
                + f"{state.get('requests')} requests shadowed (sample rate {state.get('sample_rate')}, "
                f"until {state.get('deadline')})")
    done = f"shadow: {state.get('version')} {status}"
    return done + (f": {state['reason']}" if state.get("reason") else "")


def _started(state: dict[str, Any], as_json: bool) -> int:
    """Print a started shadow's state (``--json``: as it is); exit 0."""
    if as_json:
        print(json.dumps(state, default=str))
    else:
        print(f"shadow of {state['version']} started beside {state.get('live')}: decided after "
              f"{state['requests']} shadowed requests (sample rate {state['sample_rate']}) or at {state['deadline']}; "
              "`fruitpipe models` shows its progress")
    return 0


def _stopped(state: dict[str, Any], as_json: bool) -> int:
    """Print a stopped shadow's final state (``--json``: as it is); exit 0."""
    if as_json:
        print(json.dumps(state, default=str))
    else:
        n = (state.get("result") or {}).get("n", 0)
        print(f"shadow of {state['version']} stopped after {n} of {state['requests']} requests; "
              f"live model unchanged: {state.get('live')}")
    return 0


@command("models", _models_args)
def _models(args: argparse.Namespace) -> int:
    """List model versions and the latest shadow; activate one (rollback); start or stop a shadow.

    A table (``--json``: one JSON object per version) with a last line on the latest shadow.
    ``--activate V`` moves the live pointer; ``--shadow V [--requests N --seconds S --sample-rate R]``
    runs V beside the live model (exit 1 with ``shadow_running`` when another one runs);
    ``--shadow-stop V`` stops it (exit 1 with ``not_running`` when none of V runs).
    """
    if args.aws:
        return _models_aws(args)
    _check_shadow_options(args)
    client = api_client(args, token_required=bool(args.activate or args.shadow or args.shadow_stop))
    try:
        if args.activate:
            print(f"live: {client.activate(args.activate)['live']}")
            return 0
        if args.shadow:
            try:
                return _started(client.start_shadow(args.shadow, args.requests, args.seconds, args.sample_rate),
                                args.json)
            except ClientError as exc:
                if exc.code == "shadow_running":
                    print(f"{exc.code}: {exc.detail}", file=sys.stderr)
                    return 1
                raise
        if args.shadow_stop:
            try:
                return _stopped(client.stop_shadow(args.shadow_stop), args.json)
            except ClientError as exc:
                if exc.code == "not_running":
                    print(f"{exc.code}: {exc.detail}", file=sys.stderr)
                    return 1
                raise
        listing = client.models()
        _print_versions(listing["versions"], args.json, listing.get("shadow"), listing.get("live_pointer"))
    except ClientError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _check_shadow_options(args: argparse.Namespace) -> None:
    """``--requests``/``--seconds``/``--sample-rate`` only go with ``--shadow``."""
    given = [o for o, v in (("--requests", args.requests), ("--seconds", args.seconds),
                            ("--sample-rate", args.sample_rate)) if v is not None]
    if given and not args.shadow:
        raise UsageError(f"{', '.join(given)} only go with --shadow VERSION")


def _models_aws(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from ..backends.aws import S3ModelRegistry
    from ..backends.base import NotFound, NotRunning, pointer_summary
    from ..backends.shadow_pointers import S3ShadowPointer
    from ..models_path import default_model_dir
    from ..shadow import Shadow, ShadowRunning

    _check_shadow_options(args)
    bucket = _need(args.bucket, "--bucket", "FRUITPIPE_MODELS_BUCKET")
    # the registry as the API's Lambda sees it: the shipped model is live until the first publish
    registry = S3ModelRegistry(bucket, Path(tempfile.gettempdir()) / "fruitpipe-cli-models",
                               seed_bundle=default_model_dir())
    if args.shadow:
        options = {k: v for k, v in (("requests", args.requests), ("seconds", args.seconds),
                                     ("sample_rate", args.sample_rate)) if v is not None}
        try:  # the API's own start, on shadow.json in the bucket (the bounds: fruitpipe.shadow.Bounds' defaults)
            return _started(Shadow(S3ShadowPointer(bucket), registry, registry.fetch).start(args.shadow, **options),
                            args.json)
        except ShadowRunning as exc:
            print(f"shadow_running: {exc}", file=sys.stderr)
            return 1
        except (NotFound, ValueError) as exc:  # VersionRejected is a ValueError
            raise UsageError(str(exc)) from None
    if args.shadow_stop:
        try:  # the API's own stop, on shadow.json in the bucket (nothing is loaded: load is never called)
            return _stopped(Shadow(S3ShadowPointer(bucket), registry, registry.fetch).stop(args.shadow_stop), args.json)
        except NotRunning as exc:
            print(f"not_running: {exc}", file=sys.stderr)
            return 1
        except NotFound as exc:
            raise UsageError(str(exc)) from None
    if args.activate:
        try:
            registry.activate(args.activate)
        except (NotFound, ValueError) as exc:
            raise UsageError(str(exc)) from None
        print(f"live: {registry.live_version()}")
        return 0
    _print_versions([{**v.as_dict(), "metrics": version_metrics.shown(v.metrics)} for v in registry.versions()],
                    args.json, S3ShadowPointer(bucket).read(), pointer_summary(registry.live_record()))
    return 0
