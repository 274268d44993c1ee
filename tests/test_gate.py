"""The gate policy (fruitpipe/gate.py): tie, trade-offs, tolerance, malformed metrics."""

from __future__ import annotations

import math

import pytest

from fruitpipe import gate

LIVE = {"accuracy": 0.98, "macro_f1": 0.983, "ood_rejected_rate": 1.0}


def test_no_live_model_promotes_the_first_valid_candidate():
    d = gate.decide(LIVE, None)
    assert d.promote and "no live model" in d.reason


def test_tie_is_promoted_and_says_so():
    d = gate.decide(dict(LIVE), dict(LIVE))
    assert d.promote and d.reason.startswith("tie with the live model")


def test_better_everywhere_is_promoted():
    d = gate.decide({"accuracy": 0.99, "macro_f1": 0.99, "ood_rejected_rate": 1.0}, LIVE)
    assert d.promote and "no worse" in d.reason


@pytest.mark.parametrize("key", ["accuracy", "macro_f1"])
def test_worse_on_accuracy_or_f1_is_rejected(key):
    d = gate.decide({**LIVE, key: LIVE[key] - 0.001}, LIVE)
    assert not d.promote and key in d.reason and "worse" in d.reason


def test_better_accuracy_never_buys_worse_rejection():
    # +1.5 points of accuracy, but 2 of 225 not-fruit images now pass as fruit
    cand = {"accuracy": 0.995, "macro_f1": 0.996, "ood_rejected_rate": 223 / 225}
    d = gate.decide(cand, LIVE)
    assert not d.promote and "ood_rejected_rate" in d.reason


def test_rejection_tolerance_is_one_image_in_two_hundred():
    assert gate.decide({**LIVE, "ood_rejected_rate": 1.0 - gate.OOD_TOLERANCE / 2}, LIVE).promote
    assert not gate.decide({**LIVE, "ood_rejected_rate": 1.0 - 2 * gate.OOD_TOLERANCE}, LIVE).promote


def test_tolerance_loosens_accuracy_only_when_asked():
    cand = {**LIVE, "accuracy": LIVE["accuracy"] - 0.004}
    assert not gate.decide(cand, LIVE).promote
    assert gate.decide(cand, LIVE, tolerance=0.005).promote


@pytest.mark.parametrize("bad", [None, {}, {"accuracy": 0.9}, {"accuracy": math.nan, "macro_f1": 0.9},
                                 {"accuracy": True, "macro_f1": 0.9}, {"accuracy": "0.9", "macro_f1": 0.9}])
def test_malformed_candidate_metrics_raise(bad):
    with pytest.raises(gate.GateError):
        gate.decide(bad, LIVE)
