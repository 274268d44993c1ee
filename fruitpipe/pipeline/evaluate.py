"""Step 3: evaluate the candidate and the live model on the same images, and apply the gate.

The candidate arrives as SageMaker's ``model.tar.gz``; a bundle that fails its checksums is not
an error of the pipeline but a rejected candidate (with that reason). The job's ``output.tar.gz``
carries the embedding-cache shards it computed for new images under ``cache/``; they are copied
to ``cache/embeddings/`` here (only names not already there), so the next run embeds only images
it has never seen. The production baseline (mean top-1 confidence, not-fruit rate) of the
candidate on the evaluation images is returned for the publish step: the drift alarm compares the
API's live signals with it.

The gate's anchor (:func:`fruitpipe.gate.check_reference`): the published version with the best
accuracy recorded at its own gate (``versions/<v>/evaluation.json``; the validation split grows
with the dataset, so those figures only choose it) is scored again on this run's images, and the
candidate must be non-inferior to it there too (:func:`reference_version`). The seed is not in
``versions/`` and is never the anchor (it may have trained on validation images).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from .. import bundle, gate
from ..labels import LABELS
from . import s3util

Evaluator = Callable[[Any, Path], dict[str, Any]]


def _default_evaluator(classifier: Any, data_dir: Path) -> dict[str, Any]:
    from ..evaluation import evaluate
    return evaluate(classifier, data_dir)


def _classifier(bundle_dir: Path) -> Any:
    from ..classifier import Classifier
    return Classifier(bundle_dir)


def download_eval_images(s3: Any, manifest_uri: str, dest: Path) -> int:
    """Materialise a ``ManifestFile`` as ``dest/<class>/<file>`` (what SageMaker does for a channel)."""
    bucket, key = s3util.split_uri(manifest_uri)
    entries = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    src_bucket, prefix = s3util.split_uri(entries[0]["prefix"])
    for rel in entries[1:]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s3.get_object(Bucket=src_bucket, Key=prefix + rel)["Body"].read())
    return len(entries) - 1


def persist_cache(s3: Any, models_bucket: str, output_archive_uri: str, workdir: Path) -> dict[str, int]:
    """Copy new cache shards from the job's ``output.tar.gz`` into ``cache/embeddings/``."""
    bucket, key = s3util.split_uri(output_archive_uri)
    if not s3util.exists(s3, bucket, key):
        return {"uploaded": 0, "present": 0}
    out = workdir / "output"
    names = s3util.safe_extract(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), out)
    uploaded = present = 0
    for name in names:
        if not name.startswith("cache/"):
            continue
        dest = f"{s3util.CACHE_PREFIX}/{name[len('cache/'):]}"
        if s3util.exists(s3, models_bucket, dest):  # shards are append-only and content-named
            present += 1
            continue
        s3.put_object(Bucket=models_bucket, Key=dest, Body=(out / name).read_bytes())
        uploaded += 1
    return {"uploaded": uploaded, "present": present}


def production_baseline(classifier: Any, data_dir: Path) -> dict[str, float]:
    """Mean top-1 confidence and not-fruit rate of ``classifier`` on the evaluation images."""
    paths = sorted(p for label in LABELS for p in (data_dir / label).glob("*") if p.is_file())
    preds = [p for p in classifier.predict_many([p.read_bytes() for p in paths]) if hasattr(p, "verdict")]
    if not preds:
        return {"mean_confidence": 0.0, "not_fruit_rate": 0.0, "n": 0}
    return {"mean_confidence": round(sum(p.confidence for p in preds) / len(preds), 4),
            "not_fruit_rate": round(sum(p.verdict == "not_fruit" for p in preds) / len(preds), 4),
            "n": len(preds)}


def _brief(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The metrics kept in the state machine's payload (it is capped at 256 KB)."""
    if metrics is None:
        return None
    keep = ("n", "accuracy", "macro_f1", "ood_n", "ood_rejected_rate", "fruit_rejected_rate", "model_version")
    out = {k: metrics[k] for k in keep if k in metrics}
    per_class = metrics.get("per_class")
    if isinstance(per_class, dict):
        out["per_class_f1"] = {c: v.get("f1") for c, v in per_class.items() if isinstance(v, dict)}
    return out


def reference_version(s3: Any, models_bucket: str, live: str | None) -> str | None:
    """The gate's anchor: the published version (``versions/<v>/``, every one the gate let through)
    whose ``evaluation.json`` records the best accuracy; None when that is ``live`` (compared
    anyway) or no version records one."""
    records = {}
    for key in s3util.list_keys(s3, models_bucket, f"{s3util.VERSIONS_PREFIX}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "evaluation.json":
            metrics = (s3util.get_json(s3, models_bucket, key) or {}).get("metrics")
            if isinstance(metrics, dict):
                records[parts[1]] = metrics
    best = gate.best_reference(records, live)
    return best[0] if best else None


def _score_reference(s3: Any, models_bucket: str, version: str | None, tmpdir: Path, eval_dir: Path,
                     evaluator: Evaluator, classifier_factory: Callable[[Path], Any]) -> tuple[dict[str, Any] | None, str]:
    """The anchor's metrics on this run's images, or None with the reason it has none."""
    if version is None:
        return None, ""
    try:
        ref_dir = s3util.download_bundle(s3, models_bucket, version, tmpdir / "reference")
        return evaluator(classifier_factory(ref_dir), eval_dir), ""
    except Exception as exc:  # noqa: BLE001 - e.g. a deleted or edited version: the live comparison still stands
        return None, f"anchor check skipped: reference {version} cannot be scored ({type(exc).__name__}: {exc})"


def run(s3: Any, *, models_bucket: str, model_artifacts: str, validation_manifest: str,
        expected_version: str | None = None, workdir: Path | None = None,
        evaluator: Evaluator | None = None, classifier_factory: Callable[[Path], Any] | None = None,
        tolerance: float = 0.0) -> dict[str, Any]:
    evaluator = evaluator or _default_evaluator
    classifier_factory = classifier_factory or _classifier
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmpdir = Path(tmp)
        cache = persist_cache(s3, models_bucket,
                              model_artifacts.rsplit("/", 1)[0] + "/output.tar.gz", tmpdir)
        result: dict[str, Any] = {"cache": cache, "candidate_version": expected_version}
        bucket, key = s3util.split_uri(model_artifacts)
        try:
            extracted = tmpdir / "candidate"
            s3util.safe_extract(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), extracted)
            cand_dir = s3util.find_bundle(extracted)
            manifest = bundle.verify(cand_dir)
        except (bundle.BundleError, ValueError, FileNotFoundError, OSError) as exc:
            return {**result, "promote": False, "reason": f"candidate bundle is corrupt: {exc}",
                    "candidate": None, "live": None, "live_version": None, "baseline": None}
        result["candidate_version"] = manifest.version
        eval_dir = tmpdir / "eval"
        result["n_eval_images"] = download_eval_images(s3, validation_manifest, eval_dir)
        candidate_clf = classifier_factory(cand_dir)
        cand_metrics = evaluator(candidate_clf, eval_dir)
        live_v = s3util.live_version(s3, models_bucket)
        live_metrics = None
        if live_v:
            live_dir = s3util.download_bundle(s3, models_bucket, live_v, tmpdir / "live")
            live_metrics = evaluator(classifier_factory(live_dir), eval_dir)
        ref_v = reference_version(s3, models_bucket, live_v) if live_v else None
        ref_metrics, skipped = _score_reference(s3, models_bucket, ref_v, tmpdir, eval_dir, evaluator,
                                                classifier_factory)
        try:
            decision = gate.decide(cand_metrics, live_metrics, tolerance=tolerance, reference=ref_metrics,
                                   reference_version=ref_v)
            promote, reason = decision.promote, decision.reason + (f" [{skipped}]" if skipped else "")
        except gate.GateError as exc:
            promote, reason = False, f"metrics cannot be compared: {exc}"
        baseline = production_baseline(candidate_clf, eval_dir) if promote else None
        return {**result, "promote": promote, "reason": reason, "candidate": _brief(cand_metrics),
                "live": _brief(live_metrics), "live_version": live_v, "baseline": baseline,
                "reference_version": ref_v if ref_metrics is not None else None}
