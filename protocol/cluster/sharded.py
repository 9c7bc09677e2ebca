"""The sharded wire format of @socket.io/redis-adapter's `createShardedAdapter` (SPUBLISH /
SSUBSCRIBE, Redis >= 7): one envelope `{type, data, uid, nsp}` on `P#N#` (requests and most
broadcasts), `P#N#R#` (a room's broadcasts in the dynamic modes) and `P#N#UID#` (answers to node
UID). JSON, unless the type may carry user binary and does: then msgpack.

The `sharded_*` constructors and `encode_sharded` / `decode_sharded` reproduce Node's bytes;
`encode_message` / `decode_message` map them to the typed messages of `messages.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from ..errors import ClusterMessageError
from .messages import (
    EVENT,
    Answer,
    Broadcast,
    BroadcastOptions,
    DisconnectSockets,
    FetchSockets,
    Message,
    Response,
    Room,
    ServerSideEmit,
    ShardedType,
    SocketsJoin,
    SocketsLeave,
    SubscriptionMode,
    coerce_options,
    is_socket_description,
    decode_options,
    event_data,
    looks_like_socket_id,
    optional,
    packet_type,
    require,
    room_list,
    room_text,
    typed_object,
)
from .values import MISSING, contains_binary, dump_json, json_may_hold_integral_float, pack, sniff

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
        return decode_options(self.data["opts"], "sharded opts")


def encode_sharded(message: ShardedMessage) -> bytes:
    """JSON, or msgpack when the type may carry binary and its data does."""
    envelope: dict[str, Any] = {"type": int(message.type)}
    if message.data is not None:
        envelope["data"] = message.data
    envelope["uid"] = message.uid
    envelope["nsp"] = message.nsp
    if message.type in _SHARDED_BINARY_TYPES and contains_binary(message.data):
        return pack(envelope)
    return dump_json(envelope)


def sharded_broadcast(
    uid: str,
    nsp: str,
    data: list[Any],
    opts: BroadcastOptions | dict[str, Any] | None = None,
    request_id: str | None = None,
) -> ShardedMessage:
    """A broadcast (`packet` has no nsp here); with `request_id` it is a broadcast with ack."""
    packet = {"type": EVENT, "data": data}
    wire = (BroadcastOptions() if opts is None else coerce_options(opts)).to_wire()
    if request_id is None:
        body = {"packet": packet, "opts": wire}
    else:
        body = {"packet": packet, "requestId": request_id, "opts": wire}
    return ShardedMessage(ShardedType.BROADCAST, uid, nsp, body)


def sharded_sockets_join(
    uid: str, nsp: str, opts: BroadcastOptions | dict[str, Any], rooms: Iterable[Room]
) -> ShardedMessage:
    body = {"opts": coerce_options(opts).to_wire(), "rooms": list(rooms)}
    return ShardedMessage(ShardedType.SOCKETS_JOIN, uid, nsp, body)


def sharded_sockets_leave(
    uid: str, nsp: str, opts: BroadcastOptions | dict[str, Any], rooms: Iterable[Room]
) -> ShardedMessage:
    body = {"opts": coerce_options(opts).to_wire(), "rooms": list(rooms)}
    return ShardedMessage(ShardedType.SOCKETS_LEAVE, uid, nsp, body)


def sharded_disconnect_sockets(
    uid: str, nsp: str, opts: BroadcastOptions | dict[str, Any], close: bool = False
) -> ShardedMessage:
    body = {"opts": coerce_options(opts).to_wire(), "close": bool(close)}
    return ShardedMessage(ShardedType.DISCONNECT_SOCKETS, uid, nsp, body)


def sharded_fetch_sockets(
    uid: str, nsp: str, opts: BroadcastOptions | dict[str, Any], request_id: str
) -> ShardedMessage:
    """`opts.flags.timeout` (ms), when set, is the requester's timeout."""
    body = {"opts": coerce_options(opts).to_wire(), "requestId": request_id}
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
    uid: str, nsp: str, request_id: str, packet: Any = MISSING
) -> ShardedMessage:
    body: dict[str, Any] = {"requestId": request_id}
    if packet is not MISSING:
        body["packet"] = packet
    return ShardedMessage(ShardedType.SERVER_SIDE_EMIT_RESPONSE, uid, nsp, body)


def sharded_client_count(uid: str, nsp: str, request_id: str, client_count: int) -> ShardedMessage:
    body = {"requestId": request_id, "clientCount": client_count}
    return ShardedMessage(ShardedType.BROADCAST_CLIENT_COUNT, uid, nsp, body)


def sharded_broadcast_ack(
    uid: str, nsp: str, request_id: str, packet: Any = MISSING
) -> ShardedMessage:
    body: dict[str, Any] = {"requestId": request_id}
    if packet is not MISSING:
        body["packet"] = packet
    return ShardedMessage(ShardedType.BROADCAST_ACK, uid, nsp, body)


def _check_sharded_data(kind: ShardedType, data: Any, what: str) -> BroadcastOptions | None:
    """Check the fields `kind` requires; returns the decoded opts of the types that have them."""
    if kind in (ShardedType.INITIAL_HEARTBEAT, ShardedType.HEARTBEAT, ShardedType.ADAPTER_CLOSE):
        return None
    if not isinstance(data, dict):
        raise ClusterMessageError(f"{what}: data must be an object")
    if kind in (
        ShardedType.FETCH_SOCKETS,
        ShardedType.FETCH_SOCKETS_RESPONSE,
        ShardedType.SERVER_SIDE_EMIT_RESPONSE,
        ShardedType.BROADCAST_CLIENT_COUNT,
        ShardedType.BROADCAST_ACK,
    ):
        require(data, "requestId", str, what)
    else:
        optional(data, "requestId", str, what)
    if kind in (
        ShardedType.BROADCAST,
        ShardedType.SOCKETS_JOIN,
        ShardedType.SOCKETS_LEAVE,
        ShardedType.DISCONNECT_SOCKETS,
        ShardedType.FETCH_SOCKETS,
    ):
        opts = decode_options(require(data, "opts", dict, what), what)
    else:
        opts = None
    if kind is ShardedType.BROADCAST:
        packet = require(data, "packet", dict, what)
        event_data(packet.get("data"), what)
        packet_type(packet.get("type", EVENT), what)
    elif kind in (ShardedType.SOCKETS_JOIN, ShardedType.SOCKETS_LEAVE):
        room_list(require(data, "rooms", list, what), f"{what}: rooms")
    elif kind is ShardedType.FETCH_SOCKETS_RESPONSE:
        require(data, "sockets", list, what)
    elif kind is ShardedType.SERVER_SIDE_EMIT:
        event_data(require(data, "packet", list, what), what)
    elif kind is ShardedType.BROADCAST_CLIENT_COUNT:
        require(data, "clientCount", int, what)
    return opts


def _envelope(payload: bytes | bytearray | memoryview) -> tuple[ShardedType, str, str, Any, BroadcastOptions | None]:
    """Sniff and check an envelope: (type, uid, nsp, data, the decoded opts of types with opts)."""
    return _checked(sniff(payload))


def _checked(obj: Any) -> tuple[ShardedType, str, str, Any, BroadcastOptions | None]:
    message, kind = typed_object(obj, "sharded message", ShardedType)
    what = f"sharded message type {int(kind)}"
    uid = require(message, "uid", str, what)
    nsp = require(message, "nsp", str, what)
    data = message.get("data")
    return kind, uid, nsp, data, _check_sharded_data(kind, data, what)


def decode_sharded(payload: bytes | bytearray | memoryview) -> ShardedMessage:
    """Decode any sharded message (JSON or msgpack, sniffed) and check its required fields."""
    kind, uid, nsp, data, _ = _envelope(payload)
    return ShardedMessage(kind, uid, nsp, data)


# -- typed messages <-> sharded bytes -----------------------------------------------------------------


def message_channel(prefix: str, message: Message, mode: SubscriptionMode, requester: str | None = None) -> str:
    """Where `message` is SPUBLISHed: answers to the requester's node channel; a broadcast without
    acknowledgements to exactly one room to that room's channel when the mode subscribes to it;
    everything else to the main channel."""
    kind = type(message)
    if kind is Response:
        assert requester is not None
        return sharded_node_channel(prefix, message.nsp, requester)
    if kind is Broadcast and message.request_id is None:  # type: ignore[union-attr]
        rooms = message.opts.rooms  # type: ignore[union-attr]
        if len(rooms) == 1 and sharded_room_subscribed(rooms[0], mode):
            return sharded_room_channel(prefix, message.nsp, rooms[0])
    return sharded_channel(prefix, message.nsp)


def to_envelope(message: Message) -> ShardedMessage:
    """The sharded envelope of a typed message."""
    kind = type(message)
    m: Any = message
    if kind is Broadcast:
        return sharded_broadcast(m.uid, m.nsp, m.data, m.opts, m.request_id)
    if kind is Response:
        answer = m.kind
        if answer is Answer.CLIENT_COUNT:
            return sharded_client_count(m.uid, m.nsp, m.request_id, m.value)
        if answer is Answer.ACK:
            return sharded_broadcast_ack(m.uid, m.nsp, m.request_id, m.value)
        if answer is Answer.FETCH_SOCKETS:
            return sharded_fetch_sockets_response(m.uid, m.nsp, m.request_id, m.value)
        if answer is Answer.SERVER_SIDE_EMIT:
            return sharded_server_side_emit_response(m.uid, m.nsp, m.request_id, m.value)
    elif kind is SocketsJoin:
        return sharded_sockets_join(m.uid, m.nsp, m.opts, m.rooms)
    elif kind is SocketsLeave:
        return sharded_sockets_leave(m.uid, m.nsp, m.opts, m.rooms)
    elif kind is DisconnectSockets:
        return sharded_disconnect_sockets(m.uid, m.nsp, m.opts, m.close)
    elif kind is FetchSockets:
        return sharded_fetch_sockets(m.uid, m.nsp, m.opts, m.request_id)
    elif kind is ServerSideEmit:
        return sharded_server_side_emit(m.uid, m.nsp, m.data, m.request_id)
    raise ClusterMessageError(f"the sharded protocol has no form for {kind.__name__}")


def encode_message(message: Message) -> bytes:
    """The sharded bytes of a typed message (exactly what Node's sharded adapter publishes)."""
    if type(message) is Broadcast and type(message.opts) is BroadcastOptions:
        return encode_broadcast(message.uid, message.nsp, message.data, message.opts, message.request_id)
    return encode_sharded(to_envelope(message))


_BROADCAST_TYPE = int(ShardedType.BROADCAST)


def encode_broadcast(
    uid: str, nsp: str, data: list[Any], opts: BroadcastOptions, request_id: str | None = None
) -> bytes:
    """A broadcast's sharded bytes, orjson first: one dump of the envelope as it is, with no walk
    for binary (orjson refuses bytes, and dates here, which sends the message down the general
    path: msgpack for binary, JS date text) and none for JS numbers unless the text shows a
    float that may be integral. Byte-equal to `encode_sharded(sharded_broadcast(...))`."""
    rooms, excluded, flags = opts.rooms, opts.except_rooms, opts.flags
    wire = {
        "rooms": rooms if type(rooms) is list else list(rooms),
        "except": excluded if type(excluded) is list else list(excluded),
        "flags": {} if flags is None else flags,
    }
    packet = {"type": EVENT, "data": data}
    if request_id is None:
        body = {"packet": packet, "opts": wire}
    else:
        body = {"packet": packet, "requestId": request_id, "opts": wire}
    try:
        encoded = orjson.dumps(
            {"type": _BROADCAST_TYPE, "data": body, "uid": uid, "nsp": nsp},
            option=orjson.OPT_PASSTHROUGH_DATETIME,
        )
    except TypeError:  # orjson.JSONEncodeError: binary, a date, a set, ...
        encoded = b""
    if encoded and not json_may_hold_integral_float(encoded):
        return encoded
    return encode_sharded(sharded_broadcast(uid, nsp, data, opts, request_id))


def own_message_tails(uid: str, nsp: str) -> tuple[bytes, bytes]:
    """The last bytes of every message node `uid` publishes for namespace `nsp`, as JSON and as
    msgpack: the envelope always ends with its uid and nsp (`encode_sharded`'s key order), so a
    node tells its own messages coming back through a room or main channel it listens on by
    `payload.endswith(tails)` and drops them without decoding (Node drops them after decoding:
    the uid is its own)."""
    as_json = b',"uid":' + orjson.dumps(uid) + b',"nsp":' + orjson.dumps(nsp) + b"}"
    pack_str = msgpack.Packer(use_bin_type=True).pack
    as_msgpack = pack_str("uid") + pack_str(uid) + pack_str("nsp") + pack_str(nsp)
    return as_json, as_msgpack


_RESPONSES = {
    ShardedType.FETCH_SOCKETS_RESPONSE: Answer.FETCH_SOCKETS,
    ShardedType.SERVER_SIDE_EMIT_RESPONSE: Answer.SERVER_SIDE_EMIT,
    ShardedType.BROADCAST_CLIENT_COUNT: Answer.CLIENT_COUNT,
    ShardedType.BROADCAST_ACK: Answer.ACK,
}


def decode_message(payload: bytes | bytearray | memoryview) -> Message | None:
    """Any sharded message as a typed message, validated completely; None for the heartbeat and
    adapter-close notices, which this adapter does not act on."""
    if type(payload) is bytes and payload and payload[0] == 0x7B:  # `{`: JSON
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ClusterMessageError(f"undecodable JSON payload: {exc}") from exc
        if type(obj) is dict:
            plain = _plain_broadcast(obj)
            if plain is not None:
                return plain
        return decode_envelope(obj)
    return decode_envelope(sniff(payload))


def _plain_broadcast(obj: dict[str, Any]) -> Broadcast | None:
    """The shape of almost every sharded message (`to(room).emit` from any node, no ack), checked
    by exact types in one go, with the result the general checks would give it; None for
    anything else, which then takes the general path."""
    kind = obj.get("type")
    data = obj.get("data")
    uid = obj.get("uid")
    nsp = obj.get("nsp")
    if kind != _BROADCAST_TYPE or type(kind) is not int or type(data) is not dict or type(uid) is not str or type(nsp) is not str:
        return None
    body = plain_broadcast_body(data)
    if body is None:
        return None
    event, rooms, excluded, flags = body
    if type(excluded) is not list or (flags is not None and type(flags) is not dict):
        return None
    for room in excluded:
        if type(room) is not str:
            return None
    return Broadcast(uid, nsp, event, BroadcastOptions(rooms, excluded, flags))


def plain_broadcast_body(data: dict[str, Any]) -> tuple[list[Any], list[Room], Any, Any] | None:
    """The event, rooms, `except` and `flags` of a broadcast's `{packet, opts}` (the sharded
    envelope's data, a stream entry's data) when it wants no acks and its event and rooms have
    exact types: a list, an integer packet type, string rooms. `except` and `flags` come back
    unchecked, for each reader's own rule; None means the general checks decide."""
    if "requestId" in data:
        return None
    packet = data.get("packet")
    opts = data.get("opts")
    if type(packet) is not dict or type(opts) is not dict:
        return None
    event = packet.get("data")
    rooms = opts.get("rooms")
    if type(event) is not list or type(packet.get("type", EVENT)) is not int or type(rooms) is not list:
        return None
    for room in rooms:
        if type(room) is not str:
            return None
    return event, rooms, opts.get("except"), opts.get("flags")


def decode_envelope(obj: Any) -> Message | None:
    """An already-decoded `{type, data, uid, nsp}` object as a typed message (the streams adapter
    reads the same envelope from stream fields and msgpack messages)."""
    kind, uid, nsp, data, opts_or_none = _checked(obj)
    opts: Any = opts_or_none
    what = f"sharded message type {int(kind)}"
    T = ShardedType
    if kind is T.BROADCAST:
        request_id = data.get("requestId")
        event = data["packet"]["data"]
        if request_id is not None and not event:
            raise ClusterMessageError(f"{what}: broadcast with ack without event data")
        return Broadcast(uid, nsp, event, opts, request_id)
    answer = _RESPONSES.get(kind)
    if answer is not None:
        if answer is Answer.FETCH_SOCKETS:
            value = data["sockets"]
            for description in value:
                if not is_socket_description(description):
                    raise ClusterMessageError(f"{what}: malformed socket description {description!r:.200}")
        elif answer is Answer.CLIENT_COUNT:
            value = data["clientCount"]
        else:
            value = data.get("packet")
        return Response(answer, data["requestId"], value, uid, nsp)
    if kind is T.SOCKETS_JOIN:
        return SocketsJoin(uid, nsp, opts, list(data["rooms"]))
    if kind is T.SOCKETS_LEAVE:
        return SocketsLeave(uid, nsp, opts, list(data["rooms"]))
    if kind is T.DISCONNECT_SOCKETS:
        return DisconnectSockets(uid, nsp, opts, bool(data.get("close")))
    if kind is T.FETCH_SOCKETS:
        return FetchSockets(uid, nsp, opts, data["requestId"])
    if kind is T.SERVER_SIDE_EMIT:
        return ServerSideEmit(uid, nsp, data["packet"], data.get("requestId"))
    return None
