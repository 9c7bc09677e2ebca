"""The server the official conformance suites expect (see ../shared/conformance/README.md).

    .venv/bin/python -m tests.conformance_app --port 3000

Socket.IO on `/socket.io/` (namespaces `/` and `/custom`, `auth` echo, `message` -> `message-back`,
`message-with-ack` acknowledged with its arguments) and a plain Engine.IO echo on `/engine.io/`,
both with pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1000000.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.config import Settings
from gateway.engine.outbound import Outbound
from gateway.engine.server import EngineServer
from gateway.engine.session import Session
from gateway.ops.logs import setup_logging
from gateway.runtime import run
from gateway import Server, Socket


class Echo:
    """Plain Engine.IO receiver: every message goes back unchanged."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def on_message(self, data: str | bytes) -> None:
        if isinstance(data, str):
            self.session.send(Outbound(b"4" + data.encode()))
        else:
            self.session.send(Outbound.binary(data))

    def on_close(self, reason: str) -> None:
        pass


def build(settings: Settings) -> Server:
    server = Server(settings)

    def attach(nsp_name: str, echo_events: bool) -> None:
        nsp = server.of(nsp_name)

        @nsp.on("connection")
        def connected(socket: Socket) -> None:
            socket.emit("auth", socket.handshake["auth"])
            if not echo_events:
                return

            @socket.on("message")
            def message(*args: Any) -> None:
                socket.emit("message-back", *args)

            @socket.on("message-with-ack")
            def message_with_ack(*args: Any) -> tuple[Any, ...]:
                return args

    attach("/", True)
    attach("/custom", False)

    engine = EngineServer(
        Echo,
        ping_interval_ms=settings.ping_interval_ms,
        ping_timeout_ms=settings.ping_timeout_ms,
        max_payload=settings.max_payload,
    )
    server.router.mount("/engine.io", engine.handle)
    return server


def settings_for(port: int, host: str = "127.0.0.1") -> Settings:
    return Settings(
        host=host,
        port=port,
        ping_interval_ms=300,
        ping_timeout_ms=200,
        max_payload=1_000_000,
        connect_timeout_ms=1200,
        cors_origins=("*",),
        log_level="WARNING",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    settings = settings_for(args.port, args.host)
    setup_logging(settings.log_level)
    server = build(settings)
    run(server.start, server.close)


if __name__ == "__main__":
    main()
