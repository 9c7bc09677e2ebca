"""python-socketio's AsyncClient against the gateway (tests.sio_app as a process).

The same scenarios as test_node_clients.py, with the other widely used client implementation:
its Engine.IO client upgrades during the handshake (before the Socket.IO CONNECT) and multiplexes
every namespace on one connection, which the Node client tests (one connection per namespace) do
not exercise. Both transport orders run: the default (polling, then WebSocket) and WebSocket only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from tests.gateway_process import GatewayProcess
from tests.integration.test_encode_once import RawClient

APP = "tests.sio_app"
EVENT_TIMEOUT = 5.0
SILENCE_S = 0.5
CALL_TIMEOUT = 5.0

TRANSPORTS: dict[str, list[str] | None] = {
    "default": None,  # the client's own order: polling, then an upgrade to WebSocket
    "websocket": ["websocket"],
}


class Recorder:
    """Everything a client receives, in order, so tests can wait for one thing at a time.

    Handlers are registered on the catch-all namespace only: python-socketio looks for a
    namespace's own handlers first and would bypass these for that namespace otherwise.
    """

    def __init__(self, client: socketio.AsyncClient) -> None:
        self.client = client
        self.items: list[tuple[str, str, str | None, tuple[Any, ...]]] = []
        self.replies: dict[tuple[str, str], Any] = {}
        self._changed = asyncio.Condition()
        client.on("connect", self._on_connect, namespace="*")
        client.on("connect_error", self._on_connect_error, namespace="*")
        client.on("disconnect", self._on_disconnect, namespace="*")
        client.on("*", self._on_event, namespace="*")

    async def _record(self, kind: str, nsp: str, event: str | None, args: tuple[Any, ...]) -> None:
        async with self._changed:
            self.items.append((kind, nsp, event, args))
            self._changed.notify_all()

    async def _on_connect(self, nsp: str) -> None:
        await self._record("connect", nsp, None, ())

    async def _on_connect_error(self, nsp: str, data: Any = None) -> None:
        await self._record("connect_error", nsp, None, (data,))

    async def _on_disconnect(self, nsp: str, reason: Any = None) -> None:
        await self._record("disconnect", nsp, None, (reason,))

    async def _on_event(self, event: str, nsp: str, *args: Any) -> Any:
        await self._record("event", nsp, event, args)
        # The return value is the acknowledgement when the server asked for one.
        return self.replies.get((nsp, event), (f"ack:{event}", *args))

    async def wait(self, kind: str, nsp: str, event: str | None = None, timeout: float = EVENT_TIMEOUT) -> tuple[Any, ...]:
        """Consume and return the arguments of the first matching item."""
        found: list[tuple[Any, ...]] = []

        def take() -> bool:
            for i, (k, n, e, args) in enumerate(self.items):
                if k == kind and n == nsp and (event is None or e == event):
                    del self.items[i]
                    found.append(args)
                    return True
            return False

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(take), timeout)
        except TimeoutError:
            raise AssertionError(f"no {kind} {event or ''} on {nsp} within {timeout}s; got {self.items}") from None
        return found[0]

    async def assert_silent(self, nsp: str, event: str) -> None:
        with pytest.raises(AssertionError, match="within"):
            await self.wait("event", nsp, event, timeout=SILENCE_S)


@pytest.fixture(params=list(TRANSPORTS), ids=list(TRANSPORTS))
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Starts tests.sio_app processes; every one is stopped by PID at teardown."""
    started: list[GatewayProcess] = []

    def start(port: int | None = None) -> GatewayProcess:
        process = GatewayProcess(APP, port=port, log_dir=tmp_path)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop(timeout=5)


@pytest.fixture
def gateway(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return start_gateway()


class ClientPool:
    """Makes clients for one test and shuts every one down at the end (reconnect loops too)."""

    def __init__(self, transports: list[str] | None) -> None:
        self.transports = transports
        self.made: list[socketio.AsyncClient] = []

    def new(self, **client_opts: Any) -> tuple[socketio.AsyncClient, Recorder]:
        client_opts.setdefault("reconnection", False)
        client = socketio.AsyncClient(**client_opts)
        self.made.append(client)
        return client, Recorder(client)

    async def connect(self, url: str, namespaces: list[str], auth: Any = None, **client_opts: Any) -> tuple[socketio.AsyncClient, Recorder]:
        client, recorder = self.new(**client_opts)
        await client.connect(url, namespaces=namespaces, auth=auth, transports=self.transports, wait_timeout=EVENT_TIMEOUT)
        return client, recorder

    async def close(self) -> None:
        for client in self.made:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.shutdown(), 5)


@pytest.fixture
async def clients(mode: str) -> AsyncIterator[ClientPool]:
    pool = ClientPool(TRANSPORTS[mode])
    try:
        yield pool
    finally:
        await pool.close()


def upgrades(gateway: GatewayProcess) -> int:
    status, body = gateway.get("/metrics")
    assert status == 200
    match = re.search(rb"^sio_gateway_upgrades(?:_total)? (\d+(?:\.\d+)?)$", body, re.M)
    assert match, body[:2000]
    return int(float(match.group(1)))


async def welcomed(client: socketio.AsyncClient, recorder: Recorder, nsp: str) -> str:
    sid = client.get_sid(nsp)
    assert sid
    assert await recorder.wait("event", nsp, "welcome") == ({"id": sid, "nsp": nsp},)
    return sid


async def test_namespaces_auth_acks_binary(clients: ClientPool, gateway: GatewayProcess, mode: str) -> None:
    auth = {"user": "ada", "n": 1}
    client, rec = await clients.connect(gateway.url, ["/", "/chat"], auth=auth)
    assert client.transport() == "websocket"
    if mode == "default":
        assert upgrades(gateway) == 1, "the session opened on polling and was upgraded"
    else:
        assert upgrades(gateway) == 0
    main_sid = await welcomed(client, rec, "/")
    chat_sid = await welcomed(client, rec, "/chat")
    assert main_sid != chat_sid

    me = await client.call("whoami", namespace="/", timeout=CALL_TIMEOUT)
    assert me == {"id": main_sid, "nsp": "/", "rooms": [main_sid], "data": {"server": "python", "auth": auth}}
    me = await client.call("whoami", namespace="/chat", timeout=CALL_TIMEOUT)
    assert me["nsp"] == "/chat" and me["data"]["auth"] == auth

    blob = bytes(range(256)) * 4
    args = ("text", 42, {"nested": {"bin": b"\x00\x01\xff"}, "list": [1, None, True]}, blob)
    assert await client.call("echo", args, namespace="/", timeout=CALL_TIMEOUT) == args
    assert await client.call("echo", b"chat-bin", namespace="/chat", timeout=CALL_TIMEOUT) == b"chat-bin"

    await client.emit("echo", ("plain", b"\x10\x20"), namespace="/chat")
    assert await rec.wait("event", "/chat", "echo") == ("plain", b"\x10\x20")
    await rec.assert_silent("/", "echo")  # namespaces on one connection stay apart

    answer = {"answer": 42, "bin": b"\xde\xad\xbe\xef"}
    rec.replies[("/chat", "question")] = answer
    result = await client.call("server-ack", {"q": "life", "bin": b"\x01"}, namespace="/chat", timeout=CALL_TIMEOUT)
    assert await rec.wait("event", "/chat", "question") == ({"q": "life", "bin": b"\x01"},)
    assert result == answer


async def test_rooms_and_broadcast_except(clients: ClientPool, gateway: GatewayProcess) -> None:
    a, ra = await clients.connect(gateway.url, ["/"])
    b, rb = await clients.connect(gateway.url, ["/"])
    c, rc = await clients.connect(gateway.url, ["/", "/chat"])
    ids = {name: await welcomed(cl, rec, "/") for name, cl, rec in (("a", a, ra), ("b", b, rb), ("c", c, rc))}
    await welcomed(c, rc, "/chat")

    assert await a.call("join", "room1", timeout=CALL_TIMEOUT) == [ids["a"], "room1"]
    await b.call("join", "room1", timeout=CALL_TIMEOUT)
    assert set(await c.call("join", ["room1", "vip"], timeout=CALL_TIMEOUT)) == {ids["c"], "room1", "vip"}
    await c.call("join", "room1", namespace="/chat", timeout=CALL_TIMEOUT)

    spec = {"rooms": "room1", "except": "vip", "event": "news", "args": ["hello", b"\x00\xffbin", {"k": [b"\x01"]}]}
    assert await a.call("broadcast", spec, timeout=CALL_TIMEOUT) is True
    for rec in (ra, rb):
        assert await rec.wait("event", "/", "news") == ("hello", b"\x00\xffbin", {"k": [b"\x01"]})
    await rc.assert_silent("/", "news")
    await rc.assert_silent("/chat", "news")

    assert await b.call("leave", "room1", timeout=CALL_TIMEOUT) == [ids["b"]]
    await c.call("broadcast", {"rooms": ["room1"], "event": "again", "args": 7}, timeout=CALL_TIMEOUT)
    for rec in (ra, rc):
        assert await rec.wait("event", "/", "again") == (7,)
    await rb.assert_silent("/", "again")

    await b.call("broadcast", {"event": "all", "args": [b"\x07"]}, timeout=CALL_TIMEOUT)
    for rec in (ra, rb, rc):
        assert await rec.wait("event", "/", "all") == (b"\x07",)
    await rc.assert_silent("/chat", "all")

    for client in (a, b, c):
        await asyncio.wait_for(client.disconnect(), EVENT_TIMEOUT)
    deadline = asyncio.get_running_loop().time() + EVENT_TIMEOUT
    while (count := json.loads((await asyncio.to_thread(gateway.get, "/health"))[1])["connections"]) != 0:
        assert asyncio.get_running_loop().time() < deadline, f"{count} sessions left after the clients disconnected"
        await asyncio.sleep(0.05)


async def test_middleware_and_namespace_refusals(clients: ClientPool, gateway: GatewayProcess) -> None:
    refused, rec = clients.new()
    with pytest.raises(socketio.exceptions.ConnectionError, match="/private"):
        await refused.connect(gateway.url, namespaces=["/private"], auth={"token": "nope"}, transports=clients.transports, wait_timeout=EVENT_TIMEOUT)
    (data,) = await rec.wait("connect_error", "/private")
    assert data == {"message": "unauthorized", "data": {"reason": "bad token"}}

    insider, ri = await clients.connect(gateway.url, ["/private", "/dyn-42"], auth={"token": "letmein"})
    sid = await welcomed(insider, ri, "/private")
    assert (await insider.call("whoami", namespace="/private", timeout=CALL_TIMEOUT))["id"] == sid
    assert await insider.call("echo", b"in", namespace="/private", timeout=CALL_TIMEOUT) == b"in"
    dyn_sid = await welcomed(insider, ri, "/dyn-42")
    me = await insider.call("whoami", namespace="/dyn-42", timeout=CALL_TIMEOUT)
    assert me == {"id": dyn_sid, "nsp": "/dyn-42", "rooms": [dyn_sid], "data": {"server": "python", "auth": {"token": "letmein"}}}

    lost, rec = clients.new()
    with pytest.raises(socketio.exceptions.ConnectionError, match="/unknown"):
        await lost.connect(gateway.url, namespaces=["/unknown"], transports=clients.transports, wait_timeout=EVENT_TIMEOUT)
    (data,) = await rec.wait("connect_error", "/unknown")
    assert data == {"message": "Invalid namespace"}

    assert await insider.call("echo", 1, namespace="/dyn-42", timeout=CALL_TIMEOUT) == 1
    assert gateway.get("/health")[0] == 200


async def test_reconnects_after_server_restart(clients: ClientPool, start_gateway: Callable[..., GatewayProcess]) -> None:
    first = start_gateway()
    client, rec = await clients.connect(
        first.url,
        ["/", "/chat"],
        auth={"user": "p"},
        reconnection=True,
        reconnection_delay=0.1,
        reconnection_delay_max=0.4,
        randomization_factor=0,
    )
    before = {nsp: await welcomed(client, rec, nsp) for nsp in ("/", "/chat")}
    for nsp in before:
        await rec.wait("connect", nsp)

    first.stop(timeout=5)
    for nsp in before:
        (reason,) = await rec.wait("disconnect", nsp)
        # python-engineio reports any WebSocket close without an Engine.IO close packet as a
        # transport error (against a Node server as well); either way it is not a deliberate
        # server disconnect, so the client must reconnect.
        assert reason in ("transport close", "transport error"), reason

    start_gateway(port=first.port)
    for nsp in before:
        await rec.wait("connect", nsp, timeout=10)
        sid = await welcomed(client, rec, nsp)
        assert sid != before[nsp]
        me = await client.call("whoami", namespace=nsp, timeout=CALL_TIMEOUT)
        assert me["data"]["auth"] == {"user": "p"}
    assert await client.call("echo", b"back", namespace="/chat", timeout=CALL_TIMEOUT) == b"back"


# How long a call waits for an ack that must never come; the positive acks arrive within
# milliseconds on loopback.
NO_ACK_TIMEOUT_S = 0.3


async def test_acks_only_when_the_handler_gives_one(gateway: GatewayProcess) -> None:
    """The acknowledgement rule seen by python-socketio: `call` on a handler that returns None
    without calling `ack` raises TimeoutError (as against a Node.js listener that never calls its
    callback); a returned value is the answer; `ack=True` answers None with an empty ack (which
    `call` returns as None); a handler calling `ack` twice is acknowledged once, on the wire."""
    pool = ClientPool(["websocket"])
    try:
        client, rec = await pool.connect(gateway.url, ["/"])
        await welcomed(client, rec, "/")
        for event in ("returns-none", "returns-none-async", "ack-true-raises"):
            with pytest.raises(socketio.exceptions.TimeoutError):
                await client.call(event, 1, timeout=NO_ACK_TIMEOUT_S)
        assert await client.call("returns-value", (1, "x"), timeout=CALL_TIMEOUT) == {"got": [1, "x"]}
        assert await client.call("returns-tuple-async", timeout=CALL_TIMEOUT) == ("a", 1)
        assert await client.call("ack-true-none", timeout=CALL_TIMEOUT) is None
        assert await client.call("ack-true-none-async", timeout=CALL_TIMEOUT) is None
        assert await client.call("acks-twice", timeout=CALL_TIMEOUT) == "first"
    finally:
        await pool.close()

    raw = await RawClient.open(gateway.port)
    try:
        await raw.connect_nsp("/")
        await raw.ws.send('427["acks-twice"]')
        await raw.ws.send('428["ack-true-none"]')
        acks: list[str | bytes] = []
        with contextlib.suppress(asyncio.TimeoutError):
            while True:
                message = await raw.recv(SILENCE_S)
                if isinstance(message, str) and message.startswith("43"):
                    acks.append(message)
        assert acks == ['437["first"]', "438[]"]
    finally:
        await raw.close()
