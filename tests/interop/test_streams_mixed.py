"""A mixed streams cluster: a Node.js socket.io 4.8 server with @socket.io/redis-streams-adapter
0.3.1 and connection state recovery on, and our gateway (`python -m tests.sio_app` with
REDIS_MODE=streams) on the same redis-server.

Every client is a real Node socket.io-client, so what crosses between the two servers (stream
entries, PUBLISHed requests and answers, `sio:session:<pid>` keys) is what a Node-only cluster
would exchange: broadcasts and requests go both ways, and a session left on either side is
restored by the other (the live check of protocol/cluster/streams.py against the real adapter).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from protocol.cluster import streams as wire
from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.interop.test_mixed_cluster import wait_healthy
from tests.node_driver import NodeDriver
from tests.ports import free_port

APP = "tests.sio_app"
TIMEOUT = 8.0
BINARY = bytes(range(256))
CLIENT = {"transports": ["websocket"], "reconnectionDelay": 300, "reconnectionDelayMax": 300, "randomizationFactor": 0}


@dataclass
class Mixed:
    redis: RedisServerProcess
    gateway: GatewayProcess
    node: NodeDriver
    node_url: str

    def url(self, on_python: bool) -> str:
        return self.gateway.url if on_python else self.node_url

    async def connect(self, name: str, on_python: bool) -> tuple[str, str]:
        """A client on our gateway or on the Node server; (id, the offset of its welcome)."""
        result = await self.node.call("client.connect", name=name, url=self.url(on_python), opts=CLIENT)
        await self.node.wait_event(ev="connect", name=name, timeout=TIMEOUT)  # the first one, consumed
        welcome = await self.received(name, "welcome")
        assert wire.valid_offset(welcome[-1]), welcome
        return result["id"], welcome[-1]

    async def emit(self, name: str, event: str, *args: Any) -> Any:
        answer = await self.node.call("client.emit", name=name, event=event, args=list(args), ack=True, timeout=8000)
        return answer[0] if answer else None

    async def received(self, name: str, event: str) -> list[Any]:
        return (await self.node.wait_event(ev="event", name=name, event=event, timeout=TIMEOUT))["args"]


async def wait_servers(url: str, count: int, timeout: float = 5.0) -> None:
    """Both servers listen on the namespace's public channel (what serverCount counts)."""
    client = aioredis.from_url(url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while dict(await client.pubsub_numsub("socket.io#/#")).get(b"socket.io#/#", 0) != count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"expected {count} servers on socket.io#/#")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@pytest.fixture
async def mixed(redis_server: RedisServerProcess, tmp_path: Path) -> AsyncIterator[Mixed]:
    env = {"REDIS_MODE": "streams", "STATE_RECOVERY_MS": "10000", "REDIS_SESSION_FLUSH_MS": "50", "REQUESTS_TIMEOUT_MS": "3000"}
    gateway = GatewayProcess(APP, "--redis", redis_server.url, log_dir=tmp_path, env=env)
    driver = NodeDriver(label="streams-mixed")
    try:
        await asyncio.to_thread(gateway.start)
        await asyncio.to_thread(wait_healthy, gateway)
        await driver.start()
        port = (await driver.call("server.start", port=free_port(), adapter="streams", redisUrl=redis_server.url, recoveryMs=10000))["port"]
        await wait_servers(redis_server.url, 2)
        yield Mixed(redis_server, gateway, driver, f"http://127.0.0.1:{port}")
    finally:
        await driver.close()
        gateway.stop(timeout=5)


async def test_broadcasts_cross_both_ways_with_stream_offsets_binary_included(mixed: Mixed) -> None:
    await mixed.connect("n", on_python=False)
    await mixed.connect("p", on_python=True)
    for name in ("n", "p"):
        await mixed.emit(name, "join", "mix")
    payload = ["x", BINARY, {"nested": [b"\x00\xff"], "n": None, "f": 1.5}]
    assert await mixed.emit("n", "broadcast", {"rooms": ["mix"], "event": "from-node", "args": payload}) is True
    assert await mixed.emit("p", "broadcast", {"rooms": ["mix"], "event": "from-python", "args": payload}) is True
    for name in ("n", "p"):
        for event in ("from-node", "from-python"):
            args = await mixed.received(name, event)
            assert args[:-1] == payload and wire.valid_offset(args[-1]), (name, event, args)


async def test_requests_both_ways(mixed: Mixed) -> None:
    n_id, _ = await mixed.connect("n", on_python=False)
    p_id, _ = await mixed.connect("p", on_python=True)
    # Node asks: fetchSockets sees our socket; serverSideEmitWithAck gets our listener's answer
    fetched = await mixed.node.call("server.fetch_sockets")
    assert {s["id"] for s in fetched} == {n_id, p_id}
    answers = await mixed.node.call("server.server_side_emit", event="ping-servers", args=["hi"], ack=True, timeout=5000)
    assert answers == [{"server": "python", "arg": "hi"}]
    # we ask: the Node server answers ours
    assert await mixed.emit("p", "cluster-ping", "yo") == {"ok": True, "answers": [{"server": "node", "arg": "yo"}]}
    # socketsJoin from Node reaches our socket; a broadcast to that room from us reaches both
    await mixed.node.call("server.sockets_join", join="joined")
    await asyncio.sleep(0.3)
    assert await mixed.emit("p", "broadcast", {"rooms": ["joined"], "event": "j", "args": [1]}) is True
    assert (await mixed.received("n", "j"))[0] == 1
    assert (await mixed.received("p", "j"))[0] == 1


@pytest.mark.parametrize("first_on_python", [False, True], ids=["node-to-gateway", "gateway-to-node"])
async def test_a_session_left_on_either_side_is_restored_by_the_other(mixed: Mixed, first_on_python: bool) -> None:
    sid, _ = await mixed.connect("c", on_python=first_on_python)
    await mixed.emit("c", "join", "r")
    await asyncio.sleep(0.3)
    await mixed.node.call("client.set_url", name="c", url=mixed.url(not first_on_python))
    await mixed.node.call("client.engine_close", name="c")
    await mixed.node.wait_event(ev="disconnect", name="c", timeout=TIMEOUT)
    # sent while it is away, from the side it is coming back to
    await mixed.node.call("client.connect", name="sender", url=mixed.url(not first_on_python), opts=CLIENT)
    await mixed.received("sender", "welcome")
    for i in range(3):
        assert await mixed.emit("sender", "broadcast", {"rooms": ["r"], "event": "m", "args": [i]}) is True
    back = await mixed.node.wait_event(ev="connect", name="c", timeout=TIMEOUT)
    assert back["id"] == sid
    assert (await mixed.node.call("client.state", name="c"))["recovered"] is True
    assert [(await mixed.received("c", "m"))[0] for _ in range(3)] == [0, 1, 2]
    # its room came back with it
    assert await mixed.emit("sender", "broadcast", {"rooms": ["r"], "event": "m", "args": [3]}) is True
    assert (await mixed.received("c", "m"))[0] == 3
