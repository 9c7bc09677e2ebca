"""Redis adapter wire codec against the 83 golden vectors captured from Node.js.

For every vector: our decoder must give the captured `decoded` view, and our ENCODER functions,
fed only with the message's fields, must reproduce the captured bytes and channel. That is what
makes a Node.js peer accept our messages (key order, JSON vs msgpack, integer forms).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest

from protocol import cluster as c
from protocol.cluster import BroadcastOptions, RequestType, ShardedType, SubscriptionMode
from protocol.errors import ClusterMessageError, ProtocolError

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "redis-adapter-vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
BY_NAME = {v["name"]: v for v in VECTORS}
PREFIX = c.DEFAULT_PREFIX


def kind_of(vector: dict[str, Any]) -> str:
    if vector["mode"] == "sharded":
        return "sharded"
    if "-request#" in vector["channel"]:
        return "request"
    if "-response#" in vector["channel"]:
        return "response"
    return "broadcast"


def named(kind: str) -> list[str]:
    return [v["name"] for v in VECTORS if kind_of(v) == kind]


def from_view(value: Any) -> Any:
    """The vectors' JSON view as Python values ({"$bin": hex} -> bytes, {"$date": iso} -> UTC)."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        if set(value) == {"$date"}:
            return datetime.fromisoformat(value["$date"].replace("Z", "+00:00"))
        return {k: from_view(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_view(v) for v in value]
    return value


def payload(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["payload_hex"])


def opts_of(view: dict[str, Any]) -> BroadcastOptions:
    return BroadcastOptions(view["rooms"], view["except"], view.get("flags"))


def vector_nsp(vector: dict[str, Any]) -> str:
    """The namespace a request/response vector was captured on, read from its channel."""
    pattern = re.escape(PREFIX) + r"-(?:request|response)#(/[^#]*)#(?:[^#]+#)?"
    match = re.fullmatch(pattern, vector["channel"])
    assert match, vector["channel"]
    return match.group(1)


def requester_uid(vector: dict[str, Any]) -> str:
    """The uid of the node whose request this response answers (found by requestId)."""
    sharded = vector["mode"] == "sharded"
    decoded = vector["decoded"]
    request_id = decoded["data"]["requestId"] if sharded else decoded["requestId"]
    for other in VECTORS:
        if other["phase"] != vector["phase"] or other is vector:
            continue
        d = other["decoded"]
        if not isinstance(d, dict):
            continue
        if sharded:
            is_request = other["channel"] == c.sharded_channel(PREFIX, d["nsp"])
            found = isinstance(d.get("data"), dict) and d["data"].get("requestId") == request_id
        else:
            is_request = "uid" in d
            found = d.get("requestId") == request_id
        if is_request and found:
            return d["uid"]
    raise AssertionError(f"no request found for {vector['name']}")


def test_vectors_file_is_complete() -> None:
    assert len(VECTORS) == 83
    assert len(BY_NAME) == 83
    kinds = {kind_of(v) for v in VECTORS}
    assert kinds == {"broadcast", "request", "response", "sharded"}


# -- classic broadcasts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", named("broadcast"))
def test_classic_broadcast_decode(name: str) -> None:
    vector = BY_NAME[name]
    message = c.decode_classic_broadcast(payload(vector))
    expected = from_view(vector["decoded"])
    assert [
        message.uid,
        {"type": message.packet_type, "data": message.data, "nsp": message.nsp},
        {"rooms": message.rooms, "except": message.except_rooms, "flags": message.flags},
    ] == expected
    assert message.packet_type == c.EVENT


@pytest.mark.parametrize("name", named("broadcast"))
def test_classic_broadcast_encode(name: str) -> None:
    vector = BY_NAME[name]
    uid, packet, opts = from_view(vector["decoded"])
    options = opts_of(opts)
    if uid == c.EMITTER_UID:
        encoded = c.encode_emitter_broadcast(packet["nsp"], packet["data"], options)
    else:
        encoded = c.encode_classic_broadcast(uid, packet["nsp"], packet["data"], options)
    assert encoded.hex() == vector["payload_hex"]
    assert vector["encoding"] == "msgpack"
    assert c.broadcast_channel(PREFIX, packet["nsp"], options.rooms) == vector["channel"]
    room = c.room_of_channel(PREFIX, packet["nsp"], vector["channel"].encode())
    assert room == (c.room_text(options.rooms[0]) if len(options.rooms) == 1 else None)
    assert vector["channel"].startswith(c.broadcast_pattern(PREFIX, packet["nsp"])[:-1])


# -- classic requests -----------------------------------------------------------------------------


def request_view(request: c.ClassicRequest) -> dict[str, Any]:
    view: dict[str, Any] = {}
    if request.uid is not None:
        view["uid"] = request.uid
    if request.request_id is not None:
        view["requestId"] = request.request_id
    view["type"] = int(request.type)
    if request.sid is not None:
        view["sid"] = request.sid
    if request.room is not None:
        view["room"] = request.room
    if request.opts is not None:
        view["opts"] = request.opts.to_wire(with_flags=request.type is RequestType.BROADCAST)
    if request.packet is not None:
        view["packet"] = request.packet
    if request.rooms is not None:
        view["rooms"] = request.rooms
    if request.close is not None:
        view["close"] = request.close
    if request.data is not None:
        view["data"] = request.data
    return view


@pytest.mark.parametrize("name", named("request"))
def test_classic_request_decode(name: str) -> None:
    vector = BY_NAME[name]
    request = c.decode_classic_request(payload(vector))
    assert request_view(request) == from_view(vector["decoded"])
    assert isinstance(request.type, RequestType)


def encode_request_from_fields(d: dict[str, Any]) -> bytes:
    kind = d["type"]
    uid = d.get("uid")
    if kind == 0:
        return c.encode_sockets_request(uid, d["requestId"], d["rooms"])
    if kind == 1:
        return c.encode_all_rooms_request(uid, d["requestId"])
    if kind in (2, 3) and "sid" in d:
        encode = c.encode_legacy_remote_join if kind == 2 else c.encode_legacy_remote_leave
        return encode(uid, d["requestId"], d["sid"], d["room"])
    if kind == 2:
        return c.encode_remote_join(uid, opts_of(d["opts"]), d["rooms"])
    if kind == 3:
        return c.encode_remote_leave(uid, opts_of(d["opts"]), d["rooms"])
    if kind == 4:
        return c.encode_remote_disconnect(uid, opts_of(d["opts"]), d["close"])
    if kind == 5:
        return c.encode_fetch_sockets_request(uid, d["requestId"], opts_of(d["opts"]))
    if kind == 6:
        return c.encode_server_side_emit(uid, d["data"], d.get("requestId"))
    if kind == 7:
        packet = d["packet"]
        assert packet["type"] == c.EVENT
        return c.encode_broadcast_with_ack_request(
            uid, d["requestId"], packet["nsp"], packet["data"], opts_of(d["opts"])
        )
    raise AssertionError(f"unexpected request type {kind}")


@pytest.mark.parametrize("name", named("request"))
def test_classic_request_encode(name: str) -> None:
    vector = BY_NAME[name]
    decoded = from_view(vector["decoded"])
    encoded = encode_request_from_fields(decoded)
    assert encoded.hex() == vector["payload_hex"]
    assert ("json" if encoded[:1] == b"{" else "msgpack") == vector["encoding"]
    assert c.request_channel(PREFIX, vector_nsp(vector)) == vector["channel"]


# -- classic responses ----------------------------------------------------------------------------


def response_view(response: c.ClassicResponse) -> dict[str, Any]:
    view: dict[str, Any] = {}
    if response.type is not None:
        view["type"] = int(response.type)
    view["requestId"] = response.request_id
    if response.sockets is not None:
        view["sockets"] = response.sockets
    if response.rooms is not None:
        view["rooms"] = response.rooms
    if response.type is RequestType.SERVER_SIDE_EMIT:
        view["data"] = response.data
    if response.client_count is not None:
        view["clientCount"] = response.client_count
    if response.type is RequestType.BROADCAST_ACK:
        view["packet"] = response.packet
    return view


@pytest.mark.parametrize("name", named("response"))
def test_classic_response_decode(name: str) -> None:
    vector = BY_NAME[name]
    response = c.decode_classic_response(payload(vector))
    assert response_view(response) == from_view(vector["decoded"])


def rebuild_socket(entry: dict[str, Any]) -> dict[str, Any]:
    """A fetchSockets entry rebuilt through our helpers (time derived from `issued`)."""
    hs = entry["handshake"]
    handshake = c.socket_handshake(
        headers=hs["headers"],
        address=hs["address"],
        issued=hs["issued"],
        url=hs["url"],
        query=hs["query"],
        auth=hs["auth"],
        xdomain=hs["xdomain"],
        secure=hs["secure"],
    )
    return c.socket_description(entry["id"], handshake, entry["rooms"], entry["data"])


def encode_response_from_fields(d: dict[str, Any]) -> bytes:
    kind = d.get("type")
    if kind == 6:
        return c.encode_server_side_emit_response(d["requestId"], d["data"])
    if kind == 8:
        return c.encode_client_count_response(d["requestId"], d["clientCount"])
    if kind == 9:
        return c.encode_broadcast_ack_response(d["requestId"], d["packet"])
    assert kind is None
    if "rooms" in d:
        return c.encode_all_rooms_response(d["requestId"], d["rooms"])
    if "sockets" in d:
        if all(isinstance(s, str) for s in d["sockets"]):
            return c.encode_sockets_response(d["requestId"], d["sockets"])
        sockets = [rebuild_socket(s) for s in d["sockets"]]
        return c.encode_fetch_sockets_response(d["requestId"], sockets)
    assert set(d) == {"requestId"}
    return c.encode_legacy_ack_response(d["requestId"])


@pytest.mark.parametrize("name", named("response"))
def test_classic_response_encode(name: str) -> None:
    vector = BY_NAME[name]
    decoded = from_view(vector["decoded"])
    encoded = encode_response_from_fields(decoded)
    assert encoded.hex() == vector["payload_hex"]
    assert ("json" if encoded[:1] == b"{" else "msgpack") == vector["encoding"]
    # publishOnSpecificResponseChannel addresses the requester, except serverSideEmit acks.
    specific = (vector.get("options") or {}).get("publishOnSpecificResponseChannel", False)
    uid = requester_uid(vector) if specific and decoded.get("type") != 6 else None
    assert c.response_channel(PREFIX, vector_nsp(vector), uid) == vector["channel"]


# -- sharded --------------------------------------------------------------------------------------

SHARDED_RESPONSES = {
    ShardedType.FETCH_SOCKETS_RESPONSE,
    ShardedType.SERVER_SIDE_EMIT_RESPONSE,
    ShardedType.BROADCAST_CLIENT_COUNT,
    ShardedType.BROADCAST_ACK,
}


@pytest.mark.parametrize("name", named("sharded"))
def test_sharded_decode(name: str) -> None:
    vector = BY_NAME[name]
    message = c.decode_sharded(payload(vector))
    view: dict[str, Any] = {"type": int(message.type)}
    if message.data is not None:
        view["data"] = message.data
    view["uid"] = message.uid
    view["nsp"] = message.nsp
    assert view == from_view(vector["decoded"])
    assert isinstance(message.type, ShardedType)


def build_sharded(d: dict[str, Any]) -> c.ShardedMessage:
    kind, data, uid, nsp = ShardedType(d["type"]), d["data"], d["uid"], d["nsp"]
    if kind is ShardedType.BROADCAST:
        assert data["packet"]["type"] == c.EVENT
        args = data["packet"]["data"]
        return c.sharded_broadcast(uid, nsp, args, opts_of(data["opts"]), data.get("requestId"))
    if kind is ShardedType.SOCKETS_JOIN:
        return c.sharded_sockets_join(uid, nsp, opts_of(data["opts"]), data["rooms"])
    if kind is ShardedType.SOCKETS_LEAVE:
        return c.sharded_sockets_leave(uid, nsp, opts_of(data["opts"]), data["rooms"])
    if kind is ShardedType.DISCONNECT_SOCKETS:
        return c.sharded_disconnect_sockets(uid, nsp, opts_of(data["opts"]), data["close"])
    if kind is ShardedType.FETCH_SOCKETS:
        return c.sharded_fetch_sockets(uid, nsp, opts_of(data["opts"]), data["requestId"])
    if kind is ShardedType.FETCH_SOCKETS_RESPONSE:
        sockets = [rebuild_socket(s) for s in data["sockets"]]
        return c.sharded_fetch_sockets_response(uid, nsp, data["requestId"], sockets)
    if kind is ShardedType.SERVER_SIDE_EMIT:
        return c.sharded_server_side_emit(uid, nsp, data["packet"], data.get("requestId"))
    if kind is ShardedType.SERVER_SIDE_EMIT_RESPONSE:
        return c.sharded_server_side_emit_response(uid, nsp, data["requestId"], data["packet"])
    if kind is ShardedType.BROADCAST_CLIENT_COUNT:
        return c.sharded_client_count(uid, nsp, data["requestId"], data["clientCount"])
    if kind is ShardedType.BROADCAST_ACK:
        return c.sharded_broadcast_ack(uid, nsp, data["requestId"], data["packet"])
    raise AssertionError(f"unexpected sharded type {kind}")


@pytest.mark.parametrize("name", named("sharded"))
def test_sharded_encode(name: str) -> None:
    vector = BY_NAME[name]
    decoded = from_view(vector["decoded"])
    message = build_sharded(decoded)
    encoded = c.encode_sharded(message)
    assert encoded.hex() == vector["payload_hex"]
    assert ("json" if encoded[:1] == b"{" else "msgpack") == vector["encoding"]
    reply_to = requester_uid(vector) if message.type in SHARDED_RESPONSES else None
    channel = c.sharded_publish_channel(
        PREFIX, decoded["nsp"], message, mode=SubscriptionMode.DYNAMIC, reply_to=reply_to
    )
    assert channel == vector["channel"]


# -- values the vectors exercise through native Python types -----------------------------------


def test_classic_json_flattens_bytes_like_node_buffer() -> None:
    vector = BY_NAME["classic/server_side_emit_binary/request.SERVER_SIDE_EMIT"]
    encoded = c.encode_server_side_emit("hcsBW1", ["ss-hello", b"\x01\x02"])
    assert encoded.hex() == vector["payload_hex"]


def test_classic_broadcast_date_is_msgpack_timestamp() -> None:
    vector = BY_NAME["classic/broadcast_types/broadcast"]
    uid, packet, opts = from_view(vector["decoded"])
    date = packet["data"][1]
    assert isinstance(date, datetime)
    assert "d7ff1d5353006553f100" in vector["payload_hex"]
    # Naive datetimes are taken as UTC.
    naive = packet["data"][:1] + [date.replace(tzinfo=None)] + packet["data"][2:]
    assert c.encode_classic_broadcast(uid, "/", naive, opts).hex() == vector["payload_hex"]
    decoded = c.decode_classic_broadcast(payload(vector))
    assert decoded.data[1] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=timezone.utc)


def test_sharded_date_becomes_iso_text_on_json_path() -> None:
    vector = BY_NAME["sharded/broadcast_types/BROADCAST"]
    d = from_view(vector["decoded"])
    args = list(d["data"]["packet"]["data"])
    assert args[1] == "2023-11-14T22:13:20.123Z"
    args[1] = datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc)
    message = c.sharded_broadcast(d["uid"], "/", args, opts_of(d["data"]["opts"]))
    assert c.encode_sharded(message).hex() == vector["payload_hex"]


def test_integral_floats_encode_as_js_integers() -> None:
    vector = BY_NAME["classic/broadcast_rooms_except/broadcast"]
    opts = BroadcastOptions(["room1", "room2"], ["room3"])
    as_float = c.encode_classic_broadcast("hcsBW1", "/", ["multi", 42.0], opts)
    assert as_float.hex() == vector["payload_hex"]
    json_vector = BY_NAME["classic/broadcast_ack/response.BROADCAST_CLIENT_COUNT"]
    assert c.encode_client_count_response("MuW1JP", 1.0).hex() == json_vector["payload_hex"]
    assert (
        c.encode_server_side_emit("u", ["e", 0.5, -3.0, 2.0**40])
        == b'{"uid":"u","type":6,"data":["e",0.5,-3,1099511627776]}'
    )


def test_only_integral_float64s_call_for_the_js_numbers_walk() -> None:
    from protocol.cluster.values import may_hold_integral_float

    assert may_hold_integral_float(msgpack.packb(2.0))
    assert may_hold_integral_float(msgpack.packb({"t": 1.5, "n": -3.0}))
    assert not may_hold_integral_float(msgpack.packb(["e", {"t": 1733.25, "p": 0.1}]))
    assert not may_hold_integral_float(msgpack.packb([1e300 * 10, 2.0**70]))  # inf, beyond int64
    assert not may_hold_integral_float(msgpack.packb(b"\xcb", use_bin_type=True))  # too short for a double
    # A marker byte inside binary data reads as some double: a needless walk, never a missed one.
    assert may_hold_integral_float(msgpack.packb([b"\xcb" + b"\x00" * 8], use_bin_type=True))
    # A fractional timestamp beside an integral float: the encoded broadcast still has the int.
    opts = BroadcastOptions(["r"], [])
    decoded = msgpack.unpackb(c.encode_classic_broadcast("u", "/", ["e", {"t": 1.5, "n": 4.0}], opts))
    assert decoded[1]["data"] == ["e", {"t": 1.5, "n": 4}] and type(decoded[1]["data"][1]["n"]) is int
    fractional = c.encode_classic_broadcast("u", "/", ["e", {"t": 1.5}], opts)
    assert fractional == msgpack.packb(["u", {"type": 2, "data": ["e", {"t": 1.5}], "nsp": "/"}, {"rooms": ["r"], "except": [], "flags": {}}])


def test_only_integral_floats_in_json_text_call_for_the_walk() -> None:
    from protocol.cluster.values import json_may_hold_integral_float

    for value in ([2.0], {"t": -3.0}, [1e16], {"n": 2.0**60}):
        assert json_may_hold_integral_float(orjson.dumps(value)), value
    for value in (["e", {"t": 1733.25, "p": 0.1, "q": 2.5e-7}], [1, "x"], {"r": 10.05}):
        assert not json_may_hold_integral_float(orjson.dumps(value)), value
    assert json_may_hold_integral_float(orjson.dumps(["v1.0,"]))  # inside a string: a needless walk only


def test_plain_and_general_broadcast_decoding_agree() -> None:
    from protocol.cluster.classic import decode_broadcast

    def wire(packet: dict[str, Any], opts: Any) -> bytes:
        return msgpack.packb(["u", packet, opts], use_bin_type=True)

    plain = decode_broadcast(wire({"type": 2, "data": ["e", 1], "nsp": "/a"}, {"rooms": ["r"], "except": [], "flags": {"volatile": True}}))
    assert (plain.uid, plain.nsp, plain.data) == ("u", "/a", ["e", 1])
    assert plain.opts == BroadcastOptions(["r"], [], {"volatile": True})
    general = decode_broadcast(wire({"data": ["e"]}, {"rooms": [7, "r"], "except": ["x"]}))
    assert general.nsp == "/" and general.opts == BroadcastOptions([7, "r"], ["x"], None)
    for bad in ({"type": True, "data": ["e"], "nsp": "/"}, {"type": 2, "data": "e", "nsp": "/"}):
        with pytest.raises(ClusterMessageError):
            decode_broadcast(wire(bad, {"rooms": ["r"], "except": [], "flags": {}}))
    with pytest.raises(ClusterMessageError):
        decode_broadcast(wire({"type": 2, "data": ["e"], "nsp": "/"}, {"rooms": [None], "except": [], "flags": {}}))
    with pytest.raises(ClusterMessageError):
        decode_broadcast(wire({"type": 2, "data": ["e"], "nsp": "/"}, {"rooms": ["r"], "except": [], "flags": []}))


def test_js_numbers_copies_only_when_needed() -> None:
    plain = {"a": [1, "x", {"b": True}], "c": None}
    assert c.js_numbers(plain) is plain
    mixed = {"a": [1, 2.0, {"b": 3.5, "d": -0.0}], "t": (1.0,)}
    result = c.js_numbers(mixed)
    assert result == {"a": [1, 2, {"b": 3.5, "d": 0}], "t": [1]}
    assert type(result["a"][1]) is int and type(result["a"][2]["d"]) is int
    assert mixed["a"][1] == 2.0 and type(mixed["a"][1]) is float  # input untouched
    assert c.js_numbers(True) is True
    assert type(c.js_numbers(1e300)) is float  # too large for an integer form
    assert type(c.js_numbers(float("inf"))) is float


def test_js_date_string_matches_node_handshake_time() -> None:
    utc = "GMT+0000 (Coordinated Universal Time)"
    assert c.js_date_string(1795662469318) == f"Thu Nov 26 2026 03:07:49 {utc}"
    moment = datetime(2026, 11, 26, 2, 59, 57, tzinfo=timezone.utc)
    assert c.js_date_string(moment) == f"Thu Nov 26 2026 02:59:57 {utc}"
    assert c.js_date_string(0) == "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)"
    assert c.js_iso_string(datetime(2023, 11, 14, 22, 13, 20, 123999)) == "2023-11-14T22:13:20.123Z"


def test_socket_handshake_key_order() -> None:
    hs = c.socket_handshake(
        headers={"host": "h"}, address="127.0.0.1", issued=0, url="/", query={}, auth={}
    )
    order = ["headers", "time", "address", "xdomain", "secure", "issued", "url", "query", "auth"]
    assert list(hs) == order
    assert hs["time"].startswith("Thu Jan 01 1970")
    description = c.socket_description("s" * 20, hs, ["s" * 20], {})
    assert list(description) == ["id", "handshake", "rooms", "data"]


# -- ids and channels -----------------------------------------------------------------------------


def test_classic_ids() -> None:
    ids = {c.new_classic_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{6}", i) for i in ids)
    assert c.new_classic_id(lambda n: bytes([0xFF] * n)) == "______"
    assert c.new_classic_id(lambda n: bytes(n)) == "AAAAAA"


def test_sharded_ids() -> None:
    ids = {c.new_sharded_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert c.new_sharded_id(lambda n: bytes(range(n))) == "0001020304050607"


def test_channel_names() -> None:
    assert c.broadcast_channel("P", "/chat", []) == "P#/chat#"
    assert c.broadcast_channel("P", "/chat", ["a", "b"]) == "P#/chat#"
    assert c.broadcast_channel("P", "/", [123]) == "P#/#123#"
    assert c.broadcast_channel("P", "/", [7.0]) == "P#/#7#"
    assert c.broadcast_channel("P", "/", [1.5]) == "P#/#1.5#"
    assert c.broadcast_pattern("P", "/chat") == "P#/chat#*"
    assert c.request_channel("P", "/chat") == "P-request#/chat#"
    assert c.response_channel("P", "/chat") == "P-response#/chat#"
    assert c.response_channel("P", "/chat", "abcdef") == "P-response#/chat#abcdef#"
    assert c.sharded_channel("P", "/") == "P#/#"
    assert c.sharded_node_channel("P", "/", "59de2d458305420b") == "P#/#59de2d458305420b#"
    assert c.sharded_room_channel("P", "/", 123) == "P#/#123#"


def test_room_of_channel() -> None:
    assert c.room_of_channel("P", "/", "P#/#") is None
    assert c.room_of_channel("P", "/", b"P#/#room1#") == "room1"
    assert c.room_of_channel("P", "/", "P#/#a#b#") == "a#b"
    assert c.room_of_channel("P", "/chat", "P#/chat#lobby#") == "lobby"
    with pytest.raises(ClusterMessageError):
        c.room_of_channel("P", "/", "P#/chat#lobby#")
    with pytest.raises(ClusterMessageError):
        c.room_of_channel("P", "/", b"P#/#\xff#")


def test_numeric_room() -> None:
    assert c.numeric_room("123") == 123 and type(c.numeric_room("123")) is int
    assert c.numeric_room("1.5") == 1.5
    assert c.numeric_room("-7") == -7
    assert c.numeric_room("room1") is None
    assert c.numeric_room("12abc") is None
    assert c.numeric_room("inf") is None


def test_sharded_room_subscription_and_publish_channel() -> None:
    sid = "RtvSm0FQ1m0F047SAAAA"
    assert c.looks_like_socket_id(sid)
    assert not c.looks_like_socket_id("room1") and not c.looks_like_socket_id(123)
    assert c.sharded_room_subscribed("room1") and not c.sharded_room_subscribed(sid)
    assert c.sharded_room_subscribed(sid, "dynamic-private")
    assert not c.sharded_room_subscribed("room1", SubscriptionMode.STATIC)
    to_sid = c.sharded_broadcast("u", "/", ["e"], BroadcastOptions([sid]))
    assert c.sharded_publish_channel("P", "/", to_sid) == "P#/#"
    assert c.sharded_publish_channel("P", "/", to_sid, mode="dynamic-private") == f"P#/#{sid}#"
    to_room = c.sharded_broadcast("u", "/", ["e"], BroadcastOptions(["r"]))
    assert c.sharded_publish_channel("P", "/", to_room) == "P#/#r#"
    assert c.sharded_publish_channel("P", "/", to_room, mode="static") == "P#/#"
    with_ack = BroadcastOptions(["r"], flags={"timeout": 1})
    acked = c.sharded_broadcast("u", "/", ["e"], with_ack, "rid")
    assert c.sharded_publish_channel("P", "/", acked) == "P#/#"
    join = c.sharded_sockets_join("u", "/", BroadcastOptions(["r"]), ["x"])
    assert c.sharded_publish_channel("P", "/", join) == "P#/#"


def test_sharded_binary_switches_every_binary_capable_type_to_msgpack() -> None:
    cases = [
        c.sharded_broadcast("u", "/", ["e", b"\x00"]),
        c.sharded_server_side_emit("u", "/", ["e", b"\x00"], "r"),
        c.sharded_server_side_emit_response("u", "/", "r", b"\x00"),
        c.sharded_broadcast_ack("u", "/", "r", {"x": [b"\x00"]}),
        c.sharded_fetch_sockets_response("u", "/", "r", [{"data": b"\x00"}]),
    ]
    for message in cases:
        encoded = c.encode_sharded(message)
        assert encoded[:1] != b"{"
        envelope = {"type": int(message.type), "data": message.data, "uid": "u", "nsp": "/"}
        assert msgpack.unpackb(encoded, raw=False) == envelope
        assert c.decode_sharded(encoded).data == message.data
    # Types that cannot carry user binary stay JSON; bytes then use Node's Buffer JSON form.
    odd_rooms: list[Any] = [b"\x01"]
    join = c.encode_sharded(c.sharded_sockets_join("u", "/", BroadcastOptions(), odd_rooms))
    assert join.startswith(b"{") and b'{"type":"Buffer","data":[1]}' in join


def test_responses_without_argument_omit_the_key() -> None:
    assert c.encode_server_side_emit_response("r") == b'{"type":6,"requestId":"r"}'
    assert msgpack.unpackb(c.encode_broadcast_ack_response("r")) == {"type": 9, "requestId": "r"}
    no_arg = c.encode_sharded(c.sharded_broadcast_ack("u", "/", "r"))
    assert no_arg == b'{"type":12,"data":{"requestId":"r"},"uid":"u","nsp":"/"}'
    response = c.decode_classic_response(c.encode_server_side_emit_response("r"))
    assert response.type is RequestType.SERVER_SIDE_EMIT and response.data is None


def test_broadcast_accepts_sets_and_dict_opts() -> None:
    encoded = c.encode_classic_broadcast("u", "/", ["e"], {"rooms": ["a"], "except": {"b"}})
    decoded = c.decode_classic_broadcast(encoded)
    assert (decoded.rooms, decoded.except_rooms, decoded.flags) == (["a"], ["b"], {})


def test_decoded_request_flags_and_helpers() -> None:
    request = c.decode_classic_request(payload(BY_NAME["classic/broadcast_ack/request.BROADCAST"]))
    assert request.type is RequestType.BROADCAST
    assert request.opts is not None and request.opts.flags == {"timeout": 3000}
    assert request.packet == {"type": 2, "data": ["ask", "q1"], "nsp": "/"}
    def request(name: str) -> c.ClassicRequest:
        return c.decode_classic_request(payload(BY_NAME[name]))

    ssemit = request("classic/server_side_emit/request.SERVER_SIDE_EMIT")
    assert ssemit.request_id is None
    ack = request("classic/server_side_emit_ack/request.SERVER_SIDE_EMIT")
    assert ack.request_id is not None and ack.request_id == "92C12z"
    emitter = request("classic/emitter_sockets_join/request.REMOTE_JOIN")
    assert emitter.uid is None and emitter.rooms == ["room9"]
    legacy = request("classic/synthetic_remote_join_sid/request.REMOTE_JOIN")
    assert legacy.sid == "MAkRdGkAlfSpLJdvAAAA" and legacy.room == "room-synth"
    assert legacy.opts is None
    sharded = c.decode_sharded(payload(BY_NAME["sharded/fetch_sockets/FETCH_SOCKETS"]))
    assert sharded.request_id == "5fb093ba15028d99"
    assert sharded.opts == BroadcastOptions(["room2"], [], {})


def test_legacy_decoding_of_notepack_extensions() -> None:
    no_nsp = msgpack.packb({"type": 2, "data": ["e"]})
    undefined = c.decode_classic_broadcast(bytes.fromhex("93a175") + no_nsp + bytes.fromhex("80"))
    assert undefined.nsp == "/" and undefined.rooms == [] and undefined.flags == {}
    legacy_date = (0).to_bytes(4, "big") + (1000).to_bytes(4, "big")  # 1000 ms
    undefined_ext = msgpack.ExtType(0, b"\x00")
    extensions = [undefined_ext, msgpack.ExtType(0, legacy_date), msgpack.ExtType(5, b"ab")]
    body = msgpack.packb({"type": 9, "requestId": "r", "packet": extensions})
    response = c.decode_classic_response(body)
    assert response.packet == [None, datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc), [5, b"ab"]]
    far = msgpack.packb({"type": 9, "requestId": "r", "packet": msgpack.Timestamp(2**40, 0)})
    assert c.decode_classic_response(far).packet == msgpack.Timestamp(2**40, 0)


# -- malformed input ------------------------------------------------------------------------------

GOOD_BROADCAST = payload(BY_NAME["classic/broadcast_all/broadcast"])


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(GOOD_BROADCAST[:-3], id="truncated"),
        pytest.param(GOOD_BROADCAST + b"\x00", id="trailing-data"),
        pytest.param(
            msgpack.packb(["u", {"type": 2, "data": ["e"], "nsp": "/"}]),
            id="two-elements",
        ),
        pytest.param(msgpack.packb(["u", {"type": 2, "data": ["e"]}, {}, 1]), id="four-elements"),
        pytest.param(msgpack.packb({"uid": "u"}), id="not-an-array"),
        pytest.param(msgpack.packb(["u", ["e"], {}]), id="packet-not-a-map"),
        pytest.param(msgpack.packb(["u", {"type": 2, "data": "e"}, {}]), id="data-not-a-list"),
        pytest.param(msgpack.packb([1, {"type": 2, "data": ["e"]}, {}]), id="uid-not-a-string"),
        pytest.param(
            msgpack.packb(["u", {"type": 2, "data": ["e"]}, {"rooms": "r"}]),
            id="rooms-not-a-list",
        ),
        pytest.param(
            msgpack.packb(["u", {"type": 2, "data": ["e"]}, {"rooms": [{}]}]),
            id="room-not-hashable",
        ),
        pytest.param(
            msgpack.packb(["u", {"type": 2, "data": ["e"], "nsp": 5}, {}]),
            id="nsp-not-a-string",
        ),
        pytest.param(b"\x93\xa1u\x81\xa3\xff\xfe\x01\x80", id="invalid-utf8"),
        pytest.param(b"\xc1", id="reserved-byte"),
    ],
)
def test_malformed_broadcast(raw: bytes) -> None:
    with pytest.raises(ClusterMessageError):
        c.decode_classic_broadcast(raw)


PACKET = {"type": 2, "data": ["e"]}


def j(obj: Any) -> bytes:
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"uid":"u","type":1', id="truncated-json"),
        pytest.param(
            msgpack.packb({"uid": "u", "requestId": "r", "type": 7})[:-2],
            id="truncated-msgpack",
        ),
        pytest.param(b"[1,2]", id="json-array"),
        pytest.param(b'"text"', id="json-string"),
        pytest.param(msgpack.packb([1, 2]), id="msgpack-array"),
        pytest.param(j({"uid": "u"}), id="no-type"),
        pytest.param(j({"uid": "u", "type": "1"}), id="type-not-int"),
        pytest.param(j({"uid": "u", "type": 42}), id="unknown-type"),
        pytest.param(j({"uid": "u", "type": True}), id="type-bool"),
        pytest.param(
            j({"requestId": "r", "type": 8, "clientCount": 1}),
            id="response-type-on-request-channel",
        ),
        pytest.param(j({"uid": "u", "type": 1}), id="all-rooms-without-requestId"),
        pytest.param(j({"uid": "u", "type": 0, "rooms": []}), id="sockets-without-requestId"),
        pytest.param(
            j({"uid": "u", "type": 5, "opts": {"rooms": []}}),
            id="fetch-without-requestId",
        ),
        pytest.param(j({"uid": "u", "requestId": "r", "type": 5}), id="fetch-without-opts"),
        pytest.param(j({"uid": "u", "requestId": 5, "type": 1}), id="requestId-not-string"),
        pytest.param(j({"uid": 3, "requestId": "r", "type": 1}), id="uid-not-string"),
        pytest.param(j({"uid": "u", "type": 2, "rooms": ["a"]}), id="join-without-opts"),
        pytest.param(j({"uid": "u", "type": 2, "opts": {"rooms": []}}), id="join-without-rooms"),
        pytest.param(j({"uid": "u", "type": 2, "opts": "all", "rooms": []}), id="opts-not-object"),
        pytest.param(j({"uid": "u", "type": 6}), id="emit-without-data"),
        pytest.param(j({"uid": "u", "type": 6, "data": "e"}), id="emit-data-not-list"),
        pytest.param(
            msgpack.packb({"uid": "u", "type": 7, "packet": PACKET, "opts": {}}),
            id="broadcast-ack-without-requestId",
        ),
        pytest.param(
            msgpack.packb({"uid": "u", "requestId": "r", "type": 7, "opts": {}}),
            id="broadcast-ack-without-packet",
        ),
        pytest.param(
            j({"uid": "u", "requestId": "r", "type": 2, "sid": "s"}),
            id="legacy-join-without-room",
        ),
        pytest.param(
            j({"uid": "u", "type": 2, "sid": "s", "room": "x"}),
            id="legacy-join-without-requestId",
        ),
    ],
)
def test_malformed_request(raw: bytes) -> None:
    with pytest.raises(ClusterMessageError):
        c.decode_classic_request(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(j({"sockets": []}), id="no-requestId"),
        pytest.param(j({"type": 8, "clientCount": 1}), id="client-count-without-requestId"),
        pytest.param(j({"type": 8, "requestId": "r"}), id="client-count-without-count"),
        pytest.param(
            j({"type": 8, "requestId": "r", "clientCount": "1"}),
            id="client-count-not-int",
        ),
        pytest.param(j({"type": 3, "requestId": "r"}), id="unknown-response-type"),
        pytest.param(j({"requestId": "r", "sockets": {}}), id="sockets-not-list"),
        pytest.param(j(["r"]), id="json-array"),
        pytest.param(msgpack.packb({"type": 9})[:-1], id="truncated-msgpack"),
        pytest.param(msgpack.packb({"type": 9, "packet": 1}), id="ack-without-requestId"),
        pytest.param(msgpack.packb("text"), id="msgpack-string"),
    ],
)
def test_malformed_response(raw: bytes) -> None:
    with pytest.raises(ClusterMessageError):
        c.decode_classic_response(raw)


def sharded_json(kind: int, data: Any = None, uid: Any = "u", nsp: Any = "/") -> bytes:
    envelope: dict[str, Any] = {"type": kind}
    if data is not None:
        envelope["data"] = data
    if uid is not None:
        envelope["uid"] = uid
    if nsp is not None:
        envelope["nsp"] = nsp
    return j(envelope)


OPTS = {"rooms": [], "except": [], "flags": {}}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"type":3,"data":', id="truncated-json"),
        pytest.param(
            msgpack.packb({"type": 3, "data": {"packet": {"type": 2, "data": [b"x"]}}})[:-2],
            id="truncated-msgpack",
        ),
        pytest.param(j([3, {}, "u", "/"]), id="json-array"),
        pytest.param(sharded_json(99, {}), id="unknown-type"),
        pytest.param(sharded_json(0), id="type-zero"),
        pytest.param(
            sharded_json(3, {"packet": {"type": 2, "data": ["e"]}, "opts": OPTS}, uid=None),
            id="no-uid",
        ),
        pytest.param(
            sharded_json(3, {"packet": {"type": 2, "data": ["e"]}, "opts": OPTS}, nsp=None),
            id="no-nsp",
        ),
        pytest.param(sharded_json(3, {"opts": OPTS}), id="broadcast-without-packet"),
        pytest.param(
            sharded_json(3, {"packet": {"type": 2, "data": ["e"]}}),
            id="broadcast-without-opts",
        ),
        pytest.param(sharded_json(3, ["e"]), id="data-not-object"),
        pytest.param(sharded_json(4, {"opts": OPTS}), id="join-without-rooms"),
        pytest.param(sharded_json(7, {"opts": OPTS}), id="fetch-without-requestId"),
        pytest.param(sharded_json(8, {"sockets": []}), id="fetch-response-without-requestId"),
        pytest.param(sharded_json(8, {"requestId": "r"}), id="fetch-response-without-sockets"),
        pytest.param(sharded_json(9, {"requestId": "r"}), id="emit-without-packet"),
        pytest.param(sharded_json(10, {"packet": 1}), id="emit-response-without-requestId"),
        pytest.param(sharded_json(11, {"requestId": "r"}), id="client-count-without-count"),
        pytest.param(sharded_json(12, {"packet": 1}), id="ack-without-requestId"),
    ],
)
def test_malformed_sharded(raw: bytes) -> None:
    with pytest.raises(ClusterMessageError):
        c.decode_sharded(raw)


def test_heartbeat_like_types_decode_without_data() -> None:
    for kind in (ShardedType.INITIAL_HEARTBEAT, ShardedType.HEARTBEAT, ShardedType.ADAPTER_CLOSE):
        message = c.decode_sharded(sharded_json(int(kind)))
        assert message.type is kind and message.data is None and message.uid == "u"


def test_payload_must_be_bytes() -> None:
    with pytest.raises(ClusterMessageError):
        c.decode_classic_request('{"uid":"u","type":1,"requestId":"r"}')  # type: ignore[arg-type]


def test_unencodable_values_raise_cluster_error() -> None:
    with pytest.raises(ClusterMessageError):
        c.encode_classic_broadcast("u", "/", ["e", object()])
    with pytest.raises(ClusterMessageError):
        c.encode_server_side_emit("u", ["e", object()])
    with pytest.raises(ClusterMessageError):
        c.encode_server_side_emit("u", ["e", 2**70])
    with pytest.raises(ClusterMessageError):
        c.encode_classic_broadcast("u", "/", ["e"], opts=["not", "opts"])  # type: ignore[arg-type]
    assert issubclass(ClusterMessageError, ProtocolError)
