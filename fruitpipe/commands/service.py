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
    p.add_argument("--fruits", type=Path, default=None,
                   help="the recipe's photo folder with train/ val/ test/ (default $FRUITPIPE_FRUITS or "
                        "../shared/data/fruits); see fruitpipe.recipe")
    p.add_argument("--cache", type=Path, default=None,
                   help="embedding cache folder (default: the machine's, <fruitpipe cache>/embeddings)")
    p.add_argument("--no-warm-up", action="store_true",
                   help="do not prepare the embedding cache in the background at start")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="one line per request on stdout, uvicorn's access log (default on; shown at "
                        "--log-level info or debug)")


def build_app(store: Path, workers: int | None = None, fruits: Path | None = None,
              cache: Path | None = None, warm_up: bool = False, announce=print):  # type: ignore[no-untyped-def]
    """The app ``fruitpipe serve`` runs (also used by the load test). With ``warm_up`` the
    first-start warm-up (embedding cache, upload-guard indexes) starts in the background."""
    from ..api.app import create_app
    from ..api.settings import Settings, local_token
    from ..backends.local import LocalTrainer, TrainerConfig, create_local_backend

    backend = create_local_backend(store, trainer_config=TrainerConfig(fruits=fruits, cache_dir=cache))
    token = local_token(store, announce=announce)
    settings = Settings(token_provider=lambda: token)
    if workers:
        settings.inference_workers = workers
    if warm_up and isinstance(backend.trainer, LocalTrainer) and backend.trainer.warm_up():
        announce("fruitpipe: preparing the embedding cache in the background (first start; "
                 "progress in /retraining-status)")
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
    if args.fruits is not None and not (args.fruits / "train").is_dir():
        raise UsageError(f"--fruits {args.fruits} has no train/ folder")
    _check_port_free(args.host, args.port)  # fail before the banner, not after it
    import logging.config

    from ..api.server import log_config
    logging.config.dictConfig(log_config(args.log_level))  # from the model load on: levels shown as uvicorn's
    from ..imaging import return_freed_rasters_to_the_os
    return_freed_rasters_to_the_os()  # decoded images go back to the OS, whichever thread freed them
    app, _ = build_app(args.store, args.workers, args.fruits, args.cache, warm_up=not args.no_warm_up,
                       announce=lambda m: print(m if m.startswith("fruitpipe:") else f"fruitpipe: {m}",
                                                file=sys.stderr))
    live = app.state.fruitpipe.holder.current
    print(f"fruitpipe: store {args.store.resolve()}, model {live.version if live else 'none'}", file=sys.stderr)
    print(f"fruitpipe: {token_notice(args.store)}", file=sys.stderr)
    print(f"fruitpipe: dashboard http://{args.host}:{args.port}/  API docs http://{args.host}:{args.port}/docs",
          file=sys.stderr, flush=True)
    config = uvicorn_config(app, args.host, args.port, log_level=args.log_level, access_log=args.access_log,
                            log_config=log_config(args.log_level), timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C / SIGINT after the graceful shutdown, as uvicorn.run() does
        pass
    finally:
        trainer = app.state.fruitpipe.backend.trainer
        if hasattr(trainer, "stop_warm_up"):
            trainer.stop_warm_up()  # background preparation only; a running retrain carries on
    return 0 if server.started else 1


def _check_port_free(host: str, port: int) -> None:
    """Raise :class:`UsageError` when ``host:port`` cannot be bound (in use, or not an address here)."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"--host {host}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                             f"(is another server running? use --port)") from None
