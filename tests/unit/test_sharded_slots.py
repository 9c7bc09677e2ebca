"""Slot routing of the sharded bridge: CLUSTER SLOTS parsing, owner lookup, probe channels, and
the REDIS_MODE=sharded settings. (The wire codec is tests/unit/test_cluster_codec.py.)"""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from gateway.cluster.sharded import ShardedTransport as ShardedBridge
from gateway.cluster.slots import SlotMap, SlotMapUnavailable, parse_cluster_nodes, seed_addresses
from gateway.config import ConfigError, Settings

# What Redis 7 answers to CLUSTER SLOTS (ranges unordered, an empty host on one master).
REPLY = [
    [10923, 16383, [b"10.0.0.3", 7002, b"id3"]],
    [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
    [5461, 10922, [b"", 7001, b"id2"]],
]


def test_slot_map_routes_every_slot_to_its_master() -> None:
    slots = SlotMap.from_reply(REPLY, ("10.0.0.9", 7001))
    assert slots.owner(0) == slots.owner(5460) == ("10.0.0.1", 7000)
    assert slots.owner(5461) == ("10.0.0.9", 7001)  # empty host: the address we asked
    assert slots.owner(16383) == ("10.0.0.3", 7002)
    assert slots.masters == [("10.0.0.1", 7000), ("10.0.0.3", 7002), ("10.0.0.9", 7001)]
    channel = b"socket.io#/#room1#"
    assert slots.owner_of(channel) == slots.owner(key_slot(channel))


def test_an_uncovered_slot_is_an_error_not_a_guess() -> None:
    slots = SlotMap.from_reply([[0, 100, [b"h", 1, b"x"]]], ("h", 1))
    with pytest.raises(SlotMapUnavailable):
        slots.owner(101)


def test_single_node_redis_owns_everything() -> None:
    slots = SlotMap.single(("127.0.0.1", 6379))
    assert {slots.owner(s) for s in (0, 8000, 16383)} == {("127.0.0.1", 6379)}


def test_probe_channels_hash_into_their_masters_slots() -> None:
    settings = Settings(auth_mode="none", redis_mode="sharded", redis_cluster_nodes=("10.0.0.1:7000",))
    bridge = ShardedBridge(settings)
    slots = SlotMap.from_reply(REPLY, ("10.0.0.9", 7001))
    channels = {address: bridge.probe_channel_for(slots, address) for address in slots.masters}
    assert len(set(channels.values())) == 3
    for address, channel in channels.items():
        assert slots.owner_of(channel) == address
        assert channel.startswith(f"socket.io-gateway-probe#{bridge.node_tag}#".encode())


def test_cluster_node_lists_and_seeds() -> None:
    assert parse_cluster_nodes(["127.0.0.1:7000", " h:7001"]) == [("127.0.0.1", 7000), ("h", 7001)]
    for bad in ("nohost", "h:", ":7000", "h:99999", "h:port"):
        with pytest.raises(ValueError):
            parse_cluster_nodes([bad])
    from_url = Settings(auth_mode="none", redis_mode="sharded", redis_url="redis://10.1.1.1:7005/0")
    assert seed_addresses(from_url) == [("10.1.1.1", 7005)]


def test_sharded_settings_are_checked_at_start() -> None:
    env = {"AUTH_MODE": "none", "REDIS_MODE": "sharded"}
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_NODES"):
        Settings.from_env(env)
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_NODES"):
        Settings.from_env({**env, "REDIS_CLUSTER_NODES": "a:1,b"})
    with pytest.raises(ConfigError, match="REDIS_SUBSCRIPTION_MODE"):
        Settings.from_env({**env, "REDIS_CLUSTER_NODES": "a:1", "REDIS_SUBSCRIPTION_MODE": "sometimes"})
    settings = Settings.from_env({**env, "REDIS_CLUSTER_NODES": "a:1,b:2", "REDIS_SUBSCRIPTION_MODE": "static"})
    assert settings.redis_cluster_nodes == ("a:1", "b:2") and settings.redis_subscription_mode == "static"


def test_owner_cache_routes_as_the_map_and_stays_bounded() -> None:
    import gateway.cluster.slots as slots_module

    slots = SlotMap.from_reply(REPLY, ("10.0.0.9", 7001))
    channels = [f"socket.io#/#room{n}#".encode() for n in range(200)]
    assert [slots.owner_of(c) for c in channels] == [slots.owner(key_slot(c)) for c in channels]
    assert [slots.owner_of(c) for c in channels] == [slots.owner(key_slot(c)) for c in channels]  # cached
    assert slots == SlotMap.from_reply(REPLY, ("10.0.0.9", 7001))  # the cache is no part of the map
    old = slots_module._OWNER_CACHE_MAX
    slots_module._OWNER_CACHE_MAX = 10
    try:
        fresh = SlotMap.from_reply(REPLY, ("10.0.0.9", 7001))
        assert [fresh.owner_of(c) for c in channels] == [slots.owner(key_slot(c)) for c in channels]
        assert len(fresh._owner_of) <= 10
    finally:
        slots_module._OWNER_CACHE_MAX = old


def test_stale_map_refusals_from_redis_py_and_from_our_streams() -> None:
    from redis.exceptions import ResponseError

    from gateway.cluster.slots import is_stale_map
    from protocol.resp import RespError

    for kind in (ResponseError, RespError):
        assert is_stale_map(kind("MOVED 1234 10.0.0.1:7000"))
        assert is_stale_map(kind("CLUSTERDOWN The cluster is down"))
        assert not is_stale_map(kind("ERR unknown command"))
    assert not is_stale_map(ConnectionError("MOVED"))
