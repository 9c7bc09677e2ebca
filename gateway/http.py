"""The HTTP/1.1 front: one asyncio Protocol per TCP connection, parsed with httptools.

Requests are routed by path prefix to handlers. A handler answers with `Request.respond(...)`,
possibly later (a long-poll GET is held open until there is data), or takes the connection over
with `Request.upgrade(...)` (WebSocket). Requests that arrive on a connection while an earlier
response is still pending wait their turn, which keeps HTTP/1.1 ordering without tasks.

Everything a client can make the front hold is bounded (`HttpLimits`, from the settings), because
the clients are not ours:

- time: a request head must arrive within HTTP_HEADER_TIMEOUT_MS, its body within
  HTTP_BODY_TIMEOUT_MS, and a keep-alive connection with nothing pending is closed after
  HTTP_KEEPALIVE_TIMEOUT_MS. One timer per connection at most, moved only on request boundaries:
  a deadline is recorded and a timer that fires early re-arms itself for what is left;
- size: the request line plus headers (HTTP_MAX_HEADER_BYTES, HTTP_MAX_HEADERS), bodies
  (MAX_PAYLOAD_BYTES); repeated headers are collected and joined once;
- queued work: at most HTTP_MAX_PIPELINED requests (HTTP_MAX_PIPELINED_BYTES of bodies) wait
  behind a pending one, and nothing more is read while they wait or while the kernel is not
  taking our writes (the transport's pause_writing); large reads are parsed in slices so a burst
  stops being parsed as soon as that is so;
- connections: at most HTTP_MAX_CONNECTIONS TCP connections (upgraded or not). The listening
  socket is ours rather than `loop.create_server`'s so that the cap is applied before a transport
  exists and an accept that fails for lack of descriptors (EMFILE) is seen, logged and counted
  (uvloop drops those connections silently); accepting pauses briefly and existing connections
  keep being served.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import parse_qsl, unquote

import httptools

from protocol.engineio import ErrorCode, error_body

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("gateway.http")

# What a request refused before it reaches a handler is answered with: the clients here are
# Engine.IO clients, and this is the body they expect of a bad request.
_BAD_REQUEST_BODY = error_body(ErrorCode.BAD_REQUEST)

_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# Reads larger than this are parsed in slices of this size, so that parsing stops (the rest kept
# raw, reading paused) as soon as the connection has as much queued work as it may hold.
_FEED_SLICE = 16 * 1024
# Out of descriptors: accepting resumes after this long (the kernel keeps the backlog meanwhile).
_ACCEPT_RETRY_S = 0.5
# Connections accepted per readiness event, so one busy listener cannot starve the loop.
_ACCEPT_BATCH = 128
# Events that clients can cause in bulk (timeouts, refusals) log one line per this interval and
# kind, saying how many were left out; the counters in /metrics have every one.
_LOG_INTERVAL_S = 10.0
_ACCEPT_OUT_OF_RESOURCES = {errno.EMFILE: "emfile", errno.ENFILE: "enfile", errno.ENOBUFS: "enobufs", errno.ENOMEM: "enomem"}

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


class _LogThrottle:
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


def _peer_text(peer: Any) -> str:
    """`host:port` (one token in a key=value line), whatever shape the transport gave."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else "-"


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is answered `status`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Upgraded(Protocol):
    """What takes over a connection after an upgrade (the WebSocket layer)."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class Request:
    __slots__ = (
        "method",
        "path",
        "raw_path",
        "query_string",
        "_query",
        "headers",
        "body",
        "is_upgrade",
        "keep_alive",
        "conn",
        "answered",
        "on_abort",
        "http_version",
    )

    def __init__(self, conn: "HttpConnection", method: str, raw_path: str, headers: dict[str, str], body: bytes, is_upgrade: bool, keep_alive: bool, http_version: str) -> None:
        self.conn = conn
        self.method = method
        self.raw_path = raw_path
        path, _, qs = raw_path.partition("?")
        self.path = unquote(path)
        self.query_string = qs
        self._query: dict[str, str] | None = None
        self.headers = headers
        self.body = body
        self.is_upgrade = is_upgrade
        self.keep_alive = keep_alive
        self.answered = False
        self.on_abort: Callable[[], None] | None = None
        self.http_version = http_version

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    @property
    def remote_address(self) -> str:
        peer = self.conn.peer
        return peer[0] if peer else ""

    @property
    def connected(self) -> bool:
        return not self.conn.closed

    def respond(
        self,
        status: int,
        body: bytes | str = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "text/plain; charset=UTF-8",
        close: bool = False,
    ) -> None:
        """Send the response (once). Safe to call after the client went away. `close` ends the
        connection after it (`Connection: close`), for answers to clients we would rather not
        keep serving on this connection."""
        if self.answered:
            return
        self.answered = True
        self.on_abort = None
        if isinstance(body, str):
            body = body.encode()
        self.conn.send_response(self, status, body, headers or [], content_type, close)

    def upgrade(self, response_head: bytes, handler_factory: Callable[[asyncio.Transport], Upgraded], rest: bytes) -> None:
        """Write the 101 response and hand the connection (and bytes already read) to a handler."""
        self.answered = True
        self.conn.take_over(response_head, handler_factory, rest)


Handler = Callable[[Request], Any]


class Router:
    """Path-prefix routing. Exact paths win over prefixes; the longest prefix wins."""

    def __init__(self) -> None:
        self._exact: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []

    def add(self, path: str, handler: Handler, prefix: bool = False) -> None:
        if prefix:
            self._prefixes.append((path, handler))
            self._prefixes.sort(key=lambda item: -len(item[0]))
        else:
            self._exact[path] = handler

    def mount(self, path: str, handler: Handler) -> None:
        """Serve `path` and everything below it (`/socket.io` serves `/socket.io/` too)."""
        path = path.rstrip("/")
        self.add(path, handler)
        self.add(path + "/", handler, prefix=True)

    def resolve(self, path: str) -> Handler | None:
        handler = self._exact.get(path)
        if handler is not None:
            return handler
        for prefix, handler in self._prefixes:
            if path.startswith(prefix):
                return handler
        return None


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "router",
        "transport",
        "parser",
        "peer",
        "closed",
        "limits",
        "stats",
        "_throttle",
        "_url",
        "_headers",
        "_repeated",
        "_header_count",
        "_head_size",
        "_head_raw",
        "_in_head",
        "_in_message",
        "_began",
        "_body",
        "_body_size",
        "_max_body",
        "_queue",
        "_queued_bytes",
        "_backlog",
        "_current",
        "_upgraded",
        "_upgrade_pending",
        "_too_large",
        "_on_close",
        "_loop",
        "_timer",
        "_timer_when",
        "_phase",
        "_deadline",
        "_write_paused",
        "_reading_paused",
        "_drain_scheduled",
        "_draining",
    )

    def __init__(
        self,
        router: Router,
        max_body: int,
        on_close: Callable[["HttpConnection"], None] | None = None,
        limits: HttpLimits | None = None,
        stats: HttpStats | None = None,
        throttle: _LogThrottle | None = None,
    ) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: tuple[str, int] | None = None
        self.closed = False
        self.limits = limits or HttpLimits(max_body=max_body)
        self.stats = stats or HttpStats()
        self._throttle = throttle or _LogThrottle()
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._repeated: dict[str, list[str]] | None = None
        self._header_count = 0
        self._head_size = 0
        self._head_raw = 0
        self._in_head = False
        self._in_message = False
        self._began = False
        self._body: list[bytes] = []
        self._body_size = 0
        self._max_body = max_body
        self._too_large = False
        # Requests waiting behind a pending one; a deque (~600 bytes) only once one has to wait.
        self._queue: deque[Request] | tuple[()] = _NO_QUEUE
        self._queued_bytes = 0
        self._backlog: bytes | None = None
        self._current: Request | None = None
        self._upgraded: Upgraded | None = None
        self._upgrade_pending = False
        self._on_close = on_close
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._phase: str | None = None
        self._deadline = 0.0
        self._write_paused = False
        self._reading_paused = False
        self._drain_scheduled = False
        self._draining = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self._loop = asyncio.get_running_loop()
        # Nothing read yet: the first request head is due within the header timeout.
        self._arm("header", self.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._upgraded is not None:
            self._upgraded.data_received(data)
            return
        if self._backlog is not None or self._upgrade_pending:
            # Reading is paused; bytes the transport had already read wait with the rest.
            self._backlog = data if self._backlog is None else self._backlog + data
            self._update_reading()
            return
        self._feed(data)

    def eof_received(self) -> bool | None:
        if self._upgraded is not None:
            self._upgraded.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._upgraded is not None:
            self._upgraded.connection_lost(exc)
        current = self._current
        self._current = None
        self._queue = _NO_QUEUE
        self._backlog = None
        if current is not None and not current.answered and current.on_abort is not None:
            abort, current.on_abort = current.on_abort, None
            abort()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        # The client is not reading what we send: read (and answer) nothing more until it does.
        self._write_paused = True
        if self._upgraded is None:
            self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._upgraded is None and not self.closed:
            self._schedule_drain()

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = {}
        self._repeated = None
        self._header_count = 0
        self._head_size = 0
        self._head_raw = 0
        self._in_head = True
        self._in_message = True
        self._began = True
        self._body = []
        self._body_size = 0
        self._too_large = False
        self._arm("header", self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)
        if self._head_size > self.limits.max_header_bytes:
            raise _Refused(414, "url_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.limits.max_header_bytes:
            raise _Refused(431, "header_bytes")
        if self._header_count > self.limits.max_headers:
            raise _Refused(431, "header_count")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        if key in headers:
            # Collected and joined once in on_headers_complete: `+=` per repeat is quadratic.
            repeated = self._repeated
            if repeated is None:
                repeated = self._repeated = {}
            parts = repeated.get(key)
            if parts is None:
                repeated[key] = [headers[key], text]
            else:
                parts.append(text)
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._repeated is not None:
            for key, parts in self._repeated.items():
                self._headers[key] = ", ".join(parts)
            self._repeated = None
        if "transfer-encoding" in self._headers and self.parser.get_http_version() == "1.0":
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise _Refused(400, "http10_transfer_encoding")
        self._arm("body", self.limits.body_timeout)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._too_large = True
            self._body = []
            return
        if not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._phase = None  # the handler has the request now; a pending one is not idle
        if self.parser.should_upgrade():
            return  # handled in _on_upgrade once the parser hands over the rest of the bytes
        request = self._make_request(is_upgrade=False)
        if self._too_large:
            self._throttle(logging.INFO, "http_body_too_large", "peer=%s path=%s limit=%d", _peer_text(self.peer), request.path, self._max_body)
            self._refuse(413, "body_too_large")
            return
        self._enqueue(request)

    # -- reading --------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse `data`; large reads in slices, keeping the rest raw (reading paused) once the
        connection holds as much queued work as it may."""
        size = len(data)
        view = memoryview(data) if size > _FEED_SLICE else None
        start = 0
        limits = self.limits
        while start < size:
            end = min(start + _FEED_SLICE, size) if view is not None else size
            piece = view[start:end] if view is not None else data
            head_before = self._in_head
            self._began = False
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                self._on_upgrade(bytes(piece[exc.args[0]:]) + data[end:])
                return
            except httptools.HttpParserError as exc:
                self._parse_failed(exc)
                return
            if self.closed or self.parser is None:
                return
            if self._in_head:
                if head_before and not self._began:
                    # The whole piece was head; the header being read is inside the parser,
                    # unseen by on_header until it ends, so count raw bytes too.
                    self._head_raw += end - start
                if max(self._head_raw, self._head_size) > limits.max_header_bytes:
                    self._refuse(431, "header_bytes")
                    return
            start = end
            if start < size and self._holding():
                self._backlog = bytes(view[start:]) if view is not None else data[start:]
                break
        self._update_reading()

    def _holding(self) -> bool:
        """True while the connection may not take more requests: enough are queued, or the
        client is not reading our answers."""
        return self._write_paused or len(self._queue) >= self.limits.max_pipelined or self._queued_bytes >= self.limits.max_pipelined_bytes

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed or self._upgraded is not None:
            return
        hold = self._backlog is not None or self._upgrade_pending or self._holding()
        if hold and not self._reading_paused:
            self._reading_paused = True
            self.stats.read_pauses += 1
            transport.pause_reading()
            if self._in_message:
                self._phase = None  # we stopped reading, not the client: its clock stops too
        elif not hold and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
            if self._in_message:
                if self._in_head:
                    self._arm("header", self.limits.header_timeout)
                else:
                    self._arm("body", self.limits.body_timeout)

    def _parse_failed(self, exc: Exception) -> None:
        refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
        if refused is not None:
            self._refuse(refused.status, refused.reason)
            return
        self.stats.bad_requests += 1
        self._throttle(logging.INFO, "http_bad_request", "peer=%s error=%r", _peer_text(self.peer), str(exc))
        self._refuse(400, "bad_request")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` with `Connection: close` and close; only close when an earlier
        request is still unanswered (an answer now would be taken for that one's)."""
        if status in (414, 431):
            self.stats.headers_too_large += 1
            self._throttle(logging.INFO, "http_head_too_large", "peer=%s status=%d reason=%s limit=%d", _peer_text(self.peer), status, reason, self.limits.max_header_bytes)
        elif reason not in ("bad_request", "timeout", "body_too_large"):
            self._throttle(logging.INFO, "http_request_refused", "peer=%s status=%d reason=%s", _peer_text(self.peer), status, reason)
        if self._current is None and not self._queue:
            self._write_simple(status, _BAD_REQUEST_BODY)
        self.close()

    # -- timers ---------------------------------------------------------------------------------

    def _arm(self, phase: str, timeout: float) -> None:
        """Time `phase` out `timeout` seconds from now. The one timer is replaced only when the
        new deadline is earlier than the timer's; otherwise it fires and re-arms for the rest."""
        loop = self._loop
        if loop is None:
            return
        deadline = loop.time() + timeout
        self._phase = phase
        self._deadline = deadline
        timer = self._timer
        if timer is None or deadline < self._timer_when:
            if timer is not None:
                timer.cancel()
            self._timer_when = deadline
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is None or self.closed or self._loop is None:
            return
        if self._loop.time() < self._deadline:
            self._timer_when = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._phase = None
        self.stats.timeouts[phase] += 1
        self._throttle(logging.INFO, "http_timeout", "phase=%s peer=%s", phase, _peer_text(self.peer))
        if phase == "keepalive" or (phase == "header" and not self._in_message):
            self.close()  # nothing of a request was read: there is no one to answer
        else:
            self._refuse(408, "timeout")

    # -- requests -------------------------------------------------------------------------------

    def _make_request(self, is_upgrade: bool) -> Request:
        parser = self.parser
        url = self._url
        return Request(
            self,
            parser.get_method().decode("ascii", "replace"),
            (url[0] if len(url) == 1 else b"".join(url)).decode("latin-1"),
            self._headers,
            b"".join(self._body),
            is_upgrade,
            parser.should_keep_alive(),
            parser.get_http_version(),
        )

    def _enqueue(self, request: Request) -> None:
        if self._current is None and not self._queue and not self._write_paused:
            self._dispatch(request)
        else:
            queue = self._queue
            if not isinstance(queue, deque):
                queue = self._queue = deque()
            queue.append(request)
            self._queued_bytes += len(request.body)

    def _dispatch(self, request: Request) -> None:
        self._current = request
        handler = self.router.resolve(request.path)
        if handler is None:
            request.respond(404, b'{"error":"not found"}', content_type="application/json")
            return
        try:
            result = handler(request)
            if asyncio.iscoroutine(result):
                task = asyncio.get_running_loop().create_task(result)
                task.add_done_callback(lambda t, r=request: self._handler_done(t, r))
        except Exception:
            log.exception("http_handler_failed path=%s", request.path)
            request.respond(500, b"Internal Server Error")

    def _handler_done(self, task: "asyncio.Task[Any]", request: Request) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("http_handler_failed path=%s error=%r", request.path, exc, exc_info=exc)
            request.respond(500, b"Internal Server Error")

    def _schedule_drain(self) -> None:
        """Queued requests and held bytes are taken up on the next loop turn, not inside the
        handler that just answered (no nesting of one handler inside another's respond)."""
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self.closed or self._upgraded is not None or self.transport is None:
            return
        self._draining = True
        try:
            queue = self._queue
            while self._current is None and queue and not self._write_paused and not self.closed:
                request = queue.popleft()  # type: ignore[union-attr]  # non-empty: a deque
                self._queued_bytes -= len(request.body)
                self._dispatch(request)
            if self._backlog is not None and not self._holding() and not self.closed and not self._upgrade_pending:
                data, self._backlog = self._backlog, None
                self._feed(data)
        finally:
            self._draining = False
        if self.closed or self._upgraded is not None:
            return
        self._update_reading()
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        """Between requests with nothing pending, queued or half-read: the keep-alive timer."""
        if self._current is None and not self._queue and self._backlog is None and not self._in_message:
            self._arm("keepalive", self.limits.keepalive_timeout)

    def send_response(self, request: Request, status: int, body: bytes, headers: list[tuple[str, str]], content_type: str, close: bool = False) -> None:
        if self.closed or self.transport is None:
            return
        keep_alive = request.keep_alive and not close
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        head.append(f"Content-Length: {len(body)}")
        if content_type:
            head.append(f"Content-Type: {content_type}")
        for name, value in headers:
            head.append(f"{name}: {value}")
        if not keep_alive:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        # A HEAD answer carries the headers of the GET answer, never its body.
        self.transport.write(data if request.method == "HEAD" else data + body)
        if not keep_alive:
            self.close()
            return
        if self._current is request:
            self._current = None
            if self._queue or self._backlog is not None:
                if not self._draining:
                    self._schedule_drain()
            elif not self._in_message:
                self._arm("keepalive", self.limits.keepalive_timeout)

    def _write_simple(self, status: int, body: bytes, close: bool = True) -> None:
        if self.transport is None or self.closed:
            return
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n"
        if close:
            head += "Connection: close\r\n"
        self.transport.write(head.encode() + b"\r\n" + body)

    def _on_upgrade(self, rest: bytes) -> None:
        request = self._make_request(is_upgrade=True)
        if self._current is not None or self._queue:
            # An upgrade pipelined behind a pending response is not something clients do.
            self._write_simple(400, _BAD_REQUEST_BODY)
            self.close()
            return
        handler = self.router.resolve(request.path)
        if handler is None:
            self._write_simple(404, b'{"error":"not found"}')
            self.close()
            return
        request.body = rest  # bytes already read past the request head belong to the new protocol
        self._current = request
        self._upgrade_pending = True  # bytes that arrive before the 101 wait for the new protocol
        try:
            handler(request)
        except Exception:
            log.exception("upgrade_handler_failed path=%s", request.path)
            self._write_simple(500, b"")
            self.close()
            return
        if not request.answered:
            self._write_simple(400, _BAD_REQUEST_BODY)
            self.close()
        elif self._upgrade_pending and not self.closed:
            self._update_reading()  # answered later (an async admission hook): hold reads until then

    def take_over(self, response_head: bytes, handler_factory: Callable[[asyncio.Transport], Upgraded], rest: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response_head)
        self._current = None
        self._upgrade_pending = False
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._backlog is not None:
            rest, self._backlog = rest + self._backlog, None
        self.parser = None  # type: ignore[assignment]  # the HTTP parser is done with this connection
        self._upgraded = handler_factory(self.transport)
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        if rest:
            self._upgraded.data_received(rest)

    def reject_upgrade(self, status: int, body: bytes) -> None:
        self._upgrade_pending = False
        self._write_simple(status, body)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class HttpServer:
    """Owns the listening sockets and the set of open connections (for graceful shutdown and
    the connection cap)."""

    def __init__(self, router: Router, max_body: int, settings: "Settings | None" = None, limits: HttpLimits | None = None) -> None:
        self.router = router
        self.max_body = max_body
        if limits is None:
            limits = HttpLimits.from_settings(settings) if settings is not None else HttpLimits(max_body=max_body)
        self.limits = limits
        self.max_connections = limits.connection_cap()
        self.stats = HttpStats()
        self.connections: set[HttpConnection] = set()
        self._throttle = _LogThrottle()
        self._sockets: list[socket.socket] = []
        self._accepting: set[int] = set()
        self._starting: set[asyncio.Task[Any]] = set()
        self._unstarted = 0  # accepted, transport not made yet: counted against the cap
        self._loop: asyncio.AbstractEventLoop | None = None

    def _factory(self) -> HttpConnection:
        conn = HttpConnection(self.router, self.max_body, self.connections.discard, self.limits, self.stats, self._throttle)
        self.connections.add(conn)
        return conn

    async def listen(self, host: str, port: int) -> int:
        """Bind every address `host` resolves to (one port for all) and start accepting."""
        loop = self._loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        bound = port
        seen: set[tuple[int, Any]] = set()
        try:
            for family, kind, proto, _, address in infos:
                if (family, address[:2]) in seen:
                    continue
                seen.add((family, address[:2]))
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], bound, *address[2:]))
                bound = sock.getsockname()[1]
                sock.listen(2048)
                sock.setblocking(False)
        except OSError:
            self._close_sockets()
            raise
        if not self._sockets:
            raise OSError(f"no address to listen on for {host!r}")
        for sock in self._sockets:
            self._start_accepting(sock)
        log.info("http_limits max_connections=%d header_timeout_s=%s body_timeout_s=%s keepalive_timeout_s=%s", self.max_connections, self.limits.header_timeout, self.limits.body_timeout, self.limits.keepalive_timeout)
        return bound

    def _start_accepting(self, sock: socket.socket) -> None:
        if self._loop is None or sock.fileno() < 0 or sock.fileno() in self._accepting:
            return
        self._accepting.add(sock.fileno())
        self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                kind = _ACCEPT_OUT_OF_RESOURCES.get(exc.errno or 0)
                if kind is None:
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                        continue  # that client gave up before we took it: the next one
                    kind = errno.errorcode.get(exc.errno or 0, "oserror").lower()
                self.stats.accept_errors[kind] = self.stats.accept_errors.get(kind, 0) + 1
                self._throttle(logging.WARNING, "http_accept_failed", "error=%s connections=%d retry_s=%s", kind, len(self.connections), _ACCEPT_RETRY_S)
                # The kernel keeps the backlog; connections already open are served meanwhile.
                self._pause_accepting(sock)
                return
            if len(self.connections) + self._unstarted >= self.max_connections:
                conn.close()
                self.stats.connections_over_limit += 1
                self._throttle(logging.WARNING, "http_connection_over_limit", "limit=%d", self.max_connections)
                continue
            # The loop makes it non-blocking and sets TCP_NODELAY itself (both asyncio and uvloop).
            self._unstarted += 1
            task = loop.create_task(self._start(conn))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, sock: socket.socket) -> None:
        """Give an accepted socket its transport and protocol (the loop's public way to do it)."""
        assert self._loop is not None
        made: list[HttpConnection] = []

        def factory() -> HttpConnection:
            self._unstarted -= 1
            made.append(self._factory())
            return made[0]

        try:
            await self._loop.connect_accepted_socket(factory, sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as exc:
            if not made:
                self._unstarted -= 1
            elif made[0].transport is None:
                self.connections.discard(made[0])  # no connection_lost will come for it
            sock.close()
            self._throttle(logging.INFO, "http_connection_setup_failed", "error=%r", str(exc))

    def _pause_accepting(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._loop is None or fd not in self._accepting:
            return
        self._accepting.discard(fd)
        self._loop.remove_reader(fd)
        self._loop.call_later(_ACCEPT_RETRY_S, self._resume_accepting, sock)

    def _resume_accepting(self, sock: socket.socket) -> None:
        if sock in self._sockets:
            self._start_accepting(sock)

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            fd = sock.fileno()
            if fd >= 0 and fd in self._accepting and self._loop is not None:
                self._loop.remove_reader(fd)
            self._accepting.discard(fd)
            sock.close()
        self._sockets = []

    def stop_accepting(self) -> None:
        self._close_sockets()

    async def close(self) -> None:
        self.stop_accepting()
        for conn in list(self.connections):
            conn.close()
        for task in list(self._starting):
            task.cancel()
        deadline = time.monotonic() + 2.0
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
