"""The promotion gate: a candidate replaces the live model only if it is no worse.

Both models are evaluated on the same images (see :mod:`fruitpipe.evaluation`); the gate compares
their metrics. The rule is deliberately simple and written down in the docs: the candidate's
accuracy and macro-F1 must each be at least the live model's minus ``tolerance`` (0 by default),
and its not-fruit rejection rate on out-of-distribution images (when measured) must not drop by
more than ``ood_tolerance``.
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


def decide(candidate: Mapping[str, Any] | None, live: Mapping[str, Any] | None, *,
           tolerance: float = 0.0, ood_tolerance: float = 0.02) -> Decision:
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
    summary = ", ".join(f"{k} {cand[k]:.4f} vs {cur[k]:.4f}" for k in REQUIRED)
    return Decision(True, f"candidate is no worse than the live model ({summary})", cand, cur)
