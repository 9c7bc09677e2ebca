"""One event-loop timer for the heartbeat of every session.

Every open session always has one heartbeat timer armed (the next ping, or the pong it waits
for), re-armed on every pong. With one `loop.call_later` each, 10,000 idle connections hold
10,000 timer handles (about 550 bytes each in uvloop, plus the dict that names them) and pay a
handle's creation and cancellation per ping cycle. The wheel keeps the armed entries in buckets
of `resolution` seconds, a dict entry each, under a single loop timer for the earliest bucket.

A timer fires in the first loop turn at or after its bucket's time, the deadline rounded down:
at most `resolution` early, never later than a loop handle would. Late would not do: a client
that waits exactly pingInterval + pingTimeout and then polls must find its session gone (the
official engine.io test suite does this), and two rounded-up timers in a row miss that by
milliseconds. Early by 10 ms on a 20 s timeout changes nothing a client can see. Cancelling is a
dict removal; an emptied bucket is forgotten at once, its place in the heap when its time comes.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from typing import Protocol

log = logging.getLogger("gateway.engine")

# The loop's clock may run a timer up to its resolution early (asyncio's clock_resolution; uvloop
# counts milliseconds): a bucket whose time is this close is due.
_CLOCK_SLACK = 0.001


class WheelEntry(Protocol):
    def wheel_fired(self) -> None: ...


class TimerWheel:
    """Deadlines in buckets of `resolution` seconds, under one loop timer."""

    __slots__ = ("resolution", "_buckets", "_ticks", "_handle", "_handle_tick", "_loop")

    def __init__(self, resolution: float = 0.01) -> None:
        self.resolution = resolution
        self._buckets: dict[int, dict[WheelEntry, None]] = {}
        self._ticks: list[int] = []  # a heap of bucket ticks (some of them of emptied buckets)
        self._handle: asyncio.TimerHandle | None = None
        self._handle_tick = 0  # the tick the loop timer is set for
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Armed entries (for tests and the curious)."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, entry: WheelEntry, delay: float) -> int:
        """Arm `entry.wheel_fired()` in `delay` seconds; returns the tick `discard` needs. One
        entry is armed at most once per tick."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        tick = math.floor((loop.time() + delay) / self.resolution)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
            if self._handle is None or tick < self._handle_tick:
                self._schedule(tick)
        bucket[entry] = None
        return tick

    def discard(self, entry: WheelEntry, tick: int) -> None:
        """Disarm an entry armed at `tick` (nothing if it already fired)."""
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.pop(entry, None)
            if not bucket:
                del self._buckets[tick]

    def _schedule(self, tick: int) -> None:
        assert self._loop is not None
        if self._handle is not None:
            self._handle.cancel()
        self._handle_tick = tick
        self._handle = self._loop.call_at(tick * self.resolution, self._fire)

    def _fire(self) -> None:
        self._handle = None
        loop = self._loop
        assert loop is not None
        ticks = self._ticks
        buckets = self._buckets
        due_before = loop.time() + _CLOCK_SLACK
        resolution = self.resolution
        due: list[dict[WheelEntry, None]] = []
        while ticks and ticks[0] * resolution <= due_before:
            bucket = buckets.pop(heapq.heappop(ticks), None)
            if bucket:
                due.append(bucket)
        # Entries are called after every due bucket is taken: what they arm lands in new buckets.
        for bucket in due:
            for entry in bucket:
                try:
                    entry.wheel_fired()
                except Exception:
                    log.exception("timer_wheel_callback_failed entry=%r", entry)
        while ticks and ticks[0] not in buckets:
            heapq.heappop(ticks)  # emptied buckets: nothing to wake up for
        if ticks and self._handle is None:
            self._schedule(ticks[0])
        elif ticks and ticks[0] < self._handle_tick:
            self._schedule(ticks[0])

    def close(self) -> None:
        """Forget every entry and the loop timer (the endpoint is shutting down)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._buckets.clear()
        self._ticks.clear()
