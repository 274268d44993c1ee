"""The promotion gate: a candidate replaces the live model only if it is no worse.

Both models are evaluated on the same images, the frozen evaluation set that neither trained on
(:mod:`fruitpipe.recipe`, :mod:`fruitpipe.evaluation`); the gate compares them. The policy
(docs/retrain-pipeline.md):

* **Not significantly worse, on the same photos** (a retrain that learned new images). Two fits of
  the same data differ by about ±0.7 points on the 614 test photos (±4 photos), so "no worse by any
  amount" rejected about half of honest retrains. When both models carry per-image outcomes
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


def decide(candidate: Mapping[str, Any] | None, live: Mapping[str, Any] | None, *,
           tolerance: float = 0.0, ood_tolerance: float = OOD_TOLERANCE, strict: bool = False,
           alpha: float = ALPHA, margin: float = MARGIN) -> Decision:
    """Compare candidate and live metrics measured on the same evaluation images.

    With no live model the candidate is promoted if its metrics are well formed. ``strict`` (a run
    with nothing new to learn) or metrics without matching per-image outcomes: no metric may be
    worse by more than ``tolerance``. Otherwise the paired rule of the module docstring.

    Raises:
        GateError: accuracy or macro-F1 missing or not finite in either record.
    """
    cand = _numbers(candidate, "candidate")
    if live is None:
        return Decision(True, "no live model: the first valid model is promoted", cand, None)
    cur = _numbers(live, "live")
    pairs = None if strict else _pairs(candidate, live)  # type: ignore[arg-type]
    worse: list[str] = []
    test = ""
    if pairs is None:
        worse += [f"{k} {cand[k]:.4f} < live {cur[k]:.4f}" for k in REQUIRED if cand[k] < cur[k] - tolerance]
    else:
        b, c, n = pairs
        p = mcnemar_p_value(b, c)
        test = (f"paired test on {n} photos: {b} right only by the live model, {c} only by the candidate, "
                f"one-sided p={p:.3f}")
        if p < alpha:
            worse.append(f"significantly worse on the same photos ({test} < {alpha})")
        limit = max(margin, 1.0 / n) if n else margin  # one photo, on a set of fewer than 1/margin
        worse += [f"{k} {cand[k]:.4f} is more than {limit:.3f} below live {cur[k]:.4f}"
                  for k in REQUIRED if cand[k] < cur[k] - limit - tolerance - 1e-12]
    if "ood_rejected_rate" in cand and "ood_rejected_rate" in cur:
        if cand["ood_rejected_rate"] < cur["ood_rejected_rate"] - ood_tolerance:
            worse.append(f"ood_rejected_rate {cand['ood_rejected_rate']:.4f} < live "
                         f"{cur['ood_rejected_rate']:.4f}")
    if worse:
        return Decision(False, "candidate is worse than the live model: " + "; ".join(worse), cand, cur)
    keys = [k for k in (*REQUIRED, "ood_rejected_rate") if k in cand and k in cur]
    summary = ", ".join(f"{k} {cand[k]:.4f} vs {cur[k]:.4f}" for k in keys) + (f"; {test}" if test else "")
    tie = all(cand[k] == cur[k] for k in keys)
    if tie:
        return Decision(True, "tie with the live model, promoted: it has learned the new images at no cost "
                        f"({summary})", cand, cur)
    if pairs is not None and any(cand[k] < cur[k] for k in REQUIRED):
        return Decision(True, f"candidate is not significantly worse than the live model ({summary})", cand, cur)
    return Decision(True, f"candidate is no worse than the live model ({summary})", cand, cur)
