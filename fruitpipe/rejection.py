"""Not-a-fruit and uncertainty rejection, calibrated in training and stored in the manifest.

The six-way head always answers one of six classes, so it cannot by itself say "this is a
person". Three cheap signals decide instead (measured on these data, see docs/ml.md):

* ``similarity``: cosine similarity of the embedding to the nearest class prototype (k-means
  centres of the training embeddings, original and mirrored). This is the main signal: fruit
  photos sit at 0.65-0.95, people, animals, objects, textures and synthetic images below ~0.6.
  It is one matrix product, so it costs nothing at serving time.
* ``other_fruit``: the backbone's own ImageNet classifier (its 1x1 conv, reused on the
  embedding) — the largest probability it gives to another fruit or a vegetable it knows
  (strawberry, lemon, pineapple, fig, pomegranate, broccoli, mushroom, ...). Another fruit on a
  white table can look close to our fruit in embedding space; ImageNet has *seen* lemons and
  strawberries and says so. Because some real oranges look like lemons to ImageNet, this signal
  rejects only together with a stricter similarity threshold (``min_similarity_other``).
* ``confidence``: the head's top probability; a low one on a fruit → ``uncertain``.

Verdict: ``not_fruit`` if ``similarity < min_similarity``, or if ``other_fruit >= max_other_fruit``
and ``similarity < min_similarity_other``; else ``uncertain`` if ``confidence < min_confidence``;
else fresh/rotten. Thresholds are chosen on validation fruit so that a small recorded share of
real fruit is rejected (the training job), and stored with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

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
        )

    def scores(self, embeddings: np.ndarray, imagenet_probs: np.ndarray,
               probs: np.ndarray) -> dict[str, np.ndarray]:
        """Per-image signals, each ``float32 [N]``."""
        return compute_scores(embeddings, imagenet_probs, probs, self.other_classes, self.prototypes)

    def not_fruit(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Boolean ``[N]``: the images this rule answers ``not_fruit``."""
        return reject_mask(scores, self.min_similarity, self.max_other_fruit, self.min_similarity_other)

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


def reject_mask(scores: dict[str, np.ndarray], min_similarity: float, max_other_fruit: float,
                min_similarity_other: float) -> np.ndarray:
    """The not-fruit rule, shared by calibration (training) and serving."""
    sim = scores["similarity"]
    return (sim < min_similarity) | ((scores["other_fruit"] >= max_other_fruit) & (sim < min_similarity_other))


def compute_scores(embeddings: np.ndarray, imagenet_probs: np.ndarray, probs: np.ndarray,
                   other_classes: np.ndarray, prototypes: np.ndarray) -> dict[str, np.ndarray]:
    """The signals, as a free function so calibration in training uses the exact same code."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, 1e-12)
    similarity = (unit @ prototypes.T).max(axis=1) if len(prototypes) else np.ones(len(unit))
    other = imagenet_probs[:, other_classes].max(axis=1) if len(other_classes) else np.zeros(len(unit))
    return {
        "similarity": similarity.astype(np.float32),
        "other_fruit": other.astype(np.float32),
        "confidence": probs.max(axis=1).astype(np.float32),
    }


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
