"""Who may open the admin UI: @socket.io/admin-ui's basic authentication, and its session ids.

The UI sends `auth: {username, password}` in its CONNECT; the password is checked with bcrypt
against ADMIN_PASSWORD_HASH and, on success, the server emits `session` (once the socket is connected) with a fresh id that the
UI keeps and sends back as `auth: {sessionId}` when it reconnects, so the password is typed (and
bcrypt paid for) once. Session ids live in a store: this node's memory on a single node, a Redis
key with a TTL when REDIS_URL is set (the package's RedisStore format, `socket.io-admin#<id>`),
so the UI can reconnect to any node of the cluster, or to a Node.js server sharing that store.

bcrypt is slow on purpose: it runs in a thread of the loop's executor, only for a CONNECT whose
username matches, and failed attempts are limited per client address (the same token bucket as
the publish API's), so guessing costs the guesser, not the loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import bcrypt
from redis.exceptions import RedisError

from ..api import AuthFailureThrottle
from ..config import Settings
from ..sio import ConnectionRefused, Socket

log = logging.getLogger("gateway.admin")

# The key prefix of @socket.io/admin-ui's RedisStore (its `prefix` option's default).
SESSION_KEY_PREFIX = "socket.io-admin"
# Bounds one session-store round trip: a login must not hang on a Redis that does not answer.
STORE_TIMEOUT_S = 2.0

INVALID_CREDENTIALS = "invalid credentials"  # the package's own refusal message
TOO_MANY_ATTEMPTS = "too many failed attempts"
TOO_MANY_CONNECTIONS = "too many admin connections"


def new_session_id() -> str:
    """16 hex characters, as the package's randomBytes(8)."""
    return secrets.token_hex(8)


class SessionStore(Protocol):
    """Where admin session ids are kept between a login and the UI's reconnects."""

    dropped: int  # ids forgotten before their time because ADMIN_MAX_SESSIONS was reached

    async def exists(self, session_id: str) -> bool: ...

    async def save(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


class MemorySessions:
    """This node's session ids, each valid `ttl_s`, at most `max_sessions` (oldest dropped)."""

    def __init__(self, ttl_s: float, max_sessions: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self.dropped = 0  # forgotten before their time because the store was full

    async def exists(self, session_id: str) -> bool:
        expiry = self._expiry.get(session_id)
        if expiry is None:
            return False
        if expiry <= self.clock():
            del self._expiry[session_id]
            return False
        return True

    async def save(self, session_id: str) -> None:
        now = self.clock()
        sessions = self._expiry
        while sessions:  # the oldest first: drop what has expired
            oldest, expiry = next(iter(sessions.items()))
            if expiry > now:
                break
            del sessions[oldest]
        while len(sessions) >= self.max_sessions:
            sessions.popitem(last=False)
            self.dropped += 1
        sessions[session_id] = now + self.ttl_s

    async def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._expiry)


class RedisSessions:
    """Session ids shared by every node: `socket.io-admin#<id>` keys with a TTL (what the
    package's RedisStore writes and reads), plus a sorted set of them by creation time so that
    at most `max_sessions` stay valid cluster-wide (the oldest are deleted first)."""

    def __init__(self, settings: Settings, ttl_s: int, max_sessions: int, prefix: str = SESSION_KEY_PREFIX) -> None:
        from ..redis.client import redis_client

        self.redis = redis_client(settings, decode_responses=True, socket_connect_timeout=STORE_TIMEOUT_S, socket_timeout=STORE_TIMEOUT_S)
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.prefix = prefix
        self.index = f"{prefix}#sessions"  # session ids are hex, so no id can be "sessions"
        self.dropped = 0

    def key(self, session_id: str) -> str:
        return f"{self.prefix}#{session_id}"

    async def exists(self, session_id: str) -> bool:
        return bool(await asyncio.wait_for(self.redis.exists(self.key(session_id)), STORE_TIMEOUT_S))

    async def save(self, session_id: str) -> None:
        await asyncio.wait_for(self._save(session_id), STORE_TIMEOUT_S)

    async def _save(self, session_id: str) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key(session_id), "true", ex=self.ttl_s)
            pipe.zadd(self.index, {session_id: now})
            pipe.zremrangebyscore(self.index, "-inf", now - self.ttl_s)
            pipe.expire(self.index, self.ttl_s)
            pipe.zcard(self.index)
            count = (await pipe.execute())[-1]
        excess = int(count) - self.max_sessions
        if excess > 0:
            oldest = await self.redis.zrange(self.index, 0, excess - 1)
            if oldest:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(*(self.key(sid) for sid in oldest))
                    pipe.zrem(self.index, *oldest)
                    await pipe.execute()
                self.dropped += len(oldest)

    async def close(self) -> None:
        await self.redis.aclose()


@dataclass
class LoginStats:
    """Admin logins by outcome; /metrics reads them as sio_gateway_admin_logins_total."""

    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("password", "session", "open", "invalid", "throttled", "full"), 0))
    store_errors: int = 0


class AdminAuth:
    """The /admin namespace's middleware: capacity, then a known session id, then the password."""

    def __init__(self, settings: Settings, sessions: SessionStore, connected: Callable[[], int]) -> None:
        self.username = settings.admin_username
        self.password_hash = settings.admin_password_hash.encode() if settings.admin_password_hash else None
        self.sessions = sessions
        self.connected = connected  # admin sockets on this node now
        self.max_connections = settings.admin_max_connections
        self.throttle = AuthFailureThrottle(settings.admin_auth_failures_per_min, settings.admin_auth_tracked_addresses)
        self.stats = LoginStats()
        self.checking = 0  # logins in their middleware now (a bcrypt check may be running)
        # Session ids issued to sockets still being admitted; sent as `session` once connected
        # (a socket not admitted after all takes its entry with it).
        self.issued: weakref.WeakKeyDictionary[Socket, str] = weakref.WeakKeyDictionary()

    @property
    def open(self) -> bool:
        """No credentials configured: anyone may connect (the package's `auth: false`)."""
        return self.password_hash is None

    async def __call__(self, socket: Socket) -> None:
        outcomes = self.stats.outcomes
        if self.connected() + self.checking >= self.max_connections:
            outcomes["full"] += 1
            log.warning("admin_login_refused reason=full address=%s limit=%d", socket.handshake.get("address"), self.max_connections)
            raise ConnectionRefused(TOO_MANY_CONNECTIONS)
        if self.open:
            outcomes["open"] += 1
            return
        self.checking += 1
        try:
            await self._authenticate(socket)
        finally:
            self.checking -= 1

    async def _authenticate(self, socket: Socket) -> None:
        outcomes = self.stats.outcomes
        auth = socket.handshake.get("auth")
        auth = auth if isinstance(auth, dict) else {}
        session_id = auth.get("sessionId")
        if isinstance(session_id, str) and session_id and await self._known(session_id):
            outcomes["session"] += 1
            return
        address = str(socket.handshake.get("address", ""))
        retry_after = self.throttle.retry_after(address)
        if retry_after is not None:
            outcomes["throttled"] += 1
            log.info("admin_login_refused reason=throttled address=%s retry_after_s=%d", address, retry_after)
            raise ConnectionRefused(TOO_MANY_ATTEMPTS, {"retryAfter": retry_after})
        if await self._password_matches(auth.get("username"), auth.get("password")):
            session_id = new_session_id()
            try:
                await self.sessions.save(session_id)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                # The login stands; only a reconnect will ask for the password again.
                self.stats.store_errors += 1
                log.warning("admin_session_save_failed error=%r", exc)
            outcomes["password"] += 1
            log.info("admin_login address=%s sid=%s", address, socket.id)
            self.issued[socket] = session_id
            return
        outcomes["invalid"] += 1
        if self.throttle.failed(address):
            log.warning("admin_login_throttled address=%s failures_per_min=%d", address, int(self.throttle.capacity))
        log.info("admin_login_refused reason=invalid address=%s", address)
        raise ConnectionRefused(INVALID_CREDENTIALS)

    async def _known(self, session_id: str) -> bool:
        try:
            return await self.sessions.exists(session_id)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.stats.store_errors += 1
            log.warning("admin_session_lookup_failed error=%r", exc)
            return False

    async def _password_matches(self, username: Any, password: Any) -> bool:
        """bcrypt only for the configured username (as the package), in an executor thread."""
        assert self.username is not None and self.password_hash is not None
        if not isinstance(username, str) or not isinstance(password, str):
            return False
        if not hmac.compare_digest(username.encode(), self.username.encode()):
            return False
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _checkpw, password.encode(), self.password_hash)


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # e.g. a password over bcrypt's 72 bytes: not a match
        return False


def session_store(settings: Settings) -> SessionStore:
    """Redis keys shared by the cluster when REDIS_URL is set, else this node's memory."""
    if settings.redis_url:
        return RedisSessions(settings, settings.admin_session_ttl_s, settings.admin_max_sessions)
    return MemorySessions(settings.admin_session_ttl_s, settings.admin_max_sessions)
