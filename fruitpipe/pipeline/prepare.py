"""Step 1 of the retrain: guard, then snapshot the dataset listing into training manifests.

The snapshot makes a run reproducible and immune to uploads arriving while it trains. Images are
split into train/validation by their content hash (``sha256 mod 100 < validation_percent``), so an
image stays on the same side of the split in every run: the live model never trained on the images
the candidate and the live model are compared on. Manifests use SageMaker's ``ManifestFile``
format (a prefix, then relative keys), so each channel arrives as ``<class>/<sha256>.jpg`` folders.

Origins: a filed object's ``source`` metadata says how it came (``api``, ``drop-folder``,
``review``). The step keeps ``{sha256: source}`` for every filed image in ``origins.json`` of the
embedding cache prefix (a filed image never changes, so only images new since the last run cost a
``HEAD``); the cache channel brings the file to the training job, which counts the origins of its
training images into the manifest's ``training_data.origins`` (:func:`fruitpipe.training.train`).
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import bundle
from ..dataset import DATASET_PREFIX, ORIGINS_FILE, UNTAGGED
from ..labels import LABELS
from . import guard, s3util

COUNTER_ID = "new-images"


class InsufficientData(RuntimeError):
    """Too few images in some class to train and evaluate (the state machine's error name)."""


@dataclass(frozen=True)
class Settings:
    data_bucket: str
    models_bucket: str
    state_table: str | None = None
    min_images_per_class: int = 20
    validation_percent: int = 10


def split_of(sha256: str, validation_percent: int) -> str:
    return "validation" if int(sha256[:8], 16) % 100 < validation_percent else "train"


def snapshot(s3: Any, settings: Settings) -> dict[str, dict[str, list[str]]]:
    """``{split: {class: [relative keys under dataset/]}}`` of every filed image."""
    out: dict[str, dict[str, list[str]]] = {"train": {c: [] for c in LABELS},
                                            "validation": {c: [] for c in LABELS}}
    for key in s3util.list_keys(s3, settings.data_bucket, DATASET_PREFIX + "/"):
        parts = key.split("/")
        if len(parts) != 3 or parts[1] not in LABELS or "." not in parts[2]:
            continue  # not a filed image (e.g. a stray object): never train on it
        sha = parts[2].split(".")[0]
        if len(sha) != 64:
            continue
        out[split_of(sha, settings.validation_percent)][parts[1]].append(f"{parts[1]}/{parts[2]}")
    return out


def _sha(relative_key: str) -> str:
    return relative_key.rsplit("/", 1)[-1].split(".")[0]


def origins(s3: Any, settings: Settings, relative_keys: list[str], workers: int = 16) -> dict[str, str]:
    """``{sha256: source}`` of every image in ``relative_keys`` (``<class>/<sha256>.<ext>`` under
    ``dataset/``): the map kept at ``cache/embeddings/origins.json`` in the models bucket, plus a
    ``HEAD`` of each image it lacks (``workers`` at a time), written back when it grew. An object
    without ``source`` metadata is ``untagged``."""
    key = f"{s3util.CACHE_PREFIX}/{ORIGINS_FILE}"
    known = s3util.get_json(s3, settings.models_bucket, key)
    known = dict(known) if isinstance(known, dict) else {}
    missing = [k for k in relative_keys if _sha(k) not in known]

    def source(relative_key: str) -> str:
        head = s3.head_object(Bucket=settings.data_bucket, Key=f"{DATASET_PREFIX}/{relative_key}")
        return str(head.get("Metadata", {}).get("source") or UNTAGGED)[:40]

    if missing:
        with ThreadPoolExecutor(workers) as pool:  # boto3 clients are thread-safe
            for relative_key, src in zip(missing, pool.map(source, missing)):
                known[_sha(relative_key)] = src
        s3util.put_json(s3, settings.models_bucket, key, known)
    return known


def _manifest(bucket: str, keys: dict[str, list[str]]) -> bytes:
    entries: list[Any] = [{"prefix": f"s3://{bucket}/{DATASET_PREFIX}/"}]
    for label in LABELS:
        entries += sorted(keys[label])
    return json.dumps(entries).encode()


def read_counter(ddb: Any, table: str) -> int:
    """The new-images counter (images filed since the last run that ended, promoted or rejected)."""
    item = ddb.get_item(TableName=table, Key={"id": {"S": COUNTER_ID}}).get("Item")
    return int(item["count"]["N"]) if item and "count" in item else 0


def consume_counter(ddb: Any, table: str, n: int) -> None:
    """Subtract the ``n`` images a run that ended has trained on (atomic ``ADD``, never a ``SET``,
    so images ingested meanwhile still count for the next run). Called by the outcome step only,
    so a failed run leaves the counter, and the trigger it would fire, as it was."""
    if n:
        ddb.update_item(TableName=table, Key={"id": {"S": COUNTER_ID}},
                        UpdateExpression="ADD #c :n", ExpressionAttributeNames={"#c": "count"},
                        ExpressionAttributeValues={":n": {"N": str(-int(n))}})


def run(s3: Any, settings: Settings, *, sfn: Any = None, ddb: Any = None,
        state_machine_arn: str | None = None, execution_arn: str | None = None,
        trigger: str = "manual", version: str | None = None) -> dict[str, Any]:
    """Guard + snapshot. Returns the state's output (``proceed`` false when another run goes on)."""
    if sfn is not None and state_machine_arn and execution_arn:
        blocker = guard.blocking_execution(sfn, state_machine_arn, execution_arn)
        if blocker:
            return {"proceed": False, "reason": f"already running: {blocker}", "trigger": trigger}
    snap = snapshot(s3, settings)
    counts = {c: len(snap["train"][c]) + len(snap["validation"][c]) for c in LABELS}
    short = [f"{c} has {counts[c]} (train {len(snap['train'][c])}, validation "
             f"{len(snap['validation'][c])})" for c in LABELS
             if counts[c] < settings.min_images_per_class or not snap["validation"][c]]
    if short:
        raise InsufficientData(
            f"need at least {settings.min_images_per_class} images per class, with at least one in "
            "validation: " + "; ".join(short))
    tags = origins(s3, settings, [k for split in snap.values() for keys in split.values() for k in keys])
    train_origins = Counter(tags[_sha(k)] for keys in snap["train"].values() for k in keys)
    version = version or bundle.new_version(salt=execution_arn or "")
    run_prefix = f"{s3util.RUNS_PREFIX}/{version}"
    mb = settings.models_bucket
    for split in ("train", "validation"):
        s3.put_object(Bucket=mb, Key=f"{run_prefix}/{split}.manifest",
                      Body=_manifest(settings.data_bucket, snap[split]), ContentType="application/json")
    # SageMaker refuses a channel whose S3 prefix is empty: keep one marker object in the cache.
    if not s3util.exists(s3, mb, f"{s3util.CACHE_PREFIX}/.keep"):
        s3.put_object(Bucket=mb, Key=f"{s3util.CACHE_PREFIX}/.keep", Body=b"")
    new_images = read_counter(ddb, settings.state_table) if ddb is not None and settings.state_table else 0
    live = s3util.live_version(s3, mb)
    summary = {
        "proceed": True, "trigger": trigger, "version": version,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_manifest": f"s3://{mb}/{run_prefix}/train.manifest",
        "validation_manifest": f"s3://{mb}/{run_prefix}/validation.manifest",
        "cache_uri": f"s3://{mb}/{s3util.CACHE_PREFIX}/",
        "output_uri": f"s3://{mb}/{s3util.RUNS_PREFIX}/",
        "counts": counts,
        "origins": dict(sorted(train_origins.items())),  # of the train split
        "n_train": sum(len(v) for v in snap["train"].values()),
        "n_validation": sum(len(v) for v in snap["validation"].values()),
        "new_images": new_images,
        "snapshot_uri": f"s3://{mb}/{run_prefix}/snapshot.json",
        # The live bundle, the base_model channel of a warm start; None on the first run.
        "base_model": live,
        "base_model_uri": f"s3://{mb}/{s3util.VERSIONS_PREFIX}/{live}/" if live else None,
    }
    s3util.put_json(s3, mb, f"{run_prefix}/snapshot.json", summary)
    return summary
