"""Outgoing WebSocket frames from a server (RFC 6455, unmasked, no extensions).

Server frames are never masked and we negotiate no extension, so the bytes of a frame depend only
on its payload: one broadcast builds its frame once and hands the same bytes to every recipient.
Incoming frames are parsed by the `websockets` library's Sans-I/O protocol, not here.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")


def frame(opcode: int, payload: bytes) -> bytes:
    """One complete (FIN) frame."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _H16.pack(first, 126, n) + payload
    return _H64.pack(first, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    return frame(OP_TEXT, payload)


def binary_frame(payload: bytes) -> bytes:
    return frame(OP_BINARY, payload)
