"""Settings: parsed and validated once, at start-up, from environment variables.

One frozen object is built here and passed down; nothing else in the gateway reads the
environment. A bad value stops the process with a message that names the variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .redis.urls import parse_sentinel_url


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _str(raw: str) -> str:
    return raw.strip()


def _path(raw: str) -> str:
    raw = raw.strip()
    if not raw.startswith("/") or " " in raw:
        raise ValueError(f"must be a URL path starting with '/', got {raw!r}")
    return raw.rstrip("/") or "/"


def _origins(raw: str) -> tuple[str, ...]:
    items = tuple(o.strip() for o in raw.split(",") if o.strip())
    for item in items:
        if item != "*" and not (item.startswith("http://") or item.startswith("https://")):
            raise ValueError(f"origins are '*' or http(s)://host[:port], got {item!r}")
    return items


def _level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return value


def _redis_url(raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    if raw.startswith("redis+sentinel://"):
        parse_sentinel_url(raw)  # raises ValueError naming what is wrong
        return raw
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must start with redis://, rediss://, unix:// or redis+sentinel://, got {raw!r}")
    return raw


def _networks(raw: str) -> tuple[str, ...]:
    items = _list(raw)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"expected IP addresses or networks (10.0.0.0/8), got {item!r}") from None
    return items


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        for choice in choices:
            if raw.strip().lower() == choice.lower():
                return choice
        raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")

    return parse


def _optional(raw: str) -> str | None:
    return raw.strip() or None


def _optional_port(raw: str) -> int | None:
    return _int(0, 65535)(raw) if raw.strip() else None


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _namespaces(raw: str) -> tuple[str, ...]:
    items = _list(raw)
    if not items:
        raise ValueError("at least one namespace is needed")
    for item in items:
        if not item.startswith("/") or " " in item:
            raise ValueError(f"namespaces start with '/', got {item!r}")
    return items


def _client_events(raw: str) -> tuple[str, ...]:
    items = _list(raw)
    for item in items:
        event, _, pattern = item.partition(":")
        if not event or not pattern:
            raise ValueError(f"rules are event:room-pattern (e.g. typing:conversation:*), got {item!r}")
    return items


# A bcrypt hash as bcrypt and bcryptjs write it: version, two-digit cost, 22 salt + 31 hash chars.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def setting(env: str, default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    host: str = setting("HOST", "127.0.0.1", _str, "address to listen on")
    port: int = setting("PORT", 3001, _int(0, 65535), "TCP port to listen on")
    ops_host: str = setting("OPS_HOST", "127.0.0.1", _str, "address of the internal operations port (OPS_PORT); keep it off the internet (0.0.0.0 or the pod IP for Kubernetes probes and Prometheus)")
    ops_port: int | None = setting(
        "OPS_PORT", None, _optional_port, "serve /health, /health/live, /health/ready, /stats and /metrics only on this internal port (the public PORT answers 404 for them); unset = on PORT; 0 = a free port"
    )
    sio_path: str = setting("SIO_PATH", "/socket.io", _path, "path of the Socket.IO endpoint")
    ping_interval_ms: int = setting("PING_INTERVAL_MS", 25000, _int(50, 3_600_000), "Engine.IO ping interval")
    ping_timeout_ms: int = setting("PING_TIMEOUT_MS", 20000, _int(50, 3_600_000), "time to wait for a pong")
    max_payload: int = setting("MAX_PAYLOAD_BYTES", 1_000_000, _int(1024, 100_000_000), "largest accepted message or POST body")
    connect_timeout_ms: int = setting("CONNECT_TIMEOUT_MS", 45000, _int(100, 3_600_000), "close a session that joins no namespace in time")
    upgrade_timeout_ms: int = setting("UPGRADE_TIMEOUT_MS", 10000, _int(100, 600_000), "time allowed to finish a transport upgrade")
    max_buffered_bytes: int = setting(
        "MAX_BUFFERED_BYTES", 1 << 20, _int(4096, 1 << 30), "unsent output a connection may hold (WebSocket send queue, polling queue); past it the client is disconnected as a slow consumer"
    )
    cors_origins: tuple[str, ...] = setting("CORS_ORIGINS", (), _origins, "comma-separated allowed origins for polling CORS ('*' for any); empty = no CORS headers")
    log_level: str = setting("LOG_LEVEL", "INFO", _level, "DEBUG logs every packet")
    # -- the HTTP front's bounds (gateway/http/): clients are not trusted to be quick or small --
    http_header_timeout_ms: int = setting("HTTP_HEADER_TIMEOUT_MS", 10000, _int(100, 3_600_000), "a request line and headers must arrive within this (408, or a plain close when nothing was sent)")
    http_body_timeout_ms: int = setting("HTTP_BODY_TIMEOUT_MS", 30000, _int(100, 3_600_000), "a request body must arrive within this after its headers (408)")
    http_keepalive_timeout_ms: int = setting(
        "HTTP_KEEPALIVE_TIMEOUT_MS", 75000, _int(100, 3_600_000), "close a keep-alive connection idle this long between requests (a pending long-poll or a WebSocket is not idle)"
    )
    http_max_header_bytes: int = setting("HTTP_MAX_HEADER_BYTES", 16384, _int(1024, 1 << 20), "request line plus headers, in bytes (431 beyond; 414 for the URL alone)")
    http_max_headers: int = setting("HTTP_MAX_HEADERS", 100, _int(8, 10_000), "header lines a request may have (431 beyond)")
    http_max_pipelined: int = setting("HTTP_MAX_PIPELINED", 16, _int(1, 10_000), "requests queued behind a pending one on a connection before reading pauses")
    http_max_pipelined_bytes: int = setting("HTTP_MAX_PIPELINED_BYTES", 1 << 20, _int(1024, 1 << 30), "bodies queued behind a pending request on a connection before reading pauses")
    http_max_connections: int = setting(
        "HTTP_MAX_CONNECTIONS", 0, _int(0, 10_000_000), "open TCP connections, upgraded or not (more are closed at once); 0 = 90% of the open-file limit (RLIMIT_NOFILE)"
    )
    redis_url: str | None = setting("REDIS_URL", None, _redis_url, "Redis for the cluster bridge; unset = single node, in-memory adapter")
    redis_prefix: str = setting("REDIS_KEY_PREFIX", "socket.io", _str, "channel prefix shared with @socket.io/redis-adapter (its `key` option)")
    requests_timeout_ms: int = setting("REQUESTS_TIMEOUT_MS", 5000, _int(10, 600_000), "timeout of cluster-wide requests (fetch_sockets, server_side_emit)")
    publish_on_specific_response_channel: bool = setting(
        "PUBLISH_ON_SPECIFIC_RESPONSE_CHANNEL", False, _bool, "answer cluster requests on the requester's own response channel"
    )
    reconnect_initial_ms: int = setting("REDIS_RECONNECT_INITIAL_MS", 100, _int(10, 60_000), "first Redis reconnect delay (doubles each attempt, with jitter)")
    reconnect_max_ms: int = setting("REDIS_RECONNECT_MAX_MS", 3000, _int(10, 600_000), "cap of the Redis reconnect delay")
    reconnect_attempts: int = setting("REDIS_RECONNECT_ATTEMPTS", 10, _int(1, 1_000_000), "attempts before the node declares itself single-node (it keeps retrying at the cap)")
    outbox_max_messages: int = setting("OUTBOX_MAX_MESSAGES", 10000, _int(0, 10_000_000), "cross-node messages kept while Redis is unreachable")
    outbox_max_age_ms: int = setting("OUTBOX_MAX_AGE_MS", 10000, _int(0, 3_600_000), "oldest cross-node message replayed after an outage")
    watchdog_ms: int = setting("REDIS_WATCHDOG_MS", 3000, _int(200, 600_000), "rebuild a subscriber that stops receiving its own probes for this long")
    shutdown_deadline_ms: int = setting("SHUTDOWN_DEADLINE_MS", 10000, _int(100, 600_000), "graceful shutdown deadline on SIGTERM/SIGINT")
    loop_stall_ms: int = setting(
        "LOOP_STALL_MS", 10000, _int(0, 3_600_000), "exit with code 70 (for the supervisor to restart the node) when the event loop is blocked this long; 0 = no watchdog"
    )
    gc_gen0_threshold: int = setting(
        "GC_GEN0_THRESHOLD",
        10000,
        _int(0, 10_000_000),
        "allocations between young-generation garbage collections once the node serves (objects alive at start are frozen out of collections); Python's own 700 makes a busy node collect hundreds of times a second; 0 = leave Python's settings alone",
    )
    # -- connection state recovery (gateway/sio/recovery.py), socket.io's connectionStateRecovery --
    state_recovery_ms: int | None = setting(
        "STATE_RECOVERY_MS",
        None,
        _int(0, 86_400_000),
        "keep a disconnected socket's id, rooms, data and missed packets this long for a client reconnecting with its pid/offset; 0 = off; unset = off for the library Server, 120000 for sio-gateway where the adapter keeps sessions (memory, REDIS_MODE=streams)",
    )
    state_recovery_skip_middlewares: bool = setting("STATE_RECOVERY_SKIP_MIDDLEWARES", True, _bool, "a recovered socket skips the namespace's middlewares (as socket.io's skipMiddlewares)")
    state_recovery_max_packets: int = setting(
        "STATE_RECOVERY_MAX_PACKETS", 10000, _int(1, 10_000_000), "packets kept per namespace for recovery (in memory); the oldest goes first, and a client whose offset is older recovers nothing (stale)"
    )
    state_recovery_max_bytes: int = setting(
        "STATE_RECOVERY_MAX_BYTES", 64 << 20, _int(1024, 1 << 40), "encoded bytes of the packets kept per namespace for recovery (in memory); the oldest goes first"
    )
    state_recovery_max_sessions: int = setting(
        "STATE_RECOVERY_MAX_SESSIONS", 100000, _int(1, 100_000_000), "disconnected sessions kept per namespace for recovery (in memory); the oldest goes first"
    )
    # -- the standalone gateway (gateway/auth.py, policy.py, api.py, presence.py, limits.py) --
    auth_mode: str = setting("AUTH_MODE", "jwt", _choice("jwt", "none"), "jwt: clients must send auth {token}; none: anyone may connect and join any room (development only)")
    jwt_algorithm: str = setting("JWT_ALGORITHM", "HS256", _choice("HS256", "RS256", "ES256"), "algorithm tokens must be signed with (no other is accepted)")
    jwt_secret: str | None = setting("JWT_SECRET", None, _optional, "shared secret for HS256")
    jwt_public_key_file: str | None = setting("JWT_PUBLIC_KEY_FILE", None, _optional, "PEM public key file for RS256/ES256")
    jwt_audience: str | None = setting("JWT_AUDIENCE", None, _optional, "required `aud` claim; unset = not checked")
    jwt_issuer: str | None = setting("JWT_ISSUER", None, _optional, "required `iss` claim; unset = not checked")
    jwt_leeway_ms: int = setting("JWT_LEEWAY_MS", 0, _int(0, 3_600_000), "clock skew tolerated on exp/nbf")
    api_keys: tuple[str, ...] = setting("API_KEYS", (), _list, "comma-separated bearer keys for /api/*; empty = the API refuses every request")
    api_max_body_bytes: int = setting("API_MAX_BODY_BYTES", 65536, _int(64, 100_000_000), "largest /api request body (MAX_PAYLOAD_BYTES caps it too)")
    api_auth_failures_per_min: int = setting(
        "API_AUTH_FAILURES_PER_MIN", 30, _int(0, 1_000_000), "failed /api authentications a client address may make per minute (token bucket); beyond, 429 with Retry-After; 0 = no limit"
    )
    api_auth_tracked_addresses: int = setting("API_AUTH_TRACKED_ADDRESSES", 10000, _int(1, 10_000_000), "client addresses the failed-auth limit remembers (oldest forgotten first)")
    namespaces: tuple[str, ...] = setting("NAMESPACES", ("/",), _namespaces, "comma-separated namespaces clients may connect to")
    client_events: tuple[str, ...] = setting("CLIENT_EVENTS", ("typing:conversation:*",), _client_events, "event:room-pattern rules: events clients may relay to a matching room they joined")
    presence_rooms: tuple[str, ...] = setting("PRESENCE_ROOMS", ("company:*", "conversation:*"), _list, "room patterns whose online users are tracked; empty = no presence")
    presence_timeout_ms: int = setting("PRESENCE_TIMEOUT_MS", 15000, _int(1000, 3_600_000), "a dead node's users leave presence within this time")
    presence_leave_grace_ms: int = setting(
        "PRESENCE_LEAVE_GRACE_MS", 5000, _int(0, 3_600_000), "a user's last tab out leaves presence only after this grace; a reconnect anywhere in the cluster meanwhile cancels it (0 = leave at once)"
    )
    rate_limit_per_s: int = setting("RATE_LIMIT_EVENTS_PER_S", 20, _int(0, 1_000_000), "events a socket may send per second, sustained (token bucket refill); 0 = no limit")
    rate_limit_burst: int = setting("RATE_LIMIT_BURST", 40, _int(1, 1_000_000), "events a socket may send at once (token bucket size)")
    rate_limit_disconnect_after: int = setting("RATE_LIMIT_DISCONNECT_AFTER", 100, _int(0, 1_000_000), "close a connection after this many events dropped within 10 s; 0 = never")
    max_rooms_per_socket: int = setting("MAX_ROOMS_PER_SOCKET", 100, _int(1, 1_000_000), "rooms a socket may be in (its own id room not counted)")
    max_connections: int = setting("MAX_CONNECTIONS", 0, _int(0, 10_000_000), "Engine.IO sessions this node accepts; 0 = no limit")
    allowed_origins: tuple[str, ...] = setting("ALLOWED_ORIGINS", (), _origins, "Origin headers accepted on new connections (WebSocket and polling); empty = any; also the CORS list when CORS_ORIGINS is empty")
    # -- Redis Cluster with sharded pub/sub (gateway/cluster/sharded.py) --
    redis_mode: str = setting(
        "REDIS_MODE",
        "classic",
        _choice("classic", "sharded", "streams"),
        "classic: PUBLISH/SUBSCRIBE (createAdapter); sharded: Redis Cluster SPUBLISH/SSUBSCRIBE (createShardedAdapter); streams: one Redis stream + PUBLISH (@socket.io/redis-streams-adapter), with connection state recovery across nodes",
    )
    # -- REDIS_MODE=streams (gateway/cluster/streams.py), the Node adapter's defaults --
    redis_stream_name: str = setting("REDIS_STREAM_NAME", "socket.io", _str, "the Redis stream every node appends to and reads (its `streamName`)")
    redis_stream_maxlen: int = setting("REDIS_STREAM_MAXLEN", 10000, _int(10, 100_000_000), "entries the stream keeps (XADD MAXLEN ~): a client whose offset was trimmed gets a fresh connection")
    redis_stream_read_count: int = setting("REDIS_STREAM_READ_COUNT", 100, _int(1, 100_000), "entries one XREAD returns at most")
    redis_stream_block_ms: int = setting("REDIS_STREAM_BLOCK_MS", 5000, _int(10, 600_000), "how long one XREAD BLOCK waits for new entries")
    redis_stream_replay_page: int = setting("REDIS_STREAM_REPLAY_PAGE", 1000, _int(1, 100_000), "entries one XRANGE of a recovery reads (never the whole stream in one call)")
    redis_stream_replay_max_pages: int = setting(
        "REDIS_STREAM_REPLAY_MAX_PAGES", 100, _int(1, 100_000), "XRANGE pages one recovery may read; more = not recovered (a fresh connection, counted), never a partial replay"
    )
    redis_session_key_prefix: str = setting("REDIS_SESSION_KEY_PREFIX", "sio:session:", _str, "key prefix of kept sessions (`<prefix><pid>`, the Node adapter's `sessionKeyPrefix`)")
    redis_session_flush_ms: int = setting("REDIS_SESSION_FLUSH_MS", 200, _int(10, 60_000), "a connected socket's session is written to Redis at most this long after it connects or its rooms change")
    redis_session_refresh_ms: int = setting(
        "REDIS_SESSION_REFRESH_MS", 30000, _int(1000, 3_600_000), "connected sockets' sessions (and their data) are rewritten this often, kept STATE_RECOVERY_MS + this long, so a node's death leaves them recoverable"
    )
    redis_session_batch: int = setting("REDIS_SESSION_BATCH", 1000, _int(1, 1_000_000), "session writes queued per flush at most (the rest wait for the next flush)")
    redis_cluster_nodes: tuple[str, ...] = setting("REDIS_CLUSTER_NODES", (), _list, "comma-separated host:port seeds of the Redis Cluster (REDIS_MODE=sharded); empty = the host:port of REDIS_URL")
    redis_subscription_mode: str = setting("REDIS_SUBSCRIPTION_MODE", "dynamic", _choice("dynamic", "static", "dynamic-private"), "sharded subscriptionMode: dynamic = one channel per public room while this node has members in it")
    # -- deployment (gateway/proxies.py, gateway/redis/client.py, gateway/topology.py) --
    trusted_proxies: tuple[str, ...] = setting(
        "TRUSTED_PROXIES", (), _networks, "comma-separated proxy addresses/networks whose X-Forwarded-For is believed (e.g. 127.0.0.1 for a local nginx); empty = the peer address is the client"
    )
    redis_tls_ca_file: str | None = setting("REDIS_TLS_CA_FILE", None, _optional, "PEM CA bundle that signs the Redis server certificate (rediss://); unset = the system CAs")
    redis_tls_cert_file: str | None = setting("REDIS_TLS_CERT_FILE", None, _optional, "PEM client certificate for Redis (with REDIS_TLS_KEY_FILE), when Redis requires one")
    redis_tls_key_file: str | None = setting("REDIS_TLS_KEY_FILE", None, _optional, "PEM private key of REDIS_TLS_CERT_FILE")
    redis_tls_insecure: bool = setting("REDIS_TLS_INSECURE", False, _bool, "true = do not verify the Redis server certificate (development only; logged loudly)")
    cluster_restart_initial_ms: int = setting(
        "CLUSTER_RESTART_INITIAL_MS", 500, _int(10, 600_000), "`sio-gateway cluster`: wait before restarting a member that died; doubled for each further death of a member that had not stayed up CLUSTER_RESTART_MAX_MS"
    )
    cluster_restart_max_ms: int = setting("CLUSTER_RESTART_MAX_MS", 10000, _int(10, 3_600_000), "`sio-gateway cluster`: longest wait before a restart (the doubling stops there)")
    # -- the /admin namespace of @socket.io/admin-ui (gateway/admin/) --
    admin_ui: bool = setting("ADMIN_UI", False, _bool, "serve the /admin namespace @socket.io/admin-ui connects to (stats, sockets, rooms, events and actions, cluster-wide)")
    admin_username: str | None = setting("ADMIN_USERNAME", None, _optional, "admin UI login name (with ADMIN_PASSWORD_HASH); both unset = no authentication (logged loudly)")
    admin_password_hash: str | None = setting("ADMIN_PASSWORD_HASH", None, _optional, "bcrypt hash ($2a$/$2b$/$2y$) of the admin UI password")
    admin_readonly: bool = setting("ADMIN_READONLY", False, _bool, "true = the admin UI may look but not emit, join, leave or disconnect")
    admin_mode: str = setting(
        "ADMIN_MODE", "development", _choice("development", "production"), "development: every socket, room change and event is sent to the admin UI; production: aggregated stats only"
    )
    admin_session_ttl_s: int = setting("ADMIN_SESSION_TTL_S", 86400, _int(60, 365 * 86400), "an admin login's session id stays valid this long (a Redis key with this TTL when REDIS_URL is set)")
    admin_max_sessions: int = setting("ADMIN_MAX_SESSIONS", 1000, _int(1, 1_000_000), "admin session ids kept at most (the oldest is forgotten first)")
    admin_max_connections: int = setting("ADMIN_MAX_CONNECTIONS", 32, _int(1, 100_000), "admin UI sockets connected to this node at once; more are refused")
    admin_auth_failures_per_min: int = setting(
        "ADMIN_AUTH_FAILURES_PER_MIN", 10, _int(0, 1_000_000), "failed admin logins per client address and minute (token bucket); beyond, logins are refused without a password check; 0 = no limit"
    )
    admin_auth_tracked_addresses: int = setting("ADMIN_AUTH_TRACKED_ADDRESSES", 10000, _int(1, 10_000_000), "client addresses the failed admin login limit remembers (oldest forgotten first)")
    # -- the admin UI's files, served at /admin/ (gateway/ops/static.py) --
    admin_ui_dir: str | None = setting(
        "ADMIN_UI_DIR", None, _optional, "folder of the built @socket.io/admin-ui served at /admin/ (`make admin-ui` puts it at admin-ui/node_modules/@socket.io/admin-ui/ui/dist); unset = not served"
    )
    admin_ui_max_file_bytes: int = setting("ADMIN_UI_MAX_FILE_BYTES", 8 << 20, _int(1024, 1 << 30), "largest file served from ADMIN_UI_DIR; a larger one is answered 404 (counted)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from `env` (default: os.environ); explicit overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if f.name in overrides:
                continue
            raw = env.get(name)
            if raw is None:
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.ping_timeout_ms <= 0 or self.ping_interval_ms <= 0:
            raise ConfigError("PING_INTERVAL_MS and PING_TIMEOUT_MS must be positive")
        if self.cluster_restart_initial_ms > self.cluster_restart_max_ms:
            raise ConfigError(f"CLUSTER_RESTART_INITIAL_MS ({self.cluster_restart_initial_ms}) must not exceed CLUSTER_RESTART_MAX_MS ({self.cluster_restart_max_ms})")
        if self.ops_port and self.ops_port == self.port:
            raise ConfigError(f"OPS_PORT ({self.ops_port}) must differ from PORT: the operations endpoints move off the public port")
        if (self.admin_username is None) != (self.admin_password_hash is None):
            raise ConfigError("ADMIN_USERNAME and ADMIN_PASSWORD_HASH go together: set both, or neither for an admin UI without login")
        if self.admin_password_hash is not None and not _BCRYPT_HASH.fullmatch(self.admin_password_hash):
            raise ConfigError("ADMIN_PASSWORD_HASH: must be a bcrypt hash ($2b$12$ followed by 53 characters), e.g. from python -c 'import bcrypt; print(bcrypt.hashpw(b\"pw\", bcrypt.gensalt()).decode())'")
        if 0 < self.loop_stall_ms < 100:
            raise ConfigError(f"LOOP_STALL_MS must be 0 (off) or at least 100, got {self.loop_stall_ms}")
        if self.auth_mode == "jwt":
            if self.jwt_algorithm == "HS256" and not self.jwt_secret:
                raise ConfigError("JWT_SECRET is required with AUTH_MODE=jwt and JWT_ALGORITHM=HS256 (or set AUTH_MODE=none for development)")
            if self.jwt_algorithm != "HS256":
                if not self.jwt_public_key_file:
                    raise ConfigError(f"JWT_PUBLIC_KEY_FILE is required with JWT_ALGORITHM={self.jwt_algorithm}")
                if not os.path.isfile(self.jwt_public_key_file) or not os.access(self.jwt_public_key_file, os.R_OK):
                    raise ConfigError(f"JWT_PUBLIC_KEY_FILE: cannot read {self.jwt_public_key_file!r}")
        if self.redis_mode == "streams" and not self.redis_url:
            raise ConfigError("REDIS_MODE=streams needs REDIS_URL (the Redis that holds the stream)")
        if self.redis_mode == "sharded":
            if not self.redis_cluster_nodes and not self.redis_url:
                raise ConfigError("REDIS_MODE=sharded needs REDIS_CLUSTER_NODES (host:port,...) or REDIS_URL")
            for node in self.redis_cluster_nodes:
                host, sep, port = node.rpartition(":")
                if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ConfigError(f"REDIS_CLUSTER_NODES: expected host:port, got {node!r}")
        if self.admin_ui_dir is not None and not os.path.isfile(os.path.join(self.admin_ui_dir, "index.html")):
            raise ConfigError(f"ADMIN_UI_DIR: no index.html in {self.admin_ui_dir!r} (run `make admin-ui`; the UI is admin-ui/node_modules/@socket.io/admin-ui/ui/dist)")

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) rows, for --help and the README."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default
            if isinstance(default, tuple):
                default = ",".join(default)
            rows.append((f.metadata["env"], "" if default is None else str(default), f.metadata["doc"]))
        return rows
