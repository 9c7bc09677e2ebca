"""This node's `server_stats` for @socket.io/admin-ui, built from counters the gateway keeps anyway.

The package's server side pushes one object per event into a per-second buffer (a connection, a
packet in, a packet out with its byte length). Here nothing happens per packet: once a second a
timer reads the engine's and the adapters' plain counters, and the difference since the last
reading becomes that second's buckets (`{timestamp, type, count}`, the package's
`aggregatedEvents`: rawConnection, rawDisconnection, packetsIn, packetsOut, bytesIn, bytesOut).
Every 2 s the buckets collected so far go out in `server_stats` and are cleared, as the
package's `getValuesAndClear()`.

bytesIn/bytesOut are the engine's byte counters (EngineStats.bytes_in/bytes_out: WebSocket
bytes as read and written, frame headers included, and polling bodies), bumped once per read
and per batched write, not per packet: close to the package's sum of packet lengths, not equal.
"""

from __future__ import annotations

import os
import socket as _socket
import time
from typing import Any, Callable

from ..sio.server import Server

# The package keeps at most this many seconds of buckets between two emissions; more can only
# pile up while emissions fail, and a bound keeps that from growing.
MAX_BUCKETS = 60


def server_id() -> str:
    """`hostname#pid`: what the package uses for a cluster worker, since several gateway nodes
    usually share a host and the UI tells servers apart by this id."""
    return f"{_socket.gethostname()}#{os.getpid()}"


class EventBuckets:
    """Per-second counts from cumulative counters, sampled by `tick()` once a second."""

    def __init__(self, counters: Callable[[], dict[str, int]], clock: Callable[[], float] = time.time) -> None:
        self.counters = counters
        self.clock = clock
        self._last = counters()
        self._buckets: list[dict[str, Any]] = []

    def tick(self) -> None:
        """Record what the counters did since the previous tick, under the second that ended."""
        now = self.counters()
        second = (int(self.clock()) - 1) * 1000
        buckets = self._buckets
        for kind, value in now.items():
            delta = value - self._last.get(kind, 0)
            if delta > 0:
                buckets.append({"timestamp": second, "type": kind, "count": delta})
        self._last = now
        if len(buckets) > MAX_BUCKETS * len(now):
            del buckets[: len(buckets) - MAX_BUCKETS * len(now)]

    def take(self) -> list[dict[str, Any]]:
        """The buckets since the last take (the package's getValuesAndClear)."""
        buckets, self._buckets = self._buckets, []
        return buckets


class NodeStats:
    """What one gateway node reports in `server_stats`."""

    def __init__(self, server: Server, closed_sessions: Callable[[], int], sid: str | None = None) -> None:
        self.server = server
        self.base = {"serverId": sid or server_id(), "hostname": _socket.gethostname(), "pid": os.getpid()}
        self.closed_sessions = closed_sessions
        self.buckets = EventBuckets(self.counters)

    def counters(self) -> dict[str, int]:
        """Cumulative counts: sessions opened and closed, Socket.IO packets in and out (one
        packet to each recipient of a broadcast counts once per recipient, as the package's
        per-connection `packetCreate`), Engine.IO bytes in and out."""
        engine = self.server.engine.stats
        counts = {
            "rawConnection": engine.sessions_opened,
            "rawDisconnection": self.closed_sessions(),
            "packetsIn": engine.messages_in,
            "packetsOut": engine.messages_out + self.server.adapter_stats.deliveries,
            "bytesIn": engine.bytes_in,
            "bytesOut": engine.bytes_out,
        }
        return counts

    def snapshot(self) -> dict[str, Any]:
        server = self.server
        sessions = server.engine.sessions
        polling = 0
        for session in sessions.values():
            if session.transport_name == "polling":
                polling += 1
        return {
            **self.base,
            "uptime": round(time.time() - server.started_at, 3),
            "clientsCount": len(sessions),
            "pollingClientsCount": polling,
            "aggregatedEvents": self.buckets.take(),
            "namespaces": [{"name": nsp.name, "socketsCount": len(nsp.sockets)} for nsp in server.namespaces.values()],
        }
