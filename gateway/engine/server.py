"""The Engine.IO endpoint: validates requests, creates sessions, routes polling and upgrades.

What a request for an existing session leads to (a stale poll after the upgrade, an upgrade
refused, a duplicate GET) is the session machine's rule (`protocol.engine_session`); this module
only finds the session and hands the request over.

Mounted on the HTTP router at a path (`/socket.io/` for Socket.IO, `/engine.io/` for the plain
echo endpoint used by the conformance suite). What a session carries is decided by the
`on_connection` callback, which returns the session's receiver.

Before a new session opens, the application's `allow_request` hook (engine.io's `allowRequest`)
may refuse the handshake; it can be a coroutine, during which the request is held with no session
yet. Every connection's output is bounded (`max_buffered_bytes`): a peer that stops reading is
dropped as a slow consumer instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import os
from typing import Any, Awaitable, Callable, Union

from protocol import engineio
from protocol.engine_session import EngineSession
from protocol.engineio import ErrorCode, RequestRejected

from ..http import Request
from .session import Receiver, Session
from .timers import TimerWheel
from .websocket import WebSocketTransport, WriteBatcher, handshake

log = logging.getLogger("gateway.engine")


_NO_STORE = [("Cache-Control", "no-store")]  # every poll answer's header (never mutated)


class HandshakeRequest:
    """What an `allow_request` hook sees of a handshake request (both transports).

    `address` is the client's address (the peer, or the client a trusted proxy forwarded, as in
    `socket.handshake["address"]`); `remote_address` is the TCP peer itself. `headers` have
    lower-case names; `query` is the decoded query string (`EIO`, `transport`, anything the
    client added).
    """

    __slots__ = ("method", "path", "headers", "query", "address", "remote_address", "transport")

    def __init__(self, request: Request, transport: str, address: str) -> None:
        self.method = request.method
        self.path = request.path
        self.headers: dict[str, str] = request.headers
        self.query: dict[str, str] = request.query
        self.address = address
        self.remote_address = request.remote_address
        self.transport = transport

    def __repr__(self) -> str:
        return f"HandshakeRequest({self.method} {self.path} transport={self.transport} address={self.address})"


Verdict = Union[bool, str, None]
AllowRequest = Callable[[HandshakeRequest], Union[Verdict, Awaitable[Verdict]]]
"""`allow_request(request) -> True/None` to allow, `False` or a reason string to refuse; sync or
async."""


class _IdPool:
    """Session ids: 20 URL-safe characters from 15 bytes of the OS's CSPRNG, as Node's base64id,
    which also draws its random bytes in blocks. One `os.urandom` per 256 ids instead of one
    each: a getrandom() system call per connection is measurable in a connection storm."""

    __slots__ = ("_block", "_next")

    _IDS = 256

    def __init__(self) -> None:
        self._block = b""
        self._next = 0
        # A forked child must not hand out the ids its parent drew.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._block = b""
        self._next = 0

    def __call__(self) -> str:
        start = self._next
        if start >= len(self._block):
            self._block = os.urandom(15 * self._IDS)
            start = 0
        self._next = start + 15
        return base64.urlsafe_b64encode(self._block[start : start + 15]).decode("ascii")


generate_id = _IdPool()
"""20 URL-safe characters, like Node's base64id (15 random bytes)."""


class EngineStats:
    """Counters the operations surface reads; plain ints, cheap to bump on the hot path."""

    __slots__ = (
        "bad_packets",
        "sessions_opened",
        "upgrades",
        "http_errors",
        "messages_in",
        "messages_out",
        "slow_consumer_disconnects",
        "handshakes_refused",
        "bytes_in",
        "bytes_out",
    )

    def __init__(self) -> None:
        self.bad_packets: dict[str, int] = {}
        # Connections dropped because their output passed MAX_BUFFERED_BYTES, by transport.
        self.slow_consumer_disconnects: dict[str, int] = {"websocket": 0, "polling": 0}
        self.handshakes_refused = 0  # by the allow_request hook (refusal or failure)
        self.sessions_opened = 0
        self.upgrades = 0
        self.messages_in = 0  # Socket.IO messages received (attachments counted with their packet)
        self.messages_out = 0  # Socket.IO packets sent to one socket (broadcasts count as deliveries)
        self.http_errors = 0
        # Engine.IO payload bytes: WebSocket bytes as read/written (frames included), polling
        # bodies. One add per read and per batched write or poll answer, never per packet.
        self.bytes_in = 0
        self.bytes_out = 0


class EngineServer:
    def __init__(
        self,
        on_connection: Callable[[Session], Receiver],
        *,
        ping_interval_ms: int = 25000,
        ping_timeout_ms: int = 20000,
        max_payload: int = 1_000_000,
        upgrade_timeout_ms: int = 10000,
        cors_origins: tuple[str, ...] = (),
        allow_upgrades: bool = True,
        max_buffered_bytes: int = 1 << 20,
        allow_request: AllowRequest | None = None,
        client_address: Callable[[Request], str] | None = None,
    ) -> None:
        self.on_connection = on_connection
        self.ping_interval_ms = ping_interval_ms
        self.ping_timeout_ms = ping_timeout_ms
        self.ping_interval = ping_interval_ms / 1000
        self.ping_timeout = ping_timeout_ms / 1000
        self.max_payload = max_payload
        self.upgrade_timeout = upgrade_timeout_ms / 1000
        self.cors_origins = cors_origins
        self.allow_upgrades = allow_upgrades
        self.sessions: dict[str, Session] = {}
        self.max_buffered_bytes = max_buffered_bytes
        self.stats = EngineStats()
        # Every session's heartbeat timer (see timers.py): one loop timer instead of one each.
        self.timer_wheel = TimerWheel()
        self.batcher = WriteBatcher(max_buffered_bytes, self.stats)
        self.batcher.on_overflow = self._websocket_overflow
        self.allow_request = allow_request
        self.client_address: Callable[[Request], str] = client_address or (lambda request: request.remote_address)
        self._deciding: set[asyncio.Task[None]] = set()  # async allow_request verdicts under way
        self.accepting = True
        self.on_session_closed: Callable[[Session], None] | None = None
        self.on_upgrade: Callable[[Session], None] | None = None
        # `admission(request) -> refusal reason | None`, asked before a new session opens
        # (origin checks, connection caps); a refusal is answered 403 Forbidden.
        self.admission: Callable[[Request], str | None] | None = None

    # -- request entry point -------------------------------------------------------------------

    def handle(self, request: Request) -> None:
        if request.method == "OPTIONS" and not request.is_upgrade:
            request.respond(204, b"", self._cors_headers(request, preflight=True), content_type="")
            return
        try:
            check = engineio.check_request(request.query, request.method, request.is_upgrade)
        except RequestRejected as exc:
            log.info("eio_request_rejected code=%d reason=%r path=%s", exc.code, str(exc), request.raw_path)
            self.respond_error(request, exc.code)
            return
        if check.sid is None:
            if not self.accepting:
                self.respond_error(request, ErrorCode.FORBIDDEN)
                return
            if self.admission is not None:
                refusal = self.admission(request)
                if refusal is not None:
                    log.info("eio_session_refused reason=%s address=%s", refusal, request.remote_address)
                    self.respond_error(request, ErrorCode.FORBIDDEN)
                    return
            if self.allow_request is not None:
                self._ask_allow_request(request, check.transport)
                return
            self._open(request, check.transport)
            return
        session = self.sessions.get(check.sid)
        if session is None:
            self.respond_error(request, ErrorCode.UNKNOWN_SID)
            return
        if check.transport == "websocket":
            session.handle_upgrade(request)
        elif request.method == "GET":
            session.handle_get(request)
        else:
            session.handle_post(request)

    # -- allow_request -----------------------------------------------------------------------

    def _ask_allow_request(self, request: Request, transport: str) -> None:
        assert self.allow_request is not None
        info = HandshakeRequest(request, transport, self.client_address(request))
        try:
            verdict = self.allow_request(info)
        except Exception as exc:
            self._hook_failed(request, info, exc)
            return
        if not inspect.isawaitable(verdict):
            self._decide(request, transport, info, verdict)
            return
        if request.is_upgrade:
            # The HTTP layer answers an upgrade nobody took at once; this one is answered (the
            # 101 or the error) when the hook has decided.
            request.answered = True
        task = asyncio.get_running_loop().create_task(self._await_verdict(request, transport, info, verdict))
        self._deciding.add(task)
        task.add_done_callback(self._deciding.discard)

    async def _await_verdict(self, request: Request, transport: str, info: HandshakeRequest, pending: Awaitable[Verdict]) -> None:
        try:
            verdict = await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if request.connected:
                self._hook_failed(request, info, exc)
            return
        if not request.connected:
            # The client left while the hook ran: there is no one to open a session for.
            log.info("eio_handshake_abandoned transport=%s address=%s", transport, info.address)
            return
        self._decide(request, transport, info, verdict)

    def _decide(self, request: Request, transport: str, info: HandshakeRequest, verdict: Any) -> None:
        if verdict is None or verdict is True:
            if not self.accepting:
                self.respond_error(request, ErrorCode.FORBIDDEN)
                return
            self._open(request, transport)
            return
        reason = verdict if isinstance(verdict, str) and verdict else "refused"
        self.stats.handshakes_refused += 1
        log.info("eio_handshake_refused by=allow_request reason=%r transport=%s address=%s", reason, transport, info.address)
        self.respond_error(request, ErrorCode.FORBIDDEN)

    def _hook_failed(self, request: Request, info: HandshakeRequest, exc: BaseException) -> None:
        self.stats.handshakes_refused += 1
        log.error("allow_request_failed transport=%s address=%s error=%r", info.transport, info.address, exc, exc_info=exc)
        self.respond_error(request, ErrorCode.FORBIDDEN)

    # -- sessions ------------------------------------------------------------------------------

    def _open(self, request: Request, transport: str) -> None:
        sid = generate_id()
        machine = EngineSession(
            sid,
            websocket=transport == "websocket",
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            upgrade_timeout=self.upgrade_timeout,
            max_payload=self.max_payload,
            max_buffered_bytes=self.max_buffered_bytes,
            allow_upgrades=self.allow_upgrades,
        )
        session = Session(self, machine, request)
        if transport == "websocket" and not self.accept_websocket(request, session.attach_websocket):
            return
        self.sessions[sid] = session
        self.stats.sessions_opened += 1
        session.open(request)
        request.forget_query()  # the session keeps the request (socket.handshake), not the dict
        try:
            session.receiver = self.on_connection(session)
        except Exception:
            log.exception("on_connection_failed sid=%s", sid)
            session.close("server error")

    def accept_websocket(self, request: Request, attach: Callable[[WebSocketTransport], None]) -> bool:
        """Complete the WebSocket handshake and hand the connection to `attach`; False (and an
        HTTP error already written) when the library refuses the handshake."""
        status, response = handshake(request.raw_path, request.headers)
        if status != 101:
            log.info("ws_handshake_refused status=%d path=%s", status, request.path)
            request.answered = True
            request.conn.reject_upgrade(status, b"")
            return False

        def factory(transport):  # type: ignore[no-untyped-def]
            ws = WebSocketTransport(transport, self.max_payload, self.batcher)
            # The 101 is the first thing queued on the connection, so it leaves with the
            # session's first frames (the OPEN packet) in one write at the end of this tick:
            # one send() per new connection instead of two.
            ws.write(response)
            attach(ws)
            return ws

        request.upgrade(b"", factory, request.body)
        return True

    # -- responses ---------------------------------------------------------------------------------

    def _cors_headers(self, request: Request, preflight: bool = False) -> list[tuple[str, str]]:
        """As the `cors` package engine.io uses: a listed origin is reflected, with credentials;
        `*` is answered literally and never with credentials (a wildcard that reflected every
        origin, `null` included, with credentials would let any site read a user's session)."""
        origins = self.cors_origins
        if not origins:
            return []
        origin = request.headers.get("origin")
        if origin and origin != "*" and origin in origins:
            headers = [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"),
            ]
        elif "*" in origins:
            headers = [("Access-Control-Allow-Origin", "*")]
        else:
            return []
        if preflight:
            headers.append(("Access-Control-Allow-Methods", "GET, POST, OPTIONS"))
            requested = request.headers.get("access-control-request-headers")
            if requested:
                headers.append(("Access-Control-Allow-Headers", requested))
        return headers

    def respond_poll(self, request: Request, body: bytes) -> None:
        self.stats.bytes_out += len(body)
        request.respond(200, body, self._cors_headers(request) + _NO_STORE if self.cors_origins else _NO_STORE)

    def respond_ok(self, request: Request) -> None:
        request.respond(200, b"ok", self._cors_headers(request), content_type="text/html")

    def respond_error(self, request: Request, code: ErrorCode) -> None:
        self.stats.http_errors += 1
        status = engineio.error_status(code)
        body = engineio.error_body(code)
        if request.is_upgrade:
            request.answered = True
            request.conn.reject_upgrade(status, body)
        else:
            request.respond(status, body, self._cors_headers(request), content_type="application/json")

    # -- bookkeeping ----------------------------------------------------------------------------

    def remove(self, session: Session) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
        if self.on_session_closed is not None:
            self.on_session_closed(session)

    def on_upgraded(self, session: Session) -> None:
        self.stats.upgrades += 1
        if self.on_upgrade is not None:
            self.on_upgrade(session)

    def count_slow_consumer(self, session: Session | None, transport: str, buffered: int) -> None:
        """A connection passed MAX_BUFFERED_BYTES of unsent output and is being dropped."""
        self.stats.slow_consumer_disconnects[transport] += 1
        log.warning(
            "slow_consumer_disconnect sid=%s transport=%s buffered=%d limit=%d",
            session.sid if session is not None else "-",
            transport,
            buffered,
            self.max_buffered_bytes,
        )

    def _websocket_overflow(self, ws: WebSocketTransport, buffered: int) -> None:
        listener = ws.listener
        self.count_slow_consumer(listener if isinstance(listener, Session) else None, "websocket", buffered)

    def count_bad_packet(self, layer: str) -> None:
        self.stats.bad_packets[layer] = self.stats.bad_packets.get(layer, 0) + 1

    def close_all(self, reason: str) -> None:
        for session in list(self.sessions.values()):
            session.close(reason)
