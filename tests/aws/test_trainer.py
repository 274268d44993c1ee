"""The Step Functions trainer against the moto server (the real state machine is part 2's)."""

from __future__ import annotations

import json

import pytest

from fruitpipe.backends.aws import StepFunctionsTrainer, TrainerUnavailable
from fruitpipe.backends.base import RetrainRunning


def test_without_state_machine_start_is_unavailable_and_status_idle(moto_server):
    trainer = StepFunctionsTrainer(None)
    with pytest.raises(TrainerUnavailable, match="FRUITPIPE_STATE_MACHINE_ARN"):
        trainer.start()
    assert trainer.status().state == "idle"


def test_start_then_running_refuses_a_second(moto_server):
    import boto3
    sfn = boto3.client("stepfunctions")
    iam_role = "arn:aws:iam::123456789012:role/sfn"
    definition = {"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": True}}}
    arn = sfn.create_state_machine(name="retrain-test", definition=json.dumps(definition),
                                   roleArn=iam_role)["stateMachineArn"]
    trainer = StepFunctionsTrainer(arn)
    assert trainer.status().state == "idle"
    started = trainer.start("manual")
    assert started.state == "running" and started.run_id.startswith("manual-")
    status = trainer.status()
    assert status.run_id == started.run_id and status.trigger == "manual" and status.state == "running"
    with pytest.raises(RetrainRunning):
        trainer.start("manual")
