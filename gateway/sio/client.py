"""The Socket.IO side of one Engine.IO session: decodes the client's packets and routes them to
the namespaces this connection joined (one socket per namespace per connection).

The client knows its server only through `ClientServer`, what it reads of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from protocol import socketio as sio
from protocol.errors import ProtocolError
from protocol.socketio import PacketType

from ..config import Settings
from ..engine.outbound import Outbound
from ..engine.server import EngineServer
from ..engine.session import Session
from ..http import Request
from .socket import Socket


class ClientNamespace(Protocol):
    """What a connection needs of a namespace it asks for: to be added to it."""

    def add(self, client: "Client", auth: dict[str, Any]) -> None: ...


class ClientServer(Protocol):
    """What a connection uses of its server."""

    settings: Settings
    engine: EngineServer
    debug_packets: bool

    def namespace_for(self, name: str, auth: dict[str, Any]) -> ClientNamespace | None: ...

    def client_address(self, request: Request) -> str: ...


log = logging.getLogger("gateway.server")  # the name operators filter on, kept across modules


class Client:
    """The Socket.IO side of one Engine.IO session: decodes packets and routes them to the
    namespaces this connection joined."""

    __slots__ = ("server", "session", "decoder", "sockets", "pending", "closed", "_connect_timer")

    def __init__(self, server: ClientServer, session: Session) -> None:
        self.server = server
        self.session = session
        self.decoder = sio.Decoder(max_buffer=server.settings.max_payload)
        self.sockets: dict[str, Socket] = {}
        # Sockets whose middlewares still run, by namespace name; None while there are none
        # (most connections, most of the time: no dict per idle connection).
        self.pending: dict[str, Socket] | None = None
        self.closed = False
        self._connect_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            server.settings.connect_timeout_ms / 1000, self._connect_timed_out
        )

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        if not self.sockets and not self.closed:
            log.info("sio_connect_timeout sid=%s", self.session.sid)
            self.close("connect timeout")

    def handshake(self, auth: dict[str, Any], issued: float) -> dict[str, Any]:
        request = self.session.request
        return {
            "headers": dict(request.headers),
            "time": time.strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)", time.gmtime(issued)),
            "address": self.server.client_address(request),
            "xdomain": "origin" in request.headers,
            "secure": False,
            "issued": int(issued * 1000),
            "url": request.raw_path,
            "query": dict(request.query),
            "auth": auth,
        }

    # -- Receiver protocol ---------------------------------------------------------------------

    def on_message(self, data: str | bytes) -> None:
        self.server.engine.stats.messages_in += 1
        try:
            packet = self.decoder.feed(data)
        except ProtocolError as exc:
            self.server.engine.count_bad_packet("socketio")
            log.info("sio_bad_packet sid=%s error=%r", self.session.sid, str(exc)[:200])
            self.close("parse error")
            return
        except Exception as exc:
            # The decoder's contract is ProtocolError only; anything else is a decoder bug that a
            # client found. It must cost that client its session like any bad packet, not drop the
            # TCP connection without a close frame (WebSocket) or leave the session open (polling).
            self.decoder.reset()
            self.server.engine.count_bad_packet("socketio")
            log.warning("sio_decoder_failed sid=%s exc_type=%s error=%r", self.session.sid, type(exc).__name__, str(exc)[:200])
            self.close("parse error")
            return
        if packet is None:
            return
        if self.server.debug_packets:
            log.debug("sio_packet_in sid=%s type=%s nsp=%s id=%s data=%r", self.session.sid, packet.type.name, packet.nsp, packet.id, packet.data)
        ptype = packet.type
        if ptype is PacketType.CONNECT:
            self._on_connect(packet)
            return
        socket = self.sockets.get(packet.nsp)
        if socket is None:
            log.debug("sio_packet_for_unjoined_namespace sid=%s nsp=%s", self.session.sid, packet.nsp)
            return
        if ptype is PacketType.CONNECT_ERROR:
            self.server.engine.count_bad_packet("socketio")
            self.close("parse error")
            return
        socket.on_packet(packet)

    def _on_connect(self, packet: sio.Packet) -> None:
        """At most one socket per namespace per connection, admitted or pending. As socket.io
        4.8 (`Client.ondecoded`): a CONNECT for a namespace already joined is an invalid state
        and closes the connection. A CONNECT while the namespace's middlewares still run is
        ignored (socket.io would start a second socket there, which is how one connection
        piled up hundreds of sockets that outlived it); the pending one answers."""
        if self.closed:
            return
        name = packet.nsp
        if name in self.sockets:
            self.server.engine.count_bad_packet("socketio")
            log.info("sio_repeated_connect sid=%s nsp=%s action=close", self.session.sid, name)
            self.close("forced server close")
            return
        if self.pending is not None and name in self.pending:
            self.server.engine.count_bad_packet("socketio")
            log.debug("sio_repeated_connect sid=%s nsp=%s action=ignore", self.session.sid, name)
            return
        auth = packet.data if isinstance(packet.data, dict) else {}
        nsp = self.server.namespace_for(name, auth)
        if nsp is None:
            self.refuse(name, "Invalid namespace", None)
            return
        nsp.add(self, auth)

    def add_pending(self, name: str, socket: Socket) -> None:
        """A socket of namespace `name` is waiting for its middlewares."""
        if self.pending is None:
            self.pending = {}
        self.pending[name] = socket

    def end_pending(self, name: str, socket: Socket) -> None:
        """The middlewares of `socket` are done (admitted, refused or the connection closed)."""
        pending = self.pending
        if pending is not None and pending.get(name) is socket:
            del pending[name]
            if not pending:
                self.pending = None

    def joined_namespace(self) -> None:
        """A socket was admitted: the connect timeout no longer applies. As socket.io, only an
        admitted socket stops it, so a connection whose CONNECTs are all refused still closes
        after CONNECT_TIMEOUT_MS instead of staying open with no namespace."""
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None

    def refuse(self, nsp: str, message: str, data: Any) -> None:
        text, binaries = sio.encode(sio.connect_error(nsp, message, data))
        self.session.send(Outbound.message(text, binaries))

    def on_close(self, reason: str) -> None:
        self.closed = True
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        for socket in list(self.sockets.values()):
            socket.on_close(reason)
        self.sockets.clear()
        # Pending sockets are never admitted now (their middleware run checks `closed`); drop
        # any room a middleware already joined them to.
        pending, self.pending = self.pending, None
        if pending:
            for socket in pending.values():
                socket.nsp.adapter.remove_all(socket)
        self.decoder.reset()

    def close(self, reason: str) -> None:
        """Close the whole connection (every namespace)."""
        if self.closed:
            return
        for socket in list(self.sockets.values()):
            socket.on_close(reason)
        self.session.close(reason)
