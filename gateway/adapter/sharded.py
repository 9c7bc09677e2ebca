"""The Redis Cluster bridge with sharded pub/sub, wire-compatible with @socket.io/redis-adapter's
`createShardedAdapter` (spec section 4).

Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis >= 7) is scoped to one shard: a channel hashes to
a slot like a key, and only the master owning that slot (and its replicas) carries the channel. So
unlike the classic bridge, one subscriber connection cannot hear everything: `ShardedBridge` keeps
one subscriber link per master and places every channel on the link of the master that owns its
slot, as read from `CLUSTER SLOTS`. That placement is re-derived whenever the map may have changed
(a MOVED reply, a server-initiated SUNSUBSCRIBE when a slot migrates, a dead link after a
failover), so subscriptions follow the slots without losing rooms: the set of channels the node
*wants* is the source of truth, and the links are reconciled against it.

`ShardedClusterAdapter` is the namespace side: the main channel `P#N#`, its own response channel
`P#N#UID#` and, in the dynamic subscription modes, one channel per room it has members in, taken
and released through the room registry's created/deleted hooks. That is what keeps a node from
receiving traffic for rooms it does not serve.

The outbox, supervision, pending requests and RemoteSocket follow the classic bridge
(gateway/adapter/cluster.py) and reuse its pieces.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from protocol import cluster as wire
from protocol import socketio as sio
from protocol.cluster import ShardedMessage, ShardedType, SubscriptionMode
from protocol.errors import ClusterMessageError
from protocol.socketio import PacketType

from ..config import Settings
from .base import Adapter, BroadcastOptions
from .connection import tls_options
from .cluster import (
    TCP_KEEPALIVE,
    BridgeStats,
    RedisAdapter,
    SupervisedLinks,
    info_figures,
    ClusterUnavailable,
    PendingRequest,
    RemoteSocket,
    is_socket_description,
    local_options,
    wire_options,
)

if TYPE_CHECKING:
    from ..server import Namespace, Server

log = logging.getLogger("gateway.sharded")

Room = Hashable
Address = tuple[str, int]

SLOT_COUNT = 16384
# Redis answers these when the slot map we routed by is out of date (or being rebuilt).
_STALE_MAP_ERRORS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


class SlotMapUnavailable(ClusterUnavailable):
    """No seed node answered CLUSTER SLOTS, or a slot has no owner right now."""


def _is_stale_map(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).split(" ", 1)[0].upper() in _STALE_MAP_ERRORS


def parse_cluster_nodes(nodes: Iterable[str]) -> list[Address]:
    """`host:port` items (REDIS_CLUSTER_NODES) as addresses; raises ValueError naming the bad one."""
    found = []
    for item in nodes:
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {item!r}")
        found.append((host.strip("[]"), int(port)))
    return found


def seed_addresses(settings: Settings) -> list[Address]:
    """REDIS_CLUSTER_NODES, or else the host and port of REDIS_URL (one seed is enough: the
    others are learnt from CLUSTER SLOTS)."""
    if settings.redis_cluster_nodes:
        return parse_cluster_nodes(settings.redis_cluster_nodes)
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        return [(parts.hostname or "127.0.0.1", parts.port or 6379)]
    raise SlotMapUnavailable("sharded mode needs REDIS_CLUSTER_NODES or REDIS_URL")


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which master owns which slot, from one `CLUSTER SLOTS` answer (sorted ranges)."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    owners: tuple[Address, ...]

    @classmethod
    def single(cls, address: Address) -> "SlotMap":
        """A Redis without cluster mode: one node carries every channel."""
        return cls((0,), (SLOT_COUNT - 1,), (address,))

    @classmethod
    def from_reply(cls, reply: list[Any], asked: Address) -> "SlotMap":
        rows = []
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            # An empty host means "the address you reached me on" (Redis 7 may announce none).
            rows.append((start, end, (host or asked[0], int(master[1]))))
        rows.sort()
        return cls(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))

    @property
    def masters(self) -> list[Address]:
        return sorted(set(self.owners))

    def owner(self, slot: int) -> Address:
        i = bisect.bisect_right(self.starts, slot) - 1
        if i < 0 or slot > self.ends[i]:
            raise SlotMapUnavailable(f"slot {slot} is not covered by the cluster")
        return self.owners[i]

    def owner_of(self, channel: bytes) -> Address:
        return self.owner(key_slot(channel))


class ShardLink:
    """One dedicated SSUBSCRIBE connection to one master, read by its own task.

    The link tracks which channels it holds; a SUNSUBSCRIBE it did not ask for (Redis sends one
    when a slot migrates away) or any read error is reported to the bridge, which re-derives the
    placement. The connection itself never retries: the bridge decides where to reconnect.
    """

    def __init__(self, bridge: "ShardedBridge", address: Address, probe_channel: bytes) -> None:
        self.bridge = bridge
        self.address = address
        self.probe_channel = probe_channel
        self.client = bridge.node_client(address, socket_timeout=None)
        self.pubsub = self.client.pubsub()
        self.channels: set[bytes] = set()
        self.leaving: set[bytes] = set()
        self.failed = False
        self.probe_seen = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ShardLink {self.address[0]}:{self.address[1]} channels={len(self.channels)}>"

    async def open(self) -> None:
        await self.pubsub.ssubscribe(self.probe_channel)
        self.task = asyncio.get_running_loop().create_task(self._read(), name=f"shard-link-{self.address[1]}")

    async def subscribe(self, channel: bytes) -> None:
        self.leaving.discard(channel)
        await self.pubsub.ssubscribe(channel)
        self.channels.add(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        if channel not in self.channels:
            return
        self.channels.discard(channel)
        self.leaving.add(channel)
        await self.pubsub.sunsubscribe(channel)

    async def _read(self) -> None:
        bridge = self.bridge
        try:
            while True:
                message = await self.pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                kind = kind.decode() if isinstance(kind, bytes) else kind
                channel = message["channel"]
                if kind == "smessage":
                    if channel == self.probe_channel:
                        self.probe_seen = time.monotonic()
                        bridge.probe_arrived(self)
                    else:
                        bridge.dispatch(channel, message["data"])
                elif kind == "sunsubscribe":
                    if channel in self.leaving:
                        self.leaving.discard(channel)
                    else:
                        # The server dropped us: the slot moved to another master.
                        self.channels.discard(channel)
                        bridge.request_resync(f"server unsubscribed {channel!r} (slot moved)")
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            self.failed = True
            bridge.link_failed(self, exc)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        for closing in (self.pubsub.aclose, self.client.aclose):
            try:
                await asyncio.wait_for(closing(), 1.0)
            except (RedisError, OSError, asyncio.TimeoutError):
                pass


class ShardedBridge(SupervisedLinks):
    """One node's Redis Cluster links, shared by all its namespaces.

    Subscribing: one ShardLink per master; `wanted` (channel -> adapter, role) is what the node
    needs, and `_reconcile` moves every wanted channel onto the link of its slot's owner. A
    supervisor task re-reads the slot map and reconciles on any sign of change, proves each link
    with a probe message SPUBLISHed to a channel hashed into that master's slots, and rebuilds a
    link whose probes stop coming back.

    Publishing: a bounded ordered outbox drained by one writer task, which groups each batch by
    owning master and pipelines it per master; messages refused with MOVED/ASK/CLUSTERDOWN, or
    lost with a connection, go back to the front of the outbox (in order) after the map is
    re-read. Requests whose caller waits (fetch, serverSideEmit with ack) are published at once.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seeds = seed_addresses(settings)
        self.prefix = settings.redis_prefix
        self.mode = SubscriptionMode(settings.redis_subscription_mode)
        self.adapters: dict[str, "ShardedClusterAdapter"] = {}
        self.wanted: dict[bytes, tuple["ShardedClusterAdapter", str]] = {}
        self.placement: dict[bytes, Address] = {}
        self.links: dict[Address, ShardLink] = {}
        self.publishers: dict[Address, aioredis.Redis] = {}
        self.slots: SlotMap | None = None
        self.stats = BridgeStats()
        self.resyncs = 0
        self.pub_up = False
        self.sub_up = False
        self.single_node = False
        self.started = False
        self.outbox: deque[tuple[bytes, bytes, float]] = deque()
        self._outbox_event = asyncio.Event()
        self._resync = asyncio.Event()
        self._lock = asyncio.Lock()  # serialises every change of subscriptions
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._sub_attempts = 0
        self._pub_attempts = 0
        self.node_tag = wire.new_sharded_id()
        self._probe_waiters: dict[Address, asyncio.Future[None]] = {}

    # -- connections ---------------------------------------------------------------------------

    def node_client(self, address: Address, socket_timeout: float | None = 5.0) -> aioredis.Redis:
        """A connection pool to one node that never retries on its own: retrying against a node
        that lost its slots or died would only hide what the supervisor must see."""
        return aioredis.Redis(
            host=address[0],
            port=address[1],
            decode_responses=False,
            socket_connect_timeout=2.0,
            socket_timeout=socket_timeout,
            socket_keepalive=True,
            socket_keepalive_options=TCP_KEEPALIVE,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
            **tls_options(self.settings),  # rediss:// + REDIS_TLS_* apply to every cluster node
        )

    def _publisher(self, address: Address) -> aioredis.Redis:
        client = self.publishers.get(address)
        if client is None:
            # No read timeout, as in the classic bridge: a batch that timed out may still have
            # been executed by a Redis that was only slow, and replaying it would deliver twice.
            client = self.publishers[address] = self.node_client(address, socket_timeout=None)
        return client

    async def refresh_slots(self) -> SlotMap:
        """Read the slot map from the first node that answers (known masters first, then seeds)."""
        candidates = list(dict.fromkeys([*(self.slots.masters if self.slots else ()), *self.seeds]))
        errors = []
        for address in candidates:
            client = self.node_client(address)
            try:
                reply = await asyncio.wait_for(client.execute_command("CLUSTER", "SLOTS"), 3.0)
            except ResponseError as exc:
                if "cluster support disabled" in str(exc).lower():
                    self.slots = SlotMap.single(address)
                    return self.slots
                errors.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc!r}")
                continue
            finally:
                try:
                    await client.aclose()
                except (RedisError, OSError):
                    pass
            if not reply:
                errors.append(f"{address[0]}:{address[1]}: no slots assigned")
                continue
            slots = SlotMap.from_reply(reply, address)
            if slots != self.slots:
                log.info("cluster_slots masters=%s", ",".join(f"{h}:{p}" for h, p in slots.masters))
            self.slots = slots
            for gone in set(self.publishers) - set(slots.masters):
                client = self.publishers.pop(gone)
                asyncio.ensure_future(client.aclose())
            return slots
        raise SlotMapUnavailable("no cluster node answered CLUSTER SLOTS: " + "; ".join(errors))

    def probe_channel_for(self, slots: SlotMap, address: Address) -> bytes:
        """A probe channel of this node whose hash tag puts it in `address`'s slots."""
        base = f"{self.prefix}-gateway-probe#{self.node_tag}#"
        for k in range(SLOT_COUNT * 4):
            tag = str(k)
            if slots.owner(key_slot(tag.encode())) == address:
                return f"{base}{{{tag}}}".encode()
        raise SlotMapUnavailable(f"no slot of {address} found for a probe channel")

    # -- registration --------------------------------------------------------------------------

    def register(self, adapter: "ShardedClusterAdapter") -> None:
        self.adapters[adapter.nsp.name] = adapter
        self.want(adapter.main_channel, adapter, "main")
        self.want(adapter.node_channel, adapter, "node")

    def unregister(self, adapter: "ShardedClusterAdapter") -> None:
        self.adapters.pop(adapter.nsp.name, None)
        for channel, (owner, _) in list(self.wanted.items()):
            if owner is adapter:
                self.unwant(channel)

    def want(self, channel: bytes, adapter: "ShardedClusterAdapter", role: str) -> None:
        self.wanted[channel] = (adapter, role)
        if self.started:
            asyncio.ensure_future(self._apply(channel))

    def unwant(self, channel: bytes) -> None:
        if self.wanted.pop(channel, None) is not None and self.started:
            asyncio.ensure_future(self._apply(channel))

    async def _apply(self, channel: bytes) -> None:
        """Bring one channel's subscription in line with `wanted` (idempotent, so the order in
        which quick join/leave pairs are applied cannot leave a stale subscription)."""
        async with self._lock:
            if not self.sub_up or self.slots is None:
                return  # the next reconcile places it
            try:
                await self._place(channel, self.slots)
            except (RedisError, OSError, ClusterUnavailable) as exc:
                self.request_resync(f"subscription change failed: {exc!r}")

    async def _place(self, channel: bytes, slots: SlotMap) -> None:
        current = self.placement.get(channel)
        if channel not in self.wanted:
            if current is not None:
                del self.placement[channel]
                link = self.links.get(current)
                if link is not None and not link.failed:
                    await link.unsubscribe(channel)
            return
        owner = slots.owner_of(channel)
        link = self.links.get(owner)
        if link is None or link.failed:
            raise SlotMapUnavailable(f"no live link to {owner[0]}:{owner[1]} yet")
        if current == owner and channel in link.channels:
            return
        if current is not None and current != owner:
            old = self.links.get(current)
            if old is not None and not old.failed:
                await old.unsubscribe(channel)
        await link.subscribe(channel)
        self.placement[channel] = owner

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the links; returns within ~2 s even when the cluster is down (the node serves
        local clients meanwhile and joins when the cluster appears)."""
        if self.started:
            return
        self.started = True
        await self._start_links(self._supervisor(), self._publisher_loop(), "sharded")

    async def close(self) -> None:
        self._resync.set()
        await self._stop_links()
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()
        for client in list(self.publishers.values()):
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass
        self.publishers.clear()
        self.sub_up = self.pub_up = False

    # -- subscriber supervision ----------------------------------------------------------------

    def request_resync(self, why: str) -> None:
        if not self._resync.is_set():
            log.info("cluster_resync reason=%r", why)
        self._resync.set()

    def link_failed(self, link: ShardLink, exc: BaseException) -> None:
        if self._closing:
            return
        self.sub_up = False
        log.warning("cluster_shard_link_failed node=%s:%d error=%r", link.address[0], link.address[1], str(exc))
        self.request_resync("link failed")

    def probe_arrived(self, link: ShardLink) -> None:
        waiter = self._probe_waiters.get(link.address)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _reconcile(self) -> None:
        """Re-read the slot map, give every master a healthy link, and put every wanted channel
        on its owner's link (moving those whose slot changed hands)."""
        async with self._lock:
            slots = await self.refresh_slots()
            masters = set(slots.masters)
            for address, link in list(self.links.items()):
                stale_probe = address in masters and slots.owner_of(link.probe_channel) != address
                if address not in masters or link.failed or stale_probe:
                    del self.links[address]
                    for channel, placed in list(self.placement.items()):
                        if placed == address:
                            del self.placement[channel]
                    await link.close()
            for address in sorted(masters - set(self.links)):
                link = ShardLink(self, address, self.probe_channel_for(slots, address))
                try:
                    await link.open()
                except BaseException:
                    await link.close()
                    raise
                self.links[address] = link
            for channel in list(self.placement):
                if channel not in self.wanted:
                    await self._place(channel, slots)
            for channel in list(self.wanted):
                await self._place(channel, slots)

    async def _verify(self) -> None:
        """Each link proves itself: a probe SPUBLISHed to its master must come back through it,
        and Redis must count our subscription of every namespace's main channel."""
        loop = asyncio.get_running_loop()
        for address, link in list(self.links.items()):
            waiter = self._probe_waiters[address] = loop.create_future()
            deadline = time.monotonic() + 3.0
            try:
                while not waiter.done():
                    await self._publisher(address).spublish(link.probe_channel, self.node_tag.encode())
                    try:
                        await asyncio.wait_for(asyncio.shield(waiter), 0.2)
                    except asyncio.TimeoutError:
                        pass
                    if link.failed:
                        raise ConnectionError(f"link to {address} failed during verification")
                    if time.monotonic() > deadline:
                        raise ConnectionError(f"probe through {address[0]}:{address[1]} did not come back")
            finally:
                self._probe_waiters.pop(address, None)
        for adapter in list(self.adapters.values()):
            if await self.numsub(adapter.main_channel, require_up=False) < 1:
                raise ConnectionError(f"main channel {adapter.main_channel!r} not subscribed")

    async def _watch(self) -> None:
        """Probe every link until something asks for a resync or a link goes silent."""
        watchdog = self.settings.watchdog_ms / 1000
        probe_every = max(0.1, watchdog / 3)
        while not self._closing:
            try:
                await asyncio.wait_for(self._resync.wait(), probe_every)
                return
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            for address, link in list(self.links.items()):
                if link.failed:
                    return
                try:
                    receivers = await asyncio.wait_for(self._publisher(address).spublish(link.probe_channel, b"watchdog"), probe_every)
                except asyncio.TimeoutError:
                    receivers = None  # Redis does not answer: judged by the silence below
                except ResponseError as exc:
                    if _is_stale_map(exc):
                        self.request_resync(f"probe refused: {exc}")
                        return
                    raise
                if receivers == 0:
                    link.failed = True
                    raise ConnectionError(f"{address[0]}:{address[1]} no longer counts our subscriber")
                silent = now - link.probe_seen
                if silent > watchdog:
                    link.failed = True
                    self.stats.watchdog_rebuilds += 1
                    raise ConnectionError(f"{address[0]}:{address[1]}: no probe for {silent:.1f}s")

    async def _supervisor(self) -> None:
        while not self._closing:
            try:
                self._resync.clear()
                await self._reconcile()
                await self._verify()
                async with self._lock:
                    # Channels wanted while the links were being rebuilt were left to this
                    # sweep (`_apply` does nothing until sub_up); from here on it places them.
                    assert self.slots is not None
                    for channel in set(self.wanted) | set(self.placement):
                        await self._place(channel, self.slots)
                    restored = not self.sub_up
                    self.sub_up = True
                if restored:
                    self._link_restored("subscriber", self._sub_attempts)
                self._sub_attempts = 0
                await self._watch()
                if not self._closing:
                    self.resyncs += 1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError, ClusterUnavailable, asyncio.TimeoutError) as exc:
                self.sub_up = False
                self._sub_attempts += 1
                self._failed_attempt("subscriber", self._sub_attempts, exc)
                await asyncio.sleep(self.backoff(self._sub_attempts))

    # -- incoming ------------------------------------------------------------------------------

    def dispatch(self, channel: bytes, payload: bytes) -> None:
        self.stats.received += 1
        target = self.wanted.get(channel)
        if target is None:
            return  # a late message on a channel we just released
        adapter, role = target
        try:
            adapter.on_message(payload, response=role == "node")
        except ClusterMessageError as exc:
            self.stats.bad_messages += 1
            log.warning("cluster_bad_message channel=%r error=%r", channel, str(exc))
        except Exception:
            self.stats.bad_messages += 1
            log.exception("cluster_message_failed channel=%r", channel)

    # -- publishing ----------------------------------------------------------------------------

    async def _owner(self, channel: bytes) -> Address:
        slots = self.slots or await self.refresh_slots()
        return slots.owner_of(channel)

    async def publish_now(self, channel: bytes | str, payload: bytes) -> None:
        """SPUBLISH bypassing the outbox (requests whose caller waits for answers); follows one
        MOVED by re-reading the slot map."""
        if isinstance(channel, str):
            channel = channel.encode()
        if not self.pub_up:
            raise ClusterUnavailable("Redis Cluster publisher is down")
        timeout = self.settings.requests_timeout_ms / 1000
        for attempt in (1, 2):
            try:
                client = self._publisher(await self._owner(channel))
                await asyncio.wait_for(client.spublish(channel, payload), timeout)
                self.stats.published += 1
                return
            except ResponseError as exc:
                if attempt == 2 or not _is_stale_map(exc):
                    raise ClusterUnavailable(f"SPUBLISH refused: {exc}") from exc
                await self.refresh_slots()
                self.request_resync(f"publish refused: {exc}")
            except asyncio.TimeoutError as exc:
                raise ClusterUnavailable("Redis Cluster does not answer") from exc
            except (RedisError, OSError) as exc:
                raise ClusterUnavailable(f"SPUBLISH failed: {exc}") from exc

    async def numsub(self, channel: bytes, require_up: bool = True) -> int:
        """`PUBSUB SHARDNUMSUB` on the master owning the channel: how many servers listen."""
        if require_up and not (self.pub_up and self.sub_up):
            raise ClusterUnavailable("Redis Cluster link is down")
        timeout = self.settings.requests_timeout_ms / 1000
        for attempt in (1, 2):
            try:
                client = self._publisher(await self._owner(channel))
                reply = await asyncio.wait_for(client.execute_command("PUBSUB", "SHARDNUMSUB", channel), timeout)
                return int(reply[1]) if len(reply) >= 2 else 0
            except ResponseError as exc:
                if attempt == 2 or not _is_stale_map(exc):
                    raise ClusterUnavailable(f"SHARDNUMSUB refused: {exc}") from exc
                await self.refresh_slots()
            except asyncio.TimeoutError as exc:
                raise ClusterUnavailable("Redis Cluster does not answer") from exc
            except (RedisError, OSError) as exc:
                raise ClusterUnavailable(f"SHARDNUMSUB failed: {exc}") from exc
        return 0

    async def _send_group(self, address: Address, batch: list[tuple[bytes, bytes, float]]) -> list[Any]:
        pipe = self._publisher(address).pipeline(transaction=False)
        for channel, payload, _ in batch:
            pipe.spublish(channel, payload)
        return await pipe.execute(raise_on_error=False)

    async def _publisher_loop(self) -> None:
        while not self._closing or self.outbox:
            try:
                slots = self.slots or await self.refresh_slots()
                await self._publisher(slots.masters[0]).ping()
                if not self.pub_up:
                    self.pub_up = True
                    self._link_restored("publisher", self._pub_attempts)
                self._pub_attempts = 0
                while True:
                    batch = await self._next_batch()
                    if batch is None:
                        return
                    await self._send_batch(batch)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError, ClusterUnavailable) as exc:
                await self._publisher_failed(exc)
                try:
                    await self.refresh_slots()
                except ClusterUnavailable:
                    pass

    async def _send_batch(self, batch: list[tuple[bytes, bytes, float]]) -> None:
        """Publish one batch, one pipeline per master in parallel; whatever was not accepted
        goes back to the front of the outbox in its original order."""
        started = time.perf_counter()
        try:
            slots = self.slots or await self.refresh_slots()
            groups: dict[Address, list[int]] = {}
            for i, (channel, _, _) in enumerate(batch):
                groups.setdefault(slots.owner_of(channel), []).append(i)
        except BaseException:
            self.outbox.extendleft(reversed(batch))
            raise
        addresses = list(groups)
        results = await asyncio.gather(
            *(self._send_group(a, [batch[i] for i in groups[a]]) for a in addresses), return_exceptions=True
        )
        failed: list[int] = []
        stale: BaseException | None = None
        broken: BaseException | None = None
        for address, result in zip(addresses, results):
            indexes = groups[address]
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    failed.extend(indexes)
                    broken = result
                    continue
                failed.extend(indexes)
                if _is_stale_map(result):
                    stale = result
                else:
                    broken = result
                continue
            for i, reply in zip(indexes, result):
                if isinstance(reply, BaseException):
                    failed.append(i)
                    if _is_stale_map(reply):
                        stale = reply
                    else:
                        self.stats.publish_errors += 1
                        log.warning("cluster_publish_refused channel=%r error=%r", batch[i][0], str(reply))
                        failed.pop()  # refused for good (not a routing problem): do not retry
        sent = len(batch) - len(failed)
        self.stats.published += sent
        if sent:
            self.stats.observe_publish(time.perf_counter() - started)
        if failed:
            failed.sort()
            self.outbox.extendleft(reversed([batch[i] for i in failed]))
        if isinstance(broken, asyncio.CancelledError):
            raise broken
        if broken is not None:
            raise ConnectionError(f"publish to a master failed: {broken!r}")
        if stale is not None:
            self.stats.publish_errors += 1
            await self.refresh_slots()
            self.request_resync(f"publish refused: {stale}")

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        status = "healthy" if self.pub_up and self.sub_up else "degraded"
        return {
            "mode": "single-node" if self.single_node else "redis-cluster",
            "status": status,
            "publisher": "up" if self.pub_up else "down",
            "subscriber": "up" if self.sub_up else "down",
            "outbox": len(self.outbox),
            "masters": [f"{h}:{p}" for h, p in (self.slots.masters if self.slots else ())],
            "shard_channels": len(self.placement),
        }

    async def redis_info(self) -> dict[str, Any]:
        if self.slots is None or not self.pub_up:
            return {"available": False}
        try:
            info = await asyncio.wait_for(self._publisher(self.slots.masters[0]).info(), 1.0)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            return {"available": False, "error": str(exc)}
        return {"available": True, "masters": len(self.slots.masters), **info_figures(info)}


# -- per-namespace adapter -------------------------------------------------------------------------


class ShardedClusterAdapter(RedisAdapter):
    """An in-memory adapter that is also a member of a sharded Redis Cluster."""

    def __init__(self, nsp: "Namespace", bridge: ShardedBridge) -> None:
        super().__init__(nsp)
        self.bridge = bridge
        self.uid = wire.new_sharded_id()
        self.prefix = bridge.prefix
        self.mode = bridge.mode
        name = nsp.name
        self.main_channel = wire.sharded_channel(self.prefix, name).encode()
        self.node_channel = wire.sharded_node_channel(self.prefix, name, self.uid).encode()
        self.pending: dict[str, PendingRequest] = {}
        self.requests_timeout = bridge.settings.requests_timeout_ms / 1000
        self.registry.on_room_created = self._room_created
        self.registry.on_room_deleted = self._room_deleted
        bridge.register(self)

    # -- dynamic room subscriptions ------------------------------------------------------------

    def room_channel(self, room: Room) -> bytes:
        return wire.sharded_room_channel(self.prefix, self.nsp.name, room).encode()  # type: ignore[arg-type]

    def _room_created(self, room: Room) -> None:
        if wire.sharded_room_subscribed(room, self.mode):  # type: ignore[arg-type]
            self.bridge.want(self.room_channel(room), self, "room")

    def _room_deleted(self, room: Room) -> None:
        if wire.sharded_room_subscribed(room, self.mode):  # type: ignore[arg-type]
            self.bridge.unwant(self.room_channel(room))

    # -- outgoing ------------------------------------------------------------------------------

    def _publish(self, message: ShardedMessage) -> None:
        channel = wire.sharded_publish_channel(self.prefix, self.nsp.name, message, mode=self.mode)
        self.bridge.publish(channel, wire.encode_sharded(message))

    def _respond(self, requester: str, message: ShardedMessage) -> None:
        self.bridge.publish(wire.sharded_node_channel(self.prefix, self.nsp.name, requester), wire.encode_sharded(message))

    def broadcast(self, packet: sio.Packet, opts: BroadcastOptions) -> None:
        self.deliver(packet, opts)
        if not opts.local:
            self._publish(wire.sharded_broadcast(self.uid, self.nsp.name, packet.data, wire_options(opts, with_flags=True)))

    def broadcast_with_ack(
        self, packet: sio.Packet, opts: BroadcastOptions, on_client_count: Callable[[int], None], on_ack: Callable[[Any], None]
    ) -> None:
        data = list(packet.data)
        super().broadcast_with_ack(packet, opts, on_client_count, on_ack)
        if opts.local:
            return
        request_id = wire.new_sharded_id()
        timeout = opts.timeout if opts.timeout is not None else 5.0
        entry = PendingRequest(ShardedType.BROADCAST, expected=0, on_client_count=on_client_count, on_ack=on_ack)  # type: ignore[arg-type]
        self.pending[request_id] = entry
        entry.timer = asyncio.get_running_loop().call_later(timeout, self._forget, request_id)
        self._publish(wire.sharded_broadcast(self.uid, self.nsp.name, data, wire_options(opts, with_flags=True), request_id))

    def add_sockets(self, opts: BroadcastOptions, rooms: list[Room]) -> None:
        super().add_sockets(opts, rooms)
        if not opts.local:
            self._publish(wire.sharded_sockets_join(self.uid, self.nsp.name, wire_options(opts, with_flags=True), rooms))  # type: ignore[arg-type]

    def del_sockets(self, opts: BroadcastOptions, rooms: list[Room]) -> None:
        super().del_sockets(opts, rooms)
        if not opts.local:
            self._publish(wire.sharded_sockets_leave(self.uid, self.nsp.name, wire_options(opts, with_flags=True), rooms))  # type: ignore[arg-type]

    def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        super().disconnect_sockets(opts, close)
        if not opts.local:
            self._publish(wire.sharded_disconnect_sockets(self.uid, self.nsp.name, wire_options(opts, with_flags=True), close))

    # -- requests we issue ---------------------------------------------------------------------

    async def server_count(self) -> int:
        return max(1, await self.bridge.numsub(self.main_channel))

    async def _request(self, kind: ShardedType, build: Callable[[str], ShardedMessage], timeout: float | None = None) -> list[Any] | None:
        """Publish a request on the main channel and wait for SHARDNUMSUB-1 answers."""
        expected = await self.bridge.numsub(self.main_channel) - 1
        if expected <= 0:
            return None
        request_id = wire.new_sharded_id()
        loop = asyncio.get_running_loop()
        entry = PendingRequest(kind, expected=expected, future=loop.create_future())  # type: ignore[arg-type]
        self.pending[request_id] = entry
        entry.timer = loop.call_later(timeout or self.requests_timeout, self._expire, request_id)
        try:
            await self.bridge.publish_now(self.main_channel, wire.encode_sharded(build(request_id)))
            return await entry.future  # type: ignore[misc]
        finally:
            self._forget(request_id)

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[Any]:
        local = list(self.select(opts))
        if opts.local:
            return local
        remote = await self._request(
            ShardedType.FETCH_SOCKETS,
            lambda rid: wire.sharded_fetch_sockets(self.uid, self.nsp.name, wire_options(opts, with_flags=True), rid),
            opts.timeout,
        )
        for description in remote or ():
            local.append(RemoteSocket(self, description))  # type: ignore[arg-type]
        return local

    async def server_side_emit(self, data: list[Any], ack: bool, timeout: float | None = None) -> list[Any]:
        if not ack:
            self._publish(wire.sharded_server_side_emit(self.uid, self.nsp.name, data))
            return []
        answers = await self._request(
            ShardedType.SERVER_SIDE_EMIT,
            lambda rid: wire.sharded_server_side_emit(self.uid, self.nsp.name, data, rid),
            timeout,
        )
        return answers or []

    # -- incoming ------------------------------------------------------------------------------

    def on_message(self, payload: bytes, response: bool = False) -> None:
        message = wire.decode_sharded(payload)
        if message.uid == self.uid or message.nsp != self.nsp.name:
            return
        T = ShardedType
        kind = message.type
        if response or kind in (T.FETCH_SOCKETS_RESPONSE, T.SERVER_SIDE_EMIT_RESPONSE, T.BROADCAST_CLIENT_COUNT, T.BROADCAST_ACK):
            self._on_response(message)
            return
        data = message.data or {}
        if kind is T.BROADCAST:
            self._on_broadcast(message, data)
        elif kind is T.SOCKETS_JOIN:
            Adapter.add_sockets(self, local_options(message.opts), list(data["rooms"]))
        elif kind is T.SOCKETS_LEAVE:
            Adapter.del_sockets(self, local_options(message.opts), list(data["rooms"]))
        elif kind is T.DISCONNECT_SOCKETS:
            Adapter.disconnect_sockets(self, local_options(message.opts), bool(data.get("close")))
        elif kind is T.FETCH_SOCKETS:
            sockets = [self._describe(s) for s in self.select(local_options(message.opts))]
            self._respond(message.uid, wire.sharded_fetch_sockets_response(self.uid, self.nsp.name, data["requestId"], sockets))
        elif kind is T.SERVER_SIDE_EMIT:
            self._on_server_side_emit(message, data)

    def _on_broadcast(self, message: ShardedMessage, data: dict[str, Any]) -> None:
        packet_map = data["packet"]
        event_data = packet_map.get("data")
        wire_opts = message.opts
        flags = (wire_opts.flags if wire_opts else None) or {}
        opts = local_options(wire_opts, flags)
        packet = sio.Packet(PacketType.EVENT, self.nsp.name, event_data)
        request_id = data.get("requestId")
        if request_id is None:
            self.stats.broadcasts_remote += 1
            self.deliver(packet, opts)
            return
        requester = message.uid

        def on_client_count(n: int) -> None:
            self._respond(requester, wire.sharded_client_count(self.uid, self.nsp.name, request_id, n))

        def on_ack(value: Any) -> None:
            self._respond(requester, wire.sharded_broadcast_ack(self.uid, self.nsp.name, request_id, value))

        Adapter.broadcast_with_ack(self, packet, opts, on_client_count, on_ack)

    def _on_server_side_emit(self, message: ShardedMessage, data: dict[str, Any]) -> None:
        request_id = data.get("requestId")
        requester = message.uid
        self._serve_server_side_emit(
            data["packet"],
            None if request_id is None else lambda value: self._respond(requester, wire.sharded_server_side_emit_response(self.uid, self.nsp.name, request_id, value)),
        )

    def _on_response(self, message: ShardedMessage) -> None:
        request_id = message.request_id
        entry = self.pending.get(request_id) if request_id is not None else None
        if entry is None:
            return  # someone else's request, or one that completed or timed out
        T = ShardedType
        data = message.data or {}
        kind = message.type
        if entry.type is T.BROADCAST:
            if kind is T.BROADCAST_CLIENT_COUNT and entry.on_client_count is not None:
                entry.on_client_count(int(data.get("clientCount") or 0))
            elif kind is T.BROADCAST_ACK and entry.on_ack is not None:
                entry.on_ack(data.get("packet"))
            return
        if entry.type is T.FETCH_SOCKETS and kind is T.FETCH_SOCKETS_RESPONSE:
            sockets = data.get("sockets") or []
            for description in sockets:
                if not is_socket_description(description):
                    raise ClusterMessageError(f"fetch response with a malformed socket description: {description!r:.200}")
            entry.responses.extend(sockets)
        elif entry.type is T.SERVER_SIDE_EMIT and kind is T.SERVER_SIDE_EMIT_RESPONSE:
            entry.responses.append(data.get("packet"))
        else:
            return
        entry.received += 1
        if entry.received >= entry.expected and entry.future is not None and not entry.future.done():
            entry.future.set_result(entry.responses)

    # -- metrics -------------------------------------------------------------------------------

    def collect_metrics(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield from super().collect_metrics()
        bridge = self.bridge
        yield GaugeMetricFamily("sio_gateway_redis_shard_channels", "Shard channels this node is subscribed to", value=len(bridge.placement))
        yield GaugeMetricFamily("sio_gateway_redis_cluster_masters", "Masters in the last slot map read", value=len(bridge.slots.masters) if bridge.slots else 0)
        yield CounterMetricFamily("sio_gateway_redis_shard_resyncs", "Times subscriptions were re-placed after a slot map change", value=bridge.resyncs)


def sharded_adapter_factory(settings: Settings) -> Callable[["Namespace"], Adapter]:
    """Adapters for every namespace of one server, sharing that server's ShardedBridge."""

    def factory(nsp: "Namespace") -> Adapter:
        server: "Server" = nsp.server
        bridge = getattr(server, "cluster_bridge", None)
        if bridge is None:
            bridge = ShardedBridge(settings)
            server.cluster_bridge = bridge  # type: ignore[attr-defined]
        return ShardedClusterAdapter(nsp, bridge)

    return factory


__all__ = [
    "ShardLink",
    "ShardedBridge",
    "ShardedClusterAdapter",
    "SlotMap",
    "SlotMapUnavailable",
    "parse_cluster_nodes",
    "seed_addresses",
    "sharded_adapter_factory",
]
