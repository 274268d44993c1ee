"""Step 5: the pipeline's outcome metrics (``cloudwatch:PutMetricData``, namespace Fruitpipe/Retrain).

One call per run, whatever the outcome, so the dashboard and the training-failure alarm see every
run: ``RetrainOutcome`` (dimension ``Outcome`` = promoted | rejected | failed | skipped, value 1),
and for runs that trained: ``CandidateAccuracy``, ``CandidateMacroF1``, ``LiveAccuracy``,
``LiveMacroF1``, ``ClassF1`` (dimension ``Class``), ``TrainingImages``, ``NewImages``,
``EmbeddedNew`` (cache shards added), ``DurationSeconds``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .prepare import consume_counter

NAMESPACE = "Fruitpipe/Retrain"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def outcome_of(state: dict[str, Any]) -> str:
    if state.get("error"):
        return "failed"
    if not state.get("prepare", {}).get("proceed", True):
        return "skipped"
    return "promoted" if state.get("evaluation", {}).get("promote") else "rejected"


def metric_data(state: dict[str, Any], now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(timezone.utc)
    outcome = outcome_of(state)
    data: list[dict[str, Any]] = [{"MetricName": "RetrainOutcome", "Value": 1, "Unit": "Count",
                                   "Dimensions": [{"Name": "Outcome", "Value": outcome}]}]
    prep, ev = state.get("prepare", {}), state.get("evaluation", {})

    def add(name: str, value: Any, unit: str = "None", dims: list[dict[str, str]] | None = None) -> None:
        v = _num(value)
        if v is not None:
            data.append({"MetricName": name, "Value": v, "Unit": unit, **({"Dimensions": dims} if dims else {})})

    cand, live = ev.get("candidate") or {}, ev.get("live") or {}
    add("CandidateAccuracy", cand.get("accuracy"))
    add("CandidateMacroF1", cand.get("macro_f1"))
    add("LiveAccuracy", live.get("accuracy"))
    add("LiveMacroF1", live.get("macro_f1"))
    for cls, f1 in (cand.get("per_class_f1") or {}).items():
        add("ClassF1", f1, dims=[{"Name": "Class", "Value": cls}])
    add("TrainingImages", prep.get("n_train"), "Count")
    add("NewImages", prep.get("new_images"), "Count")
    add("EmbeddedNew", (ev.get("cache") or {}).get("uploaded"), "Count")
    started = prep.get("started")
    if started:
        add("DurationSeconds", (now - datetime.fromisoformat(started)).total_seconds(), "Seconds")
    for d in data:
        d["Timestamp"] = now
    return data


def run(cloudwatch: Any, state: dict[str, Any], namespace: str = NAMESPACE, *, ddb: Any = None,
        table: str | None = None) -> dict[str, Any]:
    """Write the run's metrics; a run that ended (promoted or rejected) consumes the new-images
    counter by what Prepare read (``new_images``), a failed or skipped one leaves it for the next."""
    data = metric_data(state)
    for i in range(0, len(data), 20):  # keep each call small
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=data[i:i + 20])
    outcome = outcome_of(state)
    out: dict[str, Any] = {"outcome": outcome, "metrics_written": len(data)}
    if outcome in ("promoted", "rejected") and ddb is not None and table:
        consumed = int((state.get("prepare") or {}).get("new_images") or 0)
        consume_counter(ddb, table, consumed)
        out["new_images_consumed"] = consumed
    if state.get("error"):
        err = state["error"]
        out["error"] = str(err.get("Error", "")) if isinstance(err, dict) else str(err)
        out["cause"] = (str(err.get("Cause", "")) if isinstance(err, dict) else "")[:2000]
    return out
