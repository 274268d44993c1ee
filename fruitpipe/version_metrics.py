"""A model version's metrics as the API and the CLI show them: the comparable figure first.

A manifest's own ``metrics`` are training-time figures whose meaning depends on how the version was
made: the shipped model's are its test-split score, a retrained version's are scored on photos it
was trained on (split ``"validation (seen: warm-started refit ...)"``). Only the score on the
frozen evaluation set (:mod:`fruitpipe.recipe`; kept per version by the local registry) is the
same measurement for every version. :func:`shown` puts that score at the top level of
``metrics`` and moves the manifest's own figures under ``metrics.training``; the manifest on disk
is unchanged, so every bundle, old or new, still loads.
"""

from __future__ import annotations

from typing import Any, Mapping

# The figures of one evaluation (fruitpipe.evaluation.metrics_from_predictions) shown at the top level.
FIGURES = ("n", "accuracy", "macro_f1", "fruit_rejected_rate", "ood_n", "ood_rejected_rate", "per_class", "confusion")


def held_out(split: Any) -> bool:
    """True when a manifest's ``split`` label names a held-out test split (the shipped model's
    figures), not photos the model was fitted or calibrated on."""
    return isinstance(split, str) and split.startswith("test")


def shown(metrics: Mapping[str, Any], frozen: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics`` object of ``GET /models`` and ``GET /model-info``.

    ``metrics`` is a version's manifest metrics, possibly with ``frozen`` (its score on the frozen
    evaluation set: ``eval_set`` plus :data:`FIGURES`) and ``evaluation`` (the gate's record)
    already added by the registry; ``frozen`` may also be passed on its own. Returns:

    * the top-level :data:`FIGURES` and ``source``: ``"frozen"`` (with ``eval_set``: the same
      photos for every version), else ``"manifest"`` when the manifest's own figures are a held-out
      test score (with its ``split``), else ``None`` with the figures ``None`` (only seen-data
      figures exist: nothing comparable to show);
    * ``training``: the manifest's own figures, with their ``split`` label, as recorded;
    * ``evaluation``: the gate's record, when there is one.
    """
    if isinstance(metrics.get("training"), Mapping):
        return dict(metrics)  # already in this form
    own = {k: v for k, v in metrics.items() if k not in ("frozen", "evaluation")}
    frozen = frozen if frozen is not None else metrics.get("frozen")
    out: dict[str, Any] = {k: None for k in FIGURES}
    if isinstance(frozen, Mapping):
        out.update({k: frozen.get(k) for k in FIGURES}, source="frozen", eval_set=frozen.get("eval_set"))
    elif held_out(own.get("split")):
        out.update({k: own.get(k) for k in FIGURES}, source="manifest", split=own["split"])
    else:
        out["source"] = None
    out["training"] = own
    if isinstance(metrics.get("evaluation"), Mapping):
        out["evaluation"] = metrics["evaluation"]
    return out
