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
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from protocol.cluster import Broadcast, Message, Response, Room

from ..sio.adapter import AdapterError
from ..config import Settings
from ..redis.supervision import LinkState, NodeLinks, Outbox, QueuedMessage, ReplayGate
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
    publish_errors: int = 0
    publish_short: int = 0  # cross-node deliveries a publish's receiver count says were missed
    subscriber_gaps: int = 0  # subscribers replaced while Redis may still have delivered to them
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
    outbox: Outbox
    node: NodeLinks
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
    """The supervision the Redis transports share, by composition: an `Outbox` of cross-node
    messages, the node's `NodeLinks` (publisher and subscriber `LinkState`s, each with its
    `Backoff`, and the single-node mode they put the node in), and the loss accounting (a publish
    that reached fewer nodes than are known to be subscribed). The decisions live in those
    objects (gateway/redis/supervision.py); a transport owns the connections and runs its two
    supervisor tasks through `_start_links`, and only does I/O and timers.

    Publishing is held while this node's own subscriber is down (a publish then could not be
    judged, and the others may be down too), and, after the subscriber was down or a publish came
    back short, until the other nodes' subscribers are back (`_replay_gate`), so a replay is not
    published into a Redis nobody listens to yet. Bounded: the wait ends after one reconnect cap;
    held messages stay within the outbox bounds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = LinkStats()
        self.outbox = Outbox(settings.outbox_max_messages, settings.outbox_max_age_ms / 1000)
        self.node = NodeLinks(settings.reconnect_initial_ms / 1000, settings.reconnect_max_ms / 1000, settings.reconnect_attempts)
        self.started = False
        self._outbox_event = asyncio.Event()
        self._link_event = asyncio.Event()  # set whenever a link comes up (wakes a held publisher)
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        # Subscribers of each all-node channel as last counted while the links were up (one per
        # node, this one included): what a publish is expected to reach, and what a replay waits
        # for. `_counted_lower` remembers since when a lower count was seen (a node that left).
        self.subscribed: dict[bytes, int] = {}
        self._counted_lower: dict[bytes, float] = {}
        self.gate_pending = False  # the next batch waits for the other nodes' subscribers
        self.sub_generation = 0  # bumped each time the subscriber goes down
        self._last_short_log = float("-inf")

    # -- link state ----------------------------------------------------------------------------

    @property
    def pub_up(self) -> bool:
        return self.node.publisher.up

    @pub_up.setter
    def pub_up(self, up: bool) -> None:
        if self.node.publisher.set_up(up) and up:
            self._link_event.set()

    @property
    def sub_up(self) -> bool:
        return self.node.subscriber.up

    @sub_up.setter
    def sub_up(self, up: bool) -> None:
        if self.node.subscriber.set_up(up):
            if up:
                self._link_event.set()
            else:
                self.sub_generation += 1
                self.gate_pending = True

    @property
    def single_node(self) -> bool:
        return self.node.single_node

    def _link(self, name: str) -> LinkState:
        return self.node.publisher if name == "publisher" else self.node.subscriber

    def _failed_attempt(self, link: str, attempt: int, exc: BaseException) -> float:
        """A connection attempt on `link` failed (counted and logged by NodeLinks): the delay
        before the next one. `attempt` is the caller's own count, kept for its log only."""
        state = self._link(link)
        if state is self.node.subscriber:
            self.sub_up = False
        return self.node.failed(state, exc)

    def _link_restored(self, link: str, attempts: int = 0) -> None:
        state = self._link(link)
        if state is self.node.subscriber:
            self.sub_up = True
        else:
            self.pub_up = True
        self.node.restored(state)

    def backoff(self, attempt: int) -> float:
        """The reconnect delay before attempt `attempt + 1` (exponential, with jitter)."""
        return self.node.subscriber.backoff.delay(attempt)

    @property
    def _pub_attempts(self) -> int:
        return self.node.publisher.attempts

    @property
    def _sub_attempts(self) -> int:
        return self.node.subscriber.attempts

    # -- the two supervisors -------------------------------------------------------------------

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
        self._link_event.set()
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

    async def _next_batch(self) -> list[QueuedMessage] | None:
        """The next run of queued messages, oldest first, waiting until there is one and until
        publishing is not held (expired ones are dropped and counted by the outbox); None once
        closing with nothing left to send."""
        outbox = self.outbox
        while True:
            if not outbox:
                if self._closing:
                    return None
                self._outbox_event.clear()
                await self._outbox_event.wait()
                continue
            if not self._closing and (self.gate_pending or not self.sub_up):
                await self._hold()
            batch = outbox.take()
            if batch:
                return batch

    async def _hold(self) -> None:
        """Wait for this node's subscriber, then for the other nodes' subscribers (ReplayGate
        over the all-node channels' counts): within one reconnect cap and a second after this
        node's subscriber was down (every node retries within one cap), within one cap after a
        short publish. Nodes not back by then are taken as gone: their count is forgotten, so
        the next publishes are neither held nor counted short for them."""
        cap = self.settings.reconnect_max_ms / 1000
        deadline = time.monotonic() + (cap + 1.0 if not self.sub_up else cap)
        while not self.sub_up and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._link_event.clear()
            try:
                await asyncio.wait_for(self._link_event.wait(), left)
            except asyncio.TimeoutError:
                break
        self.gate_pending = False
        channels = list(self.subscribed)
        gate = ReplayGate(self.subscribed, time.monotonic(), max(0.0, deadline - time.monotonic()))
        counts: dict[bytes, int] = {}
        while channels and not self._closing:
            try:
                counts = await self.count_subscribers(channels)
            except (OSError, ConnectionError, asyncio.TimeoutError, ClusterUnavailable):
                counts = {}
            now = time.monotonic()
            if gate.ready(counts, channels, now):
                if gate.expired(now) and counts and self.sub_up:
                    log.warning("cluster_replay_gate_expired waited_for=%s now=%s", self.subscribed, counts)
                    self.subscribed.update(counts)
                return
            await asyncio.sleep(gate.poll_interval)

    async def count_subscribers(self, channels: list[bytes]) -> dict[bytes, int]:
        """How many subscribers Redis counts on each of `channels` now (NUMSUB / SHARDNUMSUB)."""
        raise NotImplementedError

    async def _publisher_failed(self, exc: BaseException) -> None:
        """The publisher link broke: mark it down, count and log the attempt, back off."""
        self.stats.publish_errors += 1
        await asyncio.sleep(self.node.failed(self.node.publisher, exc))

    def enqueue(self, channel: bytes, payload: bytes) -> None:
        """Queue a message; the writer task sends queued messages in order, pipelined. While Redis
        is unreachable the outbox keeps at most OUTBOX_MAX_MESSAGES (oldest dropped first)."""
        self.outbox.put(channel, payload, self.pub_up)
        self._outbox_event.set()

    @property
    def stalls(self) -> int:
        """Times the subscriber was kept, degraded, while Redis answered nothing."""
        return 0

    @property
    def watchdog_rebuilds(self) -> int:
        """Subscribers rebuilt because their probes stopped coming back."""
        return 0

    # -- loss accounting -----------------------------------------------------------------------

    def note_subscribed(self, counts: dict[bytes, int], now: float) -> None:
        """A probe round's counts of the all-node channels, taken while the links were up. A
        higher count is taken at once; a lower one only after it held for a reconnect cap (a
        node that left, not one that is reconnecting: a replay must wait for that one)."""
        settle = self.settings.reconnect_max_ms / 1000 + 1.0
        subscribed, lower = self.subscribed, self._counted_lower
        for channel, count in counts.items():
            known = subscribed.get(channel)
            if known is None or count >= known:
                subscribed[channel] = count
                lower.pop(channel, None)
            elif now - lower.setdefault(channel, now) > settle:
                subscribed[channel] = count
                lower.pop(channel, None)

    def count_short(self, batch: list[QueuedMessage], receivers: list[Any], expected_of: Any, generation: int) -> None:
        """Compare the receiver counts of one published batch with the subscribed nodes: a
        message that reached fewer other nodes than are subscribed is lost for them; count it
        (once per node it missed) and log, at most once a second. `expected_of(channel)` gives the
        channel's subscriber count (this node included) or None for a channel not heard by every
        node. This node's own subscriber is taken as a receiver when it stayed up since the batch
        was sent (`generation`). Then the next batch waits for the others to be back."""
        self_in = 1 if self.sub_up and generation == self.sub_generation else 0
        short = 0
        for message, count in zip(batch, receivers):
            if type(count) is not int:
                continue
            expected = expected_of(message.channel)
            if expected is None or expected <= 1:
                continue
            others = expected - 1
            missed = min(others, max(0, others + self_in - count))
            short += missed
        if not short:
            return
        self.stats.publish_short += short
        self.gate_pending = True
        now = time.monotonic()
        if now - self._last_short_log > 1.0:
            self._last_short_log = now
            log.warning("cluster_publish_short missed=%d total=%d", short, self.stats.publish_short)

    def subscriber_rebuilt(self, why: str) -> None:
        """A subscriber connection that Redis may still have been delivering to was replaced:
        what arrived between its last message and the new subscription is lost and cannot be
        known exactly in pub/sub; the rebuild is counted."""
        self.stats.subscriber_gaps += 1
        log.warning("cluster_subscriber_gap reason=%r total=%d", why, self.stats.subscriber_gaps)
