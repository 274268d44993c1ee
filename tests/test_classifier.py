"""The LiteRT classifier on real photos from ../shared."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from fruitpipe import imaging
from fruitpipe.labels import LABELS

from .conftest import fruit_images, needs_shared

pytestmark = needs_shared


def test_embedding_matches_preserve_all_tensors(backbone) -> None:
    """The rewritten graph output is exactly tensor 172 of the original model."""
    from ai_edge_litert.interpreter import Interpreter
    label, path = fruit_images("test", 1)[0]
    img = imaging.load_image(path.read_bytes())
    ref = Interpreter(model_path=str(backbone.path), experimental_preserve_all_tensors=True)
    ref.allocate_tensors()
    ref.set_tensor(ref.get_input_details()[0]["index"], img[None])
    ref.invoke()
    details = ref.get_tensor_details()

    def deq(index: int) -> np.ndarray:
        scale, zero = details[index]["quantization"]  # each output has its own quantization
        return (ref.get_tensor(index).astype(np.float32) - zero) * scale

    expected = deq(172).reshape(-1)
    assert np.array_equal(backbone.embed(img[None])[0], expected)
    # the two earlier maps are graph outputs too: mean and max pooled per channel
    emb, pooled = backbone.features(img[None])
    assert np.array_equal(emb[0], expected) and pooled.shape == (1, 832)
    m170, m156 = deq(170).reshape(-1, 320), deq(156).reshape(-1, 96)
    want = np.concatenate([m170.mean(0), m170.max(0), m156.mean(0), m156.max(0)])
    assert np.allclose(pooled[0], want, atol=1e-6)
    # block 17's input is a graph output too, as the backbone's own int8 codes
    codes = backbone.outputs(img[None])[2]
    assert codes.dtype == np.int8 and np.array_equal(codes[0], ref.get_tensor(167)[0])
    assert np.allclose(backbone.block_input(codes)[0], deq(167)[0])
    # and the numpy ImageNet head agrees with the model's own softmax output
    probs = backbone.imagenet_probs(expected[None])[0]
    assert int(probs.argmax()) == int(ref.get_tensor(176).reshape(-1).argmax())


def test_accuracy_on_a_real_subset(classifier) -> None:
    items = fruit_images("test", per_class=8)
    preds = classifier.predict_many([p.read_bytes() for _, p in items])
    correct = sum(p.predicted_class == label and p.verdict != "not_fruit" for (label, _), p in zip(items, preds))
    assert correct / len(items) >= 0.9, correct
    for (label, _), p in zip(items, preds):
        assert set(p.probabilities) == set(LABELS) and abs(sum(p.probabilities.values()) - 1) < 1e-4
        assert p.verdict in ("fresh", "rotten", "not_fruit", "uncertain")
        if p.verdict in ("fresh", "rotten"):
            assert p.verdict == ("fresh" if p.predicted_class.startswith("fresh") else "rotten")


def test_not_fruit_verdicts_on_package_images(classifier) -> None:
    from skimage import data
    images = [data.astronaut(), data.chelsea(), data.rocket(), data.camera()]
    blobs = []
    for arr in images:
        buf = io.BytesIO()
        Image.fromarray(arr).convert("RGB").save(buf, "JPEG")
        blobs.append(buf.getvalue())
    verdicts = [p.verdict for p in classifier.predict_many(blobs)]
    assert verdicts.count("not_fruit") >= 3, verdicts


def test_batch_equals_single_and_bad_item_is_isolated(classifier) -> None:
    items = fruit_images("val", per_class=1)
    blobs = [p.read_bytes() for _, p in items]
    many = classifier.predict_many(blobs[:2] + [b"junk"] + blobs[2:])
    assert isinstance(many[2], imaging.InvalidImage) and many[2].code == "not_an_image"
    single = classifier.predict_bytes(blobs[0])
    assert many[0].probabilities == pytest.approx(single.probabilities, abs=1e-6)


def test_concurrent_calls_share_one_classifier(backbone) -> None:
    from fruitpipe.classifier import Classifier
    from .conftest import DEFAULT_MODEL
    clf = Classifier(DEFAULT_MODEL, shared_backbone=backbone)
    blob = fruit_images("test", 1)[0][1].read_bytes()
    expected = clf.predict_bytes(blob).probabilities
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                assert clf.predict_bytes(blob).probabilities == pytest.approx(expected, abs=1e-6)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_bundle_without_feature_recipe_runs_on_the_embedding_alone(backbone, tmp_path) -> None:
    """Bundles made before the head read the pooled maps (input 1280, no ``head.features``) still run."""
    from fruitpipe import bundle
    from fruitpipe.classifier import Classifier
    from fruitpipe.head import Head
    from .conftest import DEFAULT_MODEL
    new = bundle.verify(DEFAULT_MODEL)
    assert new.head["features"] == "emb+b17mm+156mm"
    items = fruit_images("train", per_class=4)
    emb, _ = backbone.features(np.stack([imaging.load_image(p.read_bytes()) for _, p in items]))
    y = np.array([LABELS.index(label) for label, _ in items])
    # a nearest-class-mean linear head on the embedding alone, like the old bootstrap probe
    means = np.stack([emb[y == c].mean(0) for c in range(len(LABELS))])
    head = Head((means.T.astype(np.float32) * 10,), (np.zeros(len(LABELS), np.float32),), ("softmax",))
    head.save(tmp_path / "head.npz")
    raw = new.to_dict()
    raw["head"] = {"file": "head.npz", "dtype": "float32", "layers": [{"activation": "softmax", "units": 6}]}
    files = {"head.npz": (tmp_path / "head.npz").read_bytes(),
             "rejection.npz": (DEFAULT_MODEL / "rejection.npz").read_bytes()}
    bundle.write(tmp_path / "old", bundle.Manifest.from_dict(raw), files)
    old = Classifier(tmp_path / "old", shared_backbone=backbone)
    assert old.recipe == "emb" and old.head.input_dim == 1280
    preds = old.predict_many([p.read_bytes() for _, p in items])
    assert sum(p.predicted_class == label for (label, _), p in zip(items, preds)) >= len(items) * 0.8
    # an unknown recipe is refused at load, not at the first prediction
    raw["head"]["features"] = "emb+999"
    bundle.write(tmp_path / "bad", bundle.Manifest.from_dict(raw), files)
    with pytest.raises(bundle.BundleError, match="recipe"):
        Classifier(tmp_path / "bad", shared_backbone=backbone)


def test_second_look_accepts_photos_of_several_fruit(classifier) -> None:
    """Four copies of a fruit photo in one frame: far from the single-fruit training photos as a
    whole; the zoomed quadrants bring most of them back, and not-fruit stays rejected."""
    import dataclasses
    assert classifier.rejector.min_similarity_zoom is not None, "the default model has a zoom bar"

    def two_by_two(img: np.ndarray) -> np.ndarray:
        small = np.asarray(Image.fromarray(img).resize((112, 112), Image.Resampling.BILINEAR))
        return np.concatenate([np.concatenate([small, small], axis=1)] * 2, axis=0)

    items = fruit_images("val", per_class=6)
    tiles = np.stack([two_by_two(imaging.load_image(p.read_bytes())) for _, p in items])
    preds = classifier.predict_arrays(tiles)
    looked = [p for p in preds if "zoom_similarity" in p.scores]
    rejected = sum(p.verdict == "not_fruit" for p in preds)
    # the first look alone would reject every tile it asked a second look for
    assert len(looked) >= 6 and rejected <= len(looked) // 2, (len(looked), rejected)
    whole_only = dataclasses.replace(classifier.rejector, min_similarity_zoom=None)
    assert whole_only.not_fruit(whole_only.scores(*_signals(classifier, tiles))).sum() >= len(looked)
    # images the first look accepts are not looked at twice
    assert all(p.scores["similarity"] < classifier.rejector.min_similarity for p in looked)


def _signals(classifier, images: np.ndarray):  # type: ignore[no-untyped-def]
    from fruitpipe import features
    emb, pooled = classifier.backbone.features(images)
    probs = classifier.head(features.head_input(classifier.recipe, emb, pooled))
    return emb, classifier.backbone.imagenet_probs(emb), probs
