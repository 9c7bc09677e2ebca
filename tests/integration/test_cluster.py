"""A cluster of our gateway processes on one real redis-server (the Redis cluster bridge).

Each node is `python -m tests.sio_app --redis URL` (TEST APP CONTRACT plus the cluster events
appended to tests/sio_app.py); clients are python-socketio AsyncClients over WebSocket, each
connected to one node. Everything a client sees from another node went through Redis.

The shared three-node cluster serves the tests that leave it intact (each test uses its own
rooms and clients); tests that kill a node or publish garbage get a cluster of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import socketio

from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess

APP = "tests.sio_app"
EVENT_TIMEOUT = 5.0
CALL_TIMEOUT = 8.0
# How long a client that must NOT receive something is watched after a later message from the
# same sender already arrived (Redis keeps one publisher's messages in order).
SILENCE_S = 0.3
BINARY = bytes(range(256))


# -- processes -------------------------------------------------------------------------------------


class Cluster:
    """A redis-server plus gateway processes on it; everything stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.redis = RedisServerProcess(workdir)
        self.workdir = workdir
        self.nodes: list[GatewayProcess] = []

    def start(self, nodes: int) -> "Cluster":
        self.redis.start()
        for _ in range(nodes):
            self.add_node()
        return self

    def add_node(self) -> GatewayProcess:
        node = GatewayProcess(APP, "--redis", self.redis.url, log_dir=self.workdir)
        self.nodes.append(node)
        node.start()
        wait_healthy(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(timeout=5)
        self.redis.stop(signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"--- node :{n.port}\n{n.log_tail(15)}" for n in self.nodes)


def wait_healthy(node: GatewayProcess, timeout: float = 5.0) -> None:
    """/health answers before the Redis links are proven; wait until both are up."""
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, raw = node.get("/health")
        body = json.loads(raw)
        if status == 200 and body.get("adapter", {}).get("status") == "healthy":
            return
        time.sleep(0.05)
    raise AssertionError(f"node :{node.port} not healthy in the cluster: {body}\n{node.log_tail()}")


def metric(node: GatewayProcess, name: str) -> float:
    status, raw = node.get("/metrics")
    assert status == 200
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", raw.decode(), re.MULTILINE)
    assert match, f"{name} not in /metrics of :{node.port}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start(3)
    finally:
        cluster.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Callable[[int], Cluster]]:
    clusters: list[Cluster] = []

    def make(nodes: int) -> Cluster:
        cluster = Cluster(tmp_path)
        clusters.append(cluster)
        return cluster.start(nodes)

    yield make
    for cluster in clusters:
        cluster.stop()


# -- clients ---------------------------------------------------------------------------------------


class Peer:
    """A python-socketio client that records every event and acknowledges event `q`."""

    def __init__(self, label: str, nsp: str = "/") -> None:
        self.label = label
        self.nsp = nsp
        self.client = socketio.AsyncClient(reconnection=False)
        self.received: list[tuple[str, list[Any]]] = []
        self.disconnected = asyncio.Event()
        self._changed = asyncio.Condition()

        async def any_event(event: str, *args: Any) -> Any:
            async with self._changed:
                self.received.append((event, list(args)))
                self._changed.notify_all()
            if event == "q":
                return {"from": self.label, "args": list(args)}
            return None

        def disconnect(*_: Any) -> None:
            self.disconnected.set()

        self.client.on("*", any_event, namespace=nsp)
        self.client.on("disconnect", disconnect, namespace=nsp)

    @property
    def id(self) -> str:
        sid = self.client.get_sid(self.nsp)
        assert sid is not None
        return sid

    async def connect(self, node: GatewayProcess) -> "Peer":
        await self.client.connect(node.url, transports=["websocket"], namespaces=[self.nsp], wait_timeout=EVENT_TIMEOUT)
        await self.wait("welcome")
        return self

    async def call(self, event: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        data: Any = args[0] if len(args) == 1 else (tuple(args) if args else None)
        return await self.client.call(event, data, namespace=self.nsp, timeout=timeout)

    async def join(self, *rooms: str) -> None:
        for room in rooms:
            await self.call("join", room)

    async def wait(self, event: str, timeout: float = EVENT_TIMEOUT) -> list[Any]:
        """Consume and return the arguments of the first `event` received."""

        def take() -> bool:
            return any(e == event for e, _ in self.received)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(take), timeout)
            except TimeoutError:
                raise AssertionError(f"{self.label} got no {event!r} within {timeout}s; got {self.received}") from None
            for i, (e, args) in enumerate(self.received):
                if e == event:
                    del self.received[i]
                    return args
        raise AssertionError("unreachable")

    def saw(self, event: str) -> bool:
        return any(e == event for e, _ in self.received)

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()
        # python-socketio keeps background tasks (and an aiohttp session) for a moment
        await asyncio.sleep(0)


@pytest.fixture
async def peers() -> AsyncIterator[Callable[[str, GatewayProcess], Any]]:
    made: list[Peer] = []

    async def connect(label: str, node: GatewayProcess, nsp: str = "/") -> Peer:
        peer = Peer(label, nsp)
        made.append(peer)
        return await peer.connect(node)

    yield connect
    await asyncio.gather(*(p.close() for p in made), return_exceptions=True)


# -- broadcasts ------------------------------------------------------------------------------------


async def test_room_broadcast_reaches_other_nodes(shared_cluster: Cluster, peers: Any) -> None:
    a_node, b_node, c_node = shared_cluster.nodes
    a = await peers("a", a_node)
    b = await peers("b", b_node)
    c = await peers("c", c_node)
    await a.join("bc-room")
    await c.join("bc-room")

    spec = {"rooms": ["bc-room"], "event": "news", "args": ["hi", BINARY, {"n": [1, 2.5, None]}]}
    assert await b.call("broadcast", spec) is True
    assert await a.wait("news") == ["hi", BINARY, {"n": [1, 2.5, None]}]
    assert await c.wait("news") == ["hi", BINARY, {"n": [1, 2.5, None]}]

    # namespace-wide from C reaches everyone, the sender included (nsp.emit semantics)
    await c.call("broadcast", {"event": "all", "args": [1]})
    for peer in (a, b, c):
        assert await peer.wait("all") == [1]
    await asyncio.sleep(SILENCE_S)
    assert not b.saw("news"), "b is not in bc-room"


async def test_except_works_across_nodes(shared_cluster: Cluster, peers: Any) -> None:
    a_node, b_node, c_node = shared_cluster.nodes
    a = await peers("a", a_node)
    b = await peers("b", b_node)
    c = await peers("c", c_node)
    await a.join("ex-room")
    await c.join("ex-room", "ex-muted")

    await b.call("broadcast", {"rooms": ["ex-room"], "except": ["ex-muted"], "event": "filtered", "args": ["x"]})
    # except a socket id (a private room) living on another node
    await b.call("broadcast", {"rooms": ["ex-room"], "except": [a.id], "event": "not-a", "args": []})
    await b.call("broadcast", {"rooms": ["ex-room"], "event": "marker", "args": []})
    assert await a.wait("filtered") == ["x"]
    await c.wait("not-a")
    await a.wait("marker")
    await c.wait("marker")  # sent after `filtered` by the same node: anything earlier is here now
    assert not c.saw("filtered"), "ex-muted members were excluded"
    assert not a.saw("not-a"), "a's own id was excluded"


async def test_other_namespace_does_not_leak(shared_cluster: Cluster, peers: Any) -> None:
    a_node, b_node, _ = shared_cluster.nodes
    a = await peers("a", a_node)
    chat_a = await peers("chat-a", a_node, "/chat")
    chat_b = await peers("chat-b", b_node, "/chat")
    assert await chat_b.call("broadcast", {"event": "chat-only", "args": [7]}) is True
    assert await chat_a.wait("chat-only") == [7]
    await chat_b.call("broadcast", {"event": "chat-marker"})
    await a.call("broadcast", {"event": "root-marker"})
    await a.wait("root-marker")
    await chat_a.wait("chat-marker")
    await asyncio.sleep(SILENCE_S)
    assert not a.saw("chat-only") and not a.saw("chat-marker")
    assert not chat_a.saw("root-marker")


# -- cluster-wide requests -------------------------------------------------------------------------


async def test_fetch_sockets_returns_sockets_of_every_node(shared_cluster: Cluster, peers: Any) -> None:
    a_node, b_node, c_node = shared_cluster.nodes
    a = await peers("a", a_node)
    b = await peers("b", b_node)
    c = await peers("c", c_node)
    await a.join("fs-room")
    await b.join("fs-room", "fs-other")
    await c.join("fs-other")

    found = await a.call("fetch", {"rooms": ["fs-room"]})
    assert sorted(s["id"] for s in found) == sorted([a.id, b.id])
    by_id = {s["id"]: s for s in found}
    # the product app may add rooms of its own (e.g. per-user rooms): ours must all be there
    assert {b.id, "fs-room", "fs-other"} <= set(by_id[b.id]["rooms"])
    assert "fs-other" not in by_id[a.id]["rooms"] and "fs-room" in by_id[a.id]["rooms"]
    assert by_id[b.id]["data"] == {"server": "python", "auth": {}}

    found = await c.call("fetch", {"rooms": ["fs-room", "fs-other"], "except": [b.id]})
    assert sorted(s["id"] for s in found) == sorted([a.id, c.id])

    everyone = {s["id"] for s in await b.call("fetch", {})}
    assert {a.id, b.id, c.id} <= everyone


async def test_all_rooms_and_server_count(shared_cluster: Cluster, peers: Any) -> None:
    a_node, _, c_node = shared_cluster.nodes
    a = await peers("a", a_node)
    c = await peers("c", c_node)
    await c.join("ar-only-on-c")
    assert await a.call("server-count") == 3
    rooms = await a.call("all-rooms")
    assert "ar-only-on-c" in rooms and c.id in rooms and a.id in rooms


async def test_server_side_emit_collects_one_answer_per_other_node(shared_cluster: Cluster, peers: Any) -> None:
    a = await peers("a", shared_cluster.nodes[0])
    answers = await a.call("ssemit", {"n": 1})
    assert answers == [{"server": "python", "arg": {"n": 1}}] * 2


async def test_broadcast_with_acks_across_nodes(shared_cluster: Cluster, peers: Any) -> None:
    a_node, b_node, c_node = shared_cluster.nodes
    a = await peers("a", a_node)
    b = await peers("b", b_node)
    c = await peers("c", c_node)
    c2 = await peers("c2", c_node)
    for peer in (a, b, c, c2):
        await peer.join("ack-room")

    acks = await b.call("bcast-ack", {"rooms": ["ack-room"], "except": [c2.id], "event": "q", "args": [5], "timeout": 3})
    assert sorted(acks, key=lambda x: x["from"]) == [{"from": label, "args": [5]} for label in ("a", "b", "c")]
    # a node with no recipient answers a client count of 0, so this still completes at once
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await a.call("bcast-ack", {"rooms": ["ack-nobody"], "event": "q", "timeout": 3}) == []
    assert loop.time() - started < 2.5


async def test_sockets_join_and_leave_across_nodes(shared_cluster: Cluster, peers: Any) -> None:
    a_node, b_node, c_node = shared_cluster.nodes
    a = await peers("a", a_node)
    b = await peers("b", b_node)
    c = await peers("c", c_node)
    await b.join("sj-src")
    await c.join("sj-src")

    assert await a.call("sockets-join", {"rooms": ["sj-src"], "join": "sj-joined"}) is True
    async def members(room: str) -> list[str]:
        return sorted(s["id"] for s in await a.call("fetch", {"rooms": [room]}))

    await until(lambda: members("sj-joined"), sorted([b.id, c.id]))
    await a.call("broadcast", {"rooms": ["sj-joined"], "event": "joined-news"})
    await b.wait("joined-news")
    await c.wait("joined-news")

    assert await a.call("sockets-leave", {"rooms": ["sj-src"], "except": [c.id], "leave": "sj-joined"}) is True
    await until(lambda: members("sj-joined"), [c.id])


async def test_disconnect_sockets_closes_remote_clients(shared_cluster: Cluster, peers: Any) -> None:
    a_node, b_node, c_node = shared_cluster.nodes
    a = await peers("a", a_node)
    b = await peers("b", b_node)
    c = await peers("c", c_node)
    keep = await peers("keep", c_node)
    for peer in (b, c, keep):
        await peer.join("dc-room")

    assert await a.call("disconnect-room", {"rooms": ["dc-room"], "except": [keep.id], "close": False}) is True
    await asyncio.wait_for(b.disconnected.wait(), EVENT_TIMEOUT)
    await asyncio.wait_for(c.disconnected.wait(), EVENT_TIMEOUT)
    assert keep.client.connected and a.client.connected
    ids = {s["id"] for s in await a.call("fetch", {"rooms": ["dc-room"]})}
    assert ids == {keep.id}

    # close=True ends the whole connection of a remote client
    assert await a.call("disconnect-room", {"rooms": [keep.id], "close": True}) is True
    await asyncio.wait_for(keep.disconnected.wait(), EVENT_TIMEOUT)


async def until(probe: Callable[[], Any], expected: Any, timeout: float = EVENT_TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = None
    while loop.time() < deadline:
        value = await probe()
        if value == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expected!r}, last saw {value!r}")


# -- failures --------------------------------------------------------------------------------------


async def test_killed_node_requests_complete_and_pending_returns_to_zero(own_cluster: Callable[[int], Cluster], peers: Any) -> None:
    cluster = own_cluster(3)
    a_node, b_node, c_node = cluster.nodes
    a = await peers("a", a_node)
    b = await peers("b", b_node)
    await peers("c", c_node)

    # C freezes (still subscribed, never answers): a request in flight waits for it ...
    os.kill(c_node.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        in_flight = asyncio.ensure_future(a.call("ssemit", "late", 1.5))
        await until(lambda: asyncio.to_thread(metric, a_node, "sio_gateway_cluster_pending_requests"), 1.0)
        # ... and C dies while it is pending: the request ends with B's answer and a timeout error
        c_node.kill()
    finally:
        if c_node.proc is not None and c_node.proc.poll() is None:
            os.kill(c_node.proc.pid, signal.SIGCONT)
    outcome = await asyncio.wait_for(in_flight, CALL_TIMEOUT)
    assert outcome["error"] == "AdapterTimeout"
    assert outcome["responses"] == [{"server": "python", "arg": "late"}]

    # Redis noticed the dead connection: new requests expect (and get) the living node only
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await a.call("ssemit", "after") == [{"server": "python", "arg": "after"}]
    assert sorted(s["id"] for s in await a.call("fetch", {})) == sorted([a.id, b.id])
    assert await b.call("server-count") == 2
    assert loop.time() - started < 3.0, "requests after the kill must not wait for the dead node"

    for node in (a_node, b_node):
        assert await asyncio.to_thread(metric, node, "sio_gateway_cluster_pending_requests") == 0
    assert await asyncio.to_thread(metric, a_node, "sio_gateway_redis_request_timeouts_total") >= 1


async def test_acked_broadcast_survives_a_frozen_node(own_cluster: Callable[[int], Cluster], peers: Any) -> None:
    cluster = own_cluster(2)
    a_node, b_node = cluster.nodes
    a = await peers("a", a_node)
    await a.join("frozen-room")
    b = await peers("b", b_node)
    await b.join("frozen-room")
    os.kill(b_node.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        outcome = await a.call("bcast-ack", {"rooms": ["frozen-room"], "event": "q", "args": [1], "timeout": 1})
    finally:
        b_node.kill()
    assert outcome["error"] == "AckTimeout"
    await until(lambda: asyncio.to_thread(metric, a_node, "sio_gateway_cluster_pending_requests"), 0.0)
    # and the survivor answers acked broadcasts on its own again
    assert await a.call("bcast-ack", {"rooms": ["frozen-room"], "event": "q", "args": [2], "timeout": 2}) == [{"from": "a", "args": [2]}]


# Garbage published by hand. Every entry reaches node A's decoder (A has the room `bad-room`, so
# even the room-channel broadcast is decoded there) and must be dropped and counted.
MALFORMED: list[tuple[str, bytes]] = [
    ("socket.io#/#", b"\xc1garbage"),  # 0xc1 is never valid msgpack
    ("socket.io#/#", b""),
    ("socket.io#/#", bytes.fromhex("82a474797065a1785b")),  # truncated map
    ("socket.io#/#", bytes.fromhex("93a17801a17a")),  # [uid, 1, "z"]: packet is not a map
    ("socket.io#/#", bytes.fromhex("92a17880")),  # two elements instead of three
    ("socket.io#/#bad-room#", bytes.fromhex("93a17881a464617461a17880")),  # data is not a list
    ("socket.io#/#", b'{"uid":"x"}'),  # JSON where msgpack is expected
    ("socket.io-request#/#", b"\xc1\xc1"),
    ("socket.io-request#/#", b'{"uid":"x","type":5,"opts":{"rooms":[],"except":[]}}'),  # fetch without requestId
    ("socket.io-request#/#", b'{"uid":"x","requestId":"r1","type":42}'),
    ("socket.io-request#/#", b'{"uid":"x","type":'),  # truncated JSON
    ("socket.io-request#/#", b"[1,2,3]"),
    ("socket.io-request#/#", bytes.fromhex("82a474797065 07a3756964a178".replace(" ", ""))),  # type 7 without packet
    ("socket.io-response#/#", b'{"sockets":[]}'),  # no requestId
    ("socket.io-response#/#", b'{"requestId":"r2","type":77}'),
    ("socket.io-response#/#", b"\xc1"),
    ("socket.io-response#/#", bytes.fromhex("81a47479706509")),  # msgpack {type: 9} without requestId
]


async def test_malformed_messages_are_dropped_and_counted(own_cluster: Callable[[int], Cluster], peers: Any) -> None:
    cluster = own_cluster(2)
    a_node, b_node = cluster.nodes
    a = await peers("a", a_node)
    b = await peers("b", b_node)
    await a.join("bad-room")
    before = await asyncio.to_thread(metric, a_node, "sio_gateway_redis_bad_messages_total")

    publisher = aioredis.from_url(cluster.redis.url)
    try:
        for channel, payload in MALFORMED:
            assert await publisher.publish(channel, payload) >= 1, channel
    finally:
        await publisher.aclose()

    # the node keeps delivering, answering and requesting after all of it
    await b.call("broadcast", {"rooms": ["bad-room"], "event": "still-alive", "args": [BINARY]})
    assert await a.wait("still-alive") == [BINARY]
    assert sorted(s["id"] for s in await a.call("fetch", {})) == sorted([a.id, b.id])
    assert await b.call("ssemit", 1) == [{"server": "python", "arg": 1}]

    after = await asyncio.to_thread(metric, a_node, "sio_gateway_redis_bad_messages_total")
    assert after - before == len(MALFORMED), cluster.logs()
    for node in (a_node, b_node):
        status, raw = node.get("/health")
        assert status == 200 and json.loads(raw)["adapter"]["status"] == "healthy"


async def test_malformed_answer_to_a_pending_request_is_dropped(own_cluster: Callable[[int], Cluster], peers: Any) -> None:
    """A misbehaving member (here a raw Redis client subscribed like a node) answers a fetch with
    socket descriptions that are not descriptions, then correctly: the bad answer is counted and
    ignored, the good one completes the request."""
    cluster = own_cluster(1)
    (a_node,) = cluster.nodes
    a = await peers("a", a_node)
    fake = aioredis.from_url(cluster.redis.url)
    pubsub = fake.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("socket.io-request#/#")
    description = {"id": "FakeSocketId00000000", "handshake": {"auth": {}}, "rooms": ["FakeSocketId00000000"], "data": {"server": "fake"}}

    async def answer_one_fetch() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            request = json.loads(message["data"])
            if request.get("type") != 5:
                continue
            rid = request["requestId"]
            for bad in ([1, "x"], [{"rooms": []}], [{"id": "x", "rooms": 5}]):
                await fake.publish("socket.io-response#/#", json.dumps({"requestId": rid, "sockets": bad}))
            await fake.publish("socket.io-response#/#", json.dumps({"requestId": rid, "sockets": [description]}))
            return

    before = await asyncio.to_thread(metric, a_node, "sio_gateway_redis_bad_messages_total")
    responder = asyncio.ensure_future(asyncio.wait_for(answer_one_fetch(), CALL_TIMEOUT))
    try:
        found = await a.call("fetch", {})
        await responder
    finally:
        responder.cancel()
        await pubsub.aclose()
        await fake.aclose()
    assert sorted(s["id"] for s in found) == sorted([a.id, "FakeSocketId00000000"])
    assert next(s for s in found if s["id"] == "FakeSocketId00000000")["data"] == {"server": "fake"}
    assert await asyncio.to_thread(metric, a_node, "sio_gateway_redis_bad_messages_total") - before == 3
