"""Bundle verification and backbone provisioning: refuse anything tampered, explain every miss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fruitpipe import backbone, bundle
from fruitpipe.bundle import BundleError

from .conftest import DEFAULT_MODEL


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    dest = tmp_path / "b"
    shutil.copytree(DEFAULT_MODEL, dest)
    return dest


def test_default_bundle_verifies_and_is_small() -> None:
    manifest = bundle.verify(DEFAULT_MODEL)
    assert set(manifest.files) == {"head.npz", "block17.npz", "rejection.npz"}
    size = sum((DEFAULT_MODEL / name).stat().st_size for name in manifest.files)
    size += (DEFAULT_MODEL / bundle.MANIFEST).stat().st_size
    assert size <= 1_000_000, size


def test_modified_head_is_refused(copy: Path) -> None:
    data = bytearray((copy / "head.npz").read_bytes())
    data[-10] ^= 0xFF
    (copy / "head.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="head.npz.*modified"):
        bundle.verify(copy)


def test_missing_file_is_refused(copy: Path) -> None:
    (copy / "rejection.npz").unlink()
    with pytest.raises(BundleError, match="rejection.npz is missing"):
        bundle.verify(copy)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(labels=list(reversed(m["labels"]))), "labels"),
    (lambda m: m["backbone"].update(sha256="0" * 64), "different backbone"),
    (lambda m: m.update(format=99), "format"),
    (lambda m: m["files"].update({"../evil": "0" * 64}), "plain file name"),
    (lambda m: m.pop("head"), "malformed"),
])
def test_manifest_tampering_is_refused(copy: Path, edit, message: str) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        bundle.verify(copy)


def test_garbage_manifest_is_refused(copy: Path) -> None:
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        bundle.verify(copy)


def test_classifier_refuses_tampered_bundle(copy: Path, backbone) -> None:
    from fruitpipe.classifier import Classifier
    (copy / "rejection.npz").write_bytes(b"x")
    with pytest.raises(BundleError):
        Classifier(copy, shared_backbone=backbone)


def test_backbone_checksum_mismatch_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / backbone.FILENAME
    fake.write_bytes(b"not the model")
    monkeypatch.setenv(backbone.ENV_VAR, str(tmp_path))
    with pytest.raises(backbone.BackboneError, match=f"expected {backbone.SHA256}.*{backbone.ENV_VAR}"):
        backbone.resolve()


def test_backbone_missing_override_is_clear(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(backbone.ENV_VAR, str(tmp_path / "nope.tflite"))
    with pytest.raises(backbone.BackboneError, match="not found"):
        backbone.resolve()


def test_offline_download_miss_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import socket
    with socket.socket() as s:  # a port on 127.0.0.1 that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(backbone.BackboneError, match="offline.*FRUITPIPE_BACKBONE"):
        backbone.fetch(tmp_path / "bb.tflite", url=f"http://127.0.0.1:{port}/model.tflite", timeout=5)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_resolve_without_cache_or_override_downloads_to_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(backbone.ENV_VAR, raising=False)
    monkeypatch.delenv(backbone.ZOO_ENV_VAR, raising=False)
    monkeypatch.setenv("FRUITPIPE_CACHE", str(tmp_path))
    with pytest.raises(backbone.BackboneError, match="not cached"):
        backbone.resolve(download=False)


def test_served_download_is_checked(tmp_path: Path) -> None:
    """A real HTTP server on 127.0.0.1 serving the wrong bytes: refused, nothing cached."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"tampered model")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(backbone.BackboneError, match="refusing"):
            backbone.fetch(tmp_path / "bb.tflite", url=f"http://127.0.0.1:{server.server_port}/m")
    finally:
        server.shutdown()
    assert not (tmp_path / "bb.tflite").exists()


def test_provision_copies_a_local_backbone_into_the_cache(tmp_path: Path, monkeypatch) -> None:
    """`make run` provisions once; afterwards every command finds the backbone with no variable set,
    and a corrupt cached copy is replaced, never used."""
    from tests.conftest import BACKBONE_DIR
    if not BACKBONE_DIR.is_dir():
        pytest.skip("../shared/models is not beside the checkout")
    monkeypatch.setenv("FRUITPIPE_CACHE", str(tmp_path))
    monkeypatch.setenv(backbone.ENV_VAR, str(BACKBONE_DIR))
    assert backbone.main([]) == 0
    cached = tmp_path / backbone.FILENAME
    assert backbone.sha256_file(cached) == backbone.SHA256
    monkeypatch.delenv(backbone.ENV_VAR)
    monkeypatch.delenv(backbone.ZOO_ENV_VAR, raising=False)
    assert backbone.resolve(download=False) == cached
    cached.write_bytes(b"half a model")
    with pytest.raises(backbone.BackboneError, match="sha256"):
        backbone.resolve(download=False)
    assert backbone.provision(BACKBONE_DIR) == cached
    assert backbone.resolve(download=False) == cached
    assert [p.name for p in tmp_path.iterdir()] == [backbone.FILENAME]  # no temporary file left


def test_provision_with_a_wrong_source_is_one_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FRUITPIPE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / backbone.FILENAME
    bad.write_bytes(b"not a model")
    assert backbone.main([str(bad)]) == 2
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "cache" / backbone.FILENAME).exists()
