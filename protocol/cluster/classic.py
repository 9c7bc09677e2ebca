"""The classic @socket.io/redis-adapter 8.3 wire format (PUBLISH / PSUBSCRIBE), with the legacy
single-socket forms and the @socket.io/redis-emitter 5.1 forms.

Broadcasts go to `P#N#` or `P#N#R#` as msgpack `[uid, {type, data, nsp}, opts]`; requests to
`P-request#N#` and answers to `P-response#N#` (or the requester's `P-response#N#UID#`) as JSON,
except request type 7 and response type 9 (msgpack). Receivers sniff the first byte (`{` is JSON).
The `encode_*` / `decode_*` functions reproduce Node's bytes exactly (key order, integer forms);
`encode_message` / `decode_request` / `decode_response` map them to the typed messages of
`messages.py` for the cluster adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..errors import ClusterMessageError
from .messages import (
    EMITTER_UID,
    EVENT,
    AllRooms,
    Answer,
    Broadcast,
    BroadcastOptions,
    DisconnectSockets,
    FetchSockets,
    Message,
    Request,
    RequestType,
    Response,
    Room,
    ServerSideEmit,
    SingleSocket,
    SocketIds,
    SocketsJoin,
    SocketsLeave,
    coerce_options,
    decode_options,
    event_data,
    optional,
    packet_type,
    require,
    room_list,
    room_text,
    typed_object,
)
from .values import MISSING, dump_json, js_numbers, may_hold_integral_float, pack, pack_as_is, sniff, unpack

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
    if type(opts) is BroadcastOptions:
        # The cluster adapter's every broadcast: its lists are packed as they are, not copied,
        # and only the parts that may hold floats are looked at for JS numbers (see `pack`).
        rooms, excluded, flags = opts.rooms, opts.except_rooms, opts.flags
        rooms = rooms if type(rooms) is list else list(rooms)
        excluded = excluded if type(excluded) is list else list(excluded)
        flags = {} if flags is None else flags
        packed = pack_as_is([uid, {"type": EVENT, "data": data, "nsp": nsp}, {"rooms": rooms, "except": excluded, "flags": flags}])
        if not may_hold_integral_float(packed):
            return packed
        js = js_numbers(data), js_numbers(rooms), js_numbers(excluded), js_numbers(flags)
        if js[0] is data and js[1] is rooms and js[2] is excluded and js[3] is flags:
            return packed  # floats, but none integral
        return pack_as_is([uid, {"type": EVENT, "data": js[0], "nsp": nsp}, {"rooms": js[1], "except": js[2], "flags": js[3]}])
    else:
        wire = (BroadcastOptions() if opts is None else coerce_options(opts)).to_wire()
    return pack([uid, {"type": EVENT, "data": data, "nsp": nsp}, wire])


def encode_emitter_broadcast(
    nsp: str,
    data: list[Any],
    opts: BroadcastOptions | dict[str, Any] | None = None,
    uid: str = EMITTER_UID,
) -> bytes:
    """Emitter broadcast: uid "emitter" and opts key order rooms, flags, except."""
    options = BroadcastOptions() if opts is None else coerce_options(opts)
    packet = {"type": EVENT, "data": data, "nsp": nsp}
    return pack([uid, packet, options.to_wire(emitter_order=True)])


def broadcast_prefix(uid: str) -> bytes:
    """The first bytes of every broadcast node `uid` publishes on a broadcast channel (`[uid, `
    in msgpack): a node hears its own broadcasts back through its pattern subscription and
    tells them by this prefix without decoding them."""
    return b"\x93" + msgpack.packb(uid, use_bin_type=True)


def _broadcast_parts(payload: bytes | bytearray | memoryview) -> tuple[str, str, list[Any], BroadcastOptions, int]:
    """Validate a broadcast `[uid, {type, data, nsp}, opts]`: (uid, nsp, data, opts, packet type)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)) or not payload:
        raise ClusterMessageError("broadcast payload must be non-empty bytes")
    message = unpack(bytes(payload))
    # The shape of almost every broadcast (`to(room).emit` from any node): checked by exact
    # types in one go, with the same result the general checks below would give it.
    if type(message) is list and len(message) == 3:
        uid, packet, opts = message
        if type(uid) is str and type(packet) is dict and type(opts) is dict:
            nsp, data, kind = packet.get("nsp"), packet.get("data"), packet.get("type", EVENT)
            rooms, excluded, flags = opts.get("rooms"), opts.get("except"), opts.get("flags")
            if (
                type(nsp) is str
                and type(data) is list
                and type(kind) is int
                and type(rooms) is list
                and (type(flags) is dict or flags is None)
                and (excluded is None or (type(excluded) is list and not excluded))
                and all([type(room) is str for room in rooms])
            ):
                return uid, nsp, data, BroadcastOptions(rooms, [], flags), kind
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
    options = decode_options(opts, what)
    return uid, nsp, event_data(packet.get("data"), what), options, packet_type(packet.get("type", EVENT), what)


def decode_classic_broadcast(payload: bytes | bytearray | memoryview) -> ClassicBroadcast:
    """Decode a message received on `P#N#` / `P#N#R#` (always msgpack, custom parsers aside)."""
    uid, nsp, data, options, kind = _broadcast_parts(payload)
    return ClassicBroadcast(
        uid=uid,
        data=data,
        nsp=nsp,
        rooms=options.rooms,
        except_rooms=options.except_rooms,
        flags={} if options.flags is None else options.flags,
        packet_type=kind,
    )


def decode_broadcast(payload: bytes | bytearray | memoryview) -> Broadcast:
    """A broadcast channel's message as the cluster adapter's `Broadcast`."""
    uid, nsp, data, options, _ = _broadcast_parts(payload)
    return Broadcast(uid, nsp, data, options)


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


def _with_uid(uid: str | None, body: dict[str, Any]) -> dict[str, Any]:
    if uid is None:
        return body
    return {"uid": uid, **body}


def encode_sockets_request(uid: str, request_id: str, rooms: Iterable[Room]) -> bytes:
    """Type 0 (legacy; 8.3 never sends it but still answers)."""
    return dump_json({"uid": uid, "requestId": request_id, "type": 0, "rooms": list(rooms)})


def encode_all_rooms_request(uid: str, request_id: str) -> bytes:
    return dump_json({"uid": uid, "requestId": request_id, "type": 1})


def encode_remote_join(
    uid: str | None, opts: BroadcastOptions | dict[str, Any], rooms: Iterable[Room]
) -> bytes:
    """socketsJoin; uid None gives the emitter form (no uid key)."""
    wire = coerce_options(opts).to_wire(with_flags=False)
    return dump_json(_with_uid(uid, {"type": 2, "opts": wire, "rooms": list(rooms)}))


def encode_remote_leave(
    uid: str | None, opts: BroadcastOptions | dict[str, Any], rooms: Iterable[Room]
) -> bytes:
    """socketsLeave; uid None gives the emitter form (no uid key)."""
    wire = coerce_options(opts).to_wire(with_flags=False)
    return dump_json(_with_uid(uid, {"type": 3, "opts": wire, "rooms": list(rooms)}))


def encode_remote_disconnect(
    uid: str | None, opts: BroadcastOptions | dict[str, Any], close: bool = False
) -> bytes:
    """disconnectSockets; uid None gives the emitter form (no uid key)."""
    wire = coerce_options(opts).to_wire(with_flags=False)
    return dump_json(_with_uid(uid, {"type": 4, "opts": wire, "close": bool(close)}))


def encode_legacy_remote_join(uid: str, request_id: str, sid: str, room: Room) -> bytes:
    """Legacy single-socket join (answered by the owning node with `{requestId}`)."""
    return dump_json({"uid": uid, "requestId": request_id, "type": 2, "sid": sid, "room": room})


def encode_legacy_remote_leave(uid: str, request_id: str, sid: str, room: Room) -> bytes:
    return dump_json({"uid": uid, "requestId": request_id, "type": 3, "sid": sid, "room": room})


def encode_legacy_remote_disconnect(
    uid: str, request_id: str, sid: str, close: bool = False
) -> bytes:
    return dump_json(
        {"uid": uid, "requestId": request_id, "type": 4, "sid": sid, "close": bool(close)}
    )


def encode_fetch_sockets_request(
    uid: str, request_id: str, opts: BroadcastOptions | dict[str, Any]
) -> bytes:
    wire = coerce_options(opts).to_wire(with_flags=False)
    return dump_json({"uid": uid, "requestId": request_id, "type": 5, "opts": wire})


def encode_server_side_emit(uid: str, data: list[Any], request_id: str | None = None) -> bytes:
    """serverSideEmit: `data` is [event, ...args]; a requestId asks every node for an ack."""
    if request_id is None:
        return dump_json({"uid": uid, "type": 6, "data": data})
    return dump_json({"uid": uid, "requestId": request_id, "type": 6, "data": data})


def encode_broadcast_with_ack_request(
    uid: str,
    request_id: str,
    nsp: str,
    data: list[Any],
    opts: BroadcastOptions | dict[str, Any],
) -> bytes:
    """Type 7 (msgpack): `opts.flags` should carry `timeout` (ms) as Node does."""
    return pack(
        {
            "uid": uid,
            "requestId": request_id,
            "type": 7,
            "packet": {"type": EVENT, "data": data, "nsp": nsp},
            "opts": coerce_options(opts).to_wire(),
        }
    )


# Requests whose requestId is mandatory (the answers are correlated by it).
_REQUESTS_WITH_ID = frozenset(
    {RequestType.SOCKETS, RequestType.ALL_ROOMS, RequestType.REMOTE_FETCH, RequestType.BROADCAST}
)


def decode_classic_request(payload: bytes | bytearray | memoryview) -> ClassicRequest:
    """Decode a message received on `P-request#N#` (JSON or msgpack, sniffed)."""
    what = "request"
    message, kind = typed_object(sniff(payload), what, RequestType)
    if kind >= RequestType.BROADCAST_CLIENT_COUNT:
        raise ClusterMessageError(f"{what}: type {int(kind)} is a response type")
    what = f"request type {int(kind)}"
    request = ClassicRequest(
        type=kind,
        uid=optional(message, "uid", str, what),
        request_id=optional(message, "requestId", str, what),
    )
    if kind in _REQUESTS_WITH_ID:
        require(message, "requestId", str, what)
    if kind is RequestType.SOCKETS:
        request.rooms = room_list(message.get("rooms"), f"{what}: rooms")
    elif kind in (RequestType.REMOTE_JOIN, RequestType.REMOTE_LEAVE, RequestType.REMOTE_DISCONNECT):
        if message.get("sid") is not None and message.get("opts") is None:
            request.sid = require(message, "sid", str, what)
            require(message, "requestId", str, what)
            if kind is RequestType.REMOTE_DISCONNECT:
                request.close = bool(message.get("close", False))
            else:
                room = require(message, "room", (str, int, float), what)
                request.room = room
        else:
            request.opts = decode_options(require(message, "opts", dict, what), what)
            if kind is RequestType.REMOTE_DISCONNECT:
                request.close = bool(message.get("close", False))
            else:
                request.rooms = room_list(require(message, "rooms", list, what), f"{what}: rooms")
    elif kind is RequestType.REMOTE_FETCH:
        request.opts = decode_options(require(message, "opts", dict, what), what)
    elif kind is RequestType.SERVER_SIDE_EMIT:
        request.data = event_data(require(message, "data", list, what), what)
    elif kind is RequestType.BROADCAST:
        packet = require(message, "packet", dict, what)
        event_data(packet.get("data"), what)
        packet_type(packet.get("type", EVENT), what)
        request.packet = packet
        request.opts = decode_options(require(message, "opts", dict, what), what)
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
    return dump_json({"requestId": request_id, "sockets": list(socket_ids)})


def encode_all_rooms_response(request_id: str, rooms: Iterable[Room]) -> bytes:
    """Every local room key, socket-id rooms and numeric rooms included."""
    return dump_json({"requestId": request_id, "rooms": list(rooms)})


def encode_fetch_sockets_response(request_id: str, sockets: Iterable[dict[str, Any]]) -> bytes:
    """`sockets` are `socket_description(...)` maps."""
    return dump_json({"requestId": request_id, "sockets": list(sockets)})


def encode_server_side_emit_response(request_id: str, data: Any = MISSING) -> bytes:
    """Ack of a serverSideEmit; leave `data` out when the callback got no argument (undefined)."""
    if data is MISSING:
        return dump_json({"type": 6, "requestId": request_id})
    return dump_json({"type": 6, "requestId": request_id, "data": data})


def encode_client_count_response(request_id: str, client_count: int) -> bytes:
    """First answer of a node to a type-7 request; mandatory even when the count is 0."""
    return dump_json({"type": 8, "requestId": request_id, "clientCount": client_count})


def encode_broadcast_ack_response(request_id: str, packet: Any = MISSING) -> bytes:
    """One client's ack (msgpack); `packet` is only the first ack argument, left out if none."""
    if packet is MISSING:
        return pack({"type": 9, "requestId": request_id})
    return pack({"type": 9, "requestId": request_id, "packet": packet})


def encode_legacy_ack_response(request_id: str) -> bytes:
    """Answer of the node owning the socket to a legacy single-socket join/leave/disconnect."""
    return dump_json({"requestId": request_id})


def decode_classic_response(payload: bytes | bytearray | memoryview) -> ClassicResponse:
    """Decode a message received on a response channel (JSON or msgpack, sniffed)."""
    message = sniff(payload)
    what = "response"
    if not isinstance(message, dict):
        raise ClusterMessageError(f"{what} must be an object")
    response = ClassicResponse(request_id=require(message, "requestId", str, what))
    raw_type = message.get("type")
    if raw_type is not None:
        if type(raw_type) is not int or raw_type not in (6, 8, 9):
            raise ClusterMessageError(f"{what}: unknown response type {raw_type!r}")
        response.type = RequestType(raw_type)
    if response.type is RequestType.BROADCAST_CLIENT_COUNT:
        response.client_count = require(message, "clientCount", int, what)
    elif response.type is RequestType.BROADCAST_ACK:
        response.packet = message.get("packet")
    elif response.type is RequestType.SERVER_SIDE_EMIT:
        response.data = message.get("data")
    else:
        response.sockets = optional(message, "sockets", list, what)
        rooms = message.get("rooms")
        response.rooms = None if rooms is None else room_list(rooms, f"{what}: rooms")
    return response


# -- typed messages <-> classic bytes -----------------------------------------------------------------


def message_channel(prefix: str, message: Message, requester: str | None = None, specific: bool = False) -> str:
    """Where `message` is published. Broadcasts without acknowledgements go to their broadcast
    channel, other requests to the request channel. Answers go to the requester's own response
    channel with publishOnSpecificResponseChannel (`specific`), except serverSideEmit acks, which
    always use the shared one (spec 2.5)."""
    kind = type(message)
    if kind is Broadcast and message.request_id is None:  # type: ignore[union-attr]
        return broadcast_channel(prefix, message.nsp, message.opts.rooms)  # type: ignore[union-attr]
    if kind is Response:
        shared = message.kind is Answer.SERVER_SIDE_EMIT  # type: ignore[union-attr]
        return response_channel(prefix, message.nsp, requester if specific and not shared else None)
    return request_channel(prefix, message.nsp)


def encode_message(message: Message) -> bytes:
    """The classic bytes of a typed message (exactly what Node's adapter publishes for it)."""
    kind = type(message)
    m: Any = message
    if kind is Broadcast:
        if m.request_id is None:
            return encode_classic_broadcast(m.uid, m.nsp, m.data, m.opts)
        return encode_broadcast_with_ack_request(m.uid, m.request_id, m.nsp, m.data, m.opts)
    if kind is Response:
        return _encode_response(m)
    if kind is SocketsJoin:
        return encode_remote_join(m.uid, m.opts, m.rooms)
    if kind is SocketsLeave:
        return encode_remote_leave(m.uid, m.opts, m.rooms)
    if kind is DisconnectSockets:
        return encode_remote_disconnect(m.uid, m.opts, m.close)
    if kind is FetchSockets:
        return encode_fetch_sockets_request(m.uid, m.request_id, m.opts)
    if kind is ServerSideEmit:
        return encode_server_side_emit(m.uid, m.data, m.request_id)
    if kind is AllRooms:
        return encode_all_rooms_request(m.uid, m.request_id)
    if kind is SocketIds:
        return encode_sockets_request(m.uid, m.request_id, m.rooms)
    if kind is SingleSocket:
        if m.kind is RequestType.REMOTE_JOIN:
            return encode_legacy_remote_join(m.uid, m.request_id, m.sid, m.room)
        if m.kind is RequestType.REMOTE_LEAVE:
            return encode_legacy_remote_leave(m.uid, m.request_id, m.sid, m.room)
        return encode_legacy_remote_disconnect(m.uid, m.request_id, m.sid, m.close)
    raise ClusterMessageError(f"the classic protocol has no form for {kind.__name__}")


def _encode_response(r: Response) -> bytes:
    kind = r.kind
    if kind is Answer.CLIENT_COUNT:
        return encode_client_count_response(r.request_id, r.value)
    if kind is Answer.ACK:
        return encode_broadcast_ack_response(r.request_id, r.value)
    if kind is Answer.SERVER_SIDE_EMIT:
        return encode_server_side_emit_response(r.request_id, r.value)
    if kind is Answer.FETCH_SOCKETS:
        return encode_fetch_sockets_response(r.request_id, r.value)
    if kind is Answer.ALL_ROOMS:
        return encode_all_rooms_response(r.request_id, r.value)
    if kind is Answer.SOCKET_IDS:
        return encode_sockets_response(r.request_id, r.value)
    return encode_legacy_ack_response(r.request_id)


def decode_request(payload: bytes | bytearray | memoryview, nsp: str) -> Request:
    """A request channel's message as a typed request (classic requests carry no namespace: the
    channel names it)."""
    r = decode_classic_request(payload)
    T = RequestType
    kind = r.type
    if r.sid is not None:
        return SingleSocket(r.uid, nsp, kind, r.request_id, r.sid, r.room, bool(r.close))  # type: ignore[arg-type]
    opts: Any = r.opts
    if kind is T.REMOTE_JOIN:
        return SocketsJoin(r.uid, nsp, opts, list(r.rooms or ()))
    if kind is T.REMOTE_LEAVE:
        return SocketsLeave(r.uid, nsp, opts, list(r.rooms or ()))
    if kind is T.REMOTE_DISCONNECT:
        return DisconnectSockets(r.uid, nsp, opts, bool(r.close))
    uid: Any = r.uid
    if uid is None and kind is not T.SERVER_SIDE_EMIT:
        raise ClusterMessageError(f"request type {int(kind)}: missing 'uid'")
    if kind is T.BROADCAST:
        data = (r.packet or {}).get("data")
        if not data:
            raise ClusterMessageError("broadcast request without event data")
        return Broadcast(uid, nsp, data, opts, r.request_id)
    if kind is T.SERVER_SIDE_EMIT:
        return ServerSideEmit(uid or "", nsp, r.data or [], r.request_id)
    if kind is T.REMOTE_FETCH:
        return FetchSockets(uid, nsp, opts, r.request_id)  # type: ignore[arg-type]
    if kind is T.ALL_ROOMS:
        return AllRooms(uid, nsp, r.request_id)  # type: ignore[arg-type]
    return SocketIds(uid, nsp, r.request_id, list(r.rooms or ()))  # type: ignore[arg-type]


_ANSWERS = {
    RequestType.SERVER_SIDE_EMIT: Answer.SERVER_SIDE_EMIT,
    RequestType.BROADCAST_CLIENT_COUNT: Answer.CLIENT_COUNT,
    RequestType.BROADCAST_ACK: Answer.ACK,
}


def decode_response(payload: bytes | bytearray | memoryview, nsp: str) -> Response:
    """A response channel's message as a typed `Response`; an untyped answer's value is its
    sockets or rooms (None for a bare acknowledgement)."""
    r = decode_classic_response(payload)
    if r.type is None:
        value = r.sockets if r.sockets is not None else r.rooms
        return Response(Answer.UNTYPED, r.request_id, value, None, nsp)
    kind = _ANSWERS[r.type]
    if kind is Answer.CLIENT_COUNT:
        value = r.client_count
    elif kind is Answer.ACK:
        value = r.packet
    else:
        value = r.data
    return Response(kind, r.request_id, value, None, nsp)
