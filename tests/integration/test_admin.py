"""The /admin namespace of @socket.io/admin-ui across a cluster: `python -m gateway` nodes with
ADMIN_UI=true on one redis-server, driven by Node.js socket.io-client (what the UI runs).

Nodes A and B are read-write, development mode; node C is read-only with a tight failed-login
limit. The admin client logs in with basic auth (bcrypt), gets `config`, `server_stats` of every
node, `all_sockets` of every node, and acts (`join`, `emit`, `_disconnect`) on sockets of
another node; the session id issued by one node is accepted by another (kept in Redis).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from prometheus_client import generate_latest

from gateway.admin import MemorySessions
from gateway.admin.stats import EventBuckets
from gateway.app import build_gateway
from gateway.config import ConfigError, Settings
from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.node_driver import NodeCallError, NodeDriver

USERNAME = "admin"
PASSWORD = "admin-ui-test-password"
# Cost 4 (bcrypt's least) keeps the tests fast; production hashes use 10-12.
PASSWORD_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
ALL_FEATURES = ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS", "ALL_EVENTS"]
WS = {"transports": ["websocket"]}
STEP = 5.0
SILENCE_S = 1.0


def admin_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "AUTH_MODE": "none",
        "ADMIN_UI": "true",
        "ADMIN_USERNAME": USERNAME,
        "ADMIN_PASSWORD_HASH": PASSWORD_HASH,
        "RATE_LIMIT_EVENTS_PER_S": "0",
    }
    env.update(extra)
    return env


class Nodes:
    def __init__(self, redis: RedisServerProcess, log_dir: Path) -> None:
        self.a = GatewayProcess("gateway", env=admin_env(redis.url), log_dir=log_dir)
        self.b = GatewayProcess("gateway", env=admin_env(redis.url), log_dir=log_dir)
        self.c = GatewayProcess("gateway", env=admin_env(redis.url, ADMIN_READONLY="true", ADMIN_AUTH_FAILURES_PER_MIN="2"), log_dir=log_dir)

    def all(self) -> tuple[GatewayProcess, ...]:
        return (self.a, self.b, self.c)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    workdir = tmp_path_factory.mktemp("admin")
    redis = RedisServerProcess(workdir)
    redis.start()
    cluster = Nodes(redis, workdir)
    try:
        for node in cluster.all():
            node.start()
        yield cluster
    finally:
        for node in cluster.all():
            node.stop(timeout=5)
        redis.stop(signal.SIGKILL)


@pytest.fixture
async def node() -> AsyncIterator[NodeDriver]:
    driver = NodeDriver(label="admin-clients")
    await driver.start()
    try:
        yield driver
    finally:
        await driver.close()


def server_ids(nodes: Nodes, *which: GatewayProcess) -> set[str]:
    """The gateway's serverId: hostname#pid, as the package names a cluster worker."""
    return {f"{socket.gethostname()}#{node.pid}" for node in which}


async def admin_login(driver: NodeDriver, name: str, node: GatewayProcess, **auth: Any) -> dict[str, Any]:
    return await driver.call("client.connect", name=name, url=node.url, nsp="/admin", opts={**WS, "auth": auth or {"username": USERNAME, "password": PASSWORD}})


async def wait_args(driver: NodeDriver, name: str, event: str, predicate: Any = None, timeout: float = STEP) -> list[Any]:
    found = await driver.wait_event(lambda e: predicate is None or predicate(e["args"]), ev="event", name=name, event=event, timeout=timeout)
    return found["args"]


async def stats_from(driver: NodeDriver, name: str, wanted: set[str], timeout: float = STEP) -> dict[str, dict[str, Any]]:
    """`server_stats` until every server in `wanted` has reported once (bounded by `timeout`)."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while not wanted <= seen.keys():
        left = deadline - time.monotonic()
        assert left > 0, f"server_stats within {timeout}s came from {sorted(seen)} only, wanted {sorted(wanted)}"
        (stats,) = await wait_args(driver, name, "server_stats", timeout=left)
        seen[stats["serverId"]] = stats
    return seen


# -- login, config, stats --------------------------------------------------------------------------


async def test_login_refused_with_wrong_password_and_session_id_works_on_another_node(nodes: Nodes, node: NodeDriver) -> None:
    with pytest.raises(NodeCallError) as refused:
        await admin_login(node, "wrong", nodes.a, username=USERNAME, password="not-the-password")
    assert refused.value.message == "invalid credentials"
    with pytest.raises(NodeCallError):
        await admin_login(node, "wrong-user", nodes.a, username="root", password=PASSWORD)
    with pytest.raises(NodeCallError):
        await admin_login(node, "forged", nodes.b, sessionId="0123456789abcdef")

    await admin_login(node, "ui", nodes.a)
    (session_id,) = await wait_args(node, "ui", "session")
    assert isinstance(session_id, str) and len(session_id) == 16

    # The UI reconnects with the session id only, to another node: Redis holds it.
    await admin_login(node, "ui-on-b", nodes.b, sessionId=session_id)
    (config,) = await wait_args(node, "ui-on-b", "config")
    assert config["supportedFeatures"] == ALL_FEATURES
    assert not [e for e in node.pending_events() if e.get("name") == "ui-on-b" and e.get("event") == "session"]


async def test_config_and_server_stats_of_every_node_within_5s(nodes: Nodes, node: NodeDriver) -> None:
    await node.call("client.connect", name="plain", url=nodes.b.url, opts=WS)
    started = time.monotonic()
    await admin_login(node, "ui", nodes.a)
    (config,) = await wait_args(node, "ui", "config")
    assert config["supportedFeatures"] == ALL_FEATURES
    stats = await stats_from(node, "ui", server_ids(nodes, nodes.a, nodes.b, nodes.c))
    assert time.monotonic() - started < 5.0
    b = stats[next(iter(server_ids(nodes, nodes.b)))]
    assert b["pid"] == nodes.b.pid
    assert b["clientsCount"] >= 1 and b["pollingClientsCount"] == 0
    assert any(n["name"] == "/admin" for n in b["namespaces"])
    root = next(n for n in b["namespaces"] if n["name"] == "/")
    assert root["socketsCount"] >= 1
    # Node B saw the plain client's session open: a per-second rawConnection bucket, sooner or later.
    deadline = time.monotonic() + STEP
    events = list(b["aggregatedEvents"])
    while not any(e["type"] == "rawConnection" for e in events):
        assert time.monotonic() < deadline, events
        (later,) = await wait_args(node, "ui", "server_stats", lambda args: args[0]["pid"] == nodes.b.pid)
        events += later["aggregatedEvents"]
    bucket = next(e for e in events if e["type"] == "rawConnection")
    assert bucket["count"] >= 1 and bucket["timestamp"] % 1000 == 0


# -- sockets of every node, actions on another node --------------------------------------------


async def test_all_sockets_lists_both_nodes_and_actions_reach_the_other_node(nodes: Nodes, node: NodeDriver) -> None:
    on_a = await node.call("client.connect", name="on-a", url=nodes.a.url, opts=WS)
    on_b = await node.call("client.connect", name="on-b", url=nodes.b.url, opts=WS)
    await admin_login(node, "ui", nodes.a)
    (sockets,) = await wait_args(node, "ui", "all_sockets")
    by_id = {s["id"]: s for s in sockets}
    assert on_a["id"] in by_id and on_b["id"] in by_id, sorted(by_id)
    remote = by_id[on_b["id"]]
    assert remote["nsp"] == "/" and remote["transport"] == "websocket"
    assert isinstance(remote["clientId"], str) and len(remote["clientId"]) == 12
    assert remote["rooms"][0] == on_b["id"] and "_admin" not in remote["data"]
    assert remote["handshake"]["address"] == "127.0.0.1"

    # join: the socket on node B enters "vip"; the UI hears room_joined from B.
    await node.call("client.emit", name="ui", event="join", args=["/", "vip", on_b["id"]])
    await wait_args(node, "ui", "room_joined", lambda args: args[:3] == ["/", "vip", on_b["id"]])
    await node.call("client.emit", name="ui", event="emit", args=["/", "vip", "from-admin", {"n": 1}])
    got = await node.wait_event(ev="event", name="on-b", event="from-admin", timeout=STEP)
    assert got["args"] == [{"n": 1}]
    await asyncio.sleep(SILENCE_S)
    assert not [e for e in node.pending_events() if e.get("event") == "from-admin"], "on-a is not in vip"

    # _disconnect: the socket on node B is disconnected by the server.
    await node.call("client.emit", name="ui", event="_disconnect", args=["/", False, on_b["id"]])
    gone = await node.wait_event(ev="disconnect", name="on-b", timeout=STEP)
    assert gone["reason"] == "io server disconnect"
    await wait_args(node, "ui", "socket_disconnected", lambda args: args[:2] == ["/", on_b["id"]])


async def test_read_only_node_refuses_actions_and_limits_failed_logins(nodes: Nodes, node: NodeDriver) -> None:
    target = await node.call("client.connect", name="target", url=nodes.a.url, opts=WS)
    await admin_login(node, "ro", nodes.c)
    (config,) = await wait_args(node, "ro", "config")
    assert config["supportedFeatures"] == ["AGGREGATED_EVENTS", "ALL_EVENTS"]
    await node.call("client.emit", name="ro", event="_disconnect", args=["/", True, target["id"]])
    await node.call("client.emit", name="ro", event="join", args=["/", "ro-room", target["id"]])
    await asyncio.sleep(SILENCE_S)
    assert not [e for e in node.pending_events() if e.get("name") == "target" and e.get("ev") == "disconnect"]
    sockets = await node.call("client.list")
    assert sockets["target"]["connected"]
    status, body = nodes.c.get("/metrics")
    assert status == 200
    text = body.decode()
    assert 'sio_gateway_admin_actions_total{action="_disconnect",outcome="refused"} 1.0' in text
    assert 'sio_gateway_admin_actions_total{action="join",outcome="refused"} 1.0' in text

    # Two failed logins use up node C's ADMIN_AUTH_FAILURES_PER_MIN=2: even the right password is
    # now refused there, before bcrypt runs; node A (its own limit) still accepts it.
    for attempt in range(2):
        with pytest.raises(NodeCallError):
            await admin_login(node, f"guess-{attempt}", nodes.c, username=USERNAME, password=f"guess-{attempt}")
    with pytest.raises(NodeCallError) as throttled:
        await admin_login(node, "late", nodes.c)
    assert throttled.value.message == "too many failed attempts"
    await admin_login(node, "fine", nodes.a)
    _, body = nodes.c.get("/metrics")
    assert 'sio_gateway_admin_logins_total{outcome="throttled"} 1.0' in body.decode()


# -- in-process pieces ------------------------------------------------------------------------------


def test_settings_require_a_bcrypt_hash_and_both_credentials() -> None:
    base = {"AUTH_MODE": "none", "ADMIN_UI": "true"}
    with pytest.raises(ConfigError, match="ADMIN_PASSWORD_HASH"):
        Settings.from_env({**base, "ADMIN_USERNAME": "admin", "ADMIN_PASSWORD_HASH": "plain-text-password"})
    with pytest.raises(ConfigError, match="go together"):
        Settings.from_env({**base, "ADMIN_USERNAME": "admin"})
    with pytest.raises(ConfigError, match="ADMIN_MODE"):
        Settings.from_env({**base, "ADMIN_MODE": "verbose"})
    settings = Settings.from_env({**base, "ADMIN_USERNAME": "admin", "ADMIN_PASSWORD_HASH": PASSWORD_HASH})
    assert settings.admin_mode == "development" and not settings.admin_readonly


def test_admin_off_installs_nothing() -> None:
    server = build_gateway(Settings(auth_mode="none"))
    assert "/admin" not in server.namespaces
    assert server.engine.on_upgrade is None and server.engine.on_session_closed is None
    on = build_gateway(Settings(auth_mode="none", admin_ui=True, admin_mode="production"))
    assert "/admin" in on.namespaces and on.admin is not None
    assert on.admin.features == ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS"]


async def test_memory_sessions_expire_and_are_bounded() -> None:
    now = [100.0]
    store = MemorySessions(ttl_s=10, max_sessions=2, clock=lambda: now[0])
    for sid in ("a", "b", "c"):
        await store.save(sid)
    assert not await store.exists("a") and await store.exists("c") and store.dropped == 1
    now[0] += 11
    assert not await store.exists("b") and not await store.exists("c")


def test_event_buckets_are_per_second_deltas_of_counters() -> None:
    counters = {"rawConnection": 5, "packetsIn": 10}
    clock = [1000.2]
    buckets = EventBuckets(lambda: dict(counters), clock=lambda: clock[0])
    counters["rawConnection"] = 7
    clock[0] = 1001.01
    buckets.tick()
    clock[0] = 1002.01
    buckets.tick()  # nothing changed: no bucket
    assert buckets.take() == [{"timestamp": 1000_000, "type": "rawConnection", "count": 2}]
    assert buckets.take() == []


async def test_single_node_memory_sessions_python_client_and_connection_cap() -> None:
    """One node without Redis: session ids live in its memory; `session` arrives once the admin
    socket is connected; ADMIN_MAX_CONNECTIONS refuses the next admin socket."""
    import socketio

    settings = Settings(port=0, auth_mode="none", admin_ui=True, admin_username=USERNAME, admin_password_hash=PASSWORD_HASH, admin_max_connections=1)
    server = build_gateway(settings)
    port = await server.start()
    url = f"http://127.0.0.1:{port}"
    got: dict[str, asyncio.Queue[Any]] = {name: asyncio.Queue() for name in ("session", "config", "server_stats", "all_sockets")}
    ui = socketio.AsyncClient(reconnection=False)
    for name, queue in got.items():
        # args[0]: with connection state recovery on, an offset may follow as a last argument
        ui.on(name, lambda *args, queue=queue: queue.put_nowait(args[0]), namespace="/admin")
    extra = socketio.AsyncClient(reconnection=False)
    try:
        await ui.connect(url, namespaces=["/admin"], auth={"username": USERNAME, "password": PASSWORD}, transports=["websocket"], wait_timeout=STEP)
        session_id = await asyncio.wait_for(got["session"].get(), STEP)
        assert await server.admin.sessions.exists(session_id)
        assert (await asyncio.wait_for(got["config"].get(), STEP))["supportedFeatures"] == ALL_FEATURES
        stats = await asyncio.wait_for(got["server_stats"].get(), STEP)
        assert stats["pid"] == os.getpid() and stats["clientsCount"] == 1
        sockets = await asyncio.wait_for(got["all_sockets"].get(), STEP)
        assert [s["nsp"] for s in sockets] == ["/admin"] and sockets[0]["transport"] == "websocket"
        refusals: asyncio.Queue[Any] = asyncio.Queue()
        extra.on("connect_error", refusals.put_nowait, namespace="/admin")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await extra.connect(url, namespaces=["/admin"], auth={"sessionId": session_id}, transports=["websocket"], wait_timeout=STEP)
        assert (await asyncio.wait_for(refusals.get(), STEP))["message"] == "too many admin connections"
    finally:
        await extra.disconnect()
        await ui.disconnect()
        await server.close()


async def test_development_mode_reports_sent_events_rooms_new_namespaces_and_bytes() -> None:
    """The hooks the admin UI listens to, on one node (python-socketio clients): a dynamic
    namespace created by its first CONNECT is instrumented at once (`Server.on_new_namespace`),
    so that first socket is announced; `socket.emit` is reported as `event_sent`
    (`Socket.on_any_outgoing`); joins and leaves as `room_joined` / `room_left` (the adapter's
    `join-room` / `leave-room`, no wrapped methods); bytes in/out move in `server_stats` and
    /metrics (`sio_gateway_bytes_total{direction}`)."""
    import socketio

    settings = Settings(port=0, auth_mode="none", admin_ui=True, admin_username=USERNAME, admin_password_hash=PASSWORD_HASH)
    server = build_gateway(settings)
    family = server.of(re.compile(r"^/dyn-\d+$"))
    membership: list[tuple[Any, ...]] = []

    def observe(nsp: Any) -> None:
        for event in ("create-room", "join-room", "leave-room", "delete-room"):
            nsp.adapter.on(event, lambda *args, event=event: membership.append((event, *args)))

    server.on_new_namespace(observe)

    @family.on("connection")
    def connected(sock: Any) -> None:
        sock.join("lobby")
        sock.on("greet", lambda: sock.emit("hello", {"n": 1}))
        sock.on("part", lambda: sock.leave("lobby"))

    port = await server.start()
    url = f"http://127.0.0.1:{port}"
    names = ("socket_connected", "event_sent", "room_joined", "room_left", "server_stats")
    got: dict[str, asyncio.Queue[Any]] = {name: asyncio.Queue() for name in names}
    ui = socketio.AsyncClient(reconnection=False)
    for name, queue in got.items():
        ui.on(name, lambda *args, queue=queue: queue.put_nowait(list(args)), namespace="/admin")
    user = socketio.AsyncClient(reconnection=False)
    hello: asyncio.Queue[Any] = asyncio.Queue()
    user.on("hello", lambda *args: hello.put_nowait(args[0]), namespace="/dyn-7")
    poller = socketio.AsyncClient(reconnection=False)
    polled: asyncio.Queue[Any] = asyncio.Queue()
    poller.on("hello", lambda *args: polled.put_nowait(args[0]), namespace="/dyn-8")

    async def first(name: str, predicate: Any) -> list[Any]:
        deadline = time.monotonic() + STEP
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no matching {name} within {STEP}s"
            args = await asyncio.wait_for(got[name].get(), left)
            if predicate(args):
                return args

    try:
        await ui.connect(url, namespaces=["/admin"], auth={"username": USERNAME, "password": PASSWORD}, transports=["websocket"], wait_timeout=STEP)
        assert "/dyn-7" not in server.namespaces
        await user.connect(url, namespaces=["/dyn-7"], transports=["websocket"], wait_timeout=STEP)
        sid = user.get_sid("/dyn-7")
        announced = await first("socket_connected", lambda args: args[0]["nsp"] == "/dyn-7")
        assert announced[0]["id"] == sid and announced[0]["transport"] == "websocket"
        await first("room_joined", lambda args: args[:3] == ["/dyn-7", "lobby", sid])

        await user.emit("greet", namespace="/dyn-7")
        assert await asyncio.wait_for(hello.get(), STEP) == {"n": 1}
        sent = await first("event_sent", lambda args: args[:2] == ["/dyn-7", sid])
        assert sent[2] == ["hello", {"n": 1}]

        await user.emit("part", namespace="/dyn-7")
        await first("room_left", lambda args: args[:3] == ["/dyn-7", "lobby", sid])
        assert ("create-room", "lobby") in membership and ("delete-room", "lobby") in membership
        lobby = [m for m in membership if "lobby" in m]
        assert lobby == [("create-room", "lobby"), ("join-room", "lobby", sid), ("leave-room", "lobby", sid), ("delete-room", "lobby")]

        # bytesIn / bytesOut: per-second buckets of the engine's byte counters.
        seen: set[str] = set()
        deadline = time.monotonic() + STEP
        while not {"bytesIn", "bytesOut"} <= seen:
            left = deadline - time.monotonic()
            assert left > 0, f"server_stats carried only {sorted(seen)}"
            stats = (await asyncio.wait_for(got["server_stats"].get(), left))[0]  # an offset may follow
            seen |= {e["type"] for e in stats["aggregatedEvents"] if e["count"] > 0}
        engine = server.engine.stats
        assert engine.bytes_in > 0 and engine.bytes_out > engine.bytes_in  # stats every 2 s go out
        # Polling: POST bodies count in, poll answers out.
        await poller.connect(url, namespaces=["/dyn-8"], transports=["polling"], wait_timeout=STEP)
        before = engine.bytes_in
        await poller.emit("greet", namespace="/dyn-8")
        assert await asyncio.wait_for(polled.get(), STEP) == {"n": 1}
        assert engine.bytes_in - before >= len('42/dyn-8,["greet"]')
        text = generate_latest(server.metrics_registry).decode()
        found = {m.group(1): float(m.group(2)) for m in re.finditer(r'^sio_gateway_bytes_total\{direction="(in|out)"\} (\S+)$', text, re.M)}
        assert found.keys() == {"in", "out"} and found["in"] > 0 and found["out"] > 0, found
    finally:
        await poller.disconnect()
        await user.disconnect()
        await ui.disconnect()
        await server.close()


def test_adapter_room_events_only_on_changes() -> None:
    """`join-room` only for a room the socket was not in, `create-room` / `delete-room` with a
    room's first and last member; an adapter nobody listens to keeps no listener table."""
    from gateway.sio.server import Server

    server = Server(Settings(auth_mode="none"))
    adapter = server.main.adapter
    assert not adapter.room_listeners
    seen: list[tuple[Any, ...]] = []
    for event in ("create-room", "join-room", "leave-room", "delete-room"):
        adapter.on(event, lambda *args, event=event: seen.append((event, *args)))
    with pytest.raises(ValueError):
        adapter.on("joined", print)

    class Member:  # what the adapter reads of a socket for membership: its id
        def __init__(self, sid: str) -> None:
            self.id = sid

    a, b = Member("a"), Member("b")
    adapter.add_all(a, ["r", "r"])
    adapter.add_all(b, ["r", "s"])
    adapter.add_all(a, ["r"])  # already in: nothing
    adapter.remove(a, "r")
    adapter.remove(a, "r")  # not in any more: nothing
    adapter.remove_all(b)
    assert seen[:5] == [("create-room", "r"), ("join-room", "r", "a"), ("join-room", "r", "b"), ("create-room", "s"), ("join-room", "s", "b")]
    assert seen[5] == ("leave-room", "r", "a")
    assert sorted(seen[6:]) == sorted([("leave-room", "r", "b"), ("delete-room", "r"), ("leave-room", "s", "b"), ("delete-room", "s")])
    assert adapter.rooms == {}
