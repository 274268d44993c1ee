"""fruitpipe.splits (train/val/test of the MANIFEST-described photo sets) and split roots in the recipe."""

from __future__ import annotations

import csv
import random
import shutil
from collections import Counter, defaultdict

import pytest

from fruitpipe import recipe as rc
from fruitpipe import splits

from .conftest import SHARED

EXTRA, NOT_FRUIT = SHARED / "data" / "fruits_extra", SHARED / "data" / "not_fruit"
needs_sets = pytest.mark.skipif(not (EXTRA / splits.MANIFEST).is_file() or not (NOT_FRUIT / splits.MANIFEST).is_file(),
                                reason="../shared/data/fruits_extra and not_fruit are not beside the checkout")


def row(path: str, label: str, repo: str = "someone/web", src: str = "", sha: str = "") -> splits.Row:
    return splits.Row(path, label, sha or path, repo, src or path)


def test_groups_follow_the_sources_rules():
    grocery = "marcusklasson/GroceryStoreDataset"
    a = row("x/1.jpg", "tomato", grocery, "dataset/train/Vegetables/Tomato/Regular-Tomato/Regular-Tomato_011.jpg")
    b = row("x/2.jpg", "tomato", grocery, "dataset/train/Vegetables/Tomato/Regular-Tomato/Regular-Tomato_014.jpg")
    c = row("x/3.jpg", "tomato", grocery, "dataset/train/Vegetables/Tomato/Regular-Tomato/Regular-Tomato_015.jpg")
    d = row("x/4.jpg", "tomato", grocery, "dataset/test/Vegetables/Tomato/Regular-Tomato/Regular-Tomato_011.jpg")
    assert splits.group_key(a) == splits.group_key(b) != splits.group_key(c)
    assert splits.group_key(a) != splits.group_key(d)  # the source's own split folder is part of the group
    cam = "zijianchen98/Fruit-freshness-detection-dataset"
    assert (splits.group_key(row("f/1.jpg", "freshapples", cam, "JPEGImages/2984.jpg"))
            == splits.group_key(row("b/1.jpg", "freshbanana", cam, "JPEGImages/2984.jpg"))
            == splits.group_key(row("b/2.jpg", "freshbanana", cam, "JPEGImages/2951.jpg")))
    assert splits.group_key(row("b/1.png", "freshbanana", "psolymos/bananas", "images/24_F_2020-05-28_18-20_U.png")) \
        == splits.group_key(row("r/1.png", "rottenbanana", "psolymos/bananas", "images/24_B_2020-06-13_18-30_O.png"))
    assert splits.group_key(row("w/1.jpg", "lemon")) != splits.group_key(row("w/2.jpg", "lemon"))


def test_assign_is_stratified_deterministic_and_order_free():
    rows = [row(f"{lab}/{i}.jpg", lab) for lab, n in (("a", 100), ("b", 6), ("c", 1)) for i in range(n)]
    out = splits.assign(rows)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert splits.assign(shuffled) == out
    per = defaultdict(Counter)
    for r in rows:
        per[r.label][out[r.path]] += 1
    assert per["a"] == {"train": 60, "val": 20, "test": 20}
    assert per["b"] == {"train": 4, "val": 1, "test": 1}
    assert per["c"] == {"train": 1}
    assert splits.assign(rows, salt="other") != out  # the order comes from the salted hash
    with pytest.raises(ValueError):
        splits.assign(rows, {"train": 0.5, "test": 0.2})


@needs_sets
@pytest.mark.parametrize("root", [EXTRA, NOT_FRUIT], ids=["fruits_extra", "not_fruit"])
def test_shared_sets_split_by_group_in_proportion(root):
    rows = splits.read_manifest(root)
    where = splits.split_of(root)
    assert set(where) == {r.path for r in rows} and set(where.values()) == set(splits.SPLITS)
    by_group = defaultdict(set)
    for r in rows:
        by_group[splits.group_key(r)].add(where[r.path])
    assert all(len(s) == 1 for s in by_group.values())  # no photo group straddles two splits
    share = Counter(where.values())
    assert 0.55 < share["train"] / len(rows) < 0.65 and 0.15 < share["val"] / len(rows) < 0.25
    for label, counts in splits.summary(root).items():
        if sum(counts.values()) >= 20:  # every sizeable class / kind is in every split
            assert all(counts[s] for s in splits.SPLITS), (label, counts)


@needs_sets
def test_split_roots_partition_a_set_without_copying(tmp_path):
    parts = {s: rc.images([rc.split_root(EXTRA, s)]) for s in splits.SPLITS}
    paths = [p for items in parts.values() for _, p in items]
    assert len(paths) == len(set(paths)) == len(rc.images([EXTRA]))
    assert len({rc.fingerprint([rc.split_root(EXTRA, s)]) for s in splits.SPLITS}) == 3
    counts = rc.link_dataset(tmp_path / "val", [rc.split_root(EXTRA, "val")])
    assert sum(counts.values()) == len(parts["val"])
    assert all(p.is_symlink() for p in (tmp_path / "val").rglob("*.jpg"))
    with pytest.raises(ValueError):
        rc.split_root(EXTRA, "holdout")


def test_split_follows_the_manifest_not_the_files(tmp_path):
    root = tmp_path / "set"
    rows = []
    for i in range(10):
        (root / "lemon").mkdir(parents=True, exist_ok=True)
        (root / "lemon" / f"{i}.jpg").write_bytes(b"x")
        rows.append({"path": f"lemon/{i}.jpg", "kind": "lemon", "sha256": f"{i:064d}", "source_repo": "a/b",
                     "source_path": f"p{i}.jpg"})
    with open(root / splits.MANIFEST, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = {s: [p.name for _, p in rc.images([rc.split_root(root, s)])] for s in splits.SPLITS}
    assert sorted(sum(before.values(), [])) == sorted(f"{i}.jpg" for i in range(10))
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # another place, same manifest: same split
    assert {s: [p.name for _, p in rc.images([rc.split_root(copy, s)])] for s in splits.SPLITS} == before


def test_candidate_recipe_is_the_studio_one_plus_the_split_sets(tmp_path):
    from fruitpipe.training import Config

    shipped, cand = rc.studio(tmp_path), rc.candidate(tmp_path)
    for name in ("train", "validation", "evaluation"):
        assert getattr(cand, name)[:len(getattr(shipped, name))] == getattr(shipped, name)
    assert [(r.parent.name, r.name) for r in cand.train[-2:]] == [("fruits_extra", "@split-train"),
                                                                  ("not_fruit", "@split-train")]
    assert [r.name for r in cand.validation[-2:]] == ["@split-val", "@split-val"]
    assert [r.name for r in cand.evaluation[-2:]] == ["@split-test", "@split-test"]
    assert Config.from_mapping(dict(cand.hyperparameters)).not_fruit_output
    assert not Config.from_mapping(dict(shipped.hyperparameters)).not_fruit_output


def test_a_split_root_of_a_set_without_manifest_is_an_error(tmp_path):
    (tmp_path / "set" / "lemon").mkdir(parents=True)
    (tmp_path / "set" / "lemon" / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        rc.images([rc.split_root(tmp_path / "set", "train")])
    assert rc.images([rc.split_root(tmp_path / "absent", "train")]) == []  # like any missing root


@needs_sets
def test_val_halves_of_the_experiments_keep_photo_groups_whole():
    """scripts/experiment_refit.halves (the val-only experiments of issue 11): every photo of a val split
    in exactly one half, no photo group in both, both halves near half, the same cut every time."""
    import sys

    sys.path.insert(0, str(rc.REPO / "scripts"))
    from experiment_refit import halves

    root = rc.split_root(EXTRA, "val")
    cut = halves(root)
    paths = {p.resolve() for _, p in rc.images([root])}
    assert set(cut) == paths and set(cut.values()) == {"a", "b"}
    assert 0.35 < sum(h == "a" for h in cut.values()) / len(cut) < 0.65
    rel = {(EXTRA / r.path).resolve(): splits.group_key(r) for r in splits.read_manifest(EXTRA)}
    seen: dict[str, str] = {}
    for path, half in cut.items():
        assert seen.setdefault(rel[path], half) == half, f"group {rel[path]} in both halves"
    assert halves(root) == cut
