"""Prometheus metrics on a per-app registry, plus the recent-latency window for the dashboard.

A per-app :class:`CollectorRegistry` (not the process-global default) lets tests and the load
test create several apps in one process without "duplicated timeseries" errors.
"""

from __future__ import annotations

import threading
from datetime import datetime
import time
from collections import Counter as PyCounter, deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..labels import LABELS, VERDICTS, answered_class

RETRAIN_STATES = ("idle", "running", "succeeded", "rejected", "failed")
BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, latency_window: int = 2000) -> None:
        self.registry = CollectorRegistry()
        self.started = time.time()
        r = self.registry
        self.requests = Counter("fruitpipe_http_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("fruitpipe_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route", "status"], buckets=BUCKETS, registry=r)
        self.predictions = Counter("fruitpipe_predictions_total", "Images classified",
                                   ["predicted_class", "verdict"], registry=r)
        self.inference = Histogram("fruitpipe_inference_seconds", "Decode + inference time per request",
                                   ["endpoint"], buckets=BUCKETS, registry=r)
        self.model_info = Gauge("fruitpipe_model_info", "The live model version (value 1)",
                                ["version"], registry=r)
        self.model_swaps = Counter("fruitpipe_model_swaps_total", "Live model changes picked up", registry=r)
        self.retrain_runs = Counter("fruitpipe_retrain_runs_total", "Retrain runs started",
                                    ["trigger"], registry=r)
        self.uploads = Counter("fruitpipe_uploads_total", "Uploaded training files", ["status"], registry=r)
        self.retrain_state = Gauge("fruitpipe_retrain_state",
                                   "State of the latest retrain run (1 for its state, 0 for the others)",
                                   ["state"], registry=r)
        self.retrain_finished = Gauge("fruitpipe_retrain_last_finished_timestamp_seconds",
                                      "When the latest retrain run finished (Unix time; 0 if never)", registry=r)
        self.reviews = Counter("fruitpipe_reviews_total", "Captured predictions an admin labelled, by label and "
                               "whether the live answer was right", ["label", "correct"], registry=r)
        self.review_accuracy = Gauge("fruitpipe_review_accuracy", "Accuracy of the live model on captures reviewed "
                                     "in the accuracy window, by reviewed class (all: every class)", ["class"],
                                     registry=r)
        self.review_count = Gauge("fruitpipe_review_count", "Captures of the live model reviewed in the accuracy "
                                  "window, by reviewed class (all: every class)", ["class"], registry=r)
        self.uptime = Gauge("fruitpipe_uptime_seconds", "Seconds since the app started", registry=r)
        self.uptime.set_function(lambda: time.time() - self.started)
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._by_class: PyCounter[str] = PyCounter()
        self._by_verdict: PyCounter[str] = PyCounter()
        self._count = 0
        self._version: str | None = None
        self.observer: Any = None  # e.g. fruitpipe.rollback.RollbackGuard: sees each /predict status and latency

    def set_model(self, version: str) -> None:
        with self._lock:
            if self._version == version:
                return
            if self._version is not None:
                self.model_info.remove(self._version)
                self.model_swaps.inc()
            self._version = version
        self.model_info.labels(version=version).set(1)

    def record_prediction(self, predicted_class: str, verdict: str) -> None:
        """Count one answered image: by verdict always, by class only when the answer is a fruit.

        An image answered ``not_fruit`` (an astronaut) is not counted under the head's top class
        (it would show as a "rotten banana"): its ``predicted_class`` label is ``not_fruit``.
        """
        answered = answered_class(predicted_class, verdict)
        self.predictions.labels(predicted_class=answered, verdict=verdict).inc()
        with self._lock:
            self._count += 1
            if answered in LABELS:
                self._by_class[answered] += 1
            self._by_verdict[verdict] += 1

    def set_retrain(self, state: str, finished: str | None) -> None:
        """Mirror the latest retrain run (``idle``, ``running``, ``succeeded``, ``rejected``,
        ``failed``; ``finished`` an ISO 8601 time or None) into the two retrain gauges."""
        for known in RETRAIN_STATES:
            self.retrain_state.labels(state=known).set(1.0 if known == state else 0.0)
        stamp = 0.0
        if finished:
            try:
                stamp = datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp()
            except ValueError:
                stamp = 0.0
        self.retrain_finished.set(stamp)

    def record_review(self, answered: str, label: str) -> None:
        """Count one review: the reviewer's ``label`` and whether the user's answer matched it."""
        self.reviews.labels(label=label, correct=str(answered == label).lower()).inc()

    def set_review_accuracy(self, summary: dict[str, Any]) -> None:
        """Mirror :func:`fruitpipe.capture.review_accuracy`'s ``all`` figures into the two review
        gauges (accuracy NaN where nothing was reviewed: no data, not 0%)."""
        group = summary["all"]
        rows = [("all", group)] + list(group["per_class"].items())
        for name, row in rows:
            self.review_count.labels(**{"class": name}).set(row["n"])
            acc = row["accuracy"]
            self.review_accuracy.labels(**{"class": name}).set(float("nan") if acc is None else acc)

    def record_predict_latency(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds * 1000.0)

    @property
    def prediction_count(self) -> int:
        return self._count

    def stats(self) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self._latencies)
            recent = list(self._latencies)[-120:]
            by_class = {c: self._by_class.get(c, 0) for c in LABELS}
            by_verdict = {v: self._by_verdict.get(v, 0) for v in VERDICTS}
            count = self._count

        def pct(q: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)

        return {
            "uptime_seconds": round(time.time() - self.started, 1),
            "model_version": self._version,
            "predictions": count,
            "by_class": by_class,
            "by_verdict": by_verdict,
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95),
                           "mean": round(sum(lat) / len(lat), 2) if lat else None},
            "latency_samples": len(lat),
            "recent_latencies_ms": [round(x, 2) for x in recent],
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)
