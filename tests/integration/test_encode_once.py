"""The broadcast hot path and the node's resilience, against an in-process Server.

In process, because the claims are about internals a client cannot see: a room broadcast encodes
its Socket.IO packet once and builds its WebSocket frame once, whatever the number of recipients;
malformed input costs the sender its connection, never the node; and nothing is left behind in the
session table afterwards. Clients speak raw Engine.IO/Socket.IO over `websockets` or plain HTTP so
that the bytes on the wire are exactly the ones the test chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import gateway.engine.outbound as outbound
import protocol.socketio as sio_codec
from gateway.config import Settings
from gateway.engine.websocket import WebSocketTransport
from gateway import Server, Socket

N_CLIENTS = 50
TIMEOUT = 5.0
MAX_PAYLOAD = 4096


def build_server(**overrides: Any) -> Server:
    settings = Settings(host="127.0.0.1", port=0, log_level="WARNING", **overrides)
    server = Server(settings)

    @server.on("connection")
    def connected(socket: Socket) -> None:
        @socket.on("join")
        def join(room: Any, ack: Callable[..., None] | None = None) -> None:
            socket.join(room)
            if ack is not None:
                ack(sorted(map(str, socket.rooms)))

        @socket.on("echo")
        def echo(*args: Any) -> tuple[Any, ...]:
            return args

    return server


@contextlib.asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Server]:
    server = build_server(**overrides)
    await server.start(port=0)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.close(), TIMEOUT)


class RawClient:
    """One Engine.IO WebSocket session spoken by hand; answers pings while it reads."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sid: str | None = None

    @classmethod
    async def open(cls, port: int) -> "RawClient":
        ws = await asyncio.wait_for(
            connect(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", max_size=None, compression=None), TIMEOUT
        )
        client = cls(ws)
        opening = await client.recv()
        assert isinstance(opening, str) and opening.startswith("0{"), opening
        client.sid = json.loads(opening[1:])["sid"]
        return client

    async def recv(self, timeout: float = TIMEOUT) -> str | bytes:
        while True:
            message = await asyncio.wait_for(self.ws.recv(), timeout)
            if message == "2":
                await self.ws.send("3")
                continue
            return message

    async def connect_nsp(self, nsp: str = "/") -> str:
        await self.ws.send("40" if nsp == "/" else f"40{nsp},")
        reply = await self.recv()
        prefix = "40" if nsp == "/" else f"40{nsp},"
        assert isinstance(reply, str) and reply.startswith(prefix + "{"), reply
        return json.loads(reply[len(prefix):])["sid"]

    async def call(self, ack_id: int, event: str, *args: Any) -> Any:
        await self.ws.send("42" + str(ack_id) + json.dumps([event, *args]))
        reply = await self.recv()
        prefix = f"43{ack_id}"
        assert isinstance(reply, str) and reply.startswith(prefix), reply
        return json.loads(reply[len(prefix):])

    async def closed_code(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes the connection; the close code it sent."""
        with pytest.raises(ConnectionClosed):
            while True:
                await self.recv(timeout)
        return self.ws.close_code

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), TIMEOUT)


async def http(port: int, raw: bytes, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes as a request and read one response (status, headers, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(raw)
        await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
    return status, headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def polling_handshake(port: int) -> str:
    status, _, body = await http(port, get("/socket.io/?EIO=4&transport=polling"))
    assert status == 200 and body.startswith(b"0{"), body
    return json.loads(body[1:])["sid"]


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


class Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)


# -- encode once --------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_room_broadcast_encodes_and_frames_once(monkeypatch: pytest.MonkeyPatch, binary: bool) -> None:
    async with running() as server:
        port = server.port
        assert port
        clients = await asyncio.gather(*(RawClient.open(port) for _ in range(N_CLIENTS)))
        outsider = await RawClient.open(port)
        try:
            for client in [*clients, outsider]:
                await client.connect_nsp("/")
            for client in clients:
                rooms = await client.call(0, "join", "fans")
                assert "fans" in rooms[0]
            assert len(server.main.adapter.rooms["fans"]) == N_CLIENTS

            encodes = Counter(sio_codec.encode)
            text_frames = Counter(outbound.text_frame)
            binary_frames = Counter(outbound.binary_frame)
            monkeypatch.setattr(sio_codec, "encode", encodes)
            monkeypatch.setattr(outbound, "text_frame", text_frames)
            monkeypatch.setattr(outbound, "binary_frame", binary_frames)
            written: list[tuple[WebSocketTransport, bytes]] = []
            original_write = WebSocketTransport.write

            def recording_write(self: WebSocketTransport, frames: bytes) -> None:
                written.append((self, frames))
                original_write(self, frames)

            monkeypatch.setattr(WebSocketTransport, "write", recording_write)

            payload: list[Any] = [{"score": 3, "team": "blue"}, "é✓"]
            if binary:
                payload.append(b"\x00\x01\xfe\xff" * 64)
            server.to("fans").emit("goal", *payload)
            monkeypatch.undo()  # stop counting before anything else (pongs, acks) runs

            assert encodes.calls == 1
            assert text_frames.calls == 1
            assert binary_frames.calls == (1 if binary else 0)
            assert len(written) == N_CLIENTS
            assert len({id(ws) for ws, _ in written}) == N_CLIENTS
            first = written[0][1]
            assert all(frames is first for _, frames in written), "every recipient gets the same bytes object"

            received = await asyncio.gather(*(client.recv() for client in clients))
            if binary:
                attachments = await asyncio.gather(*(client.recv() for client in clients))
                assert set(received) == {'451-["goal",{"score":3,"team":"blue"},"é✓",{"_placeholder":true,"num":0}]'}
                assert set(attachments) == {b"\x00\x01\xfe\xff" * 64}
            else:
                assert set(received) == {'42["goal",{"score":3,"team":"blue"},"é✓"]'}
            with pytest.raises(TimeoutError):
                await outsider.recv(timeout=0.3)
        finally:
            await asyncio.gather(*(client.close() for client in [*clients, outsider]))


# -- malformed input ----------------------------------------------------------------------------


async def test_malformed_input_costs_only_the_sender(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    async with running(max_payload=MAX_PAYLOAD, ping_interval_ms=1000, ping_timeout_ms=500) as server:
        port = server.port
        assert port
        bystander = await RawClient.open(port)
        await bystander.connect_nsp("/")

        # garbage that is not HTTP at all
        status, _, _ = await http(port, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
        assert status == 400

        # an Engine.IO version we do not speak, an unknown transport, an unknown session
        status, _, body = await http(port, get("/socket.io/?EIO=3&transport=polling"))
        assert (status, json.loads(body)["code"]) == (400, 5)
        status, _, body = await http(port, get("/socket.io/?EIO=4&transport=carrier-pigeon"))
        assert (status, json.loads(body)["code"]) == (400, 0)
        status, _, body = await http(port, get("/socket.io/?EIO=4&transport=polling&sid=no-such-session"))
        assert (status, json.loads(body)) == (400, {"code": 1, "message": "Session ID unknown"})

        # a POST body above max_payload
        sid = await polling_handshake(port)
        big = b"4" + b"x" * (MAX_PAYLOAD + 100)
        status, _, _ = await http(
            port,
            f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(big)}\r\n\r\n".encode() + big,
        )
        assert status == 413

        # a second GET while the first is still held
        sid = await polling_handshake(port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(get(f"/socket.io/?EIO=4&transport=polling&sid={sid}"))
            await writer.drain()
            await wait_until(lambda: server.engine.sessions[sid].pending_get is not None)
            status, _, _ = await http(port, get(f"/socket.io/?EIO=4&transport=polling&sid={sid}"))
            assert status == 400
            status, _, body = await read_response(reader)
            assert (status, body) == (200, b"1"), "the held GET is released with a close packet"
        finally:
            writer.close()
        assert sid not in server.engine.sessions

        # a WebSocket message above max_payload
        greedy = await RawClient.open(port)
        await greedy.connect_nsp("/")
        await greedy.ws.send("4" + "x" * (MAX_PAYLOAD + 100))
        assert await greedy.closed_code() == 1009

        # an unknown namespace is refused, the connection stays usable
        wanderer = await RawClient.open(port)
        await wanderer.ws.send("40/x,")
        assert await wanderer.recv() == '44/x,{"message":"Invalid namespace"}'
        await wanderer.connect_nsp("/")
        assert await wanderer.call(7, "echo", "still here") == ["still here"]

        # an EVENT whose payload is not an array closes that connection only
        vandal = await RawClient.open(port)
        await vandal.connect_nsp("/")
        await vandal.ws.send("42{}")
        await vandal.closed_code()
        assert await bystander.call(1, "echo", "unharmed") == ["unharmed"]
        assert await wanderer.call(8, "echo", b"x".hex()) == ["78"]

        # a fresh client gets full service
        fresh = await RawClient.open(port)
        sid = await fresh.connect_nsp("/")
        assert await fresh.call(3, "join", "after") == [sorted([sid, "after"])]
        assert server.engine.stats.bad_packets.get("socketio", 0) >= 1

        for client in (bystander, greedy, wanderer, vandal, fresh):
            await client.close()
        # abandoned polling sessions go when their ping times out; nothing else may linger
        await wait_until(lambda: not server.engine.sessions, timeout=TIMEOUT)
        await wait_until(lambda: not server.main.sockets, timeout=TIMEOUT)
        assert not any(room for room in server.main.adapter.rooms), server.main.adapter.rooms
    # every refusal above was handled on purpose: no handler crashed along the way
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, failures
