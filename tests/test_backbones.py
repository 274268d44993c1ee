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
    # provisioned into the cache, then found there with no variable set
    cached = bb.provision(spec="efficientnet_lite0")
    assert cached == tmp_path / "cache" / lite0.filename
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
