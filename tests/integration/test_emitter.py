"""The Python Emitter publishes exactly what @socket.io/redis-emitter 5.1 publishes.

Each `emitter_*` golden vector (captured from the Node emitter) is reproduced by calling our
Emitter the way the capture called the Node one; a binary-safe PSUBSCRIBE on a real redis-server
records what reached Redis, and channel plus payload must match byte for byte.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from gateway.emitter import Emitter

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "redis-adapter-vectors.json"
CAPTURE_TIMEOUT_S = 3.0

# How the Node emitter was called for each vector (tests/vectors notes + spec section 7).
CALLS: dict[str, Callable[[Emitter], Awaitable[Any]]] = {
    "emitter_emit_all": lambda e: e.emit("e-all", "x", 2),
    "emitter_emit_room": lambda e: e.to("room1").emit("e-room", {"y": 1}),
    "emitter_emit_rooms_except_volatile": lambda e: e.to("room1").to("room2").except_("room3").volatile.compress(True).emit("e-multi", True),
    "emitter_emit_binary": lambda e: e.emit("e-bin", b"\x01\x02\x03"),
    "emitter_chat_emit": lambda e: e.of("/chat").to("lobby").emit("e-lobby", "hi"),
    "emitter_sockets_join": lambda e: e.in_("room2").sockets_join("room9"),
    "emitter_sockets_leave": lambda e: e.sockets_leave("room9"),
    "emitter_server_side_emit": lambda e: e.server_side_emit("ss-hello", "from-emitter"),
    "emitter_disconnect_sockets": lambda e: e.in_("room-nobody").disconnect_sockets(close=True),
}


def emitter_vectors() -> list[dict[str, Any]]:
    return [v for v in json.loads(VECTORS.read_text()) if v["op"].startswith("emitter_")]


class Capture:
    """Every message published on the server, as raw bytes, in order."""

    def __init__(self, url: str) -> None:
        self.client = aioredis.from_url(url, decode_responses=False)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)

    async def start(self) -> None:
        await self.pubsub.psubscribe("*")

    async def next(self, timeout: float = CAPTURE_TIMEOUT_S) -> tuple[bytes, bytes]:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None and message["type"] == "pmessage":
                return message["channel"], message["data"]
        raise AssertionError(f"nothing published within {timeout}s")

    async def close(self) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()


@pytest.fixture
async def capture(redis_server: Any) -> AsyncIterator[Capture]:
    cap = Capture(redis_server.url)
    await cap.start()
    try:
        yield cap
    finally:
        await cap.close()


@pytest.fixture
async def emitter(redis_server: Any) -> AsyncIterator[Emitter]:
    e = Emitter(redis_server.url)
    try:
        yield e
    finally:
        await e.aclose()


def test_every_emitter_vector_has_a_call() -> None:
    ops = {v["op"] for v in emitter_vectors()}
    assert ops == set(CALLS), ops ^ set(CALLS)


@pytest.mark.parametrize("vector", emitter_vectors(), ids=lambda v: v["op"])
async def test_emitter_bytes_match_node(vector: dict[str, Any], emitter: Emitter, capture: Capture) -> None:
    receivers = await CALLS[vector["op"]](emitter)
    channel, payload = await capture.next()
    assert channel.decode() == vector["channel"]
    assert payload.hex() == vector["payload_hex"]
    assert receivers == 1  # the capture's pattern subscription, nobody else


async def test_rooms_as_list_and_repeated_rooms_match_node(emitter: Emitter, capture: Capture) -> None:
    """`to([a, b])` equals `to(a).to(b)`; a room named twice is a set member once."""
    vector = next(v for v in emitter_vectors() if v["op"] == "emitter_emit_rooms_except_volatile")
    await emitter.to(["room1", "room2", "room1"]).except_(["room3", "room3"]).volatile.compress(True).emit("e-multi", True)
    channel, payload = await capture.next()
    assert (channel.decode(), payload.hex()) == (vector["channel"], vector["payload_hex"])


async def test_operators_are_immutable(emitter: Emitter, capture: Capture) -> None:
    lobby = emitter.of("/chat").to("lobby")
    narrowed = lobby.except_("muted").volatile
    assert narrowed is not lobby
    await lobby.emit("e-lobby", "hi")
    channel, payload = await capture.next()
    vector = next(v for v in emitter_vectors() if v["op"] == "emitter_chat_emit")
    assert (channel.decode(), payload.hex()) == (vector["channel"], vector["payload_hex"])
    # the root emitter was not narrowed by any of the above
    await emitter.emit("e-all", "x", 2)
    channel, payload = await capture.next()
    vector = next(v for v in emitter_vectors() if v["op"] == "emitter_emit_all")
    assert (channel.decode(), payload.hex()) == (vector["channel"], vector["payload_hex"])


async def test_compress_false_and_flag_order(emitter: Emitter, capture: Capture) -> None:
    """Flags appear in the order they were first set; setting one again keeps its place."""
    await emitter.compress(False).volatile.compress(True).emit("e")
    _, payload = await capture.next()
    uid, packet, opts = msgpack.unpackb(payload, raw=False)
    assert uid == "emitter"
    assert list(opts) == ["rooms", "flags", "except"]
    assert list(opts["flags"].items()) == [("compress", True), ("volatile", True)]


async def test_custom_key_and_numeric_room(redis_server: Any, capture: Capture) -> None:
    async with Emitter(redis_server.url, key="myapp") as emitter:
        await emitter.to(123).emit("n")
        channel, _ = await capture.next()
        assert channel == b"myapp#/#123#"
        await emitter.of("chat").sockets_leave(["a", "b"])
        channel, payload = await capture.next()
        assert channel == b"myapp-request#/chat#"
        assert json.loads(payload) == {"type": 3, "opts": {"rooms": [], "except": []}, "rooms": ["a", "b"]}


async def test_reserved_events_and_acks_are_refused(emitter: Emitter, capture: Capture) -> None:
    for name in ("connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"):
        with pytest.raises(ValueError):
            await emitter.to("room1").emit(name, 1)
    with pytest.raises(ValueError):
        await emitter.emit("e", 1, lambda *a: None)
    with pytest.raises(ValueError):
        await emitter.server_side_emit("ping", lambda *a: None)
    with pytest.raises(ValueError):
        await emitter.server_side_emit("disconnect")
    # nothing refused reached Redis: the next message is the one sent after the refusals
    await emitter.emit("after")
    channel, payload = await capture.next()
    assert channel == b"socket.io#/#" and b"after" in payload


async def test_borrowed_client_is_left_open(redis_server: Any, capture: Capture) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        async with Emitter(client) as emitter:
            await emitter.emit("one")
        await capture.next()
        assert await client.ping()  # the emitter did not close a client it does not own
    finally:
        await client.aclose()
