"""The promotion gate: a candidate replaces the live model only if it is no worse.

Both models are evaluated on the same images, the frozen evaluation set that neither trained on
(:mod:`fruitpipe.recipe`, :mod:`fruitpipe.evaluation`); the gate compares their metrics. The
policy, deliberately simple (docs/retrain-pipeline.md):

* **No worse on every metric, no trade-offs.** Accuracy (a fruit photo answered ``not_fruit``
  counts as wrong) and macro-F1 must each be at least the live model's minus ``tolerance`` (0 by
  default), and the not-fruit rejection rate on the evaluation set's not-fruit images (when both
  were measured) at least the live model's minus ``ood_tolerance`` (0.005: one image in 200). A
  candidate better on accuracy but worse on rejection is rejected: accuracy never buys rejection.
* **A tie is promoted.** Equal on every metric means the candidate learned the new images at no
  cost on the evaluation set, and a model that knows the uploads is what a retrain is for. It can
  never lower the live model's figures, so a retrain with unchanged data cannot either.
* **No new data** never reaches the gate: the local trainer answers "nothing new to learn" unless
  forced (:meth:`fruitpipe.backends.local.LocalTrainer.nothing_new`); a forced run goes through
  this same rule.
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


def decide(candidate: Mapping[str, Any] | None, live: Mapping[str, Any] | None, *,
           tolerance: float = 0.0, ood_tolerance: float = OOD_TOLERANCE) -> Decision:
    """Compare candidate and live metrics measured on the same evaluation images.

    With no live model the candidate is promoted if its metrics are well formed.
    """
    cand = _numbers(candidate, "candidate")
    if live is None:
        return Decision(True, "no live model: the first valid model is promoted", cand, None)
    cur = _numbers(live, "live")
    worse = [f"{k} {cand[k]:.4f} < live {cur[k]:.4f}" for k in REQUIRED if cand[k] < cur[k] - tolerance]
    if "ood_rejected_rate" in cand and "ood_rejected_rate" in cur:
        if cand["ood_rejected_rate"] < cur["ood_rejected_rate"] - ood_tolerance:
            worse.append(f"ood_rejected_rate {cand['ood_rejected_rate']:.4f} < live "
                         f"{cur['ood_rejected_rate']:.4f}")
    if worse:
        return Decision(False, "candidate is worse than the live model: " + "; ".join(worse), cand, cur)
    keys = [k for k in (*REQUIRED, "ood_rejected_rate") if k in cand and k in cur]
    summary = ", ".join(f"{k} {cand[k]:.4f} vs {cur[k]:.4f}" for k in keys)
    tie = all(cand[k] == cur[k] for k in keys)
    return Decision(True, ("tie with the live model, promoted: it has learned the new images at no cost "
                           if tie else "candidate is no worse than the live model ") + f"({summary})", cand, cur)
