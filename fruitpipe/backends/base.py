"""The interface the API talks to. Two implementations: local (store folder) and AWS.

Nothing in :mod:`fruitpipe.api` knows which one it has; that is what lets the same FastAPI app
run under uvicorn on a laptop and in Lambda behind API Gateway.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

UploadStatus = Literal["added", "duplicate", "rejected"]
VersionStatus = Literal["live", "available", "rejected"]
RunState = Literal["idle", "running", "succeeded", "rejected", "failed", "cancelled"]


class NotFound(LookupError):
    """A model version (or run) that does not exist."""


class VersionRejected(ValueError):
    """Activating a version the gate rejected (HTTP 409)."""


class RetrainRunning(RuntimeError):
    """A retrain was asked for while one is running (HTTP 409)."""


class NotRunning(RuntimeError):
    """Nothing to cancel: no retrain is running, or it has reached its decision (the gate and the
    publication are never interrupted, so a cancel never leaves a half-published model); or no
    shadow of that version is running (:meth:`fruitpipe.shadow.Shadow.stop`). HTTP 409 ``not_running``."""


class NothingToLearn(RuntimeError):
    """A retrain was asked for with no new training data since the live model (HTTP 409,
    ``nothing_new``); ``force`` runs it anyway."""


@dataclass
class UploadResult:
    filename: str
    status: UploadStatus
    label: str | None = None
    sha256: str | None = None
    key: str | None = None
    error: str | None = None  # stable code when rejected (imaging codes, unknown_class)
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelVersion:
    version: str
    created: str
    status: VersionStatus
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why a version was rejected by the gate

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RetrainStatus:
    state: RunState = "idle"
    run_id: str | None = None
    trigger: str | None = None
    stage: str | None = None
    percent: float = 0.0  # over the whole run, never goes backwards
    eta_seconds: float | None = None  # estimated seconds left (None: unknown)
    started: str | None = None
    finished: str | None = None
    log_tail: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    warmup: dict[str, Any] | None = None  # local: the first-start warm-up while it runs, or its failure until the first run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DataStore(ABC):
    @abstractmethod
    def add(self, label: str, data: bytes, filename: str, *, origin: str = "upload") -> UploadResult:
        """Validate and file one image; never raises for bad input (status ``rejected``).

        ``origin`` says how it came (``upload``, ``drop-folder``, ``review``: an admin accepted a
        captured prediction's label); a newly filed image keeps it, and a retrain counts its
        training images by origin (``training_data.origins`` in the manifest).
        """

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Images per class in the dataset (all six classes present)."""


class ModelRegistry(ABC):
    @abstractmethod
    def versions(self) -> list[ModelVersion]:
        """Every version, newest first."""

    @abstractmethod
    def live_version(self) -> str | None: ...

    @abstractmethod
    def fetch(self, version: str) -> Path:
        """A local folder holding the verified bundle of ``version`` (raises :class:`NotFound`)."""

    @abstractmethod
    def activate(self, version: str, *, reason: str = "") -> None:
        """Move the live pointer (rollback or roll forward); the pointer records the version it
        replaces (``previous``), when (``updated``) and ``reason``. Raises :class:`NotFound`."""

    def live_record(self) -> dict[str, Any] | None:
        """The live pointer as stored (``version``, ``updated``, ``previous``, ``reason``; the keys a
        registry records), or None when unknown. Lets a restarted server resume the post-promotion
        watch (:mod:`fruitpipe.rollback`)."""
        return None

    def frozen_metrics(self, version: str) -> dict[str, Any] | None:
        """``version``'s score on the frozen evaluation set (``eval_set`` plus the figures of
        :data:`fruitpipe.version_metrics.FIGURES`), or None where none is kept (this default)."""
        return None


def pointer_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a live pointer (:meth:`ModelRegistry.live_record`) tells a person: ``version``,
    ``updated``, ``previous``, ``reason`` (None where not recorded); None without a pointer."""
    if not record:
        return None
    return {key: record.get(key) for key in ("version", "updated", "previous", "reason")}


class Trainer(ABC):
    @abstractmethod
    def start(self, trigger: str = "manual", force: bool = False) -> RetrainStatus:
        """Start a retrain; raises :class:`RetrainRunning` if one is already running and
        :class:`NothingToLearn` when there is no new data and not ``force``."""

    @abstractmethod
    def status(self) -> RetrainStatus: ...

    def cancel(self) -> RetrainStatus:
        """Stop the running retrain before its gate; the live model and the data stay as they were.

        Returns the run's final status (state ``cancelled``). Raises :class:`NotRunning` when no run
        is running or it has already reached the gate.
        """
        raise NotRunning("this backend cannot cancel a retrain")

    def seed_counts(self) -> dict[str, int]:
        """Images per class every retrain trains on besides the uploads (the seed data); empty
        when the backend does not know them."""
        return {}


class CaptureStore(ABC):
    """Where captured predictions are kept (:mod:`fruitpipe.capture` decides what and how long).

    A capture is an image (JPEG bytes) and a JSON-able record, both under the prediction id,
    which is time-sortable: ids that sort lower are older.
    """

    @abstractmethod
    def put(self, prediction_id: str, record: dict[str, Any], image: bytes) -> None:
        """Keep the image, then the record (a record is never visible without its image)."""

    @abstractmethod
    def update(self, prediction_id: str, record: dict[str, Any]) -> None:
        """Replace the record of a kept capture (feedback, review). Raises :class:`NotFound`."""

    @abstractmethod
    def get(self, prediction_id: str) -> dict[str, Any]:
        """The record. Raises :class:`NotFound`."""

    @abstractmethod
    def image(self, prediction_id: str) -> bytes:
        """The image bytes. Raises :class:`NotFound`."""

    @abstractmethod
    def records(self) -> list[dict[str, Any]]:
        """Every kept record, oldest first."""

    @abstractmethod
    def prune(self, older_than: str, max_items: int) -> int:
        """Delete (for good) every capture whose id sorts below ``older_than`` and the oldest
        beyond ``max_items``; returns how many were deleted."""


class ShadowPointer(ABC):
    """Where the shadow evaluation's state lives, next to the live pointer (:mod:`fruitpipe.shadow`)."""

    @abstractmethod
    def read(self) -> dict[str, Any] | None:
        """The state, or None when no shadow was ever started."""

    @abstractmethod
    def write(self, state: dict[str, Any]) -> None:
        """Replace the state in one step (readers see the old or the new one, never a mix)."""

    @abstractmethod
    def write_counts(self, run: str, instance: str, counts: dict[str, Any]) -> None:
        """Replace one API process's running counts for shadow ``run`` (each process owns its object)."""

    @abstractmethod
    def read_counts(self, run: str) -> dict[str, dict[str, Any]]:
        """Every process's counts for shadow ``run``: instance -> counts (unreadable ones left out)."""


@dataclass
class Backend:
    name: str
    store: DataStore
    registry: ModelRegistry
    trainer: Trainer
    capture: CaptureStore | None = None  # None: this backend keeps no predictions
    shadow: ShadowPointer | None = None  # None: no shadow evaluation
