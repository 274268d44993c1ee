"""Run the retrain state machine's steps in order against S3/DynamoDB/Step Functions endpoints,
with the SageMaker training job executed as a local process (``make cloud-demo``, the cloud-flow test).

Only the orchestration differs from AWS: moto's ASL interpreter has no SageMaker integration (the
tests add one, tests/helpers/aws_emulation.py, to execute the real definition), so this quick demo
runner calls the same step functions
(:mod:`.prepare`, :mod:`.evaluate`, :mod:`.publish`, :mod:`.report`) in the state machine's order,
and :func:`local_training_job` does what SageMaker does for the job: materialise each channel
(``ManifestFile`` → ``<class>/<file>``, the cache prefix → its files), set ``SM_*``, run
``python -m training_job``, then upload ``model.tar.gz`` and ``output.tar.gz`` under the job's
output path. Channel folders are discarded afterwards, as on SageMaker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import evaluate, prepare, publish, report, s3util, states, trigger

Log = Callable[[str], None]


class TrainingJobFailed(RuntimeError):
    """The training process exited non-zero (SageMaker would mark the job Failed)."""


@dataclass
class Cloud:
    """The deployment's names and boto3 clients (pointing at AWS or a moto server)."""

    data_bucket: str
    models_bucket: str
    state_table: str
    state_machine_arn: str
    s3: Any
    ddb: Any
    sfn: Any
    cloudwatch: Any
    sns: Any = None
    alerts_topic_arn: str | None = None
    settings: prepare.Settings = field(init=False)
    min_images_per_class: int = 5

    def __post_init__(self) -> None:
        self.settings = prepare.Settings(self.data_bucket, self.models_bucket, self.state_table,
                                         min_images_per_class=self.min_images_per_class)


def local_training_job(s3: Any, prepared: dict[str, Any], workdir: Path, *, log: Log = print,
                       hyperparameters: dict[str, str] | None = None) -> dict[str, Any]:
    """SageMaker's part of the ``Train`` state, as a local process. Returns what the state's
    ResultSelector keeps (job name, status, model artifacts) plus the parsed metrics and timing."""
    job = prepared["version"]
    root = workdir / job
    channels = {"train": root / "input/data/train", "validation": root / "input/data/validation",
                "cache": root / "input/data/cache"}
    evaluate.download_eval_images(s3, prepared["train_manifest"], channels["train"])
    evaluate.download_eval_images(s3, prepared["validation_manifest"], channels["validation"])
    cache_bucket, cache_prefix = s3util.split_uri(prepared["cache_uri"])
    channels["cache"].mkdir(parents=True, exist_ok=True)
    for key in s3util.list_keys(s3, cache_bucket, cache_prefix):
        (channels["cache"] / key[len(cache_prefix):]).write_bytes(
            s3.get_object(Bucket=cache_bucket, Key=key)["Body"].read())
    model_dir, output_dir = root / "model", root / "output/data"
    model_dir.mkdir(parents=True)
    output_dir.mkdir(parents=True)
    hp = root / "input/config/hyperparameters.json"
    hp.parent.mkdir(parents=True)
    hp.write_text(json.dumps(hyperparameters or {}))
    env = {**os.environ, "SM_CHANNEL_TRAIN": str(channels["train"]),
           "SM_CHANNEL_VALIDATION": str(channels["validation"]), "SM_CHANNEL_CACHE": str(channels["cache"]),
           "SM_MODEL_DIR": str(model_dir), "SM_OUTPUT_DATA_DIR": str(output_dir),
           "SM_HYPERPARAMETERS_FILE": str(hp), "TRAINING_JOB_NAME": job, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "training_job"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=str(Path(__file__).resolve().parents[2]))
    lines: list[str] = []
    metrics: dict[str, float] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        for token in line.split():
            name, eq, value = token.partition("=")
            if eq:
                try:
                    metrics[name] = float(value)
                except ValueError:
                    pass
        if line.startswith(("stage=", "embedded_new=", "accuracy=", "macro_f1=", "error")):
            log(f"    [job] {line}")
    rc = proc.wait()
    seconds = time.monotonic() - started
    if rc != 0:
        raise TrainingJobFailed(f"training job {job} exited {rc}: " + " | ".join(lines[-5:]))
    out_prefix = prepared["output_uri"].rstrip("/") + f"/{job}/output"
    bucket, key = s3util.split_uri(out_prefix)
    s3.put_object(Bucket=bucket, Key=f"{key}/model.tar.gz", Body=s3util.tar_gz(model_dir))
    s3.put_object(Bucket=bucket, Key=f"{key}/output.tar.gz", Body=s3util.tar_gz(output_dir))
    return {"job_name": job, "status": "Completed", "model_artifacts": f"{out_prefix}/model.tar.gz",
            "metrics": metrics, "seconds": round(seconds, 1), "log_tail": lines[-8:]}


def run_pipeline(cloud: Cloud, workdir: Path, *, trigger_name: str = "manual", log: Log = print,
                 evaluator: evaluate.Evaluator | None = None) -> dict[str, Any]:
    """One retrain, state by state (names from :mod:`.states`). Returns the execution's state."""
    started = trigger.start(cloud.sfn, cloud.state_machine_arn, trigger_name)
    if not started.started:
        return {"trigger": trigger_name, "started": False, "reason": started.reason}
    state: dict[str, Any] = {"trigger": trigger_name, "execution_arn": started.execution_arn}
    try:
        log(f"  {states.PREPARE}")
        state["prepare"] = prepare.run(cloud.s3, cloud.settings, sfn=cloud.sfn, ddb=cloud.ddb,
                                       state_machine_arn=cloud.state_machine_arn,
                                       execution_arn=started.execution_arn, trigger=trigger_name)
        if not state["prepare"]["proceed"]:
            log(f"  {states.ALREADY_RUNNING}: {state['prepare']['reason']}")
            return state
        p = state["prepare"]
        log(f"  {states.TRAIN} (local process for SageMaker job {p['version']}: "
            f"{p['n_train']} train / {p['n_validation']} validation images)")
        state["training"] = local_training_job(cloud.s3, p, workdir, log=log)
        log(f"  {states.EVALUATE}")
        state["evaluation"] = evaluate.run(cloud.s3, models_bucket=cloud.models_bucket,
                                           model_artifacts=state["training"]["model_artifacts"],
                                           validation_manifest=p["validation_manifest"],
                                           expected_version=p["version"], workdir=workdir, evaluator=evaluator)
        ev = state["evaluation"]
        if ev["promote"]:
            log(f"  {states.PUBLISH}: {ev['reason']}")
            state["publish"] = publish.publish(
                cloud.s3, models_bucket=cloud.models_bucket, model_artifacts=state["training"]["model_artifacts"],
                expected_version=ev["candidate_version"], baseline=ev["baseline"], metrics=ev["candidate"],
                reason=ev["reason"], workdir=workdir)
        else:
            log(f"  {states.REJECT}: {ev['reason']}")
            state["publish"] = publish.reject(
                cloud.s3, models_bucket=cloud.models_bucket, model_artifacts=state["training"]["model_artifacts"],
                version=ev["candidate_version"], reason=ev["reason"], evaluation=ev)
        log(f"  {states.REPORT}")
        state["report"] = report.run(cloud.cloudwatch, state, ddb=cloud.ddb, table=cloud.state_table)
    except Exception as exc:  # the Catch on every task
        state["error"] = {"Error": type(exc).__name__, "Cause": str(exc)}
        log(f"  {states.REPORT_FAILURE}: {type(exc).__name__}: {exc}")
        state["report"] = report.run(cloud.cloudwatch, state)
        if cloud.sns is not None and cloud.alerts_topic_arn:
            cloud.sns.publish(TopicArn=cloud.alerts_topic_arn, Subject="fruitpipe retrain failed",
                              Message=json.dumps({"execution": started.execution_arn, **state["error"],
                                                  "live_model": "unchanged"}))
        state["failed"] = True
    finally:
        # moto's executor cannot finish a definition with .sync tasks; end the execution we ran by hand.
        cloud.sfn.stop_execution(executionArn=started.execution_arn, cause="run by local_runner")
    return state
