"""A hung node cannot trap its clients (finding 11.2), against real processes on loopback.

- A handler blocks the event loop (`time.sleep` on the loop, tests/loop_stall_app.py): with
  LOOP_STALL_MS=1000 the node logs `loop_stall_exit` at error level and exits with code 70 within
  about 1.2 s; a shorter block only logs and counts a late heartbeat.
- A node frozen as a whole (SIGSTOP: no in-process watchdog runs) behind nginx rendered from the
  project's nginx.conf: its Node socket.io-client clients (default options: polling, then the
  upgrade; all from 127.0.0.1, so ip_hash put them all on it) notice by the Engine.IO heartbeat,
  reconnect through nginx, and are on the other node well within 60 s (the handshake sent to the
  frozen node times out after nginx's short handshake timeout, is retried on the other node, and
  the frozen node is marked failed, so the session's later requests follow). After SIGCONT the
  frozen node's watchdog does not hold the pause against its loop.

Every process is started here (or through tests/integration/test_topologies.py's `Started`) and
stopped at teardown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.ops.loop_watchdog import EXIT_CODE
from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.integration.test_topologies import (  # noqa: F401  (fixtures: started, node_clients)
    EVENT_TIMEOUT,
    Client,
    Started,
    metric,
    node_clients,
    started,
    wait_health,
)
from tests.node_driver import NodeDriver
from tests.ports import LOOPBACK

log = logging.getLogger(__name__)

STALL_APP = "tests.loop_stall_app"
LOOP_STALL_MS = 1000
# Short heartbeat so that a client notices the frozen node in 2-3 s; nginx's timeouts (60 s for
# long polls and WebSockets, 3 s for handshakes) are those of the shipped file, which must stay
# above PING_INTERVAL_MS + PING_TIMEOUT_MS whatever these are.
FAST_HEARTBEAT = {"PING_INTERVAL_MS": "1000", "PING_TIMEOUT_MS": "1000"}
RECONNECT_BOUND_S = 60.0
CLIENTS = 3


def counter(node: GatewayProcess, name: str) -> float:
    status, body = node.get("/metrics", 3.0)
    assert status == 200, body
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


async def test_a_blocked_loop_logs_and_exits_with_code_70(tmp_path: Path) -> None:
    node = GatewayProcess(STALL_APP, env={"LOOP_STALL_MS": str(LOOP_STALL_MS), "LOG_LEVEL": "INFO"}, log_dir=tmp_path).start()
    client = Client(node.url)
    try:
        await client.connect(["websocket"])
        # A healthy idle node is left alone.
        await asyncio.sleep(LOOP_STALL_MS / 1000 * 1.5)
        assert node.pid is not None, node.log_tail()
        # Blocked for less than the limit: survives, logs and counts the late heartbeat.
        assert await client.call("block-loop", 0.7) == {"slept": 0.7}
        assert node.pid is not None, node.log_tail()
        assert counter(node, "sio_gateway_loop_lag_warnings_total") >= 1
        assert "loop_lag" in node.log_path.read_text()

        # Blocked for good: the watchdog ends the process with the documented code.
        await client.sio.emit("block-loop", 30)
        blocked_at = time.monotonic()
        code = await asyncio.to_thread(node.wait, 5.0)
        took = time.monotonic() - blocked_at
        assert code == EXIT_CODE == 70, f"exit code {code}\n{node.log_tail()}"
        assert LOOP_STALL_MS / 1000 * 0.9 < took < 2.5, took
        lines = [line for line in node.log_path.read_text().splitlines() if "loop_stall_exit" in line]
        assert len(lines) == 1, node.log_tail()
        assert "level=error" in lines[0] and f"limit_ms={LOOP_STALL_MS}" in lines[0] and "exit_code=70" in lines[0], lines[0]
        log.info("loop_stall_exit_observed seconds=%.2f line=%s", took, lines[0])
    finally:
        await client.close()
        node.stop(timeout=5)


async def test_clients_of_a_frozen_node_reconnect_to_another_node_within_60s(
    started: Started, redis_server: RedisServerProcess, node_clients: NodeDriver, record_property: Any
) -> None:
    # LOOP_STALL_MS shorter than the freeze: after SIGCONT the watchdog must not kill the node.
    nodes = [started.gateway(redis_server.url, TRUSTED_PROXIES=LOOPBACK, LOOP_STALL_MS="2000", **FAST_HEARTBEAT) for _ in range(2)]
    for node in nodes:
        await wait_health(node, "healthy")
    _, url = started.nginx([node.port for node in nodes])

    names = [f"web-{i}" for i in range(CLIENTS)]
    for name in names:
        await node_clients.call("client.connect", name=name, url=url, nsp="/", opts={})
        await node_clients.wait_event(ev="upgrade", name=name, timeout=EVENT_TIMEOUT)
    landed = {(await node_clients.call("client.emit", name=name, event="node-info", ack=True))[0]["port"] for name in names}
    assert len(landed) == 1, landed  # one client address, one node
    frozen = next(node for node in nodes if node.port in landed)
    other = next(node for node in nodes if node is not frozen)
    node_clients.drain_events()

    frozen.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        reconnected: dict[str, float] = {}
        for name in names:
            remaining = RECONNECT_BOUND_S - (time.monotonic() - frozen_at)
            await node_clients.wait_event(ev="connect", name=name, timeout=max(0.1, remaining))
            reconnected[name] = time.monotonic() - frozen_at
        slowest = max(reconnected.values())
        record_property("reconnect_seconds", round(slowest, 2))
        log.info("frozen_node_clients_reconnected seconds=%.2f each=%s", slowest, {k: round(v, 2) for k, v in reconnected.items()})
        assert slowest < RECONNECT_BOUND_S, reconnected
        # They are served by the other node, every later request of the new session included
        # (its long polls and its upgrade carry the sid; ip_hash alone would send them back).
        for name in names:
            (info,) = await node_clients.call("client.emit", name=name, event="node-info", ack=True)
            assert info["port"] == other.port, (name, info)
            await node_clients.wait_event(ev="upgrade", name=name, timeout=EVENT_TIMEOUT)
    finally:
        frozen.signal(signal.SIGCONT)

    # Resumed after a freeze longer than its LOOP_STALL_MS: the pause is not a loop stall.
    await wait_health(frozen, "healthy")
    assert frozen.pid is not None, frozen.log_tail()
    assert metric(frozen, "sio_gateway_loop_pauses_total") >= 1
    assert "loop_stall_exit" not in frozen.log_path.read_text()
