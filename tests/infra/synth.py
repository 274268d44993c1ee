"""One real CDK synth for the infra tests (cdk-nag runs during it and fails it on any
unacknowledged finding)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


def synth(outdir: Path, context: dict[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """Synthesize the app with ``context`` into ``outdir``; the template and its path."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from infra.app import build_app
    app, stack = build_app(context or {}, outdir=str(outdir))
    app.synth()
    path = outdir / f"{stack.stack_name}.template.json"
    return json.loads(path.read_text()), path
