"""The HTTP/1.1 front: one asyncio Protocol per TCP connection, parsed with httptools.

Requests are routed by path prefix to handlers. A handler answers with `Request.respond(...)`,
possibly later (a long-poll GET is held open until there is data), or takes the connection over
with `Request.upgrade(...)` (WebSocket). Requests that arrive on a connection while an earlier
response is still pending wait their turn, which keeps HTTP/1.1 ordering without tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable, Protocol
from urllib.parse import parse_qsl, unquote

import httptools

log = logging.getLogger("gateway.http")

_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


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

    def respond(self, status: int, body: bytes | str = b"", headers: list[tuple[str, str]] | None = None, content_type: str = "text/plain; charset=UTF-8") -> None:
        """Send the response (once). Safe to call after the client went away."""
        if self.answered:
            return
        self.answered = True
        self.on_abort = None
        if isinstance(body, str):
            body = body.encode()
        self.conn.send_response(self, status, body, headers or [], content_type)

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
        "_url",
        "_headers",
        "_body",
        "_body_size",
        "_max_body",
        "_queue",
        "_current",
        "_upgraded",
        "_too_large",
        "_on_close",
    )

    def __init__(self, router: Router, max_body: int, on_close: Callable[["HttpConnection"], None] | None = None) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: tuple[str, int] | None = None
        self.closed = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._max_body = max_body
        self._too_large = False
        self._queue: deque[Request] = deque()
        self._current: Request | None = None
        self._upgraded: Upgraded | None = None
        self._on_close = on_close

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        if self._upgraded is not None:
            self._upgraded.data_received(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(data[exc.args[0]:])
        except httptools.HttpParserError as exc:
            log.info("http_bad_request peer=%s error=%r", self.peer, str(exc))
            self._write_simple(400, b"Bad Request")
            self.close()

    def eof_received(self) -> bool | None:
        if self._upgraded is not None:
            self._upgraded.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._upgraded is not None:
            self._upgraded.connection_lost(exc)
        current = self._current
        self._current = None
        self._queue.clear()
        if current is not None and not current.answered and current.on_abort is not None:
            abort, current.on_abort = current.on_abort, None
            abort()
        if self._on_close is not None:
            self._on_close(self)

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key in self._headers:
            self._headers[key] += ", " + text
        else:
            self._headers[key] = text

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._too_large = True
            self._body = []
            return
        if not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # handled in _on_upgrade once the parser hands over the rest of the bytes
        request = self._make_request(is_upgrade=False)
        if self._too_large:
            log.info("http_body_too_large peer=%s path=%s limit=%d", self.peer, request.path, self._max_body)
            self._write_simple(413, b'{"code":3,"message":"Bad request"}')
            self.close()
            return
        self._enqueue(request)

    # -- internals ------------------------------------------------------------------------------

    def _make_request(self, is_upgrade: bool) -> Request:
        parser = self.parser
        return Request(
            self,
            parser.get_method().decode("ascii", "replace"),
            self._url.decode("latin-1"),
            self._headers,
            b"".join(self._body),
            is_upgrade,
            parser.should_keep_alive(),
            parser.get_http_version(),
        )

    def _enqueue(self, request: Request) -> None:
        if self._current is None:
            self._dispatch(request)
        else:
            self._queue.append(request)

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

    def send_response(self, request: Request, status: int, body: bytes, headers: list[tuple[str, str]], content_type: str) -> None:
        if self.closed or self.transport is None:
            return
        keep_alive = request.keep_alive
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        head.append(f"Content-Length: {len(body)}")
        if content_type:
            head.append(f"Content-Type: {content_type}")
        for name, value in headers:
            head.append(f"{name}: {value}")
        if not keep_alive:
            head.append("Connection: close")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        if not keep_alive:
            self.close()
            return
        if self._current is request:
            self._current = None
            if self._queue:
                self._dispatch(self._queue.popleft())

    def _write_simple(self, status: int, body: bytes, close: bool = True) -> None:
        if self.transport is None or self.closed:
            return
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n"
        if close:
            head += "Connection: close\r\n"
        self.transport.write(head.encode() + b"\r\n" + body)

    def _on_upgrade(self, rest: bytes) -> None:
        request = self._make_request(is_upgrade=True)
        if self._current is not None:
            # An upgrade pipelined behind a pending response is not something clients do.
            self._write_simple(400, b'{"code":3,"message":"Bad request"}')
            self.close()
            return
        handler = self.router.resolve(request.path)
        if handler is None:
            self._write_simple(404, b'{"error":"not found"}')
            self.close()
            return
        request.body = rest  # bytes already read past the request head belong to the new protocol
        self._current = request
        try:
            handler(request)
        except Exception:
            log.exception("upgrade_handler_failed path=%s", request.path)
            self._write_simple(500, b"")
            self.close()
            return
        if not request.answered:
            self._write_simple(400, b'{"code":3,"message":"Bad request"}')
            self.close()

    def take_over(self, response_head: bytes, handler_factory: Callable[[asyncio.Transport], Upgraded], rest: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response_head)
        self._current = None
        self.parser = None  # type: ignore[assignment]  # the HTTP parser is done with this connection
        self._upgraded = handler_factory(self.transport)
        if rest:
            self._upgraded.data_received(rest)

    def reject_upgrade(self, status: int, body: bytes) -> None:
        self._write_simple(status, body)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class HttpServer:
    """Owns the listening socket and the set of open connections (for graceful shutdown)."""

    def __init__(self, router: Router, max_body: int) -> None:
        self.router = router
        self.max_body = max_body
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.base_events.Server | None = None

    def _factory(self) -> HttpConnection:
        conn = HttpConnection(self.router, self.max_body, self.connections.discard)
        self.connections.add(conn)
        return conn

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, host, port, reuse_address=True, backlog=2048)
        sock = self._server.sockets[0]
        return sock.getsockname()[1]

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                pass
