"""Loop-stall watchdog: a node whose event loop stops turning exits, so its supervisor restarts it.

Why: a gateway node is one asyncio loop. A handler that blocks it (a synchronous call, a runaway
computation, a C extension that never returns) freezes every client of the node while the
kernel still accepts its TCP connections, so neither its clients nor nginx see a refused
connection: they wait on timeouts, and the node's `ip_hash` clients keep coming back to it. A
process that is seen to be hung is better dead: a restart (systemd `Restart=on-failure`, a
Procfile runner, Kubernetes) brings it back, and until then connections are refused at once,
which nginx turns into a failover to another node.

How: the loop bumps a heartbeat with `loop.call_later` every LOOP_STALL_MS/10; a daemon thread
looks at it as often. When the heartbeat is older than LOOP_STALL_MS the thread writes one
`loop_stall_exit ...` line at error level, flushes the log handlers and calls
`os._exit(EXIT_CODE)` (70, EX_SOFTWARE): no cleanup runs, since the loop that would run it is
the thing that is stuck. The loop also measures its own lag when a beat fires late; a beat late
by half of LOOP_STALL_MS or more logs `loop_lag` (on the loop thread, once it runs again) and is
counted in `sio_gateway_loop_lag_warnings_total`, so near misses show before a node is killed.

A whole-process pause (SIGSTOP, a debugger, a VM frozen by its host, a machine so loaded that
the process got no CPU) stops the watchdog thread as well as the loop. The thread notices it
from its own clock: it woke up much later than it asked to and the process used almost no CPU
meanwhile. That time is not held against the loop (counted in `sio_gateway_loop_pauses_total`);
such a pause is for nginx's timeouts to handle (nginx.conf), not for this thread, which cannot
run while the process is stopped anyway.

There is one watchdog per process (one event loop per gateway process), so its counters are
module-level and read by gateway/ops/endpoints.py.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("gateway.loop_watchdog")

EXIT_CODE = 70  # os.EX_SOFTWARE: "an internal software error has been detected"
# Logging may itself be what blocks (a full stderr pipe, the loop holding a handler's lock):
# the process exits this long after the stall was decided, logged or not.
EXIT_LOG_GRACE_S = 1.0
# Beats and checks happen this many times per LOOP_STALL_MS: a stall is found between
# LOOP_STALL_MS and 1.2 x LOOP_STALL_MS after the loop's last turn.
TICKS_PER_LIMIT = 10


@dataclass
class LoopWatchdogStats:
    """What the watchdog saw in this process, for /metrics (plain ints, bumped without locks)."""

    lag_warnings: int = 0  # beats that fired at least half of LOOP_STALL_MS late
    pauses: int = 0  # whole-process pauses that were not counted against the loop


stats = LoopWatchdogStats()


class Verdict(enum.Enum):
    OK = "ok"
    PAUSED = "paused"  # the watchdog itself could not run: the process was stopped or starved
    STALLED = "stalled"  # the loop has not beaten for longer than the limit


class StallJudge:
    """The watchdog thread's decision, apart from threads and clocks so that it can be tested.

    Fed with the thread's own monotonic time, the process CPU time and the loop's last heartbeat
    at every check, it tells a stalled loop from a paused process: a check that comes late by more
    than `pause_gap_s` while the process used less than half that time in CPU means the whole
    process was not running (a loop blocked in Python code or in a C call burns CPU; a loop blocked
    in `time.sleep` or a blocking syscall leaves the thread on time). After a pause the loop gets a
    fresh `limit_s` from that moment: it resumed at the same instant as the thread did.
    """

    def __init__(self, limit_s: float, check_interval_s: float, now: float, cpu: float) -> None:
        if limit_s <= 0 or check_interval_s <= 0:
            raise ValueError("limit_s and check_interval_s must be positive")
        self.limit_s = limit_s
        self.check_interval_s = check_interval_s
        self.pause_gap_s = check_interval_s + max(check_interval_s, limit_s / 4)
        self.last_check = now
        self.last_cpu = cpu
        self.baseline = now  # the loop is not blamed for time before this

    def judge(self, now: float, cpu: float, last_beat: float) -> tuple[Verdict, float]:
        """(verdict, seconds): the gap of a pause, or how long the loop has not beaten."""
        gap = now - self.last_check
        cpu_used = cpu - self.last_cpu
        self.last_check, self.last_cpu = now, cpu
        if gap > self.pause_gap_s and cpu_used < gap / 2:
            self.baseline = now
            return Verdict.PAUSED, gap
        blocked = now - max(last_beat, self.baseline)
        return (Verdict.STALLED if blocked > self.limit_s else Verdict.OK), blocked


def exit_for_stall(blocked_s: float, limit_s: float) -> None:
    """Log one line, flush, and leave at once with EXIT_CODE; bounded even if logging blocks."""
    fallback = threading.Timer(EXIT_LOG_GRACE_S, os._exit, (EXIT_CODE,))
    fallback.daemon = True
    fallback.start()
    log.error(
        "loop_stall_exit blocked_ms=%d limit_ms=%d exit_code=%d pid=%d", blocked_s * 1000, limit_s * 1000, EXIT_CODE, os.getpid()
    )
    for handler in [*logging.getLogger().handlers, *log.handlers]:
        try:
            handler.flush()
        except Exception:  # a broken sink must not keep a hung process alive
            pass
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(EXIT_CODE)


class LoopStallWatchdog:
    """Heartbeat on `loop` plus the thread that watches it; `start()` on the loop, `stop()` anywhere.

    `on_stall(blocked_s, limit_s)` is what happens on a stall: `exit_for_stall` in a gateway
    process; tests of the decision pass their own.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit_ms: int,
        on_stall: Callable[[float, float], None] = exit_for_stall,
    ) -> None:
        if limit_ms <= 0:
            raise ValueError("limit_ms must be positive (0 = no watchdog: do not build one)")
        self.loop = loop
        self.limit_s = limit_ms / 1000
        self.tick_s = self.limit_s / TICKS_PER_LIMIT
        self.on_stall = on_stall
        self.last_beat = time.monotonic()
        self._next_beat_due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin beating and watching; call from the loop's thread."""
        self.last_beat = time.monotonic()
        self._schedule_beat()
        self._thread = threading.Thread(target=self._watch, name="loop-stall-watchdog", daemon=True)
        self._thread.start()
        log.info("loop_watchdog_started limit_ms=%d exit_code=%d", self.limit_s * 1000, EXIT_CODE)

    def stop(self) -> None:
        """Stop watching (graceful shutdown is under way or done); idempotent."""
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.tick_s * 2 + 1)
            self._thread = None

    def _schedule_beat(self) -> None:
        self._next_beat_due = time.monotonic() + self.tick_s
        self._timer = self.loop.call_later(self.tick_s, self._beat)

    def _beat(self) -> None:
        now = time.monotonic()
        self.last_beat = now
        lag = now - self._next_beat_due
        if lag >= self.limit_s / 2:
            stats.lag_warnings += 1
            log.warning("loop_lag lag_ms=%d limit_ms=%d", lag * 1000, self.limit_s * 1000)
        if not self._stopped.is_set():
            self._schedule_beat()

    def _watch(self) -> None:
        judge = StallJudge(self.limit_s, self.tick_s, time.monotonic(), time.process_time())
        while not self._stopped.wait(self.tick_s):
            verdict, seconds = judge.judge(time.monotonic(), time.process_time(), self.last_beat)
            if verdict is Verdict.PAUSED:
                stats.pauses += 1
                continue
            if verdict is Verdict.STALLED and not self._stopped.is_set():
                self.on_stall(seconds, self.limit_s)
                return
