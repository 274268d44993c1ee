"""Starting a retrain from any trigger: manual, schedule, new data, drift.

Every trigger goes through :func:`start`, which answers "already running" instead of starting a
second execution (the state machine's first step re-checks, see :mod:`.guard`).

New data is a periodic check (EventBridge rate rule) of ingest's DynamoDB counter against the
threshold, rather than a DynamoDB stream or a call from ingest: it needs no change to ingest or the
table, costs one GetItem per period, and can never fire once per image; a retrain starting up to one
period late does not matter.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from . import guard
from .prepare import COUNTER_ID

TRIGGERS = ("manual", "schedule", "new-data", "drift")


@dataclass
class TriggerResult:
    started: bool
    trigger: str
    execution_arn: str | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def start(sfn: Any, state_machine_arn: str, trigger: str, detail: dict[str, Any] | None = None) -> TriggerResult:
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}; expected one of {', '.join(TRIGGERS)}")
    running = guard.running_executions(sfn, state_machine_arn)
    if running:
        return TriggerResult(False, trigger, running[0]["executionArn"], "already running")
    name = f"{trigger}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    resp = sfn.start_execution(stateMachineArn=state_machine_arn, name=name,
                               input=json.dumps({"trigger": trigger, "detail": detail or {}}))
    return TriggerResult(True, trigger, resp["executionArn"], "started")


def new_images(ddb: Any, table: str) -> int:
    item = ddb.get_item(TableName=table, Key={"id": {"S": COUNTER_ID}}).get("Item")
    return int(item["count"]["N"]) if item and "count" in item else 0


def handle_event(event: dict[str, Any], *, sfn: Any, ddb: Any, state_machine_arn: str,
                 table: str | None, threshold: int) -> dict[str, Any]:
    """The trigger Lambda: an EventBridge event (schedule, new-data check, alarm state change)."""
    if event.get("source") == "aws.cloudwatch" and event.get("detail-type") == "CloudWatch Alarm State Change":
        detail = event.get("detail", {})
        if detail.get("state", {}).get("value") != "ALARM":
            return {"started": False, "trigger": "drift", "reason": "alarm is not in ALARM"}
        return start(sfn, state_machine_arn, "drift", {"alarm": detail.get("alarmName")}).as_dict()
    trigger = event.get("trigger", "manual")
    if trigger == "new-data":
        if not table:
            return {"started": False, "trigger": trigger, "reason": "no state table configured"}
        n = new_images(ddb, table)
        if n < threshold:
            return {"started": False, "trigger": trigger, "reason": f"{n} new images < threshold {threshold}"}
        return start(sfn, state_machine_arn, trigger, {"new_images": n, "threshold": threshold}).as_dict()
    return start(sfn, state_machine_arn, trigger).as_dict()
