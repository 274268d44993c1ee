"""The training recipe, in one place: which images train, calibrate and evaluate, and which
hyperparameters. ``make train-default`` (scripts/train_default.py) and every local retrain
(:mod:`fruitpipe.backends.local_run`) read it from here, so a retrain makes the shipped model again
on the shipped data plus the uploads.

The shipped recipe (``FRUITS`` = ``../shared/data/fruits`` beside the checkout, or
``$FRUITPIPE_FRUITS``):

* **train**: ``FRUITS/train`` (a retrain adds the store's uploads);
* **validation**: ``FRUITS/val`` plus the generated not-fruit *calib* group
  (:mod:`fruitpipe.ood`): the rejection thresholds are calibrated on it, then the model is refit
  on train + validation (``refit=true``);
* **evaluation** (frozen): ``FRUITS/test`` plus the generated not-fruit *heldout* group. Nothing
  trains or calibrates on it; it scores the shipped model, and the gate scores the live model and
  every candidate on it. Uploads already in it are refused (:mod:`fruitpipe.evalset`);
* **hyperparameters**: :class:`fruitpipe.training.Config` defaults overridden by
  ``HYPERPARAMETERS``.

A data set is a list of *roots*, each holding ``<class>/`` folders (any other folder, e.g.
``not_fruit/``, holds images that must be rejected); :func:`link_dataset` joins them into one
folder of symlinks. Changing the recipe (other sources, other splits, other hyperparameters) is
an edit of :func:`shipped` and ``HYPERPARAMETERS`` only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import ood

REPO = Path(__file__).resolve().parent.parent
FRUITS_ENV = "FRUITPIPE_FRUITS"
# Hyperparameters that differ from fruitpipe.training.Config's defaults (SageMaker-style strings).
# warm_epochs only applies to a retrain warm-started from the live model (make train-default never
# is): 2 epochs keep the candidate close to the live model and take half the time of 4; with the
# 12-photo upload of scripts/bench_retrain.py, 4 epochs scored 97.39% on the frozen set (rejected:
# live 98.05%), 2 epochs 98.05% / macro-F1 98.45% (promoted) (docs/ml.md, "Warm-started retrains").
HYPERPARAMETERS: Mapping[str, str] = {"refit": "true", "warm_epochs": "2"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def default_fruits() -> Path:
    """``$FRUITPIPE_FRUITS``, else ``../shared/data/fruits`` beside the checkout (``train/ val/ test/``)."""
    env = os.environ.get(FRUITS_ENV)
    return Path(env) if env else REPO.parent / "shared" / "data" / "fruits"


@dataclass(frozen=True)
class Recipe:
    """Data sets as tuples of roots, plus hyperparameters. ``generated`` maps a root that
    :func:`fruitpipe.ood.ensure` makes on demand (``.../ood-<group>``) to its group."""

    train: tuple[Path, ...]
    validation: tuple[Path, ...] = ()
    evaluation: tuple[Path, ...] = ()
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    generated: Mapping[str, str] = field(default_factory=dict)

    def prepare(self) -> None:
        """Make the generated roots that are missing (idempotent; a few seconds the first time)."""
        for root, group in self.generated.items():
            ood.ensure(Path(root).parent, group)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, absolute paths (a run process does not share the server's directory)."""
        return {"train": [str(Path(p).resolve()) for p in self.train],
                "validation": [str(Path(p).resolve()) for p in self.validation],
                "evaluation": [str(Path(p).resolve()) for p in self.evaluation],
                "hyperparameters": dict(self.hyperparameters),
                "generated": {str(Path(k).resolve()): v for k, v in self.generated.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        return cls(train=tuple(Path(p) for p in data.get("train", [])),
                   validation=tuple(Path(p) for p in data.get("validation", [])),
                   evaluation=tuple(Path(p) for p in data.get("evaluation", [])),
                   hyperparameters=dict(data.get("hyperparameters", {})),
                   generated=dict(data.get("generated", {})))


def shipped(generated: Path, fruits: Path | None = None) -> Recipe:
    """The recipe of ``models/default``; generated not-fruit sets live under ``generated``."""
    fruits = Path(fruits) if fruits is not None else default_fruits()
    calib, heldout = Path(generated) / "ood-calib", Path(generated) / "ood-heldout"
    return Recipe(train=(fruits / "train",), validation=(fruits / "val", calib),
                  evaluation=(fruits / "test", heldout), hyperparameters=dict(HYPERPARAMETERS),
                  generated={str(calib): "calib", str(heldout): "heldout"})


def images(roots: tuple[Path, ...] | list[Path]) -> list[tuple[str, Path]]:
    """Every image of the roots as (folder name, path), sorted by root then folder then name."""
    out: list[tuple[str, Path]] = []
    for root in roots:
        if not Path(root).is_dir():
            continue
        for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            out += [(folder.name, f) for f in sorted(folder.iterdir())
                    if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()]
    return out


def link_dataset(dest: Path, roots: tuple[Path, ...] | list[Path],
                 keep: Callable[[Path], bool] | None = None) -> dict[str, int]:
    """Join ``roots`` into ``dest/<folder>/`` as symlinks (``s<i>-<name>`` per root); returns
    images per folder. ``dest`` must not exist yet. ``keep(path)`` False leaves an image out."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    counts: dict[str, int] = {}
    for i, root in enumerate(roots):
        if not Path(root).is_dir():
            continue
        for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            out = dest / folder.name
            out.mkdir(exist_ok=True)
            for f in sorted(folder.iterdir()):
                if (f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
                        and (keep is None or keep(f))):
                    (out / f"s{i}-{f.name}").symlink_to(f.resolve())
                    counts[folder.name] = counts.get(folder.name, 0) + 1
    return counts


def fingerprint(roots: tuple[Path, ...] | list[Path]) -> str:
    """sha256 (hex, 16 digits) over the sorted (folder, sha256 of content) of every image: the
    identity of a data set, whatever the file names or roots."""
    rows = sorted(f"{label}/{hashlib.sha256(path.read_bytes()).hexdigest()}" for label, path in images(roots))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
