"""Engine.IO v4 HTTP long-polling for the load generator, as cheap per message as its WebSocket
client: raw HTTP/1.1 keep-alive on bare `asyncio.Protocol`s, no client library, no task per client.

A polling client holds two keep-alive connections, as a browser does: one carries the long-poll
GET (always exactly one outstanding once the session is open, re-sent as soon as its answer
arrives), the other the POSTs (sends and pong answers). Engine.IO allows one GET and one POST in
flight per session (Node's engine.io answers an overlap with 400 and closes the session), so a
client queues what it sends while a POST is in flight and sends it as one payload (packets joined
by the record separator `\\x1e`) when that POST is answered. A poll answer may carry several
packets, also joined by `\\x1e`; each is handled as the WebSocket client handles one frame, so a
broadcast's bytes are the same `42[...]` for every subscriber and the generator's per-payload cache
works unchanged.

`HttpLink` is also used by the load generator's default clients (the polling handshake before
their WebSocket upgrade).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Callable

import orjson

SEPARATOR = b"\x1e"
# Node's http server closes a keep-alive connection idle for 5 s (`keepAliveTimeout`); a POST
# written just as it does is lost. A POST link idle longer than this is replaced before use.
POST_LINK_IDLE_S = 3.0
# Upper bound on one HTTP response head and body the generator accepts (the servers' own
# maxHttpBufferSize is 1 MB; a poll answer stays far below).
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

Callback = Callable[[int, bytes], None]


class PollingError(ConnectionError):
    """A polling request failed (refused, bad status, malformed response). A ConnectionError, so
    the load generator's entry point reports it like any other connection failure."""


def handshake_request(path: str, host: str, port: int) -> bytes:
    return f"GET {path}?EIO=4&transport=polling HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()


def poll_request(path: str, host: str, port: int, sid: str) -> bytes:
    return f"GET {path}?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()


def post_head(path: str, host: str, port: int, sid: str) -> bytes:
    """A POST's request line and headers up to (not including) its Content-Length value."""
    return (
        f"POST {path}?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: "
    ).encode()


def post_request(head: bytes, body: bytes) -> bytes:
    return b"%s%d\r\n\r\n%s" % (head, len(body), body)


def parse_open(body: bytes) -> dict[str, Any]:
    """The handshake's open packet `0{...}` (sid, pingInterval, upgrades...)."""
    if body[:1] != b"0":
        raise PollingError(f"handshake answered {body[:80]!r}, not an open packet")
    try:
        info = orjson.loads(body[1:])
    except orjson.JSONDecodeError as exc:
        raise PollingError(f"handshake open packet is not JSON: {body[:80]!r}") from exc
    if not isinstance(info, dict) or not isinstance(info.get("sid"), str):
        raise PollingError(f"handshake open packet has no sid: {body[:80]!r}")
    return info


class HttpLink(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection: requests written in order, each response handed to
    the callback queued with its request. Only Content-Length bodies (what Node.js, aiohttp and
    our gateway send for Engine.IO); anything else fails the link."""

    __slots__ = ("transport", "buf", "waiting", "closed", "on_lost", "last_used", "fetching")

    def __init__(self, on_lost: Callable[["HttpLink", Exception | None], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiting: deque[Callback] = deque()
        self.closed = False
        self.on_lost = on_lost
        self.last_used = time.monotonic()
        # Set-up requests awaited as futures: failed at once if the connection goes, instead of
        # leaving their caller to its timeout.
        self.fetching: set[asyncio.Future[tuple[int, bytes]]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, data: bytes, callback: Callback) -> None:
        if self.closed:
            raise PollingError("request on a closed HTTP connection")
        self.waiting.append(callback)
        self.last_used = time.monotonic()
        self.transport.write(data)  # type: ignore[union-attr]

    def fetch(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """The response to one request as a future (for the set-up steps, not the hot path)."""
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, body: bytes) -> None:
            self.fetching.discard(future)
            if not future.done():
                future.set_result((status, body))

        self.request(data, done)
        self.fetching.add(future)
        return future

    def _fail_fetches(self, exc: Exception | None) -> None:
        for future in self.fetching:
            if not future.done():
                future.set_exception(PollingError(f"HTTP connection lost before its response: {exc!r}"))
        self.fetching.clear()

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        n = len(data)
        while pos < n:
            end = data.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = data[pos:end].lower()
            cl = head.find(b"\r\ncontent-length:")
            if not head.startswith(b"http/1.1 ") or cl < 0:
                self.fail(f"unsupported HTTP response: {data[pos : pos + 120]!r}")
                return
            eol = head.find(b"\r\n", cl + 2)
            length = int(head[cl + 17 : eol if eol > 0 else len(head)])
            start = end + 4
            if start + length > n:
                if start + length - pos > MAX_RESPONSE_BYTES:
                    self.fail(f"HTTP response of {length} bytes")
                    return
                break
            pos = start + length
            status = int(head[9:12])
            if not self.waiting:
                self.fail("HTTP response without a request")
                return
            self.waiting.popleft()(status, data[start:pos])
            if b"\r\nconnection: close" in head:
                self.transport.close()  # type: ignore[union-attr]
                return
        if pos < n:
            self.buf = data[pos:]

    def fail(self, reason: str) -> None:
        self.closed = True
        self._fail_fetches(PollingError(reason))
        if self.transport is not None:
            self.transport.close()
        if self.on_lost is not None:
            self.on_lost(self, PollingError(reason))
            self.on_lost = None

    def close(self) -> None:
        self.on_lost = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_fetches(exc)
        if self.on_lost is not None:
            self.on_lost(self, exc)
            self.on_lost = None


class PollingClient:
    """One Engine.IO session on long-polling only, with the generator's client interface
    (`connected`, `ready`, `closed`, `received`, `send_packet`, `close`).

    The generator is duck-typed: `on_event(client, payload, now)` for each `42` event and a
    `closed_connections` count bumped when the session's poll link dies unasked."""

    __slots__ = (
        "gen",
        "index",
        "target",
        "path",
        "sid",
        "get_link",
        "post_link",
        "poll_bytes",
        "post_prefix",
        "outbox",
        "posting",
        "connected",
        "ready",
        "closed",
        "closing",
        "received",
        "posts",
        "polls",
    )

    def __init__(self, gen: Any, index: int, target: tuple[str, int], path: str) -> None:
        self.gen = gen
        self.index = index
        self.target = target
        self.path = path
        self.sid = ""
        self.get_link: HttpLink | None = None
        self.post_link: HttpLink | None = None
        self.poll_bytes = b""
        self.post_prefix = b""
        self.outbox: list[bytes] = []
        self.posting = False
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready = False
        self.closed = False
        self.closing = False
        self.received = 0
        self.posts = 0
        self.polls = 0

    # -- set-up ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Handshake GET, POST `40`, then the long poll that brings the namespace's CONNECT."""
        loop = asyncio.get_running_loop()
        host, port = self.target
        _, self.get_link = await loop.create_connection(lambda: HttpLink(self._get_lost), host, port)
        status, body = await asyncio.wait_for(self.get_link.fetch(handshake_request(self.path, host, port)), 30)
        if status != 200:
            raise PollingError(f"handshake refused: {status} {body[:120]!r}")
        self.sid = parse_open(body)["sid"]
        self.poll_bytes = poll_request(self.path, host, port, self.sid)
        self.post_prefix = post_head(self.path, host, port, self.sid)
        self.send_packet(b"40")
        self.poll()

    def poll(self) -> None:
        self.polls += 1
        self.get_link.request(self.poll_bytes, self.on_poll)  # type: ignore[union-attr]

    # -- inbound ---------------------------------------------------------------------------------

    def on_poll(self, status: int, body: bytes) -> None:
        now = time.perf_counter()
        if status != 200:
            self._fail(PollingError(f"poll answered {status}: {body[:120]!r}"))
            return
        if not self.closing:
            self.poll()  # the next long poll goes out before this answer is handled
        if SEPARATOR in body:
            for packet in body.split(SEPARATOR):
                self.on_packet(packet, now)
        else:
            self.on_packet(body, now)

    def on_packet(self, packet: bytes, now: float) -> None:
        kind = packet[:1]
        if kind == b"4":  # message: Socket.IO type digit next
            sio = packet[1:2]
            if sio == b"2":
                self.received += 1
                self.gen.on_event(self, packet, now)
            elif sio == b"0" and not self.connected.done():
                self.connected.set_result(None)
            elif sio == b"4" and not self.connected.done():
                self.connected.set_exception(PollingError(f"namespace refused: {packet!r}"))
        elif packet == b"2":  # ping: the pong goes back by POST
            self.send_packet(b"3")
        elif kind == b"1":  # close: the server ended the session unasked
            self._fail(PollingError("the server closed the session"))
        # 6 (noop) and anything else: nothing to do

    # -- outbound --------------------------------------------------------------------------------

    def send_packet(self, payload: bytes) -> None:
        """Queue one Engine.IO packet; it leaves with the next POST (one at a time per session)."""
        if self.closed:
            return
        self.outbox.append(payload)
        if not self.posting:
            self._post()

    def _post(self) -> None:
        link = self.post_link
        if link is None or link.closed or time.monotonic() - link.last_used > POST_LINK_IDLE_S:
            self.posting = True
            if link is not None:
                link.close()
            self.post_link = None
            asyncio.get_running_loop().create_task(self._reopen_post())
            return
        outbox = self.outbox
        body = outbox[0] if len(outbox) == 1 else SEPARATOR.join(outbox)
        outbox.clear()
        self.posting = True
        self.posts += 1
        link.request(post_request(self.post_prefix, body), self.on_posted)

    async def _reopen_post(self) -> None:
        try:
            _, link = await asyncio.get_running_loop().create_connection(lambda: HttpLink(self._post_lost), *self.target)
        except OSError as exc:
            self._fail(exc)
            return
        self.post_link = link
        self.posting = False
        if self.outbox and not self.closed:
            self._post()

    def on_posted(self, status: int, body: bytes) -> None:
        self.posting = False
        if status != 200:
            self._fail(PollingError(f"POST answered {status}: {body[:120]!r}"))
            return
        if self.outbox and not self.closed:
            self._post()

    # -- end -------------------------------------------------------------------------------------

    def _get_lost(self, link: HttpLink, exc: Exception | None) -> None:
        if not self.closing:
            self._fail(exc or PollingError("poll connection closed by the server"))

    def _post_lost(self, link: HttpLink, exc: Exception | None) -> None:
        # An idle POST link closed by the server is replaced at the next send; one closed with a
        # POST in flight lost what it carried.
        if link.waiting and not self.closing:
            self._fail(exc or PollingError("POST connection closed with a request in flight"))

    def _fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self.gen.closed_connections += 1
        if not self.connected.done():
            self.connected.set_exception(PollingError(f"polling client {self.index} failed during handshake: {exc!r}"))
        self._close_links()

    def close(self) -> None:
        self.closing = True
        self.closed = True
        self._close_links()

    def _close_links(self) -> None:
        for link in (self.get_link, self.post_link):
            if link is not None:
                link.close()
