"""RESP2 for the gateway's own Redis streams: command encoding, the connection handshake, pub/sub
push messages, reply helpers and the cluster hash slot.

The cluster links publish and receive every cross-node message; building commands here (plain
bytes, no client-library call per message) and parsing replies in bulk keeps the per-message cost
small. The byte parsing itself is hiredis's (in the I/O layer); this module turns the values a
RESP parser yields into what the links act on. Sans-I/O: bytes and values in, bytes and values
out, nothing else.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class RespError(Exception):
    """An error reply (`-ERR ...`) from Redis. The I/O layer hands this class to its parser
    (`hiredis.Reader(replyError=RespError)`), so error replies arrive as instances of it and the
    helpers below recognise them without knowing the parser."""


class RespProtocolError(ValueError):
    """A reply that is not what the command it answers can produce: the stream is out of step and
    must be closed (the next reply cannot be matched to its command any more)."""


# -- commands --------------------------------------------------------------------------------------


def _arg(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return b"%d" % value
    raise TypeError(f"a RESP argument is bytes, str or int, not {type(value).__name__}")


def encode_command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings (str as UTF-8, int in decimal)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _arg(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


_PUBLISH_HEAD = b"*3\r\n$7\r\nPUBLISH\r\n"
_SPUBLISH_HEAD = b"*3\r\n$8\r\nSPUBLISH\r\n"


def encode_publish(channel: bytes, payload: bytes) -> bytes:
    """`PUBLISH channel payload`, the hot command, without the generic loop."""
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (_PUBLISH_HEAD, len(channel), channel, len(payload), payload)


def encode_spublish(channel: bytes, payload: bytes) -> bytes:
    """`SPUBLISH channel payload` (sharded pub/sub), the sharded links' hot command."""
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (_SPUBLISH_HEAD, len(channel), channel, len(payload), payload)


SUBSCRIPTION_COMMANDS = frozenset((b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE"))


def encode_subscription(command: bytes, *channels: bytes | str) -> bytes:
    """SUBSCRIBE / PSUBSCRIBE / SSUBSCRIBE and their UN- forms. Redis answers each channel with
    its own push message (not one reply per command), which is why these are kept apart from
    ordinary commands."""
    if command not in SUBSCRIPTION_COMMANDS:
        raise ValueError(f"not a subscription command: {command!r}")
    if not channels and command in (b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"):
        raise ValueError(f"{command.decode()} needs at least one channel")
    return encode_command(command, *channels)


def encode_handshake(*, username: str | None = None, password: str | None = None, db: int = 0, client_name: str | None = None) -> tuple[bytes, int]:
    """What a fresh connection sends before anything else, pipelined, and how many replies
    answer it: AUTH [username] password (when there is a password), SELECT db (when not 0),
    CLIENT SETNAME (when named, so `CLIENT LIST` tells the gateway's links apart).

    RESP2 throughout: every reply the streams parse is a RESP2 value, and pub/sub push messages
    arrive as plain arrays, so HELLO (which would switch to RESP3) is not sent."""
    parts = []
    if password is not None:
        parts.append(encode_command(b"AUTH", username, password) if username else encode_command(b"AUTH", password))
    elif username:
        raise ValueError("a Redis username needs a password")
    if db:
        if db < 0:
            raise ValueError(f"bad Redis database number {db}")
        parts.append(encode_command(b"SELECT", db))
    if client_name:
        if any(c in client_name for c in " \r\n"):
            raise ValueError(f"a Redis client name has no spaces or newlines, got {client_name!r}")
        parts.append(encode_command(b"CLIENT", b"SETNAME", client_name))
    return b"".join(parts), len(parts)


# -- replies ---------------------------------------------------------------------------------------


def expect_ok(reply: Any) -> None:
    """A command that answers `+OK`: raise the error reply it got instead."""
    if isinstance(reply, RespError):
        raise reply
    if reply != b"OK":
        raise RespProtocolError(f"expected OK, got {reply!r:.100}")


def integer_reply(reply: Any) -> int:
    """An integer reply (PUBLISH's receiver count, ...): raise an error reply instead."""
    if isinstance(reply, RespError):
        raise reply
    if not isinstance(reply, int) or isinstance(reply, bool):
        raise RespProtocolError(f"expected an integer, got {reply!r:.100}")
    return reply


def numsub_counts(reply: Any) -> dict[bytes, int]:
    """`PUBSUB NUMSUB` / `PUBSUB SHARDNUMSUB`: channel -> subscriber count."""
    if isinstance(reply, RespError):
        raise reply
    if not isinstance(reply, list) or len(reply) % 2:
        raise RespProtocolError(f"expected channel/count pairs, got {reply!r:.100}")
    return {bytes(reply[i]): int(reply[i + 1]) for i in range(0, len(reply), 2)}


class Push(NamedTuple):
    """One pub/sub push message: `kind` is b"message", b"pmessage", b"smessage" or a
    subscription acknowledgement (b"subscribe", b"sunsubscribe", ...; `data` is then the number
    of subscriptions the connection still holds); `pattern` is set for pmessage only."""

    kind: bytes
    pattern: bytes | None
    channel: bytes
    data: Any


MESSAGE_KINDS = frozenset((b"message", b"pmessage", b"smessage"))
ACK_KINDS = frozenset((b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe", b"sunsubscribe"))


def parse_push(reply: Any) -> Push:
    """A RESP2 array read on a subscribed connection, as a Push. A `PING` on such a connection
    answers `["pong", ""]`, returned as kind b"pong". Error replies are raised; anything else
    is a stream out of step."""
    if isinstance(reply, RespError):
        raise reply
    if type(reply) is list and reply:
        kind = reply[0]
        size = len(reply)
        if size == 3 and (kind == b"message" or kind == b"smessage"):
            return Push(kind, None, reply[1], reply[2])
        if size == 4 and kind == b"pmessage":
            return Push(kind, reply[1], reply[2], reply[3])
        if size == 3 and kind in ACK_KINDS:
            return Push(kind, None, reply[1], reply[2])
        if size == 2 and kind == b"pong":
            return Push(kind, None, b"", reply[1])
    raise RespProtocolError(f"not a pub/sub message: {reply!r:.100}")


# -- cluster hash slots ----------------------------------------------------------------------------

SLOT_COUNT = 16384


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-XMODEM, the checksum Redis Cluster hashes keys (and sharded channels) with."""
    crc = 0
    table = _CRC16
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: bytes) -> int:
    """The cluster slot of a key or sharded channel, hash tags included: when the key holds a
    `{...}` with something inside, only that part is hashed (the Redis Cluster specification)."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOT_COUNT
