"""The sharded Redis transport: SPUBLISH / SSUBSCRIBE over a Redis Cluster, wire-compatible with
@socket.io/redis-adapter's `createShardedAdapter` (protocol/cluster/sharded.py is its codec).

One node cannot hear a whole sharded cluster on one connection: `ShardedTransport` keeps one
subscriber link per master (slots.py) and places every channel on the link of the master that owns
its slot, as read from `CLUSTER SLOTS`. That placement is re-derived whenever the map may have
changed (a MOVED reply, a server-initiated SUNSUBSCRIBE when a slot migrates, a dead link after a
failover), so subscriptions follow the slots without losing rooms: the set of channels the node
*wants* is the source of truth, and the links are reconciled against it. In the dynamic
subscription modes a room's channel is wanted while the room has members here (`watch`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from protocol.cluster import Broadcast, DisconnectSockets, FetchSockets, Message, Response, Room, ServerSideEmit, SocketsJoin, SocketsLeave, SubscriptionMode, new_sharded_id, sharded, sharded_channel, sharded_node_channel, sharded_room_channel, sharded_room_subscribed
from protocol.errors import ClusterMessageError
from protocol.resp import key_slot

from ..config import Settings
from ..redis.client import node_client
from ..redis.stream import PublishStream
from ..redis.supervision import QueuedMessage, Verdict, probe_interval
from .slots import SLOT_COUNT, Address, ShardLink, SlotMap, SlotMapUnavailable, is_stale_map, seed_addresses
from .transport import TCP_KEEPALIVE, ClusterMember, ClusterUnavailable, SupervisedLinks, info_figures

log = logging.getLogger("gateway.sharded")

# Bound of the (namespace, room) -> publish channel cache; cleared when full (private rooms are
# one-off names).
BROADCAST_CHANNELS_CACHED = 65536


class ShardedTransport(SupervisedLinks):
    """SPUBLISH / SSUBSCRIBE over a Redis Cluster: the wire format of @socket.io/redis-adapter's
    `createShardedAdapter`. One node's Redis Cluster links, shared by all its namespaces.

    Subscribing: one ShardLink per master; `wanted` (channel -> namespace member) is what the node
    needs, and `_reconcile` moves every wanted channel onto the link of its slot's owner. A
    supervisor task re-reads the slot map and reconciles on any sign of change, proves each link
    with a probe message SPUBLISHed to a channel hashed into that master's slots, and rebuilds a
    link whose probes stop coming back.

    Publishing: a bounded ordered outbox drained by one writer task, which groups each batch by
    owning master and pipelines it per master; messages refused with MOVED/ASK/CLUSTERDOWN, or
    lost with a connection, go back to the front of the outbox (in order) after the map is
    re-read. Requests whose caller waits (fetch, serverSideEmit with ack) are published at once.
    """

    watches_rooms = True
    carries = frozenset({Broadcast, SocketsJoin, SocketsLeave, DisconnectSockets, FetchSockets, ServerSideEmit})

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.seeds = seed_addresses(settings)
        self.prefix = settings.redis_prefix
        self.mode = SubscriptionMode(settings.redis_subscription_mode)
        self.members: dict[str, ClusterMember] = {}
        self.main_channels: dict[str, bytes] = {}
        # channel -> (member, answers only, the tails of that member's own messages or None on
        # its answer channel): a node hears its own broadcasts back on the rooms it has.
        self.wanted: dict[bytes, tuple[ClusterMember, bool, tuple[bytes, bytes] | None]] = {}
        self.own_tails: dict[str, tuple[bytes, bytes]] = {}
        self.placement: dict[bytes, Address] = {}
        self.links: dict[Address, ShardLink] = {}
        self.publishers: dict[Address, aioredis.Redis] = {}  # probes, SHARDNUMSUB, requests
        self.publish_streams: dict[Address, PublishStream] = {}  # the outbox's pipelines
        self.slots: SlotMap | None = None
        self.resyncs = 0
        self._resync = asyncio.Event()
        self._lock = asyncio.Lock()  # serialises every change of subscriptions
        self.node_tag = new_sharded_id()
        self._probe_waiters: dict[Address, asyncio.Future[None]] = {}
        self._rebuilt_links = 0  # watchdog rebuilds of links already replaced
        self._broadcast_channels: dict[tuple[str, str], bytes] = {}  # (nsp, room) -> its publish channel

    def new_id(self) -> str:
        return new_sharded_id()

    def figures(self) -> Iterable[tuple[str, str, str, float]]:
        yield "gauge", "sio_gateway_redis_shard_channels", "Shard channels this node is subscribed to", len(self.placement)
        yield "gauge", "sio_gateway_redis_cluster_masters", "Masters in the last slot map read", len(self.slots.masters) if self.slots else 0
        yield "counter", "sio_gateway_redis_shard_resyncs", "Times subscriptions were re-placed after a slot map change", self.resyncs

    # -- connections ---------------------------------------------------------------------------

    def node_client(self, address: Address, socket_timeout: float | None = 5.0) -> aioredis.Redis:
        """A client of one cluster node that never retries on its own (the supervisor decides)."""
        return node_client(self.settings, address, socket_timeout=socket_timeout, socket_keepalive_options=TCP_KEEPALIVE)

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
            for gone in set(self.publish_streams) - set(slots.masters):
                asyncio.ensure_future(self.publish_streams.pop(gone).aclose())
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

    def register(self, member: ClusterMember) -> None:
        name = member.name
        self.members[name] = member
        main = self.main_channels[name] = sharded_channel(self.prefix, name).encode()
        self.own_tails[name] = sharded.own_message_tails(member.uid, name)
        self.want(main, member, False)
        self.want(sharded_node_channel(self.prefix, name, member.uid).encode(), member, True)

    def unregister(self, member: ClusterMember) -> None:
        self.members.pop(member.name, None)
        self.main_channels.pop(member.name, None)
        self.own_tails.pop(member.name, None)
        for channel, (owner, *_) in list(self.wanted.items()):
            if owner is member:
                self.unwant(channel)

    def watch(self, member: ClusterMember, room: Room) -> None:
        """A room got its first member here: subscribe to its channel (dynamic modes)."""
        if sharded_room_subscribed(room, self.mode):
            self.want(sharded_room_channel(self.prefix, member.name, room).encode(), member, False)

    def unwatch(self, member: ClusterMember, room: Room) -> None:
        if sharded_room_subscribed(room, self.mode):
            self.unwant(sharded_room_channel(self.prefix, member.name, room).encode())

    def want(self, channel: bytes, member: ClusterMember, answers_only: bool) -> None:
        self.wanted[channel] = (member, answers_only, None if answers_only else self.own_tails.get(member.name))
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
        for stream in list(self.publish_streams.values()):
            await stream.aclose()
        self.publish_streams.clear()
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
                    self._rebuilt_links += link.watchdog.rebuilds
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
        for channel in list(self.main_channels.values()):
            if await self.numsub(channel, require_up=False) < 1:
                raise ConnectionError(f"main channel {channel!r} not subscribed")

    async def _watch(self) -> None:
        """Probe every link until something asks for a resync or a link goes silent; count the
        nodes on each namespace's main channel once a round (what a publish there should reach)."""
        every = probe_interval(self.settings.watchdog_ms / 1000)
        while not self._closing:
            try:
                await asyncio.wait_for(self._resync.wait(), every)
                return
            except asyncio.TimeoutError:
                pass
            for address, link in list(self.links.items()):
                if link.failed:
                    return
                sent = time.monotonic()
                link.watchdog.probe_sent(sent)
                try:
                    receivers = await asyncio.wait_for(self._publisher(address).spublish(link.probe_channel, b"watchdog"), every)
                except asyncio.TimeoutError:
                    pass  # Redis does not answer: judged by the silence below
                except ResponseError as exc:
                    if is_stale_map(exc):
                        self.request_resync(f"probe refused: {exc}")
                        return
                    raise
                else:
                    link.watchdog.probe_acked(sent, time.monotonic(), int(receivers))
                if link.watchdog.check(time.monotonic()) is Verdict.LOST:
                    link.failed = True
                    raise ConnectionError(f"{address[0]}:{address[1]}: {link.watchdog.reason}")
            if self.pub_up and not self._pub_attempts:
                try:
                    counts = await self.count_subscribers(list(self.main_channels.values()))
                except (ClusterUnavailable, asyncio.TimeoutError):
                    continue
                self.note_subscribed(counts, time.monotonic())

    async def count_subscribers(self, channels: list[bytes]) -> dict[bytes, int]:
        return {channel: await self.numsub(channel, require_up=False) for channel in channels}

    def _expected(self, channel: bytes) -> int | None:
        """Nodes a publish on `channel` should reach: a namespace's main channel is heard by
        every node of it; room and node channels by some (None)."""
        return self.subscribed.get(channel)

    @property
    def watchdog_rebuilds(self) -> int:
        return self._rebuilt_links + sum(link.watchdog.rebuilds for link in self.links.values())

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
                    self._link_restored("subscriber")
                await self._watch()
                if not self._closing:
                    self.resyncs += 1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError, ClusterUnavailable, asyncio.TimeoutError) as exc:
                await asyncio.sleep(self._failed_attempt("subscriber", self._sub_attempts + 1, exc))

    # -- incoming ------------------------------------------------------------------------------

    def dispatch(self, channel: bytes, payload: bytes) -> None:
        """Route one message of a shard link to its namespace; a malformed one is counted and
        dropped, nothing escapes."""
        self.stats.received += 1
        target = self.wanted.get(channel)
        if target is None:
            return  # a late message on a channel we just released
        member, answers_only, own = target
        if own is not None and payload.endswith(own):
            return  # our own message back (the envelope ends with uid and nsp): never decoded
        try:
            message = sharded.decode_message(payload)
            if message is None:
                return
            kind = type(message)
            if kind is Broadcast and not answers_only:
                member.on_broadcast(message)  # type: ignore[arg-type]
            elif not answers_only or kind is Response:
                member.on_message(message)
        except ClusterMessageError as exc:
            self.stats.bad_messages += 1
            log.warning("cluster_bad_message channel=%r error=%r", channel, str(exc))
        except Exception:
            self.stats.bad_messages += 1
            log.exception("cluster_message_failed channel=%r", channel)

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        if type(message) is Broadcast and message.request_id is None:
            rooms = message.opts.rooms
            if len(rooms) == 1 and type(rooms[0]) is str:
                # `to(room).emit`, the broadcast path: its channel (room or main, by the mode)
                # read from a small cache instead of being spelled and encoded per publish.
                key = (message.nsp, rooms[0])
                channel = self._broadcast_channels.get(key)
                if channel is None:
                    channel = sharded.message_channel(self.prefix, message, self.mode).encode()
                    if len(self._broadcast_channels) >= BROADCAST_CHANNELS_CACHED:
                        self._broadcast_channels.clear()
                    self._broadcast_channels[key] = channel
                self.enqueue(channel, sharded.encode_message(message))
                return
        self.enqueue(sharded.message_channel(self.prefix, message, self.mode).encode(), sharded.encode_message(message))

    def publish_response(self, requester: str | None, message: Response) -> None:
        if requester is None:
            return  # nobody to answer (the sharded format always names the requester)
        channel = sharded.message_channel(self.prefix, message, self.mode, requester)
        self.enqueue(channel.encode(), sharded.encode_message(message))

    async def server_count(self, nsp: str) -> int:
        return await self.numsub(self.main_channels[nsp])

    async def _owner(self, channel: bytes) -> Address:
        slots = self.slots or await self.refresh_slots()
        return slots.owner_of(channel)

    async def publish_now(self, message: Message) -> None:
        """SPUBLISH bypassing the outbox (requests whose caller waits for answers); follows one
        MOVED by re-reading the slot map."""
        channel = sharded.message_channel(self.prefix, message, self.mode).encode()
        payload = sharded.encode_message(message)
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
                if attempt == 2 or not is_stale_map(exc):
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
                if attempt == 2 or not is_stale_map(exc):
                    raise ClusterUnavailable(f"SHARDNUMSUB refused: {exc}") from exc
                await self.refresh_slots()
            except asyncio.TimeoutError as exc:
                raise ClusterUnavailable("Redis Cluster does not answer") from exc
            except (RedisError, OSError) as exc:
                raise ClusterUnavailable(f"SHARDNUMSUB failed: {exc}") from exc
        return 0

    async def _send_group(self, address: Address, batch: list[QueuedMessage]) -> list[Any]:
        """SPUBLISH a group on the master's publish stream: one write, the replies in order (a
        receiver count, or a RespError such as MOVED for `_send_batch` to route). A stream that
        failed or was interrupted may hold half a reply: it is closed, the next batch opens a
        new one."""
        stream = self.publish_streams.get(address)
        if stream is None:
            stream = self.publish_streams[address] = PublishStream(self.settings, address=address, keepalive=TCP_KEEPALIVE)
        try:
            return await stream.spublish_batch(batch)
        except BaseException:
            if self.publish_streams.get(address) is stream:
                del self.publish_streams[address]
            await stream.aclose()
            raise

    async def _publisher_loop(self) -> None:
        while not self._closing or self.outbox:
            try:
                slots = self.slots or await self.refresh_slots()
                await self._publisher(slots.masters[0]).ping()
                if self._pub_attempts and self.outbox:
                    self.gate_pending = True  # replay once the other nodes listen again
                if not self.pub_up:
                    self._link_restored("publisher")
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

    async def _send_batch(self, batch: list[QueuedMessage]) -> None:
        """Publish one batch, one pipeline per master in parallel; whatever was not accepted
        goes back to the front of the outbox in its original order."""
        started = time.perf_counter()
        try:
            slots = self.slots or await self.refresh_slots()
            groups: dict[Address, list[int]] = {}
            for i, (channel, _, _) in enumerate(batch):
                groups.setdefault(slots.owner_of(channel), []).append(i)
        except BaseException:
            self.outbox.requeue(batch)
            raise
        addresses = list(groups)
        generation = self.sub_generation
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
                if is_stale_map(result):
                    stale = result
                else:
                    broken = result
                continue
            most = max(self.subscribed.values(), default=0)
            if most > 1 and any(type(reply) is int and reply < most for reply in result):
                self.count_short([batch[i] for i in indexes], result, self._expected, generation)
            for i, reply in zip(indexes, result):
                if isinstance(reply, BaseException):
                    failed.append(i)
                    if is_stale_map(reply):
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
            self.outbox.requeue([batch[i] for i in failed])
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
        return {
            **self.node.health(len(self.outbox), "redis-cluster"),
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
