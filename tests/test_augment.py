"""The real-photo augmentations (fruitpipe.augment): deterministic per (image, view), so the
embedding cache keyed by (image sha256, view) stays valid; and the class-balance weights."""

from __future__ import annotations

import numpy as np
import pytest

from fruitpipe import augment
from fruitpipe.embeddings import apply_view
from fruitpipe.training import balance_weights, source_of


def images(n: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((n, 224, 224, 3), np.uint8)
    for i in range(n):  # a bright disc ("a fruit") on a plain ground, different per image
        yy, xx = np.mgrid[0:224, 0:224]
        disc = (yy - 112 - 10 * i) ** 2 + (xx - 100) ** 2 < 60 ** 2
        base[i] = rng.integers(0, 60, size=3)
        base[i][disc] = rng.integers(150, 255, size=3)
    return base


@pytest.mark.parametrize("view", sorted(augment.VIEWS))
def test_view_is_deterministic_per_image_and_changes_it(view: str) -> None:
    imgs = images()
    first = apply_view(imgs, view)
    assert first.shape == imgs.shape and first.dtype == np.uint8
    assert np.array_equal(first, apply_view(imgs.copy(), view))  # same pixels in, same view out
    assert np.array_equal(first[1:2], apply_view(imgs[1:2], view))  # independent of the batch
    assert not np.array_equal(first, imgs)
    # Parameters are drawn per image: two different images do not get the same transform.
    if view != "jpeg":
        assert not np.array_equal(augment._rng(imgs[0], view).random(4), augment._rng(imgs[1], view).random(4))


def test_unknown_view_is_refused() -> None:
    with pytest.raises(ValueError):
        apply_view(images(1), "sepia")


def test_zoomout_shows_the_photo_smaller_on_a_background() -> None:
    img = np.full((1, 224, 224, 3), 255, np.uint8)
    out = apply_view(img, "zoomout")[0]
    white = (out > 250).all(axis=2).mean()
    assert 0.35 ** 2 * 0.9 < white < 0.7 ** 2 * 1.1  # the pasted photo covers 35-70% of the side


def test_balance_weights_lift_scarce_groups_and_keep_the_mean() -> None:
    groups = np.array(["s0:freshapples"] * 100 + ["other:freshapples"] * 50 + ["other:rottenapples"] * 4)
    w = balance_weights(groups, 0.5)
    assert w.dtype == np.float32 and abs(w.mean() - 1) < 1e-5
    assert w[-1] > w[100] >= w[0]
    capped = balance_weights(groups, 1.0)  # (50 / 4) ** 1 = 12.5 is capped at 4x the median group's weight
    assert abs(capped[-1] / capped[100] - 4.0) < 1e-5
    assert np.array_equal(balance_weights(groups, 0.0), np.ones(len(groups), np.float32))


def test_source_of_reads_link_dataset_names(tmp_path) -> None:
    assert source_of(tmp_path / "freshapples" / "s0-a.jpg") == "s0"
    assert source_of(tmp_path / "freshapples" / "s12-b_1.jpg") == "s12"
    assert source_of(tmp_path / "freshapples" / "photo.jpg") == ""
