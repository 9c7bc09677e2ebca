"""Presence that never lies and never flaps, with real `python -m gateway` nodes, one real
redis-server and python-socketio clients (helpers shared with test_standalone.py).

1. the leave grace: a user's last tab out leaves only after PRESENCE_LEAVE_GRACE_MS, exactly once;
   a return to another node within the grace announces nothing anywhere;
2. a rolling restart (SIGTERM): the drained node hands its members over instead of deleting them;
   a user who reconnects to the other node within the grace is neither left nor joined again, a
   user who does not return leaves once, after the grace and within grace + PRESENCE_TIMEOUT_MS;
   a SIGKILLed node's users leave within grace + PRESENCE_TIMEOUT_MS;
3. Redis out of memory (maxmemory, noeviction): presence writes fail, so presence:list and the
   API answer "presence unavailable" and /health says degraded (HTTP 200); once memory is freed
   the node re-writes its state and lists exactly the users online.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.integration.test_standalone import PRESENCE_TIMEOUT_MS, STEP_TIMEOUT, Client, Cluster, api, cluster_env, token

GRACE_MS = 1500
GRACE_S = GRACE_MS / 1000
BOUND_S = PRESENCE_TIMEOUT_MS / 1000
ROOM = "conversation:1"
UNAVAILABLE = {"ok": False, "error": "presence unavailable"}


def about(user: str) -> Callable[[Any], bool]:
    return lambda e: e == {"room": ROOM, "user": user}


def users_in(client: Client, event: str) -> list[str]:
    return [e["user"] for e in client.events[event] if e["room"] == ROOM]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT)) as session:
        yield session


@pytest.fixture
def nodes(redis_server: RedisServerProcess, tmp_path: Path) -> Any:
    cluster = Cluster(redis_server, tmp_path, PRESENCE_LEAVE_GRACE_MS=str(GRACE_MS)).start()
    try:
        yield cluster
    finally:
        cluster.stop()


class Users:
    """Clients of one test, each joined to ROOM; all closed at the end."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    async def join(self, name: str, node: GatewayProcess) -> Client:
        client = await Client(name).connect(node.url, token(name, conversations=("1",)))
        self.clients.append(client)
        assert await client.call("join:conversation", "1") == {"ok": True, "room": ROOM}
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


# -- 1. the leave grace on living nodes ----------------------------------------------------------


async def test_leave_waits_for_the_grace_and_a_return_elsewhere_cancels_it(nodes: Cluster, http: aiohttp.ClientSession) -> None:
    users = Users()
    try:
        watcher = await users.join("walt", nodes.a)
        ivy_b = await users.join("ivy", nodes.b)
        await watcher.wait_event("presence:join", about("ivy"))
        jack = await users.join("jack", nodes.a)
        await watcher.wait_event("presence:join", about("jack"))

        await ivy_b.close()  # ivy's only tab, on node B ...
        ivy_left = time.monotonic()
        await asyncio.sleep(0.3)
        await users.join("ivy", nodes.a)  # ... comes back on node A within the grace
        await jack.close()  # jack is gone for good
        jack_left = time.monotonic()

        await watcher.wait_event("presence:leave", about("jack"), timeout=GRACE_S + BOUND_S)
        elapsed = time.monotonic() - jack_left
        assert GRACE_S - 0.05 <= elapsed <= GRACE_S + 1.0, f"jack's leave after {elapsed:.2f}s"
        # Wait until node B's hold on ivy has certainly expired, then look at what was announced.
        await asyncio.sleep(max(0.0, ivy_left + GRACE_S + 0.7 - time.monotonic()))
        assert users_in(watcher, "presence:leave") == ["jack"]
        assert users_in(watcher, "presence:join") == ["walt", "ivy", "jack"], "ivy's return was announced"
        assert await watcher.call("presence:list", ROOM) == {"ok": True, "room": ROOM, "users": ["ivy", "walt"]}
        assert await api(http, "GET", f"{nodes.b.url}/api/presence/{ROOM}") == (200, {"room": ROOM, "namespace": "/", "users": ["ivy", "walt"], "count": 2})
    finally:
        await users.close()


# -- 2. rolling restart and node death -----------------------------------------------------------


async def test_sigterm_hands_members_over_without_flapping(nodes: Cluster) -> None:
    users = Users()
    try:
        watcher = await users.join("walt", nodes.a)
        gina_b = await users.join("gina", nodes.b)
        await users.join("hank", nodes.b)
        await watcher.wait_event("presence:join", about("gina"))
        await watcher.wait_event("presence:join", about("hank"))

        nodes.b.signal(signal.SIGTERM)  # a rolling restart drains node B
        drained = time.monotonic()
        await asyncio.wait_for(gina_b.disconnected.wait(), STEP_TIMEOUT)
        await users.join("gina", nodes.a)  # gina's client reconnects, to node A, within the grace
        assert nodes.b.wait(STEP_TIMEOUT) is not None

        await watcher.wait_event("presence:leave", about("hank"), timeout=GRACE_S + BOUND_S + 1)
        elapsed = time.monotonic() - drained
        assert GRACE_S - 0.05 <= elapsed <= GRACE_S + BOUND_S, f"hank's leave after {elapsed:.2f}s"
        await asyncio.sleep(0.5)
        assert users_in(watcher, "presence:leave") == ["hank"], "the drained node's users flapped"
        assert users_in(watcher, "presence:join") == ["walt", "gina", "hank"]
        assert await watcher.call("presence:list", ROOM) == {"ok": True, "room": ROOM, "users": ["gina", "walt"]}
        assert "presence_handover" in nodes.b.log_tail(40)
    finally:
        await users.close()


async def test_sigkilled_node_users_leave_within_grace_and_timeout(nodes: Cluster) -> None:
    users = Users()
    try:
        watcher = await users.join("walt", nodes.a)
        await users.join("kyle", nodes.b)
        await users.join("lena", nodes.b)
        await watcher.wait_event("presence:join", about("lena"))

        nodes.b.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert nodes.b.wait(STEP_TIMEOUT) is not None
        await asyncio.sleep(0.5)
        await users.join("lena", nodes.a)  # lena reconnects elsewhere; kyle does not

        await watcher.wait_event("presence:leave", about("kyle"), timeout=GRACE_S + BOUND_S + 1)
        elapsed = time.monotonic() - killed
        assert elapsed <= GRACE_S + BOUND_S, f"kyle's leave after {elapsed:.2f}s"
        await asyncio.sleep(0.5)
        assert users_in(watcher, "presence:leave") == ["kyle"]
        assert users_in(watcher, "presence:join") == ["walt", "kyle", "lena"]
        assert await watcher.call("presence:list", ROOM) == {"ok": True, "room": ROOM, "users": ["lena", "walt"]}
    finally:
        await users.close()


# -- 3. Redis refusing writes ----------------------------------------------------------------------


async def _metric(http: aiohttp.ClientSession, url: str, line_start: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        await asyncio.sleep(0.1)


async def test_presence_answers_an_error_while_redis_refuses_writes(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    redis_proc = RedisServerProcess(tmp_path, extra_args=("--maxmemory", "4mb", "--maxmemory-policy", "noeviction"))
    redis_proc.start()
    node = GatewayProcess("gateway", env=cluster_env(redis_proc.url, PRESENCE_LEAVE_GRACE_MS="200"), log_dir=tmp_path)
    junk = aioredis.from_url(redis_proc.url, socket_timeout=STEP_TIMEOUT)
    users = Users()
    try:
        node.start()
        watcher = await users.join("walt", node)
        mia = await users.join("mia", node)
        assert await watcher.call("presence:list", ROOM) == {"ok": True, "room": ROOM, "users": ["mia", "walt"]}
        status, body = await api(http, "GET", f"{node.url}/health", key=None)
        assert (status, body["status"], body["presence"]["status"]) == (200, "healthy", "healthy")

        # Fill Redis with junk until it refuses writes.
        filler = "x" * 10_000
        for i in range(2000):
            try:
                await junk.set(f"junk:{i}", filler)
            except OutOfMemoryError:
                break
        else:
            raise AssertionError("Redis never ran out of memory")
        # Right at the limit, freed client buffers would let the odd write through: keep the
        # limit well under what Redis now holds (noeviction: nothing is dropped).
        used = (await junk.info("memory"))["used_memory"]
        await junk.config_set("maxmemory", str(used - 1_000_000))

        await mia.close()  # leaves while Redis is full ...
        await users.join("nora", node)  # ... and users keep arriving
        await users.join("otto", node)
        await _until(lambda: _is(watcher.call("presence:list", ROOM), UNAVAILABLE), STEP_TIMEOUT, "presence:list unavailable")
        assert await api(http, "GET", f"{node.url}/api/presence/{ROOM}") == (503, UNAVAILABLE)
        status, body = await api(http, "GET", f"{node.url}/health", key=None)
        assert (status, body["status"], body["presence"]["status"]) == (200, "degraded", "degraded")
        assert await _metric(http, node.url, 'sio_gateway_presence_write_errors_total{op="join"}') >= 2
        assert await _metric(http, node.url, "sio_gateway_presence_up") == 0
        await asyncio.sleep(PRESENCE_TIMEOUT_MS * 0.2 / 1000 + 0.2)  # a heartbeat tick changes nothing while Redis is full
        assert await watcher.call("presence:list", ROOM) == UNAVAILABLE
        assert await _metric(http, node.url, 'sio_gateway_presence_write_errors_total{op="heartbeat"}') >= 1

        # Free the memory: the node re-writes what it holds and presence is true again.
        await junk.delete(*[f"junk:{i}" for i in range(2000)])
        expected = {"ok": True, "room": ROOM, "users": ["nora", "otto", "walt"]}
        await _until(lambda: _is(watcher.call("presence:list", ROOM), expected), STEP_TIMEOUT, "presence recovered")
        assert await api(http, "GET", f"{node.url}/api/presence/{ROOM}") == (200, {"room": ROOM, "namespace": "/", "users": ["nora", "otto", "walt"], "count": 3})
        status, body = await api(http, "GET", f"{node.url}/health", key=None)
        assert (status, body["status"], body["presence"]["status"]) == (200, "healthy", "healthy")
        assert await _metric(http, node.url, "sio_gateway_presence_up") == 1
        # The arrivals Redis refused are announced once they are written.
        await watcher.wait_event("presence:join", about("otto"))
        await watcher.wait_event("presence:join", about("nora"))
        assert "presence_resynced" in node.log_tail(80)
    finally:
        await users.close()
        await junk.aclose()
        node.stop(timeout=5)
        redis_proc.stop(signal.SIGKILL)


async def _is(answer: Any, expected: Any) -> bool:
    return (await answer) == expected


async def test_presence_link_health_follows_its_heartbeat(redis_server) -> None:
    """Presence keeps the same link bookkeeping as the cluster's links: with Redis gone its
    /health entry says the link is down, why and for how many heartbeats; back, it is up."""
    from gateway.presence import RedisPresence

    presence = RedisPresence(lambda *a: None, redis_server.url, "sio-test", 1000)
    await presence.start()
    try:
        assert presence.health()["link"]["state"] == "up"
        redis_server.stop()
        deadline = asyncio.get_running_loop().time() + 5
        while presence.health()["link"]["attempts"] < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        link = presence.health()["link"]
        assert link["state"] == "down" and link["attempts"] >= 2 and link["last_error"]
        redis_server.start()
        deadline = asyncio.get_running_loop().time() + 5
        while presence.health()["link"]["state"] != "up" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert presence.health()["link"] == {**presence.health()["link"], "state": "up", "attempts": 0}
    finally:
        await presence.close()
