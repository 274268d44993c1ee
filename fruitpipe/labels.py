"""The six classes, in the fixed order every model and client relies on, and the verdicts."""

from __future__ import annotations

from typing import Final, Literal

LABELS: Final[tuple[str, ...]] = (
    "freshapples",
    "freshbanana",
    "freshoranges",
    "rottenapples",
    "rottenbanana",
    "rottenoranges",
)

Verdict = Literal["fresh", "rotten", "not_fruit", "uncertain"]
VERDICTS: Final[tuple[str, ...]] = ("fresh", "rotten", "not_fruit", "uncertain")

# Folder name used by `evaluate` (and calibration) for images that must be rejected.
OOD_FOLDER: Final[str] = "not_fruit"


def is_label(name: str) -> bool:
    """True when ``name`` is exactly one of the six class names."""
    return name in LABELS


def freshness(label: str) -> Verdict:
    """``fresh`` or ``rotten`` for a class name."""
    if label not in LABELS:
        raise ValueError(f"unknown class {label!r}")
    return "fresh" if label.startswith("fresh") else "rotten"


def answered_class(predicted_class: str, verdict: str) -> str:
    """The class an answer counts under in live statistics: the head's class, or ``not_fruit``.

    An image answered ``not_fruit`` (an astronaut) must not be counted under the head's top class,
    where it would show up as, say, a "rotten banana".
    """
    return OOD_FOLDER if verdict == "not_fruit" else predicted_class
