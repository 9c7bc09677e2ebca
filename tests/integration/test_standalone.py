"""The standalone gateway as operators run it: `python -m gateway` processes configured by
environment, a real redis-server, python-socketio clients and a backend speaking HTTP.

1. tokens: a valid one connects and lands in its company room; it cannot join another company's
   room nor receive its messages; expired, unsigned, wrong-key and `alg: none` tokens are refused;
2. the publish API on node A reaches clients on node B; bad keys get 401 and deliver nothing;
3. presence across nodes: joins are announced, tabs count once, a SIGKILLed node's users leave
   within PRESENCE_TIMEOUT_MS;
4. limits: a flooding client gets error acks then is disconnected while others are unaffected;
   oversized payloads and foreign origins are refused;
plus a single-node, in-process part for what needs other settings (AUTH_MODE=none, caps).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import aiohttp
import jwt
import pytest
import socketio

from gateway.app import build_gateway
from gateway.config import Settings
from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess

SECRET = "integration-secret-0123456789abcdef0123456789"
API_KEY = "backend-key-1"
ORIGIN = "http://app.example"
PRESENCE_TIMEOUT_MS = 3000
STEP_TIMEOUT = 5.0


def cluster_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "JWT_SECRET": SECRET,
        "API_KEYS": f"{API_KEY},backend-key-2",
        "API_MAX_BODY_BYTES": "4096",
        "PRESENCE_TIMEOUT_MS": str(PRESENCE_TIMEOUT_MS),
        "RATE_LIMIT_EVENTS_PER_S": "20",
        "RATE_LIMIT_BURST": "20",
        "RATE_LIMIT_DISCONNECT_AFTER": "40",
        "MAX_PAYLOAD_BYTES": "16384",
        "ALLOWED_ORIGINS": ORIGIN,
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


def token(sub: str, *, companies: tuple[str, ...] = (), conversations: tuple[str, ...] = (), exp_in: int = 120, key: str = SECRET, algorithm: str = "HS256") -> str:
    claims = {"sub": sub, "companies": list(companies), "conversations": list(conversations), "exp": int(time.time()) + exp_in}
    return jwt.encode(claims, None if algorithm == "none" else key, algorithm=algorithm)


class Client:
    """A python-socketio client that records every event it receives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self.connect_errors: list[Any] = []
        self.disconnected = asyncio.Event()
        self._changed = asyncio.Event()
        self.sio.on("*", self._on_any)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("disconnect", self._on_disconnect)

    async def _on_any(self, event: str, *args: Any) -> None:
        self.events[event].append(args[0] if args else None)
        self._changed.set()

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_errors.append(data)

    async def _on_disconnect(self, *args: Any) -> None:
        self.disconnected.set()

    async def connect(self, url: str, tok: str | None, headers: dict[str, str] | None = None) -> "Client":
        await self.sio.connect(url, auth={"token": tok} if tok is not None else None, transports=["websocket"], headers=headers or {}, wait_timeout=STEP_TIMEOUT)
        return self

    async def call(self, event: str, *args: Any) -> Any:
        return await self.sio.call(event, args[0] if len(args) == 1 else args, timeout=STEP_TIMEOUT) if args else await self.sio.call(event, timeout=STEP_TIMEOUT)

    async def wait_event(self, event: str, predicate: Callable[[Any], bool] = lambda _: True, timeout: float = STEP_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for item in self.events[event]:
                if predicate(item):
                    return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {event!r} matching within {timeout}s; got {dict(self.events)}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


async def refused_with(url: str, tok: str | None, headers: dict[str, str] | None = None) -> Client:
    client = Client("refused")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, tok, headers)
    await client.close()
    session = getattr(client.sio.eio, "http", None)
    if session is not None and not session.closed:
        await session.close()  # the client keeps its HTTP session after a failed handshake
    return client


async def api(session: aiohttp.ClientSession, method: str, url: str, *, key: str | None = API_KEY, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with session.request(method, url, data=data, headers=headers) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


class Cluster:
    def __init__(self, redis: RedisServerProcess, log_dir: Path, **extra_env: str) -> None:
        env = cluster_env(redis.url, **extra_env)
        self.a = GatewayProcess("gateway", env=env, log_dir=log_dir)
        self.b = GatewayProcess("gateway", env=env, log_dir=log_dir)

    def start(self) -> "Cluster":
        self.a.start()
        self.b.start()
        return self

    def stop(self) -> None:
        for node in (self.a, self.b):
            node.stop(timeout=5)

    def logs(self) -> str:
        return f"--- node A ---\n{self.a.log_tail(40)}\n--- node B ---\n{self.b.log_tail(40)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("standalone")
    redis = RedisServerProcess(workdir)
    redis.start()
    nodes = Cluster(redis, workdir)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
        redis.stop(signal.SIGKILL)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT)) as session:
        yield session


# -- 1. authentication and room permissions ------------------------------------------------------


async def test_tokens_and_company_rooms(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    alice = await Client("alice").connect(cluster.a.url, token("alice", companies=("A",)))
    bob = await Client("bob").connect(cluster.b.url, token("bob", companies=("B",)))
    try:
        # Connected straight into its own company room, counted cluster-wide (asked on node B).
        assert await api(http, "GET", f"{cluster.b.url}/api/rooms/company:A") == (200, {"room": "company:A", "namespace": "/", "sockets": 1})
        assert await alice.call("join:company", "A") == {"ok": True, "room": "company:A"}
        assert await alice.call("join:company", "B") == {"ok": False, "error": "forbidden"}
        assert await alice.call("subscribe", "company:B") == {"ok": False, "error": "forbidden"}
        assert await alice.call("join:conversation", "1") == {"ok": False, "error": "forbidden"}
        assert (await alice.call("join:company", ["B"]))["error"] == "bad request"
        assert await api(http, "GET", f"{cluster.b.url}/api/rooms/company:B") == (200, {"room": "company:B", "namespace": "/", "sockets": 1})

        for room, n in (("company:B", 1), ("company:A", 2)):
            status, _ = await api(http, "POST", f"{cluster.a.url}/api/emit", body={"rooms": [room], "event": "message:new", "data": {"n": n}})
            assert status == 200
        assert await bob.wait_event("message:new") == {"n": 1}
        assert await alice.wait_event("message:new") == {"n": 2}
        await asyncio.sleep(0.3)
        assert alice.events["message:new"] == [{"n": 2}], "company A's user received company B's message"
        assert bob.events["message:new"] == [{"n": 1}]
    finally:
        await alice.close()
        await bob.close()

    header, payload, _ = token("mallory", companies=("B",)).split(".")
    bad_tokens = {
        "expired": token("mallory", companies=("A",), exp_in=-30),
        "unsigned": f"{header}.{payload}.",
        "wrong key": token("mallory", companies=("A",), key="not-the-gateway-secret-0123456789abcdef"),
        "alg none": token("mallory", companies=("A",), algorithm="none"),
        "missing": None,
    }
    for label, bad in bad_tokens.items():
        refused = await refused_with(cluster.b.url, bad)
        assert refused.connect_errors == [{"message": "unauthorized"}], label
    # The reason stays in the log, not on the wire.
    await asyncio.sleep(0.2)
    log = cluster.b.log_tail(80)
    assert "auth_refused" in log and "token expired" in log and "algorithm not allowed" in log


# -- 2. publish API --------------------------------------------------------------------------------


async def test_publish_api_reaches_other_nodes(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    carol = await Client("carol").connect(cluster.b.url, token("carol", conversations=("9",)))
    dave = await Client("dave").connect(cluster.a.url, token("dave", conversations=("9",)))
    try:
        assert await carol.call("join:conversation", "9") == {"ok": True, "room": "conversation:9"}
        assert await dave.call("join:conversation", 9) == {"ok": True, "room": "conversation:9"}
        emit_a = f"{cluster.a.url}/api/emit"

        # Refused requests first: if any of them delivered, it would arrive before the marker.
        message = {"rooms": ["conversation:9"], "event": "message:new", "data": {"text": "intruder"}}
        assert await api(http, "POST", emit_a, key="wrong-key", body=message) == (401, {"error": "unauthorized"})
        assert await api(http, "POST", emit_a, key=None, body=message) == (401, {"error": "unauthorized"})
        assert await api(http, "POST", emit_a, key=API_KEY + "x", body=message) == (401, {"error": "unauthorized"})
        assert (await api(http, "POST", emit_a, raw=b"{not json"))[0] == 400
        assert (await api(http, "POST", emit_a, body={"rooms": ["conversation:9"]}))[1]["error"] == "bad request"
        assert (await api(http, "POST", emit_a, body={"event": "x", "data": 1}))[0] == 400
        assert (await api(http, "POST", emit_a, body={"rooms": [], "event": "x"}))[0] == 400
        assert (await api(http, "POST", emit_a, body={"rooms": "r", "event": "connect"}))[0] == 400
        assert await api(http, "POST", emit_a, body={"namespace": "/nope", "rooms": "r", "event": "x"}) == (404, {"error": "unknown namespace", "detail": "/nope"})
        assert (await api(http, "POST", emit_a, raw=json.dumps({"rooms": "r", "event": "x", "data": "y" * 5000}).encode()))[0] == 413
        assert (await api(http, "GET", emit_a))[0] == 405

        status, body = await api(http, "POST", emit_a, key="backend-key-2", body={"rooms": "conversation:9", "except": "user:dave", "event": "message:new", "data": {"text": "hello"}})
        assert (status, body) == (200, {"ok": True})
        assert await carol.wait_event("message:new") == {"text": "hello"}
        await asyncio.sleep(0.3)
        assert carol.events["message:new"] == [{"text": "hello"}]
        assert "message:new" not in dave.events  # excepted, though in the room

        # Client-to-client only by rule, with the sender named by the gateway.
        assert await dave.call("typing", {"room": "conversation:9", "user": "spoofed"}) == {"ok": True}
        assert await carol.wait_event("typing") == {"room": "conversation:9", "user": "dave"}
        assert await dave.call("typing", {"room": "conversation:10"}) == {"ok": False, "error": "forbidden"}
        assert await dave.call("typing", {"room": "company:A"}) == {"ok": False, "error": "forbidden"}

        assert await api(http, "GET", f"{cluster.b.url}/api/rooms/conversation:9") == (200, {"room": "conversation:9", "namespace": "/", "sockets": 2})
        assert (await api(http, "GET", f"{cluster.b.url}/api/rooms/conversation:9", key="nope"))[0] == 401

        # A backend can throw a user out from any node.
        assert await api(http, "POST", f"{cluster.b.url}/api/disconnect", body={"rooms": ["user:dave"]}) == (200, {"ok": True})
        await asyncio.wait_for(dave.disconnected.wait(), STEP_TIMEOUT)
        assert carol.sio.connected
    finally:
        await carol.close()
        await dave.close()


# -- 3. presence across the cluster ----------------------------------------------------------------


async def test_presence_across_nodes_and_node_death(redis_server: RedisServerProcess, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    nodes = Cluster(redis_server, tmp_path, PRESENCE_LEAVE_GRACE_MS="0").start()  # the SIGKILL bound below is the timeout alone
    clients: list[Client] = []
    try:

        async def user(name: str, node: GatewayProcess) -> Client:
            client = await Client(name).connect(node.url, token(name, conversations=("1",)))
            clients.append(client)
            assert await client.call("join:conversation", "1") == {"ok": True, "room": "conversation:1"}
            return client

        def joined(name: str) -> Callable[[Any], bool]:
            return lambda e: e == {"room": "conversation:1", "user": name}

        eve = await user("eve", nodes.b)
        await eve.wait_event("presence:join", joined("eve"))
        frank_tab1 = await user("frank", nodes.a)
        await eve.wait_event("presence:join", joined("frank"))
        frank_tab2 = await user("frank", nodes.a)
        eve_tab2 = await user("eve", nodes.a)  # the same user on the other node
        assert await eve.call("presence:list", "conversation:1") == {"ok": True, "room": "conversation:1", "users": ["eve", "frank"]}
        assert await api(http, "GET", f"{nodes.a.url}/api/presence/conversation:1") == (200, {"room": "conversation:1", "namespace": "/", "users": ["eve", "frank"], "count": 2})
        assert await eve.call("presence:list", "conversation:2") == {"ok": False, "error": "forbidden"}  # not joined

        await frank_tab2.close()  # one tab of two: frank is still there
        await asyncio.sleep(0.5)
        assert [e["user"] for e in eve.events["presence:join"]] == ["eve", "frank"], "extra tabs were announced"
        assert eve.events["presence:leave"] == []
        assert frank_tab1.sio.connected and eve_tab2.sio.connected

        nodes.a.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert nodes.a.wait(5) is not None
        await eve.wait_event("presence:leave", joined("frank"), timeout=PRESENCE_TIMEOUT_MS / 1000 + 2)
        elapsed = time.monotonic() - killed
        assert elapsed <= PRESENCE_TIMEOUT_MS / 1000 + 0.5, f"presence:leave after {elapsed:.2f}s"
        assert [e["user"] for e in eve.events["presence:leave"]] == ["frank"]  # eve still has a tab on B
        assert await eve.call("presence:list", "conversation:1") == {"ok": True, "room": "conversation:1", "users": ["eve"]}
    finally:
        for client in clients:
            await client.close()
        nodes.stop()


# -- 4. limits -------------------------------------------------------------------------------------


async def test_rate_limit_drops_then_disconnects_without_slowing_others(cluster: Cluster) -> None:
    flooder = await Client("flooder").connect(cluster.a.url, token("flooder", companies=("A",)))
    calm = await Client("calm").connect(cluster.a.url, token("calm", companies=("A",)))
    acks: list[Any] = []
    try:

        async def flood() -> None:
            for _ in range(120):
                if not flooder.sio.connected:
                    return
                await flooder.sio.emit("join:company", "A", callback=lambda *a: acks.append(a[0] if a else None))

        async def round_trips() -> list[float]:
            latencies = []
            for _ in range(6):
                started = time.monotonic()
                assert (await calm.call("presence:list", "company:A"))["ok"] is True
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.05)
            return latencies

        _, latencies = await asyncio.gather(flood(), round_trips())
        await asyncio.wait_for(flooder.disconnected.wait(), STEP_TIMEOUT)
        errors = [a for a in acks if a == {"ok": False, "error": "rate limited"}]
        served = [a for a in acks if isinstance(a, dict) and a.get("ok") is True]
        assert 10 <= len(errors) < 40, acks
        assert 15 <= len(served) <= 25, acks  # the burst, plus what refilled meanwhile
        assert max(latencies) < 0.5, latencies
        assert calm.sio.connected
        assert (await calm.call("presence:list", "company:A"))["ok"] is True
    finally:
        await flooder.close()
        await calm.close()


async def test_oversized_payloads_and_foreign_origins_are_refused(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    big = await Client("big").connect(cluster.b.url, token("big", conversations=("5",)))
    other = await Client("other").connect(cluster.b.url, token("other", conversations=("5",)), headers={"Origin": ORIGIN})
    try:
        assert await big.call("join:conversation", "5") == {"ok": True, "room": "conversation:5"}
        await big.sio.emit("typing", {"room": "conversation:5", "blob": "x" * 20000})  # MAX_PAYLOAD_BYTES=16384
        await asyncio.wait_for(big.disconnected.wait(), STEP_TIMEOUT)
        assert "typing" not in other.events
        assert other.sio.connected
        assert (await other.call("join:conversation", "5"))["ok"] is True
    finally:
        await big.close()
        await other.close()

    await refused_with(cluster.b.url, token("x", companies=("A",)), headers={"Origin": "http://evil.example"})
    async with http.get(f"{cluster.a.url}/socket.io/?EIO=4&transport=polling", headers={"Origin": "http://evil.example"}) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    async with http.get(f"{cluster.a.url}/socket.io/?EIO=4&transport=polling", headers={"Origin": ORIGIN}) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN  # CORS follows ALLOWED_ORIGINS
    async with http.get(f"{cluster.a.url}/metrics") as response:
        metrics = await response.text()
    assert 'sio_gateway_connections_refused_total{reason="origin"} 1.0' in metrics


# -- single node, in process -----------------------------------------------------------------------


@pytest.fixture
async def single_node() -> AsyncIterator[str]:
    settings = Settings(
        port=0,
        auth_mode="none",
        api_keys=(API_KEY,),
        max_connections=3,
        max_rooms_per_socket=3,
        rate_limit_per_s=0,
        namespaces=("/", "/support"),
        presence_leave_grace_ms=200,  # the leave awaited below comes after the grace
    )
    server = build_gateway(settings)
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.close()


async def test_single_node_dev_mode_caps_and_namespaces(single_node: str, http: aiohttp.ClientSession) -> None:
    one = Client("one")
    await one.sio.connect(single_node, auth={"user": "u1"}, transports=["websocket"], namespaces=["/", "/support"], wait_timeout=STEP_TIMEOUT)
    two = Client("two")
    await two.sio.connect(single_node, auth={"user": "u2"}, transports=["websocket"], wait_timeout=STEP_TIMEOUT)
    try:
        # AUTH_MODE=none: any room, presence in memory.
        assert await one.call("join:company", "Z") == {"ok": True, "room": "company:Z"}
        assert await two.call("join:company", "Z") == {"ok": True, "room": "company:Z"}
        await one.wait_event("presence:join", lambda e: e == {"room": "company:Z", "user": "u2"})
        assert await one.call("presence:list", "company:Z") == {"ok": True, "room": "company:Z", "users": ["u1", "u2"]}
        # MAX_ROOMS_PER_SOCKET=3: user:u1 (joined on connect), company:Z, r1; the id room is free.
        assert await one.call("subscribe", "r1") == {"ok": True, "room": "r1"}
        assert await one.call("subscribe", "r2") == {"ok": False, "error": "too many rooms"}
        assert await one.call("unsubscribe", "r1") == {"ok": True, "room": "r1"}
        assert await one.call("subscribe", "r2") == {"ok": True, "room": "r2"}
        # A namespace from NAMESPACES, reachable through the API.
        status, _ = await api(http, "POST", f"{single_node}/api/emit", body={"namespace": "/support", "rooms": ["user:u1"], "event": "note", "data": 1})
        assert status == 200
        assert await api(http, "GET", f"{single_node}/api/rooms/user:u1?namespace=/support") == (200, {"room": "user:u1", "namespace": "/support", "sockets": 1})
        assert await api(http, "GET", f"{single_node}/api/presence/company:Z") == (200, {"room": "company:Z", "namespace": "/", "users": ["u1", "u2"], "count": 2})
        # MAX_CONNECTIONS=3 counts Engine.IO sessions: a third is fine, a fourth is refused.
        three = await Client("three").connect(single_node, None)
        await refused_with(single_node, None)
        await three.close()
        await two.close()
        await one.wait_event("presence:leave", lambda e: e == {"room": "company:Z", "user": "u2"})
    finally:
        await one.close()
        await two.close()
