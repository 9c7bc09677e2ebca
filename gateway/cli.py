"""The `sio-gateway` command: settings from the environment (and flags), then serve."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError, Settings
from .ops.logs import setup_logging

log = logging.getLogger("gateway.cli")


def _help_epilog() -> str:
    rows = Settings.describe()
    width = max(len(r[0]) for r in rows)
    lines = ["environment variables (default in brackets):"]
    for env, default, doc in rows:
        lines.append(f"  {env.ljust(width)}  {doc} [{default}]")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sio-gateway",
        description="A standalone Socket.IO gateway, wire-compatible with Node.js socket.io and @socket.io/redis-adapter.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_help_epilog(),
    )
    parser.add_argument("--host", help="overrides HOST")
    parser.add_argument("--port", type=int, help="overrides PORT")
    parser.add_argument("--redis-url", help="overrides REDIS_URL")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "redis_url": args.redis_url}.items() if v is not None}
    try:
        settings = Settings.from_env(**overrides)
    except ConfigError as exc:
        sys.stderr.write(f"sio-gateway: configuration error: {exc}\n")
        raise SystemExit(2)
    setup_logging(settings.log_level)
    from .app import build_gateway
    from .runtime import run

    try:
        server = build_gateway(settings)
    except ConfigError as exc:
        sys.stderr.write(f"sio-gateway: configuration error: {exc}\n")
        raise SystemExit(2)
    run(server.start, server.close, settings.shutdown_deadline_ms / 1000)


if __name__ == "__main__":
    main()
