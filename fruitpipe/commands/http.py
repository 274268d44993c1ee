"""The ``--api URL --token T`` options the HTTP commands share (upload, retrain, models)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..cli import UsageError
from ..client import DEFAULT_API, Client, find_token

API_ENV = "FRUITPIPE_API"


def add_api_args(where: Any, parser: argparse.ArgumentParser) -> None:
    """``--api`` on ``where`` (a parser or a mutually exclusive group), token options on ``parser``."""
    where.add_argument("--api", default=None, metavar="URL",
                       help=f"a fruitpipe server, local or AWS (default ${API_ENV} or {DEFAULT_API})")
    parser.add_argument("--token", default=None,
                        help="admin token (default $FRUITPIPE_TOKEN, $FRUITPIPE_ADMIN_TOKEN, then --token-file)")
    parser.add_argument("--token-file", type=Path, default=Path("var") / "admin-token",
                        help="file holding the admin token (default var/admin-token, written by fruitpipe serve)")


def api_base(args: argparse.Namespace) -> str:
    return (args.api or os.environ.get(API_ENV) or DEFAULT_API).rstrip("/")


def api_token(args: argparse.Namespace, required: bool = True) -> str | None:
    token = find_token(args.token, args.token_file)
    if required and not token:
        raise UsageError("an admin token is needed: --token, $FRUITPIPE_TOKEN or --token-file")
    return token


def api_client(args: argparse.Namespace, token_required: bool = True) -> Client:
    return Client(api_base(args), api_token(args, token_required))
