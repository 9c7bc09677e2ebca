"""Broadcast operators (`io.to(room).except_(other).emit(...)`) and the collection of the
acknowledgements of a broadcast that asks for them."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Callable, Iterable

from protocol import socketio as sio
from protocol.cluster.messages import Room
from protocol.socketio import PacketType

from .adapter import NO_OPTIONS, Adapter, BroadcastOptions
from .handlers import AckTimeout, as_rooms, run_handler

# How long a broadcast with acknowledgements waits without `.timeout(s)`.
DEFAULT_ACK_TIMEOUT_S = 5.0


class AckCollector:
    """The acknowledgements of one broadcast, across the cluster: done when every server has
    said how many clients it reached and that many acks arrived, or when the timeout fires.

    The callback `(err, responses)` runs exactly once; `err` is an AckTimeout naming how many
    acks came in time, or the error that kept the cluster from being counted."""

    __slots__ = ("callback", "responses", "expected", "servers", "counted", "done", "timer")

    def __init__(self, callback: Callable[..., Any], timeout: float) -> None:
        self.callback = callback
        self.responses: list[Any] = []
        self.expected = 0
        self.servers: int | None = None  # unknown until the cluster has been counted
        self.counted = 0
        self.done = False
        self.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out)

    def on_client_count(self, count: int) -> None:
        """One server reached `count` clients."""
        self.expected += count
        self.counted += 1
        self._check()

    def on_ack(self, value: Any) -> None:
        self.responses.append(value)
        self._check()

    def set_servers(self, servers: int) -> None:
        """How many servers will report a client count (this one included)."""
        self.servers = servers
        self._check()

    async def count_servers(self, adapter: Adapter) -> None:
        try:
            servers = await adapter.server_count()
        except Exception as exc:  # an unreachable cluster fails the call, it does not hang it
            self.finish(exc)
            return
        self.set_servers(servers)

    def _check(self) -> None:
        servers = self.servers
        if servers is not None and self.counted >= servers and len(self.responses) >= self.expected:
            self.finish(None)

    def _timed_out(self) -> None:
        self.finish(AckTimeout(f"{len(self.responses)} acknowledgement(s) received before the timeout"))

    def finish(self, err: Exception | None) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        run_handler(self.callback, err, self.responses)


class BroadcastOperator:
    """An immutable description of "who gets this": rooms, exceptions, flags. Every modifier
    returns a new operator, so `io.to("a")` can be kept and reused safely."""

    __slots__ = ("adapter", "opts")

    def __init__(self, adapter: Adapter, opts: BroadcastOptions | None = None) -> None:
        self.adapter = adapter
        self.opts = opts or NO_OPTIONS

    def _with(self, **changes: Any) -> "BroadcastOperator":
        return BroadcastOperator(self.adapter, dataclasses.replace(self.opts, **changes))

    def to(self, room: Room | Iterable[Room]) -> "BroadcastOperator":
        opts = self.opts
        if opts is NO_OPTIONS and (type(room) is str or type(room) is int):
            # `io.to(room).emit(...)`, the chat's every message: one set, one options object.
            return BroadcastOperator(self.adapter, BroadcastOptions(frozenset((room,))))
        return self._with(rooms=opts.rooms | frozenset(as_rooms(room)))

    in_ = to

    def except_(self, room: Room | Iterable[Room]) -> "BroadcastOperator":
        return self._with(except_=self.opts.except_ | frozenset(as_rooms(room)))

    @property
    def volatile(self) -> "BroadcastOperator":
        return self._with(volatile=True)

    @property
    def local(self) -> "BroadcastOperator":
        return self._with(local=True)

    def compress(self, value: bool = True) -> "BroadcastOperator":
        return self._with(compress=value)

    def timeout(self, seconds: float) -> "BroadcastOperator":
        return self._with(timeout=seconds)

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        """Broadcast an event. With `callback(err, responses)` the clients' acks are collected
        (needs `.timeout(s)`); `err` is an AckTimeout if some did not answer in time."""
        if event in sio.RESERVED_EVENTS:
            raise ValueError(f"{event!r} is a reserved event name")
        if args and callable(args[-1]) and callback is None:
            callback, args = args[-1], args[:-1]
        packet = sio.Packet(PacketType.EVENT, self.adapter.nsp.name, [event, *args])
        if callback is None:
            self.adapter.broadcast(packet, self.opts)
            return
        self._emit_with_ack(packet, callback)

    def _emit_with_ack(self, packet: sio.Packet, callback: Callable[..., Any]) -> None:
        opts = self.opts
        collector = AckCollector(callback, opts.timeout if opts.timeout is not None else DEFAULT_ACK_TIMEOUT_S)
        self.adapter.broadcast_with_ack(packet, opts, collector.on_client_count, collector.on_ack)
        if opts.local:
            collector.set_servers(1)
        else:
            asyncio.ensure_future(collector.count_servers(self.adapter))

    async def emit_with_ack(self, event: str, *args: Any) -> list[Any]:
        """Broadcast and wait for every client's first ack argument; raises AckTimeout."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        def done(err: Exception | None, responses: list[Any]) -> None:
            if future.done():
                return
            if err is not None:
                future.set_exception(err)
            else:
                future.set_result(responses)

        self.emit(event, *args, callback=done)
        return await future

    async def fetch_sockets(self) -> list[Any]:
        """Sockets matching the selection, local ones as `Socket`, remote ones as proxies."""
        if self.opts.local:
            return list(self.adapter.select(self.opts))
        return await self.adapter.fetch_sockets(self.opts)

    def sockets_join(self, rooms: Room | Iterable[Room]) -> None:
        self.adapter.add_sockets(self.opts, as_rooms(rooms))

    def sockets_leave(self, rooms: Room | Iterable[Room]) -> None:
        self.adapter.del_sockets(self.opts, as_rooms(rooms))

    def disconnect_sockets(self, close: bool = False) -> None:
        self.adapter.disconnect_sockets(self.opts, close)
