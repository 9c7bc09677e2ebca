"""The Engine.IO v4 session as a Sans-I/O state machine.

Every rule of a session lives here: long-polling (one held GET, what a POST may carry, a poll
whose connection is lost), the upgrade from polling to WebSocket (probe, `3probe`, the noop check,
the client's `5`), the heartbeat (ping, pong timeout, pongs nobody asked for), closing from either
side, and the bound on what a polling client may leave unread. The I/O layer tells the machine
what arrived or which timer fired; each method returns what follows, in order:

- *events* for the application (`Message`, `Closed`),
- *actions* for the I/O layer (answer this or the held request, write to or close a WebSocket,
  set or cancel a named timer, forget the session, log or count a violation).

The machine never sees a socket, a request object or a clock: timers are actions and their delay
is a number, so a test drives every transition with plain calls.

What a session sends is an opaque `Payload` (the I/O layer's pre-encoded message): the machine
only queues it for polling, counts its `size` against the bound, and joins its polling records
or WebSocket frames when it hands them over. For a session on WebSocket, the I/O layer writes
payloads straight to the connection without asking the machine (the broadcast path): nothing
the machine would decide changes a delivery there.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterator, Protocol, Union

import orjson

from . import engineio
from .engine_outputs import (  # the machine's vocabulary, re-exported for its users
    ABORT_POLL,
    ACCEPT_PROBE,
    AbortPoll,
    AcceptProbe,
    CancelTimer,
    CloseProbe,
    CloseWs,
    Closed,
    DropSoon,
    ENDED,
    Ended,
    FLUSH_SOON,
    FlushSoon,
    HOLD_POLL,
    HoldPoll,
    Message,
    NOTHING,
    Note,
    Output,
    REFUSE_UPGRADE,
    REPLY_OK,
    RefuseUpgrade,
    ReleasePoll,
    Reply,
    ReplyError,
    ReplyOk,
    SetTimer,
    SlowConsumer,
    Timer,
    UPGRADED,
    Upgraded,
    WriteProbe,
    WriteWs,
)
from .engineio import ErrorCode, PacketType
from .errors import ProtocolError
from .wsframe import text_frame

__all__ = [
    "ABORT_POLL",
    "ACCEPT_PROBE",
    "AbortPoll",
    "AcceptProbe",
    "CancelTimer",
    "CloseProbe",
    "CloseWs",
    "Closed",
    "DropSoon",
    "ENDED",
    "Ended",
    "EngineSession",
    "FLUSH_SOON",
    "FlushSoon",
    "HOLD_POLL",
    "HoldPoll",
    "Message",
    "NOTHING",
    "Note",
    "OPEN_STATES",
    "Output",
    "Payload",
    "REFUSE_UPGRADE",
    "REPLY_OK",
    "RefuseUpgrade",
    "ReleasePoll",
    "Reply",
    "ReplyError",
    "ReplyOk",
    "STALE_POLL_DELAY",
    "SetTimer",
    "SlowConsumer",
    "State",
    "Timer",
    "UPGRADED",
    "UPGRADE_CHECK_INTERVAL",
    "Upgraded",
    "WriteProbe",
    "WriteWs",
]

# After `3probe`, a held poll is released with a noop on this period, not at once: what
# engine.io's `maybeUpgrade` does (a 100 ms check interval), and what clients are tested with.
UPGRADE_CHECK_INTERVAL = 0.1

# A poll for a session that already moved to WebSocket waits this long for its 400, so that it
# never overtakes the upgrade's own `3probe` on its way to a client that sent the poll right
# behind its probe (a client reading both in one turn of its event loop would see the poll fail
# first and give up the session).
STALE_POLL_DELAY = 0.05


class State(Enum):
    """Where a session is. The transport is part of the state: one field, no combinations."""

    POLLING = "polling"  # open on long-polling
    PROBING = "probing"  # open on polling; a WebSocket is attached for an upgrade, its `2probe` awaited
    UPGRADING = "upgrading"  # `3probe` sent: held polls get noops until the client's `5`
    WEBSOCKET = "websocket"  # open on WebSocket
    CLOSING = "closing"  # closed by the server over polling: the next GET collects the `1`
    CLOSED = "closed"


# Module constants for the per-delivery checks in `EngineSession.send` (cheaper than `State.X`).
_WEBSOCKET, _UPGRADING, _CLOSING, _CLOSED = State.WEBSOCKET, State.UPGRADING, State.CLOSING, State.CLOSED
OPEN_STATES = frozenset((State.POLLING, State.PROBING, State.UPGRADING, State.WEBSOCKET))
_UPGRADE_STATES = (State.PROBING, State.UPGRADING)
# Where polling output flows to a held GET as soon as it is queued (not during an upgrade).
_POLLING_FLOWS = (State.POLLING, State.PROBING)


class Payload(Protocol):
    """What the session queues: a message encoded once for both transports."""

    size: int  # bytes on the wire, about (counted against the output bound)

    @property
    def polling(self) -> list[bytes]: ...  # its polling records

    @property
    def ws(self) -> bytes: ...  # its WebSocket frames


class _Control:
    """A control packet the session sends itself (ping, noop, close), in both forms."""

    __slots__ = ("size", "polling", "ws")

    def __init__(self, packet: engineio.Packet) -> None:
        text = engineio.encode_bytes(packet)
        self.size = len(text)
        self.polling = [text]
        self.ws = text_frame(text)


# One bit per timer in `EngineSession._armed`, in the order of the enum.
_BIT: dict[Timer, int] = {timer: 1 << i for i, timer in enumerate(Timer)}

_PING = _Control(engineio.PING)
_NOOP_BODY = engineio.encode_bytes(engineio.NOOP)
_CLOSE_BODY = engineio.encode_bytes(engineio.CLOSE)
_PROBE_PONG_FRAME = text_frame(engineio.encode_bytes(engineio.Packet(PacketType.PONG, "probe")))

# The OPEN packet around its sid, per configuration: what `Handshake.to_packet` encodes, split
# once (every session of an endpoint has the same configuration; a few entries at most).
_OPEN_TEMPLATES: dict[tuple[tuple[str, ...], int, int, int], tuple[bytes, bytes]] = {}
_SID_MARK = "\x01sid\x01"


def _open_template(upgrades: tuple[str, ...], ping_interval: int, ping_timeout: int, max_payload: int) -> tuple[bytes, bytes]:
    key = (upgrades, ping_interval, ping_timeout, max_payload)
    template = _OPEN_TEMPLATES.get(key)
    if template is None:
        hello = engineio.Handshake(_SID_MARK, upgrades, ping_interval, ping_timeout, max_payload).to_packet()
        prefix, _, suffix = engineio.encode_bytes(hello).partition(orjson.dumps(_SID_MARK))
        if len(_OPEN_TEMPLATES) >= 16:
            _OPEN_TEMPLATES.clear()  # bounded: configurations come from settings, not clients
        template = _OPEN_TEMPLATES[key] = (prefix, suffix)
    return template


# Reasons after which a polling close does not wait for a GET to collect its `1`: the client
# is gone or broke the protocol.
_ABRUPT = ("ping timeout", "transport error", "parse error")




class EngineSession:
    """One Engine.IO session's rules. Delays are in seconds; `max_buffered_bytes` bounds what a
    polling client may leave queued or unread."""

    __slots__ = (
        "sid",
        "state",
        "poll_held",
        "queue",
        "queued_bytes",
        "_armed",
        "ping_interval",
        "ping_timeout",
        "upgrade_timeout",
        "max_payload",
        "max_buffered_bytes",
        "allow_upgrades",
        "close_reason",
        "_flush_scheduled",
        "_pong_awaited",
        "_told_closed",
    )

    def __init__(
        self,
        sid: str,
        *,
        websocket: bool = False,
        ping_interval: float = 25.0,
        ping_timeout: float = 20.0,
        upgrade_timeout: float = 10.0,
        max_payload: int = 1_000_000,
        max_buffered_bytes: int = 1 << 20,
        allow_upgrades: bool = True,
    ) -> None:
        self.sid = sid
        self.state = State.WEBSOCKET if websocket else State.POLLING
        self.poll_held = False  # a GET is held open, waiting for output
        self.queue: list[Payload] = []  # polling output not yet answered
        self.queued_bytes = 0  # the sum of `size` over `queue`
        self._armed = 0  # armed timers, one bit each (_BIT): no set per idle session
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.upgrade_timeout = upgrade_timeout
        self.max_payload = max_payload
        self.max_buffered_bytes = max_buffered_bytes
        self.allow_upgrades = allow_upgrades
        self.close_reason = ""
        self._flush_scheduled = False
        self._pong_awaited = False  # a ping is outstanding
        self._told_closed = False

    @property
    def timers(self) -> frozenset[Timer]:
        """The armed timers."""
        armed = self._armed
        return frozenset(t for t, bit in _BIT.items() if armed & bit)

    @property
    def writable(self) -> bool:
        """Whether polling output queued now goes out at once (volatile packets are dropped
        otherwise). A session on WebSocket asks its connection instead."""
        return self.poll_held and self.state in _POLLING_FLOWS

    # -- opening -------------------------------------------------------------------------------

    def open(self) -> list[Output]:
        """The handshake: the OPEN packet on the session's first transport, and the first ping."""
        websocket = self.state is State.WEBSOCKET
        prefix, suffix = _open_template(
            ("websocket",) if not websocket and self.allow_upgrades else (),
            round(self.ping_interval * 1000),
            round(self.ping_timeout * 1000),
            self.max_payload,
        )
        text = prefix + orjson.dumps(self.sid) + suffix
        first: Output = WriteWs(text_frame(text)) if websocket else Reply(text)
        return [first, self._set(Timer.PING, self.ping_interval)]

    # -- sending (polling) ---------------------------------------------------------------------

    def send(self, payload: Payload) -> tuple[Output, ...]:
        """Queue one payload for polling. Called once per delivery: returns shared constants,
        not new objects, in the common cases."""
        state = self.state
        if state is _CLOSING or state is _CLOSED:
            return NOTHING
        if state is _WEBSOCKET:
            return (WriteWs(payload.ws),)
        self.queue.append(payload)
        queued = self.queued_bytes + payload.size
        self.queued_bytes = queued
        if queued > self.max_buffered_bytes:
            self.queue = []  # free the memory now; the session ends at the next turn
            self.queued_bytes = 0
            return (DropSoon(queued),)
        if self.poll_held and state is not _UPGRADING and not self._flush_scheduled:
            self._flush_scheduled = True
            return FLUSH_SOON
        return NOTHING

    def flush(self) -> list[Output]:
        """Answer the held GET with everything queued (the end-of-turn flush)."""
        self._flush_scheduled = False
        if not self.poll_held or not self.queue:
            return []
        self.poll_held = False
        return [ReleasePoll(self._take_payload())]

    def poll_written(self, buffered: int) -> list[Output]:
        """A polling answer was written and its connection still holds `buffered` unsent bytes:
        a client that asks for polls but does not read the answers is a slow consumer too."""
        if buffered > self.max_buffered_bytes and self.state in OPEN_STATES:
            return [DropSoon(buffered)]
        return []

    def output_over_bound(self, buffered: int) -> list[Output]:
        """The client left more than the bound unread: drop what is queued and end the session
        ("transport error"), instead of queueing without limit."""
        if self.state is State.CLOSED:
            return []
        out: list[Output] = [SlowConsumer("polling", buffered)]
        self.queue = []
        self.queued_bytes = 0
        if self.poll_held:
            self.poll_held = False
            out.append(ABORT_POLL)  # never answered: the connection goes with the session
        if self.state in OPEN_STATES:
            out += self.close("transport error")
        else:
            out += self._finish(self.close_reason)
        return out

    def _take_payload(self, last: bytes | None = None) -> bytes:
        records: list[bytes] = []
        for payload in self.queue:
            records.extend(payload.polling)
        if last is not None:
            records.append(last)
        self.queue = []
        self.queued_bytes = 0
        return engineio.join_records(records)

    # -- heartbeat -----------------------------------------------------------------------------

    def timer_fired(self, timer: Timer) -> list[Output]:
        """A timer the machine armed has fired."""
        bit = _BIT[timer]
        if not self._armed & bit:
            return []  # cancelled meanwhile
        self._armed &= ~bit
        if timer is Timer.PING:
            return self._ping_due()
        if timer is Timer.PONG:
            self._pong_awaited = False
            return self.close("ping timeout")
        if timer is Timer.UPGRADE:
            return self._upgrade_timed_out()
        if timer is Timer.UPGRADE_CHECK:
            return self._upgrade_check()
        return self._finish(self.close_reason)  # LINGER

    def _ping_due(self) -> list[Output]:
        if self.state not in OPEN_STATES:
            return []
        out = list(self.send(_PING))
        self._pong_awaited = True
        out.append(self._set(Timer.PONG, self.ping_timeout))
        return out

    def _pong(self) -> list[Output]:
        if not self._pong_awaited:
            return []  # a pong nobody asked for does not put off the next ping
        self._pong_awaited = False
        return [self._cancel(Timer.PONG), self._set(Timer.PING, self.ping_interval)]

    # -- receiving -----------------------------------------------------------------------------

    def _packet(self, packet: engineio.Packet) -> list[Output]:
        ptype = packet.type
        if ptype is PacketType.MESSAGE:
            return [Message(packet.data)]  # type: ignore[arg-type]
        if ptype is PacketType.PONG:
            return self._pong()
        if ptype is PacketType.CLOSE:
            return self.close("transport close", by_client=True)
        if ptype is PacketType.NOOP:
            return []
        # OPEN/UPGRADE/PING on an established transport break the protocol.
        return [Note("eio_unexpected_packet", f"type={ptype.name}", bad_packet=True), *self.close("parse error")]

    def receive_ws(self, data: Union[str, bytes]) -> list[Output]:
        """A message on the session's WebSocket (text: one packet; binary: one binary message)."""
        if self.state is not State.WEBSOCKET:
            return []
        if not isinstance(data, str):
            return [Message(data)]
        try:
            packet = engineio.decode_text(data)
        except ProtocolError as exc:
            return [Note("eio_bad_packet", f"error={str(exc)!r}", bad_packet=True), *self.close("parse error")]
        return self._packet(packet)

    def ws_closed(self, reason: str) -> list[Output]:
        """The session's WebSocket connection is gone."""
        if self.state is State.CLOSED:
            return []
        return self._finish(reason if self.state is State.WEBSOCKET else self.close_reason)

    # -- polling requests ----------------------------------------------------------------------

    def receive_get(self) -> list[Output]:
        """A polling GET for this session arrived."""
        state = self.state
        if state is State.WEBSOCKET:
            return [ReplyError(ErrorCode.BAD_REQUEST, STALE_POLL_DELAY)]
        if state is State.CLOSED:
            return [ReplyError(ErrorCode.UNKNOWN_SID)]
        if self.poll_held:
            return [Note("eio_duplicate_get"), ReplyError(ErrorCode.BAD_REQUEST), *self.close("transport error")]
        if state is State.CLOSING:
            # What was sent before the close goes out with it, ahead of the `1`: a client told
            # "41" (disconnected by the server) must see it before the transport closes.
            return [Reply(self._take_payload(_CLOSE_BODY)), *self._finish(self.close_reason)]
        if self.queue:
            return [Reply(self._take_payload())]
        # Held until there is something to send (or, during an upgrade, until the next noop).
        self.poll_held = True
        return [HOLD_POLL]

    def poll_lost(self) -> list[Output]:
        """The held GET's connection closed: the client is gone (a closed tab, a killed process,
        a proxy that passed the close on). As engine.io ("poll connection closed prematurely"),
        the session ends now, not at the ping timeout."""
        self.poll_held = False
        if self.state in OPEN_STATES:
            return [Note("eio_poll_closed"), *self.close("transport error")]
        return []

    def receive_post(self, body: bytes) -> Iterator[Output]:
        """A polling POST for this session arrived.

        Lazy on purpose: the I/O layer carries out each output before the next packet is
        looked at, so an application that closes the session while handling one message stops
        the rest of the payload, as Engine.IO does.
        """
        state = self.state
        if state is State.WEBSOCKET:
            yield ReplyError(ErrorCode.BAD_REQUEST, STALE_POLL_DELAY)
            return
        if state is State.CLOSED:
            yield ReplyError(ErrorCode.UNKNOWN_SID)
            return
        try:
            packets = engineio.decode_payload(body.decode("utf-8"))
        except (ProtocolError, UnicodeDecodeError) as exc:
            yield Note("eio_bad_payload", f"error={str(exc)!r}", bad_packet=True)
            yield ReplyError(ErrorCode.BAD_REQUEST)
            yield from self.close("parse error")
            return
        yield REPLY_OK  # first: what the packets lead to may close the session, the POST succeeded
        for packet in packets:
            if self.state not in OPEN_STATES:
                return
            yield from self._packet(packet)

    # -- upgrade -------------------------------------------------------------------------------

    def upgrade_requested(self) -> list[Output]:
        """A WebSocket upgrade request for this session arrived. One upgrade, from polling only."""
        if self.state is not State.POLLING or not self.allow_upgrades:
            return [Note("eio_upgrade_refused"), REFUSE_UPGRADE]
        self.state = State.PROBING
        return [ACCEPT_PROBE, self._set(Timer.UPGRADE, self.upgrade_timeout)]

    def receive_probe(self, data: Union[str, bytes]) -> list[Output]:
        """A message on the probe WebSocket."""
        state = self.state
        if state not in _UPGRADE_STATES:
            return []
        if data == "2probe":
            # At once, not at the end of the turn, so it cannot trail a stale poll's 400.
            self.state = State.UPGRADING
            return [WriteProbe(_PROBE_PONG_FRAME), self._set(Timer.UPGRADE_CHECK, UPGRADE_CHECK_INTERVAL)]
        if data == "5" and state is State.UPGRADING:
            return self._finish_upgrade()
        return [Note("eio_bad_probe"), CloseProbe(1002, "invalid upgrade"), *self._end_upgrade()]

    def probe_closed(self) -> list[Output]:
        """The probe WebSocket closed (or its handshake failed) before the upgrade completed."""
        if self.state not in _UPGRADE_STATES:
            return []
        return self._end_upgrade()

    def _upgrade_timed_out(self) -> list[Output]:
        if self.state not in _UPGRADE_STATES:
            return []
        return [Note("eio_upgrade_timeout"), CloseProbe(1000, "upgrade timeout"), *self._end_upgrade()]

    def _upgrade_check(self) -> list[Output]:
        """Release a held poll with a noop so the client can send its upgrade packet; again
        every interval while the upgrade is under way (a later GET is held until then)."""
        if self.state is not State.UPGRADING:
            return []
        out: list[Output] = []
        if self.poll_held:
            self.poll_held = False
            out.append(ReleasePoll(_NOOP_BODY))
        out.append(self._set(Timer.UPGRADE_CHECK, UPGRADE_CHECK_INTERVAL))
        return out

    def _end_upgrade(self) -> list[Output]:
        """The upgrade failed: polling goes on, and a poll held during the upgrade takes what
        was queued meanwhile."""
        self.state = State.POLLING
        out = self._cancel_upgrade_timers()
        if self.poll_held and self.queue and not self._flush_scheduled:
            self._flush_scheduled = True
            out.append(FlushSoon())
        return out

    def _finish_upgrade(self) -> list[Output]:
        out: list[Output] = []
        if self.poll_held:
            self.poll_held = False
            out.append(ReleasePoll(_NOOP_BODY))
        out += self._cancel_upgrade_timers()
        self.state = State.WEBSOCKET
        out.append(UPGRADED)
        if self.queue:
            frames = b"".join([payload.ws for payload in self.queue])
            self.queue = []
            self.queued_bytes = 0
            out.append(WriteWs(frames))
        return out

    def _cancel_upgrade_timers(self) -> list[Output]:
        return [self._cancel(t) for t in (Timer.UPGRADE, Timer.UPGRADE_CHECK) if self._armed & _BIT[t]]

    # -- closing -------------------------------------------------------------------------------

    def close(self, reason: str, by_client: bool = False) -> list[Output]:
        """Close the session. A server-side close tells the client (`1` over polling, a close
        frame over WebSocket); a close asked by the client releases a held poll with a noop."""
        state = self.state
        if state not in OPEN_STATES:
            return []
        out: list[Output] = []
        if self.poll_held and self.queue and state in _POLLING_FLOWS:
            out += self.flush()  # as engine.io: what was sent before close() goes out first
        self.state = State.CLOSING
        self.close_reason = reason
        out += self._cancel_all()
        if state in _UPGRADE_STATES:
            out.append(CloseProbe(1001, "session closed"))
        if state is State.WEBSOCKET:
            out.append(CloseWs(1000, ""))
            out += self._finish(reason)
        elif self.poll_held:
            self.poll_held = False
            out.append(ReleasePoll(_NOOP_BODY if by_client else _CLOSE_BODY))
            out += self._finish(reason)
        elif by_client or reason in _ABRUPT:
            out += self._finish(reason)
        else:
            # The next GET collects the `1`; do not keep the session if that GET never comes.
            out.append(self._set(Timer.LINGER, self.ping_timeout))
            out.append(self._tell_closed(reason))
        return out

    def _finish(self, reason: str) -> list[Output]:
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        self.poll_held = False
        self.queue = []
        self.queued_bytes = 0
        out = self._cancel_all()
        out.append(ENDED)
        if not self._told_closed:
            out.append(self._tell_closed(reason or self.close_reason))
        return out

    def _tell_closed(self, reason: str) -> Closed:
        self._told_closed = True
        return Closed(reason)

    # -- timers ----------------------------------------------------------------------------------

    def _set(self, timer: Timer, delay: float) -> SetTimer:
        self._armed |= _BIT[timer]
        return SetTimer(timer, delay)

    def _cancel(self, timer: Timer) -> CancelTimer:
        self._armed &= ~_BIT[timer]
        return CancelTimer(timer)

    def _cancel_all(self) -> list[Output]:
        armed = self._armed
        cancelled: list[Output] = [CancelTimer(t) for t, bit in _BIT.items() if armed & bit]
        self._armed = 0
        self._pong_awaited = False
        return cancelled
