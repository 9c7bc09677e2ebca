"""The Socket.IO server API, shaped after socket.io for Node.js.

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
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import re
import time
from typing import Any, Awaitable, Callable, Hashable, Iterable, Union

from protocol import socketio as sio
from protocol.errors import ProtocolError
from protocol.socketio import PacketType

from .adapter.base import Adapter, AdapterStats, BroadcastOptions
from .config import Settings
from .engine.outbound import Outbound
from .engine.server import AllowRequest, EngineServer, generate_id
from .engine.session import Session
from .http import HttpServer, Request, Router
from .proxies import TrustedProxies

log = logging.getLogger("gateway.server")

Room = Hashable
Handler = Callable[..., Any]


class ConnectionRefused(Exception):
    """Raised by a middleware to refuse a connection; sent to the client as CONNECT_ERROR."""

    def __init__(self, message: str = "refused", data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class AckTimeout(asyncio.TimeoutError):
    """An acknowledgement did not arrive in time."""


def _rooms(value: Room | Iterable[Room]) -> list[Room]:
    if isinstance(value, (str, int)):
        return [value]
    return list(value)  # type: ignore[arg-type]


class _Listener:
    """A registered handler plus how to call it: whether it takes the `ack` keyword, and whether
    its return value is the acknowledgement even when it is None (`on(event, fn, ack=True)`).

    Without `ack=True` a handler returning None does not acknowledge, like a Node.js listener that
    never calls its callback: the client's emitWithAck times out instead of getting an empty ack
    it cannot tell from a real one."""

    __slots__ = ("fn", "wants_ack", "always_ack")

    def __init__(self, fn: Handler, always_ack: bool = False) -> None:
        self.fn = fn
        self.always_ack = always_ack
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            params = []  # type: ignore[assignment]
        self.wants_ack = any(p.name == "ack" or p.kind is p.VAR_KEYWORD for p in params)


# What `_run` returns for a handler that raised: not a value to acknowledge with, even for a
# handler registered with `ack=True` (a Node.js listener that throws never calls its callback).
_FAILED: Any = object()


def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a handler; schedule it if it is a coroutine. Errors are logged, never raised: a
    faulty handler must not take the connection or the node down."""
    try:
        result = fn(*args, **kwargs)
    except Exception:
        log.exception("handler_failed handler=%s", getattr(fn, "__qualname__", fn))
        return _FAILED
    if inspect.isawaitable(result):
        task = asyncio.ensure_future(result)
        task.add_done_callback(_log_task_error)
        return task
    return result


def _log_task_error(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("handler_failed error=%r", exc, exc_info=exc)


# -- broadcasting --------------------------------------------------------------------------------


class BroadcastOperator:
    """An immutable description of "who gets this": rooms, exceptions, flags. Every modifier
    returns a new operator, so `io.to("a")` can be kept and reused safely."""

    __slots__ = ("adapter", "opts", "_exclude_socket")

    def __init__(self, adapter: Adapter, opts: BroadcastOptions | None = None) -> None:
        self.adapter = adapter
        self.opts = opts or BroadcastOptions()

    def _with(self, **changes: Any) -> "BroadcastOperator":
        o = self.opts
        values = {
            "rooms": o.rooms,
            "except_": o.except_,
            "volatile": o.volatile,
            "compress": o.compress,
            "local": o.local,
            "timeout": o.timeout,
        }
        values.update(changes)
        return BroadcastOperator(self.adapter, BroadcastOptions(**values))

    def to(self, room: Room | Iterable[Room]) -> "BroadcastOperator":
        return self._with(rooms=self.opts.rooms | frozenset(_rooms(room)))

    in_ = to

    def except_(self, room: Room | Iterable[Room]) -> "BroadcastOperator":
        return self._with(except_=self.opts.except_ | frozenset(_rooms(room)))

    @property
    def volatile(self) -> "BroadcastOperator":
        return self._with(volatile=True)

    @property
    def local(self) -> "BroadcastOperator":
        return self._with(local=True)

    def compress(self, value: bool = True) -> "BroadcastOperator":
        return self._with(compress=value)

    def timeout(self, seconds: float) -> "BroadcastOperator":
        return self._with(timeout=seconds)

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        """Broadcast an event. With `callback(err, responses)` the clients' acks are collected
        (needs `.timeout(s)`); `err` is an AckTimeout if some did not answer in time."""
        if event in sio.RESERVED_EVENTS:
            raise ValueError(f"{event!r} is a reserved event name")
        if args and callable(args[-1]) and callback is None:
            callback, args = args[-1], args[:-1]
        packet = sio.Packet(PacketType.EVENT, self.adapter.nsp.name, [event, *args])
        if callback is None:
            self.adapter.broadcast(packet, self.opts)
            return
        self._emit_with_ack(packet, callback)

    def _emit_with_ack(self, packet: sio.Packet, callback: Callable[..., Any]) -> None:
        loop = asyncio.get_running_loop()
        responses: list[Any] = []
        state = {"expected": None, "servers": None, "counted": 0, "done": False}
        timeout = self.opts.timeout if self.opts.timeout is not None else 5.0

        def finish(err: Exception | None) -> None:
            if state["done"]:
                return
            state["done"] = True
            timer.cancel()
            _run(callback, err, responses)

        def on_client_count(n: int) -> None:
            state["expected"] = (state["expected"] or 0) + n
            state["counted"] += 1
            check()

        def on_ack(value: Any) -> None:
            responses.append(value)
            check()

        def check() -> None:
            servers = state["servers"]
            if servers is not None and state["counted"] >= servers and len(responses) >= (state["expected"] or 0):
                finish(None)

        timer = loop.call_later(timeout, lambda: finish(AckTimeout(f"{len(responses)} acknowledgement(s) received before the timeout")))

        async def start() -> None:
            try:
                state["servers"] = 1 if self.opts.local else await self.adapter.server_count()
            except Exception as exc:  # an unreachable cluster fails the call, it does not hang it
                finish(exc)
                return
            check()

        self.adapter.broadcast_with_ack(packet, self.opts, on_client_count, on_ack)
        if self.opts.local:
            state["servers"] = 1
            check()
        else:
            asyncio.ensure_future(start())

    async def emit_with_ack(self, event: str, *args: Any) -> list[Any]:
        """Broadcast and wait for every client's first ack argument; raises AckTimeout."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        def done(err: Exception | None, responses: list[Any]) -> None:
            if future.done():
                return
            if err is not None:
                future.set_exception(err)
            else:
                future.set_result(responses)

        self.emit(event, *args, callback=done)
        return await future

    async def fetch_sockets(self) -> list[Any]:
        """Sockets matching the selection, local ones as `Socket`, remote ones as proxies."""
        if self.opts.local:
            return list(self.adapter.select(self.opts))
        return await self.adapter.fetch_sockets(self.opts)

    def sockets_join(self, rooms: Room | Iterable[Room]) -> None:
        self.adapter.add_sockets(self.opts, _rooms(rooms))

    def sockets_leave(self, rooms: Room | Iterable[Room]) -> None:
        self.adapter.del_sockets(self.opts, _rooms(rooms))

    def disconnect_sockets(self, close: bool = False) -> None:
        self.adapter.disconnect_sockets(self.opts, close)


# -- sockets ---------------------------------------------------------------------------------------


class Socket:
    """One client in one namespace."""

    __slots__ = (
        "id",
        "nsp",
        "client",
        "session",
        "_handshake",
        "_auth",
        "_issued",
        "data",
        "connected",
        "_listeners",
        "_any",
        "_acks",
        "__weakref__",
    )

    def __init__(self, nsp: "Namespace", client: "Client", auth: dict[str, Any]) -> None:
        self.id = generate_id()
        self.nsp = nsp
        self.client = client
        self.session: Session = client.session
        # The handshake dict (headers, query, ...) is built when first read: most sockets never
        # need it, and copying it for every connection costs memory.
        self._handshake: dict[str, Any] | None = None
        self._auth = auth
        self._issued = time.time()
        self.data: dict[str, Any] = {}
        self.connected = False
        self._listeners: dict[str, list[_Listener]] = {}
        self._any: list[Callable[..., Any]] = []
        self._acks: dict[int, tuple[Callable[..., Any], asyncio.TimerHandle | None]] = {}

    def __repr__(self) -> str:
        return f"<Socket {self.id} nsp={self.nsp.name}>"

    @property
    def handshake(self) -> dict[str, Any]:
        """As socket.io's `socket.handshake`: headers, time, address, xdomain, secure, issued,
        url, query, auth."""
        handshake = self._handshake
        if handshake is None:
            handshake = self._handshake = self.client.handshake(self._auth, self._issued)
        return handshake

    # -- handlers ------------------------------------------------------------------------------

    def on(self, event: str, handler: Handler | None = None, *, ack: bool = False) -> Any:
        """Register a handler (also usable as a decorator, `@socket.on(event, ack=True)`).

        When the client asks for an acknowledgement, it is sent if the handler calls its `ack`
        parameter, or returns something other than None (a tuple for several arguments), or was
        registered with `ack=True` (then None is sent as an empty ack). Otherwise the client's
        ack times out, as with a Node.js listener that never calls its callback."""

        def register(fn: Handler) -> Handler:
            self._listeners.setdefault(event, []).append(_Listener(fn, ack))
            return fn

        return register(handler) if handler is not None else register

    def on_any(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler(event, *args)` for every incoming event, before the specific handlers."""
        self._any.append(handler)
        return handler

    def _fire(self, event: str, *args: Any) -> None:
        for listener in self._listeners.get(event, ()):
            _run(listener.fn, *args)

    # -- rooms ---------------------------------------------------------------------------------

    @property
    def rooms(self) -> set[Room]:
        return set(self.nsp.adapter.socket_rooms(self))

    def join(self, rooms: Room | Iterable[Room]) -> None:
        self.nsp.adapter.add_all(self, _rooms(rooms))

    def leave(self, room: Room) -> None:
        self.nsp.adapter.remove(self, room)

    # -- emitting ------------------------------------------------------------------------------

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None, timeout: float | None = None) -> None:
        """Send an event to this client. A trailing callable (or `callback=`) receives the
        client's acknowledgement arguments; with `timeout`, it receives `(err, *args)` instead,
        `err` being an AckTimeout or None (socket.io's `socket.timeout(ms).emit(...)`)."""
        if event in sio.RESERVED_EVENTS:
            raise ValueError(f"{event!r} is a reserved event name")
        if args and callable(args[-1]) and callback is None:
            callback, args = args[-1], args[:-1]
        packet = sio.Packet(PacketType.EVENT, self.nsp.name, [event, *args])
        if callback is not None:
            packet.id = self.nsp.next_ack_id()
            self._register_ack(packet.id, callback, timeout)
        self.send_packet(packet)

    def timeout(self, seconds: float) -> "_TimedSocket":
        return _TimedSocket(self, seconds)

    async def emit_with_ack(self, event: str, *args: Any, timeout: float | None = None) -> Any:
        """Emit and wait for the acknowledgement; returns its first argument (as socket.io's
        emitWithAck) and raises AckTimeout when `timeout` (seconds) passes first."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(*values: Any) -> None:
            if future.done():
                return
            if timeout is not None:
                err, values = values[0], values[1:]
                if err is not None:
                    future.set_exception(err)
                    return
            future.set_result(values[0] if values else None)

        self.emit(event, *args, callback=done, timeout=timeout)
        return await future

    def send_packet(self, packet: sio.Packet) -> None:
        text, binaries = sio.encode(packet)
        self.session.send(Outbound.message(text, binaries))
        self.session.server.stats.messages_out += 1

    def _register_ack(self, ack_id: int, callback: Callable[..., Any], timeout: float | None) -> None:
        timer = None
        if timeout is not None:

            def expire() -> None:
                entry = self._acks.pop(ack_id, None)
                if entry is not None:
                    _run(entry[0], AckTimeout(f"no acknowledgement within {timeout}s"))

            timer = asyncio.get_running_loop().call_later(timeout, expire)

            def with_error(*values: Any, _cb: Callable[..., Any] = callback) -> Any:
                return _cb(None, *values)

            callback = with_error
        self._acks[ack_id] = (callback, timer)

    def expect_ack(self, ack_id: int, on_ack: Callable[[Any], None]) -> None:
        """Register a broadcast ack: only the first ack argument matters across a cluster."""
        self._acks[ack_id] = (lambda *values: on_ack(values[0] if values else None), None)

    # -- broadcasting from this socket ---------------------------------------------------------

    def to(self, room: Room | Iterable[Room]) -> BroadcastOperator:
        """Rooms this socket's broadcast goes to; the socket itself is excluded."""
        return BroadcastOperator(self.nsp.adapter, BroadcastOptions(except_=frozenset([self.id]))).to(room)

    in_ = to

    def except_(self, room: Room | Iterable[Room]) -> BroadcastOperator:
        return BroadcastOperator(self.nsp.adapter, BroadcastOptions(except_=frozenset([self.id]))).except_(room)

    @property
    def broadcast(self) -> BroadcastOperator:
        """Everyone in the namespace but this socket."""
        return BroadcastOperator(self.nsp.adapter, BroadcastOptions(except_=frozenset([self.id])))

    # -- incoming ------------------------------------------------------------------------------

    def _on_packet(self, packet: sio.Packet) -> None:
        ptype = packet.type
        if ptype is PacketType.EVENT or ptype is PacketType.BINARY_EVENT:
            self._on_event(packet)
        elif ptype is PacketType.ACK or ptype is PacketType.BINARY_ACK:
            entry = self._acks.pop(packet.id, None)  # type: ignore[arg-type]
            if entry is None:
                return  # late or unknown ack: nothing waits for it any more
            callback, timer = entry
            if timer is not None:
                timer.cancel()
            _run(callback, *packet.data)
        elif ptype is PacketType.DISCONNECT:
            self._on_close("client namespace disconnect")

    def _on_event(self, packet: sio.Packet) -> None:
        data = packet.data
        event = data[0]
        args = data[1:]
        guard = self.nsp.server.event_guard
        if guard is not None and not guard(self, event, args, packet.id):
            return
        for fn in self._any:
            _run(fn, event, *args)
        listeners = self._listeners.get(event)
        if listeners is None:
            if packet.id is not None and not self._any:
                log.debug("no_handler nsp=%s event=%r", self.nsp.name, event)
            return
        for listener in listeners:
            if packet.id is None:
                _run(listener.fn, *args)
                continue
            ack = _Ack(self, packet.id, listener.always_ack)
            result = _run(listener.fn, *args, ack=ack) if listener.wants_ack else _run(listener.fn, *args)
            if isinstance(result, asyncio.Future):
                result.add_done_callback(ack.from_task)
            else:
                ack.from_result(result)

    # -- disconnecting -------------------------------------------------------------------------

    def disconnect(self, close: bool = False) -> None:
        """Leave the namespace; with `close=True` the whole connection is closed."""
        if not self.connected:
            return
        if close:
            # As socket.io: every namespace of the connection gets its DISCONNECT before the
            # transport closes, so clients see "io server disconnect" and do not reconnect.
            for socket in list(self.client.sockets.values()):
                socket.send_packet(sio.disconnect(socket.nsp.name))
            self.client.close("server namespace disconnect")
            return
        self.send_packet(sio.disconnect(self.nsp.name))
        self._on_close("server namespace disconnect")

    def _on_close(self, reason: str) -> None:
        if not self.connected:
            return
        self._fire("disconnecting", reason)
        self.connected = False
        self.nsp._remove(self)
        if self.client.sockets.get(self.nsp.name) is self:
            del self.client.sockets[self.nsp.name]
        for callback, timer in self._acks.values():
            if timer is not None:
                timer.cancel()
        self._acks.clear()
        self._fire("disconnect", reason)
        self.nsp._fire_disconnect(self, reason)


class _TimedSocket:
    __slots__ = ("socket", "seconds")

    def __init__(self, socket: Socket, seconds: float) -> None:
        self.socket = socket
        self.seconds = seconds

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        self.socket.emit(event, *args, callback=callback, timeout=self.seconds)

    async def emit_with_ack(self, event: str, *args: Any) -> Any:
        return await self.socket.emit_with_ack(event, *args, timeout=self.seconds)


class _Ack:
    """The acknowledgement of one client event: the callable handed to a handler that declares
    `ack`, and the sink of the handler's return value. Sends the ACK at most once, whichever
    comes first; a None result acknowledges only for handlers registered with `ack=True`."""

    __slots__ = ("socket", "id", "sent", "always")

    def __init__(self, socket: Socket, ack_id: int, always: bool = False) -> None:
        self.socket = socket
        self.id = ack_id
        self.sent = False
        self.always = always

    def __call__(self, *args: Any) -> None:
        if self.sent or not self.socket.connected:
            return
        self.sent = True
        self.socket.send_packet(sio.Packet(PacketType.ACK, self.socket.nsp.name, list(args), self.id))

    def from_result(self, result: Any) -> None:
        if result is None:
            if self.always:
                self()
        elif isinstance(result, tuple):
            self(*result)
        elif result is not _FAILED:
            self(result)

    def from_task(self, task: "asyncio.Future[Any]") -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self.from_result(task.result())


# -- namespaces --------------------------------------------------------------------------------


Middleware = Callable[[Socket], Union[None, Awaitable[None]]]


class Namespace:
    """A named channel of a server, with its sockets, middlewares and adapter."""

    def __init__(self, server: "Server", name: str, parent: "Namespace | None" = None, template: bool = False) -> None:
        self.server = server
        self.name = name
        self.sockets: dict[str, Socket] = {}
        if parent is not None:
            # Children of a dynamic namespace share their parent's handlers and middlewares.
            self._middlewares = parent._middlewares
            self._listeners = parent._listeners
        else:
            self._middlewares: list[Middleware] = []
            self._listeners: dict[str, list[_Listener]] = {}
        self._ids = itertools.count()
        # The parent of a dynamic family only holds handlers; its children do the work.
        self.adapter: Adapter = Adapter(self) if template else server._make_adapter(self)
        if server.started and not template:
            asyncio.ensure_future(self.adapter.init())

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

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
            self._listeners.setdefault(event, []).append(_Listener(fn, ack))
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

    def _add(self, client: "Client", auth: dict[str, Any]) -> None:
        socket = Socket(self, client, auth)
        if not self._middlewares:
            self._admit(socket)
            return
        # Pending while the middlewares run: the Client ignores a repeated CONNECT for this
        # namespace meanwhile, so one connection never gets a second socket here.
        client.add_pending(self.name, socket)
        asyncio.ensure_future(self._run_middlewares(socket))

    async def _run_middlewares(self, socket: Socket) -> None:
        client = socket.client
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
        self._admit(socket)

    def _admit(self, socket: Socket) -> None:
        client = socket.client
        if client.closed:
            return
        client.joined_namespace()
        socket.connected = True
        self.sockets[socket.id] = socket
        client.sockets[self.name] = socket
        socket.join(socket.id)
        socket.send_packet(sio.connect_ok(self.name, socket.id))
        self.server.stats_connected += 1
        for listener in self._listeners.get("connection", ()):
            _run(listener.fn, socket)

    def _remove(self, socket: Socket) -> None:
        self.adapter.remove_all(socket)
        self.sockets.pop(socket.id, None)

    def _fire_disconnect(self, socket: Socket, reason: str) -> None:
        for listener in self._listeners.get("disconnect", ()):
            _run(listener.fn, socket, reason)

    def _on_server_side_event(self, data: list[Any], ack: Callable[[Any], None] | None) -> None:
        """An event from another server (serverSideEmit). Its ack takes one argument."""
        event, args = data[0], data[1:]
        for listener in self._listeners.get(event, ()):
            if ack is None:
                _run(listener.fn, *args)
                continue
            result = _run(listener.fn, *args, ack=ack) if listener.wants_ack else _run(listener.fn, *args)
            answer = functools.partial(_answer_server_side, ack, listener.always_ack)
            if isinstance(result, asyncio.Future):
                result.add_done_callback(lambda t, answer=answer: answer(t.result()) if not t.cancelled() and t.exception() is None else None)
            else:
                answer(result)

    def has_listener(self, event: str) -> bool:
        return bool(self._listeners.get(event))


def _answer_server_side(ack: Callable[[Any], None], always: bool, result: Any) -> None:
    """A server-side handler's return value as its (single-argument) ack, by `_Ack`'s rule."""
    if result is _FAILED or (result is None and not always):
        return
    ack(result)


# -- the connection: one engine session, several namespaces --------------------------------------


class Client:
    """The Socket.IO side of one Engine.IO session: decodes packets and routes them to the
    namespaces this connection joined."""

    __slots__ = ("server", "session", "decoder", "sockets", "pending", "closed", "_connect_timer")

    def __init__(self, server: "Server", session: Session) -> None:
        self.server = server
        self.session = session
        self.decoder = sio.Decoder(max_buffer=server.settings.max_payload)
        self.sockets: dict[str, Socket] = {}
        # Sockets whose middlewares still run, by namespace name; None while there are none
        # (most connections, most of the time: no dict per idle connection).
        self.pending: dict[str, Socket] | None = None
        self.closed = False
        self._connect_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            server.settings.connect_timeout_ms / 1000, self._connect_timed_out
        )

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        if not self.sockets and not self.closed:
            log.info("sio_connect_timeout sid=%s", self.session.sid)
            self.close("connect timeout")

    def handshake(self, auth: dict[str, Any], issued: float) -> dict[str, Any]:
        request = self.session.request
        return {
            "headers": dict(request.headers),
            "time": time.strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)", time.gmtime(issued)),
            "address": self.server.client_address(request),
            "xdomain": "origin" in request.headers,
            "secure": False,
            "issued": int(issued * 1000),
            "url": request.raw_path,
            "query": dict(request.query),
            "auth": auth,
        }

    # -- Receiver protocol ---------------------------------------------------------------------

    def on_message(self, data: str | bytes) -> None:
        self.server.engine.stats.messages_in += 1
        try:
            packet = self.decoder.feed(data)
        except ProtocolError as exc:
            self.server.engine.count_bad_packet("socketio")
            log.info("sio_bad_packet sid=%s error=%r", self.session.sid, str(exc)[:200])
            self.close("parse error")
            return
        except Exception as exc:
            # The decoder's contract is ProtocolError only; anything else is a decoder bug that a
            # client found. It must cost that client its session like any bad packet, not drop the
            # TCP connection without a close frame (WebSocket) or leave the session open (polling).
            self.decoder.reset()
            self.server.engine.count_bad_packet("socketio")
            log.warning("sio_decoder_failed sid=%s exc_type=%s error=%r", self.session.sid, type(exc).__name__, str(exc)[:200])
            self.close("parse error")
            return
        if packet is None:
            return
        if self.server.debug_packets:
            log.debug("sio_packet_in sid=%s type=%s nsp=%s id=%s data=%r", self.session.sid, packet.type.name, packet.nsp, packet.id, packet.data)
        ptype = packet.type
        if ptype is PacketType.CONNECT:
            self._on_connect(packet)
            return
        socket = self.sockets.get(packet.nsp)
        if socket is None:
            log.debug("sio_packet_for_unjoined_namespace sid=%s nsp=%s", self.session.sid, packet.nsp)
            return
        if ptype is PacketType.CONNECT_ERROR:
            self.server.engine.count_bad_packet("socketio")
            self.close("parse error")
            return
        socket._on_packet(packet)

    def _on_connect(self, packet: sio.Packet) -> None:
        """At most one socket per namespace per connection, admitted or pending. As socket.io
        4.8 (`Client.ondecoded`): a CONNECT for a namespace already joined is an invalid state
        and closes the connection. A CONNECT while the namespace's middlewares still run is
        ignored (socket.io would start a second socket there, which is how one connection
        piled up hundreds of sockets that outlived it); the pending one answers."""
        if self.closed:
            return
        name = packet.nsp
        if name in self.sockets:
            self.server.engine.count_bad_packet("socketio")
            log.info("sio_repeated_connect sid=%s nsp=%s action=close", self.session.sid, name)
            self.close("forced server close")
            return
        if self.pending is not None and name in self.pending:
            self.server.engine.count_bad_packet("socketio")
            log.debug("sio_repeated_connect sid=%s nsp=%s action=ignore", self.session.sid, name)
            return
        auth = packet.data if isinstance(packet.data, dict) else {}
        nsp = self.server._namespace_for(name, auth)
        if nsp is None:
            self.refuse(name, "Invalid namespace", None)
            return
        nsp._add(self, auth)

    def add_pending(self, name: str, socket: Socket) -> None:
        """A socket of namespace `name` is waiting for its middlewares."""
        if self.pending is None:
            self.pending = {}
        self.pending[name] = socket

    def end_pending(self, name: str, socket: Socket) -> None:
        """The middlewares of `socket` are done (admitted, refused or the connection closed)."""
        pending = self.pending
        if pending is not None and pending.get(name) is socket:
            del pending[name]
            if not pending:
                self.pending = None

    def joined_namespace(self) -> None:
        """A socket was admitted: the connect timeout no longer applies. As socket.io, only an
        admitted socket stops it, so a connection whose CONNECTs are all refused still closes
        after CONNECT_TIMEOUT_MS instead of staying open with no namespace."""
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None

    def refuse(self, nsp: str, message: str, data: Any) -> None:
        text, binaries = sio.encode(sio.connect_error(nsp, message, data))
        self.session.send(Outbound.message(text, binaries))

    def on_close(self, reason: str) -> None:
        self.closed = True
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        for socket in list(self.sockets.values()):
            socket._on_close(reason)
        self.sockets.clear()
        # Pending sockets are never admitted now (their middleware run checks `closed`); drop
        # any room a middleware already joined them to.
        pending, self.pending = self.pending, None
        if pending:
            for socket in pending.values():
                socket.nsp.adapter.remove_all(socket)
        self.decoder.reset()

    def close(self, reason: str) -> None:
        """Close the whole connection (every namespace)."""
        if self.closed:
            return
        for socket in list(self.sockets.values()):
            socket._on_close(reason)
        self.session.close(reason)


# -- the server ------------------------------------------------------------------------------------


NamespaceMatcher = Union[str, "re.Pattern[str]", Callable[[str, dict[str, Any]], bool]]


class Server:
    """A Socket.IO server: namespaces on top of an Engine.IO endpoint, served over HTTP with the
    operations endpoints (`/health`, `/stats`, `/metrics`)."""

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
        self._adapter_factory = adapter_factory or Adapter
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
        self.router = Router()
        self.router.mount(self.settings.sio_path, self.engine.handle)
        self.http: HttpServer | None = None
        self.port: int | None = None
        self.started_at = time.time()
        self.stats_connected = 0
        self.debug_packets = self.settings.log_level == "DEBUG"
        self.draining = False
        self.started = False
        # `guard(socket, event, args, ack_id) -> bool` sees every incoming event first; False
        # drops it (the guard answers the ack, if any). Rate limits hook in here.
        self.event_guard: Callable[[Socket, str, list[Any], int | None], bool] | None = None
        self.of("/")

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
            return nsp
        for matcher, parent in self._dynamic:
            if matcher is name:
                return parent
        parent = Namespace(self, f"<dynamic {getattr(name, 'pattern', name)!r}>", template=True)
        self._dynamic.append((name, parent))
        return parent

    def _namespace_for(self, name: str, auth: dict[str, Any]) -> Namespace | None:
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
                return child
        return None

    def _make_adapter(self, nsp: Namespace) -> Adapter:
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

    # -- serving -------------------------------------------------------------------------------

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Listen and return the bound port (0 picks a free one)."""
        from .ops.endpoints import mount_ops

        mount_ops(self)
        self.started = True
        for nsp in list(self.namespaces.values()):
            await nsp.adapter.init()
        self.http = HttpServer(self.router, self.settings.max_payload, self.settings)
        self.port = await self.http.listen(host or self.settings.host, self.settings.port if port is None else port)
        log.info("listening host=%s port=%d path=%s", host or self.settings.host, self.port, self.settings.sio_path)
        return self.port

    async def close(self, reason: str = "server shutting down") -> None:
        self.draining = True
        self.engine.accepting = False
        if self.http is not None:
            self.http.stop_accepting()
        self.engine.close_all(reason)
        await asyncio.sleep(0.05)  # let close frames reach the wire
        for nsp in list(self.namespaces.values()):
            try:
                await nsp.adapter.close()
            except Exception:
                log.exception("adapter_close_failed nsp=%s", nsp.name)
        if self.http is not None:
            await self.http.close()
