"""The AWS ``Trainer``: starts the retrain state machine and reads its latest execution.

``status()`` combines three sources: the newest execution (state, trigger, start/stop), its
history (the stage = the last state entered; the latest SageMaker task scheduled names the training job),
and, while training, ``DescribeTrainingJob`` (secondary status and the metrics SageMaker parsed
from the job's ``name=value`` log lines so far).
"""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import NotRunning, RetrainRunning, RetrainStatus, Trainer
from . import states, trigger


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else (str(value) if value else None)


class StepFunctionsTrainer(Trainer):
    def __init__(self, sfn: Any, sagemaker: Any, state_machine_arn: str) -> None:
        self.sfn, self.sagemaker, self.arn = sfn, sagemaker, state_machine_arn

    def start(self, trigger_name: str = "manual", force: bool = False) -> RetrainStatus:
        # force: the state machine has no "nothing new" check of its own (it always trains)
        res = trigger.start(self.sfn, self.arn, trigger_name)
        if not res.started:
            raise RetrainRunning(f"a retrain is already running ({res.execution_arn})")
        return RetrainStatus(state="running", run_id=res.execution_arn, trigger=trigger_name,
                             stage="prepare", percent=0.0)

    def cancel(self) -> RetrainStatus:
        """``StopExecution`` on the running execution, unless it has entered its gate's decision
        (``Promote?``, ``Publish``, ``Reject`` or the report). Step Functions stops the running
        ``.sync`` SageMaker training job itself when its execution is stopped.

        The check reads the history, then stops: Step Functions has no atomic "stop unless in state X",
        so an execution that enters its decision in between is stopped there. A ``Publish`` Lambda
        already running still finishes (moving ``live.json`` is idempotent), only ``Report`` is
        skipped; the local backend's decision lock has no such window.

        Raises:
            NotRunning: no execution is running, or it has reached its gate's decision.
        """
        runs = self.sfn.list_executions(stateMachineArn=self.arn, statusFilter="RUNNING",
                                        maxResults=1).get("executions", [])
        if not runs:
            raise NotRunning("no retrain is running")
        arn = runs[0]["executionArn"]
        entered = [ev["stateEnteredEventDetails"]["name"] for ev in self._history(arn)
                   if ev.get("stateEnteredEventDetails")]
        if set(entered) & {states.PROMOTE, states.PUBLISH, states.REJECT, states.REPORT}:
            raise NotRunning(f"{arn} has reached its gate's decision; it can no longer be cancelled")
        self.sfn.stop_execution(executionArn=arn, error="Cancelled", cause="cancelled by an admin (POST /retrain/cancel)")
        return self.status()

    def _history(self, execution_arn: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for page in self.sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
            events += page.get("events", [])
        return events

    def status(self) -> RetrainStatus:
        runs = self.sfn.list_executions(stateMachineArn=self.arn, maxResults=1).get("executions", [])
        if not runs:
            return RetrainStatus()
        ex = self.sfn.describe_execution(executionArn=runs[0]["executionArn"])
        inp = _json(ex.get("input"))
        st = RetrainStatus(run_id=ex["executionArn"], trigger=inp.get("trigger"),
                           started=_iso(ex.get("startDate")), finished=_iso(ex.get("stopDate")))
        stage, percent, version, log = None, 0.0, None, []
        for ev in self._history(ex["executionArn"]):
            entered = ev.get("stateEnteredEventDetails")
            if entered and entered.get("name") in states.STAGE:
                stage, percent = states.STAGE[entered["name"]]
                log.append(f"{_iso(ev.get('timestamp'))} {entered['name']}")
            scheduled = ev.get("taskScheduledEventDetails")
            if scheduled and scheduled.get("resourceType") == "sagemaker":
                # every attempt of Train gets its own job name: the latest one scheduled is the job
                version = _json(scheduled.get("parameters")).get("TrainingJobName") or version
        st.stage, st.percent, st.log_tail = stage, float(percent), log[-20:]
        if version:
            st.result["training_job"] = version
            try:
                job = self.sagemaker.describe_training_job(TrainingJobName=version)
                st.result["training_status"] = job.get("TrainingJobStatus")
                st.result["training_secondary_status"] = job.get("SecondaryStatus")
                st.result["training_metrics"] = {m["MetricName"]: m["Value"]
                                                 for m in job.get("FinalMetricDataList", [])}
            except Exception as exc:  # noqa: BLE001 - status must answer even if SageMaker does not
                st.result["training_status"] = f"unknown ({type(exc).__name__})"
        status = ex["status"]
        if status == "RUNNING":
            st.state = "running"
        elif status == "SUCCEEDED":
            out = _json(ex.get("output"))
            report = out.get("report") or {}
            outcome = report.get("outcome") or ("skipped" if not (out.get("prepare") or {}).get("proceed", True)
                                                else None)
            st.state = "succeeded" if outcome == "promoted" else "rejected" if outcome == "rejected" else "idle"
            st.result.update({"outcome": outcome, "evaluation": out.get("evaluation"),
                              "publish": out.get("publish")})
            st.percent = 100.0
        elif status == "ABORTED":
            st.state = "cancelled"
            st.result.update({"outcome": "cancelled", "error": ex.get("error"), "cause": ex.get("cause")})
        else:
            st.state = "failed"
            st.result.update({"outcome": "failed", "error": ex.get("error"), "cause": ex.get("cause")})
            # a failed training job: its description is the cause; its FailureReason is the news
            reason = _json(ex.get("cause")).get("FailureReason")
            if reason:
                st.result["failure_reason"] = reason
        return st
