"""One local retraining run, in its own process: prepare → train → evaluate → gate → publish.

Started by :class:`fruitpipe.backends.local.LocalTrainer` as ``python -m
fruitpipe.backends.local_run --store DIR --run-id ID`` (or ``--warm-up``, the first-start warm-up).
It never runs inside the server process, so a slow or crashing training cannot stall or kill
predictions; it runs at a lower CPU priority (``nice``) for the same reason. It writes
``retrain/status.json`` as it goes. Whatever goes wrong, the live pointer is only moved by the
final publish step, after the gate said yes.

The data are :mod:`fruitpipe.recipe`'s: its training roots plus the store's uploads, its
validation roots (calibration), its hyperparameters, and its frozen evaluation set, on which the
gate scores the candidate and the live model (and any version not yet scored on it, so the
versions table compares like with like). Progress is one percent over the whole run
(:class:`Progress`), weighted by the stage durations measured on the previous run.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import bundle, gate
from .. import recipe as rc
from ..classifier import ZOOM_MEMO_ENV, remember_zoom
from ..evalset import UploadGuard
from ..labels import LABELS
from .local import (LocalRegistry, atomic_write_json, decision_lock, proc_start_time, read_json,
                    uploads_fingerprint)

# Rough expected seconds per stage before any run was measured here (a warm-started retrain with
# a warm cache on an unloaded 2-core machine, about 33 s in all); afterwards
# retrain/stage-seconds.json, the previous run's own measured durations, replace them.
DEFAULT_PLAN: list[tuple[str, float]] = [
    ("prepare", 1.0), ("wait_cache", 0.0), ("load_backbone", 1.0), ("embed_train", 1.0),
    ("embed_validation", 2.0), ("calibrate", 4.0), ("refit", 4.0), ("finetune_block", 10.0),
    ("write_bundle", 1.0), ("evaluate", 3.0), ("done", 1.0), ("gate_evaluate", 4.0), ("publish", 0.5)]
STAGE_LABELS = {
    "prepare": "preparing the data", "wait_cache": "waiting for the first-start warm-up",
    "load_backbone": "training: loading the backbone", "embed_train": "training: embedding new images",
    "embed_validation": "training: embedding validation images", "train_head": "training: the head",
    "finetune_block": "training: fine-tuning block 17 with the head", "calibrate": "training: calibrating the rejection",
    "refit": "training: refit on train + validation", "write_bundle": "training: writing the bundle",
    "evaluate": "training: checking the bundle", "done": "training: done",
    "gate_evaluate": "scoring candidate and live on the evaluation set", "gate": "gate", "publish": "publishing"}


class RunFailed(RuntimeError):
    """A step failed; the message is what the status shows."""


class Progress:
    """Percent over the whole run and an ETA, from expected stage durations.

    ``plan`` is the ordered (stage, expected seconds) list. Entering a stage moves to its next
    occurrence in the plan (a stage not in the plan is inserted with no weight). Inside a stage the
    fraction is the larger of the job's own ``progress=`` share and the elapsed share of the
    expected time (capped at 95%). The percent never goes backwards and stays below 100 until
    :meth:`finish`. The ETA is the expected time left, scaled by how much slower or faster than
    expected the run has been so far.
    """

    def __init__(self, plan: list[tuple[str, float]], clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = [[name, max(0.0, float(sec))] for name, sec in plan]
        self.clock = clock
        self.started = clock()
        self.index = -1
        self.stage_started = self.started
        self.reported = 0.0
        self.fraction = 0.0
        self.measured: list[tuple[str, float]] = []

    @property
    def total(self) -> float:
        return sum(sec for _, sec in self.plan) or 1.0

    def enter(self, stage: str) -> None:
        now = self.clock()
        if self.index >= 0:
            self.measured.append((self.plan[self.index][0], now - self.stage_started))
        names = [name for name, _ in self.plan]
        try:
            self.index = names.index(stage, self.index + 1)
        except ValueError:
            self.index += 1
            self.plan.insert(self.index, [stage, 0.0])
        self.stage_started, self.fraction = now, 0.0

    def within(self, fraction: float) -> None:
        self.fraction = max(self.fraction, min(1.0, max(0.0, fraction)))

    def _done_expected(self) -> float:
        if self.index < 0:
            return 0.0
        expected = self.plan[self.index][1]
        elapsed = (self.clock() - self.stage_started) / expected if expected else 0.0
        frac = max(self.fraction, min(0.95, elapsed))
        return sum(sec for _, sec in self.plan[: self.index]) + expected * frac

    def percent(self) -> float:
        self.reported = max(self.reported, min(99.0, 100.0 * self._done_expected() / self.total))
        return round(self.reported, 1)

    def eta(self) -> float | None:
        done = self._done_expected()
        # the observed speed only counts once a twentieth of the run is behind it
        speed = min(4.0, max(0.5, (self.clock() - self.started) / done)) if done >= 0.05 * self.total else 1.0
        return round(max(0.0, self.total - done) * speed, 1)

    def finish(self) -> list[tuple[str, float]]:
        """Close the current stage; the measured (stage, seconds), for the next run's plan."""
        if self.index >= 0:
            self.measured.append((self.plan[self.index][0], self.clock() - self.stage_started))
            self.index = len(self.plan)
        self.reported = 100.0
        return self.measured


def _die_with_parent() -> None:
    """In the training job (``preexec_fn``): SIGKILL when the run process dies (Linux prctl
    PR_SET_PDEATHSIG), a second line of defence after the server killing the process group."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextmanager
def cache_lock(cache_dir: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive use of the embedding cache (the warm-up and a run would otherwise embed the same
    images twice at once). Shards are append-only, so this is about work, not safety."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def zoom_memo_path(cache_dir: Path) -> Path:
    """The second-look memo beside the embedding cache (:class:`fruitpipe.classifier.ZoomMemo`)."""
    return Path(cache_dir).parent / f"zoom-memo-{Path(cache_dir).name}.npz"


def embed_set(folder: Path, cache_dir: Path, views: tuple[str, ...] = ("orig",), backbone: Any = None) -> tuple[Any, Any]:
    """``(backbone, Embedded)`` of a class-folder set, through the embedding cache (new shards flushed)."""
    from ..classifier import Backbone
    from ..embeddings import EmbeddingCache, embed_folder
    backbone = backbone or Backbone(None)
    cache = EmbeddingCache(cache_dir, backbone.spec)
    emb = embed_folder(folder, backbone, cache, views=views, progress=False)
    cache.flush()
    return backbone, emb


class EmbeddedSet:
    """One evaluation folder, embedded (through the cache) once per backbone that a scored bundle
    names: bundles on different backbones are compared on the same images, each on its own."""

    def __init__(self, folder: Path, cache_dir: Path, backbone: Any = None) -> None:
        self.folder, self.cache_dir = Path(folder), Path(cache_dir)
        self._sets: dict[str, tuple[Any, Any]] = {}
        self._given = backbone

    def for_bundle(self, bundle_dir: Path) -> tuple[Any, Any]:
        """``(backbone, Embedded)`` for the backbone ``bundle_dir``'s manifest names."""
        from ..classifier import Backbone
        spec = bundle.read_manifest(bundle_dir).backbone
        if spec.name not in self._sets:
            given = self._given if self._given is not None and self._given.spec is spec else None
            self._sets[spec.name] = embed_set(self.folder, self.cache_dir, backbone=given or Backbone(spec))
        return self._sets[spec.name]

    def score(self, bundle_dir: Path) -> dict[str, Any]:
        """:func:`score` of ``bundle_dir`` on this set, embedded by its own backbone."""
        return score(bundle_dir, *self.for_bundle(bundle_dir))


def score(bundle_dir: Path, backbone: Any, emb: Any) -> dict[str, Any]:
    """A bundle's metrics on embedded images: the serving code path (block, head, rejection and
    its second look on the re-loaded image), without embedding anything again."""
    from ..classifier import Classifier
    from ..evaluation import evaluate_embeddings
    clf = Classifier(bundle_dir, shared_backbone=backbone)
    return evaluate_embeddings(clf, emb.views["orig"], emb.labels, emb.skipped, pooled=emb.pooled["orig"],
                               paths=emb.paths, block_in=emb.block_in["orig"])


class Run:
    def __init__(self, store: Path, run_id: str) -> None:
        self.store = Path(store)
        self.run_id = run_id
        self.dir = self.store / "retrain" / "runs" / run_id
        self.status_path = self.store / "retrain" / "status.json"
        self.plan_path = self.store / "retrain" / "stage-seconds.json"
        self.config = json.loads((self.dir / "config.json").read_text())
        self.recipe = rc.Recipe.from_dict(self.config["recipe"])
        self.cache_dir = Path(self.config["cache_dir"])
        self.registry = LocalRegistry(self.store)
        self.tail: deque[str] = deque(maxlen=40)
        self.status: dict[str, Any] = read_json(self.status_path) or {}
        if self.status.get("run_id") != run_id:
            raise SystemExit(f"status.json is not for run {run_id}")
        self.status["pid"], self.status["pid_start"] = os.getpid(), proc_start_time(os.getpid())
        plan = read_json(self.plan_path)
        ok = isinstance(plan, list) and all(isinstance(p, list) and len(p) == 2 for p in plan)
        self.progress = Progress([tuple(p) for p in plan] if ok else DEFAULT_PLAN)  # type: ignore[misc]
        self._last_write = 0.0

    def update(self, **fields: Any) -> None:
        self.status.update(fields)
        if self.status.get("state") == "running":
            self.status["percent"] = max(float(self.status.get("percent") or 0.0), self.progress.percent())
            self.status["eta_seconds"] = self.progress.eta()
        self.status["log_tail"] = list(self.tail)
        atomic_write_json(self.status_path, self.status)
        self._last_write = time.monotonic()

    def stage(self, name: str) -> None:
        self.progress.enter(name)
        self.update(stage=STAGE_LABELS.get(name, name))

    def log(self, line: str) -> None:
        self.tail.append(line.rstrip()[:300])

    # -- steps ---------------------------------------------------------------------------------

    def prepare(self) -> tuple[Path, Path | None, Path, dict[str, int]]:
        """Generated sets made, and folders of symlinks: training (recipe + uploads), validation,
        evaluation. A class without any training image fails the run here, before training."""
        self.stage("prepare")
        try:
            self.recipe.prepare()
        except ImportError as exc:
            raise RunFailed(f"the recipe's generated not-fruit images need an optional package ({exc.name}): "
                            "pip install scikit-image matplotlib (both in fruitpipe[train], which `make run` installs)") from None
        data = self.dir / "data"
        uploads = self.store / "dataset"
        guard = UploadGuard(self.recipe.evaluation, (), self.store / "recipe")
        left_out: list[str] = []

        def keep(path: Path) -> bool:
            """No upload that is (a copy of) an evaluation image trains, even one filed before the
            evaluation set or the upload guard existed."""
            if not path.is_relative_to(uploads):
                return True
            found = guard.check(path.read_bytes(), path.stem)
            if found and found[0] == "rejected":
                left_out.append(f"{path.parent.name}/{path.name}")
                return False
            return True

        counts = rc.link_dataset(data, list(self.recipe.train) + [uploads], keep=keep)
        counts = {label: counts.get(label, 0) for label in LABELS}
        if left_out:
            self.log(f"left out {len(left_out)} uploads that are in the evaluation set: {', '.join(left_out[:5])}")
            self.status.setdefault("result", {})["left_out_in_evaluation_set"] = left_out
        self.log(f"training images: {sum(counts.values())} " + json.dumps(counts))
        empty = [label for label, n in counts.items() if n == 0]
        if empty:
            raise RunFailed(f"no training image for {', '.join(empty)}: every class needs at least one "
                            "(upload some, or check the seed data folders)")
        validation = None
        if self.recipe.validation:
            validation = self.dir / "validation"
            rc.link_dataset(validation, self.recipe.validation)
        evaluation = self.dir / "evaluation"
        if not rc.link_dataset(evaluation, self.recipe.evaluation):
            raise RunFailed("no evaluation images: the gate cannot compare models (check the recipe's "
                            "evaluation folders)")
        return data, validation, evaluation, counts

    def train(self, data: Path, validation: Path | None) -> Path:
        out = self.dir / "candidate"
        cmd = list(self.config["train_command"]) + ["--data", str(data), "--out", str(out),
                                                      "--cache", str(self.cache_dir)]
        if validation is not None:
            cmd += ["--validation", str(validation)]
        live = self.registry.live_version()
        if live is not None:  # a fine-tuned live model is the retrain's starting point (warm start)
            cmd += ["--base-model", str(self.registry.fetch(live))]
        if self.recipe.hyperparameters:
            path = self.dir / "hyperparameters.json"
            atomic_write_json(path, dict(self.recipe.hyperparameters))
            cmd += ["--hyperparameters", str(path)]
        self.log("$ " + " ".join(cmd))
        env = dict(os.environ, **{ZOOM_MEMO_ENV: str(zoom_memo_path(self.cache_dir))})
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, stdin=subprocess.DEVNULL, errors="replace", env=env,
                                preexec_fn=_die_with_parent)
        assert proc.stdout is not None
        metrics: dict[str, str] = {}
        errors: list[str] = []
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.log(line)
            key, sep, value = line.partition("=")
            if line.startswith("error:"):
                errors.append(line[len("error:"):].strip())
            elif sep and " " not in key:
                if key == "stage":
                    self.stage(value.strip())
                elif key == "progress":
                    try:
                        self.progress.within(float(value) / 100)
                    except ValueError:
                        pass
                else:
                    metrics[key] = value.strip()
            if time.monotonic() - self._last_write > 0.5:
                self.update()
        code = proc.wait()
        self.status.setdefault("result", {})["training_metrics"] = metrics
        if code != 0:
            why = (f"killed by signal {-code}" + (" (SIGKILL: out of memory, or killed)" if code == -9 else "")
                   if code < 0 else f"exited with status {code}")
            raise RunFailed(f"the training job {why}" + (f": {errors[-1]}" if errors else ""))
        try:
            bundle.verify(out)
        except bundle.BundleError as exc:
            raise RunFailed(f"the training job wrote an invalid bundle: {exc}") from None
        return out

    def evaluate(self, candidate: Path, evaluation: Path
                 ) -> tuple[dict[str, Any], dict[str, Any] | None, tuple[str, dict[str, Any]] | None, str]:
        """Candidate and live on the frozen evaluation set (embedded once, through the cache), and
        every other version not yet scored on it; each result is kept in ``evaluations/``. Also the
        gate's anchor (:func:`fruitpipe.gate.best_reference`): the best of the versions the gate let
        through (every version not rejected, the seed included), None with a custom evaluation."""
        self.stage("gate_evaluate")
        eval_set = rc.fingerprint(self.recipe.evaluation)
        live_version = self.registry.live_version()
        if self.config.get("evaluate"):  # a custom evaluation function (module:function)
            fn = load_callable(self.config["evaluate"])
            from ..classifier import Backbone, Classifier
            backbone = Backbone(None)
            cand = fn(Classifier(candidate, shared_backbone=backbone), evaluation)
            live = (fn(Classifier(self.registry.fetch(live_version), shared_backbone=backbone), evaluation)
                    if live_version else None)
            self.log("anchor check skipped: a custom evaluation function scores only candidate and live")
            return cand, live, None, eval_set
        memo = remember_zoom()
        memo.load(zoom_memo_path(self.cache_dir))
        sets = EmbeddedSet(evaluation, self.cache_dir)
        sets.for_bundle(candidate)
        self.progress.within(0.4)
        self.update()
        cand = sets.score(candidate)
        self.log(f"candidate: accuracy={cand['accuracy']:.4f} macro_f1={cand['macro_f1']:.4f} "
                 f"ood_rejected_rate={cand.get('ood_rejected_rate')}")
        live = None
        accepted: dict[str, dict[str, Any]] = {}  # the versions the gate let through: the anchor's pool
        for v in self.registry.versions():
            version = v.version
            cached = frozen_evaluation(self.store, version)
            if cached is not None and cached.get("eval_set") == eval_set:
                metrics = cached["metrics"]
            else:
                metrics = sets.score(self.registry.fetch(version))
                save_frozen_evaluation(self.store, version, eval_set, metrics)
            if v.status != "rejected":
                accepted[version] = metrics
            if version == live_version:
                live = metrics
                self.log(f"live {live_version}: accuracy={live['accuracy']:.4f} macro_f1={live['macro_f1']:.4f} "
                         f"ood_rejected_rate={live.get('ood_rejected_rate')}")
        memo.save(zoom_memo_path(self.cache_dir))
        reference = gate.best_reference(accepted, live_version)
        if reference is not None:
            self.log(f"anchor {reference[0]}: accuracy={reference[1]['accuracy']:.4f} (the best version so far)")
        return cand, live, reference, eval_set

    def run(self) -> int:
        try:
            os.nice(int(self.config.get("nice", 10)))
        except OSError:
            pass
        try:
            return self._run()
        finally:
            self.drop_snapshot()

    def drop_snapshot(self) -> None:
        """The snapshot folders are only symlinks, but thousands per run: drop them, keep log and
        config. Done before the final status is written, so a finished run leaves nothing behind."""
        for name in ("data", "validation", "evaluation"):
            shutil.rmtree(self.dir / name, ignore_errors=True)

    def _run(self) -> int:
        self.update(stage="starting")
        try:
            data, validation, evaluation, counts = self.prepare()
            self.status.setdefault("result", {})["images"] = counts
            fingerprint = uploads_fingerprint(self.store)
            with cache_lock(self.cache_dir, on_wait=lambda: self.stage("wait_cache")):
                candidate = self.train(data, validation)
                cand_metrics, live_metrics, reference, eval_set = self.evaluate(candidate, evaluation)
            self.drop_snapshot()
            with decision_lock(self.store):  # a cancel (LocalTrainer.cancel) waits for this whole block
                self.stage("gate")
                version = bundle.read_manifest(candidate).version
                live_version = self.registry.live_version()
                try:
                    decision = gate.decide(cand_metrics, live_metrics,
                                           tolerance=float(self.config.get("gate_tolerance", 0.0)),
                                           strict=bool(self.config.get("strict_gate")),
                                           reference=reference[1] if reference else None,
                                           reference_version=reference[0] if reference else None)
                except gate.GateError as exc:
                    decision = gate.Decision(False, f"metrics cannot be compared: {exc}", {}, None)
                evaluation_record = {"candidate": cand_metrics, "live": live_metrics, "live_version": live_version,
                                     "reference_version": reference[0] if reference else None,
                                     "eval_set": eval_set, "evaluation": self.recipe.to_dict()["evaluation"]}
                result = dict(self.status.get("result") or {}, version=version, promoted=decision.promote,
                              reason=decision.reason, candidate=_summary(cand_metrics),
                              live=_summary(live_metrics), live_version=live_version, eval_set=eval_set)
                self.log(("promote: " if decision.promote else "reject: ") + decision.reason)
                save_frozen_evaluation(self.store, version, eval_set, cand_metrics)
                record_trained_on(self.store, version, fingerprint, live_version)
                if decision.promote:
                    self.stage("publish")
                    self.registry.add(candidate, version, evaluation=evaluation_record)
                    if self.config.get("shadow_requests"):  # live only after its shadow (fruitpipe.shadow)
                        from ..shadow import plan
                        from .shadow_pointers import LocalShadowPointer
                        LocalShadowPointer(self.store).write(plan(version, live_version, datetime.now(timezone.utc),
                                                                  int(self.config["shadow_requests"])))
                        result["shadow"] = True
                        self.log(f"shadow: {version} runs beside {live_version} for "
                                 f"{self.config['shadow_requests']} requests before it may go live")
                    else:
                        self.registry.activate(version)
                    state = "succeeded"
                else:
                    self.registry.add(candidate, version, rejected_reason=decision.reason, evaluation=evaluation_record)
                    state = "rejected"
                atomic_write_json(self.plan_path, [list(p) for p in self.progress.finish()])
                self.update(state=state, stage="done", percent=100.0, eta_seconds=0.0, finished=bundle.now_iso(),
                            result=result)
            return 0
        except RunFailed as exc:
            return self.fail(str(exc))
        except Exception as exc:  # a bug or an I/O error: record it, leave the live model alone
            for line in traceback.format_exc().splitlines()[-8:]:
                self.log(line)
            return self.fail(f"{type(exc).__name__}: {exc}")

    def fail(self, reason: str) -> int:
        self.drop_snapshot()
        self.log(f"failed: {reason}")
        result = dict(self.status.get("result") or {}, error=f"{reason}. The live model is unchanged.")
        self.update(state="failed", finished=bundle.now_iso(), eta_seconds=None, result=result)
        return 1


# -- records kept in the store -----------------------------------------------------------------


def frozen_evaluation(store: Path, version: str) -> dict[str, Any] | None:
    """``{"eval_set", "metrics"}``: a version's metrics on the frozen evaluation set, if scored with
    per-image outcomes (``metrics["paired"]``, which the gate compares; older records are re-scored)."""
    data = read_json(Path(store) / "evaluations" / f"{version}.json")
    ok = isinstance(data, dict) and isinstance(data.get("metrics"), dict) and "paired" in data["metrics"]
    return data if ok else None


def save_frozen_evaluation(store: Path, version: str, eval_set: str, metrics: dict[str, Any]) -> None:
    atomic_write_json(Path(store) / "evaluations" / f"{version}.json",
                      {"eval_set": eval_set, "evaluated": bundle.now_iso(), "metrics": metrics})


def record_trained_on(store: Path, version: str, fingerprint: str, base: str | None) -> None:
    """What ``version`` was trained on (the uploads' fingerprint) and from (the live version then)."""
    path = Path(store) / "retrain" / "trained-on.json"
    data = read_json(path)
    data = data if isinstance(data, dict) else {}
    data[version] = {"uploads": fingerprint, "base": base}
    atomic_write_json(path, data)


def _summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    keys = ("n", "accuracy", "macro_f1", "fruit_rejected_rate", "ood_n", "ood_rejected_rate")
    return {k: metrics.get(k) for k in keys if k in metrics}


def load_callable(spec: str) -> Callable[..., dict[str, Any]]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# -- the first-start warm-up -----------------------------------------------------------------


def warm_up(store: Path) -> int:
    """Make the recipe's generated sets, the upload guard's indexes, the embedding cache of the
    recipe's images and the live model's score on the frozen evaluation set; progress in
    ``retrain/warmup.json``. Exit status 0 when done."""
    from ..embeddings import EmbeddingCache, Item, embed_items
    from ..evalset import UploadGuard
    from ..classifier import Backbone
    from ..training import Config

    path = Path(store) / "retrain" / "warmup.json"
    status = read_json(path) or {}
    key = status.get("key") or {}
    started = time.monotonic()

    def update(**fields: Any) -> None:
        status.update(fields)
        atomic_write_json(path, status)

    try:
        os.nice(10)
    except OSError:
        pass
    try:
        recipe = rc.Recipe.from_dict(key["recipe"])
        cache_dir = Path(key["cache_dir"])
        # the lock first: a retrain started meanwhile waits for this work instead of repeating it
        with cache_lock(cache_dir, on_wait=lambda: update(stage="waiting for a retrain using the cache")):
            update(stage="generated not-fruit sets", percent=1.0)
            recipe.prepare()
            update(stage="upload guard indexes", percent=3.0)
            UploadGuard(recipe.evaluation, recipe.train + recipe.validation, Path(store) / "recipe").indexes()
            views = ("orig", "flip") if Config.from_mapping(dict(recipe.hyperparameters)).flip else ("orig",)
            work = ([(root, views) for root in recipe.train + recipe.validation]
                    + [(root, ("orig",)) for root in recipe.evaluation])
            # rc.images reads split roots (``<set>/@split-train``) too, not only real folders.
            items = [(Item(path, label), v) for root, v in work for label, path in rc.images([Path(root)])]
            registry = LocalRegistry(Path(store))
            live = registry.live_version()
            # the recipe's backbone, else the live model's: the one the next retrain trains on
            backbone = Backbone(recipe.hyperparameters.get("backbone")
                                or (bundle.read_manifest(registry.fetch(live)).backbone if live else None))
            cache = EmbeddingCache(cache_dir, backbone.spec)
            chunk = 512
            for start in range(0, len(items), chunk):
                part = items[start:start + chunk]
                for views_ in {v for _, v in part}:
                    embed_items([i for i, v in part if v == views_], backbone, cache, views=views_, progress=False)
                cache.flush()  # one shard per chunk: an interrupted warm-up keeps what it did
                update(stage="embedding the seed data", percent=round(5 + 94 * (start + len(part)) / len(items), 1))
            # The live model's score on the frozen evaluation set, so the first retrain's gate only
            # has the candidate left to score.
            if live is not None and recipe.evaluation:
                update(stage="scoring the live model on the evaluation set", percent=99.0)
                evaluation = Path(store) / "retrain" / "warmup-evaluation"
                shutil.rmtree(evaluation, ignore_errors=True)
                rc.link_dataset(evaluation, recipe.evaluation)
                try:
                    eval_set = rc.fingerprint(recipe.evaluation)
                    cached = frozen_evaluation(Path(store), live)
                    if cached is None or cached.get("eval_set") != eval_set:
                        memo = remember_zoom()
                        memo.load(zoom_memo_path(cache_dir))
                        scored = EmbeddedSet(evaluation, cache_dir, backbone).score(registry.fetch(live))
                        save_frozen_evaluation(Path(store), live, eval_set, scored)
                        memo.save(zoom_memo_path(cache_dir))
                finally:
                    shutil.rmtree(evaluation, ignore_errors=True)
        update(state="done", percent=100.0, finished=bundle.now_iso(), seconds=round(time.monotonic() - started, 1),
               images=len(items))
        return 0
    except Exception as exc:  # recorded; a retrain does the same work itself if needed
        traceback.print_exc()
        update(state="failed", error=f"{type(exc).__name__}: {exc}", finished=bundle.now_iso())
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fruitpipe.backends.local_run")
    parser.add_argument("--store", required=True, type=Path)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run-id")
    what.add_argument("--warm-up", action="store_true")
    args = parser.parse_args(argv)
    if args.warm_up:
        return warm_up(args.store)
    return Run(args.store, args.run_id).run()


if __name__ == "__main__":
    sys.exit(main())
