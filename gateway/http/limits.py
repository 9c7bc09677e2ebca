"""The bounds of the HTTP front (`HttpLimits`, from the settings), its counters (`HttpStats`)
and the log throttle for events clients can cause in bulk."""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("gateway.http")

# Events that clients can cause in bulk (timeouts, refusals) log one line per this interval and
# kind, saying how many were left out; the counters in /metrics have every one.
_LOG_INTERVAL_S = 10.0

PHASES = ("header", "body", "keepalive")
_NO_QUEUE: tuple[()] = ()


@dataclass(frozen=True)
class HttpLimits:
    """The front's bounds, in the units the code uses (seconds, bytes, counts)."""

    max_body: int = 1_000_000
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_pipelined: int = 16
    max_pipelined_bytes: int = 1 << 20
    max_connections: int = 0  # 0: from the descriptor limit, see `connection_cap`

    @classmethod
    def from_settings(cls, settings: "Settings") -> "HttpLimits":
        return cls(
            max_body=settings.max_payload,
            header_timeout=settings.http_header_timeout_ms / 1000,
            body_timeout=settings.http_body_timeout_ms / 1000,
            keepalive_timeout=settings.http_keepalive_timeout_ms / 1000,
            max_header_bytes=settings.http_max_header_bytes,
            max_headers=settings.http_max_headers,
            max_pipelined=settings.http_max_pipelined,
            max_pipelined_bytes=settings.http_max_pipelined_bytes,
            max_connections=settings.http_max_connections,
        )

    def connection_cap(self) -> int:
        """HTTP_MAX_CONNECTIONS, or when 0, 90 % of the process's descriptor limit: idle clients
        alone then cannot use every descriptor, and Redis, files and /health keep some."""
        if self.max_connections > 0:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft <= 0:
            return 1_000_000
        return max(1, soft * 9 // 10)


@dataclass
class HttpStats:
    """Plain counters bumped by the front; /metrics reads them at scrape time."""

    timeouts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    connections_over_limit: int = 0
    accept_errors: dict[str, int] = field(default_factory=dict)
    headers_too_large: int = 0
    bad_requests: int = 0
    read_pauses: int = 0


class LogThrottle:
    """At most one line per event kind per interval; the next line says how many were left out.
    A flood of hostile connections must not turn into a flood of log lines."""

    def __init__(self, interval: float = _LOG_INTERVAL_S) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: int, event: str, fmt: str = "", *args: Any) -> None:
        if not log.isEnabledFor(level):
            return
        now = time.monotonic()
        if now < self._next.get(event, 0.0):
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._next[event] = now + self.interval
        suppressed = self._suppressed.pop(event, 0)
        log.log(level, f"{event} {fmt} suppressed=%d" if fmt else f"{event} suppressed=%d", *args, suppressed)


def peer_text(peer: Any) -> str:
    """`host:port` (one token in a key=value line), whatever shape the transport gave."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else "-"
