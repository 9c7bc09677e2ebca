"""Link supervision decisions (gateway.redis.supervision) driven by a fake clock: no sockets, no
sleeps. Each test states one rule of the README's resilience settings."""

from __future__ import annotations

import logging

import pytest

from gateway.redis.supervision import (
    Backoff,
    NodeLinks,
    Outbox,
    QueuedMessage,
    ReplayGate,
    Verdict,
    Watchdog,
    probe_interval,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


# -- Outbox ----------------------------------------------------------------------------------------


def test_outbox_keeps_order_and_is_unbounded_by_count_while_the_link_is_up() -> None:
    clock = FakeClock()
    outbox = Outbox(max_messages=3, max_age_s=10, clock=clock)
    for i in range(5):
        outbox.put(b"ch", b"%d" % i, link_up=True)
    assert len(outbox) == 5 and outbox.dropped_total == 0
    assert [m.payload for m in outbox.take(limit=2)] == [b"0", b"1"]
    assert [m.payload for m in outbox.take()] == [b"2", b"3", b"4"]
    assert not outbox and outbox.take() == []


def test_outbox_drops_the_oldest_past_the_count_while_the_link_is_down(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    outbox = Outbox(max_messages=5, max_age_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, "gateway.cluster"):
        for i in range(12):
            outbox.put(b"ch", b"%d" % i, link_up=False)
    assert [m.payload for m in outbox.take()] == [b"7", b"8", b"9", b"10", b"11"]
    assert outbox.dropped == {"outbox full": 7, "older than OUTBOX_MAX_AGE_MS": 0}
    # Seven drops in the same second: one log line, not seven.
    assert [r.getMessage() for r in caplog.records] == ["cluster_outbox_dropped reason='outbox full' total=1"]


def test_outbox_of_zero_keeps_nothing_while_down_instead_of_failing() -> None:
    outbox = Outbox(max_messages=0, max_age_s=10, clock=FakeClock())
    outbox.put(b"ch", b"x", link_up=False)  # must not raise (popleft on an empty deque)
    assert len(outbox) == 0 and outbox.dropped["outbox full"] == 1
    outbox.put(b"ch", b"y", link_up=True)
    assert [m.payload for m in outbox.take()] == [b"y"]


def test_outbox_drops_what_is_older_than_the_age_bound_when_taking() -> None:
    clock = FakeClock()
    outbox = Outbox(max_messages=100, max_age_s=10, clock=clock)
    outbox.put(b"ch", b"old", link_up=False)
    clock.advance(6)
    outbox.put(b"ch", b"newer", link_up=False)
    clock.advance(4.5)  # "old" is 10.5 s old, "newer" 4.5 s
    assert [m.payload for m in outbox.take()] == [b"newer"]
    assert outbox.dropped == {"outbox full": 0, "older than OUTBOX_MAX_AGE_MS": 1}
    assert outbox.dropped_total == 1


def test_outbox_requeue_puts_a_batch_back_in_front_in_order() -> None:
    clock = FakeClock()
    outbox = Outbox(max_messages=100, max_age_s=10, clock=clock)
    for i in range(4):
        outbox.put(b"ch", b"%d" % i, link_up=True)
    batch = outbox.take(limit=3)
    outbox.put(b"ch", b"late", link_up=True)
    outbox.requeue(batch)
    assert [m.payload for m in outbox.take()] == [b"0", b"1", b"2", b"3", b"late"]
    assert isinstance(batch[0], QueuedMessage) and batch[0].queued_at == clock.now


# -- Backoff ---------------------------------------------------------------------------------------


def test_backoff_doubles_from_initial_to_the_cap_with_jitter_between_half_and_all() -> None:
    draws = iter([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.5])
    backoff = Backoff(initial_s=0.1, max_s=1.0, limit=10, random=lambda: next(draws))
    delays = [backoff.failed() for _ in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.failed() == pytest.approx(0.5)  # random() = 0: half the cap
    assert backoff.failed() == pytest.approx(0.75)
    assert backoff.attempts == 8
    assert backoff.succeeded() == 8 and backoff.attempts == 0
    assert backoff.succeeded() == 0


def test_backoff_says_the_limit_once_at_the_limiting_attempt() -> None:
    backoff = Backoff(0.1, 1.0, limit=3, random=lambda: 1.0)
    reached = []
    for _ in range(5):
        backoff.failed()
        reached.append(backoff.limit_reached)
    assert reached == [False, False, True, False, False]


def test_node_goes_single_node_at_the_attempt_limit_and_rejoins_when_both_links_are_up(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    links = NodeLinks(0.1, 3.0, limit=3, clock=clock, random=lambda: 1.0)
    links.restored(links.publisher)
    assert links.health(outbox=0)["status"] == "degraded"  # subscriber not up yet
    links.restored(links.subscriber)
    assert links.reconnects == 0  # first connection: nothing was re-established
    with caplog.at_level(logging.INFO, "gateway.cluster"):
        assert links.failed(links.subscriber, ConnectionError("refused")) == pytest.approx(0.1)
        links.failed(links.subscriber, ConnectionError("refused"))
        assert not links.single_node
        links.failed(links.subscriber, ConnectionError("refused"))
        assert links.single_node
        links.failed(links.publisher, ConnectionError("refused"))
        clock.advance(2.5)
        body = links.health(outbox=7)
        assert body["mode"] == "single-node" and body["status"] == "degraded" and body["outbox"] == 7
        assert body["publisher"] == "down" and body["subscriber"] == "down"
        assert body["links"]["subscriber"] == {"state": "down", "since_seconds": 2.5, "attempts": 3, "last_error": "refused"}
        assert links.restored(links.subscriber) == 3
        assert links.single_node  # the publisher is still down
        assert links.restored(links.publisher) == 1
    assert not links.single_node
    assert links.reconnects == 2 and links.reconnect_attempts == 4
    body = links.health(outbox=0)
    assert (body["mode"], body["status"]) == ("redis", "healthy")
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("cluster_unreachable link=subscriber attempts=3 mode=single-node") for m in messages) == 1
    assert "cluster_link_up link=subscriber after_attempts=3" in messages
    assert messages[-1] == "cluster_rejoined mode=redis"


def test_a_stalled_link_is_down_without_counting_an_attempt() -> None:
    links = NodeLinks(0.1, 3.0, limit=3, clock=FakeClock())
    links.restored(links.publisher)
    links.restored(links.subscriber)
    assert links.subscriber.set_up(False) is True
    assert links.subscriber.set_up(False) is False
    assert links.subscriber.attempts == 0 and links.health(outbox=0)["status"] == "degraded"


# -- Watchdog --------------------------------------------------------------------------------------

WINDOW = 3.0  # REDIS_WATCHDOG_MS=3000
PATIENCE = 10.0  # OUTBOX_MAX_AGE_MS=10000


def run(watchdog: Watchdog, clock: FakeClock, seconds: float, *, redis_answers: bool, probes_return: bool, step: float = 0.25) -> list[Verdict]:
    """Drive the watchdog as a subscriber loop does, for `seconds` or until LOST, one tick every
    `step`."""
    verdicts = []
    end = clock.now + seconds
    while clock.now < end:
        clock.advance(step)
        if watchdog.probe_due(clock.now):
            sent = clock.now
            watchdog.probe_sent(sent)
            if redis_answers:
                watchdog.probe_acked(sent, clock.now, receivers=1)
                if probes_return:
                    watchdog.probe_seen(clock.now)
        verdicts.append(watchdog.check(clock.now))
        if verdicts[-1] is Verdict.LOST:
            break  # the loop rebuilds the subscriber here
    return verdicts


def test_probe_interval_is_a_third_of_the_window_at_most_ten_a_second() -> None:
    assert probe_interval(3.0) == 1.0 and probe_interval(0.2) == 0.1


def test_watchdog_healthy_while_probes_come_back() -> None:
    clock = FakeClock()
    dog = Watchdog(WINDOW, PATIENCE)
    dog.start(clock.now)
    assert set(run(dog, clock, 30, redis_answers=True, probes_return=True)) == {Verdict.HEALTHY}
    assert dog.stalls == dog.rebuilds == 0


def test_watchdog_lost_when_redis_answers_but_probes_stop_arriving() -> None:
    """A dead subscriber (killed by Redis, half-open TCP): Redis acknowledges probes published
    after the last one heard, and they do not come: rebuild once the window has passed."""
    clock = FakeClock()
    dog = Watchdog(WINDOW, PATIENCE)
    dog.start(clock.now)
    verdicts = run(dog, clock, 10, redis_answers=True, probes_return=False)
    first_bad = next(i for i, v in enumerate(verdicts) if v is not Verdict.HEALTHY)
    assert verdicts[first_bad] is Verdict.LOST
    # The first tick past the window: probes have been acknowledged and not heard for seconds,
    # so this is a dead subscriber at once, not a stall waiting out the patience.
    assert (first_bad + 1) * 0.25 == pytest.approx(WINDOW + 0.25)
    assert dog.stalls == 1 and dog.rebuilds == 1
    assert "received nothing" in dog.reason


def test_watchdog_keeps_a_stalled_redis_degraded_and_resumes_without_a_rebuild() -> None:
    """Redis frozen: no probe acknowledged, none arrives. Kept (it holds what Redis will send),
    degraded, for the patience window; then Redis resumes and the link is up again."""
    clock = FakeClock()
    dog = Watchdog(WINDOW, PATIENCE)
    dog.start(clock.now)
    run(dog, clock, 2, redis_answers=True, probes_return=True)
    frozen = run(dog, clock, 8, redis_answers=False, probes_return=False)
    assert frozen.count(Verdict.STALLED) == 1
    assert Verdict.LOST not in frozen and frozen[-1] is Verdict.DEGRADED
    back = run(dog, clock, 2, redis_answers=True, probes_return=True)
    resumed = back.index(Verdict.RESUMED)  # at the first probe that comes back
    assert set(back[:resumed]) == {Verdict.DEGRADED} and set(back[resumed + 1 :]) == {Verdict.HEALTHY}
    assert dog.stalls == 1 and dog.rebuilds == 0


def test_watchdog_rebuilds_a_stall_that_outlasts_the_patience() -> None:
    clock = FakeClock()
    dog = Watchdog(WINDOW, PATIENCE)
    dog.start(clock.now)
    frozen = run(dog, clock, 20, redis_answers=False, probes_return=False)
    stalled_at = frozen.index(Verdict.STALLED)
    lost_at = frozen.index(Verdict.LOST)
    assert (lost_at - stalled_at) * 0.25 == pytest.approx(PATIENCE + 0.25)
    assert dog.rebuilds == 1


def test_watchdog_patience_is_at_least_the_window() -> None:
    clock = FakeClock()
    dog = Watchdog(WINDOW, 0.0)  # OUTBOX_MAX_AGE_MS=0
    dog.start(clock.now)
    frozen = run(dog, clock, 10, redis_answers=False, probes_return=False)
    assert (frozen.index(Verdict.LOST) - frozen.index(Verdict.STALLED)) * 0.25 == pytest.approx(WINDOW + 0.25)


def test_watchdog_lost_at_once_when_redis_no_longer_counts_the_subscriber() -> None:
    clock = FakeClock()
    dog = Watchdog(WINDOW, PATIENCE)
    dog.start(clock.now)
    clock.advance(1)
    dog.probe_acked(clock.now, clock.now, receivers=0)
    assert dog.check(clock.now) is Verdict.LOST
    assert dog.reason == "Redis no longer counts our subscriber" and dog.rebuilds == 0
    dog.start(clock.now)  # a rebuilt link starts afresh
    assert dog.check(clock.now) is Verdict.HEALTHY


def test_watchdog_without_patience_rebuilds_a_silent_link_at_once() -> None:
    """The sharded links: silence past the window is a rebuild, frozen Redis or not."""
    clock = FakeClock()
    dog = Watchdog(WINDOW, None)
    dog.start(clock.now)
    frozen = run(dog, clock, 5, redis_answers=False, probes_return=False)
    assert frozen.index(Verdict.LOST) * 0.25 + 0.25 == pytest.approx(WINDOW + 0.25)
    assert Verdict.STALLED not in frozen and dog.rebuilds == 1 and dog.stalls == 0


# -- ReplayGate ------------------------------------------------------------------------------------

A, B = b"socket.io-request#/#", b"socket.io-request#/chat#"


def test_replay_waits_for_as_many_subscribers_as_before_the_outage() -> None:
    clock = FakeClock()
    gate = ReplayGate({A: 3, B: 3}, clock.now, deadline_s=4.0)
    assert gate.poll_interval == 0.1
    assert not gate.ready({A: 1, B: 1}, [A, B], clock.advance(0.1))
    assert not gate.ready({A: 3, B: 2}, [A, B], clock.advance(0.1))
    assert gate.ready({A: 3, B: 3}, [A, B], clock.advance(0.1))


def test_replay_without_a_count_from_before_waits_for_a_plateau() -> None:
    clock = FakeClock()
    gate = ReplayGate({}, clock.now, deadline_s=4.0)
    assert gate.poll_interval == 0.3
    assert not gate.ready({A: 1}, [A], clock.advance(0.3))
    assert not gate.ready({A: 2}, [A], clock.advance(0.3))
    assert gate.ready({A: 2}, [A], clock.advance(0.3))


def test_replay_never_waits_past_the_deadline_or_without_channels() -> None:
    clock = FakeClock()
    gate = ReplayGate({A: 5}, clock.now, deadline_s=4.0)
    assert not gate.ready({A: 1}, [A], clock.advance(3.9))
    assert gate.ready({A: 1}, [A], clock.advance(0.1))
    assert ReplayGate({A: 5}, clock.now, 4.0).ready({}, [], clock.now)


def test_peer_counts_are_trusted_only_once_the_others_had_time_to_come_back() -> None:
    assert ReplayGate.counts_trusted(True, 0, recovering=False, up_for_s=0.0, settle_s=4.0)
    assert not ReplayGate.counts_trusted(True, 0, recovering=True, up_for_s=3.0, settle_s=4.0)
    assert ReplayGate.counts_trusted(True, 0, recovering=True, up_for_s=4.5, settle_s=4.0)
    assert not ReplayGate.counts_trusted(False, 0, recovering=False, up_for_s=9.0, settle_s=4.0)
    assert not ReplayGate.counts_trusted(True, 2, recovering=False, up_for_s=9.0, settle_s=4.0)
