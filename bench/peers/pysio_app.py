"""The bench contract on python-socketio 5.x (aiohttp web server, AsyncRedisManager with --redis).

    .venv/bin/python -m bench.peers.pysio_app --port P [--redis redis://127.0.0.1:R]

`join` (room) -> the socket joins it; `publish` ({room, t, seq, pad}) -> `message` with the same
object to every socket in that room. Written the way its documentation suggests, so the bench
measures python-socketio as a user would run it.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import socketio
from aiohttp import web


def build(redis_url: str | None) -> web.Application:
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager, logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    @sio.on("join")
    async def join(sid: str, room: Any) -> None:
        await sio.enter_room(sid, room)

    @sio.on("publish")
    async def publish(sid: str, msg: dict[str, Any]) -> None:
        await sio.emit("message", msg, room=msg["room"])

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--redis", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build(args.redis), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
