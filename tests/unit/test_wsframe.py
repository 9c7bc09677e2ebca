"""Server WebSocket frames, checked byte by byte and by the `websockets` library's own parser."""

from __future__ import annotations

import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from protocol import wsframe


def parse(data: bytes) -> tuple[Frame, bytes]:
    """Parse one frame as a client would (server frames are unmasked); return it and any excess."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        return done.value, bytes(reader.buffer)
    raise AssertionError("parser wanted more bytes than the frame holds")


def header_len(n: int) -> int:
    return 2 if n < 126 else 4 if n < 65536 else 10


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_header_length_boundaries(n: int) -> None:
    payload = os.urandom(n)
    data = wsframe.binary_frame(payload)
    assert len(data) == header_len(n) + n
    assert data[header_len(n) :] == payload
    assert data[0] == 0x82  # FIN + binary, no RSV bits
    assert data[1] & 0x80 == 0  # server frames are never masked


def test_exact_header_bytes() -> None:
    assert wsframe.text_frame(b"") == b"\x81\x00"
    assert wsframe.text_frame(b"4hello") == b"\x81\x064hello"
    assert wsframe.text_frame(b"a" * 125)[:2] == b"\x81\x7d"
    assert wsframe.text_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert wsframe.binary_frame(b"a" * 65535)[:4] == b"\x82\x7e\xff\xff"
    assert wsframe.binary_frame(b"a" * 65536)[:10] == b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536])
@pytest.mark.parametrize(("build", "opcode"), [(wsframe.text_frame, Opcode.TEXT), (wsframe.binary_frame, Opcode.BINARY)])
def test_websockets_parser_accepts_frame(n: int, build, opcode: Opcode) -> None:
    payload = (b"4" + b"x" * n)[:n] if opcode is Opcode.TEXT else os.urandom(n)
    frame, rest = parse(build(payload))
    assert rest == b""
    assert frame.opcode is opcode
    assert frame.fin
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)
    assert bytes(frame.data) == payload


def test_utf8_text_frame_parses() -> None:
    payload = '42["msg","héllo ✓"]'.encode()
    frame, _ = parse(wsframe.text_frame(payload))
    assert frame.opcode is Opcode.TEXT
    assert bytes(frame.data).decode() == '42["msg","héllo ✓"]'


def test_concatenated_frames_parse_in_sequence() -> None:
    # A broadcast writes several prebuilt frames back to back into one transport buffer.
    blob = os.urandom(300)
    stream = wsframe.text_frame(b'451-["e",{"_placeholder":true,"num":0}]') + wsframe.binary_frame(blob)
    first, rest = parse(stream)
    assert first.opcode is Opcode.TEXT and bytes(first.data).startswith(b"451-")
    second, rest = parse(rest)
    assert second.opcode is Opcode.BINARY and bytes(second.data) == blob
    assert rest == b""


def test_frame_accepts_bytes_like_payload() -> None:
    for payload in (bytearray(b"abc"), memoryview(b"abc")):
        frame, _ = parse(wsframe.binary_frame(payload))
        assert bytes(frame.data) == b"abc"


def test_generic_frame_uses_given_opcode() -> None:
    assert wsframe.frame(wsframe.OP_TEXT, b"x")[0] == 0x81
    assert wsframe.frame(wsframe.OP_BINARY, b"x")[0] == 0x82
    assert (wsframe.OP_TEXT, wsframe.OP_BINARY) == (int(Opcode.TEXT), int(Opcode.BINARY))
