"""The local backend on its own: store, registry, trainer bookkeeping (no HTTP)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from fruitpipe import bundle
from fruitpipe.backends import NotFound, VersionRejected
from fruitpipe.backends.local import LocalDataStore, LocalRegistry, LocalTrainer, create_local_backend
from fruitpipe.labels import LABELS

from .conftest import DEFAULT_MODEL, needs_shared
from .service_support import fruit, jpeg, tree_hash

pytestmark = needs_shared


def test_store_files_by_content_and_reports_rejections(tmp_path):
    store = LocalDataStore(tmp_path)
    img = fruit("freshbanana", 1)
    a = store.add("freshbanana", img, "../../a.jpg")
    assert a.status == "added" and a.key == f"dataset/freshbanana/{a.sha256}.jpg"
    assert (tmp_path / a.key).read_bytes() == img
    again = store.add("freshbanana", img, "other.jpg")  # an earlier upload's twin: says where it is
    assert again.status == "duplicate" and again.detail == f"already uploaded: the same image is in the dataset as {a.key}"
    bad = store.add("freshbanana", b"\x89PNG\r\n\x1a\nxxxx", "x.png")
    assert bad.status == "rejected" and bad.error in ("truncated", "not_an_image")
    unknown = store.add("kiwi", img, "k.jpg")
    assert unknown.status == "rejected" and unknown.error == "unknown_class"
    assert store.counts() == {**dict.fromkeys(LABELS, 0), "freshbanana": 1}
    # no temporary files left behind
    assert [p.name for p in (tmp_path / "dataset" / "freshbanana").iterdir()] == [f"{a.sha256}.jpg"]


def test_png_upload_is_stored_as_jpeg(tmp_path):
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (10, 200, 10, 128)).save(buf, "PNG")
    res = LocalDataStore(tmp_path).add("freshapples", buf.getvalue(), "p.png")
    assert res.status == "added"
    assert (tmp_path / res.key).read_bytes()[:3] == b"\xff\xd8\xff"


def test_registry_seeds_activates_and_refuses_bad_names(tmp_path):
    reg = LocalRegistry(tmp_path, DEFAULT_MODEL)
    version = bundle.verify(DEFAULT_MODEL).version
    assert reg.live_version() == version
    assert json.loads(reg.pointer.read_text())["version"] == version
    assert [v.status for v in reg.versions()] == ["live"]
    assert (reg.fetch(version) / "manifest.json").is_file()
    for bad in ("../models", "..", "", "a/b", ".x", "v" * 200):
        with pytest.raises(NotFound):
            reg.activate(bad)
    # a second start does not re-seed or move the pointer
    sig = reg.pointer_signature()
    assert LocalRegistry(tmp_path, DEFAULT_MODEL).pointer_signature() == sig


def test_registry_keeps_rejected_versions_with_reason(tmp_path):
    reg = LocalRegistry(tmp_path, DEFAULT_MODEL)
    m = bundle.verify(DEFAULT_MODEL)
    raw = m.to_dict()
    raw["version"] = "v20990101-000000-aaaaaa"
    src = tmp_path / "cand"
    bundle.write(src, bundle.Manifest.from_dict(raw), {n: (DEFAULT_MODEL / n).read_bytes() for n in m.files})
    reg.add(src, raw["version"], rejected_reason="accuracy 0.1 < live 0.9", evaluation={"accuracy": 0.1})
    v = [x for x in reg.versions() if x.version == raw["version"]][0]
    assert v.status == "rejected" and "0.1" in (v.reason or "") and v.metrics["evaluation"]["accuracy"] == 0.1
    with pytest.raises(VersionRejected):
        reg.activate(raw["version"])
    assert reg.live_version() == m.version


def test_tampered_bundle_cannot_go_live(tmp_path):
    reg = LocalRegistry(tmp_path, DEFAULT_MODEL)
    m = bundle.verify(DEFAULT_MODEL)
    raw = m.to_dict()
    raw["version"] = "v20990101-000000-bbbbbb"
    dest = reg.versions_dir / raw["version"]
    bundle.write(dest, bundle.Manifest.from_dict(raw), {n: (DEFAULT_MODEL / n).read_bytes() for n in m.files})
    (dest / "head.npz").write_bytes(b"tampered")
    with pytest.raises(bundle.BundleError):
        reg.activate(raw["version"])
    assert reg.live_version() == m.version


def test_stale_running_status_becomes_failed(tmp_path):
    backend = create_local_backend(tmp_path, seed_bundle=DEFAULT_MODEL)
    trainer = backend.trainer
    assert isinstance(trainer, LocalTrainer)
    assert trainer.status().state == "idle"
    # a run that was 'running' when the server died: its pid no longer exists
    trainer.status_path.write_text(json.dumps({"state": "running", "run_id": "run-old", "stage": "train:embed",
                                               "percent": 30, "pid": 2 ** 22 + 12345}))
    fresh = LocalTrainer(tmp_path, backend.registry)  # a restarted server
    st = fresh.status()
    assert st.state == "failed" and "died without finishing" in st.result["error"] and st.stage == "train:embed"


def test_admin_token_generated_once_with_mode_0600(tmp_path, monkeypatch):
    from fruitpipe.api.settings import TOKEN_ENV, local_token
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    messages: list[str] = []
    token = local_token(tmp_path, announce=messages.append)
    assert len(token) >= 32 and messages
    mode = stat.S_IMODE(os.stat(tmp_path / "admin-token").st_mode)
    assert mode == 0o600
    assert local_token(tmp_path) == token
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert local_token(tmp_path) == "from-env"


def test_tree_hash_sees_changes(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    h = tree_hash(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    assert tree_hash(tmp_path) != h
    assert jpeg()[:3] == b"\xff\xd8\xff"
