"""The leave grace of presence, as pure bookkeeping (LeaveGrace) and in the single-node in-memory
Presence, on a fake clock: the last tab out leaves only after PRESENCE_LEAVE_GRACE_MS, and a
return within the grace announces nothing at all."""

from __future__ import annotations

import asyncio
import time

from gateway.presence import LeaveGrace, Presence

K1 = ("/", "conversation:1", "u1")
K2 = ("/", "conversation:1", "u2")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_leave_grace_expires_in_order_and_cancel_wins() -> None:
    grace = LeaveGrace(5.0)
    grace.hold(K1, 0.0)
    grace.hold(K2, 2.0)
    assert grace.next_deadline() == 5.0
    assert grace.expire(4.999) == []
    assert grace.expire(5.0) == [K1]
    assert grace.cancel(K2) is True
    assert grace.cancel(K2) is False  # nothing left to cancel
    assert grace.expire(100.0) == []
    assert (grace.expired, grace.cancelled) == (1, 1)
    # A new hold restarts the grace and keeps deadlines ordered.
    grace.hold(K1, 10.0)
    grace.hold(K2, 11.0)
    grace.hold(K1, 12.0)
    assert list(grace) == [K2, K1]
    assert grace.expire(16.5) == [K2]
    assert grace.expire(17.0) == [K1]


async def test_memory_presence_leave_waits_for_the_grace() -> None:
    clock = FakeClock()
    events: list[tuple[str, str]] = []
    presence = Presence(lambda kind, nsp, room, user: events.append((kind, user)), leave_grace_ms=60_000, clock=clock)
    try:
        presence.join(*K1)
        presence.join(*K1)  # a second tab
        assert events == [("join", "u1")]
        presence.leave(*K1)
        presence.leave(*K1)  # last tab out: held, still listed
        assert events == [("join", "u1")]
        assert await presence.users("/", "conversation:1") == ["u1"]
        clock.now += 59.999
        presence.expire_due()
        assert events == [("join", "u1")]
        clock.now += 0.001
        presence.expire_due()
        assert events == [("join", "u1"), ("leave", "u1")]
        assert await presence.users("/", "conversation:1") == []
        assert presence.members() == set()
    finally:
        await presence.close()


async def test_memory_presence_return_within_grace_announces_nothing() -> None:
    clock = FakeClock()
    events: list[tuple[str, str]] = []
    presence = Presence(lambda kind, nsp, room, user: events.append((kind, user)), leave_grace_ms=60_000, clock=clock)
    try:
        presence.join(*K1)
        presence.leave(*K1)
        clock.now += 30
        presence.join(*K1)  # reconnected within the grace
        clock.now += 3600
        presence.expire_due()
        assert events == [("join", "u1")]
        assert await presence.users("/", "conversation:1") == ["u1"]
        assert (presence.grace.cancelled, presence.grace.expired) == (1, 0)
        # Leaving again starts a fresh grace, then leaves exactly once.
        presence.leave(*K1)
        clock.now += 60
        presence.expire_due()
        presence.expire_due()
        assert events == [("join", "u1"), ("leave", "u1")]
    finally:
        await presence.close()


async def test_memory_presence_timer_fires_on_its_own() -> None:
    """The real timer applies the leave once the grace is over (no fake clock here)."""
    events: list[tuple[str, str, float]] = []
    presence = Presence(lambda kind, nsp, room, user: events.append((kind, user, time.monotonic())), leave_grace_ms=100)
    try:
        presence.join(*K1)
        presence.join(*K2)
        left = time.monotonic()
        presence.leave(*K1)
        await asyncio.sleep(0.03)
        presence.leave(*K2)
        deadline = time.monotonic() + 2.0
        while len(events) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [(kind, user) for kind, user, _ in events] == [("join", "u1"), ("join", "u2"), ("leave", "u1"), ("leave", "u2")]
        assert events[2][2] - left >= 0.1
        assert events[3][2] - left >= 0.13
    finally:
        await presence.close()


async def test_memory_presence_without_grace_leaves_at_once() -> None:
    events: list[tuple[str, str]] = []
    presence = Presence(lambda kind, nsp, room, user: events.append((kind, user)), leave_grace_ms=0)
    presence.join(*K1)
    presence.leave(*K1)
    assert events == [("join", "u1"), ("leave", "u1")]
    await presence.close()
