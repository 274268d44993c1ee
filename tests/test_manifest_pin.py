"""The model manifest is pinned like the files it lists (local registry): ``manifest.sha256``
written when a version is added, the live pointer repeats it; an edited manifest is refused at
activation and at loading, with a clear error. Versions from before the record: accepted with a
warning, then pinned by the pointer."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from fruitpipe import bundle
from fruitpipe.backends.local import LocalRegistry

from .conftest import DEFAULT_MODEL, needs_shared
from .service_support import AUTH, live_server, make_app, make_backend
from .test_api import second_version

pytestmark = needs_shared


def candidate(tmp_path, version: str):
    m = bundle.verify(DEFAULT_MODEL)
    raw = m.to_dict()
    raw["version"] = version
    return bundle.write(tmp_path / version, bundle.Manifest.from_dict(raw),
                        {n: (DEFAULT_MODEL / n).read_bytes() for n in m.files}) and tmp_path / version


def edit_manifest(folder) -> None:
    """What broke production: a hand edit of the rejection threshold."""
    path = folder / bundle.MANIFEST
    raw = json.loads(path.read_text())
    raw["rejection"]["min_similarity"] = 0.99
    path.write_text(json.dumps(raw, indent=2))


def test_added_version_is_pinned_and_pointer_repeats_it(tmp_path):
    reg = LocalRegistry(tmp_path, DEFAULT_MODEL)
    live = reg.live_version()
    digest = bundle.sha256_bytes((DEFAULT_MODEL / bundle.MANIFEST).read_bytes())
    record = (reg.versions_dir / live / bundle.MANIFEST_SHA).read_bytes()
    assert record == f"{digest}  manifest.json\n".encode()  # sha256sum format
    assert json.loads(reg.pointer.read_text())["manifest_sha256"] == digest


def test_edited_manifest_cannot_be_activated(tmp_path):
    reg = LocalRegistry(tmp_path, DEFAULT_MODEL)
    live = reg.live_version()
    new = "v20990101-000000-cccccc"
    reg.add(candidate(tmp_path, new), new)
    edit_manifest(reg.versions_dir / new)
    with pytest.raises(bundle.BundleError, match="manifest was edited"):
        reg.activate(new)
    with pytest.raises(bundle.BundleError, match="manifest was edited"):
        reg.fetch(new)
    assert reg.live_version() == live


def test_live_manifest_edited_after_activation_is_not_loaded(tmp_path):
    """The server refuses to load the edited live version and says why; activating a good
    version (rollback) works."""
    backend = make_backend(tmp_path / "store")
    reg = backend.registry
    good = reg.live_version()
    new = "v20990101-000000-dddddd"
    reg.add(candidate(tmp_path, new), new)
    reg.activate(new)
    edit_manifest(reg.versions_dir / new)
    with live_server(make_app(backend)) as url, httpx.Client(base_url=url, timeout=30) as c:
        health = c.get("/health").json()
        assert health["model_loaded"] is False and health["status"] == "degraded"
        r = c.get("/model-info")
        assert r.status_code == 503 and "manifest was edited" in r.json()["detail"]
        r = c.post(f"/models/{new}/activate", headers=AUTH)
        assert r.status_code == 503 and r.json()["error"] == "model_invalid" and "manifest" in r.json()["detail"]
        assert c.post(f"/models/{good}/activate", headers=AUTH).status_code == 200
        assert c.get("/health").json()["model_version"] == good


def test_versions_from_before_the_record_are_accepted_then_pinned(tmp_path, caplog):
    """Decision for old registries: a version without ``manifest.sha256`` (and an old pointer
    without ``manifest_sha256``) is accepted with a warning; activating it pins its manifest in
    the pointer, so a later edit is refused."""
    reg = LocalRegistry(tmp_path, DEFAULT_MODEL)
    old = second_version(tmp_path, "e")  # written straight into versions/, as before the record existed
    assert not (reg.versions_dir / old / bundle.MANIFEST_SHA).exists()
    reg.pointer.write_text(json.dumps({"version": reg.live_version(), "updated": "2026-01-01T00:00:00Z"}))
    assert reg.fetch(reg.live_version())  # an old pointer: the version's own record still pins it
    with caplog.at_level(logging.WARNING, logger="fruitpipe.registry"):
        reg.activate(old)
    assert "no recorded manifest checksum" in caplog.text
    pointer = json.loads(reg.pointer.read_text())
    assert pointer["version"] == old and len(pointer["manifest_sha256"]) == 64
    edit_manifest(reg.versions_dir / old)
    with pytest.raises(bundle.BundleError, match="manifest was edited"):
        reg.fetch(old)


def test_malformed_record_is_refused(tmp_path):
    reg = LocalRegistry(tmp_path, DEFAULT_MODEL)
    live = reg.live_version()
    (reg.versions_dir / live / bundle.MANIFEST_SHA).write_text("not a checksum\n")
    with pytest.raises(bundle.BundleError, match="not a sha256 record"):
        reg.fetch(live)
