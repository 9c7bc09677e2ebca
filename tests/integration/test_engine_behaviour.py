"""Engine.IO transport behaviour with real clients on 127.0.0.1: slow consumers, polling clients
that go away, the upgrade's timing, the `allow_request` hook and CORS.

- Slow consumers run against `tests.engine_app` in its own process, so that its memory (VmRSS
  from /proc) is the gateway's alone: a client that never reads while a room is flooded at about
  1 MB/s must be dropped within seconds, the gateway must not grow by more than twice the
  MAX_BUFFERED_BYTES bound, and a healthy reader in the same room must lose nothing.
- The rest runs an in-process `Server` (as tests/integration/test_encode_once.py does), because the
  claims are about what the server sees (when `disconnect` fires, which sessions exist) or about
  the order of bytes one event-loop tick writes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect

from gateway.config import Settings
from gateway.engine.server import HandshakeRequest
from gateway import Server, Socket
from gateway.topology import NGINX_CONF, nginx_command, render_nginx_conf
from tests.gateway_process import GatewayProcess
from tests.integration.test_topologies import NGINX, Daemon, accepts
from tests.node_driver import NodeCallError, NodeDriver
from tests.ports import LOOPBACK, free_port

TIMEOUT = 5.0
BOUND = 1 << 20  # MAX_BUFFERED_BYTES's default, which the slow-consumer tests run with
# About 1 MB/s into the room. A never-reading WebSocket first fills the kernel's buffers (a few
# MB on loopback), then MAX_BUFFERED_BYTES of ours: it is dropped after 3-4 s; a polling client
# that never collects has only our queue and goes after about one second.
FLOOD = {"bytes_per_s": 1_000_000, "size": 20_000}
FLOOD_SECONDS = {"websocket": 7.0, "polling": 3.0}
DROP_WITHIN_S = 6.0  # "disconnected within a few seconds" of the flood's start
RCVBUF = 4096


# -- helpers ---------------------------------------------------------------------------------------


def client_text_frame(text: str) -> bytes:
    """One masked client text frame (payload under 126 bytes), as RFC 6455 requires of clients."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def small_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer (set before connect, so the window stays small)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.settimeout(TIMEOUT)
    sock.connect((LOOPBACK, port))
    return sock


def ws_upgrade_request(port: int, query: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /socket.io/?{query} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def recv_until(sock: socket.socket, done: Any, limit: int = 65536) -> bytes:
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while not done(data) and time.monotonic() < deadline and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert done(data), data
    return data


def never_reading_websocket(port: int) -> socket.socket:
    """A raw WebSocket client joined to `/`, that will not read anything from now on."""
    sock = small_socket(port)
    sock.sendall(ws_upgrade_request(port, "EIO=4&transport=websocket"))
    head = recv_until(sock, lambda d: b"\r\n\r\n" in d and b"}" in d.partition(b"\r\n\r\n")[2])
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(client_text_frame("40"))
    return sock


class PostOnlyPolling:
    """A polling client that joins `/` and then only ever POSTs (blind pongs), never GETs."""

    def __init__(self, port: int) -> None:
        self.http = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
        self.http.request("GET", "/socket.io/?EIO=4&transport=polling")
        body = self.http.getresponse().read()
        self.sid = json.loads(body[1:])["sid"]
        self.post("40")

    def post(self, payload: str) -> int:
        self.http.request("POST", f"/socket.io/?EIO=4&transport=polling&sid={self.sid}", body=payload.encode())
        response = self.http.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.http.close()


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    raise AssertionError(f"{name}{labels or ''} not in /metrics")


async def wait_until(check: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check() if asyncio.iscoroutinefunction(check) else check()
        if result:
            return result
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- A. slow consumers -----------------------------------------------------------------------------


@pytest.fixture
def flood_app(tmp_path: Path) -> Iterator[GatewayProcess]:
    app = GatewayProcess("tests.engine_app", log_dir=tmp_path, env={"LOG_LEVEL": "INFO"}).start()
    try:
        yield app
    finally:
        app.stop(timeout=5)


class HealthyReader:
    """A python-socketio client in the flooded room that counts every tick it gets."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.ticks: list[int] = []
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        @self.client.on("tick")
        def tick(data: dict[str, Any]) -> None:
            self.ticks.append(data["n"])

        @self.client.on("flood-done")
        def flood_done(data: dict[str, Any]) -> None:
            if not self.done.done():
                self.done.set_result(data["count"])

    async def connect(self, url: str) -> "HealthyReader":
        await self.client.connect(url, transports=["websocket"], wait_timeout=TIMEOUT)
        return self

    async def call(self, event: str, *args: Any) -> Any:
        return await self.client.call(event, args[0] if args else None, timeout=TIMEOUT)


class RssWatch:
    """Samples the gateway's VmRSS every 20 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = vm_rss(pid)
        self.peak = self.baseline
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, vm_rss(self.pid))
            await asyncio.sleep(0.02)

    async def stop(self) -> int:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.peak - self.baseline


async def run_flood_with_slow_consumer(app: GatewayProcess, blind_pong: Any, transport: str) -> None:
    """Flood the room with a healthy reader and one slow consumer in it; check the bound held."""
    assert app.pid is not None
    reader = await HealthyReader().connect(app.url)
    try:
        # Warm up the allocator with a short flood nobody is slow for, so the baseline below
        # already holds what a normal broadcast at this rate needs.
        await reader.call("flood", {**FLOOD, "seconds": 0.5})
        await asyncio.wait_for(reader.done, TIMEOUT)
        reader.done = asyncio.get_running_loop().create_future()
        warmup = len(reader.ticks)

        pongs_failed: list[float] = []

        async def pong_forever() -> None:
            while True:
                try:
                    blind_pong()
                except OSError:
                    pongs_failed.append(time.monotonic())
                    return
                await asyncio.sleep(0.5)

        pong_task = asyncio.get_running_loop().create_task(pong_forever())
        watch = RssWatch(app.pid)
        started = time.monotonic()
        seconds = FLOOD_SECONDS[transport]
        assert await reader.call("flood", {**FLOOD, "seconds": seconds}) is True

        async def dropped() -> list[dict[str, Any]]:
            return [d for d in await reader.call("disconnects") if d["reason"] == "transport error"]

        gone = await wait_until(dropped, DROP_WITHIN_S + 1, "the slow consumer to be disconnected", every=0.2)
        assert gone[0]["t"] - started < DROP_WITHIN_S, gone
        count = await asyncio.wait_for(reader.done, seconds + TIMEOUT)
        growth = await watch.stop()
        pong_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pong_task

        # The healthy reader lost nothing, in order.
        assert reader.ticks[warmup:] == list(range(count)), (count, len(reader.ticks) - warmup)
        assert growth < 2 * BOUND, f"gateway RSS grew by {growth / 2**20:.2f} MiB (bound {BOUND / 2**20:.0f} MiB)"
        status, metrics = app.get("/metrics")
        assert status == 200
        text = metrics.decode()
        assert metric_value(text, "sio_gateway_slow_consumer_disconnects_total", {"transport": transport}) == 1
        assert "slow_consumer_disconnect" in app.log_path.read_text(), app.log_tail()
        if transport == "websocket":
            # Aborted, not drained: the connection (and its send queue) is gone, so the blind
            # pongs that followed hit a reset connection.
            assert pongs_failed, "the slow consumer's TCP connection was left open"
    finally:
        await reader.client.disconnect()


async def test_never_reading_websocket_with_blind_pongs_is_dropped(flood_app: GatewayProcess) -> None:
    sock = never_reading_websocket(flood_app.port)
    pong = client_text_frame("3")
    try:
        await run_flood_with_slow_consumer(flood_app, lambda: sock.send(pong), "websocket")
    finally:
        sock.close()


async def test_polling_client_that_never_gets_is_dropped(flood_app: GatewayProcess) -> None:
    client = PostOnlyPolling(flood_app.port)
    statuses: list[int] = []

    def blind_pong() -> None:
        status = client.post("3")
        statuses.append(status)
        if status != 200:
            raise ConnectionResetError(f"POST answered {status}")

    try:
        await run_flood_with_slow_consumer(flood_app, blind_pong, "polling")
    finally:
        client.close()


# -- an in-process server ----------------------------------------------------------------------------


class Serving:
    """An in-process Server on a free port whose `/` records every socket's disconnect."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.gone: list[tuple[str, float]] = []  # (reason, time.monotonic())

        @server.on("connection")
        def connected(socket: Socket) -> None:
            @socket.on("disconnect")
            def left(reason: str) -> None:
                self.gone.append((reason, time.monotonic()))

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def polling_url(self, sid: str | None = None) -> str:
        return f"{self.url}/socket.io/?EIO=4&transport=polling" + (f"&sid={sid}" if sid else "")

    def only_session(self) -> Any:
        sessions = list(self.server.engine.sessions.values())
        assert len(sessions) == 1, sessions
        return sessions[0]


@contextlib.asynccontextmanager
async def serving(allow_request: Any = None, **overrides: Any) -> AsyncIterator[Serving]:
    settings = Settings(host=LOOPBACK, port=0, log_level="WARNING", **overrides)
    app = Serving(Server(settings, allow_request=allow_request))
    await app.server.start(port=0)
    try:
        yield app
    finally:
        await asyncio.wait_for(app.server.close(), TIMEOUT)


async def polling_handshake(http: aiohttp.ClientSession, app: Serving, **kwargs: Any) -> str:
    async with http.get(app.polling_url(), **kwargs) as response:
        assert response.status == 200, await response.text()
        return json.loads((await response.text())[1:])["sid"]


# -- B. a polling client that goes away ----------------------------------------------------------


@pytest.fixture
def nginx_daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    daemons: list[Daemon] = []
    try:
        yield daemons
    finally:
        for daemon in daemons:
            daemon.stop(signal.SIGKILL)


def start_nginx(tmp_path: Path, upstream_port: int, daemons: list[Daemon]) -> str:
    """The project's nginx.conf in front of one gateway, as tests/integration/test_topologies.py does."""
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), [upstream_port], port, prefix))
    daemon = Daemon("nginx", nginx_command(NGINX, prefix, conf), tmp_path, lambda: accepts(port))
    daemons.append(daemon)
    daemon.start()
    return f"http://{LOOPBACK}:{port}"


@pytest.mark.parametrize("route", ["direct", "nginx"])
async def test_polling_client_that_goes_away_disconnects_at_once(route: str, tmp_path: Path, nginx_daemons: list[Daemon]) -> None:
    async with serving() as app:
        url = app.url if route == "direct" else start_nginx(tmp_path, app.port, nginx_daemons)
        tab = NodeDriver(label="polling-tab")
        await tab.start()
        try:
            await tab.call("client.connect", name="tab", url=url, nsp="/", opts={"transports": ["polling"]})
            # The client's long-poll GET is held open by the gateway (through nginx too).
            await wait_until(lambda: app.only_session().pending_get is not None, TIMEOUT, "the pending poll")
            assert tab.pid is not None
            os.kill(tab.pid, signal.SIGKILL)  # the tab is closed: every socket of it goes
            killed = time.monotonic()
            await wait_until(lambda: app.gone, 3.0, "the server-side disconnect")
            reason, when = app.gone[0]
            assert reason == "transport error"
            assert when - killed < 1.0, f"disconnect fired {when - killed:.2f}s after the client went away"
            assert app.server.engine.sessions == {}
        finally:
            await tab.close()


# -- C + D. the upgrade: 3probe at once, the noop about 100 ms later -------------------------------------


async def test_upgrade_noop_comes_about_100ms_after_the_probe() -> None:
    async with serving() as app, aiohttp.ClientSession() as http:
        sid = await polling_handshake(http, app)

        async def poll() -> tuple[str, float]:
            async with http.get(app.polling_url(sid)) as response:
                return await response.text(), time.monotonic()

        pending = asyncio.get_running_loop().create_task(poll())
        await wait_until(lambda: app.only_session().pending_get is not None, TIMEOUT, "the pending poll")
        async with ws_connect(f"ws://{LOOPBACK}:{app.port}/socket.io/?EIO=4&transport=websocket&sid={sid}") as ws:
            await ws.send("2probe")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "3probe"
            probed = time.monotonic()
            body, released = await asyncio.wait_for(pending, TIMEOUT)
            assert body == "6"
            # engine.io's maybeUpgrade: a 100 ms check interval, not an immediate noop.
            assert 0.08 <= released - probed <= 0.5, f"noop {1000 * (released - probed):.0f} ms after 3probe"
            await ws.send("5")
            await ws.send("40")
            connected = await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert isinstance(connected, str) and connected.startswith("40{"), connected
            assert app.only_session().transport_name == "websocket"
            assert app.server.engine.stats.upgrades == 1


async def nonblocking_exchange(sock: socket.socket, request: bytes, until: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request)
    data = b""
    while until not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT)
        assert chunk, data
        data += chunk
    return data


def peek(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536, socket.MSG_PEEK)
    except BlockingIOError:
        return b""


async def test_probe_answer_leaves_before_a_stale_polls_400_of_the_same_tick() -> None:
    """The conformance case "ignores HTTP requests with same sid after upgrade": the probe, the
    upgrade and a stale poll are read in one tick; `3probe` must be on the wire before the 400."""
    async with serving() as app, aiohttp.ClientSession() as http:
        sid = await polling_handshake(http, app)
        ws_sock = socket.socket()
        stale = socket.socket()
        try:
            for sock in (ws_sock, stale):
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, app.port))
            head = await nonblocking_exchange(ws_sock, ws_upgrade_request(app.port, f"EIO=4&transport=websocket&sid={sid}"), b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            # Written without yielding, so the gateway reads all of it in the same tick.
            ws_sock.send(client_text_frame("2probe") + client_text_frame("5"))
            stale.send(f"GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
            deadline = time.monotonic() + TIMEOUT
            while not peek(stale) and time.monotonic() < deadline:
                await asyncio.sleep(0)  # one loop iteration at a time: look as soon as the 400 is there
            answer = peek(stale)
            probe_answer = peek(ws_sock)
            assert answer.startswith(b"HTTP/1.1 400"), answer
            assert probe_answer.startswith(b"\x81\x063probe"), f"3probe was not on the wire before the 400: {probe_answer!r}"
        finally:
            ws_sock.close()
            stale.close()


# -- E. allow_request ---------------------------------------------------------------------------------


@pytest.fixture
async def node() -> AsyncIterator[NodeDriver]:
    driver = NodeDriver(label="engine-clients")
    await driver.start()
    try:
        yield driver
    finally:
        await driver.close()


@pytest.mark.parametrize("transports", [["polling"], ["websocket"]], ids=["polling", "websocket"])
async def test_allow_request_refusal_is_a_connect_error(node: NodeDriver, transports: list[str]) -> None:
    asked: list[HandshakeRequest] = []

    def allow(request: HandshakeRequest) -> bool | str:
        asked.append(request)
        return True if request.query.get("token") == "good" else "bad token"

    async with serving(allow_request=allow) as app, aiohttp.ClientSession() as http:
        with pytest.raises(NodeCallError):
            await node.call("client.connect", name="refused", url=app.url, nsp="/", opts={"transports": transports, "query": {"token": "bad"}, "reconnection": False})
        assert asked and asked[0].transport == transports[0]
        assert app.server.engine.sessions == {}
        # What engine.io answers: 403 {"code":4,"message":"Forbidden"}, before any 101.
        if transports == ["polling"]:
            async with http.get(app.polling_url() + "&token=bad") as response:
                assert response.status == 403
                assert await response.json(content_type=None) == {"code": 4, "message": "Forbidden"}
        else:
            with pytest.raises(Exception) as refused:
                await ws_connect(f"ws://{LOOPBACK}:{app.port}/socket.io/?EIO=4&transport=websocket&token=bad")
            assert getattr(getattr(refused.value, "response", None), "status_code", None) == 403, refused.value
        welcome = await node.call("client.connect", name="allowed", url=app.url, nsp="/", opts={"transports": transports, "query": {"token": "good"}})
        assert welcome["id"]
        assert app.server.engine.stats.handshakes_refused >= 2


@pytest.mark.parametrize("transports", [["polling"], ["websocket"]], ids=["polling", "websocket"])
async def test_async_allow_request_holds_the_handshake_then_allows(node: NodeDriver, transports: list[str]) -> None:
    seen: list[HandshakeRequest] = []
    delay = 0.3

    async def allow(request: HandshakeRequest) -> None:
        seen.append(request)
        await asyncio.sleep(delay)
        assert request.path == "/socket.io/"

    async with serving(allow_request=allow) as app:
        begun = time.monotonic()
        result = await node.call(
            "client.connect", name="slow-ok", url=app.url, nsp="/", opts={"transports": transports, "query": {"room": "r1"}, "extraHeaders": {"x-tenant": "t1"}}
        )
        assert result["transport"] == transports[0]
        assert time.monotonic() - begun >= delay
        request = seen[0]
        assert (request.method, request.path, request.transport) == ("GET", "/socket.io/", transports[0])
        assert request.query["room"] == "r1" and request.query["EIO"] == "4"
        assert request.headers.get("x-tenant") == "t1"
        assert request.address == LOOPBACK == request.remote_address
        assert len(app.server.engine.sessions) == 1


async def test_allow_request_failure_refuses_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    def allow(request: HandshakeRequest) -> bool:
        raise RuntimeError("policy store down")

    async with serving(allow_request=allow) as app, aiohttp.ClientSession() as http:
        with caplog.at_level(logging.ERROR, logger="gateway.engine"):
            async with http.get(app.polling_url()) as response:
                assert response.status == 403
        assert any("allow_request_failed" in r.getMessage() and "policy store down" in r.getMessage() for r in caplog.records), caplog.text
        assert app.server.engine.sessions == {}


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_client_that_leaves_while_allow_request_runs_gets_no_session(transport: str, caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    asked = asyncio.Event()

    async def allow(request: HandshakeRequest) -> bool:
        asked.set()
        await release.wait()
        return True

    async with serving(allow_request=allow) as app:
        assert app.server.http is not None
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, (LOOPBACK, app.port))
        if transport == "polling":
            request = f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode()
        else:
            request = ws_upgrade_request(app.port, "EIO=4&transport=websocket")
        await loop.sock_sendall(sock, request)
        await asyncio.wait_for(asked.wait(), TIMEOUT)
        sock.close()
        if transport == "polling":
            await wait_until(lambda: not app.server.http.connections, TIMEOUT, "the server to see the close")  # type: ignore[union-attr]
        else:
            # The HTTP layer holds the reads of an upgrade that is not answered yet, so the close
            # is seen when the answer is written; the session that opens then dies with it.
            await asyncio.sleep(0.1)
        with caplog.at_level(logging.INFO):
            release.set()
            await wait_until(lambda: not app.server.engine.sessions, TIMEOUT, "no session left")
            await asyncio.sleep(0.1)
        assert app.server.engine.sessions == {}
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        if transport == "polling":
            assert "eio_handshake_abandoned" in caplog.text
            assert app.server.engine.stats.sessions_opened == 0


# -- F. CORS ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:8080", None])
async def test_cors_wildcard_never_sends_credentials(origin: str | None) -> None:
    headers = {"Origin": origin} if origin is not None else {}
    async with serving(cors_origins=("*",)) as app, aiohttp.ClientSession() as http:
        async with http.get(app.polling_url(), headers=headers) as response:
            assert response.status == 200
            assert response.headers.get("Access-Control-Allow-Origin") == "*"
            assert "Access-Control-Allow-Credentials" not in response.headers
        preflight = {**headers, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        async with http.options(app.polling_url(), headers=preflight) as response:
            assert response.status == 204
            assert response.headers.get("Access-Control-Allow-Origin") == "*"
            assert "Access-Control-Allow-Credentials" not in response.headers
            assert response.headers.get("Access-Control-Allow-Headers") == "content-type"


async def test_cors_listed_origin_gets_credentials_others_nothing() -> None:
    async with serving(cors_origins=("https://app.example",)) as app, aiohttp.ClientSession() as http:
        async with http.get(app.polling_url(), headers={"Origin": "https://app.example"}) as response:
            assert response.headers.get("Access-Control-Allow-Origin") == "https://app.example"
            assert response.headers.get("Access-Control-Allow-Credentials") == "true"
            assert "Origin" in response.headers.get("Vary", "")
        for other in ("https://evil.example", "null", "*"):
            async with http.get(app.polling_url(), headers={"Origin": other}) as response:
                assert "Access-Control-Allow-Origin" not in response.headers, other
                assert "Access-Control-Allow-Credentials" not in response.headers, other
