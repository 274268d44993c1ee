"""Where the model looked (fruitpipe.explain): exact gradient, determinism, and the evidence lies on the fruit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fruitpipe import explain
from fruitpipe.labels import LABELS

from .conftest import DEFAULT_MODEL, FRUITS, needs_shared

pytestmark = needs_shared


@pytest.fixture(scope="module")
def clf():
    from fruitpipe.classifier import Classifier
    return Classifier(DEFAULT_MODEL)


def test_logit_gradient_matches_finite_differences(clf) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=clf.head.input_dim).astype(np.float64)

    def logit(v: np.ndarray, c: int) -> float:
        h = v
        for k, b, act in zip(clf.head.kernels, clf.head.biases, clf.head.activations):
            h = h @ k.astype(np.float64) + b
            h = np.maximum(h, 0) if act == "relu" else h
        return float(h[c])

    g = explain.logit_gradient(clf.head, x.astype(np.float32), 3)
    for j in np.argsort(-np.abs(g))[:10]:
        e = np.zeros_like(x)
        e[j] = 1e-3
        assert (logit(x + e, 3) - logit(x - e, 3)) / 2e-3 == pytest.approx(float(g[j]), rel=1e-3, abs=1e-5)


def _fruit_on_plain_background(path, x: int, y: int) -> np.ndarray:
    """A real test photo shrunk to 128x128 (a third of the frame, on whole 32-px cells) on plain grey."""
    canvas = Image.new("RGB", (224, 224), (235, 235, 235))
    canvas.paste(Image.open(path).convert("RGB").resize((128, 128)), (x, y))
    return np.asarray(canvas)


def test_most_of_the_evidence_falls_on_the_fruit(clf) -> None:
    checked = 0
    for label in LABELS:
        for path in sorted((FRUITS / "test" / label).glob("*.jpg"))[:2]:
            for x, y in ((0, 0), (96, 96)):
                image = _fruit_on_plain_background(path, x, y)
                out = explain.explain(clf, image)
                grid = np.array(out["grid"])
                assert grid.shape == (7, 7) and grid.min() >= 0 and grid.sum() == pytest.approx(1, abs=1e-3)
                assert out == explain.explain(clf, image)  # deterministic
                if out["explained_class"] != label:
                    continue  # a wrong answer's evidence is not expected on the fruit
                on_fruit = grid[y // 32:(y + 128) // 32, x // 32:(x + 128) // 32].sum()
                assert on_fruit > 0.5, (path.name, x, y, on_fruit)  # the fruit covers 16 of 49 cells
                checked += 1
    assert checked >= 20


def test_a_model_without_a_block_cannot_be_explained(clf, monkeypatch) -> None:
    monkeypatch.setattr(clf, "block", None)
    with pytest.raises(explain.CannotExplain):
        explain.explain(clf, np.zeros((224, 224, 3), np.uint8))


def test_predict_explain_over_http(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from .service_support import fruit, make_app, make_backend
    with TestClient(make_app(make_backend(tmp_path / "store"))) as client:
        plain = client.post("/predict", files={"file": ("a.jpg", fruit("rottenbanana"), "image/jpeg")}).json()
        assert plain["explanation"] is None
        r = client.post("/predict?explain=true", files={"file": ("a.jpg", fruit("rottenbanana"), "image/jpeg")})
        assert r.status_code == 200
        body = r.json()
        assert body["predicted_class"] == plain["predicted_class"]
        exp = body["explanation"]
        assert exp["explained_class"] == body["predicted_class"] and len(exp["grid"]) == 7
        assert all(len(row) == 7 for row in exp["grid"]) and abs(sum(map(sum, exp["grid"])) - 1) < 1e-2
        bad = client.post("/predict?explain=maybe", files={"file": ("a.jpg", fruit(), "image/jpeg")})
        assert bad.status_code == 422
