"""Command line: ``mtproxy serve`` and ``mtproxy check``."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import Config, ConfigError, load_config


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        print(f"mtproxy: invalid config {path}:", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    server = config.server.model_copy(
        update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    )
    config = config.model_copy(update={"server": server})
    from .server import run

    run(config)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    models = sorted({m for b in config.backends for m in (b.models or ())})
    print(f"{args.config}: ok ({len(config.backends)} backends"
          + (f"; configured models: {', '.join(models)}" if models else "") + ")")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtproxy", description="One OpenAI-compatible URL for local LLM runtimes.")
    parser.add_argument("--version", action="version", version=f"mtproxy {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", default="config.yaml", help="path to config.yaml (default ./config.yaml)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check", help="validate a config file and exit 0 (valid) or 1")
    check.add_argument("--config", default="config.yaml", help="path to config.yaml (default ./config.yaml)")
    check.set_defaults(func=_cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)
