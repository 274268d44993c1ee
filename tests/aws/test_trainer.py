"""The Step Functions trainer against the moto server (the real state machine is part 2's):
start, one run at a time, cancel; and the 501 stub of a deployment without a state machine."""

from __future__ import annotations

import json

import pytest

from fruitpipe.backends.aws import NoStateMachineTrainer, TrainerUnavailable
from fruitpipe.backends.base import NotRunning, RetrainRunning
from fruitpipe.pipeline.trainer import StepFunctionsTrainer


def test_without_state_machine_start_and_cancel_are_unavailable_and_status_idle(moto_server):
    trainer = NoStateMachineTrainer()
    for call in (trainer.start, trainer.cancel):
        with pytest.raises(TrainerUnavailable, match="FRUITPIPE_STATE_MACHINE_ARN"):
            call()
    assert trainer.status().state == "idle"


def _trainer(definition: dict) -> StepFunctionsTrainer:
    import boto3
    sfn = boto3.client("stepfunctions")
    arn = sfn.create_state_machine(name="retrain-test", definition=json.dumps(definition),
                                   roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    return StepFunctionsTrainer(sfn, boto3.client("sagemaker"), arn)


def test_start_then_running_refuses_a_second_and_cancel_stops_it(moto_server):
    trainer = _trainer({"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": True}}})
    assert trainer.status().state == "idle"
    with pytest.raises(NotRunning, match="no retrain is running"):
        trainer.cancel()
    started = trainer.start("manual")
    assert started.state == "running" and "manual-" in started.run_id
    status = trainer.status()
    assert status.run_id == started.run_id and status.trigger == "manual" and status.state == "running"
    with pytest.raises(RetrainRunning):
        trainer.start("manual")
    cancelled = trainer.cancel()
    assert cancelled.state == "cancelled" and cancelled.result["outcome"] == "cancelled"
    assert trainer.status().state == "cancelled"
    with pytest.raises(NotRunning):
        trainer.cancel()
    assert trainer.start("manual").state == "running"  # the slot is free again
