"""Every cross-node loss is counted (classic mode): two nodes, a client on node A sending 50
numbered broadcasts a second, a client on node B receiving them, while Redis drops every
subscriber connection ten times (`CLIENT KILL TYPE pubsub`) or is frozen for 20 s (SIGSTOP).

What B's client never got must equal what the nodes counted as lost (publishes that reached
fewer nodes than were subscribed, outbox drops, subscribers given up while Redis may still have
delivered to them); and with an outbox window longer than the freeze, that is nothing at all:
a node holds its outbox while its own subscriber is down and replays it once the other node's
subscriber is back. Real redis-server and gateway processes on loopback (helpers and fixtures of
test_resilience.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.integration.test_resilience import (  # noqa: F401 (fixtures)
    CLUSTER_COUNTED_S,
    Nodes,
    Stream,
    _freeze,
    _gaps,
    clients,
    metric,
    nodes,
    redis_client,
    redis_proc,
    wait_health,
)

LOSS_COUNTERS = (
    "sio_gateway_cluster_publish_short_total",
    "sio_gateway_cluster_subscriber_gaps_total",
    "sio_gateway_redis_outbox_dropped_total",
)
RATE_EVERY_S = 0.02  # 50 messages a second


def counted(*members: GatewayProcess) -> int:
    return int(sum(metric(node, name) for node in members for name in LOSS_COUNTERS))


async def _stream_through(redis_proc: RedisServerProcess, nodes: Nodes, clients: Any, outage: Any, **env: str) -> tuple[int, list[int], int]:
    """Two nodes, A streaming to B through `outage`; (sent, what B got, counted losses)."""
    a = nodes.start(redis_proc.url, **env)
    b = nodes.start(redis_proc.url, **env)
    await wait_health(a, "healthy")
    await wait_health(b, "healthy")
    ca = await clients(a, "A")
    cb = await clients(b, "B")
    assert counted(a, b) == 0
    stream = Stream(ca, every=RATE_EVERY_S).start()
    await asyncio.sleep(CLUSTER_COUNTED_S)  # a probe round counts the other node
    await outage()
    await wait_health(a, "healthy", timeout=15)
    await wait_health(b, "healthy", timeout=15)
    await asyncio.sleep(1.0)
    sent = await stream.stop()
    got = await cb.wait_for("A", sent, timeout=8)
    await asyncio.sleep(0.5)  # anything duplicated would still be arriving
    return sent, list(cb.received.get("A", [])), counted(a, b)


def _lost(sent: int, got: list[int]) -> int:
    assert len(got) == len(set(got)), f"duplicates: {_gaps(got, sent)}"
    assert got == sorted(got), f"out of order: {_gaps(got, sent)}"
    return sent - len(got)


async def test_pubsub_kills_lose_nothing_uncounted(redis_proc: RedisServerProcess, nodes: Nodes, clients: Any) -> None:
    """`CLIENT KILL TYPE pubsub` ten times during the stream: lost == counted (and the outbox
    replay after each resubscription keeps it near zero)."""

    async def kill_ten_times() -> None:
        admin = await redis_client(redis_proc)
        try:
            for _ in range(10):
                killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                assert int(killed) >= 1
                await asyncio.sleep(0.8)
        finally:
            await admin.aclose()

    began = time.monotonic()
    sent, got, losses = await _stream_through(redis_proc, nodes, clients, kill_ten_times)
    assert sent > 300, sent
    lost = _lost(sent, got)
    assert lost == losses, f"lost {lost}, counted {losses}; {_gaps(got, sent)}"
    assert lost <= 10, f"more than a batch per kill lost: {_gaps(got, sent)}"
    assert time.monotonic() - began < 60


async def test_redis_frozen_20s_loses_nothing_uncounted(redis_proc: RedisServerProcess, nodes: Nodes, clients: Any) -> None:
    """Redis frozen (SIGSTOP) 20 s and resumed: the subscribers are kept (within the outbox
    window), the publisher holds its outbox until both subscribers answer probes again, and the
    replay reaches B: lost == counted == 0."""
    sent, got, losses = await _stream_through(
        redis_proc, nodes, clients, lambda: _freeze(redis_proc, 20.0), OUTBOX_MAX_AGE_MS="30000"
    )
    assert sent > 900, sent
    lost = _lost(sent, got)
    assert lost == losses, f"lost {lost}, counted {losses}; {_gaps(got, sent)}"
    assert lost == 0, _gaps(got, sent)
