"""Adapters: local room delivery (in-memory) and the Redis cluster bridge."""

from .base import Adapter, AdapterError, AdapterTimeout, BroadcastOptions

__all__ = ["Adapter", "AdapterError", "AdapterTimeout", "BroadcastOptions"]
