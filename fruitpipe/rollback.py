"""Automatic rollback: for a window after each promotion, watch the new live model and re-activate
the previous one when it crosses a bar.

The API's model holder calls :meth:`RollbackGuard.on_swap` when the live version changes (an
activation, a retrain's publish, a shadow's promotion); from then on, for ``window_seconds``, every
``/predict`` answer is counted (:meth:`RollbackGuard.observe`: status, latency, verdict). Once at
least ``min_requests`` were seen, crossing any bar (5xx rate, p95 latency, not-fruit rate, or,
with at least ``min_reviews`` reviews of the new version, the label-based accuracy) re-activates
the previous version through the registry, logs an ``ERROR`` line and keeps the event for
``GET /models`` (``rollbacks``) and the dashboard.

The counts are per process, which is sound locally (``fruitpipe serve`` is one process). On AWS
each Lambda instance would judge only its own share of the traffic (a few requests, a p95 of a
handful), so there the guard is off (``RollbackBars(enabled=False)``, functions/api/handler.py):
the same four bars are CloudWatch alarms on the EMF metrics of every instance, which CloudWatch
pools, and the ``PostPromotion`` composite alarm invokes the rollback Lambda
(:mod:`fruitpipe.pipeline.rollback`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from .backends.base import ModelRegistry

log = logging.getLogger("fruitpipe.rollback")


@dataclass(frozen=True)
class RollbackBars:
    enabled: bool = True  # False: this process never watches (on AWS the pooled alarms decide)
    window_seconds: float = 3600.0  # how long after a promotion the new model is watched
    min_requests: int = 50  # no verdict on fewer /predict requests
    max_error_rate: float = 0.02  # share of /predict answers that are 5xx
    max_p95_ms: float = 150.0  # /predict p95 (the FruitpipePredictLatencyHigh alert's bar)
    max_not_fruit_rate: float = 0.30  # the FruitpipeNotFruitRateHigh alert's bar
    min_label_accuracy: float = 0.80  # on captures reviewed since the promotion ...
    min_reviews: int = 30  # ... once there are this many


class RollbackGuard:
    def __init__(self, registry: ModelRegistry, bars: RollbackBars | None = None, *,
                 accuracy: Callable[[str], dict[str, Any]] | None = None,
                 on_rollback: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.bars, self.accuracy, self.on_rollback, self.clock = (
            registry, bars or RollbackBars(), accuracy, on_rollback, clock)
        self._lock = threading.Lock()
        self._watch: dict[str, Any] | None = None
        self._latencies: list[float] = []
        self._rolling_back = False
        self.events: list[dict[str, Any]] = []  # newest last, at most 20

    def on_swap(self, old: str | None, new: str) -> None:
        """The live version changed from ``old`` to ``new``: watch ``new`` (not after our own rollback)."""
        with self._lock:
            if not self.bars.enabled or self._rolling_back or old is None or old == new:
                self._watch = None if self._rolling_back else self._watch
                return
            self._watch = {"version": new, "previous": old, "since": self.clock(), "n": 0, "errors": 0,
                           "not_fruit": 0}
            self._latencies = []

    def note_verdict(self, verdict: str) -> None:
        """One answered image's verdict (counted towards the not-fruit rate)."""
        with self._lock:
            if self._watch is not None:
                self._watch["not_fruit"] += int(verdict == "not_fruit")

    def observe(self, status: int, latency_ms: float) -> None:
        """One ``/predict`` request's outcome: status and latency (the metrics middleware's). Never raises."""
        try:
            with self._lock:
                w = self._watch
                if w is None:
                    return
                if self.clock() - w["since"] > self.bars.window_seconds:
                    self._watch = None  # the window passed: the promotion stands
                    return
                w["n"] += 1
                w["errors"] += int(status >= 500)
                self._latencies.append(latency_ms)
                reason = self._crossed(w)
            if reason:
                self._roll_back(w, reason)
        except Exception:  # noqa: BLE001 - watching must never fail a request
            log.exception("rollback guard failed")

    def _crossed(self, w: dict[str, Any]) -> str | None:
        b = self.bars
        if w["n"] < b.min_requests:
            return None
        p95 = float(np.percentile(self._latencies, 95))
        checks = [(w["errors"] / w["n"] > b.max_error_rate, f"5xx rate {w['errors'] / w['n']:.3f} > {b.max_error_rate}"),
                  (p95 > b.max_p95_ms, f"p95 latency {p95:.1f} ms > {b.max_p95_ms} ms"),
                  (w["not_fruit"] / w["n"] > b.max_not_fruit_rate,
                   f"not-fruit rate {w['not_fruit'] / w['n']:.3f} > {b.max_not_fruit_rate}")]
        if self.accuracy is not None:
            acc = self.accuracy(w["version"])["all"]
            if acc["n"] >= b.min_reviews and acc["accuracy"] < b.min_label_accuracy:
                checks.append((True, f"accuracy on {acc['n']} reviewed captures {acc['accuracy']:.3f} "
                                     f"< {b.min_label_accuracy}"))
        crossed = [text for bad, text in checks if bad]
        return "; ".join(crossed) if crossed else None

    def _roll_back(self, w: dict[str, Any], reason: str) -> None:
        with self._lock:
            if self._watch is not w:
                return  # another request already acted
            self._watch = None
            self._rolling_back = True
        try:
            self.registry.activate(w["previous"])
            event = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
                     "from": w["version"], "to": w["previous"], "reason": reason, "requests": w["n"],
                     "bars": asdict(self.bars)}
            self.events = (self.events + [event])[-20:]
            log.error("ROLLBACK: model %s -> %s after %d requests: %s", w["version"], w["previous"], w["n"], reason)
            if self.on_rollback is not None:
                self.on_rollback()
        finally:
            with self._lock:
                self._rolling_back = False
