"""Connection state recovery (socket.io 4.8's `connectionStateRecovery`): what a disconnected
socket leaves behind for a client that comes back, and the single-node store that keeps it.

A client that lost its connection (a network blip, a transport error, a ping timeout) reconnects
with the `pid` it got in its CONNECT reply and the `offset` of the last event it received. If
the session is still kept, the socket comes back with the same id, rooms and `data`, and the
packets it missed, in order. The types below are the contract between the Socket.IO layer and
any adapter that can keep sessions (this in-memory store, a Redis Streams transport):

- `SessionState`: what is kept of a socket (id, pid, rooms, data);
- `Restoration`: the answer to a restore, with a `RecoveryResult` the namespace counts and the
  missed packets already encoded for the namespace, offsets included;
- `SessionStore`: the in-memory store, bounded per namespace by count, bytes and age, with no
  I/O and an injectable clock, so it is tested alone.

Offsets are opaque strings to the client (socket.io-client sends back the last string argument
it saw). Here they are `<epoch>-<seq>`: `epoch` names this store (a restarted node never takes an
offset of an earlier process for one of its own) and `seq` counts the packets it issued, so a
restore can tell "nothing the client missed was dropped" (its offset is at or after the newest
packet dropped) from "something may be lost" (stale: the client gets a fresh connection rather
than a replay that looks complete but is not).
"""

from __future__ import annotations

import enum
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from protocol.cluster.messages import Room

from ..engine.outbound import Outbound

__all__ = ["RECOVERABLE_REASONS", "RecoveryResult", "RecoveryStats", "Restoration", "SessionState", "SessionStore"]

# Disconnect reasons after which a session is kept, as socket.io 4.8's
# RECOVERABLE_DISCONNECT_REASONS: the connection went, not the client or the server's decision.
RECOVERABLE_REASONS = frozenset(
    {
        "transport error",
        "transport close",
        "forced close",
        "ping timeout",
        "server shutting down",
        "forced server close",
    }
)


class RecoveryResult(str, enum.Enum):
    """How a reconnecting client's `{pid, offset}` was answered (the `result` label of
    sio_gateway_recoveries_total)."""

    RECOVERED = "recovered"  # same id, rooms, data, and every missed packet
    STALE = "stale"  # the session is kept but packets it may have missed are not (or a bad offset)
    UNKNOWN = "unknown"  # no such session: never kept, already restored, evicted, or pruned
    EXPIRED = "expired"  # the session was found but disconnected longer than STATE_RECOVERY_MS ago


@dataclass(slots=True)
class SessionState:
    """What a disconnected socket leaves behind (socket.io's `Session`: sid, pid, rooms, data)."""

    sid: str
    pid: str
    rooms: list[Room]
    data: Any


@dataclass(slots=True)
class Restoration:
    """The answer to a restore. `missed` holds only when `result` is RECOVERED: the packets for
    this namespace the client did not get, in the order they were sent, each already encoded
    (its offset as the last argument), ready to be written to the client's session."""

    result: RecoveryResult
    state: SessionState | None = None
    missed: list[Outbound] = field(default_factory=list)


@dataclass(slots=True)
class RecoveryStats:
    """Counters of recovery (one object per server, shared by its namespaces), read by /metrics."""

    results: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in RecoveryResult})
    replayed_packets: int = 0
    packets_evicted: dict[str, int] = field(default_factory=lambda: {"count": 0, "bytes": 0})
    sessions_evicted: int = 0

    def count(self, restoration: Restoration) -> None:
        self.results[restoration.result.value] += 1
        self.replayed_packets += len(restoration.missed)


class SessionStore:
    """One namespace's disconnected sessions and the packets recently sent in it.

    Bounded three ways: packets by count (`max_packets`) and encoded bytes (`max_bytes`), both
    by age (`window_s`: nothing older than the longest disconnection allowed can be needed), and
    sessions by count (`max_sessions`) and age. The oldest goes first; evictions by a bound are
    counted (age is the normal way out and is not). Pruning is done when something is added, so
    the broadcast path pays one comparison per packet and no timer runs.

    The caller issues an offset, puts it in the packet, encodes once, then keeps the encoding:
    `offset = store.issue(); ...; store.keep(rooms, except_, text, binaries)`.
    """

    __slots__ = (
        "window_s",
        "max_packets",
        "max_bytes",
        "max_sessions",
        "stats",
        "clock",
        "epoch",
        "_seq",
        "_issued",
        "_packets",
        "_bytes",
        "_dropped_upto",
        "_sessions",
    )

    def __init__(
        self,
        window_s: float,
        max_packets: int,
        max_bytes: int,
        max_sessions: int,
        stats: RecoveryStats | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        epoch: str | None = None,
    ) -> None:
        self.window_s = window_s
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.max_sessions = max_sessions
        self.stats = stats if stats is not None else RecoveryStats()
        self.clock = clock
        self.epoch = epoch if epoch is not None else str(time.time_ns() // 1_000_000)
        self._seq = itertools.count(1)
        self._issued = 0
        # (seq, kept_at, rooms, except_, text, binaries, size), oldest first
        self._packets: deque[tuple[int, float, frozenset, frozenset, bytes, Any, int]] = deque()
        self._bytes = 0
        self._dropped_upto = 0  # seq of the newest packet dropped so far (0: none)
        self._sessions: OrderedDict[str, tuple[SessionState, float]] = OrderedDict()

    # -- packets -------------------------------------------------------------------------------

    def issue(self) -> str:
        """The offset of the next packet to keep."""
        seq = self._issued = next(self._seq)
        return f"{self.epoch}-{seq}"

    def keep(self, rooms: frozenset, except_: frozenset, text: bytes, binaries: Any = ()) -> None:
        """Keep the packet whose offset was issued last, encoded (`text` is the Engine.IO
        message, `binaries` its attachments)."""
        now = self.clock()
        size = len(text) + (sum([len(b) for b in binaries]) if binaries else 0)
        packets = self._packets
        packets.append((self._issued, now, rooms, except_, text, binaries, size))
        self._bytes += size
        threshold = now - self.window_s
        while packets and packets[0][1] < threshold:
            self._drop()
        if len(packets) > self.max_packets:
            self._drop()
            self.stats.packets_evicted["count"] += 1
        while self._bytes > self.max_bytes and len(packets) > 1:
            self._drop()
            self.stats.packets_evicted["bytes"] += 1

    def _drop(self) -> None:
        entry = self._packets.popleft()
        self._bytes -= entry[6]
        self._dropped_upto = entry[0]

    def __len__(self) -> int:
        return len(self._packets)

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    def _seq_of(self, offset: str) -> int | None:
        epoch, sep, seq = offset.rpartition("-")
        if not sep or epoch != self.epoch or not seq.isdigit() or len(seq) > 20:
            return None
        return int(seq)

    # -- sessions ------------------------------------------------------------------------------

    def persist(self, state: SessionState) -> None:
        """Keep a disconnected socket's session for `window_s`."""
        now = self.clock()
        sessions = self._sessions
        threshold = now - self.window_s
        while sessions:
            first = next(iter(sessions.values()))
            if first[1] >= threshold:
                break
            sessions.popitem(last=False)
        sessions.pop(state.pid, None)
        sessions[state.pid] = (state, now)
        if len(sessions) > self.max_sessions:
            sessions.popitem(last=False)
            self.stats.sessions_evicted += 1

    def restore(self, pid: str, offset: str) -> Restoration:
        """Take the session of `pid` (a session is restored at most once) with the packets sent
        after `offset` to the rooms it was in, or say why not."""
        entry = self._sessions.pop(pid, None)
        if entry is None:
            return Restoration(RecoveryResult.UNKNOWN)
        state, disconnected_at = entry
        if disconnected_at + self.window_s < self.clock():
            return Restoration(RecoveryResult.EXPIRED)
        seq = self._seq_of(offset)
        if seq is None or seq < self._dropped_upto or seq > self._issued:
            return Restoration(RecoveryResult.STALE)
        rooms = set(state.rooms)
        missed: list[Outbound] = []
        for kept_seq, _, to, except_, text, binaries, _ in self._packets:
            if kept_seq <= seq:
                continue
            if to and to.isdisjoint(rooms):
                continue
            if except_ and not except_.isdisjoint(rooms):
                continue
            missed.append(Outbound(text, binaries))
        return Restoration(RecoveryResult.RECOVERED, state, missed)

    @property
    def sessions(self) -> int:
        return len(self._sessions)
