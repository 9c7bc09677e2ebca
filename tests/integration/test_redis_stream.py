"""The broadcast path's raw RESP streams (gateway.redis.stream) against real redis-server
processes on loopback: each stream opens its own connection, authenticates and selects its
database through protocol.resp, reads with hiredis, and is bounded in time; TLS with the
REDIS_TLS_* settings, a Unix socket and the Sentinel-named master are reached the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from gateway.config import Settings
from gateway.redis.stream import PublishStream, RedisReplyError, StreamClosed, SubscriberStream
from protocol.resp import RespError
from tests.conftest import RedisServerProcess
from tests.integration.test_topologies import REDIS_SERVER, Daemon, accepts, answers_ping, make_ca, make_cert, redis_conf
from tests.ports import LOOPBACK, free_port

STEP_TIMEOUT = 5.0


def settings(url: str, **fields: object) -> Settings:
    return Settings(redis_url=url, auth_mode="none", **fields)  # type: ignore[arg-type]


def admin(server: RedisServerProcess, **kwargs: object) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, socket_timeout=2, decode_responses=True, **kwargs)  # type: ignore[arg-type]


def clients_named(client: redis.Redis, name: str) -> list[dict[str, str]]:
    return [c for c in client.client_list() if c.get("name") == name]


@contextlib.asynccontextmanager
async def opened(*streams: SubscriberStream | PublishStream) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for stream in streams:
            await stream.aclose()


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServerProcess]:
    server = RedisServerProcess(tmp_path)
    server.start()
    try:
        with admin(server) as client:
            client.acl_setuser("gw", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"], commands=["+@all"])
        yield server
    finally:
        server.stop(signal.SIGKILL)


async def test_own_connection_with_user_password_db_and_name(acl_redis: RedisServerProcess) -> None:
    config = settings(f"redis://gw:s3cret@{LOOPBACK}:{acl_redis.port}/3")
    sub = SubscriberStream(config, client_name="gw-sub")
    pub = PublishStream(config, client_name="gw-pub", keepalive={})
    async with opened(sub, pub):
        await asyncio.wait_for(sub.subscribe(b"plain"), STEP_TIMEOUT)
        await sub.psubscribe("room#*")
        await sub.ssubscribe(b"shard{1}")
        acks = [await sub.get_message(ignore_subscribe_messages=False, timeout=STEP_TIMEOUT) for _ in range(3)]
        assert [(a["type"], a["channel"]) for a in acks if a] == [("subscribe", b"plain"), ("psubscribe", b"room#*"), ("ssubscribe", b"shard{1}")]
        await pub.open()
        with admin(acl_redis) as client:
            seen = {c["name"]: c for c in client.client_list() if c.get("name", "").startswith("gw-")}
        assert seen["gw-sub"]["db"] == "3" and seen["gw-sub"]["user"] == "gw"
        assert seen["gw-pub"]["db"] == "3" and seen["gw-pub"]["user"] == "gw"

        # One pipelined write, replies read in bulk, order kept.
        batch = [(b"plain", b"1", 0.0), (b"room#a", b"2", 0.0), (b"plain", b"\r\n\x00" * 1000, 0.0)]
        await asyncio.wait_for(pub.publish_batch(batch), STEP_TIMEOUT)
        got = [await sub.get_message(timeout=STEP_TIMEOUT) for _ in range(3)]
        assert got == [
            {"type": "message", "pattern": None, "channel": b"plain", "data": b"1"},
            {"type": "pmessage", "pattern": b"room#*", "channel": b"room#a", "data": b"2"},
            {"type": "message", "pattern": None, "channel": b"plain", "data": b"\r\n\x00" * 1000},
        ]
        assert await pub.spublish_batch([(b"shard{1}", b"s", 0.0), (b"nobody{2}", b"t", 0.0)]) == [1, 0]
        push = await sub.get_push(timeout=STEP_TIMEOUT)
        assert push is not None and (push.kind, push.channel, push.data) == (b"smessage", b"shard{1}", b"s")
        assert await sub.get_message(timeout=0.05) is None  # nothing else buffered

        await sub.sunsubscribe(b"shard{1}")
        await sub.ping()
        rest = [await sub.get_push(ignore_subscribe_messages=False, timeout=STEP_TIMEOUT) for _ in range(2)]
        assert [(p.kind, p.channel) for p in rest if p] == [(b"sunsubscribe", b"shard{1}"), (b"pong", b"")]
        assert await pub.execute("PUBSUB", "NUMSUB", "plain", timeout=STEP_TIMEOUT) == [b"plain", 1]

    with admin(acl_redis) as client:  # closing closes: nothing is left behind in a pool
        deadline = time.monotonic() + STEP_TIMEOUT
        while (clients_named(client, "gw-sub") or clients_named(client, "gw-pub")) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not clients_named(client, "gw-sub") and not clients_named(client, "gw-pub")


async def test_an_error_reply_in_a_batch_is_raised_after_the_whole_batch_is_read(acl_redis: RedisServerProcess) -> None:
    with admin(acl_redis) as client:
        client.acl_setuser("narrow", enabled=True, passwords=["+pw"], channels=["ok*"], commands=["+publish", "+ping"])
    pub = PublishStream(settings(f"redis://narrow:pw@{LOOPBACK}:{acl_redis.port}"))
    async with opened(pub):
        with pytest.raises(RedisReplyError, match="NOPERM"):
            await pub.publish_batch([(b"ok1", b"a", 0.0), (b"forbidden", b"b", 0.0), (b"ok2", b"c", 0.0)])
        # Every reply of that batch was consumed: the stream is still in step.
        await pub.publish_batch([(b"ok3", b"d", 0.0)])
        assert await pub.execute("PING", timeout=STEP_TIMEOUT) == b"PONG"
        replies = await pub.spublish_batch([(b"forbidden", b"e", 0.0)])
        assert len(replies) == 1 and isinstance(replies[0], RespError)


async def test_wrong_password_is_refused_in_the_handshake(acl_redis: RedisServerProcess) -> None:
    stream = PublishStream(settings(f"redis://gw:wrong@{LOOPBACK}:{acl_redis.port}"))
    with pytest.raises(RedisReplyError, match="WRONGPASS"):
        await stream.open()
    assert not stream.connected


async def test_opening_is_bounded_when_the_peer_never_answers() -> None:
    """A listener that accepts and then says nothing (a frozen Redis): the handshake gives up
    after connect_timeout instead of hanging the link's supervisor."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stream = PublishStream(settings(f"redis://:pw@{LOOPBACK}:{port}"), connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(StreamClosed, match="longer than 0.3s"):
            await stream.open()
        assert time.monotonic() - started < 2.0
        assert accepted and not stream.connected
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_killed_connection_ends_the_read(redis_server: RedisServerProcess) -> None:
    sub = SubscriberStream(settings(redis_server.url), client_name="doomed")
    async with opened(sub):
        await sub.subscribe(b"x")
        assert (await sub.get_message(ignore_subscribe_messages=False, timeout=STEP_TIMEOUT) or {})["type"] == "subscribe"
        with admin(redis_server) as client:
            client.client_kill_filter(_type="pubsub")
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(sub.get_message(timeout=None), STEP_TIMEOUT)


async def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    server = RedisServerProcess(tmp_path, extra_args=("--unixsocket", str(path), "--unixsocketperm", "700"))
    server.start()
    try:
        pub = PublishStream(settings(f"unix://{path}?db=2"), client_name="over-unix")
        async with opened(pub):
            assert await pub.execute("PING", timeout=STEP_TIMEOUT) == b"PONG"
            with admin(server) as client:
                (info,) = clients_named(client, "over-unix")
            assert info["db"] == "2" and pub.peer == str(path)
    finally:
        server.stop(signal.SIGKILL)


async def test_tls_uses_the_redis_tls_settings(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki, "test-ca")
    other_ca = make_ca(pki, "other-ca")
    server_cert = make_cert(pki, "redis", ca, f"IP:{LOOPBACK},DNS:localhost")
    client_cert = make_cert(pki, "gateway", ca, "DNS:gateway")
    port = free_port()
    daemon = Daemon(
        "redis-tls",
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
         "--tls-cert-file", str(server_cert[0]), "--tls-key-file", str(server_cert[1]), "--tls-ca-cert-file", str(ca[0]),
         "--tls-auth-clients", "yes"],
        tmp_path,
        lambda: accepts(port),
    )  # fmt: skip
    daemon.start()
    try:
        url = f"rediss://{LOOPBACK}:{port}"
        tls = {"redis_tls_ca_file": str(ca[0]), "redis_tls_cert_file": str(client_cert[0]), "redis_tls_key_file": str(client_cert[1])}
        sub = SubscriberStream(settings(url, **tls))
        pub = PublishStream(settings(url, **tls))
        async with opened(sub, pub):
            await sub.subscribe(b"secure")
            assert (await sub.get_message(ignore_subscribe_messages=False, timeout=STEP_TIMEOUT) or {})["type"] == "subscribe"
            await pub.publish_batch([(b"secure", b"over tls", 0.0)])
            assert (await sub.get_message(timeout=STEP_TIMEOUT) or {})["data"] == b"over tls"

        wrong = PublishStream(settings(url, **{**tls, "redis_tls_ca_file": str(other_ca[0])}))
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            await wrong.open()

        insecure = PublishStream(settings(url, **{**tls, "redis_tls_ca_file": str(other_ca[0]), "redis_tls_insecure": True}))
        async with opened(insecure):
            assert await insecure.execute("PING", timeout=STEP_TIMEOUT) == b"PONG"
    finally:
        daemon.stop(signal.SIGKILL)


async def test_sentinel_names_the_master(tmp_path: Path) -> None:
    master_port, sentinel_port = free_port(), free_port()
    master = Daemon("master", [REDIS_SERVER, str(redis_conf(tmp_path, "master", master_port, "requirepass mpw"))], tmp_path, lambda: accepts(master_port))
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind {LOOPBACK}\ndaemonize no\ndir {tmp_path}\n"
        f"sentinel monitor gw-master {LOOPBACK} {master_port} 1\nsentinel auth-pass gw-master mpw\n"
    )
    sentinel = Daemon("sentinel", [REDIS_SERVER, str(conf), "--sentinel"], tmp_path, lambda: answers_ping(sentinel_port))
    master.start()
    try:
        sentinel.start()
        sub = SubscriberStream(settings(f"redis+sentinel://:mpw@{LOOPBACK}:{sentinel_port}/gw-master/4"), client_name="via-sentinel")
        async with opened(sub):
            await asyncio.wait_for(sub.subscribe(b"ch"), STEP_TIMEOUT)
            assert (await sub.get_message(ignore_subscribe_messages=False, timeout=STEP_TIMEOUT) or {})["type"] == "subscribe"
            assert sub.peer == f"{LOOPBACK}:{master_port}"
            with redis.Redis(host=LOOPBACK, port=master_port, password="mpw", socket_timeout=2, decode_responses=True) as client:
                (info,) = clients_named(client, "via-sentinel")
            assert info["db"] == "4"
    finally:
        sentinel.stop(signal.SIGKILL)
        master.stop(signal.SIGKILL)
