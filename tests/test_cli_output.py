"""What the CLI prints where: `predict` with the shipped, a store's or a server's live model;
`evaluate` keeps progress off stdout and scores a store's live model; `train` on a terminal vs for programs (SageMaker, the local
retrain runner, which reads the job's stdout and stderr merged)."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from fruitpipe.cli import main

from .conftest import DEFAULT_MODEL, FRUITS, REPO, needs_shared
from .service_support import live_server, make_app, make_backend

pytestmark = needs_shared


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fruitpipe", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def photo(label: str, index: int = 0, split: str = "test") -> Path:
    return sorted((FRUITS / split / label).glob("*.jpg"))[index]


def tiny_set(dest: Path, split: str, per_class: int) -> Path:
    from fruitpipe.labels import LABELS
    for label in LABELS:
        (dest / label).mkdir(parents=True)
        for i in range(per_class):
            (dest / label / f"{i}.jpg").symlink_to(photo(label, i, split))
    return dest


def test_evaluate_stdout_carries_only_results(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "freshbanana").mkdir(parents=True)
    for i in range(3):
        (data / "freshbanana" / f"{i}.jpg").symlink_to(photo("freshbanana", i))
    proc = cli("evaluate", "--data", str(data))  # stdout and stderr are pipes, not a terminal
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("model ") and "n=3 accuracy=" in proc.stdout
    # no progress for a program: the stage=/progress= lines are the training job's protocol
    assert not [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("stage=", "progress="))]
    code, text = _run_on_terminal(["evaluate", "--data", str(data)])  # a person: a bar on stderr
    rows = text.replace("\r", "\n").splitlines()
    assert code == 0 and any(r.startswith("evaluate: 100%") and "3/3" in r for r in rows), text
    assert not [r for r in rows if r.startswith(("stage=", "progress="))], text


def test_help_shows_whole_sentences_and_every_command_describes_itself() -> None:
    """``fruitpipe --help`` gives each command's whole first paragraph (not its first line, which
    cut ``models`` mid-sentence), ``fruitpipe CMD --help`` its whole description."""
    from fruitpipe.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for choice in sub._choices_actions:
        assert choice.help and choice.help.endswith("."), (choice.dest, choice.help)
        description = sub.choices[choice.dest].description
        assert description and " ".join(description.split()).startswith(choice.help[:-1]), choice.dest
    assert "--shadow V" in sub.choices["models"].format_help() and "exit codes:" in parser.format_help()
    # a description of several paragraphs keeps them apart in the rendered help
    name, desc = next((n, p.description) for n, p in sub.choices.items() if p.description and "\n\n" in p.description)
    second = desc.split("\n\n")[1].split("\n")[0].strip()
    assert f"\n\n{second}" in sub.choices[name].format_help().replace("\n  ", "\n"), name


def _store(tmp_path: Path) -> tuple[Path, str]:
    from fruitpipe.backends.local import LocalRegistry
    store = tmp_path / "store"
    registry = LocalRegistry(store, seed_bundle=DEFAULT_MODEL)
    return store, registry.live_version()  # type: ignore[return-value]


def _store_with_second_live(tmp_path: Path) -> tuple[Path, str, dict]:
    """A store whose live version is a second one (the shipped bundle under another version), so a
    command following the pointer is told apart from one taking the shipped model: (store, the
    shipped version, the live manifest)."""
    from fruitpipe.backends.local import LocalRegistry
    store, shipped = _store(tmp_path)
    registry = LocalRegistry(store)
    other = tmp_path / "other"
    shutil.copytree(DEFAULT_MODEL, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["version"] = "v20990101-000000-abcdef"
    (other / "manifest.json").write_text(json.dumps(manifest))
    registry.add(other, manifest["version"])
    registry.activate(manifest["version"])
    return store, shipped, manifest


def test_predict_store_uses_its_verified_live_model(tmp_path: Path) -> None:
    store, shipped, manifest = _store_with_second_live(tmp_path)  # predict --store must follow the pointer

    proc = cli("predict", str(photo("rottenapples")), "--store", str(store))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model_version"] == manifest["version"] != shipped and out["predicted_class"] == "rottenapples"

    live = store / "models" / "versions" / manifest["version"] / "manifest.json"
    live.write_text(live.read_text().replace('"version"', '"version" ', 1))  # edited after publishing
    proc = cli("predict", str(photo("rottenapples")), "--store", str(store))
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr


def test_predict_store_without_a_live_model_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    proc = cli("predict", str(photo("freshapples")), "--store", str(tmp_path))
    assert proc.returncode == 2 and "no live model" in proc.stderr and proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    proc = cli("predict", str(photo("freshapples")), "--store", str(tmp_path), "--model", str(DEFAULT_MODEL))
    assert proc.returncode == 2 and "not allowed with" in proc.stderr


def test_evaluate_store_scores_its_live_model(tmp_path: Path) -> None:
    store, shipped, manifest = _store_with_second_live(tmp_path)
    data = tmp_path / "data"
    (data / "rottenapples").mkdir(parents=True)
    for i in range(2):
        (data / "rottenapples" / f"{i}.jpg").symlink_to(photo("rottenapples", i))
    proc = cli("evaluate", "--data", str(data), "--store", str(store), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model_version"] == manifest["version"] != shipped and result["n"] == 2

    proc = cli("evaluate", "--data", str(data), "--store", str(tmp_path / "data"))  # not a store
    assert proc.returncode == 2 and "no live model" in proc.stderr and proc.stderr.count("\n") == 1
    proc = cli("evaluate", "--data", str(data), "--store", str(store), "--model", str(DEFAULT_MODEL))
    assert proc.returncode == 2 and "not allowed with" in proc.stderr
    assert "--store" in cli("evaluate", "--help").stdout


@pytest.mark.slow
def test_predict_api_asks_the_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backend = make_backend(tmp_path / "store")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with live_server(make_app(backend)) as url:
        live = backend.registry.live_version()
        code = main(["predict", str(photo("freshoranges")), str(bad), str(tmp_path / "missing.jpg"), "--api", url])
        out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and len(rows) == 1
    assert rows[0]["predicted_class"] == "freshoranges" and rows[0]["model_version"] == live
    assert rows[0]["file"].endswith(".jpg") and rows[0]["verdict"] == "fresh"
    errors = err.splitlines()
    assert len(errors) == 2 and "bad.jpg: not_an_image" in errors[0] and "missing.jpg: cannot read" in errors[1]
    code = main(["predict", str(photo("freshoranges")), "--api", "http://127.0.0.1:9"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("error:") and err.count("\n") == 1


def _train_args(tmp_path: Path, out: str) -> list[str]:
    data = tmp_path / "data" if (tmp_path / "data").is_dir() else tiny_set(tmp_path / "data", "train", 6)
    return ["train", "--data", str(data), "--out", str(tmp_path / out), "--cache", str(tmp_path / "cache"),
            "--set", "epochs=3", "--set", "finetune_epochs=2"]


def _run_on_terminal(args: list[str]) -> tuple[int, str]:
    """``fruitpipe ARGS`` with stdout and stderr on a pseudo-terminal 120 columns wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "fruitpipe", *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_train_for_programs_and_on_a_terminal(tmp_path: Path) -> None:
    # For programs (SageMaker, the local retrain runner: stdout + stderr merged in one pipe).
    proc = subprocess.run([sys.executable, "-m", "fruitpipe", *_train_args(tmp_path, "job")], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    for wanted in ("stage=embed_train", "stage=train_head", "stage=finetune_block", "stage=done",
                   "progress=100", "epoch=1", "epoch=5"):
        assert wanted in lines, wanted
    keys = {line.partition("=")[0] for line in lines if "=" in line}
    assert {"train_loss", "train_accuracy", "val_accuracy", "accuracy", "macro_f1", "train_seconds"} <= keys

    # On a terminal: bars, no name=value line per epoch, no native start-up noise, a summary.
    code, text = _run_on_terminal(_train_args(tmp_path, "human"))
    assert code == 0, text
    rows = text.replace("\r", "\n").splitlines()
    assert not [r for r in rows if r.startswith(("epoch=", "train_loss=", "progress=", "stage="))], text
    assert "XNNPACK" not in text and "absl" not in text and "oneDNN" not in text, text
    assert any(r.startswith("head: 100%") and "3/3" in r for r in rows), text
    assert any(r.startswith("block 17 + head: 100%") and "2/2" in r for r in rows), text
    version = json.loads((tmp_path / "human" / "manifest.json").read_text())["version"]
    assert f"bundle: {tmp_path / 'human'} (version {version})" in rows
    assert any(r.startswith("validation: accuracy ") for r in rows) and any(r.startswith("time: ") for r in rows)


def test_quiet_native_stderr_holds_back_fd_2_only(capfd: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from fruitpipe import joblog
    monkeypatch.setattr(joblog, "interactive", lambda: True)
    with joblog.quiet_native_stderr():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")  # as a C++ library writes
        print("a bar", file=sys.stderr)
    err = capfd.readouterr().err
    assert "a bar" in err and "XNNPACK" not in err
    with pytest.raises(RuntimeError):
        with joblog.quiet_native_stderr():
            os.write(2, b"native detail of a crash\n")
            raise RuntimeError("boom")
    assert "native detail of a crash" in capfd.readouterr().err
    os.write(2, b"after\n")  # fd 2 is back
    assert capfd.readouterr().err == "after\n"
