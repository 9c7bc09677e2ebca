"""Slot routing for sharded pub/sub: which master carries which channel, and one subscriber link
per master.

Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis >= 7) is scoped to one shard: a channel hashes to
a slot like a key, and only the master owning that slot (and its replicas) carries the channel.
`SlotMap` is one `CLUSTER SLOTS` answer; `ShardLink` one dedicated SSUBSCRIBE connection.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from protocol.resp import RespError, key_slot

from ..config import Settings
from ..redis.stream import SubscriberStream
from ..redis.supervision import Watchdog
from ..redis.urls import cluster_seeds, parse_cluster_nodes
from .transport import TCP_KEEPALIVE, ClusterUnavailable

if TYPE_CHECKING:
    from .sharded import ShardedTransport

Address = tuple[str, int]

SLOT_COUNT = 16384
# Redis answers these when the slot map we routed by is out of date (or being rebuilt).
_STALE_MAP_ERRORS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


class SlotMapUnavailable(ClusterUnavailable):
    """No seed node answered CLUSTER SLOTS, or a slot has no owner right now."""


def is_stale_map(exc: BaseException) -> bool:
    """A refusal that means "ask the cluster where this goes again": from redis-py (a
    ResponseError) or from our own streams (an error reply is a RespError value)."""
    return isinstance(exc, (ResponseError, RespError)) and str(exc).split(" ", 1)[0].upper() in _STALE_MAP_ERRORS


def seed_addresses(settings: Settings) -> list[Address]:
    """REDIS_CLUSTER_NODES, or else the host and port of REDIS_URL (one seed is enough: the
    others are learnt from CLUSTER SLOTS)."""
    try:
        return cluster_seeds(settings.redis_cluster_nodes, settings.redis_url)
    except ValueError as exc:
        raise SlotMapUnavailable(str(exc)) from exc


__all__ = ["Address", "ShardLink", "SlotMap", "SlotMapUnavailable", "is_stale_map", "parse_cluster_nodes", "seed_addresses"]


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which master owns which slot, from one `CLUSTER SLOTS` answer (sorted ranges)."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    owners: tuple[Address, ...]
    # channel -> owner, as this map routes it: every publish asks, and the same room channels
    # come back all the time (a CRC16 in Python and a bisect each, otherwise). A new map starts
    # empty, so a cached owner is never older than the map.
    _owner_of: dict[bytes, Address] = field(default_factory=dict, compare=False, repr=False)

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
        cache = self._owner_of
        owner = cache.get(channel)
        if owner is None:
            owner = self.owner(key_slot(channel))
            if len(cache) >= _OWNER_CACHE_MAX:
                cache.clear()  # many one-off channels (private rooms): start over, stay bounded
            cache[channel] = owner
        return owner


_OWNER_CACHE_MAX = 65536


class ShardLink:
    """One dedicated SSUBSCRIBE connection to one master (a `SubscriberStream` of its own, not a
    redis-py pubsub: its per-message cost is the broadcast path's), read by its own task.

    The link tracks which channels it holds; a SUNSUBSCRIBE it did not ask for (Redis sends one
    when a slot migrates away) or any read error is reported to the transport, which re-derives the
    placement. The connection itself never retries: the transport decides where to reconnect.
    `watchdog` holds the link's probe facts (patience None: a silent shard link is rebuilt).
    """

    def __init__(self, transport: "ShardedTransport", address: Address, probe_channel: bytes) -> None:
        self.transport = transport
        self.address = address
        self.probe_channel = probe_channel
        self.stream = SubscriberStream(transport.settings, address=address, keepalive=TCP_KEEPALIVE)
        self.channels: set[bytes] = set()
        self.leaving: set[bytes] = set()
        self.failed = False
        self.watchdog = Watchdog(transport.settings.watchdog_ms / 1000, None)
        self.watchdog.start(time.monotonic())
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ShardLink {self.address[0]}:{self.address[1]} channels={len(self.channels)}>"

    async def open(self) -> None:
        await self.stream.open()
        await self.stream.ssubscribe(self.probe_channel)
        self.task = asyncio.get_running_loop().create_task(self._read(), name=f"shard-link-{self.address[1]}")

    async def subscribe(self, channel: bytes) -> None:
        self.leaving.discard(channel)
        await self.stream.ssubscribe(channel)
        self.channels.add(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        if channel not in self.channels:
            return
        self.channels.discard(channel)
        self.leaving.add(channel)
        await self.stream.sunsubscribe(channel)

    async def _read(self) -> None:
        """Dispatch what the link hears: one await per read of the socket (`get_shard_batch`),
        messages as raw arrays; the probe and the server's unsubscriptions handled here."""
        transport = self.transport
        dispatch = transport.dispatch
        get_shard_batch = self.stream.get_shard_batch
        probe_channel = self.probe_channel
        try:
            while True:
                for push in await get_shard_batch():
                    if type(push) is list:  # [b"smessage", channel, data]
                        channel = push[1]
                        if channel != probe_channel:
                            dispatch(channel, push[2])
                        else:
                            self.watchdog.probe_seen(time.monotonic())
                            transport.probe_arrived(self)
                        continue
                    if isinstance(push, BaseException):
                        raise push  # an error reply or a stream out of step, after what preceded it
                    kind, _, channel, _ = push
                    if kind == b"sunsubscribe":
                        if channel in self.leaving:
                            self.leaving.discard(channel)
                        else:
                            # The server dropped us: the slot moved to another master.
                            self.channels.discard(channel)
                            transport.request_resync(f"server unsubscribed {channel!r} (slot moved)")
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            self.failed = True
            transport.link_failed(self, exc)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        await self.stream.aclose()
