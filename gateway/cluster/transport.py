"""What the cluster adapter needs from a transport, and the link supervision the Redis transports
share.

A transport carries the cluster adapter's typed messages (protocol/cluster/messages.py) between
nodes: it publishes a message, publishes an answer to one requester, counts the servers of a
namespace and, where its channels are per room, watches and unwatches rooms. It owns its wire
codec and its connections; it knows nothing of the request/response/ack rules, which live once in
`ClusterAdapter`. Incoming messages are decoded by the transport and handed to the namespace's
member (`ClusterMember.on_message` / `on_broadcast`); a malformed one is counted and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from protocol.cluster import Broadcast, Message, Response, Room

from ..sio.adapter import AdapterError
from ..config import Settings
from ..rooms import RoomRegistry

log = logging.getLogger("gateway.cluster")


class ClusterUnavailable(AdapterError):
    """The Redis link is down; cluster-wide requests fail fast instead of hanging."""


# A peer that vanished without closing (host down, partition) is noticed in ~11 s, not hours.
TCP_KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}

PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class LinkStats:
    """Plain counters of a transport (bumped on the hot path, read by ops/cluster_metrics.py)."""

    published: int = 0
    received: int = 0
    bad_messages: int = 0
    request_timeouts: int = 0
    reconnects: int = 0
    reconnect_attempts: int = 0
    watchdog_rebuilds: int = 0
    stalls: int = 0
    outbox_dropped: int = 0
    publish_errors: int = 0
    last_drop_log: float = 0.0
    publish_buckets: list[int] = field(default_factory=lambda: [0] * (len(PUBLISH_BUCKETS) + 1))
    publish_sum: float = 0.0
    publish_count: int = 0

    def observe_publish(self, seconds: float) -> None:
        """One pipelined publish round trip, for the latency histogram."""
        self.publish_sum += seconds
        self.publish_count += 1
        for i, bound in enumerate(PUBLISH_BUCKETS):
            if seconds <= bound:
                self.publish_buckets[i] += 1
                return
        self.publish_buckets[-1] += 1


def info_figures(info: dict[str, Any]) -> dict[str, Any]:
    """The `INFO` figures /stats shows."""
    return {key: info.get(key) for key in ("connected_clients", "used_memory", "used_memory_human", "uptime_in_seconds", "redis_version")}


class ClusterMember(Protocol):
    """What a transport sees of one namespace's cluster adapter."""

    uid: str
    registry: RoomRegistry[Any]

    @property
    def name(self) -> str: ...

    def on_broadcast(self, message: Broadcast) -> None: ...

    def on_message(self, message: Message) -> None: ...


class Transport(Protocol):
    """The carrier of one server's cluster messages, shared by all its namespaces."""

    stats: LinkStats
    outbox: deque[tuple[bytes, bytes, float]]
    pub_up: bool
    sub_up: bool
    members: dict[str, ClusterMember]
    watches_rooms: bool  # rooms have channels of their own: watch/unwatch them
    carries: frozenset[type]  # the request types its wire format has

    def new_id(self) -> str: ...

    def register(self, member: ClusterMember) -> None: ...

    def unregister(self, member: ClusterMember) -> None: ...

    def watch(self, member: ClusterMember, room: Room) -> None: ...

    def unwatch(self, member: ClusterMember, room: Room) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def publish(self, message: Message) -> None:
        """Queue a message for every other node (ordered, bounded outbox; never blocks)."""

    async def publish_now(self, message: Message) -> None:
        """Publish at once (a request whose caller waits); ClusterUnavailable when down."""

    def publish_response(self, requester: str | None, message: Response) -> None:
        """Queue an answer for the node `requester`."""

    async def server_count(self, nsp: str) -> int:
        """How many servers (this one included) listen on namespace `nsp`."""

    def health(self) -> dict[str, Any]: ...

    async def redis_info(self) -> dict[str, Any]: ...

    def figures(self) -> Iterable[tuple[str, str, str, float]]:
        """Transport-specific figures for /metrics: (kind "counter"/"gauge", name, help, value)."""


class SupervisedLinks:
    """Supervision and outbox rules shared by the Redis transports: reconnect backoff with
    jitter, the attempt limit that switches a node to single-node mode, and the bounded ordered
    outbox. All of a transport's link supervision state lives here (`__init__`), so that it can be
    replaced as one piece by the Sans-I/O Outbox / Backoff / LinkState objects of gateway/redis/.
    Subclasses own the connections and run `_start_links` with their two supervisor loops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = LinkStats()
        self.pub_up = False
        self.sub_up = False
        self.single_node = False  # set after the configured number of failed attempts
        self.started = False
        self.outbox: deque[tuple[bytes, bytes, float]] = deque()
        self._outbox_event = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._sub_attempts = 0
        self._pub_attempts = 0

    async def _start_links(self, subscriber: Any, publisher: Any, label: str) -> None:
        """Run the two supervisors; return once both links are up, or after ~2 s regardless (a
        node with Redis down serves its local clients at once and joins later)."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(subscriber, name=f"{label}-subscriber"),
            loop.create_task(publisher, name=f"{label}-publisher"),
        ]
        for _ in range(40):
            if self.sub_up and self.pub_up:
                break
            await asyncio.sleep(0.05)
        if not (self.sub_up and self.pub_up):
            log.warning("cluster_start_degraded publisher=%s subscriber=%s", self.pub_up, self.sub_up)

    async def _stop_links(self) -> None:
        """Flush the outbox for up to a second while the publisher is up, then stop both
        supervisors."""
        self._closing = True
        self._outbox_event.set()
        deadline = time.monotonic() + 1.0
        while self.outbox and self.pub_up and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def _next_batch(self, limit: int = 512) -> list[tuple[bytes, bytes, float]] | None:
        """The next run of queued messages, oldest first, waiting until there is one (expired
        ones are dropped and counted); None once closing with nothing left to send."""
        outbox = self.outbox
        while True:
            if not outbox:
                if self._closing:
                    return None
                self._outbox_event.clear()
                await self._outbox_event.wait()
                continue
            self._expire_outbox()
            batch = []
            while outbox and len(batch) < limit:
                batch.append(outbox.popleft())
            if batch:
                return batch

    async def _publisher_failed(self, exc: BaseException) -> None:
        """The publisher link broke: mark it down, count and log the attempt, back off."""
        self.pub_up = False
        self.stats.publish_errors += 1
        self._pub_attempts += 1
        self._failed_attempt("publisher", self._pub_attempts, exc)
        await asyncio.sleep(self.backoff(self._pub_attempts))

    def backoff(self, attempt: int) -> float:
        """Exponential from the initial delay to the cap, with jitter in [50 %, 100 %]."""
        initial = self.settings.reconnect_initial_ms / 1000
        cap = self.settings.reconnect_max_ms / 1000
        base = min(initial * (2 ** max(0, attempt - 1)), cap)
        return base * (0.5 + random.random() / 2)

    def _failed_attempt(self, link: str, attempt: int, exc: BaseException) -> None:
        self.stats.reconnect_attempts += 1
        log.warning("cluster_link_down link=%s attempt=%d error=%r", link, attempt, str(exc))
        if attempt == self.settings.reconnect_attempts and not self.single_node:
            self.single_node = True
            log.error(
                "cluster_unreachable link=%s attempts=%d mode=single-node note=%r",
                link,
                attempt,
                "serving local clients only; cross-node messages are queued up to the outbox limits; still retrying",
            )

    def _link_restored(self, link: str, attempts: int) -> None:
        if attempts:
            self.stats.reconnects += 1
            log.info("cluster_link_up link=%s after_attempts=%d", link, attempts)
        if self.single_node and self.pub_up and self.sub_up:
            self.single_node = False
            log.warning("cluster_rejoined mode=redis")

    def enqueue(self, channel: bytes, payload: bytes) -> None:
        """Queue a message; the writer task sends queued messages in order, pipelined. While Redis
        is unreachable the outbox keeps at most OUTBOX_MAX_MESSAGES (oldest dropped first)."""
        outbox = self.outbox
        if not self.pub_up and len(outbox) >= self.settings.outbox_max_messages:
            outbox.popleft()
            self._dropped(1, "outbox full")
        outbox.append((channel, payload, time.monotonic()))
        self._outbox_event.set()

    def _dropped(self, count: int, why: str) -> None:
        self.stats.outbox_dropped += count
        # One line per reason and second at most: an outage must not flood the log.
        now = time.monotonic()
        if now - self.stats.last_drop_log > 1.0:
            self.stats.last_drop_log = now
            log.warning("cluster_outbox_dropped reason=%r total=%d", why, self.stats.outbox_dropped)

    def _expire_outbox(self) -> None:
        max_age = self.settings.outbox_max_age_ms / 1000
        limit = time.monotonic() - max_age
        outbox = self.outbox
        expired = 0
        while outbox and outbox[0][2] < limit:
            outbox.popleft()
            expired += 1
        if expired:
            self._dropped(expired, "older than OUTBOX_MAX_AGE_MS")
