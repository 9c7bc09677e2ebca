"""Outgoing WebSocket frames from a server (RFC 6455, unmasked, no extensions).

Server frames are never masked and we negotiate no extension, so the bytes of a frame depend only
on its payload: one broadcast builds its frame once and hands the same bytes to every recipient.
Incoming frames: the simple ones (complete, final, masked TEXT/BINARY) are parsed here on a fast
path; every other frame goes to the `websockets` library's Sans-I/O protocol, which is only ever
handed complete frames (see `complete_frames_length`), so the caller always knows whether the
library holds anything without looking inside it.
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


# -- incoming fast path ----------------------------------------------------------------------------

try:  # the websockets library's C helper; a pure function, no I/O
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - the pure-Python fallback below is equivalent

    def _apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        if n == 0:
            return b""
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def parse_client_frames(buf: bytes, max_size: int) -> tuple[list[tuple[int, bytes]], int]:
    """Parse the leading run of *simple* client frames in `buf`.

    A simple frame is complete, final (FIN), masked, without RSV bits, TEXT or BINARY, and no
    larger than `max_size`: what socket.io clients send all the time. Parsing stops at the first
    frame that is anything else (control frame, fragment, incomplete, oversized, malformed) and
    returns `(messages, consumed)`; the caller hands `buf[consumed:]` to the full parser, which
    handles the rest with every check of RFC 6455. Unmasked payloads are returned as bytes.
    """
    messages: list[tuple[int, bytes]] = []
    pos = 0
    end = len(buf)
    while end - pos >= 6:
        b0 = buf[pos]
        b1 = buf[pos + 1]
        opcode = b0 & 0x0F
        if b0 & 0xF0 != 0x80 or (opcode != OP_TEXT and opcode != OP_BINARY) or not b1 & 0x80:
            break
        length = b1 & 0x7F
        head = pos + 2
        if length == 126:
            if end - pos < 8:
                break
            length = (buf[head] << 8) | buf[head + 1]
            head += 2
        elif length == 127:
            if end - pos < 14:
                break
            length = int.from_bytes(buf[head : head + 8], "big")
            head += 8
        if length > max_size:
            break
        start = head + 4
        stop = start + length
        if stop > end:
            break
        messages.append((opcode, _apply_mask(buf[start:stop], buf[head:start])))
        pos = stop
    return messages, pos


def complete_frames_length(buf: bytes, max_size: int) -> tuple[int, int]:
    """How many leading bytes of `buf` are complete frames, of any kind, and how many bytes the
    next (incomplete) frame needs in all (0 while its header is itself incomplete).

    The caller keeps the rest until that many bytes have arrived and hands the library only whole
    frames. A frame announcing more than `max_size` bytes is not waited for: the whole buffer is
    returned as "complete" so that the library rejects it at once (a peer cannot make us buffer
    an oversized frame).
    """
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        b1 = buf[pos + 1]
        length = b1 & 0x7F
        head = pos + 2
        if length == 126:
            if end - pos < 4:
                break
            length = (buf[head] << 8) | buf[head + 1]
            head += 2
        elif length == 127:
            if end - pos < 10:
                break
            length = int.from_bytes(buf[head : head + 8], "big")
            head += 8
        if length > max_size:
            return end, 0
        if b1 & 0x80:
            head += 4
        stop = head + length
        if stop > end:
            return pos, stop - pos
        pos = stop
    return pos, 0
