"""The Python twin of the Node driver's test server (TEST APP CONTRACT in tests/interop/driver.mjs).

    .venv/bin/python -m tests.sio_app --port 3000 [--redis redis://127.0.0.1:6379]

Interop tests run the same scenarios against this app and against the Node reference server, so
both must answer identically:

- namespaces `/` and `/chat`: `socket.data = {"server": "python", "auth": <auth>}`, then a
  `welcome` event `{"id", "nsp"}`; `join`/`leave` (room, ack) acknowledge the socket's rooms;
  `echo` acknowledges its arguments, or emits them back as `echo` without an ack; `broadcast`
  ({rooms, except, event, args}, ack) emits to the namespace narrowed by rooms/except (the
  sender included, as `nsp.to(...)` does) and acknowledges `True`;
- a server-side listener `ping-servers` (arg, ack) answering `{"server": "python", "arg": arg}`.

Beyond the Node contract, for single-node tests:

- `/private`: a middleware refuses with `unauthorized` / `{"reason": "bad token"}` unless
  `auth.token == "letmein"`; admitted sockets behave like `/`;
- dynamic namespaces matching `^/dyn-\\d+$`, which behave like `/` too;
- `server-ack` (payload, ack): the server emits `question` (payload) to the client with an ack
  and acknowledges with the client's answer (`{"error": "timeout"}` after 5 s);
- `whoami` (ack): acknowledges `{"id", "nsp", "rooms", "data"}`, so a client can see what the
  server stored in `socket.data` without a cluster to fetch it through;
- connection state recovery (STATE_RECOVERY_MS in the environment): a recovered socket keeps
  the `socket.data` it had (the connection handler does not reset it); `set-data` (key, value,
  ack) stores one key in `socket.data`; `recovery-state` (ack) acknowledges `{"id", "recovered",
  "rooms", "data"}`;
- the acknowledgement rule, on `/` (see `install_ack_probes`).
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Callable

from gateway.sio.adapter import AdapterError
from gateway.app import build_server
from gateway.config import Settings
from gateway.ops.logs import setup_logging
from gateway.runtime import run
from gateway import AckTimeout, BroadcastOperator, ConnectionRefused, Namespace, Server, Socket

SERVER_NAME = "python"
PRIVATE_TOKEN = "letmein"
DYNAMIC_NAMESPACES = re.compile(r"^/dyn-\d+$")
QUESTION_TIMEOUT_S = 5.0


def _as_list(value: Any) -> list[Any]:
    """The driver's `asList`: absent -> no arguments, a list -> its items, else one argument."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _sorted_rooms(socket: Socket) -> list[Any]:
    # Node reports rooms in join order (its own id first); a set has no order, so put the id first
    # and the rest sorted, which keeps answers stable between runs.
    rooms = socket.rooms
    rest = sorted((r for r in rooms if r != socket.id), key=str)
    return ([socket.id] if socket.id in rooms else []) + rest


def install_contract(nsp: Namespace) -> None:
    """The per-socket half of the contract, on `nsp` (or on every child of a dynamic family)."""

    @nsp.on("connection")
    def connected(socket: Socket) -> None:
        if not socket.recovered:
            socket.data = {"server": SERVER_NAME, "auth": socket.handshake["auth"]}
        socket.emit("welcome", {"id": socket.id, "nsp": socket.nsp.name})

        @socket.on("set-data")
        def set_data(key: Any = None, value: Any = None) -> bool:
            socket.data[str(key)] = value
            return True

        @socket.on("recovery-state")
        def recovery_state() -> dict[str, Any]:
            return {"id": socket.id, "recovered": socket.recovered, "rooms": _sorted_rooms(socket), "data": socket.data}

        @socket.on("join")
        def join(room: Any = None, ack: Callable[..., None] | None = None) -> None:
            socket.join(room)
            if ack is not None:
                ack(_sorted_rooms(socket))

        @socket.on("leave")
        def leave(room: Any = None, ack: Callable[..., None] | None = None) -> None:
            socket.leave(room)
            if ack is not None:
                ack(_sorted_rooms(socket))

        @socket.on("echo")
        def echo(*args: Any, ack: Callable[..., None] | None = None) -> None:
            if ack is not None:
                ack(*args)
            else:
                socket.emit("echo", *args)

        @socket.on("broadcast")
        def broadcast(spec: Any = None, ack: Callable[..., None] | None = None) -> None:
            spec = spec if isinstance(spec, dict) else {}
            target: Namespace | BroadcastOperator = socket.nsp
            if spec.get("rooms") is not None:
                target = target.to(spec["rooms"])
            if spec.get("except") is not None:
                target = target.except_(spec["except"])
            target.emit(spec.get("event"), *_as_list(spec.get("args")))
            if ack is not None:
                ack(True)

        @socket.on("server-ack")
        async def server_ack(payload: Any = None, ack: Callable[..., None] | None = None) -> None:
            try:
                answer = await socket.emit_with_ack("question", payload, timeout=QUESTION_TIMEOUT_S)
            except AckTimeout:
                answer = {"error": "timeout"}
            if ack is not None:
                ack(answer)

        @socket.on("whoami")
        def whoami(ack: Callable[..., None] | None = None) -> None:
            if ack is not None:
                ack({"id": socket.id, "nsp": socket.nsp.name, "rooms": _sorted_rooms(socket), "data": socket.data})


def build(settings: Settings) -> Server:
    # build_server chooses the adapter as the product does (in-memory, or Redis when
    # settings.redis_url is set) but adds none of the product's handlers (auth, presence, rooms
    # per user), which would change what the contract's answers contain.
    server = build_server(settings)
    for name in ("/", "/chat"):
        install_contract(server.of(name))

    @server.on("ping-servers")
    def ping_servers(arg: Any = None, ack: Callable[..., None] | None = None) -> None:
        if ack is not None:
            ack({"server": SERVER_NAME, "arg": arg})

    private = server.of("/private")

    @private.use
    def require_token(socket: Socket) -> None:
        auth = socket.handshake["auth"]
        if not isinstance(auth, dict) or auth.get("token") != PRIVATE_TOKEN:
            raise ConnectionRefused("unauthorized", {"reason": "bad token"})

    install_contract(private)
    install_contract(server.of(DYNAMIC_NAMESPACES))
    install_resilience_probes(server)
    install_cluster_events(server)
    install_ack_probes(server)
    return server


def install_ack_probes(server: Server) -> None:
    """Events on `/` for the acknowledgement rule (an ack only when the handler calls `ack`,
    returns something other than None, or was registered `ack=True`), so a client that asks for
    an ack sees what a Node.js listener would do:

    - `returns-none`, `returns-none-async` (*args): no `ack` parameter, return None: never ack;
    - `returns-value` (*args): returns `{"got": args}`; `returns-tuple-async`: returns
      `("a", 1)`, two ack arguments;
    - `ack-true-none`, `ack-true-none-async`: registered `ack=True`, return None: an empty ack;
    - `ack-true-raises`: registered `ack=True`, raises: never acks;
    - `acks-twice`: calls `ack("first")` and `ack("second")` and returns `"third"`: one ack, `first`.
    """
    main = server.of("/")

    @main.on("connection")
    def connected(socket: Socket) -> None:
        @socket.on("returns-none")
        def returns_none(*args: Any) -> None:
            return None

        @socket.on("returns-none-async")
        async def returns_none_async(*args: Any) -> None:
            return None

        @socket.on("returns-value")
        def returns_value(*args: Any) -> dict[str, Any]:
            return {"got": list(args)}

        @socket.on("returns-tuple-async")
        async def returns_tuple_async(*args: Any) -> tuple[str, int]:
            return ("a", 1)

        @socket.on("ack-true-none", ack=True)
        def ack_true_none(*args: Any) -> None:
            return None

        @socket.on("ack-true-none-async", ack=True)
        async def ack_true_none_async(*args: Any) -> None:
            return None

        @socket.on("ack-true-raises", ack=True)
        def ack_true_raises(*args: Any) -> None:
            raise RuntimeError("ack-true-raises fails on purpose")

        @socket.on("acks-twice")
        def acks_twice(*args: Any, ack: Callable[..., None] | None = None) -> str:
            if ack is not None:
                ack("first")
                ack("second")
            return "third"


def install_resilience_probes(server: Server) -> None:
    """Events on `/` for the failure tests (tests/integration/test_resilience.py):

    - `node-info` (ack): `{"port", "pid"}` of the process the socket landed on (behind nginx), and
      the handshake `address` it saw (X-Forwarded-For believed only from TRUSTED_PROXIES);
    - `cluster-fetch` (ack): `nsp.fetch_sockets()` across the cluster: `{"ok": True, "ids"}`, or
      `{"ok": False, "error": <error class name>, "ids": <ids of the answers that did arrive>}`;
    - `cluster-ping` (arg, ack): `server_side_emit("ping-servers", arg, ack=True)`: `{"ok": True,
      "answers"}`, or `{"ok": False, "error": <class name>, "answers": <answers that arrived>}`.
    """
    main = server.of("/")

    @main.on("connection")
    def connected(socket: Socket) -> None:
        @socket.on("node-info")
        def node_info(ack: Callable[..., None] | None = None) -> None:
            if ack is not None:
                ack({"port": server.port, "pid": os.getpid(), "address": socket.handshake["address"]})

        @socket.on("cluster-fetch")
        async def cluster_fetch(ack: Callable[..., None] | None = None) -> None:
            try:
                found = await main.fetch_sockets()
            except AdapterError as exc:
                arrived = [d.get("id") for d in getattr(exc, "responses", []) if isinstance(d, dict)]
                answer = {"ok": False, "error": type(exc).__name__, "ids": arrived}
            else:
                answer = {"ok": True, "ids": [s.id for s in found]}
            if ack is not None:
                ack(answer)

        @socket.on("cluster-ping")
        async def cluster_ping(arg: Any = None, ack: Callable[..., None] | None = None) -> None:
            try:
                answers = await server.server_side_emit("ping-servers", arg, ack=True)
            except AdapterError as exc:
                answer = {"ok": False, "error": type(exc).__name__, "answers": list(getattr(exc, "responses", []))}
            else:
                answer = {"ok": True, "answers": answers}
            if ack is not None:
                ack(answer)


def install_cluster_events(server: Server) -> None:
    """Events on `/` and `/chat` for the cluster tests (tests/integration/test_cluster.py,
    tests/interop/test_mixed_cluster.py); the Node test server is driven through the driver's
    `server.*` commands instead. Selections are `{rooms, except}` as in `broadcast`:

    - `fetch` (selection, ack): `[{"id", "rooms", "data"}]` of `nsp.in_(rooms).except_(except)
      .fetch_sockets()`, every node included;
    - `ssemit` (arg, [timeout,] ack): the answers of `nsp.server_side_emit("ping-servers", arg,
      ack=True, timeout=timeout)`;
    - `bcast-ack` ({rooms, except, event, args, timeout}, ack): the clients' acks collected by
      `nsp.to(rooms).except_(except).timeout(timeout).emit_with_ack(event, *args)`;
    - `disconnect-room` ({rooms, except, close}, ack), `sockets-join` ({rooms, except, join}, ack),
      `sockets-leave` ({rooms, except, leave}, ack): the cluster-wide operations, acknowledged True;
    - `all-rooms` (ack): every room of the namespace on every node; `server-count` (ack);
    - `notes` (ack): the arguments of every server-side `note` event this node received (another
      node's or an emitter's serverSideEmit), oldest first.

    A failed cluster request acknowledges `{"error": <class name>, "message", "responses"}`.
    """
    for name in ("/", "/chat"):
        _install_cluster_events(server.of(name))


def _selection(nsp: Namespace, spec: Any) -> Namespace | BroadcastOperator:
    spec = spec if isinstance(spec, dict) else {}
    target: Namespace | BroadcastOperator = nsp
    if spec.get("rooms") is not None:
        target = target.in_(spec["rooms"])
    if spec.get("except") is not None:
        target = target.except_(spec["except"])
    return target


def _field(spec: Any, key: str) -> Any:
    return spec.get(key) if isinstance(spec, dict) else None


def _failure(exc: Exception) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc), "responses": getattr(exc, "responses", None)}


def _install_cluster_events(nsp: Namespace) -> None:
    notes: list[Any] = []

    @nsp.on("note")
    def note(*args: Any) -> None:
        notes.append(list(args))

    @nsp.on("connection")
    def connected(socket: Socket) -> None:
        @socket.on("fetch")
        async def fetch(spec: Any = None) -> Any:
            try:
                sockets = await _selection(socket.nsp, spec).fetch_sockets()
            except AdapterError as exc:
                return _failure(exc)
            return [{"id": s.id, "rooms": sorted(s.rooms, key=str), "data": s.data} for s in sockets]

        @socket.on("ssemit")
        async def ssemit(arg: Any = None, timeout: Any = None) -> Any:
            seconds = float(timeout) if isinstance(timeout, (int, float)) else None
            try:
                return await socket.nsp.server_side_emit("ping-servers", arg, ack=True, timeout=seconds)
            except AdapterError as exc:
                return _failure(exc)

        @socket.on("bcast-ack")
        async def bcast_ack(spec: Any = None) -> Any:
            spec = spec if isinstance(spec, dict) else {}
            target = _selection(socket.nsp, spec).timeout(float(spec.get("timeout") or 2.0))
            try:
                return await target.emit_with_ack(spec.get("event"), *_as_list(spec.get("args")))
            except (AdapterError, AckTimeout) as exc:
                return _failure(exc)

        @socket.on("disconnect-room")
        def disconnect_room(spec: Any = None) -> bool:
            _selection(socket.nsp, spec).disconnect_sockets(bool(_field(spec, "close")))
            return True

        @socket.on("sockets-join")
        def sockets_join(spec: Any = None) -> bool:
            _selection(socket.nsp, spec).sockets_join(_field(spec, "join"))
            return True

        @socket.on("sockets-leave")
        def sockets_leave(spec: Any = None) -> bool:
            _selection(socket.nsp, spec).sockets_leave(_field(spec, "leave"))
            return True

        @socket.on("all-rooms")
        async def all_rooms() -> Any:
            try:
                return sorted(await socket.nsp.adapter.all_rooms(), key=str)
            except AdapterError as exc:
                return _failure(exc)

        @socket.on("server-count")
        async def server_count() -> Any:
            try:
                return await socket.nsp.server_count()
            except AdapterError as exc:
                return _failure(exc)

        @socket.on("notes")
        def read_notes() -> list[Any]:
            return list(notes)


def settings_for(port: int, host: str = "127.0.0.1", redis_url: str | None = None) -> Settings:
    # The environment supplies the rest (timeouts, reconnect, outbox, shutdown deadline: tests set
    # them per process); the flags win, and Redis is used only when --redis is given. A test app
    # has no tokens to check, so authentication is off unless the environment asks for it.
    env = {"AUTH_MODE": "none", **os.environ}
    return Settings.from_env(env, host=host, port=port, cors_origins=("*",), redis_url=redis_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--redis", default=None, help="Redis URL for the cluster adapter (default: single node, in-memory)")
    args = parser.parse_args()
    settings = settings_for(args.port, args.host, args.redis)
    setup_logging(settings.log_level)
    server = build(settings)
    run(server.start, server.close, settings.shutdown_deadline_ms / 1000)


if __name__ == "__main__":
    main()
