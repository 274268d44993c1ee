"""``fruitpipe compare``: every model variant trained and scored the same way (issue 12).

Protocol (what chose what; no test set chooses anything):

* **Data**: :func:`fruitpipe.recipe.candidate`'s splits for every variant: train on ``fruits/train`` +
  the ``fruits_extra`` and ``not_fruit`` train splits; validation ``fruits/val`` + the val splits +
  the generated *calib* not-fruit group. Validation trains nothing but calibrates each bundle's
  rejection bars (and the early epochs' curves); its figures are recorded as ``validation``.
* **Recipe**: the candidate's hyperparameters (:data:`fruitpipe.recipe.CANDIDATE_HYPERPARAMETERS`
  over :data:`fruitpipe.recipe.HYPERPARAMETERS`: a seventh ``not_fruit`` output, refit on
  train + validation) through the training job (``fruitpipe train``) for every backbone variant;
  only the backbone and, for "MobileNetV2 frozen", the head's input (``features=emb``: the pooled
  embedding, what every other backbone gets) differ. The custom CNN (:mod:`fruitpipe.cnn`) trains on
  the same images, scored by its own seven-way softmax.
* **Test** (read once per run, reported): ``fruits/test``, the ``fruits_extra`` test split and the
  ``not_fruit`` test split (:mod:`fruitpipe.splits`). Accuracy counts a rejected fruit photo as
  wrong; precision and recall are macro over the six classes on the three test sets together (a
  not-fruit photo answered as a class counts against that class's precision).
* **Latency**: one process, every model loaded with one LiteRT thread, the same 640x480 JPEGs
  decoded and classified (the whole predict path) **round-robin**: each round times every model
  once per photo, in a rotated order, so load on this shared machine hits all models alike; the
  median per model.
* **Size**: the backbone file plus the bundle's files (the CNN: its one file); parameters are the
  constants stored in them (TFLite constant tensors + the head's and block's arrays).

``--quick`` runs a fast subset of the variants on small per-folder subsets (CI); its JSON says
``"quick": true`` and is written beside, never over, the full run's.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import cnn, recipe as rc, splits
from .labels import LABELS

JSON_NAME, CHART_NAME = "compare.json", "compare.png"
QUICK_JSON_NAME, QUICK_CHART_NAME = "compare_quick.json", "compare_quick.png"


@dataclass(frozen=True)
class Variant:
    """One row of the comparison. ``backbone``: a :mod:`fruitpipe.backbone` registry name, trained by
    the training job with ``settings`` over the recipe's hyperparameters; None: the custom CNN."""

    name: str
    title: str
    backbone: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    quick: bool = False


VARIANTS: tuple[Variant, ...] = (
    Variant("mobilenet_v2_frozen", "MobileNetV2 int8, frozen, head on the embedding", "mobilenet_v2",
            {"features": "emb"}, quick=True),
    Variant("mobilenet_v2_finetuned", "MobileNetV2 int8, block 17 fine-tuned (default recipe)", "mobilenet_v2"),
    Variant("efficientnet_lite0", "EfficientNet-Lite0 int8", "efficientnet_lite0"),
    Variant("efficientnet_lite1", "EfficientNet-Lite1 int8", "efficientnet_lite1"),
    Variant("regnetx_200mf", "RegNetX-200MF int8", "regnetx_200mf",
            note="the residual (ResNeXt-style) entry: no ResNet-50 weights can be obtained on this machine"),
    Variant("mobilenet_v3_small", "MobileNetV3-Small uint8", "mobilenet_v3_small"),
    Variant("mobilenet_v1", "MobileNetV1 uint8", "mobilenet_v1"),
    Variant("custom_cnn", "custom CNN from scratch, int8", None, quick=True),
)

# --quick: images kept per folder (a class, or a not-fruit kind) of each data set.
QUICK_CAPS = {"train": (40, 4), "validation": (15, 2), "test": (20, 3)}  # (per class, per not-fruit kind)
QUICK_CNN = cnn.CnnConfig(epochs=8)
FULL_CNN = cnn.CnnConfig(epochs=10)
LATENCY_ROUNDS, QUICK_LATENCY_ROUNDS = 30, 5


class CompareError(RuntimeError):
    """A variant could not be trained or scored; the message says which and why."""


def available_backbones() -> set[str]:
    """The registry's backbone names (:data:`fruitpipe.backbone.SPECS`)."""
    from . import backbone
    return set(backbone.SPECS)


def select(names: Sequence[str] | None, quick: bool) -> list[Variant]:
    """The variants to run: ``names`` (in table order), else every variant (``quick``: the quick ones).
    Raises :class:`CompareError` for an unknown name or a backbone the registry lacks."""
    known = {v.name: v for v in VARIANTS}
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise CompareError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if names:
        chosen = [v for v in VARIANTS if v.name in names]
    else:
        chosen = [v for v in VARIANTS if v.quick or not quick]
    missing = [v.name for v in chosen if v.backbone and v.backbone not in available_backbones()]
    if missing:
        raise CompareError(f"backbone registry lacks {', '.join(missing)}")
    return chosen


def test_sets() -> list[tuple[str, Path]]:
    """(name, root) of the three test sets."""
    return list(rc.split_roots("test", named=True).items())


def subset(items: Sequence[tuple[str, Path]], caps: tuple[int, int] | None) -> list[tuple[str, Path]]:
    """At most ``caps`` = (per class, per other folder) images of each folder, evenly spaced in the
    sorted order (deterministic); None keeps everything."""
    if caps is None:
        return list(items)
    by_folder: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for item in items:
        by_folder[item[0]].append(item)
    out = []
    for folder, rows in by_folder.items():
        cap = caps[0] if folder in LABELS else caps[1]
        step = max(1, len(rows) // cap) if cap else len(rows) + 1
        out += rows[::step][:cap]
    return out


def _link(dest: Path, items: Sequence[tuple[str, Path]]) -> Path:
    """``dest/<folder>/<i>-<name>`` symlinks to ``items`` (a training job's class-folder input)."""
    for i, (folder, path) in enumerate(items):
        (dest / folder).mkdir(parents=True, exist_ok=True)
        (dest / folder / f"{i:05d}-{path.name}").symlink_to(Path(path).resolve())
    return dest


def tflite_params(path: Path) -> int:
    """Constants stored in a TFLite file (weights, biases; every tensor with a data buffer)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    return sum(int(np.prod(t.shape)) for sg in model.subgraphs for t in sg.tensors
               if t.buffer and model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data))


def npz_params(path: Path) -> int:
    """Values in a bundle's npz arrays, per-channel quantization scales left out."""
    with np.load(path) as data:
        return sum(int(data[k].size) for k in data.files if not k.endswith("_scale"))


def photos_640x480(n: int) -> list[bytes]:
    """``n`` photos of ``fruits/test`` (one class after another) as 640x480 JPEG (quality 90), the
    benchmark's input (scripts/bench_predict.py)."""
    from PIL import Image

    items = rc.images([rc.default_fruits() / "test"])
    picks = [items[i] for i in np.linspace(0, len(items) - 1, n).astype(int)]
    out = []
    for _, path in picks:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def interleaved_latency(predictors: Mapping[str, Callable[[bytes], object]], photos: Sequence[bytes],
                        rounds: int) -> dict[str, dict[str, float]]:
    """Per model: median and 90th percentile of one ``predict(bytes)`` in milliseconds, measured
    round-robin (each round: every model, in an order rotated by one per round, on every photo),
    after one warm-up call each."""
    names = list(predictors)
    for name in names:
        predictors[name](photos[0])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = predictors[name]
            for data in photos:
                t0 = time.perf_counter()
                fn(data)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {n: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "n": len(t)}
            for n, t in times.items()}


def scores(labels: Sequence[str], predicted: Sequence[str], rejected: Sequence[bool],
           set_names: Sequence[str]) -> dict[str, Any]:
    """The table's figures from per-image answers over the three test sets (``set_names`` per row)."""
    from .evaluation import metrics_from_predictions

    names = np.array(set_names)
    out: dict[str, Any] = {"sets": {}}
    for name in dict.fromkeys(set_names):
        rows = np.flatnonzero(names == name)
        m = metrics_from_predictions([labels[i] for i in rows], [predicted[i] for i in rows], [rejected[i] for i in rows])
        out["sets"][name] = ({"n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                              "fruit_rejected_rate": m["fruit_rejected_rate"]} if m["n"]
                             else {"n": m["ood_n"], "rejected_rate": m["ood_rejected_rate"]})
    m = metrics_from_predictions(labels, predicted, rejected)
    present = [c for c in LABELS if m["per_class"][c]["n"]]
    out.update({"precision": float(np.mean([m["per_class"][c]["precision"] for c in present])),
                "recall": float(np.mean([m["per_class"][c]["recall"] for c in present])),
                "fruit_loss_rate": m["fruit_rejected_rate"], "not_fruit_rejected_rate": m["ood_rejected_rate"],
                "confusion": m["confusion"]})
    return out


def _bundle_answers(bundle: Path, items: Sequence[tuple[str, Path]], cache_dir: Path
                    ) -> tuple[list[str], list[bool], Any]:
    """Served answers (second look included) of a bundle on ``items``; backbone outputs from the cache."""
    from .classifier import Classifier
    from .embeddings import EmbeddingCache, Item, embed_items
    from .evaluation import image_source

    clf = Classifier(bundle, num_threads=1)
    cache = EmbeddingCache(cache_dir, clf.backbone.spec)
    emb = embed_items([Item(p, lab) for lab, p in items], clf.backbone, cache, views=("orig",), progress=False)
    cache.flush()
    if len(emb) != len(items):
        raise CompareError(f"{len(items) - len(emb)} test images could not be read: {dict(emb.skipped)}")
    preds = clf.predict_embeddings(emb.views["orig"], emb.pooled["orig"], images=image_source(emb.paths, clf.size),
                                   block_in=emb.block_in["orig"])
    return [p.predicted_class for p in preds], [p.verdict == "not_fruit" for p in preds], clf


def _train_bundle(variant: Variant, recipe: rc.Recipe, train_dir: Path, val_dir: Path, out: Path,
                  cache_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the training job (``python -m fruitpipe train``) for ``variant``; its metrics.json."""
    settings = {**recipe.hyperparameters, **variant.settings}
    cmd = [sys.executable, "-m", "fruitpipe", "train", "--data", str(train_dir), "--validation", str(val_dir),
           "--cache", str(cache_dir), "--out", str(out / "bundle"), "--output-data", str(out / "output")]
    if variant.backbone:
        cmd += ["--backbone", variant.backbone]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    job_log = out / "train.log"  # the job's stage=/progress= lines, readable while it runs
    with open(job_log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(rc.REPO), os.environ.get("PYTHONPATH")]))})
    if proc.returncode != 0:
        raise CompareError(f"training {variant.name} failed:\n{job_log.read_text()[-3000:]}")
    metrics = json.loads((out / "output" / "metrics.json").read_text())
    log(f"{variant.name}: trained in {metrics['train_seconds']:.0f} s (embedded {metrics['embedded_new']}, "
        f"cached {metrics['cached']}); validation accuracy {metrics['accuracy']:.3f}")
    return metrics


def run(out_dir: Path, *, quick: bool = False, names: Sequence[str] | None = None,
        cache_dir: Path | None = None, keep: Path | None = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Train, score and time every selected variant; write ``compare.json`` and the chart into
    ``out_dir`` (``compare_quick.*`` with ``quick``) and return the JSON's content. ``keep``: copy
    each trained model there (``keep/<variant>/``). Raises :class:`CompareError`."""
    from .backends.local import default_cache_dir

    variants = select(names, quick)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    started = time.monotonic()
    caps = QUICK_CAPS if quick else {}
    with tempfile.TemporaryDirectory(prefix="fruitpipe-compare-") as tmp_name:
        tmp = Path(tmp_name)
        recipe = rc.candidate(generated=tmp / "generated")
        recipe.prepare()
        train_items = subset(rc.images(recipe.train), caps.get("train"))
        val_items = subset(rc.images(recipe.validation), caps.get("validation"))
        test_items: list[tuple[str, Path]] = []
        set_of: list[str] = []
        for name, root in test_sets():
            part = subset(rc.images([root]), caps.get("test"))
            test_items += part
            set_of += [name] * len(part)
        train_dir, val_dir = _link(tmp / "train", train_items), _link(tmp / "validation", val_items)
        labels = [lab for lab, _ in test_items]
        photos = photos_640x480(5)
        rows: dict[str, dict[str, Any]] = {}
        predictors: dict[str, Callable[[bytes], object]] = {}
        for v in variants:
            work = Path(keep) / v.name if keep else tmp / v.name
            work.mkdir(parents=True, exist_ok=True)
            row: dict[str, Any] = {"title": v.title, "note": v.note, "backbone": v.backbone}
            if v.backbone:
                t0 = time.monotonic()
                metrics = _train_bundle(v, recipe, train_dir, val_dir, work, cache_dir, log)
                row["train_seconds"] = round(time.monotonic() - t0, 1)
                row["embedded_new"], row["cached"] = metrics["embedded_new"], metrics["cached"]
                row["hyperparameters"] = {**recipe.hyperparameters, **v.settings}
                row["validation"] = {k: metrics.get(k) for k in ("n", "accuracy", "macro_f1", "fruit_rejected_rate",
                                                                 "ood_n", "ood_rejected_rate", "split")}
                predicted, rejected, clf = _bundle_answers(work / "bundle", test_items, cache_dir)
                files = [work / "bundle" / f for f in clf.manifest.files]
                row["file_bytes"] = clf.backbone.path.stat().st_size + sum(f.stat().st_size for f in files)
                row["params"] = tflite_params(clf.backbone.path) + sum(npz_params(f) for f in files if f.suffix == ".npz"
                                                                       and f.name != "rejection.npz")
                row["model_version"] = clf.version
                predictors[v.name] = clf.predict_bytes
            else:
                cfg = QUICK_CNN if quick else FULL_CNN
                log(f"{v.name}: training ({cfg.epochs} epochs on {len(train_items)} images)")
                trained = cnn.train(train_items, val_items, work, cfg)
                model = cnn.CnnClassifier(work / cnn.FILE)
                xv, yv = cnn.load_images(val_items, model.size)
                v_labels = [(LABELS + ("not_fruit",))[t] for t in yv]
                v_pred, v_rej = model.answer(model.probabilities(xv))
                from .evaluation import metrics_from_predictions
                vm = metrics_from_predictions(v_labels, v_pred, v_rej)
                row.update({"train_seconds": trained["train_seconds"], "history": trained["history"],
                            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
                            "validation": {k: vm[k] for k in ("n", "accuracy", "macro_f1", "fruit_rejected_rate",
                                                              "ood_n", "ood_rejected_rate")} | {"split": "validation"},
                            "file_bytes": (work / cnn.FILE).stat().st_size, "params": tflite_params(work / cnn.FILE),
                            "keras_params": trained["params"]})
                x, _ = cnn.load_images(test_items, model.size)
                if len(x) != len(test_items):
                    raise CompareError("test images could not be read for the custom CNN")
                predicted, rejected = model.answer(model.probabilities(x))
                predictors[v.name] = model.predict_bytes
                log(f"{v.name}: trained in {trained['train_seconds']:.0f} s; validation accuracy {vm['accuracy']:.3f}")
            row["test"] = scores(labels, predicted, list(map(bool, rejected)), set_of)
            rows[v.name] = row
        log(f"latency: {len(predictors)} models, {len(photos)} photos, interleaved")
        latency = interleaved_latency(predictors, photos, QUICK_LATENCY_ROUNDS if quick else LATENCY_ROUNDS)
        for name, lat in latency.items():
            rows[name]["latency"] = lat
    result = {
        "quick": quick, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1), "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
        "protocol": {
            "train": "fruitpipe.recipe.candidate train: fruits/train + fruits_extra and not_fruit train splits",
            "validation": "fruits/val + fruits_extra and not_fruit val splits + generated calib: calibrates each "
                          "bundle's rejection bars; the recipe then refits on train + validation (the custom CNN does not)",
            "test": "fruits/test, fruits_extra test split, not_fruit test split: reported only, chose nothing",
            "chose": {"hyperparameters": "fruitpipe.recipe (chosen on val, docs/ml.md)",
                      "custom_cnn": "architecture and epochs fixed by hand for the time budget; no threshold",
                      "default_model": "this table's validation columns with latency (docs/ml.md)"},
            "latency": f"one process, 1 LiteRT thread each, 640x480 JPEGs, whole predict path, round-robin over the "
                       f"models in rotated order, median of {len(photos)} photos x "
                       f"{QUICK_LATENCY_ROUNDS if quick else LATENCY_ROUNDS} rounds",
            "split_rule": {"fractions": dict(splits.FRACTIONS), "salt": splits.SALT},
            "caps_per_folder": caps or None,
            "n": {"train": len(train_items), "validation": len(val_items), "test": len(test_items)},
        },
        "variants": rows,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / (QUICK_JSON_NAME if quick else JSON_NAME)).write_text(json.dumps(result, indent=2) + "\n")
    chart(result, out_dir / (QUICK_CHART_NAME if quick else CHART_NAME))
    return result


def chart(result: Mapping[str, Any], dest: Path) -> None:
    """Accuracy on ``fruits/test`` and on the ``fruits_extra`` test split vs per-image latency; the
    marker's area grows with the model's file size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    rows = result["variants"]
    biggest = max(r["file_bytes"] for r in rows.values())
    for i, (name, r) in enumerate(rows.items()):
        colour = f"C{i}"
        x = r["latency"]["median_ms"]
        size = 40 + 900 * r["file_bytes"] / biggest
        for set_name, marker in (("fruits/test", "o"), ("fruits_extra/test", "s")):
            ax.scatter(x, 100 * r["test"]["sets"][set_name]["accuracy"], s=size, c=colour, marker=marker, alpha=0.6,
                       edgecolors="k", label=f"{name} ({r['file_bytes'] / 1e6:.1f} MB)" if marker == "o" else None)
        ax.annotate(name, (x, 100 * r["test"]["sets"]["fruits/test"]["accuracy"]), fontsize=7,
                    xytext=(5, 5), textcoords="offset points")
    ax.set_xlabel("median latency per image, 1 thread, 640x480 JPEG (ms)")
    ax.set_ylabel("test accuracy, rejected fruit = wrong (%)")
    ax.set_title(("QUICK subset run: " if result["quick"] else "")
                 + "accuracy vs latency (o fruits/test, s fruits_extra/test; area ~ file size)", fontsize=9)
    ax.set_xscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=0.4, title="o: fruits/test",
              title_fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=90)
    plt.close(fig)
