"""The not-fruit rule's arithmetic (no model needed): the zoom second look and its bar."""

from __future__ import annotations

import numpy as np

from fruitpipe.rejection import Rejector, reject_mask, zoom_threshold


def scores(sim, other=None, zoom=None) -> dict[str, np.ndarray]:
    out = {"similarity": np.array(sim, np.float32),
           "other_fruit": np.array(other if other is not None else [0.0] * len(sim), np.float32),
           "confidence": np.ones(len(sim), np.float32)}
    if zoom is not None:
        out["zoom_similarity"] = np.array(zoom, np.float32)
    return out


def test_zoom_rescues_only_far_images_that_clear_its_bar() -> None:
    s = scores([0.9, 0.5, 0.5, 0.5], zoom=[np.nan, 0.7, 0.6, np.nan])
    # without a bar the zoom scores are ignored; NaN (look not taken) never rescues
    assert reject_mask(s, 0.6, 0.8, 0.6).tolist() == [False, True, True, True]
    assert reject_mask(s, 0.6, 0.8, 0.6, min_similarity_zoom=0.65).tolist() == [False, False, True, True]


def test_zoom_does_not_override_the_other_fruit_rule() -> None:
    s = scores([0.5], other=[0.95], zoom=[0.99])
    assert reject_mask(s, 0.6, 0.8, 0.7, min_similarity_zoom=0.65).tolist() == [True]


def test_zoom_bar_sits_above_every_rejected_calibration_image() -> None:
    rejected_zoom = np.array([0.3, 0.62, 0.55], np.float32)
    bar = zoom_threshold(rejected_zoom, 0.58)
    assert bar > 0.62 and not (rejected_zoom >= bar).any()
    assert zoom_threshold(np.array([0.2], np.float32), 0.58) == 0.58  # never below the first bar
    assert zoom_threshold(np.empty(0, np.float32), 0.58) == 0.58


def test_second_look_is_asked_only_for_far_images_and_only_with_a_bar() -> None:
    protos = np.eye(3, dtype=np.float32)
    with_bar = Rejector(np.array([], np.int64), protos, 0.6, 0.8, 0.7, 0.5, min_similarity_zoom=0.65)
    # far and near; far but already rejected by the other-fruit rule (no look needed)
    s = scores([0.9, 0.59, 0.5], other=[0.0, 0.0, 0.9])
    assert with_bar.needs_second_look(s).tolist() == [False, True, False]
    looked: list[list[int]] = []
    with_bar.take_second_look(s, lambda rows: looked.append(rows.tolist()) or np.full(len(rows), 0.7))
    assert looked == [[1]]
    assert np.isnan(s["zoom_similarity"][[0, 2]]).all() and s["zoom_similarity"][1] == np.float32(0.7)
    assert with_bar.not_fruit(s).tolist() == [False, False, True]
    without = Rejector(np.array([], np.int64), protos, 0.6, 0.8, 0.7, 0.5)
    assert without.needs_second_look(s).tolist() == [False, False, False]


def test_old_manifest_without_zoom_bar_loads(tmp_path) -> None:
    np.savez(tmp_path / "rejection.npz", prototypes=np.eye(2, dtype=np.float32))
    manifest = {"other_classes": [950], "min_similarity": 0.6, "max_other_fruit": 0.8,
                "min_similarity_other": 0.7, "min_confidence": 0.5}
    assert Rejector.from_manifest(manifest, tmp_path).min_similarity_zoom is None
    manifest["min_similarity_zoom"] = 0.66
    assert Rejector.from_manifest(manifest, tmp_path).min_similarity_zoom == 0.66


def test_seventh_output_rejects_on_its_own_and_six_probabilities_stay_a_distribution() -> None:
    from fruitpipe.rejection import split_not_fruit

    probs7 = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.0, 0.1], [0.05, 0.05, 0.0, 0.0, 0.0, 0.1, 0.8]], np.float32)
    six, nf = split_not_fruit(probs7)
    assert six.shape == (2, 6) and np.allclose(six.sum(axis=1), 1.0) and nf.tolist() == [np.float32(0.1), np.float32(0.8)]
    assert six[0].argmax() == 0 and six[1].argmax() == 5
    old = np.full((1, 6), 1 / 6, np.float32)
    assert split_not_fruit(old)[0] is old and split_not_fruit(old)[1] is None
    s = scores([0.9, 0.9])
    s["not_fruit"] = nf
    assert reject_mask(s, 0.6, 0.8, 0.6).tolist() == [False, False]  # no bar (old bundle): ignored
    assert reject_mask(s, 0.6, 0.8, 0.6, max_not_fruit=0.5).tolist() == [False, True]
    rej = Rejector(np.array([], np.int64), np.eye(3, dtype=np.float32), 0.95, 0.8, 0.7, 0.5,
                   min_similarity_zoom=0.9, max_not_fruit=0.5)
    # far from the prototypes, but the 7th output already rejects the second: no second look for it
    assert rej.needs_second_look(s).tolist() == [True, False]


def test_not_fruit_bar_keeps_every_validation_source_within_the_budget() -> None:
    from fruitpipe.training import Config, calibrate

    rng = np.random.default_rng(0)
    n = 400
    emb = np.tile(np.eye(1, 8, dtype=np.float32), (n, 1)) + 0.01 * rng.standard_normal((n, 8)).astype(np.float32)
    protos = np.eye(1, 8, dtype=np.float32)
    probs = np.full((n, 6), 1 / 6, np.float32)
    sources = np.array(["s0"] * 300 + ["s1"] * 100)
    nf = np.concatenate([rng.uniform(0, 0.05, 300), rng.uniform(0, 0.5, 100)]).astype(np.float32)
    cfg = Config(target_fruit_rejection=0.0, target_other_rejection=0.0, target_fruit_loss=0.02)
    out = calibrate(cfg, protos, np.array([], np.int64), emb, np.zeros((n, 1001), np.float32), probs,
                    not_fruit_val=nf, fruit_sources=sources)
    bar = out["max_not_fruit"]
    for s in ("s0", "s1"):
        assert (nf[sources == s] > bar).mean() <= 0.02
    assert (nf[sources == "s1"] > bar).sum() == 2  # the budget is used, on the source that needs it
    assert out["method"].endswith("+not-fruit-output")
    no_output = calibrate(cfg, protos, np.array([], np.int64), emb, np.zeros((n, 1001), np.float32), probs)
    assert "max_not_fruit" not in no_output
