"""The in-memory recovery store (gateway/sio/recovery.py) alone, with a clock driven by hand: what a
reconnecting `{pid, offset}` gets back, and every bound (packets by count, bytes and age,
sessions by count and age), counted when it trips."""

from __future__ import annotations

from typing import Any

from gateway.sio.recovery import RecoveryResult, RecoveryStats, SessionState, SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(window_s: float = 10.0, max_packets: int = 100, max_bytes: int = 1 << 20, max_sessions: int = 100) -> tuple[SessionStore, Clock]:
    clock = Clock()
    return SessionStore(window_s, max_packets, max_bytes, max_sessions, RecoveryStats(), clock=clock, epoch="E"), clock


def send(store: SessionStore, label: str, rooms: Any = (), except_: Any = ()) -> str:
    offset = store.issue()
    store.keep(frozenset(rooms), frozenset(except_), f"42{label}".encode())
    return offset


def texts(restoration: Any) -> list[bytes]:
    return [out.text for out in restoration.missed]


def session(pid: str = "p1", rooms: Any = ("sid1", "r")) -> SessionState:
    return SessionState("sid1", pid, list(rooms), {"k": "v"})


def test_restores_the_packets_after_the_offset_for_the_sessions_rooms_in_order() -> None:
    store, _ = make()
    seen = send(store, "a", rooms=["r"])
    send(store, "b", rooms=["r"])
    send(store, "c")  # to the whole namespace
    send(store, "d", rooms=["other"])
    send(store, "e", except_=["r"])
    send(store, "f", rooms=["sid1"])  # a per-socket emit
    store.persist(session())
    restored = store.restore("p1", seen)
    assert restored.result is RecoveryResult.RECOVERED
    assert restored.state is not None and restored.state.sid == "sid1" and restored.state.data == {"k": "v"}
    assert texts(restored) == [b"42b", b"42c", b"42f"]


def test_a_session_is_restored_once() -> None:
    store, _ = make()
    seen = send(store, "a")
    store.persist(session())
    assert store.restore("p1", seen).result is RecoveryResult.RECOVERED
    assert store.restore("p1", seen).result is RecoveryResult.UNKNOWN


def test_unknown_pid_expired_session_and_bad_offsets() -> None:
    store, clock = make(window_s=5)
    seen = send(store, "a")
    assert store.restore("nobody", seen).result is RecoveryResult.UNKNOWN
    store.persist(session())
    for bad in ("", "garbage", "other-1", "E-99", "E-", "E-1x"):
        assert store.restore("p1", bad).result is RecoveryResult.STALE, bad
        store.persist(session())
    clock.now += 5.5
    assert store.restore("p1", seen).result is RecoveryResult.EXPIRED


def test_an_offset_dropped_by_the_count_bound_is_stale_one_at_the_boundary_is_not() -> None:
    store, _ = make(max_packets=3)
    first = send(store, "a")
    second = send(store, "b")
    for label in "cde":
        send(store, label)
    assert len(store) == 3 and store.stats.packets_evicted["count"] == 2
    store.persist(session())
    assert store.restore("p1", first).result is RecoveryResult.STALE  # "b" was dropped: maybe missed
    store.persist(session())
    restored = store.restore("p1", second)  # it had "b", the newest dropped: nothing lost
    assert restored.result is RecoveryResult.RECOVERED and texts(restored) == [b"42c", b"42d", b"42e"]


def test_the_bytes_bound_drops_the_oldest_and_counts() -> None:
    store, _ = make(max_bytes=10)
    for label in ("aaaa", "bbbb", "cccc"):  # 6 bytes each
        send(store, label)
    assert len(store) == 1 and store.kept_bytes == 6
    assert store.stats.packets_evicted["bytes"] == 2


def test_packets_older_than_the_window_go_without_being_counted_as_evictions() -> None:
    store, clock = make(window_s=5)
    old = send(store, "a")
    last_old = send(store, "b")
    clock.now += 6
    send(store, "c")
    assert len(store) == 1 and store.stats.packets_evicted == {"count": 0, "bytes": 0}
    store.persist(session())
    assert store.restore("p1", old).result is RecoveryResult.STALE
    store.persist(session())
    restored = store.restore("p1", last_old)
    assert restored.result is RecoveryResult.RECOVERED and texts(restored) == [b"42c"]


def test_sessions_bounded_by_count_and_age() -> None:
    store, clock = make(window_s=5, max_sessions=2)
    seen = send(store, "a")
    for pid in ("p1", "p2", "p3"):
        store.persist(session(pid))
    assert store.sessions == 2 and store.stats.sessions_evicted == 1
    assert store.restore("p1", seen).result is RecoveryResult.UNKNOWN  # the oldest went
    clock.now += 6
    store.persist(session("p4"))  # adding prunes what expired
    assert store.sessions == 1
    assert store.restore("p4", seen).result is RecoveryResult.RECOVERED


def test_stats_count_results_and_replayed_packets() -> None:
    store, _ = make()
    seen = send(store, "a")
    send(store, "b")
    store.persist(session())
    stats = store.stats
    stats.count(store.restore("p1", seen))
    stats.count(store.restore("p1", seen))
    assert stats.results == {"recovered": 1, "stale": 0, "unknown": 1, "expired": 0}
    assert stats.replayed_packets == 1
