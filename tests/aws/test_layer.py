"""Layer smoke test: the x86_64 layer + function asset, built for CPython 3.12, classify a real
image through the Lambda handler in pyenv's Python 3.12 with nothing else on its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FRUITS, needs_shared

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, needs_shared]
PY312_ENV = {"PYENV_VERSION": "3.12.1"}


def _builder():
    sys.path.insert(0, str(REPO / "scripts"))
    import build_layer
    return build_layer


@pytest.fixture(scope="session")
def assets() -> dict[str, Path]:
    """Build (or reuse) the layer and the function asset; PyPI is needed for the first build."""
    b = _builder()
    if b.python312() is None:
        pytest.skip("no CPython 3.12 (pyenv 3.12.1) on this machine")
    layer = b.ensure_layer("x86_64")
    function = b.ensure_function()
    runtime = b.ensure_runtime_stand_in("x86_64")
    report = b.size_report("x86_64")
    return {"layer": layer / "python", "function": function, "runtime": runtime, "report": report}


def test_assets_fit_the_size_target(assets):
    report = assets["report"]
    assert report["total_mb"] <= 150, report
    assert not (assets["layer"] / "boto3").exists()  # the runtime provides it
    assert not (assets["layer"] / "tensorflow").exists()
    assert (assets["function"] / "backbone").is_dir() and (assets["function"] / "models" / "default").is_dir()


def test_isolated_python312_classifies_through_the_handler(assets, aws):
    image = sorted((FRUITS / "test" / "freshbanana").glob("*.jpg"))[0]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **PY312_ENV,
           **{k: os.environ[k] for k in os.environ if k.startswith("AWS_")}, **aws["env"],
           "FRUITPIPE_BACKBONE": str(assets["function"] / "backbone"),
           "FRUITPIPE_MODEL_CACHE": str(Path(aws["cache"]))}
    proc = subprocess.run(
        ["python3.12", "-I", "-S", str(REPO / "scripts" / "lambda_smoke.py"), str(assets["function"]),
         str(assets["layer"]), str(assets["runtime"]), str(image)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["python"].startswith("3.12")
    assert out["status"] == 200, out
    assert out["body"]["predicted_class"] == "freshbanana"
    for name, path in out["paths"].items():  # everything came from the assets, nothing from the venv
        assert path.startswith((str(assets["layer"]), str(assets["function"]))), (name, path)
