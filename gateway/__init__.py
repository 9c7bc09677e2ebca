"""The I/O half of sio-gateway: asyncio server, transports, Socket.IO server API, cluster bridge."""

from .server import AckTimeout, BroadcastOperator, ConnectionRefused, Namespace, Server, Socket

__all__ = ["AckTimeout", "BroadcastOperator", "ConnectionRefused", "Namespace", "Server", "Socket"]
