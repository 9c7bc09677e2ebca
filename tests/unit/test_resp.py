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


# -- the streams' handshake, subscriptions, push messages, reply helpers, hash slots ---------------

from redis.crc import key_slot as redis_py_key_slot  # noqa: E402  (the reference, in the test only)

from protocol.resp import (  # noqa: E402
    Push,
    RespError,
    RespProtocolError,
    encode_handshake,
    encode_spublish,
    encode_subscription,
    expect_ok,
    integer_reply,
    key_slot,
    numsub_counts,
    parse_push,
)


def parsed(frame: bytes) -> list:
    reader = hiredis.Reader()
    reader.feed(frame)
    out = []
    while (item := reader.gets()) is not False:
        out.append(item)
    return out


def test_handshake_sends_only_what_the_url_asks_for():
    assert encode_handshake() == (b"", 0)
    frame, replies = encode_handshake(password="pw")
    assert replies == 1 and parsed(frame) == [[b"AUTH", b"pw"]]
    frame, replies = encode_handshake(username="gw", password="p w", db=3, client_name="gw-sub")
    assert replies == 3
    assert parsed(frame) == [[b"AUTH", b"gw", b"p w"], [b"SELECT", b"3"], [b"CLIENT", b"SETNAME", b"gw-sub"]]
    with pytest.raises(ValueError, match="username needs a password"):
        encode_handshake(username="gw")
    with pytest.raises(ValueError, match="client name"):
        encode_handshake(client_name="two words")


def test_subscription_commands_and_spublish():
    assert parsed(encode_subscription(b"SSUBSCRIBE", b"a{1}", "b")) == [[b"SSUBSCRIBE", b"a{1}", b"b"]]
    assert parsed(encode_subscription(b"SUNSUBSCRIBE")) == [[b"SUNSUBSCRIBE"]]
    with pytest.raises(ValueError):
        encode_subscription(b"SUBSCRIBE")
    with pytest.raises(ValueError):
        encode_subscription(b"GET", b"k")
    assert encode_spublish(b"c", b"p\r\n") == encode_command(b"SPUBLISH", b"c", b"p\r\n")


def test_push_messages():
    assert parse_push([b"message", b"ch", b"data"]) == Push(b"message", None, b"ch", b"data")
    assert parse_push([b"pmessage", b"p*", b"pq", b"d"]) == Push(b"pmessage", b"p*", b"pq", b"d")
    assert parse_push([b"smessage", b"s{1}", b"d"]) == Push(b"smessage", None, b"s{1}", b"d")
    assert parse_push([b"sunsubscribe", b"s{1}", 0]) == Push(b"sunsubscribe", None, b"s{1}", 0)
    assert parse_push([b"pong", b""]).kind == b"pong"
    with pytest.raises(RespError):
        parse_push(RespError("ERR unknown"))
    for bad in (5, [], [b"message", b"only-channel"], [b"other", b"a", b"b"], b"OK"):
        with pytest.raises(RespProtocolError):
            parse_push(bad)


def test_reply_helpers():
    expect_ok(b"OK")
    with pytest.raises(RespError):
        expect_ok(RespError("WRONGPASS"))
    with pytest.raises(RespProtocolError):
        expect_ok(b"QUEUED")
    assert integer_reply(3) == 3
    with pytest.raises(RespProtocolError):
        integer_reply(b"3")
    assert numsub_counts([b"a", 2, b"b", 0]) == {b"a": 2, b"b": 0}
    with pytest.raises(RespProtocolError):
        numsub_counts([b"a"])


@pytest.mark.parametrize("key", [b"", b"123456789", b"foo", b"{user1000}.following", b"foo{}{bar}", b"foo{{bar}}zap", b"{}x", b"socket.io#/#room#", bytes(range(256))])
def test_key_slot_is_redis_cluster_hashing(key):
    assert key_slot(key) == redis_py_key_slot(key)
    assert key_slot(b"123456789") == 0x31C3  # the specification's CRC16 check value


def test_error_replies_arrive_as_resp_errors_from_hiredis():
    reader = hiredis.Reader(replyError=RespError)
    reader.feed(b"-MOVED 3999 127.0.0.1:6381\r\n:1\r\n")
    error = reader.gets()
    assert isinstance(error, RespError) and str(error).startswith("MOVED")
    assert integer_reply(reader.gets()) == 1
