"""The HTTP front against hostile clients (gateway/http.py): real gateway processes on loopback,
raw sockets speaking HTTP/1.1 by hand, a python-socketio client where a real one matters.

1. timeouts: idle connections, half-sent heads, slowloris heads and half-sent bodies are closed
   (408 when something was read) within the header/body timeouts; a keep-alive connection idle
   between requests is closed, a pending long-poll GET and a WebSocket are not;
2. head limits: a huge header, too many headers, a huge URL are refused (431/414) at once and
   cost the node next to no CPU;
3. backpressure: pipelined requests that are never read (POSTs queued behind a pending long-poll,
   GETs whose answers are never read) do not grow the node's memory, and it still answers;
4. connections: HTTP_MAX_CONNECTIONS (by default 90 % of the descriptor limit) closes connections
   beyond it at once; running out of descriptors is logged and counted, existing connections
   keep being served and accepting resumes;
5. HTTP/1.0 with Transfer-Encoding is refused and closed; /health /stats /metrics answer 405 to
   other methods than GET/HEAD; HEAD sends no body; /api failed authentications are throttled
   per client address (TRUSTED_PROXIES aware) with a bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import socketio

from gateway.app import build_gateway
from gateway.config import Settings
from tests.gateway_process import GatewayProcess
from tests.integration.test_resilience import metric
from tests.ports import LOOPBACK

APP = "tests.sio_app"
HEADER_TIMEOUT_MS = 600
BODY_TIMEOUT_MS = 600
KEEPALIVE_TIMEOUT_MS = 800
LIMITS_ENV = {
    "HTTP_HEADER_TIMEOUT_MS": str(HEADER_TIMEOUT_MS),
    "HTTP_BODY_TIMEOUT_MS": str(BODY_TIMEOUT_MS),
    "HTTP_KEEPALIVE_TIMEOUT_MS": str(KEEPALIVE_TIMEOUT_MS),
    "LOG_LEVEL": "INFO",
}
# Well above every timeout above, well below what a test may take.
CLOSE_WITHIN_S = 4.0
IO_TIMEOUT_S = 5.0


# -- raw HTTP ---------------------------------------------------------------------------------------


def connect(port: int, timeout: float = IO_TIMEOUT_S) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def read_response(sock: socket.socket, buffer: bytearray | None = None, head_only: bool = False) -> Response | None:
    """One response from `sock` (None if the connection closed first). `buffer` keeps bytes read
    past it, for the next call on the same connection."""
    buf = buffer if buffer is not None else bytearray()
    deadline = time.monotonic() + IO_TIMEOUT_S
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            raise TimeoutError("no response head")
        chunk = _recv(sock)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < length:
        if time.monotonic() > deadline:
            raise TimeoutError("no response body")
        chunk = _recv(sock)
        if not chunk:
            break
        body += chunk
    buf[:] = body[length:]
    return Response(status, headers, bytes(body[:length]))


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the peer closes `sock` within `seconds`, and what it sent before."""
    deadline = time.monotonic() + seconds
    received = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, received
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return False, received
        except (ConnectionResetError, BrokenPipeError):
            return True, received
        if not chunk:
            return True, received
        received += chunk


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """sendall that reports a connection the server already closed instead of raising."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def get(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: gateway", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_polling_session(port: int) -> str:
    with connect(port) as sock:
        sock.sendall(get("/socket.io/?EIO=4&transport=polling"))
        response = read_response(sock)
    assert response is not None and response.status == 200, response and response.body
    return orjson.loads(response.body[1:])["sid"]


@contextlib.contextmanager
def open_files_limit(limit: int) -> Iterator[None]:
    """Lower this process's soft RLIMIT_NOFILE while a child is started (it inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(APP, env=LIMITS_ENV, log_dir=tmp_path_factory.mktemp("http-limits"))
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


# -- 1. timeouts ------------------------------------------------------------------------------------


def test_idle_half_sent_and_slowloris_connections_are_timed_out(node: GatewayProcess) -> None:
    assert node.pid is not None
    before = {phase: metric(node, "sio_gateway_http_timeouts_total", phase=phase) for phase in ("header", "body")}
    idle = [connect(node.port) for _ in range(100)]
    half_head = [connect(node.port) for _ in range(100)]
    for sock in half_head:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\n")
    half_body = [connect(node.port) for _ in range(50)]
    for sock in half_body:
        sock.sendall(b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n0123456789")
    slowloris = [connect(node.port) for _ in range(30)]
    # Slowloris: a header byte every 100 ms to each connection; data must not re-arm the timer.
    started = time.monotonic()
    for sock in slowloris:
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
    slow_open = list(slowloris)
    while slow_open and time.monotonic() - started < CLOSE_WITHIN_S:
        slow_open = [sock for sock in slow_open if send_quietly(sock, b"a")]
        time.sleep(0.1)
    slow_lasted = time.monotonic() - started
    try:
        assert not slow_open, "slowloris connections outlived the header timeout"
        assert slow_lasted < HEADER_TIMEOUT_MS / 1000 + 2.0
        for sock in idle:
            closed, received = closed_within(sock, CLOSE_WITHIN_S)
            assert closed and received == b"", "an idle connection is closed without an answer"
        for sock in half_head + half_body:
            closed, received = closed_within(sock, CLOSE_WITHIN_S)
            assert closed and received.startswith(b"HTTP/1.1 408 "), received[:80]
            assert b"Connection: close" in received
        # The node is fine and counted every one.
        assert node.get("/health")[0] == 200
        assert metric(node, "sio_gateway_http_timeouts_total", phase="header") - before["header"] >= 230
        assert metric(node, "sio_gateway_http_timeouts_total", phase="body") - before["body"] >= 50
    finally:
        for sock in idle + half_head + half_body + slowloris:
            sock.close()
    assert "http_timeout phase=" in node.log_tail(400)


async def test_keepalive_idle_is_closed_but_long_poll_and_websocket_are_not(node: GatewayProcess) -> None:
    # A keep-alive connection that stays idle after its answer is closed after the idle timeout.
    with connect(node.port) as sock:
        sock.sendall(get("/health"))
        first = read_response(sock)
        assert first is not None and first.status == 200 and "connection" not in first.headers
        closed, received = closed_within(sock, CLOSE_WITHIN_S)
        assert closed and received == b""
    assert metric(node, "sio_gateway_http_timeouts_total", phase="keepalive") >= 1

    # A long-poll GET waiting for data is not idle: it outlives every timeout and is answered.
    sid = open_polling_session(node.port)
    poll = connect(node.port)
    try:
        poll.sendall(get(f"/socket.io/?EIO=4&transport=polling&sid={sid}"))
        closed, received = closed_within(poll, 3 * KEEPALIVE_TIMEOUT_MS / 1000)
        assert not closed and received == b"", "a pending long-poll was timed out"
        with connect(node.port) as post:
            body = b"40"
            post.sendall(get(f"/socket.io/?EIO=4&transport=polling&sid={sid}", f"Content-Length: {len(body)}", method="POST")[:-2] + b"\r\n" + body)
            answer = read_response(post)
            assert answer is not None and answer.status == 200
        released = read_response(poll)
        assert released is not None and released.status == 200 and released.body.startswith(b"40")
    finally:
        poll.close()

    # An upgraded WebSocket with nothing to say for a while is not idle either.
    client = socketio.AsyncClient(reconnection=False)
    disconnects: list[Any] = []
    client.on("disconnect", lambda *args: disconnects.append(args))
    await client.connect(node.url, transports=["websocket"], wait_timeout=IO_TIMEOUT_S)
    try:
        await asyncio.sleep(3 * KEEPALIVE_TIMEOUT_MS / 1000)
        assert await client.call("echo", "still here", timeout=IO_TIMEOUT_S) == "still here"
        assert disconnects == []
    finally:
        await client.disconnect()


# -- 2. head limits ---------------------------------------------------------------------------------


def test_oversized_heads_are_refused_at_once_and_cheaply(node: GatewayProcess) -> None:
    assert node.pid is not None
    cpu_before = cpu_seconds(node.pid)
    cases = [
        ("one 4 MiB header", get("/health", "X-Big: " + "a" * (4 << 20)), 431),
        ("120,000 same-name headers", get("/health", *(["X-Dup: y"] * 120_000)), 431),
        ("101 headers", get("/health", *(f"X-{n}: y" for n in range(101))), 431),
        ("a 20 KiB URL", get("/health?" + "q" * 20_000), 414),
    ]
    for name, request, status in cases:
        with connect(node.port) as sock:
            send_quietly(sock, request)
            closed, received = closed_within(sock, IO_TIMEOUT_S)
            assert closed, name
            assert received.startswith(f"HTTP/1.1 {status} ".encode()), (name, received[:80])
            assert b"Connection: close" in received, name
    cpu_used = cpu_seconds(node.pid) - cpu_before
    assert cpu_used < 1.0, f"refusing oversized heads cost {cpu_used:.2f} s of CPU"
    # A large but allowed head still works.
    with connect(node.port) as sock:
        sock.sendall(get("/health", "X-Ok: " + "b" * 8000, *(["X-Dup: y"] * 50)))
        response = read_response(sock)
        assert response is not None and response.status == 200
    assert metric(node, "sio_gateway_http_headers_too_large_total") >= len(cases)


# -- 3. backpressure --------------------------------------------------------------------------------


def _send_until_blocked(sock: socket.socket, chunks: Iterator[bytes], stall_s: float = 1.0, budget_s: float = 15.0) -> int:
    """Write `chunks` until the server stops reading (a send makes no progress for `stall_s`) or
    they run out; returns the bytes the kernel took."""
    sock.setblocking(False)
    sent = 0
    pending = b""
    stalled_since: float | None = None
    deadline = time.monotonic() + budget_s
    try:
        while time.monotonic() < deadline:
            if not pending:
                pending = next(chunks, b"")
                if not pending:
                    break
            try:
                n = sock.send(pending)
            except BlockingIOError:
                n = 0
            except (BrokenPipeError, ConnectionResetError):
                break
            if n:
                sent += n
                pending = pending[n:]
                stalled_since = None
                continue
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > stall_s:
                break
            time.sleep(0.01)
    finally:
        sock.setblocking(True)
    return sent


def test_pipelined_requests_never_read_do_not_grow_memory(node: GatewayProcess) -> None:
    assert node.pid is not None
    baseline = rss_bytes(node.pid)
    # 200 POSTs of 999 KB pipelined behind a long-poll GET that stays pending.
    sid = open_polling_session(node.port)
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    payload = b"4" + b"x" * 998_999
    post = f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: text/plain\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
    flood = connect(node.port)
    try:
        flood.sendall(get(path))  # the session's long-poll: pending, the POSTs queue behind it
        posted = _send_until_blocked(flood, iter([post] * 200))
        # 20,000 pipelined GET /metrics whose answers are never read.
        readless = connect(node.port)
        readless.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            gets = _send_until_blocked(readless, iter([get("/metrics") * 1000] * 20))
            growth = rss_bytes(node.pid) - baseline
            assert growth < 48 << 20, f"RSS grew {growth >> 20} MiB (POSTs sent {posted >> 20} MiB, GETs {gets >> 10} KiB)"
            assert posted < 100 << 20, "the node kept reading POSTs it could not serve"
            assert node.get("/health")[0] == 200
            assert metric(node, "sio_gateway_http_read_pauses_total") >= 2
        finally:
            readless.close()
    finally:
        flood.close()


# -- 4. connections and descriptors -------------------------------------------------------------------


def _open_many(port: int, count: int) -> list[socket.socket]:
    return [connect(port) for _ in range(count)]


def test_connection_cap_defaults_from_descriptor_limit(tmp_path: Path) -> None:
    env = {**LIMITS_ENV, "HTTP_HEADER_TIMEOUT_MS": "60000", "HTTP_KEEPALIVE_TIMEOUT_MS": "60000"}
    gateway = GatewayProcess(APP, env=env, log_dir=tmp_path)
    with open_files_limit(200):
        gateway.start()
    cap = 200 * 9 // 10
    keeper = connect(gateway.port)
    flood: list[socket.socket] = []
    try:
        keeper.sendall(get("/health"))
        assert (r := read_response(keeper)) is not None and r.status == 200
        flood = _open_many(gateway.port, 250)
        closed_at_once = sum(1 for sock in flood if closed_within(sock, 0.05)[0])
        # Everything past the cap (less the few descriptors the node holds itself) is closed.
        assert 250 - cap <= closed_at_once <= 250 - cap + 30, closed_at_once
        buffer = bytearray()
        keeper.sendall(get("/metrics"))
        response = read_response(keeper, buffer)
        assert response is not None and response.status == 200
        text = response.body.decode()
        assert f"sio_gateway_http_connections {cap}.0" in text or f"sio_gateway_http_connections {cap - 1}.0" in text
        assert "sio_gateway_http_connections_over_limit_total" in text
        for sock in flood:
            sock.close()
        flood = []
        time.sleep(0.2)
        assert metric(gateway, "sio_gateway_http_connections_over_limit_total") >= closed_at_once
        lines = [line for line in gateway.log_tail(2000).splitlines() if "http_connection_over_limit" in line]
        assert lines and f"limit={cap}" in lines[0]
        assert len(lines) <= 2, "over-limit closes are logged at most once per interval"
    finally:
        for sock in flood:
            sock.close()
        keeper.close()
        gateway.stop()


def test_out_of_descriptors_is_logged_counted_and_survived(tmp_path: Path) -> None:
    env = {**LIMITS_ENV, "HTTP_MAX_CONNECTIONS": "100000", "HTTP_HEADER_TIMEOUT_MS": "60000", "HTTP_KEEPALIVE_TIMEOUT_MS": "60000"}
    gateway = GatewayProcess(APP, env=env, log_dir=tmp_path)
    with open_files_limit(200):
        gateway.start()
    keeper = connect(gateway.port)
    flood: list[socket.socket] = []
    try:
        buffer = bytearray()
        keeper.sendall(get("/health"))
        assert (r := read_response(keeper, buffer)) is not None and r.status == 200
        flood = _open_many(gateway.port, 250)  # the kernel completes them; the node runs out
        time.sleep(1.5)  # a few accept retries
        # The existing connection is served all along.
        for _ in range(3):
            keeper.sendall(get("/health"))
            response = read_response(keeper, buffer)
            assert response is not None and response.status == 200
        keeper.sendall(get("/metrics"))
        response = read_response(keeper, buffer)
        assert response is not None
        assert 'sio_gateway_http_accept_errors_total{error="emfile"}' in response.body.decode()
        lines = [line for line in gateway.log_tail(2000).splitlines() if "http_accept_failed" in line]
        assert lines and "error=emfile" in lines[0] and "level=warning" in lines[0]
        assert len(lines) <= 2, "accept failures are logged at most once per interval"
        # Descriptors back: accepting resumes without a restart.
        for sock in flood:
            sock.close()
        flood = []
        time.sleep(0.8)
        assert gateway.get("/health")[0] == 200
    finally:
        for sock in flood:
            sock.close()
        keeper.close()
        gateway.stop()


# -- 5. HTTP details, the operations endpoints, the publish API ----------------------------------------


def test_http10_transfer_encoding_is_refused_and_closed(node: GatewayProcess) -> None:
    with connect(node.port) as sock:
        sock.sendall(get("/health", "Connection: keep-alive", "Transfer-Encoding: chunked", method="POST", version="1.0") + b"0\r\n\r\n")
        closed, received = closed_within(sock, IO_TIMEOUT_S)
        assert closed and received.startswith(b"HTTP/1.1 400 "), received[:80]
        assert b"Connection: close" in received


@pytest.mark.parametrize("path", ["/health", "/stats", "/metrics"])
def test_ops_endpoints_answer_405_to_other_methods(node: GatewayProcess, path: str) -> None:
    for method in ("POST", "DELETE", "TRACE", "PUT"):
        with connect(node.port) as sock:
            sock.sendall(get(path, "Content-Length: 0", method=method))
            response = read_response(sock)
            assert response is not None and response.status == 405, (method, response and response.status)
            assert response.headers.get("allow") == "GET, HEAD"
            assert response.headers.get("connection") == "close"
            assert closed_within(sock, IO_TIMEOUT_S)[0]
    # HEAD: the GET's headers, no body, and the connection stays usable.
    with connect(node.port) as sock:
        buffer = bytearray()
        sock.sendall(get(path, method="HEAD") + get("/health"))
        head = read_response(sock, buffer, head_only=True)
        assert head is not None and head.status == 200 and int(head.headers["content-length"]) > 0
        after = read_response(sock, buffer)
        assert after is not None and after.status == 200 and orjson.loads(after.body)["status"] == "healthy"


async def test_api_failed_authentications_are_throttled_per_client_address() -> None:
    settings = Settings(
        port=0,
        auth_mode="none",
        api_keys=("right-key",),
        trusted_proxies=("127.0.0.1",),
        api_auth_failures_per_min=5,
        api_auth_tracked_addresses=50,
    )
    server = build_gateway(settings)
    port = await server.start()
    reader, writer = await asyncio.open_connection(LOOPBACK, port)

    async def call(key: str, client: str) -> tuple[int, dict[str, str]]:
        writer.write(get("/api/rooms/r1", f"Authorization: Bearer {key}", f"X-Forwarded-For: {client}"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
        lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), IO_TIMEOUT_S)
        return int(lines[0].split()[1]), headers

    try:
        # One keep-alive connection guessing keys: 5 tries, then 429 whatever the key.
        statuses = [(await call(f"guess-{n}", "203.0.113.7"))[0] for n in range(200)]
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        status, headers = await call("right-key", "203.0.113.7")
        assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
        # Another client behind the same proxy is not held back.
        assert (await call("right-key", "203.0.113.8"))[0] == 200
        # Memory stays bounded whatever the number of addresses trying.
        for n in range(200):
            await call("wrong", f"198.51.100.{n}")
        assert len(server.api.auth_throttle) <= 50
        writer.write(get("/metrics"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
        length = int(next(line for line in head.decode().split("\r\n") if line.lower().startswith("content-length")).split(":")[1])
        text = (await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT_S)).decode()
        assert "sio_gateway_api_auth_throttled_total 196.0" in text
    finally:
        writer.close()
        await server.close()
