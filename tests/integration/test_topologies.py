"""Production topologies against real processes on loopback (issue 6, must-show 1, 2, 4 and the
local cluster command).

- nginx (the project's nginx.conf, rendered for the test's ports by gateway/topology.py) in front
  of three gateway nodes: a Node socket.io-client with default options (polling, then upgrade)
  gets a room broadcast emitted on another node; clients from several loopback addresses (all of
  127/8 is loopback on Linux) each stay on one node; X-Forwarded-For is believed only from the
  trusted proxy.
- Redis Sentinel: master, replica, three sentinels; the master is SIGKILLed while numbered
  messages flow between two nodes; the nodes follow the promoted replica by themselves.
- TLS: redis-server with only a TLS port and a CA made here with openssl; nodes with the CA join,
  a node with another CA refuses and logs why.
- `sio-gateway cluster --nodes 2`: comes up, prints the URL, a client connects through it, SIGTERM
  stops every process it started.

The Node client cannot choose its source address for long-polling (engine.io-client passes no
`localAddress` to its XHR), so the clients that need one are python-socketio clients with an
aiohttp connector bound to that address; the node a client landed on and the address it saw are
read from the test app's `node-info` ack. Every process is started here and stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import socketio
from prometheus_client.parser import text_string_to_metric_families

from gateway.topology import NGINX_CONF, nginx_command, port_is_free, render_nginx_conf
from tests.conftest import RedisServerProcess, stop_process_group
from tests.gateway_process import REPO, GatewayProcess
from tests.node_driver import NodeDriver
from tests.ports import LOOPBACK, free_port, free_ports

APP = "tests.sio_app"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
EVENT_TIMEOUT = 8.0
CALL_TIMEOUT = 8.0
NODE_ENV = {
    "REDIS_RECONNECT_INITIAL_MS": "50",
    "REDIS_RECONNECT_MAX_MS": "500",
    "REDIS_WATCHDOG_MS": "1500",
    "REQUESTS_TIMEOUT_MS": "1500",
    "SHUTDOWN_DEADLINE_MS": "3000",
    "RATE_LIMIT_EVENTS_PER_S": "0",
    "LOG_LEVEL": "INFO",
}
MASTER = "sio-master"
REQUEST_CHANNEL = "socket.io-request#/#"


# -- processes -------------------------------------------------------------------------------------


class Daemon:
    """A server process started here from an argv, ready when `ready()` says so; it runs in a
    process group of its own and is stopped through it, so what it forked (nginx workers) stops
    with it."""

    def __init__(self, name: str, argv: list[str], workdir: Path, ready: Callable[[], bool]) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.ready = ready
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout: float = 10.0) -> "Daemon":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"{self.name} not ready within {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """`sig` to its process group (SIGKILL simulates a crash), SIGKILL after 5 s; reaps."""
        if self.proc is not None:
            stop_process_group(self.proc, sig, 5.0)


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class Started:
    """Everything one test started, stopped by process group at teardown (gateways first)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.gateways: list[GatewayProcess] = []
        self.daemons: list[Daemon] = []

    def gateway(self, redis_url: str, **env: str) -> GatewayProcess:
        node = GatewayProcess(APP, "--redis", redis_url, env={**NODE_ENV, **env}, log_dir=self.workdir)
        self.gateways.append(node)
        return node.start()

    def daemon(self, name: str, argv: list[str], ready: Callable[[], bool]) -> Daemon:
        daemon = Daemon(name, argv, self.workdir, ready)
        self.daemons.append(daemon)
        return daemon.start()

    def nginx(self, upstream_ports: list[int]) -> tuple[Daemon, str]:
        prefix = self.workdir / "nginx"
        prefix.mkdir()
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), upstream_ports, port, prefix))
        return self.daemon("nginx", nginx_command(NGINX, prefix, conf), lambda: accepts(port)), f"http://{LOOPBACK}:{port}"

    def stop_all(self) -> None:
        for node in self.gateways:
            node.stop(timeout=5)
        for daemon in reversed(self.daemons):
            daemon.stop(signal.SIGKILL)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    everything = Started(tmp_path)
    try:
        yield everything
    finally:
        everything.stop_all()


@pytest.fixture
async def node_clients() -> AsyncIterator[NodeDriver]:
    driver = NodeDriver(label="topology-clients")
    await driver.start()
    try:
        yield driver
    finally:
        await driver.close()


async def health(node: GatewayProcess) -> dict[str, Any]:
    _, body = await asyncio.to_thread(node.get, "/health", 2.0)
    return json.loads(body)


async def wait_health(node: GatewayProcess, status: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            body = await health(node)
            if body.get("status") == status:
                return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node.url} /health not {status!r} within {timeout}s; last {body}\n{node.log_tail()}")


def metric(node: GatewayProcess, name: str) -> float:
    status, body = node.get("/metrics", 3.0)
    assert status == 200, body
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


# -- python clients --------------------------------------------------------------------------------


class Client:
    """A python-socketio client, optionally from a chosen loopback source address."""

    def __init__(self, url: str, source: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else aiohttp.TCPConnector()
        self.http = aiohttp.ClientSession(connector=connector)
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.received: dict[str, list[Any]] = {}
        self.arrived = asyncio.Event()

        @self.sio.on("*")
        async def any_event(event: str, *args: Any) -> None:
            self.received.setdefault(event, []).append(args[0] if len(args) == 1 else list(args))
            self.arrived.set()

    async def connect(self, transports: list[str] | None = None) -> "Client":
        await self.sio.connect(self.url, headers=self.headers, transports=transports, wait_timeout=EVENT_TIMEOUT)
        return self

    async def call(self, event: str, *args: Any) -> Any:
        return await self.sio.call(event, *args, timeout=CALL_TIMEOUT) if args else await self.sio.call(event, timeout=CALL_TIMEOUT)

    async def wait_for(self, event: str, count: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.received.get(event, [])) < count and time.monotonic() < deadline:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))
        return self.received.get(event, [])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), 3)
        await self.http.close()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Any]]:
    made: list[Client] = []

    async def make(url: str, source: str | None = None, headers: dict[str, str] | None = None, transports: list[str] | None = None) -> Client:
        client = Client(url, source, headers)
        made.append(client)
        return await client.connect(transports)

    yield make
    for client in made:
        await client.close()


# -- 1. nginx in front of three nodes --------------------------------------------------------------


async def test_nginx_ip_hash_upgrade_broadcast_and_forwarded_for(
    started: Started, redis_server: RedisServerProcess, node_clients: NodeDriver, clients: Any
) -> None:
    nodes = [started.gateway(redis_server.url, TRUSTED_PROXIES=LOOPBACK) for _ in range(3)]
    for node in nodes:
        await wait_health(node, "healthy")
    _, url = started.nginx([node.port for node in nodes])

    # A browser-like client: default options, so long-polling first, then the upgrade, all
    # through nginx (without stickiness the polling requests would hit nodes without the session).
    await node_clients.call("client.connect", name="web", url=url, nsp="/", opts={})
    upgrade = await node_clients.wait_event(ev="upgrade", name="web", timeout=EVENT_TIMEOUT)
    assert upgrade["transport"] == "websocket"
    (info,) = await node_clients.call("client.emit", name="web", event="node-info", ack=True)
    assert info["address"] == LOOPBACK, info  # nginx (trusted) forwarded 127.0.0.1
    web_node = info["port"]
    assert web_node in {node.port for node in nodes}
    assert (await node_clients.call("client.emit", name="web", event="join", args=["news"], ack=True))[0][-1] == "news"

    # A broadcast into the room from a client of another node reaches it through Redis.
    other = next(node for node in nodes if node.port != web_node)
    sender = await clients(other.url, transports=["websocket"])
    assert await sender.call("broadcast", {"rooms": ["news"], "event": "headline", "args": [{"n": 1}]}) is True
    got = await node_clients.wait_event(ev="event", name="web", event="headline", timeout=EVENT_TIMEOUT)
    assert got["args"] == [{"n": 1}]
    assert await node_clients.call("client.transport", name="web") == "websocket"

    # Other client addresses: each one is pinned to one node (every connection, polling and the
    # upgrade alike), different addresses spread over the nodes, and each node reports the address
    # nginx forwarded. ip_hash hashes the first three octets, hence 127.<k>.0.1.
    placement: dict[str, set[int]] = {}
    for k in range(1, 7):
        source = f"127.{k}.0.1"
        for _ in range(2):
            client = await clients(url, source=source)  # default transports: polling, then upgrade
            seen = await client.call("node-info")
            assert seen["address"] == source, (source, seen)
            placement.setdefault(source, set()).add(seen["port"])
            await client.close()
    assert all(len(ports) == 1 for ports in placement.values()), placement
    assert len(set().union(*placement.values())) >= 2, placement

    # X-Forwarded-For sent by a client is not believed: nginx appends the real peer, and the
    # gateway stops at the first address that is not a trusted proxy.
    spoofer = await clients(url, source="127.1.0.1", headers={"X-Forwarded-For": "203.0.113.9"})
    assert (await spoofer.call("node-info"))["address"] == "127.1.0.1"
    # Straight to a node from an untrusted address: the header is ignored altogether.
    direct = await clients(nodes[0].url, source="127.3.0.1", headers={"X-Forwarded-For": "203.0.113.9"}, transports=["websocket"])
    assert (await direct.call("node-info"))["address"] == "127.3.0.1"
    # From the trusted proxy's address the header is believed (that is what nginx relies on).
    trusted = await clients(nodes[0].url, headers={"X-Forwarded-For": "203.0.113.9"}, transports=["polling"])
    assert (await trusted.call("node-info"))["address"] == "203.0.113.9"


# -- 2. Redis Sentinel failover ---------------------------------------------------------------------


def sentinel_conf(workdir: Path, port: int, master_port: int) -> Path:
    path = workdir / f"sentinel-{port}.conf"
    path.write_text(
        f"""port {port}
bind {LOOPBACK}
daemonize no
dir {workdir}
sentinel monitor {MASTER} {LOOPBACK} {master_port} 2
sentinel down-after-milliseconds {MASTER} 1000
sentinel failover-timeout {MASTER} 3000
sentinel parallel-syncs {MASTER} 1
"""
    )
    return path


def redis_conf(workdir: Path, name: str, port: int, *extra: str) -> Path:
    # A config file, not flags: Sentinel rewrites it when it reconfigures the server.
    path = workdir / f"{name}.conf"
    lines = [f"port {port}", f"bind {LOOPBACK}", 'save ""', "appendonly no", f"dir {workdir}", f"dbfilename {name}.rdb", *extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def sentinel_view(port: int) -> dict[str, Any]:
    with redis.Redis(host=LOOPBACK, port=port, socket_timeout=2, decode_responses=True) as client:
        return client.sentinel_master(MASTER)


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, redis.RedisError):
            if await asyncio.to_thread(check):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s")


class Stream:
    """Numbered broadcasts from one client to the namespace, one every `every` seconds."""

    def __init__(self, client: Client, name: str, every: float = 0.05) -> None:
        self.client = client
        self.name = name
        self.every = every
        self.sent = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            spec = {"event": f"seq-{self.name}", "args": [self.sent]}
            assert await self.client.call("broadcast", spec) is True
            self.sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every)

    def start(self) -> "Stream":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> int:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.sent


async def test_sentinel_failover_resumes_cross_node_delivery(started: Started, clients: Any) -> None:
    work = started.workdir
    master_port, replica_port, *sentinel_ports = free_ports(5)
    master = started.daemon("master", [REDIS_SERVER, str(redis_conf(work, "master", master_port))], lambda: answers_ping(master_port))
    started.daemon(
        "replica", [REDIS_SERVER, str(redis_conf(work, "replica", replica_port, f"replicaof {LOOPBACK} {master_port}"))], lambda: answers_ping(replica_port)
    )
    for port in sentinel_ports:
        started.daemon(f"sentinel-{port}", [REDIS_SERVER, str(sentinel_conf(work, port, master_port)), "--sentinel"], lambda port=port: answers_ping(port))

    def synced() -> bool:
        with redis.Redis(host=LOOPBACK, port=replica_port, socket_timeout=2, decode_responses=True) as client:
            return client.info("replication").get("master_link_status") == "up"

    def sentinels_agree() -> bool:
        views = [sentinel_view(port) for port in sentinel_ports]
        return all(int(v["num-slaves"]) >= 1 and int(v["num-other-sentinels"]) == 2 for v in views)

    await wait_until(synced, 10, "replica not in sync")
    await wait_until(sentinels_agree, 15, "sentinels did not see the replica and each other")

    url = "redis+sentinel://" + ",".join(f"{LOOPBACK}:{port}" for port in sentinel_ports) + f"/{MASTER}"
    a = started.gateway(url)
    b = started.gateway(url)
    await wait_health(a, "healthy")
    await wait_health(b, "healthy")
    assert "redis_sentinel master=" + MASTER in a.log_tail(200)
    ca = await clients(a.url, transports=["websocket"])
    cb = await clients(b.url, transports=["websocket"])

    streams = {"A": Stream(ca, "A").start(), "B": Stream(cb, "B").start()}
    await asyncio.sleep(1.0)
    master.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    await wait_until(lambda: int(sentinel_view(sentinel_ports[0])["port"]) == replica_port, 20, "sentinel did not promote the replica")
    promoted_after = time.monotonic() - killed_at
    await wait_health(a, "healthy", timeout=15)
    await wait_health(b, "healthy", timeout=15)
    await asyncio.sleep(1.5)  # traffic goes on over the new master
    sent = {name: await stream.stop() for name, stream in streams.items()}

    got_on_b = await cb.wait_for("seq-A", sent["A"], timeout=10)
    got_on_a = await ca.wait_for("seq-B", sent["B"], timeout=10)
    dropped = {"A": metric(a, "sio_gateway_redis_outbox_dropped_total"), "B": metric(b, "sio_gateway_redis_outbox_dropped_total")}
    for sender, got in (("A", got_on_b), ("B", got_on_a)):
        assert sent[sender] > 40, sent
        assert got == sorted(set(got)), f"{sender}: out of order or duplicated: {got}"
        missing = sorted(set(range(sent[sender])) - set(got))
        # What the outbox could not keep is counted; everything else arrived.
        assert len(missing) <= dropped[sender], (sender, missing, dropped, promoted_after)
        # Delivery resumed on its own: the last second of messages, all sent after the failover, arrived.
        assert got[-10:] == list(range(sent[sender] - 10, sent[sender])), (sender, got[-20:])
    log_a = a.log_tail(400)
    assert "cluster_link_down" in log_a and "cluster_link_up" in log_a, log_a


# -- 3. TLS to Redis --------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def make_ca(workdir: Path, name: str) -> tuple[Path, Path]:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}", cwd=workdir)  # fmt: skip
    return workdir / f"{name}.crt", workdir / f"{name}.key"


def make_cert(workdir: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=workdir)  # fmt: skip
    (workdir / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=workdir)  # fmt: skip
    return workdir / f"{name}.crt", workdir / f"{name}.key"


async def test_tls_redis_verified_joins_and_wrong_ca_refuses(started: Started, clients: Any) -> None:
    pki = started.workdir / "pki"
    pki.mkdir()
    ca = make_ca(pki, "test-ca")
    other_ca = make_ca(pki, "other-ca")
    server_cert = make_cert(pki, "redis", ca, f"IP:{LOOPBACK},DNS:localhost")
    client_cert = make_cert(pki, "gateway", ca, "DNS:gateway")
    port = free_port()
    # TLS only (port 0 = no plaintext port), and client certificates required.
    started.daemon(
        "redis-tls",
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
         "--tls-cert-file", str(server_cert[0]), "--tls-key-file", str(server_cert[1]), "--tls-ca-cert-file", str(ca[0]),
         "--tls-auth-clients", "yes"],
        lambda: accepts(port),
    )  # fmt: skip
    url = f"rediss://{LOOPBACK}:{port}"
    tls_env = {"REDIS_TLS_CA_FILE": str(ca[0]), "REDIS_TLS_CERT_FILE": str(client_cert[0]), "REDIS_TLS_KEY_FILE": str(client_cert[1])}
    a = started.gateway(url, **tls_env)
    b = started.gateway(url, **tls_env)
    await wait_health(a, "healthy")
    await wait_health(b, "healthy")
    ca_client = await clients(a.url, transports=["websocket"])
    cb_client = await clients(b.url, transports=["websocket"])
    assert await ca_client.call("broadcast", {"event": "hello", "args": ["from-a"]}) is True
    assert await cb_client.call("broadcast", {"event": "hello", "args": ["from-b"]}) is True
    assert sorted(await cb_client.wait_for("hello", 2)) == ["from-a", "from-b"]
    assert sorted(await ca_client.wait_for("hello", 2)) == ["from-a", "from-b"]

    # Another CA: the node does not trust this Redis, says why, and stays out of the cluster.
    wrong = started.gateway(url, **{**tls_env, "REDIS_TLS_CA_FILE": str(other_ca[0])})
    body = await wait_health(wrong, "degraded", timeout=5)
    assert body["adapter"]["publisher"] == "down" and body["adapter"]["subscriber"] == "down", body
    deadline = time.monotonic() + 5
    while "CERTIFICATE_VERIFY_FAILED" not in wrong.log_tail(200) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert "CERTIFICATE_VERIFY_FAILED" in wrong.log_tail(200), wrong.log_tail(200)

    def subscribers() -> int:
        context = {"ssl_ca_certs": str(ca[0]), "ssl_certfile": str(client_cert[0]), "ssl_keyfile": str(client_cert[1])}
        with redis.Redis(host=LOOPBACK, port=port, ssl=True, socket_timeout=2, **context) as client:
            return int(client.pubsub_numsub(REQUEST_CHANNEL)[0][1])

    assert await asyncio.to_thread(subscribers) == 2  # a and b; not the node with the wrong CA

    # Verification off (development): joins, and says so loudly.
    insecure = started.gateway(url, **{**tls_env, "REDIS_TLS_CA_FILE": str(other_ca[0]), "REDIS_TLS_INSECURE": "true"})
    await wait_health(insecure, "healthy")
    assert re.search(r"level=warning .*redis_tls_insecure", insecure.log_tail(200)), insecure.log_tail(200)
    assert await asyncio.to_thread(subscribers) == 3


# -- 4. sio-gateway cluster ---------------------------------------------------------------------------


def consecutive_free_ports(count: int) -> int:
    for _ in range(50):
        base = free_port()
        if base + count < 65535 and all(port_is_free(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose here; its parent reaps it.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


async def test_cluster_command_starts_serves_and_stops_everything(tmp_path: Path, clients: Any) -> None:
    base = consecutive_free_ports(2)
    proxy_port = consecutive_free_ports(1)
    env = {**os.environ, "AUTH_MODE": "none", "PYTHONUNBUFFERED": "1", "SHUTDOWN_DEADLINE_MS": "3000"}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-m", "gateway", "cluster", "--nodes", "2", "--base-port", str(base), "--proxy-port", str(proxy_port), "--workdir", str(tmp_path / "cluster")]
    stderr = open(tmp_path / "cluster.err", "wb")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, env=env)
    pids: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        lines: list[str] = []

        def read_until_url() -> str | None:
            for raw in proc.stdout:  # type: ignore[union-attr]
                line = raw.decode().rstrip()
                lines.append(line)
                if line.startswith("URL: "):
                    return line[5:]
            return None

        url = await asyncio.wait_for(asyncio.to_thread(read_until_url), 40)
        assert url == f"http://{LOOPBACK}:{proxy_port}", (url, lines, (tmp_path / "cluster.err").read_text())
        for line in lines:
            found = re.match(r"\s+(redis|node \d|nginx)\s+pid (\d+)\s+(\S+)", line)
            if found:
                pids[found.group(1)] = int(found.group(2))
        assert set(pids) == {"redis", "node 1", "node 2", "nginx"}, lines
        assert all(alive(pid) for pid in pids.values()), pids

        # The product gateway (AUTH_MODE=none) through nginx: a client connects (polling, then the
        # upgrade) and joins a conversation; a client on each node relays `typing` into it, and
        # both arrive, so one of them crossed nodes through the cluster's Redis.
        user = await clients(url)
        room = "conversation:42"
        assert (await user.call("subscribe", room))["ok"] is True
        for i, port in enumerate((base, base + 1)):
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=3) as response:
                assert json.loads(response.read())["status"] == "healthy"
            peer = await clients(f"http://{LOOPBACK}:{port}", transports=["websocket"])
            assert (await peer.call("subscribe", room))["ok"] is True
            assert (await peer.call("typing", {"room": room, "n": i}))["ok"] is True
        typed = await user.wait_for("typing", 2)
        assert sorted(message["n"] for message in typed) == [0, 1], typed
        assert user.sio.transport() == "websocket"
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        rest = proc.stdout.read().decode()
        assert code == 0, (code, rest, (tmp_path / "cluster.err").read_text()[-3000:])
        assert "stopped" in rest
        assert not any(alive(pid) for pid in pids.values()), {name: alive(pid) for name, pid in pids.items()}
        assert accepts(proxy_port) is False and accepts(base) is False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stderr.close()
