"""Not-a-fruit and uncertainty rejection, calibrated in training and stored in the manifest.

The six-way head always answers one of six classes, so it cannot by itself say "this is a
person". Three signals, each cheap, decide instead:

* ``fruit_mass``: the backbone's own ImageNet classifier (its 1x1 conv, reused on the embedding)
  puts probability mass on the ImageNet classes that fruit photos activate (learned from the
  training set: Granny Smith, orange, banana, lemon, ...). A person, a dog or a laptop puts its
  mass elsewhere. This generalises to things never seen in training, because ImageNet has.
* ``similarity``: cosine similarity of the embedding to the nearest class prototype (k-means
  centres of the training embeddings). Catches things ImageNet confuses with fruit.
* ``confidence``: the head's top probability; low confidence on a fruit → ``uncertain``.

Thresholds are chosen on validation fruit so that only a small, recorded share of real fruit is
rejected (see the training job), and stored with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from .labels import LABELS, Verdict, freshness

FILE: Final[str] = "rejection.npz"


@dataclass(frozen=True)
class Rejector:
    imagenet_classes: np.ndarray  # int indices into the 1001 ImageNet outputs
    prototypes: np.ndarray  # float32 [K, 1280], rows L2-normalised
    min_fruit_mass: float
    min_similarity: float
    min_confidence: float

    @classmethod
    def from_manifest(cls, rejection: dict[str, Any], bundle_dir: Path) -> "Rejector":
        with np.load(Path(bundle_dir) / rejection.get("file", FILE), allow_pickle=False) as data:
            prototypes = np.asarray(data["prototypes"], dtype=np.float32)
        return cls(
            imagenet_classes=np.asarray(rejection["imagenet_classes"], dtype=np.int64),
            prototypes=prototypes,
            min_fruit_mass=float(rejection["min_fruit_mass"]),
            min_similarity=float(rejection["min_similarity"]),
            min_confidence=float(rejection["min_confidence"]),
        )

    def scores(self, embeddings: np.ndarray, imagenet_probs: np.ndarray,
               probs: np.ndarray) -> dict[str, np.ndarray]:
        """Per-image signals, each ``float32 [N]``."""
        return compute_scores(embeddings, imagenet_probs, probs, self.imagenet_classes, self.prototypes)

    def verdicts(self, scores: dict[str, np.ndarray], top: np.ndarray) -> list[Verdict]:
        out: list[Verdict] = []
        for i, cls_idx in enumerate(top):
            if scores["fruit_mass"][i] < self.min_fruit_mass or scores["similarity"][i] < self.min_similarity:
                out.append("not_fruit")
            elif scores["confidence"][i] < self.min_confidence:
                out.append("uncertain")
            else:
                out.append(freshness(LABELS[int(cls_idx)]))
        return out


def compute_scores(embeddings: np.ndarray, imagenet_probs: np.ndarray, probs: np.ndarray,
                   imagenet_classes: np.ndarray, prototypes: np.ndarray) -> dict[str, np.ndarray]:
    """The signals, as a free function so calibration in training uses the exact same code."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, 1e-12)
    similarity = (unit @ prototypes.T).max(axis=1) if len(prototypes) else np.ones(len(unit))
    fruit_mass = imagenet_probs[:, imagenet_classes].sum(axis=1)
    return {
        "fruit_mass": fruit_mass.astype(np.float32),
        "similarity": similarity.astype(np.float32),
        "confidence": probs.max(axis=1).astype(np.float32),
    }
