"""The API's production metrics on AWS (CloudWatch EMF through Powertools), including drift signals.

Metric names, namespace and dimensions are what ``infra/constructs/monitoring.py`` graphs and
alarms on; docs/operations.md explains each. Drift is measured against the baseline recorded in
``live.json`` at publish time (mean top-1 confidence and not-fruit rate of the live model on its
evaluation images): the API emits the per-prediction deltas, so a static alarm threshold works for
every model version.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from .labels import answered_class

NAMESPACE = "Fruitpipe"
API_SERVICE = "fruitpipe-api"
INGEST_SERVICE = "fruitpipe-ingest"


class BaselineCache:
    """The live pointer's ``baseline``, re-read at most every ``ttl`` seconds (it changes at publish)."""

    def __init__(self, read_pointer: Callable[[], Mapping[str, Any] | None], ttl: float = 60.0) -> None:
        self._read, self._ttl = read_pointer, ttl
        self._value: dict[str, float] = {}
        self._at = -1e9

    def get(self) -> dict[str, float]:
        now = time.monotonic()
        if now - self._at >= self._ttl:
            self._at = now
            try:
                pointer = self._read() or {}
                self._value = dict(pointer.get("baseline") or {})
            except Exception:  # noqa: BLE001 - a metrics side channel must never fail a prediction
                pass
        return self._value


def prediction_metrics(prediction: Mapping[str, Any], latency_ms: float,
                       baseline: Mapping[str, float]) -> list[tuple[str, float, str, dict[str, str]]]:
    """(name, value, unit, extra dimensions) for one answered prediction."""
    conf = float(prediction.get("confidence", 0.0))
    not_fruit = 1.0 if prediction.get("verdict") == "not_fruit" else 0.0
    answered = answered_class(str(prediction.get("predicted_class")), str(prediction.get("verdict")))
    out = [("Predictions", 1.0, "Count", {"class": answered}),
           ("Verdicts", 1.0, "Count", {"verdict": str(prediction.get("verdict"))}),
           ("Latency", float(latency_ms), "Milliseconds", {}),
           ("Confidence", conf, "NoUnit", {}),
           ("NotFruit", not_fruit, "Count", {})]
    if "mean_confidence" in baseline:
        out.append(("ConfidenceDelta", conf - float(baseline["mean_confidence"]), "NoUnit", {}))
    if "not_fruit_rate" in baseline:
        out.append(("NotFruitExcess", not_fruit - float(baseline["not_fruit_rate"]), "NoUnit", {}))
    return out


def pair_metrics(new_not_fruit: bool, previous_not_fruit: bool) -> list[tuple[str, float, str, dict[str, str]]]:
    """For one ``/predict`` request in the window after a promotion, paired with what the previous
    live model answers to the same image (:mod:`fruitpipe.rollback`): ``NotFruitOnlyNew`` 1 when
    only the new model answers ``not_fruit``, ``NotFruitOnlyPrevious`` 1 when only the previous one
    does (else 0). Their Sums over the window are McNemar's discordant counts, their SampleCount
    the paired requests: the ``PostPromotionNotFruit`` alarm's inputs (infra/constructs/monitoring.py)."""
    return [("NotFruitOnlyNew", float(new_not_fruit and not previous_not_fruit), "Count", {}),
            ("NotFruitOnlyPrevious", float(previous_not_fruit and not new_not_fruit), "Count", {})]


def record_pair(new_not_fruit: bool, previous_not_fruit: bool) -> None:
    """Emit :func:`pair_metrics` (the rollback guard's ``on_pair`` on AWS)."""
    emit(pair_metrics(new_not_fruit, previous_not_fruit))


def review_metrics(review: Mapping[str, Any]) -> list[tuple[str, float, str, dict[str, str]]]:
    """For one ``POST /review/{id}`` answer: ``ReviewCorrect`` (1 when the user's answer equals the
    reviewer's label, else 0) with no dimension (its Average over a window is the label-based
    accuracy, its SampleCount the number reviewed: the drift alarm's input) and by ``class``."""
    item = review.get("item") or {}
    label = str((item.get("review") or {}).get("label"))
    correct = 1.0 if item.get("answered") == label else 0.0
    return [("ReviewCorrect", correct, "Count", {}), ("ReviewCorrect", correct, "Count", {"class": label})]


def emit(metrics: list[tuple[str, float, str, dict[str, str]]], service: str = API_SERVICE) -> None:
    """Write ``metrics`` as EMF (one JSON log line per dimension set) via Powertools."""
    from aws_lambda_powertools.metrics import MetricUnit, single_metric
    for name, value, unit, dims in metrics:
        with single_metric(name=name, unit=getattr(MetricUnit, unit), value=value, namespace=NAMESPACE,
                           default_dimensions={"service": service}) as m:
            for k, v in dims.items():
                m.add_dimension(name=k, value=v)


def record_prediction(prediction: Mapping[str, Any], latency_ms: float, baseline: Mapping[str, float]) -> None:
    emit(prediction_metrics(prediction, latency_ms, baseline))


def record_error() -> None:
    emit([("Errors", 1.0, "Count", {})])


def record_cold_start() -> None:
    emit([("ColdStart", 1.0, "Count", {})])


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001
        pass


class PredictionMetricsMiddleware:
    """ASGI middleware: for every ``POST /predict`` answered 200, emit :func:`prediction_metrics`
    from the JSON answer; every 5xx answer counts as an ``Errors`` datum. The body is passed
    through unchanged; failures here are swallowed (metrics must never break a request)."""

    def __init__(self, app: Any, baseline: BaselineCache, paths: tuple[str, ...] = ("/predict",)) -> None:
        self.app, self.baseline, self.paths = app, baseline, paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        review = scope.get("method") == "POST" and str(scope.get("path", "")).startswith("/review/")
        watch = review or (scope.get("method") == "POST" and scope.get("path") in self.paths)
        started = time.perf_counter()
        status = {"code": 0}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message.get("status", 0))
            elif message["type"] == "http.response.body" and watch and status["code"] == 200:
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception:
            _quietly(record_error)  # an unhandled error becomes a 500 further out
            raise
        try:
            if status["code"] >= 500:
                record_error()
            elif watch and status["code"] == 200:
                import json
                answer = json.loads(b"".join(chunks) or b"{}")
                if review:
                    emit(review_metrics(answer))
                    return
                latency = (time.perf_counter() - started) * 1000
                for pred in answer.get("results", [answer]) if isinstance(answer, dict) else []:
                    if isinstance(pred, dict) and "verdict" in pred:
                        record_prediction(pred, latency, self.baseline.get())
        except Exception:  # noqa: BLE001
            pass


def install(app: Any, registry: Any, ttl: float = 60.0) -> None:
    """Add :class:`PredictionMetricsMiddleware` to a FastAPI ``app``; the baseline is read from the
    registry's live pointer (``live.json``) at most every ``ttl`` seconds. Emits ``ColdStart`` once."""
    from .pipeline.s3util import LIVE_POINTER

    def read_pointer() -> Mapping[str, Any] | None:
        return registry._get_json(LIVE_POINTER)  # the S3 registry's JSON reader (None when missing)

    app.add_middleware(PredictionMetricsMiddleware, baseline=BaselineCache(read_pointer, ttl))
    record_cold_start()
