"""Pieces of the HTTP front without a socket: repeated headers are joined in linear time, and
the publish API's failed-auth throttle refills, expires and stays bounded."""

from __future__ import annotations

import time

import pytest

from gateway.api import AuthFailureThrottle
from gateway.http import HttpConnection, HttpLimits, Request, Router


def parse(raw: bytes, limits: HttpLimits) -> list[Request]:
    seen: list[Request] = []
    router = Router()
    router.add("/echo", seen.append)  # never answered: the request is all we look at
    conn = HttpConnection(router, limits.max_body, limits=limits)
    conn.data_received(raw)
    return seen


def test_repeated_headers_are_joined_once_in_linear_time() -> None:
    count = 200_000
    limits = HttpLimits(max_headers=count + 10, max_header_bytes=64 << 20)
    raw = b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Dup: v%06d\r\n" % n for n in range(count)) + b"\r\n"
    started = time.process_time()
    [request] = parse(raw, limits)
    elapsed = time.process_time() - started
    # Joining with `+=` per repeat copies the growing value every time: 4-5 s for this many here.
    assert elapsed < 1.5, f"{count} repeated headers took {elapsed:.2f} s"
    parts = request.headers["x-dup"].split(", ")
    assert len(parts) == count and parts[0] == "v000000" and parts[-1] == f"v{count - 1:06d}"
    assert request.headers["host"] == "x"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_auth_throttle_refills_per_address_and_stays_bounded() -> None:
    clock = Clock()
    throttle = AuthFailureThrottle(per_minute=6, max_tracked=3, clock=clock)
    assert throttle.retry_after("10.0.0.1") is None
    results = [throttle.failed("10.0.0.1") for _ in range(6)]
    assert results == [False] * 5 + [True]  # the sixth used the last try
    assert throttle.retry_after("10.0.0.1") == 10  # one try back every 10 s at 6 a minute
    assert throttle.retry_after("10.0.0.2") is None
    clock.now += 10
    assert throttle.retry_after("10.0.0.1") is None
    # IPv6 clients count per /64: rotating addresses inside one block does not reset the count.
    for n in range(6):
        throttle.failed(f"2001:db8::{n + 1}")
    assert throttle.retry_after("2001:db8::ffff") is not None
    assert throttle.retry_after("2001:db8:0:1::1") is None
    for n in range(10):
        throttle.failed(f"192.0.2.{n}")
    assert len(throttle) == 3


def test_auth_throttle_off_at_zero() -> None:
    throttle = AuthFailureThrottle(per_minute=0, max_tracked=10)
    assert not any(throttle.failed("10.0.0.1") for _ in range(100))
    assert throttle.retry_after("10.0.0.1") is None and len(throttle) == 0


@pytest.mark.parametrize(
    "qs",
    ["EIO=4&transport=polling&sid=abc", "", "a", "a=", "=b", "a=b=c", "&&a=1&&", "a=1&a=2", "a;b=1", "x=%20y", "x=a+b", "é=ü", "a=1&b", "k=%zz", "a=%2B&b=+"],
)
def test_parse_query_is_parse_qsl(qs: str) -> None:
    """The split-only path for plain query strings answers what parse_qsl answers."""
    from urllib.parse import parse_qsl

    from gateway.http.request import parse_query

    assert parse_query(qs) == dict(parse_qsl(qs, keep_blank_values=True))
