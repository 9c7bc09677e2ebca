"""A socket: one client in one namespace. Handlers, rooms, emits with acknowledgements, and the
packets the client sends to this namespace.

The socket knows its namespace and its connection only through `SocketNamespace` and
`SocketClient`, the few things it uses of them, so this module imports neither.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable, Protocol

from protocol import socketio as sio
from protocol.cluster.messages import Room
from protocol.socketio import PacketType

from ..engine.outbound import Outbound
from ..engine.server import generate_id
from ..engine.session import Session
from .adapter import Adapter, BroadcastOptions
from .broadcast import BroadcastOperator
from .handlers import FAILED, AckTimeout, Handler, Listener, as_rooms, run_handler
from .recovery import RECOVERABLE_REASONS, SessionState

log = logging.getLogger("gateway.server")  # the name operators filter on, kept across modules

# `guard(socket, event, args, ack_id) -> bool` sees every incoming event first; False drops it.
EventGuard = Callable[["Socket", str, list[Any], "int | None"], bool]


class SocketNamespace(Protocol):
    """What a socket uses of its namespace."""

    name: str
    adapter: Adapter
    # Connection state recovery is on here (STATE_RECOVERY_MS and an adapter that keeps sessions).
    recovering: bool

    @property
    def event_guard(self) -> EventGuard | None: ...

    def next_ack_id(self) -> int: ...

    def remove_socket(self, socket: "Socket") -> None: ...

    def fire_disconnect(self, socket: "Socket", reason: str) -> None: ...


class SocketClient(Protocol):
    """What a socket uses of its connection (the Socket.IO client of one Engine.IO session)."""

    session: Session
    sockets: dict[str, "Socket"]

    def handshake(self, auth: dict[str, Any], issued: float) -> dict[str, Any]: ...

    def close(self, reason: str) -> None: ...


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
        "pid",
        "recovered",
        "_listeners",
        "_any",
        "_any_outgoing",
        "_acks",
        "__weakref__",
    )

    def __init__(self, nsp: SocketNamespace, client: SocketClient, auth: dict[str, Any]) -> None:
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
        # The private session id a client presents to recover this socket (never shared, unlike
        # `id`); None when recovery is off. `recovered`: this socket is an earlier one come back,
        # with its id, rooms, data and the packets it missed (socket.io's `socket.recovered`).
        self.pid: str | None = generate_id() if nsp.recovering else None
        self.recovered = False
        self._listeners: dict[str, list[Listener]] = {}
        self._any: list[Callable[..., Any]] = []
        # None until someone listens, so an emit pays one falsy check for this hook.
        self._any_outgoing: list[Callable[..., Any]] | None = None
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
            self._listeners.setdefault(event, []).append(Listener(fn, ack))
            return fn

        return register(handler) if handler is not None else register

    def on_any(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler(event, *args)` for every incoming event, before the specific handlers."""
        self._any.append(handler)
        return handler

    def on_any_outgoing(self, listener: Callable[..., Any]) -> Callable[..., Any]:
        """`listener(event, *args)` for every event this socket emits (socket.io's
        `socket.onAnyOutgoing`), e.g. the admin UI's `event_sent`. Only `socket.emit` is seen:
        broadcasts are written once for all their recipients and are not reported per socket,
        so the delivery path stays free of per-recipient work."""
        if self._any_outgoing is None:
            self._any_outgoing = []
        self._any_outgoing.append(listener)
        return listener

    def off_any_outgoing(self, listener: Callable[..., Any]) -> None:
        """Stop telling `listener` about outgoing events (no error if it was not registered)."""
        if self._any_outgoing and listener in self._any_outgoing:
            self._any_outgoing.remove(listener)

    def _fire(self, event: str, *args: Any) -> None:
        for listener in self._listeners.get(event, ()):
            run_handler(listener.fn, *args)

    # -- rooms ---------------------------------------------------------------------------------

    @property
    def rooms(self) -> set[Room]:
        return set(self.nsp.adapter.socket_rooms(self))

    def join(self, rooms: Room | Iterable[Room]) -> None:
        self.nsp.adapter.add_all(self, as_rooms(rooms))

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
        if self._any_outgoing:
            for listener in list(self._any_outgoing):
                run_handler(listener, event, *args)
        if callback is not None:
            packet.id = self.nsp.next_ack_id()
            self._register_ack(packet.id, callback, timeout)
        elif self.pid is not None and self.connected:
            # As socket.io 4.8 with recovery on: through the adapter to the socket's own room, so
            # the packet gets its offset and is kept for a reconnection.
            self.nsp.adapter.broadcast(packet, BroadcastOptions(rooms=frozenset((self.id,))))
            return
        self.send_packet(packet)

    def timeout(self, seconds: float) -> "TimedSocket":
        return TimedSocket(self, seconds)

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
                    run_handler(entry[0], AckTimeout(f"no acknowledgement within {timeout}s"))

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
        return self.broadcast.to(room)

    in_ = to

    def except_(self, room: Room | Iterable[Room]) -> BroadcastOperator:
        return self.broadcast.except_(room)

    @property
    def broadcast(self) -> BroadcastOperator:
        """Everyone in the namespace but this socket."""
        return BroadcastOperator(self.nsp.adapter, BroadcastOptions(except_=frozenset([self.id])))

    # -- connection state recovery -------------------------------------------------------------

    def restore(self, state: SessionState, missed: list[Outbound]) -> None:
        """Become the socket that left `state` behind: its id, pid, data and rooms, then the
        packets it missed, written at once (before the CONNECT reply, as socket.io does: the
        client hands them to its listeners when it sees the CONNECT)."""
        self.id = state.sid
        self.pid = state.pid
        self.data = state.data if state.data is not None else {}
        self.recovered = True
        self.join(state.rooms)
        session = self.session
        for out in missed:
            session.send(out)
        session.server.stats.messages_out += len(missed)

    # -- incoming ------------------------------------------------------------------------------

    def on_packet(self, packet: sio.Packet) -> None:
        """A packet the client sent to this namespace (CONNECT is the client's business)."""
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
            run_handler(callback, *packet.data)
        elif ptype is PacketType.DISCONNECT:
            self.on_close("client namespace disconnect")

    def _on_event(self, packet: sio.Packet) -> None:
        data = packet.data
        event = data[0]
        args = data[1:]
        guard = self.nsp.event_guard
        if guard is not None and not guard(self, event, args, packet.id):
            return
        for fn in self._any:
            run_handler(fn, event, *args)
        listeners = self._listeners.get(event)
        if listeners is None:
            if packet.id is not None and not self._any:
                log.debug("no_handler nsp=%s event=%r", self.nsp.name, event)
            return
        for listener in listeners:
            if packet.id is None:
                run_handler(listener.fn, *args)
                continue
            ack = Ack(self, packet.id, listener.always_ack)
            result = run_handler(listener.fn, *args, ack=ack) if listener.wants_ack else run_handler(listener.fn, *args)
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
        self.on_close("server namespace disconnect")

    def on_close(self, reason: str) -> None:
        """The socket left its namespace (either side, or the connection went): fire
        `disconnecting`, forget its rooms and pending acks, fire `disconnect`."""
        if not self.connected:
            return
        self._fire("disconnecting", reason)
        if self.pid is not None and reason in RECOVERABLE_REASONS:
            try:
                self.nsp.adapter.persist_session(SessionState(self.id, self.pid, list(self.rooms), self.data))
            except Exception:  # a store that fails loses this recovery, never the disconnect
                log.exception("recovery_persist_failed nsp=%s sid=%s", self.nsp.name, self.id)
        self.connected = False
        self.nsp.remove_socket(self)
        if self.client.sockets.get(self.nsp.name) is self:
            del self.client.sockets[self.nsp.name]
        for callback, timer in self._acks.values():
            if timer is not None:
                timer.cancel()
        self._acks.clear()
        self._fire("disconnect", reason)
        self.nsp.fire_disconnect(self, reason)


class TimedSocket:
    """`socket.timeout(s)`: the next emit's acknowledgement expires after `s` seconds."""

    __slots__ = ("socket", "seconds")

    def __init__(self, socket: Socket, seconds: float) -> None:
        self.socket = socket
        self.seconds = seconds

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        self.socket.emit(event, *args, callback=callback, timeout=self.seconds)

    async def emit_with_ack(self, event: str, *args: Any) -> Any:
        return await self.socket.emit_with_ack(event, *args, timeout=self.seconds)


class Ack:
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
        elif result is not FAILED:
            self(result)

    def from_task(self, task: "asyncio.Future[Any]") -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self.from_result(task.result())
