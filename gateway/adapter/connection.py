"""Every Redis client of the gateway is made here, so each deployment mode is handled once.

REDIS_URL picks the mode:

- `redis://host:port[/db]` and `unix:///path`: one Redis server;
- `rediss://host:port[/db]`: the same over TLS, verified against REDIS_TLS_CA_FILE (or the
  system CAs), with an optional client certificate (REDIS_TLS_CERT_FILE + REDIS_TLS_KEY_FILE);
  REDIS_TLS_INSECURE=true turns verification off, for development only, and says so loudly;
- `redis+sentinel://[user:password@]host:port[,host:port...]/mastername[/db]`: the master that
  Redis Sentinel names. Every new connection asks the sentinels where the master is, so a link
  that breaks in a failover reconnects to the promoted replica; the callers' reconnect loops
  (ClusterBridge, presence) need no Sentinel-specific code. The password is the master's; the
  sentinels are reached without one.

Callers keep their own timeouts and keepalive choices; this module only decides where and how
to connect.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ..config import ConfigError, Settings

log = logging.getLogger("gateway.redis")

SENTINEL_SCHEME = "redis+sentinel://"
DEFAULT_SENTINEL_PORT = 26379
# Sentinels answer from memory: a sentinel slower than this is treated as down and the next one
# is asked, instead of holding a reconnect for as long as the caller's own read timeout.
SENTINEL_TIMEOUT_S = 1.0


class RedisSettingsError(ConfigError):
    """REDIS_URL and the REDIS_TLS_* settings do not describe a usable connection."""


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed redis+sentinel:// URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [v6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    else:
        host, port_text = item, ""
    if not host:
        raise ValueError(f"a sentinel address has no host in {url!r}")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad sentinel port {port_text!r} in {url!r}")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """`redis+sentinel://[user:password@]host:port[,host:port...]/mastername[/db]`."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"expected {SENTINEL_SCHEME}..., got {url!r}")
    rest = url[len(SENTINEL_SCHEME):]
    if "?" in rest or "#" in rest:
        raise ValueError(f"query strings are not supported in {url!r}")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(item.strip(), url) for item in netloc.split(",") if item.strip())
    if not sentinels:
        raise ValueError(f"no sentinel address in {url!r} (redis+sentinel://host:port[,host:port]/mastername)")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError(f"no master name in {url!r} (redis+sentinel://host:port[,host:port]/mastername)")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"the path is /mastername or /mastername/db, got {'/' + path!r}")
    return SentinelTarget(sentinels, unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0, username, password)


def _readable(name: str, path: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise RedisSettingsError(f"{name}: cannot read {path!r}")


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's ssl_* arguments for a rediss:// URL; refuses combinations that would silently
    not do what the operator asked (TLS files with a plain URL, a key without its certificate)."""
    url = settings.redis_url or ""
    tls_fields = {
        "REDIS_TLS_CA_FILE": settings.redis_tls_ca_file,
        "REDIS_TLS_CERT_FILE": settings.redis_tls_cert_file,
        "REDIS_TLS_KEY_FILE": settings.redis_tls_key_file,
        "REDIS_TLS_INSECURE": settings.redis_tls_insecure or None,
    }
    if not url.startswith("rediss://"):
        given = [name for name, value in tls_fields.items() if value]
        if given:
            raise RedisSettingsError(f"{', '.join(given)} set but REDIS_URL is not rediss:// (TLS would not be used)")
        return {}
    if bool(settings.redis_tls_cert_file) != bool(settings.redis_tls_key_file):
        raise RedisSettingsError("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together")
    for name in ("REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"):
        path = tls_fields[name]
        if isinstance(path, str):
            _readable(name, path)
    options: dict[str, Any] = {
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
    }
    if settings.redis_tls_insecure:
        options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    else:
        options.update(ssl_cert_reqs="required", ssl_check_hostname=True)
    return options


_announced: set[tuple[Any, ...]] = set()


def _announce(settings: Settings) -> None:
    """Say once per process how Redis is reached; an unverified TLS link is a loud warning."""
    key = (settings.redis_url, settings.redis_tls_ca_file, settings.redis_tls_cert_file, settings.redis_tls_insecure)
    if key in _announced:
        return
    _announced.add(key)
    url = settings.redis_url or ""
    if url.startswith("rediss://"):
        if settings.redis_tls_insecure:
            log.warning(
                "redis_tls_insecure REDIS_TLS_INSECURE=true: the Redis server certificate is NOT verified; "
                "anyone on the network path can impersonate Redis and read or forge cluster traffic. Development only."
            )
        else:
            log.info(
                "redis_tls ca=%s client_cert=%s",
                settings.redis_tls_ca_file or "system",
                settings.redis_tls_cert_file or "none",
            )
    elif url.startswith(SENTINEL_SCHEME):
        target = parse_sentinel_url(url)
        log.info("redis_sentinel master=%s sentinels=%s", target.master, ",".join(f"{h}:{p}" for h, p in target.sentinels))


class SentinelMasterClient(aioredis.Redis):
    """The master's client; closing it also closes its connections to the sentinels (which
    redis-py leaves open otherwise, one set per client a reconnect loop makes)."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            sentinel, self.sentinel = self.sentinel, None
            if sentinel is not None:
                await sentinel.aclose()


def redis_client(
    settings: Settings,
    *,
    decode_responses: bool = False,
    socket_timeout: float | None = 5.0,
    socket_connect_timeout: float | None = 2.0,
    socket_keepalive: bool = False,
    socket_keepalive_options: Mapping[int, int | bytes] | None = None,
    health_check_interval: int = 0,
    retries: bool = True,
) -> aioredis.Redis:
    """A client for REDIS_URL (one server, TLS, or the Sentinel-named master). Connects lazily:
    nothing here touches the network, so a Redis that is down shows in the first command."""
    url = settings.redis_url
    if not url:
        raise RedisSettingsError("REDIS_URL is not set")
    tls = tls_options(settings)
    _announce(settings)
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "socket_keepalive": socket_keepalive,
        "health_check_interval": health_check_interval,
    }
    if socket_keepalive_options:
        options["socket_keepalive_options"] = dict(socket_keepalive_options)
    if not retries:
        # For callers with their own reconnect loop: redis-py's silent retries would delay the
        # loop's view of a failure and could send a publish batch twice.
        options["retry"] = Retry(NoBackoff(), 0)
    if not url.startswith(SENTINEL_SCHEME):
        return aioredis.from_url(url, **options, **tls)
    try:
        target = parse_sentinel_url(url)
    except ValueError as exc:
        raise RedisSettingsError(f"REDIS_URL: {exc}") from None
    sentinel_timeout = SENTINEL_TIMEOUT_S if socket_timeout is None else min(socket_timeout, SENTINEL_TIMEOUT_S)
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={
            "socket_timeout": sentinel_timeout,
            "socket_connect_timeout": min(socket_connect_timeout or SENTINEL_TIMEOUT_S, SENTINEL_TIMEOUT_S),
            # A dead sentinel is skipped at once; the caller's loop owns retrying and backoff.
            "retry": Retry(NoBackoff(), 0),
        },
    )
    client = sentinel.master_for(
        target.master,
        redis_class=SentinelMasterClient,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
    client.sentinel = sentinel
    return client
