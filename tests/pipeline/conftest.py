"""A moto server on 127.0.0.1 and helpers to build real model archives for the pipeline steps."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import DEFAULT_MODEL, FRUITS

REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def aws(moto_url, monkeypatch_module):
    import boto3
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto_url}.items():
        monkeypatch_module.setenv(k, v)

    class Clients:
        def __getattr__(self, name: str) -> Any:
            return boto3.client(name.replace("_", "-") if name != "stepfunctions" else name,
                                endpoint_url=moto_url, region_name=REGION)
    return Clients()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def make_bundle(dest: Path, version: str, *, shuffle_head: bool = False) -> Path:
    """A copy of the default bundle under a new version; ``shuffle_head`` permutes the output
    classes of the head, a real model that is much worse."""
    from fruitpipe import bundle
    m = bundle.read_manifest(DEFAULT_MODEL)
    files = {name: (DEFAULT_MODEL / name).read_bytes() for name in m.files}
    if shuffle_head:
        head_name = m.head["file"]
        with np.load(io.BytesIO(files[head_name])) as z:
            arrays = {k: z[k] for k in z.files}
        last = max(int(k.split("_")[1]) for k in arrays if k.startswith("bias_"))
        for k in (f"kernel_{last}", f"bias_{last}"):  # rotate the six classes (a 7th, not_fruit, stays)
            a = arrays[k]
            arrays[k] = np.concatenate([np.roll(a[..., :6], 1, axis=-1), a[..., 6:]], axis=-1)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        files[head_name] = buf.getvalue()
    m.version = version
    return bundle.write(dest / version, m, files) and dest / version


def archive(bundle_dir: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """SageMaker's model.tar.gz: the bundle's files at the archive root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(bundle_dir.iterdir()):
            tar.add(p, arcname=p.name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def fill_dataset(s3: Any, bucket: str, per_class: int, split: str = "test") -> int:
    """File real images as ingest would: dataset/<class>/<sha256>.jpg."""
    from fruitpipe import dataset
    from fruitpipe.labels import LABELS
    n = 0
    for label in LABELS:
        for p in sorted((FRUITS / split / label).glob("*.jpg"))[:per_class]:
            filed = dataset.prepare(label, p.read_bytes())
            s3.put_object(Bucket=bucket, Key=filed.key, Body=filed.data)
            n += 1
    return n


def simple_evaluate(classifier: Any, data_dir: Path) -> dict[str, Any]:
    """The real evaluation (what the evaluate Lambda runs)."""
    from fruitpipe.evaluation import evaluate
    return evaluate(classifier, data_dir)


def copy_default(dest: Path) -> Path:
    shutil.copytree(DEFAULT_MODEL, dest)
    return dest


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()
