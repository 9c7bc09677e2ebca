"""One Engine.IO session: transport-agnostic state shared by long-polling and WebSocket.

A session starts on polling or directly on WebSocket, may upgrade once from polling to WebSocket,
pings its peer and closes itself when pongs stop. It knows nothing of Socket.IO: decoded messages
go to its `receiver` (the Socket.IO `Client`), outgoing messages arrive as `Outbound` objects.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from protocol import engineio
from protocol.engineio import PacketType
from protocol.errors import ProtocolError

from .outbound import CLOSE, NOOP, PING, PROBE_PONG, Outbound
from .websocket import WebSocketTransport

if TYPE_CHECKING:
    from ..http import Request
    from .server import EngineServer

log = logging.getLogger("gateway.engine")


class Receiver(Protocol):
    """The application side of a session."""

    def on_message(self, data: str | bytes) -> None: ...

    def on_close(self, reason: str) -> None: ...


OPEN, CLOSING, CLOSED = "open", "closing", "closed"

# After the probe, a pending poll is released with a noop on this period, not at once: what
# engine.io's `maybeUpgrade` does (a 100 ms check interval), and what clients were tested with.
UPGRADE_NOOP_INTERVAL = 0.1


class Session:
    __slots__ = (
        "server",
        "sid",
        "state",
        "ws",
        "probe",
        "upgrading",
        "buffer",
        "queued_bytes",
        "pending_get",
        "receiver",
        "request",
        "_loop",
        "_ping_timer",
        "_pong_timer",
        "_upgrade_timer",
        "_upgrade_check",
        "_flush_scheduled",
        "_close_reason",
    )

    def __init__(self, server: "EngineServer", sid: str, request: "Request") -> None:
        self.server = server
        self.sid = sid
        self.state = OPEN
        self.ws: WebSocketTransport | None = None  # set once the session runs on WebSocket
        self.probe: WebSocketTransport | None = None  # a WebSocket being upgraded to
        self.upgrading = False
        self.buffer: list[Outbound] = []  # polling only
        self.queued_bytes = 0  # the sum of `size` over `buffer`, bounded by MAX_BUFFERED_BYTES
        self.pending_get: "Request | None" = None
        self.receiver: Receiver | None = None
        self.request = request  # the handshake request (headers, query, address)
        self._loop = asyncio.get_running_loop()
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._upgrade_timer: asyncio.TimerHandle | None = None
        self._upgrade_check: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._close_reason = ""

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
        if self.state is not OPEN:
            return
        self.buffer.append(out)
        queued = self.queued_bytes + out.size
        self.queued_bytes = queued
        if queued > self.server.max_buffered_bytes:
            # Free the queue now; end the session soon after, not inside the broadcast that is
            # iterating over the room this session is about to leave.
            self.buffer = []
            self.queued_bytes = 0
            self._loop.call_soon(self.slow_consumer, queued)
            return
        if self.pending_get is not None and not self._flush_scheduled and not self.upgrading:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    @property
    def writable(self) -> bool:
        """Whether a message sent now would go out at once (used to drop volatile packets)."""
        ws = self.ws
        if ws is not None:
            return ws.writable
        return self.pending_get is not None and not self.upgrading

    def _flush(self) -> None:
        self._flush_scheduled = False
        request = self.pending_get
        if request is None or not self.buffer:
            return
        self.pending_get = None
        records: list[bytes] = []
        for out in self.buffer:
            records.extend(out.polling)
        self.buffer = []
        self.queued_bytes = 0
        self.server.respond_poll(request, b"\x1e".join(records))
        # A client that asks for a poll but does not read the answer holds it in our send queue.
        transport = request.conn.transport
        if transport is not None and self.state is OPEN:
            buffered = transport.get_write_buffer_size()
            if buffered > self.server.max_buffered_bytes:
                self._loop.call_soon(self.slow_consumer, buffered)

    def slow_consumer(self, buffered: int) -> None:
        """The polling peer does not take what it is sent (it posts, but never collects): drop
        what is queued and end the session ("transport error"), as a WebSocket whose send queue
        overflows is dropped, instead of queueing without limit."""
        if self.state is CLOSED:
            return
        self.server.count_slow_consumer(self, "polling", buffered)
        self.buffer = []
        self.queued_bytes = 0
        request, self.pending_get = self.pending_get, None
        if request is not None:
            request.answered = True  # never answered: the connection goes with the session
            request.on_abort = None
            transport = request.conn.transport
            if transport is not None:
                transport.abort()
        if self.state is OPEN:
            self.close("transport error")
        else:
            self._finish_close()

    # -- heartbeat -----------------------------------------------------------------------------

    def start(self) -> None:
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        self._ping_timer = self._loop.call_later(self.server.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self.state is not OPEN:
            return
        self.send(PING)
        self._pong_timer = self._loop.call_later(self.server.ping_timeout, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self._pong_timer = None
        self.close("ping timeout")

    def _on_pong(self) -> None:
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            self._schedule_ping()

    # -- receiving -----------------------------------------------------------------------------

    def on_packet(self, packet: engineio.Packet) -> None:
        ptype = packet.type
        if ptype is PacketType.MESSAGE:
            if self.receiver is not None:
                self.receiver.on_message(packet.data)  # type: ignore[arg-type]
        elif ptype is PacketType.PONG:
            self._on_pong()
        elif ptype is PacketType.CLOSE:
            self.close("transport close", by_client=True)
        elif ptype is PacketType.NOOP:
            pass
        else:
            # OPEN/UPGRADE/PING on an established transport break the protocol.
            self.server.count_bad_packet("engineio")
            log.info("eio_unexpected_packet sid=%s type=%s", self.sid, ptype.name)
            self.close("parse error")

    # -- polling -------------------------------------------------------------------------------

    def handle_get(self, request: "Request") -> None:
        if self.pending_get is not None:
            log.info("eio_duplicate_get sid=%s", self.sid)
            self.server.respond_error(request, engineio.ErrorCode.BAD_REQUEST)
            self.close("transport error")
            return
        if self.state is CLOSING:
            self.server.respond_poll(request, CLOSE.text)  # type: ignore[arg-type]
            self._finish_close()
            return
        if self.buffer:
            self.pending_get = request
            self._flush()
            return
        # Held until there is something to send (or, during an upgrade, until the next noop).
        self.pending_get = request
        request.on_abort = self._get_aborted

    def _get_aborted(self) -> None:
        """The connection of the pending poll closed: the client is gone (a closed tab, a killed
        process, a proxy that passed the close on). As engine.io ("poll connection closed
        prematurely"), the session ends now, not at the ping timeout."""
        self.pending_get = None
        if self.state is OPEN:
            log.info("eio_poll_closed sid=%s", self.sid)
            self.close("transport error")

    def handle_post(self, request: "Request") -> None:
        try:
            packets = engineio.decode_payload(request.body.decode("utf-8"))
        except (ProtocolError, UnicodeDecodeError) as exc:
            self.server.count_bad_packet("engineio")
            log.info("eio_bad_payload sid=%s error=%r", self.sid, str(exc))
            self.server.respond_error(request, engineio.ErrorCode.BAD_REQUEST)
            self.close("parse error")
            return
        # Answer first: handlers below may close the session, the POST itself succeeded.
        self.server.respond_ok(request)
        for packet in packets:
            if self.state is not OPEN:
                break
            self.on_packet(packet)

    # -- WebSocket -----------------------------------------------------------------------------

    def attach_websocket(self, ws: WebSocketTransport) -> None:
        """A session that starts directly on WebSocket."""
        self.ws = ws
        ws.listener = self

    def begin_upgrade(self, ws: WebSocketTransport) -> None:
        self.probe = ws
        ws.listener = _Probe(self)
        self._upgrade_timer = self._loop.call_later(self.server.upgrade_timeout, self._upgrade_timed_out)

    def _upgrade_timed_out(self) -> None:
        self._upgrade_timer = None
        probe, self.probe = self.probe, None
        self._end_upgrade()
        if probe is not None:
            log.info("eio_upgrade_timeout sid=%s", self.sid)
            probe.listener = None
            probe.close(1000, "upgrade timeout")

    def probe_message(self, ws: WebSocketTransport, data: str | bytes) -> None:
        if data == "2probe":
            # At once, not at the end of the tick, so it cannot trail a stale poll's 400.
            ws.write_now(PROBE_PONG.ws)
            self.upgrading = True
            if self._upgrade_check is not None:
                self._upgrade_check.cancel()
            self._upgrade_check = self._loop.call_later(UPGRADE_NOOP_INTERVAL, self._upgrade_noop)
        elif data == "5" and self.upgrading:
            self._finish_upgrade(ws)
        else:
            log.info("eio_bad_probe sid=%s", self.sid)
            self.probe = None
            self._end_upgrade()
            ws.listener = None
            ws.close(1002, "invalid upgrade")

    def _upgrade_noop(self) -> None:
        """Release a pending poll with a noop so the client can send its upgrade packet; again
        every interval while the upgrade is under way (a later GET is held until then)."""
        self._upgrade_check = None
        if not self.upgrading or self.state is not OPEN:
            return
        if self.pending_get is not None and self.ws is None:
            request, self.pending_get = self.pending_get, None
            self.server.respond_poll(request, NOOP.text)  # type: ignore[arg-type]
        self._upgrade_check = self._loop.call_later(UPGRADE_NOOP_INTERVAL, self._upgrade_noop)

    def _end_upgrade(self) -> None:
        """The upgrade finished or failed: stop its timers; if polling goes on, a poll held
        during the upgrade takes what was queued meanwhile."""
        self.upgrading = False
        for name in ("_upgrade_timer", "_upgrade_check"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)
        if self.ws is None and self.pending_get is not None and self.buffer and not self._flush_scheduled and self.state is OPEN:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _finish_upgrade(self, ws: WebSocketTransport) -> None:
        self.probe = None
        if self.pending_get is not None:
            request, self.pending_get = self.pending_get, None
            self.server.respond_poll(request, NOOP.text)  # type: ignore[arg-type]
        self._end_upgrade()
        self.ws = ws
        ws.listener = self
        buffered, self.buffer = self.buffer, []
        self.queued_bytes = 0
        if buffered:
            ws.write(b"".join([out.ws for out in buffered]))
        self.server.on_upgraded(self)

    def probe_closed(self, ws: WebSocketTransport) -> None:
        if self.probe is ws:
            self.probe = None
            self._end_upgrade()

    def ws_message(self, ws: WebSocketTransport, data: str | bytes) -> None:
        if isinstance(data, str):
            if data[:1] == "4":
                receiver = self.receiver
                if receiver is not None:
                    receiver.on_message(data[1:])
                return
            try:
                packet = engineio.decode_text(data)
            except ProtocolError as exc:
                self.server.count_bad_packet("engineio")
                log.info("eio_bad_packet sid=%s error=%r", self.sid, str(exc))
                self.close("parse error")
                return
            self.on_packet(packet)
        else:
            receiver = self.receiver
            if receiver is not None:
                receiver.on_message(data)

    def ws_closed(self, ws: WebSocketTransport, reason: str) -> None:
        if self.ws is ws and self.state is not CLOSED:
            self._finish_close(reason if self.state is OPEN else self._close_reason)

    # -- closing -------------------------------------------------------------------------------

    def close(self, reason: str, by_client: bool = False) -> None:
        """Close the session. Server-initiated closes tell the client (`1` over polling, a close
        frame over WebSocket); a close asked by the client releases a pending poll with a noop."""
        if self.state is not OPEN:
            return
        if self.ws is None and self.pending_get is not None and self.buffer and not self.upgrading:
            self._flush()  # as engine.io: what was sent before close() goes out first
        self.state = CLOSING
        self._close_reason = reason
        self._cancel_timers()
        if self.probe is not None:
            probe, self.probe = self.probe, None
            probe.listener = None
            probe.close(1001, "session closed")
        ws = self.ws
        if ws is not None:
            ws.listener = None
            ws.close(1000, "")
            self._finish_close(reason)
            return
        request, self.pending_get = self.pending_get, None
        if request is not None:
            self.server.respond_poll(request, (NOOP if by_client else CLOSE).text)  # type: ignore[arg-type]
            self._finish_close(reason)
        elif by_client or reason in ("ping timeout", "transport error", "parse error"):
            self._finish_close(reason)
        else:
            # Server-initiated close while no GET is pending: the next GET collects the `1`.
            # Do not keep the session forever if that GET never comes.
            self._loop.call_later(self.server.ping_timeout, self._finish_close)
            self._notify_close(reason)

    def _finish_close(self, reason: str | None = None) -> None:
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._cancel_timers()
        self.buffer = []
        self.queued_bytes = 0
        self.server.remove(self)
        self._notify_close(reason or self._close_reason)

    def _notify_close(self, reason: str) -> None:
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            try:
                receiver.on_close(reason)
            except Exception:
                log.exception("receiver_on_close_failed sid=%s", self.sid)

    def _cancel_timers(self) -> None:
        for name in ("_ping_timer", "_pong_timer", "_upgrade_timer", "_upgrade_check"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)


class _Probe:
    """Routes the events of a WebSocket under upgrade to its session."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def ws_message(self, ws: WebSocketTransport, data: str | bytes) -> None:
        self.session.probe_message(ws, data)

    def ws_closed(self, ws: WebSocketTransport, reason: str) -> None:
        self.session.probe_closed(ws)
