"""Command line: ``mtproxy serve`` and ``mtproxy check``."""

from __future__ import annotations

import argparse
import logging
import re
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

    run(config, config_path=args.config)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    models = sorted({m for b in config.backends for m in (b.models or ())})
    print(f"{args.config}: ok ({len(config.backends)} backends"
          + (f"; configured models: {', '.join(models)}" if models else "") + ")")
    return 0


def _cmd_runtimes(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .status import support_table

    config = _load(args.config)
    status = asyncio.run(_probe_once(config))
    if args.json:
        print(json.dumps({"support": support_table(), **status}, indent=2))
        return 0
    print(render_support(support_table()))
    print()
    print(render_backends(status, args.config))
    return 0


async def _probe_once(config: Config) -> dict:
    import aiohttp

    from .backends import BackendPool
    from .status import pool_status

    pool = BackendPool(config)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.timeouts.connect)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await pool.probe_all(session)
    return pool_status(pool)


def render_support(rows: list[dict]) -> str:
    lines = ["Which runtimes run MTP (Multi-Token Prediction), and since when:", ""]
    for row in rows:
        level = {"yes": "yes", "some": "some families", "no": "no", "unknown": "unknown"}[row["level"]]
        since = f" since {row['since']}" if row["since"] else ""
        lines.append(f"{row['runtime']:<17} {level}{since}")
        if row["families"]:
            lines.append(f"{'':<17} families: {', '.join(row['families'])}; not: {', '.join(row['not_families'])}")
        lines.append(f"{'':<17} switch: {row['switch']}")
        if row["notes"]:
            lines.append(f"{'':<17} note: {row['notes']}")
        for source in row["sources"]:
            lines.append(f"{'':<17} source: {source}")
    return "\n".join(lines)


def render_backends(status: dict, path: str) -> str:
    routing = status["routing"]
    lines = [f"Backends in {path} (routing.mtp: {routing['mtp']}, routing.balance: {routing['balance']}):", ""]
    for b in status["backends"]:
        health = "up" if b["up"] else f"down ({b['detail']})"
        configured = "" if b["mtp_configured"] is None else f", config mtp: {str(b['mtp_configured']).lower()}"
        lines.append(f"{b['name']}: {b['runtime']} {b['version'] or '(version not reported)'} at {b['url']}, "
                     f"{health}{configured}")
        if not b["models"]:
            lines.append("  no models known")
        for m in b["models"]:
            trained = {True: "MTP-trained", False: "not MTP-trained", None: "MTP training unknown"}[m["mtp_trained"]]
            lines.append(f"  {m['name']}: {trained} ({m['mtp_trained_why']})")
            flag = "  [config disagrees]" if m["mtp_mismatch"] else ""
            lines.append(f"    MTP {m['mtp']}: {m['mtp_why']}{flag}")
    return "\n".join(lines)


def _cmd_verify(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from pathlib import Path

    from . import verify as v

    config = _load(args.config)
    try:
        if args.against and args.baseline:
            raise v.VerifyError("--against and --baseline exclude each other")
        baseline = v.load_baseline(Path(args.baseline)) if args.baseline else None
        outcome = asyncio.run(v.verify(
            config, model=args.model, backend=args.backend, against=args.against, baseline=baseline,
            seconds=args.seconds, rounds=args.rounds, prompt=args.prompt, max_tokens=args.max_tokens,
            threshold=args.threshold))
    except v.VerifyError as exc:
        print(f"mtproxy verify: {exc}", file=sys.stderr)
        return 2
    if args.save_baseline:
        v.save_baseline(Path(args.save_baseline), outcome.sides[0], args.prompt)
    print(json.dumps(outcome.as_dict(), indent=2) if args.json else v.render(outcome))
    return 0 if outcome.verified else 1


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
    runtimes = sub.add_parser("runtimes", help="which runtimes run MTP, and each configured backend's state")
    runtimes.add_argument("--config", default="config.yaml", help="path to config.yaml (default ./config.yaml)")
    runtimes.add_argument("--json", action="store_true", help="print JSON")
    runtimes.set_defaults(func=_cmd_runtimes)

    from .verify import DEFAULT_PROMPT

    verify = sub.add_parser("verify", help="prove MTP is on: tokens/s against another backend or a baseline")
    verify.add_argument("--config", default="config.yaml", help="path to config.yaml (default ./config.yaml)")
    verify.add_argument("--model", required=True, help="model (or alias) to test")
    verify.add_argument("--backend", help="the backend that should run MTP (default: the router's choice)")
    verify.add_argument("--against", help="a backend serving the same model without MTP")
    verify.add_argument("--baseline", help="a run saved with --save-baseline (before an upgrade)")
    verify.add_argument("--save-baseline", help="store this run's figures in FILE")
    verify.add_argument("--seconds", type=float, default=5.0, help="window per round (default 5)")
    verify.add_argument("--rounds", type=int, default=3, help="rounds per side, interleaved (default 3)")
    verify.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt sent every time")
    verify.add_argument("--max-tokens", type=int, default=128, help="max_tokens per request (default 128)")
    verify.add_argument("--threshold", type=float, default=1.15,
                        help="tokens/s ratio that counts as a material gain (default 1.15)")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=_cmd_verify)
    return parser


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class OneLineFormatter(logging.Formatter):
    """One log line per record: control characters in a message (a client's model name holding a
    newline or a terminal escape, a runtime's multi-line error) are written escaped (``\\n``,
    ``\\x1b``), so no client can forge a log line or rewrite the operator's terminal. A traceback
    after the message is left as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if not message.isprintable():
            record.message = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), message)
        return super().formatMessage(record)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    return args.func(args)
