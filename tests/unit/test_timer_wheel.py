"""The TimerWheel on a real event loop: entries fire once, in deadline order, never late and at
most one bucket early; discarded entries never fire; what a callback arms lands in a later turn."""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest

from gateway.engine.timers import TimerWheel


class Entry:
    def __init__(self, log: list[tuple["Entry", float]], loop: asyncio.AbstractEventLoop, then: "Callable[[Entry], None] | None" = None) -> None:
        self.log = log
        self.loop = loop
        self.then = then

    def wheel_fired(self) -> None:
        self.log.append((self, self.loop.time()))
        if self.then is not None:
            self.then(self)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_fires_in_deadline_order_at_most_one_bucket_early() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(resolution=0.01)
        fired: list[tuple[Entry, float]] = []
        start = loop.time()
        entries = {delay: Entry(fired, loop) for delay in (0.05, 0.015, 0.03, 0.0)}
        for delay, entry in entries.items():
            wheel.add(entry, delay)
        await asyncio.sleep(0.12)
        assert [e for e, _ in fired] == [entries[d] for d in (0.0, 0.015, 0.03, 0.05)]
        for (entry, at), delay in zip(fired, (0.0, 0.015, 0.03, 0.05)):
            assert at - start >= delay - 0.0111  # one bucket, and the loop's own clock slack
        assert len(wheel) == 0

    run(main())


def test_discarded_entry_never_fires_and_others_do() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(resolution=0.01)
        fired: list[tuple[Entry, float]] = []
        a, b = Entry(fired, loop), Entry(fired, loop)
        tick_a = wheel.add(a, 0.02)
        wheel.add(b, 0.02)
        wheel.discard(a, tick_a)
        wheel.discard(a, tick_a)  # twice: nothing
        await asyncio.sleep(0.06)
        assert [e for e, _ in fired] == [b]

    run(main())


def test_earliest_bucket_moves_the_loop_timer_forward() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(resolution=0.01)
        fired: list[tuple[Entry, float]] = []
        late, soon = Entry(fired, loop), Entry(fired, loop)
        wheel.add(late, 1.0)
        started = loop.time()
        wheel.add(soon, 0.02)
        await asyncio.sleep(0.08)
        assert [e for e, _ in fired] == [soon]
        assert fired[0][1] - started < 0.07
        wheel.close()

    run(main())


def test_callback_rearms_itself_in_a_later_bucket() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(resolution=0.01)
        fired: list[tuple[Entry, float]] = []
        rounds = []

        def again(entry: Entry) -> None:
            rounds.append(1)
            if len(rounds) < 3:
                wheel.add(entry, 0.02)

        wheel.add(Entry(fired, loop, again), 0.0)
        await asyncio.sleep(0.15)
        assert len(fired) == 3
        assert fired[1][1] - fired[0][1] >= 0.009 and fired[2][1] - fired[1][1] >= 0.009

    run(main())


def test_a_failing_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(resolution=0.01)
        fired: list[tuple[Entry, float]] = []

        def boom(entry: Entry) -> None:
            raise RuntimeError("boom")

        wheel.add(Entry(fired, loop, boom), 0.01)
        wheel.add(Entry(fired, loop), 0.01)
        later = Entry(fired, loop)
        wheel.add(later, 0.03)
        await asyncio.sleep(0.08)
        assert len(fired) == 3 and fired[-1][0] is later

    run(main())
    assert "timer_wheel_callback_failed" in caplog.text


def test_never_later_than_loop_handles_for_two_timers_in_a_row() -> None:
    """A ping timer then its pong timer (the heartbeat) on the wheel fire no later than the same
    two timers as loop handles, armed at the same moments: a client that checks at
    pingInterval + pingTimeout finds the session closed, as it did with loop handles."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(resolution=0.01)
        order: list[str] = []
        fired: list[tuple[Entry, float]] = []

        def wheel_pong(entry: Entry) -> None:
            order.append("wheel")
            if len(fired) == 1:
                wheel.add(entry, 0.205)

        def handle_fired(second: bool) -> None:
            order.append("handle")
            if not second:
                loop.call_later(0.205, handle_fired, True)

        wheel.add(Entry(fired, loop, wheel_pong), 0.305)
        loop.call_later(0.305, handle_fired, False)
        await asyncio.sleep(0.6)
        assert order == ["wheel", "handle", "wheel", "handle"]

    run(main())


def test_an_emptied_bucket_does_not_keep_the_wheel_waking() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(resolution=0.01)
        fired: list[tuple[Entry, float]] = []
        entry = Entry(fired, loop)
        for _ in range(100):  # re-armed and cancelled like a heartbeat on every pong
            tick = wheel.add(entry, 0.02)
            wheel.discard(entry, tick)
        wheel.add(entry, 0.02)
        await asyncio.sleep(0.06)
        assert len(fired) == 1
        assert wheel._handle is None and not wheel._ticks  # nothing left to wake up for

    run(main())
