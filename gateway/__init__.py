"""The I/O half of sio-gateway: asyncio server, transports, Socket.IO server API, cluster bridge.

`Server` is the served Socket.IO server (gateway/serve.py); the API itself lives in gateway/sio/.
"""

from .serve import Server
from .sio import AckTimeout, BroadcastOperator, ConnectionRefused, Namespace, Socket

__all__ = ["AckTimeout", "BroadcastOperator", "ConnectionRefused", "Namespace", "Server", "Socket"]
