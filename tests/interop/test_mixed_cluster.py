"""A mixed cluster: a Node.js socket.io 4.8 server with @socket.io/redis-adapter 8.3 and one of our
gateway processes on the same redis-server.

The Node side (server, clients, @socket.io/redis-emitter) runs in tests/interop/driver.mjs; our
node is `python -m tests.sio_app --redis URL`. Every client is a real Node socket.io-client, so
what crosses between the two servers is exactly what a Node-only cluster would exchange.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.emitter import Emitter
from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.node_driver import NodeDriver
from tests.ports import free_port

APP = "tests.sio_app"
EVENT_TIMEOUT = 5.0
SILENCE_S = 0.3
BINARY = bytes(range(256))
WS = {"transports": ["websocket"]}


@dataclass
class Mixed:
    redis: RedisServerProcess
    gateway: GatewayProcess
    node: NodeDriver
    node_url: str

    async def connect(self, name: str, on_python: bool, auth: dict[str, Any] | None = None) -> str:
        """A Node client on our gateway (`on_python`) or on the Node server; returns its id."""
        url = self.gateway.url if on_python else self.node_url
        result = await self.node.call("client.connect", name=name, url=url, opts={**WS, "auth": auth or {"who": name}})
        await self.node.wait_event(ev="event", name=name, event="welcome")
        return result["id"]

    async def emit(self, name: str, event: str, *args: Any) -> Any:
        """Emit from client `name` and return the server's first ack argument."""
        answer = await self.node.call("client.emit", name=name, event=event, args=list(args), ack=True, timeout=8000)
        return answer[0] if answer else None

    async def received(self, name: str, event: str) -> list[Any]:
        return (await self.node.wait_event(ev="event", name=name, event=event, timeout=EVENT_TIMEOUT))["args"]

    def saw(self, name: str, event: str) -> bool:
        return any(e.get("name") == name and e.get("event") == event for e in self.node.pending_events())


def wait_healthy(node: GatewayProcess, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, raw = node.get("/health")
        body = json.loads(raw)
        if status == 200 and body.get("adapter", {}).get("status") == "healthy":
            return
        time.sleep(0.05)
    raise AssertionError(f"gateway not healthy in the cluster: {body}\n{node.log_tail()}")


async def wait_servers(url: str, count: int, timeout: float = 5.0) -> None:
    """Both servers hold their request-channel subscription (what every request counts on)."""
    client = aioredis.from_url(url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            numsub = dict(await client.pubsub_numsub("socket.io-request#/#", "socket.io-request#/chat#"))
            if all(n == count for n in numsub.values()):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"expected {count} servers, NUMSUB says {numsub}")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@pytest.fixture
def gateway_env() -> dict[str, str]:
    """Extra environment of our gateway process (tests override it by parametrizing)."""
    return {}


@pytest.fixture
async def mixed(redis_server: RedisServerProcess, tmp_path: Path, gateway_env: dict[str, str]) -> AsyncIterator[Mixed]:
    gateway = GatewayProcess(APP, "--redis", redis_server.url, log_dir=tmp_path, env=gateway_env)
    driver = NodeDriver(label="mixed")
    try:
        await asyncio.to_thread(gateway.start)
        await asyncio.to_thread(wait_healthy, gateway)
        await driver.start()
        port = (await driver.call("server.start", port=free_port(), adapter="redis", redisUrl=redis_server.url, requestsTimeout=3000))["port"]
        await wait_servers(redis_server.url, 2)
        yield Mixed(redis_server, gateway, driver, f"http://127.0.0.1:{port}")
    finally:
        await driver.close()
        gateway.stop(timeout=5)


async def test_broadcasts_cross_both_ways_binary_included(mixed: Mixed) -> None:
    await mixed.connect("n1", on_python=False)
    await mixed.connect("p1", on_python=True)
    p2 = await mixed.connect("p2", on_python=True)
    for name in ("n1", "p1", "p2"):
        await mixed.emit(name, "join", "mix")

    payload = ["x", BINARY, {"nested": [b"\x00\xff"], "n": None, "f": 1.5}]
    # Node server -> our clients (a client-triggered nsp.to(room).emit on the Node server)
    assert await mixed.emit("n1", "broadcast", {"rooms": ["mix"], "event": "from-node", "args": payload}) is True
    assert await mixed.received("p1", "from-node") == payload
    assert await mixed.received("p2", "from-node") == payload
    assert await mixed.received("n1", "from-node") == payload

    # our server -> Node clients, with an except that names one of our sockets
    assert await mixed.emit("p1", "broadcast", {"rooms": ["mix"], "except": [p2], "event": "from-python", "args": payload}) is True
    assert await mixed.received("n1", "from-python") == payload
    assert await mixed.received("p1", "from-python") == payload

    # Node's io.except(room).emit: namespace-wide, so no room channel; our node must apply except
    await mixed.node.call("server.broadcast", except_=["mix"], event="not-mix", args=[1])
    await mixed.node.call("server.broadcast", rooms=["mix"], event="marker", args=[2])
    assert await mixed.received("p2", "marker") == [2]
    await asyncio.sleep(SILENCE_S)
    assert not mixed.saw("p2", "from-python"), "p2 was excluded"
    assert not mixed.saw("p1", "not-mix") and not mixed.saw("p2", "not-mix")

    # another namespace, both directions
    await mixed.node.call("client.connect", name="pchat", url=mixed.gateway.url, nsp="/chat", opts=WS)
    await mixed.node.call("client.connect", name="nchat", url=mixed.node_url, nsp="/chat", opts=WS)
    await mixed.node.call("server.broadcast", nsp="/chat", event="chat-from-node", args=[BINARY])
    assert await mixed.received("pchat", "chat-from-node") == [BINARY]
    await mixed.emit("pchat", "broadcast", {"event": "chat-from-python", "args": [3]})
    assert await mixed.received("nchat", "chat-from-python") == [3]
    await asyncio.sleep(SILENCE_S)
    assert not mixed.saw("p1", "chat-from-node") and not mixed.saw("n1", "chat-from-python")


async def test_fetch_sockets_and_all_rooms_both_ways(mixed: Mixed) -> None:
    n1 = await mixed.connect("n1", on_python=False, auth={"token": "n"})
    p1 = await mixed.connect("p1", on_python=True, auth={"token": "p"})
    await mixed.emit("n1", "join", "fetch-room")
    await mixed.emit("p1", "join", "fetch-room")
    await mixed.emit("p1", "join", 123)  # a numeric room stays a number on the wire

    # Node's fetchSockets sees our socket, its rooms, data and handshake
    found = {s["id"]: s for s in await mixed.node.call("server.fetch_sockets", rooms=["fetch-room"])}
    assert set(found) == {n1, p1}
    assert found[p1]["data"] == {"server": "python", "auth": {"token": "p"}}
    assert found[p1]["auth"] == {"token": "p"}
    # the product app may add rooms of its own (e.g. per-user rooms): ours must all be there
    assert {p1, "fetch-room", 123} <= set(found[p1]["rooms"])
    assert found[p1]["rooms"][0] == p1, "a socket's own room comes first, as in Node"

    # ours sees theirs
    ours = {s["id"]: s for s in await mixed.emit("p1", "fetch", {"rooms": ["fetch-room"]})}
    assert set(ours) == {n1, p1}
    assert ours[n1]["data"] == {"server": "node", "auth": {"token": "n"}}
    assert ours[n1]["rooms"] == sorted([n1, "fetch-room"])  # Node adds no rooms of its own

    rooms = await mixed.emit("p1", "all-rooms")
    assert {n1, p1, "fetch-room", 123} <= set(rooms)
    assert await mixed.emit("p1", "server-count") == 2


async def test_server_side_emit_with_ack_both_ways(mixed: Mixed) -> None:
    await mixed.connect("p1", on_python=True)
    answers = await mixed.node.call("server.server_side_emit", event="ping-servers", args=[{"from": "node"}], ack=True)
    assert answers == [{"server": "python", "arg": {"from": "node"}}]
    assert await mixed.emit("p1", "ssemit", {"from": "python"}) == [{"server": "node", "arg": {"from": "python"}}]


@pytest.mark.parametrize("gateway_env", [{"PUBLISH_ON_SPECIFIC_RESPONSE_CHANNEL": "true"}])
async def test_answers_on_the_requesters_own_channel(mixed: Mixed) -> None:
    """With publishOnSpecificResponseChannel our node answers on `P-response#N#<uid>#`; Node
    listens there, and serverSideEmit acks still use the shared channel (spec 2.5)."""
    n1 = await mixed.connect("n1", on_python=False)
    p1 = await mixed.connect("p1", on_python=True)
    for name in ("n1", "p1"):
        await mixed.emit(name, "join", "own-channel")
    spy = aioredis.from_url(mixed.redis.url)
    pubsub = spy.pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe("socket.io-response#/#*")
    try:
        assert {s["id"] for s in await mixed.node.call("server.fetch_sockets", rooms=["own-channel"])} == {n1, p1}
        message = None
        deadline = time.monotonic() + 2.0
        while message is None and time.monotonic() < deadline:  # the psubscribe reply reads as None
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
    finally:
        await pubsub.aclose()
        await spy.aclose()
    assert message is not None
    assert message["channel"].startswith(b"socket.io-response#/#") and message["channel"] != b"socket.io-response#/#"
    assert p1.encode() in message["data"]
    answers = await mixed.node.call("server.server_side_emit", event="ping-servers", args=[1], ack=True)
    assert answers == [{"server": "python", "arg": 1}]
    acks = await mixed.node.call("server.broadcast_ack", rooms=["own-channel"], event="q", args=[], timeout=3000)
    assert sorted(acks) == ["ack:q", "ack:q"]
    assert {s["id"] for s in await mixed.emit("p1", "fetch", {"rooms": ["own-channel"]})} == {n1, p1}


async def test_acked_broadcasts_collect_clients_of_both_servers(mixed: Mixed) -> None:
    await mixed.connect("n1", on_python=False)
    await mixed.connect("p1", on_python=True)
    for name in ("n1", "p1"):
        await mixed.emit(name, "join", "ack-room")
        # only the first ack argument crosses the cluster (binary travels as msgpack bin)
        await mixed.node.call("client.ack_reply", name=name, event="q", args=[{"who": name, "bin": BINARY}, "ignored"])
    expected = [{"who": "n1", "bin": BINARY}, {"who": "p1", "bin": BINARY}]

    node_side = await mixed.node.call("server.broadcast_ack", rooms=["ack-room"], event="q", args=[1, BINARY], timeout=3000)
    assert sorted(node_side, key=lambda a: a["who"]) == expected
    ours = await mixed.emit("p1", "bcast-ack", {"rooms": ["ack-room"], "event": "q", "args": [2, BINARY], "timeout": 3})
    assert sorted(ours, key=lambda a: a["who"]) == expected
    # both clients got the event with its binary argument, once each
    for name in ("n1", "p1"):
        assert await mixed.received(name, "q") == [1, BINARY]
        assert await mixed.received(name, "q") == [2, BINARY]
    # nobody in the room: every server answers a client count of 0, so both complete at once
    started = time.monotonic()
    assert await mixed.node.call("server.broadcast_ack", rooms=["ack-nobody"], event="q", timeout=3000) == []
    assert await mixed.emit("p1", "bcast-ack", {"rooms": ["ack-nobody"], "event": "q", "timeout": 3}) == []
    assert time.monotonic() - started < 2.5


async def test_node_emitter_and_remote_operations_reach_our_sockets(mixed: Mixed) -> None:
    await mixed.connect("n1", on_python=False)
    p1 = await mixed.connect("p1", on_python=True)
    await mixed.connect("p2", on_python=True)
    await mixed.emit("p1", "join", "em-room")
    await mixed.emit("n1", "join", "em-room")

    # @socket.io/redis-emitter -> our clients, binary included
    await mixed.node.call("emitter.start", redisUrl=mixed.redis.url)
    await mixed.node.call("emitter.emit", rooms=["em-room"], event="from-emitter", args=["e", BINARY])
    assert await mixed.received("p1", "from-emitter") == ["e", BINARY]
    assert await mixed.received("n1", "from-emitter") == ["e", BINARY]
    await mixed.node.call("emitter.sockets_join", rooms=["em-room"], join="em-joined")
    await mixed.node.call("emitter.server_side_emit", event="note", args=["from-emitter"])

    # Node's socketsJoin joins our sockets
    await mixed.node.call("server.sockets_join", rooms=[p1], join="node-joined")
    await until_rooms(mixed, "p1", {"em-joined", "node-joined"})
    await mixed.node.call("server.broadcast", rooms=["node-joined"], event="joined-news", args=[])
    await mixed.received("p1", "joined-news")
    assert ["from-emitter"] in await mixed.emit("p2", "notes")

    # our socketsJoin joins Node's sockets
    await mixed.emit("p1", "sockets-join", {"rooms": ["em-room"], "join": "py-joined"})
    await until(lambda: node_fetch(mixed, "py-joined"), 2)

    # Node's socketsLeave, then disconnectSockets, reach our clients
    await mixed.node.call("server.sockets_leave", rooms=["em-room"], leave="em-joined")
    await until(lambda: node_fetch(mixed, "em-joined"), 0)
    await mixed.node.call("server.disconnect_sockets", rooms=["node-joined"], close=False)
    event = await mixed.node.wait_event(ev="disconnect", name="p1", timeout=EVENT_TIMEOUT)
    assert event["reason"] == "io server disconnect"
    assert not any(e.get("ev") == "disconnect" and e.get("name") == "p2" for e in mixed.node.pending_events())
    # close=True: Node's client is told "io server disconnect" (a DISCONNECT packet precedes the
    # close, so the client does not reconnect on its own); ours must say the same
    for name in ("p2", "n1"):
        await mixed.emit(name, "join", "close-room")
    await mixed.node.call("server.disconnect_sockets", rooms=["close-room"], close=True)
    for name in ("n1", "p2"):
        event = await mixed.node.wait_event(ev="disconnect", name=name, timeout=EVENT_TIMEOUT)
        assert event["reason"] == "io server disconnect", (name, event)


async def test_disconnect_with_close_over_polling_matches_node(mixed: Mixed) -> None:
    """disconnectSockets(true) to long-polling clients: Node's client is told "io server
    disconnect" before the connection closes (so it stays disconnected); ours must be too."""
    polling = {"transports": ["polling"]}
    for name, url in (("n-poll", mixed.node_url), ("p-poll", mixed.gateway.url)):
        await mixed.node.call("client.connect", name=name, url=url, opts=polling)
        await mixed.node.wait_event(ev="event", name=name, event="welcome")
        await mixed.emit(name, "join", "poll-close")
    await mixed.node.call("server.disconnect_sockets", rooms=["poll-close"], close=True)
    reasons = {}
    for name in ("n-poll", "p-poll"):
        reasons[name] = (await mixed.node.wait_event(ev="disconnect", name=name, timeout=EVENT_TIMEOUT))["reason"]
    assert reasons == {"n-poll": "io server disconnect", "p-poll": "io server disconnect"}


async def test_python_emitter_reaches_node_and_our_clients(mixed: Mixed) -> None:
    await mixed.connect("n1", on_python=False)
    await mixed.connect("p1", on_python=True)
    for name in ("n1", "p1"):
        await mixed.emit(name, "join", "pyem-room")
    async with Emitter(mixed.redis.url) as emitter:
        await emitter.to("pyem-room").emit("from-py-emitter", BINARY, {"k": [1, 2]})
        assert await mixed.received("n1", "from-py-emitter") == [BINARY, {"k": [1, 2]}]
        assert await mixed.received("p1", "from-py-emitter") == [BINARY, {"k": [1, 2]}]
        await emitter.in_("pyem-room").disconnect_sockets()
    await mixed.node.wait_event(ev="disconnect", name="n1", timeout=EVENT_TIMEOUT)
    await mixed.node.wait_event(ev="disconnect", name="p1", timeout=EVENT_TIMEOUT)


async def node_fetch(mixed: Mixed, room: str) -> int:
    return len(await mixed.node.call("server.fetch_sockets", rooms=[room]))


async def until_rooms(mixed: Mixed, name: str, rooms: set[str]) -> None:
    async def current() -> bool:
        return rooms <= set((await mixed.emit(name, "whoami"))["rooms"])

    await until(current, True)


async def until(probe: Any, expected: Any, timeout: float = EVENT_TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = None
    while loop.time() < deadline:
        value = await probe()
        if value == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expected!r}, last saw {value!r}")
