"""Shadow evaluation: a candidate model runs beside the live one on live requests, never answering,
before it may become live.

An admin (or, later, the retrain pipeline) starts a shadow for a version the offline gate passed
(:meth:`Shadow.start`). The state is a small JSON pointer next to the live one (locally
``models/shadow.json``, on AWS ``shadow.json`` in the models bucket: a
:class:`~fruitpipe.backends.base.ShadowPointer`), which every API process re-reads like the live
pointer. On a sampled share of ``/predict`` requests the API hands the already-preprocessed image
to :meth:`Shadow.offer` after the answer is sent; the candidate classifies it on a writer thread
(inline after the answer in Lambda) and the agreement, both not-fruit rates and both inference
latencies are counted. After ``requests`` shadowed requests (or ``seconds``) :func:`decide` applies
the bounds: within them the version is activated, otherwise it is ``held`` with the reason, shown
by ``GET /models``. Counts are per process; each process decides on what it saw, and the first to
finish writes the outcome (a finished pointer is never changed again).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import numpy as np

from .backends.base import ModelRegistry, ShadowPointer
from .labels import answered_class

log = logging.getLogger("fruitpipe.shadow")


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
    n: int = 0
    agree: int = 0
    live_not_fruit: int = 0
    shadow_not_fruit: int = 0
    live_ms: list[float] = field(default_factory=list)
    shadow_ms: list[float] = field(default_factory=list)

    def add(self, live: Any, shadow: Any, live_ms: float, shadow_ms: float) -> None:
        self.n += 1
        self.agree += int(answered_class(live.predicted_class, live.verdict)
                          == answered_class(shadow.predicted_class, shadow.verdict))
        self.live_not_fruit += int(live.verdict == "not_fruit")
        self.shadow_not_fruit += int(shadow.verdict == "not_fruit")
        self.live_ms.append(live_ms)
        self.shadow_ms.append(shadow_ms)

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
    """(promote, reason) for a :meth:`Stats.summary`."""
    if not summary["n"]:
        return False, "no request was shadowed before the time limit"
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


def plan(version: str, live: str | None, now: datetime, requests: int = 200, seconds: float = 3600.0,
         sample_rate: float = 1.0, bounds: Bounds | None = None) -> dict[str, Any]:
    """The pointer state of a new shadow of ``version`` beside ``live``. Raises ``ValueError`` for bad numbers."""
    if requests < 1 or seconds <= 0 or not 0 < sample_rate <= 1:
        raise ValueError("requests >= 1, seconds > 0 and 0 < sample_rate <= 1")
    return {"version": version, "status": "running", "started": _iso(now),
            "deadline": _iso(now + timedelta(seconds=seconds)), "requests": int(requests),
            "sample_rate": float(sample_rate), "bounds": asdict(bounds or Bounds()), "live": live}


class Shadow:
    """One API process's side of the shadow (see the module doc). ``load`` turns a version into a
    classifier (the model holder's, on the shared backbone)."""

    def __init__(self, pointer: ShadowPointer | None, registry: ModelRegistry, load: Callable[[str], Any],
                 bounds: Bounds | None = None, *, in_thread: bool = True, refresh_seconds: float = 1.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 rng: random.Random | None = None, queue_items: int = 32,
                 on_promote: Callable[[], None] | None = None) -> None:
        self.pointer, self.registry, self.load = pointer, registry, load
        self.on_promote = on_promote  # e.g. the model holder's refresh: serve the new version at once
        self.bounds = bounds or Bounds()
        self.in_thread, self.refresh_seconds, self.clock = in_thread, refresh_seconds, clock
        self.rng = rng or random.Random()
        self._state: dict[str, Any] | None = None
        self._clf: Any = None
        self._stats = Stats()
        self._next_read = 0.0
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(queue_items)
        self._writer: threading.Thread | None = None
        self.dropped = 0

    # -- state ----------------------------------------------------------------------------------

    def state(self, force: bool = False) -> dict[str, Any] | None:
        """The shadow pointer (re-read at most every ``refresh_seconds``), with this process's
        running counts under ``seen`` while it runs."""
        if self.pointer is None:
            return None
        if force or time.monotonic() >= self._next_read:
            self._next_read = time.monotonic() + self.refresh_seconds
            state = self.pointer.read()
            with self._lock:
                if state is None or self._state is None or state.get("version") != self._state.get("version") \
                        or state.get("started") != self._state.get("started"):
                    self._stats, self._clf = Stats(), None
                self._state = state
        with self._lock:
            if self._state is None:
                return None
            out = dict(self._state)
            if out.get("status") == "running":
                out["seen"] = self._stats.summary()
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
        self.registry.fetch(version)  # NotFound / BundleError before anything is written
        self.pointer.write(state)
        self.state(force=True)
        return state

    # -- the request path -------------------------------------------------------------------------

    def offer(self, image: np.ndarray, live: Any, live_ms: float) -> None:
        """After an answer: maybe shadow this request (never raises)."""
        try:
            state = self.state()
            if not state or state.get("status") != "running" or self.rng.random() >= state.get("sample_rate", 1.0):
                return
            if not self.in_thread:
                self._run(state, image, live, live_ms)
                return
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._loop, name="fruitpipe-shadow", daemon=True)
                    self._writer.start()
            try:
                self._queue.put_nowait((state, image, live, live_ms))
            except queue.Full:
                self.dropped += 1
        except Exception:  # noqa: BLE001 - the shadow must never fail a prediction
            log.exception("shadow offer failed")

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                self._run(*item)
            except Exception:  # noqa: BLE001
                log.exception("shadow run failed")
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        self._queue.join()

    def _run(self, state: dict[str, Any], image: np.ndarray, live: Any, live_ms: float) -> None:
        with self._lock:
            if self._clf is None:
                self._clf = self.load(state["version"])
            clf = self._clf
        if image.shape[0] != clf.size:  # a candidate on a backbone of another input size
            from PIL import Image
            image = np.asarray(Image.fromarray(image).resize((clf.size, clf.size), Image.Resampling.BILINEAR))
        t0 = time.perf_counter()
        pred = clf.predict_arrays(image[None])[0]
        shadow_ms = (time.perf_counter() - t0) * 1000
        with self._lock:
            self._stats.add(live, pred, live_ms, shadow_ms)
            summary = self._stats.summary()
        deadline = datetime.fromisoformat(state["deadline"].replace("Z", "+00:00"))
        if summary["n"] >= state["requests"] or self.clock() >= deadline:
            self._finish(state, summary)

    def _finish(self, state: dict[str, Any], summary: dict[str, Any]) -> None:
        assert self.pointer is not None
        latest = self.pointer.read()
        if not latest or latest.get("status") != "running" or latest.get("started") != state["started"]:
            return  # another process finished it, or a new shadow started
        promote, reason = decide(summary, self.bounds)
        outcome = dict(latest, status="promoted" if promote else "held", reason=reason, result=summary,
                       finished=_iso(self.clock()))
        if promote:
            self.registry.activate(state["version"])
        self.pointer.write(outcome)
        if promote and self.on_promote is not None:
            self.on_promote()
        log.info("shadow of %s %s: %s", state["version"], outcome["status"], reason)
        self.state(force=True)
