"""Adapter: who is in which room on this node, and local delivery of broadcasts.

One adapter per namespace, as in socket.io. This in-memory adapter is the single-node default and
the base class of the Redis cluster adapter, which adds publishing and remote requests on top of
the same local delivery path.

The broadcast path encodes the packet once (Socket.IO text + attachments -> one `Outbound`) and
hands that object to every recipient's session; WebSocket sessions write the shared frame bytes.

The adapter knows sockets and namespaces only through the two small Protocols below
(`AdapterSocket`, `AdapterNamespace`), so it can be read, tested and replaced without the
server's classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol

from protocol import socketio as sio
from protocol.cluster.messages import Room
from protocol.socketio import PacketType

from ..engine.outbound import Outbound
from ..engine.session import Session
from ..rooms import RoomRegistry
from .recovery import RecoveryResult, RecoveryStats, Restoration, SessionState, SessionStore

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("gateway.adapter")

__all__ = [
    "Adapter",
    "AdapterError",
    "AdapterNamespace",
    "AdapterSocket",
    "AdapterStats",
    "AdapterTimeout",
    "BroadcastOptions",
    "NO_OPTIONS",
    "ROOM_EVENTS",
    "Room",
    "SessionAwareAdapter",
    "recoverable",
]


# The membership events an adapter emits (socket.io-adapter's names).
ROOM_EVENTS = ("create-room", "join-room", "leave-room", "delete-room")


class AdapterError(RuntimeError):
    """A cluster-wide operation could not be carried out."""


class AdapterTimeout(AdapterError):
    """Not every node answered a cluster-wide request in time."""


@dataclass(slots=True)
class BroadcastOptions:
    """Who a broadcast or a remote operation on this node addresses, and how.

    Frozen sets, so that an operator can be kept and narrowed safely and selection tests
    membership without converting; `local` never travels (a local broadcast is not published).
    Never changed once made (operators make new ones with `dataclasses.replace`), but not a
    frozen dataclass: its `__init__` would set each field through `object.__setattr__`, 4x the
    cost, and one is made per `io.to(room).emit`.
    The wire form other nodes read is built from it by `wire_flags` and the rooms."""

    rooms: frozenset = frozenset()
    except_: frozenset = frozenset()
    volatile: bool = False
    compress: bool | None = None
    local: bool = False
    timeout: float | None = None  # seconds; only for broadcasts that expect acknowledgements

    def wire_flags(self) -> dict[str, Any]:
        """The `flags` map as socket.io puts it on the wire."""
        flags: dict[str, Any] = {}
        if self.volatile:
            flags["volatile"] = True
        if self.compress is not None:
            flags["compress"] = self.compress
        if self.timeout is not None:
            flags["timeout"] = int(self.timeout * 1000)
        return flags


# The options of a broadcast to everyone, shared: operators are immutable, so one will do.
NO_OPTIONS = BroadcastOptions()


@dataclass(slots=True)
class AdapterStats:
    """Counters the broadcast path bumps (one object per server, shared by its namespaces)."""

    broadcasts_local: int = 0
    broadcasts_remote: int = 0
    deliveries: int = 0
    dropped_volatile: int = 0
    recovery: RecoveryStats = field(default_factory=RecoveryStats)


def recoverable(packet: sio.Packet, opts: BroadcastOptions) -> bool:
    """Whether a broadcast gets an offset and is kept for recovery, as socket.io 4.8 decides: an
    event that expects no acknowledgement (an ack cannot be restored on another connection) and
    is not volatile (a volatile packet may be lost anyway)."""
    return packet.type is PacketType.EVENT and packet.id is None and not opts.volatile


class AdapterSocket(Protocol):
    """What an adapter uses of a socket: its session to write to, its ack table for broadcasts
    with acknowledgements, and the room and disconnect operations remote nodes ask for."""

    id: str
    session: Session
    data: dict[str, Any]

    @property
    def handshake(self) -> dict[str, Any]: ...

    def expect_ack(self, ack_id: int, on_ack: Callable[[Any], None]) -> None: ...

    def join(self, rooms: Room | Iterable[Room]) -> None: ...

    def leave(self, room: Room) -> None: ...

    def disconnect(self, close: bool = False) -> None: ...


class AdapterNamespace(Protocol):
    """What an adapter uses of its namespace. `server` is only an identity: adapter factories
    keep per-server state (one Redis link for every namespace) keyed on it."""

    name: str
    server: Any
    adapter_stats: AdapterStats

    @property
    def sockets(self) -> Mapping[str, Any]: ...

    def next_ack_id(self) -> int: ...

    def on_server_side_event(self, data: list[Any], ack: Callable[[Any], None] | None) -> None: ...

    def has_listener(self, event: str) -> bool: ...


class Adapter:
    """In-memory adapter: everything happens on this node.

    Connection state recovery is an adapter's business (where sessions and missed packets are
    kept): one that can recover sets `supports_recovery`, appends an offset to every
    `recoverable` broadcast, and implements `persist_session` / `restore_session`. This one
    keeps nothing (`SessionAwareAdapter` does, in memory)."""

    supports_recovery = False

    def __init__(self, nsp: AdapterNamespace) -> None:
        self.nsp = nsp
        self.registry: RoomRegistry[AdapterSocket] = RoomRegistry()
        self.stats = nsp.adapter_stats
        # event -> listeners (see `on`); empty, and so falsy, while nobody observes membership.
        self.room_listeners: dict[str, list[Callable[..., None]]] = {}

    # -- lifecycle (no-ops here; the cluster adapter subscribes and unsubscribes) -------------

    async def init(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # -- membership ----------------------------------------------------------------------------

    def on(self, event: str, listener: Callable[..., None]) -> Callable[..., None]:
        """Listen to membership as socket.io's adapter emits it: `create-room` (room),
        `join-room` (room, sid), `leave-room` (room, sid), `delete-room` (room); a room is
        created with its first member and deleted with its last, `join-room` only for a room
        the socket was not in. For observers (the admin UI's room_joined / room_left): while
        nobody listens, membership pays one falsy check."""
        if event not in ROOM_EVENTS:
            raise ValueError(f"{event!r} is not one of the adapter's events {ROOM_EVENTS}")
        self.room_listeners.setdefault(event, []).append(listener)
        return listener

    def _notify(self, event: str, *args: Any) -> None:
        for listener in list(self.room_listeners.get(event, ())):
            try:
                listener(*args)
            except Exception:  # an observer must never break membership
                log.exception("adapter_listener_failed event=%s nsp=%s", event, self.nsp.name)

    def add_all(self, socket: AdapterSocket, rooms: Iterable[Room]) -> None:
        if not self.room_listeners:
            self.registry.join(socket, rooms)
            return
        rooms = list(rooms)
        before = set(self.registry.rooms_of(socket))
        existing = self.registry.rooms
        new = [room for room in dict.fromkeys(rooms) if room not in before]
        created = {room for room in new if room not in existing}
        self.registry.join(socket, rooms)
        for room in new:
            if room in created:
                self._notify("create-room", room)
            self._notify("join-room", room, socket.id)

    def remove(self, socket: AdapterSocket, room: Room) -> None:
        if not self.room_listeners:
            self.registry.leave(socket, room)
            return
        was_in = room in self.registry.rooms_of(socket)
        self.registry.leave(socket, room)
        if was_in:
            self._left(socket, room)

    def remove_all(self, socket: AdapterSocket) -> None:
        if not self.room_listeners:
            self.registry.leave_all(socket)
            return
        for room in self.registry.leave_all(socket):
            self._left(socket, room)

    def _left(self, socket: AdapterSocket, room: Room) -> None:
        self._notify("leave-room", room, socket.id)
        if room not in self.registry.rooms:
            self._notify("delete-room", room)

    def socket_rooms(self, socket: AdapterSocket) -> set[Room]:
        return self.registry.rooms_of(socket)

    @property
    def rooms(self) -> dict[Room, set[AdapterSocket]]:
        return self.registry.rooms

    # -- selection -----------------------------------------------------------------------------

    def select(self, opts: BroadcastOptions) -> Iterable[AdapterSocket]:
        """Local sockets addressed by `opts` (rooms minus except; no rooms = the namespace)."""
        registry = self.registry
        if opts.rooms:
            if len(opts.rooms) == 1 and not opts.except_:
                (room,) = opts.rooms
                return registry.rooms.get(room, ())
            return registry.members(opts.rooms, opts.except_)
        sockets = self.nsp.sockets.values()
        if not opts.except_:
            return sockets
        excluded = registry.excluded(opts.except_)
        return [s for s in sockets if s not in excluded]

    # -- delivery ------------------------------------------------------------------------------

    def broadcast(self, packet: sio.Packet, opts: BroadcastOptions) -> None:
        """Deliver to local members. The cluster adapter also publishes unless `opts.local`."""
        self.deliver(packet, opts)

    def deliver(self, packet: sio.Packet, opts: BroadcastOptions) -> int:
        """Encode once, write to every local recipient. Returns the number of recipients."""
        text, binaries = sio.encode(packet)
        return self.deliver_encoded(Outbound.message(text, binaries), opts)

    def deliver_encoded(self, out: Outbound, opts: BroadcastOptions) -> int:
        self.stats.broadcasts_local += 1
        count = 0
        if opts.volatile:
            for socket in self.select(opts):
                session = socket.session
                if session.writable:
                    session.send(out)
                    count += 1
                else:
                    self.stats.dropped_volatile += 1
        else:
            for socket in self.select(opts):
                socket.session.send(out)
                count += 1
        self.stats.deliveries += count
        return count

    def broadcast_with_ack(
        self,
        packet: sio.Packet,
        opts: BroadcastOptions,
        on_client_count: Callable[[int], None],
        on_ack: Callable[[Any], None],
    ) -> None:
        """Deliver to local members and collect their acknowledgements.

        As in socket.io, the packet carries one namespace-wide ack id shared by all recipients,
        so it is still encoded once; each socket registers the id in its own ack table.
        """
        packet.id = self.nsp.next_ack_id()
        recipients = list(self.select(opts))
        text, binaries = sio.encode(packet)
        out = Outbound.message(text, binaries)
        for socket in recipients:
            socket.expect_ack(packet.id, on_ack)
            socket.session.send(out)
        self.stats.broadcasts_local += 1
        self.stats.deliveries += len(recipients)
        on_client_count(len(recipients))

    # -- cluster-wide operations, local versions -----------------------------------------------

    def add_sockets(self, opts: BroadcastOptions, rooms: list[Room]) -> None:
        for socket in list(self.select(opts)):
            socket.join(rooms)

    def del_sockets(self, opts: BroadcastOptions, rooms: list[Room]) -> None:
        for socket in list(self.select(opts)):
            for room in rooms:
                socket.leave(room)

    def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        for socket in list(self.select(opts)):
            socket.disconnect(close)

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[Any]:
        return list(self.select(opts))

    async def server_side_emit(self, data: list[Any], ack: bool, timeout: float | None = None) -> list[Any]:
        """Emit to the other servers of the cluster: there are none on a single node."""
        return []

    async def server_count(self) -> int:
        return 1

    async def all_rooms(self) -> set[Room]:
        return set(self.registry.rooms)

    # -- connection state recovery -------------------------------------------------------------

    def persist_session(self, state: SessionState) -> None:
        """A socket left for a reason it may come back from: keep its session (here: nothing)."""

    async def restore_session(self, pid: str, offset: str) -> Restoration:
        """The session of `pid` and the packets sent after `offset`, or why there are none."""
        return Restoration(RecoveryResult.UNKNOWN)


class SessionAwareAdapter(Adapter):
    """The in-memory adapter with connection state recovery (socket.io-adapter's
    SessionAwareAdapter): every recoverable broadcast gets an offset, the same for all its
    recipients, so it is still encoded once; the encoding is kept in a bounded `SessionStore`."""

    supports_recovery = True

    def __init__(self, nsp: AdapterNamespace, settings: "Settings") -> None:
        super().__init__(nsp)
        self.store = SessionStore(
            (settings.state_recovery_ms or 0) / 1000,
            settings.state_recovery_max_packets,
            settings.state_recovery_max_bytes,
            settings.state_recovery_max_sessions,
            self.stats.recovery,
        )

    def broadcast(self, packet: sio.Packet, opts: BroadcastOptions) -> None:
        if not recoverable(packet, opts):
            self.deliver(packet, opts)
            return
        store = self.store
        packet.data.append(store.issue())
        text, binaries = sio.encode(packet)
        out = Outbound.message(text, binaries)
        store.keep(opts.rooms, opts.except_, out.text, binaries)  # type: ignore[arg-type]
        self.deliver_encoded(out, opts)

    def persist_session(self, state: SessionState) -> None:
        self.store.persist(state)

    async def restore_session(self, pid: str, offset: str) -> Restoration:
        return self.store.restore(pid, offset)
