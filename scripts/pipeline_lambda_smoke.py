"""Run inside an isolated CPython 3.12 (``python3.12 -I -S``) with only the Lambda assets on
``sys.path``: the retrain step handlers as the state machine calls them (prepare → evaluate →
publish → report), one JSON line per step. The model archive stands in for SageMaker's output.

    python3.12 -I -S scripts/pipeline_lambda_smoke.py FUNCTION_DIR LAYER_DIR RUNTIME_DIR MODEL_ARCHIVE_URI

The environment (buckets, AWS_ENDPOINT_URL, FRUITPIPE_BACKBONE) comes from the caller.
"""

import json
import sys

function_dir, layer_dir, runtime_dir, archive = sys.argv[1:5]
sys.path[:0] = [function_dir, layer_dir, runtime_dir]

from functions.pipeline.evaluate import handler as evaluate  # noqa: E402
from functions.pipeline.prepare import handler as prepare  # noqa: E402
from functions.pipeline.publish import handler as publish  # noqa: E402
from functions.pipeline.report import handler as report  # noqa: E402

state = {"input": {"trigger": "manual"}}
state["prepare"] = prepare.handler({"input": state["input"]}, None)
print(json.dumps({"step": "prepare", "out": state["prepare"]}), flush=True)
state["evaluation"] = evaluate.handler({"model_artifacts": archive,
                                        "validation_manifest": state["prepare"]["validation_manifest"],
                                        "version": state["prepare"]["version"]}, None)
print(json.dumps({"step": "evaluate", "out": state["evaluation"]}), flush=True)
ev = state["evaluation"]
state["publish"] = publish.handler({"model_artifacts": archive, "version": ev["candidate_version"],
                                    "baseline": ev["baseline"], "metrics": ev["candidate"],
                                    "reason": ev["reason"]}, None)
print(json.dumps({"step": "publish", "out": state["publish"]}), flush=True)
out = report.handler({"prepare": state["prepare"], "evaluation": ev}, None)
import numpy, ai_edge_litert  # noqa: E401,E402

print(json.dumps({"step": "report", "out": out, "python": sys.version.split()[0],
                  "paths": {m.__name__: m.__file__ for m in (numpy, ai_edge_litert, evaluate)}}), flush=True)
