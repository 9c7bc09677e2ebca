"""The cluster adapter's request bookkeeping (gateway/cluster/requests.py), without sockets or a
clock: timers are recorded and fired by hand, futures are plain asyncio futures on a private loop."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

import pytest

from gateway.sio.adapter import AdapterTimeout
from gateway.cluster.requests import PendingRequests
from gateway.cluster.transport import LinkStats
from protocol.cluster import AllRooms, Answer, FetchSockets, Response, ServerSideEmit, SocketIds
from protocol.errors import ClusterMessageError


class FakeTimer:
    def __init__(self, seconds: float, callback: Callable[[str], None], request_id: str) -> None:
        self.seconds, self.callback, self.request_id = seconds, callback, request_id
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.callback(self.request_id)


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def bookkeeping(loop: asyncio.AbstractEventLoop) -> tuple[PendingRequests, list[FakeTimer]]:
    timers: list[FakeTimer] = []
    ids = (f"r{i}" for i in itertools.count())

    def call_later(seconds: float, callback: Callable[[str], None], request_id: str) -> FakeTimer:
        timers.append(FakeTimer(seconds, callback, request_id))
        return timers[-1]

    return PendingRequests(LinkStats(), lambda: next(ids), call_later, loop.create_future), timers


def description(sid: str) -> dict[str, Any]:
    return {"id": sid, "handshake": {}, "rooms": [sid], "data": None}


def test_a_request_completes_once_every_expected_node_answered(loop: asyncio.AbstractEventLoop) -> None:
    requests, timers = bookkeeping(loop)
    request_id, future = requests.open(FetchSockets, expected=2, timeout=3.0)
    assert timers[0].seconds == 3.0 and request_id in requests
    requests.answer(Response(Answer.FETCH_SOCKETS, request_id, [description("a")]))
    assert not future.done()
    requests.answer(Response(Answer.UNTYPED, request_id, [description("b"), description("c")]))  # classic form
    assert future.result() == [description("a"), description("b"), description("c")]
    requests.forget(request_id)
    assert timers[0].cancelled and len(requests) == 0


def test_answers_of_the_wrong_kind_or_for_unknown_ids_are_ignored(loop: asyncio.AbstractEventLoop) -> None:
    requests, _ = bookkeeping(loop)
    request_id, future = requests.open(ServerSideEmit, expected=1, timeout=1.0)
    requests.answer(Response(Answer.FETCH_SOCKETS, request_id, []))  # not an answer to serverSideEmit
    requests.answer(Response(Answer.SERVER_SIDE_EMIT, "someone-else", "x"))
    assert not future.done()
    requests.answer(Response(Answer.SERVER_SIDE_EMIT, request_id, "pong"))
    assert future.result() == ["pong"]


def test_a_timeout_fails_the_caller_with_what_did_come_and_is_counted(loop: asyncio.AbstractEventLoop) -> None:
    requests, timers = bookkeeping(loop)
    request_id, future = requests.open(AllRooms, expected=3, timeout=5.0)
    requests.answer(Response(Answer.ALL_ROOMS, request_id, ["r1"]))
    timers[0].fire()
    with pytest.raises(AdapterTimeout) as raised:
        future.result()
    assert raised.value.responses == [["r1"]]  # type: ignore[attr-defined]
    assert requests.stats.request_timeouts == 1 and request_id not in requests
    requests.answer(Response(Answer.ALL_ROOMS, request_id, ["late"]))  # forgotten: no effect
    assert requests.stats.request_timeouts == 1


def test_broadcast_acks_are_collected_until_the_deadline_then_forgotten_silently(loop: asyncio.AbstractEventLoop) -> None:
    requests, timers = bookkeeping(loop)
    counts: list[int] = []
    acks: list[Any] = []
    request_id = requests.collect_acks(2.0, counts.append, acks.append)
    requests.answer(Response(Answer.CLIENT_COUNT, request_id, 2))
    requests.answer(Response(Answer.ACK, request_id, "ok-1"))
    requests.answer(Response(Answer.ACK, request_id, "ok-2"))
    assert (counts, acks) == ([2], ["ok-1", "ok-2"])
    timers[0].fire()
    requests.answer(Response(Answer.ACK, request_id, "too late"))
    assert acks == ["ok-1", "ok-2"] and requests.stats.request_timeouts == 0 and len(requests) == 0


def test_socket_id_answers_are_flattened(loop: asyncio.AbstractEventLoop) -> None:
    requests, _ = bookkeeping(loop)
    request_id, future = requests.open(SocketIds, expected=1, timeout=1.0)
    requests.answer(Response(Answer.UNTYPED, request_id, ["s1", "s2"]))
    assert future.result() == ["s1", "s2"]


def test_a_malformed_socket_description_is_a_message_error_not_a_late_type_error(loop: asyncio.AbstractEventLoop) -> None:
    requests, _ = bookkeeping(loop)
    request_id, future = requests.open(FetchSockets, expected=1, timeout=1.0)
    with pytest.raises(ClusterMessageError):
        requests.answer(Response(Answer.UNTYPED, request_id, [{"id": 7}]))
    assert not future.done()  # the bad answer does not count


def test_close_forgets_everything_and_cancels_the_timers(loop: asyncio.AbstractEventLoop) -> None:
    requests, timers = bookkeeping(loop)
    requests.open(FetchSockets, expected=1, timeout=1.0)
    requests.collect_acks(1.0, lambda n: None, lambda v: None)
    requests.close()
    assert len(requests) == 0 and all(t.cancelled for t in timers)
