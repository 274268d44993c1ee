"""Where the shipped default model bundle lives (``models/default`` in a checkout)."""

from __future__ import annotations

import os
from pathlib import Path


def default_model_dir() -> Path:
    """``$FRUITPIPE_MODEL`` if set, else the repository's ``models/default``."""
    env = os.environ.get("FRUITPIPE_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models" / "default"
