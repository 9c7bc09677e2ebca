"""Socket.IO v5 codec: text form, binary attachments, the reassembly state machine, and the
malformed input the official socket.io-protocol test suite sends."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from protocol import socketio as sio
from protocol.errors import PayloadTooLarge, ProtocolError, SocketIOError
from protocol.socketio import Decoder, Packet, PacketType


def ph(num: int) -> dict[str, Any]:
    return {"_placeholder": True, "num": num}


def text(packet: Packet) -> str:
    head, buffers = sio.encode(packet)
    assert buffers == []
    assert isinstance(head, bytes)
    return head.decode()


def decode_all(head: bytes, buffers: list[bytes]) -> Packet:
    """Feed an encoded packet through a fresh Decoder, as a peer would receive it."""
    decoder = Decoder()
    result = decoder.feed(head.decode())
    for buf in buffers:
        assert result is None and decoder.waiting
        result = decoder.feed(buf)
    assert result is not None and not decoder.waiting
    return result


# -- exact wire strings --------------------------------------------------------------------------

ENCODE_CASES = [
    (Packet(PacketType.CONNECT), "0"),
    (Packet(PacketType.CONNECT, "/custom"), "0/custom,"),
    (sio.connect_ok("/", "x"), '0{"sid":"x"}'),
    (sio.connect_ok("/custom", "x"), '0/custom,{"sid":"x"}'),
    (Packet(PacketType.CONNECT, "/", {"token": "123"}), '0{"token":"123"}'),
    (sio.disconnect("/"), "1"),
    (sio.disconnect("/custom"), "1/custom,"),
    (Packet(PacketType.EVENT, "/", ["auth", {}]), '2["auth",{}]'),
    (Packet(PacketType.EVENT, "/custom", ["auth", {"token": "abc"}]), '2/custom,["auth",{"token":"abc"}]'),
    (Packet(PacketType.EVENT, "/", ["message-back", 1, "2", {"3": [True]}]), '2["message-back",1,"2",{"3":[true]}]'),
    (Packet(PacketType.EVENT, "/", ["message-with-ack", 1], 456), '2456["message-with-ack",1]'),
    (Packet(PacketType.EVENT, "/admin", ["e"], 12), '2/admin,12["e"]'),
    (Packet(PacketType.EVENT, "/", [42]), "2[42]"),
    (Packet(PacketType.ACK, "/", [1, "2", {"3": [False]}], 456), '3456[1,"2",{"3":[false]}]'),
    (Packet(PacketType.ACK, "/", [], 0), "30[]"),
    (Packet(PacketType.ACK, "/nsp", [None], 7), "3/nsp,7[null]"),
    (sio.connect_error("/random", "Invalid namespace"), '4/random,{"message":"Invalid namespace"}'),
    (sio.connect_error("/", "nope", {"retry": False}), '4{"message":"nope","data":{"retry":false}}'),
    (Packet(PacketType.CONNECT_ERROR, "/", "plain"), '4"plain"'),
]


@pytest.mark.parametrize(("packet", "wire"), ENCODE_CASES)
def test_encode_exact(packet: Packet, wire: str) -> None:
    assert text(packet) == wire


@pytest.mark.parametrize(("packet", "wire"), ENCODE_CASES)
def test_decode_exact(packet: Packet, wire: str) -> None:
    decoded = sio.decode_text(wire)
    assert decoded.type is packet.type
    assert decoded.nsp == packet.nsp
    assert decoded.data == packet.data
    assert decoded.id == packet.id
    assert decoded.attachments == 0


def test_conformance_server_replies() -> None:
    # The strings the socket.io-protocol suite expects after the Engine.IO "4" prefix.
    assert "4" + text(sio.connect_ok("/custom", "x")) == '40/custom,{"sid":"x"}'
    assert "4" + text(Packet(PacketType.ACK, "/", [1, "2", {"3": [False]}], 456)) == '43456[1,"2",{"3":[false]}]'
    assert "4" + text(sio.connect_error("/random", "Invalid namespace")) == '44/random,{"message":"Invalid namespace"}'
    assert "4" + text(Packet(PacketType.EVENT, "/custom", ["auth", {}])) == '42/custom,["auth",{}]'


def test_binary_event_placeholder_form() -> None:
    head, buffers = sio.encode(Packet(PacketType.EVENT, "/", ["message-back", b"\x01\x02\x03", b"\x04\x05\x06"]))
    assert head == b'52-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
    assert buffers == [b"\x01\x02\x03", b"\x04\x05\x06"]


def test_binary_ack_placeholder_form_with_id() -> None:
    head, buffers = sio.encode(Packet(PacketType.ACK, "/", [b"\x01\x02\x03", b"\x04\x05\x06"], 789))
    assert b"4" + head == b'462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
    assert buffers == [b"\x01\x02\x03", b"\x04\x05\x06"]


def test_binary_event_with_namespace_and_id() -> None:
    head, buffers = sio.encode(Packet(PacketType.EVENT, "/bin", ["up", b"\xff"], 3))
    assert head == b'51-/bin,3["up",{"_placeholder":true,"num":0}]'
    assert buffers == [b"\xff"]


def test_encode_event_shortcut() -> None:
    assert sio.encode_event("/", ["hi", 1]) == (b'2["hi",1]', [])
    assert sio.encode_event("/n", ["hi"], 5) == (b'2/n,5["hi"]', [])
    assert sio.encode_event("/", ["hi", b"\x00"]) == (b'51-["hi",{"_placeholder":true,"num":0}]', [b"\x00"])


def test_binary_types_downgrade_without_binary() -> None:
    assert text(Packet(PacketType.BINARY_EVENT, "/", ["e", 1])) == '2["e",1]'
    assert text(Packet(PacketType.BINARY_ACK, "/", [1], 4)) == "34[1]"


def test_bytes_like_values_become_attachments() -> None:
    head, buffers = sio.encode(Packet(PacketType.EVENT, "/", ["e", bytearray(b"ab"), memoryview(b"cd")]))
    assert head == b'52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
    assert buffers == [b"ab", b"cd"]
    assert all(type(b) is bytes for b in buffers)


def test_nested_binary_numbered_depth_first() -> None:
    data = ["e", {"a": b"0", "b": [b"1", {"c": b"2"}], "d": "text"}, [b"3", (b"4",)], b"5"]
    head, buffers = sio.encode(Packet(PacketType.EVENT, "/", data))
    assert buffers == [b"0", b"1", b"2", b"3", b"4", b"5"]
    body = orjson.loads(head[len(b"56-") :])
    assert body == ["e", {"a": ph(0), "b": [ph(1), {"c": ph(2)}], "d": "text"}, [ph(3), [ph(4)]], ph(5)]
    # And back again.
    decoded = decode_all(head, buffers)
    assert decoded.type is PacketType.BINARY_EVENT
    assert decoded.data == ["e", {"a": b"0", "b": [b"1", {"c": b"2"}], "d": "text"}, [b"3", [b"4"]], b"5"]


def test_encode_does_not_mutate_caller_data() -> None:
    data = ["e", {"blob": b"x"}]
    sio.encode(Packet(PacketType.EVENT, "/", data))
    assert data == ["e", {"blob": b"x"}]


def test_has_binary() -> None:
    assert not sio.has_binary(["a", 1, None, {"k": [True, 2.5]}])
    assert sio.has_binary({"k": [1, {"z": b""}]})
    assert sio.has_binary((1, bytearray()))
    assert sio.has_binary(memoryview(b"x"))
    assert not sio.has_binary({b"key-not-value": 1})


def test_unserialisable_value_is_a_socketio_error() -> None:
    with pytest.raises(SocketIOError):
        sio.encode(Packet(PacketType.EVENT, "/", ["e", object()]))


# -- round trips, both directions ----------------------------------------------------------------

ROUNDTRIP = [
    Packet(PacketType.CONNECT),
    Packet(PacketType.CONNECT, "/custom", {"token": "abc"}),
    Packet(PacketType.DISCONNECT, "/custom"),
    Packet(PacketType.EVENT, "/", ["message", 1, "2", {"3": [True]}]),
    Packet(PacketType.EVENT, "/chat", ["msg", "héllo ✓ \u2028"], 2**31),
    Packet(PacketType.ACK, "/chat", [], 0),
    Packet(PacketType.CONNECT_ERROR, "/x", {"message": "m", "data": [1]}),
    Packet(PacketType.CONNECT_ERROR, "/", "boom"),
    Packet(PacketType.EVENT, "/", ["message", b"\x01\x02\x03", b"\x04\x05\x06"]),
    Packet(PacketType.EVENT, "/bin", ["message-with-ack", {"f": b""}], 789),
    Packet(PacketType.ACK, "/", [b"\x01", [b"\x02"]], 1),
    Packet(PacketType.ACK, "/bin", [{"deep": {"deeper": [b"\x00" * 1000]}}], 99),
]


@pytest.mark.parametrize("packet", ROUNDTRIP, ids=lambda p: p.type.name)
def test_roundtrip(packet: Packet) -> None:
    head, buffers = sio.encode(packet)
    decoded = decode_all(head, buffers)
    expected_type = packet.type
    if buffers:
        expected_type = PacketType.BINARY_EVENT if packet.type is PacketType.EVENT else PacketType.BINARY_ACK
    assert decoded.type is expected_type
    assert decoded.nsp == packet.nsp
    assert decoded.data == packet.data
    assert decoded.id == packet.id
    # Re-encoding what was decoded gives the same bytes (server relays a client packet).
    assert sio.encode(decoded) == (head, buffers)


# -- decoding the client's forms -----------------------------------------------------------------


def test_decode_namespace_with_and_without_trailing_comma() -> None:
    for wire in ("0/custom,", "0/custom"):
        p = sio.decode_text(wire)
        assert (p.type, p.nsp, p.data, p.id) == (PacketType.CONNECT, "/custom", None, None)
    for wire in ("1/custom,", "1/custom"):
        p = sio.decode_text(wire)
        assert (p.type, p.nsp, p.data) == (PacketType.DISCONNECT, "/custom", None)


def test_decode_connect_with_payload() -> None:
    assert sio.decode_text('0{"token":"123"}').data == {"token": "123"}
    p = sio.decode_text('0/custom,{"token":"abc"}')
    assert (p.nsp, p.data) == ("/custom", {"token": "abc"})


def test_decode_main_namespace_connect() -> None:
    p = sio.decode_text("0")
    assert (p.type, p.nsp, p.data, p.id) == (PacketType.CONNECT, "/", None, None)


def test_decode_event_with_ack_id() -> None:
    p = sio.decode_text('2456["message-with-ack",1,"2",{"3":[false]}]')
    assert p.type is PacketType.EVENT
    assert p.id == 456
    assert p.event == "message-with-ack"
    assert p.data == ["message-with-ack", 1, "2", {"3": [False]}]


def test_decode_event_in_namespace_with_ack_id() -> None:
    p = sio.decode_text('2/admin,0["x"]')
    assert (p.nsp, p.id, p.data) == ("/admin", 0, ["x"])


def test_decode_numeric_event_name() -> None:
    assert sio.decode_text("2[1,2]").event == 1


def test_decode_binary_event_header() -> None:
    p = sio.decode_text('52-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    assert p.type is PacketType.BINARY_EVENT
    assert p.attachments == 2
    assert p.id == 789
    assert p.nsp == "/"
    assert p.data[1] == ph(0)


def test_decode_binary_ack_header_in_namespace() -> None:
    p = sio.decode_text('612-/n,4[{"_placeholder":true,"num":11}]')
    assert (p.type, p.attachments, p.nsp, p.id) == (PacketType.BINARY_ACK, 12, "/n", 4)


# -- malformed input -> SocketIOError ------------------------------------------------------------

MALFORMED = [
    "",
    "abc",  # conformance: "4abc" after the Engine.IO prefix
    "7",
    "9[]",
    "x2[]",
    "2{}",  # conformance: "42{}"
    '2abc["message-with-ack",1,"2",{"3":[false]}]',  # conformance: invalid ack id
    "2",
    "2[]",
    '2"event"',
    "2[null]",
    "2[true]",
    '2[["nested"]]',
    '2[{"a":1}]',
    '2["connect"]',
    '2["connect_error"]',
    '2["disconnect"]',
    '2["disconnecting"]',
    '2["newListener"]',
    '2["removeListener"]',
    '2/chat,["disconnect"]',
    "2[1",  # truncated JSON
    '2["a"]garbage',
    '3["no id"]',  # ACK without id
    "3/nsp,[1]",
    "3",
    "312",  # ACK with id but no payload
    '312{"a":1}',
    "0[]",  # CONNECT with a non-object payload
    '0"token"',
    "012",
    "0null",
    "0/custom,1",
    '0/custom,"x"',
    "1{}",  # DISCONNECT with payload
    "1/custom,[]",
    "1null",
    "4",  # CONNECT_ERROR without payload
    "4/nsp,",
    "4[]",
    "4null",
    "5[\"e\"]",  # BINARY_EVENT without an attachment count
    "5-[\"e\"]",
    "5x-[\"e\"]",
    "51[\"e\"]",
    "5\u00b2-[\"e\"]",  # unicode digit
    '51-{"e":1}',
    '51-["connect",{"_placeholder":true,"num":0}]',
    '61-[{"_placeholder":true,"num":0}]',  # BINARY_ACK without id
    "61-7",
]


@pytest.mark.parametrize("wire", MALFORMED)
def test_decode_text_rejects_malformed(wire: str) -> None:
    with pytest.raises(SocketIOError):
        sio.decode_text(wire)


@pytest.mark.parametrize("wire", ["abc", "2{}", "2abc[1]", '2["connect"]', '3["x"]', "0[]", "1{}", "4"])
def test_decoder_rejects_malformed_and_stays_usable(wire: str) -> None:
    decoder = Decoder()
    with pytest.raises(SocketIOError):
        decoder.feed(wire)
    assert not decoder.waiting
    assert decoder.feed('2["ok"]').data == ["ok"]


def test_socketio_error_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        sio.decode_text("abc")


# -- Decoder state machine -----------------------------------------------------------------------


def test_decoder_plain_packets_pass_through() -> None:
    decoder = Decoder()
    p = decoder.feed('2["message",1,"2",{"3":[true]}]')
    assert p is not None and p.data == ["message", 1, "2", {"3": [True]}]
    p = decoder.feed("0/custom,")
    assert p is not None and p.nsp == "/custom"
    assert not decoder.waiting


def test_decoder_reassembles_attachments_one_by_one() -> None:
    decoder = Decoder()
    assert decoder.feed('52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]') is None
    assert decoder.waiting
    assert decoder.feed(b"\x01\x02\x03") is None
    assert decoder.waiting
    p = decoder.feed(b"\x04\x05\x06")
    assert p is not None
    assert not decoder.waiting
    assert p.type is PacketType.BINARY_EVENT
    assert p.data == ["message", b"\x01\x02\x03", b"\x04\x05\x06"]
    assert all(type(b) is bytes for b in p.data[1:])


def test_decoder_placeholders_out_of_order() -> None:
    decoder = Decoder()
    decoder.feed('52-["e",{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]')
    decoder.feed(b"first")
    p = decoder.feed(b"second")
    assert p is not None and p.data == ["e", b"second", b"first"]


def test_decoder_binary_ack_with_id() -> None:
    decoder = Decoder()
    assert decoder.feed('62-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]') is None
    decoder.feed(bytearray(b"\x01\x02\x03"))
    p = decoder.feed(memoryview(b"\x04\x05\x06"))
    assert p is not None
    assert (p.type, p.id, p.data) == (PacketType.BINARY_ACK, 789, [b"\x01\x02\x03", b"\x04\x05\x06"])


def test_decoder_sequence_of_binary_packets() -> None:
    decoder = Decoder()
    out = []
    for msg in ['51-["a",{"_placeholder":true,"num":0}]', b"A", '2["plain"]', '51-["b",{"_placeholder":true,"num":0}]', b"B"]:
        p = decoder.feed(msg)
        if p is not None:
            out.append(p.data)
    assert out == [["a", b"A"], ["plain"], ["b", b"B"]]


def test_decoder_empty_attachment() -> None:
    decoder = Decoder()
    decoder.feed('51-["e",{"_placeholder":true,"num":0}]')
    p = decoder.feed(b"")
    assert p is not None and p.data == ["e", b""]


def test_decoder_zero_attachments_without_placeholders() -> None:
    p = Decoder().feed('50-["e",1]')
    assert p is not None and (p.type, p.data) == (PacketType.BINARY_EVENT, ["e", 1])


def test_decoder_zero_attachments_with_placeholder_rejected() -> None:
    decoder = Decoder()
    with pytest.raises(SocketIOError):
        decoder.feed('50-["e",{"_placeholder":true,"num":0}]')
    assert not decoder.waiting


def test_decoder_unexpected_binary() -> None:
    decoder = Decoder()
    with pytest.raises(SocketIOError, match="unexpected binary"):
        decoder.feed(b"\x01")
    assert not decoder.waiting


def test_decoder_unexpected_binary_after_complete_packet() -> None:
    decoder = Decoder()
    decoder.feed('51-["e",{"_placeholder":true,"num":0}]')
    assert decoder.feed(b"x") is not None
    with pytest.raises(SocketIOError):
        decoder.feed(b"extra")


def test_decoder_text_while_waiting() -> None:
    decoder = Decoder()
    decoder.feed('52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    decoder.feed(b"one")
    with pytest.raises(SocketIOError, match="waiting"):
        decoder.feed('2["sneaky"]')


@pytest.mark.parametrize(
    "placeholder",
    [
        '{"_placeholder":true,"num":2}',
        '{"_placeholder":true,"num":-1}',
        '{"_placeholder":true,"num":"0"}',
        '{"_placeholder":true,"num":true}',
        '{"_placeholder":true,"num":0.5}',
        '{"_placeholder":true}',
    ],
)
def test_decoder_placeholder_num_invalid(placeholder: str) -> None:
    decoder = Decoder()
    decoder.feed(f'52-["e",{placeholder}]')
    decoder.feed(b"a")
    with pytest.raises(SocketIOError, match="placeholder"):
        decoder.feed(b"b")
    # A rejected packet must not leave the decoder stuck waiting for more attachments.
    assert not decoder.waiting
    assert decoder.feed('2["next"]').data == ["next"]


def test_non_placeholder_dicts_left_alone() -> None:
    decoder = Decoder()
    decoder.feed('51-["e",{"_placeholder":false,"num":0},{"_placeholder":true,"num":0}]')
    p = decoder.feed(b"z")
    assert p is not None and p.data == ["e", {"_placeholder": False, "num": 0}, b"z"]


def test_decoder_max_buffer() -> None:
    decoder = Decoder(max_buffer=10)
    decoder.feed('52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    assert decoder.feed(b"12345") is None
    with pytest.raises(PayloadTooLarge):
        decoder.feed(b"123456")
    assert not decoder.waiting
    # The decoder is reusable and the count restarts from zero.
    decoder.feed('52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    decoder.feed(b"12345")
    p = decoder.feed(b"12345")  # exactly at the limit
    assert p is not None and p.data == ["e", b"12345", b"12345"]


def test_decoder_max_buffer_single_attachment() -> None:
    decoder = Decoder(max_buffer=3)
    decoder.feed('51-["e",{"_placeholder":true,"num":0}]')
    with pytest.raises(PayloadTooLarge):
        decoder.feed(b"four")


def test_decoder_reset_drops_pending() -> None:
    decoder = Decoder()
    decoder.feed('51-["e",{"_placeholder":true,"num":0}]')
    assert decoder.waiting
    decoder.reset()
    assert not decoder.waiting
    with pytest.raises(SocketIOError):
        decoder.feed(b"late")


def test_decoded_binary_event_without_decoder_keeps_placeholders() -> None:
    p = sio.decode_text('51-["e",{"_placeholder":true,"num":0}]')
    assert p.attachments == 1
    assert p.data == ["e", ph(0)]


def test_server_packet_helpers() -> None:
    assert sio.connect_ok("/a", "s") == Packet(PacketType.CONNECT, "/a", {"sid": "s"})
    assert sio.connect_error("/a", "m") == Packet(PacketType.CONNECT_ERROR, "/a", {"message": "m"})
    assert sio.connect_error("/a", "m", 0).data == {"message": "m", "data": 0}
    assert sio.disconnect("/a") == Packet(PacketType.DISCONNECT, "/a")


# -- hostile input: bounds, and nothing but ProtocolError escapes --------------------------------
#
# The gateway closes a session on a ProtocolError; any other exception escaped it (a WebSocket
# dropped without a close frame, a polling session left open, a traceback in the log).


def nested_list(depth: int, inner: str = "0") -> str:
    return "[" * depth + inner + "]" * depth


def test_ack_id_of_thousands_of_digits_is_a_protocol_error() -> None:
    # int() refuses strings over 4,300 digits with a plain ValueError.
    for wire in ("2" + "1" * 5000 + '["e"]', "3" + "9" * 5000 + "[]", "2/chat," + "7" * 4301 + '["e"]'):
        with pytest.raises(SocketIOError):
            sio.decode_text(wire)


def test_ack_id_bounded_to_javascript_safe_integers() -> None:
    assert sio.decode_text(f'2{sio.MAX_ACK_ID}["e"]').id == 2**53 - 1
    assert sio.decode_text('20["e"]').id == 0
    for wire in (f'2{2**53}["e"]', '2' + "0" * 17 + '["e"]', "29" * 9 + '["e"]'):
        with pytest.raises(SocketIOError):
            sio.decode_text(wire)


def test_attachment_count_of_thousands_of_digits_is_a_protocol_error() -> None:
    for wire in ("5" + "1" * 5000 + '-["e"]', "6" + "2" * 4400 + "-1[]"):
        with pytest.raises(SocketIOError):
            Decoder().feed(wire)


def test_attachment_count_bounded() -> None:
    placeholders = ",".join(orjson.dumps(ph(i)).decode() for i in range(sio.MAX_ATTACHMENTS))
    decoder = Decoder()
    assert decoder.feed(f'5{sio.MAX_ATTACHMENTS}-["e",{placeholders}]') is None
    for i in range(sio.MAX_ATTACHMENTS - 1):
        assert decoder.feed(bytes([i])) is None
    packet = decoder.feed(b"last")
    assert packet is not None and packet.data[-1] == b"last" and len(packet.data) == sio.MAX_ATTACHMENTS + 1
    with pytest.raises(SocketIOError, match="attachments"):
        Decoder().feed(f'5{sio.MAX_ATTACHMENTS + 1}-["e"]')
    small = Decoder(max_attachments=2)
    with pytest.raises(SocketIOError):
        small.feed('53-["e"]')
    assert small.feed('52-["e"]') is None and small.waiting


@pytest.mark.parametrize("depth", [300, 500, 1000])
def test_deeply_nested_binary_event_is_a_protocol_error(depth: int) -> None:
    # Nesting orjson accepts (up to 1024) but past what our walkers follow; it used to end in a
    # RecursionError in the placeholder reconstruction around 500 levels.
    decoder = Decoder()
    wire = '51-["e",' + nested_list(depth, orjson.dumps(ph(0)).decode()) + "]"
    assert decoder.feed(wire) is None
    with pytest.raises(SocketIOError, match="nested"):
        decoder.feed(b"x")
    assert not decoder.waiting, "the decoder is usable again"
    with pytest.raises(SocketIOError):
        Decoder().feed('50-["e",' + nested_list(depth) + "]")
    dicts = '{"a":' * depth + "1" + "}" * depth
    with pytest.raises(SocketIOError):
        Decoder().feed('50-["e",' + dicts + "]")


def test_binary_event_nested_within_bounds_is_reassembled() -> None:
    depth = sio.MAX_DEPTH - 2  # the event array and the placeholder's own dict count as levels
    decoder = Decoder()
    decoder.feed('51-["e",' + nested_list(depth, orjson.dumps(ph(0)).decode()) + "]")
    packet = decoder.feed(b"deep")
    assert packet is not None
    value = packet.data[1]
    for _ in range(depth - 1):
        value = value[0]
    assert value == [b"deep"]
    assert Decoder(max_depth=3).feed('50-["e",[[1]]]').data == ["e", [[1]]]
    with pytest.raises(SocketIOError):
        Decoder(max_depth=3).feed('50-["e",[[[1]]]]')


def test_encoding_a_too_deep_value_is_a_protocol_error_not_a_recursion_error() -> None:
    deep: Any = b"bin"
    for _ in range(2000):
        deep = [deep]
    with pytest.raises(SocketIOError):
        sio.has_binary(deep)
    with pytest.raises(SocketIOError):
        sio.encode_event("/", ["e", deep])
    with pytest.raises(SocketIOError):
        sio.encode_event("/", ["e", {"k": deep}])
    shallow: Any = b"bin"
    for _ in range(sio.MAX_DEPTH - 2):
        shallow = [shallow]
    head, buffers = sio.encode_event("/", ["e", shallow])
    assert buffers == [b"bin"] and head.startswith(b'51-["e",[[')


def test_placeholder_error_message_stays_short() -> None:
    decoder = Decoder()
    decoder.feed('51-["e",{"_placeholder":true,"num":"' + "x" * 100_000 + '"}]')
    with pytest.raises(SocketIOError) as caught:
        decoder.feed(b"x")
    assert len(str(caught.value)) < 200


def test_decoder_error_messages_stay_short_for_any_input() -> None:
    for packet in hostile_packets(random.Random(7), 3000):
        decoder = Decoder()
        for message in packet:
            try:
                decoder.feed(message)
            except ProtocolError as exc:
                assert len(str(exc)) < 200, str(exc)[:300]
                break


# -- the fuzzer (also drives tests/integration/test_fuzz.py over real transports) ----------------

FUZZ_SEED = 20240601
FUZZ_ALPHABET = '0123456789-/,[]{}":_placeholdernumtrue falsenull.eE+\\\x00\n\x1e\u00e9\u2028\U0001f600 '

VALID_SEEDS: list[list[str | bytes]] = [
    ["0"],
    ['0{"token":"abc"}'],
    ["0/fuzz-nsp,"],
    ['2["fuzz-event","hello",1,{"a":[true,null,2.5]}]'],
    ['2/fuzz-nsp,17["fuzz-event",{"k":"v"}]'],
    ['3123["fuzz-ack",1]'],
    ['51-["fuzz-bin",{"_placeholder":true,"num":0}]', b"\x00\x01\x02"],
    ['52-/fuzz-nsp,9["fuzz-bin",{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]', b"a", b"bb"],
    ['61-4[{"_placeholder":true,"num":0}]', b"\xff"],
    ["1"],
    ["1/fuzz-nsp,"],
    ['4{"message":"no"}'],
]


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(chars))
        if op == 0 and chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(FUZZ_ALPHABET)
        elif op == 1:
            chars.insert(pos, rng.choice(FUZZ_ALPHABET))
        elif op == 2 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op == 3:
            chars[pos:pos] = list(rng.choice(["9" * rng.randint(15, 20), "1" * rng.randint(4300, 6000), "-", ",", "/"]))
        elif op == 4:
            chars = chars[:pos]
        elif op == 5 and chars:
            start = rng.randrange(len(chars))
            chars[pos:pos] = chars[start:start + rng.randint(1, 8)]
        else:
            chars[pos:pos] = list(rng.choice(['{"_placeholder":true,"num":0}', "[", "]", "{", '"', "\\u0000"]))
    return "".join(chars)


def _deep(rng: random.Random) -> list[str | bytes]:
    depth = rng.choice([rng.randint(250, 260), rng.randint(400, 1100)])
    inner = rng.choice(['{"_placeholder":true,"num":0}', "1", '"x"', "[]"])
    if rng.random() < 0.5:
        body = nested_list(depth, inner)
    else:
        body = '{"k":' * depth + inner + "}" * depth
    if rng.random() < 0.6:
        return ['51-["fuzz-deep",' + body + "]", b"\x01"]
    return ['2["fuzz-deep",' + body + "]"]


def _huge_number(rng: random.Random) -> list[str | bytes]:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.choice([16, 17, 100, 4300, 4301, 6000])))
    return rng.choice([
        ["2" + digits + '["fuzz-event"]'],
        ["3" + digits + "[]"],
        ["5" + digits + '-["fuzz-bin"]', b"x"],
        ["6" + digits + "-1[]"],
        ['51-["fuzz-bin",{"_placeholder":true,"num":' + digits + "}]", b"x"],
        ['2["fuzz-event",' + digits + "]"],
        ['2["fuzz-event",1e' + digits + "]"],
    ])


def _bad_attachments(rng: random.Random) -> list[str | bytes]:
    count = rng.randint(0, 70)
    announced = f'5{count}-["fuzz-bin",' + ",".join(orjson.dumps(ph(rng.randint(-2, count + 2))).decode() for _ in range(rng.randint(0, 4))) + "]"
    messages: list[str | bytes] = [announced]
    messages += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(0, count + 2))]
    if rng.random() < 0.3:
        messages.insert(rng.randint(1, len(messages)), '2["fuzz-event"]')  # text while waiting
    if rng.random() < 0.2:
        messages = [b"unannounced", *messages]
    placeholder = rng.choice(['{"_placeholder":true}', '{"_placeholder":true,"num":true}', '{"_placeholder":true,"num":1.5}', '{"_placeholder":true,"num":"0"}', '{"_placeholder":"yes","num":0}'])
    if rng.random() < 0.3:
        messages = ['51-["fuzz-bin",' + placeholder + "]", b"x"]
    return messages


def _bad_namespace(rng: random.Random) -> list[str | bytes]:
    nsp = "/" + "".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(0, 30)))
    if rng.random() < 0.1:
        nsp = "/" + "n" * rng.randint(1000, 20000)
    return [rng.choice(["0", "1", "2", "3", "4", "5", "6"]) + rng.choice(["", "1-"]) + nsp + rng.choice(["", ",", ',["fuzz-event"]', ",12[]", ',{"token":1}'])]


def _bad_json(rng: random.Random) -> list[str | bytes]:
    body = rng.choice([
        '["fuzz-event"', '["fuzz-event",]', "[NaN]", '["x",Infinity]', '["x"] trailing', "\ufeff[\"x\"]",
        '["\\ud800"]', '["x",{"a":1,"a":2}]', '["x",{1:2}]', "[" * 1025 + "]" * 1025, '"just a string"',
        "[1e400]", "[-]", '["x",01]', "[true,false,nul]", '["' + "\\" * rng.randint(1, 5) + '"]',
    ])
    return [rng.choice(["2", "3", "0", "4", "21", "31", "2/fuzz-nsp,", "50-"]) + body]


def _random_text(rng: random.Random) -> list[str | bytes]:
    if rng.random() < 0.5:
        return ["".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(0, 40)))]
    raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    return [raw.decode("utf-8", "replace")] if rng.random() < 0.7 else [raw]


def hostile_packets(rng: random.Random, count: int) -> list[list[str | bytes]]:
    """`count` inputs, each the messages of one session in order (str = text, bytes = binary),
    mostly malformed: random text and bytes, mutated valid packets, deep nesting, huge numbers,
    bad attachments, bad namespaces, bad JSON. The same seed gives the same inputs."""
    kinds = [_random_text, _deep, _huge_number, _bad_attachments, _bad_namespace, _bad_json]
    out: list[list[str | bytes]] = []
    for _ in range(count):
        if rng.random() < 0.4:
            seed = [m for m in rng.choice(VALID_SEEDS)]
            seed[0] = _mutate(rng, seed[0])  # type: ignore[arg-type]
            out.append(seed)
        else:
            out.append(rng.choice(kinds)(rng))
    return out


def test_fuzz_decoder_raises_only_protocol_errors() -> None:
    rng = random.Random(FUZZ_SEED)
    outcomes = {"packet": 0, "pending": 0, "protocol_error": 0}
    for packet in hostile_packets(rng, 20_000):
        decoder = Decoder(max_buffer=1_000_000)
        for message in packet:
            try:
                result = decoder.feed(message)
            except ProtocolError:
                outcomes["protocol_error"] += 1
                break
            except Exception as exc:  # the point of the test: report the input, not a traceback
                raise AssertionError(f"{type(exc).__name__} escaped the decoder for {packet!r:.300}") from None
            outcomes["packet" if result is not None else "pending"] += 1
    # The generator must really exercise both sides, not only the first check.
    assert outcomes["protocol_error"] > 10_000, outcomes
    assert outcomes["packet"] > 500, outcomes
