"""``fruitpipe compare``: the quick run end to end (real training, real LiteRT, real images), and
its parts (subsets, the round-robin latency)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fruitpipe import compare
from fruitpipe.labels import LABELS

from .conftest import REPO, needs_shared


def test_subset_caps_each_folder_evenly_and_deterministically() -> None:
    items = [(lab, Path(f"/x/{lab}/{i}.jpg")) for lab in ("freshapples", "cat") for i in range(10)]
    picked = compare.subset(items, (4, 2))
    assert [p.name for lab, p in picked if lab == "freshapples"] == ["0.jpg", "2.jpg", "4.jpg", "6.jpg"]
    assert [p.name for lab, p in picked if lab == "cat"] == ["0.jpg", "5.jpg"]
    assert compare.subset(items, None) == items


def test_interleaved_latency_times_every_model_round_robin() -> None:
    calls: list[str] = []
    predictors = {name: (lambda data, name=name: calls.append(name)) for name in ("a", "b", "c")}
    out = compare.interleaved_latency(predictors, [b"1", b"2"], rounds=3)
    assert {n: v["n"] for n, v in out.items()} == {"a": 6, "b": 6, "c": 6}
    timed = calls[3:]  # after one warm-up call each
    # round r starts with model r: a a b b c c | b b c c a a | c c a a b b
    assert timed[0::2] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(v["median_ms"] >= 0 for v in out.values())


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(compare.CompareError, match="unknown variant"):
        compare.select(["resnet_50"], quick=True)


@needs_shared
@pytest.mark.slow
def test_quick_compare_trains_scores_and_times_real_models(tmp_path: Path) -> None:
    full = REPO / "results" / compare.JSON_NAME
    before = full.stat().st_mtime_ns if full.exists() else None
    proc = subprocess.run([sys.executable, "-m", "fruitpipe", "compare", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / compare.QUICK_JSON_NAME).read_text())
    assert (tmp_path / compare.QUICK_CHART_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (full.stat().st_mtime_ns if full.exists() else None) == before  # results/ untouched
    assert result["quick"] is True
    assert list(result["variants"]) == [v.name for v in compare.VARIANTS if v.quick]
    sets = ["fruits/test", "fruits_extra/test", "not_fruit/test"]
    for name, row in result["variants"].items():
        test = row["test"]
        assert list(test["sets"]) == sets, name
        assert all(test["sets"][s]["n"] > 0 for s in sets)
        for key in ("precision", "recall", "fruit_loss_rate", "not_fruit_rejected_rate"):
            assert 0.0 <= test[key] <= 1.0, (name, key)
        assert row["params"] > 10_000 and row["file_bytes"] > 10_000
        assert row["latency"]["n"] > 0 and 0.05 < row["latency"]["median_ms"] < 1000
        assert row["train_seconds"] > 0 and 0.0 <= row["validation"]["accuracy"] <= 1.0
    chance = 1 / len(LABELS)
    mnv2 = result["variants"]["mobilenet_v2_frozen"]
    assert mnv2["test"]["sets"]["fruits/test"]["accuracy"] > 0.8  # a pretrained backbone, even on 40 photos a class
    assert mnv2["test"]["not_fruit_rejected_rate"] > 0.5
    assert 3_000_000 < mnv2["params"] < 5_000_000  # MobileNetV2 1.0: 3.5 M in its file
    cnn = result["variants"]["custom_cnn"]
    assert cnn["test"]["sets"]["fruits/test"]["accuracy"] > 2 * chance  # learnt something from scratch
    assert cnn["file_bytes"] < mnv2["file_bytes"]
