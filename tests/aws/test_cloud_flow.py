"""The whole cloud flow (``make cloud-demo``) as an integration test, at a smaller size: moto server,
ingest handler on S3 events, the retrain steps with the training job as a local process, gate,
publish, and the API handler through Mangum serving the published version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_shared

REPO = Path(__file__).resolve().parents[2]
pytestmark = [needs_shared, pytest.mark.slow]


def test_cloud_flow(tmp_path):
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "cloud_demo.py"), "--initial", "40",
                           "--more", "30", "--json", str(out)], capture_output=True, text=True, timeout=480,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["ingest_1"]["outcomes"] == {"added": 240} and s["ingest_2"]["outcomes"] == {"added": 30}
    assert s["ingest_1"]["emf"]["ImagesAdded"] == 240
    run1, run2 = s["runs"]
    assert run1["report"]["outcome"] == "promoted" and run1["evaluation"]["live_version"] is None
    assert run1["training"]["metrics"]["embedded_new"] == 240 and run1["training"]["metrics"]["cached"] == 0
    # the second retrain embeds only the 30 new images; the 240 come from the S3 cache
    assert run2["training"]["metrics"]["embedded_new"] == 30 and run2["training"]["metrics"]["cached"] == 240
    assert run2["evaluation"]["cache"]["uploaded"] == 1
    assert run2["report"]["outcome"] in ("promoted", "rejected")
    assert run2["evaluation"]["live_version"] == run1["evaluation"]["candidate_version"]
    expected_live = (run2 if run2["report"]["outcome"] == "promoted" else run1)["evaluation"]["candidate_version"]
    assert s["live_version"] == expected_live
    api = s["api"]
    assert api["predict_status"] == 200 and api["prediction"]["model_version"] == expected_live
    assert api["model_info"]["version"] == expected_live
    assert api["emf"]["Predictions"] == 1 and "Latency" in api["emf"]
    assert {"RetrainOutcome", "CandidateAccuracy", "EmbeddedNew"} <= set(s["retrain_metric_names"])
