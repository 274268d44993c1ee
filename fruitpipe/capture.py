"""Learning from production: prediction ids, feedback, bounded capture, the review queue, and
label-based accuracy.

Every answered image gets a ``prediction_id`` (:func:`new_prediction_id`): time-sortable (the
UTC time to the millisecond, then 64 random bits), so the id alone tells a record's age and the
oldest records sort first, and unguessable, so only whoever received an answer can give
feedback on it. A share of predictions is *captured* (:class:`CapturePolicy`): the image (an
EXIF-free JPEG of at most :data:`CAPTURE_MAX_SIDE` px a side, :func:`shrink`), the prediction
and its model version, kept in a :class:`~fruitpipe.backends.base.CaptureStore` for at most
``retention_days`` and ``max_items``. Kept are: a random ``sample_rate`` share, every
``uncertain`` answer, and every prediction someone gave feedback on while its image was still
in the in-memory pending buffer (:class:`Pending`, a few minutes). Nothing else is ever written.

An admin reviews captured predictions in the order of :func:`worth` and accepts a label; the
image then goes through the data store's ``add`` (the one validation and de-duplication path of
uploads) tagged with origin ``review``. Reviewed captures give the live model's accuracy per
class (:func:`review_accuracy`), the label-based monitoring signal.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

from PIL import Image

from . import imaging
from .backends.base import CaptureStore, DataStore, NotFound, UploadResult
from .labels import LABELS, OOD_FOLDER, answered_class
from .worker import DroppingWorker

log = logging.getLogger("fruitpipe.capture")

CAPTURE_PREFIX = "capture"
REVIEW_ORIGIN = "review"  # the origin tag of an image a reviewer accepted into the dataset
ANSWERS: tuple[str, ...] = (*LABELS, OOD_FOLDER)  # what feedback and reviews may say
CAPTURE_MAX_SIDE = 512  # px; the model sees 224x224, so a 512 px copy loses nothing for training
ID_RE = re.compile(r"^(\d{8}T\d{9})Z-[0-9a-f]{16}$")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_prediction_id(now: datetime) -> str:
    """``YYYYmmddTHHMMSSfffZ-<16 hex>``: UTC time to the millisecond + 64 random bits."""
    now = now.astimezone(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(8)}"


def is_prediction_id(value: str) -> bool:
    return bool(ID_RE.match(value or ""))


def id_time(prediction_id: str) -> datetime:
    """When the prediction ``prediction_id`` was made (UTC). Raises ``ValueError`` for a bad id."""
    m = ID_RE.match(prediction_id)
    if not m:
        raise ValueError(f"not a prediction id: {prediction_id!r}")
    return datetime.strptime(m.group(1) + "000", "%Y%m%dT%H%M%S%f").replace(tzinfo=timezone.utc)


def check_answer(value: str) -> str:
    """``value`` if it is one of the six classes or ``not_fruit``; else ``ValueError``."""
    if value not in ANSWERS:
        raise ValueError(f"unknown answer {value!r}; expected one of {', '.join(ANSWERS)}")
    return value


def _env_bool(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


@dataclass
class CapturePolicy:
    """What is kept and for how long. ``enabled=False`` is the off switch: no image is kept,
    ``/feedback`` answers 503 and the review queue is empty."""

    enabled: bool = True
    sample_rate: float = 0.02  # share of all predictions kept at random (the unbiased sample)
    retention_days: float = 30.0  # no captured image is kept (or shown) longer
    max_items: int = 5000  # the oldest go first beyond this count
    pending_seconds: float = 600.0  # how long an uncaptured image waits in memory for feedback
    pending_items: int = 256
    pending_bytes: int = 64 * 1024 * 1024
    prune_every: int = 20  # captures between two retention sweeps (also swept at start and listing)
    # Write captures on a writer thread (queue of ``queue_items``; full: the capture is dropped, the
    # answer never waits). Off in Lambda, where a thread is frozen once the answer is out: there the
    # write runs after the answer is built, before the invocation ends.
    write_in_thread: bool = True
    queue_items: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "CapturePolicy":
        """``FRUITPIPE_CAPTURE`` (off switch: 0/false/off), ``FRUITPIPE_CAPTURE_SAMPLE_RATE``,
        ``FRUITPIPE_CAPTURE_RETENTION_DAYS``, ``FRUITPIPE_CAPTURE_MAX_ITEMS``. Raises ``ValueError``."""
        env = os.environ if env is None else env
        d = cls()
        policy = cls(enabled=_env_bool(env.get("FRUITPIPE_CAPTURE"), d.enabled),
                     sample_rate=float(env.get("FRUITPIPE_CAPTURE_SAMPLE_RATE") or d.sample_rate),
                     retention_days=float(env.get("FRUITPIPE_CAPTURE_RETENTION_DAYS") or d.retention_days),
                     max_items=int(env.get("FRUITPIPE_CAPTURE_MAX_ITEMS") or d.max_items),
                     write_in_thread=not env.get("AWS_LAMBDA_FUNCTION_NAME"))
        if not 0.0 <= policy.sample_rate <= 1.0 or policy.retention_days <= 0 or policy.max_items < 1:
            raise ValueError("capture: sample rate must be in [0, 1], retention days and max items positive")
        return policy


def margin(probabilities: Mapping[str, float]) -> float:
    """Top-1 minus top-2 probability (0..1): small means the head hesitated between two classes."""
    top = sorted((float(p) for p in probabilities.values()), reverse=True) + [0.0, 0.0]
    return round(top[0] - top[1], 6)


def shrink(data: bytes, max_side: int = CAPTURE_MAX_SIDE) -> bytes:
    """A validated image as an upright RGB JPEG of at most ``max_side`` px a side, without any
    metadata (no EXIF: no GPS position, camera serial or time). Raises ``InvalidImage``."""
    img = imaging.decode(data, draft_size=max_side)
    img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass
class Record:
    """One captured prediction (the JSON kept beside its image)."""

    prediction_id: str
    captured: str  # ISO time the prediction was made
    model_version: str
    predicted_class: str
    verdict: str
    confidence: float
    margin: float
    probabilities: dict[str, float]
    reasons: list[str]  # why kept: sample, uncertain, feedback
    feedback: dict[str, Any] | None = None  # {"correct": answer, "at": iso}
    review: dict[str, Any] | None = None  # {"label": answer, "at": iso, "dataset": upload result}

    @property
    def answered(self) -> str:
        """What the user was told: the class, or ``not_fruit``."""
        return answered_class(self.predicted_class, self.verdict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Record":
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in names})


def worth(rec: Record) -> tuple[int, float, str]:
    """Sort key of the review queue (smallest first): feedback that disagrees with the model,
    then ``uncertain`` answers, then the rest; within each, the smallest margin; then oldest."""
    if rec.feedback and rec.feedback.get("correct") != rec.answered:
        tier = 0
    elif rec.verdict == "uncertain":
        tier = 1
    else:
        tier = 2
    return (tier, rec.margin, rec.prediction_id)


def review_accuracy(records: Iterable[Record], model_version: str | None, since: datetime) -> dict[str, Any]:
    """Accuracy of ``model_version``'s answers on captures reviewed at or after ``since``.

    Per class of the reviewed (true) answer, six classes and ``not_fruit``: ``n`` reviewed,
    ``correct`` (the answer the user got equals the reviewer's label) and ``accuracy`` (None
    when ``n`` is 0). Captures over-represent hard cases (every uncertain answer and every
    feedback is kept), so this reads lower than accuracy on random traffic; ``sampled`` gives the
    same figures over the random sample alone.
    """
    def empty() -> dict[str, dict[str, Any]]:
        return {a: {"n": 0, "correct": 0} for a in ANSWERS}

    groups = {"all": empty(), "sampled": empty()}
    for rec in records:
        if not rec.review or (model_version and rec.model_version != model_version):
            continue
        try:
            at = datetime.fromisoformat(str(rec.review.get("at", "")).replace("Z", "+00:00"))
        except ValueError:
            continue
        label = rec.review.get("label")
        if at < since or label not in ANSWERS:
            continue
        for name in ("all", "sampled") if "sample" in rec.reasons else ("all",):
            groups[name][label]["n"] += 1
            groups[name][label]["correct"] += int(rec.answered == label)
    out: dict[str, Any] = {"model_version": model_version, "since": iso(since)}
    for name, per in groups.items():
        n = sum(c["n"] for c in per.values())
        ok = sum(c["correct"] for c in per.values())
        for c in per.values():
            c["accuracy"] = round(c["correct"] / c["n"], 4) if c["n"] else None
        out[name] = {"n": n, "correct": ok, "accuracy": round(ok / n, 4) if n else None, "per_class": per}
    return out


class Pending:
    """Recent uncaptured predictions (raw image + prediction), in memory only, so that feedback
    given within ``seconds`` can still capture its image. Bounded by count, bytes and age; never
    written anywhere unless feedback arrives."""

    def __init__(self, seconds: float, items: int, max_bytes: int) -> None:
        self.seconds, self.items, self.max_bytes = seconds, items, max_bytes
        self._d: OrderedDict[str, tuple[float, dict[str, Any], bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _evict(self, now: float) -> None:
        while self._d:
            pid, (t, _, data) = next(iter(self._d.items()))
            if len(self._d) <= self.items and self._bytes <= self.max_bytes and now - t <= self.seconds:
                break
            del self._d[pid]
            self._bytes -= len(data)

    def add(self, pid: str, prediction: dict[str, Any], data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        now = time.monotonic()
        with self._lock:
            self._d[pid] = (now, prediction, data)
            self._bytes += len(data)
            self._evict(now)

    def take(self, pid: str) -> tuple[dict[str, Any], bytes] | None:
        with self._lock:
            self._evict(time.monotonic())
            item = self._d.pop(pid, None)
            if item is None:
                return None
            self._bytes -= len(item[2])
            return item[1], item[2]


class CaptureDisabled(RuntimeError):
    """Feedback or review while capture is switched off (HTTP 503)."""


class UnknownPrediction(LookupError):
    """No captured or pending prediction has this id (HTTP 404)."""


class CaptureFailed(RuntimeError):
    """A prediction could not be written for review (a server-side storage error, HTTP 503)."""


@dataclass
class Capturer:
    """The capture policy applied to one store: what the API calls after each prediction, on
    feedback, and for the review queue. ``clock`` and ``rng`` are injectable (tests)."""

    store: CaptureStore | None
    policy: CapturePolicy = field(default_factory=CapturePolicy)
    clock: Clock = utc_now
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.pending = Pending(self.policy.pending_seconds, self.policy.pending_items, self.policy.pending_bytes)
        self._puts = 0
        self._lock = threading.Lock()
        self._worker = DroppingWorker("fruitpipe-capture", self.keep, self.policy.queue_items)

    @property
    def enabled(self) -> bool:
        return self.policy.enabled and self.store is not None

    def new_id(self) -> str:
        return new_prediction_id(self.clock())

    # -- the predict path: a cheap decision in the request, the write after the answer ------------

    def reasons(self, prediction: Mapping[str, Any]) -> list[str]:
        """Why this prediction is kept (empty: not kept now). One random draw per call."""
        out = []
        if self.rng.random() < self.policy.sample_rate:
            out.append("sample")
        if prediction.get("verdict") == "uncertain":
            out.append("uncertain")
        return out

    def offer(self, pid: str, prediction: dict[str, Any], data: bytes) -> list[str]:
        """Decide for one answered prediction: returns the reasons to keep it (the caller then
        runs :meth:`keep`, after the answer has been sent); otherwise it waits in the pending
        buffer for feedback. Costs microseconds: no image work happens here."""
        if not self.enabled:
            return []
        reasons = self.reasons(prediction)
        if not reasons:
            self.pending.add(pid, prediction, data)
        return reasons

    def submit(self, pid: str, prediction: dict[str, Any], data: bytes, reasons: list[str]) -> None:
        """:meth:`keep` now (``write_in_thread`` off), or hand it to the writer thread without
        waiting: when its queue is full the capture is dropped (counted in ``dropped``)."""
        if not self.policy.write_in_thread:
            self.keep(pid, prediction, data, reasons)
            return
        self._worker.submit(pid, prediction, data, reasons)

    @property
    def dropped(self) -> int:
        """Captures not kept because the writer's queue was full."""
        return self._worker.dropped

    def flush(self) -> None:
        """Wait until every submitted capture is written (tests, benchmarks, shutdown)."""
        self._worker.flush()

    def keep(self, pid: str, prediction: Mapping[str, Any], data: bytes, reasons: list[str],
             feedback: dict[str, Any] | None = None) -> Record | None:
        """Shrink the image and write image + record. Never raises (a capture must not fail a
        prediction); returns the record, or None when it could not be kept."""
        assert self.store is not None
        try:
            image = shrink(data)
            rec = Record(prediction_id=pid, captured=iso(id_time(pid)),
                         model_version=str(prediction["model_version"]),
                         predicted_class=str(prediction["predicted_class"]), verdict=str(prediction["verdict"]),
                         confidence=float(prediction["confidence"]),
                         margin=margin(prediction.get("probabilities") or {}),
                         probabilities={k: float(v) for k, v in (prediction.get("probabilities") or {}).items()},
                         reasons=list(reasons), feedback=feedback)
            self.store.put(rec.prediction_id, rec.as_dict(), image)
        except Exception:  # noqa: BLE001 - logged; the prediction was already answered
            log.exception("could not capture prediction %s", pid)
            return None
        with self._lock:
            self._puts += 1
            sweep = self._puts % max(1, self.policy.prune_every) == 0
        if sweep:
            self.prune()
        return rec

    def prune(self) -> int:
        """Delete every capture older than the retention days and beyond the count limit."""
        if self.store is None:
            return 0
        cutoff = self.clock() - timedelta(days=self.policy.retention_days)
        return self.store.prune(new_prediction_id(cutoff).split("-")[0], self.policy.max_items)

    def _expired(self, pid: str) -> bool:
        return id_time(pid) < self.clock() - timedelta(days=self.policy.retention_days)

    # -- feedback, review -----------------------------------------------------------------------

    def _require(self) -> CaptureStore:
        if not self.enabled:
            raise CaptureDisabled("this deployment keeps no predictions (capture is switched off)")
        assert self.store is not None
        return self.store

    def get(self, pid: str) -> Record:
        """The captured record ``pid``; :class:`UnknownPrediction` when there is none (or it expired)."""
        store = self._require()
        if not is_prediction_id(pid) or self._expired(pid):
            raise UnknownPrediction("no kept prediction has this id")
        try:
            return Record.from_dict(store.get(pid))
        except NotFound:
            raise UnknownPrediction("no kept prediction has this id") from None

    def image(self, pid: str) -> bytes:
        self.get(pid)  # existence and retention
        try:
            return self._require().image(pid)
        except NotFound:
            raise UnknownPrediction("no kept image has this id") from None

    def feedback(self, pid: str, correct: str) -> Record:
        """Record that the right answer for ``pid`` is ``correct``; a pending prediction is
        captured now (reason ``feedback``). Raises ``ValueError``, :class:`UnknownPrediction`,
        :class:`CaptureDisabled`, :class:`CaptureFailed` (the prediction stays pending: a retry
        can succeed)."""
        store = self._require()
        check_answer(correct)
        note = {"correct": correct, "at": iso(self.clock())}
        unknown = UnknownPrediction(
            f"no prediction with this id is held: feedback is taken for {self.policy.pending_seconds / 60:g} "
            "min after an answer, and while a prediction is kept for review")
        if not is_prediction_id(pid):
            raise unknown
        waiting = self.pending.take(pid)
        if waiting is not None:
            rec = self.keep(pid, waiting[0], waiting[1], ["feedback"], feedback=note)
            if rec is None:
                self.pending.add(pid, *waiting)
                raise CaptureFailed("the prediction could not be stored for review (a storage error on the "
                                    "server); the feedback was not recorded, try again later")
            return rec
        try:
            rec = self.get(pid)
        except UnknownPrediction:
            raise unknown from None
        rec.feedback = note
        if "feedback" not in rec.reasons:
            rec.reasons.append("feedback")
        store.update(pid, rec.as_dict())
        return rec

    def records(self) -> list[Record]:
        """Every kept record within retention (a sweep runs first)."""
        store = self._require()
        self.prune()
        return [Record.from_dict(d) for d in store.records()]

    def queue(self, include_reviewed: bool = False, limit: int = 50) -> list[Record]:
        """Captured predictions most worth a look first (:func:`worth`)."""
        recs = [r for r in self.records() if include_reviewed or r.review is None]
        return sorted(recs, key=worth)[:limit]

    def accept(self, pid: str, label: str, data_store: DataStore) -> tuple[Record, UploadResult | None]:
        """A reviewer's label for ``pid``. A class label files the image into the dataset through
        ``data_store.add`` (validation, de-duplication) with origin ``review``; ``not_fruit`` is
        recorded only (the dataset holds the six classes). Raises ``ValueError`` and the lookups'
        errors."""
        check_answer(label)
        rec = self.get(pid)
        result = None
        if label in LABELS:
            result = data_store.add(label, self.image(pid), f"{pid}.jpg", origin=REVIEW_ORIGIN)
        rec.review = {"label": label, "at": iso(self.clock()),
                      "dataset": result.as_dict() if result is not None else None}
        self._require().update(pid, rec.as_dict())
        return rec, result

    def accuracy(self, model_version: str | None, window_days: float = 7.0) -> dict[str, Any]:
        """:func:`review_accuracy` of ``model_version`` over the last ``window_days``."""
        if not self.enabled:
            return review_accuracy([], model_version, self.clock())
        return review_accuracy(self.records(), model_version, self.clock() - timedelta(days=window_days))
