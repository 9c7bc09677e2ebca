"""A test app that floods a room, for the slow-consumer tests (tests/integration/test_engine_behaviour.py).

    .venv/bin/python -m tests.engine_app --port 3000

In a process of its own so that the test can read the gateway's memory (VmRSS) without the
clients' memory in it. Every socket of `/` joins the room `flood` on connection.

- `flood` ({bytes_per_s, size, seconds}, ack): broadcasts `tick` {n, pad} (`pad` is `size`
  characters) into `flood` every `size / bytes_per_s` seconds for `seconds`, then `flood-done`
  {count}; acknowledges True at once;
- `disconnects` (ack): `[{id, reason, t}]` of every socket that left, `t` = time.monotonic() here
  (CLOCK_MONOTONIC, comparable with the test process's clock).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Callable

from gateway.config import Settings
from gateway.ops.logs import setup_logging
from gateway.runtime import run
from gateway import Server, Socket

ROOM = "flood"
MAX_FLOOD_S = 60.0  # a flood stops by itself even if the test dies


def build(settings: Settings) -> Server:
    server = Server(settings)
    main = server.of("/")
    gone: list[dict[str, Any]] = []
    floods: set[asyncio.Task[None]] = set()

    async def flood(bytes_per_s: float, size: int, seconds: float) -> None:
        period = size / bytes_per_s
        pad = "x" * size
        deadline = time.monotonic() + min(seconds, MAX_FLOOD_S)
        n = 0
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            main.to(ROOM).emit("tick", {"n": n, "pad": pad})
            n += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        main.to(ROOM).emit("flood-done", {"count": n})

    @main.on("connection")
    def connected(socket: Socket) -> None:
        socket.join(ROOM)

        @socket.on("flood")
        def start_flood(spec: Any = None, ack: Callable[..., None] | None = None) -> None:
            spec = spec if isinstance(spec, dict) else {}
            task = asyncio.get_running_loop().create_task(
                flood(float(spec.get("bytes_per_s", 1_000_000)), int(spec.get("size", 20_000)), float(spec.get("seconds", 5)))
            )
            floods.add(task)
            task.add_done_callback(floods.discard)
            if ack is not None:
                ack(True)

        @socket.on("disconnects")
        def disconnects(ack: Callable[..., None] | None = None) -> None:
            if ack is not None:
                ack(list(gone))

        @socket.on("disconnect")
        def left(reason: str) -> None:
            gone.append({"id": socket.id, "reason": reason, "t": time.monotonic()})

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    settings = Settings.from_env(host=args.host, port=args.port, auth_mode="none", log_level="INFO")
    setup_logging(settings.log_level)
    server = build(settings)
    run(server.start, server.close, settings.shutdown_deadline_ms / 1000)


if __name__ == "__main__":
    main()
