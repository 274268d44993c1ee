"""The backbone's last inverted-residual block (``expanded_conv_17``), fine-tuned and run in numpy.

Why: a head on frozen features tops out near 97.9% on ``val``; training this one block together
with the head wins about +0.6 pp (docs/ml.md). The rest of the backbone stays the frozen int8
LiteRT graph, which also hands us the block's input (tensor 167, ``[N, 7, 7, 160]``), so serving
costs one small numpy block (under 1 ms) and no TensorFlow.

The block: expand 1x1 (160→960) → ReLU6 → depthwise 3x3 (same padding) → ReLU6 → project 1x1
(960→320), linear, batch norm already folded into the weights (as in the TFLite graph). Its
output has the shape of tensor 170, so the head's input keeps its layout (see
:mod:`fruitpipe.features`). ``block17.npz`` stores each kernel as int8 codes with one float32
scale per output channel, like the backbone itself: ~470 KB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

FILE: Final[str] = "block17.npz"
INPUT_SHAPE: Final[tuple[int, int, int]] = (7, 7, 160)
# (kernel, bias) tensor indices of block 17 in the pinned backbone, and the name each must carry.
TENSORS: Final[dict[str, tuple[int, int]]] = {"expand": (99, 100), "depthwise": (101, 102), "project": (103, 104)}
_BATCH: Final[int] = 64  # rows per numpy pass: keeps the 960-channel intermediates in cache-sized chunks


@dataclass(frozen=True)
class Block:
    """Float32 weights: ``expand [160, 960]``, ``depthwise [3, 3, 960]``, ``project [960, 320]``, biases."""

    expand: np.ndarray
    expand_bias: np.ndarray
    depthwise: np.ndarray
    depthwise_bias: np.ndarray
    project: np.ndarray
    project_bias: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``float32 [N, 7, 7, 160]`` → ``float32 [N, 7, 7, 320]``."""
        x = np.asarray(x, dtype=np.float32)
        out = np.empty((*x.shape[:3], self.project.shape[1]), dtype=np.float32)
        for start in range(0, len(x), _BATCH):
            out[start:start + _BATCH] = self._run(x[start:start + _BATCH])
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        n, h, w, _ = x.shape
        e = x.reshape(-1, x.shape[-1]) @ self.expand + self.expand_bias
        np.clip(e, 0.0, 6.0, out=e)
        padded = np.zeros((n, h + 2, w + 2, e.shape[-1]), dtype=np.float32)
        padded[:, 1:-1, 1:-1] = e.reshape(n, h, w, -1)
        d = np.empty((n, h, w, e.shape[-1]), dtype=np.float32)
        d[...] = self.depthwise_bias
        for i in range(3):
            for j in range(3):
                d += padded[:, i:i + h, j:j + w] * self.depthwise[i, j]
        np.clip(d, 0.0, 6.0, out=d)
        return (d.reshape(-1, d.shape[-1]) @ self.project + self.project_bias).reshape(n, h, w, -1)

    def keras_weights(self) -> dict[str, list[np.ndarray]]:
        """The weights in Keras layer layout (Conv2D 1x1, DepthwiseConv2D 3x3, Conv2D 1x1)."""
        return {"expand": [self.expand[None, None], self.expand_bias],
                "depthwise": [self.depthwise[:, :, :, None], self.depthwise_bias],
                "project": [self.project[None, None], self.project_bias]}

    @classmethod
    def from_keras(cls, weights: dict[str, list[np.ndarray]]) -> "Block":
        (ek, eb), (dk, db), (pk, pb) = (weights[k] for k in ("expand", "depthwise", "project"))
        return cls(*(np.ascontiguousarray(a, dtype=np.float32)
                     for a in (ek[0, 0], eb, dk[:, :, :, 0], db, pk[0, 0], pb)))

    @classmethod
    def from_backbone(cls, path: Path) -> "Block":
        """The pinned backbone's own block 17, dequantized (per-channel int8 → float32)."""
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
        details = {d["index"]: d for d in it.get_tensor_details()}

        def deq(index: int) -> np.ndarray:
            q = details[index]["quantization_parameters"]
            values = it.get_tensor(index).astype(np.float32)
            shape = [1] * values.ndim
            shape[q["quantized_dimension"]] = -1
            return (values - q["zero_points"].reshape(shape)) * q["scales"].reshape(shape)

        for name, (kernel, _) in TENSORS.items():
            if f"expanded_conv_17/{name}" not in details[kernel]["name"]:
                raise ValueError(f"backbone tensor {kernel} is {details[kernel]['name']!r}, not block 17's {name}")
        (ek, eb), (dk, db), (pk, pb) = ((deq(k), deq(b)) for k, b in TENSORS.values())
        # TFLite layouts: conv [out, 1, 1, in], depthwise [1, 3, 3, channels].
        return cls(*(np.ascontiguousarray(a, dtype=np.float32)
                     for a in (ek[:, 0, 0, :].T, eb, dk[0], db, pk[:, 0, 0, :].T, pb)))

    def save(self, path: Path) -> None:
        """int8 codes with a float32 scale per output channel (the kernel's last axis); float32 biases."""
        arrays: dict[str, np.ndarray] = {}
        for name in ("expand", "depthwise", "project"):
            kernel = getattr(self, name)
            scale = np.maximum(np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0), 1e-12) / 127.0
            arrays[name] = np.clip(np.rint(kernel / scale), -127, 127).astype(np.int8)
            arrays[f"{name}_scale"] = scale.astype(np.float32)
            arrays[f"{name}_bias"] = getattr(self, f"{name}_bias").astype(np.float32)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Block":
        with np.load(path, allow_pickle=False) as data:
            parts: list[np.ndarray] = []
            for name in ("expand", "depthwise", "project"):
                parts.append(np.ascontiguousarray(data[name].astype(np.float32) * data[f"{name}_scale"]))
                parts.append(np.ascontiguousarray(data[f"{name}_bias"], dtype=np.float32))
        block = cls(*parts)
        if block.expand.shape != (INPUT_SHAPE[-1], block.depthwise.shape[-1]) or \
                block.project.shape[0] != block.depthwise.shape[-1]:
            raise ValueError(f"{path.name}: block weights have inconsistent shapes")
        return block
