"""One TCP connection of the HTTP front: an asyncio Protocol parsed with httptools, with its
timeouts, head limits and backpressure (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable

import httptools

from protocol.engineio import ErrorCode, error_body

from .limits import _NO_QUEUE, HttpLimits, HttpStats, LogThrottle, peer_text
from .request import _REASONS, Request, Router, Upgraded

log = logging.getLogger("gateway.http")

# What a request refused before it reaches a handler is answered with: the clients here are
# Engine.IO clients, and this is the body they expect of a bad request.
_BAD_REQUEST_BODY = error_body(ErrorCode.BAD_REQUEST)

# Reads larger than this are parsed in slices of this size, so that parsing stops (the rest kept
# raw, reading paused) as soon as the connection has as much queued work as it may hold.
_FEED_SLICE = 16 * 1024


# Header names and values every client sends, as one shared string each: a session keeps its
# handshake request's headers for its whole life (socket.handshake), and the same few names and
# values decoded per connection cost some hundreds of bytes on every idle connection. The tables
# are fixed; anything else is decoded as it comes.
_COMMON_NAMES = (
    "host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "user-agent", "accept", "accept-encoding", "accept-language", "origin", "cookie",
    "content-type", "content-length", "cache-control", "pragma", "referer", "authorization", "x-forwarded-for",
    "x-forwarded-proto", "x-real-ip", "forwarded", "transfer-encoding", "te", "dnt", "priority",
    "sec-fetch-mode", "sec-fetch-site", "sec-fetch-dest", "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform",
)


def _spellings(name: str) -> tuple[str, ...]:
    title = "-".join(part.capitalize() for part in name.split("-"))
    return (name, title, title.replace("Websocket", "WebSocket"), title.replace("Ch-Ua", "CH-UA"), name.upper())


_NAMES: dict[bytes, str] = {spelling.encode("latin-1"): name for name in _COMMON_NAMES for spelling in _spellings(name)}
_VALUES: dict[bytes, str] = {
    value.encode("latin-1"): value
    for value in ("websocket", "WebSocket", "Upgrade", "upgrade", "keep-alive", "keep-alive, Upgrade", "Keep-Alive", "close", "13", "*/*", "gzip, deflate", "gzip, deflate, br", "no-cache", "permessage-deflate; client_max_window_bits")
}
_NO_PARTS: tuple[()] = ()


# Response heads around their Content-Length, by (status, content type, headers, keep-alive):
# every poll answer of an endpoint has the same head but for its length. Bounded (CORS
# reflects the request's origin, one of the configured ones, into the headers).
_HEADS: dict[tuple[int, str, tuple[tuple[str, str], ...], bool], tuple[bytes, bytes]] = {}
_HEADS_MAX = 256


def _response_head(key: tuple[int, str, tuple[tuple[str, str], ...], bool]) -> tuple[bytes, bytes]:
    status, content_type, headers, keep_alive = key
    rest = []
    if content_type:
        rest.append(f"Content-Type: {content_type}")
    for name, value in headers:
        rest.append(f"{name}: {value}")
    if not keep_alive:
        rest.append("Connection: close")
    first = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Length: ".encode("latin-1")
    parts = (first, ("".join(f"\r\n{line}" for line in rest) + "\r\n\r\n").encode("latin-1"))
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()
    _HEADS[key] = parts
    return parts


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is answered `status`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason



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
        throttle: LogThrottle | None = None,
    ) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: tuple[str, int] | None = None
        self.closed = False
        self.limits = limits or HttpLimits(max_body=max_body)
        self.stats = stats or HttpStats()
        self._throttle = throttle or LogThrottle()
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
        # A session may keep one of this connection's requests (its handshake) long after the
        # connection is gone: it keeps `peer`, not the parser or the dead transport.
        self.parser = None  # type: ignore[assignment]
        self.transport = None
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
        key = _NAMES.get(name) or name.decode("latin-1").lower()
        text = _VALUES.get(value) or value.decode("latin-1")
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
            self._throttle(logging.INFO, "http_body_too_large", "peer=%s path=%s limit=%d", peer_text(self.peer), request.path, self._max_body)
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
        self._throttle(logging.INFO, "http_bad_request", "peer=%s error=%r", peer_text(self.peer), str(exc))
        self._refuse(400, "bad_request")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` with `Connection: close` and close; only close when an earlier
        request is still unanswered (an answer now would be taken for that one's)."""
        if status in (414, 431):
            self.stats.headers_too_large += 1
            self._throttle(logging.INFO, "http_head_too_large", "peer=%s status=%d reason=%s limit=%d", peer_text(self.peer), status, reason, self.limits.max_header_bytes)
        elif reason not in ("bad_request", "timeout", "body_too_large"):
            self._throttle(logging.INFO, "http_request_refused", "peer=%s status=%d reason=%s", peer_text(self.peer), status, reason)
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
        self._throttle(logging.INFO, "http_timeout", "phase=%s peer=%s", phase, peer_text(self.peer))
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
            if result is not None and asyncio.iscoroutine(result):
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
        key = (status, content_type, tuple(headers), keep_alive)
        parts = _HEADS.get(key)
        if parts is None:
            parts = _response_head(key)
        first, rest = parts
        data = b"".join((first, str(len(body)).encode("ascii"), rest))
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
        if response_head:  # empty when the new protocol writes the 101 itself, with its first bytes
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
        # Nor are its buffers (the headers live on in the request the session keeps).
        self._url = self._body = _NO_PARTS  # type: ignore[assignment]
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
