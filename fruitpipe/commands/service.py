"""``fruitpipe serve``: the local service (uvicorn + the local backend)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli import UsageError, command


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--store", type=Path, default=Path("var"), help="store folder (default ./var)")
    p.add_argument("--workers", type=int, default=None,
                   help="LiteRT interpreters serving predictions at once (default: number of cores)")
    p.add_argument("--seed-data", action="append", type=Path, default=None,
                   help="extra training-image folder(s) (<class>/*.jpg) used by retraining "
                        "(default ../shared/data/fruits/train when present; ../shared/data/fruits/val calibrates)")
    p.add_argument("--eval-data", type=Path, default=None,
                   help="evaluation folder for the promotion gate (default ../shared/data/fruits/test)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def build_app(store: Path, workers: int | None = None, seed_data: list[Path] | None = None,
              eval_data: Path | None = None, announce=print):  # type: ignore[no-untyped-def]
    """The app ``fruitpipe serve`` runs (also used by the load test)."""
    from ..api.app import create_app
    from ..api.settings import Settings, local_token
    from ..backends.local import TrainerConfig, create_local_backend

    config = TrainerConfig()
    if seed_data is not None:
        config.seed_dirs = list(seed_data)
    if eval_data is not None:
        config.eval_dir = eval_data
    backend = create_local_backend(store, trainer_config=config)
    token = local_token(store, announce=announce)
    settings = Settings(token_provider=lambda: token)
    if workers:
        settings.inference_workers = workers
    return create_app(backend, settings), token


def token_notice(store: Path) -> str:
    """Where the admin token comes from, for the start-up banner; never the token itself."""
    from ..api.settings import TOKEN_ENV, TOKEN_FILE
    if os.environ.get(TOKEN_ENV):
        return f"admin token: from ${TOKEN_ENV} (not shown)"
    path = store / TOKEN_FILE
    return f"admin token: in {path} (mode 0600), e.g. TOKEN=$(cat {path})"


@command("serve", _serve_args)
def _serve(args: argparse.Namespace) -> int:
    """Start the local service (dashboard, API, retraining) on http://HOST:PORT."""
    import uvicorn

    from ..api.server import uvicorn_config

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a valid port")
    if args.workers is not None and not 0 < args.workers <= 64:
        raise UsageError("--workers must be between 1 and 64")
    for d in (args.seed_data or []) + ([args.eval_data] if args.eval_data else []):
        if not d.is_dir():
            raise UsageError(f"{d} is not a folder")
    from ..imaging import return_freed_rasters_to_the_os
    return_freed_rasters_to_the_os()  # decoded images go back to the OS, whichever thread freed them
    app, _ = build_app(args.store, args.workers, args.seed_data, args.eval_data,
                       announce=lambda m: print(f"fruitpipe: {m}", file=sys.stderr))
    live = app.state.fruitpipe.holder.current
    print(f"fruitpipe: store {args.store.resolve()}, model {live.version if live else 'none'}", file=sys.stderr)
    print(f"fruitpipe: {token_notice(args.store)}", file=sys.stderr)
    print(f"fruitpipe: dashboard http://{args.host}:{args.port}/  API docs http://{args.host}:{args.port}/docs",
          file=sys.stderr, flush=True)
    config = uvicorn_config(app, args.host, args.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C / SIGINT after the graceful shutdown, as uvicorn.run() does
        pass
    return 0 if server.started else 1
