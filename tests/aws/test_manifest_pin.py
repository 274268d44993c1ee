"""The model manifest is pinned in the AWS registry too (moto server): ``manifest.sha256`` is
written when a version is published (the registry's own publish and the pipeline's publish step),
``live.json`` repeats it, and an edited manifest in S3 is refused at activation, at loading and by
the pipeline's pointer move. A version from before the record is accepted with a warning, then
pinned by the pointer."""

from __future__ import annotations

import json
import logging

import pytest

from fruitpipe import bundle
from fruitpipe.backends.aws import S3ModelRegistry
from fruitpipe.pipeline import publish
from tests.conftest import DEFAULT_MODEL, needs_shared
from tests.pipeline.conftest import archive, make_bundle

pytestmark = needs_shared


def registry(aws, tmp_path, name: str = "cache") -> S3ModelRegistry:
    """A registry with its own empty download cache (a fresh Lambda environment)."""
    return S3ModelRegistry(aws["models"], tmp_path / name, s3=aws["s3"])


def pointer(aws) -> dict:
    return json.loads(aws["s3"].get_object(Bucket=aws["models"], Key="live.json")["Body"].read())


def edit_manifest(aws, version: str) -> None:
    key = f"versions/{version}/manifest.json"
    raw = json.loads(aws["s3"].get_object(Bucket=aws["models"], Key=key)["Body"].read())
    raw["rejection"]["min_similarity"] = 0.99
    aws["s3"].put_object(Bucket=aws["models"], Key=key, Body=json.dumps(raw).encode())


def test_registry_publish_pins_and_refuses_an_edited_manifest(aws, tmp_path):
    reg = registry(aws, tmp_path)
    v1 = reg.publish(make_bundle(tmp_path, "v20260101-000000-aaaaaa"))
    v2 = reg.publish(make_bundle(tmp_path, "v20260102-000000-bbbbbb"))
    record = aws["s3"].get_object(Bucket=aws["models"], Key=f"versions/{v1}/manifest.sha256")["Body"].read()
    digest = bundle.sha256_bytes((tmp_path / v1 / "manifest.json").read_bytes())
    assert record == bundle.manifest_record(digest)
    reg.activate(v1)
    assert pointer(aws)["manifest_sha256"] == digest
    edit_manifest(aws, v2)
    with pytest.raises(bundle.BundleError, match="manifest was edited"):
        registry(aws, tmp_path, "fresh").activate(v2)
    assert pointer(aws)["version"] == v1
    # edited after activation: a fresh instance refuses to load it
    edit_manifest(aws, v1)
    with pytest.raises(bundle.BundleError, match="manifest was edited"):
        registry(aws, tmp_path, "fresh2").fetch(v1)


def test_pipeline_publish_pins_and_move_pointer_refuses_an_edited_manifest(aws, tmp_path):
    s3, models = aws["s3"], aws["models"]

    def candidate(version: str) -> str:
        key = f"runs/{version}/output/model.tar.gz"
        s3.put_object(Bucket=models, Key=key, Body=archive(make_bundle(tmp_path, version)))
        return f"s3://{models}/{key}"

    first = publish.publish(s3, models_bucket=models, model_artifacts=candidate("v20260103-000000-cccccc"))
    second = publish.publish(s3, models_bucket=models, model_artifacts=candidate("v20260104-000000-dddddd"))
    assert second["pointer_moved"] and pointer(aws)["version"] == second["version"]
    manifest = s3.get_object(Bucket=models, Key=f"versions/{second['version']}/manifest.json")["Body"].read()
    assert pointer(aws)["manifest_sha256"] == bundle.sha256_bytes(manifest)
    # the API's registry accepts what the pipeline published
    assert registry(aws, tmp_path).fetch(second["version"])
    edit_manifest(aws, first["version"])
    with pytest.raises(publish.PublishError, match="manifest was edited"):
        publish.move_pointer(s3, models, first["version"], reason="rollback")
    assert pointer(aws)["version"] == second["version"]


def test_version_from_before_the_record_is_accepted_then_pinned(aws, tmp_path, caplog):
    s3, models = aws["s3"], aws["models"]
    old = make_bundle(tmp_path, "v20260105-000000-eeeeee")
    for f in old.iterdir():  # uploaded as the registry did before it kept a record
        s3.upload_file(str(f), models, f"versions/{old.name}/{f.name}")
    with caplog.at_level(logging.WARNING, logger="fruitpipe.registry"):
        registry(aws, tmp_path).activate(old.name)
    assert "no recorded manifest checksum" in caplog.text
    assert pointer(aws)["manifest_sha256"] == bundle.sha256_bytes((old / "manifest.json").read_bytes())
    edit_manifest(aws, old.name)
    with pytest.raises(bundle.BundleError, match="manifest was edited"):
        registry(aws, tmp_path, "fresh").fetch(old.name)  # pinned by the pointer now


def test_seed_bundle_activation_is_pinned(aws, tmp_path):
    reg = S3ModelRegistry(aws["models"], tmp_path / "c", seed_bundle=DEFAULT_MODEL, s3=aws["s3"])
    version = reg.live_version()
    reg.activate(version)
    assert pointer(aws)["manifest_sha256"] == bundle.sha256_bytes((DEFAULT_MODEL / "manifest.json").read_bytes())


def test_gate_download_of_the_live_bundle_refuses_an_edited_manifest(aws, tmp_path):
    """The evaluate step downloads the live bundle to compare against: an edited manifest there
    is refused too (the run fails with the reason instead of gating with edited thresholds)."""
    from fruitpipe.pipeline import s3util
    reg = registry(aws, tmp_path)
    version = reg.publish(make_bundle(tmp_path, "v20260106-000000-ffffff"))
    assert bundle.verify(s3util.download_bundle(aws["s3"], aws["models"], version, tmp_path / "ok"))
    edit_manifest(aws, version)
    with pytest.raises(bundle.BundleError, match="manifest was edited"):
        s3util.download_bundle(aws["s3"], aws["models"], version, tmp_path / "edited")


def test_reactivating_the_live_version_keeps_the_rollback_target(aws, tmp_path):
    """Found by the new-user trial: activating the version already live wrote it as its own
    "previous", losing the version a rollback returns to."""
    reg = registry(aws, tmp_path)
    v1 = reg.publish(make_bundle(tmp_path, "v20260101-000000-aaaaaa"))
    v2 = reg.publish(make_bundle(tmp_path, "v20260102-000000-bbbbbb"))
    reg.activate(v1)
    reg.activate(v2)
    reg.activate(v2)
    assert pointer(aws)["version"] == v2 and pointer(aws)["previous"] == v1
