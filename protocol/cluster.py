"""Redis wire format of @socket.io/redis-adapter 8.3 (classic and sharded) and redis-emitter 5.1.

Sans-I/O: channel names, payload bytes and typed values; the ClusterBridge in `gateway/` does the
Redis commands. The reference is /work/shared/spec/redis-adapter-wire.md; every encoder here must
reproduce Node's bytes exactly (key order, msgpack vs JSON, integer forms), because Node peers
and our golden vectors compare bytes, and Node receivers sniff the first byte to pick a decoder.

Encoding choices (fixed per message kind, spec 2.2 / 4.2):

- classic broadcasts (`P#N#`, `P#N#R#`): msgpack `[uid, {type, data, nsp}, opts]`;
- classic requests / responses: JSON, except request type 7 and response type 9 (msgpack);
- sharded envelope `{type, data, uid, nsp}`: JSON unless the type may carry user binary
  (3, 8, 9, 10, 12) and does; then msgpack.

Values: user payloads are plain JSON-like Python values plus `bytes` (msgpack bin) and
`datetime` (msgpack timestamp ext -1, or the JS ISO text on JSON paths, as `Date#toJSON`).
Python floats with integral values are written as integers, because JS has one number type and
Node writes `2.0` as `2`; see `js_numbers`. On the classic JSON paths `bytes` become
`{"type":"Buffer","data":[...]}` exactly as Node's `Buffer#toJSON` does.

Decoding never lets msgpack/orjson exceptions escape: anything undecodable or lacking a required
field raises `ClusterMessageError`, which the caller logs and drops.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum, IntEnum
from typing import Any, Union

import msgpack
import orjson

from .errors import ClusterMessageError

__all__ = [
    "DEFAULT_PREFIX",
    "EMITTER_UID",
    "EVENT",
    "BroadcastOptions",
    "ClassicBroadcast",
    "ClassicRequest",
    "ClassicResponse",
    "RequestType",
    "Room",
    "ShardedMessage",
    "ShardedType",
    "SubscriptionMode",
    "broadcast_channel",
    "broadcast_pattern",
    "contains_binary",
    "decode_classic_broadcast",
    "decode_classic_request",
    "decode_classic_response",
    "decode_sharded",
    "encode_all_rooms_request",
    "encode_all_rooms_response",
    "encode_broadcast_ack_response",
    "encode_broadcast_with_ack_request",
    "encode_classic_broadcast",
    "encode_client_count_response",
    "encode_emitter_broadcast",
    "encode_fetch_sockets_request",
    "encode_fetch_sockets_response",
    "encode_legacy_ack_response",
    "encode_legacy_remote_disconnect",
    "encode_legacy_remote_join",
    "encode_legacy_remote_leave",
    "encode_remote_disconnect",
    "encode_remote_join",
    "encode_remote_leave",
    "encode_server_side_emit",
    "encode_server_side_emit_response",
    "encode_sharded",
    "encode_sockets_request",
    "encode_sockets_response",
    "js_date_string",
    "js_iso_string",
    "js_numbers",
    "looks_like_socket_id",
    "new_classic_id",
    "new_sharded_id",
    "numeric_room",
    "request_channel",
    "response_channel",
    "room_of_channel",
    "room_text",
    "sharded_broadcast",
    "sharded_broadcast_ack",
    "sharded_channel",
    "sharded_client_count",
    "sharded_disconnect_sockets",
    "sharded_fetch_sockets",
    "sharded_fetch_sockets_response",
    "sharded_node_channel",
    "sharded_publish_channel",
    "sharded_room_channel",
    "sharded_room_subscribed",
    "sharded_server_side_emit",
    "sharded_server_side_emit_response",
    "sharded_sockets_join",
    "sharded_sockets_leave",
    "socket_description",
    "socket_handshake",
]

DEFAULT_PREFIX = "socket.io"
EMITTER_UID = "emitter"
EVENT = 2  # Socket.IO EVENT: the packet type of every published broadcast, binary included

# A room is a string, or a number when the application used a numeric room (it stays a number
# on the wire and in allRooms answers; only channel names use its decimal text).
Room = Union[str, int, float]

_MISSING: Any = object()
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_BINARY = (bytes, bytearray, memoryview)
# Errors the codecs may raise on hostile or malformed input; all become ClusterMessageError.
_CODEC_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, KeyError, IndexError)


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


# -- values: JS numbers, dates, binary ----------------------------------------------------------

# Integral floats outside this range stay floats: msgpack/orjson cannot write them as integers,
# and Node would not produce integers there either (beyond 2^64 JS prints exponents).
_INT_MIN = -(2**63)
_INT_MAX = 2**64


def _js_float(value: float) -> int | float:
    if value.is_integer() and _INT_MIN <= value < _INT_MAX:
        return int(value)
    return value


def js_numbers(value: Any) -> Any:
    """Return `value` with integral floats turned into ints, recursively, the way JS sees them.

    Node writes `2.0` as the integer 2 (msgpack fixint, JSON `2`); Python would write a float.
    Copy-on-write: containers without floats are returned as the same object, so the common
    case (strings, ints, small dicts) costs one walk and no allocation. Tuples come back as
    lists when something inside changed (both encode as arrays anyway).
    """
    kind = type(value)
    if kind is float:
        return _js_float(value)
    if kind is dict:
        changed: dict[Any, Any] | None = None
        for key, item in value.items():
            new = js_numbers(item)
            if new is not item and changed is None:
                changed = dict(value)
            if changed is not None:
                changed[key] = new
        return value if changed is None else changed
    if kind is list or kind is tuple:
        out: list[Any] | None = None
        for index, item in enumerate(value):
            new = js_numbers(item)
            if new is not item and out is None:
                out = list(value)
            if out is not None:
                out[index] = new
        return value if out is None else out
    return value


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC: JS Dates are instants, and UTC is the only safe guess."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=_UTC)
    return moment.astimezone(_UTC)


def js_iso_string(moment: datetime) -> str:
    """`Date#toISOString()` (what `JSON.stringify` writes for a Date): millisecond precision, Z."""
    utc = _as_utc(moment)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def js_date_string(moment: datetime | int | float) -> str:
    """`Date#toString()` of a Node process running in UTC, as socket.io puts in `handshake.time`.

    `moment` is a datetime or milliseconds since the epoch. Always rendered in UTC: the zone's
    long name in parentheses comes from ICU and cannot be reproduced for other zones.
    """
    if isinstance(moment, datetime):
        utc = _as_utc(moment)
    else:
        utc = _EPOCH + timedelta(milliseconds=moment)
    return (
        f"{_WEEKDAYS[utc.weekday()]} {_MONTHS[utc.month - 1]} {utc.day:02d} {utc.year:04d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} GMT+0000 (Coordinated Universal Time)"
    )


def _timestamp_of(moment: datetime) -> msgpack.Timestamp:
    # Exact integer arithmetic (no float timestamp), so negative instants and sub-second parts
    # come out as notepack writes them: floor seconds plus non-negative nanoseconds.
    delta = _as_utc(moment) - _EPOCH
    return msgpack.Timestamp(delta.days * 86400 + delta.seconds, delta.microseconds * 1000)


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _timestamp_of(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} for the Redis adapter")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return js_iso_string(value)
    if isinstance(value, _BINARY):
        # Node's JSON.stringify of a Buffer (classic JSON paths flatten binary this way).
        return {"type": "Buffer", "data": list(bytes(value))}
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} for the Redis adapter")


def _ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _ext_hook(code: int, data: bytes) -> Any:
    """notepack's non-timestamp extensions (spec 5): type 0 is undefined / legacy date / bytes."""
    if code == 0:
        if data == b"\x00":  # d4 00 00: undefined
            return None
        if len(data) == 8:  # fixext 8 type 0: legacy millisecond date (hi int32, lo uint32)
            high = int.from_bytes(data[:4], "big", signed=True)
            low = int.from_bytes(data[4:], "big")
            ms = high * 2**32 + low
            try:
                return _ms_to_datetime(ms)
            except OverflowError:
                seconds, rest = divmod(ms, 1000)
                return msgpack.Timestamp(seconds, rest * 1_000_000)
        return bytes(data)  # ArrayBuffer
    return [code, bytes(data)]


def _pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(js_numbers(obj), use_bin_type=True, default=_msgpack_default)
    except _CODEC_ERRORS as exc:
        raise ClusterMessageError(f"cannot encode message as msgpack: {exc}") from exc


def _dump_json(obj: Any) -> bytes:
    try:
        return orjson.dumps(
            js_numbers(obj), default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME
        )
    except _CODEC_ERRORS as exc:  # orjson.JSONEncodeError is a TypeError
        raise ClusterMessageError(f"cannot encode message as JSON: {exc}") from exc


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, timestamp=3, ext_hook=_ext_hook)
    except _CODEC_ERRORS as exc:
        first = exc
    # A timestamp outside datetime's range (years < 1 or > 9999) fails only the datetime
    # conversion: decode again keeping timestamps as msgpack.Timestamp. Garbage fails twice.
    try:
        return msgpack.unpackb(payload, raw=False, timestamp=0, ext_hook=_ext_hook)
    except _CODEC_ERRORS:
        raise ClusterMessageError(f"undecodable msgpack payload: {first}") from first


def _load_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ClusterMessageError(f"undecodable JSON payload: {exc}") from exc


def _sniff(payload: bytes | bytearray | memoryview) -> Any:
    """Decode a request/response/sharded payload: `{` means JSON, anything else msgpack."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ClusterMessageError(f"payload must be bytes, not {type(payload).__name__}")
    data = bytes(payload)
    if not data:
        raise ClusterMessageError("empty payload")
    if data[0] == 0x7B:
        return _load_json(data)
    return _unpack(data)


def contains_binary(value: Any) -> bool:
    """True if bytes-like values are nested anywhere in `value` (sharded msgpack switch)."""
    if isinstance(value, _BINARY):
        return True
    if isinstance(value, (list, tuple)):
        return any(contains_binary(item) for item in value)
    if isinstance(value, dict):
        return any(contains_binary(item) for item in value.values())
    return False


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
        value = _js_float(room)
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
    return _js_float(float(text))


def broadcast_pattern(prefix: str, nsp: str) -> str:
    """The classic PSUBSCRIBE pattern covering both broadcast channels of a namespace."""
    return f"{prefix}#{nsp}#*"


def broadcast_channel(prefix: str, nsp: str, rooms: Sequence[Room] = ()) -> str:
    """Classic broadcast channel: `P#N#R#` for exactly one room, else `P#N#` (except is ignored)."""
    if len(rooms) == 1:
        return f"{prefix}#{nsp}#{room_text(rooms[0])}#"
    return f"{prefix}#{nsp}#"


def request_channel(prefix: str, nsp: str) -> str:
    return f"{prefix}-request#{nsp}#"


def response_channel(prefix: str, nsp: str, uid: str | None = None) -> str:
    """The shared response channel, or node `uid`'s own one (publishOnSpecificResponseChannel)."""
    if uid is None:
        return f"{prefix}-response#{nsp}#"
    return f"{prefix}-response#{nsp}#{uid}#"


def _channel_text(channel: str | bytes | bytearray | memoryview) -> str:
    if isinstance(channel, str):
        return channel
    try:
        return bytes(channel).decode("utf-8")
    except (UnicodeDecodeError, TypeError) as exc:
        raise ClusterMessageError(f"channel is not UTF-8 text: {exc}") from exc


def room_of_channel(
    prefix: str, nsp: str, channel: str | bytes | bytearray | memoryview
) -> str | None:
    """The room part of a classic broadcast channel, or None for the namespace channel `P#N#`.

    Spec 2.3 rule 1: what lies between `P#N#` and the final character. Raises ClusterMessageError
    when the channel does not belong to this namespace (Node ignores such messages).
    """
    text = _channel_text(channel)
    base = f"{prefix}#{nsp}#"
    if not text.startswith(base):
        raise ClusterMessageError(f"channel {text!r} is not a broadcast channel of {nsp!r}")
    room = text[len(base) : -1]
    return room or None


def looks_like_socket_id(room: Room) -> bool:
    """The sharded adapter's test for a private (socket id) room: a string of length 20."""
    return isinstance(room, str) and len(room) == 20


def sharded_channel(prefix: str, nsp: str) -> str:
    """Main shard channel of a namespace (requests, broadcasts without a dedicated room channel)."""
    return f"{prefix}#{nsp}#"


def sharded_node_channel(prefix: str, nsp: str, uid: str) -> str:
    """Shard channel where node `uid` receives the responses addressed to it."""
    return f"{prefix}#{nsp}#{uid}#"


def sharded_room_channel(prefix: str, nsp: str, room: Room) -> str:
    return f"{prefix}#{nsp}#{room_text(room)}#"


def sharded_room_subscribed(
    room: Room, mode: SubscriptionMode | str = SubscriptionMode.DYNAMIC
) -> bool:
    """Whether a node SSUBSCRIBEs to `room`'s channel while it has the room (spec 4.1)."""
    mode = SubscriptionMode(mode)
    if mode is SubscriptionMode.STATIC:
        return False
    return mode is SubscriptionMode.DYNAMIC_PRIVATE or not looks_like_socket_id(room)


def sharded_publish_channel(
    prefix: str,
    nsp: str,
    message: ShardedMessage,
    *,
    mode: SubscriptionMode | str = SubscriptionMode.DYNAMIC,
    reply_to: str | None = None,
) -> str:
    """Where a sharded message is SPUBLISHed.

    Responses go to the requester's node channel: pass its uid as `reply_to` (the message's own
    uid is the responder's). A broadcast without requestId to exactly one room goes to the room
    channel when the mode subscribes to that room; everything else to the main channel.
    """
    if reply_to is not None:
        return sharded_node_channel(prefix, nsp, reply_to)
    if message.type == ShardedType.BROADCAST and isinstance(message.data, dict):
        data = message.data
        rooms = data.get("opts", {}).get("rooms", ())
        if "requestId" not in data and len(rooms) == 1 and sharded_room_subscribed(rooms[0], mode):
            return sharded_room_channel(prefix, nsp, rooms[0])
    return sharded_channel(prefix, nsp)


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


def _opts(value: Any) -> BroadcastOptions:
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


def _require(
    container: dict[str, Any], key: str, kinds: type | tuple[type, ...], what: str
) -> Any:
    value = container.get(key, _MISSING)
    if value is _MISSING:
        raise ClusterMessageError(f"{what}: missing {key!r}")
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in _as_tuple(kinds):
        raise ClusterMessageError(f"{what}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _optional(
    container: dict[str, Any], key: str, kinds: type | tuple[type, ...], what: str
) -> Any:
    if container.get(key) is None:
        return None
    return _require(container, key, kinds, what)


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _room_list(value: Any, what: str) -> list[Room]:
    """A list of rooms (str or number); missing means empty, as `new Set(undefined)` in Node."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ClusterMessageError(f"{what} must be a list, not {type(value).__name__}")
    for room in value:
        if not isinstance(room, (str, int, float)) or isinstance(room, bool):
            raise ClusterMessageError(f"{what} holds a non-room value {room!r}")
    return value


def _decode_opts(value: Any, what: str) -> BroadcastOptions:
    if not isinstance(value, dict):
        raise ClusterMessageError(f"{what}: opts must be an object")
    flags = value.get("flags")
    if flags is not None and not isinstance(flags, dict):
        raise ClusterMessageError(f"{what}: opts.flags must be an object")
    return BroadcastOptions(
        _room_list(value.get("rooms"), f"{what}: opts.rooms"),
        _room_list(value.get("except"), f"{what}: opts.except"),
        flags,
    )


def _packet_type(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ClusterMessageError(f"{what}: packet type must be an integer")
    return value


def _event_data(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ClusterMessageError(f"{what}: data must be a list [event, ...args]")
    return value


# -- classic broadcast ----------------------------------------------------------------------------


@dataclass(slots=True)
class ClassicBroadcast:
    """A decoded classic broadcast `[uid, {type, data, nsp}, {rooms, except, flags}]`."""

    uid: str
    data: list[Any]
    nsp: str = "/"
    rooms: list[Room] = field(default_factory=list)
    except_rooms: list[Room] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)
    packet_type: int = EVENT


def encode_classic_broadcast(
    uid: str,
    nsp: str,
    data: list[Any],
    opts: BroadcastOptions | dict[str, Any] | None = None,
) -> bytes:
    """Adapter broadcast (opts order rooms, except, flags); binary args stay bytes (msgpack bin)."""
    options = BroadcastOptions() if opts is None else _opts(opts)
    return _pack([uid, {"type": EVENT, "data": data, "nsp": nsp}, options.to_wire()])


def encode_emitter_broadcast(
    nsp: str,
    data: list[Any],
    opts: BroadcastOptions | dict[str, Any] | None = None,
    uid: str = EMITTER_UID,
) -> bytes:
    """Emitter broadcast: uid "emitter" and opts key order rooms, flags, except."""
    options = BroadcastOptions() if opts is None else _opts(opts)
    packet = {"type": EVENT, "data": data, "nsp": nsp}
    return _pack([uid, packet, options.to_wire(emitter_order=True)])


def decode_classic_broadcast(payload: bytes | bytearray | memoryview) -> ClassicBroadcast:
    """Decode a message received on `P#N#` / `P#N#R#` (always msgpack, custom parsers aside)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)) or not payload:
        raise ClusterMessageError("broadcast payload must be non-empty bytes")
    message = _unpack(bytes(payload))
    if not isinstance(message, list) or len(message) != 3:
        raise ClusterMessageError("broadcast must be a 3-element array [uid, packet, opts]")
    uid, packet, opts = message
    what = "broadcast"
    if not isinstance(uid, str):
        raise ClusterMessageError(f"{what}: uid must be a string")
    if not isinstance(packet, dict):
        raise ClusterMessageError(f"{what}: packet must be a map")
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise ClusterMessageError(f"{what}: opts must be a map")
    nsp = packet.get("nsp")
    if nsp is None:
        nsp = "/"
    elif not isinstance(nsp, str):
        raise ClusterMessageError(f"{what}: packet.nsp must be a string")
    options = _decode_opts(opts, what)
    return ClassicBroadcast(
        uid=uid,
        data=_event_data(packet.get("data"), what),
        nsp=nsp,
        rooms=options.rooms,
        except_rooms=options.except_rooms,
        flags={} if options.flags is None else options.flags,
        packet_type=_packet_type(packet.get("type", EVENT), what),
    )


# -- classic requests -----------------------------------------------------------------------------


@dataclass(slots=True)
class ClassicRequest:
    """A decoded message from `P-request#N#`.

    Fields not used by a type are None. `uid` is None for emitter join/leave/disconnect.
    `sid` set means the legacy single-socket form of join/leave/disconnect (answer with
    `encode_legacy_ack_response`). `packet` (type 7) is the raw `{type, data, nsp}` map.
    """

    type: RequestType
    uid: str | None = None
    request_id: str | None = None
    opts: BroadcastOptions | None = None
    rooms: list[Room] | None = None
    close: bool | None = None
    data: list[Any] | None = None
    packet: dict[str, Any] | None = None
    sid: str | None = None
    room: Room | None = None

    @property
    def wants_ack(self) -> bool:
        """For SERVER_SIDE_EMIT: the presence of requestId is the only "ack wanted" signal."""
        return self.request_id is not None


def _with_uid(uid: str | None, body: dict[str, Any]) -> dict[str, Any]:
    if uid is None:
        return body
    return {"uid": uid, **body}


def encode_sockets_request(uid: str, request_id: str, rooms: Iterable[Room]) -> bytes:
    """Type 0 (legacy; 8.3 never sends it but still answers)."""
    return _dump_json({"uid": uid, "requestId": request_id, "type": 0, "rooms": list(rooms)})


def encode_all_rooms_request(uid: str, request_id: str) -> bytes:
    return _dump_json({"uid": uid, "requestId": request_id, "type": 1})


def encode_remote_join(
    uid: str | None, opts: BroadcastOptions | dict[str, Any], rooms: Iterable[Room]
) -> bytes:
    """socketsJoin; uid None gives the emitter form (no uid key)."""
    wire = _opts(opts).to_wire(with_flags=False)
    return _dump_json(_with_uid(uid, {"type": 2, "opts": wire, "rooms": list(rooms)}))


def encode_remote_leave(
    uid: str | None, opts: BroadcastOptions | dict[str, Any], rooms: Iterable[Room]
) -> bytes:
    """socketsLeave; uid None gives the emitter form (no uid key)."""
    wire = _opts(opts).to_wire(with_flags=False)
    return _dump_json(_with_uid(uid, {"type": 3, "opts": wire, "rooms": list(rooms)}))


def encode_remote_disconnect(
    uid: str | None, opts: BroadcastOptions | dict[str, Any], close: bool = False
) -> bytes:
    """disconnectSockets; uid None gives the emitter form (no uid key)."""
    wire = _opts(opts).to_wire(with_flags=False)
    return _dump_json(_with_uid(uid, {"type": 4, "opts": wire, "close": bool(close)}))


def encode_legacy_remote_join(uid: str, request_id: str, sid: str, room: Room) -> bytes:
    """Legacy single-socket join (answered by the owning node with `{requestId}`)."""
    return _dump_json({"uid": uid, "requestId": request_id, "type": 2, "sid": sid, "room": room})


def encode_legacy_remote_leave(uid: str, request_id: str, sid: str, room: Room) -> bytes:
    return _dump_json({"uid": uid, "requestId": request_id, "type": 3, "sid": sid, "room": room})


def encode_legacy_remote_disconnect(
    uid: str, request_id: str, sid: str, close: bool = False
) -> bytes:
    return _dump_json(
        {"uid": uid, "requestId": request_id, "type": 4, "sid": sid, "close": bool(close)}
    )


def encode_fetch_sockets_request(
    uid: str, request_id: str, opts: BroadcastOptions | dict[str, Any]
) -> bytes:
    wire = _opts(opts).to_wire(with_flags=False)
    return _dump_json({"uid": uid, "requestId": request_id, "type": 5, "opts": wire})


def encode_server_side_emit(uid: str, data: list[Any], request_id: str | None = None) -> bytes:
    """serverSideEmit: `data` is [event, ...args]; a requestId asks every node for an ack."""
    if request_id is None:
        return _dump_json({"uid": uid, "type": 6, "data": data})
    return _dump_json({"uid": uid, "requestId": request_id, "type": 6, "data": data})


def encode_broadcast_with_ack_request(
    uid: str,
    request_id: str,
    nsp: str,
    data: list[Any],
    opts: BroadcastOptions | dict[str, Any],
) -> bytes:
    """Type 7 (msgpack): `opts.flags` should carry `timeout` (ms) as Node does."""
    return _pack(
        {
            "uid": uid,
            "requestId": request_id,
            "type": 7,
            "packet": {"type": EVENT, "data": data, "nsp": nsp},
            "opts": _opts(opts).to_wire(),
        }
    )


# Requests whose requestId is mandatory (the answers are correlated by it).
_REQUESTS_WITH_ID = frozenset(
    {RequestType.SOCKETS, RequestType.ALL_ROOMS, RequestType.REMOTE_FETCH, RequestType.BROADCAST}
)


def decode_classic_request(payload: bytes | bytearray | memoryview) -> ClassicRequest:
    """Decode a message received on `P-request#N#` (JSON or msgpack, sniffed)."""
    message = _sniff(payload)
    what = "request"
    if not isinstance(message, dict):
        raise ClusterMessageError(f"{what} must be an object")
    raw_type = _require(message, "type", int, what)
    try:
        kind = RequestType(raw_type)
    except ValueError:
        raise ClusterMessageError(f"{what}: unknown type {raw_type!r}") from None
    if kind >= RequestType.BROADCAST_CLIENT_COUNT:
        raise ClusterMessageError(f"{what}: type {raw_type} is a response type")
    what = f"request type {int(kind)}"
    request = ClassicRequest(
        type=kind,
        uid=_optional(message, "uid", str, what),
        request_id=_optional(message, "requestId", str, what),
    )
    if kind in _REQUESTS_WITH_ID:
        _require(message, "requestId", str, what)
    if kind is RequestType.SOCKETS:
        request.rooms = _room_list(message.get("rooms"), f"{what}: rooms")
    elif kind in (RequestType.REMOTE_JOIN, RequestType.REMOTE_LEAVE, RequestType.REMOTE_DISCONNECT):
        if message.get("sid") is not None and message.get("opts") is None:
            request.sid = _require(message, "sid", str, what)
            _require(message, "requestId", str, what)
            if kind is RequestType.REMOTE_DISCONNECT:
                request.close = bool(message.get("close", False))
            else:
                room = _require(message, "room", (str, int, float), what)
                request.room = room
        else:
            request.opts = _decode_opts(_require(message, "opts", dict, what), what)
            if kind is RequestType.REMOTE_DISCONNECT:
                request.close = bool(message.get("close", False))
            else:
                request.rooms = _room_list(_require(message, "rooms", list, what), f"{what}: rooms")
    elif kind is RequestType.REMOTE_FETCH:
        request.opts = _decode_opts(_require(message, "opts", dict, what), what)
    elif kind is RequestType.SERVER_SIDE_EMIT:
        request.data = _event_data(_require(message, "data", list, what), what)
    elif kind is RequestType.BROADCAST:
        packet = _require(message, "packet", dict, what)
        _event_data(packet.get("data"), what)
        _packet_type(packet.get("type", EVENT), what)
        request.packet = packet
        request.opts = _decode_opts(_require(message, "opts", dict, what), what)
    return request


# -- classic responses ----------------------------------------------------------------------------


@dataclass(slots=True)
class ClassicResponse:
    """A decoded message from `P-response#N#` or `P-response#N#UID#`.

    `type` is None for answers to types 0/1/5 and to legacy join/leave/disconnect: correlate them
    by `request_id` with the pending request. Present fields: `sockets` (0: ids, 5: socket
    descriptions), `rooms` (1), `data` (6: callback argument), `client_count` (8), `packet` (9).
    """

    request_id: str
    type: RequestType | None = None
    sockets: list[Any] | None = None
    rooms: list[Room] | None = None
    data: Any = None
    client_count: int | None = None
    packet: Any = None


def encode_sockets_response(request_id: str, socket_ids: Iterable[str]) -> bytes:
    return _dump_json({"requestId": request_id, "sockets": list(socket_ids)})


def encode_all_rooms_response(request_id: str, rooms: Iterable[Room]) -> bytes:
    """Every local room key, socket-id rooms and numeric rooms included."""
    return _dump_json({"requestId": request_id, "rooms": list(rooms)})


def encode_fetch_sockets_response(request_id: str, sockets: Iterable[dict[str, Any]]) -> bytes:
    """`sockets` are `socket_description(...)` maps."""
    return _dump_json({"requestId": request_id, "sockets": list(sockets)})


def encode_server_side_emit_response(request_id: str, data: Any = _MISSING) -> bytes:
    """Ack of a serverSideEmit; leave `data` out when the callback got no argument (undefined)."""
    if data is _MISSING:
        return _dump_json({"type": 6, "requestId": request_id})
    return _dump_json({"type": 6, "requestId": request_id, "data": data})


def encode_client_count_response(request_id: str, client_count: int) -> bytes:
    """First answer of a node to a type-7 request; mandatory even when the count is 0."""
    return _dump_json({"type": 8, "requestId": request_id, "clientCount": client_count})


def encode_broadcast_ack_response(request_id: str, packet: Any = _MISSING) -> bytes:
    """One client's ack (msgpack); `packet` is only the first ack argument, left out if none."""
    if packet is _MISSING:
        return _pack({"type": 9, "requestId": request_id})
    return _pack({"type": 9, "requestId": request_id, "packet": packet})


def encode_legacy_ack_response(request_id: str) -> bytes:
    """Answer of the node owning the socket to a legacy single-socket join/leave/disconnect."""
    return _dump_json({"requestId": request_id})


def decode_classic_response(payload: bytes | bytearray | memoryview) -> ClassicResponse:
    """Decode a message received on a response channel (JSON or msgpack, sniffed)."""
    message = _sniff(payload)
    what = "response"
    if not isinstance(message, dict):
        raise ClusterMessageError(f"{what} must be an object")
    response = ClassicResponse(request_id=_require(message, "requestId", str, what))
    raw_type = message.get("type")
    if raw_type is not None:
        if type(raw_type) is not int or raw_type not in (6, 8, 9):
            raise ClusterMessageError(f"{what}: unknown response type {raw_type!r}")
        response.type = RequestType(raw_type)
    if response.type is RequestType.BROADCAST_CLIENT_COUNT:
        response.client_count = _require(message, "clientCount", int, what)
    elif response.type is RequestType.BROADCAST_ACK:
        response.packet = message.get("packet")
    elif response.type is RequestType.SERVER_SIDE_EMIT:
        response.data = message.get("data")
    else:
        response.sockets = _optional(message, "sockets", list, what)
        rooms = message.get("rooms")
        response.rooms = None if rooms is None else _room_list(rooms, f"{what}: rooms")
    return response


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


# -- sharded adapter ------------------------------------------------------------------------------

# Types whose data may carry user binary; only these switch to msgpack (spec 4.2).
_SHARDED_BINARY_TYPES = frozenset(
    {
        ShardedType.BROADCAST,
        ShardedType.FETCH_SOCKETS_RESPONSE,
        ShardedType.SERVER_SIDE_EMIT,
        ShardedType.SERVER_SIDE_EMIT_RESPONSE,
        ShardedType.BROADCAST_ACK,
    }
)


@dataclass(slots=True)
class ShardedMessage:
    """The sharded envelope `{type, data, uid, nsp}`; `data` is None for types without data.

    Build outgoing messages with the `sharded_*` constructors (they fix the data key order);
    decoded messages have been checked for the fields their type requires.
    """

    type: ShardedType
    uid: str
    nsp: str
    data: dict[str, Any] | None = None

    @property
    def request_id(self) -> str | None:
        return None if self.data is None else self.data.get("requestId")

    @property
    def opts(self) -> BroadcastOptions | None:
        if self.data is None or "opts" not in self.data:
            return None
        return _decode_opts(self.data["opts"], "sharded opts")


def encode_sharded(message: ShardedMessage) -> bytes:
    """JSON, or msgpack when the type may carry binary and its data does."""
    envelope: dict[str, Any] = {"type": int(message.type)}
    if message.data is not None:
        envelope["data"] = message.data
    envelope["uid"] = message.uid
    envelope["nsp"] = message.nsp
    if message.type in _SHARDED_BINARY_TYPES and contains_binary(message.data):
        return _pack(envelope)
    return _dump_json(envelope)


def sharded_broadcast(
    uid: str,
    nsp: str,
    data: list[Any],
    opts: BroadcastOptions | dict[str, Any] | None = None,
    request_id: str | None = None,
) -> ShardedMessage:
    """A broadcast (`packet` has no nsp here); with `request_id` it is a broadcast with ack."""
    packet = {"type": EVENT, "data": data}
    wire = (BroadcastOptions() if opts is None else _opts(opts)).to_wire()
    if request_id is None:
        body = {"packet": packet, "opts": wire}
    else:
        body = {"packet": packet, "requestId": request_id, "opts": wire}
    return ShardedMessage(ShardedType.BROADCAST, uid, nsp, body)


def sharded_sockets_join(
    uid: str, nsp: str, opts: BroadcastOptions | dict[str, Any], rooms: Iterable[Room]
) -> ShardedMessage:
    body = {"opts": _opts(opts).to_wire(), "rooms": list(rooms)}
    return ShardedMessage(ShardedType.SOCKETS_JOIN, uid, nsp, body)


def sharded_sockets_leave(
    uid: str, nsp: str, opts: BroadcastOptions | dict[str, Any], rooms: Iterable[Room]
) -> ShardedMessage:
    body = {"opts": _opts(opts).to_wire(), "rooms": list(rooms)}
    return ShardedMessage(ShardedType.SOCKETS_LEAVE, uid, nsp, body)


def sharded_disconnect_sockets(
    uid: str, nsp: str, opts: BroadcastOptions | dict[str, Any], close: bool = False
) -> ShardedMessage:
    body = {"opts": _opts(opts).to_wire(), "close": bool(close)}
    return ShardedMessage(ShardedType.DISCONNECT_SOCKETS, uid, nsp, body)


def sharded_fetch_sockets(
    uid: str, nsp: str, opts: BroadcastOptions | dict[str, Any], request_id: str
) -> ShardedMessage:
    """`opts.flags.timeout` (ms), when set, is the requester's timeout."""
    body = {"opts": _opts(opts).to_wire(), "requestId": request_id}
    return ShardedMessage(ShardedType.FETCH_SOCKETS, uid, nsp, body)


def sharded_fetch_sockets_response(
    uid: str, nsp: str, request_id: str, sockets: Iterable[dict[str, Any]]
) -> ShardedMessage:
    body = {"requestId": request_id, "sockets": list(sockets)}
    return ShardedMessage(ShardedType.FETCH_SOCKETS_RESPONSE, uid, nsp, body)


def sharded_server_side_emit(
    uid: str, nsp: str, data: list[Any], request_id: str | None = None
) -> ShardedMessage:
    body = {"packet": data} if request_id is None else {"requestId": request_id, "packet": data}
    return ShardedMessage(ShardedType.SERVER_SIDE_EMIT, uid, nsp, body)


def sharded_server_side_emit_response(
    uid: str, nsp: str, request_id: str, packet: Any = _MISSING
) -> ShardedMessage:
    body: dict[str, Any] = {"requestId": request_id}
    if packet is not _MISSING:
        body["packet"] = packet
    return ShardedMessage(ShardedType.SERVER_SIDE_EMIT_RESPONSE, uid, nsp, body)


def sharded_client_count(uid: str, nsp: str, request_id: str, client_count: int) -> ShardedMessage:
    body = {"requestId": request_id, "clientCount": client_count}
    return ShardedMessage(ShardedType.BROADCAST_CLIENT_COUNT, uid, nsp, body)


def sharded_broadcast_ack(
    uid: str, nsp: str, request_id: str, packet: Any = _MISSING
) -> ShardedMessage:
    body: dict[str, Any] = {"requestId": request_id}
    if packet is not _MISSING:
        body["packet"] = packet
    return ShardedMessage(ShardedType.BROADCAST_ACK, uid, nsp, body)


def _check_sharded_data(kind: ShardedType, data: Any, what: str) -> None:
    if kind in (ShardedType.INITIAL_HEARTBEAT, ShardedType.HEARTBEAT, ShardedType.ADAPTER_CLOSE):
        return
    if not isinstance(data, dict):
        raise ClusterMessageError(f"{what}: data must be an object")
    if kind in (
        ShardedType.FETCH_SOCKETS,
        ShardedType.FETCH_SOCKETS_RESPONSE,
        ShardedType.SERVER_SIDE_EMIT_RESPONSE,
        ShardedType.BROADCAST_CLIENT_COUNT,
        ShardedType.BROADCAST_ACK,
    ):
        _require(data, "requestId", str, what)
    else:
        _optional(data, "requestId", str, what)
    if kind in (
        ShardedType.BROADCAST,
        ShardedType.SOCKETS_JOIN,
        ShardedType.SOCKETS_LEAVE,
        ShardedType.DISCONNECT_SOCKETS,
        ShardedType.FETCH_SOCKETS,
    ):
        _decode_opts(_require(data, "opts", dict, what), what)
    if kind is ShardedType.BROADCAST:
        packet = _require(data, "packet", dict, what)
        _event_data(packet.get("data"), what)
        _packet_type(packet.get("type", EVENT), what)
    elif kind in (ShardedType.SOCKETS_JOIN, ShardedType.SOCKETS_LEAVE):
        _room_list(_require(data, "rooms", list, what), f"{what}: rooms")
    elif kind is ShardedType.FETCH_SOCKETS_RESPONSE:
        _require(data, "sockets", list, what)
    elif kind is ShardedType.SERVER_SIDE_EMIT:
        _event_data(_require(data, "packet", list, what), what)
    elif kind is ShardedType.BROADCAST_CLIENT_COUNT:
        _require(data, "clientCount", int, what)


def decode_sharded(payload: bytes | bytearray | memoryview) -> ShardedMessage:
    """Decode any sharded message (JSON or msgpack, sniffed) and check its required fields."""
    message = _sniff(payload)
    what = "sharded message"
    if not isinstance(message, dict):
        raise ClusterMessageError(f"{what} must be an object")
    raw_type = _require(message, "type", int, what)
    try:
        kind = ShardedType(raw_type)
    except ValueError:
        raise ClusterMessageError(f"{what}: unknown type {raw_type!r}") from None
    what = f"sharded message type {int(kind)}"
    uid = _require(message, "uid", str, what)
    nsp = _require(message, "nsp", str, what)
    data = message.get("data")
    _check_sharded_data(kind, data, what)
    return ShardedMessage(kind, uid, nsp, data)
