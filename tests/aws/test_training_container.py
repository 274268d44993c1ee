"""The training image's entry point under SageMaker's container contract, without the toolkit:
``ENTRYPOINT`` + ``train``, no ``SM_*`` variable, everything under the real ``/opt/ml`` (a job
folder bind-mounted there in a private mount namespace, tests/helpers/aws_emulation.py). The full
job under this contract runs in tests/aws/test_state_machine.py."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.aws_emulation import image_entrypoint, run_container


def layout(root: Path, channels: dict[str, dict], hyperparameters: dict[str, str]) -> Path:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    for name in channels:
        (root / "input" / "data" / name).mkdir(parents=True)
    (root / "model").mkdir()
    (root / "output" / "data").mkdir(parents=True)
    return root


def test_entrypoint_is_the_dockerfiles():
    assert image_entrypoint()[1:] == ["-m", "training_job"]


def test_train_argument_without_channels_fails_with_a_reason(tmp_path):
    job = layout(tmp_path / "job", {}, {})
    proc = run_container(job, {}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unrecognized arguments" not in proc.stderr  # `train` is accepted
    assert "need --data" in (job / "output" / "failure").read_text()


def test_config_and_channels_come_from_opt_ml(tmp_path):
    """The train channel is found (no usage error) and hyperparameters.json is read: an unknown
    hyperparameter fails the job, and the reason lands in output/failure (FailureReason)."""
    job = layout(tmp_path / "job", {"train": {"TrainingInputMode": "File"}}, {"epochz": "3"})
    proc = run_container(job, {}, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "unknown hyperparameter 'epochz'" in (job / "output" / "failure").read_text()
    assert not any((job / "model").iterdir())


def test_emulated_create_training_job_validates_like_sagemaker(tmp_path):
    """The emulation refuses what SageMaker refuses: a request botocore's model rejects, and a
    job name used before (the reason a retried Train needs a new name)."""
    import pytest
    from moto.sagemaker.exceptions import ValidationError

    from tests.helpers.aws_emulation import TrainingJobs

    class NoS3:
        def __getattr__(self, name):
            raise RuntimeError("no S3 here")

    jobs = TrainingJobs(NoS3(), tmp_path)
    with pytest.raises(ValidationError, match="Missing required parameter"):
        jobs.create({"TrainingJobName": "j-1"})
    request = {"TrainingJobName": "j-1", "RoleArn": "arn:aws:iam::123456789012:role/r",
               "AlgorithmSpecification": {"TrainingImage": "img:1", "TrainingInputMode": "File"},
               "OutputDataConfig": {"S3OutputPath": "s3://b/runs/"},
               "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
               "StoppingCondition": {"MaxRuntimeInSeconds": 60}}
    assert jobs.create(request)["TrainingJobArn"].endswith(":training-job/j-1")
    with pytest.raises(ValidationError, match="must be unique"):
        jobs.create(request)
