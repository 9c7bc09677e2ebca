"""REDIS_MODE=streams: the cluster over one Redis stream, wire-compatible with
@socket.io/redis-streams-adapter 0.3.1 (protocol/cluster/streams.py is its codec), and connection
state recovery that survives the death of a node.

Why a stream: a pub/sub message published while a subscriber's connection is down is gone; a
stream entry stays, so a reader that lost its connection reads on from the last id it saw and
misses nothing. The entry id is also the offset a client recovers from.

- Every non-ephemeral message is `XADD <stream> MAXLEN ~ N *` through one ordered, bounded
  outbox; the ephemeral ones (a broadcast with acks, serverSideEmit, fetchSockets) and answers are
  PUBLISHed, as 0.3.1 does; serverCount is `PUBSUB NUMSUB` of the namespace's public channel.
- One reader task runs `XREAD BLOCK` from the last id it delivered, on its own connection.
- With recovery on, a recoverable broadcast of this node is delivered here when it comes back
  from the stream, like every other node's: every node and every replay then sees the one stream
  order, so a client's last offset is a position that nothing before it is missing from.
- Sessions (`sio:session:<pid>`) are written as Node writes them at a recoverable disconnect,
  and, beyond Node, while the socket is connected (after it connects, after its rooms change,
  and every REDIS_SESSION_REFRESH_MS for its data): a SIGKILLed node's clients recover elsewhere.
- A restore reads the missed entries in bounded XRANGE pages up to what the reader has delivered
  (the reader delivers the rest once the socket is back in its rooms); an offset the stream no
  longer has, or more pages than allowed, gives a fresh connection, never a partial replay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from itertools import islice
from typing import Any, Iterable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from protocol import socketio as sio
from protocol.cluster import Broadcast, DisconnectSockets, FetchSockets, Message, Response, Room, ServerSideEmit, SocketsJoin, SocketsLeave, new_sharded_id
from protocol.cluster import streams as wire
from protocol.errors import ClusterMessageError
from protocol.resp import RespError, encode_command, encode_publish
from protocol.socketio import PacketType

from ..config import Settings
from ..engine.outbound import Outbound
from ..redis.client import redis_client
from ..redis.stream import RedisReplyError, RespStream, StreamClosed, SubscriberStream
from ..redis.supervision import QueuedMessage
from ..sio.adapter import AdapterNamespace, AdapterSocket, BroadcastOptions, recoverable
from ..sio.recovery import RecoveryResult, Restoration, SessionState
from .adapter import ClusterAdapter, from_wire, to_wire
from .transport import TCP_KEEPALIVE, ClusterMember, ClusterUnavailable, SupervisedLinks, info_figures

log = logging.getLogger("gateway.streams")

_XADD = b"XADD"
_STREAM_CHANNEL = b""  # outbox marker of an entry that is already a whole command
_BROADCAST_TYPE = wire.BROADCAST_TYPE
_SENT_MAX = 4096  # our broadcasts remembered until the stream gives them back (oldest forgotten first)
_SENT_LOOKAHEAD = 64


class StreamsTransport(SupervisedLinks):
    """One Redis stream for what must not be missed, PUBLISH for requests and answers; shared by
    the namespaces of one server (as 0.3.1's `createAdapter`, one reader for all of them)."""

    watches_rooms = False
    carries = frozenset({Broadcast, SocketsJoin, SocketsLeave, DisconnectSockets, FetchSockets, ServerSideEmit})

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url
        super().__init__(settings)
        self.prefix = settings.redis_prefix
        self.stream = settings.redis_stream_name.encode()
        self.maxlen = b"%d" % settings.redis_stream_maxlen
        self.members: dict[str, ClusterMember] = {}
        self.members_by_nsp: dict[bytes, ClusterMember] = {}  # the nsp field of an entry -> its member
        self.channels: dict[bytes, ClusterMember] = {}
        self._xadd_heads: dict[tuple[bytes, bytes, bytes], bytes] = {}
        self.commands: aioredis.Redis | None = None
        self.last_id: str | None = None  # the newest entry delivered (None until the reader starts)
        self.reader_up = False
        self._pub: RespStream | None = None
        self._sub: SubscriberStream | None = None
        self._sub_changed = asyncio.Event()
        # figures for /metrics
        self.entries_read = 0
        self.reader_resumes = 0
        self.lag_ms = 0.0
        self.session_writes = 0
        self.replay_truncated = 0
        self.duplicates_avoided = 0  # messages of a broken batch found executed, not sent again
        self.stale_offsets = 0

    def new_id(self) -> str:
        return new_sharded_id()

    def figures(self) -> Iterable[tuple[str, str, str, float]]:
        yield "counter", "sio_gateway_stream_entries_read", "Stream entries read by this node's XREAD", self.entries_read
        yield "counter", "sio_gateway_stream_reader_resumes", "Times the stream reader reconnected and read on from its last id", self.reader_resumes
        yield "gauge", "sio_gateway_stream_lag_ms", "Age of the newest stream entry when this node delivered it (ms)", self.lag_ms
        yield "counter", "sio_gateway_stream_session_writes", "Session writes queued (connected sockets and disconnects)", self.session_writes
        yield "counter", "sio_gateway_stream_publish_settled", "Messages of a publish batch cut off by a broken connection that Redis had executed (found in the stream, not sent again)", self.duplicates_avoided
        yield "counter", "sio_gateway_stream_replay_truncated", "Recoveries refused because the missed entries exceeded REDIS_STREAM_REPLAY_MAX_PAGES", self.replay_truncated
        yield "counter", "sio_gateway_stream_stale_offsets", "Recoveries refused because the stream no longer has the client's offset (trimmed or lost)", self.stale_offsets

    # -- registration --------------------------------------------------------------------------

    def register(self, member: ClusterMember) -> None:
        self.members[member.name] = member
        self.members_by_nsp[member.name.encode()] = member
        self.channels[wire.public_channel(self.prefix, member.name).encode()] = member
        self.channels[wire.private_channel(self.prefix, member.name, member.uid).encode()] = member
        self._sub_changed.set()

    def unregister(self, member: ClusterMember) -> None:
        self.members.pop(member.name, None)
        if self.members_by_nsp.get(member.name.encode()) is member:
            del self.members_by_nsp[member.name.encode()]
        for channel, owner in list(self.channels.items()):
            if owner is member:
                del self.channels[channel]
        self._sub_changed.set()

    def watch(self, member: ClusterMember, room: Room) -> None:
        pass

    def unwatch(self, member: ClusterMember, room: Room) -> None:
        pass

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.commands = redis_client(self.settings, socket_timeout=5.0, socket_keepalive=True, socket_keepalive_options=TCP_KEEPALIVE)
        loop = asyncio.get_running_loop()
        await self._start_links(self._subscriber_loop(), self._publisher_loop(), "streams")
        self._tasks.append(loop.create_task(self._reader_loop(), name="streams-reader"))
        for _ in range(40):  # the reader's position is known before the first client connects
            if self.last_id is not None:
                break
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self._stop_links()
        for stream in (self._pub, self._sub):
            if stream is not None:
                await stream.aclose()
        if self.commands is not None:
            await self.commands.aclose()
        self.sub_up = self.pub_up = False

    # -- reading the stream --------------------------------------------------------------------

    async def _reader_loop(self) -> None:
        """XREAD BLOCK from the last id delivered; a lost connection is reopened and reading goes
        on from that id, so nothing appended meanwhile is missed."""
        settings = self.settings
        block = settings.redis_stream_block_ms
        count = settings.redis_stream_read_count
        attempts = 0
        reader: RespStream | None = None
        while not self._closing:
            try:
                if reader is None:
                    reader = RespStream(self.settings, keepalive=TCP_KEEPALIVE, client_name="sio-gateway-stream-reader")
                    await reader.open()
                    if self.last_id is None:
                        newest = await reader.execute(b"XREVRANGE", self.stream, b"+", b"-", b"COUNT", b"1", timeout=5.0)
                        self.last_id = newest[0][0].decode() if newest else "0-0"
                    elif attempts:
                        self.reader_resumes += 1
                        log.info("stream_reader_resumed from=%s after_attempts=%d", self.last_id, attempts)
                    attempts = 0
                    self.reader_up = True
                await self._read_on(reader, count, block)
            except asyncio.CancelledError:
                raise
            except (OSError, ConnectionError, RedisError, IndexError, TypeError, ValueError) as exc:
                attempts += 1
                self.reader_up = False
                log.warning("stream_reader_down attempt=%d error=%r", attempts, str(exc))
                if reader is not None:
                    await reader.aclose()
                    reader = None
                await asyncio.sleep(self.backoff(attempts))
        if reader is not None:
            await reader.aclose()

    async def _read_on(self, reader: RespStream, count: int, block: int) -> None:
        """XREAD after XREAD on one connection until it fails or the transport closes.

        One timer per second, not an asyncio.timeout per XREAD: the XREADs of a second share
        that deadline, and when it passes the XREAD in flight is left waiting on the socket (its
        command is sent, its reply is read on the next round: an interrupted read had taken no
        bytes). Only an XREAD unanswered BLOCK + 5 s after it was sent ends the connection."""
        loop = asyncio.get_running_loop()
        patience = block / 1000 + 5.0
        args = (b"XREAD", b"COUNT", b"%d" % count, b"BLOCK", b"%d" % block, b"STREAMS", self.stream)
        head = b"*%d\r\n" % (len(args) + 1) + b"".join([b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args])  # the last id follows
        pending = False  # an XREAD is sent and its reply not yet read
        sent_at = 0.0
        while not self._closing:
            try:
                async with asyncio.timeout(1.0):
                    while True:
                        if not pending:
                            pending = True
                            sent_at = loop.time()
                            last = self.last_id or "0-0"
                            await reader.send(b"%s$%d\r\n%s\r\n" % (head, len(last), last.encode()))
                        reply = await reader.reply()
                        pending = False
                        if isinstance(reply, RespError):
                            raise RedisReplyError(str(reply))
                        if reply:
                            self._deliver_entries(reply[0][1])
            except TimeoutError:
                if pending and loop.time() - sent_at > patience:
                    raise StreamClosed(f"Redis did not answer XREAD within {patience:.0f}s") from None

    def _deliver_entries(self, entries: list[Any]) -> None:
        members = self.members
        by_nsp = self.members_by_nsp
        stats = self.stats
        for raw_id, flat in entries:
            entry_id = raw_id.decode()
            self.last_id = entry_id
            stats.received += 1
            # A broadcast as both implementations write it (uid, nsp, type 3, data): to its
            # namespace without building the fields dict; the member decodes only what it uses
            # and hands back anything that is not the plain shape.
            if len(flat) == 8 and flat[5] == _BROADCAST_TYPE and flat[0] == b"uid" and flat[2] == b"nsp" and flat[4] == b"type" and flat[6] == b"data":
                member = by_nsp.get(flat[3])
                if member is not None and member.on_stream_entry(flat[1], flat[7], entry_id):  # type: ignore[attr-defined]
                    continue
            try:
                fields = wire.entry_fields(flat)
                member = members.get(fields.get(b"nsp", b"").decode())
                if member is None:
                    continue
                message = wire.decode_entry(fields)
            except (ClusterMessageError, UnicodeDecodeError) as exc:
                stats.bad_messages += 1
                log.debug("stream_bad_entry id=%s error=%s", entry_id, exc)
                continue
            if message is None:
                continue
            if type(message) is Broadcast:
                member.on_stream_broadcast(message, entry_id)  # type: ignore[attr-defined]
            else:
                member.on_message(message)
        self.entries_read += len(entries)
        if entries:
            self.lag_ms = max(0.0, time.time() * 1000 - wire.offset_key(self.last_id or "0-0")[0])

    # -- pub/sub (ephemeral messages and answers) ----------------------------------------------

    async def _subscriber_loop(self) -> None:
        attempts = 0
        while not self._closing:
            sub = None
            try:
                sub = self._sub = SubscriberStream(self.settings, keepalive=TCP_KEEPALIVE, client_name="sio-gateway-stream-sub")
                subscribed: set[bytes] = set(self.channels)
                if subscribed:
                    await sub.subscribe(*subscribed)
                self.sub_up = True
                self._link_restored("subscriber", attempts)
                attempts = 0
                while not self._closing:
                    if self._sub_changed.is_set():
                        self._sub_changed.clear()
                        wanted = set(self.channels)
                        if wanted - subscribed:
                            await sub.subscribe(*(wanted - subscribed))
                        if subscribed - wanted:
                            await sub.unsubscribe(*(subscribed - wanted))
                        subscribed = wanted
                    message = await sub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(bytes(message["channel"]), message["data"])
            except asyncio.CancelledError:
                raise
            except (OSError, ConnectionError, RedisError) as exc:
                self.sub_up = False
                attempts += 1
                self._failed_attempt("subscriber", attempts, exc)
                await asyncio.sleep(self.backoff(attempts))
            finally:
                if sub is not None:
                    await sub.aclose()

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        member = self.channels.get(channel)
        if member is None:
            return
        self.stats.received += 1
        try:
            message = wire.decode_ephemeral(payload)
        except ClusterMessageError as exc:
            self.stats.bad_messages += 1
            log.debug("stream_bad_message channel=%r error=%s", channel, exc)
            return
        if message is not None:
            member.on_message(message)

    # -- publishing ----------------------------------------------------------------------------

    def command_of(self, message: Message, requester: str | None = None) -> bytes:
        """The whole Redis command that carries `message`."""
        if type(message) is Response:
            assert requester is not None
            return encode_publish(wire.private_channel(self.prefix, message.nsp, requester).encode(), wire.encode_ephemeral(message))
        if wire.is_ephemeral(message):
            return encode_publish(wire.public_channel(self.prefix, message.nsp).encode(), wire.encode_ephemeral(message))  # type: ignore[attr-defined]
        fields = wire.encode_entry(message)
        if len(fields) != 8:
            return encode_command(_XADD, self.stream, b"MAXLEN", b"~", self.maxlen, b"*", *fields)
        return b"%s$%d\r\n%s\r\n" % (self.xadd_head(fields[1], fields[3], fields[5]), len(fields[7]), fields[7])

    def xadd_head(self, uid: bytes, nsp: bytes, kind: bytes) -> bytes:
        """The XADD of an entry `uid, nsp, type, data` up to its data value: the same for every
        entry of one namespace's type, so it is encoded once."""
        key = (uid, nsp, kind)
        head = self._xadd_heads.get(key)
        if head is None:
            head = encode_command(_XADD, self.stream, b"MAXLEN", b"~", self.maxlen, b"*", b"uid", uid, b"nsp", nsp, b"type", kind, b"data", b"")
            head = head[: -len(b"$0\r\n\r\n")]
            if len(self._xadd_heads) < 1024:
                self._xadd_heads[key] = head
        return head

    def publish_entry(self, head: bytes, data: bytes) -> None:
        """Queue the XADD of an entry whose fields before `data` are `head` (`xadd_head`)."""
        self.enqueue(_STREAM_CHANNEL, b"%s$%d\r\n%s\r\n" % (head, len(data), data))

    def publish(self, message: Message) -> None:
        try:
            command = self.command_of(message)
        except ClusterMessageError as exc:
            log.warning("stream_unencodable type=%s error=%s", type(message).__name__, exc)
            return
        self.enqueue(_STREAM_CHANNEL, command)

    def enqueue_command(self, command: bytes) -> None:
        """Any other command that must keep its place among the messages (session writes)."""
        self.enqueue(_STREAM_CHANNEL, command)

    def publish_response(self, requester: str | None, message: Response) -> None:
        if requester is None:
            return
        self.enqueue(_STREAM_CHANNEL, self.command_of(message, requester))

    async def publish_now(self, message: Message) -> None:
        """A request whose caller waits: PUBLISHed at once when ephemeral (fetchSockets,
        serverSideEmit with acks), else queued in order like any stream message."""
        if not wire.is_ephemeral(message):
            self.publish(message)
            return
        if self.commands is None or not self.pub_up:
            raise ClusterUnavailable("Redis is unreachable")
        channel = wire.public_channel(self.prefix, message.nsp)  # type: ignore[attr-defined]
        try:
            await self.commands.publish(channel, wire.encode_ephemeral(message))
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"publish failed: {exc!r}") from None
        self.stats.published += 1

    async def server_count(self, nsp: str) -> int:
        if self.commands is None:
            return 1
        try:
            reply = await self.commands.execute_command("PUBSUB", "NUMSUB", wire.public_channel(self.prefix, nsp))
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"PUBSUB NUMSUB failed: {exc!r}") from None
        return int(reply[1]) if len(reply) > 1 else 0

    async def _publisher_loop(self) -> None:
        # The id of the newest entry this node knows it appended (None until the first
        # connection reads the stream's tail), and the batch whose replies a broken connection
        # took with it: Redis may have executed a prefix of it.
        last_known: bytes | None = None
        in_doubt: list[QueuedMessage] | None = None
        while not self._closing or self.outbox:
            try:
                stream = self._pub
                if stream is None:
                    stream = self._pub = RespStream(self.settings, keepalive=TCP_KEEPALIVE, client_name="sio-gateway-stream-pub")
                await stream.open()
                if last_known is None:
                    tail = await stream.execute(b"XREVRANGE", self.stream, b"+", b"-", b"COUNT", b"1", timeout=5.0)
                    last_known = tail[0][0] if tail else b"0-0"
                if in_doubt is not None:
                    last_known = await self._settle(stream, in_doubt, last_known)
                    in_doubt = None
                self.pub_up = True
                self._link_restored("publisher", self._pub_attempts)
                while True:
                    batch = await self._next_batch()
                    if batch is None:
                        return
                    started = time.perf_counter()
                    try:
                        replies = await stream.pipeline([command for _, command, _ in batch])
                    except BaseException:
                        # Back in front, in order, for a new connection, which first looks in
                        # the stream for what of it Redis executed (`_settle`).
                        self.outbox.requeue(batch)
                        in_doubt = batch
                        self._pub = None
                        await stream.aclose()
                        raise
                    for reply in reversed(replies):
                        if type(reply) is bytes:  # an XADD's entry id (PUBLISH answers a count)
                            last_known = reply
                            break
                    errors = [r for r in replies if isinstance(r, Exception)]
                    if errors:
                        self.stats.publish_errors += len(errors)
                        log.warning("stream_publish_refused count=%d first=%r", len(errors), str(errors[0]))
                    self.stats.published += len(batch) - len(errors)
                    self.stats.observe_publish(time.perf_counter() - started)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError) as exc:
                await self._publisher_failed(exc)

    async def _settle(self, stream: RespStream, batch: list[QueuedMessage], last_known: bytes) -> bytes:
        """After a connection broke with `batch` sent and unanswered: Redis executes a pipeline
        in order, so the entries of ours after `last_known` are the XADDs of a prefix of the
        batch. That prefix (the PUBLISHes before its last XADD included) is taken off the front
        of the outbox, where the batch was put back, instead of being appended a second time;
        the rest is sent again. Only this node writes entries with its namespaces' uids.
        Returns the id of the newest of ours found (or `last_known`)."""
        ours = {member.uid.encode() for member in self.members.values()}
        wanted = sum(1 for channel, _, _ in batch if channel == _STREAM_CHANNEL)
        found = 0
        start = last_known  # inclusive (an exclusive start needs Redis 6.2): skipped below
        page = self.settings.redis_stream_replay_page
        for _ in range(self.settings.redis_stream_replay_max_pages):
            entries = await stream.execute(b"XRANGE", self.stream, start, b"+", b"COUNT", b"%d" % page, timeout=5.0)
            for entry_id, flat in entries:
                if entry_id != start and len(flat) > 1 and flat[0] == b"uid" and flat[1] in ours:
                    found += 1
                    last_known = entry_id
            if found >= wanted or len(entries) < page:
                break
            start = entries[-1][0]
        executed = 0  # messages of the batch Redis executed: up to its found-th XADD
        xadds = 0
        for index, (channel, _, _) in enumerate(batch):
            if xadds == found:
                break
            if channel == _STREAM_CHANNEL:
                xadds += 1
                executed = index + 1
        items = self.outbox.items
        for message in batch[:executed]:
            if items and items[0] is message:
                items.popleft()
        if executed:
            self.duplicates_avoided += executed
            log.info("stream_publish_settled executed=%d resent=%d", executed, len(batch) - executed)
        return last_known

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        up = self.pub_up and self.sub_up and self.reader_up
        return {
            "mode": "single-node" if self.single_node else "streams",
            "status": "healthy" if up else "degraded",
            "reader": "up" if self.reader_up else "down",
            "publisher": "up" if self.pub_up else "down",
            "subscriber": "up" if self.sub_up else "down",
            "stream": self.stream.decode(),
            "last_id": self.last_id,
            "outbox": len(self.outbox),
        }

    async def redis_info(self) -> dict[str, Any]:
        if self.commands is None:
            return {}
        try:
            return info_figures(await self.commands.info())
        except (RedisError, OSError):
            return {}


class StreamsClusterAdapter(ClusterAdapter):
    """The cluster adapter over `StreamsTransport`, with connection state recovery kept in Redis
    (0.3.1's `persistSession` / `restoreSession`, plus sessions kept while connected)."""

    supports_recovery = True
    transport: StreamsTransport

    def __init__(self, nsp: AdapterNamespace, transport: StreamsTransport, settings: Settings) -> None:
        super().__init__(nsp, transport, settings)
        self.settings = settings
        self.recovering = bool(settings.state_recovery_ms)
        self.uid_bytes = self.uid.encode()
        self._broadcast_head: bytes | None = None  # the XADD of this namespace's broadcasts up to the data
        # Our recoverable broadcasts on their way through the stream: (entry data, event JSON,
        # options), oldest first, so that ours are delivered from the JSON we wrote instead of
        # being decoded and encoded again (main namespace: its packets have no header to build).
        self.sent: deque[tuple[bytes, bytes, BroadcastOptions]] = deque(maxlen=_SENT_MAX)
        self._main = self.name == "/"
        self.session_prefix = settings.redis_session_key_prefix
        self.window_ms = settings.state_recovery_ms or 0
        self.live_ttl_ms = self.window_ms + settings.redis_session_refresh_ms
        self.dirty: dict[str, AdapterSocket] = {}  # sid -> socket whose session must be written
        self.persisted: set[str] = set()  # sids whose session was just kept at a disconnect
        self._flusher: asyncio.Task[None] | None = None

    async def init(self) -> None:
        await super().init()
        if self.recovering and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_sessions(), name=f"streams-sessions{self.name}")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self._write_dirty(len(self.dirty))  # what changed since the last flush goes out with the outbox
        await super().close()

    # -- outgoing ------------------------------------------------------------------------------

    def broadcast(self, packet: sio.Packet, opts: BroadcastOptions) -> None:
        if opts.local or not (self.recovering and recoverable(packet, opts)):
            super().broadcast(packet, opts)
            return
        # Delivered here when the stream gives it back, with its entry id as offset. The common
        # target (rooms only: no exceptions, no flags) goes straight to the entry's JSON.
        if not opts.except_ and opts.compress is None and opts.timeout is None:
            parts = wire.plain_broadcast_parts(packet.data, list(opts.rooms), [], None)
            if parts is not None:
                text, event_json = parts
                head = self._broadcast_head
                if head is None:
                    head = self._broadcast_head = self.transport.xadd_head(self.uid_bytes, self.name.encode(), wire.BROADCAST_TYPE)
                self.transport.publish_entry(head, text)
                if event_json is not None and self._main and len(event_json) > 2:
                    self.sent.append((text, event_json, opts))
                return
        self.transport.publish(Broadcast(self.uid, self.name, packet.data, to_wire(opts)))

    # -- incoming ------------------------------------------------------------------------------

    def on_broadcast(self, message: Broadcast) -> None:
        if message.request_id is None:
            return  # stream broadcasts arrive through on_stream_broadcast
        super().on_broadcast(message)

    def on_stream_entry(self, uid: bytes, data: bytes, entry_id: str) -> bool:
        """A stream broadcast entry of this namespace, raw: True once handled, False to have it
        decoded and validated completely (any shape but the plain one, malformed included).
        Without recovery our own entries are dropped before any decoding (delivered at once when
        sent); a plain one (no flags, no exceptions, string rooms) skips the full validation."""
        own = uid == self.uid_bytes
        if own:
            if not self.recovering:
                return True
            sent = self._sent_entry(data)
            if sent is not None:
                # The bytes we wrote: its packet is the event's JSON with the offset appended,
                # what sio.encode would write for the event plus the entry id.
                _, event_json, opts = sent
                self.deliver_encoded(Outbound.message(b'2%s,"%s"]' % (event_json[:-1], entry_id.encode())), opts)
                return True
        plain = wire.plain_broadcast(data)
        if plain is None:
            return False
        try:
            uid.decode()
        except UnicodeDecodeError:
            return False
        event, rooms = plain
        if not own:
            self.stats.broadcasts_remote += 1
        opts = BroadcastOptions(frozenset(rooms))
        if self._main and event:
            # What sio.encode writes for a main-namespace EVENT without binary (`2` and the JSON
            # of the data), with the offset spliced in instead of appended and encoded again.
            try:
                body = orjson.dumps(event)
            except TypeError:
                pass
            else:
                text = b'2%s,"%s"]' % (body[:-1], entry_id.encode()) if self.recovering else b"2" + body
                self.deliver_encoded(Outbound.message(text), opts)
                return True
        if self.recovering:
            event.append(entry_id)
        self.deliver(sio.Packet(PacketType.EVENT, self.name, event), opts)
        return True

    def _sent_entry(self, data: bytes) -> tuple[bytes, bytes, BroadcastOptions] | None:
        """What we sent as the entry that came back with `data`, told by its bytes (so the
        content is the one Redis holds, whatever the caller did with its objects since). The
        stream gives our entries back in the order we sent them; one the outbox dropped never
        comes back and one sent twice (a batch replayed after a broken connection) comes back
        again: a short look ahead puts the queue back in step, and an entry not found there is
        decoded as any other."""
        sent = self.sent
        if not sent:
            return None
        first = sent[0]
        if first[0] == data:
            sent.popleft()
            return first
        for ahead, item in enumerate(islice(sent, 1, _SENT_LOOKAHEAD), 1):
            if item[0] == data:
                for _ in range(ahead + 1):
                    sent.popleft()
                return item
        return None

    def on_stream_broadcast(self, message: Broadcast, entry_id: str) -> None:
        """A broadcast read from the stream (ours too: with recovery on, ours is delivered now)."""
        if message.nsp != self.name:
            return
        opts = from_wire(message.opts)
        offset = self.recovering and not opts.volatile
        if message.uid == self.uid and not offset:
            return  # delivered at once when it was sent
        if message.uid != self.uid:
            self.stats.broadcasts_remote += 1
        data = message.data
        if offset:
            data.append(entry_id)
        self.deliver(sio.Packet(PacketType.EVENT, self.name, data), opts)

    # -- sessions kept while connected ---------------------------------------------------------

    def add_all(self, socket: AdapterSocket, rooms: Iterable[Room]) -> None:
        super().add_all(socket, rooms)
        if self.recovering:
            self.dirty[socket.id] = socket

    def remove(self, socket: AdapterSocket, room: Room) -> None:
        super().remove(socket, room)
        if self.recovering:
            self.dirty[socket.id] = socket

    def remove_all(self, socket: AdapterSocket) -> None:
        super().remove_all(socket)
        if not self.recovering:
            return
        self.dirty.pop(socket.id, None)
        if socket.id in self.persisted:
            self.persisted.discard(socket.id)
            return
        pid = getattr(socket, "pid", None)
        if pid is not None:  # gone for good (its own or the server's decision): not recoverable
            self.transport.enqueue_command(encode_command(b"DEL", self._key(pid)))

    def _key(self, pid: str) -> bytes:
        return (self.session_prefix + pid).encode()

    def _set_command(self, state: SessionState, ttl_ms: int) -> bytes:
        value = wire.encode_session(wire.StreamSession(state.sid, state.pid, state.rooms, state.data))
        self.transport.session_writes += 1
        return encode_command(b"SET", self._key(state.pid), value, b"PX", ttl_ms)

    def _write_dirty(self, limit: int) -> None:
        dirty = self.dirty
        for _ in range(min(limit, len(dirty))):
            sid, socket = next(iter(dirty.items()))
            del dirty[sid]
            pid = getattr(socket, "pid", None)
            if pid is None:
                continue
            state = SessionState(socket.id, pid, list(self.socket_rooms(socket)), socket.data)
            try:
                self.transport.enqueue_command(self._set_command(state, self.live_ttl_ms))
            except ClusterMessageError as exc:  # data msgpack cannot carry: recovery lost, connection kept
                log.warning("stream_session_unencodable sid=%s error=%s", sid, exc)

    async def _flush_sessions(self) -> None:
        """Every REDIS_SESSION_FLUSH_MS: the sessions of sockets that connected or changed rooms
        (at most REDIS_SESSION_BATCH per round); every REDIS_SESSION_REFRESH_MS: every connected
        socket's (its data may have changed, and the key must outlive a node that dies)."""
        flush = self.settings.redis_session_flush_ms / 1000
        refresh = self.settings.redis_session_refresh_ms / 1000
        batch = self.settings.redis_session_batch
        next_refresh = time.monotonic() + refresh
        while True:
            await asyncio.sleep(flush)
            now = time.monotonic()
            if now >= next_refresh:
                next_refresh = now + refresh
                for socket in list(self.nsp.sockets.values()):
                    self.dirty.setdefault(socket.id, socket)
            self._write_dirty(batch)

    # -- connection state recovery -------------------------------------------------------------

    def persist_session(self, state: SessionState) -> None:
        """A recoverable disconnect: keep the session for STATE_RECOVERY_MS, as Node does."""
        self.dirty.pop(state.sid, None)
        self.persisted.add(state.sid)
        try:
            self.transport.enqueue_command(self._set_command(state, self.window_ms or 1))
        except ClusterMessageError as exc:
            log.warning("stream_session_unencodable sid=%s error=%s", state.sid, exc)

    async def restore_session(self, pid: str, offset: str) -> Restoration:
        transport = self.transport
        if not wire.valid_offset(offset):
            return Restoration(RecoveryResult.STALE)
        commands = transport.commands
        if commands is None:
            return Restoration(RecoveryResult.UNKNOWN)
        try:
            async with commands.pipeline(transaction=False) as pipe:
                pipe.getdel(self._key(pid))
                pipe.xrange(transport.stream, offset, offset, count=1)
                raw, found = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("stream_restore_failed pid=%s error=%r", pid, str(exc))
            return Restoration(RecoveryResult.UNKNOWN)
        if not raw:
            return Restoration(RecoveryResult.UNKNOWN)
        if not found:
            transport.stale_offsets += 1
            log.info("stream_offset_gone pid=%s offset=%s", pid, offset)
            return Restoration(RecoveryResult.STALE)
        try:
            session = wire.decode_session(raw)
        except ClusterMessageError as exc:
            log.warning("stream_bad_session pid=%s error=%s", pid, exc)
            return Restoration(RecoveryResult.UNKNOWN)
        state = SessionState(session.sid, session.pid, list(session.rooms), session.data if session.data is not None else {})
        try:
            missed = await self._missed(state.rooms, offset)
        except (RedisError, OSError) as exc:
            log.warning("stream_replay_failed pid=%s error=%r", pid, str(exc))
            missed = None
        if missed is None:
            return Restoration(RecoveryResult.STALE)
        return Restoration(RecoveryResult.RECOVERED, state, missed)

    async def _missed(self, rooms: list[Room], offset: str) -> list[Outbound] | None:
        """The packets after `offset` up to what the reader has delivered (it delivers the rest
        after the socket is back in its rooms), read in pages; None past the page bound."""
        transport = self.transport
        assert transport.commands is not None
        page = self.settings.redis_stream_replay_page
        entries: list[tuple[str, Any]] = []
        start = wire.next_offset(offset)
        last_read = wire.offset_key(offset)
        for _ in range(self.settings.redis_stream_replay_max_pages):
            got = await transport.commands.xrange(transport.stream, start, "+", count=page)
            for raw_id, fields in got:
                entries.append((raw_id.decode(), fields))
            if got:
                start = wire.next_offset(entries[-1][0])
                last_read = wire.offset_key(entries[-1][0])
            delivered = wire.offset_key(transport.last_id or "0-0")
            if len(got) < page and last_read >= delivered:
                break
        else:
            transport.replay_truncated += 1
            log.warning("stream_replay_too_long offset=%s pages=%d", offset, self.settings.redis_stream_replay_max_pages)
            return None
        upto = wire.offset_key(transport.last_id or "0-0")
        missed: list[Outbound] = []
        for entry_id, fields in entries:
            if wire.offset_key(entry_id) > upto:
                break
            if fields.get(b"nsp") != self.name.encode() or fields.get(b"type") != wire.BROADCAST_TYPE:
                continue
            try:
                message = wire.decode_entry({bytes(k): bytes(v) for k, v in fields.items()})
            except ClusterMessageError:
                continue
            if not isinstance(message, Broadcast) or message.request_id is not None:
                continue
            opts = message.opts
            if (opts.flags or {}).get("volatile") or not wire.included(rooms, opts.rooms, opts.except_rooms):
                continue
            data = message.data
            data.append(entry_id)
            text, binaries = sio.encode(sio.Packet(PacketType.EVENT, self.name, data))
            missed.append(Outbound.message(text, binaries))
        return missed
