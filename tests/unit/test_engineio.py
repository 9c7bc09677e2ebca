"""Engine.IO v4 codec: packets, polling payloads, handshake and request validation.

Wire strings are the ones the official engine.io-protocol test suite sends and expects.
"""

from __future__ import annotations

import base64
import random

import orjson
import pytest

from protocol import engineio as eio
from protocol.engineio import (
    ErrorCode,
    Handshake,
    Packet,
    PacketType,
    RequestRejected,
    check_request,
)
from protocol.errors import EngineIOError, PayloadTooLarge, ProtocolError

# -- single packets ------------------------------------------------------------------------------

TEXT_CASES = [
    (Packet(PacketType.OPEN, '{"sid":"abc"}'), '0{"sid":"abc"}'),
    (Packet(PacketType.CLOSE), "1"),
    (Packet(PacketType.PING), "2"),
    (Packet(PacketType.PING, "probe"), "2probe"),
    (Packet(PacketType.PONG), "3"),
    (Packet(PacketType.PONG, "probe"), "3probe"),
    (Packet(PacketType.MESSAGE, "hello"), "4hello"),
    (Packet(PacketType.MESSAGE, "héllo ✓"), "4héllo ✓"),
    (Packet(PacketType.UPGRADE), "5"),
    (Packet(PacketType.NOOP), "6"),
]


@pytest.mark.parametrize(("packet", "wire"), TEXT_CASES)
def test_encode_text_every_type(packet: Packet, wire: str) -> None:
    assert eio.encode_text(packet) == wire


@pytest.mark.parametrize(("packet", "wire"), TEXT_CASES)
def test_decode_text_every_type(packet: Packet, wire: str) -> None:
    decoded = eio.decode_text(wire)
    assert decoded.type is packet.type
    assert decoded.data == packet.data
    assert not decoded.binary


def test_prebuilt_packets_encode_to_single_digits() -> None:
    assert [eio.encode_text(p) for p in (eio.PING, eio.PONG, eio.NOOP, eio.CLOSE, eio.UPGRADE)] == [
        "2",
        "3",
        "6",
        "1",
        "5",
    ]


def test_empty_message_decodes_to_empty_string_and_back() -> None:
    packet = eio.decode_text("4")
    assert packet == Packet(PacketType.MESSAGE, "")
    assert eio.encode_text(packet) == "4"


def test_control_packet_without_data_decodes_to_none() -> None:
    assert eio.decode_text("2").data is None
    assert eio.decode_text("6").data is None


@pytest.mark.parametrize("wire", ["abc", "7", "9hello", "x", "-1", " 4hello"])
def test_decode_text_rejects_unknown_type(wire: str) -> None:
    with pytest.raises(EngineIOError, match="unknown packet type"):
        eio.decode_text(wire)


def test_decode_text_rejects_empty() -> None:
    with pytest.raises(EngineIOError):
        eio.decode_text("")


def test_errors_are_protocol_errors() -> None:
    # The gateway catches ProtocolError (and ValueError) to close the session.
    with pytest.raises(ProtocolError):
        eio.decode_text("abc")
    with pytest.raises(ValueError):
        eio.decode_text("abc")


def test_binary_frame_is_a_binary_message() -> None:
    packet = eio.decode_binary_frame(bytearray([1, 2, 3, 4]))
    assert packet.type is PacketType.MESSAGE
    assert packet.data == b"\x01\x02\x03\x04"
    assert type(packet.data) is bytes
    assert packet.binary


def test_empty_binary_frame() -> None:
    packet = eio.decode_binary_frame(b"")
    assert packet.binary and packet.data == b""


@pytest.mark.parametrize("data", [b"\x01\x02", bytearray(b"\x01\x02"), memoryview(b"\x01\x02")])
def test_binary_packet_has_no_text_form(data: bytes) -> None:
    packet = Packet(PacketType.MESSAGE, data)
    assert packet.binary
    with pytest.raises(EngineIOError):
        eio.encode_text(packet)


@pytest.mark.parametrize("data", [b"\x01\x02\x03\x04", bytearray(b"\x01\x02\x03\x04"), memoryview(b"\x01\x02\x03\x04")])
def test_binary_polling_record_is_b_plus_base64(data: bytes) -> None:
    assert eio.encode_polling_record(Packet(PacketType.MESSAGE, data)) == "bAQIDBA=="


def test_text_polling_record_is_the_text_form() -> None:
    assert eio.encode_polling_record(Packet(PacketType.MESSAGE, "hello")) == "4hello"
    assert eio.encode_polling_record(eio.NOOP) == "6"


# -- polling payloads ----------------------------------------------------------------------------


def test_payload_single_text_packet() -> None:
    assert eio.decode_payload("4hello") == [Packet(PacketType.MESSAGE, "hello")]
    assert eio.encode_payload([Packet(PacketType.MESSAGE, "hello")]) == "4hello"


def test_payload_several_text_packets_conformance() -> None:
    wire = "4test1\x1e4test2\x1e4test3"
    packets = eio.decode_payload(wire)
    assert packets == [Packet(PacketType.MESSAGE, f"test{i}") for i in (1, 2, 3)]
    assert eio.encode_payload(packets) == wire


def test_payload_text_and_binary_conformance() -> None:
    wire = "4hello\x1ebAQIDBA=="
    packets = eio.decode_payload(wire)
    assert packets == [Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")]
    assert packets[1].binary
    assert eio.encode_payload(packets) == wire


def test_payload_mixed_types_roundtrip() -> None:
    blob = bytes(range(256))
    packets = [
        Packet(PacketType.PING, "probe"),
        Packet(PacketType.MESSAGE, blob),
        Packet(PacketType.MESSAGE, ""),
        Packet(PacketType.PONG),
        Packet(PacketType.CLOSE),
        Packet(PacketType.MESSAGE, b""),
        Packet(PacketType.NOOP),
    ]
    wire = eio.encode_payload(packets)
    assert wire.split("\x1e") == [
        "2probe",
        "b" + base64.b64encode(blob).decode(),
        "4",
        "3",
        "1",
        "b",
        "6",
    ]
    assert eio.decode_payload(wire) == packets


def test_polling_conformance_control_bodies() -> None:
    # Bodies the suite POSTs ("3" pong, "1" close) and polls ("2" ping, "6" noop).
    assert eio.decode_payload("3") == [Packet(PacketType.PONG)]
    assert eio.decode_payload("1") == [Packet(PacketType.CLOSE)]
    assert eio.encode_payload([eio.PING]) == "2"
    assert eio.encode_payload([eio.NOOP]) == "6"


def test_encode_empty_packet_list() -> None:
    assert eio.encode_payload([]) == ""


def test_decode_empty_payload_rejected() -> None:
    with pytest.raises(EngineIOError, match="empty"):
        eio.decode_payload("")


@pytest.mark.parametrize(
    "wire",
    [
        "abc",  # conformance: invalid packet format
        "4hello\x1eabc",  # one bad record poisons the payload
        "4hello\x1e",  # trailing separator -> empty record
        "\x1e4hello",
        "4a\x1e\x1e4b",
        "8hello",
    ],
)
def test_decode_payload_rejects_bad_records(wire: str) -> None:
    with pytest.raises(EngineIOError):
        eio.decode_payload(wire)


@pytest.mark.parametrize(
    "record",
    [
        "bAQIDBA",  # missing padding
        "bAQI",  # bad length
        "b!!!!",  # not base64 alphabet
        "bAQID BA==",  # embedded space
        "b====",
        "bAQIDBA==\n",
    ],
)
def test_decode_payload_rejects_bad_base64(record: str) -> None:
    with pytest.raises(EngineIOError, match="base64"):
        eio.decode_payload("4ok\x1e" + record)


def test_empty_binary_record_is_empty_bytes() -> None:
    assert eio.decode_payload("b") == [Packet(PacketType.MESSAGE, b"")]


def test_payload_too_large() -> None:
    wire = "4" + "x" * 99
    assert len(eio.decode_payload(wire, max_payload=100)) == 1  # exactly at the limit is fine
    with pytest.raises(PayloadTooLarge):
        eio.decode_payload(wire + "y", max_payload=100)


def test_payload_too_large_checked_before_parsing() -> None:
    # Garbage that exceeds the limit is reported as too large, not as malformed.
    with pytest.raises(PayloadTooLarge):
        eio.decode_payload("abc" * 100, max_payload=10)


def test_payload_too_large_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        eio.decode_payload("4" * 11, max_payload=10)


# -- handshake -----------------------------------------------------------------------------------


def test_handshake_to_packet_matches_node_shape() -> None:
    hs = Handshake(sid="lv_VI97HAXpY6yYWAAAC", upgrades=("websocket",), ping_interval=300, ping_timeout=200, max_payload=1_000_000)
    packet = hs.to_packet()
    assert packet.type is PacketType.OPEN
    wire = eio.encode_text(packet)
    assert wire == (
        '0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],'
        '"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}'
    )
    # What the conformance suite checks after stripping the type digit.
    value = orjson.loads(wire[1:])
    assert set(value) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert value["upgrades"] == ["websocket"]


def test_handshake_over_websocket_has_no_upgrades() -> None:
    hs = Handshake("abc", (), 25000, 20000, 1_000_000)
    assert orjson.loads(eio.encode_text(hs.to_packet())[1:])["upgrades"] == []


def test_handshake_roundtrip_through_wire() -> None:
    hs = Handshake("s1", ("websocket",), 25000, 20000, 1_000_000)
    assert Handshake.from_packet(eio.decode_text(eio.encode_text(hs.to_packet()))) == hs
    assert Handshake.from_packet(eio.decode_payload(eio.encode_payload([hs.to_packet()]))[0]) == hs


@pytest.mark.parametrize(
    "packet",
    [
        Packet(PacketType.MESSAGE, '{"sid":"a","upgrades":[],"pingInterval":1,"pingTimeout":1,"maxPayload":1}'),
        Packet(PacketType.OPEN),
        Packet(PacketType.OPEN, b"{}"),
        Packet(PacketType.OPEN, "not json"),
        Packet(PacketType.OPEN, "[]"),
        Packet(PacketType.OPEN, "42"),
        Packet(PacketType.OPEN, '{"sid":"a","upgrades":[],"pingInterval":1,"pingTimeout":1}'),
        Packet(PacketType.OPEN, '{"sid":"a","upgrades":[],"pingInterval":"x","pingTimeout":1,"maxPayload":1}'),
        Packet(PacketType.OPEN, '{"sid":"a","upgrades":null,"pingInterval":1,"pingTimeout":1,"maxPayload":1}'),
    ],
)
def test_handshake_from_bad_packet(packet: Packet) -> None:
    with pytest.raises(EngineIOError):
        Handshake.from_packet(packet)


# -- HTTP error bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        (ErrorCode.UNKNOWN_TRANSPORT, "Transport unknown", 400),
        (ErrorCode.UNKNOWN_SID, "Session ID unknown", 400),
        (ErrorCode.BAD_HANDSHAKE_METHOD, "Bad handshake method", 400),
        (ErrorCode.BAD_REQUEST, "Bad request", 400),
        (ErrorCode.FORBIDDEN, "Forbidden", 403),
        (ErrorCode.UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version", 400),
    ],
)
def test_error_body_and_status(code: ErrorCode, message: str, status: int) -> None:
    assert orjson.loads(eio.error_body(code)) == {"code": int(code), "message": message}
    assert eio.error_status(code) == status


def test_error_code_values_match_engine_io() -> None:
    assert [int(c) for c in ErrorCode] == [0, 1, 2, 3, 4, 5]


# -- request validation --------------------------------------------------------------------------


def _rejected(query: dict[str, str], method: str = "GET", upgrade: bool = False) -> ErrorCode:
    with pytest.raises(RequestRejected) as info:
        check_request(query, method, upgrade)
    assert isinstance(info.value, EngineIOError)
    assert str(info.value)  # always carries a human-readable detail
    return info.value.code


def test_polling_handshake_accepted() -> None:
    assert check_request({"EIO": "4", "transport": "polling"}, "GET", False) == eio.RequestCheck("polling", None)


def test_polling_with_sid_get_and_post_accepted() -> None:
    q = {"EIO": "4", "transport": "polling", "sid": "abc", "t": "burst"}
    assert check_request(q, "GET", False) == eio.RequestCheck("polling", "abc")
    assert check_request(q, "POST", False) == eio.RequestCheck("polling", "abc")


def test_websocket_handshake_and_upgrade_accepted() -> None:
    assert check_request({"EIO": "4", "transport": "websocket"}, "GET", True) == eio.RequestCheck("websocket", None)
    assert check_request({"EIO": "4", "transport": "websocket", "sid": "abc"}, "GET", True) == eio.RequestCheck(
        "websocket", "abc"
    )


def test_empty_sid_is_a_handshake() -> None:
    assert check_request({"EIO": "4", "transport": "polling", "sid": ""}, "GET", False).sid is None
    assert _rejected({"EIO": "4", "transport": "polling", "sid": ""}, "POST") is ErrorCode.BAD_HANDSHAKE_METHOD


@pytest.mark.parametrize(
    "query",
    [
        {"transport": "polling"},  # conformance: missing EIO
        {"EIO": "abc", "transport": "polling"},  # conformance: EIO=abc
        {"EIO": "3", "transport": "polling"},
        {"EIO": "5", "transport": "polling"},
        {"EIO": "", "transport": "polling"},
        {"EIO": "4 ", "transport": "polling"},
        {"transport": "websocket"},
        {"EIO": "abc", "transport": "websocket"},
    ],
)
def test_wrong_or_missing_eio(query: dict[str, str]) -> None:
    code = _rejected(query, "GET", query["transport"] == "websocket")
    assert code is ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
    assert eio.error_status(code) == 400


@pytest.mark.parametrize(
    "query",
    [
        {"EIO": "4"},  # conformance: missing transport
        {"EIO": "4", "transport": "abc"},  # conformance: transport=abc
        {"EIO": "4", "transport": ""},
        {"EIO": "4", "transport": "webtransport"},
        {"EIO": "4", "transport": "Polling"},
    ],
)
def test_unknown_transport(query: dict[str, str]) -> None:
    assert _rejected(query, "GET", True) is ErrorCode.UNKNOWN_TRANSPORT
    assert _rejected(query, "GET", False) is ErrorCode.UNKNOWN_TRANSPORT


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_polling_handshake_must_be_get(method: str) -> None:
    # conformance: POST and PUT handshakes answer 400.
    code = _rejected({"EIO": "4", "transport": "polling"}, method)
    assert code is ErrorCode.BAD_HANDSHAKE_METHOD
    assert eio.error_status(code) == 400


def test_websocket_handshake_must_be_get() -> None:
    assert _rejected({"EIO": "4", "transport": "websocket"}, "POST", True) is ErrorCode.BAD_HANDSHAKE_METHOD


@pytest.mark.parametrize("query", [{"EIO": "4", "transport": "websocket"}, {"EIO": "4", "transport": "websocket", "sid": "abc"}])
def test_websocket_without_upgrade(query: dict[str, str]) -> None:
    assert _rejected(query, "GET", False) is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_polling_with_sid_rejects_other_methods(method: str) -> None:
    assert _rejected({"EIO": "4", "transport": "polling", "sid": "abc"}, method) is ErrorCode.BAD_REQUEST


# -- hostile input: only EngineIOError (a ProtocolError) may come out ----------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "b",  # empty base64 is an empty binary message, fine; the others are not
        "b###",
        "b\u00e9\u00e9==",
        "bAA=A",
        "4x\x1eb%%%",
        "4a\x1e\x1e4b",
        "\x1e",
        "9" * 6000,
        "b" + "A" * 4301 + "\x1e7",
    ],
)
def test_decode_payload_raises_only_engineio_errors(payload: str) -> None:
    try:
        packets = eio.decode_payload(payload)
    except EngineIOError as exc:
        assert len(str(exc)) < 200
    else:
        assert all(isinstance(p, Packet) for p in packets)


def test_handshake_with_huge_or_wrong_numbers_is_an_engineio_error() -> None:
    base = {"sid": "s", "upgrades": [], "pingInterval": 1, "pingTimeout": 1, "maxPayload": 1}
    for bad in ({"pingInterval": "1" * 5000}, {"pingTimeout": None}, {"upgrades": 5}, {"maxPayload": [1]}):
        with pytest.raises(EngineIOError):
            Handshake.from_packet(Packet(PacketType.OPEN, orjson.dumps({**base, **bad}).decode()))
    for text in ("[]", '"x"', "9" * 5000, "{", "1e400"):
        with pytest.raises(EngineIOError):
            Handshake.from_packet(Packet(PacketType.OPEN, text))


def test_fuzz_engineio_decoders_raise_only_engineio_errors() -> None:
    rng = random.Random(4242)
    alphabet = "0123456b\x1e=+/AZaz9\u00e9\u2028\U0001f600 \x00{}\"[]"
    rejected = 0
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        if rng.random() < 0.3:
            text = "b" + base64.b64encode(bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))).decode()[: rng.randint(0, 20)]
        for decode in (eio.decode_payload, eio.decode_text):
            try:
                decode(text)
            except EngineIOError:
                rejected += 1
            except Exception as exc:
                raise AssertionError(f"{type(exc).__name__} escaped {decode.__name__} for {text!r}") from None
    assert rejected > 10_000
