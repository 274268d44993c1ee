"""Automatic rollback on AWS: the ``PostPromotion`` composite alarm (5xx rate, p95 latency,
not-fruit beyond the previous version on the same requests, label-based accuracy) -> EventBridge -> the rollback Lambda -> :func:`handle`.

It re-activates ``live.json``'s ``previous`` version (through :func:`fruitpipe.pipeline.publish.move_pointer`,
which verifies that version's files first) only while the live version is within ``window_seconds``
of becoming live: an alarm later than that is an operations matter, not a bad promotion. It never
rolls back a rollback (the pointer's ``reason`` says which it was). Every decision is sent to the
alerts topic.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..rollback import REASON_PREFIX
from . import publish, s3util


def handle(event: dict[str, Any], *, s3: Any, sns: Any, models_bucket: str, topic_arn: str | None,
           window_seconds: float = 7200.0, now: datetime | None = None) -> dict[str, Any]:
    """Roll back if the event's alarm fired within the window after a promotion. Returns the outcome
    (``rolled_back``, ``from``, ``to`` or ``skipped`` with the reason)."""
    now = now or datetime.now(timezone.utc)
    alarm = str((event.get("detail") or {}).get("alarmName") or event.get("resources", ["an alarm"])[0])
    pointer = s3util.get_json(s3, models_bucket, s3util.LIVE_POINTER) or {}
    live, previous = pointer.get("version"), pointer.get("previous")
    outcome: dict[str, Any] = {"alarm": alarm, "live": live, "rolled_back": False}
    try:
        updated = datetime.fromisoformat(str(pointer.get("updated", "")).replace("Z", "+00:00"))
    except ValueError:
        updated = None
    if not live or not previous:
        outcome["skipped"] = "no previous version to return to"
    elif str(pointer.get("reason", "")).startswith(REASON_PREFIX):
        outcome["skipped"] = f"{live} is itself a rollback; not rolling back again"
    elif updated is None or (now - updated).total_seconds() > window_seconds:
        outcome["skipped"] = f"{live} became live more than {window_seconds:.0f} s ago: outside the rollback window"
    else:
        reason = f"{REASON_PREFIX}: {alarm} fired {int((now - updated).total_seconds())} s after {live} went live"
        publish.move_pointer(s3, models_bucket, previous, reason=reason)
        outcome.update(rolled_back=True, to=previous, reason=reason)
        outcome["from"] = live
    if topic_arn:
        text = (f"Rolled back {live} -> {previous}: {outcome['reason']}" if outcome["rolled_back"]
                else f"No rollback on {alarm}: {outcome['skipped']}")
        sns.publish(TopicArn=topic_arn, Subject="fruitpipe: automatic rollback"[:100], Message=text)
    return outcome
