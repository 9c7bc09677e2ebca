"""Redis Cluster with sharded pub/sub (issue 6, must-show 3).

A real Redis Cluster of 3 masters (`redis-server --cluster-enabled yes`, joined with
`redis-cli --cluster create`) carries two of our gateway processes (`tests.sio_app` with
REDIS_MODE=sharded) and one Node.js socket.io 4.8 server using @socket.io/redis-adapter 8.3's
`createShardedAdapter` (dynamic subscription mode). Every client is a real Node socket.io-client.

The byte-for-byte check of our sharded encoder/decoder against all 28 sharded golden vectors is
tests/unit/test_cluster_codec.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from tests.gateway_process import GatewayProcess
from tests.node_driver import NodeDriver
from tests.ports import LOOPBACK, free_port

APP = "tests.sio_app"
EVENT_TIMEOUT = 6.0
SILENCE_S = 0.4
WS = {"transports": ["websocket"]}
CLUSTER_START_TIMEOUT_S = 20.0


class RedisClusterError(RuntimeError):
    """The test cluster could not be started or did not reach cluster_state:ok."""


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """Free ports P for cluster nodes: each node also listens on its bus port P+10000, and
    Redis refuses P > 55535, so the kernel's ephemeral ports (often above that) will not do."""
    rng = random.Random()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(20000, 45000)
        if all(abs(port - other) > 1 and abs(port + 10000 - other) > 1 for other in chosen):
            if _bindable(port) and _bindable(port + 10000):
                chosen.append(port)
    return chosen


class RedisClusterProcesses:
    """Three redis-server masters in cluster mode on loopback, joined into one cluster.

    Each node writes its cluster config into the test's temporary directory; all of them are
    killed by PID when the test ends.
    """

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = workdir
        self.ports = cluster_ports(masters)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def nodes(self) -> list[str]:
        return [f"{LOOPBACK}:{port}" for port in self.ports]

    def _start_node(self, port: int) -> None:
        node_dir = self.workdir / f"cluster-{port}"
        node_dir.mkdir(exist_ok=True)
        args = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(port),
            "--bind", LOOPBACK,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node_dir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(node_dir),
        ]
        with open(node_dir / "redis.log", "ab") as log_file:
            self.procs[port] = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=node_dir)

    def _cli(self, port: int, *args: str, timeout: float = 10.0) -> str:
        result = subprocess.run(
            ["redis-cli", "-h", LOOPBACK, "-p", str(port), *args], capture_output=True, timeout=timeout, text=True
        )
        return result.stdout + result.stderr

    def start(self) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RedisClusterError("redis-server and redis-cli are needed (apt-get install redis-server)")
        for port in self.ports:
            self._start_node(port)
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        for port in self.ports:
            while "PONG" not in self._cli(port, "PING", timeout=2):
                if self.procs[port].poll() is not None or time.monotonic() > deadline:
                    raise RedisClusterError(f"node {port} did not start: {self.log_tail(port)}")
                time.sleep(0.05)
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *self.nodes, "--cluster-yes"], capture_output=True, timeout=30, text=True
        )
        if created.returncode != 0:
            raise RedisClusterError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
        self.wait_ok(deadline)

    def wait_ok(self, deadline: float) -> None:
        """Every node reports cluster_state:ok and knows all 16384 slots."""
        for port in self.ports:
            while True:
                info = self._cli(port, "CLUSTER", "INFO", timeout=2)
                if "cluster_state:ok" in info and "cluster_slots_ok:16384" in info:
                    break
                if time.monotonic() > deadline:
                    raise RedisClusterError(f"node {port} not ok: {info}")
                time.sleep(0.1)

    def owner_port(self, channel: str) -> int:
        """The port of the master that owns `channel`'s slot (CLUSTER SLOTS through the CLI)."""
        slot = key_slot(channel.encode())
        client = redis.Redis(host=LOOPBACK, port=self.ports[0], socket_timeout=5)
        try:
            reply = client.execute_command("CLUSTER", "SLOTS")
        finally:
            client.close()
        for start, end, master, *_ in reply:
            if start <= slot <= end:
                return int(master[1])
        raise RedisClusterError(f"slot {slot} has no owner")

    def node_id(self, port: int) -> str:
        return self._cli(port, "CLUSTER", "MYID", timeout=2).strip()

    def move_slot(self, slot: int, port: int) -> None:
        """Hand an empty slot to the master on `port` (no keys to migrate: pub/sub only)."""
        target = self.node_id(port)
        # The new owner first (it bumps its config epoch), then the others, as Redis documents.
        for node in [port, *(p for p in self.ports if p != port)]:
            answer = self._cli(node, "CLUSTER", "SETSLOT", str(slot), "NODE", target, timeout=2)
            if "OK" not in answer:
                raise RedisClusterError(f"SETSLOT on {node}: {answer}")
        self.wait_ok(time.monotonic() + 10)
        # Every master must agree before the test relies on the new owner (gossip settles it).
        deadline = time.monotonic() + 10
        while True:
            views = {self._slot_owner(node, slot) for node in self.ports}
            if views == {port}:
                return
            if time.monotonic() > deadline:
                raise RedisClusterError(f"slot {slot}: masters disagree on its owner: {views}")
            time.sleep(0.1)

    def _slot_owner(self, node: int, slot: int) -> int | None:
        client = redis.Redis(host=LOOPBACK, port=node, socket_timeout=5)
        try:
            reply = client.execute_command("CLUSTER", "SLOTS")
        finally:
            client.close()
        for start, end, master, *_ in reply:
            if start <= slot <= end:
                return int(master[1])
        return None

    def restart_node(self, port: int) -> None:
        """SIGKILL one master, start it again on the same port with its cluster config."""
        proc = self.procs.pop(port)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        time.sleep(0.5)
        self._start_node(port)
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while "PONG" not in self._cli(port, "PING", timeout=2):
            if self.procs[port].poll() is not None or time.monotonic() > deadline:
                raise RedisClusterError(f"node {port} did not restart: {self.log_tail(port)}")
            time.sleep(0.05)
        self.wait_ok(deadline)

    def log_tail(self, port: int) -> str:
        try:
            return (self.workdir / f"cluster-{port}" / "redis.log").read_text(errors="replace")[-1500:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        for port, proc in self.procs.items():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs.clear()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterProcesses]:
    cluster = RedisClusterProcesses(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# -- the mixed mesh: two of our gateways and one Node.js server on the cluster -------------------


@dataclass
class Mesh:
    cluster: RedisClusterProcesses
    a: GatewayProcess
    b: GatewayProcess
    node: NodeDriver
    node_url: str
    spy: aioredis.Redis  # a plain client to the cluster's masters, for PUBSUB SHARDNUMSUB

    def url(self, where: str) -> str:
        return {"a": self.a.url, "b": self.b.url, "node": self.node_url}[where]

    async def connect(self, name: str, where: str, nsp: str = "") -> str:
        result = await self.node.call("client.connect", name=name, url=self.url(where), nsp=nsp, opts={**WS, "auth": {"who": name}})
        await self.node.wait_event(ev="event", name=name, event="welcome")
        return result["id"]

    async def emit(self, name: str, event: str, *args: Any) -> Any:
        answer = await self.node.call("client.emit", name=name, event=event, args=list(args), ack=True, timeout=8000)
        return answer[0] if answer else None

    async def received(self, name: str, event: str) -> list[Any]:
        return (await self.node.wait_event(ev="event", name=name, event=event, timeout=EVENT_TIMEOUT))["args"]

    def saw(self, name: str, event: str) -> bool:
        return any(e.get("name") == name and e.get("event") == event for e in self.node.pending_events())

    async def shardnumsub(self, channel: str) -> int:
        """Subscribers of a shard channel, asked of the master that owns its slot."""
        port = await asyncio.to_thread(self.cluster.owner_port, channel)
        client = aioredis.Redis(host=LOOPBACK, port=port)
        try:
            reply = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        finally:
            await client.aclose()
        return int(reply[1])

    async def wait_shardnumsub(self, channel: str, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = await self.shardnumsub(channel)
            if seen == count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"SHARDNUMSUB {channel} = {seen}, expected {count}")


def metric(node: GatewayProcess, name: str) -> float:
    status, raw = node.get("/metrics")
    assert status == 200
    for line in raw.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics of {node.url}")


def wait_healthy(node: GatewayProcess, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, raw = node.get("/health")
        body = json.loads(raw)
        if status == 200 and body.get("adapter", {}).get("status") == "healthy":
            return body
        time.sleep(0.05)
    raise AssertionError(f"gateway not healthy on the cluster: {body}\n{node.log_tail()}")


@pytest.fixture
async def mesh(redis_cluster: RedisClusterProcesses, tmp_path: Path) -> AsyncIterator[Mesh]:
    env = {"REDIS_MODE": "sharded", "REDIS_CLUSTER_NODES": ",".join(redis_cluster.nodes), "REDIS_WATCHDOG_MS": "1500"}
    a = GatewayProcess(APP, log_dir=tmp_path, env=env)
    b = GatewayProcess(APP, log_dir=tmp_path, env=env)
    driver = NodeDriver(label="sharded")
    spy = aioredis.Redis(host=LOOPBACK, port=redis_cluster.ports[0])
    try:
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        await asyncio.to_thread(wait_healthy, a)
        await asyncio.to_thread(wait_healthy, b)
        await driver.start()
        cluster_nodes = [{"url": f"redis://{node}"} for node in redis_cluster.nodes]
        port = (await driver.call("server.start", port=free_port(), adapter="sharded", clusterNodes=cluster_nodes))["port"]
        m = Mesh(redis_cluster, a, b, driver, f"http://{LOOPBACK}:{port}", spy)
        for channel in ("socket.io#/#", "socket.io#/chat#"):
            await m.wait_shardnumsub(channel, 3)
        yield m
    finally:
        await driver.close()
        a.stop(timeout=5)
        b.stop(timeout=5)
        await spy.aclose()


async def test_room_broadcasts_cross_both_ways(mesh: Mesh) -> None:
    await mesh.connect("n1", "node")
    await mesh.connect("a1", "a")
    await mesh.connect("b1", "b")
    for name in ("n1", "a1", "b1"):
        await mesh.emit(name, "join", "mix")
    await mesh.wait_shardnumsub("socket.io#/#mix#", 3)

    payload = ["x", bytes(range(256)), {"nested": [b"\x00\xff"], "n": None, "f": 1.5}]
    # Node server -> our clients on both gateways (SPUBLISH on the room channel, msgpack: binary)
    assert await mesh.emit("n1", "broadcast", {"rooms": ["mix"], "event": "from-node", "args": payload}) is True
    for name in ("n1", "a1", "b1"):
        assert await mesh.received(name, "from-node") == payload
    # our gateway A -> the Node client and B's client
    assert await mesh.emit("a1", "broadcast", {"rooms": ["mix"], "event": "from-a", "args": [1, "two"]}) is True
    for name in ("n1", "a1", "b1"):
        assert await mesh.received(name, "from-a") == [1, "two"]
    # B, namespace-wide (main channel), and to a room it does not serve
    assert await mesh.emit("b1", "broadcast", {"event": "from-b-all", "args": [3]}) is True
    for name in ("n1", "a1", "b1"):
        assert await mesh.received(name, "from-b-all") == [3]

    # another namespace, both directions
    await mesh.connect("achat", "a", "/chat")
    await mesh.connect("nchat", "node", "/chat")
    await mesh.node.call("server.broadcast", nsp="/chat", event="chat-from-node", args=[4])
    assert await mesh.received("achat", "chat-from-node") == [4]
    await mesh.emit("achat", "broadcast", {"event": "chat-from-a", "args": [5]})
    assert await mesh.received("nchat", "chat-from-a") == [5]
    await asyncio.sleep(SILENCE_S)
    assert not mesh.saw("a1", "chat-from-node") and not mesh.saw("n1", "chat-from-a")


async def test_fetch_sockets_server_side_emit_and_acks_across_three(mesh: Mesh) -> None:
    n1 = await mesh.connect("n1", "node")
    a1 = await mesh.connect("a1", "a")
    b1 = await mesh.connect("b1", "b")
    for name in ("n1", "a1", "b1"):
        await mesh.emit(name, "join", "fetch-room")

    # Node's fetchSockets sees both gateways' sockets, with their data
    found = {s["id"]: s for s in await mesh.node.call("server.fetch_sockets", rooms=["fetch-room"])}
    assert set(found) == {n1, a1, b1}
    assert found[b1]["data"] == {"server": "python", "auth": {"who": "b1"}}
    assert found[a1]["rooms"][0] == a1 and "fetch-room" in found[a1]["rooms"]
    # ours sees the other gateway's and Node's
    ours = {s["id"]: s for s in await mesh.emit("a1", "fetch", {"rooms": ["fetch-room"]})}
    assert set(ours) == {n1, a1, b1}
    assert ours[n1]["data"] == {"server": "node", "auth": {"who": "n1"}}
    assert await mesh.emit("a1", "server-count") == 3

    # serverSideEmit with ack, from each kind of node: one answer per other server
    answers = await mesh.node.call("server.server_side_emit", event="ping-servers", args=[{"from": "node"}], ack=True)
    assert answers == [{"server": "python", "arg": {"from": "node"}}] * 2
    answers = await mesh.emit("a1", "ssemit", {"from": "a"})
    assert sorted(answers, key=lambda x: x["server"]) == [
        {"server": "node", "arg": {"from": "a"}},
        {"server": "python", "arg": {"from": "a"}},
    ]
    # without ack, to our listener on B (`note`)
    await mesh.node.call("server.server_side_emit", event="note", args=["hello"])
    deadline = time.monotonic() + EVENT_TIMEOUT
    while await mesh.emit("b1", "notes") != [["hello"]]:
        assert time.monotonic() < deadline, "B never received the server-side note"
        await asyncio.sleep(0.05)

    # broadcast with acks: every client of every server acknowledges (Node clients auto-ack)
    acks = await mesh.emit("b1", "bcast-ack", {"rooms": ["fetch-room"], "event": "ack-me", "args": [7], "timeout": 4})
    # (only the first ack argument crosses a cluster, as in Node)
    assert acks == ["ack:ack-me"] * 3
    node_acks = await mesh.node.call("server.broadcast_ack", rooms=["fetch-room"], event="ack-node", args=[8], timeout=4000)
    assert node_acks == ["ack:ack-node"] * 3

    # sockets_join / sockets_leave / disconnect_sockets issued by our gateway reach the Node socket
    await mesh.emit("a1", "sockets-join", {"rooms": ["fetch-room"], "join": "joined-later"})
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        rooms = {s["id"]: s["rooms"] for s in await mesh.node.call("server.fetch_sockets", rooms=["joined-later"])}
        if set(rooms) == {n1, a1, b1}:
            break
        assert time.monotonic() < deadline, f"sockets_join did not reach every server: {rooms}"
        await asyncio.sleep(0.05)
    await mesh.wait_shardnumsub("socket.io#/#joined-later#", 3)
    await mesh.emit("a1", "sockets-leave", {"rooms": ["joined-later"], "leave": "joined-later"})
    await mesh.wait_shardnumsub("socket.io#/#joined-later#", 0)
    await mesh.emit("a1", "disconnect-room", {"rooms": [n1]})
    assert (await mesh.node.wait_event(ev="disconnect", name="n1", timeout=EVENT_TIMEOUT))["reason"] == "io server disconnect"



async def test_a_node_without_members_gets_no_traffic_for_the_room(mesh: Mesh) -> None:
    """Dynamic mode: only servers with members in a room hold its shard channel, so a room's
    broadcasts never reach the others; a room that empties is unsubscribed."""
    await mesh.connect("n1", "node")
    await mesh.connect("a1", "a")
    await mesh.connect("b1", "b")
    await mesh.emit("a1", "join", "only-a")
    await mesh.wait_shardnumsub("socket.io#/#only-a#", 1)  # A only: neither B nor Node subscribed

    received = "sio_gateway_redis_received_total"
    before_a, before_b = metric(mesh.a, received), metric(mesh.b, received)
    for i in range(20):
        await mesh.node.call("server.broadcast", rooms=["only-a"], event="for-a", args=[i])
    for i in range(20):
        assert (await mesh.received("a1", "for-a")) == [i]
    assert metric(mesh.a, received) - before_a >= 20
    assert metric(mesh.b, received) == before_b, "B received traffic for a room it does not serve"
    await asyncio.sleep(SILENCE_S)
    assert not mesh.saw("b1", "for-a") and not mesh.saw("n1", "for-a")

    # B gains a member: it subscribes and starts receiving; a socket-id room never gets a channel
    b_id = await mesh.connect("b2", "b")
    await mesh.emit("b2", "join", "only-a")
    await mesh.wait_shardnumsub("socket.io#/#only-a#", 2)
    assert await mesh.shardnumsub(f"socket.io#/#{b_id}#") == 0
    await mesh.node.call("server.broadcast", rooms=["only-a"], event="for-both", args=[1])
    assert await mesh.received("b2", "for-both") == [1]
    assert await mesh.received("a1", "for-both") == [1]

    # the room empties on A (leave) and on B (disconnect): both unsubscribe
    await mesh.emit("a1", "leave", "only-a")
    await mesh.wait_shardnumsub("socket.io#/#only-a#", 1)
    await mesh.node.call("client.disconnect", name="b2")
    await mesh.wait_shardnumsub("socket.io#/#only-a#", 0)
    before_a, before_b = metric(mesh.a, received), metric(mesh.b, received)
    await mesh.node.call("server.broadcast", rooms=["only-a"], event="for-nobody", args=[2])
    await mesh.node.call("server.broadcast", event="marker", args=[3])  # main channel: everyone
    assert await mesh.received("a1", "marker") == [3]
    assert await mesh.received("b1", "marker") == [3]
    assert metric(mesh.a, received) - before_a == 1 and metric(mesh.b, received) - before_b == 1


async def test_subscriptions_follow_a_slot_migration(mesh: Mesh) -> None:
    """The slot of a room channel is handed to another master (CLUSTER SETSLOT ... NODE): Redis
    drops the subscribers with a SUNSUBSCRIBE; our gateways re-read the slot map and subscribe on
    the new owner, so the room keeps working between our two gateways."""
    await mesh.connect("a1", "a")
    await mesh.connect("b1", "b")
    room = "migrating"
    channel = f"socket.io#/#{room}#"
    for name in ("a1", "b1"):
        await mesh.emit(name, "join", room)
    await mesh.wait_shardnumsub(channel, 2)

    old_port = await asyncio.to_thread(mesh.cluster.owner_port, channel)
    new_port = next(p for p in mesh.cluster.ports if p != old_port)
    await asyncio.to_thread(mesh.cluster.move_slot, key_slot(channel.encode()), new_port)
    assert await asyncio.to_thread(mesh.cluster.owner_port, channel) == new_port
    await mesh.wait_shardnumsub(channel, 2, timeout=8.0)  # asked of the new owner

    await mesh.emit("a1", "broadcast", {"rooms": [room], "event": "after-move", "args": [1]})
    assert await mesh.received("b1", "after-move") == [1]
    await mesh.emit("b1", "broadcast", {"rooms": [room], "event": "after-move-back", "args": [2]})
    assert await mesh.received("a1", "after-move-back") == [2]


async def test_a_restarted_master_gets_its_subscriptions_back(mesh: Mesh) -> None:
    """A master dies and comes back (same address, same cluster config): every link to it is
    rebuilt and the rooms whose channels it owns are subscribed again, without any client
    rejoining."""
    await mesh.connect("a1", "a")
    await mesh.connect("b1", "b")
    room = "survivor"
    channel = f"socket.io#/#{room}#"
    for name in ("a1", "b1"):
        await mesh.emit(name, "join", room)
    await mesh.wait_shardnumsub(channel, 2)

    port = await asyncio.to_thread(mesh.cluster.owner_port, channel)
    await asyncio.to_thread(mesh.cluster.restart_node, port)
    await mesh.wait_shardnumsub(channel, 2, timeout=20.0)
    await asyncio.to_thread(wait_healthy, mesh.a, 20.0)
    await asyncio.to_thread(wait_healthy, mesh.b, 20.0)

    await mesh.emit("a1", "broadcast", {"rooms": [room], "event": "after-restart", "args": [1]})
    assert await mesh.received("b1", "after-restart") == [1]
