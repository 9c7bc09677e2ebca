"""Token bucket, abuse detection and connection admission, with time passed in explicitly."""

from __future__ import annotations

from types import SimpleNamespace

from gateway.limits import ABUSE_WINDOW_S, ConnectionGate, EventRateLimiter, LimitStats, TokenBucket, Verdict, origin_allowed


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True  # one token after 100 ms at 10/s
    assert bucket.take(0.1) is False


def test_bucket_never_saves_more_than_the_burst() -> None:
    bucket = TokenBucket(rate=100, burst=3, now=0.0)
    assert sum(bucket.take(1000.0) for _ in range(10)) == 3


def test_sustained_excess_disconnects_a_burst_does_not() -> None:
    limiter = EventRateLimiter(rate=10, burst=10, disconnect_after=5, now=0.0)
    verdicts = [limiter.hit(0.0) for _ in range(14)]
    assert verdicts[:10] == [Verdict.ALLOW] * 10
    assert verdicts[10:] == [Verdict.DROP] * 4
    assert limiter.hit(0.0) is Verdict.DISCONNECT


def test_drops_are_forgotten_after_the_window() -> None:
    limiter = EventRateLimiter(rate=1, burst=1, disconnect_after=3, now=0.0)
    assert limiter.hit(0.0) is Verdict.ALLOW
    assert limiter.hit(0.0) is Verdict.DROP
    assert limiter.hit(0.0) is Verdict.DROP
    later = ABUSE_WINDOW_S + 1
    assert limiter.hit(later) is Verdict.ALLOW  # refilled
    assert limiter.hit(later) is Verdict.DROP  # a new window: one drop, not three
    assert limiter.hit(later) is Verdict.DROP


def test_zero_disconnect_after_never_disconnects() -> None:
    limiter = EventRateLimiter(rate=1, burst=1, disconnect_after=0, now=0.0)
    assert {limiter.hit(0.0) for _ in range(1000)} == {Verdict.ALLOW, Verdict.DROP}


def test_origins() -> None:
    allowed = ("https://app.example", "http://localhost:3000")
    assert origin_allowed("https://app.example", allowed)
    assert origin_allowed("http://localhost:3000", allowed)
    assert not origin_allowed("http://app.example", allowed)  # scheme matters
    assert not origin_allowed("https://app.example.evil", allowed)
    assert not origin_allowed("null", allowed)
    assert origin_allowed(None, allowed)  # not a browser
    assert origin_allowed("https://any", ())
    assert origin_allowed("https://any", ("*",))


def _request(origin: str | None) -> SimpleNamespace:
    return SimpleNamespace(headers={} if origin is None else {"origin": origin})


def test_gate_refuses_foreign_origins_and_a_full_node() -> None:
    engine = SimpleNamespace(sessions={})
    stats = LimitStats()
    gate = ConnectionGate(engine, ("https://app.example/",), max_connections=2, stats=stats)  # type: ignore[arg-type]
    assert gate.refusal(_request("https://app.example")) is None
    assert "origin" in (gate.refusal(_request("https://evil.example")) or "")
    engine.sessions.update({"a": 1, "b": 2})
    assert "full" in (gate.refusal(_request("https://app.example")) or "")
    assert (stats.connections_refused_origin, stats.connections_refused_full) == (1, 1)


def test_gate_without_limits_admits_everyone() -> None:
    gate = ConnectionGate(SimpleNamespace(sessions={str(i): i for i in range(1000)}), (), 0, LimitStats())  # type: ignore[arg-type]
    assert gate.refusal(_request("https://whatever")) is None
