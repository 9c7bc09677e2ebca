"""Where Redis is, read from REDIS_URL and REDIS_CLUSTER_NODES: pure parsing, no I/O, no imports
from the rest of the gateway (config.py validates settings with it at start-up).

- `redis://[user:password@]host[:port][/db]` and `rediss://...` (the same over TLS);
- `unix://[user:password@]/path/to/socket[?db=N]`;
- `redis+sentinel://[user:password@]host[:port][,host[:port]...]/mastername[/db]`: the master
  that Redis Sentinel names (the credentials are the master's; sentinels are reached without);
- `host:port` cluster seeds (REDIS_CLUSTER_NODES), `[v6]:port` included.

Every parser raises ValueError with a message that names what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel://"
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)

Address = tuple[str, int]


@dataclass(frozen=True)
class RedisTarget:
    """One Redis server: a TCP address (`tls` for rediss://) or a Unix socket `path`."""

    host: str | None = None
    port: int = DEFAULT_PORT
    path: str | None = None
    tls: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed redis+sentinel:// URL."""

    sentinels: tuple[Address, ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def _port(text: str, what: str, url: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad {what} port {text!r} in {url!r}")
    return int(text)


def _host_port(item: str, default_port: int, what: str, url: str) -> Address:
    if item.startswith("["):  # [v6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    else:
        host, port_text = item, ""
    if not host:
        raise ValueError(f"a {what} address has no host in {url!r}")
    return host, _port(port_text, what, url) if port_text else default_port


def _credentials(netloc: str) -> tuple[str, str | None, str | None]:
    """`user:password@rest` -> (rest, user, password); either may be absent."""
    if "@" not in netloc:
        return netloc, None, None
    credentials, _, rest = netloc.rpartition("@")
    user, colon, secret = credentials.partition(":")
    return rest, unquote(user) or None, unquote(secret) if colon else None


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the database is a number, got {text!r} in {url!r}")
    return int(text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """`redis+sentinel://[user:password@]host:port[,host:port...]/mastername[/db]`."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"expected {SENTINEL_SCHEME}..., got {url!r}")
    rest = url[len(SENTINEL_SCHEME):]
    if "?" in rest or "#" in rest:
        raise ValueError(f"query strings are not supported in {url!r}")
    netloc, _, path = rest.partition("/")
    netloc, username, password = _credentials(netloc)
    sentinels = tuple(_host_port(item.strip(), DEFAULT_SENTINEL_PORT, "sentinel", url) for item in netloc.split(",") if item.strip())
    if not sentinels:
        raise ValueError(f"no sentinel address in {url!r} (redis+sentinel://host:port[,host:port]/mastername)")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError(f"no master name in {url!r} (redis+sentinel://host:port[,host:port]/mastername)")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"the path is /mastername or /mastername/db, got {'/' + path!r}")
    return SentinelTarget(sentinels, unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0, username, password)


def parse_redis_url(url: str) -> RedisTarget:
    """A redis://, rediss:// or unix:// URL (redis+sentinel:// has `parse_sentinel_url`)."""
    if url.startswith(("redis://", "rediss://")):
        tls = url.startswith("rediss://")
        parts = urlsplit(url)
        if parts.fragment:
            raise ValueError(f"a fragment is not supported in {url!r}")
        netloc, username, password = _credentials(parts.netloc)
        host, port = _host_port(netloc, DEFAULT_PORT, "Redis", url) if netloc else ("127.0.0.1", DEFAULT_PORT)
        path = parts.path.strip("/")
        if "/" in path:
            raise ValueError(f"the path is /db, got {parts.path!r} in {url!r}")
        db = _db(path, url) if path else 0
        query = parse_qs(parts.query)
        if "db" in query:
            db = _db(query["db"][-1], url)
        return RedisTarget(host=host, port=port, tls=tls, db=db, username=username, password=password)
    if url.startswith("unix://"):
        parts = urlsplit(url)
        _, username, password = _credentials(parts.netloc)
        if not parts.path or parts.path == "/":
            raise ValueError(f"no socket path in {url!r} (unix:///path/to/redis.sock)")
        query = parse_qs(parts.query)
        db = _db(query["db"][-1], url) if "db" in query else 0
        return RedisTarget(path=unquote(parts.path), db=db, username=username, password=password)
    raise ValueError(f"must start with redis://, rediss://, unix:// or redis+sentinel://, got {url!r}")


def validate_redis_url(url: str) -> None:
    """Raise ValueError naming what is wrong with a REDIS_URL of any supported scheme."""
    if url.startswith(SENTINEL_SCHEME):
        parse_sentinel_url(url)
    else:
        parse_redis_url(url)


def parse_cluster_nodes(nodes: Iterable[str]) -> list[Address]:
    """`host:port` items (REDIS_CLUSTER_NODES) as addresses; raises ValueError naming the bad one."""
    found = []
    for item in nodes:
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {item!r}")
        found.append((host.strip("[]"), int(port)))
    return found


def cluster_seeds(nodes: Iterable[str], redis_url: str | None) -> list[Address]:
    """The seeds of a Redis Cluster: REDIS_CLUSTER_NODES, or else the host and port of
    REDIS_URL (one seed is enough: the others are learnt from CLUSTER SLOTS)."""
    nodes = list(nodes)
    if nodes:
        return parse_cluster_nodes(nodes)
    if redis_url:
        target = parse_redis_url(redis_url)
        if target.host is None:
            raise ValueError(f"a Redis Cluster is reached over TCP, not {redis_url!r}")
        return [(target.host, target.port)]
    raise ValueError("sharded mode needs REDIS_CLUSTER_NODES or REDIS_URL")
