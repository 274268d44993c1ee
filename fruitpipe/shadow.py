"""Shadow evaluation: a candidate model runs beside the live one on live requests, never answering,
before it may become live.

An admin (or the retrain pipeline) starts a shadow for a version the offline gate passed
(:meth:`Shadow.start`). The state is a small JSON pointer next to the live one (locally
``models/shadow.json``, on AWS ``shadow.json`` in the models bucket: a
:class:`~fruitpipe.backends.base.ShadowPointer`), which every API process re-reads like the live
pointer. ``/predict`` answers with :func:`predict_live`, which keeps the backbone's outputs; on a
sampled share of requests :meth:`Shadow.offer` gets them after the answer is sent and hands them
to one background worker (locally; a bounded queue that drops work when full, at normal CPU
priority; inline after the answer in Lambda). When the candidate runs on the same backbone (the
usual case: only block 17 and the head are trained) it reuses those outputs, so a shadowed request
costs the candidate's numpy block and head, not a second backbone pass.

Counts are pooled over processes: each process (Lambda instance) writes its own running counts to
``shadow-stats/<run>/<instance>.json`` beside the pointer at most every ``flush_seconds`` and reads
the others'; the decision is taken on the sum. It is taken by the first process that sees the sum
reach ``requests`` (:func:`decide`: within the bounds the version is activated, otherwise it is
``held`` with the failed bounds), or that notices the deadline (``seconds`` after the start) has
passed, lazily, on a request or a ``GET /models``: a shadow that reaches its deadline with fewer
than ``requests`` shadowed requests is ``held`` with ``reason_code`` ``shadow_timeout`` (too little
evidence to promote; start it again with fewer requests or a higher sample). An admin may stop a
running shadow early (:meth:`Shadow.stop`): ``stopped`` with ``reason_code`` ``stopped_by_operator``
and the pooled counts so far, never promoted; every process stops shadowing when it next re-reads
the pointer. A finished pointer is never changed again.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import numpy as np

from .backends.base import ModelRegistry, NotFound, NotRunning, ShadowPointer, VersionRejected
from .labels import answered_class
from .worker import DroppingWorker

log = logging.getLogger("fruitpipe.shadow")
MAX_SAMPLES = 2000  # latency samples each process keeps (the latest) for the p95s
TIMEOUT = "shadow_timeout"
LIVE_CHANGED = "live_changed"
STOPPED = "stopped_by_operator"


class ShadowRunning(RuntimeError):
    """A shadow is already running (HTTP 409)."""


@dataclass(frozen=True)
class Bounds:
    """What a shadowed candidate must show to be promoted."""

    min_agreement: float = 0.90  # share of requests where both give the same answered class
    max_not_fruit_diff: float = 0.05  # |candidate not-fruit rate - live not-fruit rate|
    max_latency_ratio: float = 1.5  # candidate p95 inference time / live p95 inference time


@dataclass
class Stats:
    """Running counts of shadowed requests (one process's, or several merged); JSON-able."""

    n: int = 0
    agree: int = 0
    live_not_fruit: int = 0
    shadow_not_fruit: int = 0
    live_ms: list[float] = field(default_factory=list)
    shadow_ms: list[float] = field(default_factory=list)

    def add(self, live: Any, shadow: Any, live_ms: float, shadow_ms: float) -> None:
        """One shadowed request: both predictions and both inference times in ms."""
        self.n += 1
        self.agree += int(answered_class(live.predicted_class, live.verdict)
                          == answered_class(shadow.predicted_class, shadow.verdict))
        self.live_not_fruit += int(live.verdict == "not_fruit")
        self.shadow_not_fruit += int(shadow.verdict == "not_fruit")
        self.live_ms.append(live_ms)
        self.shadow_ms.append(shadow_ms)
        del self.live_ms[:-MAX_SAMPLES], self.shadow_ms[:-MAX_SAMPLES]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Stats":
        """Counts as :meth:`to_dict` wrote them; anything malformed counts as nothing."""
        try:
            return cls(**{k: int(data[k]) for k in ("n", "agree", "live_not_fruit", "shadow_not_fruit")},
                       live_ms=[float(v) for v in data["live_ms"]][-MAX_SAMPLES:],
                       shadow_ms=[float(v) for v in data["shadow_ms"]][-MAX_SAMPLES:])
        except (KeyError, TypeError, ValueError):
            return cls()

    @classmethod
    def merged(cls, parts: Iterable["Stats"]) -> "Stats":
        """The sum of several processes' counts (their latency samples together)."""
        out = cls()
        for part in parts:
            out.n, out.agree = out.n + part.n, out.agree + part.agree
            out.live_not_fruit += part.live_not_fruit
            out.shadow_not_fruit += part.shadow_not_fruit
            out.live_ms += part.live_ms
            out.shadow_ms += part.shadow_ms
        return out

    def summary(self) -> dict[str, Any]:
        """``n``, ``agreement``, both not-fruit rates and both p95 inference times in ms (None when empty)."""
        def p95(v: list[float]) -> float | None:
            return round(float(np.percentile(v, 95)), 3) if v else None
        n = max(1, self.n)
        return {"n": self.n, "agreement": round(self.agree / n, 4) if self.n else None,
                "live_not_fruit_rate": round(self.live_not_fruit / n, 4) if self.n else None,
                "shadow_not_fruit_rate": round(self.shadow_not_fruit / n, 4) if self.n else None,
                "live_p95_ms": p95(self.live_ms), "shadow_p95_ms": p95(self.shadow_ms)}


def decide(summary: dict[str, Any], bounds: Bounds) -> tuple[bool, str]:
    """(promote, reason) for a :meth:`Stats.summary` with ``n`` >= 1."""
    fails = []
    if summary["agreement"] < bounds.min_agreement:
        fails.append(f"agreement {summary['agreement']:.3f} < {bounds.min_agreement}")
    diff = abs(summary["shadow_not_fruit_rate"] - summary["live_not_fruit_rate"])
    if diff > bounds.max_not_fruit_diff:
        fails.append(f"not-fruit rate differs by {diff:.3f} > {bounds.max_not_fruit_diff}")
    ratio = summary["shadow_p95_ms"] / max(summary["live_p95_ms"], 1e-6)
    if ratio > bounds.max_latency_ratio:
        fails.append(f"p95 inference {ratio:.2f}x the live model's > {bounds.max_latency_ratio}x")
    if fails:
        return False, "; ".join(fails)
    return True, (f"agreement {summary['agreement']:.3f}, not-fruit diff {diff:.3f}, "
                  f"p95 ratio {ratio:.2f} over {summary['n']} requests")


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_id(state: dict[str, Any]) -> str:
    """The name of one shadow run for its counts' folder: its ``run`` (version, start time and a
    random part, so a version stopped and shadowed again within the same second starts from zero);
    version + start time for a pointer written before runs had one."""
    return re.sub(r"[^A-Za-z0-9._-]", "", str(state.get("run") or f"{state.get('version')}-{state.get('started')}"))


def _deadline(state: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(state["deadline"]).replace("Z", "+00:00"))


@dataclass(frozen=True)
class LiveAnswer:
    """The live model's answer to one image, with what the shadow can reuse: the preprocessed
    image ``uint8 [224, 224, 3]``, the backbone it ran on and that backbone's outputs
    (:meth:`~fruitpipe.classifier.Backbone.outputs`), and the times in ms."""

    image: np.ndarray
    prediction: Any
    ms: float  # backbone + block + head + rejection
    backbone: Any
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray]
    backbone_ms: float


def predict_live(clf: Any, image: np.ndarray) -> LiveAnswer:
    """Classify one preprocessed image with ``clf`` (a :class:`~fruitpipe.classifier.Classifier`)
    exactly as ``predict_arrays`` does, keeping the backbone's outputs for :meth:`Shadow.offer`."""
    batch = image[None]
    t0 = time.perf_counter()
    emb, pooled, block_in = clf.backbone.outputs(batch)
    t1 = time.perf_counter()
    pred = clf.predict_embeddings(emb, pooled, images=lambda rows: batch[rows], block_in=block_in)[0]
    t2 = time.perf_counter()
    return LiveAnswer(image, pred, (t2 - t0) * 1000, clf.backbone, (emb, pooled, block_in), (t1 - t0) * 1000)


def predict_beside(clf: Any, live: LiveAnswer) -> tuple[Any, float]:
    """What ``clf`` (another model: a shadowed candidate, the previous live model) answers to the
    image of ``live`` (:func:`predict_live`), and its inference time in ms. When ``clf`` runs on the
    same backbone instance, it reuses the live answer's backbone outputs (only its numpy block and
    head run; the time counts the live backbone pass); otherwise a full pass, the image resized to
    ``clf``'s input size when that differs."""
    t0 = time.perf_counter()
    if clf.backbone is live.backbone:  # same backbone: its outputs are this model's too
        emb, pooled, block_in = live.outputs
        batch = live.image[None]
        pred = clf.predict_embeddings(emb, pooled, images=lambda rows: batch[rows], block_in=block_in)[0]
        return pred, live.backbone_ms + (time.perf_counter() - t0) * 1000
    image = live.image
    if image.shape[0] != clf.size:  # a model on a backbone of another input size
        from PIL import Image
        image = np.asarray(Image.fromarray(image).resize((clf.size, clf.size), Image.Resampling.BILINEAR))
    pred = clf.predict_arrays(image[None])[0]
    return pred, (time.perf_counter() - t0) * 1000


def plan(version: str, live: str | None, now: datetime, requests: int = 200, seconds: float = 3600.0,
         sample_rate: float = 1.0, bounds: Bounds | None = None) -> dict[str, Any]:
    """The pointer state of a new shadow of ``version`` beside ``live``. Raises ``ValueError`` for bad numbers."""
    if requests < 1 or seconds <= 0 or not 0 < sample_rate <= 1:
        raise ValueError("requests >= 1, seconds > 0 and 0 < sample_rate <= 1")
    return {"version": version, "status": "running", "started": _iso(now),
            "run": f"{version}-{_iso(now)}-{uuid.uuid4().hex[:8]}",
            "deadline": _iso(now + timedelta(seconds=seconds)), "requests": int(requests),
            "sample_rate": float(sample_rate), "bounds": asdict(bounds or Bounds()), "live": live}


class Shadow:
    """One API process's side of the shadow (see the module doc). ``load`` turns a version into a
    classifier (the model holder's, on the shared backbone)."""

    def __init__(self, pointer: ShadowPointer | None, registry: ModelRegistry, load: Callable[[str], Any],
                 bounds: Bounds | None = None, *, in_thread: bool = True, refresh_seconds: float = 1.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 rng: random.Random | None = None, queue_items: int = 32,
                 on_promote: Callable[[], None] | None = None, flush_seconds: float = 10.0) -> None:
        self.pointer, self.registry, self.load = pointer, registry, load
        self.on_promote = on_promote  # e.g. the model holder's refresh: serve the new version at once
        self.bounds = bounds or Bounds()
        self.in_thread, self.refresh_seconds, self.clock = in_thread, refresh_seconds, clock
        self.flush_seconds = flush_seconds  # how often this process shares its counts (and reads the others')
        self.rng = rng or random.Random()
        self.instance = uuid.uuid4().hex[:16]  # this process's counts object
        self._state: dict[str, Any] | None = None
        self._clf: Any = None
        self._stats = Stats()  # this process's
        self._others = Stats()  # the other processes', as last read
        self._next_read = 0.0
        self._next_flush = 0.0
        self._lock = threading.Lock()
        self._finishing = threading.Lock()
        # Not at a lower OS priority: the worker holds the GIL in its numpy parts, and a GIL holder
        # the OS leaves waiting would stall the request threads (priority inversion).
        self._worker = DroppingWorker("fruitpipe-shadow", self._run, queue_items)

    # -- state ----------------------------------------------------------------------------------

    def state(self, force: bool = False, seen: bool = True) -> dict[str, Any] | None:
        """The shadow pointer (re-read at most every ``refresh_seconds``), with the running counts
        (this process's and the others' as last read) under ``seen`` while it runs (unless ``seen``
        is False: the request path does not need them). A running shadow past its deadline is
        decided here first (never raises for that)."""
        out = self._read(force, seen)
        if out is None or out.get("status") != "running":
            return out
        try:
            if self.clock() >= _deadline(out):
                self._finish(out)
                return self._read(True)
        except Exception:  # noqa: BLE001 - a failed decision is retried on the next read
            log.exception("shadow deadline check failed")
        return out

    def _read(self, force: bool, seen: bool = True) -> dict[str, Any] | None:
        if self.pointer is None:
            return None
        if force or time.monotonic() >= self._next_read:
            self._next_read = time.monotonic() + self.refresh_seconds
            state = self.pointer.read()
            with self._lock:
                if state is None or self._state is None or run_id(state) != run_id(self._state):
                    self._stats, self._others, self._clf, self._next_flush = Stats(), Stats(), None, 0.0
                self._state = state
        with self._lock:
            if self._state is None:
                return None
            out = dict(self._state)
            if out.get("status") != "running" or not seen:
                return out
            out["seen"] = Stats.merged([self._stats, self._others]).summary()
            return out

    def start(self, version: str, requests: int = 200, seconds: float = 3600.0, sample_rate: float = 1.0) -> dict[str, Any]:
        """Shadow ``version`` (an available version, not the live one). Raises :class:`ShadowRunning`,
        ``NotFound`` (via the registry), ``ValueError`` for the live version or bad numbers."""
        if self.pointer is None:
            raise ValueError("this backend has no shadow pointer")
        state = plan(version, self.registry.live_version(), self.clock(), requests, seconds, sample_rate, self.bounds)
        current = self.state(force=True)
        if current and current.get("status") == "running":
            raise ShadowRunning(f"version {current['version']} is in shadow since {current['started']}")
        if version == self.registry.live_version():
            raise ValueError(f"version {version} is already live")
        rejected = next((v for v in self.registry.versions() if v.version == version and v.status == "rejected"), None)
        if rejected is not None:  # it could never be promoted (activate refuses it too)
            raise VersionRejected(f"version {version} was rejected by the gate ({rejected.reason}); "
                                  "it cannot be shadowed")
        self.registry.fetch(version)  # NotFound / BundleError before anything is written
        self.pointer.write(state)
        self._read(True)
        return state

    # -- the request path -------------------------------------------------------------------------

    def offer(self, live: LiveAnswer) -> None:
        """After an answer (:func:`predict_live`): maybe shadow this request. Never raises; never
        waits: locally the work goes to the worker's queue, or is dropped (``dropped``) when full."""
        try:
            state = self.state(seen=False)
            if not state or state.get("status") != "running" or self.rng.random() >= state.get("sample_rate", 1.0):
                return
            if self.clock() >= _deadline(state):
                return  # past its deadline (another thread is deciding): no request counts any more
            answered_by = getattr(live.prediction, "model_version", None)
            if state.get("live") and answered_by and answered_by != state["live"]:
                current = self.registry.live_version()  # rare: read only when the answer disagrees
                if current != state["live"]:
                    # a retrain or an admin changed the live model: the comparison is against a model
                    # that no longer serves, and promoting the candidate would undo that change
                    self._end(state, f"{LIVE_CHANGED}: the live model changed from {state['live']} to "
                                     f"{current} during the shadow", LIVE_CHANGED)
                return  # else an instance not yet refreshed answered with an older model: not counted
            if not self.in_thread:
                self._run(state, live)
                return
            self._worker.submit(state, live)
        except Exception:  # noqa: BLE001 - the shadow must never fail a prediction
            log.exception("shadow offer failed")

    @property
    def dropped(self) -> int:
        """Shadowed requests dropped because the worker's queue was full."""
        return self._worker.dropped

    def flush(self) -> None:
        """Wait until every shadowed request handed to the worker is done."""
        self._worker.flush()

    def _run(self, state: dict[str, Any], live: LiveAnswer) -> None:
        with self._lock:
            if self._state is None or run_id(self._state) != run_id(state):
                return  # queued under a run that has ended since: neither its model nor its counts
            if self._clf is None:
                self._clf = self.load(state["version"])
            clf = self._clf
        pred, shadow_ms = predict_beside(clf, live)
        with self._lock:
            self._stats.add(live.prediction, pred, live.ms, shadow_ms)
            total = self._stats.n + self._others.n
            due = time.monotonic() >= self._next_flush
        if due and total < state["requests"]:
            total = self._sync(state)
        if total >= state["requests"] or self.clock() >= _deadline(state):
            self._finish(state)
            self._read(True)

    def _sync(self, state: dict[str, Any]) -> int:
        """Share this process's counts and read the others'; the pooled number of shadowed requests."""
        assert self.pointer is not None
        run = run_id(state)
        with self._lock:
            mine = self._stats.to_dict()
            self._next_flush = time.monotonic() + self.flush_seconds
        self.pointer.write_counts(run, self.instance, mine)
        others = Stats.merged(Stats.from_dict(c) for i, c in self.pointer.read_counts(run).items() if i != self.instance)
        with self._lock:
            self._others = others
            return self._stats.n + others.n

    def stop(self, version: str) -> dict[str, Any]:
        """Stop the running shadow of ``version`` now: the pointer says ``stopped`` with
        ``reason_code`` ``stopped_by_operator`` and the pooled counts so far under ``result``; nothing
        is promoted and the live pointer is not touched. Returns that final state. Raises
        ``NotRunning`` when no shadow of ``version`` is running (or this backend has no shadow
        pointer), ``NotFound`` for an unknown version."""
        if self.pointer is None:
            raise NotRunning("this backend runs no shadow evaluation")
        current = self.state(force=True)  # also aligns this process's counts with the pointer's run
        if current and current.get("status") == "running" and current.get("version") == version:
            outcome = self._end(current, f"{STOPPED}: stopped by an operator before its decision; nothing was "
                                         "promoted", STOPPED, status="stopped", wait=True)
            if outcome is not None:
                return outcome
            current = self.state(force=True)  # another process decided it meanwhile
        if not any(v.version == version for v in self.registry.versions()):
            raise NotFound(f"model version {version} not found")
        if current is None or current.get("version") != version:
            latest = f" (the latest is of {current['version']}: {current.get('status')})" if current else ""
            raise NotRunning(f"no shadow of {version} is running{latest}")
        raise NotRunning(f"the shadow of {version} is not running: it is {current.get('status')}"
                         + (f" ({current['reason']})" if current.get("reason") else ""))

    def _end(self, state: dict[str, Any], reason: str, code: str, status: str = "held",
             wait: bool = False) -> dict[str, Any] | None:
        """End the shadow ``state`` as ``status`` without a decision on its counts (once, in one
        process), with the pooled counts so far. Returns the state written; None when it is no longer
        running, or (unless ``wait``) when this process is deciding it already."""
        assert self.pointer is not None
        if not self._finishing.acquire(blocking=wait):
            return None
        try:
            latest = self.pointer.read()
            if not latest or latest.get("status") != "running" or run_id(latest) != run_id(state):
                return None
            self._sync(latest)
            with self._lock:
                summary = Stats.merged([self._stats, self._others]).summary()
            outcome = dict(latest, status=status, reason=reason, reason_code=code, result=summary,
                           finished=_iso(self.clock()))
            self.pointer.write(outcome)
            log.info("shadow of %s %s: %s", state["version"], status, reason)
        finally:
            self._finishing.release()
        self._read(True)
        return outcome

    def _finish(self, state: dict[str, Any]) -> None:
        """Decide on the pooled counts, once: promote or hold (see the module doc)."""
        assert self.pointer is not None
        if not self._finishing.acquire(blocking=False):
            return  # this process is already deciding
        try:
            latest = self.pointer.read()
            if not latest or latest.get("status") != "running" or run_id(latest) != run_id(state):
                return  # another process finished it, or a new shadow started
            self._sync(latest)
            with self._lock:
                summary = Stats.merged([self._stats, self._others]).summary()
            if summary["n"] >= latest["requests"]:
                promote, reason = decide(summary, self.bounds)
                extra = {}
            else:
                promote, extra = False, {"reason_code": TIMEOUT}
                reason = (f"{TIMEOUT}: {summary['n']} of {latest['requests']} requests shadowed by the "
                          f"deadline {latest['deadline']}")
            if promote:
                try:
                    self.registry.activate(state["version"])
                except (VersionRejected, NotFound) as exc:  # e.g. rejected or deleted meanwhile: held, once
                    promote, reason = False, f"passed its shadow but could not be promoted: {exc}"
            outcome = dict(latest, status="promoted" if promote else "held", reason=reason, result=summary,
                           finished=_iso(self.clock()), **extra)
            self.pointer.write(outcome)
            if promote and self.on_promote is not None:
                self.on_promote()
            log.info("shadow of %s %s: %s", state["version"], outcome["status"], reason)
        finally:
            self._finishing.release()
