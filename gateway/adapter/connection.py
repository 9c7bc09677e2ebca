"""Moved to `gateway.redis.client` (the client factory) and `gateway.redis.urls` (URL parsing);
these names are re-exported here until the cluster package stops importing them from here."""

from __future__ import annotations

from ..redis.client import (
    DEFAULT_SENTINEL_PORT,
    SENTINEL_SCHEME,
    SENTINEL_TIMEOUT_S,
    RedisSettingsError,
    SentinelMasterClient,
    SentinelTarget,
    parse_sentinel_url,
    redis_client,
    tls_options,
)

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "SENTINEL_SCHEME",
    "SENTINEL_TIMEOUT_S",
    "RedisSettingsError",
    "SentinelMasterClient",
    "SentinelTarget",
    "parse_sentinel_url",
    "redis_client",
    "tls_options",
]
