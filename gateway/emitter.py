"""Publish into a Socket.IO cluster from any Python process, without a socket of its own.

This is the Python counterpart of @socket.io/redis-emitter 5.1: a backend worker, a cron job or a
web request handler can reach clients connected to any gateway node (or any Node.js socket.io
node using @socket.io/redis-adapter) by publishing the exact bytes the Node emitter publishes.

    emitter = Emitter("redis://127.0.0.1:6379")
    await emitter.to("room1").emit("news", {"title": "hi"})
    await emitter.of("/chat").in_("lobby").sockets_join("announcements")
    await emitter.aclose()

Like the Node emitter it only publishes: it subscribes to nothing, so it is never counted as a
server, and nothing it sends can be acknowledged. Every node acts on its messages (the emitter's
uid, "emitter", is nobody's own id).

Operators are immutable: `emitter.to("a")` returns a new operator and leaves `emitter` alone, so
a prepared target can be kept and reused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Hashable, Union

import redis.asyncio as aioredis

from protocol import cluster as wire
from protocol.socketio import RESERVED_EVENTS

__all__ = ["Emitter", "EmitterOperator"]

Room = Hashable
Rooms = Union[Room, Iterable[Room]]


def _room_list(value: Rooms) -> list[Room]:
    """One room or several: strings and numbers are single rooms, as in socket.io."""
    if isinstance(value, (str, int, float)):
        return [value]
    return list(value)  # type: ignore[arg-type]


def _added(existing: tuple[Room, ...], extra: Rooms) -> tuple[Room, ...]:
    """Set semantics in insertion order, as the Node emitter's `Set<Room>`."""
    merged = list(existing)
    for room in _room_list(extra):
        if room not in merged:
            merged.append(room)
    return tuple(merged)


def _refuse_callbacks(args: tuple[Any, ...]) -> None:
    if any(callable(arg) for arg in args):
        raise ValueError("acknowledgements are not supported by the emitter")


class EmitterOperator:
    """Who a publication is for: namespace, rooms, excluded rooms and flags."""

    __slots__ = ("_client", "_prefix", "_nsp", "_rooms", "_except", "_flags")

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        nsp: str,
        rooms: tuple[Room, ...] = (),
        except_rooms: tuple[Room, ...] = (),
        flags: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._nsp = nsp
        self._rooms = rooms
        self._except = except_rooms
        # Kept as ordered pairs: flag order is part of the published bytes (volatile, compress
        # appear in the order they were set, as with the Node emitter's object spread).
        self._flags = flags

    def __repr__(self) -> str:
        return f"<EmitterOperator nsp={self._nsp} rooms={list(self._rooms)} except={list(self._except)} flags={dict(self._flags)}>"

    def _with(self, **changes: Any) -> "EmitterOperator":
        values = {
            "rooms": self._rooms,
            "except_rooms": self._except,
            "flags": self._flags,
        }
        values.update(changes)
        return EmitterOperator(self._client, self._prefix, self._nsp, **values)

    def _with_flag(self, name: str, value: Any) -> "EmitterOperator":
        flags = dict(self._flags)
        flags[name] = value  # an existing flag keeps its position, as Object.assign does
        return self._with(flags=tuple(flags.items()))

    # -- narrowing -----------------------------------------------------------------------------

    def to(self, room: Rooms) -> "EmitterOperator":
        return self._with(rooms=_added(self._rooms, room))

    in_ = to

    def except_(self, room: Rooms) -> "EmitterOperator":
        return self._with(except_rooms=_added(self._except, room))

    @property
    def volatile(self) -> "EmitterOperator":
        """Clients whose transport is busy may miss the event."""
        return self._with_flag("volatile", True)

    def compress(self, value: bool = True) -> "EmitterOperator":
        return self._with_flag("compress", bool(value))

    # -- publishing ----------------------------------------------------------------------------

    def _opts(self) -> wire.BroadcastOptions:
        return wire.BroadcastOptions(list(self._rooms), list(self._except), dict(self._flags))

    def _target(self) -> wire.BroadcastOptions:
        # join/leave/disconnect carry only rooms and except, never flags
        return wire.BroadcastOptions(list(self._rooms), list(self._except), None)

    @property
    def _request_channel(self) -> str:
        return wire.request_channel(self._prefix, self._nsp)

    async def emit(self, event: str, *args: Any) -> int:
        """Broadcast `event` to the selected clients of every node.

        Returns how many Redis subscribers received the message (nodes, not clients).
        """
        if not isinstance(event, str):
            raise TypeError("the event name must be a string")
        if event in RESERVED_EVENTS:
            raise ValueError(f"{event!r} is a reserved event name")
        _refuse_callbacks(args)
        payload = wire.encode_emitter_broadcast(self._nsp, [event, *args], self._opts())
        channel = wire.broadcast_channel(self._prefix, self._nsp, self._rooms)
        return int(await self._client.publish(channel, payload))

    async def sockets_join(self, rooms: Rooms) -> int:
        """Make the selected sockets of every node join `rooms`."""
        payload = wire.encode_remote_join(None, self._target(), _room_list(rooms))
        return int(await self._client.publish(self._request_channel, payload))

    async def sockets_leave(self, rooms: Rooms) -> int:
        """Make the selected sockets of every node leave `rooms`."""
        payload = wire.encode_remote_leave(None, self._target(), _room_list(rooms))
        return int(await self._client.publish(self._request_channel, payload))

    async def disconnect_sockets(self, close: bool = False) -> int:
        """Disconnect the selected sockets; `close=True` closes their whole connection."""
        payload = wire.encode_remote_disconnect(None, self._target(), close)
        return int(await self._client.publish(self._request_channel, payload))


class Emitter:
    """A publisher into one namespace of a cluster (`of()` for another namespace).

    `redis` is a `redis.asyncio.Redis` client (left open by `aclose()`: its owner closes it) or a
    Redis URL (the emitter then owns the client it creates). `key` is the channel prefix, the
    `key` option of @socket.io/redis-adapter and of the Node emitter.
    """

    __slots__ = ("_client", "_owns_client", "key", "nsp")

    def __init__(self, redis: aioredis.Redis | str, key: str = wire.DEFAULT_PREFIX, *, nsp: str = "/") -> None:
        if isinstance(redis, str):
            self._client: aioredis.Redis = aioredis.from_url(redis, decode_responses=False)
            self._owns_client = True
        else:
            self._client = redis
            self._owns_client = False
        self.key = key
        self.nsp = nsp if nsp.startswith("/") else "/" + nsp

    def __repr__(self) -> str:
        return f"<Emitter key={self.key!r} nsp={self.nsp}>"

    def of(self, nsp: str) -> "Emitter":
        """The same cluster and client, another namespace (the client stays this emitter's)."""
        return Emitter(self._client, self.key, nsp=nsp)

    def _op(self) -> EmitterOperator:
        return EmitterOperator(self._client, self.key, self.nsp)

    # -- shortcuts to an operator over the whole namespace -------------------------------------

    def to(self, room: Rooms) -> EmitterOperator:
        return self._op().to(room)

    in_ = to

    def except_(self, room: Rooms) -> EmitterOperator:
        return self._op().except_(room)

    @property
    def volatile(self) -> EmitterOperator:
        return self._op().volatile

    def compress(self, value: bool = True) -> EmitterOperator:
        return self._op().compress(value)

    async def emit(self, event: str, *args: Any) -> int:
        return await self._op().emit(event, *args)

    async def sockets_join(self, rooms: Rooms) -> int:
        return await self._op().sockets_join(rooms)

    async def sockets_leave(self, rooms: Rooms) -> int:
        return await self._op().sockets_leave(rooms)

    async def disconnect_sockets(self, close: bool = False) -> int:
        return await self._op().disconnect_sockets(close)

    async def server_side_emit(self, event: str, *args: Any) -> int:
        """Emit to the `namespace.on(event)` handlers of every server; no acknowledgement can
        come back to a process that subscribes to nothing, so callbacks are refused."""
        if not isinstance(event, str):
            raise TypeError("the event name must be a string")
        if event in RESERVED_EVENTS or event == "connection":
            raise ValueError(f"{event!r} is a reserved event name")
        _refuse_callbacks(args)
        payload = wire.encode_server_side_emit(wire.EMITTER_UID, [event, *args])
        return int(await self._client.publish(wire.request_channel(self.key, self.nsp), payload))

    # -- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the Redis client if this emitter created it from a URL."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> "Emitter":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
