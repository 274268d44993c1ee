"""Every shell command the README and docs/*.md show, checked so the docs cannot drift.

Each command in a ```bash``` block is, depending on what it is:

* **run**: the blocks that talk to the local service (they name http://127.0.0.1:8000) run as
  written in bash against a real ``fruitpipe serve``-style server on 127.0.0.1 (a free port is put
  in place of 8000; the training job is the tiny test job), from a folder laid out like a checkout
  (``var/admin-token``, ``.venv``, ``../shared``), with the backbone provisioned into a fresh
  package cache as ``make run`` does and no ``FRUITPIPE_BACKBONE``: the README's offline promise;
* ``fruitpipe ...``: parsed by the CLI's own parser (``build_parser().parse_args``);
* ``make T``: ``make -n T`` (the target exists and expands);
* ``python -m training_job ...`` / ``python scripts/X.py ...``: every ``--flag`` shown is one the
  program's ``--help`` lists;
* AWS, CDK and other tools this machine cannot use offline: :data:`NOT_RUN`, with the reason.

Inline code spans that start with ``fruitpipe <command>`` (in prose) must name a real command and
only options it has. Any path into the repository or ``../shared`` that a command shows must exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import BACKBONE_DIR, REPO, SHARED, needs_shared
from .service_support import TOKEN, live_server, make_app, make_backend, small_dataset

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LOCAL_SERVICE = "http://127.0.0.1:8000"
SHELL_LANGS = {"bash", "sh", "shell", "console"}

# Commands not run here, by their first word, and why. Their fruitpipe parts are still parsed, their
# paths still checked.
NOT_RUN = {
    "npx": "AWS CDK bootstrap/deploy/destroy need an AWS account; `make synth` (tests/infra) synthesizes offline",
    "aws": "the AWS CLI against a real account (S3, Secrets Manager, STS)",
    "source": "changes the reader's shell only (`source .venv/bin/activate`)",
    "prometheus": "a long-running server; tests/test_monitoring.py starts it on this config",
}
# Variables set from an AWS deployment's outputs; blocks using them are the deploy guide's.
AWS_VARIABLES = ("$URL", "$BUCKET", "$SECRET", "$FORM", "$CDK_DEFAULT_ACCOUNT")
# Top-level folders whose paths, when a command shows one, must exist.
PATH_ROOTS = ("scripts/", "monitoring/", "infra/", "models/", "tests/", "docs/", "training_job/", "../shared/")


@dataclass
class Block:
    doc: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    @property
    def local_service(self) -> bool:
        """Its commands (not just a comment) talk to the local service."""
        return any(LOCAL_SERVICE in word for words in commands(self) for word in words)


def shell_blocks() -> list[Block]:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if m.group(1) in SHELL_LANGS:
                out.append(Block(doc, text.count("\n", 0, m.start()) + 2, m.group(2)))
    return out


def commands(block: Block) -> list[list[str]]:
    """The block's simple commands as word lists (continuations joined, comments dropped, split
    at ``&&``; ``$(...)`` stays inside its word)."""
    out = []
    for line in block.text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            if words[:cut]:
                out.append(words[:cut])
            words = words[cut + 1:]
    return out


def all_commands() -> list[tuple[Block, list[str]]]:
    return [(b, c) for b in shell_blocks() for c in commands(b)]


def command_id(item: tuple[Block, list[str]]) -> str:
    block, words = item
    return f"{block.where} {' '.join(words)[:60]}"


def fruitpipe_args(words: list[str]) -> list[str] | None:
    """The arguments after ``fruitpipe`` / ``.venv/bin/fruitpipe``, with the usage brackets of a
    synopsis (``[--cache DIR]``) opened; None when the command is not ours."""
    if not words or Path(words[0]).name != "fruitpipe":
        return None
    return [w.strip("[]") for w in words[1:] if w.strip("[]")]


def _parser():  # type: ignore[no-untyped-def]
    from fruitpipe.cli import build_parser
    return build_parser()


def _sub_options(name: str) -> set[str] | None:
    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    p = sub.choices.get(name)
    return None if p is None else set(p._option_string_actions)


# -- every command: what it is, and its static checks ----------------------------------------------

@pytest.mark.parametrize("item", all_commands(), ids=command_id)
def test_shown_command(item: tuple[Block, list[str]]) -> None:
    block, words = item
    for word in words:  # paths shown must exist
        for token in re.split(r"[=@\s]", word):
            if token.startswith("../shared/") and not SHARED.is_dir():
                continue  # the data beside the checkout is not here
            if token.startswith(PATH_ROOTS) and "$" not in token and "<" not in token:
                assert (REPO / token).exists(), f"{block.where}: {token} does not exist"
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        if "$(" in words[0] or words[0].partition("=")[2].startswith("<"):
            return  # NAME=$(...) or NAME=<placeholder>: an assignment for the block's next commands
        words = words[1:]  # NAME=value prefixes
    if words[:1] == ["export"]:
        return  # a variable for the commands after it
    if not words:
        return  # an assignment: used by the block's next commands
    args = fruitpipe_args(words)
    if args is not None:
        try:
            _parser().parse_args(args)
        except SystemExit as exc:
            assert exc.code == 0, f"{block.where}: `{' '.join(words)}` does not parse (see stderr)"
        return
    head = words[0]
    if head == "make":
        targets = [w for w in words[1:] if "=" not in w]
        proc = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{block.where}: make -n {targets}: {proc.stderr}"
        return
    if Path(head).name in ("python", "python3") and words[1:2] == ["-c"]:
        assert block.local_service, f"{block.where}: an inline program outside the local-service examples (run below)"
        return
    if head in ("python", "python3"):
        program = words[1:3] if words[1] == "-m" else words[1:2]
        rest = words[len(program) + 1:]
        proc = subprocess.run([sys.executable, *program, "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, f"{block.where}: {program} --help: {proc.stderr[-500:]}"
        for flag in (w.split("=")[0] for w in rest if w.startswith("--")):
            assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", proc.stdout), \
                f"{block.where}: {' '.join(program)} has no {flag}"
        return
    if head == "curl":
        assert block.local_service or any(v in " ".join(words) for v in AWS_VARIABLES), \
            f"{block.where}: a curl neither against the local service (run below) nor the deployed API"
        return
    assert head in NOT_RUN, (f"{block.where}: `{' '.join(words)}` is neither run nor checked here: make it "
                             "runnable offline or add its first word to NOT_RUN with the reason")


# -- inline `fruitpipe <command> ...` spans in prose ------------------------------------------------

def inline_spans() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.S | re.M)
        for m in re.finditer(r"`((?:\.venv/bin/)?fruitpipe [^`]+)`", text):
            out.append((f"{doc.relative_to(REPO)}", m.group(1)))
    return out


@pytest.mark.parametrize("where,span", inline_spans(), ids=lambda v: v if len(v) < 60 else v[:60])
def test_inline_fruitpipe_span(where: str, span: str) -> None:
    args = fruitpipe_args(shlex.split(span.replace("|", " ")))
    assert args, f"{where}: `{span}`"
    if args[0].startswith("-"):
        assert args[0] in ("--help", "--version"), f"{where}: `{span}`"
        return
    options = _sub_options(args[0])
    assert options is not None, f"{where}: `{span}`: there is no `fruitpipe {args[0]}`"
    words = [a.split("=")[0] for a in args[1:]]
    unknown = [w for w in words if w.startswith("-") and w not in options]
    assert not unknown, f"{where}: `{span}`: fruitpipe {args[0]} has no {unknown}"
    # a bare word right after the command would be a sub-sub-command, which the CLI does not have
    positional = [a.dest for a in _parser()._subparsers._group_actions[0].choices[args[0]]._positionals._group_actions]
    if len(args) > 1 and not args[1].startswith("-") and not positional:
        pytest.fail(f"{where}: `{span}`: fruitpipe {args[0]} takes no {args[1]!r}")


# -- the local-service blocks, run -----------------------------------------------------------------

def _wait_idle(url: str, timeout: float = 120.0) -> None:
    import json
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/retraining-status", timeout=10) as r:
            if json.loads(r.read())["state"] != "running":
                return
        time.sleep(0.3)
    raise AssertionError("retrain did not finish")


@needs_shared
@pytest.mark.slow
def test_local_service_blocks_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [b for b in shell_blocks() if b.local_service]
    assert len(blocks) >= 3, "the README's and docs/api.md's local examples"
    for env in ("FRUITPIPE_TOKEN", "FRUITPIPE_ADMIN_TOKEN", "FRUITPIPE_API"):
        monkeypatch.delenv(env, raising=False)
    # A checkout-like folder: var/admin-token as fruitpipe serve writes it, .venv, ../shared.
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "shared").symlink_to(SHARED)
    # The backbone provisioned into a fresh package cache, as `make run` does; then no variable.
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("FRUITPIPE_BACKBONE", "FRUITPIPE_MODEL_ZOO")}
    env.update(FRUITPIPE_CACHE=str(cache), PYTHONPATH=str(REPO), HOME=str(tmp_path),
               PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "fruitpipe.backbone", str(BACKBONE_DIR)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == str(cache / "tf2_mobilenet_v2_1.0_224_ptq.tflite")

    seed = small_dataset(tmp_path / "seed", "train", 3)
    evaluation = small_dataset(tmp_path / "eval", "test", 2, offset=50)
    backend = make_backend(work / "var", seed=seed, eval_dir=evaluation)  # the store `make run` serves
    # The tiny job trains, but uploads meet the shipped recipe's own guard (its seed data and frozen
    # evaluation set): every photo the examples upload must be new to the real model, as for a reader.
    from fruitpipe import recipe as rc
    from fruitpipe.evalset import UploadGuard
    shipped = rc.shipped(tmp_path / "recipe")
    shipped.prepare()
    backend.store.guard = UploadGuard(shipped.evaluation, shipped.train + shipped.validation, tmp_path / "recipe")
    (work / "var" / "admin-token").write_text(TOKEN + "\n")
    with live_server(make_app(backend)) as url:
        for block in blocks:
            script = ("set -euo pipefail\n"
                      # an HTTP error must fail the block, and each answer ends its line
                      "curl() { command curl --fail-with-body -sS \"$@\"; echo; }\n"
                      + block.text.replace(LOCAL_SERVICE, url))
            proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0, f"{block.where}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            if "/predict" in block.text or "fruitpipe predict" in block.text:
                assert '"predicted_class"' in proc.stdout, f"{block.where}: {proc.stdout[-500:]}"
            for shown in re.findall(r'# (\{"class_name".*\})$', block.text, re.M):  # an upload's summary, as shown
                assert json.loads(shown) in [json.loads(line) for line in proc.stdout.splitlines()
                                             if line.startswith('{"class_name"')], f"{block.where}: {proc.stdout[-1500:]}"
            _wait_idle(url)


# -- figures in the docs agree with results/*.json -------------------------------------------------

def _script(name: str):  # type: ignore[no-untyped-def]
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_doc_{name}", REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_tables_are_the_ones_results_json_gives() -> None:
    """README's and docs/benchmarks.md's tables are what `scripts/report.py --write` makes of results/."""
    report = _script("report")
    text = report.render()
    for doc, body in ((REPO / "docs" / "benchmarks.md", text), (REPO / "README.md", text.replace("### ", "#### "))):
        shown = re.search(re.escape(report.BEGIN) + r"\n(.*?)" + re.escape(report.END), doc.read_text(), re.S)
        assert shown and shown.group(1) == body, f"{doc.name}: run `python scripts/report.py --write`"
    import json
    assert json.loads(report.DASHBOARD_COMPARE.read_text()) == report.dashboard_compare(), (
        "fruitpipe/api/static/compare.json: run `python scripts/report.py --write`")


def test_cost_doc_is_generated_from_the_benchmarks() -> None:
    """docs/cost.md is `scripts/cost_estimate.py`'s output for results/bench_lambda.json and the
    Keras baseline of results/bench_predict.json (the figure docs/benchmarks.md shows)."""
    import json
    cost = _script("cost_estimate")
    expected = cost.estimate(json.loads((REPO / "results" / "bench_lambda.json").read_text()),
                             json.loads((REPO / "results" / "bench_predict.json").read_text()))
    assert (REPO / "docs" / "cost.md").read_text() == expected, "run `python scripts/cost_estimate.py`"


def test_readme_retrain_timings_are_the_measured_ones() -> None:
    """The Retraining section's prose quotes results/bench_retrain.json, and says when."""
    import json
    d = json.loads((REPO / "results" / "bench_retrain.json").read_text())
    r0 = d["runs"][0]
    second = r0["retrain_after_100"]
    text = " ".join((REPO / "README.md").read_text().split())
    loads = [r[k] for r in d["runs"] for k in ("load_at_start", "load_before_first", "load_before_second") if k in r]
    claim = (f"Measured {d['when'][:10]} on this shared 2-core machine at load average {min(loads):.1f}-{max(loads):.1f}: "
             f"first-start warm-up {r0['warm_up']['seconds']:.0f} s")
    assert claim in text
    assert (f"first retrain in a fresh store with 12 new photos {d['first_retrain_served_s_median']:.0f} s "
            f"(median of {len(d['runs'])} fresh stores)") in text
    assert f"a retrain with 100 more photos {(second['seconds_to_served'] or second['seconds_to_done']):.0f} s" in text


def test_every_cdk_context_key_is_documented() -> None:
    """docs/deploy.md names every context key the CDK app reads (infra/config.py and the DEFAULTS
    of infra/constructs/*.py), read from the source without importing aws_cdk."""
    import ast
    keys = set(re.findall(r'opt\("(\w+)"', (REPO / "infra" / "config.py").read_text()))
    for path in (REPO / "infra" / "constructs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(getattr(t, "id", None) == "DEFAULTS" for t in targets) and isinstance(node.value, ast.Dict):
                keys |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    assert {"stage", "memory", "retrainSchedule"} <= keys
    deploy = (REPO / "docs" / "deploy.md").read_text()
    missing = sorted(k for k in keys if f"`{k}`" not in deploy)
    assert not missing, f"docs/deploy.md does not document the context keys {missing}"
