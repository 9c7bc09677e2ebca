"""The publish API: how a backend reaches clients on every node, over plain HTTP.

    POST /api/emit          {"namespace"?: "/", "rooms": [..], "except"?: [..], "event": "..", "data"?: ..}
    POST /api/disconnect    {"namespace"?: "/", "rooms": [..], "close"?: false}
    GET  /api/rooms/<room>?namespace=/      -> {"room", "namespace", "sockets"}   (cluster-wide)
    GET  /api/presence/<room>?namespace=/   -> {"room", "namespace", "users", "count"}
                                               (503 {"ok": false, "error": "presence unavailable"}
                                               while presence cannot be trusted)

Every request carries `Authorization: Bearer <one of API_KEYS>`. Emits go through the namespace's
adapter (`server.of(nsp).to(rooms).except_(..).emit(..)`), so with Redis every node delivers them,
exactly as a socket.io server's own broadcast would. Errors are JSON: `{"error": "...", "detail"?}`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from redis.exceptions import RedisError

from protocol.socketio import RESERVED_EVENTS

from .policy import PolicyError, room_name
from .presence import PresenceUnavailable
from .sio.adapter import AdapterError

if TYPE_CHECKING:
    from .config import Settings
    from .http import Request
    from .presence import Presence
    from .serve import Server

log = logging.getLogger("gateway.api")

JSON = "application/json"


class ApiError(Exception):
    """Answered to the caller as `status` with a JSON error body."""

    def __init__(self, status: int, error: str, detail: str | None = None) -> None:
        super().__init__(detail or error)
        self.status = status
        self.error = error
        self.detail = detail


@dataclass
class ApiStats:
    emits: int = 0
    disconnects: int = 0
    unauthorized: int = 0
    bad_requests: int = 0
    throttled: int = 0


class AuthFailureThrottle:
    """Failed authentications per client address: a token bucket of `per_minute` tokens that
    refills at `per_minute` a minute; each failure takes one, and an address with none left is
    answered 429 before its key is even looked at, so keys cannot be guessed at line rate.

    Memory is bounded: at most `max_tracked` addresses (the oldest is forgotten first); IPv6
    clients count per /64, the block one subscriber usually holds, so rotating addresses inside
    it buys nothing. A successful request costs one dict lookup."""

    def __init__(self, per_minute: int, max_tracked: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_tracked = max_tracked
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @staticmethod
    def key(address: str) -> str:
        if ":" not in address:
            return address
        try:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        except ValueError:
            return address

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.capacity
        tokens, when = entry
        return min(self.capacity, tokens + (now - when) * self.rate)

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None when it may now."""
        if not self.enabled or not self._buckets:
            return None
        key = self.key(address)
        if key not in self._buckets:
            return None
        tokens = self._tokens(key, self.clock())
        if tokens >= 1.0:
            return None
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def failed(self, address: str) -> bool:
        """Count one failure; True when this one used the address's last try."""
        if not self.enabled:
            return False
        key = self.key(address)
        now = self.clock()
        tokens = self._tokens(key, now) - 1.0
        buckets = self._buckets
        if key not in buckets and len(buckets) >= self.max_tracked:
            del buckets[next(iter(buckets))]
        buckets[key] = (max(tokens, 0.0), now)
        return tokens < 1.0

    def __len__(self) -> int:
        return len(self._buckets)


def _rooms(value: Any, what: str, required: bool) -> list[str]:
    if value is None:
        if required:
            raise ApiError(400, "bad request", f"{what} is required")
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or (required and not items):
        raise ApiError(400, "bad request", f"{what} must be a room name or a non-empty list of room names")
    try:
        return [room_name(item) for item in items]
    except PolicyError as exc:
        raise ApiError(400, "bad request", f"{what}: {exc}") from None


class PublishApi:
    def __init__(self, server: "Server", settings: "Settings", presence: "Presence") -> None:
        self.server = server
        self.settings = settings
        self.presence = presence
        self.keys = [key.encode() for key in settings.api_keys]
        self.stats = ApiStats()
        self.auth_throttle = AuthFailureThrottle(settings.api_auth_failures_per_min, settings.api_auth_tracked_addresses)

    def mount(self) -> None:
        router = self.server.router
        router.add("/api/emit", self._endpoint("POST", self.emit))
        router.add("/api/disconnect", self._endpoint("POST", self.disconnect))
        router.add("/api/rooms/", self._endpoint("GET", self.room), prefix=True)
        router.add("/api/presence/", self._endpoint("GET", self.room_presence), prefix=True)

    # -- plumbing ------------------------------------------------------------------------------

    def authorized(self, request: "Request") -> bool:
        """Constant-time comparison against every key (no early exit on the first match)."""
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented or not self.keys:
            return False
        candidate = presented.strip().encode()
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched

    def _endpoint(self, method: str, action: Callable[["Request"], Awaitable[tuple[int, Any]]]) -> Callable[["Request"], Awaitable[None]]:
        async def handle(request: "Request") -> None:
            retry_after: int | None = None
            try:
                throttle = self.auth_throttle
                address = self.server.client_address(request) if throttle.enabled else request.remote_address
                retry_after = throttle.retry_after(address)
                if retry_after is not None:
                    self.stats.throttled += 1
                    raise ApiError(429, "too many failed authentications", f"retry in {retry_after} s")
                if not self.authorized(request):
                    self.stats.unauthorized += 1
                    log.info("api_unauthorized path=%s address=%s", request.path, address)
                    if throttle.failed(address):
                        log.warning("api_auth_throttled address=%s failures_per_min=%d", address, self.settings.api_auth_failures_per_min)
                    raise ApiError(401, "unauthorized")
                if request.method != method:
                    raise ApiError(405, "method not allowed", f"use {method}")
                status, body = await action(request)
            except ApiError as exc:
                if exc.status == 400:
                    self.stats.bad_requests += 1
                error: dict[str, Any] = {"error": exc.error}
                if exc.detail:
                    error["detail"] = exc.detail
                headers = [("WWW-Authenticate", "Bearer")] if exc.status == 401 else [("Allow", method)] if exc.status == 405 else []
                if exc.status == 429 and retry_after is not None:
                    headers = [("Retry-After", str(retry_after))]
                request.respond(exc.status, orjson.dumps(error), headers, content_type=JSON)
                return
            request.respond(status, orjson.dumps(body), content_type=JSON)

        return handle

    def _json(self, request: "Request") -> dict[str, Any]:
        if len(request.body) > self.settings.api_max_body_bytes:
            raise ApiError(413, "payload too large", f"at most {self.settings.api_max_body_bytes} bytes")
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "bad request", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad request", "the body must be a JSON object")
        return body

    def _namespace(self, name: Any) -> str:
        if name is None:
            name = "/"
        if not isinstance(name, str):
            raise ApiError(400, "bad request", "namespace must be a string")
        if not name.startswith("/"):
            name = "/" + name
        if name not in self.settings.namespaces or name not in self.server.namespaces:
            raise ApiError(404, "unknown namespace", name)
        return name

    def _room_from_path(self, request: "Request", prefix: str) -> str:
        try:
            return room_name(request.path[len(prefix):])
        except PolicyError as exc:
            raise ApiError(400, "bad request", str(exc)) from None

    # -- endpoints -----------------------------------------------------------------------------

    async def emit(self, request: "Request") -> tuple[int, Any]:
        body = self._json(request)
        nsp = self._namespace(body.get("namespace"))
        rooms = _rooms(body.get("rooms"), "rooms", required=True)
        except_ = _rooms(body.get("except"), "except", required=False)
        event = body.get("event")
        if not isinstance(event, str) or not event:
            raise ApiError(400, "bad request", "event must be a non-empty string")
        if event in RESERVED_EVENTS:
            raise ApiError(400, "bad request", f"{event!r} is a reserved event name")
        args = [body["data"]] if "data" in body else []
        self.server.of(nsp).to(rooms).except_(except_).emit(event, *args)
        self.stats.emits += 1
        log.debug("api_emit nsp=%s rooms=%s except=%s event=%s", nsp, rooms, except_, event)
        return 200, {"ok": True}

    async def disconnect(self, request: "Request") -> tuple[int, Any]:
        body = self._json(request)
        nsp = self._namespace(body.get("namespace"))
        rooms = _rooms(body.get("rooms"), "rooms", required=True)
        close = body.get("close", False)
        if not isinstance(close, bool):
            raise ApiError(400, "bad request", "close must be true or false")
        self.server.of(nsp).in_(rooms).disconnect_sockets(close)
        self.stats.disconnects += 1
        log.info("api_disconnect nsp=%s rooms=%s close=%s", nsp, rooms, close)
        return 200, {"ok": True}

    async def room(self, request: "Request") -> tuple[int, Any]:
        room = self._room_from_path(request, "/api/rooms/")
        nsp = self._namespace(request.query.get("namespace"))
        try:
            sockets = await self.server.of(nsp).in_(room).fetch_sockets()
        except AdapterError as exc:
            log.warning("api_rooms_failed room=%s error=%r", room, exc)
            raise ApiError(503, "cluster unavailable", str(exc)) from None
        return 200, {"room": room, "namespace": nsp, "sockets": len(sockets)}

    async def room_presence(self, request: "Request") -> tuple[int, Any]:
        room = self._room_from_path(request, "/api/presence/")
        nsp = self._namespace(request.query.get("namespace"))
        try:
            users = await self.presence.users(nsp, room)
        except (PresenceUnavailable, RedisError, OSError) as exc:
            # Never a list that may be missing users: the caller can retry or fall back.
            log.warning("api_presence_unavailable room=%s error=%r", room, exc)
            return 503, {"ok": False, "error": "presence unavailable"}
        return 200, {"room": room, "namespace": nsp, "users": users, "count": len(users)}
