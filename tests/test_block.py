"""The numpy block 17 (fruitpipe.block): faithful to the backbone, and its int8 file keeps its outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fruitpipe import bundle, features, imaging
from fruitpipe.block import FILE, Block

from .conftest import REPO, fruit_images, needs_shared

DEFAULT = REPO / "models" / "default"


@pytest.fixture(scope="module")
def real_outputs(backbone):  # type: ignore[no-untyped-def]
    images = np.stack([imaging.load_image(p.read_bytes()) for _, p in fruit_images("val", 2)])
    return backbone.outputs(images)


@needs_shared
def test_backbone_block_reproduces_tensor_170(backbone, real_outputs) -> None:
    """Block 17 with the backbone's own (dequantized) weights, run in numpy on tensor 167, gives what
    the int8 graph gives for tensor 170 up to int8 rounding: the fine-tuning starts where the frozen
    features are."""
    _, pooled, codes = real_outputs
    out = Block.from_backbone(backbone.path)(backbone.block_input(codes))
    assert out.shape == (len(codes), 7, 7, 320)
    ours, theirs = features.pool_maps([out]), pooled[:, :640]
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() > 0.999, cos


@needs_shared
def test_int8_file_round_trip(backbone, real_outputs, tmp_path: Path) -> None:
    block = Block.from_backbone(backbone.path)
    block.save(tmp_path / FILE)
    assert (tmp_path / FILE).stat().st_size < 520_000
    stored = Block.load(tmp_path / FILE)
    x = backbone.block_input(real_outputs[2])
    a, b = block(x), stored(x)
    assert np.abs(a - b).max() < 0.02 * np.abs(a).max()
    # batching inside the block changes nothing
    assert np.allclose(stored(x[:1]), b[:1], atol=1e-5)


def test_keras_layout_round_trip() -> None:
    rng = np.random.default_rng(0)
    block = Block(*(rng.normal(size=s).astype(np.float32)
                    for s in ((160, 960), (960,), (3, 3, 960), (960,), (960, 320), (320,))))
    again = Block.from_keras(block.keras_weights())
    for name in ("expand", "depthwise", "project", "project_bias"):
        assert np.array_equal(getattr(again, name), getattr(block, name))


def test_inconsistent_block_file_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / FILE, **{f"{n}{s}": np.ones(shape, dt) for n, shape in
                                 (("expand", (16, 960)), ("depthwise", (3, 3, 960)), ("project", (960, 320)))
                                 for s, dt in (("", np.int8), ("_scale", np.float32), ("_bias", np.float32))})
    with pytest.raises(ValueError, match="inconsistent"):
        Block.load(tmp_path / FILE)


@needs_shared
def test_fine_tuned_recipe_without_a_block_is_refused(tmp_path: Path, backbone) -> None:
    """A bundle whose recipe needs a fine-tuned block but names none is refused with a clear error."""
    from fruitpipe.classifier import Classifier
    copy = tmp_path / "model"
    shutil.copytree(DEFAULT, copy)
    raw = json.loads((copy / bundle.MANIFEST).read_text())
    assert raw["head"]["features"] == features.FINETUNED
    del raw["head"]["block"]
    (copy / bundle.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(bundle.BundleError, match="needs a block file"):
        Classifier(copy, shared_backbone=backbone)
