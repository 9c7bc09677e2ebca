"""REDIS_URL and REDIS_CLUSTER_NODES parsing (gateway.redis.urls), pure: no Redis needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, Settings
from gateway.redis.urls import (
    RedisTarget,
    SentinelTarget,
    cluster_seeds,
    parse_cluster_nodes,
    parse_redis_url,
    parse_sentinel_url,
    validate_redis_url,
)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://127.0.0.1:6380", RedisTarget(host="127.0.0.1", port=6380)),
        ("redis://redis.internal", RedisTarget(host="redis.internal", port=6379)),
        ("redis://127.0.0.1:6379/4", RedisTarget(host="127.0.0.1", db=4)),
        ("redis://127.0.0.1:6379?db=2", RedisTarget(host="127.0.0.1", db=2)),
        ("rediss://cache:6390/1", RedisTarget(host="cache", port=6390, tls=True, db=1)),
        ("redis://:s%40cret@h:1", RedisTarget(host="h", port=1, password="s@cret")),
        ("redis://gw:pw@h", RedisTarget(host="h", username="gw", password="pw")),
        ("redis://[::1]:7000/3", RedisTarget(host="::1", port=7000, db=3)),
        ("unix:///run/redis.sock", RedisTarget(path="/run/redis.sock")),
        ("unix://:pw@/run/redis.sock?db=5", RedisTarget(path="/run/redis.sock", db=5, password="pw")),
    ],
)
def test_server_urls(url: str, target: RedisTarget) -> None:
    assert parse_redis_url(url) == target
    validate_redis_url(url)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:6379", "must start with"),
        ("redis://h:0", "bad Redis port"),
        ("redis://h:99999", "bad Redis port"),
        ("redis://h:port", "bad Redis port"),
        ("redis://h/zero", "database is a number"),
        ("redis://h/1/2", "the path is /db"),
        ("unix://", "no socket path"),
        ("redis+sentinel://s1/", "no master name"),
        ("redis+sentinel:///main", "no sentinel address"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        validate_redis_url(url)


def test_sentinel_urls() -> None:
    assert parse_sentinel_url("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster") == SentinelTarget(
        (("127.0.0.1", 26379), ("127.0.0.1", 26380)), "mymaster"
    )
    target = parse_sentinel_url("redis+sentinel://gw:s%40cret@sentinel-a,[::1]:5000/main/3")
    assert target == SentinelTarget((("sentinel-a", 26379), ("::1", 5000)), "main", 3, "gw", "s@cret")
    with pytest.raises(ValueError, match="query strings"):
        parse_sentinel_url("redis+sentinel://s1/main?x=1")
    with pytest.raises(ValueError, match="mastername/db"):
        parse_sentinel_url("redis+sentinel://s1/main/x")


def test_cluster_seeds() -> None:
    assert parse_cluster_nodes(["127.0.0.1:7000", " [::1]:7001 "]) == [("127.0.0.1", 7000), ("::1", 7001)]
    with pytest.raises(ValueError, match="expected host:port"):
        parse_cluster_nodes(["127.0.0.1"])
    # The nodes win; else REDIS_URL's host and port are the one seed.
    assert cluster_seeds(["a:1"], "redis://b:2") == [("a", 1)]
    assert cluster_seeds([], "rediss://b:2/0") == [("b", 2)]
    assert cluster_seeds([], "redis://b") == [("b", 6379)]
    with pytest.raises(ValueError, match="over TCP"):
        cluster_seeds([], "unix:///run/redis.sock")
    with pytest.raises(ValueError, match="REDIS_CLUSTER_NODES or REDIS_URL"):
        cluster_seeds([], None)


def test_config_checks_sentinel_urls_with_the_same_parser() -> None:
    assert Settings.from_env({"REDIS_URL": "redis+sentinel://s1:26379/main"}, auth_mode="none").redis_url == "redis+sentinel://s1:26379/main"
    with pytest.raises(ConfigError, match="REDIS_URL: no master name"):
        Settings.from_env({"REDIS_URL": "redis+sentinel://s1:26379"}, auth_mode="none")


def test_urls_and_config_import_no_client_library() -> None:
    """config.py validates REDIS_URL through gateway.redis.urls, which is pure: importing the
    settings loads neither redis-py nor the client factory (so no import circle between them)."""
    code = (
        "import sys, gateway.config, gateway.redis.urls; "
        "bad = sorted(m for m in sys.modules if m == 'redis' or m.startswith(('redis.', 'gateway.redis.client', 'gateway.adapter.connection'))); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "", out.stdout
