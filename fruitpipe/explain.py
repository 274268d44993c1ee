"""Where the model looked: a class activation map over the fine-tuned block's 7x7 feature map.

Method: Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017, https://arxiv.org/abs/1610.02391) taken at the one spatial
map the head reads directly: the output of the fine-tuned block 17, ``float32 [7, 7, 320]``, which
the head sees mean- and max-pooled (:mod:`fruitpipe.features`). Because the head is a small ReLU MLP,
the gradient of the class logit with respect to the head's input is exact and cheap (one backward
pass through two dense layers in numpy). A position's evidence is what it contributes to the class
logit through both pools: ``sum_k g_mean[k] * F[i, j, k] / 49`` plus, for each channel whose
maximum sits at that position, ``g_max[k] * F[i, j, k]``. Negative evidence is clipped to zero
(as in Grad-CAM) and the map is scaled to sum to 1.

Limits: the map is 7x7 (one cell is 32x32 input pixels, on the 224x224 stretched image); it shows
the evidence that flows through block 17, not the 1280-d embedding or the 14x14 map (about 40% of the
head's input), so it is a guide to where the evidence is, not a segmentation. Only bundles with a
fine-tuned block (recipe ``emb+b17mm+156mm``, the default) can be explained on MobileNetV2. Bundles on
other backbones (recipe ``emb``) get the same Grad-CAM at the backbone's last feature map, whose
global average is the embedding (:func:`_explain_pooled_map`; 7x7, 8x8 for EfficientNet-Lite1);
MobileNetV3-Small has no such map and answers :class:`CannotExplain` (409 over HTTP).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from . import features
from .backbone import EMBEDDING_DIM, FEATURE_CHANNELS
from .head import Head
from .labels import LABELS

METHOD: Final[str] = "grad-cam, fine-tuned block 17 (7x7)"


class CannotExplain(ValueError):
    """The model has no spatial map the head reads (a recipe without a fine-tuned block)."""


def logit_gradient(head: Head, x: np.ndarray, cls: int) -> np.ndarray:
    """Exact gradient of class ``cls``'s logit (pre-softmax) w.r.t. the head input ``x`` ``[D]``: ``float32 [D]``."""
    h = np.asarray(x, dtype=np.float32)
    active: list[np.ndarray | None] = []
    for kernel, bias, act in zip(head.kernels, head.biases, head.activations):
        z = h @ kernel + bias
        active.append(z > 0 if act == "relu" else None)
        h = np.maximum(z, 0.0) if act == "relu" else z
    g = np.zeros(head.output_dim, dtype=np.float32)
    g[cls] = 1.0
    for kernel, mask in zip(reversed(head.kernels), reversed(active)):
        if mask is not None:
            g = g * mask
        g = kernel @ g
    return g.astype(np.float32)


def activation_map(head: Head, head_input: np.ndarray, block_out: np.ndarray, cls: int) -> np.ndarray:
    """Grad-CAM of class ``cls`` for one image.

    Args:
        head: the bundle's head.
        head_input: the head's input for the image, ``float32 [2112]`` (recipe ``emb+b17mm+156mm``).
        block_out: the fine-tuned block's output for the image, ``float32 [7, 7, 320]``.
        cls: index of the class to explain (usually the predicted one).

    Returns:
        ``float32 [7, 7]``, non-negative, summing to 1 (all zeros when no position supports the class).
    """
    g = logit_gradient(head, head_input, cls)
    c = FEATURE_CHANNELS[0]
    g_mean, g_max = g[EMBEDDING_DIM:EMBEDDING_DIM + c], g[EMBEDDING_DIM + c:EMBEDDING_DIM + 2 * c]
    fmap = np.asarray(block_out, dtype=np.float32)
    h, w, _ = fmap.shape
    cam = fmap @ g_mean / (h * w)
    flat = fmap.reshape(h * w, c)
    argmax = flat.argmax(axis=0)  # where each channel's max-pool takes its value
    np.add.at(cam.reshape(-1), argmax, flat[argmax, np.arange(c)] * g_max)
    cam = np.maximum(cam, 0.0)
    total = float(cam.sum())
    return (cam / total if total > 0 else cam).astype(np.float32)


def explain(classifier, image: np.ndarray, cls: int | None = None) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Explain one preprocessed image ``uint8 [224, 224, 3]`` with ``classifier`` (a
    :class:`~fruitpipe.classifier.Classifier`).

    Returns ``{"method", "explained_class", "grid"}``: ``grid`` is the 7x7 map as nested lists (rows
    top to bottom, over the whole stretched image). Deterministic for a given image and bundle.

    Raises:
        CannotExplain: the bundle has no fine-tuned block.
    """
    if classifier.block is None:
        return _explain_pooled_map(classifier, image, cls)
    emb, pooled, block_in = classifier.backbone.outputs(np.asarray(image, dtype=np.uint8)[None])
    block_out = classifier.block(classifier.backbone.block_input(block_in))
    x = features.head_input(classifier.recipe, emb, features.with_block(pooled, block_out))
    if cls is None:
        cls = int(classifier.head(x)[0][:len(LABELS)].argmax())  # a 7th (not_fruit) output is no class
    cam = activation_map(classifier.head, x[0], block_out[0], cls)
    return {"method": METHOD, "explained_class": LABELS[cls], "grid": np.round(cam, 4).tolist()}


def _explain_pooled_map(classifier, image: np.ndarray, cls: int | None) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Grad-CAM for a head on the embedding alone (recipe ``emb``, backbones other than MobileNetV2):
    at the backbone's last spatial map ``F [H, W, D]``, whose global average is the embedding, a
    position's evidence is ``F[i, j] . g / (H W)`` with ``g`` the exact gradient of the class logit
    w.r.t. the embedding (the average pool is linear), clipped at zero and scaled to sum to 1."""
    spec = classifier.backbone.spec
    if classifier.recipe != features.LEGACY or spec.cam_tensor is None:
        raise CannotExplain(f"model {classifier.version} (backbone {spec.name}, recipe {classifier.recipe!r}) "
                            "has no spatial map the head reads; Grad-CAM needs MobileNetV2's fine-tuned "
                            "block 17 or a backbone whose embedding is the average of a feature map")
    emb, fmap = classifier.backbone.feature_map(image)
    x = features.head_input(features.LEGACY, emb, None)
    if cls is None:
        cls = int(classifier.head(x)[0][:len(LABELS)].argmax())
    g = logit_gradient(classifier.head, x[0], cls)
    h, w, _ = fmap.shape
    cam = np.maximum(fmap @ g / (h * w), 0.0)
    total = float(cam.sum())
    cam = (cam / total if total > 0 else cam).astype(np.float32)
    return {"method": f"grad-cam, {spec.name} last feature map ({h}x{w})", "explained_class": LABELS[cls],
            "grid": np.round(cam, 4).tolist()}
