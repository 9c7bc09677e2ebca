"""The wire format of @socket.io/redis-streams-adapter 0.3.1 (Sans-I/O).

That adapter speaks socket.io-adapter's ClusterAdapter messages (the same `{type, data, uid,
nsp}` as the sharded adapter, sharded.py) over two carriers:

- one Redis stream (`XADD <stream> MAXLEN ~ <n> * uid <uid> nsp <nsp> type <type> [data <data>]`)
  for every message another node must not miss: broadcasts without acknowledgements, socketsJoin
  / Leave, disconnectSockets. `type` is the decimal text of the type; `data` is the JSON text of
  the message's data, or, when the type may carry user binary and does, the base64 of its
  msgpack. A reader tells the two apart by the first character (`{` is JSON). The entry id is the
  packet's offset for connection state recovery.
- PUBLISH for the ephemeral ones (a broadcast with acks, serverSideEmit, fetchSockets) on
  `<prefix>#<nsp>#`, and for answers on `<prefix>#<nsp>#<requester uid>#`: the msgpack of the
  whole message, always msgpack.

A session left by a disconnected socket is `SET <sessionKeyPrefix><pid>` to the base64 of the
msgpack of `{sid, pid, rooms, data}`. Everything here reproduces Node's bytes (key order, number
forms) so that both implementations read each other's entries, messages and sessions.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ClusterMessageError
from .messages import Broadcast, BroadcastOptions, DisconnectSockets, FetchSockets, Message, Response, Room, ServerSideEmit, ShardedType, SocketsJoin, SocketsLeave
from .sharded import _SHARDED_BINARY_TYPES, ShardedMessage, decode_envelope, plain_broadcast_body, to_envelope
from .values import contains_binary, dump_json, js_numbers, json_may_hold_integral_float, load_json, pack, unpack

__all__ = [
    "StreamSession",
    "decode_entry",
    "decode_ephemeral",
    "decode_session",
    "encode_entry",
    "plain_broadcast",
    "plain_broadcast_parts",
    "plain_broadcast_data",
    "encode_ephemeral",
    "encode_session",
    "included",
    "is_ephemeral",
    "next_offset",
    "offset_key",
    "public_channel",
    "private_channel",
    "valid_offset",
]

_OFFSET = re.compile(r"[0-9]{1,20}-[0-9]{1,20}\Z")


def public_channel(prefix: str, nsp: str) -> str:
    """Where ephemeral messages of a namespace are published (and what NUMSUB counts)."""
    return f"{prefix}#{nsp}#"


def private_channel(prefix: str, nsp: str, uid: str) -> str:
    """Where node `uid` receives the answers to its requests."""
    return f"{prefix}#{nsp}#{uid}#"


def is_ephemeral(message: Message) -> bool:
    """Messages that go over PUBLISH, not the stream (as 0.3.1's `isEphemeral`): nobody replays
    them, because the requester waits for answers only a short while. Responses too."""
    kind = type(message)
    if kind is Broadcast:
        return message.request_id is not None  # type: ignore[union-attr]
    return kind in (ServerSideEmit, FetchSockets, Response)


# -- stream entries --------------------------------------------------------------------------------


def encode_entry(message: Message) -> list[bytes]:
    """The field/value pairs of the XADD of a non-ephemeral message, in Node's order."""
    if type(message) is Broadcast and message.request_id is None and type(message.opts) is BroadcastOptions:
        opts = message.opts
        text = plain_broadcast_data(message.data, opts.rooms, opts.except_rooms, opts.flags)
        if text is not None:
            return [b"uid", message.uid.encode(), b"nsp", message.nsp.encode(), b"type", BROADCAST_TYPE, b"data", text]
    envelope = to_envelope(message)
    fields = [b"uid", envelope.uid.encode(), b"nsp", envelope.nsp.encode(), b"type", b"%d" % int(envelope.type)]
    data = envelope.data
    if data:
        if envelope.type in _SHARDED_BINARY_TYPES and contains_binary(data):
            fields += [b"data", base64.b64encode(pack(data))]
        else:
            fields += [b"data", dump_json(data)]
    return fields


_DATA_HEAD = b'{"packet":{"type":2,"data":'
_AS_IS = orjson.OPT_PASSTHROUGH_DATETIME  # a date is refused like bytes: Node's form is dump_json's


def plain_broadcast_parts(event: list[Any], rooms: list[Room], except_rooms: list[Room], flags: dict[str, Any] | None) -> tuple[bytes, bytes | None] | None:
    """The `data` field of a broadcast without acknowledgements when JSON can carry it as is,
    and the JSON of its event when that is exactly what `orjson.dumps(event)` writes (no JS
    number was rewritten), else None in second place: what the Socket.IO packet of the event
    can be built from without encoding it again.

    orjson first, which refuses bytes, dates and sets at once (None: `encode_entry` then
    decides between base64 msgpack and JSON with Node's forms), so there is no contains_binary
    walk; the JS-number walk runs only when the text may hold an integral float. The event and
    the options are dumped apart and joined: orjson writes no whitespace, so the bytes are those
    of dumping the whole body, `encode_entry`'s."""
    opts = {"rooms": rooms, "except": except_rooms, "flags": {} if flags is None else flags}
    try:
        event_json = orjson.dumps(event, option=_AS_IS)
        opts_json = orjson.dumps(opts, option=_AS_IS)
    except TypeError:
        return None
    text = b'%s%s},"opts":%s}' % (_DATA_HEAD, event_json, opts_json)
    if json_may_hold_integral_float(text):
        body = {"packet": {"type": 2, "data": event}, "opts": opts}
        js = js_numbers(body)
        if js is not body:
            return dump_json(js), None
    return text, event_json


def plain_broadcast_data(event: list[Any], rooms: list[Room], except_rooms: list[Room], flags: dict[str, Any] | None) -> bytes | None:
    """`plain_broadcast_parts`' data field alone."""
    parts = plain_broadcast_parts(event, rooms, except_rooms, flags)
    return None if parts is None else parts[0]


def plain_broadcast(data: bytes) -> tuple[list[Any], list[Room]] | None:
    """The event and rooms of a stream broadcast's `data` when it is the common shape: JSON, no
    requestId, no flags, no exceptions, string rooms. Anything else, malformed included, is
    None: `decode_entry` then validates it completely. What this accepts, `decode_entry` accepts
    with the same event and rooms."""
    if data[:1] != b"{":
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    body = plain_broadcast_body(obj)
    if body is None:
        return None
    event, rooms, excluded, flags = body
    if (excluded is not None and (type(excluded) is not list or excluded)) or (flags is not None and (type(flags) is not dict or flags)):
        return None
    return event, rooms


def entry_fields(flat: Sequence[Any]) -> dict[bytes, bytes]:
    """The `[field, value, field, value, ...]` of an XREAD/XRANGE entry as a dict."""
    if len(flat) % 2:
        raise ClusterMessageError("stream entry: odd number of field/value items")
    return {bytes(flat[i]): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}


def decode_entry(fields: dict[bytes, bytes]) -> Message | None:
    """A stream entry (its fields) as a typed message, validated completely; None for a message
    this adapter does not act on (heartbeats, adapter close). ClusterMessageError otherwise."""
    try:
        uid = fields[b"uid"].decode()
        nsp = fields[b"nsp"].decode()
        kind = int(fields[b"type"])
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise ClusterMessageError(f"stream entry: missing or bad uid/nsp/type ({exc!r})") from None
    raw = fields.get(b"data")
    envelope: dict[str, Any] = {"type": kind, "uid": uid, "nsp": nsp}
    if raw:
        if raw[:1] == b"{":
            envelope["data"] = load_json(raw)
        else:
            try:
                envelope["data"] = unpack(base64.b64decode(raw, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise ClusterMessageError(f"stream entry: data is neither JSON nor base64 ({exc})") from None
    return decode_envelope(envelope)


# -- PUBLISH ---------------------------------------------------------------------------------------


def encode_ephemeral(message: Message) -> bytes:
    """The msgpack of the whole message `{type, data, uid, nsp}`, as 0.3.1 publishes it."""
    envelope: ShardedMessage = to_envelope(message)
    body: dict[str, Any] = {"type": int(envelope.type)}
    if envelope.data is not None:
        body["data"] = envelope.data
    body["uid"] = envelope.uid
    body["nsp"] = envelope.nsp
    return pack(body)


def decode_ephemeral(payload: bytes | bytearray | memoryview) -> Message | None:
    """A published message or answer (msgpack; JSON accepted too) as a typed message."""
    data = bytes(payload)
    if not data:
        raise ClusterMessageError("empty payload")
    return decode_envelope(load_json(data) if data[:1] == b"{" else unpack(data))


# -- offsets ---------------------------------------------------------------------------------------


def valid_offset(offset: str) -> bool:
    """A stream entry id `<ms>-<seq>` (what Node checks before it touches Redis)."""
    return isinstance(offset, str) and _OFFSET.match(offset) is not None


def offset_key(offset: str | bytes) -> tuple[int, int]:
    """An entry id as a comparable pair (ids compare numerically, not as text)."""
    text = offset.decode() if isinstance(offset, (bytes, bytearray)) else offset
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def next_offset(offset: str) -> str:
    """The smallest id after `offset` (an exclusive XRANGE start that Redis < 6.2 takes too)."""
    ms, seq = offset_key(offset)
    return f"{ms}-{seq + 1}"


# -- sessions --------------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamSession:
    """socket.io's Session as the Node adapter stores it."""

    sid: str
    pid: str
    rooms: list[Room]
    data: Any


def encode_session(session: StreamSession) -> bytes:
    """base64(msgpack({sid, pid, rooms, data})), the value of `sio:session:<pid>`."""
    return base64.b64encode(pack({"sid": session.sid, "pid": session.pid, "rooms": list(session.rooms), "data": session.data}))


def decode_session(value: bytes | str) -> StreamSession:
    raw = value.encode() if isinstance(value, str) else bytes(value)
    try:
        obj = unpack(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ClusterMessageError(f"session: not base64 ({exc})") from None
    if not isinstance(obj, dict):
        raise ClusterMessageError("session: not an object")
    sid, pid, rooms = obj.get("sid"), obj.get("pid"), obj.get("rooms", [])
    if not isinstance(sid, str) or not isinstance(pid, str) or not isinstance(rooms, list):
        raise ClusterMessageError("session: sid/pid/rooms missing or of the wrong type")
    for room in rooms:
        if not isinstance(room, (str, int, float)) or isinstance(room, bool):
            raise ClusterMessageError(f"session: bad room {room!r:.100}")
    return StreamSession(sid, pid, rooms, obj.get("data"))


def included(session_rooms: Iterable[Room], rooms: Iterable[Room], except_rooms: Iterable[Room]) -> bool:
    """Whether a broadcast to `rooms` minus `except_rooms` reached a socket in `session_rooms`
    (0.3.1's `shouldIncludePacket`)."""
    mine = set(session_rooms)
    targets = list(rooms)
    if targets and mine.isdisjoint(targets):
        return False
    return mine.isdisjoint(except_rooms)


STREAM_TYPES = frozenset({Broadcast, SocketsJoin, SocketsLeave, DisconnectSockets})
BROADCAST_TYPE = b"%d" % int(ShardedType.BROADCAST)
