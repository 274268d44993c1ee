"""fruitpipe.recipe (one place for data sets + hyperparameters), fruitpipe.ood, fruitpipe.evalset."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from fruitpipe import evalset, ood
from fruitpipe import recipe as rc
from fruitpipe.training import Config

from .conftest import FRUITS, needs_shared


def test_shipped_recipe_is_the_candidate_when_its_sets_are_beside_fruits(tmp_path):
    if not (FRUITS.parent / "not_fruit" / "MANIFEST.csv").is_file():
        pytest.skip("../shared/data/not_fruit is not beside the checkout")
    assert rc.shipped(tmp_path / "gen", fruits=FRUITS) == rc.candidate(tmp_path / "gen", fruits=FRUITS)
    lone = tmp_path / "lone" / "fruits"  # no photo sets beside it: the studio recipe
    lone.mkdir(parents=True)
    assert rc.shipped(tmp_path / "gen", fruits=lone) == rc.studio(tmp_path / "gen", fruits=lone)


def test_studio_recipe_names_every_set_and_only_known_hyperparameters(tmp_path):
    r = rc.studio(tmp_path / "gen", fruits=FRUITS)
    assert r.train == (FRUITS / "train",)
    assert r.validation == (FRUITS / "val", tmp_path / "gen" / "ood-calib")
    assert r.evaluation == (FRUITS / "test", tmp_path / "gen" / "ood-heldout")
    Config.from_mapping(dict(r.hyperparameters))  # raises on an unknown name
    assert rc.Recipe.from_dict(r.to_dict()) == rc.Recipe.from_dict(rc.Recipe.from_dict(r.to_dict()).to_dict())


def test_ood_sets_are_made_once_and_identically(tmp_path):
    a = ood.ensure(tmp_path / "a", "calib")
    b = ood.ensure(tmp_path / "b", "calib")
    files = sorted(p.name for p in (a / "not_fruit").iterdir())
    assert len(files) > 100 and files == sorted(p.name for p in (b / "not_fruit").iterdir())
    assert all((a / "not_fruit" / f).read_bytes() == (b / "not_fruit" / f).read_bytes() for f in files[:20])
    stamp = (a / "not_fruit" / files[0]).stat().st_mtime_ns
    ood.ensure(tmp_path / "a", "calib")  # already there: untouched
    assert (a / "not_fruit" / files[0]).stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]


@needs_shared
def test_link_dataset_joins_roots_and_fingerprint_ignores_names(tmp_path):
    one, two = tmp_path / "one" / "freshapples", tmp_path / "two" / "freshapples"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    photos = sorted((FRUITS / "val" / "freshapples").glob("*.jpg"))[:3]
    shutil.copy(photos[0], one / "a.jpg")
    shutil.copy(photos[1], two / "a.jpg")  # same name, other root
    shutil.copy(photos[2], two / "b.jpg")
    counts = rc.link_dataset(tmp_path / "joined", [tmp_path / "one", tmp_path / "two"])
    assert counts == {"freshapples": 3}
    assert sorted(p.name for p in (tmp_path / "joined" / "freshapples").iterdir()) == ["s0-a.jpg", "s1-a.jpg", "s1-b.jpg"]
    assert rc.fingerprint([tmp_path / "joined"]) == rc.fingerprint([tmp_path / "one", tmp_path / "two"])
    before = rc.fingerprint([tmp_path / "one", tmp_path / "two"])
    (two / "b.jpg").rename(two / "renamed.jpg")
    assert rc.fingerprint([tmp_path / "one", tmp_path / "two"]) == before


@needs_shared
def test_near_duplicate_rule_catches_copies_not_other_photos():
    photos = sorted((FRUITS / "test" / "rottenbanana").glob("*.jpg"))[:40]
    index = evalset.Index.build([FRUITS / "test"])
    original = photos[0].read_bytes()
    img = Image.open(io.BytesIO(original)).convert("RGB")
    for variant in (img.resize((120, 120)), img.resize((400, 400)), img.point(lambda v: min(255, int(v * 1.05)))):
        buf = io.BytesIO()
        variant.save(buf, "JPEG", quality=70)
        assert index.match("other-sha", evalset.thumbnail(buf.getvalue())) == f"rottenbanana/{photos[0].name}"
    # a photo of the same class that is not in the index
    other = sorted((FRUITS / "train" / "rottenbanana").glob("*.jpg"))[0].read_bytes()
    assert index.match("other-sha", evalset.thumbnail(other)) is None
    flat = io.BytesIO()
    Image.new("RGB", (50, 50), (90, 90, 90)).save(flat, "PNG")
    assert np.all(evalset.thumbnail(flat.getvalue()) == 128)


def test_a_flat_image_is_never_a_near_copy_of_an_evaluation_image():
    """One colour has no content to compare (the new-user trial's black PNG was refused as a copy of
    a generated not-fruit image); only its exact bytes could match."""
    import io

    import numpy as np
    from PIL import Image

    from fruitpipe import evalset

    def png(color) -> bytes:  # type: ignore[no-untyped-def]
        buf = io.BytesIO()
        Image.new("RGB", (31, 31), color).save(buf, "PNG")
        return buf.getvalue()

    black, green = png((0, 0, 0)), png((0, 200, 0))
    flat = evalset.thumbnail(black)
    index = evalset.Index(np.array(["x" * 64]), flat[None, :], np.array(["not_fruit/flat.jpg"]))
    assert index.match("y" * 64, evalset.thumbnail(green)) is None
    assert index.match("x" * 64, evalset.thumbnail(black)) == "not_fruit/flat.jpg"  # the same bytes still match


def test_mirrored_and_cropped_copies_of_evaluation_photos_are_refused(tmp_path):
    """The second new-user trial uploaded a mirror and an 8%-border crop of test photos: both were
    added (a mirror is what training's flip view learns anyway)."""
    import io

    from PIL import Image, ImageOps

    from fruitpipe import evalset
    from fruitpipe.labels import LABELS

    from .conftest import FRUITS
    photos = [sorted((FRUITS / "test" / label).glob("*.jpg"))[3] for label in LABELS[:2]]
    evaluation = tmp_path / "eval"
    for p in photos:
        (evaluation / p.parent.name).mkdir(parents=True)
        (evaluation / p.parent.name / p.name).symlink_to(p)
    guard = evalset.UploadGuard((evaluation,), (), tmp_path / "index")

    def jpeg(img) -> bytes:  # type: ignore[no-untyped-def]
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        return buf.getvalue()

    img = Image.open(photos[0]).convert("RGB")
    w, h = img.size
    mirror = jpeg(ImageOps.mirror(img))
    crop = jpeg(img.crop((int(w * .08), int(h * .08), int(w * .92), int(h * .92))))
    for data in (mirror, crop):
        status = guard.check(data, "0" * 64)
        assert status is not None and status[1] == "in_evaluation_set", status
    other = jpeg(Image.open(sorted((FRUITS / "train" / LABELS[0]).glob("*.jpg"))[0]).convert("RGB"))
    assert guard.check(other, "1" * 64) is None  # a different photo of the same class is new
