"""The /admin namespace @socket.io/admin-ui 0.5.1 talks to, as its server side `instrument()`.

What an admin socket gets, in the package's event names and shapes:
- `config` `{supportedFeatures}` on connection, then (development mode) `all_sockets`: every
  socket of every namespace, cluster-wide (fetchSockets);
- `server_stats` every 2 s from every node: each node emits its own on /admin through the
  adapter, so every node's admin sockets (Node.js servers' too) see every node;
- development mode: `socket_connected` / `socket_updated` (a transport upgrade) /
  `socket_disconnected`, `room_joined` / `room_left` (the adapter's `join-room` / `leave-room`
  events), `event_received` / `event_sent` (`Socket.on_any` / `Socket.on_any_outgoing`), all
  emitted on /admin through the adapter as well;
- the actions `emit`, `join`, `leave`, `_disconnect`, applied cluster-wide through the
  namespace's broadcast operator (`in_(filter).sockets_join(room)` ...), unless read-only.

Each socket of an instrumented node carries `data["_admin"] = {clientId, transport}` (development
mode), which is what the UI reads from fetchSockets answers: a Node.js server instrumented with
the package lists the gateway's sockets like its own.

Costs: nothing at all when ADMIN_UI is off (nothing is installed). In production mode, one timer a
second reading counters. Development mode adds one listener per connection and disconnection,
one per room change, one per incoming event and one per `socket.emit` (as the package). Events
a broadcast delivers are not reported as `event_sent` (Node's adapter tells each recipient's
onAnyOutgoing; here a broadcast is written once for all its recipients, and a per-recipient
hook would cost every broadcast). Namespaces are instrumented as they are created
(`Server.on_new_namespace`), a dynamic namespace's first socket included.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from protocol import socketio as sio

from ..config import Settings
from ..engine.session import Session
from ..sio import Namespace, Socket
from ..sio.server import Server
from .auth import AdminAuth, SessionStore, session_store
from .stats import NodeStats

log = logging.getLogger("gateway.admin")

NAMESPACE = "/admin"
STATS_INTERVAL_S = 2.0  # the package's setInterval(emitStats, 2000)
TICK_S = 1.0  # aggregated events are per-second buckets

ACTIONS = ("EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT")


def supported_features(readonly: bool, development: bool) -> list[str]:
    """The package's list: the actions unless read-only, aggregated events always, every event
    only in development mode."""
    features = [] if readonly else list(ACTIONS)
    features.append("AGGREGATED_EVENTS")
    if development:
        features.append("ALL_EVENTS")
    return features


def now_iso() -> str:
    """A JavaScript Date as JSON carries it (what the package's `new Date()` arguments become)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def serialize(socket: Any, nsp: str) -> dict[str, Any]:
    """A socket (local, or a remote one from fetchSockets) as the UI reads it."""
    data = socket.data if isinstance(socket.data, dict) else {}
    admin = data.get("_admin") if isinstance(data.get("_admin"), dict) else {}
    handshake = socket.handshake if isinstance(socket.handshake, dict) else {}
    headers = handshake.get("headers") if isinstance(handshake.get("headers"), dict) else {}
    rooms = [socket.id] + [room for room in socket.rooms if room != socket.id]
    return {
        "id": socket.id,
        "clientId": admin.get("clientId"),
        "transport": admin.get("transport"),
        "nsp": nsp,
        "data": {k: v for k, v in data.items() if k != "_admin"},
        "handshake": {
            "address": headers.get("cf-connecting-ip") or headers.get("x-forwarded-for") or handshake.get("address"),
            "headers": headers,
            "query": handshake.get("query"),
            "issued": handshake.get("issued"),
            "secure": handshake.get("secure"),
            "time": handshake.get("time"),
            "url": handshake.get("url"),
            "xdomain": handshake.get("xdomain"),
        },
        "rooms": rooms,
    }


class ActionStats:
    """Admin actions by action and outcome (sio_gateway_admin_actions_total)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def count(self, action: str, outcome: str) -> None:
        key = (action, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    def items(self) -> Iterator[tuple[tuple[str, str], int]]:
        return iter(self.counts.items())


class AdminUI:
    """One server's /admin namespace, its stats timer and (development mode) its listeners."""

    def __init__(self, server: Server, settings: Settings, sessions: SessionStore | None = None) -> None:
        self.server = server
        self.settings = settings
        self.development = settings.admin_mode == "development"
        self.readonly = settings.admin_readonly
        self.features = supported_features(self.readonly, self.development)
        self.nsp: Namespace = server.of(NAMESPACE)
        self.sessions = sessions or session_store(settings)
        self.auth = AdminAuth(settings, self.sessions, lambda: len(self.nsp.sockets))
        self.actions = ActionStats()
        self.closed_sessions = 0
        self.stats = NodeStats(server, lambda: self.closed_sessions)
        self.stats_errors = 0
        self._watched: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._ticks = 0
        self._fetches: set[asyncio.Task[None]] = set()

        self.nsp.use(self.auth)
        self.nsp.on("connection", self._admin_connected)
        self._hook_engine()
        if self.development:
            for nsp in list(server.namespaces.values()):
                self._watch(nsp)
            server.on_new_namespace(self._watch)
        if self.auth.open:
            log.warning("admin_auth_disabled ADMIN_USERNAME/ADMIN_PASSWORD_HASH unset: anyone who reaches %s may use the admin UI%s", NAMESPACE, "" if self.readonly else " and act on every socket")

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the stats timer (inside the running loop): stats at once, then every 2 s."""
        if self._timer is not None:
            return
        self.emit_stats()
        self._schedule()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._fetches):
            task.cancel()
        await self.sessions.close()

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        self._schedule()
        self.stats.buckets.tick()
        self._ticks += 1
        if self._ticks % round(STATS_INTERVAL_S / TICK_S) == 0:
            self.emit_stats()

    def emit_stats(self) -> None:
        try:
            self.nsp.emit("server_stats", self.stats.snapshot())
        except Exception as exc:  # a broken link must not stop the timer
            self.stats_errors += 1
            log.warning("admin_stats_failed error=%r", exc)

    # -- admin sockets ---------------------------------------------------------------------------

    def _admin_connected(self, socket: Socket) -> None:
        session_id = self.auth.issued.pop(socket, None)
        if session_id is not None:
            socket.emit("session", session_id)
        if not self.readonly:
            self._register_actions(socket)
        else:
            for event in ("emit", "join", "leave", "_disconnect"):
                socket.on(event, lambda *args, event=event: self._refuse(socket, event))
        socket.emit("config", {"supportedFeatures": self.features})
        if self.development:
            task = asyncio.ensure_future(self._send_all_sockets(socket))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)

    async def _send_all_sockets(self, socket: Socket) -> None:
        """Every socket of every namespace, cluster-wide; a node that does not answer in time
        leaves out only its own sockets."""
        namespaces = list(self.server.namespaces.values())
        results = await asyncio.gather(*(nsp.fetch_sockets() for nsp in namespaces), return_exceptions=True)
        found: list[dict[str, Any]] = []
        for nsp, result in zip(namespaces, results):
            if isinstance(result, BaseException):
                log.warning("admin_fetch_sockets_failed nsp=%s error=%r", nsp.name, result)
                result = list(nsp.sockets.values())  # this node's, at least
            found.extend(serialize(s, nsp.name) for s in result)
        if socket.connected:
            socket.emit("all_sockets", found)

    def _refuse(self, socket: Socket, action: str) -> None:
        self.actions.count(action, "refused")
        log.info("admin_action_refused action=%s sid=%s reason=readonly", action, socket.id)

    def _register_actions(self, socket: Socket) -> None:
        """The package's handlers: (nsp, filter, event, *args), (nsp, room, filter),
        (nsp, close, filter); a filter is one room (a socket id for one socket)."""

        def target(action: str, name: Any, filter_: Any) -> Any:
            nsp = self.server.namespaces.get(name) if isinstance(name, str) else None
            if nsp is None or (filter_ is not None and not isinstance(filter_, (str, int))):
                # Never create a namespace from the UI's input: only existing ones are acted on.
                self.actions.count(action, "invalid")
                return None
            self.actions.count(action, "applied")
            log.info("admin_action action=%s nsp=%s filter=%s by=%s", action, name, filter_, socket.id)
            return nsp.in_(filter_) if filter_ not in (None, "") else nsp

        def emit(name: Any = None, filter_: Any = None, event: Any = None, *args: Any) -> None:
            if not isinstance(event, str) or event in sio.RESERVED_EVENTS:
                self.actions.count("emit", "invalid")
                return
            op = target("emit", name, filter_)
            if op is not None:
                op.emit(event, *args)

        def join(name: Any = None, room: Any = None, filter_: Any = None) -> None:
            if not isinstance(room, (str, int)):
                self.actions.count("join", "invalid")
                return
            op = target("join", name, filter_)
            if op is not None:
                op.sockets_join(room)

        def leave(name: Any = None, room: Any = None, filter_: Any = None) -> None:
            if not isinstance(room, (str, int)):
                self.actions.count("leave", "invalid")
                return
            op = target("leave", name, filter_)
            if op is not None:
                op.sockets_leave(room)

        def disconnect(name: Any = None, close: Any = False, filter_: Any = None) -> None:
            op = target("_disconnect", name, filter_)
            if op is not None:
                op.disconnect_sockets(bool(close))

        socket.on("emit", emit)
        socket.on("join", join)
        socket.on("leave", leave)
        socket.on("_disconnect", disconnect)

    # -- the engine: disconnections, upgrades ----------------------------------------------------

    def _hook_engine(self) -> None:
        """The engine's session-closed and upgrade hooks (chained to whatever was there)."""
        engine = self.server.engine
        previous_closed = engine.on_session_closed
        previous_upgrade = engine.on_upgrade

        def session_closed(session: Session) -> None:
            self.closed_sessions += 1
            if previous_closed is not None:
                previous_closed(session)

        def upgraded(session: Session) -> None:
            if self.development:
                self._upgraded(session)
            if previous_upgrade is not None:
                previous_upgrade(session)

        engine.on_session_closed = session_closed
        engine.on_upgrade = upgraded

    def _upgraded(self, session: Session) -> None:
        sockets: Iterable[Socket] = getattr(session.receiver, "sockets", {}).values()
        for socket in list(sockets):
            admin = socket.data.get("_admin")
            if isinstance(admin, dict):
                admin["transport"] = "websocket"
            self.nsp.emit("socket_updated", {"id": socket.id, "nsp": socket.nsp.name, "transport": "websocket"})

    # -- development mode: every namespace's sockets, rooms and events ---------------------------

    def _watch(self, nsp: Namespace) -> None:
        """One namespace's sockets, events and rooms, as the package's registerVerboseListeners."""
        if nsp.name in self._watched:
            return
        self._watched.add(nsp.name)
        admin_nsp = self.nsp
        is_admin = nsp is admin_nsp

        def connected(socket: Socket) -> None:
            if socket.nsp is not nsp:
                return  # children of a dynamic family share its listeners: each watches its own
            name = nsp.name
            socket.data["_admin"] = {"clientId": socket.session.sid[:12], "transport": socket.session.transport_name}
            admin_nsp.emit("socket_connected", serialize(socket, name), now_iso())
            if not is_admin:
                socket.on_any(lambda event, *args: admin_nsp.emit("event_received", name, socket.id, [event, *_without_ack(args)], now_iso()))
                socket.on_any_outgoing(lambda event, *args: admin_nsp.emit("event_sent", name, socket.id, [event, *args], now_iso()))
            socket.on("disconnect", lambda reason: admin_nsp.emit("socket_disconnected", name, socket.id, reason, now_iso()))

        nsp.on("connection", connected)
        self._watch_rooms(nsp)

    def _watch_rooms(self, nsp: Namespace) -> None:
        """room_joined / room_left from the adapter's `join-room` / `leave-room` events, as the
        package listens to them (the admin namespace's own rooms included)."""
        admin_nsp = self.nsp
        name = nsp.name
        nsp.adapter.on("join-room", lambda room, sid: admin_nsp.emit("room_joined", name, room, sid, now_iso()))
        nsp.adapter.on("leave-room", lambda room, sid: admin_nsp.emit("room_left", name, room, sid, now_iso()))


def _without_ack(args: tuple[Any, ...]) -> list[Any]:
    """The event's arguments without a trailing ack callable (the package drops it too)."""
    if args and callable(args[-1]):
        return list(args[:-1])
    return list(args)
