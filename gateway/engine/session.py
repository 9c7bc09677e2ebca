"""One Engine.IO session on the event loop: carries out what `protocol.engine_session` decides.

The rules (polling, upgrade, heartbeat, closing, the output bound) are in the Sans-I/O machine
`EngineSession`; this class holds what the machine does not see (the held GET, the WebSocket and
the probe, timer handles, the application's receiver), feeds it what arrives and carries out the
actions it returns, in order.

Two fast paths skip the machine where it would decide nothing: a payload sent to a session on
WebSocket is written straight to its connection (the broadcast path: one call per recipient, no
action objects), and a text or binary message arriving on the session's WebSocket goes straight
to the receiver (a message is delivered in every state where the session's WebSocket still has
a listener).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from protocol import engineio
from protocol import engine_session as eio
from protocol.engineio import ErrorCode

from .outbound import Outbound
from .timers import TimerWheel
from .websocket import WebSocketTransport

if TYPE_CHECKING:
    from ..http import Request

log = logging.getLogger("gateway.engine")


class Receiver(Protocol):
    """The application side of a session."""

    def on_message(self, data: str | bytes) -> None: ...

    def on_close(self, reason: str) -> None: ...


class SessionHost(Protocol):
    """What a session needs from the endpoint that made it (`EngineServer`): HTTP answers in
    the Engine.IO forms, WebSocket handshakes, bookkeeping and counters."""

    def respond_poll(self, request: "Request", body: bytes) -> None: ...

    def respond_ok(self, request: "Request") -> None: ...

    def respond_error(self, request: "Request", code: ErrorCode) -> None: ...

    def accept_websocket(self, request: "Request", attach: Callable[[WebSocketTransport], None]) -> bool: ...

    def remove(self, session: "Session") -> None: ...

    def on_upgraded(self, session: "Session") -> None: ...

    def count_slow_consumer(self, session: "Session | None", transport: str, buffered: int) -> None: ...

    def count_bad_packet(self, layer: str) -> None: ...

    @property
    def timer_wheel(self) -> TimerWheel: ...


class Session:
    __slots__ = (
        "server",
        "sid",
        "machine",
        "ws",
        "probe",
        "pending_get",
        "receiver",
        "request",
        "_loop",
        "_timers",
        "_beat",
        "_beat_tick",
    )

    def __init__(self, server: SessionHost, machine: eio.EngineSession, request: "Request") -> None:
        self.server = server
        self.sid = machine.sid
        self.machine = machine
        self.ws: WebSocketTransport | None = None  # set once the session runs on WebSocket
        self.probe: WebSocketTransport | None = None  # a WebSocket being upgraded to
        self.pending_get: "Request | None" = None  # the held long-poll GET
        self.receiver: Receiver | None = None
        self.request = request  # the handshake request (headers, query, address)
        self._loop = asyncio.get_running_loop()
        # The heartbeat timer (the next ping, or the pong awaited) is an entry of the endpoint's
        # TimerWheel: one armed at a time, no handle of its own. The machine's other timers
        # (upgrade, linger) are rare and short-lived: loop handles, in a dict made when needed.
        self._beat: eio.Timer | None = None
        self._beat_tick = 0
        self._timers: dict[eio.Timer, asyncio.TimerHandle] | None = None

    @property
    def state(self) -> eio.State:
        return self.machine.state

    @property
    def transport_name(self) -> str:
        return "websocket" if self.ws is not None else "polling"

    # -- sending -------------------------------------------------------------------------------

    def send(self, out: Outbound) -> None:
        """Queue or write one message. The hot path of every delivery."""
        ws = self.ws
        if ws is not None:
            ws.write(out.ws)
            return
        follow = self.machine.send(out)
        if follow:
            self._run(follow)

    @property
    def writable(self) -> bool:
        """Whether a message sent now would go out at once (used to drop volatile packets)."""
        ws = self.ws
        if ws is not None:
            return ws.writable
        return self.machine.writable

    def _flush(self) -> None:
        self._run(self.machine.flush())

    def _drop(self, buffered: int) -> None:
        self._run(self.machine.output_over_bound(buffered))

    # -- what arrives ----------------------------------------------------------------------------

    def open(self, request: "Request") -> None:
        """Send the handshake on the session's first transport and start the heartbeat."""
        self._run(self.machine.open(), request)

    def handle_get(self, request: "Request") -> None:
        self._run(self.machine.receive_get(), request)

    def handle_post(self, request: "Request") -> None:
        self.server.stats.bytes_in += len(request.body)
        self._run(self.machine.receive_post(request.body), request)

    def handle_upgrade(self, request: "Request") -> None:
        """A WebSocket upgrade request carrying this session's id."""
        self._run(self.machine.upgrade_requested(), request)

    def _poll_lost(self) -> None:
        self.pending_get = None
        self._run(self.machine.poll_lost())

    def attach_websocket(self, ws: WebSocketTransport) -> None:
        """A session that starts directly on WebSocket."""
        self.ws = ws
        ws.listener = self

    def _attach_probe(self, ws: WebSocketTransport) -> None:
        self.probe = ws
        ws.listener = _Probe(self)

    def ws_message(self, ws: WebSocketTransport, data: str | bytes) -> None:
        if isinstance(data, str):
            text = engineio.message_data(data)
            if text is None:
                self._run(self.machine.receive_ws(data))
                return
            data = text
        receiver = self.receiver
        if receiver is not None:
            receiver.on_message(data)

    def ws_closed(self, ws: WebSocketTransport, reason: str) -> None:
        if self.ws is ws:
            self._run(self.machine.ws_closed(reason))

    def probe_message(self, ws: WebSocketTransport, data: str | bytes) -> None:
        if self.probe is ws:
            self._run(self.machine.receive_probe(data))

    def probe_closed(self, ws: WebSocketTransport) -> None:
        if self.probe is ws:
            self.probe = None
            self._run(self.machine.probe_closed())

    def close(self, reason: str) -> None:
        """Close the session from the server side."""
        self._run(self.machine.close(reason))

    def _timer_fired(self, timer: eio.Timer) -> None:
        if self._timers is not None:
            self._timers.pop(timer, None)
        self._run(self.machine.timer_fired(timer))

    def wheel_fired(self) -> None:
        """The heartbeat timer's bucket came up on the endpoint's TimerWheel."""
        timer, self._beat = self._beat, None
        if timer is not None:
            self._run(self.machine.timer_fired(timer))

    # -- carrying out ------------------------------------------------------------------------------

    def _run(self, outputs: Iterable[eio.Output], request: "Request | None" = None) -> None:
        """Carry out the machine's outputs in order; `request` is the request being handled."""
        for item in outputs:
            _CARRY_OUT[item.__class__](self, item, request)

    def _message(self, item: eio.Message, request: "Request | None") -> None:
        receiver = self.receiver
        if receiver is not None:
            receiver.on_message(item.data)

    def _closed(self, item: eio.Closed, request: "Request | None") -> None:
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            try:
                receiver.on_close(item.reason)
            except Exception:
                log.exception("receiver_on_close_failed sid=%s", self.sid)

    def _reply(self, item: eio.Reply, request: "Request | None") -> None:
        assert request is not None
        self._answer_poll(request, item.body)

    def _reply_ok(self, item: eio.ReplyOk, request: "Request | None") -> None:
        assert request is not None
        self.server.respond_ok(request)

    def _reply_error(self, item: eio.ReplyError, request: "Request | None") -> None:
        assert request is not None
        if item.delay:
            self._loop.call_later(item.delay, self.server.respond_error, request, item.code)
        else:
            self.server.respond_error(request, item.code)

    def _hold_poll(self, item: eio.HoldPoll, request: "Request | None") -> None:
        assert request is not None
        self.pending_get = request
        request.on_abort = self._poll_lost

    def _release_poll(self, item: eio.ReleasePoll, request: "Request | None") -> None:
        held, self.pending_get = self.pending_get, None
        if held is not None:
            self._answer_poll(held, item.body)

    def _answer_poll(self, request: "Request", body: bytes) -> None:
        self.server.respond_poll(request, body)
        # A client that asks for a poll but does not read the answer holds it in our send queue.
        transport = request.conn.transport
        if transport is not None:
            follow = self.machine.poll_written(transport.get_write_buffer_size())
            if follow:
                self._run(follow)

    def _abort_poll(self, item: eio.AbortPoll, request: "Request | None") -> None:
        held, self.pending_get = self.pending_get, None
        if held is not None:
            held.answered = True  # never answered: the connection goes with the session
            held.on_abort = None
            transport = held.conn.transport
            if transport is not None:
                transport.abort()

    def _flush_soon(self, item: eio.FlushSoon, request: "Request | None") -> None:
        self._loop.call_soon(self._flush)

    def _drop_soon(self, item: eio.DropSoon, request: "Request | None") -> None:
        self._loop.call_soon(self._drop, item.buffered)

    def _slow_consumer(self, item: eio.SlowConsumer, request: "Request | None") -> None:
        self.server.count_slow_consumer(self, item.transport, item.buffered)

    def _write_ws(self, item: eio.WriteWs, request: "Request | None") -> None:
        ws = self.ws
        if ws is not None:
            ws.write(item.frames)

    def _close_ws(self, item: eio.CloseWs, request: "Request | None") -> None:
        ws = self.ws
        if ws is not None:
            ws.listener = None
            ws.close(item.code, item.reason)

    def _accept_probe(self, item: eio.AcceptProbe, request: "Request | None") -> None:
        assert request is not None
        if not self.server.accept_websocket(request, self._attach_probe):
            self._run(self.machine.probe_closed())  # the library refused the handshake

    def _refuse_upgrade(self, item: eio.RefuseUpgrade, request: "Request | None") -> None:
        assert request is not None
        self.server.accept_websocket(request, _close_refused)

    def _write_probe(self, item: eio.WriteProbe, request: "Request | None") -> None:
        probe = self.probe
        if probe is not None:
            probe.write_now(item.frames)

    def _close_probe(self, item: eio.CloseProbe, request: "Request | None") -> None:
        probe, self.probe = self.probe, None
        if probe is not None:
            probe.listener = None
            probe.close(item.code, item.reason)

    def _upgraded(self, item: eio.Upgraded, request: "Request | None") -> None:
        ws, self.probe = self.probe, None
        assert ws is not None
        self.ws = ws
        ws.listener = self
        self.server.on_upgraded(self)

    def _set_timer(self, item: eio.SetTimer, request: "Request | None") -> None:
        timer = item.timer
        self._disarm(timer)
        if self._beat is None and timer in _HEARTBEAT:
            self._beat = timer
            self._beat_tick = self.server.timer_wheel.add(self, item.delay)
            return
        timers = self._timers
        if timers is None:
            timers = self._timers = {}
        timers[timer] = self._loop.call_later(item.delay, self._timer_fired, timer)

    def _cancel_timer(self, item: eio.CancelTimer, request: "Request | None") -> None:
        self._disarm(item.timer)

    def _disarm(self, timer: eio.Timer) -> None:
        if timer is self._beat:
            self._beat = None
            self.server.timer_wheel.discard(self, self._beat_tick)
            return
        timers = self._timers
        if timers is not None:
            handle = timers.pop(timer, None)
            if handle is not None:
                handle.cancel()
            if not timers:
                self._timers = None

    def _ended(self, item: eio.Ended, request: "Request | None") -> None:
        self.server.remove(self)

    def _note(self, item: eio.Note, request: "Request | None") -> None:
        if item.bad_packet:
            self.server.count_bad_packet("engineio")
        if item.detail:
            log.info("%s sid=%s %s", item.event, self.sid, item.detail)
        else:
            log.info("%s sid=%s", item.event, self.sid)


# Timers that go on the wheel (one at a time per session; a second one, which the machine never
# asks for, would take a loop handle like the rest).
_HEARTBEAT = frozenset((eio.Timer.PING, eio.Timer.PONG))


def _close_refused(ws: WebSocketTransport) -> None:
    ws.close(1008, "upgrade refused")


_CARRY_OUT: dict[type, Callable[[Session, object, "Request | None"], None]] = {
    eio.Message: Session._message,
    eio.Closed: Session._closed,
    eio.Reply: Session._reply,
    eio.ReplyOk: Session._reply_ok,
    eio.ReplyError: Session._reply_error,
    eio.HoldPoll: Session._hold_poll,
    eio.ReleasePoll: Session._release_poll,
    eio.AbortPoll: Session._abort_poll,
    eio.FlushSoon: Session._flush_soon,
    eio.DropSoon: Session._drop_soon,
    eio.SlowConsumer: Session._slow_consumer,
    eio.WriteWs: Session._write_ws,
    eio.CloseWs: Session._close_ws,
    eio.AcceptProbe: Session._accept_probe,
    eio.RefuseUpgrade: Session._refuse_upgrade,
    eio.WriteProbe: Session._write_probe,
    eio.CloseProbe: Session._close_probe,
    eio.Upgraded: Session._upgraded,
    eio.SetTimer: Session._set_timer,
    eio.CancelTimer: Session._cancel_timer,
    eio.Ended: Session._ended,
    eio.Note: Session._note,
}  # type: ignore[dict-item]


class _Probe:
    """Routes the events of a WebSocket under upgrade to its session."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def ws_message(self, ws: WebSocketTransport, data: str | bytes) -> None:
        self.session.probe_message(ws, data)

    def ws_closed(self, ws: WebSocketTransport, reason: str) -> None:
        self.session.probe_closed(ws)
