"""The backbone registry: every entry matches its model-zoo folder, loads and embeds a real photo;
provisioning order; unknown names; old manifests; the embedding cache keeps backbones apart."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fruitpipe import backbone as bb
from fruitpipe import bundle
from fruitpipe.embeddings import EmbeddingCache, cache_tag

from .conftest import DEFAULT_MODEL, FRUITS, MODEL_ZOO, REPO, needs_shared

NAMES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "regnetx_200mf", "mobilenet_v3_small",
         "mobilenet_v1")
BANANA = 955  # ImageNet "banana" in the 1001-way indexing (0 = background)


def zoo_facts(spec: bb.Spec) -> tuple[str, dict]:
    """The README text and the facts of ``spec``'s file (facts.json, or {} where the folder has none)."""
    folder = MODEL_ZOO / spec.folder
    readme = (folder / "README.md").read_text(encoding="utf-8")
    path = folder / "facts.json"
    if not path.is_file():
        return readme, {}
    facts = json.loads(path.read_text(encoding="utf-8"))
    if "files" in facts:  # folders with several files list one entry per file
        facts = next(f for f in facts["files"] if f["file"] == spec.filename)
    return readme, facts


def test_registry_names_and_default() -> None:
    assert tuple(bb.SPECS) == NAMES
    assert bb.get() is bb.get("mobilenet_v2") is bb.DEFAULT
    assert bb.DEFAULT.has_extras and bb.DEFAULT.output_tensors == bb.OUTPUT_TENSORS == (172, 170, 156, 167)
    assert not any(bb.get(n).has_extras for n in NAMES[1:])


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(bb.BackboneError, match="unknown backbone 'resnet50'; known: mobilenet_v2, efficientnet_lite0"):
        bb.get("resnet50")


@needs_shared
@pytest.mark.parametrize("name", NAMES)
def test_spec_matches_its_model_zoo_folder(name: str) -> None:
    spec = bb.get(name)
    readme, facts = zoo_facts(spec)
    path = MODEL_ZOO / spec.folder / spec.filename
    assert bb.sha256_file(path) == spec.sha256
    assert spec.sha256 in readme and f"`{spec.filename}`" in readme
    assert f"tensor {spec.embedding_tensor}" in readme.lower()
    if spec.url:
        assert spec.url.split("/")[-1] == spec.filename
        assert spec.url.split("/")[5] in readme  # the pinned commit the README names
    if facts:
        assert facts["sha256"] == spec.sha256
        (inp,) = facts["inputs"]
        assert inp["shape"] == [1, spec.input_size, spec.input_size, 3] and inp["dtype"] == "uint8"
        assert inp["quantization"] == pytest.approx(list(spec.input_quantization))
        emb = next((o for o in facts["outputs"] if o["index"] == spec.embedding_tensor), None)
        if "embedding_tensor" in facts:
            assert facts["embedding_tensor"] == spec.embedding_tensor
        if emb is not None:
            assert emb["dtype"] == spec.embedding_dtype and emb["shape"][-1] == spec.embedding_dim
        if "logits_tensor" in facts:  # a 1000-way classifier reads the embedding: its weights are ours
            assert spec.imagenet_classes == 1000 and spec.imagenet_weights is not None
    else:  # MobileNetV2's folder has a README only
        assert f"[1, {spec.input_size}, {spec.input_size}, 3]" in readme
        assert f"`{spec.embedding_dtype} [1, 1, 1, {spec.embedding_dim}]`" in readme


@needs_shared
@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_embeds_a_real_photo(name: str) -> None:
    from fruitpipe import imaging
    from fruitpipe.classifier import Backbone
    spec = bb.get(name)
    backbone = Backbone(name)
    photo = sorted((FRUITS / "test" / "freshbanana").glob("*.jpg"))[0].read_bytes()
    image = imaging.load_image(photo, size=spec.input_size)
    emb = backbone.embed(image[None])
    assert emb.shape == (1, spec.embedding_dim) and emb.dtype == np.float32 and np.isfinite(emb).all()
    emb2, pooled, block_in = backbone.outputs(image[None])
    assert np.array_equal(emb, emb2)
    assert pooled.shape == (1, 2 * sum(spec.feature_channels))
    assert block_in.shape == ((1, 7, 7, 160) if spec.has_extras else (1, 0))
    # the cache's codes round-trip exactly
    assert np.array_equal(backbone.quantize(emb).astype(np.float32),
                          np.rint(emb / backbone._out_scale + backbone._out_zero))
    probs = backbone.imagenet_probs(emb)
    assert probs.shape == (1, 1001)
    if spec.imagenet_weights is None:
        assert not backbone.has_imagenet and np.isnan(probs).all()
    else:  # the classifier rebuilt in numpy from the embedding sees the banana as the file does
        assert probs.sum() == pytest.approx(1.0, abs=1e-4) and int(probs.argmax()) == BANANA
    with pytest.raises(ValueError, match="takes images of shape"):
        backbone.embed(np.zeros((1, 100, 100, 3), np.uint8))


@needs_shared
def test_resolve_order_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lite0 = bb.get("efficientnet_lite0")
    zoo_copy = MODEL_ZOO / lite0.folder / lite0.filename
    monkeypatch.setenv("FRUITPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(bb.ZOO_ENV_VAR, raising=False)
    # no zoo, nothing cached, no public download: the message says what to set
    with pytest.raises(bb.BackboneError, match=f"no public download.*{bb.ZOO_ENV_VAR}"):
        bb.resolve("efficientnet_lite0")
    # FRUITPIPE_BACKBONE is MobileNetV2's; it never stands in for another backbone
    monkeypatch.setenv(bb.ENV_VAR, str(zoo_copy))
    with pytest.raises(bb.BackboneError):
        bb.resolve("efficientnet_lite0")
    with pytest.raises(bb.BackboneError, match="expected 5d3137"):
        bb.resolve()
    monkeypatch.delenv(bb.ENV_VAR)
    # an explicit copy: the file, its folder, or the zoo folder above it
    for override in (zoo_copy, zoo_copy.parent, MODEL_ZOO):
        assert bb.resolve("efficientnet_lite0", override) == zoo_copy
    monkeypatch.setenv(bb.ZOO_ENV_VAR, str(MODEL_ZOO))
    assert bb.resolve(lite0) == zoo_copy
    # provisioned into the cache (python -m fruitpipe.backbone --backbone NAME), then found there
    assert bb.main(["--backbone", "efficientnet_lite0"]) == 0
    cached = tmp_path / "cache" / lite0.filename
    assert bb.sha256_file(cached) == lite0.sha256
    assert bb.main(["--backbone", "resnet50"]) == 2
    monkeypatch.delenv(bb.ZOO_ENV_VAR)
    assert bb.resolve("efficientnet_lite0", download=False) == cached
    # a copy with the wrong sha256 is refused wherever it comes from
    bad = tmp_path / "zoo" / lite0.folder / lite0.filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a model")
    monkeypatch.setenv(bb.ZOO_ENV_VAR, str(tmp_path / "zoo"))
    with pytest.raises(bb.BackboneError, match="expected cda732"):
        bb.resolve("efficientnet_lite0")


def test_old_manifest_without_backbone_name_is_mobilenet_v2() -> None:
    manifest = bundle.read_manifest(DEFAULT_MODEL)
    assert "name" not in manifest.raw["backbone"]  # written before the registry existed
    assert manifest.backbone_name == "mobilenet_v2" and manifest.backbone is bb.DEFAULT
    assert manifest.to_dict()["backbone"]["name"] == "mobilenet_v2"


def _manifest_with(tmp_path: Path, backbone: dict) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(DEFAULT_MODEL, folder)
    data = json.loads((folder / bundle.MANIFEST).read_text())
    data["backbone"] = backbone
    (folder / bundle.MANIFEST).write_text(json.dumps(data))
    return folder


def test_manifest_naming_an_unknown_or_mismatched_backbone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(bundle.BundleError, match="unknown backbone 'resnet50'"):
        bundle.read_manifest(_manifest_with(tmp_path / "a", {"name": "resnet50", "sha256": "0" * 64}))
    with pytest.raises(bundle.BundleError, match="different backbone efficientnet_lite0"):
        bundle.read_manifest(_manifest_with(tmp_path / "b", {"name": "efficientnet_lite0", "sha256": bb.SHA256}))
    # a head that reads MobileNetV2's feature maps cannot run on another backbone
    from fruitpipe.classifier import Classifier
    lite0 = bb.get("efficientnet_lite0")
    with pytest.raises(bundle.BundleError, match="needs MobileNetV2's feature maps, not backbone efficientnet_lite0"):
        Classifier(_manifest_with(tmp_path / "c", lite0.manifest_entry()))


def test_cache_entries_never_serve_another_backbone(tmp_path: Path) -> None:
    tags = {cache_tag(n) for n in NAMES}
    assert len(tags) == len(NAMES)
    lite0 = EmbeddingCache(tmp_path, "efficientnet_lite0")
    lite0.put("a" * 64, "orig", (np.zeros(1280, np.int8), np.zeros(0, np.float32), np.zeros(0, np.int8)))
    assert lite0.flush() is not None
    assert len(EmbeddingCache(tmp_path, "efficientnet_lite0")) == 1
    assert len(EmbeddingCache(tmp_path)) == 0 and len(EmbeddingCache(tmp_path, "efficientnet_lite1")) == 0


def test_cli_unknown_backbone_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    proc = subprocess.run([sys.executable, "-m", "fruitpipe", "train", "--data", str(tmp_path / "data"),
                           "--out", str(tmp_path / "out"), "--backbone", "resnet50"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown backbone 'resnet50'; known: " + ", ".join(NAMES)]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    import os
    env = {**os.environ, "PYTHONPATH": str(REPO), "FRUITPIPE_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fruitpipe", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lite0_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bundle trained on EfficientNet-Lite0 by the real CLI (6 photos a class, 2 to validate)."""
    from .service_support import small_dataset
    root = tmp_path_factory.mktemp("lite0")
    train, val = small_dataset(root / "train", "train", 6), small_dataset(root / "val", "val", 2)
    proc = _cli("train", "--data", str(train), "--validation", str(val), "--out", str(root / "model"),
                "--cache", str(root / "cache"), "--backbone", "efficientnet_lite0",
                "--set", "epochs=5", "--set", "hidden=32", "--set", "prototypes_per_class=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "model"


@needs_shared
@pytest.mark.slow
def test_lite0_bundle_is_trained_predicted_and_evaluated(lite0_bundle: Path) -> None:
    manifest = bundle.verify(lite0_bundle)
    lite0 = bb.get("efficientnet_lite0")
    assert manifest.raw["backbone"] == lite0.manifest_entry()
    assert manifest.raw["backbone"]["input_size"] == 224 and manifest.raw["backbone"]["embedding_tensor"] == 161
    assert manifest.head["features"] == "emb" and "block" not in manifest.head
    assert manifest.raw["hyperparameters"]["backbone"] == "efficientnet_lite0"
    photo = sorted((FRUITS / "test" / "freshbanana").glob("*.jpg"))[0]
    proc = _cli("predict", "--model", str(lite0_bundle), str(photo))
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["model_version"] == manifest.version and answer["predicted_class"] in manifest.labels
    from .service_support import small_dataset
    data = small_dataset(lite0_bundle.parent / "test", "test", 2)
    proc = _cli("evaluate", "--model", str(lite0_bundle), "--data", str(data), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["n"] == 12 and result["model_version"] == manifest.version and 0 <= result["accuracy"] <= 1


@needs_shared
@pytest.mark.slow
def test_lite0_bundle_served_over_http(lite0_bundle: Path, tmp_path: Path) -> None:
    import httpx

    from fruitpipe.backends.local import create_local_backend

    from .service_support import fruit, live_server, make_app
    backend = create_local_backend(tmp_path / "store", seed_bundle=lite0_bundle)
    with live_server(make_app(backend)) as url, httpx.Client(base_url=url, timeout=60) as client:
        info = client.get("/model-info").json()
        assert info["backbone"]["name"] == "efficientnet_lite0" and info["preprocessing"]["size"] == 224
        r = client.post("/predict", files={"file": ("b.jpg", fruit("freshbanana"), "image/jpeg")})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == bundle.read_manifest(lite0_bundle).version
        r = client.post("/predict/batch", files=[("files", ("a.jpg", fruit("freshapples"), "image/jpeg")),
                                                 ("files", ("o.jpg", fruit("rottenoranges"), "image/jpeg"))])
        assert r.status_code == 200 and len(r.json()["results"]) == 2, r.text
        # no block 17 on this backbone: Grad-CAM at its last feature map (7x7)
        r = client.post("/predict?explain=true", files={"file": ("b.jpg", fruit("freshbanana"), "image/jpeg")})
        assert r.status_code == 200, r.text
        explanation = r.json()["explanation"]
        assert explanation["method"] == "grad-cam, efficientnet_lite0 last feature map (7x7)"
        grid = np.array(explanation["grid"])
        assert grid.shape == (7, 7) and grid.min() >= 0 and grid.sum() == pytest.approx(1, abs=1e-3)


@needs_shared
@pytest.mark.slow
def test_training_job_retrain_keeps_the_base_models_backbone(lite0_bundle: Path, tmp_path: Path) -> None:
    import os

    from .service_support import small_dataset
    train = small_dataset(tmp_path / "train", "train", 5, offset=6)
    hp = tmp_path / "hyperparameters.json"
    hp.write_text(json.dumps({"epochs": "3", "hidden": "32", "prototypes_per_class": "2"}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "FRUITPIPE_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "training_job", "--data", str(train), "--out", str(tmp_path / "m"),
                           "--cache", str(lite0_bundle.parent / "cache"), "--base-model", str(lite0_bundle),
                           "--hyperparameters", str(hp)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert bundle.verify(tmp_path / "m").backbone_name == "efficientnet_lite0"
    assert "features=emb" in proc.stdout  # the embedding-only head: no MobileNetV2 feature maps here
    # told otherwise, it trains on the named backbone; an unknown name fails before any work
    proc = subprocess.run([sys.executable, "-m", "training_job", "--data", str(train), "--out", str(tmp_path / "x"),
                           "--base-model", str(lite0_bundle), "--set", "backbone=resnet50"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "unknown backbone 'resnet50'" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


@needs_shared
@pytest.mark.slow
def test_gate_scores_bundles_on_different_backbones_on_the_same_images(lite0_bundle: Path, tmp_path: Path) -> None:
    """The retrain gate (local backend) compares a candidate and the live model even when their
    manifests name different backbones: the set is embedded once per backbone, through the cache."""
    from fruitpipe.backends.local_run import EmbeddedSet

    from .service_support import small_dataset
    data = small_dataset(tmp_path / "eval", "test", 2, offset=10)
    sets = EmbeddedSet(data, tmp_path / "cache")
    lite0, v2 = sets.score(lite0_bundle), sets.score(DEFAULT_MODEL)
    assert lite0["n"] == v2["n"] == 12
    assert lite0["model_version"] == bundle.read_manifest(lite0_bundle).version
    assert {sets.for_bundle(b)[0].spec.name for b in (lite0_bundle, DEFAULT_MODEL)} == {"efficientnet_lite0",
                                                                                      "mobilenet_v2"}
    assert len(EmbeddingCache(tmp_path / "cache", "efficientnet_lite0")) == 12
    assert len(EmbeddingCache(tmp_path / "cache")) == 12


@needs_shared
def test_old_signatures_take_a_path(tmp_path: Path) -> None:
    """Before the registry, Backbone() and resolve() took a path first: they still do."""
    from fruitpipe.classifier import Backbone

    from .conftest import BACKBONE_DIR
    expected = BACKBONE_DIR / bb.FILENAME
    assert bb.resolve(BACKBONE_DIR) == bb.resolve(str(BACKBONE_DIR)) == expected
    assert Backbone(str(BACKBONE_DIR)).spec is bb.DEFAULT and Backbone(expected).path == expected


@needs_shared
@pytest.mark.slow
def test_grad_cam_at_the_last_feature_map(lite0_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundles without block 17: the map is the one the embedding is the average of, and a backbone
    without such a map (MobileNetV3-Small) is a clear CannotExplain (409 over HTTP)."""
    import dataclasses

    from fruitpipe import explain, imaging
    from fruitpipe.classifier import Classifier
    clf = Classifier(lite0_bundle)
    image = imaging.load_image(sorted((FRUITS / "test" / "rottenapples").glob("*.jpg"))[0].read_bytes())
    emb, fmap = clf.backbone.feature_map(image)
    assert fmap.shape == (7, 7, 1280)
    assert np.array_equal(emb, clf.backbone.embed(image[None]))  # the serving pass's embedding
    assert np.abs(fmap.mean(axis=(0, 1)) - emb[0]).max() < 0.05  # its average is the embedding (int8 rounding)
    out = explain.explain(clf, image)
    grid = np.array(out["grid"])
    assert grid.shape == (7, 7) and grid.min() >= 0 and grid.sum() == pytest.approx(1, abs=1e-3)
    assert out == explain.explain(clf, image) and out["explained_class"] == clf.predict_arrays(image[None])[0].predicted_class
    for name in ("regnetx_200mf", "mobilenet_v1", "efficientnet_lite1"):  # every map has the expected layout
        from fruitpipe.classifier import Backbone
        other = Backbone(name)
        size = bb.get(name).input_size
        e, m = other.feature_map(imaging.load_image(sorted((FRUITS / "test" / "rottenapples").glob("*.jpg"))[0]
                                                    .read_bytes(), size=size))
        assert m.shape[-1] == e.shape[1] and np.abs(m.mean(axis=(0, 1)) - e[0]).max() < 0.05, name
    monkeypatch.setattr(clf.backbone, "spec", dataclasses.replace(clf.backbone.spec, cam_tensor=None))
    with pytest.raises(explain.CannotExplain, match="no spatial map"):
        explain.explain(clf, image)
