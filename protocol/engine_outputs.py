"""What the Engine.IO session machine (`protocol.engine_session`) returns: events for the
application and actions for the I/O layer, carried out in the order they are returned.

Small frozen values; the ones without fields exist once (`REPLY_OK`, `HOLD_POLL`, ...), and
`NOTHING` / `FLUSH_SOON` are shared tuples, so the per-delivery path allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Union

from .engineio import ErrorCode


class Timer(Enum):
    PING = "ping"  # the next ping is due
    PONG = "pong"  # the pong for the outstanding ping is late
    UPGRADE = "upgrade"  # the upgrade did not complete in time
    UPGRADE_CHECK = "upgrade check"  # release a held poll with a noop during the upgrade
    LINGER = "linger"  # a closed polling session whose `1` nobody collected is forgotten

# -- events for the application ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """An Engine.IO message arrived (text or binary)."""

    data: Union[str, bytes]


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over for the application (told once)."""

    reason: str


# -- actions for the I/O layer ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the GET being handled with this polling body (200)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class ReplyOk:
    """Answer the POST being handled: its packets were taken."""


@dataclass(frozen=True, slots=True)
class ReplyError:
    """Answer the request being handled with an Engine.IO error, after `delay` seconds."""

    code: ErrorCode
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class HoldPoll:
    """Keep the GET being handled open until there is something to send; tell the machine
    (`poll_lost`) if its connection closes first."""


@dataclass(frozen=True, slots=True)
class ReleasePoll:
    """Answer the held GET with this polling body."""

    body: bytes


@dataclass(frozen=True, slots=True)
class AbortPoll:
    """Drop the held GET's connection unanswered."""


@dataclass(frozen=True, slots=True)
class FlushSoon:
    """Call `flush()` at the end of this event-loop turn (one answer for a burst of sends)."""


@dataclass(frozen=True, slots=True)
class DropSoon:
    """The client left `buffered` bytes unread: call `output_over_bound(buffered)` at the next
    turn, not inside the broadcast that is walking the room this session is about to leave."""

    buffered: int


@dataclass(frozen=True, slots=True)
class SlowConsumer:
    """The session is being dropped for leaving more than the bound unread (count and log it)."""

    transport: str
    buffered: int


@dataclass(frozen=True, slots=True)
class WriteWs:
    """Write frames to the session's WebSocket (batched to the end of the turn)."""

    frames: bytes


@dataclass(frozen=True, slots=True)
class CloseWs:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class AcceptProbe:
    """Complete the WebSocket handshake of the upgrade request and attach it as the probe."""


@dataclass(frozen=True, slots=True)
class RefuseUpgrade:
    """Complete the WebSocket handshake, then close that redundant WebSocket (as engine.io)."""


@dataclass(frozen=True, slots=True)
class WriteProbe:
    """Write frames to the probe WebSocket at once (ahead of anything later in this turn)."""

    frames: bytes


@dataclass(frozen=True, slots=True)
class CloseProbe:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Upgraded:
    """The probe is now the session's WebSocket."""


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Arm `timer` to fire in `delay` seconds, replacing it if armed."""

    timer: Timer
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True, slots=True)
class Ended:
    """The session is finished: forget it (a later request for its id is unknown)."""


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth one log line (`event` plus `detail`); a `bad_packet` is also counted."""

    event: str
    detail: str = ""
    bad_packet: bool = False


Output = Union[
    Message, Closed, Reply, ReplyOk, ReplyError, HoldPoll, ReleasePoll, AbortPoll, FlushSoon,
    DropSoon, SlowConsumer, WriteWs, CloseWs, AcceptProbe, RefuseUpgrade, WriteProbe, CloseProbe,
    Upgraded, SetTimer, CancelTimer, Ended, Note,
]  # fmt: skip

REPLY_OK = ReplyOk()
HOLD_POLL = HoldPoll()
ABORT_POLL = AbortPoll()
ACCEPT_PROBE = AcceptProbe()
REFUSE_UPGRADE = RefuseUpgrade()
UPGRADED = Upgraded()
ENDED = Ended()
FLUSH_SOON: tuple[Output, ...] = (FlushSoon(),)
NOTHING: tuple[Output, ...] = ()
