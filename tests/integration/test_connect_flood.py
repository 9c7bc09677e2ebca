"""One socket per namespace per connection, whatever a client sends while middlewares run.

1. Against the standalone gateway (`python -m gateway`, JWT auth, presence in a real Redis):
   raw WebSockets each write 500 CONNECTs with a valid token in ONE write. Each gets at most one
   CONNECT reply; once they close, /stats is back to its baseline, presence holds only the user
   who is still connected, and a company broadcast is delivered exactly once. (Before: up to 376
   replies per connection, orphan sockets that outlived it, users present forever, thousands of
   deliveries for one broadcast.)
2. In process, a namespace whose async middleware sleeps (and joins a room): CONNECTs repeated
   meanwhile start no second socket; a CONNECT for the joined namespace closes the connection
   (as socket.io 4.8); a connection closed meanwhile admits nothing and leaves no room behind; a
   refused connection can try again and is still closed by CONNECT_TIMEOUT_MS if it never joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import parse_uri

from gateway.config import Settings
from gateway import ConnectionRefused, Server, Socket
from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.integration.test_encode_once import RawClient
from tests.integration.test_standalone import API_KEY, ORIGIN, PRESENCE_TIMEOUT_MS, Client, api, cluster_env, token
from tests.ports import LOOPBACK

TIMEOUT = 5.0
CONNECTS_PER_WRITE = 500
FLOODERS = 8
# Replies to a burst arrive within milliseconds on loopback; a connection that stayed quiet this
# long after its burst has said everything it will say.
QUIET_S = 0.5
PRESENCE_LEAVE_GRACE_MS = 0  # another engineer's setting; 0 = leave at once, so the bound is the timeout


class FloodClient:
    """A client WebSocket driven through the websockets library's Sans-I/O protocol, so that a
    whole burst of frames leaves in one write (the asyncio client writes frame by frame)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.messages: list[str | bytes] = []
        self.closed = False

    @classmethod
    async def open(cls, port: int) -> "FloodClient":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), TIMEOUT)
        uri = parse_uri(f"ws://{LOOPBACK}:{port}/socket.io/?EIO=4&transport=websocket")
        protocol = ClientProtocol(uri, origin=Origin(ORIGIN), max_size=None)
        protocol.send_request(protocol.connect())
        client = cls(reader, writer, protocol)
        client._flush()
        deadline = time.monotonic() + TIMEOUT
        while not client.messages:
            assert not client.closed and time.monotonic() < deadline, "no Engine.IO open packet"
            await client._read(deadline - time.monotonic())
        opening = client.messages.pop(0)
        assert isinstance(opening, str) and opening.startswith("0{"), opening
        return client

    def _flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            self.writer.write(data)

    async def _read(self, timeout: float) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), max(timeout, 0.001))
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
            self.closed = True
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                assert event.status_code == 101, event
            elif isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.messages.append(event.data.decode())
                elif event.opcode is Opcode.BINARY:
                    self.messages.append(event.data)
                elif event.opcode is Opcode.CLOSE:
                    self.closed = True
        self._flush()  # pongs and the close handshake answer
        if self.protocol.state is State.CLOSED:
            self.closed = True

    def burst(self, texts: list[str]) -> None:
        """Every text as its own WebSocket frame, all in one write."""
        for text in texts:
            self.protocol.send_text(text.encode())
        chunks = self.protocol.data_to_send()
        self.writer.write(b"".join(chunks))

    async def read_until_quiet(self, quiet: float = QUIET_S, limit: float = TIMEOUT) -> None:
        """Collect messages until the server closes or says nothing for `quiet` seconds."""
        deadline = time.monotonic() + limit
        while not self.closed and time.monotonic() < deadline:
            try:
                await self._read(min(quiet, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return

    async def close(self) -> None:
        if not self.closed and self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._flush()
            with contextlib.suppress(Exception):
                await self.read_until_quiet(limit=1.0)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


def connect_replies(messages: list[str | bytes]) -> list[str]:
    """CONNECT (`40`) and CONNECT_ERROR (`44`) packets for the main namespace."""
    return [m for m in messages if isinstance(m, str) and m[:2] in ("40", "44")]


def main_sockets(node: GatewayProcess) -> int:
    status, body = node.get("/stats")
    assert status == 200, body
    return int(json.loads(body)["namespaces"]["/"]["sockets"])


def deliveries(node: GatewayProcess) -> int:
    status, body = node.get("/metrics")
    assert status == 200
    match = re.search(rb"^sio_gateway_deliveries(?:_total)? (\d+(?:\.\d+)?)$", body, re.M)
    assert match, body[:2000]
    return int(float(match.group(1)))


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s")
        await asyncio.sleep(0.05)


# -- 1. the standalone gateway ---------------------------------------------------------------------


@pytest.fixture
def gateway_node(redis_server: RedisServerProcess, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = cluster_env(
        redis_server.url,
        AUTH_MODE="jwt",
        PRESENCE_ROOMS="company:*",
        PRESENCE_LEAVE_GRACE_MS=str(PRESENCE_LEAVE_GRACE_MS),
        LOG_LEVEL="WARNING",  # one `sio_repeated_connect` line per flooding connection is enough
    )
    node = GatewayProcess("gateway", env=env, log_dir=tmp_path)
    node.start()
    try:
        yield node
    finally:
        node.stop(timeout=5)


async def test_connect_flood_leaves_nothing_behind(gateway_node: GatewayProcess) -> None:
    watcher = await Client("watcher").connect(gateway_node.url, token("watcher", companies=("F",)))
    flooders: list[FloodClient] = []
    try:
        baseline = main_sockets(gateway_node)
        assert baseline == 1
        users = [f"flood-{i}" for i in range(FLOODERS)]
        flooders = list(await asyncio.gather(*(FloodClient.open(gateway_node.port) for _ in users)))
        for flooder, user in zip(flooders, users):
            connect = "40" + json.dumps({"token": token(user, companies=("F",))})
            flooder.burst([connect] * CONNECTS_PER_WRITE)
        await asyncio.gather(*(f.read_until_quiet() for f in flooders))
        for flooder, user in zip(flooders, users):
            replies = connect_replies(flooder.messages)
            assert len(replies) <= 1, f"{user}: {len(replies)} CONNECT replies to one burst"
            assert replies and replies[0].startswith('40{"sid":'), (user, replies)
        await asyncio.gather(*(f.close() for f in flooders))

        await until(lambda: main_sockets(gateway_node) == baseline, TIMEOUT, f"/stats sockets back to {baseline}")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            bound = (PRESENCE_LEAVE_GRACE_MS + PRESENCE_TIMEOUT_MS) / 1000 + 1
            deadline = time.monotonic() + bound
            while True:
                status, body = await api(http, "GET", f"{gateway_node.url}/api/presence/company:F")
                assert status == 200, body
                if body["users"] == ["watcher"]:
                    break
                assert time.monotonic() < deadline, f"presence after {bound}s: {body}"
                await asyncio.sleep(0.1)
            # Every flooder's presence announcements are out (each joined once, then left) before
            # the deliveries of one broadcast are counted.
            for user in users:
                await watcher.wait_event("presence:leave", lambda e, user=user: e == {"room": "company:F", "user": user})
            before = deliveries(gateway_node)
            status, _ = await api(http, "POST", f"{gateway_node.url}/api/emit", key=API_KEY, body={"rooms": ["company:F"], "event": "news", "data": {"n": 1}})
            assert status == 200
            assert await watcher.wait_event("news") == {"n": 1}
        assert deliveries(gateway_node) - before == 1
        assert sorted(e["user"] for e in watcher.events["presence:join"] if e["user"] != "watcher") == users, "a user was announced twice"
    finally:
        for flooder in flooders:
            await flooder.close()
        await watcher.close()


# -- 2. in process: a slow middleware ------------------------------------------------------------


MIDDLEWARE_S = 0.3
CONNECT_TIMEOUT_MS = 1000
SLOW = "/slow"


class SlowApp:
    """A server whose `/slow` namespace has an async middleware that joins `vetted` and sleeps,
    refusing `auth.token == "bad"`; it records every admitted socket."""

    def __init__(self) -> None:
        self.server = Server(Settings(host=LOOPBACK, port=0, log_level="WARNING", connect_timeout_ms=CONNECT_TIMEOUT_MS))
        self.admitted: list[Socket] = []
        slow = self.nsp = self.server.of(SLOW)

        @slow.use
        async def vet(socket: Socket) -> None:
            socket.join("vetted")
            await asyncio.sleep(MIDDLEWARE_S)
            if socket.handshake["auth"].get("token") == "bad":
                raise ConnectionRefused("unauthorized")

        @slow.on("connection")
        def connected(socket: Socket) -> None:
            self.admitted.append(socket)

    def rooms(self) -> set[Any]:
        return set(self.nsp.adapter.rooms)


@pytest.fixture
async def slow_app() -> AsyncIterator[SlowApp]:
    app = SlowApp()
    await app.server.start(port=0)
    try:
        yield app
    finally:
        await asyncio.wait_for(app.server.close(), TIMEOUT)


async def silent_on_slow(raw: RawClient) -> list[str | bytes]:
    """What arrives for `/slow` within QUIET_S."""
    seen: list[str | bytes] = []
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            message = await raw.recv(QUIET_S)
            if isinstance(message, str) and message.startswith(("40" + SLOW, "44" + SLOW)):
                seen.append(message)
    return seen


async def test_repeated_connect_while_the_middleware_runs(slow_app: SlowApp) -> None:
    raw = await RawClient.open(slow_app.server.port or 0)
    try:
        for _ in range(5):  # all within the middleware's sleep
            await raw.ws.send("40" + SLOW + ',{"token":"ok"}')
            await asyncio.sleep(0.02)
        reply = await raw.recv()
        assert isinstance(reply, str) and reply.startswith("40" + SLOW + ',{"sid":'), reply
        assert await silent_on_slow(raw) == [], "a second CONNECT reply"
        assert [s.id for s in slow_app.admitted] == list(slow_app.nsp.sockets) and len(slow_app.admitted) == 1
        assert slow_app.server.engine.stats.bad_packets.get("socketio") == 4

        # Joined: a CONNECT for it again is an invalid state; socket.io closes the connection.
        await raw.ws.send("40" + SLOW + ',{"token":"ok"}')
        await raw.closed_code()
        await until(lambda: not slow_app.nsp.sockets, TIMEOUT, "socket gone")
        assert slow_app.rooms() == set()
        assert len(slow_app.admitted) == 1
    finally:
        await raw.close()


async def test_connection_closed_while_the_middleware_runs(slow_app: SlowApp) -> None:
    raw = await RawClient.open(slow_app.server.port or 0)
    await raw.ws.send("40" + SLOW + ',{"token":"ok"}')
    await asyncio.sleep(MIDDLEWARE_S / 3)
    assert slow_app.rooms() == {"vetted"}  # the middleware is running
    await raw.close()
    await asyncio.sleep(MIDDLEWARE_S + 0.2)
    assert slow_app.admitted == [] and not slow_app.nsp.sockets
    assert slow_app.rooms() == set(), "a room joined by the middleware outlived the connection"
    assert not slow_app.server.engine.sessions


async def test_refused_connection_may_retry_and_still_times_out(slow_app: SlowApp) -> None:
    raw = await RawClient.open(slow_app.server.port or 0)
    try:
        await raw.ws.send("40" + SLOW + ',{"token":"bad"}')
        refused = await raw.recv()
        assert refused == "44" + SLOW + ',{"message":"unauthorized"}', refused
        assert slow_app.rooms() == set()
        await raw.ws.send("40" + SLOW + ',{"token":"ok"}')  # no longer pending: a new attempt
        reply = await raw.recv()
        assert isinstance(reply, str) and reply.startswith("40" + SLOW + ',{"sid":'), reply
        assert len(slow_app.admitted) == 1
    finally:
        await raw.close()

    # A connection all of whose CONNECTs are refused joins no namespace: CONNECT_TIMEOUT_MS closes it.
    raw = await RawClient.open(slow_app.server.port or 0)
    try:
        started = time.monotonic()
        await raw.ws.send("40" + SLOW + ',{"token":"bad"}')
        assert (await raw.recv()).startswith("44" + SLOW)
        await raw.closed_code(timeout=CONNECT_TIMEOUT_MS / 1000 + 2)
        assert time.monotonic() - started < CONNECT_TIMEOUT_MS / 1000 + 1
    finally:
        await raw.close()
