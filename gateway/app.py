"""The standalone gateway's own application: what `sio-gateway` serves without any Python code.

Clients join rooms they ask for and receive what the backend publishes into them. Authentication,
room permissions and the publish API build on this (see the issues that follow the first one).
"""

from __future__ import annotations

import logging
from typing import Any

from .config import Settings
from .server import Server, Socket

log = logging.getLogger("gateway.app")


def build_gateway(settings: Settings) -> Server:
    adapter_factory = None
    if settings.redis_url:
        from .adapter.cluster import cluster_adapter_factory

        adapter_factory = cluster_adapter_factory(settings)
    server = Server(settings, adapter_factory=adapter_factory)

    @server.on("connection")
    def connected(socket: Socket) -> None:
        @socket.on("subscribe")
        def subscribe(room: Any = None) -> dict[str, Any]:
            if not isinstance(room, str) or not room:
                return {"ok": False, "error": "room must be a non-empty string"}
            socket.join(room)
            return {"ok": True, "room": room}

        @socket.on("unsubscribe")
        def unsubscribe(room: Any = None) -> dict[str, Any]:
            if not isinstance(room, str) or not room:
                return {"ok": False, "error": "room must be a non-empty string"}
            socket.leave(room)
            return {"ok": True, "room": room}

    return server
