"""RESP request encoding on the broadcast path, checked against hiredis's own parser."""

from __future__ import annotations

import hiredis
import pytest

from protocol.resp import encode_command, encode_publish


def test_command_literal():
    assert encode_command(b"PING") == b"*1\r\n$4\r\nPING\r\n"
    assert encode_command(b"SUBSCRIBE", b"a", b"") == b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$0\r\n\r\n"


@pytest.mark.parametrize("payload", [b"", b"x", b"\r\n\x00\xff" * 100, bytes(range(256)) * 300])
def test_publish_is_the_generic_encoding_and_parses_back(payload):
    channel = b"socket.io#/#room#"
    frame = encode_publish(channel, payload)
    assert frame == encode_command(b"PUBLISH", channel, payload)
    reader = hiredis.Reader()
    reader.feed(frame + frame)
    assert reader.gets() == [b"PUBLISH", channel, payload]
    assert reader.gets() == [b"PUBLISH", channel, payload]
    assert reader.gets() is False
