"""The training job end to end on a small real subset, in the SageMaker layout."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fruitpipe import bundle
from fruitpipe.labels import LABELS

from .conftest import FRUITS, REPO, needs_shared

PER_CLASS = 12


def small_dataset(root: Path, split: str, per_class: int, bad: bool = False) -> Path:
    for label in LABELS:
        folder = root / label
        folder.mkdir(parents=True)
        for src in sorted((FRUITS / split / label).glob("*.jpg"))[:per_class]:
            (folder / src.name).symlink_to(src)
    if bad:
        (root / LABELS[0] / "empty.jpg").write_bytes(b"")
        (root / LABELS[1] / "notes.png").write_bytes(b"just some text, not a picture")
        good = sorted((FRUITS / split / LABELS[2]).glob("*.jpg"))[-1].read_bytes()
        (root / LABELS[2] / "cut.jpg").write_bytes(good[: len(good) // 2])
    return root


def run_job(env_extra: dict[str, str], args: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FRUITPIPE_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", "training_job", *(args or [])], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def values(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line and " " not in line.split("=", 1)[0])


@needs_shared
@pytest.mark.slow
def test_sagemaker_layout_end_to_end(tmp_path: Path) -> None:
    train = small_dataset(tmp_path / "input" / "train", "train", PER_CLASS, bad=True)
    val = small_dataset(tmp_path / "input" / "validation", "val", 4)
    cache, model, output = tmp_path / "cache", tmp_path / "model", tmp_path / "output"
    model.mkdir()  # SageMaker creates SM_MODEL_DIR before the job starts
    hp = tmp_path / "hyperparameters.json"
    hp.write_text(json.dumps({"epochs": "5", "hidden": "32", "prototypes_per_class": "3",
                              "features": "emb+b17mm+156mm", "finetune_epochs": "2"}))
    env = {"SM_CHANNEL_TRAIN": str(train), "SM_CHANNEL_VALIDATION": str(val), "SM_CHANNEL_CACHE": str(cache),
           "SM_MODEL_DIR": str(model), "SM_OUTPUT_DATA_DIR": str(output), "SM_HYPERPARAMETERS_FILE": str(hp)}
    started = time.monotonic()
    first = run_job(env)
    elapsed = time.monotonic() - started
    assert first.returncode == 0, first.stderr[-2000:]
    assert elapsed < 60, elapsed
    out = values(first.stdout)
    n_images = 6 * PER_CLASS + 6 * 4
    assert out["embedded_new"] == str(n_images) and out["cached"] == "0"
    assert out["skipped"] == "3"
    assert out["skipped_empty"] == "1" and out["skipped_not_an_image"] == "1" and out["skipped_truncated"] == "1"
    assert "stage=train_head" in first.stdout and "stage=finetune_block" in first.stdout
    assert "progress=100" in first.stdout
    assert 0.0 <= float(out["accuracy"]) <= 1.0
    manifest = bundle.verify(model)
    # block 17 fine-tuned with the head, stored beside it and checksummed, served by the Classifier
    from fruitpipe.classifier import Classifier
    photo = sorted((FRUITS / "test" / LABELS[4]).glob("*.jpg"))[0]
    assert Classifier(model).predict_bytes(photo.read_bytes()).verdict in ("fresh", "rotten", "not_fruit", "uncertain")
    assert manifest.head["features"] == "emb+b17mm+156mm" and manifest.head["block"]["file"] in manifest.files
    assert float(out["export_max_abs_diff"]) < 1e-3  # numpy block + head == the Keras model
    assert manifest.training_data["skipped"] == {"empty": 1, "not_an_image": 1, "truncated": 1}
    assert manifest.rejection["min_similarity_zoom"] is None  # no not-fruit images to set the zoom bar on
    metrics = json.loads((output / "metrics.json").read_text())
    for key in ("n", "accuracy", "macro_f1", "per_class", "confusion", "model_version"):
        assert key in metrics
    assert (output / "confusion.png").stat().st_size > 1000 and (output / "curves.png").stat().st_size > 1000
    shards = list(cache.glob("emb-*.npz"))
    assert len(shards) == 1

    # Retrain: nothing new to embed, one image added → exactly one new embedding, one new shard.
    model2 = tmp_path / "model2"
    # It came through the review queue: its origin tag, beside the filed image the run links to,
    # reaches the manifest's training-data summary.
    extra = tmp_path / "store" / "dataset" / LABELS[3] / "reviewed.jpg"
    extra.parent.mkdir(parents=True)
    extra.write_bytes(sorted((FRUITS / "train" / LABELS[3]).glob("*.jpg"))[PER_CLASS].read_bytes())
    extra.with_suffix(".origin").write_text("review\n")
    (train / LABELS[3] / extra.name).symlink_to(extra)
    # ... warm-started from the first model (the base_model channel): no head-only stage this time.
    second = run_job({**env, "SM_MODEL_DIR": str(model2), "SM_OUTPUT_DATA_DIR": str(tmp_path / "o2"),
                      "SM_CHANNEL_BASE_MODEL": str(model)})
    assert second.returncode == 0, second.stderr[-2000:]
    out2 = values(second.stdout)
    assert out2["embedded_new"] == "1" and out2["cached"] == str(n_images)
    assert out2["warm_start"] == "1" and "stage=train_head" not in second.stdout
    assert bundle.verify(model2).training_data["warm_start_from"] == manifest.version
    assert manifest.training_data["origins"] == {"untagged": 6 * PER_CLASS}
    assert bundle.verify(model2).training_data["origins"] == {"review": 1, "untagged": 6 * PER_CLASS}
    assert len(list(cache.glob("emb-*.npz"))) == 2
    assert shards[0].exists()  # shards are append-only


@needs_shared
@pytest.mark.slow
def test_not_fruit_validation_images_set_the_zoom_bar(tmp_path: Path) -> None:
    """With a not_fruit/ folder in validation the job calibrates the second look's bar above every
    not-fruit image the first look rejects, and the bundle it writes rejects them all again."""
    from skimage import data
    from PIL import Image

    from fruitpipe.classifier import Classifier
    from fruitpipe.evaluation import evaluate
    from fruitpipe.training import Config, train

    train_dir = small_dataset(tmp_path / "train", "train", PER_CLASS)
    val = small_dataset(tmp_path / "validation", "val", 4)
    ood = val / "not_fruit"
    ood.mkdir()
    for name in ("astronaut", "camera", "coffee", "rocket", "horse", "brick"):
        arr = getattr(data, name)()
        arr = arr if arr.dtype == np.uint8 else (arr * 255).astype(np.uint8)
        Image.fromarray(arr).convert("RGB").save(ood / f"{name}.jpg")
    # The frozen-feature recipe (the previous default) still trains; the fine-tuned one is covered above.
    train(train_dir, tmp_path / "model", validation_dir=val, cache_dir=tmp_path / "cache",
          config=Config(features="emb+170mm+156mm", epochs=5, hidden=32, prototypes_per_class=3))
    manifest = bundle.verify(tmp_path / "model")
    assert manifest.head["features"] == "emb+170mm+156mm" and "block" not in manifest.head
    rejection = manifest.rejection
    assert rejection["min_similarity_zoom"] is not None
    assert rejection["min_similarity_zoom"] >= rejection["min_similarity"]
    clf = Classifier(tmp_path / "model")
    with_zoom = evaluate(clf, val)
    clf.rejector = dataclasses.replace(clf.rejector, min_similarity_zoom=None)
    whole_only = evaluate(clf, val)
    assert with_zoom["ood_n"] == 6 and whole_only["ood_rejected_rate"] > 0
    # the second look gives back no calibration not-fruit image the first look rejected
    assert with_zoom["ood_rejected_rate"] == whole_only["ood_rejected_rate"]
    assert with_zoom["fruit_rejected_rate"] <= whole_only["fruit_rejected_rate"]


@needs_shared
def test_failed_training_writes_no_bundle(tmp_path: Path) -> None:
    train = tmp_path / "train"
    small_dataset(train, "train", 2)
    for f in (train / LABELS[5]).iterdir():
        f.unlink()
    (train / LABELS[5] / "bad.jpg").write_bytes(b"garbage")
    model = tmp_path / "model"
    proc = run_job({}, ["--data", str(train), "--out", str(model), "--set", "epochs=1"])
    assert proc.returncode == 1
    assert "no usable training image for rottenoranges" in proc.stderr
    assert not model.exists() or not any(model.iterdir())


def test_unknown_hyperparameter_is_refused(tmp_path: Path) -> None:
    from fruitpipe.training import Config, TrainingError
    with pytest.raises(TrainingError, match="unknown hyperparameter"):
        Config.from_mapping({"learning-rat": "1"})
    cfg = Config.from_mapping({"epochs": "3", "flip": "false", "dropout": "0.1"})
    assert (cfg.epochs, cfg.flip, cfg.dropout) == (3, False, 0.1)


def test_numpy_head_matches_keras() -> None:
    """The exported numpy head computes what the Keras model computes (fit_head checks it too)."""
    import numpy as np
    from fruitpipe.training import Config, fit_head
    rng = np.random.default_rng(0)
    x = rng.random((120, 1280), dtype=np.float32)
    y = np.arange(120) % 6
    head, history, model = fit_head(x, y, Config(epochs=2, hidden=16, standardize=False))
    assert np.allclose(head(x), model.predict(x, verbose=0), atol=1e-5)
    # with standardization folded into the first layer, the head takes raw embeddings
    head, _, model = fit_head(x, y, Config(epochs=2, hidden=16, standardize=True))
    mu, sd = x.mean(axis=0), x.std(axis=0) + 0.05
    assert np.allclose(head(x), model.predict((x - mu) / sd, verbose=0), atol=1e-4)
    assert len(history["loss"]) == 2


def test_int8_head_round_trip_keeps_predictions(tmp_path) -> None:
    """int8 kernels with per-row scales (the shipped format) stay within 1e-2 of the float head."""
    from fruitpipe.head import Head
    rng = np.random.default_rng(1)
    # rows of very different magnitude, like a kernel with the standardization folded in
    k0 = (rng.normal(size=(64, 16)) * rng.uniform(0.01, 20, size=(64, 1))).astype(np.float32)
    head = Head((k0, 0.1 * rng.normal(size=(16, 6)).astype(np.float32)),  # logits of a few units
                (rng.normal(size=16).astype(np.float32), np.zeros(6, np.float32)), ("relu", "softmax"))
    head.save(tmp_path / "h.npz", dtype="int8")
    with np.load(tmp_path / "h.npz") as data:
        assert data["kernel_0"].dtype == np.int8 and data["kernel_0_scale"].shape == (64,)
    stored = Head.load(tmp_path / "h.npz", head.activations)
    x = rng.normal(size=(200, 64)).astype(np.float32) / np.abs(k0).max(axis=1)
    assert np.abs(stored(x) - head(x)).max() < 1e-2
    assert (stored(x).argmax(1) == head(x).argmax(1)).mean() >= 0.98


def test_cache_ignores_shards_of_the_old_layout(tmp_path) -> None:
    """Shards written before the pooled maps (old tag, no ``pooled``) are skipped, not misread."""
    from fruitpipe.embeddings import EmbeddingCache
    old_tag = "0123456789abcdef"
    with open(tmp_path / "emb-20260101-000000-00000000.npz", "wb") as fh:
        np.savez(fh, tag=np.str_(old_tag), sha256=np.array(["a" * 64]), view=np.array(["orig"]),
                 q=np.zeros((1, 1280), np.int8))
    cache = EmbeddingCache(tmp_path)
    assert cache.tag != old_tag and len(cache) == 0 and cache.get("a" * 64, "orig") is None
    cache.put("b" * 64, "orig", (np.ones(1280, np.int8), np.full(832, 0.5, np.float32), np.full((7, 7, 160), -3, np.int8)))
    cache.flush()
    again = EmbeddingCache(tmp_path)
    q, pooled, block_in = again.get("b" * 64, "orig")
    assert len(again) == 1 and q.dtype == np.int8 and pooled.shape == (832,) and pooled[0] == np.float32(0.5)
    assert block_in.dtype == np.int8 and block_in.shape == (7, 7, 160) and (block_in == -3).all()


def test_warm_start_loads_a_folded_head_exactly() -> None:
    """A bundle's head (batch norm folded into the first layer) goes back into the Keras head with
    the batch norm re-created from the current inputs, and computes the same probabilities; folding
    it again gives the same numpy head."""
    from fruitpipe.finetune import export_head, keras_head, load_head
    from fruitpipe.head import Head
    from fruitpipe.training import Config

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 2112)) * rng.uniform(0.1, 5, 2112) + rng.normal(size=2112)).astype(np.float32)
    start = Head((rng.normal(size=(2112, 16)).astype(np.float32) * 0.05, rng.normal(size=(16, 6)).astype(np.float32)),
                 (rng.normal(size=16).astype(np.float32), rng.normal(size=6).astype(np.float32)), ("relu", "softmax"))
    model = keras_head(Config(hidden=16))
    load_head(model, start, x)
    assert np.abs(model.predict(x, verbose=0) - start(x)).max() < 1e-4
    again = export_head(model)
    assert np.abs(again(x) - start(x)).max() < 1e-4


@needs_shared
def test_unusable_base_model_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    train = small_dataset(tmp_path / "train", "train", 2)
    (tmp_path / "not-a-bundle").mkdir()
    model = tmp_path / "model"
    proc = run_job({}, ["--data", str(train), "--out", str(model), "--base-model", str(tmp_path / "not-a-bundle"),
                        "--set", "epochs=1"])
    assert proc.returncode == 1 and "cannot warm-start from base model" in proc.stderr
    assert "stage=embed_train" not in proc.stdout + proc.stderr  # refused before any image is embedded
    assert not model.exists() or not any(model.iterdir())


@needs_shared
@pytest.mark.slow
def test_not_fruit_output_learns_from_negatives_and_old_api_shape_holds(tmp_path: Path) -> None:
    """not_fruit_output=true: a 7th head output trained on the training set's non-class folder,
    its bar calibrated on validation fruit; the served probabilities are still the six classes."""
    from fruitpipe.classifier import Classifier
    from fruitpipe.evaluation import evaluate
    from fruitpipe.training import Config, train

    not_fruit = REPO.parent / "shared" / "data" / "not_fruit"
    if not not_fruit.is_dir():
        pytest.skip("../shared/data/not_fruit is not beside the checkout")
    train_dir = small_dataset(tmp_path / "train", "train", PER_CLASS)
    val = small_dataset(tmp_path / "validation", "val", 4)
    for root, kinds in ((train_dir / "tomato", ("tomato", "pear")), (val / "not_fruit", ("cat",))):
        root.mkdir()
        for kind in kinds:
            for src in sorted((not_fruit / kind).glob("*.jpg"))[:12]:
                (root / src.name).symlink_to(src)
    train(train_dir, tmp_path / "model", validation_dir=val, cache_dir=tmp_path / "cache",
          config=Config(not_fruit_output=True, epochs=5, finetune_epochs=1, hidden=32, prototypes_per_class=3))
    manifest = bundle.verify(tmp_path / "model")
    assert manifest.head["outputs"] == [*LABELS, "not_fruit"] and manifest.head["layers"][-1]["units"] == 7
    assert 0.0 <= manifest.rejection["max_not_fruit"] <= 1.0
    clf = Classifier(tmp_path / "model")
    pred = clf.predict_bytes(sorted((not_fruit / "tomato").glob("*.jpg"))[-1].read_bytes())
    assert sorted(pred.probabilities) == sorted(LABELS) and abs(sum(pred.probabilities.values()) - 1) < 1e-5
    assert 0.0 <= pred.scores["not_fruit"] <= 1.0
    result = evaluate(clf, val)
    assert result["n"] == 24 and result["ood_n"] == 12


@needs_shared
@pytest.mark.slow
def test_augmented_views_per_source_and_class_balance(tmp_path: Path, capsys) -> None:
    """aug_views for every training image, aug_views_extra for every source but the first (s0 of
    recipe.link_dataset's names), class balance on; the augmented rows join both fits (the refit
    adds the validation images' own), never the prototypes; views come from the cache."""
    from fruitpipe.embeddings import EmbeddingCache
    from fruitpipe.training import Config, train

    not_fruit = REPO.parent / "shared" / "data" / "not_fruit"
    if not not_fruit.is_dir():
        pytest.skip("../shared/data/not_fruit is not beside the checkout")
    train_dir, val = tmp_path / "train", tmp_path / "validation"
    for root, split, n in ((train_dir, "train", 6), (val, "val", 2)):
        for label in LABELS:
            (root / label).mkdir(parents=True)
            for src in sorted((FRUITS / split / label).glob("*.jpg"))[:n]:
                (root / label / f"s0-{src.name}").symlink_to(src)
        (root / "not_fruit").mkdir()
        for src in sorted((not_fruit / ("tomato" if split == "train" else "cat")).glob("*.jpg"))[:n * 2]:
            (root / "not_fruit" / f"s1-{src.name}").symlink_to(src)
    cfg = Config(not_fruit_output=True, epochs=2, finetune_epochs=1, hidden=16, prototypes_per_class=2,
                 aug_views="jpeg", aug_views_extra="zoomout", balance=0.5, refit=True)
    train(train_dir, tmp_path / "model", validation_dir=val, cache_dir=tmp_path / "cache", config=cfg)
    out = values(capsys.readouterr().out)
    # First fit: 36 fruit + 12 negatives in orig+flip (96 rows), jpeg of all 48, zoomout of the 12 negatives.
    # The refit's log line comes last: + validation 12 fruit + 4 negatives in 2 views and their 16 + 4 augmented.
    assert out["n_augmented_rows"] == str(48 + 12)
    assert out["n_train_rows"] == str(96 + 60 + 32 + 20)
    cache = EmbeddingCache(tmp_path / "cache")
    views = {view for _, view in cache._q}
    assert views == {"orig", "flip", "jpeg", "zoomout"}
    assert sum(view == "zoomout" for _, view in cache._q) == 12 + 4
    manifest = bundle.verify(tmp_path / "model")
    assert manifest.raw["hyperparameters"]["aug_views"] == "jpeg"
