"""The I/O half of sio-gateway: asyncio server, transports, Socket.IO server API, cluster bridge.

`Server` is the served Socket.IO server (gateway/serve.py); the API itself lives in gateway/sio/.
The names below are loaded on first use, so that importing one small module of the package
(`gateway.config`, say) does not load the whole server and its Redis client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .serve import Server
    from .sio import AckTimeout, BroadcastOperator, ConnectionRefused, Namespace, Socket

_HOMES = {
    "Server": ".serve",
    "AckTimeout": ".sio",
    "BroadcastOperator": ".sio",
    "ConnectionRefused": ".sio",
    "Namespace": ".sio",
    "Socket": ".sio",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value
