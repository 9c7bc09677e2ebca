"""The classic Redis transport: PUBLISH / PSUBSCRIBE, wire-compatible with @socket.io/redis-adapter
8.3's `createAdapter` (protocol/cluster/classic.py is its codec).

Publishing never blocks a broadcast: messages go to an ordered outbox drained by one writer task
(pipelined, so a burst costs one round trip). The subscriber proves its subscriptions with a probe
sent through Redis to itself, and a watchdog keeps probing (supervision rules: transport.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from protocol.cluster import (
    AllRooms,
    Broadcast,
    DisconnectSockets,
    FetchSockets,
    Message,
    Response,
    Room,
    ServerSideEmit,
    SingleSocket,
    SocketIds,
    SocketsJoin,
    SocketsLeave,
    broadcast_channel,
    broadcast_pattern,
    classic,
    new_classic_id,
    new_sharded_id,
    numeric_room,
    request_channel,
    response_channel,
)
from protocol.errors import ClusterMessageError
from protocol.resp import encode_publish, numsub_counts

from ..config import Settings
from ..redis.client import redis_client
from ..redis.stream import RedisReplyError, RespStream, SubscriberStream
from ..redis.supervision import ReplayGate, Verdict, Watchdog
from .transport import TCP_KEEPALIVE, ClusterMember, ClusterUnavailable, SupervisedLinks, info_figures

log = logging.getLogger("gateway.cluster")

ZERO_RECEIVERS = "Redis no longer counts our subscriber"  # the Watchdog's reason: nothing was delivered to it


class ClassicTransport(SupervisedLinks):
    """PUBLISH / PSUBSCRIBE over one Redis (or a Sentinel-managed master): the wire format of
    @socket.io/redis-adapter's `createAdapter`. One publisher and one dedicated subscriber
    connection, shared by all the namespaces of a server.

    Supervision: both links reconnect with exponential backoff and jitter; the subscriber
    re-establishes every subscription and proves it with a probe message sent through Redis to
    itself before the link counts as up; a watchdog keeps probing and rebuilds a subscriber that
    stops receiving (a Redis-side kill of a slow subscriber, a half-open TCP connection). While
    the publisher is down, cross-node messages wait in a bounded outbox and are replayed in order.
    """

    # Rooms are watched only to know their channel names: the pattern subscription hears every
    # room, and a message for a room with no member here is dropped on its channel name alone.
    watches_rooms = True
    carries = frozenset({Broadcast, SocketsJoin, SocketsLeave, DisconnectSockets, FetchSockets, ServerSideEmit, AllRooms, SocketIds, SingleSocket})

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url
        super().__init__(settings)
        self.url = settings.redis_url
        self.prefix = settings.redis_prefix
        self.specific_responses = settings.publish_on_specific_response_channel
        self.members: dict[str, ClusterMember] = {}
        self.channels: dict[bytes, tuple[ClusterMember, bool]] = {}  # channel -> (member, is request channel)
        self.patterns: dict[bytes, tuple[ClusterMember, bytes, bytes]] = {}  # pattern -> (member, `P#N#`, own prefix)
        self.request_channels: dict[str, bytes] = {}
        # `P#N#room#` -> how many local rooms have that channel (5 and "5" share one), for rooms
        # with a member on this node; `numeric_rooms` counts local rooms that are numbers, whose
        # channel another publisher may spell differently ("5.0"): only then a miss is re-checked.
        self.room_channels: dict[bytes, int] = {}
        self.numeric_rooms = 0
        # Channels every node of a namespace hears -> that namespace's request channel, whose
        # subscriber count (one per node) is what a publish on them is expected to reach.
        self.counted_by: dict[bytes, bytes] = {}
        self.pub: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._pub_stream: RespStream | None = None
        self.node_tag = new_sharded_id()
        self.probe_channel = f"{self.prefix}-gateway-probe#{self.node_tag}#".encode()
        self.watchdog = Watchdog(settings.watchdog_ms / 1000, settings.outbox_max_age_ms / 1000)
        self._probe_waiter: asyncio.Future[None] | None = None

    @property
    def stalls(self) -> int:
        return self.watchdog.stalls

    @property
    def watchdog_rebuilds(self) -> int:
        return self.watchdog.rebuilds

    def new_id(self) -> str:
        return new_classic_id()

    def figures(self) -> Iterable[tuple[str, str, str, float]]:
        return ()

    # -- registration --------------------------------------------------------------------------

    def register(self, member: ClusterMember) -> None:
        name, prefix = member.name, self.prefix
        self.members[name] = member
        self.patterns[broadcast_pattern(prefix, name).encode()] = (member, f"{prefix}#{name}#".encode(), classic.broadcast_prefix(member.uid))
        request = self.request_channels[name] = request_channel(prefix, name).encode()
        self.channels[request] = (member, True)
        general_response = response_channel(prefix, name).encode()
        self.channels[general_response] = (member, False)
        for channel in (request, f"{prefix}#{name}#".encode()):  # not answers: one requester needs them
            self.counted_by[channel] = request
        self.channels[response_channel(prefix, name, member.uid).encode()] = (member, False)
        if self._pubsub is not None and self.sub_up:
            asyncio.ensure_future(self._subscribe_member(self._pubsub, member))

    def unregister(self, member: ClusterMember) -> None:
        self.members.pop(member.name, None)
        request = self.request_channels.pop(member.name, None)
        for channel, counted in list(self.counted_by.items()):
            if counted == request:
                del self.counted_by[channel]
        for pattern, (owner, *_) in list(self.patterns.items()):
            if owner is member:
                del self.patterns[pattern]
        for channel, (owner, _) in list(self.channels.items()):
            if owner is member:
                del self.channels[channel]

    def watch(self, member: ClusterMember, room: Room) -> None:
        """A room got its first local member: its channel now carries messages for us (the
        pattern subscription already hears it; nothing is sent to Redis)."""
        channel = broadcast_channel(self.prefix, member.name, [room]).encode()
        self.room_channels[channel] = self.room_channels.get(channel, 0) + 1
        if not isinstance(room, str):
            self.numeric_rooms += 1

    def unwatch(self, member: ClusterMember, room: Room) -> None:
        channel = broadcast_channel(self.prefix, member.name, [room]).encode()
        count = self.room_channels.get(channel, 0) - 1
        if count > 0:
            self.room_channels[channel] = count
        else:
            self.room_channels.pop(channel, None)
        if not isinstance(room, str):
            self.numeric_rooms -= 1

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

    async def _subscribe_member(self, pubsub: Any, member: ClusterMember) -> None:
        patterns = [p for p, (owner, *_) in self.patterns.items() if owner is member]
        channels = [c for c, (owner, _) in self.channels.items() if owner is member]
        await pubsub.psubscribe(*patterns)
        await pubsub.subscribe(*channels)

    async def _verify(self, pubsub: Any, client: aioredis.Redis) -> None:
        """Prove the subscriptions work: a probe published to our own probe channel must come
        back through this very subscriber, and Redis must count our request subscriptions."""
        loop = asyncio.get_running_loop()
        self._probe_waiter = loop.create_future()
        deadline = time.monotonic() + 3.0
        token = self.node_tag.encode()
        while not self._probe_waiter.done():
            await client.publish(self.probe_channel, token)
            for reply in await pubsub.get_batch(timeout=0.2):
                self._dispatch(reply)
            if time.monotonic() > deadline:
                raise ConnectionError("subscription probe did not come back")
        self._probe_waiter = None
        for channel in list(self.request_channels.values()):
            result = await client.execute_command("PUBSUB", "NUMSUB", channel)
            if int(result[1]) < 1:
                raise ConnectionError(f"request channel {channel!r} not subscribed")

    async def _subscriber_loop(self) -> None:
        watchdog = self.watchdog
        dispatch = self._dispatch
        settle_time = self.settings.reconnect_max_ms / 1000 + 1.0
        while not self._closing:
            client = self._client()
            pubsub = SubscriberStream(self.settings, keepalive=TCP_KEEPALIVE)
            try:
                await pubsub.subscribe(self.probe_channel)
                for member in list(self.members.values()):
                    await self._subscribe_member(pubsub, member)
                await self._verify(pubsub, client)
                self._pubsub = pubsub
                recovering = self._sub_attempts > 0
                self._link_restored("subscriber")
                up_since = time.monotonic()
                watchdog.start(up_since)
                period = min(1.0, watchdog.every)
                while not self._closing:
                    # One timer per watchdog period, not one per read: while messages flow, the
                    # reads of a period share this deadline (a read interrupted by it loses
                    # nothing: it had not taken the bytes yet; dispatch never awaits).
                    try:
                        async with asyncio.timeout(period):
                            while True:
                                for reply in await pubsub.get_batch():
                                    dispatch(reply)
                    except TimeoutError:
                        pass
                    now = time.monotonic()
                    if watchdog.probe_due(now):
                        watchdog.probe_sent(now)
                        # After an outage, peers are counted only once they have had a reconnect
                        # cap to come back (a count taken earlier would release a replay too soon).
                        trusted = ReplayGate.counts_trusted(self.pub_up, self._pub_attempts, recovering, now - up_since, settle_time)
                        try:
                            receivers = await asyncio.wait_for(self._probe(client, trusted), watchdog.every)
                        except (asyncio.TimeoutError, RedisTimeout):
                            pass  # Redis does not answer at all: a stall, judged by the watchdog
                        except (RedisError, OSError) as exc:
                            raise ConnectionError(f"probe publish failed: {exc}") from exc
                        else:
                            watchdog.probe_acked(now, time.monotonic(), receivers)
                        now = time.monotonic()
                    verdict = watchdog.check(now)
                    if verdict is Verdict.HEALTHY:
                        continue
                    if verdict is Verdict.RESUMED:
                        self.sub_up = True
                        log.warning("cluster_link_resumed link=subscriber")
                    elif verdict is Verdict.STALLED:
                        # Redis answers nothing: this connection still holds what Redis will send
                        # when it resumes, so it is kept, degraded, within the watchdog's patience.
                        self.sub_up = False
                        log.warning("cluster_link_stalled link=subscriber silent_seconds=%.1f", now - watchdog.seen)
                    elif verdict is Verdict.LOST:
                        if watchdog.reason != ZERO_RECEIVERS:
                            # Redis may still count (and deliver to) the connection given up.
                            self.subscriber_rebuilt(watchdog.reason)
                        raise ConnectionError(watchdog.reason)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError) as exc:
                self._pubsub = None
                await asyncio.sleep(self._failed_attempt("subscriber", self._sub_attempts + 1, exc))
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
        channels = list(self.request_channels.values())
        if channels and count_peers:
            reply = await client.execute_command("PUBSUB", "NUMSUB", *channels)
            self.note_subscribed(numsub_counts(reply), time.monotonic())
        return int(receivers)

    async def count_subscribers(self, channels: list[bytes]) -> dict[bytes, int]:
        assert self.pub is not None
        reply = await asyncio.wait_for(self.pub.execute_command("PUBSUB", "NUMSUB", *channels), self.settings.requests_timeout_ms / 1000)
        return numsub_counts(reply)

    def _expected(self, channel: bytes) -> int | None:
        """Subscribers a publish on `channel` should reach (this node included); None for a
        channel not every node hears (an answer to one requester)."""
        request = self.counted_by.get(channel)
        if request is None:
            for base, (member, prefix, _) in self.patterns.items():
                if channel.startswith(prefix):
                    request = self.request_channels.get(member.name)
                    break
            else:
                return None
        return self.subscribed.get(request) if request is not None else None

    def _dispatch(self, reply: list[Any]) -> None:
        """Route one message of the subscriber (a raw `get_batch` array) to its namespace; a
        malformed one is counted and dropped, nothing escapes."""
        self.stats.received += 1
        try:
            if reply[0] == b"pmessage":
                target = self.patterns.get(reply[1])
                if target is not None:
                    member, base, own = target
                    channel, payload = reply[2], reply[3]
                    # Our own broadcasts come back through the pattern: told by their first
                    # bytes ([uid, ...]) and dropped before any decoding. So is a broadcast to
                    # one room without a member here (spec 2.3 rule 2): by its channel name.
                    if payload.startswith(own):
                        return
                    if channel in self.room_channels or channel == base:
                        member.on_broadcast(classic.decode_broadcast(payload))
                    elif self.numeric_rooms:
                        self._on_broadcast(member, base, channel, payload)
                return
            channel = reply[1]
            if channel == self.probe_channel:
                self.watchdog.probe_seen(time.monotonic())
                waiter = self._probe_waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                return
            target = self.channels.get(channel)
            if target is not None:
                member, is_request = target
                if is_request:
                    member.on_message(classic.decode_request(reply[2], member.name))
                else:
                    member.on_message(classic.decode_response(reply[2], member.name))
        except ClusterMessageError as exc:
            self.stats.bad_messages += 1
            log.warning("cluster_bad_message channel=%r error=%r", reply[-2], str(exc))
        except Exception:
            self.stats.bad_messages += 1
            log.exception("cluster_message_failed channel=%r", reply[-2])

    def _on_broadcast(self, member: ClusterMember, base: bytes, channel: bytes, payload: bytes) -> None:
        if not channel.startswith(base):
            return
        room_part = channel[len(base) : -1]
        if room_part:
            # Spec 2.3 rule 2: a single-room broadcast for a room we do not have is dropped
            # before decoding (that is most cross-node traffic on a busy cluster).
            room = room_part.decode("utf-8", "replace")
            rooms = member.registry.rooms
            if room not in rooms:
                number = numeric_room(room)
                if number is None or number not in rooms:
                    return
        member.on_broadcast(classic.decode_broadcast(payload))

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        self.enqueue(classic.message_channel(self.prefix, message).encode(), classic.encode_message(message))

    def publish_response(self, requester: str | None, message: Response) -> None:
        channel = classic.message_channel(self.prefix, message, requester, self.specific_responses)
        self.enqueue(channel.encode(), classic.encode_message(message))

    async def server_count(self, nsp: str) -> int:
        return await self.numsub(self.request_channels[nsp])

    async def publish_now(self, message: Message) -> None:
        """Publish bypassing the outbox (requests whose caller waits for answers)."""
        channel = classic.message_channel(self.prefix, message)
        payload = classic.encode_message(message)
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
                    self.gate_pending = True  # replay once the other nodes listen again
                self._link_restored("publisher")
                while True:
                    batch = await self._next_batch()
                    if batch is None:
                        return
                    started = time.perf_counter()
                    generation = self.sub_generation
                    stream = self._pub_stream
                    if stream is None:
                        stream = self._pub_stream = RespStream(self.settings, keepalive=TCP_KEEPALIVE)
                    try:
                        receivers = await stream.pipeline([encode_publish(channel, payload) for channel, payload, _ in batch])
                        low = min(receivers)  # a TypeError when a reply is an error
                    except BaseException as exc:
                        # Put the batch back in front, in order, for the next attempt, on a new
                        # connection (this one may hold half a reply).
                        self.outbox.requeue(batch)
                        self._pub_stream = None
                        await stream.aclose()
                        if isinstance(exc, TypeError):
                            raise RedisReplyError(f"PUBLISH refused: {[r for r in receivers if type(r) is not int][0]}") from None
                        raise
                    self.stats.published += len(batch)
                    self.stats.observe_publish(time.perf_counter() - started)
                    if low < self._most_subscribed():
                        self.count_short(batch, receivers, self._expected, generation)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError) as exc:
                await self._publisher_failed(exc)

    def _most_subscribed(self) -> int:
        return max(self.subscribed.values(), default=0)

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.node.health(len(self.outbox), "redis")

    async def redis_info(self) -> dict[str, Any]:
        """A few `INFO` figures for /stats."""
        if self.pub is None or not self.pub_up:
            return {"available": False}
        try:
            info = await asyncio.wait_for(self.pub.info(), 1.0)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            return {"available": False, "error": str(exc)}
        return {"available": True, **info_figures(info)}
