"""``fruitpipe predict | evaluate | train`` as a user runs them: exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import FRUITS, REPO, needs_shared


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fruitpipe", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@needs_shared
def test_predict_bad_and_good_images(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    good = sorted((FRUITS / "test" / "freshbanana").glob("*.jpg"))[0]
    proc = cli("predict", str(good), str(bad))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "bad.jpg" in lines[0] and "not_an_image" in lines[0]
    out = json.loads(proc.stdout.splitlines()[0])
    assert out["predicted_class"] == "freshbanana" and out["verdict"] == "fresh"


@needs_shared
def test_evaluate_json_is_one_object(tmp_path: Path) -> None:
    folder = tmp_path / "freshoranges"
    folder.mkdir()
    for src in sorted((FRUITS / "test" / "freshoranges").glob("*.jpg"))[:3]:
        (folder / src.name).symlink_to(src)
    proc = cli("evaluate", "--data", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 3 and result["ood_n"] == 0 and result["model_version"]


@needs_shared
def test_evaluate_not_fruit_only_folder_has_no_fruit_accuracy(tmp_path: Path) -> None:
    """A folder of not-fruit images only: nothing to score as fruit (n/a, JSON null, not 0%), the
    rejection rate still reported."""
    for kind in ("cat", "carrot"):
        (tmp_path / kind).mkdir()
        for src in sorted((FRUITS.parent / "not_fruit" / kind).glob("*.jpg"))[:2]:
            (tmp_path / kind / src.name).symlink_to(src)
    proc = cli("evaluate", "--data", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 0 and result["ood_n"] == 4 and 0.0 <= result["ood_rejected_rate"] <= 1.0
    for key in ("accuracy", "head_accuracy", "macro_f1", "fruit_rejected_rate"):
        assert result[key] is None, key
    for label, m in result["per_class"].items():  # no photo of any class: no recall or F1 (null, not 0)
        assert m["n"] == 0 and m["recall"] is None and m["f1"] is None, label
        assert m["precision"] is None or m["precision"] == 0.0, label  # 0.0: a not-fruit image answered as it
    proc = cli("evaluate", "--data", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "accuracy=n/a" in proc.stdout and "no fruit images to score" in proc.stdout
    assert f"not-fruit images: n=4 rejected={result['ood_rejected_rate']:.4f}" in proc.stdout
    assert "0.0000" not in proc.stdout.split("not-fruit images")[0] and "recall=" not in proc.stdout


@needs_shared
def test_evaluate_one_split_of_a_set(tmp_path: Path) -> None:
    """``--data <set>/@split-test`` scores the photos of that split only (fruitpipe.splits), the
    figure results/eval_sets_default_test.json records for the shipped model; an unknown split or
    a set without MANIFEST.csv is one line and exit 2."""
    recorded = json.loads((REPO / "results" / "eval_sets_default_test.json").read_text())["sets"]["fruits_extra/test"]
    proc = cli("evaluate", "--data", str(FRUITS.parent / "fruits_extra" / "@split-test"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["n"], result["ood_n"]) == (126, 0) and result["accuracy"] == recorded["accuracy"]
    proc = cli("evaluate", "--data", str(FRUITS.parent / "fruits_extra" / "@split-nope"))
    assert proc.returncode == 2 and proc.stdout == "" and "unknown split" in proc.stderr
    (tmp_path / "freshapples").mkdir()
    proc = cli("evaluate", "--data", str(tmp_path / "@split-test"))
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1, proc.stderr


def test_evaluate_missing_folder_exits_2(tmp_path: Path) -> None:
    proc = cli("evaluate", "--data", str(tmp_path / "nope"), "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "not a folder" in proc.stderr


def test_evaluate_empty_folder_exits_2(tmp_path: Path) -> None:
    proc = cli("evaluate", "--data", str(tmp_path), "--json")
    assert proc.returncode == 2 and "no usable images" in proc.stderr


def test_train_refuses_non_empty_out_and_bad_hyperparameter(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep me")
    proc = cli("train", "--data", str(tmp_path / "data"), "--out", str(out))
    assert proc.returncode == 2 and "not an empty folder" in proc.stderr
    assert (out / "x").read_text() == "keep me"
    proc = cli("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o2"), "--set", "nope=1")
    assert proc.returncode == 2 and "bad hyperparameter" in proc.stderr


def test_predict_tampered_model_exits_2(tmp_path: Path) -> None:
    import shutil
    from .conftest import DEFAULT_MODEL
    model = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL, model)
    (model / "head.npz").write_bytes(b"0")
    img = tmp_path / "a.png"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(img)
    proc = cli("predict", str(img), "--model", str(model))
    assert proc.returncode == 2 and "modified" in proc.stderr
