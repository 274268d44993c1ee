"""The trained head: a small dense network evaluated with numpy at serving time.

Training uses Keras; serving must not import TensorFlow (3 s import, 1.6 GB), so the head is
exported as plain arrays (``head.npz``: ``kernel_0``, ``bias_0``, ``kernel_1``, ...) plus the
activation of each layer, recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

ACTIVATIONS = ("relu", "linear", "softmax")


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Head:
    kernels: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    activations: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.kernels) == len(self.biases) == len(self.activations)) or not self.kernels:
            raise ValueError("head needs one kernel, bias and activation per layer")
        for act in self.activations:
            if act not in ACTIVATIONS:
                raise ValueError(f"unknown activation {act!r}")

    @property
    def input_dim(self) -> int:
        return int(self.kernels[0].shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.kernels[-1].shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``float32 [N, input_dim]`` → ``float32 [N, output_dim]``."""
        h = np.asarray(x, dtype=np.float32)
        for kernel, bias, act in zip(self.kernels, self.biases, self.activations):
            h = h @ kernel + bias
            if act == "relu":
                np.maximum(h, 0.0, out=h)
            elif act == "softmax":
                h = softmax(h)
        return h

    def save(self, path: Path, dtype: str = "float32") -> None:
        """Write ``head.npz``; ``float16`` halves the size, ``int8`` quarters it (loading always computes
        in float32).

        ``int8`` stores each kernel row (one input feature) as int8 codes times a float32 row scale
        (``kernel_<i>_scale``): the first layer has the input standardization folded in, so its rows
        differ in magnitude by the inputs' spread and a per-row scale keeps each one precise.
        """
        arrays: dict[str, np.ndarray] = {}
        for i, (k, b) in enumerate(zip(self.kernels, self.biases)):
            if dtype == "int8":
                scale = np.maximum(np.abs(k).max(axis=1), 1e-12).astype(np.float32) / 127.0
                arrays[f"kernel_{i}"] = np.clip(np.rint(k / scale[:, None]), -127, 127).astype(np.int8)
                arrays[f"kernel_{i}_scale"] = scale
            else:
                arrays[f"kernel_{i}"] = k.astype(dtype)
            arrays[f"bias_{i}"] = b.astype(np.float32)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: Path, activations: Sequence[str]) -> "Head":
        with np.load(path, allow_pickle=False) as data:
            n = len(activations)
            kernels = tuple(
                np.ascontiguousarray(data[f"kernel_{i}"].astype(np.float32) * data[f"kernel_{i}_scale"][:, None])
                if f"kernel_{i}_scale" in data.files
                else np.ascontiguousarray(data[f"kernel_{i}"], dtype=np.float32)
                for i in range(n))
            biases = tuple(np.ascontiguousarray(data[f"bias_{i}"], dtype=np.float32) for i in range(n))
        return cls(kernels, biases, tuple(activations))
