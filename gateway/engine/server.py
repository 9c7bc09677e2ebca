"""The Engine.IO endpoint: validates requests, creates sessions, routes polling and upgrades.

Mounted on the HTTP router at a path (`/socket.io/` for Socket.IO, `/engine.io/` for the plain
echo endpoint used by the conformance suite). What a session carries is decided by the
`on_connection` callback, which returns the session's receiver.
"""

from __future__ import annotations

import logging
import secrets
from typing import Callable

from protocol import engineio
from protocol.engineio import ErrorCode, Handshake, RequestRejected

from ..http import Request
from .outbound import Outbound
from .session import Receiver, Session
from .websocket import WebSocketTransport, WriteBatcher, handshake

log = logging.getLogger("gateway.engine")


def generate_id() -> str:
    """20 URL-safe characters, like Node's base64id (15 random bytes)."""
    return secrets.token_urlsafe(15)


class EngineStats:
    """Counters the operations surface reads; plain ints, cheap to bump on the hot path."""

    __slots__ = ("bad_packets", "sessions_opened", "upgrades", "http_errors", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.bad_packets: dict[str, int] = {}
        self.sessions_opened = 0
        self.upgrades = 0
        self.messages_in = 0  # Socket.IO messages received (attachments counted with their packet)
        self.messages_out = 0  # Socket.IO packets sent to one socket (broadcasts count as deliveries)
        self.http_errors = 0


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
        self.batcher = WriteBatcher()
        self.stats = EngineStats()
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
            self._open(request, check.transport)
            return
        session = self.sessions.get(check.sid)
        if session is None:
            self.respond_error(request, ErrorCode.UNKNOWN_SID)
            return
        if check.transport == "websocket":
            if session.ws is not None or session.probe is not None or session.upgrading or not self.allow_upgrades:
                # As engine.io does: complete the handshake, then close the redundant WebSocket.
                log.info("eio_upgrade_refused sid=%s", session.sid)
                self._accept_websocket(request, lambda ws: ws.close(1008, "upgrade refused"))
                return
            self._accept_websocket(request, session.begin_upgrade)
            return
        if session.ws is not None:
            # The session moved to WebSocket; polling requests for it are stale.
            self.respond_error(request, ErrorCode.BAD_REQUEST)
            return
        if request.method == "GET":
            session.handle_get(request)
        else:
            session.handle_post(request)

    def _open(self, request: Request, transport: str) -> None:
        sid = generate_id()
        session = Session(self, sid, request)
        if transport == "websocket" and not self._accept_websocket(request, session.attach_websocket):
            return
        self.sessions[sid] = session
        self.stats.sessions_opened += 1
        hello = Handshake(
            sid=sid,
            upgrades=("websocket",) if transport == "polling" and self.allow_upgrades else (),
            ping_interval=self.ping_interval_ms,
            ping_timeout=self.ping_timeout_ms,
            max_payload=self.max_payload,
        ).to_packet()
        open_text = engineio.encode_text(hello).encode()
        if session.ws is not None:
            session.ws.write(Outbound(open_text).ws)
        else:
            self.respond_poll(request, open_text)
        session.start()
        try:
            session.receiver = self.on_connection(session)
        except Exception:
            log.exception("on_connection_failed sid=%s", sid)
            session.close("server error")

    def _accept_websocket(self, request: Request, attach: Callable[[WebSocketTransport], None]) -> bool:
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
            attach(ws)
            return ws

        request.upgrade(response, factory, request.body)
        return True

    # -- responses ---------------------------------------------------------------------------------

    def _cors_headers(self, request: Request, preflight: bool = False) -> list[tuple[str, str]]:
        origin = request.headers.get("origin")
        if not origin or not self.cors_origins:
            return []
        if "*" not in self.cors_origins and origin not in self.cors_origins:
            return []
        headers = [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        ]
        if preflight:
            headers.append(("Access-Control-Allow-Methods", "GET, POST, OPTIONS"))
            requested = request.headers.get("access-control-request-headers")
            if requested:
                headers.append(("Access-Control-Allow-Headers", requested))
        return headers

    def respond_poll(self, request: Request, body: bytes) -> None:
        request.respond(200, body, self._cors_headers(request) + [("Cache-Control", "no-store")])

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

    def count_bad_packet(self, layer: str) -> None:
        self.stats.bad_packets[layer] = self.stats.bad_packets.get(layer, 0) + 1

    def close_all(self, reason: str) -> None:
        for session in list(self.sessions.values()):
            session.close(reason)
