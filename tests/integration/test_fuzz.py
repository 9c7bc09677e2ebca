"""Hostile input against a real gateway process, over both transports, and log lines that no
client can forge.

The fuzz sends the seeded inputs of tests/unit/test_socketio.py (random text and bytes, mutated
valid packets, deep nesting, huge numbers, bad attachments, bad namespaces, bad JSON) as raw
WebSocket frames and as raw polling POSTs, one Engine.IO session per input. The oracle is our own
Decoder run locally: an input it rejects must cost the sender its session the protocol's way (a
close frame over WebSocket; over polling the session is gone), be counted in
`bad_packets_total{layer="socketio"}`, and leave one short log line. Afterwards the node is alive,
a healthy client gets a round trip, the session table is back to where it was, and the log has no
traceback and no line over a few KB.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from websockets.exceptions import ConnectionClosed

from protocol.socketio import Decoder
from tests.gateway_process import GatewayProcess
from tests.integration.test_encode_once import RawClient, get, http, polling_handshake, running, wait_until
from tests.unit.test_socketio import FUZZ_SEED, hostile_packets

APP = "tests.sio_app"
MAX_PAYLOAD = 1_000_000  # the app's default MAX_PAYLOAD_BYTES, which its decoders are built with
N_PER_TRANSPORT = 2000
CONCURRENCY = 12
SENTINEL_ID = 987654
# An EVENT with an ack to the app's `echo` handler, sent after each input: its ack says the
# session survived, a close says it did not, silence says the input left `/` (a DISCONNECT).
SENTINEL = f'42{SENTINEL_ID}["echo","sentinel"]'
ACK_PREFIX = f"43{SENTINEL_ID}"
OUTCOME_TIMEOUT = 3.0
STEP_TIMEOUT = 5.0
MAX_LOG_LINE = 4096


def rejected_by_decoder(messages: list[str | bytes]) -> bool:
    """What the gateway's Client must conclude: fed in order to a fresh Decoder, does any raise?"""
    decoder = Decoder(max_buffer=MAX_PAYLOAD)
    try:
        for message in messages:
            decoder.feed(message)
    except Exception:  # the oracle counts any exception; the gateway must close on every one
        return True
    return False


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def bad_packets(node: GatewayProcess, layer: str) -> float:
    status, body = node.get("/metrics")
    assert status == 200
    return metric(body.decode(), "sio_gateway_bad_packets_total", f'{{layer="{layer}"}}')


def assert_log_is_clean(path: Path) -> list[str]:
    lines = path.read_text(errors="replace").splitlines()
    assert not [line for line in lines if "Traceback" in line], [line[:300] for line in lines if "Traceback" in line][:3]
    long_lines = [len(line) for line in lines if len(line) > MAX_LOG_LINE]
    assert not long_lines, f"log lines over {MAX_LOG_LINE} chars: {long_lines[:5]}"
    foreign = [line for line in lines if not line.startswith("ts=")]
    assert not foreign, foreign[:5]
    return lines


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(APP, log_dir=tmp_path_factory.mktemp("fuzz"), env={"LOG_LEVEL": "INFO"})
    process.start()
    try:
        yield process
    finally:
        process.stop()


# -- the two transports, one session per input -------------------------------------------------


async def websocket_case(port: int, messages: list[str | bytes]) -> str:
    """`closed` (a close frame came), `dropped` (the TCP connection ended without one), `alive`
    (the sentinel's ack came) or `silent`."""
    client = await RawClient.open(port)
    try:
        await client.connect_nsp("/")
        try:
            for message in messages:
                await client.ws.send("4" + message if isinstance(message, str) else message)
            await client.ws.send(SENTINEL)
            deadline = asyncio.get_running_loop().time() + OUTCOME_TIMEOUT
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return "silent"
                try:
                    reply = await client.recv(timeout=remaining)
                except TimeoutError:
                    return "silent"
                if isinstance(reply, str) and reply.startswith(ACK_PREFIX):
                    return "alive"
        except ConnectionClosed:
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                await asyncio.wait_for(client.ws.wait_closed(), STEP_TIMEOUT)
            return "closed" if client.ws.protocol.close_rcvd is not None else "dropped"
    finally:
        await client.close()


def polling_url(sid: str) -> str:
    return f"/socket.io/?EIO=4&transport=polling&sid={sid}"


def post(sid: str, body: bytes) -> bytes:
    return (
        f"POST {polling_url(sid)} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain;charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def polling_body(messages: list[str | bytes]) -> bytes:
    records = ["4" + m if isinstance(m, str) else "b" + base64.b64encode(m).decode() for m in messages]
    return "\x1e".join([*records, SENTINEL]).encode()


async def polling_case(port: int, messages: list[str | bytes]) -> str:
    """`closed` (the session is gone or answered `1`), `alive` or `silent`."""
    sid = await polling_handshake(port)
    status, _, _ = await http(port, post(sid, b"40"))
    assert status == 200
    status, _, body = await http(port, get(polling_url(sid)))
    assert status == 200 and body.startswith(b"40{"), body
    status, _, _ = await http(port, post(sid, polling_body(messages)))
    outcome = "silent"
    if status == 400:
        outcome = "closed"  # refused by the Engine.IO layer, which closed the session
    else:
        deadline = asyncio.get_running_loop().time() + OUTCOME_TIMEOUT
        while outcome == "silent":
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                status, _, body = await http(port, get(polling_url(sid)), timeout=remaining)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                break
            records = body.decode(errors="replace").split("\x1e")
            if status == 400 or "1" in records:
                outcome = "closed"
            elif any(r.startswith(ACK_PREFIX) for r in records):
                outcome = "alive"
    if outcome != "closed":
        await http(port, post(sid, b"1"))  # leave nothing open behind us
    return outcome


async def run_cases(port: int, inputs: list[list[str | bytes]], case: Any) -> list[str]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(messages: list[str | bytes]) -> str:
        async with gate:
            return await asyncio.wait_for(case(port, messages), 4 * STEP_TIMEOUT)

    return await asyncio.gather(*(one(messages) for messages in inputs))


async def test_fuzz_both_transports_node_survives(node: GatewayProcess) -> None:
    rng = random.Random(FUZZ_SEED + 1)
    ws_inputs = hostile_packets(rng, N_PER_TRANSPORT)
    poll_inputs = hostile_packets(rng, N_PER_TRANSPORT)
    _, baseline = node.get("/stats")
    baseline_connections = json.loads(baseline)["connections"]
    bad_before = bad_packets(node, "socketio")

    ws_outcomes = await run_cases(node.port, ws_inputs, websocket_case)
    poll_outcomes = await run_cases(node.port, poll_inputs, polling_case)

    # Every input our decoder rejects closes its session the protocol's way.
    ws_expected = [rejected_by_decoder(m) for m in ws_inputs]
    wrong = [(o, m) for o, m, bad in zip(ws_outcomes, ws_inputs, ws_expected) if bad and o != "closed"]
    assert not wrong, f"{len(wrong)} rejected inputs did not get a close frame over WebSocket, e.g. {wrong[0]!r:.300}"
    assert "dropped" not in ws_outcomes, "the server never drops a WebSocket without a close frame"
    # Over polling a `\x1e` inside a message splits it into other Engine.IO records; those inputs
    # are still sent, but only the others have a Socket.IO verdict to check.
    poll_expected = [rejected_by_decoder(m) and not any(isinstance(x, str) and "\x1e" in x for x in m) for m in poll_inputs]
    wrong = [(o, m) for o, m, bad in zip(poll_outcomes, poll_inputs, poll_expected) if bad and o != "closed"]
    assert not wrong, f"{len(wrong)} rejected inputs left their polling session open, e.g. {wrong[0]!r:.300}"
    # The mix really exercised both the closing and the surviving paths on both transports.
    for outcomes in (ws_outcomes, poll_outcomes):
        tally = Counter(outcomes)
        assert tally["closed"] > N_PER_TRANSPORT // 3 and tally["alive"] > N_PER_TRANSPORT // 20, tally

    # Each rejected input was counted (other inputs may count too: a client CONNECT_ERROR, say).
    counted = bad_packets(node, "socketio") - bad_before
    assert counted >= sum(ws_expected) + sum(poll_expected), (counted, sum(ws_expected), sum(poll_expected))

    # The node is alive and serves a well-behaved client as before.
    assert node.pid is not None, node.log_tail()
    assert node.get("/health")[0] == 200
    client = socketio.AsyncClient()
    try:
        await client.connect(node.url, wait_timeout=STEP_TIMEOUT)
        assert await client.call("echo", "after the fuzz", timeout=STEP_TIMEOUT) == "after the fuzz"
    finally:
        await client.disconnect()

    def back_to_baseline() -> bool:
        _, body = node.get("/stats")
        stats = json.loads(body)
        return stats["connections"] == baseline_connections and stats["namespaces"]["/"]["sockets"] == 0

    await wait_until(back_to_baseline, timeout=STEP_TIMEOUT)
    lines = assert_log_is_clean(node.log_path)
    assert sum("sio_bad_packet" in line for line in lines) >= sum(ws_expected) + sum(poll_expected)


# -- the Client's safety net ---------------------------------------------------------------------


class BrokenDecoder(Decoder):
    """A decoder with a bug: raises something other than ProtocolError, as int() and deep
    recursion once did."""

    def feed(self, message: str | bytes) -> Any:
        if message == '2["trip"]':
            raise RecursionError("maximum recursion depth exceeded " + "x" * 5000)
        return super().feed(message)


async def test_decoder_failure_other_than_protocol_error_closes_the_session(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    async with running() as server:
        port = server.port
        assert port
        # over WebSocket: a close frame, counted, one short line
        client = await RawClient.open(port)
        await client.connect_nsp("/")
        server.engine.sessions[client.sid].receiver.decoder = BrokenDecoder()  # type: ignore[union-attr]
        assert await client.call(1, "echo", "fine") == ["fine"]
        await client.ws.send('42["trip"]')
        assert await client.closed_code() == 1000
        assert client.ws.protocol.close_rcvd is not None
        assert server.engine.stats.bad_packets.get("socketio") == 1
        # over polling: the session is closed
        sid = await polling_handshake(port)
        status, _, _ = await http(port, post(sid, b"40"))
        assert status == 200
        server.engine.sessions[sid].receiver.decoder = BrokenDecoder()  # type: ignore[union-attr]
        status, _, _ = await http(port, post(sid, b'42["trip"]'))
        assert status == 200
        assert sid not in server.engine.sessions
        status, _, _ = await http(port, get(polling_url(sid)))
        assert status == 400
        assert server.engine.stats.bad_packets.get("socketio") == 2
        await wait_until(lambda: not server.engine.sessions)
    failed = [r for r in caplog.records if r.getMessage().startswith("sio_decoder_failed")]
    assert len(failed) == 2
    assert all("exc_type=RecursionError" in r.getMessage() and len(r.getMessage()) < 400 for r in failed)
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a bad packet"


async def test_decoder_protocol_errors_log_short_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    async with running() as server:
        assert server.port
        client = await RawClient.open(server.port)
        await client.connect_nsp("/")
        await client.ws.send('451-["e",{"_placeholder":true,"num":"' + "n" * 50_000 + '"}]')
        await client.ws.send(b"x")
        assert await client.closed_code() == 1000
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sio_bad_packet")]
    assert len(lines) == 1 and len(lines[0]) < 400, lines


# -- log lines cannot be forged --------------------------------------------------------------------

FORGED_LEVEL = re.compile(r"^(level|ts)=(?!\d{4}-\d\d-\d\dT\S+ level=)")


async def test_client_controlled_text_cannot_forge_log_lines(tmp_path: Path) -> None:
    """A `%0A` in an /api path and in a refused WebSocket upgrade path, and a `\\n` in a room name
    and a user name, each stay inside their own event's line."""
    env = {"AUTH_MODE": "none", "API_KEYS": "fuzz-key", "MAX_ROOMS_PER_SOCKET": "1", "LOG_LEVEL": "INFO"}
    standalone = GatewayProcess("gateway", env=env, log_dir=tmp_path).start()
    try:
        port = standalone.port
        status, _, _ = await http(port, get("/api/rooms/x%0Ats=2020-01-01T00:00:00.000Z%20level=error%20logger=gateway.api%20forged=api"))
        assert status == 401
        upgrade = (
            "GET /socket.io/%0Alevel=error%20forged=upgrade?EIO=4&transport=websocket HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"  # no Sec-WebSocket-Key
        )
        status, _, _ = await http(port, upgrade.encode())
        assert status == 400
        client = socketio.AsyncClient()
        try:
            await client.connect(standalone.url, auth={"user": "u\nlevel=error forged=user"}, transports=["websocket"], wait_timeout=STEP_TIMEOUT)
            room = "r\r\nts=2020-01-01T00:00:00.000Z level=error logger=gateway.app forged=room"
            assert await client.call("subscribe", room, timeout=STEP_TIMEOUT) == {"ok": False, "error": "too many rooms"}
        finally:
            await client.disconnect()
        await asyncio.sleep(0.2)  # the log lines of the refusals are written before the answers
    finally:
        standalone.stop()
    lines = assert_log_is_clean(standalone.log_path)
    assert not [line for line in lines if FORGED_LEVEL.match(line)]
    for event, forged in (("api_unauthorized", "api"), ("ws_handshake_refused", "upgrade"), ("room_limit", "room")):
        matching = [line for line in lines if f" {event} " in line and f"forged={forged}" in line]
        assert matching, f"no {event} line carrying the forged text: {lines}"
        for line in matching:
            # the forged text is inside one quoted value of that event's line
            assert re.search(rf'="[^"]*\\n[^"]*forged={forged}[^"]*"', line), line
    assert any('user="u\\nlevel=error forged=user"' in line for line in lines), lines
    # ordinary values stay readable: no quotes around them
    assert any(re.search(r" room_limit nsp=/ user=\"u.* limit=1$", line) for line in lines), lines


def test_the_fuzz_inputs_are_reproducible() -> None:
    assert hostile_packets(random.Random(FUZZ_SEED), 50) == hostile_packets(random.Random(FUZZ_SEED), 50)


async def test_engineio_layer_rejections_close_the_session(node: GatewayProcess) -> None:
    """Bad UTF-8 and bad base64 in a polling body are Engine.IO errors: 400, session closed,
    counted in the engineio layer."""
    before = bad_packets(node, "engineio")
    bodies = [b"4\xff\xfe", b"b###", "b\u00e9\u00e9==".encode(), b"4a\x1e\x1e4b", b"9" * 5000]
    for body in bodies:
        sid = await polling_handshake(node.port)
        status, _, _ = await http(node.port, post(sid, body))
        assert status == 400, body
        status, _, _ = await http(node.port, get(polling_url(sid)))
        assert status == 400, f"session still open after {body!r}"
    assert bad_packets(node, "engineio") - before == len(bodies)
    assert_log_is_clean(node.log_path)
