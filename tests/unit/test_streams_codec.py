"""protocol/cluster/streams.py against bytes made by the real Node libraries.

The golden values below were produced by @socket.io/redis-streams-adapter 0.3.1's own encoders
(JSON.stringify of the message data, @msgpack/msgpack 2.8 `encode`) in tests/interop, the way
0.3.1 builds an XADD entry, a PUBLISHed message and a session; the live check of the same rules
is tests/interop/test_streams_mixed.py.
"""

from __future__ import annotations

import pytest

from protocol.cluster import Broadcast, BroadcastOptions, FetchSockets, Response, ServerSideEmit, SocketsJoin
from protocol.cluster import streams as wire
from protocol.cluster.messages import Answer
from protocol.errors import ClusterMessageError

NODE_JSON = b'{"packet":{"type":2,"data":["m",1,{"f":1.5,"n":null}]},"opts":{"rooms":["r",7],"except":["x"],"flags":{}}}'
NODE_B64 = b"gqZwYWNrZXSCpHR5cGUCpGRhdGGToW3EAwAB/4KhZss/+AAAAAAAAKFuwKRvcHRzg6Vyb29tc5GhcqZleGNlcHSQpWZsYWdzgA=="
NODE_SESSION = b"hKNzaWSjYWJjo3BpZKNkZWalcm9vbXOSo2FiY6FypGRhdGGCoWuhdqFuAw=="
NODE_SSE = bytes.fromhex("84a47479706509a46461746182a9726571756573744964a27131a67061636b657492a470696e6701a3756964a27531a36e7370a12f")


def test_a_broadcast_entry_has_nodes_fields_in_order_and_json_data() -> None:
    message = Broadcast("u1", "/", ["m", 1, {"f": 1.5, "n": None}], BroadcastOptions(["r", 7], ["x"], {}))
    assert wire.encode_entry(message) == [b"uid", b"u1", b"nsp", b"/", b"type", b"3", b"data", NODE_JSON]


def test_binary_data_is_base64_msgpack_as_node_writes_it() -> None:
    message = Broadcast("u1", "/", ["m", b"\x00\x01\xff", {"f": 1.5, "n": None}], BroadcastOptions(["r"], [], {}))
    assert wire.encode_entry(message)[-1] == NODE_B64


@pytest.mark.parametrize("data", [NODE_JSON, NODE_B64])
def test_nodes_entries_decode(data: bytes) -> None:
    message = wire.decode_entry({b"uid": b"node", b"nsp": b"/", b"type": b"3", b"data": data})
    assert isinstance(message, Broadcast) and message.uid == "node" and message.request_id is None
    assert message.data[0] == "m" and message.data[2] == {"f": 1.5, "n": None}


def test_entries_without_data_and_other_types() -> None:
    join = SocketsJoin("u", "/chat", BroadcastOptions(["a"], [], {}), ["b"])
    decoded = wire.decode_entry(wire.entry_fields(wire.encode_entry(join)))
    assert isinstance(decoded, SocketsJoin) and decoded.rooms == ["b"] and decoded.nsp == "/chat"
    assert wire.decode_entry({b"uid": b"u", b"nsp": b"/", b"type": b"2"}) is None  # a heartbeat
    for bad in ({b"nsp": b"/", b"type": b"3"}, {b"uid": b"u", b"nsp": b"/", b"type": b"x"}, {b"uid": b"u", b"nsp": b"/", b"type": b"3", b"data": b"!!"}):
        with pytest.raises(ClusterMessageError):
            wire.decode_entry(bad)


def test_ephemeral_messages_are_msgpack_of_the_whole_message() -> None:
    message = ServerSideEmit("u1", "/", ["ping", 1], "q1")
    assert wire.is_ephemeral(message)
    assert wire.encode_ephemeral(message) == NODE_SSE
    decoded = wire.decode_ephemeral(NODE_SSE)
    assert isinstance(decoded, ServerSideEmit) and decoded.request_id == "q1" and decoded.data == ["ping", 1]


def test_what_goes_where() -> None:
    opts = BroadcastOptions([], [], {})
    assert not wire.is_ephemeral(Broadcast("u", "/", ["e"], opts))
    assert wire.is_ephemeral(Broadcast("u", "/", ["e"], opts, "req"))
    assert wire.is_ephemeral(FetchSockets("u", "/", opts, "req"))
    assert wire.is_ephemeral(Response(Answer.CLIENT_COUNT, "req", 2, "u", "/"))
    assert not wire.is_ephemeral(SocketsJoin("u", "/", opts, ["r"]))
    assert wire.public_channel("socket.io", "/") == "socket.io#/#"
    assert wire.private_channel("socket.io", "/", "abc") == "socket.io#/#abc#"


def test_sessions_read_and_written_as_node_does() -> None:
    session = wire.StreamSession("abc", "def", ["abc", "r"], {"k": "v", "n": 3})
    assert wire.encode_session(session) == NODE_SESSION
    assert wire.decode_session(NODE_SESSION) == session
    for bad in (b"not base64!", b"kw==", wire.encode_session(wire.StreamSession("a", "b", [True], None))):  # kw== is msgpack []
        with pytest.raises(ClusterMessageError):
            wire.decode_session(bad)


def test_offsets() -> None:
    assert wire.valid_offset("1700000000000-0") and not wire.valid_offset("abc") and not wire.valid_offset("1-2-3")
    assert wire.next_offset("5-9") == "5-10"
    assert wire.offset_key("10-1") > wire.offset_key("9-99")  # numeric, not text, order


def test_replay_selection_is_node_should_include_packet() -> None:
    assert wire.included(["s", "r"], [], [])
    assert wire.included(["s", "r"], ["r", "q"], [])
    assert not wire.included(["s", "r"], ["q"], [])
    assert not wire.included(["s", "r"], [], ["r"])
