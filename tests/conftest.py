"""Shared fixtures: real images from ../shared, the backbone, the default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FRUITS = SHARED / "data" / "fruits"
BACKBONE_DIR = SHARED / "models" / "mobilenet_v2_1.0_224_int8"
DEFAULT_MODEL = REPO / "models" / "default"

MODEL_ZOO = SHARED / "models"

if BACKBONE_DIR.is_dir():
    os.environ.setdefault("FRUITPIPE_BACKBONE", str(BACKBONE_DIR))
    os.environ.setdefault("FRUITPIPE_MODEL_ZOO", str(MODEL_ZOO))  # the other backbones (fruitpipe.backbone.SPECS)

needs_shared = pytest.mark.skipif(
    not FRUITS.is_dir() or not BACKBONE_DIR.is_dir(),
    reason="../shared (real fruit photos and the backbone) is not beside the checkout",
)


def fruit_images(split: str = "test", per_class: int = 2) -> list[tuple[str, Path]]:
    """The first ``per_class`` images of each class in a split, as (class, path)."""
    from fruitpipe.labels import LABELS
    out: list[tuple[str, Path]] = []
    for label in LABELS:
        out += [(label, p) for p in sorted((FRUITS / split / label).glob("*.jpg"))[:per_class]]
    return out


@pytest.fixture(scope="session")
def backbone():
    from fruitpipe.classifier import Backbone
    if not BACKBONE_DIR.is_dir():
        pytest.skip("../shared backbone is not beside the checkout")
    return Backbone(BACKBONE_DIR)


@pytest.fixture(scope="session")
def classifier(backbone):
    from fruitpipe.classifier import Classifier
    return Classifier(DEFAULT_MODEL, shared_backbone=backbone)
