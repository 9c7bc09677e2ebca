"""Limits that keep one client (or one crowd) from hurting the others.

- `TokenBucket` / `EventRateLimiter`: a per-socket event rate. Excess events are dropped (the
  caller answers them with an error ack); a socket that keeps going past the limit is closed.
- `ConnectionGate`: which new connections a node accepts: allowed `Origin`s (browsers send it on
  both the polling handshake and a direct WebSocket connection) and a maximum number of sessions.
  It is the Engine.IO endpoint's `admission` callback, asked only for handshakes of new sessions.

Payload size is enforced by the transport layer itself (MAX_PAYLOAD_BYTES).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine.server import EngineServer
    from .http import Request

log = logging.getLogger("gateway.limits")

ABUSE_WINDOW_S = 10.0


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. Time is passed in, so it is exact to
    test and costs nothing to call."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Verdict(enum.Enum):
    ALLOW = "allow"
    DROP = "drop"
    DISCONNECT = "disconnect"


class EventRateLimiter:
    """One socket's incoming event budget. `disconnect_after` drops inside a 10 s window (counted
    from the first drop of the window) mean sustained abuse rather than a burst."""

    __slots__ = ("bucket", "disconnect_after", "drops", "window_start")

    def __init__(self, rate: float, burst: int, disconnect_after: int, now: float) -> None:
        self.bucket = TokenBucket(rate, burst, now)
        self.disconnect_after = disconnect_after
        self.drops = 0
        self.window_start = now

    def hit(self, now: float) -> Verdict:
        if self.bucket.take(now):
            return Verdict.ALLOW
        if now - self.window_start > ABUSE_WINDOW_S:
            self.window_start = now
            self.drops = 0
        self.drops += 1
        if self.disconnect_after and self.drops >= self.disconnect_after:
            return Verdict.DISCONNECT
        return Verdict.DROP


@dataclass
class LimitStats:
    events_dropped: int = 0
    rate_disconnects: int = 0
    rooms_refused: int = 0
    connections_refused_origin: int = 0
    connections_refused_full: int = 0


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """No list, or no Origin header (not a browser), or a listed origin. Compared exactly,
    scheme and port included, as browsers send it."""
    if not allowed or origin is None or "*" in allowed:
        return True
    return origin.rstrip("/") in allowed


class ConnectionGate:
    """Admission of new Engine.IO sessions: origin and per-node connection cap."""

    def __init__(self, engine: "EngineServer", allowed_origins: tuple[str, ...], max_connections: int, stats: LimitStats) -> None:
        self.engine = engine
        self.allowed_origins = tuple(o.rstrip("/") for o in allowed_origins)
        self.max_connections = max_connections
        self.stats = stats

    def refusal(self, request: "Request") -> str | None:
        """Why this new-session request is refused, or None to let it in."""
        origin = request.headers.get("origin")
        if not origin_allowed(origin, self.allowed_origins):
            self.stats.connections_refused_origin += 1
            return f"origin {origin!r} not allowed"
        if self.max_connections and len(self.engine.sessions) >= self.max_connections:
            self.stats.connections_refused_full += 1
            return f"node full ({self.max_connections} connections)"
        return None

