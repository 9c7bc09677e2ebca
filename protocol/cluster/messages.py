"""What the cluster adapter says to other nodes, independent of how a transport carries it.

The typed messages at the end of this module are the adapter's vocabulary (Node's socket.io-adapter
`ClusterMessage` types, plus the classic protocol's own requests); each transport's codec
(`classic.py`, `sharded.py`) turns them into its bytes and back. `BroadcastOptions` is the one
wire form of a broadcast's target; `Room` the one room type. The validation helpers are shared by
both codecs so that decoding checks every field the same way.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, IntEnum
from typing import Any, Union

from ..errors import ClusterMessageError
from .values import MISSING, js_date_string, js_float

DEFAULT_PREFIX = "socket.io"
EMITTER_UID = "emitter"
EVENT = 2  # Socket.IO EVENT: the packet type of every published broadcast, binary included

# A room is a string, or a number when the application used a numeric room (it stays a number
# on the wire and in allRooms answers; only channel names use its decimal text).
Room = Union[str, int, float]

class RequestType(IntEnum):
    """Classic adapter request/response types (shared by adapter and emitter)."""

    SOCKETS = 0
    ALL_ROOMS = 1
    REMOTE_JOIN = 2
    REMOTE_LEAVE = 3
    REMOTE_DISCONNECT = 4
    REMOTE_FETCH = 5
    SERVER_SIDE_EMIT = 6
    BROADCAST = 7
    BROADCAST_CLIENT_COUNT = 8
    BROADCAST_ACK = 9


class ShardedType(IntEnum):
    """socket.io-adapter ClusterAdapter message types used by the sharded adapter."""

    INITIAL_HEARTBEAT = 1
    HEARTBEAT = 2
    BROADCAST = 3
    SOCKETS_JOIN = 4
    SOCKETS_LEAVE = 5
    DISCONNECT_SOCKETS = 6
    FETCH_SOCKETS = 7
    FETCH_SOCKETS_RESPONSE = 8
    SERVER_SIDE_EMIT = 9
    SERVER_SIDE_EMIT_RESPONSE = 10
    BROADCAST_CLIENT_COUNT = 11
    BROADCAST_ACK = 12
    ADAPTER_CLOSE = 13


class SubscriptionMode(str, Enum):
    """Sharded adapter `subscriptionMode`: which rooms get their own shard channel."""

    STATIC = "static"
    DYNAMIC = "dynamic"
    DYNAMIC_PRIVATE = "dynamic-private"


# -- ids ------------------------------------------------------------------------------------------


def new_classic_id(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """Classic node id / request id: 6 characters of `A-Z a-z 0-9 - _`."""
    return base64.urlsafe_b64encode(random_bytes(6)).decode("ascii")[:6]


def new_sharded_id(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """Sharded node id / request id: 16 lowercase hex characters."""
    return random_bytes(8).hex()


# -- rooms and channels ---------------------------------------------------------------------------


def room_text(room: Room) -> str:
    """The room as JS string interpolation writes it (numeric room 123 -> "123")."""
    if isinstance(room, str):
        return room
    if isinstance(room, bool):  # JS would write "true"/"false"
        return "true" if room else "false"
    if isinstance(room, float):
        value = js_float(room)
        return str(value) if isinstance(value, int) else repr(room)
    return str(room)


_JS_DECIMAL = re.compile(r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)\s*\Z")


def numeric_room(text: str) -> int | float | None:
    """The number a room-channel suffix also stands for (spec 2.3 rule 2), or None.

    Node checks `!isNaN(room) && rooms.has(parseFloat(room))`; this covers decimal text, which is
    what numeric rooms produce (hex / "Infinity" spellings are not handled).
    """
    if not _JS_DECIMAL.match(text):
        return None
    return js_float(float(text))


def looks_like_socket_id(room: Room) -> bool:
    """The sharded adapter's test for a private (socket id) room: a string of length 20."""
    return isinstance(room, str) and len(room) == 20


# -- shared pieces --------------------------------------------------------------------------------


@dataclass(slots=True)
class BroadcastOptions:
    """Target of a broadcast or remote operation: rooms (empty = everyone), exclusions, flags.

    `flags` None means "no flags key": classic join/leave/disconnect/fetch requests carry only
    rooms and except. Everywhere else an absent flags object is written as `{}`.
    """

    rooms: list[Room] = field(default_factory=list)
    except_rooms: list[Room] = field(default_factory=list)
    flags: dict[str, Any] | None = None

    def to_wire(self, *, with_flags: bool = True, emitter_order: bool = False) -> dict[str, Any]:
        rooms = list(self.rooms)
        excluded = list(self.except_rooms)
        if not with_flags:
            return {"rooms": rooms, "except": excluded}
        flags = {} if self.flags is None else dict(self.flags)
        if emitter_order:
            return {"rooms": rooms, "flags": flags, "except": excluded}
        return {"rooms": rooms, "except": excluded, "flags": flags}


def coerce_options(value: Any) -> BroadcastOptions:
    """Accept BroadcastOptions or a plain mapping with rooms/except/flags."""
    if isinstance(value, BroadcastOptions):
        return value
    if isinstance(value, dict):
        return BroadcastOptions(
            list(value.get("rooms") or ()), list(value.get("except") or ()), value.get("flags")
        )
    raise ClusterMessageError(
        f"opts must be BroadcastOptions or a dict, not {type(value).__name__}"
    )


def require(
    container: dict[str, Any], key: str, kinds: type | tuple[type, ...], what: str
) -> Any:
    value = container.get(key, MISSING)
    if value is MISSING:
        raise ClusterMessageError(f"{what}: missing {key!r}")
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in _as_tuple(kinds):
        raise ClusterMessageError(f"{what}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def optional(
    container: dict[str, Any], key: str, kinds: type | tuple[type, ...], what: str
) -> Any:
    if container.get(key) is None:
        return None
    return require(container, key, kinds, what)


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def room_list(value: Any, what: str) -> list[Room]:
    """A list of rooms (str or number); missing means empty, as `new Set(undefined)` in Node."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ClusterMessageError(f"{what} must be a list, not {type(value).__name__}")
    for room in value:
        if not isinstance(room, (str, int, float)) or isinstance(room, bool):
            raise ClusterMessageError(f"{what} holds a non-room value {room!r}")
    return value


def decode_options(value: Any, what: str) -> BroadcastOptions:
    if not isinstance(value, dict):
        raise ClusterMessageError(f"{what}: opts must be an object")
    flags = value.get("flags")
    if flags is not None and not isinstance(flags, dict):
        raise ClusterMessageError(f"{what}: opts.flags must be an object")
    return BroadcastOptions(
        room_list(value.get("rooms"), f"{what}: opts.rooms"),
        room_list(value.get("except"), f"{what}: opts.except"),
        flags,
    )


def typed_object(message: Any, what: str, types: type[IntEnum]) -> tuple[dict[str, Any], Any]:
    """A decoded request/envelope: it must be an object whose integer `type` is one of `types`."""
    if not isinstance(message, dict):
        raise ClusterMessageError(f"{what} must be an object")
    raw_type = require(message, "type", int, what)
    try:
        return message, types(raw_type)
    except ValueError:
        raise ClusterMessageError(f"{what}: unknown type {raw_type!r}") from None


def packet_type(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ClusterMessageError(f"{what}: packet type must be an integer")
    return value


def event_data(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ClusterMessageError(f"{what}: data must be a list [event, ...args]")
    return value


# -- fetchSockets socket descriptions -------------------------------------------------------------


def socket_handshake(
    *,
    headers: dict[str, Any],
    address: str,
    issued: int,
    url: str,
    query: dict[str, Any],
    auth: dict[str, Any],
    xdomain: bool = False,
    secure: bool = False,
    time: str | datetime | None = None,
) -> dict[str, Any]:
    """The handshake of a fetchSockets answer, keys in Node's order.

    `issued` is milliseconds since the epoch; `time` defaults to its `Date#toString()` text
    (Node computes both from the same instant).
    """
    if time is None:
        time_text = js_date_string(issued)
    elif isinstance(time, datetime):
        time_text = js_date_string(time)
    else:
        time_text = time
    return {
        "headers": headers,
        "time": time_text,
        "address": address,
        "xdomain": xdomain,
        "secure": secure,
        "issued": issued,
        "url": url,
        "query": query,
        "auth": auth,
    }


def socket_description(
    sid: str, handshake: dict[str, Any], rooms: Iterable[Room], data: Any
) -> dict[str, Any]:
    """One entry of a fetchSockets answer: rooms must list the socket's own id first."""
    return {"id": sid, "handshake": handshake, "rooms": list(rooms), "data": data}


def is_socket_description(value: Any) -> bool:
    """What a remote socket can be built from: `{id: str, handshake?: map, rooms?: list, data?}`.
    Checked on arrival: one bad description would otherwise surface much later, as a TypeError in
    the caller of fetchSockets, and lose every good answer with it."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and isinstance(value.get("handshake") or {}, dict)
        and isinstance(value.get("rooms") or [], list)
        and all(isinstance(room, (str, int, float)) and not isinstance(room, bool) for room in value.get("rooms") or ())
    )


# -- typed messages: the cluster adapter's vocabulary -----------------------------------------------
#
# Requests and notices carry the sender's `uid` (None for the emitter's join/leave/disconnect) and
# the namespace; a `request_id` asks for answers. Answers are one `Response` type: which request it
# answers is known from the pending request its `request_id` names.


@dataclass(slots=True)
class Broadcast:
    """An event for the sockets `opts` selects; with `request_id`, acknowledgements are wanted."""

    uid: str
    nsp: str
    data: list[Any]
    opts: BroadcastOptions
    request_id: str | None = None


@dataclass(slots=True)
class SocketsJoin:
    uid: str | None
    nsp: str
    opts: BroadcastOptions
    rooms: list[Room]


@dataclass(slots=True)
class SocketsLeave:
    uid: str | None
    nsp: str
    opts: BroadcastOptions
    rooms: list[Room]


@dataclass(slots=True)
class DisconnectSockets:
    uid: str | None
    nsp: str
    opts: BroadcastOptions
    close: bool = False


@dataclass(slots=True)
class FetchSockets:
    uid: str
    nsp: str
    opts: BroadcastOptions
    request_id: str


@dataclass(slots=True)
class ServerSideEmit:
    """`data` is [event, ...args]; a `request_id` asks every node for one acknowledgement."""

    uid: str
    nsp: str
    data: list[Any]
    request_id: str | None = None


@dataclass(slots=True)
class AllRooms:
    """Every room of every node (classic protocol only)."""

    uid: str
    nsp: str
    request_id: str


@dataclass(slots=True)
class SocketIds:
    """The ids of the sockets in `rooms` (classic type 0: still answered, never sent)."""

    uid: str
    nsp: str
    request_id: str
    rooms: list[Room]


@dataclass(slots=True)
class SingleSocket:
    """The classic protocol's legacy join/leave/disconnect of one socket by id, answered by the
    node that has it. `kind` is REMOTE_JOIN, REMOTE_LEAVE or REMOTE_DISCONNECT."""

    uid: str | None
    nsp: str
    kind: RequestType
    request_id: str
    sid: str
    room: Room | None = None
    close: bool = False


class Answer(IntEnum):
    """What a `Response` carries. UNTYPED: a classic answer without a type (sockets, rooms or a
    bare acknowledgement), read as the pending request it answers expects."""

    UNTYPED = 0
    CLIENT_COUNT = 1
    ACK = 2
    FETCH_SOCKETS = 3
    SERVER_SIDE_EMIT = 4
    ALL_ROOMS = 5
    SOCKET_IDS = 6


@dataclass(slots=True)
class Response:
    """One node's answer to a request. `value` is MISSING when an ack had no argument."""

    kind: Answer
    request_id: str
    value: Any = MISSING
    uid: str | None = None
    nsp: str = "/"


Request = Union[Broadcast, SocketsJoin, SocketsLeave, DisconnectSockets, FetchSockets, ServerSideEmit, AllRooms, SocketIds, SingleSocket]
Message = Union[Request, Response]
