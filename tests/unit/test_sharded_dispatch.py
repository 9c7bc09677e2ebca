"""The sharded broadcast path's shortcuts give the bytes and messages of the general path.

Encoding a typed Broadcast goes orjson first, decoding a plain broadcast skips the general
checks, and a node drops its own messages by their last bytes: each is checked here against the
golden vectors captured from Node.js and against the general codec on values the vectors lack
(binary, dates, integral floats, odd shapes). The transport's dispatch is fed the channel and
payload a shard link reads; no Redis is involved.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgpack
import orjson
import pytest

from gateway.cluster.sharded import ShardedTransport
from gateway.config import Settings
from protocol import cluster as c
from protocol.cluster import Broadcast, BroadcastOptions, Response, ShardedType, sharded
from protocol.cluster.messages import Answer
from protocol.errors import ClusterMessageError
from tests.unit.test_cluster_codec import BY_NAME, from_view, named, opts_of, payload

BROADCAST_VECTORS = [n for n in named("sharded") if BY_NAME[n]["decoded"]["type"] == int(ShardedType.BROADCAST)]


def general_encoding(message: Broadcast) -> bytes:
    return c.encode_sharded(sharded.to_envelope(message))


@pytest.mark.parametrize("name", BROADCAST_VECTORS)
def test_typed_broadcast_encodes_to_the_vector(name: str) -> None:
    vector = BY_NAME[name]
    d = from_view(vector["decoded"])
    data = d["data"]
    message = Broadcast(d["uid"], d["nsp"], data["packet"]["data"], opts_of(data["opts"]), data.get("requestId"))
    assert sharded.encode_message(message).hex() == vector["payload_hex"]


@pytest.mark.parametrize("name", BROADCAST_VECTORS)
def test_plain_broadcast_decodes_as_the_general_path(name: str) -> None:
    raw = payload(BY_NAME[name])
    fast = sharded.decode_message(raw)
    general = sharded.decode_envelope(sharded.sniff(raw))
    assert fast == general


EDGE_DATA: list[list[Any]] = [
    ["e", 2.0, -3.0, 0.5, -0.0],
    ["e", {"big": 1e16, "huge": 1e300, "tiny": 1e-7, "n": [4.0, 1.25]}],
    ["e", b"\x01\x02", {"nested": [b"\xff"]}],
    ["e", bytearray(b"ab"), memoryview(b"cd")],
    ["e", datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc)],
    ["e", "text with 2.0, and e+5 inside"],
    ["e", ("tu", 1.0)],
    ["e", {"set": {1, 2}}],
    ["é", {"ключ": "значение"}, None, True, False, 2**63],
]


@pytest.mark.parametrize("data", EDGE_DATA)
@pytest.mark.parametrize("request_id", [None, "r1"])
def test_orjson_first_encoding_equals_the_general_one(data: list[Any], request_id: str | None) -> None:
    for opts in (BroadcastOptions(), BroadcastOptions(["room", 5.0], ["sid"], {"volatile": True}), BroadcastOptions(("a",), {"b"}, None)):
        message = Broadcast("u1", "/chat", data, opts, request_id)
        assert sharded.encode_message(message) == general_encoding(message)


def test_binary_broadcast_is_msgpack_and_round_trips() -> None:
    message = Broadcast("u1", "/", ["e", b"\x00\x01"], BroadcastOptions(["r"], []))
    encoded = sharded.encode_message(message)
    assert encoded[:1] != b"{"
    decoded = sharded.decode_message(encoded)
    assert decoded == Broadcast("u1", "/", ["e", b"\x00\x01"], BroadcastOptions(["r"], [], {}))


def envelope(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": 3,
        "data": {"packet": {"type": 2, "data": ["e", 1]}, "opts": {"rooms": ["r"], "except": ["s"], "flags": {}}},
        "uid": "n1",
        "nsp": "/",
    }
    base.update(changes)
    return base


ODD_SHAPES = [
    envelope(),
    envelope(type=True),
    envelope(type=4, data={"opts": {"rooms": [], "except": []}, "rooms": ["x"]}),
    envelope(uid=5),
    envelope(nsp=None),
    envelope(data={"packet": {"type": 2, "data": ["e"]}, "opts": {"rooms": [5], "except": []}}),
    envelope(data={"packet": {"type": 2, "data": ["e"]}, "opts": {"rooms": ["r"]}}),
    envelope(data={"packet": {"type": 2, "data": ["e"]}, "opts": {"rooms": ["r"], "except": [], "flags": None}}),
    envelope(data={"packet": {"type": 2, "data": ["e"]}, "opts": {"rooms": ["r"], "except": [], "flags": []}}),
    envelope(data={"packet": {"data": ["e"]}, "opts": {"rooms": ["r"], "except": [True]}}),
    envelope(data={"packet": {"type": 2, "data": "e"}, "opts": {"rooms": [], "except": []}}),
    envelope(data={"packet": {"type": 2, "data": []}, "requestId": "q", "opts": {"rooms": [], "except": []}}),
    envelope(data={"packet": {"type": 2, "data": ["e"]}, "requestId": None, "opts": {"rooms": [], "except": []}}),
    envelope(data=[]),
    [1, 2],
]


@pytest.mark.parametrize("obj", ODD_SHAPES)
def test_json_decoding_agrees_with_the_general_checks(obj: Any) -> None:
    raw = orjson.dumps(obj)
    try:
        expected: Any = sharded.decode_envelope(orjson.loads(raw))
    except ClusterMessageError as exc:
        expected = type(exc)
    try:
        got: Any = sharded.decode_message(raw)
    except ClusterMessageError as exc:
        got = type(exc)
    assert got == expected


@pytest.mark.parametrize("data", [["e", 1], ["e", b"\x01"], ["e", 2.0]])
@pytest.mark.parametrize("nsp", ["/", "/chat", "/ünï"])
def test_own_messages_end_with_their_tails(data: list[Any], nsp: str) -> None:
    tails = sharded.own_message_tails("abcdef0123456789", nsp)
    for message in (
        Broadcast("abcdef0123456789", nsp, data, BroadcastOptions(["r"], ["s"])),
        c.SocketsJoin("abcdef0123456789", nsp, BroadcastOptions(["r"], []), ["x"]),
    ):
        assert sharded.encode_message(message).endswith(tails)
    other = Broadcast("0123456789abcdef", nsp, data, BroadcastOptions(["r"], []))
    assert not sharded.encode_message(other).endswith(tails)


def test_node_vectors_do_not_end_with_another_nodes_tails() -> None:
    for name in named("sharded"):
        vector = BY_NAME[name]
        d = vector["decoded"]
        raw = payload(vector)
        assert raw.endswith(sharded.own_message_tails(d["uid"], d["nsp"]))
        assert not raw.endswith(sharded.own_message_tails(d["uid"] + "x", d["nsp"]))


def test_msgpack_tail_is_the_envelope_end() -> None:
    raw = msgpack.packb({"type": 3, "data": {"x": b"\x01"}, "uid": "u", "nsp": "/"}, use_bin_type=True)
    assert raw.endswith(sharded.own_message_tails("u", "/"))


# -- the transport's dispatch: own messages dropped by their tails --------------------------------


class Member:
    """A namespace's side of the transport: records what got through."""

    def __init__(self, transport: ShardedTransport, uid: str = "abcdef0123456789", name: str = "/") -> None:
        self.uid, self.name = uid, name
        self.broadcasts: list[Broadcast] = []
        self.messages: list[Any] = []
        transport.register(self)  # type: ignore[arg-type]

    def on_broadcast(self, message: Broadcast) -> None:
        self.broadcasts.append(message)

    def on_message(self, message: Any) -> None:
        self.messages.append(message)


@pytest.fixture
def transport() -> ShardedTransport:
    return ShardedTransport(Settings(redis_url="redis://127.0.0.1:1", redis_mode="sharded", redis_cluster_nodes=("127.0.0.1:1",)))


def test_own_broadcast_on_a_room_channel_is_dropped_undecoded(transport: ShardedTransport) -> None:
    member = Member(transport)
    transport.watch(member, "r")  # type: ignore[arg-type]
    channel = c.sharded_room_channel(transport.prefix, "/", "r").encode()
    # Undecodable before its tail: proof that only the last bytes were read.
    transport.dispatch(channel, b"{garbage" + sharded.own_message_tails(member.uid, "/")[0])
    own_binary = sharded.encode_message(Broadcast(member.uid, "/", ["e", b"\x01"], BroadcastOptions(["r"], [])))
    transport.dispatch(channel, own_binary)
    assert member.broadcasts == [] and transport.stats.bad_messages == 0
    peer = Broadcast("0123456789abcdee", "/", ["e", 1], BroadcastOptions(["r"], ["s"]))
    transport.dispatch(channel, sharded.encode_message(peer))
    assert member.broadcasts == [Broadcast("0123456789abcdee", "/", ["e", 1], BroadcastOptions(["r"], ["s"], {}))]


def test_answers_on_the_node_channel_are_never_dropped_by_uid(transport: ShardedTransport) -> None:
    member = Member(transport)
    node_channel = c.sharded_node_channel(transport.prefix, "/", member.uid).encode()
    answer = Response(Answer.CLIENT_COUNT, "q1", 3, member.uid, "/")
    transport.dispatch(node_channel, sharded.encode_message(answer))
    assert [type(m) for m in member.messages] == [Response]


def test_own_request_on_the_main_channel_is_dropped(transport: ShardedTransport) -> None:
    member = Member(transport)
    main = c.sharded_channel(transport.prefix, "/").encode()
    transport.dispatch(main, sharded.encode_message(c.SocketsJoin(member.uid, "/", BroadcastOptions(), ["x"])))
    assert member.messages == []
    transport.dispatch(main, sharded.encode_message(c.SocketsJoin("0123456789abcdee", "/", BroadcastOptions(), ["x"])))
    assert [type(m) for m in member.messages] == [c.SocketsJoin]


@pytest.mark.parametrize("mode", ["dynamic", "static", "dynamic-private"])
def test_published_channels_are_the_codecs(mode: str) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1", redis_mode="sharded", redis_cluster_nodes=("127.0.0.1:1",), redis_subscription_mode=mode)
    bridge = ShardedTransport(settings)
    messages = [
        Broadcast("u", "/", ["e"], BroadcastOptions(["room"], [])),
        Broadcast("u", "/chat", ["e"], BroadcastOptions(["room"], [])),
        Broadcast("u", "/", ["e"], BroadcastOptions(["abcdefghijklmnopqrst"], [])),  # a socket id
        Broadcast("u", "/", ["e"], BroadcastOptions([5], [])),
        Broadcast("u", "/", ["e"], BroadcastOptions(["a", "b"], [])),
        Broadcast("u", "/", ["e"], BroadcastOptions(["room"], []), "q1"),
        Broadcast("u", "/", ["e"], BroadcastOptions(["room"], [])),  # cached by now
    ]
    for message in messages:
        bridge.publish(message)
        (queued,) = bridge.outbox.take()
        assert queued[0] == sharded.message_channel(bridge.prefix, message, bridge.mode).encode()
        assert queued[1] == sharded.encode_message(message)


# -- a shard link's reader ------------------------------------------------------------------------


def resp_array(*parts: bytes | int) -> bytes:
    raw = b"*%d\r\n" % len(parts)
    for part in parts:
        raw += b":%d\r\n" % part if isinstance(part, int) else b"$%d\r\n%s\r\n" % (len(part), part)
    return raw


async def test_a_link_dispatches_what_came_before_an_error_then_fails(transport: ShardedTransport) -> None:
    from gateway.cluster.slots import ShardLink
    from gateway.redis.stream import RedisReplyError
    from protocol.resp import Push

    member = Member(transport)
    transport.watch(member, "r")  # type: ignore[arg-type]
    channel = c.sharded_room_channel(transport.prefix, "/", "r").encode()
    peer = sharded.encode_message(Broadcast("0123456789abcdee", "/", ["e", 1], BroadcastOptions(["r"], [])))
    link = ShardLink(transport, ("127.0.0.1", 1), b"probe{0}")
    link.channels.add(channel)
    failures: list[BaseException] = []
    transport.link_failed = lambda failed, exc: failures.append(exc)  # type: ignore[method-assign]
    link.stream.parser.feed(
        resp_array(b"smessage", channel, peer)
        + resp_array(b"smessage", b"probe{0}", b"watchdog")
        + resp_array(b"ssubscribe", b"other", 2)
        + resp_array(b"smessage", channel, peer)
        + b"-MOVED 1234 127.0.0.1:2\r\n"
    )
    batch = await link.stream.get_shard_batch()
    assert [type(item) for item in batch] == [list, list, Push, list, RedisReplyError]
    link.stream.parser.feed(resp_array(b"smessage", channel, peer) + resp_array(b"sunsubscribe", channel, 0) + b"-ERR boom\r\n")
    await link._read()
    assert len(member.broadcasts) == 1  # the message before the error
    assert link.failed and [type(e) for e in failures] == [RedisReplyError]
    assert channel not in link.channels  # Redis dropped it: the transport was asked to resync
