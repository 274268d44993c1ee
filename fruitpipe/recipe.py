"""The training recipe, in one place: which images train, calibrate and evaluate, and which
hyperparameters. ``make train-default`` (scripts/train_default.py) and every local retrain
(:mod:`fruitpipe.backends.local_run`) read it from here, so a retrain makes the shipped model again
on the shipped data plus the uploads.

The shipped recipe, :func:`shipped` (``FRUITS`` = ``../shared/data/fruits`` beside the checkout,
or ``$FRUITPIPE_FRUITS``), is issue 11's :func:`candidate` when the photo sets ``fruits_extra``
and ``not_fruit`` are beside ``FRUITS``, else the studio-only :func:`studio`:

* **train**: ``FRUITS/train`` + the train splits of ``fruits_extra`` and ``not_fruit`` (real
  negatives for the head's seventh output) (a retrain adds the store's uploads);
* **validation**: ``FRUITS/val``, the val splits of both sets, plus the generated not-fruit
  *calib* group (:mod:`fruitpipe.ood`): the rejection thresholds are calibrated on it, then the
  model is refit on train + validation (``refit=true``);
* **evaluation** (frozen): ``FRUITS/test``, the test splits of both sets, plus the generated
  not-fruit *heldout* group. Nothing trains or calibrates on it; it scores the shipped model, and
  the gate scores the live model and every candidate on it. Uploads already in it are refused
  (:mod:`fruitpipe.evalset`);
* **hyperparameters**: :class:`fruitpipe.training.Config` defaults overridden by
  ``HYPERPARAMETERS`` (+ ``CANDIDATE_HYPERPARAMETERS``).

A data set is a list of *roots*, each holding ``<class>/`` folders (any other folder, e.g.
``not_fruit/``, holds images that must be rejected); :func:`link_dataset` joins them into one
folder of symlinks. Changing the recipe (other sources, other splits, other hyperparameters) is
an edit of :func:`shipped` / :func:`candidate` and the hyperparameter maps only.

:func:`candidate` adds the photo sets ``fruits_extra`` and ``not_fruit``, split by
:mod:`fruitpipe.splits` into train / val / test through *split roots* (:func:`split_root`):
``<set>/@split-<name>`` stands for the photos of one split, so nothing is copied and the split
stays a function of the set's ``MANIFEST.csv``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import ood, splits

REPO = Path(__file__).resolve().parent.parent
FRUITS_ENV = "FRUITPIPE_FRUITS"
# Hyperparameters that differ from fruitpipe.training.Config's defaults (SageMaker-style strings).
# warm_epochs only applies to a retrain warm-started from the live model (make train-default never
# is): 2 epochs keep the candidate close to the live model and take half the time of 4; with the
# 12-photo upload of scripts/bench_retrain.py, 4 epochs scored 97.39% on the frozen set (rejected:
# live 98.05%), 2 epochs 98.05% / macro-F1 98.45% (promoted) (docs/ml.md, "Warm-started retrains").
HYPERPARAMETERS: Mapping[str, str] = {"refit": "true", "warm_epochs": "2"}
# The candidate's changes: a 7th head output learnt from the not_fruit train split (docs/ml.md,
# "Real photos"; scripts/experiment_open_set.py, scripts/eval_sets.py). The real-photo
# augmentations (Config.aug_views*, fruitpipe.augment) and class balance (Config.balance) were
# measured on val and did not pay with the full model (docs/ml.md, "Augmentations ... measured"), so
# they are not in it.
CANDIDATE_HYPERPARAMETERS: Mapping[str, str] = {"not_fruit_output": "true"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SPLIT_PREFIX = "@split-"


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
    """The recipe of ``models/default``: :func:`candidate` (issue 11) when ``fruits_extra`` and
    ``not_fruit`` (each with its ``MANIFEST.csv``) are beside ``FRUITS``, else :func:`studio`.
    Generated not-fruit sets live under ``generated``."""
    fruits = Path(fruits) if fruits is not None else default_fruits()
    extra, not_fruit = fruits.parent / "fruits_extra", fruits.parent / "not_fruit"
    if (extra / splits.MANIFEST).is_file() and (not_fruit / splits.MANIFEST).is_file():
        return candidate(generated, fruits, extra, not_fruit)
    return studio(generated, fruits)


def studio(generated: Path, fruits: Path | None = None) -> Recipe:
    """The Kaggle studio photos only (the shipped recipe before issue 11); generated not-fruit
    sets live under ``generated``."""
    fruits = Path(fruits) if fruits is not None else default_fruits()
    calib, heldout = Path(generated) / "ood-calib", Path(generated) / "ood-heldout"
    return Recipe(train=(fruits / "train",), validation=(fruits / "val", calib),
                  evaluation=(fruits / "test", heldout), hyperparameters=dict(HYPERPARAMETERS),
                  generated={str(calib): "calib", str(heldout): "heldout"})


def split_root(root: Path, split: str) -> Path:
    """A root standing for one split (:mod:`fruitpipe.splits`) of a set with a ``MANIFEST.csv``:
    ``root/@split-<split>`` (not a real folder; :func:`images`, :func:`link_dataset` and
    :func:`fingerprint` read it as ``root`` filtered to the photos of that split)."""
    if split not in splits.SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {splits.SPLITS}")
    return Path(root) / f"{SPLIT_PREFIX}{split}"


def _source(root: Path) -> tuple[Path, Callable[[Path], bool] | None]:
    """The real folder behind a root and the filter of a split root (None: every image)."""
    root = Path(root)
    if not root.name.startswith(SPLIT_PREFIX):
        return root, None
    base, split = root.parent, root.name[len(SPLIT_PREFIX):]
    where = splits.split_of(base) if base.is_dir() else {}  # a set without MANIFEST.csv: FileNotFoundError
    return base, lambda path: where.get(f"{path.parent.name}/{path.name}") == split


def _files(root: Path) -> list[tuple[str, Path]]:
    """(folder name, path) of every image of one root (a split root filtered), sorted."""
    base, keep = _source(root)
    if not base.is_dir():
        return []
    out: list[tuple[str, Path]] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out += [(folder.name, f) for f in sorted(folder.iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
                and (keep is None or keep(f))]
    return out


def default_extra() -> tuple[Path, Path]:
    """``../shared/data/fruits_extra`` and ``../shared/data/not_fruit`` beside ``FRUITS`` (issue 11)."""
    data = default_fruits().parent
    return data / "fruits_extra", data / "not_fruit"


def split_roots(split: str, named: bool = False) -> dict[str, Path]:
    """One split of the three photo sets beside ``FRUITS``: ``fruits`` (``FRUITS/<split>``),
    ``fruits_extra`` and ``not_fruit`` (:func:`split_root`); keys ``<set>/<split>`` when ``named``."""
    extra, not_fruit = default_extra()
    roots = {"fruits": default_fruits() / split, "fruits_extra": split_root(extra, split),
             "not_fruit": split_root(not_fruit, split)}
    return {f"{k}/{split}" if named else k: v for k, v in roots.items()}


def candidate(generated: Path, fruits: Path | None = None, extra: Path | None = None,
              not_fruit: Path | None = None) -> Recipe:
    """Issue 11's recipe (shipped when its sets are there, :func:`shipped`): :func:`studio` plus the train / val / test
    splits (:mod:`fruitpipe.splits`) of ``fruits_extra`` (fruit) and ``not_fruit`` (real photos to
    reject, in folders named by kind):

    * **train**: ``FRUITS/train`` + ``fruits_extra`` train + ``not_fruit`` train (real negatives);
    * **validation** (choices, calibration): ``FRUITS/val`` + ``fruits_extra`` val + ``not_fruit`` val
      + the generated *calib* group (objects, textures, faces: kinds the real photos lack);
    * **evaluation**: ``FRUITS/test`` + ``fruits_extra`` test + ``not_fruit`` test + generated *heldout*.
    """
    base = studio(generated, fruits)
    fruits = Path(fruits) if fruits is not None else default_fruits()
    d_extra, d_not = fruits.parent / "fruits_extra", fruits.parent / "not_fruit"
    extra = Path(extra) if extra is not None else d_extra
    not_fruit = Path(not_fruit) if not_fruit is not None else d_not
    part = {s: (split_root(extra, s), split_root(not_fruit, s)) for s in splits.SPLITS}
    return Recipe(train=(*base.train, *part["train"]), validation=(*base.validation, *part["val"]),
                  evaluation=(*base.evaluation, *part["test"]),
                  hyperparameters={**base.hyperparameters, **CANDIDATE_HYPERPARAMETERS}, generated=base.generated)


def images(roots: tuple[Path, ...] | list[Path]) -> list[tuple[str, Path]]:
    """Every image of the roots as (folder name, path), sorted by root then folder then name."""
    return [item for root in roots for item in _files(Path(root))]


def link_dataset(dest: Path, roots: tuple[Path, ...] | list[Path],
                 keep: Callable[[Path], bool] | None = None) -> dict[str, int]:
    """Join ``roots`` into ``dest/<folder>/`` as symlinks (``s<i>-<name>`` per root); returns
    images per folder. ``dest`` must not exist yet. ``keep(path)`` False leaves an image out."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    counts: dict[str, int] = {}
    for i, root in enumerate(roots):
        for folder, f in _files(Path(root)):
            if keep is None or keep(f):
                (dest / folder).mkdir(exist_ok=True)
                (dest / folder / f"s{i}-{f.name}").symlink_to(f.resolve())
                counts[folder] = counts.get(folder, 0) + 1
    return counts


def fingerprint(roots: tuple[Path, ...] | list[Path]) -> str:
    """sha256 (hex, 16 digits) over the sorted (folder, sha256 of content) of every image: the
    identity of a data set, whatever the file names or roots."""
    rows = sorted(f"{label}/{hashlib.sha256(path.read_bytes()).hexdigest()}" for label, path in images(roots))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
