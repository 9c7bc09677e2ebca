"""Requests to the other nodes and their answers: one owner for every pending request.

`PendingRequests` gives each request an id, a timer and a slot for its answers; the timer either
fails the waiting caller with `AdapterTimeout` (a request that counts answers) or silently forgets
a broadcast-with-ack collector (its acks stop being accepted; the caller's own timer reports).
Nothing waits on another node without a deadline, and nothing pending outlives its deadline.

`RemoteSocket` is a socket of another node as `fetch_sockets()` returns it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from protocol.cluster import (
    AllRooms,
    Answer,
    Broadcast,
    FetchSockets,
    Response,
    Room,
    ServerSideEmit,
    SocketIds,
    is_socket_description,
)
from protocol.errors import ClusterMessageError

from ..sio.adapter import AdapterTimeout, BroadcastOptions
from .transport import LinkStats

if TYPE_CHECKING:
    from .adapter import ClusterAdapter

log = logging.getLogger("gateway.cluster")

# What answers each kind of request accepts (UNTYPED: a classic answer without a type field).
_ACCEPTS: dict[type, frozenset[Answer]] = {
    FetchSockets: frozenset({Answer.FETCH_SOCKETS, Answer.UNTYPED}),
    AllRooms: frozenset({Answer.ALL_ROOMS, Answer.UNTYPED}),
    SocketIds: frozenset({Answer.SOCKET_IDS, Answer.UNTYPED}),
    ServerSideEmit: frozenset({Answer.SERVER_SIDE_EMIT}),
}


class Timer(Protocol):
    def cancel(self) -> None: ...


@dataclass(slots=True)
class PendingRequest:
    kind: type
    expected: int
    future: "asyncio.Future[Any] | None" = None
    responses: list[Any] = field(default_factory=list)
    received: int = 0
    timer: Timer | None = None
    on_client_count: Callable[[int], None] | None = None
    on_ack: Callable[[Any], None] | None = None


class PendingRequests:
    """The requests one namespace's adapter waits on, keyed by request id.

    `call_later` and `create_future` default to the running loop's; tests pass their own to drive
    the timers without a clock."""

    def __init__(
        self,
        stats: LinkStats,
        new_id: Callable[[], str],
        call_later: Callable[[float, Callable[[str], None], str], Timer] | None = None,
        create_future: Callable[[], "asyncio.Future[Any]"] | None = None,
    ) -> None:
        self.stats = stats
        self.new_id = new_id
        self.pending: dict[str, PendingRequest] = {}
        self._call_later = call_later
        self._create_future = create_future

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self.pending

    def _timer(self, seconds: float, callback: Callable[[str], None], request_id: str) -> Timer:
        if self._call_later is not None:
            return self._call_later(seconds, callback, request_id)
        return asyncio.get_running_loop().call_later(seconds, callback, request_id)

    def collect_acks(self, timeout: float, on_client_count: Callable[[int], None], on_ack: Callable[[Any], None]) -> str:
        """Accept client counts and acks for a broadcast-with-ack until `timeout` seconds pass."""
        request_id = self.new_id()
        entry = PendingRequest(Broadcast, expected=0, on_client_count=on_client_count, on_ack=on_ack)
        self.pending[request_id] = entry
        entry.timer = self._timer(timeout, self.forget, request_id)
        return request_id

    def open(self, kind: type, expected: int, timeout: float) -> tuple[str, "asyncio.Future[list[Any]]"]:
        """A request expecting `expected` answers: the future gets their list, or AdapterTimeout
        (with the answers that did come, as `.responses`) after `timeout` seconds."""
        request_id = self.new_id()
        future = self._create_future() if self._create_future is not None else asyncio.get_running_loop().create_future()
        entry = PendingRequest(kind, expected=expected, future=future)
        self.pending[request_id] = entry
        entry.timer = self._timer(timeout, self.expire, request_id)
        return request_id, future

    def expire(self, request_id: str) -> None:
        entry = self.pending.pop(request_id, None)
        if entry is None:
            return
        self.stats.request_timeouts += 1
        log.warning("cluster_request_timeout type=%s request_id=%s answered=%d expected=%d", entry.kind.__name__, request_id, entry.received, entry.expected)
        if entry.future is not None and not entry.future.done():
            error = AdapterTimeout(f"{entry.kind.__name__}: {entry.received} of {entry.expected} nodes answered in time")
            error.responses = list(entry.responses)  # type: ignore[attr-defined]
            entry.future.set_exception(error)

    def forget(self, request_id: str) -> None:
        entry = self.pending.pop(request_id, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()

    def close(self) -> None:
        for request_id in list(self.pending):
            self.forget(request_id)

    def answer(self, response: Response) -> None:
        """Account one node's answer; the request completes once every expected node answered.
        Answers to unknown ids (someone else's, or already completed or timed out) are ignored."""
        entry = self.pending.get(response.request_id)
        if entry is None:
            return
        answer = response.kind
        value = response.value
        if entry.kind is Broadcast:
            if answer is Answer.CLIENT_COUNT and entry.on_client_count is not None:
                entry.on_client_count(int(value or 0))
            elif answer is Answer.ACK and entry.on_ack is not None:
                entry.on_ack(value)
            return
        if answer not in _ACCEPTS[entry.kind]:
            return
        if entry.kind is FetchSockets:
            sockets = value or []
            if not isinstance(sockets, list):
                raise ClusterMessageError("fetch response without a socket list")
            for description in sockets:
                if not is_socket_description(description):
                    raise ClusterMessageError(f"fetch response with a malformed socket description: {description!r:.200}")
            entry.responses.extend(sockets)
        elif entry.kind is AllRooms:
            entry.responses.append(value or [])
        elif entry.kind is SocketIds:
            entry.responses.extend(value or ())
        else:
            entry.responses.append(value)
        entry.received += 1
        if entry.received >= entry.expected and entry.future is not None and not entry.future.done():
            entry.future.set_result(entry.responses)


class RemoteSocket:
    """A socket living on another node, as returned by `fetch_sockets()`."""

    __slots__ = ("adapter", "id", "handshake", "rooms", "data")

    def __init__(self, adapter: "ClusterAdapter", description: dict[str, Any]) -> None:
        self.adapter = adapter
        self.id: str = description["id"]
        self.handshake: dict[str, Any] = description.get("handshake") or {}
        self.rooms: set[Room] = set(description.get("rooms") or ())
        self.data: Any = description.get("data")

    def __repr__(self) -> str:
        return f"<RemoteSocket {self.id}>"

    def _only_me(self) -> BroadcastOptions:
        return BroadcastOptions(rooms=frozenset([self.id]))

    def emit(self, event: str, *args: Any) -> None:
        self.adapter.emit_to(self._only_me(), [event, *args])

    def join(self, rooms: Room | list[Room]) -> None:
        self.adapter.add_sockets(self._only_me(), [rooms] if isinstance(rooms, (str, int)) else list(rooms))

    def leave(self, room: Room) -> None:
        self.adapter.del_sockets(self._only_me(), [room])

    def disconnect(self, close: bool = False) -> None:
        self.adapter.disconnect_sockets(self._only_me(), close)


__all__ = ["PendingRequest", "PendingRequests", "RemoteSocket"]
