"""The standalone gateway's own application: what `sio-gateway` serves without any Python code.

The product is a support chat: users sit in their company room (`company:<id>`) and in
conversation rooms (`conversation:<id>`), the backend publishes into those rooms from anywhere,
and widget customers' presence is visible on every node. Here that becomes:

- on connect, a JWT (`auth: {token}`) is verified (gateway/auth.py); the socket is put in
  `user:<sub>` and in its companies' rooms;
- `join:company` / `leave:company` / `join:conversation` / `leave:conversation` (an id) and
  `subscribe` / `unsubscribe` (a room name) succeed only for rooms the token grants
  (gateway/policy.py); the ack says `{ok: true, room}` or `{ok: false, error}`;
- client-to-client events only by CLIENT_EVENTS rule (e.g. `typing` into a joined conversation);
- presence (`presence:join` / `presence:leave` events, `presence:list` ack) in PRESENCE_ROOMS
  (gateway/presence.py);
- the publish API for backends under `/api` (gateway/api.py);
- limits: event rate, rooms per socket, origins, connections per node (gateway/limits.py).

`build_server` is only the Server with the right adapter, for applications that bring their own
handlers; `build_gateway` is the product.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from redis.exceptions import RedisError

from protocol import socketio as sio
from protocol.socketio import PacketType

from .api import PublishApi
from .auth import TokenVerifier, Unauthorized, token_from_auth
from .config import ConfigError, Settings
from .limits import ConnectionGate, EventRateLimiter, LimitStats, Verdict
from .policy import ClientEventPolicy, Grants, PolicyError, RoomPatterns, company_room, conversation_room, room_name
from .presence import Presence, PresenceCollector, PresenceUnavailable, RedisPresence
from .serve import Server
from .sio import ConnectionRefused, Namespace, Socket

if TYPE_CHECKING:
    from .admin import AdminUI

log = logging.getLogger("gateway.app")

FORBIDDEN = {"ok": False, "error": "forbidden"}
PRESENCE_UNAVAILABLE = {"ok": False, "error": "presence unavailable"}
RATE_LIMITED = {"ok": False, "error": "rate limited"}
TOO_MANY_ROOMS = {"ok": False, "error": "too many rooms"}
GRANTS_KEY = "_grants"  # socket.data slot between the auth middleware and the connection handler
# Connection state recovery of the standalone gateway when STATE_RECOVERY_MS is unset and the
# adapter can keep sessions (socket.io's default maxDisconnectionDuration).
DEFAULT_RECOVERY_MS = 120_000


def recovery_supported(settings: Settings) -> bool:
    """Whether the adapter these settings pick keeps sessions: the in-memory one (single node)
    or the Redis Streams one. The classic and sharded Redis adapters cannot, as in Node.js."""
    return settings.redis_mode == "streams" or not (settings.redis_url or settings.redis_mode == "sharded")


def with_recovery_default(settings: Settings) -> Settings:
    """The standalone gateway recovers connections by default where it can (the library Server
    does only when asked); an explicit STATE_RECOVERY_MS the adapter cannot honour is refused
    at start rather than silently ignored."""
    asked = settings.state_recovery_ms
    if asked is None:
        return dataclasses.replace(settings, state_recovery_ms=DEFAULT_RECOVERY_MS if recovery_supported(settings) else 0)
    if asked and not recovery_supported(settings):
        raise ConfigError(
            f"STATE_RECOVERY_MS={asked} needs REDIS_MODE=streams: with REDIS_MODE={settings.redis_mode} the Redis adapter "
            "cannot carry connection state recovery (nor can Node's @socket.io/redis-adapter); set REDIS_MODE=streams, or STATE_RECOVERY_MS=0"
        )
    return settings


def build_server(settings: Settings, server_class: type[Server] = Server) -> Server:
    """A Server with the in-memory adapter, the Redis cluster adapter when REDIS_URL is set, or
    the sharded Redis Cluster adapter with REDIS_MODE=sharded."""
    adapter_factory = None
    if settings.redis_mode == "sharded" or settings.redis_url:
        from .cluster import cluster_adapter_factory

        adapter_factory = cluster_adapter_factory(settings)
    return server_class(settings, adapter_factory=adapter_factory)


def _bad_request(detail: str) -> dict[str, Any]:
    return {"ok": False, "error": "bad request", "detail": detail}


@dataclass
class GatewayStats:
    auth_refused: int = 0
    rooms_forbidden: int = 0
    client_events_relayed: int = 0
    limits: LimitStats = field(default_factory=LimitStats)


@dataclass(eq=False)
class Member:
    """What the gateway knows about one connected socket beyond the Socket itself."""

    user: str
    grants: Grants
    limiter: EventRateLimiter | None
    presence_rooms: set[str] = field(default_factory=set)


class GatewayServer(Server):
    """The Server, plus presence started and stopped with it (a stop hands this node's members
    over to the cluster for the leave grace instead of announcing them gone at once)."""

    presence: Presence
    stats: GatewayStats
    api: PublishApi
    admin: "AdminUI | None" = None  # the /admin namespace, with ADMIN_UI=true

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        await self.presence.start()
        port = await super().start(host, port)
        if self.admin is not None:
            self.admin.start()
        return port

    async def close(self, reason: str = "server shutting down") -> None:
        try:
            if self.admin is not None:
                await self.admin.close()
            await self.presence.close()
        finally:
            await super().close(reason)


class StandaloneCollector:
    """Prometheus counters of authentication, permissions, limits and the publish API."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        s = self.server.stats
        limits = s.limits
        api = self.server.api.stats
        yield CounterMetricFamily("sio_gateway_auth_refused", "Connections refused for a missing or invalid token", value=s.auth_refused)
        yield CounterMetricFamily("sio_gateway_rooms_forbidden", "Room joins refused by the token's grants", value=s.rooms_forbidden)
        yield CounterMetricFamily("sio_gateway_rooms_over_limit", "Room joins refused by MAX_ROOMS_PER_SOCKET", value=limits.rooms_refused)
        yield CounterMetricFamily("sio_gateway_events_dropped", "Client events dropped by the rate limit", value=limits.events_dropped)
        yield CounterMetricFamily("sio_gateway_rate_limit_disconnects", "Connections closed for sustained rate-limit abuse", value=limits.rate_disconnects)
        refused = CounterMetricFamily("sio_gateway_connections_refused", "New connections refused, by reason", labels=["reason"])
        refused.add_metric(["origin"], limits.connections_refused_origin)
        refused.add_metric(["full"], limits.connections_refused_full)
        yield refused
        requests = CounterMetricFamily("sio_gateway_api_requests", "Publish API requests, by outcome", labels=["outcome"])
        requests.add_metric(["emit"], api.emits)
        requests.add_metric(["disconnect"], api.disconnects)
        requests.add_metric(["unauthorized"], api.unauthorized)
        requests.add_metric(["bad_request"], api.bad_requests)
        yield requests
        yield CounterMetricFamily("sio_gateway_api_auth_throttled", "API requests answered 429 after API_AUTH_FAILURES_PER_MIN failed authentications", value=api.throttled)


class Standalone:
    """The per-socket behaviour of the standalone gateway, installed on its namespaces."""

    def __init__(self, server: GatewayServer, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.stats = server.stats
        self.verifier = TokenVerifier.from_settings(settings) if settings.auth_mode == "jwt" else None
        self.client_events = ClientEventPolicy(settings.client_events)
        self.presence_rooms = RoomPatterns(settings.presence_rooms)
        self.members: dict[str, Member] = {}

    # -- connection ----------------------------------------------------------------------------

    def authenticate(self, socket: Socket) -> None:
        auth = socket.handshake.get("auth")
        if self.verifier is None:
            user = auth.get("user") if isinstance(auth, dict) else None
            user = user if isinstance(user, str) and user else socket.id
            socket.data[GRANTS_KEY] = Grants.everything(user)
            socket.data["user"] = user
            return
        try:
            claims = self.verifier.verify(token_from_auth(auth))
        except Unauthorized as exc:
            self.stats.auth_refused += 1
            log.info("auth_refused nsp=%s address=%s reason=%s", socket.nsp.name, socket.handshake.get("address"), exc.reason)
            raise ConnectionRefused("unauthorized") from None
        grants = Grants.from_claims(claims)
        socket.data[GRANTS_KEY] = grants
        socket.data["user"] = grants.user

    def connected(self, socket: Socket) -> None:
        if socket.recovered and GRANTS_KEY not in socket.data:
            # A recovered socket skipped the middlewares (STATE_RECOVERY_SKIP_MIDDLEWARES): its
            # grants are not kept with its session, so the token it sent again is checked now.
            try:
                self.authenticate(socket)
            except ConnectionRefused:
                socket.disconnect()
                return
        grants: Grants | None = socket.data.pop(GRANTS_KEY, None)
        if grants is None or grants.user is None:  # a namespace added without our middleware
            socket.disconnect()
            return
        settings = self.settings
        limiter = None
        if settings.rate_limit_per_s:
            limiter = EventRateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst, settings.rate_limit_disconnect_after, time.monotonic())
        member = self.members[socket.id] = Member(grants.user, grants, limiter)
        for room in grants.home_rooms()[: settings.max_rooms_per_socket]:
            self._enter(socket, member, room)
        if socket.recovered:  # the rooms it had are back: so is its presence in them
            for room in socket.rooms:
                if isinstance(room, str) and room != socket.id and self.presence_rooms.matches(room):
                    self._enter(socket, member, room)

        socket.on("join:company", lambda *args: self.join(socket, company_room, args))
        socket.on("leave:company", lambda *args: self.leave(socket, company_room, args))
        socket.on("join:conversation", lambda *args: self.join(socket, conversation_room, args))
        socket.on("leave:conversation", lambda *args: self.leave(socket, conversation_room, args))
        socket.on("subscribe", lambda *args: self.join(socket, room_name, args))
        socket.on("unsubscribe", lambda *args: self.leave(socket, room_name, args))

        async def presence_list(*args: Any) -> dict[str, Any]:
            return await self.presence_list(socket, args)

        socket.on("presence:list", presence_list)
        for event in self.client_events.events:
            socket.on(event, self._relay_handler(socket, event))
        socket.on("disconnect", lambda reason: self.gone(socket, reason))

    def gone(self, socket: Socket, reason: str) -> None:
        member = self.members.pop(socket.id, None)
        if member is None:
            return
        for room in member.presence_rooms:
            self.server.presence.leave(socket.nsp.name, room, member.user)
        member.presence_rooms.clear()

    # -- rooms ---------------------------------------------------------------------------------

    def _enter(self, socket: Socket, member: Member, room: str) -> None:
        socket.join(room)
        if self.presence_rooms.matches(room) and room not in member.presence_rooms:
            member.presence_rooms.add(room)
            self.server.presence.join(socket.nsp.name, room, member.user)

    def join(self, socket: Socket, to_room: Callable[[Any], str], args: tuple[Any, ...]) -> dict[str, Any]:
        member = self.members.get(socket.id)
        if member is None:
            return FORBIDDEN
        try:
            room = to_room(args[0] if args else None)
        except PolicyError as exc:
            return _bad_request(str(exc))
        if not member.grants.allows(room):
            self.stats.rooms_forbidden += 1
            log.info("room_forbidden nsp=%s user=%s room=%s", socket.nsp.name, member.user, room)
            return FORBIDDEN
        rooms = socket.rooms
        if room not in rooms:
            if len(rooms) - 1 >= self.settings.max_rooms_per_socket:  # its own id room is free
                self.stats.limits.rooms_refused += 1
                log.info("room_limit nsp=%s user=%s room=%s limit=%d", socket.nsp.name, member.user, room, self.settings.max_rooms_per_socket)
                return TOO_MANY_ROOMS
            self._enter(socket, member, room)
        return {"ok": True, "room": room}

    def leave(self, socket: Socket, to_room: Callable[[Any], str], args: tuple[Any, ...]) -> dict[str, Any]:
        member = self.members.get(socket.id)
        if member is None:
            return FORBIDDEN
        try:
            room = to_room(args[0] if args else None)
        except PolicyError as exc:
            return _bad_request(str(exc))
        if room == socket.id:
            return _bad_request("a socket cannot leave its own room")
        socket.leave(room)
        if room in member.presence_rooms:
            member.presence_rooms.discard(room)
            self.server.presence.leave(socket.nsp.name, room, member.user)
        return {"ok": True, "room": room}

    async def presence_list(self, socket: Socket, args: tuple[Any, ...]) -> dict[str, Any]:
        try:
            room = room_name(args[0] if args else None)
        except PolicyError as exc:
            return _bad_request(str(exc))
        if room not in socket.rooms:
            return FORBIDDEN
        if not self.presence_rooms.matches(room):
            return {"ok": False, "error": "no presence for this room"}
        try:
            users = await self.server.presence.users(socket.nsp.name, room)
        except (PresenceUnavailable, RedisError, OSError) as exc:  # a list that may be wrong is worse than an error
            log.warning("presence_list_failed room=%s error=%r", room, exc)
            return PRESENCE_UNAVAILABLE
        return {"ok": True, "room": room, "users": users}

    # -- client events -------------------------------------------------------------------------

    def _relay_handler(self, socket: Socket, event: str) -> Callable[..., dict[str, Any]]:
        def relay(*args: Any) -> dict[str, Any]:
            member = self.members.get(socket.id)
            payload = args[0] if args else None
            if member is None or not isinstance(payload, dict) or not isinstance(payload.get("room"), str):
                return _bad_request(f"{event} takes an object with a room")
            room = payload["room"]
            if not self.client_events.allows(event, room, socket.rooms):
                self.stats.rooms_forbidden += 1
                log.info("client_event_forbidden nsp=%s user=%s event=%s room=%s", socket.nsp.name, member.user, event, room)
                return FORBIDDEN
            # The sender is named by the gateway, never by the client.
            socket.to(room).emit(event, {**payload, "user": member.user})
            self.stats.client_events_relayed += 1
            return {"ok": True}

        return relay

    # -- rate limit (Server.event_guard) ---------------------------------------------------------

    def guard(self, socket: Socket, event: str, args: list[Any], ack_id: int | None) -> bool:
        member = self.members.get(socket.id)
        if member is None or member.limiter is None:
            return True
        verdict = member.limiter.hit(time.monotonic())
        if verdict is Verdict.ALLOW:
            return True
        limits = self.stats.limits
        limits.events_dropped += 1
        if verdict is Verdict.DISCONNECT:
            limits.rate_disconnects += 1
            log.warning("rate_limit_disconnect nsp=%s user=%s sid=%s", socket.nsp.name, member.user, socket.id)
            socket.disconnect(close=True)
            return False
        if ack_id is not None:
            socket.send_packet(sio.Packet(PacketType.ACK, socket.nsp.name, [RATE_LIMITED], ack_id))
        return False

    # -- presence notifications ----------------------------------------------------------------

    def announce(self, kind: str, nsp: str, room: str, user: str) -> None:
        """A user appeared in or vanished from a room cluster-wide: tell the room's members on
        every node (this node is the only one that saw the transition)."""
        namespace = self.server.namespaces.get(nsp)
        if namespace is not None:
            namespace.to(room).emit(f"presence:{kind}", {"room": room, "user": user})

    def install(self, nsp: Namespace) -> None:
        nsp.use(self.authenticate)
        nsp.on("connection", self.connected)


def build_gateway(settings: Settings) -> GatewayServer:
    settings = with_recovery_default(settings)
    server = build_server(settings, GatewayServer)
    assert isinstance(server, GatewayServer)
    server.stats = GatewayStats()
    app = Standalone(server, settings)
    if settings.redis_url:
        server.presence = RedisPresence(
            app.announce, settings.redis_url, settings.redis_prefix, settings.presence_timeout_ms, settings=settings, leave_grace_ms=settings.presence_leave_grace_ms
        )
    else:
        server.presence = Presence(app.announce, settings.presence_leave_grace_ms)

    if "/" not in settings.namespaces:

        @server.main.use
        def not_served(socket: Socket) -> None:
            raise ConnectionRefused("Invalid namespace")

    for name in settings.namespaces:
        app.install(server.of(name))

    server.event_guard = app.guard
    gate = ConnectionGate(server.engine, settings.allowed_origins, settings.max_connections, server.stats.limits)
    server.engine.admission = gate.refusal
    if settings.allowed_origins and not settings.cors_origins:
        server.engine.cors_origins = settings.allowed_origins

    server.api = PublishApi(server, settings, server.presence)
    server.api.mount()
    server.serving.ops.presence = server.presence
    server.metrics_registry.register(StandaloneCollector(server))
    server.metrics_registry.register(PresenceCollector(server.presence))

    if settings.admin_ui:
        from .admin import instrument

        server.admin = instrument(server, settings)
    if settings.auth_mode == "none":
        log.warning("auth_disabled AUTH_MODE=none: anyone may connect and join any room; use only for development")
    if not settings.api_keys:
        log.warning("api_disabled API_KEYS is empty: every /api request is refused")
    return server
