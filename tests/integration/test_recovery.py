"""Connection state recovery (STATE_RECOVERY_MS) with real clients, single node (in-memory store).

The server is tests.sio_app's contract built in process, so the test can broadcast through the
Python API and look at the server's sockets and counters directly; the clients are real:
Node.js socket.io-client 4.8 through tests/node_driver.py (its `client.engine_close` drops the
connection the way a network blip does, the manager reconnects with `{pid, offset}`), raw
WebSocket clients for the exact bytes, and python-socketio.

What a client must see, as with Node.js socket.io 4.8: the CONNECT reply carries `pid`, every
event that expects no ack and is not volatile carries its offset as the last argument, and a
client coming back within the window gets the same id, rooms and data, every missed packet once
and in order, with `recovered` true on both sides; a manual disconnect, an expired session or a
stale offset give a fresh socket instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from prometheus_client import generate_latest

import protocol.socketio as sio_codec
from gateway import Server
from gateway.app import DEFAULT_RECOVERY_MS, build_gateway
from gateway.config import ConfigError, Settings
from tests import sio_app
from tests.integration.test_encode_once import Counter, RawClient, wait_until
from tests.integration.test_node_clients import node  # noqa: F401  (the Node driver fixture)
from tests.node_driver import NodeDriver
from tests.ports import LOOPBACK

TIMEOUT = 5.0
WINDOW_MS = 2000
# Long enough for the test to broadcast while the client is away, well inside the window.
RECONNECT_DELAY_MS = 400
SILENCE_S = 0.3
TRANSPORTS = {"websocket": {"transports": ["websocket"]}, "polling": {"transports": ["polling"]}}


@contextlib.asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[Server]:
    """tests.sio_app's server in process, recovery on unless overridden."""
    values: dict[str, Any] = {"host": LOOPBACK, "port": 0, "log_level": "WARNING", "auth_mode": "none", "state_recovery_ms": WINDOW_MS}
    values.update(overrides)
    server = sio_app.build(Settings(**values))
    await server.start(port=0)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.close(), TIMEOUT)


def url_of(server: Server) -> str:
    return f"http://{LOOPBACK}:{server.port}"


def client_opts(transport: str = "websocket", delay_ms: int = RECONNECT_DELAY_MS) -> dict[str, Any]:
    return {**TRANSPORTS[transport], "reconnectionDelay": delay_ms, "reconnectionDelayMax": delay_ms, "randomizationFactor": 0}


async def next_args(node: NodeDriver, name: str, event: str, timeout: float = TIMEOUT) -> list[Any]:
    return (await node.wait_event(ev="event", name=name, event=event, timeout=timeout))["args"]


async def connected(node: NodeDriver, server: Server, name: str, opts: dict[str, Any]) -> tuple[str, str]:
    """Connect `name`, take its welcome (a per-socket emit: it carries an offset); (id, offset)."""
    first = await node.call("client.connect", name=name, url=url_of(server), nsp="/", opts=opts)
    await node.wait_event(ev="connect", name=name, timeout=TIMEOUT)  # the first one, consumed
    welcome = await next_args(node, name, "welcome")
    assert welcome[0] == {"id": first["id"], "nsp": "/"} and isinstance(welcome[-1], str), welcome
    return first["id"], welcome[-1]


async def drop_connection(node: NodeDriver, server: Server, name: str, sid: str) -> None:
    """Close the client's transport (no DISCONNECT packet) and wait until the server saw it."""
    await node.call("client.engine_close", name=name)
    gone = await node.wait_event(ev="disconnect", name=name, timeout=TIMEOUT)
    assert gone["reason"] == "forced close"  # what socket.io-client calls its engine.close()
    await wait_until(lambda: sid not in server.main.sockets)


def metrics(server: Server) -> str:
    """What /metrics serves (its registry, read in process: the server runs on this loop)."""
    return generate_latest(server.metrics_registry).decode()


def unconsumed(node: NodeDriver, name: str) -> list[dict[str, Any]]:
    return [e for e in node.pending_events() if e.get("name") == name and e.get("ev") == "event"]


# -- Node.js socket.io-client 4.8 ----------------------------------------------------------------


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_node_client_recovers_id_rooms_data_and_every_missed_broadcast_in_order(node: NodeDriver, transport: str) -> None:
    async with serving() as server:
        sid, _ = await connected(node, server, "a", client_opts(transport))
        assert (await node.call("client.state", name="a"))["recovered"] is False
        assert await node.call("client.emit", name="a", event="join", args=["r"], ack=True)
        assert await node.call("client.emit", name="a", event="set-data", args=["k", "v"], ack=True) == [True]
        for i in range(3):
            server.to("r").emit("m", i)
        live = [await next_args(node, "a", "m") for _ in range(3)]
        assert [args[0] for args in live] == [0, 1, 2]
        offsets = [args[-1] for args in live]
        assert all(isinstance(o, str) for o in offsets) and len(set(offsets)) == 3

        await drop_connection(node, server, "a", sid)
        # sent while it is away: to its room, to everyone, and what it must not get
        server.to("r").emit("m", 3)
        server.emit("m", 4)
        server.except_("r").emit("nope", "excepted")
        server.to("elsewhere").emit("nope", "other room")
        server.volatile.to("r").emit("nope", "volatile")
        server.to("r").emit("m", 5)

        back = await node.wait_event(ev="connect", name="a", timeout=TIMEOUT)
        assert back["id"] == sid
        assert await node.call("client.state", name="a") == {"connected": True, "id": sid, "recovered": True}
        missed = [await next_args(node, "a", "m") for _ in range(3)]
        assert [args[0] for args in missed] == [3, 4, 5]
        assert not {args[-1] for args in missed} & set(offsets)

        socket = server.main.sockets[sid]
        assert socket.recovered and "r" in socket.rooms and socket.data["k"] == "v"
        assert socket.data["server"] == "python"  # the data it had, not a new one
        state = await node.call("client.emit", name="a", event="recovery-state", ack=True)
        assert state == [{"id": sid, "recovered": True, "rooms": [sid, "r"], "data": socket.data}]

        server.to("r").emit("m", 6)  # the room is live again
        assert (await next_args(node, "a", "m"))[0] == 6
        await asyncio.sleep(SILENCE_S)
        assert [e for e in unconsumed(node, "a") if e["event"] in ("m", "nope")] == []

        stats = server.adapter_stats.recovery
        assert stats.results["recovered"] == 1 and stats.replayed_packets == 3
        text = metrics(server)
        assert 'sio_gateway_recoveries_total{result="recovered"} 1.0' in text
        assert "sio_gateway_recovery_replayed_packets_total 3.0" in text


async def test_node_client_recovers_the_connection_state_as_the_official_client_suite_does(node: NodeDriver) -> None:
    """socket.io-client's "should recover the connection state": defaults (polling, then the
    upgrade), a 10 ms reconnection delay, engine.close(), and the socket is recovered."""
    async with serving() as server:
        first = await node.call("client.connect", name="c", url=url_of(server), nsp="/", opts={"reconnectionDelay": 10})
        await node.wait_event(ev="connect", name="c", timeout=TIMEOUT)
        await next_args(node, "c", "welcome")
        assert (await node.call("client.state", name="c"))["recovered"] is False
        await node.call("client.engine_close", name="c")
        await node.wait_event(ev="disconnect", name="c", timeout=TIMEOUT)
        back = await node.wait_event(ev="connect", name="c", timeout=TIMEOUT)
        assert back["id"] == first["id"]
        assert (await node.call("client.state", name="c"))["recovered"] is True
        assert server.main.sockets[first["id"]].recovered


@pytest.mark.parametrize("side", ["client", "server"])
async def test_a_manual_disconnect_is_not_recoverable(node: NodeDriver, side: str) -> None:
    async with serving() as server:
        sid, _ = await connected(node, server, "m", client_opts())
        if side == "client":
            await node.call("client.disconnect", name="m")
            reason = "io client disconnect"
        else:
            server.main.sockets[sid].disconnect()
            reason = "io server disconnect"
        assert (await node.wait_event(ev="disconnect", name="m", timeout=TIMEOUT))["reason"] == reason
        await wait_until(lambda: sid not in server.main.sockets)
        again = await node.call("client.reconnect", name="m")  # sends its pid and offset again
        assert again["recovered"] is False and again["id"] != sid
        assert not server.main.sockets[again["id"]].recovered
        assert server.adapter_stats.recovery.results["unknown"] == 1


async def test_a_session_older_than_the_window_is_not_recovered(node: NodeDriver) -> None:
    async with serving(state_recovery_ms=300) as server:
        sid, _ = await connected(node, server, "late", client_opts(delay_ms=900))
        await drop_connection(node, server, "late", sid)
        back = await node.wait_event(ev="connect", name="late", timeout=TIMEOUT)
        assert back["id"] != sid
        assert (await node.call("client.state", name="late"))["recovered"] is False
        assert server.adapter_stats.recovery.results["expired"] == 1
        assert 'sio_gateway_recoveries_total{result="expired"} 1.0' in metrics(server)


async def test_an_offset_older_than_what_is_kept_gives_a_fresh_socket(node: NodeDriver) -> None:
    async with serving(state_recovery_max_packets=5) as server:
        sid, _ = await connected(node, server, "s", client_opts())
        await drop_connection(node, server, "s", sid)
        for i in range(8):  # more than the store keeps: its offset is dropped
            server.emit("m", i)
        back = await node.wait_event(ev="connect", name="s", timeout=TIMEOUT)
        assert back["id"] != sid
        assert (await node.call("client.state", name="s"))["recovered"] is False
        await asyncio.sleep(SILENCE_S)
        assert [e for e in unconsumed(node, "s") if e["event"] == "m"] == []  # no partial replay
        stats = server.adapter_stats.recovery
        assert stats.results["stale"] == 1 and stats.packets_evicted["count"] >= 4
        text = metrics(server)
        assert 'sio_gateway_recoveries_total{result="stale"} 1.0' in text
        assert 'sio_gateway_recovery_packets_evicted_total{bound="count"}' in text


async def test_middlewares_run_again_unless_skipped(node: NodeDriver) -> None:
    """/private's middleware refuses a token-less CONNECT: skipped for a recovered socket by
    default (the client's auth is sent again anyway), run when the setting says so."""
    for skip in (True, False):
        async with serving(state_recovery_skip_middlewares=skip) as server:
            private = server.of("/private")
            ran: list[str] = []
            private.use(lambda socket: ran.append(socket.id))
            first = await node.call("client.connect", name="p", url=url_of(server), nsp="/private", opts={**client_opts(), "auth": {"token": sio_app.PRIVATE_TOKEN}})
            await node.wait_event(ev="connect", name="p", timeout=TIMEOUT)
            await next_args(node, "p", "welcome")
            await drop_connection_of(node, server, private, "p", first["id"])
            back = await node.wait_event(ev="connect", name="p", timeout=TIMEOUT)
            assert back["id"] == first["id"]
            assert ran == ([first["id"]] if skip else [first["id"], first["id"]])
            await node.call("client.disconnect", name="p")


async def drop_connection_of(node: NodeDriver, server: Server, nsp: Any, name: str, sid: str) -> None:
    await node.call("client.engine_close", name=name)
    await node.wait_event(ev="disconnect", name=name, timeout=TIMEOUT)
    await wait_until(lambda: sid not in nsp.sockets)


# -- the bytes on the wire -------------------------------------------------------------------


async def test_wire_pid_in_connect_and_one_offset_per_broadcast_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving() as server:
        clients = [await RawClient.open(server.port or 0) for _ in range(20)]
        try:
            for client in clients:
                await client.ws.send("40")
                reply = await client.recv()
                assert isinstance(reply, str) and reply.startswith("40{"), reply
                body = json.loads(reply[2:])
                assert set(body) == {"sid", "pid"} and body["pid"] != body["sid"]
                welcome = json.loads((await client.recv())[2:])  # type: ignore[index]
                assert welcome[0] == "welcome" and isinstance(welcome[-1], str)
                assert await client.call(0, "join", "fans")

            encodes = Counter(sio_codec.encode)
            monkeypatch.setattr(sio_codec, "encode", encodes)
            server.to("fans").emit("goal", {"score": 3})
            monkeypatch.undo()
            assert encodes.calls == 1  # the offset is per broadcast, not per recipient
            frames = {await client.recv() for client in clients}
            assert len(frames) == 1
            (frame,) = frames
            event = json.loads(frame[2:])  # type: ignore[index]
            assert event[:2] == ["goal", {"score": 3}] and isinstance(event[2], str) and len(event) == 3

            # an event that expects an ack, and a volatile one, carry no offset
            server.volatile.to("fans").emit("v", 1)
            assert {await client.recv() for client in clients} == {'42["v",1]'}
            for socket in server.main.sockets.values():
                socket.emit("ask", 1, callback=lambda *a: None)
            asks = {await client.recv() for client in clients}
            assert all(isinstance(f, str) and f.startswith("42") and f.endswith('["ask",1]') for f in asks), asks
        finally:
            for client in clients:
                await client.close()


async def test_wire_unchanged_when_recovery_is_off() -> None:
    async with serving(state_recovery_ms=None) as server:
        assert not server.main.recovering
        client = await RawClient.open(server.port or 0)
        try:
            await client.ws.send("40")
            reply = await client.recv()
            assert set(json.loads(reply[2:])) == {"sid"}  # type: ignore[index]
            assert json.loads((await client.recv())[2:]) == ["welcome", {"id": json.loads(reply[2:])["sid"], "nsp": "/"}]  # type: ignore[index]
            assert await client.call(0, "join", "fans")
            server.to("fans").emit("goal", 1)
            assert await client.recv() == '42["goal",1]'
        finally:
            await client.close()


# -- python-socketio ---------------------------------------------------------------------------


async def test_python_socketio_client_works_with_recovery_on() -> None:
    """python-socketio (5.x) has no connection state recovery: it ignores `pid` and sees the
    offset as one more argument; it still connects and receives, and reconnects as new."""
    async with serving() as server:
        client = socketio.AsyncClient(reconnection=False)
        got: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        client.on("m", lambda *args: got.put_nowait(args))
        try:
            await asyncio.wait_for(client.connect(url_of(server), transports=["websocket"]), TIMEOUT)
            sid = client.get_sid("/")
            server.emit("m", "hi")
            args = await asyncio.wait_for(got.get(), TIMEOUT)
            assert args[0] == "hi" and isinstance(args[-1], str) and len(args) == 2
            assert server.main.sockets[sid].pid is not None
        finally:
            await client.disconnect()


# -- the standalone gateway's default ----------------------------------------------------------


def test_standalone_gateway_turns_recovery_on_where_the_adapter_can_keep_sessions() -> None:
    base = {"auth_mode": "none", "port": 0}
    server = build_gateway(Settings(**base))
    assert server.settings.state_recovery_ms == DEFAULT_RECOVERY_MS and server.main.recovering
    assert not build_gateway(Settings(**base, state_recovery_ms=0)).main.recovering
    classic = build_gateway(Settings(**base, redis_url="redis://127.0.0.1:1"))
    assert classic.settings.state_recovery_ms == 0 and not classic.main.recovering
    with pytest.raises(ConfigError, match="REDIS_MODE=streams"):
        build_gateway(Settings(**base, redis_url="redis://127.0.0.1:1", state_recovery_ms=5000))
    # the library Server is off by default, and refuses an adapter that keeps no sessions
    assert not Server(Settings()).main.recovering
    with pytest.raises(ConfigError, match="REDIS_MODE=streams"):
        from gateway.sio.adapter import Adapter

        Server(Settings(state_recovery_ms=1000), adapter_factory=Adapter)


async def test_standalone_gateway_keeps_a_recovered_socket_its_grants_and_rooms(node: NodeDriver) -> None:
    """The product's connection handler takes the grants its auth middleware left; a recovered
    socket skipped that middleware, and must still be a member, not be disconnected."""
    server = build_gateway(Settings(auth_mode="none", host=LOOPBACK, port=0, log_level="WARNING"))
    await server.start(port=0)
    try:
        first = await node.call("client.connect", name="u", url=url_of(server), nsp="/", opts={**client_opts(), "auth": {"user": "ada"}})
        sid = first["id"]
        await node.wait_event(ev="connect", name="u", timeout=TIMEOUT)
        assert await node.call("client.emit", name="u", event="join:company", args=["7"], ack=True) == [{"ok": True, "room": "company:7"}]
        server.to("company:7").emit("news", 1)
        assert (await next_args(node, "u", "news"))[0] == 1
        await drop_connection(node, server, "u", sid)
        server.to("company:7").emit("news", 2)
        back = await node.wait_event(ev="connect", name="u", timeout=TIMEOUT)
        assert back["id"] == sid and (await node.call("client.state", name="u"))["recovered"] is True
        assert (await next_args(node, "u", "news"))[0] == 2
        assert await node.call("client.emit", name="u", event="join:company", args=["8"], ack=True) == [{"ok": True, "room": "company:8"}]
        await asyncio.sleep(SILENCE_S)
        assert sid in server.main.sockets and {"company:7", "company:8"} <= server.main.sockets[sid].rooms
    finally:
        await asyncio.wait_for(server.close(), TIMEOUT)
