"""One local retraining run, in its own process: snapshot → train → evaluate → gate → publish.

Started by :class:`fruitpipe.backends.local.LocalTrainer` as ``python -m
fruitpipe.backends.local_run --store DIR --run-id ID``. It never runs inside the server process,
so a slow or crashing training cannot stall or kill predictions; it runs at a lower CPU priority
(``nice``) for the same reason. It writes ``retrain/status.json`` after every step. Whatever goes
wrong, the live pointer is only moved by the final publish step, after the gate said yes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Callable


from .. import bundle, gate
from ..labels import LABELS
from .local import LocalRegistry, atomic_write_json, read_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# share of the progress bar each stage covers
TRAIN_SPAN = (5.0, 80.0)


class RunFailed(RuntimeError):
    """A step failed; the message is what the status shows."""


class Run:
    def __init__(self, store: Path, run_id: str) -> None:
        self.store = Path(store)
        self.run_id = run_id
        self.dir = self.store / "retrain" / "runs" / run_id
        self.status_path = self.store / "retrain" / "status.json"
        self.config = json.loads((self.dir / "config.json").read_text())
        self.registry = LocalRegistry(self.store)
        self.tail: deque[str] = deque(maxlen=40)
        self.status: dict[str, Any] = read_json(self.status_path) or {}
        if self.status.get("run_id") != run_id:
            raise SystemExit(f"status.json is not for run {run_id}")
        self.status["pid"] = os.getpid()

    def update(self, **fields: Any) -> None:
        self.status.update(fields)
        self.status["log_tail"] = list(self.tail)
        atomic_write_json(self.status_path, self.status)

    def log(self, line: str) -> None:
        self.tail.append(line.rstrip()[:300])

    # -- steps ---------------------------------------------------------------------------------

    def snapshot(self) -> tuple[Path, dict[str, int]]:
        """A folder of symlinks: the seed data plus the store's dataset, one folder per class."""
        self.update(stage="snapshot", percent=1.0)
        data = self.dir / "data"
        counts = dict.fromkeys(LABELS, 0)
        sources = [Path(p) for p in self.config.get("seed_dirs", [])] + [self.store / "dataset"]
        for s, source in enumerate(sources):
            for label in LABELS:
                folder = source / label
                if not folder.is_dir():
                    continue
                out = data / label
                out.mkdir(parents=True, exist_ok=True)
                for path in sorted(folder.iterdir()):
                    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                        (out / f"s{s}-{path.name}").symlink_to(path.resolve())
                        counts[label] += 1
        self.log(f"snapshot: {sum(counts.values())} images " + json.dumps(counts))
        if sum(counts.values()) == 0:
            raise RunFailed("no training images (seed folders and the store's dataset are empty)")
        return data, counts

    def live_hyperparameters(self) -> dict[str, str]:
        """The live model's recipe, so a retrain changes the data, not the recipe (SageMaker-style
        string values)."""
        live = self.registry.live_version()
        if live is None:
            return {}
        raw = bundle.read_manifest(self.registry.fetch(live)).raw.get("hyperparameters") or {}
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}

    def train(self, data: Path) -> Path:
        out = self.dir / "candidate"
        cmd = list(self.config["train_command"]) + ["--data", str(data), "--out", str(out),
                                                      "--cache", str(self.store / "cache" / "embeddings")]
        if self.config.get("validation_dir"):
            cmd += ["--validation", self.config["validation_dir"]]
        hyperparameters = self.live_hyperparameters()
        live = self.registry.live_version()
        if live is not None:  # a fine-tuned live model is the retrain's starting point (warm start)
            cmd += ["--base-model", str(self.registry.fetch(live))]
        if hyperparameters:
            path = self.dir / "hyperparameters.json"
            atomic_write_json(path, hyperparameters)
            cmd += ["--hyperparameters", str(path)]
        self.update(stage="train", percent=TRAIN_SPAN[0])
        self.log("$ " + " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, stdin=subprocess.DEVNULL, errors="replace")
        assert proc.stdout is not None
        metrics: dict[str, str] = {}
        last_write = 0.0
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.log(line)
            key, sep, value = line.partition("=")
            if sep and " " not in key:
                if key == "stage":
                    self.status["stage"] = f"train:{value.strip()}"
                elif key == "progress":
                    try:
                        pct = min(100.0, max(0.0, float(value)))
                        self.status["percent"] = TRAIN_SPAN[0] + (TRAIN_SPAN[1] - TRAIN_SPAN[0]) * pct / 100
                    except ValueError:
                        pass
                else:
                    metrics[key] = value.strip()
            now = time.monotonic()
            if now - last_write > 0.5:
                self.update()
                last_write = now
        code = proc.wait()
        self.status.setdefault("result", {})["training_metrics"] = metrics
        if code != 0:
            raise RunFailed(f"the training job exited with status {code}")
        try:
            bundle.verify(out)
        except bundle.BundleError as exc:
            raise RunFailed(f"the training job wrote an invalid bundle: {exc}") from None
        return out

    def evaluate(self, candidate: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Candidate and live on the same evaluation images, sharing one backbone."""
        from ..classifier import Backbone, Classifier
        eval_dir = self.config.get("eval_dir")
        if not eval_dir or not Path(eval_dir).is_dir():
            raise RunFailed("no evaluation images configured: the gate cannot compare models")
        self.update(stage="evaluate", percent=82.0)
        evaluate = load_callable(self.config.get("evaluate") or f"{__name__}:evaluate")
        backbone = Backbone(None)
        cand = evaluate(Classifier(candidate, shared_backbone=backbone), Path(eval_dir))
        self.log(f"candidate: accuracy={cand.get('accuracy')} macro_f1={cand.get('macro_f1')}")
        self.update(percent=90.0)
        live_version = self.registry.live_version()
        live = None
        if live_version is not None:
            live = evaluate(Classifier(self.registry.fetch(live_version), shared_backbone=backbone),
                            Path(eval_dir))
            self.log(f"live {live_version}: accuracy={live.get('accuracy')} macro_f1={live.get('macro_f1')}")
        return cand, live

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
        """The snapshot is only symlinks, but thousands per run: drop them, keep log and config.
        Done before the final status is written, so a finished run leaves nothing behind."""
        shutil.rmtree(self.dir / "data", ignore_errors=True)

    def _run(self) -> int:
        self.update(stage="starting", percent=0.0)
        try:
            data, counts = self.snapshot()
            self.status.setdefault("result", {})["images"] = counts
            candidate = self.train(data)
            self.drop_snapshot()
            cand_metrics, live_metrics = self.evaluate(candidate)
            self.update(stage="gate", percent=95.0)
            version = bundle.read_manifest(candidate).version
            live_version = self.registry.live_version()
            try:
                decision = gate.decide(cand_metrics, live_metrics,
                                       tolerance=float(self.config.get("gate_tolerance", 0.0)))
            except gate.GateError as exc:
                decision = gate.Decision(False, f"metrics cannot be compared: {exc}", {}, None)
            evaluation = {"candidate": cand_metrics, "live": live_metrics, "live_version": live_version,
                          "eval_dir": self.config.get("eval_dir")}
            result = dict(self.status.get("result") or {}, version=version, promoted=decision.promote,
                          reason=decision.reason, candidate=_summary(cand_metrics),
                          live=_summary(live_metrics), live_version=live_version)
            self.log(("promote: " if decision.promote else "reject: ") + decision.reason)
            if decision.promote:
                self.update(stage="publish", percent=97.0)
                self.registry.add(candidate, version, evaluation=evaluation)
                self.registry.activate(version)
                self.update(state="succeeded", stage="done", percent=100.0, finished=bundle.now_iso(),
                            result=result)
            else:
                self.registry.add(candidate, version, rejected_reason=decision.reason, evaluation=evaluation)
                self.update(state="rejected", stage="done", percent=100.0, finished=bundle.now_iso(),
                            result=result)
            return 0
        except RunFailed as exc:
            self.drop_snapshot()
            self.log(f"failed: {exc}")
            result = dict(self.status.get("result") or {}, error=str(exc))
            self.update(state="failed", finished=bundle.now_iso(), result=result)
            return 1
        except Exception as exc:  # a bug or an I/O error: record it, leave the live model alone
            self.drop_snapshot()
            for line in traceback.format_exc().splitlines()[-8:]:
                self.log(line)
            result = dict(self.status.get("result") or {}, error=f"{type(exc).__name__}: {exc}")
            self.update(state="failed", finished=bundle.now_iso(), result=result)
            return 1


def _summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: metrics.get(k) for k in ("n", "accuracy", "macro_f1", "ood_rejected_rate") if k in metrics}


def load_callable(spec: str) -> Callable[..., dict[str, Any]]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def evaluate(classifier: Any, data_dir: Path) -> dict[str, Any]:
    """The evaluation the gate compares (the same function as ``fruitpipe evaluate``)."""
    from ..evaluation import evaluate as ml_evaluate

    return ml_evaluate(classifier, data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fruitpipe.backends.local_run")
    parser.add_argument("--store", required=True, type=Path)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args(argv)
    return Run(args.store, args.run_id).run()


if __name__ == "__main__":
    sys.exit(main())
