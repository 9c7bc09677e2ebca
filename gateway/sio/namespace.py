"""A namespace: a named channel of a server with its sockets, middlewares, handlers and adapter.

The connection flow lives here (middlewares, admission, the `connection` and `disconnect`
handlers), and the events other servers send with serverSideEmit arrive here. The namespace
knows its server only through `NamespaceServer`, and its connections through `NamespaceClient`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
from typing import Any, Awaitable, Callable, Iterable, Protocol, Union

from protocol import socketio as sio
from protocol.cluster.messages import Room

from ..config import Settings
from .adapter import Adapter, AdapterStats
from .broadcast import BroadcastOperator
from .handlers import FAILED, ConnectionRefused, Handler, Listener, run_handler
from .recovery import RecoveryResult, Restoration
from .socket import EventGuard, Socket, SocketClient

log = logging.getLogger("gateway.server")  # the name operators filter on, kept across modules

Middleware = Callable[[Socket], Union[None, Awaitable[None]]]


class NamespaceServer(Protocol):
    """What a namespace uses of its server."""

    started: bool
    settings: Settings
    adapter_stats: AdapterStats
    event_guard: EventGuard | None

    def make_adapter(self, nsp: "Namespace") -> Adapter: ...


class NamespaceClient(SocketClient, Protocol):
    """What the connection flow uses of a connection: whether it closed meanwhile, the sockets
    still in their middlewares, the end of the connect timeout, and refusals."""

    closed: bool

    def add_pending(self, name: str, socket: Socket) -> None: ...

    def end_pending(self, name: str, socket: Socket) -> None: ...

    def joined_namespace(self) -> None: ...

    def refuse(self, nsp: str, message: str, data: Any) -> None: ...


class Namespace:
    """A named channel of a server, with its sockets, middlewares and adapter."""

    def __init__(self, server: NamespaceServer, name: str, parent: "Namespace | None" = None, template: bool = False) -> None:
        self.server = server
        self.name = name
        self.adapter_stats = server.adapter_stats
        self.sockets: dict[str, Socket] = {}
        if parent is not None:
            # Children of a dynamic namespace share their parent's handlers and middlewares.
            self._middlewares = parent._middlewares
            self._listeners = parent._listeners
        else:
            self._middlewares: list[Middleware] = []
            self._listeners: dict[str, list[Listener]] = {}
        self._ids = itertools.count()
        # The parent of a dynamic family only holds handlers; its children do the work.
        self.adapter: Adapter = Adapter(self) if template else server.make_adapter(self)
        # Connection state recovery: asked for by the settings and possible with this adapter
        # (the Server refuses settings that ask for it with an adapter that cannot).
        self.recovering = bool(server.settings.state_recovery_ms) and self.adapter.supports_recovery
        if server.started and not template:
            asyncio.ensure_future(self.adapter.init())

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

    @property
    def event_guard(self) -> EventGuard | None:
        """The server's guard over incoming events (rate limits hook in there)."""
        return self.server.event_guard

    def next_ack_id(self) -> int:
        return next(self._ids)

    def use(self, middleware: Middleware) -> Middleware:
        """Add a connection middleware; raise ConnectionRefused in it to refuse."""
        self._middlewares.append(middleware)
        return middleware

    def on(self, event: str, handler: Handler | None = None, *, ack: bool = False) -> Any:
        """`connection` and `disconnect` handlers, and server-side events from other nodes. A
        server-side event asking for an ack gets one by the same rule as `Socket.on`: the
        handler calls `ack`, returns something other than None, or was registered `ack=True`."""

        def register(fn: Handler) -> Handler:
            self._listeners.setdefault(event, []).append(Listener(fn, ack))
            return fn

        return register(handler) if handler is not None else register

    # -- broadcast shortcuts -------------------------------------------------------------------

    def _op(self) -> BroadcastOperator:
        return BroadcastOperator(self.adapter)

    def to(self, room: Room | Iterable[Room]) -> BroadcastOperator:
        return self._op().to(room)

    in_ = to

    def except_(self, room: Room | Iterable[Room]) -> BroadcastOperator:
        return self._op().except_(room)

    @property
    def volatile(self) -> BroadcastOperator:
        return self._op().volatile

    @property
    def local(self) -> BroadcastOperator:
        return self._op().local

    def timeout(self, seconds: float) -> BroadcastOperator:
        return self._op().timeout(seconds)

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        self._op().emit(event, *args, callback=callback)

    async def emit_with_ack(self, event: str, *args: Any) -> list[Any]:
        return await self._op().emit_with_ack(event, *args)

    async def fetch_sockets(self) -> list[Any]:
        return await self._op().fetch_sockets()

    def sockets_join(self, rooms: Room | Iterable[Room]) -> None:
        self._op().sockets_join(rooms)

    def sockets_leave(self, rooms: Room | Iterable[Room]) -> None:
        self._op().sockets_leave(rooms)

    def disconnect_sockets(self, close: bool = False) -> None:
        self._op().disconnect_sockets(close)

    async def server_side_emit(self, event: str, *args: Any, ack: bool = False, timeout: float | None = None) -> list[Any]:
        """Emit to the other servers of the cluster (their `namespace.on(event)` handlers).
        With `ack=True`, returns one answer per other server; raises AdapterTimeout if some
        server did not answer in time."""
        if event in sio.RESERVED_EVENTS or event == "connection":
            raise ValueError(f"{event!r} is a reserved event name")
        return await self.adapter.server_side_emit([event, *args], ack, timeout)

    async def server_count(self) -> int:
        return await self.adapter.server_count()

    # -- connection flow -----------------------------------------------------------------------

    def add(self, client: NamespaceClient, auth: dict[str, Any]) -> None:
        """A connection asked for this namespace: recover its earlier socket if it presents one
        (`{pid, offset}` in its auth, as socket.io-client sends), run the middlewares, then admit
        or refuse."""
        socket = Socket(self, client, auth)
        if self.recovering:
            pid, offset = auth.get("pid"), auth.get("offset")
            if isinstance(pid, str) and isinstance(offset, str):
                # Pending while the adapter looks the session up, as while middlewares run.
                client.add_pending(self.name, socket)
                asyncio.ensure_future(self._recover(socket, client, pid, offset))
                return
        self._connect(socket, client)

    async def _recover(self, socket: Socket, client: NamespaceClient, pid: str, offset: str) -> None:
        try:
            restoration = await self.adapter.restore_session(pid, offset)
        except Exception:
            log.exception("recovery_restore_failed nsp=%s", self.name)
            restoration = Restoration(RecoveryResult.UNKNOWN)
        client.end_pending(self.name, socket)
        state = restoration.state
        if client.closed:
            if state is not None:
                self.adapter.persist_session(state)  # gone again meanwhile: keep it for the next try
            return
        self.adapter_stats.recovery.count(restoration)
        if state is None:
            log.info("sio_not_recovered nsp=%s result=%s", self.name, restoration.result.value)
            self._connect(socket, client)
            return
        socket.restore(state, restoration.missed)
        log.info("sio_recovered nsp=%s sid=%s missed=%d", self.name, socket.id, len(restoration.missed))
        if self.server.settings.state_recovery_skip_middlewares:
            self._admit(socket, client)
            return
        self._connect(socket, client)

    def _connect(self, socket: Socket, client: NamespaceClient) -> None:
        if not self._middlewares:
            self._admit(socket, client)
            return
        # Pending while the middlewares run: the Client ignores a repeated CONNECT for this
        # namespace meanwhile, so one connection never gets a second socket here.
        client.add_pending(self.name, socket)
        asyncio.ensure_future(self._run_middlewares(socket, client))

    async def _run_middlewares(self, socket: Socket, client: NamespaceClient) -> None:
        refusal: tuple[str, Any] | None = None
        try:
            for middleware in self._middlewares:
                try:
                    result = middleware(socket)
                    if inspect.isawaitable(result):
                        await result
                except ConnectionRefused as exc:
                    refusal = (exc.message, exc.data)
                except Exception:
                    log.exception("middleware_failed nsp=%s", self.name)
                    refusal = ("server error", None)
                if refusal is not None or client.closed:
                    break
        finally:
            client.end_pending(self.name, socket)
        if refusal is not None or client.closed:
            # As socket.io's `_cleanup`: rooms a middleware joined leave with the socket, and a
            # connection that closed meanwhile never admits it (nor hears of the refusal).
            self.adapter.remove_all(socket)
            if refusal is not None and not client.closed:
                client.refuse(self.name, *refusal)
            return
        self._admit(socket, client)

    def _admit(self, socket: Socket, client: NamespaceClient) -> None:
        if client.closed:
            return
        client.joined_namespace()
        socket.connected = True
        self.sockets[socket.id] = socket
        client.sockets[self.name] = socket
        socket.join(socket.id)
        if socket.pid is None:
            socket.send_packet(sio.connect_ok(self.name, socket.id))
        else:
            socket.send_packet(sio.Packet(sio.PacketType.CONNECT, self.name, {"sid": socket.id, "pid": socket.pid}))
        for listener in self._listeners.get("connection", ()):
            run_handler(listener.fn, socket)

    def remove_socket(self, socket: Socket) -> None:
        self.adapter.remove_all(socket)
        self.sockets.pop(socket.id, None)

    def fire_disconnect(self, socket: Socket, reason: str) -> None:
        for listener in self._listeners.get("disconnect", ()):
            run_handler(listener.fn, socket, reason)

    def on_server_side_event(self, data: list[Any], ack: Callable[[Any], None] | None) -> None:
        """An event from another server (serverSideEmit). Its ack takes one argument."""
        event, args = data[0], data[1:]
        for listener in self._listeners.get(event, ()):
            if ack is None:
                run_handler(listener.fn, *args)
                continue
            result = run_handler(listener.fn, *args, ack=ack) if listener.wants_ack else run_handler(listener.fn, *args)
            answer = functools.partial(_answer_server_side, ack, listener.always_ack)
            if isinstance(result, asyncio.Future):
                result.add_done_callback(lambda t, answer=answer: answer(t.result()) if not t.cancelled() and t.exception() is None else None)
            else:
                answer(result)

    def has_listener(self, event: str) -> bool:
        return bool(self._listeners.get(event))


def _answer_server_side(ack: Callable[[Any], None], always: bool, result: Any) -> None:
    """A server-side handler's return value as its (single-argument) ack, by `Ack`'s rule."""
    if result is FAILED or (result is None and not always):
        return
    ack(result)
