"""Not-a-fruit and uncertainty rejection, calibrated in training and stored in the manifest.

The six-way head always answers one of six classes, so it cannot by itself say "this is a
person". Three cheap signals decide instead (measured on these data, see docs/ml.md):

* ``similarity``: cosine similarity of the embedding to the nearest class prototype (k-means
  centres of the training embeddings, original and mirrored). This is the main signal: fruit
  photos sit at 0.65-0.95, people, animals, objects, textures and synthetic images below ~0.6.
  It is one matrix product, so it costs nothing at serving time.
* ``zoom_similarity``: a second look, only for images the first one would reject: the best
  ``similarity`` of the four quadrants, each enlarged to full size
  (:func:`fruitpipe.imaging.zoom_views`). A photo of many small fruit (bananas laid out on a
  cloth, a bowl of oranges) is far from the single-fruit training photos as a whole, but each
  quadrant shows a fruit at the scale the model knows. Its bar (``min_similarity_zoom``) is set
  above every calibration not-fruit image the first look rejects, so it accepts no more of
  them; it costs four more backbone passes, paid only by rejected (mostly not-fruit) images.
* ``other_fruit``: the backbone's own ImageNet classifier (its 1x1 conv, reused on the
  embedding) — the largest probability it gives to another fruit or a vegetable it knows
  (strawberry, lemon, pineapple, fig, pomegranate, broccoli, mushroom, ...). Another fruit on a
  white table can look close to our fruit in embedding space; ImageNet has *seen* lemons and
  strawberries and says so. Because some real oranges look like lemons to ImageNet, this signal
  rejects only together with a stricter similarity threshold (``min_similarity_other``).
* ``confidence``: the head's top probability; a low one on a fruit → ``uncertain``.
* ``not_fruit`` (bundles whose head has a seventh output, ``head.outputs`` in the manifest): that
  output's probability. The head learnt it from real photos of other produce, packages and
  animals (issue 11), so it knows what a tomato or a pear looks like, which the distances to fruit
  prototypes cannot. ``max_not_fruit`` is its bar. The six class probabilities are renormalised
  over the six classes (:func:`split_not_fruit`), so the API still returns six.

Verdict: ``not_fruit`` if ``similarity < min_similarity`` (and, when the bundle has a zoom bar,
``zoom_similarity < min_similarity_zoom``), or if ``other_fruit >= max_other_fruit`` and
``similarity < min_similarity_other``, or (seventh output) if ``not_fruit > max_not_fruit``; else ``uncertain`` if ``confidence < min_confidence``;
else fresh/rotten. Thresholds are chosen on validation fruit (and validation not-fruit images,
when given) by the training job, and stored with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Final

import numpy as np

from .labels import LABELS, Verdict, freshness

FILE: Final[str] = "rejection.npz"

# ImageNet outputs of this backbone (index 0 is "background", so ImageNet class i is output i+1)
# for fruits and vegetables that are NOT apples, bananas or oranges.
OTHER_PRODUCE: Final[dict[int, str]] = {
    937: "head cabbage", 938: "broccoli", 939: "cauliflower", 940: "zucchini",
    941: "spaghetti squash", 942: "acorn squash", 943: "butternut squash", 944: "cucumber",
    945: "artichoke", 946: "bell pepper", 947: "cardoon", 948: "mushroom", 950: "strawberry",
    952: "lemon", 953: "fig", 954: "pineapple", 956: "jackfruit", 957: "custard apple",
    958: "pomegranate", 989: "acorn", 990: "hip", 999: "ear (corn)",
}
# The ImageNet outputs of our own fruit, for reports: Granny Smith, orange, banana.
OWN_FRUIT: Final[dict[int, str]] = {949: "Granny Smith", 951: "orange", 955: "banana"}


@dataclass(frozen=True)
class Rejector:
    other_classes: np.ndarray  # int indices into the 1001 ImageNet outputs
    prototypes: np.ndarray  # float32 [K, 1280], rows L2-normalised
    min_similarity: float
    max_other_fruit: float
    min_similarity_other: float
    min_confidence: float
    min_similarity_zoom: float | None = None  # None: no second look (bundles calibrated without not-fruit images)
    max_not_fruit: float | None = None  # None: the head has no not_fruit output (bundles before issue 11)

    @classmethod
    def from_manifest(cls, rejection: dict[str, Any], bundle_dir: Path) -> "Rejector":
        with np.load(Path(bundle_dir) / rejection.get("file", FILE), allow_pickle=False) as data:
            prototypes = np.asarray(data["prototypes"], dtype=np.float32)
        return cls(
            other_classes=np.asarray(rejection["other_classes"], dtype=np.int64),
            prototypes=prototypes,
            min_similarity=float(rejection["min_similarity"]),
            max_other_fruit=float(rejection["max_other_fruit"]),
            min_similarity_other=float(rejection["min_similarity_other"]),
            min_confidence=float(rejection["min_confidence"]),
            min_similarity_zoom=_optional_float(rejection.get("min_similarity_zoom")),
            max_not_fruit=_optional_float(rejection.get("max_not_fruit")),
        )

    def scores(self, embeddings: np.ndarray, imagenet_probs: np.ndarray,
               probs: np.ndarray, not_fruit: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-image signals, each ``float32 [N]`` (``probs``: the six class probabilities;
        ``not_fruit``: the seventh output's probability, when the head has one)."""
        return compute_scores(embeddings, imagenet_probs, probs, self.other_classes, self.prototypes, not_fruit)

    def needs_second_look(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Boolean ``[N]``: the images whose ``zoom_similarity`` could still change the verdict
        (far from the prototypes, and not already rejected by the other-fruit rule)."""
        if self.min_similarity_zoom is None:
            return np.zeros(len(scores["similarity"]), dtype=bool)
        sim = scores["similarity"]
        other = (scores["other_fruit"] >= self.max_other_fruit) & (sim < self.min_similarity_other)
        return (sim < self.min_similarity) & ~other & ~_learnt(scores, self.max_not_fruit)

    def take_second_look(self, scores: dict[str, np.ndarray], zoom_of: Callable[[np.ndarray], np.ndarray]) -> None:
        """Add ``zoom_similarity`` to ``scores`` for the images that need it (see :func:`add_zoom`)."""
        add_zoom(scores, np.flatnonzero(self.needs_second_look(scores)), zoom_of)

    def not_fruit(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Boolean ``[N]``: the images this rule answers ``not_fruit``."""
        return reject_mask(scores, self.min_similarity, self.max_other_fruit, self.min_similarity_other,
                           self.min_similarity_zoom, self.max_not_fruit)

    def verdicts(self, scores: dict[str, np.ndarray], top: np.ndarray) -> list[Verdict]:
        reject = self.not_fruit(scores)
        out: list[Verdict] = []
        for i, cls_idx in enumerate(top):
            if reject[i]:
                out.append("not_fruit")
            elif scores["confidence"][i] < self.min_confidence:
                out.append("uncertain")
            else:
                out.append(freshness(LABELS[int(cls_idx)]))
        return out


def _learnt(scores: dict[str, np.ndarray], max_not_fruit: float | None) -> np.ndarray:
    """Boolean ``[N]``: rejected by the seventh output (never without a bar or that score)."""
    p = scores.get("not_fruit")
    if max_not_fruit is None or p is None:
        return np.zeros(len(scores["similarity"]), dtype=bool)
    return p > max_not_fruit


def split_not_fruit(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A head's softmax ``[N, 6]`` or ``[N, 7]`` → (the six class probabilities, renormalised to sum
    to 1, ``float32 [N, 6]``; the seventh ``not_fruit`` probability ``float32 [N]``, or None)."""
    if probs.shape[1] == len(LABELS):
        return probs, None
    six = probs[:, :len(LABELS)]
    return (six / np.maximum(six.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32), \
        probs[:, len(LABELS)].astype(np.float32)


def reject_mask(scores: dict[str, np.ndarray], min_similarity: float, max_other_fruit: float,
                min_similarity_other: float, min_similarity_zoom: float | None = None,
                max_not_fruit: float | None = None) -> np.ndarray:
    """The not-fruit rule, shared by calibration (training) and serving.

    ``scores["zoom_similarity"]`` (NaN where the second look was not taken) rescues a far image
    only when the bundle has a zoom bar and the image's zoomed quadrants clear it. With a
    ``max_not_fruit`` bar, ``scores["not_fruit"]`` above it rejects on its own.
    """
    sim = scores["similarity"]
    far = sim < min_similarity
    zoom = scores.get("zoom_similarity")
    if min_similarity_zoom is not None and zoom is not None:
        far &= ~(np.nan_to_num(zoom, nan=-1.0) >= min_similarity_zoom)
    return far | ((scores["other_fruit"] >= max_other_fruit) & (sim < min_similarity_other)) | _learnt(scores, max_not_fruit)


def add_zoom(scores: dict[str, np.ndarray], rows: np.ndarray, zoom_of: Callable[[np.ndarray], np.ndarray]) -> None:
    """Set ``scores["zoom_similarity"]``: ``zoom_of(rows)`` at ``rows``, NaN (look not taken) elsewhere."""
    zoom = np.full(len(scores["similarity"]), np.nan, dtype=np.float32)
    if len(rows):
        zoom[rows] = zoom_of(rows)
    scores["zoom_similarity"] = zoom


def prototype_similarity(embeddings: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity of each embedding to its nearest prototype, ``float32 [N]``."""
    if not len(prototypes):
        return np.ones(len(embeddings), dtype=np.float32)
    return (normalise(embeddings) @ prototypes.T).max(axis=1).astype(np.float32)


def zoom_threshold(rejected_zoom: np.ndarray, min_similarity: float) -> float:
    """The second look's bar: just above the zoom scores of every calibration not-fruit image
    the first look rejects, so the second look accepts none of them; never below ``min_similarity``.
    """
    if not len(rejected_zoom):
        return float(min_similarity)
    return float(max(min_similarity, np.nextafter(np.float32(np.max(rejected_zoom)), np.float32(np.inf))))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def compute_scores(embeddings: np.ndarray, imagenet_probs: np.ndarray, probs: np.ndarray,
                   other_classes: np.ndarray, prototypes: np.ndarray,
                   not_fruit: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The signals, as a free function so calibration in training uses the exact same code.
    ``probs``: the six class probabilities; ``not_fruit``: the seventh output, when there is one."""
    similarity = prototype_similarity(embeddings, prototypes)
    other = imagenet_probs[:, other_classes].max(axis=1) if len(other_classes) else np.zeros(len(embeddings))
    out = {
        "similarity": similarity,
        "other_fruit": other.astype(np.float32),
        "confidence": probs.max(axis=1).astype(np.float32),
    }
    if not_fruit is not None:
        out["not_fruit"] = np.asarray(not_fruit, dtype=np.float32)
    return out


def kmeans_prototypes(unit: np.ndarray, k: int, iterations: int = 25, seed: int = 0) -> np.ndarray:
    """Spherical k-means centres (L2-normalised rows) of L2-normalised embeddings."""
    rng = np.random.default_rng(seed)
    k = min(k, len(unit))
    centres = unit[rng.choice(len(unit), k, replace=False)].copy()
    for _ in range(iterations):
        assign = (unit @ centres.T).argmax(axis=1)
        for j in range(k):
            members = unit[assign == j]
            if len(members):
                centres[j] = members.mean(axis=0)
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return centres.astype(np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
