"""The retrain step Lambdas run from the built assets alone: pyenv's CPython 3.12 with only the
function asset, the layer and the runtime's boto3 on its path, against the moto server
(prepare → evaluate + gate → publish → report), as the state machine calls them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.aws.test_layer import PY312_ENV, assets  # noqa: F401  (the built assets fixture)
from tests.conftest import DEFAULT_MODEL, needs_shared

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, needs_shared]


def test_step_handlers_run_from_the_lambda_assets(assets, aws, tmp_path):  # noqa: F811
    from tests.pipeline.conftest import archive, fill_dataset
    fill_dataset(aws["s3"], aws["data"], per_class=6)
    aws["s3"].put_object(Bucket=aws["models"], Key="runs/job-1/output/model.tar.gz", Body=archive(DEFAULT_MODEL))
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **PY312_ENV,
           **{k: os.environ[k] for k in os.environ if k.startswith("AWS_")}, **aws["env"],
           "FRUITPIPE_BACKBONE": str(assets["function"] / "backbone"),
           "FRUITPIPE_MIN_IMAGES_PER_CLASS": "2", "FRUITPIPE_VALIDATION_PERCENT": "50",
           "FRUITPIPE_RETRAIN_NAMESPACE": "Smoke/Retrain", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        ["python3.12", "-I", "-S", str(REPO / "scripts" / "pipeline_lambda_smoke.py"), str(assets["function"]),
         str(assets["layer"]), str(assets["runtime"]), f"s3://{aws['models']}/runs/job-1/output/model.tar.gz"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = {d["step"]: d for d in map(json.loads, [x for x in proc.stdout.splitlines() if x.startswith('{"step"')])}
    assert steps["prepare"]["out"]["proceed"] and steps["prepare"]["out"]["n_validation"] > 0
    ev = steps["evaluate"]["out"]
    manifest = json.loads((DEFAULT_MODEL / "manifest.json").read_text())
    assert ev["promote"] and ev["candidate_version"] == manifest["version"] and ev["candidate"]["accuracy"] > 0.8
    assert steps["publish"]["out"]["pointer_moved"]
    live = json.loads(aws["s3"].get_object(Bucket=aws["models"], Key="live.json")["Body"].read())
    assert live["version"] == manifest["version"] and live["baseline"]["n"] == ev["n_eval_images"]
    assert steps["report"]["out"]["outcome"] == "promoted" and steps["report"]["python"].startswith("3.12")
    for name, path in steps["report"]["paths"].items():
        assert path.startswith((str(assets["layer"]), str(assets["function"]))), (name, path)
