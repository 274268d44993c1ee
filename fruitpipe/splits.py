"""Reproducible train / val / test splits of a photo set described by a ``MANIFEST.csv``.

``../shared/data/fruits_extra`` and ``../shared/data/not_fruit`` come without a split (their
READMEs). A split here is a pure function of the manifest rows: nothing is copied, and the same
rows always give the same split, whatever the file order or the machine.

Rule (:func:`assign`):

1. **Photo groups.** Photos that show the same physical scene must land in the same split, or the
   validation and test figures measure memory. A row's group (:func:`group_key`):

   * ``marcusklasson/GroceryStoreDataset``: blocks of :data:`GROCERY_BLOCK` consecutive shot numbers
     of one product folder of one of its own splits (``.../Granny-Smith/Granny-Smith_014.jpg`` →
     ``.../Granny-Smith`` block 2): the store photos were taken in runs of the same bin;
   * ``zijianchen98/Fruit-freshness-detection-dataset``: blocks of :data:`WEBCAM_BLOCK` webcam frame
     numbers (its crops show "a handful of physical fruits shot many times"; several crops of one
     frame share the frame);
   * ``psolymos/bananas``: the banana (``images/<id>_<side>_<date>_<...>.png`` → ``<id>``), so one
     banana's whole ripening series, fresh and rotten frames alike, stays together;
   * anything else: the photo itself (its sha256).

2. **Strata.** A group belongs to the stratum of its most common label (class or kind; ties: the
   first name in sort order), so every class / kind is split in the same proportions.

3. **Order and cut.** Within a stratum the groups are ordered by ``sha256(salt + group key)``, laid
   end to end (each as long as its photo count), and a group goes to the split whose share of the
   stratum (:data:`FRACTIONS`, cumulative) contains the group's midpoint. A stratum of 6 photos
   (6 groups) thus gives 4 / 1 / 1.

The hidden hold-out of issue 11 was cut from the same sources *before* these folders were made, so
none of its photos is here; our ``test`` split is an extra, not a replacement.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final, Mapping

MANIFEST: Final[str] = "MANIFEST.csv"
SPLITS: Final[tuple[str, ...]] = ("train", "val", "test")
FRACTIONS: Final[Mapping[str, float]] = {"train": 0.6, "val": 0.2, "test": 0.2}
SALT: Final[str] = "fruitpipe-split-v1"
GROCERY_BLOCK: Final[int] = 5  # consecutive GroceryStore shot numbers per group
WEBCAM_BLOCK: Final[int] = 50  # consecutive zijianchen98 webcam frame numbers per group

_NUMBERED = re.compile(r"^(?P<stem>.*)_(?P<num>\d+)\.[A-Za-z]+$")
_FRAME = re.compile(r"(?P<num>\d+)\.[A-Za-z]+$")
_BANANA = re.compile(r"^images/(?P<id>\d+)_")


@dataclass(frozen=True)
class Row:
    """One ``MANIFEST.csv`` row: ``path`` relative to the set's root, ``label`` its class or kind."""

    path: str
    label: str
    sha256: str
    source_repo: str
    source_path: str


def read_manifest(root: Path) -> list[Row]:
    """The rows of ``root/MANIFEST.csv`` (columns ``path, class|kind, sha256, ..., source_repo,
    source_path, ...``). Raises ``FileNotFoundError`` without one, ``KeyError`` on missing columns."""
    with open(Path(root) / MANIFEST, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        label_col = "class" if "class" in (reader.fieldnames or []) else "kind"
        return [Row(r["path"], r[label_col], r["sha256"], r["source_repo"], r["source_path"]) for r in reader]


def group_key(row: Row) -> str:
    """The photo group of a row (see the module docstring); a single photo is its own group."""
    repo, src = row.source_repo, row.source_path
    if repo.endswith("/GroceryStoreDataset"):
        m = _NUMBERED.match(src)
        if m:
            return f"{repo}:{m['stem']}:{int(m['num']) // GROCERY_BLOCK}"
    elif repo.endswith("/Fruit-freshness-detection-dataset"):
        m = _FRAME.search(src)
        if m:
            return f"{repo}:frame{int(m['num']) // WEBCAM_BLOCK}"
    elif repo == "psolymos/bananas":
        m = _BANANA.match(src)
        if m:
            return f"{repo}:banana{m['id']}"
    return f"photo:{row.sha256}"


def assign(rows: list[Row], fractions: Mapping[str, float] = FRACTIONS, salt: str = SALT) -> dict[str, str]:
    """``{row.path: split}`` for every row (splits named as the keys of ``fractions``, which must
    sum to 1). Deterministic; see the module docstring for the rule."""
    if abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)}")
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[group_key(row)].append(row)
    strata: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        counts = Counter(r.label for r in members)
        strata[min(counts, key=lambda lab: (-counts[lab], lab))].append(key)
    bounds, acc = [], 0.0
    for name, share in fractions.items():
        acc += share
        bounds.append((acc, name))
    out: dict[str, str] = {}
    for keys in strata.values():
        keys.sort(key=lambda k: hashlib.sha256(f"{salt}:{k}".encode()).hexdigest())
        total = sum(len(groups[k]) for k in keys)
        done = 0
        for key in keys:
            size = len(groups[key])
            mid = (done + size / 2) / total
            split = next((name for bound, name in bounds if mid < bound), bounds[-1][1])
            out.update({r.path: split for r in groups[key]})
            done += size
    return out


@lru_cache(maxsize=16)
def _assignment(root: str, mtime_ns: int) -> dict[str, str]:
    return assign(read_manifest(Path(root)))


def split_of(root: Path) -> dict[str, str]:
    """:func:`assign` of ``root``'s manifest, cached per manifest version: ``{relative path: split}``."""
    manifest = Path(root).resolve() / MANIFEST
    return _assignment(str(manifest.parent), manifest.stat().st_mtime_ns)


def summary(root: Path) -> dict[str, dict[str, int]]:
    """Photos per label per split, ``{label: {split: n}}`` (for docs and tests)."""
    rows = read_manifest(root)
    where = split_of(root)
    out: dict[str, dict[str, int]] = defaultdict(lambda: {s: 0 for s in SPLITS})
    for row in rows:
        out[row.label][where[row.path]] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


# not_fruit kinds by how hard they are to reject (issue 11's reporting groups); every other kind is
# "other_produce" (grocery fruit and vegetables that are not apples, bananas or oranges).
LOOK_ALIKES: Final[frozenset[str]] = frozenset({"mango", "pomegranate", "peach", "guava"})
NON_FOOD: Final[frozenset[str]] = frozenset({"cat", "dog", "person", "milk_carton", "yoghurt_pack", "juice_carton"})
NOT_FRUIT_GROUPS: Final[tuple[str, ...]] = ("other_produce", "look_alike", "non_food")


def not_fruit_group(kind: str) -> str:
    """The reporting group of a ``not_fruit`` kind: ``look_alike``, ``non_food`` (animals, people,
    packages) or ``other_produce``."""
    return "look_alike" if kind in LOOK_ALIKES else "non_food" if kind in NON_FOOD else "other_produce"
