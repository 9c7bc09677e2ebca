"""The cluster: one `ClusterAdapter` (every request/response/ack rule) over a Redis transport.

`cluster_adapter_factory(settings)` is what a Server is given to make its namespaces' adapters:
the classic transport (REDIS_URL: PUBLISH/PSUBSCRIBE), the sharded one (REDIS_MODE=sharded:
SPUBLISH/SSUBSCRIBE) or the streams one (REDIS_MODE=streams: XADD/XREAD + PUBLISH, with
connection state recovery: streams.py), one per server, shared by its namespaces. A new transport is a module
implementing `transport.Transport` and a branch in `make_transport`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..config import Settings
from .adapter import ClusterAdapter
from .transport import ClusterUnavailable, Transport

if TYPE_CHECKING:
    from ..sio.adapter import Adapter, AdapterNamespace

__all__ = ["ClusterAdapter", "ClusterUnavailable", "Transport", "cluster_adapter_factory", "make_transport"]


def make_transport(settings: Settings) -> Transport:
    """The transport the settings ask for."""
    if settings.redis_mode == "streams":
        from .streams import StreamsTransport

        return StreamsTransport(settings)
    if settings.redis_mode == "sharded":
        from .sharded import ShardedTransport

        return ShardedTransport(settings)
    from .classic import ClassicTransport

    return ClassicTransport(settings)


def cluster_adapter_factory(settings: Settings) -> Callable[["AdapterNamespace"], "Adapter"]:
    """Adapters for every namespace of one server, sharing one transport (made with the first)."""
    transport: Transport | None = None

    def factory(nsp: "AdapterNamespace") -> "Adapter":
        nonlocal transport
        if transport is None:
            transport = make_transport(settings)
        if settings.redis_mode == "streams":
            from .streams import StreamsClusterAdapter

            return StreamsClusterAdapter(nsp, transport, settings)  # type: ignore[arg-type]
        return ClusterAdapter(nsp, transport, settings)

    return factory
