"""The listening side of the HTTP front: our own accept loop, so that the connection cap applies
before a transport exists and an accept that fails for lack of descriptors is seen."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from .connection import HttpConnection
from .limits import HttpLimits, HttpStats, LogThrottle
from .request import Router

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("gateway.http")

# Out of descriptors: accepting resumes after this long (the kernel keeps the backlog meanwhile).
_ACCEPT_RETRY_S = 0.5
# Connections accepted per readiness event, so one busy listener cannot starve the loop.
_ACCEPT_BATCH = 128
_ACCEPT_OUT_OF_RESOURCES = {errno.EMFILE: "emfile", errno.ENFILE: "enfile", errno.ENOBUFS: "enobufs", errno.ENOMEM: "enomem"}


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
        self._throttle = LogThrottle()
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
