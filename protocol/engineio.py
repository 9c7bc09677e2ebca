"""Engine.IO v4 packets, the HTTP long-polling payload codec, and the handshake.

Sans-I/O: functions take `str`/`bytes` and return values; nothing here reads or writes sockets.

Wire facts (protocol v4):
- a packet is one type digit followed by its data: open 0, close 1, ping 2, pong 3, message 4,
  upgrade 5, noop 6;
- over WebSocket a text frame carries one packet (`4hello`); a binary frame carries the raw data
  of one binary *message* packet, with no type digit;
- over polling several packets are joined with the record separator `\\x1e`, and a binary message
  is written `b` + base64 of its data.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Union

import orjson

from .errors import EngineIOError, PayloadTooLarge

PROTOCOL_VERSION = 4
SEPARATOR = "\x1e"


class PacketType(IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


Data = Union[str, bytes, None]


@dataclass(frozen=True, slots=True)
class Packet:
    """One Engine.IO packet. `data` is `str` for text, `bytes` for a binary message, or None."""

    type: PacketType
    data: Data = None

    @property
    def binary(self) -> bool:
        return isinstance(self.data, (bytes, bytearray, memoryview))


# Pre-built packets the server sends often.
PING = Packet(PacketType.PING)
PONG = Packet(PacketType.PONG)
NOOP = Packet(PacketType.NOOP)
CLOSE = Packet(PacketType.CLOSE)
UPGRADE = Packet(PacketType.UPGRADE)

_TEXT_PREFIX = {t: str(int(t)) for t in PacketType}
_TYPE_OF_DIGIT = {str(int(t)): t for t in PacketType}


def encode_text(packet: Packet) -> str:
    """The text form of a packet (a WebSocket text frame or one polling record)."""
    if packet.binary:
        raise EngineIOError("binary packet has no text form; use encode_polling_record")
    data = packet.data
    return _TEXT_PREFIX[packet.type] + (data if data else "")


def encode_bytes(packet: Packet) -> bytes:
    """The text form of a packet as UTF-8 bytes, ready to frame or to join into a payload."""
    return encode_text(packet).encode()


_MESSAGE_DIGIT = _TEXT_PREFIX[PacketType.MESSAGE]
_MESSAGE_PREFIX = _MESSAGE_DIGIT.encode()


def encode_message(data: bytes) -> bytes:
    """A text MESSAGE packet carrying `data` (an encoded Socket.IO packet), as bytes."""
    return _MESSAGE_PREFIX + data


def message_data(text: str) -> str | None:
    """The data of a text MESSAGE packet, or None when `text` is another packet type: the cheap
    check for the packet nearly every frame carries, without building a `Packet`."""
    if text[:1] == _MESSAGE_DIGIT:
        return text[1:]
    return None


def binary_record(data: bytes) -> bytes:
    """The polling record of a binary message: `b` + base64 of its data."""
    return b"b" + base64.b64encode(data)


def encode_polling_record(packet: Packet) -> str:
    """One record of a polling payload: text packets as is, binary messages as `b<base64>`."""
    if packet.binary:
        return binary_record(bytes(packet.data)).decode("ascii")  # type: ignore[arg-type]
    return encode_text(packet)


_SEPARATOR_BYTES = SEPARATOR.encode()


def join_records(records: list[bytes]) -> bytes:
    """Join encoded polling records (see `encode_bytes`, `binary_record`) into one payload."""
    return _SEPARATOR_BYTES.join(records)


def decode_text(text: str) -> Packet:
    """Decode a text WebSocket frame or polling record (without the `b` binary form)."""
    if not text:
        raise EngineIOError("empty packet")
    ptype = _TYPE_OF_DIGIT.get(text[0])
    if ptype is None:
        raise EngineIOError(f"unknown packet type {text[0]!r}")
    return Packet(ptype, text[1:] if len(text) > 1 else ("" if ptype is PacketType.MESSAGE else None))


def decode_binary_frame(data: bytes) -> Packet:
    """A binary WebSocket frame is always a binary message packet."""
    return Packet(PacketType.MESSAGE, bytes(data))


def encode_payload(packets: list[Packet]) -> str:
    """Join packets into one polling payload."""
    return SEPARATOR.join([encode_polling_record(p) for p in packets])


def decode_payload(payload: str, max_payload: int | None = None) -> list[Packet]:
    """Split a polling payload (a POST body) into packets.

    Raises EngineIOError for any malformed record; the caller closes the session, as the protocol
    requires, rather than keeping the records that happened to parse.
    """
    if max_payload is not None and len(payload) > max_payload:
        raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds {max_payload}")
    if not payload:
        raise EngineIOError("empty payload")
    packets = []
    for record in payload.split(SEPARATOR):
        if record[:1] == "b":
            try:
                raw = base64.b64decode(record[1:], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise EngineIOError(f"invalid base64 in binary record: {exc}") from None
            packets.append(Packet(PacketType.MESSAGE, raw))
        else:
            packets.append(decode_text(record))
    return packets


@dataclass(frozen=True, slots=True)
class Handshake:
    """The data of the OPEN packet the server sends first."""

    sid: str
    upgrades: tuple[str, ...]
    ping_interval: int  # milliseconds
    ping_timeout: int  # milliseconds
    max_payload: int

    def to_packet(self) -> Packet:
        body = orjson.dumps(
            {
                "sid": self.sid,
                "upgrades": list(self.upgrades),
                "pingInterval": self.ping_interval,
                "pingTimeout": self.ping_timeout,
                "maxPayload": self.max_payload,
            }
        ).decode()
        return Packet(PacketType.OPEN, body)

    @classmethod
    def from_packet(cls, packet: Packet) -> "Handshake":
        if packet.type is not PacketType.OPEN or not isinstance(packet.data, str):
            raise EngineIOError("not an open packet")
        try:
            value = orjson.loads(packet.data)
            return cls(
                sid=value["sid"],
                upgrades=tuple(value["upgrades"]),
                ping_interval=int(value["pingInterval"]),
                ping_timeout=int(value["pingTimeout"]),
                max_payload=int(value["maxPayload"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise EngineIOError(f"invalid handshake: {exc}") from None


class ErrorCode(IntEnum):
    """The JSON error codes Engine.IO servers answer bad HTTP requests with."""

    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5


ERROR_MESSAGES = {
    ErrorCode.UNKNOWN_TRANSPORT: "Transport unknown",
    ErrorCode.UNKNOWN_SID: "Session ID unknown",
    ErrorCode.BAD_HANDSHAKE_METHOD: "Bad handshake method",
    ErrorCode.BAD_REQUEST: "Bad request",
    ErrorCode.FORBIDDEN: "Forbidden",
    ErrorCode.UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


def error_body(code: ErrorCode) -> bytes:
    """The JSON body of an Engine.IO HTTP error (status 403 for FORBIDDEN, else 400)."""
    return orjson.dumps({"code": int(code), "message": ERROR_MESSAGES[code]})


def error_status(code: ErrorCode) -> int:
    return 403 if code is ErrorCode.FORBIDDEN else 400


class RequestCheck(NamedTuple):
    """What the query string of an Engine.IO request says, once validated (a tuple: made for
    every request, polls included)."""

    transport: str
    sid: str | None


_EIO_VERSION = str(PROTOCOL_VERSION)


TRANSPORTS = ("polling", "websocket")


class RequestRejected(EngineIOError):
    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        super().__init__(detail or ERROR_MESSAGES[code])
        self.code = code


def check_request(query: dict[str, str], method: str, upgrade: bool) -> RequestCheck:
    """Validate the Engine.IO query parameters of an HTTP request.

    Raises RequestRejected with the protocol's error code; the caller maps it to a response.
    """
    eio = query.get("EIO")
    if eio != _EIO_VERSION:
        raise RequestRejected(ErrorCode.UNSUPPORTED_PROTOCOL_VERSION, f"EIO={eio!r} is not supported")
    transport = query.get("transport")
    if transport not in TRANSPORTS:
        raise RequestRejected(ErrorCode.UNKNOWN_TRANSPORT, f"transport {transport!r} unknown")
    sid = query.get("sid") or None
    if transport == "websocket" and not upgrade:
        raise RequestRejected(ErrorCode.BAD_REQUEST, "websocket transport without an upgrade")
    if sid is None and method != "GET":
        raise RequestRejected(ErrorCode.BAD_HANDSHAKE_METHOD, f"handshake with {method}")
    if transport == "polling" and method not in ("GET", "POST"):
        raise RequestRejected(ErrorCode.BAD_REQUEST, f"method {method} on polling")
    return RequestCheck(transport, sid)
