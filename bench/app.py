"""Our bench app on the public gateway API.

    .venv/bin/python -m bench.app --port P [--redis redis://127.0.0.1:R] [--adapter classic|streams]
    .venv/bin/python -m bench.app --port P --adapter sharded --redis-cluster 127.0.0.1:A,127.0.0.1:B,...

The contract shared with every peer under test: a client emits `join` with a room name -> its
socket joins that room; a client emits `publish` with `{room, t, seq, pad}` -> the server emits
`message` with the same object to every socket in that room. Handlers are plain functions, so they
run inline on the event loop (the gateway's fast path), as a user who cares about speed would
write them.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.app import DEFAULT_RECOVERY_MS, build_server
from gateway.config import Settings
from gateway.ops.logs import setup_logging
from gateway.runtime import run
from gateway import Server, Socket


def build(settings: Settings) -> Server:
    server = build_server(settings)  # the adapter REDIS_URL / REDIS_MODE call for, as the gateway picks it

    @server.on("connection")
    def connected(socket: Socket) -> None:
        @socket.on("join")
        def join(room: Any = None) -> None:
            if isinstance(room, (str, int)):
                socket.join(room)

        @socket.on("publish")
        def publish(msg: Any = None) -> None:
            if isinstance(msg, dict) and "room" in msg:
                server.to(msg["room"]).emit("message", msg)

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--redis", default=None, help="Redis URL: join the cluster through @socket.io/redis-adapter's channels")
    parser.add_argument(
        "--adapter",
        choices=("classic", "streams", "sharded"),
        default="classic",
        help="streams: REDIS_MODE=streams (one Redis stream, as @socket.io/redis-streams-adapter) with connection state recovery on; "
        "sharded: REDIS_MODE=sharded on the Redis Cluster of --redis-cluster (SPUBLISH/SSUBSCRIBE, as createShardedAdapter, dynamic subscriptions)",
    )
    parser.add_argument("--redis-cluster", default="", help="comma-separated host:port seeds of the Redis Cluster (--adapter sharded)")
    args = parser.parse_args()
    if args.adapter == "sharded" and not args.redis_cluster:
        parser.error("--adapter sharded needs --redis-cluster host:port,...")
    # Built from defaults, not the environment, so a stray variable cannot skew a run; logging
    # stays at WARNING so the numbers measure the gateway and not the log sink. The standalone
    # gateway's own policy (auth, rate limits) lives in gateway.app and is not part of the contract.
    mode: dict[str, Any] = {}
    if args.adapter == "streams":  # the standalone gateway's default window; Node's peer runs 120 s too
        mode = {"redis_mode": "streams", "state_recovery_ms": DEFAULT_RECOVERY_MS}
    elif args.adapter == "sharded":  # Node's peer: createShardedAdapter(..., {subscriptionMode: "dynamic"})
        seeds = tuple(s for s in args.redis_cluster.split(",") if s)
        mode = {"redis_mode": "sharded", "redis_cluster_nodes": seeds, "redis_subscription_mode": "dynamic"}
    settings = Settings(host=args.host, port=args.port, redis_url=args.redis, log_level="WARNING", **mode)
    setup_logging(settings.log_level)
    server = build(settings)
    run(server.start, server.close)


if __name__ == "__main__":
    main()
