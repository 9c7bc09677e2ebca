"""The WebSocket transport: the `websockets` library's Sans-I/O `ServerProtocol` on our connection.

The library parses incoming frames (masking, fragmentation limits, control frames, the closing
handshake); we feed it bytes and act on its events. Outgoing data frames are written directly as
pre-encoded bytes (see `Outbound`): server frames are unmasked and we negotiate no extension, so
the same frame bytes are valid for every connection and a broadcast frames its packet once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import logging
import time
from typing import Callable, Protocol

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from protocol.wsframe import OP_TEXT, complete_frames_length, parse_client_frames

log = logging.getLogger("gateway.websocket")

CLOSE_TIMEOUT = 2.0


class WebSocketListener(Protocol):
    def ws_message(self, ws: "WebSocketTransport", data: str | bytes) -> None: ...

    def ws_closed(self, ws: "WebSocketTransport", reason: str) -> None: ...


class ByteCounts(Protocol):
    """Where connections count the bytes they read and write (the engine's EngineStats)."""

    bytes_in: int
    bytes_out: int


class _Bytes:
    __slots__ = ("bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0


class WriteBatcher:
    """Coalesces what is written to each connection during one event-loop tick into one write.

    A burst of broadcasts (several messages arriving in one read) would otherwise cost one
    `send()` system call per message per recipient; with batching it costs one per recipient.
    The flush runs at the end of the current tick, so latency does not change.

    It also carries the output bound every connection shares: a connection whose transport
    still holds more than `max_buffered` unsent bytes after a flush is a slow consumer (a peer
    that stopped reading) and is dropped, so that one stuck client cannot grow the node's memory
    without limit. `on_overflow(ws, buffered)` is told (the engine counts and logs it).
    """

    __slots__ = ("dirty", "scheduled", "max_buffered", "on_overflow", "counts")

    def __init__(self, max_buffered: int = 1 << 20, counts: ByteCounts | None = None) -> None:
        self.dirty: list[WebSocketTransport] = []
        # Bytes read and written by every connection of this batcher (one add per read/write).
        self.counts: ByteCounts = counts if counts is not None else _Bytes()
        self.scheduled = False
        self.max_buffered = max_buffered
        self.on_overflow: Callable[[WebSocketTransport, int], None] | None = None

    def add(self, ws: "WebSocketTransport") -> None:
        self.dirty.append(ws)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for ws in dirty:
            ws.flush()


class WebSocketTransport:
    """One accepted WebSocket connection. Implements the `Upgraded` protocol of `gateway.http`.

    The library's protocol object is created only when a frame needs it (control frames,
    fragments, a frame split across reads, closing): most connections never do, which keeps the
    memory of an idle connection small.
    """

    __slots__ = (
        "transport",
        "protocol",
        "listener",
        "closed",
        "batcher",
        "_pending",
        "_fragments",
        "_tail",
        "_need",
        "_fragment_text",
        "_fragment_size",
        "_max_size",
        "_close_timer",
        "_reason",
    )

    def __init__(self, transport: asyncio.Transport, max_size: int, batcher: WriteBatcher) -> None:
        self.transport = transport
        self.protocol: ServerProtocol | None = None
        self.listener: WebSocketListener | None = None
        self.closed = False
        self.batcher = batcher
        self._pending: list[bytes] | None = None
        self._fragments: list[bytes] | None = None
        self._tail: bytearray | None = None  # an incomplete frame, kept until its last byte arrives
        self._need = 0  # the size of that frame, once its header is in
        self._fragment_text = False
        self._fragment_size = 0
        self._max_size = max_size
        self._close_timer: asyncio.TimerHandle | None = None
        self._reason = "transport close"

    def _library(self) -> ServerProtocol:
        protocol = self.protocol
        if protocol is None:
            protocol = self.protocol = ServerProtocol(state=State.OPEN, max_size=self._max_size, extensions=None)
        return protocol

    # -- incoming ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.batcher.counts.bytes_in += len(data)
        tail = self._tail
        if tail is not None:
            tail += data
            if len(tail) < self._need:
                return  # the frame is still incomplete: nothing to parse yet
            data = bytes(tail)
            self._tail = None
        protocol = self.protocol
        if self._fragments is None and not self.closed and (protocol is None or protocol.state is State.OPEN):
            # Fast path: complete, unfragmented data frames (almost all traffic) are parsed here;
            # whatever is left (control frames, fragments, partial frames) goes to the library.
            messages, consumed = parse_client_frames(data, self._max_size)
            if messages:
                for opcode, payload in messages:
                    self._deliver(opcode == OP_TEXT, payload)
                    if self.closed:
                        return
                if consumed == len(data):
                    return
                data = data[consumed:]
        # The library gets whole frames only, so it never holds a partial one: the fast path above
        # needs no look inside it, just our own fragment state and its public `state`.
        whole, need = complete_frames_length(data, self._max_size)
        if whole < len(data):
            self._tail = bytearray(data[whole:])
            self._need = need
            if not whole:
                return
            data = data[:whole]
        protocol = self._library()
        protocol.receive_data(data)
        events = protocol.events_received()
        self._flush_protocol()
        for frame in events:
            self._on_frame(frame)
            if self.closed:
                return
        if protocol.parser_exc is not None and not self.closed:
            self._reason = "transport error"
            log.info("ws_protocol_error error=%r", str(protocol.parser_exc))

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [frame.data]
                self._fragment_text = opcode is Opcode.TEXT
                self._fragment_size = len(frame.data)
                return
            self._deliver(opcode is Opcode.TEXT, frame.data)
        elif opcode is Opcode.CONT:
            if self._fragments is None:
                return  # the library rejects unexpected continuations before we see them
            self._fragments.append(frame.data)
            self._fragment_size += len(frame.data)
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = None
                self._deliver(self._fragment_text, data)
        # PING is answered by the library; CLOSE is handled by the library's closing handshake.

    def _deliver(self, is_text: bool, data: bytes) -> None:
        listener = self.listener
        if listener is None:
            return
        if is_text:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                log.info("ws_invalid_utf8")
                self.close(1007, "invalid UTF-8")
                return
            listener.ws_message(self, text)
        else:
            listener.ws_message(self, bytes(data))

    def eof_received(self) -> None:
        protocol = self._library()
        if self._tail is not None:
            tail, self._tail = self._tail, None
            protocol.receive_data(bytes(tail))
        protocol.receive_eof()
        self._flush_protocol()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        was_closed = self.closed
        self.closed = True
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.ws_closed(self, self._reason if was_closed or exc is None else "transport error")

    # -- outgoing ------------------------------------------------------------------------------

    def write(self, frames: bytes) -> None:
        """Queue frames for the end of this tick (see WriteBatcher)."""
        if self.closed:
            return
        pending = self._pending
        if pending is None:
            self._pending = [frames]
            self.batcher.add(self)
        else:
            pending.append(frames)

    def flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if self.transport.is_closing():
            return
        transport = self.transport
        if len(pending) == 1:
            transport.write(pending[0])
            self.batcher.counts.bytes_out += len(pending[0])
        else:
            transport.writelines(pending)
            self.batcher.counts.bytes_out += sum(map(len, pending))
        # Once per batched write, never per frame: what the peer has not taken yet.
        buffered = transport.get_write_buffer_size()
        if buffered > self.batcher.max_buffered:
            self._overflow(buffered)

    def write_now(self, frames: bytes) -> None:
        """Write frames at once, behind what is already queued for this connection, instead of
        at the end of the tick: for answers whose order against other connections' writes
        matters (the upgrade's `3probe` must reach the client before the 400 of a stale poll
        that leaves in the same tick)."""
        if self.closed:
            return
        self.flush()
        if not self.closed and not self.transport.is_closing():
            self.transport.write(frames)
            self.batcher.counts.bytes_out += len(frames)

    def _overflow(self, buffered: int) -> None:
        """The peer stopped reading: drop the connection now, unsent data included (a close
        handshake would wait behind the very bytes the peer does not read)."""
        self.closed = True
        self._reason = "transport error"
        on_overflow = self.batcher.on_overflow
        if on_overflow is not None:
            on_overflow(self, buffered)
        self.transport.abort()

    @property
    def writable(self) -> bool:
        return not self.closed and self.transport.get_write_buffer_size() < self.batcher.max_buffered

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the TCP connection is dropped when it completes or after
        a short timeout."""
        if self.closed:
            return
        self.flush()  # what was sent before close() goes out before the close frame
        if self.closed:
            return  # that flush found a slow consumer and dropped the connection
        self.closed = True
        protocol = self._library()
        if protocol.state is State.OPEN:
            protocol.send_close(code, reason)
            self._flush_protocol()
        if not self.transport.is_closing():
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        """Drop the TCP connection without draining: `transport.close()` would keep it (and its
        send queue) until a peer that may never read again has taken every byte."""
        self._close_timer = None
        self.transport.abort()

    def _flush_protocol(self) -> None:
        self.flush()  # keep our queued frames ahead of the library's (close, pong)
        chunks = self._library().data_to_send()
        if self.transport.is_closing():
            return  # dropped (slow consumer, or already closing): nothing more goes out
        for chunk in chunks:
            if chunk:
                self.transport.write(chunk)
                self.batcher.counts.bytes_out += len(chunk)
            else:
                # The library signals the end of the stream: drop the TCP connection (at once
                # when the peer left more unread than a connection may hold).
                self.closed = True
                if self.transport.get_write_buffer_size() > self.batcher.max_buffered:
                    self.transport.abort()
                else:
                    self.transport.close()


def handshake(path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Validate a WebSocket upgrade request and build its response.

    Returns the HTTP status and the response bytes. A status other than 101 means the upgrade
    was refused and the response explains why.

    A well-formed request (what every client sends) is accepted here with the checks the
    library's `ServerProtocol.accept` makes, and the same response bytes; anything else goes to
    the library, which decides and words the refusal. The library's path builds a protocol
    object, two header containers and a formatted date per connection: a fifth of the CPU of a
    connection storm, for an answer that differs only in its key and its date.
    """
    accept = _well_formed_key(headers)
    if accept is not None:
        return 101, b"".join((_RESPONSE_HEAD, _http_date(), _RESPONSE_MIDDLE, accept, b"\r\n\r\n"))
    protocol = ServerProtocol(extensions=None)
    request = WsRequest(path, Headers(list(headers.items())))
    response = protocol.accept(request)
    return response.status_code, response.serialize()


_RESPONSE_HEAD = b"HTTP/1.1 101 Switching Protocols\r\nDate: "
_RESPONSE_MIDDLE = b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
_date_cache: list[object] = [0, b""]  # [whole second, its IMF-fixdate bytes]


def _http_date() -> bytes:
    """The Date header's value, formatted once per second (as `email.utils.formatdate`)."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True).encode("ascii")
    return _date_cache[1]  # type: ignore[return-value]


def _well_formed_key(headers: dict[str, str]) -> bytes | None:
    """The `Sec-WebSocket-Accept` value when the request passes every check of the library's
    `process_request` in its plainest form (one `Upgrade: websocket`, `upgrade` among the
    `Connection` options, version 13, a 16-byte base64 key); None sends the request to the
    library, which knows every other form and every refusal. Repeated headers arrive joined
    with ", ", so a repeated key or version fails here as it fails there."""
    if headers.get("sec-websocket-version") != "13":
        return None
    upgrade = headers.get("upgrade")
    if upgrade is None or upgrade.lower() != "websocket":
        return None
    connection = headers.get("connection")
    if connection is None:
        return None
    connection = connection.lower()
    if connection != "upgrade" and "upgrade" not in [option.strip() for option in connection.split(",")]:
        return None
    key = headers.get("sec-websocket-key")
    if key is None or len(key) != 24:
        return None
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    if len(raw) != 16:
        return None
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest())


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
