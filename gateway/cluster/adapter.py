"""The cluster adapter: a namespace's in-memory adapter that is also a member of a cluster.

As Node's socket.io-adapter `ClusterAdapter`, this is the one place of every cluster rule: what is
delivered locally and what is published, which requests are answered and how, the accounting of
answers and acknowledgements (through `PendingRequests`), remote sockets. What carries the
messages is a transport (transport.py): classic pub/sub (classic.py) or sharded pub/sub
(sharded.py); the adapter never sees channels or bytes.

Gateway broadcast options become the wire `BroadcastOptions` in `to_wire` and come back in
`from_wire`, once per direction.
"""

from __future__ import annotations

from typing import Any, Callable

from protocol import socketio as sio
from protocol.cluster import (
    AllRooms,
    Answer,
    Broadcast,
    BroadcastOptions as WireOptions,
    DisconnectSockets,
    FetchSockets,
    Message,
    RequestType,
    Response,
    Room,
    ServerSideEmit,
    SingleSocket,
    SocketIds,
    SocketsJoin,
    SocketsLeave,
    socket_description,
    socket_handshake,
)
from protocol.socketio import PacketType

from ..config import Settings
from ..sio.adapter import Adapter, AdapterNamespace, BroadcastOptions
from .requests import PendingRequests, RemoteSocket
from .transport import Transport

# Acknowledgements of a broadcast are accepted this long when the emitter set no timeout.
DEFAULT_ACK_TIMEOUT = 5.0


def to_wire(opts: BroadcastOptions) -> WireOptions:
    """The wire form of a broadcast's target (flags included: each codec writes what its format
    carries)."""
    return WireOptions(list(opts.rooms), list(opts.except_), opts.wire_flags())


def from_wire(opts: WireOptions | None) -> BroadcastOptions:
    if opts is None:
        return BroadcastOptions()
    flags = opts.flags
    if not flags and not opts.except_rooms:  # a plain `to(room).emit`, most remote traffic
        return BroadcastOptions(frozenset(opts.rooms))
    volatile = bool(flags.get("volatile")) if flags else False
    return BroadcastOptions(rooms=frozenset(opts.rooms), except_=frozenset(opts.except_rooms), volatile=volatile)


class ClusterAdapter(Adapter):
    """An in-memory adapter that is also a member of a cluster, over one transport."""

    def __init__(self, nsp: AdapterNamespace, transport: Transport, settings: Settings) -> None:
        super().__init__(nsp)
        self.transport = transport
        self.name = nsp.name
        self.uid = transport.new_id()
        self.requests = PendingRequests(transport.stats, transport.new_id)
        self.requests_timeout = settings.requests_timeout_ms / 1000
        if transport.watches_rooms:
            self.registry.on_room_created = self._room_created
            self.registry.on_room_deleted = self._room_deleted
        transport.register(self)

    # -- lifecycle -----------------------------------------------------------------------------

    async def init(self) -> None:
        await self.transport.start()

    async def close(self) -> None:
        transport = self.transport
        transport.unregister(self)
        self.requests.close()
        if not transport.members:
            await transport.close()

    def health(self) -> dict[str, Any]:
        return self.transport.health()

    async def redis_info(self) -> dict[str, Any]:
        """A few Redis `INFO` figures for /stats."""
        return await self.transport.redis_info()

    def _room_created(self, room: Room) -> None:
        self.transport.watch(self, room)

    def _room_deleted(self, room: Room) -> None:
        self.transport.unwatch(self, room)

    # -- outgoing ------------------------------------------------------------------------------

    def broadcast(self, packet: sio.Packet, opts: BroadcastOptions) -> None:
        self.deliver(packet, opts)
        if not opts.local:
            self.transport.publish(Broadcast(self.uid, self.name, packet.data, to_wire(opts)))

    def emit_to(self, opts: BroadcastOptions, data: list[Any]) -> None:
        """Broadcast an event (a remote socket's `emit`)."""
        self.broadcast(sio.Packet(PacketType.EVENT, self.name, data), opts)

    def broadcast_with_ack(self, packet: sio.Packet, opts: BroadcastOptions, on_client_count: Callable[[int], None], on_ack: Callable[[Any], None]) -> None:
        data = list(packet.data)
        super().broadcast_with_ack(packet, opts, on_client_count, on_ack)
        if opts.local:
            return
        timeout = opts.timeout if opts.timeout is not None else DEFAULT_ACK_TIMEOUT
        request_id = self.requests.collect_acks(timeout, on_client_count, on_ack)
        self.transport.publish(Broadcast(self.uid, self.name, data, to_wire(opts), request_id))

    def add_sockets(self, opts: BroadcastOptions, rooms: list[Room]) -> None:
        super().add_sockets(opts, rooms)
        if not opts.local:
            self.transport.publish(SocketsJoin(self.uid, self.name, to_wire(opts), list(rooms)))

    def del_sockets(self, opts: BroadcastOptions, rooms: list[Room]) -> None:
        super().del_sockets(opts, rooms)
        if not opts.local:
            self.transport.publish(SocketsLeave(self.uid, self.name, to_wire(opts), list(rooms)))

    def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        super().disconnect_sockets(opts, close)
        if not opts.local:
            self.transport.publish(DisconnectSockets(self.uid, self.name, to_wire(opts), bool(close)))

    # -- requests we issue ---------------------------------------------------------------------

    async def server_count(self) -> int:
        return max(1, await self.transport.server_count(self.name))

    async def _request(self, kind: type, message_of: Callable[[str], Message], timeout: float | None = None) -> list[Any] | None:
        """Publish a request and wait for one answer per other node; None when alone."""
        expected = await self.transport.server_count(self.name) - 1
        if expected <= 0:
            return None
        request_id, future = self.requests.open(kind, expected, timeout or self.requests_timeout)
        try:
            await self.transport.publish_now(message_of(request_id))
            return await future
        finally:
            self.requests.forget(request_id)

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[Any]:
        local = list(self.select(opts))
        if opts.local:
            return local
        wire = to_wire(opts)
        remote = await self._request(FetchSockets, lambda rid: FetchSockets(self.uid, self.name, wire, rid), opts.timeout)
        for description in remote or ():
            local.append(RemoteSocket(self, description))
        return local

    async def all_rooms(self) -> set[Room]:
        rooms = set(self.registry.rooms)
        if AllRooms not in self.transport.carries:
            return rooms  # as Node's sharded adapter: this node's rooms only
        remote = await self._request(AllRooms, lambda rid: AllRooms(self.uid, self.name, rid))
        for answer in remote or ():
            rooms.update(answer)
        return rooms

    async def server_side_emit(self, data: list[Any], ack: bool, timeout: float | None = None) -> list[Any]:
        if not ack:
            self.transport.publish(ServerSideEmit(self.uid, self.name, data))
            return []
        answers = await self._request(ServerSideEmit, lambda rid: ServerSideEmit(self.uid, self.name, data, rid), timeout)
        return answers or []

    # -- incoming ------------------------------------------------------------------------------

    def on_broadcast(self, message: Broadcast) -> None:
        """Another node's broadcast (the hot path of cross-node traffic)."""
        if message.uid == self.uid or message.nsp != self.name:
            return
        if message.request_id is not None:
            self._answer_broadcast(message)
            return
        self.stats.broadcasts_remote += 1
        self.deliver(sio.Packet(PacketType.EVENT, self.name, message.data), from_wire(message.opts))

    def on_message(self, message: Message) -> None:
        """Any message of another node for this namespace, decoded by the transport."""
        kind = type(message)
        if kind is Response:
            self.requests.answer(message)  # type: ignore[arg-type]
            return
        if kind is Broadcast:
            self.on_broadcast(message)  # type: ignore[arg-type]
            return
        m: Any = message
        if m.uid == self.uid or m.nsp != self.name:
            return  # our own message coming back
        if kind is SocketsJoin:
            Adapter.add_sockets(self, from_wire(m.opts), m.rooms)
        elif kind is SocketsLeave:
            Adapter.del_sockets(self, from_wire(m.opts), m.rooms)
        elif kind is DisconnectSockets:
            Adapter.disconnect_sockets(self, from_wire(m.opts), m.close)
        elif kind is FetchSockets:
            sockets = [self._describe(s) for s in self.select(from_wire(m.opts))]
            self._respond(m.uid, Answer.FETCH_SOCKETS, m.request_id, sockets)
        elif kind is ServerSideEmit:
            self._serve_server_side_emit(m)
        elif kind is AllRooms:
            self._respond(m.uid, Answer.ALL_ROOMS, m.request_id, list(self.registry.rooms))
        elif kind is SocketIds:
            selected = self.select(BroadcastOptions(rooms=frozenset(m.rooms)))
            self._respond(m.uid, Answer.SOCKET_IDS, m.request_id, [s.id for s in selected])
        elif kind is SingleSocket:
            self._single_socket(m)

    def _respond(self, requester: str | None, kind: Answer, request_id: str, value: Any) -> None:
        self.transport.publish_response(requester, Response(kind, request_id, value, self.uid, self.name))

    def _answer_broadcast(self, message: Broadcast) -> None:
        """Deliver another node's broadcast-with-ack here: first the count of our recipients,
        then each of their acknowledgements, to the requester."""
        requester, request_id = message.uid, message.request_id
        assert request_id is not None

        def on_client_count(n: int) -> None:
            self._respond(requester, Answer.CLIENT_COUNT, request_id, n)

        def on_ack(value: Any) -> None:
            self._respond(requester, Answer.ACK, request_id, value)

        packet = sio.Packet(PacketType.EVENT, self.name, message.data)
        Adapter.broadcast_with_ack(self, packet, from_wire(message.opts), on_client_count, on_ack)

    def _serve_server_side_emit(self, message: ServerSideEmit) -> None:
        """Run this node's handlers for another node's serverSideEmit. With a request id (the
        requester wants acks), the first ack is sent once; as in Node, a node without a listener
        does not answer at all (the requester times out, counting it as missing)."""
        data = message.data
        request_id = message.request_id
        if request_id is None:
            self.nsp.on_server_side_event(data, None)
            return
        if not data or not self.nsp.has_listener(data[0]):
            return
        answered = False

        def ack(value: Any = None) -> None:
            nonlocal answered
            if not answered:
                answered = True
                self._respond(message.uid, Answer.SERVER_SIDE_EMIT, request_id, value)

        self.nsp.on_server_side_event(data, ack)

    def _single_socket(self, message: SingleSocket) -> None:
        """The legacy join/leave/disconnect of one socket by id: its node acts and answers."""
        socket = self.nsp.sockets.get(message.sid)
        if socket is None:
            return
        if message.kind is RequestType.REMOTE_JOIN:
            socket.join(message.room)
        elif message.kind is RequestType.REMOTE_LEAVE:
            socket.leave(message.room)
        else:
            socket.disconnect(message.close)
        self._respond(message.uid, Answer.UNTYPED, message.request_id, None)

    def _describe(self, socket: Any) -> dict[str, Any]:
        h = socket.handshake
        handshake = socket_handshake(
            headers=h.get("headers", {}),
            address=h.get("address", ""),
            issued=h.get("issued", 0),
            url=h.get("url", ""),
            query=h.get("query", {}),
            auth=h.get("auth", {}),
            xdomain=h.get("xdomain", False),
            secure=h.get("secure", False),
            time=h.get("time"),
        )
        rooms = [socket.id] + [r for r in self.socket_rooms(socket) if r != socket.id]
        return socket_description(socket.id, handshake, rooms, socket.data)
