"""Raw RESP streams for the broadcast path: a subscriber's message feed and pipelined (S)PUBLISH,
each on a connection of its own.

redis-py's per-message machinery (a coroutine, a timeout context and a dict per message) costs
more CPU than the rest of a cross-node delivery together, so the broadcast path does not go
through it: a stream opens its own connection (`asyncio.open_connection`, with the TLS context
built from the same REDIS_TLS_* settings as the client factory), sends AUTH / SELECT / CLIENT
SETNAME encoded by `protocol.resp`, asks Redis Sentinel for the master through redis-py's public
`Sentinel.discover_master`, and parses replies in bulk with `hiredis.Reader`. Nothing here
touches a redis-py connection or any private name of redis-py or hiredis.

A stream has one user at a time (one task reads it, one task writes a batch and reads its
replies); it never reconnects by itself: the link's supervisor decides when to open a new one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any, Iterable, Mapping

import hiredis

from protocol.resp import (
    RespError,
    RespProtocolError,
    encode_command,
    encode_handshake,
    encode_publish,
    encode_spublish,
    encode_subscription,
    expect_ok,
    parse_push,
    Push,
)

from ..config import Settings
from .client import RedisSettingsError, sentinel_for, sentinel_target, ssl_context
from .urls import SENTINEL_SCHEME, Address, parse_redis_url

log = logging.getLogger("gateway.redis")

__all__ = ["PublishStream", "RedisReplyError", "RespStream", "StreamClosed", "SubscriberStream"]

READ_CHUNK = 1 << 16
# Closing waits this long at most for the peer (a TLS close_notify from a frozen Redis never comes).
CLOSE_TIMEOUT_S = 1.0


class StreamClosed(ConnectionError):
    """Redis closed the connection, it broke, or it could not be opened in time."""


class RedisReplyError(ConnectionError):
    """Redis answered a command on the broadcast path (or the handshake) with an error."""


class RespStream:
    """One connection to Redis, opened by `open()` (or by the first command), closed by `aclose()`.

    Where it goes: `address` (a Redis Cluster node; TLS and credentials still come from
    REDIS_URL when it is a redis:// or rediss:// URL), else REDIS_URL itself: a server, a Unix
    socket, or the master Sentinel names at the time of opening (so a stream opened after a
    failover reaches the promoted replica). `connect_timeout` bounds the whole opening: the
    Sentinel question, the TCP and TLS handshakes and the AUTH/SELECT replies."""

    def __init__(
        self,
        settings: Settings,
        *,
        address: Address | None = None,
        connect_timeout: float = 2.0,
        keepalive: Mapping[int, int] | None = None,
        client_name: str | None = None,
    ) -> None:
        self.settings = settings
        self.address = address
        self.connect_timeout = connect_timeout
        self.keepalive = dict(keepalive) if keepalive else None
        self.client_name = client_name
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.parser = hiredis.Reader(replyError=RespError)
        self.peer: str | None = None  # "host:port" or the socket path, once open

    @property
    def connected(self) -> bool:
        return self.writer is not None

    async def open(self) -> None:
        """Connect and authenticate; StreamClosed or RedisReplyError when that fails in time."""
        if self.writer is not None:
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._connect()
        except TimeoutError:
            await self.aclose()
            raise StreamClosed(f"connecting to Redis took longer than {self.connect_timeout:.1f}s") from None
        except BaseException:
            await self.aclose()
            raise

    async def _connect(self) -> None:
        settings = self.settings
        url = settings.redis_url or ""
        username = password = None
        db = 0
        context: ssl.SSLContext | None = None
        path: str | None = None
        if self.address is not None:
            host, port = self.address
            context = ssl_context(settings)
            if url and not url.startswith((SENTINEL_SCHEME, "unix://")):
                target = parse_redis_url(url)
                username, password = target.username, target.password
        elif url.startswith(SENTINEL_SCHEME):
            sentinel_at = sentinel_target(settings)
            sentinel = sentinel_for(sentinel_at, socket_timeout=self.connect_timeout, socket_connect_timeout=self.connect_timeout)
            try:
                host, port = await sentinel.discover_master(sentinel_at.master)
            finally:
                await sentinel.aclose()
            username, password, db = sentinel_at.username, sentinel_at.password, sentinel_at.db
        elif url:
            try:
                target = parse_redis_url(url)
            except ValueError as exc:
                raise RedisSettingsError(f"REDIS_URL: {exc}") from None
            username, password, db = target.username, target.password, target.db
            if target.path is not None:
                path = target.path
                host, port = "", 0
            else:
                assert target.host is not None
                host, port = target.host, target.port
                context = ssl_context(settings) if target.tls else None
        else:
            raise RedisSettingsError("REDIS_URL is not set")
        if path is not None:
            self.reader, self.writer = await asyncio.open_unix_connection(path, limit=READ_CHUNK)
            self.peer = path
        else:
            self.reader, self.writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context is not None else None, limit=READ_CHUNK
            )
            self.peer = f"{host}:{port}"
            self._tune(self.writer.get_extra_info("socket"))
        handshake, replies = encode_handshake(username=username, password=password, db=db, client_name=self.client_name)
        if replies:
            self.writer.write(handshake)
            await self.writer.drain()
            for _ in range(replies):
                reply = await self._reply()
                try:
                    expect_ok(reply)
                except (RespError, RespProtocolError) as exc:
                    raise RedisReplyError(f"Redis refused the connection handshake: {exc}") from None

    def _tune(self, sock: socket.socket | None) -> None:
        """TCP_NODELAY (batches are already coalesced) and, when asked, keepalive probing so a
        peer that vanished without closing is noticed in seconds, not hours."""
        if sock is None:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in self.keepalive.items():
                sock.setsockopt(socket.IPPROTO_TCP, option, value)

    async def _fill(self) -> None:
        reader = self.reader
        if reader is None:
            raise StreamClosed("the stream is closed")
        data = await reader.read(READ_CHUNK)
        if not data:
            raise StreamClosed("connection closed by Redis")
        self.parser.feed(data)

    async def _reply(self) -> Any:
        """The next complete reply (an error reply as a RespError value, not raised)."""
        parser = self.parser
        while True:
            reply = parser.gets()
            if reply is not False:
                return reply
            await self._fill()

    async def _write(self, data: bytes) -> None:
        if self.writer is None:
            await self.open()
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, command: bytes) -> None:
        """Write one encoded command without waiting for its reply (read it with `reply`): for
        a blocking command whose wait outlives one timer, as the streams reader's XREAD."""
        await self._write(command)

    async def reply(self) -> Any:
        """The next reply on this connection (an error reply as a RespError value). Cancelling
        the wait loses nothing: the bytes not read yet stay on the socket for the next call."""
        return await self._reply()

    async def pipeline(self, commands: list[bytes]) -> list[Any]:
        """Encoded commands written in one go, every reply kept, in order (an error reply as a
        RespError value): a publish batch's receiver counts, a batch of XADDs' ids."""
        await self._write(b"".join(commands))
        replies: list[Any] = []
        parser = self.parser
        while len(replies) < len(commands):
            reply = parser.gets()
            if reply is False:
                await self._fill()
                continue
            replies.append(reply)
        return replies

    async def execute(self, *args: bytes | str | int, timeout: float | None = None) -> Any:
        """One command and its reply, raised as RedisReplyError when it is an error. Not for a
        subscribed connection (its next reply may be a message)."""
        try:
            async with asyncio.timeout(timeout):
                await self._write(encode_command(*args))
                reply = await self._reply()
        except TimeoutError:
            raise StreamClosed(f"Redis did not answer {args[0]!r} within {timeout}s") from None
        if isinstance(reply, RespError):
            raise RedisReplyError(str(reply))
        return reply

    async def aclose(self) -> None:
        writer, self.writer = self.writer, None
        self.reader = None
        self.parser = hiredis.Reader(replyError=RespError)  # a half-read reply must not survive
        if writer is None:
            return
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass


def _names(names: Iterable[bytes | str]) -> list[bytes]:
    return [n.encode() if isinstance(n, str) else bytes(n) for n in names]


class SubscriberStream(RespStream):
    """A dedicated subscriber connection with the small PubSub surface the links use.

    `get_message` returns dicts shaped like redis-py's (`type`, `pattern`, `channel`, `data`);
    `get_push` returns `protocol.resp.Push` tuples (no dict per message); `get_batch` returns the
    raw arrays of every buffered message at once. All return without awaiting while parsed
    messages are buffered, and None (`get_batch`: []) when `timeout` passes first."""

    async def subscribe(self, *channels: bytes | str) -> None:
        await self._write(encode_subscription(b"SUBSCRIBE", *_names(channels)))

    async def psubscribe(self, *patterns: bytes | str) -> None:
        await self._write(encode_subscription(b"PSUBSCRIBE", *_names(patterns)))

    async def ssubscribe(self, *channels: bytes | str) -> None:
        await self._write(encode_subscription(b"SSUBSCRIBE", *_names(channels)))

    async def unsubscribe(self, *channels: bytes | str) -> None:
        await self._write(encode_subscription(b"UNSUBSCRIBE", *_names(channels)))

    async def punsubscribe(self, *patterns: bytes | str) -> None:
        await self._write(encode_subscription(b"PUNSUBSCRIBE", *_names(patterns)))

    async def sunsubscribe(self, *channels: bytes | str) -> None:
        await self._write(encode_subscription(b"SUNSUBSCRIBE", *_names(channels)))

    async def ping(self) -> None:
        """PING on a subscribed connection; answered by a b"pong" push."""
        await self._write(encode_command(b"PING"))

    async def _filled(self, timeout: float | None) -> bool:
        """Read more bytes for the parser; False when `timeout` passed first."""
        try:
            if timeout is None:
                await self._fill()
            else:
                async with asyncio.timeout(timeout):
                    await self._fill()
        except TimeoutError:
            return False
        return True

    async def get_push(self, ignore_subscribe_messages: bool = True, timeout: float | None = None) -> Push | None:
        parser = self.parser
        while True:
            reply = parser.gets()
            if reply is False:
                if not await self._filled(timeout):
                    return None
                continue
            push = _push_of(reply)
            kind = push.kind
            if kind == b"message" or kind == b"pmessage" or kind == b"smessage" or not ignore_subscribe_messages:
                return push

    async def get_batch(self, timeout: float | None = None) -> list[list[Any]]:
        """Every message already parsed or, when none is, those of the next read: raw
        `[b"message", channel, data]`, `[b"pmessage", pattern, channel, data]` and
        `[b"smessage", channel, data]` arrays, oldest first; [] when `timeout` passes first.

        The broadcast path's reader: one await per read of the socket, not one per message, and
        no object per message beyond what the parser built. Subscription confirmations and pongs
        are checked and left out. A batch holds at most what one read brought (READ_CHUNK
        bytes) plus what was already parsed."""
        parser = self.parser
        batch: list[list[Any]] = []
        while True:
            reply = parser.gets()
            if reply is False:
                if batch or not await self._filled(timeout):
                    return batch
                continue
            if type(reply) is list:
                kind = reply[0]
                if (kind == b"pmessage" and len(reply) == 4) or (kind == b"message" and len(reply) == 3):
                    batch.append(reply)
                    continue
            push = _push_of(reply)
            if push.kind == b"smessage":
                batch.append([b"smessage", push.channel, push.data])

    async def get_shard_batch(self) -> list[Any]:
        """A sharded link's reader, as `get_batch` is the classic one's: every push already
        parsed or, when none is, those of the next read, oldest first. Messages are the raw
        `[b"smessage", channel, data]` arrays; every other push (subscription confirmations, a
        SUNSUBSCRIBE Redis sends when a slot migrates, pongs) comes as a checked `Push` tuple,
        which the link needs to follow its slots. An error reply or a malformed push ends the
        batch as the exception it means (RedisReplyError, StreamClosed), for the caller to raise
        once it has handled what came before it."""
        parser = self.parser
        batch: list[Any] = []
        while True:
            reply = parser.gets()
            if reply is False:
                if batch:
                    return batch
                await self._fill()
                continue
            if type(reply) is list and len(reply) == 3 and reply[0] == b"smessage":
                batch.append(reply)
                continue
            try:
                batch.append(_push_of(reply))
            except ConnectionError as exc:
                batch.append(exc)
                return batch

    async def get_message(self, ignore_subscribe_messages: bool = True, timeout: float | None = None) -> dict[str, Any] | None:
        # The broadcast path's reader: message and pmessage are built straight from the parsed
        # array (no Push tuple in between); everything else goes through parse_push's checks.
        parser = self.parser
        while True:
            reply = parser.gets()
            if reply is False:
                if not await self._filled(timeout):
                    return None
                continue
            if type(reply) is list:
                kind = reply[0]
                if kind == b"pmessage" and len(reply) == 4:
                    return {"type": "pmessage", "pattern": reply[1], "channel": reply[2], "data": reply[3]}
                if kind == b"message" and len(reply) == 3:
                    return {"type": "message", "pattern": None, "channel": reply[1], "data": reply[2]}
            push = _push_of(reply)
            if push.kind == b"smessage" or not ignore_subscribe_messages:
                return {"type": push.kind.decode(), "pattern": push.pattern, "channel": push.channel, "data": push.data}


def _push_of(reply: Any) -> Push:
    """A pub/sub push from a parsed reply; an error reply or a malformed push ends the stream."""
    try:
        return parse_push(reply)
    except RespError as exc:
        raise RedisReplyError(str(exc)) from None
    except RespProtocolError as exc:
        raise StreamClosed(str(exc)) from None


class PublishStream(RespStream):
    """Pipelined publishing on one connection: one write per batch, replies read in bulk."""

    async def publish_batch(self, batch: list[tuple[bytes, bytes, float]]) -> None:
        """PUBLISH every (channel, payload, queued_at); raise the first error reply after all
        replies are read (so the stream stays in step)."""
        await self._write(b"".join([encode_publish(channel, payload) for channel, payload, _ in batch]))
        error = None
        parser = self.parser
        remaining = len(batch)
        while remaining:
            reply = parser.gets()
            if reply is False:
                await self._fill()
                continue
            remaining -= 1
            if error is None and isinstance(reply, RespError):
                error = reply
        if error is not None:
            raise RedisReplyError(str(error))

    async def spublish_batch(self, batch: list[tuple[bytes, bytes, float]]) -> list[Any]:
        """SPUBLISH every (channel, payload, queued_at) to this node; one reply per message, in
        order: the receiver count, or a RespError (MOVED, CLUSTERDOWN, ...) that the caller
        routes or retries."""
        return await self.pipeline([encode_spublish(channel, payload) for channel, payload, _ in batch])
