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
