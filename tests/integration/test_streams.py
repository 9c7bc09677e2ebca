"""REDIS_MODE=streams (gateway/cluster/streams.py) with real parts: a real redis-server, real
clients (Node.js socket.io-client 4.8 through tests/node_driver.py, python-socketio), gateway
nodes in process (tests.sio_app's contract, so the test can broadcast through the Python API and
read counters) and as standalone processes (`python -m gateway`) for the crash and restart
cases.

What must hold: broadcasts cross nodes through the stream; a client whose connection drops
reconnects, to the same node or another one, with the same id, rooms and data, and gets every
missed broadcast once and in order; a stale offset (trimmed, or a stream Redis lost) gives a
fresh socket, counted; killing the reader's or the publisher's Redis connection loses nothing;
a SIGKILLed node's clients recover on another node (sessions are kept while connected).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest

from gateway import Server
from gateway.config import Settings
from tests import sio_app
from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.integration.test_encode_once import wait_until
from tests.integration.test_node_clients import node  # noqa: F401  (the Node driver fixture)
from tests.node_driver import NodeDriver
from tests.ports import LOOPBACK

TIMEOUT = 8.0
WINDOW_MS = 5000
RECONNECT_DELAY_MS = 400


def streams_settings(redis: RedisServerProcess, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": LOOPBACK,
        "port": 0,
        "log_level": "WARNING",
        "auth_mode": "none",
        "redis_url": redis.url,
        "redis_mode": "streams",
        "state_recovery_ms": WINDOW_MS,
        "redis_session_flush_ms": 50,
        "reconnect_initial_ms": 50,
        "reconnect_max_ms": 300,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def nodes(redis: RedisServerProcess, count: int = 2, **overrides: Any) -> AsyncIterator[list[Server]]:
    servers: list[Server] = []
    try:
        for _ in range(count):
            server = sio_app.build(streams_settings(redis, **overrides))
            await server.start(port=0)
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            await asyncio.wait_for(server.close(), TIMEOUT)


def url_of(server: Server) -> str:
    return f"http://{LOOPBACK}:{server.port}"


def metrics(server: Server) -> str:
    return generate_latest(server.metrics_registry).decode()


async def next_args(node: NodeDriver, name: str, event: str, timeout: float = TIMEOUT) -> list[Any]:
    return (await node.wait_event(ev="event", name=name, event=event, timeout=timeout))["args"]


def client_opts(delay_ms: int = RECONNECT_DELAY_MS) -> dict[str, Any]:
    return {"transports": ["websocket"], "reconnectionDelay": delay_ms, "reconnectionDelayMax": delay_ms, "randomizationFactor": 0}


async def connect(node: NodeDriver, server: Server, name: str, url: str | None = None) -> str:
    first = await node.call("client.connect", name=name, url=url or url_of(server), nsp="/", opts=client_opts())
    await node.wait_event(ev="connect", name=name, timeout=TIMEOUT)
    welcome = await next_args(node, name, "welcome")
    assert isinstance(welcome[-1], str) and "-" in welcome[-1], welcome  # a stream id as offset
    return first["id"]


async def test_broadcasts_cross_nodes_in_one_order_with_stream_ids_as_offsets(redis_server: RedisServerProcess, node: NodeDriver) -> None:
    async with nodes(redis_server) as (a, b):
        await connect(node, a, "on-a")
        await connect(node, b, "on-b")
        for i in range(10):
            (a if i % 2 else b).emit("m", i)
        got_a = [await next_args(node, "on-a", "m") for _ in range(10)]
        got_b = [await next_args(node, "on-b", "m") for _ in range(10)]
        # every node delivers in stream order, its own broadcasts included: same order, same offsets
        assert got_a == got_b
        assert sorted(args[0] for args in got_a) == list(range(10))
        offsets = [args[-1] for args in got_a]
        assert offsets == sorted(offsets, key=lambda o: tuple(int(x) for x in o.split("-")))
        r = aioredis.from_url(redis_server.url)
        try:
            assert await r.xlen("socket.io") >= 10
        finally:
            await r.aclose()
        assert await a.main.adapter.server_count() == 2


async def test_node_client_recovers_on_another_node_with_rooms_data_and_every_missed_broadcast(redis_server: RedisServerProcess, node: NodeDriver) -> None:
    async with nodes(redis_server) as (a, b):
        sid = await connect(node, a, "c")
        assert await node.call("client.emit", name="c", event="join", args=["r"], ack=True)
        assert await node.call("client.emit", name="c", event="set-data", args=["k", "v"], ack=True) == [True]
        b.to("r").emit("m", 0)
        assert (await next_args(node, "c", "m"))[0] == 0
        await asyncio.sleep(0.2)  # the session (rooms and data) is flushed while connected

        # the client's node goes away without a word; its next connection goes to the other node
        await node.call("client.set_url", name="c", url=url_of(b))
        await node.call("client.engine_close", name="c")
        await node.wait_event(ev="disconnect", name="c", timeout=TIMEOUT)
        for i in range(1, 6):  # from both nodes; each node's in its order, all in the stream's
            (a if i < 4 else b).to("r").emit("m", i)
        b.except_("r").emit("nope", "excepted")
        b.to("elsewhere").emit("nope", "other room")

        back = await node.wait_event(ev="connect", name="c", timeout=TIMEOUT)
        assert back["id"] == sid
        assert (await node.call("client.state", name="c"))["recovered"] is True
        missed = [await next_args(node, "c", "m") for _ in range(5)]
        assert sorted(args[0] for args in missed) == [1, 2, 3, 4, 5]
        assert [x for x in (args[0] for args in missed) if x < 4] == [1, 2, 3]
        offsets = [tuple(int(x) for x in args[-1].split("-")) for args in missed]
        assert offsets == sorted(offsets)  # in stream order, once each
        socket = b.main.sockets[sid]
        assert socket.recovered and "r" in socket.rooms and socket.data["k"] == "v"
        a.to("r").emit("m", 6)
        assert (await next_args(node, "c", "m"))[0] == 6
        await asyncio.sleep(0.3)
        assert [e for e in node.pending_events() if e.get("name") == "c" and e.get("event") in ("m", "nope")] == []
        assert b.adapter_stats.recovery.results["recovered"] == 1
        assert 'sio_gateway_recoveries_total{result="recovered"} 1.0' in metrics(b)


async def test_a_trimmed_or_lost_offset_gives_a_fresh_socket_counted(redis_server: RedisServerProcess, node: NodeDriver) -> None:
    async with nodes(redis_server, count=1) as (a,):
        sid = await connect(node, a, "s")
        await node.call("client.engine_close", name="s")
        await node.wait_event(ev="disconnect", name="s", timeout=TIMEOUT)
        r = aioredis.from_url(redis_server.url)
        try:
            await r.xtrim("socket.io", maxlen=0)  # what MAXLEN does to an old offset, or a Redis restart
        finally:
            await r.aclose()
        back = await node.wait_event(ev="connect", name="s", timeout=TIMEOUT)
        assert back["id"] != sid
        assert (await node.call("client.state", name="s"))["recovered"] is False
        assert a.adapter_stats.recovery.results["stale"] == 1
        assert "sio_gateway_stream_stale_offsets_total 1.0" in metrics(a)


async def test_a_replay_longer_than_the_page_bound_is_refused_not_cut(redis_server: RedisServerProcess, node: NodeDriver) -> None:
    async with nodes(redis_server, count=1, redis_stream_replay_page=2, redis_stream_replay_max_pages=2) as (a,):
        sid = await connect(node, a, "p")
        await node.call("client.engine_close", name="p")
        await node.wait_event(ev="disconnect", name="p", timeout=TIMEOUT)
        for i in range(10):  # five pages of two: more than two pages
            a.emit("m", i)
        back = await node.wait_event(ev="connect", name="p", timeout=TIMEOUT)
        assert back["id"] != sid
        assert a.adapter_stats.recovery.results["stale"] == 1
        assert "sio_gateway_stream_replay_truncated_total 1.0" in metrics(a)
        await asyncio.sleep(0.3)
        assert [e for e in node.pending_events() if e.get("name") == "p" and e.get("event") == "m"] == []


async def test_client_kill_of_reader_and_publisher_connections_loses_nothing(redis_server: RedisServerProcess, node: NodeDriver) -> None:
    """50 messages/s from node a to a client on node b while Redis kills every normal and pubsub
    connection ten times: every message arrives once, in order."""
    async with nodes(redis_server) as (a, b):
        await connect(node, b, "k")
        r = aioredis.from_url(redis_server.url)
        total = 100

        async def send() -> None:
            for i in range(total):
                a.emit("n", i)
                await asyncio.sleep(0.02)

        async def kill() -> None:
            for i in range(10):
                await asyncio.sleep(0.18)
                kind = "pubsub" if i % 2 else "normal"
                await r.execute_command("CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes")

        try:
            await asyncio.gather(send(), kill())
        finally:
            await r.aclose()
        got = [(await next_args(node, "k", "n", timeout=15))[0] for _ in range(total)]
        assert got == list(range(total))
        await asyncio.sleep(0.3)
        assert [e for e in node.pending_events() if e.get("name") == "k" and e.get("event") == "n"] == []


# -- standalone nodes (`python -m gateway`) behind nginx -------------------------------------------

from tests.integration.test_topologies import Started, started  # noqa: E402,F401  (nginx + process fixture)

API_KEY = "streams-test-key"


def standalone_env(redis: RedisServerProcess) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "REDIS_MODE": "streams",
        "AUTH_MODE": "none",
        "API_KEYS": API_KEY,
        "API_AUTH_FAILURES_PER_MIN": "0",
        "RATE_LIMIT_EVENTS_PER_S": "0",
        "REDIS_SESSION_FLUSH_MS": "50",
        "REDIS_RECONNECT_INITIAL_MS": "50",
        "REDIS_RECONNECT_MAX_MS": "500",
        "SHUTDOWN_DEADLINE_MS": "3000",
        "LOG_LEVEL": "INFO",
    }


def connections(gateway: GatewayProcess) -> int:
    status, raw = gateway.get("/health", timeout=2)
    return int(json.loads(raw).get("connections", 0)) if status in (200, 503) else 0


async def publish_numbered(gateway: GatewayProcess, count: int, per_s: float) -> None:
    """POST /api/emit {rooms: [company:1], event: n, data: i} `count` times at `per_s`."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for i in range(count):
            async with http.post(gateway.url + "/api/emit", json={"rooms": ["company:1"], "event": "n", "data": i}, timeout=aiohttp.ClientTimeout(total=5)) as response:
                assert response.status == 200, await response.text()
            await asyncio.sleep(1 / per_s)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_the_clients_node_dies_behind_nginx_it_recovers_elsewhere_nothing_lost(redis_server: RedisServerProcess, started: Started, node: NodeDriver, how: str) -> None:
    """Three standalone nodes behind nginx; a client in company:1 gets 100 messages/s published
    on another node; its node is SIGKILLed (its session was in Redis while it was connected) or
    drained with SIGTERM (which writes every session): the client reconnects through nginx to
    another node, same id, recovered, every message once and in order."""
    gateways = [GatewayProcess("gateway", env=standalone_env(redis_server), log_dir=started.workdir) for _ in range(3)]
    for g in gateways:
        started.gateways.append(g)
        await asyncio.to_thread(g.start)
    _, url = started.nginx([g.port for g in gateways])
    opts = {**client_opts(200), "transports": ["websocket"]}
    first = await node.call("client.connect", name="w", url=url, nsp="/", opts=opts)
    await node.wait_event(ev="connect", name="w", timeout=TIMEOUT)
    assert (await node.call("client.emit", name="w", event="join:company", args=[1], ack=True))[0]["ok"] is True
    home = next(g for g in gateways if connections(g) == 1)
    publisher = next(g for g in gateways if g is not home)
    await asyncio.sleep(0.3)  # its session (with company:1) is written while it is connected

    total = 300
    sending = asyncio.ensure_future(publish_numbered(publisher, total, 100))
    await asyncio.sleep(1.0)
    if how == "SIGKILL":
        home.kill()  # nothing persisted at a disconnect, no goodbye to the client
    else:
        await asyncio.to_thread(home.stop, 5)
    back = await node.wait_event(ev="connect", name="w", timeout=15)
    await asyncio.wait_for(sending, 15)
    assert back["id"] == first["id"]
    assert (await node.call("client.state", name="w"))["recovered"] is True
    got = [(await next_args(node, "w", "n", timeout=10))[0] for _ in range(total)]
    assert got == list(range(total))  # 0 lost, 0 duplicated, in order
    await asyncio.sleep(0.3)
    assert [e for e in node.pending_events() if e.get("name") == "w" and e.get("event") == "n"] == []


async def test_a_batch_cut_off_after_redis_executed_part_of_it_is_not_appended_twice(redis_server: RedisServerProcess) -> None:
    """A connection that breaks between Redis executing a pipeline and its replies: the entries
    Redis appended are found in the stream by the node's uid and taken off the outbox, the rest
    is sent again (CLIENT KILL can cut there; here Redis executes the prefix by another client,
    so the cut is exact)."""
    from types import SimpleNamespace

    from gateway.cluster.streams import _STREAM_CHANNEL, StreamsTransport
    from gateway.redis.stream import RespStream
    from gateway.redis.supervision import QueuedMessage

    settings = streams_settings(redis_server)
    transport = StreamsTransport(settings)
    transport.members = {"/": SimpleNamespace(uid="ownuid")}  # type: ignore[dict-item]
    r = aioredis.from_url(redis_server.url)
    stream = RespStream(settings)
    try:
        key = settings.redis_stream_name
        await r.delete(key)
        confirmed = await r.xadd(key, {"uid": "ownuid", "nsp": "/", "type": "3", "data": "before"})
        head = transport.xadd_head(b"ownuid", b"/", b"3")
        batch = [
            QueuedMessage(_STREAM_CHANNEL, b"%s$%d\r\n%s\r\n" % (head, len(data), data), 0.0)
            for data in (b"one", b"two", b"three")
        ]
        batch.insert(1, QueuedMessage(b"some-channel", b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$1\r\nx\r\n", 0.0))
        await r.xadd(key, {"uid": "peer", "nsp": "/", "type": "3", "data": "a peer's"})
        for data in ("one", "two"):  # what Redis executed before the connection broke
            await r.xadd(key, {"uid": "ownuid", "nsp": "/", "type": "3", "data": data})
        transport.outbox.requeue(batch)
        await stream.open()
        newest = await transport._settle(stream, batch, confirmed)
        assert [m.payload for m in transport.outbox.items] == [batch[3].payload]  # "three" only
        assert transport.duplicates_avoided == 3  # one, the PUBLISH before two, two
        entries = await r.xrange(key)
        assert newest == entries[-1][0] and [e[1][b"data"] for e in entries].count(b"two") == 1
    finally:
        await stream.aclose()
        await r.aclose()
