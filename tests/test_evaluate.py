"""``evaluate``: the metrics dict the gate and the CLI share."""

from __future__ import annotations

from pathlib import Path

import pytest

from fruitpipe.evaluation import evaluate, metrics_from_predictions
from fruitpipe.labels import LABELS

from .conftest import FRUITS, needs_shared


def test_metrics_count_rejected_fruit_as_wrong() -> None:
    true = ["freshapples", "freshapples", "rottenbanana", "not_fruit", "not_fruit"]
    pred = ["freshapples", "freshapples", "rottenbanana", "freshbanana", "freshapples"]
    rejected = [False, True, False, True, False]
    m = metrics_from_predictions(true, pred, rejected, "v1")
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(2 / 3)
    assert m["head_accuracy"] == 1.0  # the rejected apple was classified right: a rejection loss
    assert m["ood_n"] == 2 and m["ood_rejected_rate"] == 0.5
    assert m["fruit_rejected_rate"] == pytest.approx(1 / 3)
    assert m["per_class"]["freshapples"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "n": 2}
    assert m["confusion"]["matrix"][0][-1] == 1  # the rejected apple is in the not_fruit column
    assert m["model_version"] == "v1"


def test_metrics_without_fruit_have_no_fruit_figures() -> None:
    m = metrics_from_predictions(["not_fruit", "cat"], ["freshapples", "rottenbanana"], [True, False])
    assert m["n"] == 0 and m["ood_n"] == 2 and m["ood_rejected_rate"] == 0.5
    assert m["accuracy"] is None and m["head_accuracy"] is None and m["macro_f1"] is None
    assert m["fruit_rejected_rate"] is None


@needs_shared
def test_evaluate_folder_json_fields(tmp_path: Path, classifier) -> None:
    for label in LABELS:
        (tmp_path / label).mkdir()
        for src in sorted((FRUITS / "test" / label).glob("*.jpg"))[:3]:
            (tmp_path / label / src.name).symlink_to(src)
    ood = tmp_path / "not_fruit"
    ood.mkdir()
    from PIL import Image
    import numpy as np
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(ood / "noise.jpg")
    (ood / "broken.jpg").write_bytes(b"nope")
    m = evaluate(classifier, tmp_path)
    for key in ("n", "accuracy", "macro_f1", "per_class", "confusion", "ood_n", "ood_rejected_rate",
                "fruit_rejected_rate", "model_version"):
        assert key in m
    assert m["n"] == 18 and m["ood_n"] == 1 and m["skipped"] == {"not_an_image": 1}
    assert m["ood_rejected_rate"] == 1.0
    assert m["accuracy"] >= 15 / 18
    assert set(m["per_class"]) == set(LABELS)
    assert m["model_version"] == classifier.version
