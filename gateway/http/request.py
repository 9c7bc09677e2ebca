"""A parsed HTTP request and the router that hands it to a handler."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import parse_qsl, unquote

if TYPE_CHECKING:
    from .connection import HttpConnection

_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    301: "Moved Permanently",
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
        # Interned: every request of an endpoint has the same path, and a session keeps its
        # handshake request (a string is dropped from the interned table with its last user).
        self.path = sys.intern(unquote(path))
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
            self._query = parse_query(self.query_string)
        return self._query

    def forget_query(self) -> None:
        """Drop the parsed query (parsed again if read again): for a request kept for the life
        of a session, whose query was read once when it arrived."""
        self._query = None

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
        """Write the 101 response and hand the connection (and bytes already read) to a handler;
        `response_head` may be empty when the handler queues the 101 itself, ahead of its first
        bytes."""
        self.answered = True
        self.conn.take_over(response_head, handler_factory, rest)


def parse_query(qs: str) -> dict[str, str]:
    """`dict(parse_qsl(qs, keep_blank_values=True))`, without its per-pair work for the plain
    query strings every Engine.IO request carries (`EIO=4&transport=polling&sid=...`): with no
    escape (`%`, `+`) there is nothing to decode, only to split."""
    if "%" in qs or "+" in qs:
        return dict(parse_qsl(qs, keep_blank_values=True))
    query: dict[str, str] = {}
    for pair in qs.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            query[name] = value
    return query


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
