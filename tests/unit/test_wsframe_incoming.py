"""The incoming fast path: complete masked data frames are parsed here, anything else is left for
the websockets library's full parser, byte for byte where it stopped."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from protocol.wsframe import OP_BINARY, OP_TEXT, parse_client_frames


def client_frame(opcode: Opcode, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    data = Frame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])
    if rsv1:  # the library refuses to write reserved bits, so set it by hand
        data = bytes([data[0] | 0x40]) + data[1:]
    return data


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_single_frame_every_length_form(size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = client_frame(Opcode.BINARY, payload)
    messages, consumed = parse_client_frames(data, 1 << 20)
    assert messages == [(OP_BINARY, payload)]
    assert consumed == len(data)


def test_several_frames_in_one_read():
    a = client_frame(Opcode.TEXT, b'42["a"]')
    b = client_frame(Opcode.BINARY, b"\x01\x02")
    messages, consumed = parse_client_frames(a + b, 1000)
    assert messages == [(OP_TEXT, b'42["a"]'), (OP_BINARY, b"\x01\x02")]
    assert consumed == len(a) + len(b)


@pytest.mark.parametrize("cut", [1, 2, 5, 6, 9])
def test_partial_frame_is_left_for_the_library(cut):
    a = client_frame(Opcode.TEXT, b"first")
    b = client_frame(Opcode.TEXT, b"second")
    messages, consumed = parse_client_frames(a + b[:cut], 1000)
    assert messages == [(OP_TEXT, b"first")]
    assert consumed == len(a)


@pytest.mark.parametrize(
    "frame",
    [
        client_frame(Opcode.PING, b"x"),
        client_frame(Opcode.CLOSE, b"\x03\xe8"),
        client_frame(Opcode.TEXT, b"part", fin=False),
        client_frame(Opcode.CONT, b"rest"),
        client_frame(Opcode.TEXT, b"x", rsv1=True),
        Frame(Opcode.TEXT, b"unmasked").serialize(mask=False, extensions=[]),
    ],
    ids=["ping", "close", "fragment", "continuation", "rsv1", "unmasked"],
)
def test_anything_but_a_simple_data_frame_stops_the_fast_path(frame):
    first = client_frame(Opcode.TEXT, b"ok")
    messages, consumed = parse_client_frames(first + frame + first, 1000)
    assert messages == [(OP_TEXT, b"ok")]
    assert consumed == len(first)


def test_oversized_frame_is_left_for_the_library_to_refuse():
    data = client_frame(Opcode.TEXT, b"x" * 200)
    assert parse_client_frames(data, 100) == ([], 0)


def test_complete_frames_length_counts_whole_frames_of_any_kind_and_what_the_next_needs():
    from protocol.wsframe import complete_frames_length

    ping = client_frame(Opcode.PING, b"p")
    part = client_frame(Opcode.TEXT, b"ab", fin=False)
    big = client_frame(Opcode.BINARY, b"z" * 300)
    data = ping + part + big
    assert complete_frames_length(data, 1 << 20) == (len(data), 0)
    # Cut inside the last frame's payload: the whole frames before it, and the size it needs.
    assert complete_frames_length(data[:-5], 1 << 20) == (len(ping) + len(part), len(big))
    # Cut inside its 16-bit length: the size is not known yet.
    assert complete_frames_length(data[: len(ping) + len(part) + 3], 1 << 20) == (len(ping) + len(part), 0)
    assert complete_frames_length(b"", 1 << 20) == (0, 0)


def test_complete_frames_length_does_not_wait_for_an_oversized_frame():
    from protocol.wsframe import complete_frames_length

    head = bytes([0x82, 0x80 | 127]) + (10**9).to_bytes(8, "big") + b"mask"
    assert complete_frames_length(head + b"abc", 1 << 20) == (len(head) + 3, 0)
