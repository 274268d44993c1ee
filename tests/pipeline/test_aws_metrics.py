"""The API's EMF metrics: real FastAPI app + the middleware, EMF lines captured from stdout."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient

from fruitpipe import aws_metrics


def emf_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{") and "_aws" in line]


def metric(lines: list[dict], name: str) -> tuple[float, dict]:
    for doc in lines:
        names = [m["Name"] for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]]
        if name in names:
            value = doc[name][0] if isinstance(doc[name], list) else doc[name]
            return value, {k: v for k, v in doc.items() if k not in ("_aws", name)}
    raise AssertionError(f"no {name} in {lines}")


def test_prediction_metrics_with_drift_deltas(capsys):
    app = FastAPI()

    @app.post("/predict")
    def predict() -> dict:
        return {"predicted_class": "rottenbanana", "confidence": 0.7, "verdict": "rotten",
                "model_version": "v1", "probabilities": {}}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    reads = []
    cache = aws_metrics.BaselineCache(lambda: reads.append(1) or {"baseline": {"mean_confidence": 0.9,
                                                                                "not_fruit_rate": 0.1}})
    app.add_middleware(aws_metrics.PredictionMetricsMiddleware, baseline=cache)
    client = TestClient(app, raise_server_exceptions=False)
    capsys.readouterr()
    assert client.post("/predict").json()["verdict"] == "rotten"
    assert client.post("/predict").status_code == 200
    lines = emf_lines(capsys.readouterr().out)
    assert len(reads) == 1, "the baseline is cached, not re-read per request"
    value, dims = metric(lines, "ConfidenceDelta")
    assert abs(value - (0.7 - 0.9)) < 1e-9 and dims["service"] == aws_metrics.API_SERVICE
    assert metric(lines, "NotFruitExcess")[0] == -0.1
    assert metric(lines, "Predictions")[1]["class"] == "rottenbanana"
    assert metric(lines, "Verdicts")[1]["verdict"] == "rotten"
    assert metric(lines, "Latency")[0] > 0
    assert client.get("/boom").status_code == 500
    assert metric(emf_lines(capsys.readouterr().out), "Errors")[0] == 1.0


def test_no_baseline_no_drift_deltas():
    out = aws_metrics.prediction_metrics({"predicted_class": "freshapples", "confidence": 0.99,
                                          "verdict": "not_fruit"}, 3.0, {})
    names = [m[0] for m in out]
    assert "ConfidenceDelta" not in names and "NotFruitExcess" not in names
    assert ("NotFruit", 1.0, "Count", {}) in out
