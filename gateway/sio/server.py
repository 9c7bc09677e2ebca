"""The Socket.IO server: the registry of namespaces on top of an Engine.IO endpoint.

    io = Server()
    chat = io.of("/chat")

    @chat.use
    def auth(socket):                       # connection middleware
        if socket.handshake["auth"].get("token") != "s3cret":
            raise ConnectionRefused("unauthorized", {"hint": "send a token"})

    @chat.on("connection")
    def connected(socket):
        socket.join("lobby")

        @socket.on("say")
        def say(text, ack=None):            # declare `ack` to acknowledge, or return a value
            socket.to("lobby").emit("said", text)
            return "delivered"

Handlers may be plain functions (run inline, the fast path) or coroutines (run as tasks).

This class does no serving: `gateway.serve` puts it behind the HTTP server with the operations
endpoints (`gateway.Server` is that served server).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from typing import Any, Callable, Iterable, Union

from protocol.cluster.messages import Room

from ..config import ConfigError, Settings
from ..engine.server import AllowRequest, EngineServer
from ..http import Request
from ..proxies import TrustedProxies
from .adapter import Adapter, AdapterStats, SessionAwareAdapter
from .broadcast import BroadcastOperator
from .client import Client
from .handlers import Handler
from .namespace import Middleware, Namespace
from .socket import EventGuard

log = logging.getLogger("gateway.server")  # the name operators filter on, kept across modules

NamespaceMatcher = Union[str, "re.Pattern[str]", Callable[[str, dict[str, Any]], bool]]

# How long closing waits for the close frames to reach the wire before the adapters go.
CLOSE_FLUSH_S = 0.05


class Server:
    """A Socket.IO server: namespaces (static and dynamic families) over one Engine.IO endpoint
    (`engine.handle`), with the shortcuts of the main namespace (`io.on`, `io.to`, ...)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        adapter_factory: Callable[[Namespace], Adapter] | None = None,
        allow_request: AllowRequest | None = None,
    ) -> None:
        """`allow_request(request)`, sync or async, is asked before every new Engine.IO session
        (engine.io's `allowRequest`): True/None allows, False or a reason string refuses (403)."""
        self.settings = settings or Settings()
        self.adapter_stats = AdapterStats()
        if adapter_factory is None:
            # As socket.io: with connectionStateRecovery the default adapter keeps sessions.
            adapter_factory = self._session_aware_adapter if self.settings.state_recovery_ms else Adapter
        self._adapter_factory = adapter_factory
        self.engine = EngineServer(
            lambda session: Client(self, session),
            ping_interval_ms=self.settings.ping_interval_ms,
            ping_timeout_ms=self.settings.ping_timeout_ms,
            max_payload=self.settings.max_payload,
            upgrade_timeout_ms=self.settings.upgrade_timeout_ms,
            cors_origins=self.settings.cors_origins,
            max_buffered_bytes=self.settings.max_buffered_bytes,
            allow_request=allow_request,
            client_address=self.client_address,
        )
        self.namespaces: dict[str, Namespace] = {}
        self._dynamic: list[tuple[NamespaceMatcher, Namespace]] = []
        # `listener(nsp)` for every namespace created from now on (see `on_new_namespace`).
        self._namespace_listeners: list[Callable[[Namespace], None]] = []
        self.started_at = time.time()
        self.debug_packets = self.settings.log_level == "DEBUG"
        self.draining = False
        self.started = False
        # `guard(socket, event, args, ack_id) -> bool` sees every incoming event first; False
        # drops it (the guard answers the ack, if any). Rate limits hook in here.
        self.event_guard: EventGuard | None = None
        self.of("/")
        if self.settings.state_recovery_ms and not self.main.adapter.supports_recovery:
            raise ConfigError(
                f"STATE_RECOVERY_MS={self.settings.state_recovery_ms}: {type(self.main.adapter).__name__} keeps no sessions; "
                "connection state recovery needs the in-memory adapter (no REDIS_URL) or REDIS_MODE=streams "
                "(the classic and sharded Redis adapters cannot carry it, as in Node.js); set STATE_RECOVERY_MS=0 to run without it"
            )

    def _session_aware_adapter(self, nsp: Namespace) -> Adapter:
        return SessionAwareAdapter(nsp, self.settings)

    # -- namespaces ----------------------------------------------------------------------------

    def of(self, name: NamespaceMatcher) -> Namespace:
        """A namespace by name, or a dynamic namespace family by regex or predicate
        `(name, auth) -> bool`; the returned parent's handlers apply to every child."""
        if isinstance(name, str):
            if not name.startswith("/"):
                name = "/" + name
            nsp = self.namespaces.get(name)
            if nsp is None:
                nsp = self.namespaces[name] = Namespace(self, name)
                self._namespace_created(nsp)
            return nsp
        for matcher, parent in self._dynamic:
            if matcher is name:
                return parent
        parent = Namespace(self, f"<dynamic {getattr(name, 'pattern', name)!r}>", template=True)
        self._dynamic.append((name, parent))
        return parent

    def namespace_for(self, name: str, auth: dict[str, Any]) -> Namespace | None:
        """The namespace a CONNECT for `name` joins: a known one, or a new child of the first
        dynamic family that matches; None refuses the CONNECT."""
        nsp = self.namespaces.get(name)
        if nsp is not None:
            return nsp
        for matcher, parent in self._dynamic:
            try:
                if isinstance(matcher, re.Pattern):
                    ok = matcher.fullmatch(name) is not None
                else:
                    ok = bool(matcher(name, auth))  # type: ignore[operator]
            except Exception:
                log.exception("namespace_matcher_failed nsp=%s", name)
                ok = False
            if ok:
                child = self.namespaces[name] = Namespace(self, name, parent)
                self._namespace_created(child)
                return child
        return None

    def on_new_namespace(self, listener: Callable[[Namespace], None]) -> Callable[[Namespace], None]:
        """`listener(nsp)` for each namespace created from now on (socket.io's `new_namespace`
        event): a static one by `of(name)`, a dynamic family's child when its first CONNECT
        arrives, before that socket is admitted, so an observer (the admin UI) sees the child's
        first socket too. Families' templates are not namespaces and are not announced."""
        self._namespace_listeners.append(listener)
        return listener

    def _namespace_created(self, nsp: Namespace) -> None:
        for listener in list(self._namespace_listeners):
            try:
                listener(nsp)
            except Exception:  # an observer must not refuse the namespace
                log.exception("new_namespace_listener_failed nsp=%s", nsp.name)

    def make_adapter(self, nsp: Namespace) -> Adapter:
        return self._adapter_factory(nsp)

    # shortcuts on the main namespace, as socket.io's `io.on`, `io.use`, `io.to`, ...

    @property
    def main(self) -> Namespace:
        return self.namespaces["/"]

    def on(self, event: str, handler: Handler | None = None, *, ack: bool = False) -> Any:
        return self.main.on(event, handler, ack=ack)

    def use(self, middleware: Middleware) -> Middleware:
        return self.main.use(middleware)

    def to(self, room: Room | Iterable[Room]) -> BroadcastOperator:
        return self.main.to(room)

    in_ = to

    def except_(self, room: Room | Iterable[Room]) -> BroadcastOperator:
        return self.main.except_(room)

    @property
    def volatile(self) -> BroadcastOperator:
        return self.main.volatile

    @property
    def local(self) -> BroadcastOperator:
        return self.main.local

    def timeout(self, seconds: float) -> BroadcastOperator:
        return self.main.timeout(seconds)

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        self.main.emit(event, *args, callback=callback)

    async def fetch_sockets(self) -> list[Any]:
        return await self.main.fetch_sockets()

    def sockets_join(self, rooms: Room | Iterable[Room]) -> None:
        self.main.sockets_join(rooms)

    def sockets_leave(self, rooms: Room | Iterable[Room]) -> None:
        self.main.sockets_leave(rooms)

    def disconnect_sockets(self, close: bool = False) -> None:
        self.main.disconnect_sockets(close)

    async def server_side_emit(self, event: str, *args: Any, ack: bool = False, timeout: float | None = None) -> list[Any]:
        return await self.main.server_side_emit(event, *args, ack=ack, timeout=timeout)

    @functools.cached_property
    def trusted_proxies(self) -> TrustedProxies:
        return TrustedProxies(self.settings.trusted_proxies)

    def client_address(self, request: Request) -> str:
        """The handshake's `address`: the peer, or the client a TRUSTED_PROXIES proxy forwarded."""
        return self.trusted_proxies.client_address(request.remote_address, request.headers.get("x-forwarded-for"))

    # -- lifecycle (the serving layer calls these around listening) ----------------------------

    async def open(self) -> None:
        """Start every namespace's adapter (a cluster adapter subscribes); namespaces created
        later start theirs at once."""
        self.started = True
        for nsp in list(self.namespaces.values()):
            await nsp.adapter.init()

    def drain(self) -> None:
        """Refuse new sessions from now on; /health says unhealthy so a balancer moves away."""
        self.draining = True
        self.engine.accepting = False

    async def shut(self, reason: str) -> None:
        """Close every session (clients see `reason`), then every adapter."""
        self.drain()
        self.engine.close_all(reason)
        await asyncio.sleep(CLOSE_FLUSH_S)  # let close frames reach the wire
        for nsp in list(self.namespaces.values()):
            try:
                await nsp.adapter.close()
            except Exception:
                log.exception("adapter_close_failed nsp=%s", nsp.name)
