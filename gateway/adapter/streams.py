"""Raw Redis streams for the broadcast path: the subscriber's message feed and pipelined PUBLISH.

Connections are opened by redis-py (TCP or TLS, AUTH, SELECT, Sentinel's master lookup), then
their byte streams are used directly: replies are parsed in bulk with hiredis and requests are
encoded by `protocol.resp`. redis-py's per-message machinery (a coroutine, a timeout context and a
dict per message) cost more CPU than the rest of a cross-node delivery together.

Both classes use redis-py's connection streams (`_reader`/`_writer`, stable since redis-py 4.2);
everything else still goes through the public redis-py API.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import redis.asyncio as aioredis

from protocol.resp import encode_command, encode_publish

READ_CHUNK = 1 << 16


class StreamClosed(ConnectionError):
    """Redis closed the connection (or it broke)."""


class RedisReplyError(ConnectionError):
    """Redis answered a command on the broadcast path with an error."""


class _RawConnection:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.connection: Any = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.parser = hiredis.Reader()

    async def open(self) -> None:
        self.connection = await self.client.connection_pool.get_connection()
        self.reader = self.connection._reader
        self.writer = self.connection._writer
        if self.reader is None or self.writer is None:
            raise StreamClosed("redis-py connection has no streams")

    async def _fill(self) -> None:
        assert self.reader is not None
        data = await self.reader.read(READ_CHUNK)
        if not data:
            raise StreamClosed("connection closed by Redis")
        self.parser.feed(data)

    async def aclose(self) -> None:
        connection, self.connection = self.connection, None
        self.reader = self.writer = None
        if connection is not None:
            try:
                await connection.disconnect()
            except Exception:
                pass


class SubscriberStream(_RawConnection):
    """A dedicated subscriber connection with the small PubSub surface the bridge uses.

    `get_message` returns dicts shaped like redis-py's (`type`, `pattern`, `channel`, `data`), and
    returns at once, without awaiting, while parsed messages are buffered."""

    async def subscribe(self, *channels: bytes | str) -> None:
        await self._send(b"SUBSCRIBE", channels)

    async def psubscribe(self, *patterns: bytes | str) -> None:
        await self._send(b"PSUBSCRIBE", patterns)

    async def _send(self, command: bytes, names: tuple[bytes | str, ...]) -> None:
        if self.writer is None:
            await self.open()
        args = [n.encode() if isinstance(n, str) else bytes(n) for n in names]
        assert self.writer is not None
        self.writer.write(encode_command(command, *args))

    async def get_message(self, ignore_subscribe_messages: bool = True, timeout: float | None = None) -> dict[str, Any] | None:
        parser = self.parser
        while True:
            reply = parser.gets()
            if reply is False:
                try:
                    if timeout is None:
                        await self._fill()
                    else:
                        async with asyncio.timeout(timeout):
                            await self._fill()
                except TimeoutError:
                    return None
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise RedisReplyError(str(reply))
            kind = reply[0]
            if kind == b"message":
                return {"type": "message", "pattern": None, "channel": reply[1], "data": reply[2]}
            if kind == b"pmessage":
                return {"type": "pmessage", "pattern": reply[1], "channel": reply[2], "data": reply[3]}
            if not ignore_subscribe_messages:
                return {"type": kind.decode(), "pattern": None, "channel": reply[1], "data": reply[2]}


class PublishStream(_RawConnection):
    """Pipelined PUBLISH on one connection: one write per batch, replies read in bulk."""

    async def publish_batch(self, batch: list[tuple[bytes, bytes, float]]) -> None:
        if self.writer is None:
            await self.open()
        assert self.writer is not None
        self.writer.write(b"".join([encode_publish(channel, payload) for channel, payload, _ in batch]))
        await self.writer.drain()
        parser = self.parser
        remaining = len(batch)
        error = None
        while remaining:
            reply = parser.gets()
            if reply is False:
                await self._fill()
                continue
            remaining -= 1
            if isinstance(reply, hiredis.ReplyError) and error is None:
                error = reply
        if error is not None:
            raise RedisReplyError(str(error))
