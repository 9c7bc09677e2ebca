"""The `sio-gateway` command: settings from the environment (and flags), then serve."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

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
        description=(
            "A standalone Socket.IO gateway, wire-compatible with Node.js socket.io and @socket.io/redis-adapter.\n"
            "`sio-gateway cluster --nodes N` runs a local cluster instead (see `sio-gateway cluster --help`)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_help_epilog(),
    )
    parser.add_argument("--host", help="overrides HOST")
    parser.add_argument("--port", type=int, help="overrides PORT")
    parser.add_argument("--redis-url", help="overrides REDIS_URL")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["cluster"]:
        raise SystemExit(cluster_main(arguments[1:]))
    args = parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "redis_url": args.redis_url}.items() if v is not None}
    try:
        settings = Settings.from_env(**overrides)
        if settings.redis_url:
            from .redis.client import tls_options

            tls_options(settings)  # TLS files and URL agree, before anything starts
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


def parse_cluster_args(argv: list[str]) -> argparse.Namespace:
    from .topology import NGINX_CONF

    parser = argparse.ArgumentParser(
        prog="sio-gateway cluster",
        description=(
            "A local cluster on 127.0.0.1: a redis-server on a free port, N gateway nodes on consecutive "
            "ports, nginx in front (the top-level nginx.conf rendered for those ports). Prints the URL; "
            "a member that dies is restarted (CLUSTER_RESTART_INITIAL_MS doubling to CLUSTER_RESTART_MAX_MS, "
            "one line each); Ctrl-C or SIGTERM stops everything it started and exits 0. The nodes take every "
            "other setting from the environment (e.g. AUTH_MODE, JWT_SECRET), as `sio-gateway` does."
        ),
    )
    parser.add_argument("--nodes", type=int, default=3, help="gateway nodes [3]")
    parser.add_argument("--base-port", type=int, default=None, help="port of the first node; the others follow [PORT, 3001]")
    parser.add_argument("--proxy-port", type=int, default=8080, help="port nginx listens on [8080]")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting a redis-server")
    parser.add_argument("--nginx-conf", type=Path, default=NGINX_CONF, help=f"nginx configuration to render [{NGINX_CONF}]")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and nginx files (kept); default: a temporary directory, removed after a clean stop")
    return parser.parse_args(argv)


def cluster_main(argv: list[str]) -> int:
    """`sio-gateway cluster`: start, report, restart members that die (so a SIGKILLed node shows
    a failover instead of ending the demo), and on Ctrl-C/SIGTERM stop everything and exit 0 (a
    clean stop is not an error, so `make cluster` reports none)."""
    from .topology import LocalCluster, TopologyError

    args = parse_cluster_args(argv)
    try:
        # The nodes would refuse a bad environment one by one; say it once, before starting.
        settings = Settings.from_env({**os.environ, "REDIS_URL": args.redis_url or "redis://127.0.0.1:6379"})
        from .redis.client import tls_options

        tls_options(settings)
    except ConfigError as exc:
        sys.stderr.write(f"sio-gateway cluster: configuration error: {exc}\n")
        return 2
    setup_logging(settings.log_level)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sio-gateway-cluster-"))
    cluster = LocalCluster(
        nodes=args.nodes,
        base_port=settings.port if args.base_port is None else args.base_port,
        proxy_port=args.proxy_port,
        workdir=workdir,
        env=dict(os.environ),
        redis_url=args.redis_url,
        nginx_conf=args.nginx_conf,
        node_stop_timeout=settings.shutdown_deadline_ms / 1000 + 2,
        restart_initial=settings.cluster_restart_initial_ms / 1000,
        restart_max=settings.cluster_restart_max_ms / 1000,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cluster.start(interrupted=stopping.is_set)
        except TopologyError as exc:
            sys.stderr.write(f"sio-gateway cluster: {exc}\n(logs in {workdir})\n")
            return 1
        out = sys.stdout
        out.write(f"sio-gateway cluster: {args.nodes} node(s) behind nginx; logs in {workdir}\n")
        for process in cluster.processes:
            out.write(f"  {process.label:<8} pid {process.pid:<8} {process.address}\n")
        out.write(f"URL: {cluster.url}\n")
        out.write("Ctrl-C stops everything.\n")
        out.flush()

        def announce(line: str) -> None:
            out.write(line + "\n")
            out.flush()

        while not stopping.wait(0.2):
            cluster.restart_exited(announce)
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # The logs of a member that died are worth keeping; a clean run leaves no temporary directory.
    restarted = any(process.restarts for process in cluster.processes)
    if not restarted and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write(f"sio-gateway cluster: stopped; logs kept in {workdir}\n" if restarted else "sio-gateway cluster: stopped\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    main()
