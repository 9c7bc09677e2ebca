"""The in-memory adapter (local room delivery) and, until they move to gateway/redis/, the Redis
connection helpers. The cluster adapter and its transports are in gateway/cluster/."""

from .base import Adapter, AdapterError, AdapterTimeout, BroadcastOptions

__all__ = ["Adapter", "AdapterError", "AdapterTimeout", "BroadcastOptions"]
