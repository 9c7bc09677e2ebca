"""The loop-stall watchdog's decision (gateway/ops/loop_watchdog.py): a blocked loop is a stall,
a paused process is not; then the real heartbeat and thread on a real asyncio loop, with the
stall action recorded instead of exiting."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway.config import ConfigError, Settings
from gateway.ops import loop_watchdog
from gateway.ops.loop_watchdog import LoopStallWatchdog, StallJudge, Verdict
from gateway.runtime import loop_stall_ms_for

LIMIT = 1.0
TICK = 0.1


def judge_at(t0: float = 100.0) -> StallJudge:
    return StallJudge(LIMIT, TICK, now=t0, cpu=5.0)


def test_a_loop_that_beats_is_ok_and_one_that_stops_beating_is_stalled() -> None:
    judge = judge_at()
    now, cpu, beat = 100.0, 5.0, 100.0
    for _ in range(30):  # healthy: the loop beats every tick
        now += TICK
        beat = now - 0.02
        assert judge.judge(now, cpu, beat)[0] is Verdict.OK
    # The loop stops beating (blocked in time.sleep: no CPU, the watchdog thread stays on time).
    verdicts = []
    for _ in range(12):
        now += TICK
        verdicts.append(judge.judge(now, cpu, beat))
    first = next(i for i, (v, _) in enumerate(verdicts) if v is Verdict.STALLED)
    assert first == 9  # 1.02 s without a beat; 0.92 s was still fine
    assert verdicts[first][1] == pytest.approx(1.02)
    assert all(v is Verdict.STALLED for v, _ in verdicts[first:])


def test_a_loop_blocked_on_the_cpu_is_a_stall_even_when_the_thread_runs_late() -> None:
    # A C call holding the GIL keeps the watchdog thread from running: it wakes late, but the
    # process burned CPU all along, so this is the loop's fault, not a pause.
    judge = judge_at()
    verdict, blocked = judge.judge(now=101.5, cpu=6.5, last_beat=100.0)
    assert verdict is Verdict.STALLED and blocked == pytest.approx(1.5)


def test_a_paused_process_is_excused_and_the_loop_gets_a_fresh_limit() -> None:
    # SIGSTOP for 30 s: the thread wakes 30 s late and the process used no CPU meanwhile.
    judge = judge_at()
    verdict, gap = judge.judge(now=130.0, cpu=5.0, last_beat=100.0)
    assert verdict is Verdict.PAUSED and gap == pytest.approx(30.0)
    # The loop resumed at the same moment: not blamed until LIMIT after the pause, then stalled
    # if it still does not beat.
    now, verdicts = 130.0, []
    for _ in range(12):
        now += TICK
        verdicts.append(judge.judge(now, cpu=5.0, last_beat=100.0))
    first = next(i for i, (v, _) in enumerate(verdicts) if v is Verdict.STALLED)
    assert all(v is Verdict.OK for v, _ in verdicts[:first])
    assert 1.0 < verdicts[first][1] < 1.0 + 2 * TICK


def test_a_thread_slightly_late_is_not_a_pause() -> None:
    judge = judge_at()
    assert judge.pause_gap_s == pytest.approx(TICK + LIMIT / 4)
    # 0.3 s late with no CPU: within the pause gap, so judged on the heartbeat (fresh: OK).
    assert judge.judge(now=100.3, cpu=5.0, last_beat=100.25) == (Verdict.OK, pytest.approx(0.05))


def test_setting_defaults_validation_and_how_run_finds_it() -> None:
    assert Settings().loop_stall_ms == 10000
    assert Settings.from_env({"LOOP_STALL_MS": "0", "AUTH_MODE": "none"}).loop_stall_ms == 0
    assert Settings.from_env({"LOOP_STALL_MS": "1500", "AUTH_MODE": "none"}).loop_stall_ms == 1500
    with pytest.raises(ConfigError, match="LOOP_STALL_MS"):
        Settings.from_env({"LOOP_STALL_MS": "50", "AUTH_MODE": "none"})
    with pytest.raises(ConfigError, match="LOOP_STALL_MS"):
        Settings.from_env({"LOOP_STALL_MS": "-1", "AUTH_MODE": "none"})

    class App:
        settings = Settings(loop_stall_ms=2500)

        async def start(self) -> None:
            pass

    async def bare_start() -> None:
        pass

    assert loop_stall_ms_for(App().start) == 2500
    assert loop_stall_ms_for(App().start, 0) == 0
    assert loop_stall_ms_for(bare_start) == 10000


async def test_watchdog_on_a_real_loop_reports_a_blocked_loop_and_counts_late_beats() -> None:
    stalls: list[tuple[float, float]] = []
    stalled = threading.Event()

    def on_stall(blocked_s: float, limit_s: float) -> None:
        stalls.append((blocked_s, limit_s))
        stalled.set()

    watchdog = LoopStallWatchdog(asyncio.get_running_loop(), 400, on_stall=on_stall)
    warnings_before = loop_watchdog.stats.lag_warnings
    watchdog.start()
    try:
        await asyncio.sleep(0.6)  # a turning loop: nothing reported
        assert stalls == []
        time.sleep(0.26)  # blocked, but under the limit: a beat late by >= 0.2 s, counted, no stall
        await asyncio.sleep(0.1)
        assert stalls == []
        assert loop_watchdog.stats.lag_warnings == warnings_before + 1
        time.sleep(1.0)  # blocked past the limit
        assert stalled.is_set(), "no stall reported for a loop blocked 1 s with a 0.4 s limit"
        blocked_s, limit_s = stalls[0]
        assert limit_s == pytest.approx(0.4)
        assert 0.4 < blocked_s < 0.4 * 1.2 + 0.1
    finally:
        watchdog.stop()
