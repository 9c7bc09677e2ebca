"""Redis and node failures against real processes (issue 4, must-show 1-6).

Every test runs real redis-server processes and real gateway processes (`python -m tests.sio_app
--redis URL`, settings through the environment), on loopback. Failures are caused the way they
happen in production: SIGSTOP/SIGCONT and SIGKILL + restart of redis-server, `CLIENT KILL TYPE
pubsub`, SIGKILL and SIGTERM of a gateway, a node started before its Redis. Every process is
stopped by PID at teardown.

Timings are shortened through the settings (reconnect cap 500 ms, watchdog 1.5 s, request timeout
1.5 s) so that the whole module stays well under two minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import socketio
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.node_driver import NodeDriver
from tests.ports import LOOPBACK, free_port

APP = "tests.sio_app"
REQUESTS_TIMEOUT_MS = 1500
SHUTDOWN_DEADLINE_MS = 3000
WATCHDOG_MS = 1500
CALL_TIMEOUT = 8.0
EVENT_TIMEOUT = 5.0
# Settings for every node: short reconnect cap and watchdog so that outages end quickly; no
# per-socket rate limit (the sequence streams below send steadily from one socket).
NODE_ENV = {
    "REDIS_RECONNECT_INITIAL_MS": "50",
    "REDIS_RECONNECT_MAX_MS": "500",
    "REDIS_WATCHDOG_MS": str(WATCHDOG_MS),
    "REQUESTS_TIMEOUT_MS": str(REQUESTS_TIMEOUT_MS),
    "SHUTDOWN_DEADLINE_MS": str(SHUTDOWN_DEADLINE_MS),
    "RATE_LIMIT_EVENTS_PER_S": "0",
    "LOG_LEVEL": "INFO",
}
REQUEST_CHANNEL = "socket.io-request#/#"
# A node counts the other nodes (the subscribers of its request channels) with every watchdog
# probe, three per REDIS_WATCHDOG_MS; after an outage it replays its outbox once as many are back.
# Tests that cut Redis right after starting their nodes let one such count happen first.
CLUSTER_COUNTED_S = WATCHDOG_MS / 1000


# -- processes -------------------------------------------------------------------------------------


class Nodes:
    """Gateway processes of one test; every one is stopped by PID at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[GatewayProcess] = []

    def start(self, redis_url: str, port: int | None = None, **env: str) -> GatewayProcess:
        node = GatewayProcess(APP, "--redis", redis_url, port=port, env={**NODE_ENV, **env}, log_dir=self.workdir)
        self.started.append(node)
        return node.start()

    def stop_all(self) -> None:
        for node in self.started:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.proc.pid, signal.SIGCONT)  # a test may have left it stopped
            node.stop(timeout=5)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisServerProcess]:
    """A redis-server this module may stop, freeze and restart on the same port."""
    server = RedisServerProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGCONT)
        server.stop(signal.SIGKILL)


# -- ops endpoints ---------------------------------------------------------------------------------


async def health(node: GatewayProcess) -> tuple[int, dict[str, Any]]:
    status, body = await asyncio.to_thread(node.get, "/health", 2.0)
    return status, json.loads(body)


async def wait_health(node: GatewayProcess, status: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            _, body = await health(node)
            if body.get("status") == status:
                return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node.url} /health not {status!r} within {timeout}s; last {body}\n{node.log_tail()}")


class HealthWatcher:
    """Polls /health of a node in the background and remembers every status it saw, in order."""

    def __init__(self, node: GatewayProcess, every: float = 0.1) -> None:
        self.node = node
        self.every = every
        self.seen: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                _, body = await health(self.node)
                status = body.get("status", "?")
            except (OSError, ValueError):
                status = "unreachable"
            if not self.seen or self.seen[-1] != status:
                self.seen.append(status)
            await asyncio.sleep(self.every)

    def __enter__(self) -> "HealthWatcher":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()


def metrics(node: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client's own text parser."""
    status, body = node.get("/metrics", 3.0)
    assert status == 200, body
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(node: GatewayProcess, name: str, **labels: str) -> float:
    samples = metrics(node)
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not in /metrics: {sorted(k[0] for k in samples)}"
    return samples[key]


# -- clients ---------------------------------------------------------------------------------------


class SeqClient:
    """A python-socketio client on one node that publishes and records numbered messages."""

    def __init__(self, node: GatewayProcess, name: str) -> None:
        self.node = node
        self.name = name
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: dict[str, list[int]] = {}
        self.arrived = asyncio.Event()
        self.sio.on("seq", self._on_seq)

    async def _on_seq(self, message: dict[str, Any]) -> None:
        self.received.setdefault(message["from"], []).append(message["n"])
        self.arrived.set()

    async def connect(self) -> "SeqClient":
        await self.sio.connect(self.node.url, transports=["websocket"], wait_timeout=EVENT_TIMEOUT)
        return self

    async def send(self, n: int, tag: str | None = None) -> None:
        """Broadcast message n to the whole namespace (this node's sockets and every other node's)."""
        spec = {"event": "seq", "args": [{"from": tag or self.name, "n": n}]}
        assert await self.sio.call("broadcast", spec, timeout=CALL_TIMEOUT) is True

    async def call(self, event: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        return await self.sio.call(event, *args, timeout=timeout) if args else await self.sio.call(event, timeout=timeout)

    async def wait_for(self, sender: str, count: int, timeout: float = 10.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(self.received.get(sender, [])) < count and time.monotonic() < deadline:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))
        return self.received.get(sender, [])


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[GatewayProcess, str], Any]]:
    made: list[SeqClient] = []

    async def make(node: GatewayProcess, name: str) -> SeqClient:
        client = SeqClient(node, name)
        made.append(client)
        return await client.connect()

    yield make
    for client in made:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.sio.disconnect(), 3)


class Stream:
    """A steady stream of numbered broadcasts from one client (one every `every` seconds)."""

    def __init__(self, client: SeqClient, every: float = 0.05) -> None:
        self.client = client
        self.every = every
        self.sent = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.client.send(self.sent)
            self.sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every)

    def start(self) -> "Stream":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> int:
        self._stop.set()
        assert self._task is not None
        await self._task  # re-raises a failed send
        return self.sent


async def redis_client(server: RedisServerProcess) -> aioredis.Redis:
    return aioredis.from_url(server.url, decode_responses=True, socket_timeout=3)


async def subscribers(server: RedisServerProcess) -> tuple[int, list[tuple[int, int]]]:
    """(subscribers of the `/` request channel, sorted (patterns, channels) of every subscriber
    connection) as Redis counts them."""
    client = await redis_client(server)
    try:
        numsub = await client.pubsub_numsub(REQUEST_CHANNEL)
        listing = await client.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
    finally:
        await client.aclose()
    if isinstance(listing, bytes):
        listing = listing.decode()
    counts = []
    for line in str(listing).splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        counts.append((int(fields["psub"]), int(fields["sub"])))
    return int(numsub[0][1]), sorted(counts)


# -- 1. Redis outage during a steady cross-node stream ---------------------------------------------


async def _freeze(redis: RedisServerProcess, seconds: float) -> None:
    assert redis.pid is not None
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(redis.pid, signal.SIGCONT)


async def _kill_and_restart(redis: RedisServerProcess, seconds: float) -> None:
    redis.stop(signal.SIGKILL)
    await asyncio.sleep(seconds)
    await asyncio.to_thread(redis.start)


@pytest.mark.parametrize("outage", ["sigstop", "kill-restart", "kill-restart-default-cap"])
async def test_redis_outage_loses_and_duplicates_nothing(outage: str, redis_proc: RedisServerProcess, nodes: Nodes, clients: Any) -> None:
    """Must-show 1 (and 6): two nodes, a client on each streaming numbered broadcasts while Redis
    is frozen (SIGSTOP) or killed and restarted on the same port for 5 s: every message arrives
    exactly once and in order on the other node; /health goes degraded and back to healthy.

    With the default reconnect cap (3 s) the nodes come back up to 3 s apart, so a node must not
    replay its outbox before the others listen again."""
    env = {"REDIS_RECONNECT_MAX_MS": "3000"} if outage.endswith("default-cap") else {}
    a = nodes.start(redis_proc.url, **env)
    b = nodes.start(redis_proc.url, **env)
    await wait_health(a, "healthy")
    await wait_health(b, "healthy")
    # A killed Redis makes both links reconnect; a frozen one is a stall: the open connections
    # are kept (they hold what Redis sends when it resumes) and the node reports degraded.
    counter = "sio_gateway_redis_stalls_total" if outage == "sigstop" else "sio_gateway_redis_reconnects_total"
    counted_before = metric(a, counter) + metric(b, counter)
    ca = await clients(a, "A")
    cb = await clients(b, "B")

    with HealthWatcher(a) as watch_a, HealthWatcher(b) as watch_b:
        streams = [Stream(ca).start(), Stream(cb).start()]
        await asyncio.sleep(CLUSTER_COUNTED_S)
        if outage == "sigstop":
            await _freeze(redis_proc, 5.0)
        else:
            await _kill_and_restart(redis_proc, 5.0)
        await wait_health(a, "healthy", timeout=15)
        await wait_health(b, "healthy", timeout=15)
        await asyncio.sleep(1.0)  # the stream goes on over the rejoined cluster
        sent = {"A": await streams[0].stop(), "B": await streams[1].stop()}
        await asyncio.sleep(0.3)

    assert sent["A"] > 60 and sent["B"] > 60, sent
    # Cross-node: exactly once, in order, nothing missing.
    got_on_b = await cb.wait_for("A", sent["A"])
    got_on_a = await ca.wait_for("B", sent["B"])
    await asyncio.sleep(0.5)  # anything duplicated would still be arriving
    assert cb.received["A"] == list(range(sent["A"])), _gaps(got_on_b, sent["A"])
    assert ca.received["B"] == list(range(sent["B"])), _gaps(got_on_a, sent["B"])
    # Local delivery never stopped.
    assert ca.received["A"] == list(range(sent["A"]))
    assert cb.received["B"] == list(range(sent["B"]))
    for watch in (watch_a, watch_b):
        assert "degraded" in watch.seen, watch.seen
        assert watch.seen[0] == "healthy" and watch.seen[-1] == "healthy", watch.seen
        assert "unhealthy" not in watch.seen and "unreachable" not in watch.seen, watch.seen
    # The outage shows in the counters (on both nodes), and nothing was dropped.
    assert metric(a, counter) + metric(b, counter) - counted_before >= 2
    for node in (a, b):
        assert metric(node, "sio_gateway_redis_outbox_dropped_total") == 0
        assert metric(node, "sio_gateway_redis_outbox") == 0
        assert metric(node, "sio_gateway_redis_link_up", link="subscriber") == 1
        assert metric(node, "sio_gateway_redis_link_up", link="publisher") == 1
    subscribed = await subscribers(redis_proc)
    assert subscribed[0] == 2 and len(subscribed[1]) == 2 and subscribed[1][0] == subscribed[1][1], subscribed


def _gaps(got: list[int], sent: int) -> str:
    missing = sorted(set(range(sent)) - set(got))
    dupes = sorted({n for n in got if got.count(n) > 1})
    disorder = [(x, y) for x, y in zip(got, got[1:]) if y <= x][:10]
    return f"sent {sent}, got {len(got)}; missing {missing[:30]}; duplicated {dupes[:30]}; out of order {disorder}"


# -- 2. subscriber killed by Redis -----------------------------------------------------------------


async def test_killed_subscribers_are_restored_within_3s(redis_proc: RedisServerProcess, nodes: Nodes, clients: Any) -> None:
    """Must-show 2: `CLIENT KILL TYPE pubsub` drops every subscriber connection (what Redis does to
    a slow subscriber); both nodes resubscribe by themselves and cross-node delivery resumes in 3 s."""
    a = nodes.start(redis_proc.url)
    b = nodes.start(redis_proc.url)
    await wait_health(a, "healthy")
    await wait_health(b, "healthy")
    ca = await clients(a, "A")
    cb = await clients(b, "B")
    await ca.send(0)
    assert await cb.wait_for("A", 1) == [0]
    subscribed = await subscribers(redis_proc)
    assert subscribed[0] == 2 and len(subscribed[1]) == 2 and subscribed[1][0][0] >= 1, subscribed
    reconnects_before = metric(b, "sio_gateway_redis_reconnects_total")

    admin = await redis_client(redis_proc)
    try:
        killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finally:
        await admin.aclose()
    assert int(killed) >= 2
    killed_at = time.monotonic()
    # Keep sending; the first message B receives after the kill proves delivery resumed.
    n = 1
    while time.monotonic() - killed_at < 3.0:
        await ca.send(n)
        n += 1
        if len(cb.received["A"]) > 1:
            break
        await asyncio.sleep(0.05)
    resumed_after = time.monotonic() - killed_at
    assert len(cb.received["A"]) > 1, f"no cross-node delivery within 3 s of the kill\n{b.log_tail()}"
    assert resumed_after <= 3.0
    # Every pattern and channel subscription is back, and counted as a reconnect.
    assert await subscribers(redis_proc) == subscribed
    assert metric(b, "sio_gateway_redis_reconnects_total") > reconnects_before
    assert (await health(b))[1]["status"] == "healthy"
    # Both directions work again.
    await cb.send(0)
    assert await ca.wait_for("B", 1) == [0]


# -- 3. node started while Redis is down ----------------------------------------------------------


async def test_node_started_without_redis_serves_locally_then_joins(tmp_path: Path, nodes: Nodes, clients: Any) -> None:
    """Must-show 3: REDIS_URL points at a port where nothing listens. The node serves local clients
    at once and says it is degraded (single-node after REDIS_RECONNECT_ATTEMPTS); once redis-server
    starts on that port, it joins the cluster without a restart."""
    redis = RedisServerProcess(tmp_path, port=free_port())  # not started yet
    try:
        started = time.monotonic()
        a = nodes.start(redis.url, REDIS_RECONNECT_ATTEMPTS="3")
        assert time.monotonic() - started < 10
        status, body = await health(a)
        assert status == 200 and body["status"] == "degraded", body
        ca = await clients(a, "A")
        ca2 = await clients(a, "A2")
        await ca.send(0)
        assert await ca2.wait_for("A", 1) == [0]
        assert await ca.wait_for("A", 1) == [0]
        # After the configured attempts the node says it is on its own (and keeps trying).
        deadline = time.monotonic() + 5
        while (await health(a))[1]["adapter"]["mode"] != "single-node" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        body = (await health(a))[1]
        assert body["adapter"]["mode"] == "single-node" and body["status"] == "degraded", body
        attempts = metric(a, "sio_gateway_redis_reconnect_attempts_total")
        assert attempts >= 3
        assert metric(a, "sio_gateway_redis_link_up", link="subscriber") == 0
        fetched = await ca.call("cluster-fetch")
        assert fetched["ok"] is False and fetched["error"] == "ClusterUnavailable", fetched

        await asyncio.to_thread(redis.start)
        body = await wait_health(a, "healthy", timeout=5)
        assert body["adapter"]["mode"] == "redis", body
        b = nodes.start(redis.url)
        await wait_health(b, "healthy")
        cb = await clients(b, "B")
        await ca.send(1)
        assert await cb.wait_for("A", 1) == [1]
        await cb.send(0)
        assert await ca.wait_for("B", 1) == [0]
        fetched = await ca.call("cluster-fetch")
        assert fetched["ok"] is True and len(fetched["ids"]) == 3, fetched
        assert metric(a, "sio_gateway_redis_reconnects_total") >= 1
        assert metric(a, "sio_gateway_redis_link_up", link="subscriber") == 1
    finally:
        redis.stop(signal.SIGKILL)


# -- 4. a node dies with requests in flight --------------------------------------------------------


async def test_requests_complete_when_a_node_is_sigkilled(redis_proc: RedisServerProcess, nodes: Nodes, clients: Any) -> None:
    """Must-show 4: three nodes; C is SIGKILLed while A's fetch_sockets and server_side_emit (with
    ack) wait for it, and then asked again. The in-flight requests end at REQUESTS_TIMEOUT_MS with
    the living node's answers in the error; later ones complete at once with the living nodes'
    answers; no pending request is left behind."""
    a, b, c = (nodes.start(redis_proc.url) for _ in range(3))
    for node in (a, b, c):
        await wait_health(node, "healthy")
    ca, cb, cc = await clients(a, "A"), await clients(b, "B"), await clients(c, "C")
    ids = {name: (await client.call("whoami"))["id"] for name, client in (("A", ca), ("B", cb), ("C", cc))}
    fetched = await ca.call("cluster-fetch")
    assert fetched["ok"] is True and sorted(fetched["ids"]) == sorted(ids.values()), fetched
    timeouts_before = metric(a, "sio_gateway_redis_request_timeouts_total")

    # C freezes (still subscribed, so it is counted), the requests go out, then C is SIGKILLed.
    assert c.proc is not None
    os.kill(c.proc.pid, signal.SIGSTOP)
    began = time.monotonic()
    fetch = asyncio.ensure_future(ca.call("cluster-fetch"))
    ping = asyncio.ensure_future(ca.call("cluster-ping", "in-flight"))
    await asyncio.sleep(0.3)
    c.kill()
    fetched, pinged = await fetch, await ping
    took = time.monotonic() - began
    assert took < REQUESTS_TIMEOUT_MS / 1000 + 1.0, took
    assert fetched == {"ok": False, "error": "AdapterTimeout", "ids": [ids["B"]]}, fetched
    assert pinged == {"ok": False, "error": "AdapterTimeout", "answers": [{"server": "python", "arg": "in-flight"}]}, pinged

    # C is gone: the next requests are answered by B alone, well within the timeout.
    began = time.monotonic()
    fetched = await ca.call("cluster-fetch")
    pinged = await ca.call("cluster-ping", "after")
    took = time.monotonic() - began
    assert took < REQUESTS_TIMEOUT_MS / 1000, took
    assert fetched["ok"] is True and sorted(fetched["ids"]) == sorted([ids["A"], ids["B"]]), fetched
    assert pinged == {"ok": True, "answers": [{"server": "python", "arg": "after"}]}, pinged

    for node in (a, b):
        assert metric(node, "sio_gateway_cluster_pending_requests") == 0
    assert metric(a, "sio_gateway_redis_request_timeouts_total") - timeouts_before == 2


# -- 5. SIGTERM behind nginx ------------------------------------------------------------------------


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """A test-local nginx in front of the gateways (round robin with failover)."""

    def __init__(self, workdir: Path, upstreams: list[int]) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        self.conf = self.dir / "nginx.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        temp = "\n".join(f"    {kind}_temp_path {self.dir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        servers = "\n".join(f"        server {LOOPBACK}:{port} max_fails=1 fail_timeout=30s;" for port in upstreams)
        self.conf.write_text(
            f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
events {{ worker_connections 512; }}
http {{
    access_log {self.dir / "access.log"};
{temp}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream gateways {{
        # one client address on loopback: every client lands on the same node, as sticky
        # sessions would put one user's clients (and long-polling needs stickiness anyway)
        ip_hash;
{servers}
    }}
    server {{
        listen {LOOPBACK}:{self.port};
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_next_upstream error;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            proxy_buffering off;
        }}
    }}
}}
"""
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "Nginx":
        log = open(self.dir / "stderr.log", "ab")
        with log:
            self.proc = subprocess.Popen(
                [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.conf), "-g", f"daemon off; pid {self.dir / 'nginx.pid'};"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.logs()}")
            with contextlib.suppress(OSError):
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.port}: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            (self.dir / name).read_text(errors="replace")[-2000:] for name in ("stderr.log", "error.log") if (self.dir / name).exists()
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown; the master stops its workers
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
async def node_clients() -> AsyncIterator[NodeDriver]:
    driver = NodeDriver(label="resilience-clients")
    await driver.start()
    try:
        yield driver
    finally:
        await driver.close()


async def test_sigterm_sends_clients_to_the_other_node(tmp_path: Path, redis_proc: RedisServerProcess, nodes: Nodes, node_clients: NodeDriver) -> None:
    """Must-show 5: socket.io-client 4.8 clients (WebSocket and long-polling) connected through
    nginx to one node; SIGTERM on that node: each client sees a transport close, reconnects by
    itself through nginx, lands on the other node, and the process exits within
    SHUTDOWN_DEADLINE_MS."""
    a = nodes.start(redis_proc.url)
    b = nodes.start(redis_proc.url)
    proxy = Nginx(tmp_path, [a.port, b.port]).start()
    try:
        options = {
            "reconnectionDelay": 100,
            "reconnectionDelayMax": 300,
            "randomizationFactor": 0,
        }
        kinds = {"ws1": {"transports": ["websocket"]}, "ws2": {"transports": ["websocket"]}, "poll": {"transports": ["polling"]}, "default": {}}
        for name, extra in kinds.items():
            await node_clients.call("client.connect", name=name, url=proxy.url, nsp="/", opts={**options, **extra})
        ports = {}
        for name in kinds:
            (info,) = await node_clients.call("client.emit", name=name, event="node-info", ack=True)
            ports[name] = info["port"]
        assert len(set(ports.values())) == 1, ports  # ip_hash: one node holds them all
        victim, survivor = (a, b) if ports["ws1"] == a.port else (b, a)
        node_clients.drain_events()
        with HealthWatcher(victim, every=0.02) as watch:
            await asyncio.sleep(0.1)
            sent_at = time.monotonic()
            victim.signal(signal.SIGTERM)
            code = await asyncio.to_thread(victim.wait, SHUTDOWN_DEADLINE_MS / 1000 + 2)
            exited_after = time.monotonic() - sent_at
        assert code == 0, f"exit code {code}\n{victim.log_tail()}"
        assert exited_after < SHUTDOWN_DEADLINE_MS / 1000, exited_after
        # Draining was visible (503 "unhealthy") or the node was already gone when polled.
        assert watch.seen[0] == "healthy" and set(watch.seen[1:]) <= {"unhealthy", "unreachable"}, watch.seen

        for name in kinds:
            gone = await node_clients.wait_event(ev="disconnect", name=name, timeout=EVENT_TIMEOUT)
            assert gone["reason"] == "transport close", gone
            await node_clients.wait_event(ev="connect", name=name, timeout=EVENT_TIMEOUT)
            (info,) = await node_clients.call("client.emit", name=name, event="node-info", ack=True)
            assert info["port"] == survivor.port, (name, info)
        status, body = await health(survivor)
        assert body["connections"] == len(kinds), body
        assert "shutdown_done" in victim.log_tail(50)
    finally:
        proxy.stop()


# -- 6. metrics -----------------------------------------------------------------------------------


async def test_metrics_parse_and_count_bad_input(redis_proc: RedisServerProcess, nodes: Nodes, clients: Any) -> None:
    """Must-show 6: /metrics is valid Prometheus text (prometheus-client's parser reads it), it has
    the families the issue lists, and its counters move: malformed Engine.IO and Socket.IO packets
    from a client, a malformed message on the cluster's request channel, broadcasts both ways."""
    a = nodes.start(redis_proc.url)
    b = nodes.start(redis_proc.url)
    await wait_health(a, "healthy")
    await wait_health(b, "healthy")
    status, body = a.get("/metrics")
    assert status == 200
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    expected = {
        "sio_gateway_connections": "gauge",
        "sio_gateway_namespaces": "gauge",
        "sio_gateway_rooms": "gauge",
        "sio_gateway_bad_packets": "counter",
        "sio_gateway_broadcasts": "counter",
        "sio_gateway_redis_publish_seconds": "histogram",
        "sio_gateway_redis_reconnects": "counter",
        "sio_gateway_redis_link_up": "gauge",
        "sio_gateway_redis_outbox": "gauge",
        "sio_gateway_redis_outbox_dropped": "counter",
        "sio_gateway_redis_request_timeouts": "counter",
        "sio_gateway_cluster_pending_requests": "gauge",
        "sio_gateway_packets": "counter",
    }
    for name, kind in expected.items():
        assert families.get(name) == kind, (name, families.get(name))
    before = metrics(a)

    ca = await clients(a, "A")
    cb = await clients(b, "B")
    await ca.send(0)
    await cb.send(0)
    assert await cb.wait_for("A", 1) == [0] and await ca.wait_for("B", 1) == [0]
    ws_url = f"ws://{LOOPBACK}:{a.port}/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(ws_url) as ws:
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith("0{")
        await ws.send("40")
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith("40")
        await ws.send('42["unterminated"')  # a Socket.IO EVENT that is not JSON
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            await asyncio.wait_for(ws.recv(), 2)
    async with websockets.connect(ws_url) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        await ws.send("9nonsense")  # no such Engine.IO packet type
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            await asyncio.wait_for(ws.recv(), 2)
    publisher = await redis_client(redis_proc)
    try:
        await publisher.publish(REQUEST_CHANNEL, b"\xc1 not msgpack")
    finally:
        await publisher.aclose()
    await asyncio.sleep(0.3)

    after = metrics(a)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert moved("sio_gateway_bad_packets_total", layer="socketio") >= 1
    assert moved("sio_gateway_bad_packets_total", layer="engineio") >= 1
    assert moved("sio_gateway_redis_bad_messages_total") >= 1
    assert moved("sio_gateway_broadcasts_total", origin="local") >= 1
    assert moved("sio_gateway_broadcasts_total", origin="remote") >= 1
    assert moved("sio_gateway_redis_published_total") >= 1
    assert moved("sio_gateway_redis_publish_seconds_count") >= 1
    assert after[("sio_gateway_connections", (("transport", "websocket"),))] >= 1
    assert moved("sio_gateway_packets_total", direction="in") >= 2
    assert moved("sio_gateway_packets_total", direction="out") >= 2


# -- outbox bounds --------------------------------------------------------------------------------


async def test_outbox_bounds_drop_and_count_and_requests_fail_fast(redis_proc: RedisServerProcess, nodes: Nodes, clients: Any) -> None:
    """While Redis is down, cross-node messages wait in the outbox up to OUTBOX_MAX_MESSAGES (the
    oldest go first) and OUTBOX_MAX_AGE_MS; what exceeds is dropped and counted; what is kept is
    delivered in order when Redis is back. Requests fail fast with ClusterUnavailable meanwhile."""
    a = nodes.start(redis_proc.url, OUTBOX_MAX_MESSAGES="5", OUTBOX_MAX_AGE_MS="3000")
    b = nodes.start(redis_proc.url)
    await wait_health(a, "healthy")
    await wait_health(b, "healthy")
    ca = await clients(a, "A")
    cb = await clients(b, "B")
    await ca.send(0, tag="warmup")
    assert await cb.wait_for("warmup", 1) == [0]
    await asyncio.sleep(CLUSTER_COUNTED_S)

    # Outage 1: more messages than the outbox holds.
    redis_proc.stop(signal.SIGKILL)
    await wait_health(a, "degraded")
    began = time.monotonic()
    fetched = await ca.call("cluster-fetch")
    assert time.monotonic() - began < 1.0
    assert fetched == {"ok": False, "error": "ClusterUnavailable", "ids": []}, fetched
    pinged = await ca.call("cluster-ping", "x")
    assert pinged["ok"] is False and pinged["error"] == "ClusterUnavailable", pinged
    await ca.send(0, tag="count")
    deadline = time.monotonic() + 5
    while (await health(a))[1]["adapter"]["publisher"] != "down" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (await health(a))[1]["adapter"]["publisher"] == "down"
    for n in range(1, 12):
        await ca.send(n, tag="count")
    assert metric(a, "sio_gateway_redis_outbox") == 5
    assert metric(a, "sio_gateway_redis_outbox_dropped_total") == 7
    assert ca.received["count"] == list(range(12))  # local delivery is not affected
    await asyncio.to_thread(redis_proc.start)
    await wait_health(a, "healthy")
    assert await cb.wait_for("count", 5) == [7, 8, 9, 10, 11]

    # Outage 2: messages older than OUTBOX_MAX_AGE_MS are not replayed.
    redis_proc.stop(signal.SIGKILL)
    await wait_health(a, "degraded")
    for n in range(3):
        await ca.send(n, tag="age")
    await asyncio.sleep(4.0)
    for n in range(3, 5):
        await ca.send(n, tag="age")
    await asyncio.to_thread(redis_proc.start)
    await wait_health(a, "healthy")
    assert await cb.wait_for("age", 2) == [3, 4]
    await ca.send(0, tag="after")
    assert await cb.wait_for("after", 1) == [0]
    assert cb.received["age"] == [3, 4] and cb.received["count"] == [7, 8, 9, 10, 11]
    assert metric(a, "sio_gateway_redis_outbox_dropped_total") == 10
    assert metric(a, "sio_gateway_redis_outbox") == 0
