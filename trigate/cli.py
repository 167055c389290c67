"""The `trigate` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trigate.auth import generate_key
from trigate.config import ConfigError, load_config
from trigate.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Binding,
    StartupError,
    is_loopback,
    serve_forever,
)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        return 2
    try:
        return _serve(args)
    except (ConfigError, StartupError) as error:
        print(f"trigate: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trigate", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="run the gateway")
    serve_parser.add_argument(
        "--config", default=os.environ.get("TRIGATE_CONFIG"), help="LiteLLM-style config.yaml"
    )
    serve_parser.add_argument("--host", default=os.environ.get("TRIGATE_HOST", DEFAULT_HOST))
    serve_parser.add_argument(
        "--port", type=int, default=int(os.environ.get("TRIGATE_PORT", DEFAULT_PORT))
    )
    serve_parser.add_argument("--workers", type=int, default=1, help="worker processes")
    return parser


def _serve(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise StartupError("--workers must be at least 1")
    config = load_config(args.config, os.environ)
    binding = Binding(args.host, args.port, args.workers)
    if args.config:
        os.environ["TRIGATE_CONFIG"] = str(Path(args.config).resolve())
    else:
        os.environ.pop("TRIGATE_CONFIG", None)
    if not config.general_settings.master_key and is_loopback(binding.host):
        key = generate_key()
        config.general_settings.master_key = key
        print(f"trigate: no master key configured; this run's master key is {key}", flush=True)
    if config.general_settings.master_key:
        # Spawned workers read it from here; a generated key is then the same in all of them.
        os.environ["TRIGATE_MASTER_KEY"] = config.general_settings.master_key
    return serve_forever(config, binding)
