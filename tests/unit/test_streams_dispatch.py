"""The streams hot paths against the complete ones they shortcut.

Publishing: `plain_broadcast_data` (orjson first, the JS-number walk only where the text may
hold an integral float) must give the very bytes of the envelope path, or hand the message back
(None) when JSON cannot carry it as is. Reading: what `plain_broadcast` accepts, `decode_entry`
accepts with the same event and rooms; every other shape goes to `decode_entry`. The transport's
XADD with its cached head is byte-equal to the generic RESP encoding.
"""

from __future__ import annotations

import base64
import datetime

import hiredis
import orjson
import pytest

from gateway.cluster.adapter import to_wire
from gateway.app import build_server
from gateway.cluster.streams import StreamsClusterAdapter, StreamsTransport
from gateway.config import Settings
from gateway.engine.outbound import Outbound
from gateway.sio.adapter import BroadcastOptions as GatewayOptions
from protocol import socketio as sio
from protocol.cluster import Broadcast, BroadcastOptions, SocketsJoin
from protocol.cluster import streams as wire
from protocol.cluster.sharded import to_envelope
from protocol.cluster.values import contains_binary, dump_json, js_numbers, pack
from protocol.errors import ClusterMessageError
from protocol.resp import encode_command
from protocol.socketio import PacketType

EVENTS = [
    ["m", {"room": "r1", "t": 1733140000.123456, "seq": 7, "pad": "x" * 64}],
    ["m", 2.0, -0.0, 1e16, 1e22, 5e-324, 1e-7, 0.05, 1.05e16, float("inf")],
    ["m", {"nested": [1.0, {"deep": [3.0, "a.0,b"]}], "s": "e+1 .0]"}],
    ["m", "2.0", "1e+16", None, True, False, [], {}],
    ["m", 2**63, -(2**63), 2**63 * 1.0, 2.0**64, -(2.0**63)],
    ["ünï", "\u2028", "\ud7ff", "😀"],
    ["m", (1, 2.0)],
]
OPTIONS = [
    BroadcastOptions(["r1"], [], {}),
    BroadcastOptions(["r1", 7, 5.0], ["x", 2.0], {"volatile": True, "timeout": 5000}),
    BroadcastOptions([], [], None),
    BroadcastOptions(["a"], [], {"compress": False}),
]


def _envelope_data(message: Broadcast) -> bytes:
    """The complete path's data field: the sharded envelope's data through the JS-number walk."""
    return dump_json(js_numbers(to_envelope(message).data))


def _complete_data(message: Broadcast) -> bytes:
    """The data field as the envelope path writes it: base64 msgpack when there is binary."""
    data = to_envelope(message).data
    if contains_binary(data):
        return base64.b64encode(pack(data))
    return dump_json(data)


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_plain_broadcast_data_is_the_envelope_paths_bytes(event: list, opts: BroadcastOptions) -> None:
    message = Broadcast("u1", "/", event, opts)
    fast = wire.plain_broadcast_data(event, opts.rooms, opts.except_rooms, opts.flags)
    assert fast == _envelope_data(message)
    assert wire.encode_entry(message) == [b"uid", b"u1", b"nsp", b"/", b"type", b"3", b"data", fast]


@pytest.mark.parametrize(
    "event",
    [
        ["m", b"\x00\x01"],
        ["m", {"b": bytearray(b"x")}],
        ["m", datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)],
        ["m", {1, 2}],
        ["m", {1: "non-string key"}],
        ["m", memoryview(b"ab")],
    ],
)
def test_what_json_cannot_carry_as_is_goes_the_complete_way(event: list) -> None:
    opts = BroadcastOptions(["r"], [], {})
    assert wire.plain_broadcast_data(event, opts.rooms, opts.except_rooms, opts.flags) is None
    message = Broadcast("u1", "/", event, opts)
    try:
        expected = _complete_data(message)
    except ClusterMessageError:
        with pytest.raises(ClusterMessageError):
            wire.encode_entry(message)
        return
    assert wire.encode_entry(message) == [b"uid", b"u1", b"nsp", b"/", b"type", b"3", b"data", expected]


def test_a_too_big_integer_is_refused_as_before() -> None:
    message = Broadcast("u1", "/", ["m", 2**80], BroadcastOptions(["r"], [], {}))
    with pytest.raises(ClusterMessageError):
        wire.encode_entry(message)


PLAIN = [
    b'{"packet":{"type":2,"data":["m",{"t":1.5}]},"opts":{"rooms":["r1"],"except":[],"flags":{}}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":[],"except":[],"flags":{}}}',
    b'{"packet":{"data":["m"]},"opts":{"rooms":["a","b"]}}',
    b'{"packet":{"type":5,"data":[]},"opts":{"rooms":["a"],"flags":null,"except":null}}',
]
NOT_PLAIN = [
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":["r1"],"except":["x"],"flags":{}}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":["r1"],"except":[],"flags":{"volatile":true}}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":[7],"except":[],"flags":{}}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":[true],"except":[],"flags":{}}}',
    b'{"packet":{"type":2,"data":["m"]},"requestId":"q","opts":{"rooms":[],"except":[],"flags":{}}}',
    b'{"packet":{"type":true,"data":["m"]},"opts":{"rooms":[]}}',
    b'{"packet":{"type":2,"data":"m"},"opts":{"rooms":[]}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":"r"}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":[],"except":0}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":[],"except":{}}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":[],"flags":[]}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":[],"flags":0}}',
    b'{"packet":{"type":2,"data":["m"]}}',
    b'{"packet":[],"opts":{"rooms":[]}}',
    b'{"packet":{"type":2,"data":["m"]},"opts":{"rooms":[]}',
    b' {"packet":{"type":2,"data":["m"]},"opts":{"rooms":[]}}',
    b"[1,2]",
    b"",
    b"gqZwYWNrZXSC",
]


@pytest.mark.parametrize("data", PLAIN)
def test_plain_entries_read_as_the_complete_decoder_reads_them(data: bytes) -> None:
    plain = wire.plain_broadcast(data)
    assert plain is not None
    message = wire.decode_entry({b"uid": b"u", b"nsp": b"/", b"type": b"3", b"data": data})
    assert isinstance(message, Broadcast) and message.request_id is None
    assert plain == (message.data, message.opts.rooms)
    assert not message.opts.except_rooms and not message.opts.flags


@pytest.mark.parametrize("data", NOT_PLAIN)
def test_every_other_shape_is_left_to_the_complete_decoder(data: bytes) -> None:
    assert wire.plain_broadcast(data) is None


def test_an_xadd_with_the_cached_head_is_the_generic_encoding() -> None:
    transport = StreamsTransport(Settings(redis_url="redis://127.0.0.1:1", redis_mode="streams"))
    stream, maxlen = transport.stream, transport.maxlen
    messages = [
        Broadcast("u1", "/", ["m", {"t": 1.5}], BroadcastOptions(["r1"], [], {})),
        Broadcast("u1", "/", ["m", b"\x00"], BroadcastOptions(["r1"], [], {})),
        Broadcast("u2", "/chat", ["ünï"], BroadcastOptions([], ["x"], {"volatile": True})),
        SocketsJoin("u1", "/", BroadcastOptions(["a"], [], {}), ["b"]),
    ]
    for _ in range(2):  # the second round reads the cached heads
        for message in messages:
            expected = encode_command(b"XADD", stream, b"MAXLEN", b"~", maxlen, b"*", *wire.encode_entry(message))
            assert transport.command_of(message) == expected


@pytest.mark.parametrize("event", EVENTS)
def test_the_adapters_direct_xadd_is_the_broadcast_messages(event: list) -> None:
    """StreamsClusterAdapter.broadcast writes a rooms-only broadcast from the cached head and
    plain_broadcast_data, without a Broadcast message: the same command as publishing one."""
    transport = StreamsTransport(Settings(redis_url="redis://127.0.0.1:1", redis_mode="streams"))
    opts = GatewayOptions(frozenset(["r1", "r2"]))
    rooms = list(opts.rooms)
    data = wire.plain_broadcast_data(event, rooms, [], None)
    assert data is not None
    direct = b"%s$%d\r\n%s\r\n" % (transport.xadd_head(b"u1", b"/", wire.BROADCAST_TYPE), len(data), data)
    assert direct == transport.command_of(Broadcast("u1", "/", event, to_wire(opts)))


def _streams_adapter() -> StreamsClusterAdapter:
    """The main namespace's adapter of a streams server with recovery on (never started: the
    outbox keeps what it publishes)."""
    server = build_server(Settings(redis_url="redis://127.0.0.1:1", redis_mode="streams", state_recovery_ms=120_000))
    adapter = server.main.adapter
    assert isinstance(adapter, StreamsClusterAdapter)
    return adapter


def _queued_data(adapter: StreamsClusterAdapter) -> list[bytes]:
    """The data field of every XADD in the outbox, oldest first."""
    out = []
    for message in adapter.transport.outbox.items:
        reader = hiredis.Reader()
        reader.feed(message.payload)
        command = reader.gets()
        assert command[0] == b"XADD"
        out.append(command[-1])
    return out


@pytest.mark.parametrize("event", EVENTS)
def test_our_entry_back_from_the_stream_is_the_packet_sio_would_encode(event: list) -> None:
    adapter = _streams_adapter()
    opts = GatewayOptions(frozenset(["r1"]))
    adapter.broadcast(sio.Packet(PacketType.EVENT, "/", list(event)), opts)
    [data] = _queued_data(adapter)
    decoded = orjson.loads(data)["packet"]["data"]
    expected = sio.encode(sio.Packet(PacketType.EVENT, "/", decoded + ["1733140000000-0"]))[0]
    if not adapter.sent:  # an integral float was rewritten: decoded as any other entry
        assert wire.plain_broadcast_parts(list(event), ["r1"], [], None)[1] is None  # type: ignore[index]
        return
    text, event_json, sent_opts = adapter.sent[0]
    assert text == data and sent_opts is opts
    assert b'2%s,"%s"]' % (event_json[:-1], b"1733140000000-0") == expected
    local = adapter.stats.broadcasts_local
    assert adapter.on_stream_entry(adapter.uid_bytes, data, "1733140000000-0")
    assert adapter.stats.broadcasts_local == local + 1 and not adapter.sent


def test_the_sent_queue_gets_back_in_step() -> None:
    adapter = _streams_adapter()
    opts = GatewayOptions(frozenset(["r1"]))
    for n in range(5):
        adapter.broadcast(sio.Packet(PacketType.EVENT, "/", ["m", n]), opts)
    a, b, c, d, e = _queued_data(adapter)
    assert adapter._sent_entry(a) is not None  # in order
    assert adapter._sent_entry(c) is not None  # b never came back (dropped): skipped over
    assert [item[0] for item in adapter.sent] == [d, e]
    assert adapter._sent_entry(a) is None  # a again (a replayed batch): not ours any more
    assert adapter.on_stream_entry(adapter.uid_bytes, a, "2-0")  # decoded as any other entry
    assert adapter._sent_entry(d) is not None and adapter._sent_entry(e) is not None and not adapter.sent
    assert adapter._sent_entry(e) is None


class _Recorder:
    """A socket's session that keeps what it is sent (the adapter's delivery, no network)."""

    writable = True

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, out: Outbound) -> None:
        self.sent.append(out.text)


@pytest.mark.parametrize("recovering", [True, False])
@pytest.mark.parametrize("event", [e for e in EVENTS if wire.plain_broadcast_parts(e, ["r1"], [], None)[1] is not None])  # type: ignore[index]
def test_another_nodes_entry_is_delivered_as_sio_would_encode_it(event: list, recovering: bool) -> None:
    adapter = _streams_adapter()
    adapter.recovering = recovering
    data = wire.plain_broadcast_data(event, ["r1"], [], None)
    decoded = orjson.loads(data)["packet"]["data"]
    expected_data = decoded + ["7-1"] if recovering else decoded
    expected = Outbound.message(sio.encode(sio.Packet(PacketType.EVENT, "/", expected_data))[0]).text
    session = _Recorder()
    socket = type("S", (), {"id": "s1", "session": session, "data": {}})()
    adapter.add_all(socket, ["r1"])
    remote = adapter.stats.broadcasts_remote
    assert adapter.on_stream_entry(b"another-node", data, "7-1")
    assert session.sent == [expected] and adapter.stats.broadcasts_remote == remote + 1
