"""State names shared by the CDK state machine, the status reader and the local demo runner."""

from __future__ import annotations

PREPARE = "Prepare"
ALREADY_RUNNING = "AlreadyRunning"
PROCEED = "Proceed?"
WARM_START = "WarmStart?"
TRAIN = "Train"  # cold: no live model yet
TRAIN_WARM = "TrainWarmStart"  # the live bundle in the base_model channel
EVALUATE = "EvaluateAndGate"
PROMOTE = "Promote?"
PUBLISH = "Publish"
REJECT = "Reject"
REPORT = "ReportOutcome"
DONE = "Done"
REPORT_FAILURE = "ReportFailure"
NOTIFY_FAILURE = "NotifyFailure"
FAILED = "RetrainFailed"

# The order of a run that trains, and the percentage shown when each state is entered.
ORDER = (PREPARE, TRAIN, EVALUATE, PUBLISH, REPORT)
STAGE = {PREPARE: ("prepare", 5), TRAIN: ("training", 15), TRAIN_WARM: ("training", 15), EVALUATE: ("evaluate", 80),
         PUBLISH: ("publish", 92), REJECT: ("reject", 92), REPORT: ("report", 97),
         REPORT_FAILURE: ("failed", 100), NOTIFY_FAILURE: ("failed", 100)}
