"""The one redis-py client factory, for everything that is not the broadcast path: requests
(NUMSUB, probes), presence, INFO. The broadcast path reads and writes its own connections
(`gateway.redis.stream`) with the same TLS, credentials and Sentinel rules, taken from here.

REDIS_URL picks the mode:

- `redis://host:port[/db]` and `unix:///path`: one Redis server;
- `rediss://host:port[/db]`: the same over TLS, verified against REDIS_TLS_CA_FILE (or the
  system CAs), with an optional client certificate (REDIS_TLS_CERT_FILE + REDIS_TLS_KEY_FILE);
  REDIS_TLS_INSECURE=true turns verification off, for development only, and says so loudly;
- `redis+sentinel://[user:password@]host:port[,host:port...]/mastername[/db]`: the master that
  Redis Sentinel names. Every new connection asks the sentinels where the master is, so a link
  that breaks in a failover reconnects to the promoted replica; the callers' reconnect loops
  (the cluster links, presence) need no Sentinel-specific code. The password is the master's;
  the sentinels are reached without one.

Callers keep their own timeouts and keepalive choices; this module only decides where and how
to connect.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any, Mapping

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ..config import ConfigError, Settings
from .urls import DEFAULT_SENTINEL_PORT, SENTINEL_SCHEME, SentinelTarget, parse_sentinel_url

log = logging.getLogger("gateway.redis")

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "SENTINEL_SCHEME",
    "SENTINEL_TIMEOUT_S",
    "RedisSettingsError",
    "SentinelMasterClient",
    "SentinelTarget",
    "parse_sentinel_url",
    "node_client",
    "redis_client",
    "sentinel_for",
    "sentinel_target",
    "ssl_context",
    "tls_options",
]

# Sentinels answer from memory: a sentinel slower than this is treated as down and the next one
# is asked, instead of holding a reconnect for as long as the caller's own read timeout.
SENTINEL_TIMEOUT_S = 1.0


class RedisSettingsError(ConfigError):
    """REDIS_URL and the REDIS_TLS_* settings do not describe a usable connection."""


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
    target = sentinel_target(settings)
    sentinel = sentinel_for(target, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout)
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


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for a connection the gateway opens itself (the broadcast streams), with
    exactly the rules `tls_options` gives redis-py: REDIS_TLS_CA_FILE or the system CAs, the
    client certificate when set, hostname checked, and nothing verified with
    REDIS_TLS_INSECURE=true. None for a plain redis://, unix:// or Sentinel URL."""
    options = tls_options(settings)  # validates the combination and the files
    if not options:
        return None
    _announce(settings)
    context = ssl.create_default_context(cafile=options["ssl_ca_certs"])
    if options["ssl_certfile"]:
        context.load_cert_chain(options["ssl_certfile"], options["ssl_keyfile"])
    if settings.redis_tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def sentinel_target(settings: Settings) -> SentinelTarget:
    """REDIS_URL as a Sentinel target, or RedisSettingsError naming what is wrong."""
    try:
        return parse_sentinel_url(settings.redis_url or "")
    except ValueError as exc:
        raise RedisSettingsError(f"REDIS_URL: {exc}") from None


def sentinel_for(target: SentinelTarget, *, socket_timeout: float | None = None, socket_connect_timeout: float | None = None) -> Sentinel:
    """A redis-py Sentinel client for `target`'s sentinels. Each sentinel gets at most
    SENTINEL_TIMEOUT_S, and a dead one is skipped at once (no retries): the caller's reconnect
    loop owns retrying and backoff. The caller closes it (`aclose`)."""
    sentinel_timeout = SENTINEL_TIMEOUT_S if socket_timeout is None else min(socket_timeout, SENTINEL_TIMEOUT_S)
    return Sentinel(
        list(target.sentinels),
        sentinel_kwargs={
            "socket_timeout": sentinel_timeout,
            "socket_connect_timeout": min(socket_connect_timeout or SENTINEL_TIMEOUT_S, SENTINEL_TIMEOUT_S),
            "retry": Retry(NoBackoff(), 0),
        },
    )


def node_client(
    settings: Settings,
    address: tuple[str, int],
    *,
    socket_timeout: float | None = 5.0,
    socket_connect_timeout: float | None = 2.0,
    socket_keepalive_options: Mapping[int, int | bytes] | None = None,
) -> aioredis.Redis:
    """A client for one Redis Cluster node, with the TLS settings of REDIS_URL (rediss:// and
    REDIS_TLS_* apply to every node). It never retries on its own: retrying against a node that
    lost its slots or died would only hide what the caller's supervisor must see."""
    options: dict[str, Any] = {}
    if socket_keepalive_options:
        options["socket_keepalive_options"] = dict(socket_keepalive_options)
    return aioredis.Redis(
        host=address[0],
        port=address[1],
        decode_responses=False,
        socket_connect_timeout=socket_connect_timeout,
        socket_timeout=socket_timeout,
        socket_keepalive=bool(socket_keepalive_options),
        health_check_interval=0,
        retry=Retry(NoBackoff(), 0),
        **options,
        **tls_options(settings),
    )
