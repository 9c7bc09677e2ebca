"""Adapter: who is in which room on this node, and local delivery of broadcasts.

One adapter per namespace, as in socket.io. This in-memory adapter is the single-node default and
the base class of the Redis `ClusterAdapter`, which adds publishing and remote requests on top of
the same local delivery path.

The broadcast path encodes the packet once (Socket.IO text + attachments -> one `Outbound`) and
hands that object to every recipient's session; WebSocket sessions write the shared frame bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable

from protocol import socketio as sio

from ..engine.outbound import Outbound
from ..rooms import RoomRegistry

if TYPE_CHECKING:
    from ..server import Namespace, Socket

log = logging.getLogger("gateway.adapter")

Room = Hashable


class AdapterError(RuntimeError):
    """A cluster-wide operation could not be carried out."""


class AdapterTimeout(AdapterError):
    """Not every node answered a cluster-wide request in time."""


@dataclass(frozen=True, slots=True)
class BroadcastOptions:
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


@dataclass(slots=True)
class AdapterStats:
    broadcasts_local: int = 0
    broadcasts_remote: int = 0
    deliveries: int = 0
    dropped_volatile: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Adapter:
    """In-memory adapter: everything happens on this node."""

    def __init__(self, nsp: "Namespace") -> None:
        self.nsp = nsp
        self.registry: RoomRegistry["Socket"] = RoomRegistry()
        self.stats = nsp.server.adapter_stats

    # -- lifecycle (no-ops here; the cluster adapter subscribes and unsubscribes) -------------

    async def init(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # -- membership ----------------------------------------------------------------------------

    def add_all(self, socket: "Socket", rooms: Iterable[Room]) -> None:
        self.registry.join(socket, rooms)

    def remove(self, socket: "Socket", room: Room) -> None:
        self.registry.leave(socket, room)

    def remove_all(self, socket: "Socket") -> None:
        self.registry.leave_all(socket)

    def socket_rooms(self, socket: "Socket") -> set[Room]:
        return self.registry.rooms_of(socket)

    @property
    def rooms(self) -> dict[Room, set["Socket"]]:
        return self.registry.rooms

    # -- selection -----------------------------------------------------------------------------

    def select(self, opts: BroadcastOptions) -> Iterable["Socket"]:
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
