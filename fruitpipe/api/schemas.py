"""Pydantic response models: what every route answers, errors included (shown in ``/docs``)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

Verdict = Literal["fresh", "rotten", "not_fruit", "uncertain"]


class ErrorResponse(BaseModel):
    error: str = Field(description="stable machine-readable code, e.g. not_an_image, unauthorized")
    detail: str = Field(description="a human sentence saying what was wrong")


class Explanation(BaseModel):
    """Where the evidence for a class lies (``/predict?explain=true``; :mod:`fruitpipe.explain`)."""

    method: str
    explained_class: str
    grid: list[list[float]] = Field(description="7x7 evidence map over the whole image, rows top to "
                                    "bottom, non-negative, summing to 1")


class PredictionResponse(BaseModel):
    prediction_id: str = Field(description="this answer's id, for POST /feedback (time-sortable, unguessable)")
    predicted_class: str
    confidence: float
    probabilities: dict[str, float]
    verdict: Verdict
    model_version: str
    timestamp: str
    scores: dict[str, float] = Field(default_factory=dict, description="rejection signals")
    latency_ms: float = Field(description="server time for this request's decode + inference")
    explanation: Optional[Explanation] = Field(None, description="only with explain=true")


class BatchItem(BaseModel):
    filename: str
    ok: bool
    prediction: Optional[PredictionResponse] = None
    error: Optional[str] = None
    detail: Optional[str] = None


class BatchResponse(BaseModel):
    model_version: str
    count: int
    ok: int
    results: list[BatchItem]


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    uptime_seconds: float
    predictions: int
    model_version: Optional[str]
    model_loaded: bool
    backend: str


def _metrics() -> Any:
    """A version's ``metrics`` (:func:`fruitpipe.version_metrics.shown`)."""
    return Field(default_factory=dict, description=(
        "accuracy, macro_f1, n, fruit_rejected_rate, ood_n, ood_rejected_rate, per_class, confusion: the score on the "
        "frozen evaluation set (source 'frozen', eval_set: the same photos for every version, so versions compare), "
        "else the manifest's held-out test score (source 'manifest', split), else null (source null); training: the "
        "manifest's own figures with their split label (a retrained version's are scored on photos it was trained on); "
        "evaluation: the gate's record"))


class ModelInfoResponse(BaseModel):
    version: str
    created: str
    labels: list[str]
    metrics: dict[str, Any] = _metrics()
    rejection: dict[str, Any]
    preprocessing: dict[str, Any]
    training_data: dict[str, Any]
    backbone: dict[str, Any]
    head: dict[str, Any] = Field(default_factory=dict, description="the head: layers, activations and "
                                 "`features` (its input; `b17` = MobileNetV2's block 17, fine-tuned)")


class ModelVersionResponse(BaseModel):
    version: str
    created: str
    status: Literal["live", "available", "rejected"]
    metrics: dict[str, Any] = _metrics()
    reason: Optional[str] = None


class ModelsResponse(BaseModel):
    live: Optional[str]
    versions: list[ModelVersionResponse]
    shadow: Optional[dict[str, Any]] = Field(None, description="the latest shadow evaluation: version, status "
                                             "(running/promoted/held/stopped), reason, reason_code, result, bounds")
    rollbacks: list[dict[str, Any]] = Field(default_factory=list, description="automatic rollbacks by this "
                                            "server: at, from, to, reason, requests, bars (newest last)")
    live_pointer: Optional[dict[str, Any]] = Field(None, description="the live pointer: version, updated (when "
                                                   "it moved), previous, reason ('automatic rollback: ...' after one)")


class ShadowRequest(BaseModel):
    requests: int = Field(200, ge=1, le=1_000_000, description="shadowed requests before the decision")
    seconds: float = Field(3600, gt=0, le=30 * 86400, description="time limit")
    sample_rate: float = Field(1.0, gt=0, le=1, description="share of /predict requests shadowed")


class ActivateResponse(BaseModel):
    live: str
    previous: Optional[str]


class UploadItem(BaseModel):
    filename: str
    status: Literal["added", "duplicate", "rejected"]
    label: Optional[str] = None
    sha256: Optional[str] = None
    key: Optional[str] = None
    error: Optional[str] = None
    detail: Optional[str] = None


class UploadResponse(BaseModel):
    class_name: str
    added: int
    duplicates: int
    rejected: int
    results: list[UploadItem]
    counts: dict[str, int]


class UploadRejectedResponse(ErrorResponse):
    results: list[UploadItem]


class RetrainStatusResponse(BaseModel):
    state: Literal["idle", "running", "succeeded", "rejected", "failed", "cancelled"]
    run_id: Optional[str] = None
    trigger: Optional[str] = None
    stage: Optional[str] = None
    percent: float = Field(0.0, description="progress over the whole run, 0-100, never goes backwards")
    eta_seconds: Optional[float] = Field(None, description="estimated seconds left (null: unknown)")
    started: Optional[str] = None
    finished: Optional[str] = None
    log_tail: list[str] = Field(default_factory=list)
    result: dict[str, Any] = Field(default_factory=dict)
    warmup: Optional[dict[str, Any]] = Field(None, description="local: the first-start warm-up while it runs, or its error if it failed (until the first retrain)")


class DatasetResponse(BaseModel):
    counts: dict[str, int] = Field(description="uploaded images per class")
    total: int
    seed: dict[str, int] = Field(default_factory=dict, description="seed images per class that every retrain "
                                 "trains on besides the uploads; empty when the backend does not report them")
    seed_total: int = 0


class StatsResponse(BaseModel):
    uptime_seconds: float
    model_version: Optional[str]
    predictions: int
    by_class: dict[str, int]
    by_verdict: dict[str, int]
    latency_ms: dict[str, Optional[float]] = Field(description="p50 / p95 / mean over recent /predict calls")
    latency_samples: int
    recent_latencies_ms: list[float] = Field(description="the last 120 /predict latencies, oldest first")


Answer = Literal["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges",
                 "not_fruit"]


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(max_length=64, description="the prediction_id of a /predict answer")
    correct: Answer = Field(description="the right answer: one of the six classes, or not_fruit")


class FeedbackResponse(BaseModel):
    prediction_id: str
    correct: str
    kept: bool = Field(description="the prediction and its image are kept for review")


class CaptureItem(BaseModel):
    prediction_id: str
    captured: str
    model_version: str
    predicted_class: str
    verdict: Verdict
    answered: str = Field(description="what the user was told: the class, or not_fruit")
    confidence: float
    margin: float = Field(description="top-1 minus top-2 probability")
    probabilities: dict[str, float]
    reasons: list[str] = Field(description="why it was kept: sample, uncertain, feedback")
    feedback: Optional[dict[str, Any]] = None
    review: Optional[dict[str, Any]] = None
    image_url: str


class ReviewQueueResponse(BaseModel):
    enabled: bool
    count: int
    items: list[CaptureItem]


class ReviewRequest(BaseModel):
    label: Answer = Field(description="the reviewer's answer: a class files the image into the dataset")


class ReviewResponse(BaseModel):
    item: CaptureItem
    dataset: Optional[UploadItem] = Field(None, description="the dataset filing (None for not_fruit)")


class AccuracyResponse(BaseModel):
    model_version: Optional[str]
    since: str
    all: dict[str, Any] = Field(description="n, correct, accuracy and per_class over every reviewed capture")
    sampled: dict[str, Any] = Field(description="the same over the random sample only (unbiased, fewer)")
