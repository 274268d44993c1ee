"""The head's input vector, built from the backbone outputs by a named recipe stored in the manifest.

``emb``: the pooled embedding alone (bundles made before the recipe existed, and every backbone
other than MobileNetV2: its width is the backbone's, e.g. 368 for RegNetX-200MF).
``emb+170mm+156mm``: the embedding, then the mean- and max-pooled channels of the feature maps
170 (7x7x320) and 156 (14x14x96): 1280 + 640 + 192 = 2112 values. The earlier maps keep local
texture (spots, bruises) that the final average pool blurs; +1% accuracy on val and test.
``emb+b17mm+156mm``: the same layout, but the 640 values of map 170 come from a *fine-tuned* copy of
block 17 (:mod:`fruitpipe.block`, stored in the bundle) run on the block's input (tensor 167):
:func:`with_block`. About +0.6% on val over the frozen features (docs/ml.md).
Training (through the embedding cache) and serving both call :func:`pool_maps`, :func:`with_block`
and :func:`head_input`, so the head sees the same numbers in both.
"""

from __future__ import annotations

from typing import Final, Sequence

import numpy as np

from .backbone import EMBEDDING_DIM, FEATURE_CHANNELS

LEGACY: Final[str] = "emb"
FROZEN: Final[str] = "emb+170mm+156mm"
FINETUNED: Final[str] = "emb+b17mm+156mm"
DEFAULT: Final[str] = FINETUNED
RECIPES: Final[dict[str, int]] = {LEGACY: EMBEDDING_DIM, FROZEN: EMBEDDING_DIM + 2 * sum(FEATURE_CHANNELS),
                                  FINETUNED: EMBEDDING_DIM + 2 * sum(FEATURE_CHANNELS)}
POOLED_DIM: Final[int] = 2 * sum(FEATURE_CHANNELS)  # what the cache stores besides the embedding


def pool_maps(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Dequantized maps ``[N, H, W, C]`` → ``float32 [N, sum 2C]``: per map, channel means then maxima."""
    parts: list[np.ndarray] = []
    for m in maps:
        flat = m.reshape(m.shape[0], -1, m.shape[-1])
        parts += [flat.mean(axis=1, dtype=np.float32), flat.max(axis=1)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def uses_block(recipe: str) -> bool:
    """Whether ``recipe`` needs a fine-tuned block 17 (and the block input) besides the pooled maps."""
    return recipe == FINETUNED


def with_block(pooled: np.ndarray, block_out: np.ndarray) -> np.ndarray:
    """``pooled`` ``[N, 832]`` with the part from map 170 replaced by the pooled fine-tuned block output."""
    out = np.array(pooled, dtype=np.float32, copy=True)
    out[:, : 2 * FEATURE_CHANNELS[0]] = pool_maps([block_out])
    return out


def input_dim(recipe: str, embedding_dim: int = EMBEDDING_DIM) -> int:
    """The head's input width for ``recipe`` on a backbone whose embedding has ``embedding_dim``
    values (default MobileNetV2's 1280; the other recipes exist for MobileNetV2 only).

    Raises:
        ValueError: unknown recipe, or a MobileNetV2-only recipe with another embedding size.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown head feature recipe {recipe!r} (known: {', '.join(RECIPES)})")
    if recipe == LEGACY:
        return embedding_dim
    if embedding_dim != EMBEDDING_DIM:
        raise ValueError(f"head feature recipe {recipe!r} needs MobileNetV2's feature maps; "
                         f"use {LEGACY!r} on other backbones")
    return RECIPES[recipe]


def head_input(recipe: str, embedding: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
    """The head's input for ``recipe`` from the embedding ``[N, D]`` and pooled maps ``[N, 832]``."""
    input_dim(recipe, embedding.shape[1])
    if recipe == LEGACY:
        return embedding
    if pooled is None:
        raise ValueError(f"head recipe {recipe!r} needs the pooled feature maps")
    return np.concatenate([embedding, pooled], axis=1).astype(np.float32)
