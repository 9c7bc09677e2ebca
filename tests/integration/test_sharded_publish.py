"""The sharded outbox's publish path on a real 3-master Redis Cluster: SPUBLISH pipelined on our
own per-master streams, and a batch sent with a stale slot map (Redis answers MOVED, as an error
reply value on the stream) routed again after the map is re-read, in order, nothing lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.cluster.sharded import ShardedTransport
from gateway.cluster.slots import SlotMap
from gateway.config import Settings
from gateway.redis.stream import SubscriberStream
from protocol.cluster import Broadcast, BroadcastOptions, sharded, sharded_room_channel
from tests.integration.test_sharded import RedisClusterProcesses, redis_cluster  # noqa: F401  (fixture)

ROOM = "stale-map-room"


@pytest.fixture
async def transport(redis_cluster: RedisClusterProcesses) -> AsyncIterator[ShardedTransport]:  # noqa: F811
    settings = Settings(auth_mode="none", redis_mode="sharded", redis_cluster_nodes=tuple(redis_cluster.nodes))
    bridge = ShardedTransport(settings)
    await bridge.start()
    try:
        for _ in range(100):
            if bridge.pub_up and bridge.sub_up:
                break
            await asyncio.sleep(0.05)
        assert bridge.pub_up and bridge.sub_up
        yield bridge
    finally:
        await bridge.close()


async def listen(bridge: ShardedTransport, channel: bytes) -> SubscriberStream:
    assert bridge.slots is not None
    stream = SubscriberStream(bridge.settings, address=bridge.slots.owner_of(channel))
    await stream.ssubscribe(channel)
    return stream


async def heard(stream: SubscriberStream, count: int) -> list[bytes]:
    payloads: list[bytes] = []
    async with asyncio.timeout(5.0):
        while len(payloads) < count:
            for push in await stream.get_shard_batch():
                if type(push) is list:
                    payloads.append(push[2])
    return payloads


def room_broadcast(n: int) -> Broadcast:
    return Broadcast("0123456789abcdef", "/", ["e", n], BroadcastOptions([ROOM], []))


async def test_batches_reach_the_owner_in_order(transport: ShardedTransport) -> None:
    channel = sharded_room_channel(transport.prefix, "/", ROOM).encode()
    stream = await listen(transport, channel)
    try:
        for n in range(50):
            transport.publish(room_broadcast(n))
        payloads = await heard(stream, 50)
    finally:
        await stream.aclose()
    assert [sharded.decode_message(p).data for p in payloads] == [["e", n] for n in range(50)]  # type: ignore[union-attr]
    assert transport.stats.publish_errors == 0


async def test_a_batch_refused_with_moved_is_routed_again(transport: ShardedTransport) -> None:
    channel = sharded_room_channel(transport.prefix, "/", ROOM).encode()
    stream = await listen(transport, channel)
    assert transport.slots is not None
    owner = transport.slots.owner_of(channel)
    wrong = next(a for a in transport.slots.masters if a != owner)
    transport.slots = SlotMap.single(wrong)  # as if the slot had moved since the map was read
    try:
        for n in range(20):
            transport.publish(room_broadcast(n))
        payloads = await heard(stream, 20)
    finally:
        await stream.aclose()
    assert [sharded.decode_message(p).data for p in payloads] == [["e", n] for n in range(20)]  # type: ignore[union-attr]
    assert transport.stats.publish_errors >= 1  # the MOVED was seen and counted
    assert transport.slots.owner_of(channel) == owner  # the map was read again
