"""The promotion gate: a candidate replaces the live model only if it is no worse.

Both models are evaluated on the same images, the frozen evaluation set that neither trained on
(:mod:`fruitpipe.recipe`, :mod:`fruitpipe.evaluation`); the gate compares them. The policy
(docs/retrain-pipeline.md):

* **Not significantly worse, on the same photos** (a retrain that learned new images). Two fits of
  the same data differ by about ±0.7 points on the 614 test photos (±4 photos), so "no worse by any
  amount" rejected 3 of the 4 honest retrains of docs/ml.md's "Local retrains" table. When both models carry per-image outcomes
  (``metrics["paired"]``, :func:`fruitpipe.evaluation.paired_outcomes`), the gate counts the fruit
  photos only the live model gets right (``b``) and only the candidate gets right (``c``) and
  rejects the candidate when the one-sided exact McNemar test finds it worse (P(X >= b) < ``alpha``
  = 0.05 for X ~ Binomial(b + c, 1/2); McNemar 1947, and Dietterich 1998, "Approximate statistical
  tests for comparing supervised classification learning algorithms", which recommends it for
  comparing two classifiers on one test set), or when accuracy or macro-F1 drop by more than
  ``margin`` (1 point; one photo on an evaluation set of fewer than 100) even without significance.
* **Strictly no worse** when the run had nothing new to learn (``strict=True``: a forced retrain on
  unchanged data), or when per-image outcomes are missing: accuracy and macro-F1 each at least the
  live model's minus ``tolerance`` (0 by default). A tie is promoted: the candidate learned the new
  images at no cost on the evaluation set, and cannot lower the live model's figures.
* **Accuracy never buys rejection**, in both modes: the not-fruit rejection rate on the evaluation
  set's not-fruit images (when both were measured) must be at least the live model's minus
  ``ood_tolerance`` (0.005: one image in 200).
* **Anchored to the best version so far** (``reference``): a chain of "not significantly worse"
  promotions could slide lower and lower, each step within chance of the one before. So the
  candidate is also held to the paired rule above (McNemar, ``margin``, ``ood_tolerance``) against
  a fixed reference, the version with the best accuracy among those the gate let through in this
  store or bucket, scored on the same images: a store never serves a model more than ``margin``
  (or significantly) below the best it has shown. The reference is compared only through per-image
  outcomes on the same images (same ``paired.order`` digest); without them the check is skipped and
  the reason says why. It applies in strict mode too (the strict rule against the live model is
  unchanged).
* **No live model**: the first candidate with well-formed metrics is promoted. Metrics missing or
  not finite: :class:`GateError`, the candidate is not promoted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

REQUIRED = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate: dict[str, float]
    live: dict[str, float] | None

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason, "candidate": self.candidate, "live": self.live}


class GateError(ValueError):
    """Metrics that cannot be compared (missing or not numbers): the candidate is not promoted."""


def _numbers(metrics: Mapping[str, Any] | None, who: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise GateError(f"{who} metrics are missing")
    out: dict[str, float] = {}
    for key in REQUIRED:
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise GateError(f"{who} metric {key!r} is missing or not a finite number ({value!r})")
        out[key] = float(value)
    ood = metrics.get("ood_rejected_rate")
    if isinstance(ood, (int, float)) and not isinstance(ood, bool) and math.isfinite(ood):
        out["ood_rejected_rate"] = float(ood)
    return out


OOD_TOLERANCE = 0.005
ALPHA = 0.05  # one-sided significance of the paired test
MARGIN = 0.01  # the most accuracy or macro-F1 a retrain may lose even when the loss is not significant


def mcnemar_p_value(worse: int, better: int) -> float:
    """One-sided exact McNemar test: ``P(X >= worse)`` for ``X ~ Binomial(worse + better, 1/2)``.

    ``worse``: images only the live model answers right; ``better``: images only the candidate
    answers right. A small value means the candidate is worse beyond chance. 1.0 when no image
    differs.
    """
    n = worse + better
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2 ** n


def _pairs(candidate: Mapping[str, Any], live: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """``(worse, better, n)`` over the fruit images both models were scored on, else None."""
    a, b = candidate.get("paired"), live.get("paired")
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
        return None
    ca, cb = a.get("correct"), b.get("correct")
    if a.get("order") != b.get("order") or not isinstance(ca, str) or not isinstance(cb, str) or len(ca) != len(cb):
        return None
    worse = sum(x == "0" and y == "1" for x, y in zip(ca, cb))
    better = sum(x == "1" and y == "0" for x, y in zip(ca, cb))
    return worse, better, len(ca)


def _pct(value: float) -> str:
    """A fraction in [0, 1] as a percentage with one decimal: 0.9689 → "96.9%"."""
    return f"{100 * value:.1f}%"


def _pcts(a: float, b: float) -> tuple[str, str]:
    """Two fractions as percentages, with one decimal unless that shows different numbers as the
    same (then as many more, up to three, as tell them apart): (0.9731, 0.9730) → ("97.31%", "97.30%")."""
    for digits in (1, 2, 3):
        x, y = f"{100 * a:.{digits}f}%", f"{100 * b:.{digits}f}%"
        if a == b or x != y:
            break
    return x, y


def _versus(key: str, a: float, b: float, sep: str) -> str:
    """``"accuracy 96.9% < live 97.3%"`` for ``sep`` ``"< live"``: one figure of two models."""
    x, y = _pcts(a, b)
    return f"{key} {x} {sep} {y}"


def _paired_failures(cand: dict[str, float], other: dict[str, float], pairs: tuple[int, int, int], who: str, *,
                      alpha: float, margin: float, tolerance: float) -> tuple[list[str], str]:
    """The paired rule against ``other`` (``who``: "live", "reference v3"): (failures, the test in words)."""
    b, c, n = pairs
    p = mcnemar_p_value(b, c)
    test = (f"paired test on {n} photos: {b} right only by the {who} model, {c} only by the candidate, "
            f"one-sided p={p:.3f}")
    worse = [f"significantly worse on the same photos ({test} < {alpha})"] if p < alpha else []
    limit = max(margin, 1.0 / n) if n else margin  # one photo, on a set of fewer than 1/margin
    worse += [_versus(k, cand[k], other[k], f"is more than {100 * limit:.1f} points below {who}")
              for k in REQUIRED if cand[k] < other[k] - limit - tolerance - 1e-12]
    return worse, test


def _ood_failure(cand: dict[str, float], other: dict[str, float], who: str, ood_tolerance: float) -> list[str]:
    if "ood_rejected_rate" in cand and "ood_rejected_rate" in other:
        if cand["ood_rejected_rate"] < other["ood_rejected_rate"] - ood_tolerance:
            return [_versus("ood_rejected_rate", cand["ood_rejected_rate"], other["ood_rejected_rate"], f"< {who}")]
    return []


def check_reference(candidate: Mapping[str, Any], reference: Mapping[str, Any] | None, name: str | None, *,
                    ood_tolerance: float = OOD_TOLERANCE, alpha: float = ALPHA,
                    margin: float = MARGIN) -> tuple[list[str], str]:
    """The anchor of the module docstring: the candidate against the ``reference`` version ``name``.

    Returns ``(failures, note)``: ``failures`` empty when the candidate is non-inferior to the
    reference (or the check could not be made), ``note`` says what was checked or why it was
    skipped (no reference, malformed metrics, per-image outcomes missing or on other images).
    """
    if reference is None:
        return [], "no reference version to anchor to"
    who = f"reference {name}" if name else "reference"
    try:
        cand, ref = _numbers(candidate, "candidate"), _numbers(reference, who)
    except GateError as exc:
        return [], f"anchor check skipped: {exc}"
    pairs = _pairs(candidate, reference)
    if pairs is None:
        return [], (f"anchor check against {who} skipped: its per-image outcomes are missing or from "
                    "other images (order digests differ)")
    worse, test = _paired_failures(cand, ref, pairs, who, alpha=alpha, margin=margin, tolerance=0.0)
    worse += _ood_failure(cand, ref, who, ood_tolerance)
    return worse, f"anchor: {who} accuracy {_pct(ref['accuracy'])}, {test}"


def decide(candidate: Mapping[str, Any] | None, live: Mapping[str, Any] | None, *,
           tolerance: float = 0.0, ood_tolerance: float = OOD_TOLERANCE, strict: bool = False,
           alpha: float = ALPHA, margin: float = MARGIN, reference: Mapping[str, Any] | None = None,
           reference_version: str | None = None) -> Decision:
    """Compare candidate and live metrics measured on the same evaluation images.

    With no live model the candidate is promoted if its metrics are well formed. ``strict`` (a run
    with nothing new to learn) or metrics without matching per-image outcomes: no metric may be
    worse by more than ``tolerance``. Otherwise the paired rule of the module docstring. With a
    ``reference`` (the best version the gate let through, named ``reference_version``; see
    :func:`check_reference`) the candidate must also be non-inferior to it; its note ends the reason.

    Raises:
        GateError: accuracy or macro-F1 missing or not finite in the candidate's or live record.
    """
    cand = _numbers(candidate, "candidate")
    if live is None:
        return Decision(True, "no live model: the first valid model is promoted", cand, None)
    cur = _numbers(live, "live")
    pairs = None if strict else _pairs(candidate, live)  # type: ignore[arg-type]
    worse: list[str] = []
    test = ""
    if pairs is None:
        worse += [_versus(k, cand[k], cur[k], "< live") for k in REQUIRED if cand[k] < cur[k] - tolerance]
    else:
        failed, test = _paired_failures(cand, cur, pairs, "live", alpha=alpha, margin=margin, tolerance=tolerance)
        worse += failed
    worse += _ood_failure(cand, cur, "live", ood_tolerance)
    anchor_worse, anchor = ([], "") if reference is None else check_reference(
        candidate, reference, reference_version, ood_tolerance=ood_tolerance, alpha=alpha, margin=margin)
    anchor = f" [{anchor}]" if anchor else ""
    if worse:
        return Decision(False, "candidate is worse than the live model: " + "; ".join(worse) + anchor, cand, cur)
    if anchor_worse:
        return Decision(False, "candidate is worse than the best version so far (anchor): "
                        + "; ".join(anchor_worse) + anchor, cand, cur)
    keys = [k for k in (*REQUIRED, "ood_rejected_rate") if k in cand and k in cur]
    summary = ", ".join(_versus(k, cand[k], cur[k], "vs") for k in keys) + (f"; {test}" if test else "")
    tie = all(cand[k] == cur[k] for k in keys)
    if tie:
        return Decision(True, "tie with the live model, promoted: it has learned the new images at no cost "
                        f"({summary}){anchor}", cand, cur)
    if pairs is not None and any(cand[k] < cur[k] for k in REQUIRED):
        return Decision(True, f"candidate is not significantly worse than the live model ({summary}){anchor}",
                        cand, cur)
    return Decision(True, f"candidate is no worse than the live model ({summary}){anchor}", cand, cur)


def best_reference(records: Mapping[str, Mapping[str, Any]], live: str | None = None
                   ) -> tuple[str, Mapping[str, Any]] | None:
    """The anchor: ``(version, metrics)`` with the highest accuracy (then macro-F1, then the later
    name) among ``records`` (version -> metrics of the versions the gate let through, on the same
    images); None when there is none with well-formed metrics, or when it is the ``live`` version
    (the candidate is compared with that one already)."""
    ranked = []
    for version, metrics in records.items():
        try:
            nums = _numbers(metrics, version)
        except GateError:
            continue
        ranked.append(((nums["accuracy"], nums["macro_f1"], version), version, metrics))
    if not ranked:
        return None
    _, version, metrics = max(ranked, key=lambda r: r[0])
    return None if version == live else (version, metrics)
