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


def test_reason_gives_percentages_with_one_decimal_and_p_values_with_three():
    """One format in the reason and the CLI summary beside it (fruitpipe.commands.retrain._figures):
    percentages, one decimal (more only where one decimal would show two different figures as one)."""
    d = gate.decide({"accuracy": 0.9689, "macro_f1": 0.97312, "ood_rejected_rate": 1.0},
                    {"accuracy": 0.9662, "macro_f1": 0.97304, "ood_rejected_rate": 1.0})
    assert d.promote and ("accuracy 96.9% vs 96.6%, macro_f1 97.31% vs 97.30%, "
                          "ood_rejected_rate 100.0% vs 100.0%") in d.reason
    d = gate.decide({**LIVE, "accuracy": 0.9689}, LIVE)
    assert not d.promote and "accuracy 96.9% < live 98.0%" in d.reason and "0.9689" not in d.reason


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


def _paired(correct: str, order: str = "o1", rejected: str = "1" * 10) -> dict:
    n = len(correct)
    acc = correct.count("1") / n
    return {"accuracy": acc, "macro_f1": acc, "ood_rejected_rate": rejected.count("1") / len(rejected),
            "paired": {"order": order, "correct": correct, "rejected": rejected}}


LIVE_614 = "1" * 602 + "0" * 12  # 98.0% of the 614 test photos


def _moved(worse: int, better: int) -> str:
    """The live outcomes with ``worse`` right answers lost and ``better`` wrong ones gained."""
    s = list(LIVE_614)
    for i in range(worse):
        s[i] = "0"
    for i in range(better):
        s[602 + i] = "1"
    return "".join(s)


def test_mcnemar_p_value_matches_the_binomial_tail():
    assert gate.mcnemar_p_value(0, 0) == 1.0
    assert gate.mcnemar_p_value(3, 0) == pytest.approx(1 / 8)
    assert gate.mcnemar_p_value(5, 2) == pytest.approx((21 + 7 + 1) / 128)  # C(7,5)+C(7,6)+C(7,7)


def test_a_loss_within_fit_noise_is_promoted_and_says_why():
    # 5 photos lost, 2 gained: -0.5 points, p = 0.23 (two fits of the same data differ this much)
    d = gate.decide(_paired(_moved(5, 2)), _paired(LIVE_614))
    assert d.promote and "not significantly worse" in d.reason and "p=0.227" in d.reason


def test_a_significant_loss_is_rejected():
    d = gate.decide(_paired(_moved(12, 2)), _paired(LIVE_614))  # p = 0.0065
    assert not d.promote and "significantly worse on the same photos" in d.reason


def test_a_large_loss_is_rejected_even_when_not_significant():
    live = "1" * 50
    cand = "000" + "1" * 47  # -6 points on 50 photos, p = 0.125
    d = gate.decide(_paired(cand), _paired(live))
    assert not d.promote and "more than 2.0 points below live" in d.reason and "significantly" not in d.reason


def test_strict_mode_and_unpaired_records_keep_the_no_worse_rule():
    cand, live = _paired(_moved(5, 2)), _paired(LIVE_614)
    assert not gate.decide(cand, live, strict=True).promote  # nothing new to learn: no loss at all
    assert not gate.decide(cand, {**live, "paired": {**live["paired"], "order": "other"}}).promote
    assert not gate.decide({k: v for k, v in cand.items() if k != "paired"}, live).promote


def test_the_paired_rule_never_lets_accuracy_buy_rejection():
    d = gate.decide(_paired(_moved(0, 5), rejected="1" * 9 + "0"), _paired(LIVE_614))
    assert not d.promote and "ood_rejected_rate" in d.reason


def test_on_a_small_set_the_margin_is_one_photo():
    live = "1" * 59 + "0" * 3  # 62 photos, as in a small test store
    cand = "0" + "1" * 58 + "000"
    d = gate.decide(_paired(cand), _paired(live))  # -1 photo (1.6 points), p = 0.5
    assert d.promote and "not significantly worse" in d.reason
    assert not gate.decide(_paired("00" + "1" * 57 + "000"), _paired(live)).promote  # -2 photos


# -- the anchor: the best version so far ---------------------------------------------------------

def test_a_chain_of_small_losses_stops_at_the_anchor():
    # The trial's drift: each retrain loses 5 photos to the live model and gains 2 (p = 0.227, well
    # within chance, so the live-only rule promotes every one), and the chain slides below the shipped model.
    shipped = _paired(LIVE_614)
    step1, step2, step3 = (_paired(_moved(5 * k, 2 * k)) for k in (1, 2, 3))
    for cand, live in ((step1, shipped), (step2, step1), (step3, step2)):
        assert gate.decide(cand, live).promote and "p=0.227" in gate.decide(cand, live).reason
    # against the shipped model: step2 is 10 lost, 4 gained (p = 0.090, -1.0 point): still within the anchor
    assert gate.decide(step2, step1, reference=shipped, reference_version="shipped").promote
    # step3 is 15 lost, 6 gained (p = 0.039, -1.5 points): stopped
    d = gate.decide(step3, step2, reference=shipped, reference_version="shipped")
    assert not d.promote and "best version so far" in d.reason and "reference shipped" in d.reason
    assert "significantly worse" in d.reason and "more than 1.0 points below reference shipped" in d.reason


def test_the_anchor_bounds_the_total_loss_to_the_margin():
    live = "1" * 50
    ref = "1" * 50
    cand = "0" + "1" * 49  # -1 photo (2 points on 50): within a one-photo bound, not significant
    assert gate.decide(_paired(cand), _paired(live), reference=_paired(ref), reference_version="r").promote
    cand3 = "000" + "1" * 47  # -3 photos: more than the bound below the reference
    d = gate.decide(_paired(cand3), _paired("00" + "1" * 48), reference=_paired(ref), reference_version="r")
    assert not d.promote and "more than 2.0 points below reference r" in d.reason


def test_the_anchor_within_chance_promotes_and_says_so():
    d = gate.decide(_paired(_moved(5, 2)), _paired(LIVE_614), reference=_paired(_moved(0, 1)),
                    reference_version="v1")  # vs v1 (one photo better than live): 5 lost, 1 gained
    assert d.promote and "anchor: reference v1" in d.reason and "p=0.109" in d.reason.split("anchor:")[1]


def test_an_anchor_on_other_images_is_skipped_with_its_reason():
    ref = _paired(LIVE_614, order="older-set")
    cand, live = _paired(_moved(10, 4)), _paired(_moved(5, 2))
    d = gate.decide(cand, live, reference=ref, reference_version="v0")
    assert d.promote and "anchor check against reference v0 skipped" in d.reason
    d = gate.decide(cand, live, reference={"accuracy": "?"}, reference_version="v0")
    assert d.promote and "anchor check skipped" in d.reason


def test_the_anchor_also_applies_to_a_forced_run_whose_strict_rule_is_unchanged():
    cand, live, ref = _paired(_moved(10, 2)), _paired(_moved(10, 2)), _paired(LIVE_614)
    assert gate.decide(cand, live, strict=True).promote  # strict: a tie with the live model
    assert not gate.decide(_paired(_moved(11, 2)), live, strict=True).promote  # one photo less: refused
    assert not gate.decide(cand, live, strict=True, reference=ref, reference_version="v1").promote


def test_the_anchor_guards_rejection_too():
    d = gate.decide(_paired(LIVE_614, rejected="1" * 9 + "0"), _paired(LIVE_614, rejected="1" * 9 + "0"),
                    reference=_paired(LIVE_614), reference_version="v1")
    assert not d.promote and "ood_rejected_rate" in d.reason and "reference v1" in d.reason


def test_best_reference_is_the_best_accepted_version_unless_it_is_live():
    records = {"v1": _paired(LIVE_614), "v2": _paired(_moved(5, 2)), "v3": {"accuracy": None}}
    assert gate.best_reference(records, live="v2")[0] == "v1"
    assert gate.best_reference(records, live="v1") is None  # the live model is compared anyway
    assert gate.best_reference({}, live="v1") is None
