"""The Socket.IO server API, shaped after socket.io for Node.js: server (the namespace
registry), namespaces, sockets, broadcast operators, the per-connection client, and the
in-memory adapter with the Protocols an adapter depends on."""

from .adapter import Adapter, AdapterError, AdapterTimeout, BroadcastOptions
from .broadcast import AckCollector, BroadcastOperator
from .client import Client
from .handlers import AckTimeout, ConnectionRefused
from .namespace import Namespace
from .server import Server
from .socket import Socket

__all__ = [
    "AckCollector",
    "AckTimeout",
    "Adapter",
    "AdapterError",
    "AdapterTimeout",
    "BroadcastOperator",
    "BroadcastOptions",
    "Client",
    "ConnectionRefused",
    "Namespace",
    "Server",
    "Socket",
]
