"""Automatic rollback: for a window after each promotion, watch the new live model and re-activate
the previous one when it crosses a bar.

The API's model holder calls :meth:`RollbackGuard.on_swap` when the live version changes (an
activation, a retrain's publish, a shadow's promotion); from then on, for ``window_seconds``, every
``/predict`` answer is counted (:meth:`RollbackGuard.observe`: status and latency). Once at least
``min_requests`` were seen, crossing any bar (5xx rate, p95 latency when the new version's
serving cost can differ, or, with at least ``min_reviews`` reviews of the new version, the
label-based accuracy) re-activates the previous version through the registry, logs an ``ERROR``
line and keeps the event for ``GET /models`` (``rollbacks``), the live pointer's ``reason``
(``fruitpipe models`` shows it) and the dashboard.

**Latency is judged only when it can be the model's.** The p95 of ``/predict`` measures the machine
and the traffic as much as the model: a burst of 16 concurrent uploads on a 2-core machine right
after ``fruitpipe models --activate`` queues requests to a p95 above the bar whichever version
serves them. What a version alone decides is its compute per request, and that is fixed by its
serving shape (:func:`serving_shape`: the backbone's name and sha256, the block's and the head's
dtype, feature recipe and layer sizes, the input size, the rejection method and whether it takes a
zoomed second look). Two versions of the same shape run the same operations on the same tensor
sizes, so a slower p95 after the swap is the load's, not the model's, and the p95 bar does not judge
it; a version of another shape (another backbone, a wider head) is judged by it as before. When a
manifest cannot be read the bar judges (the safe side). Chosen over timing both models on the same
requests: the timings would share the same noisy, loaded machine, and the shape answers the
question exactly. A retrain of the same shape can still move its rejection bars and so how often
the zoomed second look runs (at most one more backbone pass on the images the first look would
reject); that difference is left to the shadow's latency ratio before a promotion.

**Not-fruit answers are judged against the previous model, on the same requests.** A high
not-fruit rate by itself says as much about the traffic as about the model: a user testing
not-fruit photos right after a retrain would roll back a model that rejected every one of them
correctly. So for each watched ``/predict`` request, after the answer is sent,
:meth:`RollbackGuard.offer` also runs the previous live model on the same image (its block and head
on the live answer's backbone outputs when both share the backbone, as the shadow does:
:func:`fruitpipe.shadow.predict_beside`) and counts the requests only the new model answers
``not_fruit`` (*b*) and only the previous one would (*c*). The new model is rolled back when it
answers ``not_fruit`` significantly more often on the same requests: the one-sided exact McNemar
test (:func:`fruitpipe.gate.mcnemar_p_value`, the gate's) gives p < ``not_fruit_alpha`` (0.001:
far stricter than the gate's 0.05 because the test is repeated at every request of the window; by
simulation, ``pytest tests/test_rollback.py -k false_alarms -s``, two equally good models that
disagree on 20% of the requests' not-fruit verdicts roll back in 1 of 300 2000-request windows; the
test holds it under 3%; a model that answers ``not_fruit``
on 10 requests its predecessor accepted, and on none the other way, already reaches it here; the
AWS alarm uses the test's normal approximation, which needs 12) and the
excess ``(b - c) / n`` is above
``max_not_fruit_excess`` (0.05, the shadow's bound on the not-fruit rate difference), over at least
``min_requests`` paired requests. Traffic of not-fruit photos moves both models alike (*b* and *c*
stay small) and rolls nothing back; a model that rejects real fruit the previous one accepted does
roll back. ``/predict/batch`` requests are not paired.

**A restart keeps the watch.** The live pointer records when it moved and from which version
(:meth:`~fruitpipe.backends.base.ModelRegistry.live_record`): a server that starts within
``window_seconds`` of a promotion watches the version again for the rest of the window (counts
start from zero), unless the pointer is itself an automatic rollback.

The counts are per process, which is sound locally (``fruitpipe serve`` is one process). On AWS
each Lambda instance would judge only its own share of the traffic (a few requests, a p95 of a
handful), so there the guard decides nothing (``RollbackBars(enabled=False)``,
functions/api/handler.py): CloudWatch alarms on the EMF metrics of every instance, which CloudWatch
pools, feed the ``PostPromotion`` composite alarm that invokes the rollback Lambda
(:mod:`fruitpipe.pipeline.rollback`). The guard still watches there and pairs each answer with the
previous model's; ``on_pair`` emits the outcome (:func:`fruitpipe.aws_metrics.record_pair`), and
the ``PostPromotionNotFruit`` alarm applies the not-fruit bar above to the pooled counts
(docs/operations.md). Its latency member stays the absolute API Gateway p95 (``ApiP95Latency``):
a Lambda environment serves one request at a time, so a burst scales out instead of queueing, and
that alarm needs two of three 5-minute periods over its bar.
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
from .bundle import Manifest, read_manifest
from .gate import mcnemar_p_value
from .shadow import LiveAnswer, predict_beside

log = logging.getLogger("fruitpipe.rollback")
REASON_PREFIX = "automatic rollback"  # the live pointer's reason after one (here and on AWS)


@dataclass(frozen=True)
class RollbackBars:
    enabled: bool = True  # False: this process never rolls back (on AWS the pooled alarms decide)
    window_seconds: float = 3600.0  # how long after a promotion the new model is watched
    min_requests: int = 50  # no verdict on fewer /predict requests
    max_error_rate: float = 0.02  # share of /predict answers that are 5xx
    # /predict p95 (the FruitpipePredictLatencyHigh alert's bar); judged only for a version of another
    # serving shape than the previous one (module doc)
    max_p95_ms: float = 150.0
    # not_fruit answers beyond the previous model's on the same requests (share of paired requests);
    # the shadow's bound on the not-fruit rate difference (fruitpipe.shadow.Bounds.max_not_fruit_diff)
    max_not_fruit_excess: float = 0.05
    not_fruit_alpha: float = 0.001  # one-sided significance of that excess (McNemar), tested at every request
    min_label_accuracy: float = 0.80  # on captures reviewed since the promotion ...
    min_reviews: int = 30  # ... once there are this many


def serving_shape(manifest: Manifest) -> dict[str, Any]:
    """What a request's compute cost depends on in a bundle's manifest (module doc): backbone
    ``name``/``sha256``; the head's and the block's fields but their file names (``dtype``,
    ``features``, ``layers`` units and activations, ``outputs``, the block's ``input_tensor``);
    the input ``size``; the rejection ``method`` and whether a zoom bar (second look) is set."""
    head = {k: v for k, v in manifest.head.items() if k not in ("file", "block")}
    block = {k: v for k, v in (manifest.head.get("block") or {}).items() if k != "file"}
    return {"backbone": [manifest.backbone_name, manifest.raw.get("backbone", {}).get("sha256")],
            "head": head, "block": block, "size": manifest.preprocessing.get("size"),
            "rejection": manifest.rejection.get("method"),
            "zoom": manifest.rejection.get("min_similarity_zoom") is not None}


def _age_seconds(stamp: Any) -> float | None:
    """Seconds since an ISO 8601 UTC time (``...Z``), or None when unreadable."""
    try:
        then = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    if then.tzinfo is None:
        return None
    return (datetime.now(timezone.utc) - then).total_seconds()


class RollbackGuard:
    """One API process's post-promotion watch (see the module doc). ``load`` turns a version into a
    classifier on the shared backbone (the model holder's); without it not-fruit is not judged."""

    def __init__(self, registry: ModelRegistry, bars: RollbackBars | None = None, *,
                 accuracy: Callable[[str], dict[str, Any]] | None = None,
                 on_rollback: Callable[[], None] | None = None,
                 load: Callable[[str], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.bars, self.accuracy, self.on_rollback, self.clock = (
            registry, bars or RollbackBars(), accuracy, on_rollback, clock)
        self.load = load
        # called (new model's answer is not_fruit, previous model's is) for each paired request; on
        # AWS the EMF metrics the PostPromotion alarm pools (fruitpipe.aws_metrics.record_pair)
        self.on_pair: Callable[[bool, bool], None] | None = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._watch: dict[str, Any] | None = None
        self._latencies: list[float] = []
        self._rolling_back = False
        self.events: list[dict[str, Any]] = []  # newest last, at most 20

    def on_swap(self, old: str | None, new: str) -> None:
        """The live version changed from ``old`` to ``new``: watch ``new`` (not after a rollback:
        ours, or one the live pointer records). ``old`` None (the first model this process loads):
        resume the watch from the live pointer when it moved less than ``window_seconds`` ago (a
        restart right after a promotion; on AWS, an instance started after it). What a watch does
        depends on ``bars.enabled`` (decide) and ``on_pair`` (report), see :meth:`offer`."""
        if self._rolling_back:
            with self._lock:
                self._watch = None
            return
        record = self._live_record()
        if record.get("version") == new and str(record.get("reason") or "").startswith(REASON_PREFIX):
            with self._lock:
                self._watch = None  # the pointer is a rollback (here or by the AWS rollback Lambda)
            return
        since = self.clock()
        if old is None:
            old, age = self._resumable(record, new)
            since -= age
        if old is None or old == new:
            return
        judge_latency = self._cost_can_differ(old, new) if self.bars.enabled else False
        with self._lock:
            self._watch = {"version": new, "previous": old, "since": since, "n": 0, "errors": 0,
                           "paired": 0, "new_only": 0, "previous_only": 0, "model": None,
                           "judge_latency": judge_latency}
            self._latencies = []
        if since < self.clock():
            log.info("resuming the post-promotion watch of %s (live since %.0f s, previous %s)", new,
                     self.clock() - since, old)

    def _cost_can_differ(self, old: str, new: str) -> bool:
        """Whether ``new``'s serving cost can differ from ``old``'s: their :func:`serving_shape`
        differ, or a manifest cannot be read (then True, logged)."""
        try:
            shapes = [serving_shape(read_manifest(self.registry.fetch(v))) for v in (old, new)]
        except Exception as exc:  # noqa: BLE001 - unknown shape: the latency bar judges, as before
            log.warning("cannot compare the serving shapes of %s and %s (%s): the p95 latency bar judges %s",
                        old, new, exc, new)
            return True
        if shapes[0] == shapes[1]:
            log.info("%s has the serving shape of %s: its p95 latency is not judged (the load's, not the model's)",
                     new, old)
        return shapes[0] != shapes[1]

    def _live_record(self) -> dict[str, Any]:
        try:
            return self.registry.live_record() or {}
        except Exception:  # noqa: BLE001 - no resumed watch is better than no server
            log.exception("cannot read the live pointer for the rollback watch")
            return {}

    def _resumable(self, record: dict[str, Any], new: str) -> tuple[str | None, float]:
        """(previous version, seconds since the pointer moved) when the live pointer ``record`` says
        ``new`` went live within the window; else (None, 0)."""
        age = _age_seconds(record.get("updated"))
        previous = record.get("previous")
        if (record.get("version") != new or not isinstance(previous, str) or age is None
                or not 0 <= age < self.bars.window_seconds):
            return None, 0.0
        return previous, age

    @property
    def watching(self) -> dict[str, Any] | None:
        """The current watch (version, previous, counts) or None; a copy."""
        with self._lock:
            return None if self._watch is None else {k: v for k, v in self._watch.items() if k != "model"}

    def offer(self, live: LiveAnswer) -> None:
        """After a ``/predict`` answer (:func:`~fruitpipe.shadow.predict_live`): within the watch, what
        the previous model answers to the same image, paired with the live answer's verdict. Never
        raises."""
        try:
            with self._lock:
                w = self._watch
                if w is not None and self._expired(w):
                    return
            if (w is None or self.load is None or not (self.bars.enabled or self.on_pair is not None)
                    or getattr(live.prediction, "model_version", w["version"]) != w["version"]):
                return  # not watching, or an answer by another model (a request that began before the swap)
            previous = self._previous_model(w)
            if previous is None:
                return
            pred, _ = predict_beside(previous, live)
            new_nf, old_nf = live.prediction.verdict == "not_fruit", pred.verdict == "not_fruit"
            if self.on_pair is not None:
                self.on_pair(new_nf, old_nf)
            if not self.bars.enabled:
                return
            with self._lock:
                if self._watch is not w:
                    return
                w["paired"] += 1
                w["new_only"] += int(new_nf and not old_nf)
                w["previous_only"] += int(old_nf and not new_nf)
                reason = self._not_fruit_excess(w)  # the other bars are observe()'s
            if reason:
                self._roll_back(w, reason)
        except Exception:  # noqa: BLE001 - watching must never fail a request
            log.exception("rollback guard failed")

    def _expired(self, w: dict[str, Any]) -> bool:
        """Whether the window of watch ``w`` passed (then the promotion stands: the watch ends). Under the lock."""
        if self.clock() - w["since"] > self.bars.window_seconds:
            self._watch = None
            return True
        return False

    def _previous_model(self, w: dict[str, Any]) -> Any:
        """The previous version's classifier, loaded once per watch; None (logged once) if it cannot be.
        Requests whose task comes while it loads wait for it (once per watch, a bundle read: the
        backbone is shared), so every request is paired."""
        if w["model"] is not None:  # loaded (or failed) already: no lock on the hot path
            return w["model"] or None
        self._load_lock.acquire()
        try:
            if w["model"] is None:
                try:
                    w["model"] = self.load(w["previous"])  # type: ignore[misc]
                except Exception as exc:  # noqa: BLE001 - e.g. deleted: the other bars still watch
                    w["model"] = False
                    log.warning("cannot load the previous model %s (%s): not-fruit answers of %s are not "
                                "judged in this watch", w["previous"], exc, w["version"])
            return w["model"] or None
        finally:
            self._load_lock.release()

    def observe(self, status: int, latency_ms: float) -> None:
        """One ``/predict`` request's outcome: status and latency (the metrics middleware's). Never raises."""
        try:
            with self._lock:
                w = self._watch
                if w is None:
                    return
                if self._expired(w) or not self.bars.enabled:
                    return  # on AWS (not enabled) the pooled alarms judge status and latency
                w["n"] += 1
                w["errors"] += int(status >= 500)
                self._latencies.append(latency_ms)
                reason = self._crossed(w)
            if reason:
                self._roll_back(w, reason)
        except Exception:  # noqa: BLE001 - watching must never fail a request
            log.exception("rollback guard failed")

    def _not_fruit_excess(self, w: dict[str, Any]) -> str | None:
        """The not-fruit bar of the module doc, on the paired counts; None while within it."""
        n, b, c = w["paired"], w["new_only"], w["previous_only"]
        if n < self.bars.min_requests:
            return None
        excess = (b - c) / n
        if excess <= self.bars.max_not_fruit_excess:
            return None
        p = mcnemar_p_value(b, c)  # exact: O(b + c), only once the excess is there
        if p < self.bars.not_fruit_alpha:
            return (f"answers not_fruit on {b - c} more of {n} requests than {w['previous']} does on the same "
                    f"images (excess {excess:.3f} > {self.bars.max_not_fruit_excess}; {b} only by {w['version']}, "
                    f"{c} only by {w['previous']}; one-sided p={p:.2g} < {self.bars.not_fruit_alpha})")
        return None

    def _crossed(self, w: dict[str, Any]) -> str | None:
        b = self.bars
        checks: list[tuple[bool, str]] = []
        if w["n"] >= b.min_requests:
            checks.append((w["errors"] / w["n"] > b.max_error_rate,
                           f"5xx rate {w['errors'] / w['n']:.3f} > {b.max_error_rate}"))
            if w["judge_latency"]:
                p95 = float(np.percentile(self._latencies, 95))
                checks.append((p95 > b.max_p95_ms, f"p95 latency {p95:.1f} ms > {b.max_p95_ms} ms (serving "
                                                   f"shape differs from {w['previous']}'s)"))
            if self.accuracy is not None:
                acc = self.accuracy(w["version"])["all"]
                if acc["n"] >= b.min_reviews and acc["accuracy"] < b.min_label_accuracy:
                    checks.append((True, f"accuracy on {acc['n']} reviewed captures {acc['accuracy']:.3f} "
                                         f"< {b.min_label_accuracy}"))
        not_fruit = self._not_fruit_excess(w)
        checks.append((not_fruit is not None, not_fruit or ""))
        crossed = [text for bad, text in checks if bad]
        return "; ".join(crossed) if crossed else None

    def _roll_back(self, w: dict[str, Any], reason: str) -> None:
        with self._lock:
            if self._watch is not w:
                return  # another request already acted
            self._watch = None
            self._rolling_back = True
        try:
            self.registry.activate(w["previous"], reason=f"{REASON_PREFIX}: {reason}")
            event = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
                     "from": w["version"], "to": w["previous"], "reason": reason, "requests": w["n"],
                     "paired": w["paired"], "bars": asdict(self.bars)}
            self.events = (self.events + [event])[-20:]
            log.error("ROLLBACK: model %s -> %s after %d requests: %s", w["version"], w["previous"], w["n"], reason)
            if self.on_rollback is not None:
                self.on_rollback()
        finally:
            with self._lock:
                self._rolling_back = False
