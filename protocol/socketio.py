"""Socket.IO v5 packets: the text codec, binary attachments, and the reassembly state machine.

Sans-I/O. Encoding produces bytes (UTF-8 text) because everything downstream (WebSocket frames,
polling bodies, Redis) wants bytes, and producing them once avoids a decode/encode round trip on
the broadcast path.

Text form: `<type>[<attachments>-][<nsp>,][<ack id>][<JSON>]`; the namespace is omitted when it is
`/`. Binary values are replaced by `{"_placeholder":true,"num":n}` and sent as separate binary
Engine.IO messages after the text part, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import orjson

from .errors import PayloadTooLarge, SocketIOError


class PacketType(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


# Event names a client may not emit (they are reserved by the client and server libraries).
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)

_BINARY_TYPES = (bytes, bytearray, memoryview)

# Bounds on what one packet may ask of us. Socket.IO ack ids are JavaScript numbers: past
# Number.MAX_SAFE_INTEGER a Node peer could not even tell two ids apart, and an unbounded digit
# run would reach int()'s 4,300-digit limit (a ValueError, not a protocol error).
MAX_ACK_ID = 2**53 - 1
_MAX_ACK_ID_DIGITS = len(str(MAX_ACK_ID))  # 16
# Attachments announced by one BINARY_* packet. Each costs a buffered message even when empty,
# which `max_buffer` (bytes) alone does not bound.
MAX_ATTACHMENTS = 64
# Nesting levels our own walkers (has_binary, placeholders) follow. orjson encodes at most 254
# levels, so nothing deeper could be sent back anyway; the walkers must stop before the
# interpreter's recursion limit does it for them with a RecursionError.
MAX_DEPTH = 254


@dataclass(slots=True)
class Packet:
    type: PacketType
    nsp: str = "/"
    data: Any = None
    id: int | None = None
    attachments: int = 0  # only meaningful on decoded BINARY_* packets before reassembly

    @property
    def event(self) -> Any:
        """The event name of an EVENT packet."""
        return self.data[0]


# -- encoding -----------------------------------------------------------------------------------


def has_binary(value: Any, _depth: int = 1) -> bool:
    """True if any bytes-like value is nested anywhere in `value`.

    Raises SocketIOError past MAX_DEPTH levels: such a value cannot be encoded anyway, and the
    walk must not end in a RecursionError.
    """
    if isinstance(value, _BINARY_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        if _depth > MAX_DEPTH:
            raise SocketIOError(f"value nested deeper than {MAX_DEPTH} levels cannot be sent")
        for item in value:
            if has_binary(item, _depth + 1):
                return True
        return False
    if isinstance(value, dict):
        if _depth > MAX_DEPTH:
            raise SocketIOError(f"value nested deeper than {MAX_DEPTH} levels cannot be sent")
        for item in value.values():
            if has_binary(item, _depth + 1):
                return True
    return False


def _deconstruct(value: Any, buffers: list[bytes]) -> Any:
    # Plain loops rather than comprehensions: one interpreter frame per level, not two. Only
    # values has_binary() already walked (so at most MAX_DEPTH deep) come here.
    if isinstance(value, _BINARY_TYPES):
        buffers.append(bytes(value))
        return {"_placeholder": True, "num": len(buffers) - 1}
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            out.append(_deconstruct(item, buffers))
        return out
    if isinstance(value, dict):
        copy = {}
        for key, item in value.items():
            copy[key] = _deconstruct(item, buffers)
        return copy
    return value


def _header(ptype: int, nsp: str, pid: int | None, attachments: int) -> str:
    head = str(ptype)
    if attachments:
        head += f"{attachments}-"
    if nsp != "/":
        head += nsp + ","
    if pid is not None:
        head += str(pid)
    return head


_DATA_TYPES = frozenset({PacketType.EVENT, PacketType.ACK, PacketType.BINARY_EVENT, PacketType.BINARY_ACK})
_PLAIN_TYPE = {
    PacketType.EVENT: PacketType.EVENT,
    PacketType.BINARY_EVENT: PacketType.EVENT,
    PacketType.ACK: PacketType.ACK,
    PacketType.BINARY_ACK: PacketType.ACK,
}
_BINARY_TYPE = {
    PacketType.EVENT: PacketType.BINARY_EVENT,
    PacketType.BINARY_EVENT: PacketType.BINARY_EVENT,
    PacketType.ACK: PacketType.BINARY_ACK,
    PacketType.BINARY_ACK: PacketType.BINARY_ACK,
}


def encode(packet: Packet) -> tuple[bytes, list[bytes]]:
    """Encode a packet into its text part and its binary attachments.

    EVENT/ACK packets whose data holds bytes become BINARY_EVENT/BINARY_ACK with placeholders;
    callers never need to pick the binary type themselves.

    orjson is tried first: it refuses bytes at the first one it meets, so data without binary
    (nearly every packet) is walked once, in C, instead of by `has_binary` and then again by
    orjson. Only a refusal pays for the walk that tells binary from a value JSON cannot carry.
    """
    ptype = packet.type
    data = packet.data
    buffers: list[bytes] = []
    if ptype in _DATA_TYPES and data is None:
        ptype = _PLAIN_TYPE[ptype]
    elif ptype in _DATA_TYPES:
        try:
            body = orjson.dumps(data)
        except TypeError:
            if not has_binary(data):
                return _encode_refused(data)
            data = _deconstruct(data, buffers)
            ptype = _BINARY_TYPE[ptype]
        else:
            ptype = _PLAIN_TYPE[ptype]
            if ptype is PacketType.EVENT and packet.nsp == "/" and packet.id is None:
                return b"2" + body, buffers
            return _header(ptype, packet.nsp, packet.id, 0).encode() + body, buffers
    head = _header(ptype, packet.nsp, packet.id, len(buffers)).encode()
    if data is None:
        return head, buffers
    try:
        body = orjson.dumps(data)
    except TypeError as exc:
        raise SocketIOError(f"value cannot be sent as JSON: {exc}") from None
    return head + body, buffers


def _encode_refused(data: Any) -> tuple[bytes, list[bytes]]:
    """Data without binary that orjson refused: the SocketIOError that says why."""
    try:
        orjson.dumps(data)
    except TypeError as exc:
        raise SocketIOError(f"value cannot be sent as JSON: {exc}") from None
    raise SocketIOError("value cannot be sent as JSON")


def encode_event(nsp: str, data: list[Any], pid: int | None = None) -> tuple[bytes, list[bytes]]:
    """Shortcut for the hot path: an EVENT (or BINARY_EVENT) packet."""
    return encode(Packet(PacketType.EVENT, nsp, data, pid))


# -- decoding -----------------------------------------------------------------------------------


def _valid_payload(ptype: PacketType, payload: Any, has_payload: bool) -> bool:
    if ptype is PacketType.CONNECT:
        return not has_payload or isinstance(payload, dict)
    if ptype is PacketType.DISCONNECT:
        return not has_payload
    if ptype is PacketType.CONNECT_ERROR:
        return has_payload and isinstance(payload, (dict, str))
    if ptype in (PacketType.EVENT, PacketType.BINARY_EVENT):
        if not (isinstance(payload, list) and payload):
            return False
        first = payload[0]
        if isinstance(first, bool):
            return False
        return isinstance(first, (int, float)) or (isinstance(first, str) and first not in RESERVED_EVENTS)
    # ACK / BINARY_ACK
    return isinstance(payload, list)


def _short(value: Any, limit: int = 40) -> str:
    """A repr of client-supplied input short enough for an error message (and so a log line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_PACKET_TYPES = tuple(PacketType)


def decode_text(text: str, max_attachments: int = MAX_ATTACHMENTS) -> Packet:
    """Decode the text part of a packet. BINARY_* packets come back with `attachments` set and
    placeholders still in `data`; use `Decoder` to reassemble them.

    Raises SocketIOError (a ProtocolError) and nothing else for any input: numbers are bounded by
    the length of their digit run before int() sees them, so the checks cost O(1) per packet.
    """
    n = len(text)
    if n == 0:
        raise SocketIOError("empty packet")
    c = text[0]
    if not ("0" <= c <= "6"):
        raise SocketIOError(f"unknown packet type {c!r}")
    if c == "2" and n > 2 and text[1] == "[":
        # An event to the main namespace without an ack id: most of what clients send.
        try:
            payload = orjson.loads(text[1:])
        except orjson.JSONDecodeError:
            raise SocketIOError("invalid JSON payload") from None
        if not _valid_payload(PacketType.EVENT, payload, True):
            raise SocketIOError("invalid payload for EVENT")
        return Packet(PacketType.EVENT, "/", payload)
    ptype = _PACKET_TYPES[ord(c) - 48]
    i = 1
    attachments = 0
    if ptype in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        dash = text.find("-", i, i + len(str(max_attachments)) + 1)
        digits = text[i:dash] if dash != -1 else ""
        if not digits.isdigit() or not digits.isascii():
            raise SocketIOError("invalid attachment count")
        attachments = int(digits)
        if attachments > max_attachments:
            raise SocketIOError(f"{attachments} attachments announced, at most {max_attachments} allowed")
        i = dash + 1
    nsp = "/"
    if i < n and text[i] == "/":
        comma = text.find(",", i)
        if comma == -1:
            nsp = text[i:]
            i = n
        else:
            nsp = text[i:comma]
            i = comma + 1
    pid = None
    j = i
    end = i + _MAX_ACK_ID_DIGITS + 1  # one digit past the limit is enough to refuse
    if end > n:
        end = n
    while j < end and "0" <= text[j] <= "9":
        j += 1
    if j > i:
        if j - i > _MAX_ACK_ID_DIGITS:
            raise SocketIOError(f"ack id longer than {_MAX_ACK_ID_DIGITS} digits")
        pid = int(text[i:j])
        if pid > MAX_ACK_ID:
            raise SocketIOError(f"ack id above {MAX_ACK_ID}")
        i = j
    has_payload = i < n
    payload = None
    if has_payload:
        try:
            payload = orjson.loads(text[i:])
        except orjson.JSONDecodeError:
            raise SocketIOError("invalid JSON payload") from None
    if not _valid_payload(ptype, payload, has_payload):
        raise SocketIOError(f"invalid payload for {ptype.name}")
    if pid is not None and ptype not in (
        PacketType.EVENT,
        PacketType.BINARY_EVENT,
        PacketType.ACK,
        PacketType.BINARY_ACK,
    ):
        raise SocketIOError(f"{ptype.name} cannot carry an ack id")
    if pid is None and ptype in (PacketType.ACK, PacketType.BINARY_ACK):
        raise SocketIOError("ACK without an id")
    return Packet(ptype, nsp, payload, pid, attachments)


def _attachment(placeholder: dict[str, Any], buffers: list[bytes]) -> bytes:
    num = placeholder.get("num")
    if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num < len(buffers):
        raise SocketIOError(f"placeholder refers to missing attachment {_short(num)}")
    return buffers[num]


def _is_placeholder(value: dict[str, Any]) -> bool:
    return value.get("_placeholder") is True


def _reconstruct(value: Any, buffers: list[bytes], max_depth: int = MAX_DEPTH) -> Any:
    """Replace placeholders by their attachments, in place.

    Iterative, with an explicit stack, so a client's nesting can only trip `max_depth` (a
    SocketIOError), never the interpreter's recursion limit. In place is safe: the value was
    just parsed from this packet and nobody else holds it.
    """
    if isinstance(value, dict) and _is_placeholder(value):
        return _attachment(value, buffers)
    if not isinstance(value, (list, dict)):
        return value
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > max_depth:
            raise SocketIOError(f"binary packet nested deeper than {max_depth} levels")
        items = enumerate(container) if isinstance(container, list) else container.items()
        for key, item in items:
            if isinstance(item, list):
                stack.append((item, depth + 1))
            elif isinstance(item, dict):
                if _is_placeholder(item):
                    container[key] = _attachment(item, buffers)  # replaces a value, no resize
                else:
                    stack.append((item, depth + 1))
    return value


@dataclass(slots=True)
class Decoder:
    """Reassembles packets from the Engine.IO messages of one connection.

    Feed it every message in order: `str` for text, `bytes` for binary. `feed` returns a complete
    packet or None while attachments are still expected. Raises SocketIOError on anything out of
    place (a binary message nobody announced, a text packet while attachments are pending, more
    buffered bytes than `max_buffer`, more than `max_attachments` announced, a binary packet
    nested deeper than `max_depth`) and never anything else, whatever the input: the caller
    closes the session on a ProtocolError, and any other exception would escape it.
    """

    max_buffer: int | None = None
    max_attachments: int = MAX_ATTACHMENTS
    max_depth: int = MAX_DEPTH
    _pending: Packet | None = None
    _buffers: list[bytes] = field(default_factory=list)
    _buffered: int = 0

    @property
    def waiting(self) -> bool:
        return self._pending is not None

    def feed(self, message: str | bytes) -> Packet | None:
        if isinstance(message, str):
            if self._pending is not None:
                raise SocketIOError("text packet received while waiting for binary attachments")
            packet = decode_text(message, self.max_attachments)
            if packet.attachments:
                self._pending = packet
                self._buffers = []
                self._buffered = 0
                return None
            if packet.type in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
                packet.data = _reconstruct(packet.data, [], self.max_depth)
            return packet
        if self._pending is None:
            raise SocketIOError("unexpected binary attachment")
        self._buffered += len(message)
        if self.max_buffer is not None and self._buffered > self.max_buffer:
            self.reset()
            raise PayloadTooLarge("binary attachments exceed the maximum payload")
        self._buffers.append(bytes(message))
        pending = self._pending
        if len(self._buffers) < pending.attachments:
            return None
        try:
            pending.data = _reconstruct(pending.data, self._buffers, self.max_depth)
        finally:
            # A bad placeholder must not leave the decoder stuck waiting for attachments.
            self.reset()
        return pending

    def reset(self) -> None:
        self._pending = None
        self._buffers = []
        self._buffered = 0


# -- packets the server sends -----------------------------------------------------------------


def connect_ok(nsp: str, sid: str) -> Packet:
    return Packet(PacketType.CONNECT, nsp, {"sid": sid})


def connect_error(nsp: str, message: str, data: Any = None) -> Packet:
    body: dict[str, Any] = {"message": message}
    if data is not None:
        body["data"] = data
    return Packet(PacketType.CONNECT_ERROR, nsp, body)


def disconnect(nsp: str) -> Packet:
    return Packet(PacketType.DISCONNECT, nsp)
