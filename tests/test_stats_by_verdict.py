"""Live statistics count an image answered `not_fruit` by its verdict, never under the head's class."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from PIL import Image

from fruitpipe.api.metrics import Metrics
from fruitpipe.aws_metrics import prediction_metrics
from fruitpipe.labels import LABELS

from .conftest import needs_shared
from .service_support import fruit, make_app, make_backend


def astronaut() -> bytes:
    from skimage import data
    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_metrics_count_not_fruit_by_verdict_only() -> None:
    m = Metrics()
    m.record_prediction("rottenbanana", "not_fruit")
    m.record_prediction("freshapples", "fresh")
    m.record_prediction("rottenoranges", "uncertain")  # still a fruit answer: counted under its class
    s = m.stats()
    assert s["by_class"] == {**dict.fromkeys(LABELS, 0), "freshapples": 1, "rottenoranges": 1}
    assert s["by_verdict"]["not_fruit"] == 1 and s["predictions"] == 3
    text = m.render().decode()
    assert 'fruitpipe_predictions_total{predicted_class="not_fruit",verdict="not_fruit"} 1.0' in text
    assert 'predicted_class="rottenbanana"' not in text


def test_emf_prediction_metric_uses_the_verdict_for_not_fruit() -> None:
    rows = prediction_metrics({"predicted_class": "rottenbanana", "verdict": "not_fruit", "confidence": 0.4}, 5.0, {})
    assert ("Predictions", 1.0, "Count", {"class": "not_fruit"}) in rows
    rows = prediction_metrics({"predicted_class": "freshbanana", "verdict": "fresh", "confidence": 0.9}, 5.0, {})
    assert ("Predictions", 1.0, "Count", {"class": "freshbanana"}) in rows


@needs_shared
def test_stats_after_a_real_not_fruit_photo(tmp_path) -> None:
    with TestClient(make_app(make_backend(tmp_path / "store"))) as client:
        body = client.post("/predict", files={"file": ("a.jpg", astronaut(), "image/jpeg")}).json()
        assert body["verdict"] == "not_fruit"
        client.post("/predict", files={"file": ("b.jpg", fruit("freshapples"), "image/jpeg")})
        s = client.get("/stats").json()
    assert sum(s["by_class"].values()) == 1 and s["by_class"]["freshapples"] == 1
    assert s["by_verdict"]["not_fruit"] == 1
