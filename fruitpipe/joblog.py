"""How the training job reports: machine-readable lines for programs, a short view for people.

Not on a terminal (SageMaker, the local retrain runner, a pipe), every report is a flushed line
on stdout: ``stage=<name>``, ``progress=<0-100>`` and ``name=value`` metrics, which SageMaker's
metric definitions scrape and :mod:`fruitpipe.backends.local_run` parses. On a terminal
(``fruitpipe train`` by hand) stages are short lines on stderr, each fit's epochs are one tqdm
bar, and the native libraries' start-up noise (TensorFlow, absl, XNNPACK) is held back.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator


def interactive() -> bool:
    """True when a person reads the job's output: stdout is a terminal."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stdout
        return False


def log(**values: Any) -> None:
    """``name=value`` lines on stdout, flushed (floats to 6 significant digits)."""
    for name, value in values.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        print(f"{name}={value}", flush=True)


def stage(name: str) -> None:
    """The job enters stage ``name``: ``stage=<name>`` for programs, ``· <name>`` on a terminal."""
    if interactive():
        print(f"· {name.replace('_', ' ')}", file=sys.stderr, flush=True)
    else:
        print(f"stage={name}", flush=True)


class Epochs:
    """Epoch reports of one fit of ``epochs`` epochs, numbered from ``offset + 1`` out of ``total``
    (default ``offset + epochs``) for a job made of several fits.

    Programs get ``progress=<percent of total>`` then ``epoch=N`` and one ``name=value`` line per
    Keras log (``train_loss``, ``val_accuracy``, ...); a terminal gets one bar with the last
    epoch's figures.
    """

    def __init__(self, epochs: int, offset: int = 0, total: int | None = None, desc: str = "epochs") -> None:
        self.offset = offset
        self.total = max(1, total if total is not None else offset + epochs)
        self.bar = None
        if interactive():
            from tqdm import tqdm
            self.bar = tqdm(total=epochs, desc=desc, unit="epoch", file=sys.stderr, leave=True)

    def end(self, epoch: int, logs: dict[str, Any] | None) -> None:
        """Keras' ``on_epoch_end``: ``epoch`` is 0-based within this fit."""
        values = {k if k.startswith("val_") else f"train_{k}": float(v) for k, v in (logs or {}).items()}
        if self.bar is not None:
            short = {"train_loss": "loss", "train_accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
            self.bar.set_postfix({short[k]: f"{v:.3f}" for k, v in values.items() if k in short}, refresh=False)
            self.bar.update(1)
            return
        print(f"progress={int(100 * (self.offset + epoch + 1) / self.total)}", flush=True)
        log(epoch=self.offset + epoch + 1, **values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def keras_callback(epochs: Epochs) -> Any:
    """A Keras callback that hands every epoch's logs to ``epochs`` and closes it at the end."""
    import keras

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            epochs.end(epoch, logs)

        def on_train_end(self, logs: dict | None = None) -> None:
            epochs.close()
    return Report()


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """On a terminal: what native libraries write straight to file descriptor 2 (TensorFlow's and
    absl's start-up lines, LiteRT's "Created TensorFlow Lite XNNPACK delegate") goes to a
    temporary file, while Python's ``sys.stderr`` (bars, errors, warnings) still reaches the
    terminal. If the block raises, the held-back text's last 40 lines are shown. Not on a terminal
    it does nothing: logs keep everything."""
    if not interactive():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    python_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        terminal = sys.stderr
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = python_stderr
        terminal.close()
        if failed:
            held.seek(0)
            tail = held.read().decode("utf-8", "replace").splitlines()[-40:]
            if tail:
                print("\n".join(tail), file=sys.stderr, flush=True)
        held.close()
