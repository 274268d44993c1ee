"""CDK app entry point (``cdk.json`` runs ``python infra/app.py``; ``make synth`` does too).

Context keys (``-c key=value``): stage, architecture (x86_64|arm64), memory, reservedConcurrency,
ingestConcurrency, throttleRate, throttleBurst, retain (true|false), backbones (comma-separated
names packaged in the functions; MobileNetV2 always). Builds the layer and the
function asset first when they are missing (``scripts/build_layer.py``), then synthesizes with the
cdk-nag AwsSolutions checks; a finding without an acknowledgement fails the synth.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# `python infra/app.py` puts infra/ first on sys.path, where infra/constructs/ would shadow the
# `constructs` library; import everything as the `infra` package from the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "infra"]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aws_cdk as cdk  # noqa: E402
from cdk_nag import AwsSolutionsChecks  # noqa: E402

from infra.config import StackConfig  # noqa: E402
from infra.stack import FruitpipeStack  # noqa: E402


def _builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_layer", REPO / "scripts" / "build_layer.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def cdk_json_context() -> dict:
    """``cdk.json``'s context. The CDK CLI passes it in ``CDK_CONTEXT_JSON``; a plain
    ``python infra/app.py`` (make synth, the tests) reads it here so both synthesize the same."""
    if "CDK_CONTEXT_JSON" in os.environ:
        return {}
    return dict(json.loads((REPO / "cdk.json").read_text())["context"])


def cli_context(argv: list[str]) -> dict:
    """``-c key=value`` pairs, as the CDK CLI accepts them."""
    out: dict = {}
    for i, arg in enumerate(argv):
        if arg in ("-c", "--context") and i + 1 < len(argv) and "=" in argv[i + 1]:
            key, value = argv[i + 1].split("=", 1)
            out[key] = value
    return out


def build_app(context: dict | None = None, outdir: str | None = None) -> tuple[cdk.App, FruitpipeStack]:
    """The app with its one stack and cdk-nag attached (used by ``main`` and the tests)."""
    app = cdk.App(context={**cdk_json_context(), **(context or {})}, outdir=outdir)
    config = StackConfig.from_context(app.node.try_get_context)
    builder = _builder()
    layer_dir = builder.ensure_layer(config.architecture)
    function_dir = builder.ensure_function(config.backbones)
    stack = FruitpipeStack(
        app, config.stack_name, config=config, layer_dir=layer_dir, function_dir=function_dir,
        env=cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
                            region=os.environ.get("CDK_DEFAULT_REGION")),
        description=f"fruitpipe fresh/rotten fruit classifier ({config.stage})",
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))  # type: ignore[attr-defined]
    return app, stack


def main() -> None:
    app, _ = build_app(cli_context(sys.argv[1:]))
    app.synth()


if __name__ == "__main__":
    main()
