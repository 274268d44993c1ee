"""One Lambda invocation as the python3.12 runtime makes it, for the state-machine tests.

    python3.12 -I -S lambda_runtime.py HANDLER PATH...   (the event as JSON on stdin)

Only ``PATH...`` (the function asset, the layer, the runtime's boto3) is on ``sys.path``. The last
stdout line is ``{"ok": result}`` or ``{"error": {errorType, errorMessage, stackTrace}}`` (the
runtime's error payload; Step Functions names the error after ``errorType``).
"""

import importlib
import json
import sys
import traceback

handler, *paths = sys.argv[1:]
sys.path[:0] = paths
event = json.load(sys.stdin)
module, name = handler.rsplit(".", 1)
try:
    result = getattr(importlib.import_module(module), name)(event, None)
    line = {"ok": result}
except Exception as exc:  # noqa: BLE001 - the runtime reports every exception as the invocation's error
    line = {"error": {"errorType": type(exc).__name__, "errorMessage": str(exc),
                      "stackTrace": traceback.format_tb(exc.__traceback__)}}
print("\n" + json.dumps(line, default=str), flush=True)
