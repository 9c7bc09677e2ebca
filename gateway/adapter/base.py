"""The in-memory adapter moved to `gateway.sio.adapter`; these names stay importable from here
until the cluster package no longer reads them from `gateway.adapter`."""

from ..sio.adapter import (
    Adapter,
    AdapterError,
    AdapterNamespace,
    AdapterSocket,
    AdapterStats,
    AdapterTimeout,
    BroadcastOptions,
    Room,
)

__all__ = ["Adapter", "AdapterError", "AdapterNamespace", "AdapterSocket", "AdapterStats", "AdapterTimeout", "BroadcastOptions", "Room"]
