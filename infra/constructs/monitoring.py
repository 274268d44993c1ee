"""``Monitoring``: one CloudWatch dashboard and the alarms, all notifying the alerts topic.

Metric names are listed in docs/operations.md (with what to do when each alarm fires). The API's
own metrics come from :mod:`fruitpipe.aws_metrics` (EMF, namespace ``Fruitpipe``, dimension
``service=fruitpipe-api``); ingest's from its handler (``service=fruitpipe-ingest``); the
pipeline's from :mod:`fruitpipe.pipeline.report` (``Fruitpipe/Retrain``).

Drift: production has no labels, so the drift alarm watches what the model says about itself —
mean top-1 confidence and the not-fruit rate — as deltas from the values measured on the
evaluation images when the live version was published (the API emits ``ConfidenceDelta`` and
``NotFruitExcess`` against the baseline in ``live.json``). When it fires, it starts a retrain.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from constructs import Construct

from fruitpipe.aws_metrics import API_SERVICE, INGEST_SERVICE, NAMESPACE
from fruitpipe.labels import LABELS, VERDICTS
from fruitpipe.pipeline.report import NAMESPACE as RETRAIN_NAMESPACE
from fruitpipe.rollback import RollbackBars

DEFAULTS: dict[str, Any] = {
    "alarm5xxPercent": 5,  # % of requests answered 5xx over 5 minutes, 2 periods out of 3
    "alarmP95LatencyMs": 1500,  # API Gateway p95 latency
    "driftConfidenceDrop": 0.10,  # mean top-1 confidence this much below the publish-time baseline
    "driftNotFruitRise": 0.15,  # not-fruit rate this much above the baseline
    "driftWindowHours": 6,
    "driftMinPredictions": 200,  # fewer predictions in the window: no verdict (not enough signal)
    "labelAccuracyMin": 0.80,  # live answers right on reviewed captures (which over-sample hard cases)
    "labelWindowDays": 7,
    "labelMinReviews": 30,  # fewer reviews in the window: no verdict
    "rollbackWindowMinutes": 120,  # an alarm this soon after a promotion rolls it back automatically
}


class Monitoring(Construct):
    """``dashboard``, ``alarms`` (name → alarm), ``drift_alarm`` (composite)."""

    def __init__(self, scope: Construct, construct_id: str, *, api: Any, ingest: Any, pipeline: Any) -> None:
        super().__init__(scope, construct_id)
        cfg = {k: self.node.try_get_context(k) if self.node.try_get_context(k) is not None else v
               for k, v in DEFAULTS.items()}
        action = cw_actions.SnsAction(pipeline.alerts)
        fn, http = api.function, api.http_api
        five = Duration.minutes(5)

        def app(name: str, stat: str = "Sum", period: Duration = five, **dims: str) -> cw.Metric:
            return cw.Metric(namespace=NAMESPACE, metric_name=name, statistic=stat, period=period,
                             dimensions_map={"service": API_SERVICE, **dims})

        def ingest_m(name: str) -> cw.Metric:
            return cw.Metric(namespace=NAMESPACE, metric_name=name, statistic="Sum", period=five,
                             dimensions_map={"service": INGEST_SERVICE})

        def retrain(name: str, stat: str = "Maximum", **dims: str) -> cw.Metric:
            return cw.Metric(namespace=RETRAIN_NAMESPACE, metric_name=name, statistic=stat,
                             period=Duration.days(1), dimensions_map=dims or None)

        # --- alarms ----------------------------------------------------------------------------------
        self.alarms: dict[str, cw.Alarm] = {}
        rate = cw.MathExpression(
            expression="IF(requests > 0, 100 * errors / requests, 0)", period=five, label="5xx %",
            using_metrics={"errors": http.metric_server_error(period=five, statistic="Sum"),
                           "requests": http.metric_count(period=five, statistic="Sum")})
        self.alarms["Api5xxRate"] = rate.create_alarm(
            self, "Api5xxRate", alarm_description="More than the allowed share of API requests end in 5xx",
            threshold=float(cfg["alarm5xxPercent"]), evaluation_periods=3, datapoints_to_alarm=2,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING)
        self.alarms["ApiP95Latency"] = http.metric_latency(period=five, statistic="p95").create_alarm(
            self, "ApiP95Latency", alarm_description="API p95 latency above target",
            threshold=float(cfg["alarmP95LatencyMs"]), evaluation_periods=3, datapoints_to_alarm=2,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING)
        # Every failure path of the state machine ends in its Fail state: ExecutionsFailed counts them
        # even when the failure-metric step itself could not run.
        self.alarms["TrainingFailure"] = pipeline.state_machine.metric_failed(
            period=Duration.minutes(5), statistic="Sum").create_alarm(
            self, "TrainingFailure", alarm_description="A retrain execution failed; the live model is unchanged",
            threshold=1, evaluation_periods=1, comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING)

        window = Duration.hours(int(cfg["driftWindowHours"]))
        n = app("Confidence", "SampleCount", window)

        def drift(name: str, metric: str, label: str, threshold: float,
                  comparison: cw.ComparisonOperator, description: str) -> None:
            """An alarm on a per-prediction delta against the published baseline, silent until
            the window holds enough predictions to mean anything."""
            expr = cw.MathExpression(
                expression=f"IF(n >= {int(cfg['driftMinPredictions'])}, delta, 0)", period=window, label=label,
                using_metrics={"delta": app(metric, "Average", window), "n": n})
            self.alarms[name] = expr.create_alarm(
                self, name, alarm_description=description, threshold=threshold, evaluation_periods=1,
                comparison_operator=comparison, treat_missing_data=cw.TreatMissingData.NOT_BREACHING)

        drift("DriftConfidenceDrop", "ConfidenceDelta", "mean confidence - baseline",
              -float(cfg["driftConfidenceDrop"]), cw.ComparisonOperator.LESS_THAN_THRESHOLD,
              "Mean top-1 confidence fell below the value measured when the live model was published")
        drift("DriftNotFruitRise", "NotFruitExcess", "not-fruit rate - baseline",
              float(cfg["driftNotFruitRise"]), cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
              "The not-fruit rate rose above the value measured when the live model was published")
        # Label-based: the share of reviewed captures the live model answered right (fruitpipe.capture);
        # silent below the minimum count. CloudWatch periods over a day must be whole days.
        label_window = Duration.days(int(cfg["labelWindowDays"]))
        label_acc = cw.MathExpression(
            expression=f"IF(n >= {int(cfg['labelMinReviews'])}, acc, 1)", period=label_window,
            label="accuracy on reviewed captures",
            using_metrics={"acc": app("ReviewCorrect", "Average", label_window),
                           "n": app("ReviewCorrect", "SampleCount", label_window)})
        self.alarms["DriftLabelAccuracy"] = label_acc.create_alarm(
            self, "DriftLabelAccuracy", threshold=float(cfg["labelAccuracyMin"]), evaluation_periods=1,
            alarm_description="The live model's accuracy on captures an admin reviewed fell below the bar",
            comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING)
        self.drift_alarm = cw.CompositeAlarm(
            self, "Drift", alarm_description="Production drift: retrain started automatically",
            alarm_rule=cw.AlarmRule.any_of(self.alarms["DriftConfidenceDrop"], self.alarms["DriftNotFruitRise"],
                                           self.alarms["DriftLabelAccuracy"]))
        # Not-fruit after a promotion, attributed to the model and not to the traffic (fruitpipe.rollback):
        # each API instance pairs its answers with the previous model's on the same images within the
        # window and emits NotFruitOnlyNew / NotFruitOnlyPrevious (b and c: their Sums; n: SampleCount).
        # The bar is the in-process guard's: n >= min_requests, (b - c) / n > max_not_fruit_excess and
        # McNemar's one-sided test at not_fruit_alpha, here in its normal form with continuity
        # correction, (b - c - 1)^2 > z^2 (b + c) (z: the standard normal quantile), written with
        # products and nested IFs only. It is a little more lenient than the exact test in process
        # on few disagreements (b = 10, c = 0: exact p = 1/1024 fires there; here b = 12 is needed).
        # The period is the rollback window, aligned to the clock rather than to the promotion.
        bars = RollbackBars()
        z2 = NormalDist().inv_cdf(1 - bars.not_fruit_alpha) ** 2
        after = Duration.minutes(int(cfg["rollbackWindowMinutes"]))
        paired = cw.MathExpression(
            expression=(f"IF(n >= {bars.min_requests}, IF(b - c > {bars.max_not_fruit_excess} * n, "
                        f"IF((b - c - 1) * (b - c - 1) > {z2:.4f} * (b + c), 1, 0), 0), 0)"),
            period=after, label="not_fruit beyond the previous model (1: significant)",
            using_metrics={"b": app("NotFruitOnlyNew", "Sum", after), "c": app("NotFruitOnlyPrevious", "Sum", after),
                           "n": app("NotFruitOnlyNew", "SampleCount", after)})
        self.alarms["PostPromotionNotFruit"] = paired.create_alarm(
            self, "PostPromotionNotFruit", threshold=0.5, evaluation_periods=1,
            alarm_description="After a promotion, the new model answers not_fruit significantly more often than "
            "the previous one does on the same requests",
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING)
        # Any of these soon after a promotion means the new model is at fault: roll it back (the
        # rollback Lambda checks how long ago the live version went live; fruitpipe.pipeline.rollback).
        # Not DriftNotFruitRise: a rise of not-fruit traffic is no fault of the new model. The latency
        # member stays the absolute ApiP95Latency (the local guard judges p95 only for a version of
        # another serving shape, fruitpipe.rollback): a Lambda environment serves one request at a
        # time (a burst scales out rather than queues) and the bar must hold for 2 of 3 periods.
        self.post_promotion_alarm = cw.CompositeAlarm(
            self, "PostPromotion", alarm_description="A bar crossed; within the window after a promotion the "
            "previous model is re-activated automatically",
            alarm_rule=cw.AlarmRule.any_of(self.alarms["Api5xxRate"], self.alarms["ApiP95Latency"],
                                           self.alarms["PostPromotionNotFruit"], self.alarms["DriftLabelAccuracy"]))
        api.function.add_environment("FRUITPIPE_ROLLBACK_WINDOW_SECONDS", str(int(cfg["rollbackWindowMinutes"]) * 60))
        for alarm in [*self.alarms.values(), self.drift_alarm, self.post_promotion_alarm]:
            alarm.add_alarm_action(action)
        self.drift_rule = pipeline.retrain_on_alarm("DriftRetrainRule", self.drift_alarm)
        self.rollback_rule = pipeline.rollback_on_alarm("RollbackRule", self.post_promotion_alarm,
                                                        int(cfg["rollbackWindowMinutes"]) * 60)

        # --- dashboard -------------------------------------------------------------------------------
        d = cw.Dashboard(self, "Dashboard", dashboard_name=f"{pipeline.state_machine_name.removesuffix('-retrain')}")
        self.dashboard = d
        self.widgets: list[str] = []

        def graph(title: str, left: list[Any], right: list[Any] | None = None, width: int = 8) -> cw.GraphWidget:
            self.widgets.append(title)
            return cw.GraphWidget(title=title, left=left, right=right or [], width=width, height=6)

        d.add_widgets(cw.TextWidget(markdown="# fruitpipe\nAPI, ingest and retrain health. "
                                    "Metric meanings and alarm runbooks: docs/operations.md", width=24, height=2))
        d.add_widgets(
            graph("API requests and errors (API Gateway)",
                  [http.metric_count(period=five, statistic="Sum")],
                  [http.metric_client_error(period=five, statistic="Sum"),
                   http.metric_server_error(period=five, statistic="Sum")]),
            graph("API latency p50/p95/p99 (API Gateway)",
                  [http.metric_latency(period=five, statistic=s, label=s) for s in ("p50", "p95", "p99")]),
            graph("Model latency p50/p95/p99 (app)", [app("Latency", s) for s in ("p50", "p95", "p99")]),
        )
        d.add_widgets(
            graph("Predictions by class", [app("Predictions", "Sum", **{"class": c}) for c in LABELS]),
            graph("Predictions by verdict", [app("Verdicts", "Sum", verdict=v) for v in VERDICTS]),
            graph("Confidence and drift signals",
                  [app("Confidence", "Average"), app("ConfidenceDelta", "Average"), app("NotFruitExcess", "Average")]),
        )
        d.add_widgets(graph("Accuracy on reviewed captures (label-based)",
                            [app("ReviewCorrect", "Average", Duration.days(1))] +
                            [app("ReviewCorrect", "Average", Duration.days(1), **{"class": c}) for c in (*LABELS, "not_fruit")],
                            [app("ReviewCorrect", "SampleCount", Duration.days(1))], width=24))
        d.add_widgets(
            graph("API Lambda: invocations, errors, throttles",
                  [fn.metric_invocations(period=five), fn.metric_errors(period=five), fn.metric_throttles(period=five)],
                  [app("Errors"), app("ColdStart")]),
            graph("API Lambda: duration p50/p95/p99 and concurrency",
                  [fn.metric_duration(period=five, statistic=s) for s in ("p50", "p95", "p99")],
                  [fn.metric("ConcurrentExecutions", period=five, statistic="Maximum")]),
            graph("Ingest: added, duplicates, rejected",
                  [ingest_m("ImagesAdded"), ingest_m("Duplicates"), ingest_m("Rejected")],
                  [ingest.function.metric_errors(period=five)]),
        )
        d.add_widgets(
            graph("Retrain outcomes", [retrain("RetrainOutcome", "Sum", Outcome=o)
                                       for o in ("promoted", "rejected", "failed", "skipped")]),
            graph("Retrain quality (candidate vs live)",
                  [retrain("CandidateAccuracy"), retrain("LiveAccuracy"), retrain("CandidateMacroF1"),
                   retrain("LiveMacroF1")]),
            graph("Retrain per-class F1", [retrain("ClassF1", Class=c) for c in LABELS]),
        )
        d.add_widgets(
            graph("Retrain data and duration",
                  [retrain("TrainingImages"), retrain("NewImages"), retrain("EmbeddedNew")],
                  [retrain("DurationSeconds")]),
            graph("State machine executions",
                  [pipeline.state_machine.metric_started(), pipeline.state_machine.metric_succeeded(),
                   pipeline.state_machine.metric_failed()]),
            cw.AlarmStatusWidget(title="Alarms", alarms=[*self.alarms.values(), self.drift_alarm], width=8, height=6),
        )
        self.widgets.append("Alarms")
