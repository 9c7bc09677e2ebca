"""The Redis cluster bridge, wire-compatible with @socket.io/redis-adapter 8.3 (classic).

`ClusterBridge` owns the two Redis connections of a node (one publisher, one dedicated
subscriber) and routes what arrives to the namespace `ClusterAdapter`s registered with it. Each
`ClusterAdapter` is an in-memory `Adapter` for local delivery plus the cluster protocol: it
publishes broadcasts and requests, answers other nodes' requests, and correlates responses.

Publishing never blocks a broadcast: messages go to an ordered outbox drained by one writer task
(pipelined, so a burst costs one round trip). Every pending request has one owner, a timer, and is
forgotten on completion or timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from protocol import cluster as wire
from protocol import socketio as sio
from protocol.errors import ClusterMessageError
from protocol.socketio import PacketType

from ..config import Settings
from .base import Adapter, AdapterError, AdapterTimeout, BroadcastOptions
from .streams import PublishStream, SubscriberStream
from .connection import redis_client

if TYPE_CHECKING:
    from ..server import Namespace, Server

log = logging.getLogger("gateway.cluster")

Room = Hashable


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
class BridgeStats:
    """Plain counters (bumped on the hot path, read by /metrics)."""

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
    """The `INFO` figures /stats shows (as the seed's getRedisAdapterStats)."""
    return {key: info.get(key) for key in ("connected_clients", "used_memory", "used_memory_human", "uptime_in_seconds", "redis_version")}


class SupervisedLinks:
    """Supervision and outbox rules shared by the classic and the sharded bridges: reconnect
    backoff with jitter, the attempt limit that switches a node to single-node mode, and the
    bounded ordered outbox. Subclasses own the connections; they provide `settings`, `stats`,
    `outbox`, `pub_up`, `sub_up`, `single_node`, `_outbox_event`, `_tasks` and `_closing`."""

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

    def publish(self, channel: str | bytes, payload: bytes) -> None:
        """Queue a message; the writer task sends queued messages in order, pipelined. While Redis
        is unreachable the outbox keeps at most OUTBOX_MAX_MESSAGES (oldest dropped first)."""
        if isinstance(channel, str):
            channel = channel.encode()
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


class ClusterBridge(SupervisedLinks):
    """One node's Redis links, shared by all its namespaces.

    Supervision: both links reconnect with exponential backoff and jitter; the subscriber
    re-establishes every subscription and proves it with a probe message sent through Redis to
    itself before the link counts as up; a watchdog keeps probing and rebuilds a subscriber that
    stops receiving (a Redis-side kill of a slow subscriber, a half-open TCP connection). While
    the publisher is down, cross-node messages wait in a bounded outbox and are replayed in order.
    """

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url
        self.settings = settings
        self.url = settings.redis_url
        self.prefix = settings.redis_prefix
        self.adapters: dict[str, "ClusterAdapter"] = {}
        self.channels: dict[bytes, tuple["ClusterAdapter", str]] = {}  # channel -> (adapter, kind)
        self.patterns: dict[bytes, "ClusterAdapter"] = {}
        self.stats = BridgeStats()
        self.pub: aioredis.Redis | None = None
        self.pub_up = False
        self.sub_up = False
        self.single_node = False  # set after the configured number of failed attempts
        self.outbox: deque[tuple[bytes, bytes, float]] = deque()
        self._outbox_event = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._pubsub: Any = None
        self._pub_stream: PublishStream | None = None
        self.started = False
        self.node_tag = wire.new_sharded_id()
        self.probe_channel = f"{self.prefix}-gateway-probe#{self.node_tag}#".encode()
        self._probe_seen = 0.0
        self._probe_waiter: asyncio.Future[None] | None = None
        self._sub_attempts = 0
        self._pub_attempts = 0
        # Subscribers of our request channels (one per node) as last seen while the links were
        # up: after an outage the outbox waits for as many before it is replayed.
        self._peer_counts: dict[bytes, int] = {}

    # -- registration --------------------------------------------------------------------------

    def register(self, adapter: "ClusterAdapter") -> None:
        self.adapters[adapter.nsp.name] = adapter
        self.patterns[adapter.pattern] = adapter
        self.channels[adapter.request_channel] = (adapter, "request")
        self.channels[adapter.response_channel] = (adapter, "response")
        self.channels[adapter.own_response_channel] = (adapter, "response")
        if self._pubsub is not None and self.sub_up:
            asyncio.ensure_future(self._subscribe_adapter(self._pubsub, adapter))

    def unregister(self, adapter: "ClusterAdapter") -> None:
        self.adapters.pop(adapter.nsp.name, None)
        self.patterns.pop(adapter.pattern, None)
        for channel in (adapter.request_channel, adapter.response_channel, adapter.own_response_channel):
            self.channels.pop(channel, None)

    # -- lifecycle -----------------------------------------------------------------------------

    def _client(self, socket_timeout: float | None = 5.0) -> aioredis.Redis:
        return redis_client(
            self.settings,
            decode_responses=False,
            socket_connect_timeout=2.0,
            socket_timeout=socket_timeout,
            socket_keepalive=True,
            socket_keepalive_options=TCP_KEEPALIVE,
            health_check_interval=0,
            retries=False,  # our supervisor owns reconnecting; a silent retry could publish twice
        )

    async def start(self) -> None:
        """Start the links. Returns quickly even when Redis is down: the node serves its local
        clients at once and joins the cluster when Redis appears."""
        if self.started:
            return
        self.started = True
        # No read timeout on the publisher: a batch that timed out may still be executed by a
        # Redis that was only frozen, and replaying it would deliver it twice. A frozen Redis
        # shows in the subscriber's watchdog instead; a dead peer in TCP keepalive.
        self.pub = self._client(socket_timeout=None)
        await self._start_links(self._subscriber_loop(), self._publisher_loop(), "cluster")

    async def close(self) -> None:
        await self._stop_links()
        if self._pub_stream is not None:
            await self._pub_stream.aclose()
            self._pub_stream = None
        if self.pub is not None:
            try:
                await self.pub.aclose()
            except Exception:
                pass

    # -- subscriber ----------------------------------------------------------------------------

    async def _subscribe_adapter(self, pubsub: Any, adapter: "ClusterAdapter") -> None:
        await pubsub.psubscribe(adapter.pattern)
        await pubsub.subscribe(adapter.request_channel, adapter.response_channel, adapter.own_response_channel)

    async def _verify(self, pubsub: Any, client: aioredis.Redis) -> None:
        """Prove the subscriptions work: a probe published to our own probe channel must come
        back through this very subscriber, and Redis must count our request subscriptions."""
        loop = asyncio.get_running_loop()
        self._probe_waiter = loop.create_future()
        deadline = time.monotonic() + 3.0
        token = self.node_tag.encode()
        while not self._probe_waiter.done():
            await client.publish(self.probe_channel, token)
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                self._dispatch(message)
            if time.monotonic() > deadline:
                raise ConnectionError("subscription probe did not come back")
        self._probe_waiter = None
        for adapter in list(self.adapters.values()):
            result = await client.execute_command("PUBSUB", "NUMSUB", adapter.request_channel)
            if int(result[1]) < 1:
                raise ConnectionError(f"request channel {adapter.request_channel!r} not subscribed")

    async def _subscriber_loop(self) -> None:
        watchdog = self.settings.watchdog_ms / 1000
        probe_every = max(0.1, watchdog / 3)
        settle_time = self.settings.reconnect_max_ms / 1000 + 1.0
        while not self._closing:
            client = self._client()
            pubsub = SubscriberStream(client)
            try:
                await pubsub.subscribe(self.probe_channel)
                for adapter in list(self.adapters.values()):
                    await self._subscribe_adapter(pubsub, adapter)
                await self._verify(pubsub, client)
                self._pubsub = pubsub
                self.sub_up = True
                self._link_restored("subscriber", self._sub_attempts)
                recovering = self._sub_attempts > 0
                self._sub_attempts = 0
                self._probe_seen = up_since = time.monotonic()
                next_probe = time.monotonic() + probe_every
                acked_sent = acked_at = 0.0  # last probe Redis acknowledged: when sent, when acked
                stalled_since = 0.0
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(1.0, probe_every))
                    if message is not None:
                        self._dispatch(message)
                    now = time.monotonic()
                    if now >= next_probe:
                        next_probe = now + probe_every
                        try:
                            # After an outage, peers are counted only once they have had a reconnect
                            # cap to come back (the count from before is what a replay waits for).
                            settled = self.pub_up and not self._pub_attempts and (not recovering or now - up_since > settle_time)
                            receivers = await asyncio.wait_for(self._probe(client, settled), probe_every)
                        except (asyncio.TimeoutError, RedisTimeout):
                            pass  # Redis does not answer at all: a stall, judged below
                        except (RedisError, OSError) as exc:
                            raise ConnectionError(f"probe publish failed: {exc}") from exc
                        else:
                            if receivers == 0:
                                raise ConnectionError("Redis no longer counts our subscriber")
                            acked_sent, acked_at = now, time.monotonic()
                        now = time.monotonic()
                    silent = now - self._probe_seen
                    if silent <= watchdog:
                        if stalled_since:
                            stalled_since = 0.0
                            self.sub_up = True
                            log.warning("cluster_link_resumed link=subscriber")
                        continue
                    # Redis answered a probe sent after the last one we heard, and that probe has
                    # had time to arrive: this connection is dead while Redis is not. Rebuild.
                    lost = acked_sent > self._probe_seen and now - acked_at > min(watchdog, 1.0)
                    # Redis answers nothing (frozen, overloaded): this connection still holds
                    # everything Redis will send when it resumes, so keep it, degraded, for as
                    # long as the outbox window (a rebuild would lose what it holds).
                    if not stalled_since:
                        stalled_since = now
                        self.sub_up = False
                        self.stats.stalls += 1
                        log.warning("cluster_link_stalled link=subscriber silent_seconds=%.1f", silent)
                    if lost or now - stalled_since > max(watchdog, self.settings.outbox_max_age_ms / 1000):
                        self.stats.watchdog_rebuilds += 1
                        raise ConnectionError(f"subscriber received nothing for {silent:.1f}s")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError) as exc:
                self.sub_up = False
                self._pubsub = None
                self._sub_attempts += 1
                self._failed_attempt("subscriber", self._sub_attempts, exc)
                await asyncio.sleep(self.backoff(self._sub_attempts))
            finally:
                if self._closing:
                    self.sub_up = False
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass

    async def _probe(self, client: aioredis.Redis, count_peers: bool) -> int:
        """Publish a watchdog probe; also note how many nodes listen on our request channels."""
        receivers = await client.publish(self.probe_channel, b"watchdog")
        channels = [a.request_channel for a in self.adapters.values()]
        if channels and count_peers:
            reply = await client.execute_command("PUBSUB", "NUMSUB", *channels)
            self._peer_counts = {bytes(reply[i]): int(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
        return int(receivers)

    def _dispatch(self, message: dict[str, Any]) -> None:
        self.stats.received += 1
        try:
            kind = message["type"]
            if kind == "pmessage":
                adapter = self.patterns.get(message["pattern"])
                if adapter is not None:
                    adapter.on_broadcast(message["channel"], message["data"])
            elif kind == "message":
                channel = message["channel"]
                if channel == self.probe_channel:
                    self._probe_seen = time.monotonic()
                    waiter = self._probe_waiter
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                    return
                target = self.channels.get(channel)
                if target is not None:
                    adapter, role = target
                    if role == "request":
                        adapter.on_request(message["data"])
                    else:
                        adapter.on_response(message["data"])
        except ClusterMessageError as exc:
            self.stats.bad_messages += 1
            log.warning("cluster_bad_message channel=%r error=%r", message.get("channel"), str(exc))
        except Exception:
            self.stats.bad_messages += 1
            log.exception("cluster_message_failed channel=%r", message.get("channel"))

    # -- publisher -----------------------------------------------------------------------------

    async def publish_now(self, channel: bytes | str, payload: bytes) -> None:
        """Publish bypassing the outbox (requests whose caller waits for answers)."""
        if not self.pub_up or self.pub is None:
            raise ClusterUnavailable("Redis publisher is down")
        try:
            await asyncio.wait_for(self.pub.publish(channel, payload), self.settings.requests_timeout_ms / 1000)
        except asyncio.TimeoutError as exc:
            raise ClusterUnavailable("Redis does not answer") from exc
        self.stats.published += 1

    async def numsub(self, channel: bytes) -> int:
        # Answers come through the subscriber: without it a request could only time out.
        if not self.pub_up or not self.sub_up or self.pub is None:
            raise ClusterUnavailable("Redis link is down")
        try:
            result = await asyncio.wait_for(
                self.pub.execute_command("PUBSUB", "NUMSUB", channel), self.settings.requests_timeout_ms / 1000
            )
        except asyncio.TimeoutError as exc:
            raise ClusterUnavailable("Redis does not answer") from exc
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis request failed: {exc}") from exc
        return int(result[1]) if len(result) >= 2 else 0

    async def _publisher_loop(self) -> None:
        while not self._closing or self.outbox:
            try:
                assert self.pub is not None
                await self.pub.ping()
                if self._pub_attempts and self.outbox:
                    await self._settle_before_replay()
                self.pub_up = True
                self._link_restored("publisher", self._pub_attempts)
                self._pub_attempts = 0
                while True:
                    batch = await self._next_batch()
                    if batch is None:
                        return
                    started = time.perf_counter()
                    stream = self._pub_stream
                    if stream is None:
                        stream = self._pub_stream = PublishStream(self.pub)
                    try:
                        await stream.publish_batch(batch)
                    except BaseException:
                        # Put the batch back in front, in order, for the next attempt, on a new
                        # connection (this one may hold half a reply).
                        self.outbox.extendleft(reversed(batch))
                        self._pub_stream = None
                        await stream.aclose()
                        raise
                    self.stats.published += len(batch)
                    self.stats.observe_publish(time.perf_counter() - started)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError) as exc:
                await self._publisher_failed(exc)

    async def _settle_before_replay(self) -> None:
        """After an outage, give the other nodes' subscribers a moment to come back before the
        outbox is replayed: wait for our own subscriber, then until our request channels have as
        many subscribers as before the outage (or, with no count from before, until the count
        stops changing), bounded by the reconnect cap: every node retries within one cap."""
        assert self.pub is not None
        deadline = time.monotonic() + self.settings.reconnect_max_ms / 1000 + 1.0
        while not self.sub_up and time.monotonic() < deadline and not self._closing:
            await asyncio.sleep(0.05)
        channels = [a.request_channel for a in self.adapters.values()]
        if not channels:
            return
        expected = dict(self._peer_counts)
        previous = None
        while time.monotonic() < deadline and not self._closing:
            current = await self.pub.execute_command("PUBSUB", "NUMSUB", *channels)
            counts = {bytes(current[i]): int(current[i + 1]) for i in range(0, len(current) - 1, 2)}
            if expected:
                if all(counts.get(channel, 0) >= expected.get(channel, 1) for channel in channels):
                    return
            elif current == previous:
                return
            previous = current
            await asyncio.sleep(0.1 if expected else 0.3)

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        status = "healthy" if self.pub_up and self.sub_up else "degraded"
        return {
            "mode": "single-node" if self.single_node else "redis",
            "status": status,
            "publisher": "up" if self.pub_up else "down",
            "subscriber": "up" if self.sub_up else "down",
            "outbox": len(self.outbox),
        }

    async def redis_info(self) -> dict[str, Any]:
        """A few `INFO` figures for /stats (as the seed's getRedisAdapterStats)."""
        if self.pub is None or not self.pub_up:
            return {"available": False}
        try:
            info = await asyncio.wait_for(self.pub.info(), 1.0)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            return {"available": False, "error": str(exc)}
        return {"available": True, **info_figures(info)}


# -- per-namespace adapter -------------------------------------------------------------------------


@dataclass(slots=True)
class PendingRequest:
    type: wire.RequestType
    expected: int
    future: "asyncio.Future[Any] | None" = None
    responses: list[Any] = field(default_factory=list)
    received: int = 0
    timer: asyncio.TimerHandle | None = None
    on_client_count: Callable[[int], None] | None = None
    on_ack: Callable[[Any], None] | None = None


class RemoteSocket:
    """A socket living on another node, as returned by `fetch_sockets()`."""

    __slots__ = ("adapter", "id", "handshake", "rooms", "data")

    def __init__(self, adapter: "ClusterAdapter", description: dict[str, Any]) -> None:
        self.adapter = adapter
        self.id: str = description["id"]
        self.handshake: dict[str, Any] = description.get("handshake") or {}
        self.rooms: set[Room] = set(description.get("rooms") or ())
        self.data: Any = description.get("data")

    def __repr__(self) -> str:
        return f"<RemoteSocket {self.id}>"

    def _only_me(self) -> BroadcastOptions:
        return BroadcastOptions(rooms=frozenset([self.id]))

    def emit(self, event: str, *args: Any) -> None:
        packet = sio.Packet(PacketType.EVENT, self.adapter.nsp.name, [event, *args])
        self.adapter.broadcast(packet, self._only_me())

    def join(self, rooms: Room | list[Room]) -> None:
        self.adapter.add_sockets(self._only_me(), [rooms] if isinstance(rooms, (str, int)) else list(rooms))

    def leave(self, room: Room) -> None:
        self.adapter.del_sockets(self._only_me(), [room])

    def disconnect(self, close: bool = False) -> None:
        self.adapter.disconnect_sockets(self._only_me(), close)


def is_socket_description(value: Any) -> bool:
    """What a RemoteSocket can be built from: `{id: str, handshake?: map, rooms?: list, data?}`."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and isinstance(value.get("handshake") or {}, dict)
        and isinstance(value.get("rooms") or [], list)
        and all(isinstance(room, (str, int, float)) and not isinstance(room, bool) for room in value.get("rooms") or ())
    )


def wire_options(opts: BroadcastOptions, with_flags: bool = False) -> wire.BroadcastOptions:
    return wire.BroadcastOptions(list(opts.rooms), list(opts.except_), opts.wire_flags() if with_flags else None)


def local_options(o: wire.BroadcastOptions | None, flags: dict[str, Any] | None = None) -> BroadcastOptions:
    if o is None:
        return BroadcastOptions()
    flags = flags if flags is not None else (o.flags or {})
    return BroadcastOptions(rooms=frozenset(o.rooms), except_=frozenset(o.except_rooms), volatile=bool(flags.get("volatile")))


class RedisAdapter(Adapter):
    """What the classic and the sharded adapters share: pending-request bookkeeping (one owner,
    one timer, forgotten on completion or timeout), socket descriptions for fetch answers,
    health and metrics. Subclasses provide `bridge` and `pending`."""

    async def init(self) -> None:
        await self.bridge.start()

    async def close(self) -> None:
        self.bridge.unregister(self)
        for request_id in list(self.pending):
            self._forget(request_id)
        if not self.bridge.adapters:
            await self.bridge.close()

    def _serve_server_side_emit(self, data: list[Any], answer: Callable[[Any], None] | None) -> None:
        """Run this node's handlers for another node's serverSideEmit. With `answer` (the
        requester wants acks), the first ack is sent once; as in Node, a node without a listener
        does not answer at all (the requester times out, counting it as missing)."""
        if answer is None:
            self.nsp._on_server_side_event(data, None)
            return
        if not data or not self.nsp.has_listener(data[0]):
            return
        answered = False

        def ack(value: Any = None) -> None:
            nonlocal answered
            if not answered:
                answered = True
                answer(value)

        self.nsp._on_server_side_event(data, ack)

    def _expire(self, request_id: str) -> None:
        entry = self.pending.pop(request_id, None)
        if entry is None:
            return
        self.bridge.stats.request_timeouts += 1
        log.warning("cluster_request_timeout type=%s request_id=%s answered=%d expected=%d", entry.type.name, request_id, entry.received, entry.expected)
        if entry.future is not None and not entry.future.done():
            error = AdapterTimeout(f"{entry.type.name}: {entry.received} of {entry.expected} nodes answered in time")
            error.responses = list(entry.responses)  # type: ignore[attr-defined]
            entry.future.set_exception(error)

    def _forget(self, request_id: str) -> None:
        entry = self.pending.pop(request_id, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()

    def _describe(self, socket: Any) -> dict[str, Any]:
        h = socket.handshake
        handshake = wire.socket_handshake(
            headers=h.get("headers", {}),
            address=h.get("address", ""),
            issued=h.get("issued", 0),
            url=h.get("url", ""),
            query=h.get("query", {}),
            auth=h.get("auth", {}),
            xdomain=h.get("xdomain", False),
            secure=h.get("secure", False),
            time=h.get("time"),
        )
        rooms = [socket.id] + [r for r in self.socket_rooms(socket) if r != socket.id]
        return wire.socket_description(socket.id, handshake, rooms, socket.data)

    def collect_metrics(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        s = self.bridge.stats
        yield CounterMetricFamily("sio_gateway_redis_published", "Messages published to Redis", value=s.published)
        yield CounterMetricFamily("sio_gateway_redis_received", "Messages received from Redis", value=s.received)
        yield CounterMetricFamily("sio_gateway_redis_bad_messages", "Malformed or foreign Redis messages dropped", value=s.bad_messages)
        yield CounterMetricFamily("sio_gateway_redis_request_timeouts", "Cluster requests that timed out", value=s.request_timeouts)
        yield CounterMetricFamily("sio_gateway_redis_reconnects", "Redis links re-established", value=s.reconnects)
        yield CounterMetricFamily("sio_gateway_redis_reconnect_attempts", "Failed Redis connection attempts", value=s.reconnect_attempts)
        yield CounterMetricFamily("sio_gateway_redis_watchdog_rebuilds", "Subscribers rebuilt because they stopped receiving", value=s.watchdog_rebuilds)
        yield CounterMetricFamily("sio_gateway_redis_stalls", "Times Redis stopped answering while the links stayed open", value=s.stalls)
        yield CounterMetricFamily("sio_gateway_redis_outbox_dropped", "Cross-node messages dropped (outbox full or too old)", value=s.outbox_dropped)
        yield CounterMetricFamily("sio_gateway_redis_publish_errors", "Failed publish attempts", value=s.publish_errors)
        yield GaugeMetricFamily("sio_gateway_redis_outbox", "Messages waiting to be published", value=len(self.bridge.outbox))
        buckets = []
        running = 0
        for bound, count in zip(PUBLISH_BUCKETS, s.publish_buckets):
            running += count
            buckets.append((repr(bound), running))
        buckets.append(("+Inf", running + s.publish_buckets[-1]))
        yield HistogramMetricFamily("sio_gateway_redis_publish_seconds", "Round trip of one pipelined publish batch", buckets=buckets, sum_value=s.publish_sum)
        link = GaugeMetricFamily("sio_gateway_redis_link_up", "Redis link state (1 up, 0 down)", labels=["link"])
        link.add_metric(["publisher"], 1 if self.bridge.pub_up else 0)
        link.add_metric(["subscriber"], 1 if self.bridge.sub_up else 0)
        yield link
        pending = sum(len(a.pending) for a in self.bridge.adapters.values())
        yield GaugeMetricFamily("sio_gateway_cluster_pending_requests", "Cluster requests awaiting answers", value=pending)

    def health(self) -> dict[str, Any]:
        return self.bridge.health()


class ClusterAdapter(RedisAdapter):
    """An in-memory adapter that is also a member of a Redis cluster (classic protocol)."""

    def __init__(self, nsp: "Namespace", bridge: ClusterBridge) -> None:
        super().__init__(nsp)
        self.bridge = bridge
        self.uid = wire.new_classic_id()
        prefix = bridge.prefix
        name = nsp.name
        self.prefix = prefix
        self.pattern = wire.broadcast_pattern(prefix, name).encode()
        self.request_channel = wire.request_channel(prefix, name).encode()
        self.response_channel = wire.response_channel(prefix, name).encode()
        self.own_response_channel = wire.response_channel(prefix, name, self.uid).encode()
        self._channel_base = f"{prefix}#{name}#".encode()
        self.pending: dict[str, PendingRequest] = {}
        self.requests_timeout = bridge.settings.requests_timeout_ms / 1000
        self.specific_responses = bridge.settings.publish_on_specific_response_channel
        bridge.register(self)

    # -- outgoing broadcasts -------------------------------------------------------------------

    def broadcast(self, packet: sio.Packet, opts: BroadcastOptions) -> None:
        self.deliver(packet, opts)
        if opts.local:
            return
        rooms = list(opts.rooms)
        payload = wire.encode_classic_broadcast(self.uid, self.nsp.name, packet.data, wire_options(opts, with_flags=True))
        self.bridge.publish(wire.broadcast_channel(self.prefix, self.nsp.name, rooms), payload)

    def broadcast_with_ack(self, packet: sio.Packet, opts: BroadcastOptions, on_client_count: Callable[[int], None], on_ack: Callable[[Any], None]) -> None:
        data = list(packet.data)
        super().broadcast_with_ack(packet, opts, on_client_count, on_ack)
        if opts.local:
            return
        request_id = wire.new_classic_id()
        timeout = opts.timeout if opts.timeout is not None else 5.0
        entry = PendingRequest(wire.RequestType.BROADCAST, expected=0, on_client_count=on_client_count, on_ack=on_ack)
        self.pending[request_id] = entry
        entry.timer = asyncio.get_running_loop().call_later(timeout, self._forget, request_id)
        payload = wire.encode_broadcast_with_ack_request(self.uid, request_id, self.nsp.name, data, wire_options(opts, with_flags=True))
        self.bridge.publish(self.request_channel, payload)

    # -- requests we issue ---------------------------------------------------------------------

    async def server_count(self) -> int:
        return max(1, await self.bridge.numsub(self.request_channel))

    async def _request(self, rtype: wire.RequestType, payload_of: Callable[[str], bytes], timeout: float | None = None) -> list[Any] | None:
        """Publish a request and wait for one answer per other node. None when alone."""
        expected = await self.bridge.numsub(self.request_channel) - 1
        if expected <= 0:
            return None
        request_id = wire.new_classic_id()
        loop = asyncio.get_running_loop()
        entry = PendingRequest(rtype, expected=expected, future=loop.create_future())
        self.pending[request_id] = entry
        entry.timer = loop.call_later(timeout or self.requests_timeout, self._expire, request_id)
        try:
            await self.bridge.publish_now(self.request_channel, payload_of(request_id))
            return await entry.future  # type: ignore[misc]
        finally:
            self._forget(request_id)

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[Any]:
        local = list(self.select(opts))
        if opts.local:
            return local
        remote = await self._request(
            wire.RequestType.REMOTE_FETCH,
            lambda rid: wire.encode_fetch_sockets_request(self.uid, rid, wire_options(opts)),
        )
        for description in remote or ():
            local.append(RemoteSocket(self, description))
        return local

    async def all_rooms(self) -> set[Room]:
        rooms = set(self.registry.rooms)
        remote = await self._request(wire.RequestType.ALL_ROOMS, lambda rid: wire.encode_all_rooms_request(self.uid, rid))
        for answer in remote or ():
            rooms.update(answer)
        return rooms

    async def server_side_emit(self, data: list[Any], ack: bool, timeout: float | None = None) -> list[Any]:
        if not ack:
            self.bridge.publish(self.request_channel, wire.encode_server_side_emit(self.uid, data))
            return []
        answers = await self._request(
            wire.RequestType.SERVER_SIDE_EMIT,
            lambda rid: wire.encode_server_side_emit(self.uid, data, rid),
            timeout,
        )
        return answers or []

    def add_sockets(self, opts: BroadcastOptions, rooms: list[Room]) -> None:
        super().add_sockets(opts, rooms)
        if not opts.local:
            self.bridge.publish(self.request_channel, wire.encode_remote_join(self.uid, wire_options(opts), rooms))

    def del_sockets(self, opts: BroadcastOptions, rooms: list[Room]) -> None:
        super().del_sockets(opts, rooms)
        if not opts.local:
            self.bridge.publish(self.request_channel, wire.encode_remote_leave(self.uid, wire_options(opts), rooms))

    def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        super().disconnect_sockets(opts, close)
        if not opts.local:
            self.bridge.publish(self.request_channel, wire.encode_remote_disconnect(self.uid, wire_options(opts), close))

    # -- incoming ------------------------------------------------------------------------------

    def on_broadcast(self, channel: bytes, payload: bytes) -> None:
        base = self._channel_base
        if not channel.startswith(base):
            return
        room_part = channel[len(base) : -1]
        if room_part:
            # Spec 2.3 rule 2: a single-room broadcast for a room we do not have is dropped
            # before decoding (that is most cross-node traffic on a busy cluster).
            room = room_part.decode("utf-8", "replace")
            rooms = self.registry.rooms
            if room not in rooms:
                number = wire.numeric_room(room)
                if number is None or number not in rooms:
                    return
        message = wire.decode_classic_broadcast(payload)
        if message.uid == self.uid:
            return
        if message.nsp != self.nsp.name:
            return
        flags = message.flags or {}
        opts = BroadcastOptions(
            rooms=frozenset(message.rooms),
            except_=frozenset(message.except_rooms),
            volatile=bool(flags.get("volatile")),
        )
        self.stats.broadcasts_remote += 1
        self.deliver(sio.Packet(PacketType.EVENT, self.nsp.name, message.data), opts)

    def _respond(self, requester: str | None, payload: bytes, shared: bool = False) -> None:
        if self.specific_responses and requester and not shared:
            channel = wire.response_channel(self.prefix, self.nsp.name, requester)
        else:
            channel = self.response_channel.decode()
        self.bridge.publish(channel, payload)

    def on_request(self, payload: bytes) -> None:
        req = wire.decode_classic_request(payload)
        T = wire.RequestType
        rtype = req.type
        if rtype in (T.REMOTE_JOIN, T.REMOTE_LEAVE, T.REMOTE_DISCONNECT):
            if req.uid == self.uid:
                return  # applied locally when issued
            if req.sid is not None:
                self._legacy_single_socket(req)
                return
            opts = local_options(req.opts)
            if rtype is T.REMOTE_JOIN:
                Adapter.add_sockets(self, opts, list(req.rooms or ()))
            elif rtype is T.REMOTE_LEAVE:
                Adapter.del_sockets(self, opts, list(req.rooms or ()))
            else:
                Adapter.disconnect_sockets(self, opts, bool(req.close))
            return
        if req.request_id is not None and req.request_id in self.pending:
            return  # our own request coming back
        if rtype is T.SERVER_SIDE_EMIT:
            if req.uid == self.uid:
                return
            request_id = req.request_id
            # serverSideEmit acknowledgements always go to the shared channel (spec 2.5).
            self._serve_server_side_emit(
                req.data or [],
                None if request_id is None else lambda value: self._respond(req.uid, wire.encode_server_side_emit_response(request_id, value), shared=True),
            )
        elif rtype is T.REMOTE_FETCH:
            sockets = [self._describe(s) for s in self.select(local_options(req.opts))]
            self._respond(req.uid, wire.encode_fetch_sockets_response(req.request_id, sockets))  # type: ignore[arg-type]
        elif rtype is T.ALL_ROOMS:
            self._respond(req.uid, wire.encode_all_rooms_response(req.request_id, list(self.registry.rooms)))  # type: ignore[arg-type]
        elif rtype is T.SOCKETS:
            opts = BroadcastOptions(rooms=frozenset(req.rooms or ()))
            self._respond(req.uid, wire.encode_sockets_response(req.request_id, [s.id for s in self.select(opts)]))  # type: ignore[arg-type]
        elif rtype is T.BROADCAST:
            self._answer_broadcast_with_ack(req)

    def _answer_broadcast_with_ack(self, req: wire.ClassicRequest) -> None:
        packet_map = req.packet or {}
        data = packet_map.get("data")
        if not isinstance(data, list) or not data:
            raise ClusterMessageError("broadcast request without event data")
        flags = (req.opts.flags if req.opts else None) or {}
        opts = local_options(req.opts, flags)
        request_id = req.request_id
        requester = req.uid

        def on_client_count(n: int) -> None:
            self._respond(requester, wire.encode_client_count_response(request_id, n))  # type: ignore[arg-type]

        def on_ack(value: Any) -> None:
            self._respond(requester, wire.encode_broadcast_ack_response(request_id, value))  # type: ignore[arg-type]

        Adapter.broadcast_with_ack(self, sio.Packet(PacketType.EVENT, self.nsp.name, data), opts, on_client_count, on_ack)

    def _legacy_single_socket(self, req: wire.ClassicRequest) -> None:
        socket = self.nsp.sockets.get(req.sid)  # type: ignore[arg-type]
        if socket is None:
            return
        T = wire.RequestType
        if req.type is T.REMOTE_JOIN:
            socket.join(req.room)  # type: ignore[arg-type]
        elif req.type is T.REMOTE_LEAVE:
            socket.leave(req.room)  # type: ignore[arg-type]
        else:
            socket.disconnect(bool(req.close))
        if req.request_id:
            self._respond(req.uid, wire.encode_legacy_ack_response(req.request_id))

    def on_response(self, payload: bytes) -> None:
        response = wire.decode_classic_response(payload)
        entry = self.pending.get(response.request_id)
        if entry is None:
            return  # someone else's request, or one that already completed or timed out
        T = wire.RequestType
        if entry.type is T.BROADCAST:
            if response.type is T.BROADCAST_CLIENT_COUNT and entry.on_client_count is not None:
                entry.on_client_count(response.client_count or 0)
            elif response.type is T.BROADCAST_ACK and entry.on_ack is not None:
                entry.on_ack(response.packet)
            return
        if entry.type is T.REMOTE_FETCH:
            sockets = response.sockets or []
            # Checked before counting: one bad description would otherwise surface much later,
            # as a TypeError in the caller of fetch_sockets, and lose every good answer with it.
            for description in sockets:
                if not is_socket_description(description):
                    raise ClusterMessageError(f"fetch response with a malformed socket description: {description!r:.200}")
            entry.responses.extend(sockets)
        elif entry.type is T.ALL_ROOMS:
            entry.responses.append(response.rooms or [])
        elif entry.type is T.SERVER_SIDE_EMIT:
            entry.responses.append(response.data)
        elif entry.type is T.SOCKETS:
            entry.responses.extend(response.sockets or ())
        entry.received += 1
        if entry.received >= entry.expected and entry.future is not None and not entry.future.done():
            entry.future.set_result(entry.responses)

    # -- metrics -------------------------------------------------------------------------------


def cluster_adapter_factory(settings: Settings) -> Callable[["Namespace"], Adapter]:
    """Adapters for every namespace of one server, sharing that server's ClusterBridge."""

    def factory(nsp: "Namespace") -> Adapter:
        server: "Server" = nsp.server
        bridge = getattr(server, "cluster_bridge", None)
        if bridge is None:
            bridge = ClusterBridge(settings)
            server.cluster_bridge = bridge  # type: ignore[attr-defined]
        return ClusterAdapter(nsp, bridge)

    return factory
