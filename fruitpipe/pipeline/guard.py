"""One retrain at a time.

Two layers: a trigger first asks Step Functions whether an execution is RUNNING and answers
"already running" instead of starting one; and, because two triggers can race between that check
and ``StartExecution``, the state machine's first step repeats the check and lets only the OLDEST
running execution go on (ties broken by ARN), so exactly one of any racing group trains.
"""

from __future__ import annotations

from typing import Any


def running_executions(sfn: Any, state_machine_arn: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in sfn.get_paginator("list_executions").paginate(
            stateMachineArn=state_machine_arn, statusFilter="RUNNING"):
        out += page.get("executions", [])
    return out


def blocking_execution(sfn: Any, state_machine_arn: str, execution_arn: str) -> str | None:
    """The ARN of an older running execution that has precedence over ``execution_arn``, if any."""
    runs = running_executions(sfn, state_machine_arn)
    mine = next((r for r in runs if r["executionArn"] == execution_arn), None)
    others = [r for r in runs if r["executionArn"] != execution_arn]
    if mine is None:  # not listed (eventual consistency): any other running one blocks us
        return others[0]["executionArn"] if others else None
    key = (mine["startDate"], mine["executionArn"])
    older = [r for r in others if (r["startDate"], r["executionArn"]) < key]
    return older[0]["executionArn"] if older else None
