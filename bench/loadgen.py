"""A load generator cheap per message: raw Engine.IO v4 over WebSocket, one asyncio process.

    .venv/bin/python -m bench.loadgen fanout --target 127.0.0.1:3001 --server-pids 1234

Each client is a bare `asyncio.Protocol`: it sends the upgrade request for
`/socket.io/?EIO=4&transport=websocket`, answers Engine.IO pings, connects to the main namespace
and then only splits frames and looks at two bytes per message. A broadcast reaches every
subscriber as the same bytes, so its JSON is parsed once (cached by payload) and each further
delivery costs a dict lookup; no client library, no per-socket task.

`--transport polling` puts the subscribers (fanout; the publisher stays on WebSocket) or the room
members (rooms; they publish by POST) on HTTP long-polling only (bench/polling.py, as cheap);
`--transport default` connects as a default socket.io-client does (polling handshake, `40` by
POST, the poll bringing the CONNECT, then the WebSocket upgrade `2probe`/`3probe`/`5` with a poll
held), for the connections scenario's storm.

Every scenario runs the same phases, each bounded in time:
  connect -> join -> warm-up (publish until every subscriber has received something, which also
  proves the joins happened) -> saturation (a window of messages in flight; deliveries/s and server
  CPU per delivery) -> latency (open loop at a fraction of the saturation rate; p50/p99) -> drain.
Lost messages are the deliveries still missing after the drain.

The result is one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from bench.polling import SEPARATOR, HttpLink, PollingClient, handshake_request, parse_open, poll_request, post_head, post_request

SCENARIOS = ("fanout", "rooms", "connections")
# How the subscribers (fanout, connections) or room members (rooms) connect: WebSocket straight
# away; HTTP long-polling only (bench/polling.py; publishers stay on WebSocket in fanout); or as a
# default socket.io-client does (polling handshake, then the WebSocket upgrade).
TRANSPORTS = ("websocket", "polling", "default")

UPGRADE_REQUEST = (
    "GET {path}?EIO=4&transport=websocket{sid} HTTP/1.1\r\n"
    "Host: {host}:{port}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: YmVuY2gtbG9hZGdlbi0xMg==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class LoadgenError(RuntimeError):
    """The scenario could not be carried out (connection refused, handshake failed, timeout)."""


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame. The mask key is all zeros, so the payload goes out unchanged:
    masking is required of clients by RFC 6455, but its value does not matter on loopback and a
    zero key spares an XOR per byte."""
    n = len(payload)
    head = 0x80 | opcode
    if n < 126:
        return bytes((head, 0x80 | n, 0, 0, 0, 0)) + payload
    if n < 65536:
        return bytes((head, 0x80 | 126)) + n.to_bytes(2, "big") + b"\0\0\0\0" + payload
    return bytes((head, 0x80 | 127)) + n.to_bytes(8, "big") + b"\0\0\0\0" + payload


SIO_CONNECT = client_frame(b"40")
EIO_PONG = client_frame(b"3")
PROBE = client_frame(b"2probe")
UPGRADE = client_frame(b"5")


# -- measurement ---------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def process_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE_KIB


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sample:
    wall: float
    server_cpu: float
    server_sys: float
    own_cpu: float
    delivered: int
    by_pid: tuple[float, ...] = ()

    @classmethod
    def take(cls, gen: "Generator") -> "Sample":
        times = [process_cpu_seconds(p) for p in gen.server_pids]
        by_pid = tuple(u + s for u, s in times)
        return cls(time.perf_counter(), sum(by_pid), sum(s for _, s in times), own_cpu_seconds(), gen.delivered, by_pid)


def window(a: Sample, b: Sample) -> dict[str, float]:
    """Rates over the interval between two samples."""
    wall = b.wall - a.wall
    delivered = b.delivered - a.delivered
    server_cpu = b.server_cpu - a.server_cpu
    own_cpu = b.own_cpu - a.own_cpu
    return {
        "seconds": round(wall, 3),
        "deliveries": delivered,
        "deliveries_per_s": round(delivered / wall, 1) if wall > 0 else 0.0,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_delivery": round(server_cpu * 1e6 / delivered, 3) if delivered else None,
        "server_cpu_cores": round(server_cpu / wall, 3) if wall > 0 else 0.0,
        # Kernel share: on loopback a send also runs the receiver's TCP path, so a server that
        # writes one syscall per recipient shows most of its time here.
        "server_sys_fraction": round((b.server_sys - a.server_sys) / server_cpu, 3) if server_cpu > 0 else None,
        "gen_cpu_s": round(own_cpu, 3),
        "gen_cpu_us_per_delivery": round(own_cpu * 1e6 / delivered, 3) if delivered else None,
        "gen_cpu_cores": round(own_cpu / wall, 3) if wall > 0 else 0.0,
        # Per server process, in --server-pids order: bench.run splits nodes from Redis with it
        # (per-node cost as the cluster grows; what a node with no room members pays).
        "server_cpu_s_by_pid": [round(y - x, 4) for x, y in zip(a.by_pid, b.by_pid)],
    }


def percentiles(values: list[float]) -> dict[str, Any]:
    """p50/p90/p99/p99.9/max in milliseconds plus 101 quantiles for distribution plots."""
    if not values:
        return {"count": 0}
    values = sorted(values)
    n = len(values)

    def q(p: float) -> float:
        return round(values[min(n - 1, int(p * n))] * 1000, 3)

    return {
        "count": n,
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": round(values[-1] * 1000, 3),
        "quantiles_ms": [q(i / 100) for i in range(101)],
    }


# -- the clients ---------------------------------------------------------------------------------


class Message:
    """One published message and what is still owed for it."""

    __slots__ = ("seq", "t", "room", "remaining", "warm", "latencies")

    def __init__(self, seq: int, t: float, room: int, expected: int, warm: bool, latencies: list[float] | None) -> None:
        self.seq = seq
        self.t = t
        self.room = room
        self.remaining = expected
        self.warm = warm
        self.latencies = latencies


class Client(asyncio.Protocol):
    """One raw Engine.IO/Socket.IO connection."""

    __slots__ = ("gen", "index", "transport", "upgraded", "buf", "ready", "connected", "closed", "received", "fragments", "sid", "probed")

    def __init__(self, gen: "Generator", index: int, sid: str = "") -> None:
        self.gen = gen
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""
        self.ready = False  # has received a warm-up message, so its join took effect
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.received = 0
        self.fragments: list[bytes] | None = None
        # An upgrade of a polling session (a default client): the WebSocket names the session,
        # sends `2probe` once open and resolves `probed` on `3probe`.
        self.sid = sid
        self.probed: asyncio.Future[None] | None = asyncio.get_running_loop().create_future() if sid else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.gen.upgrade_request(self))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gen.closed_connections += 1
        if not self.connected.done():
            self.connected.set_exception(LoadgenError(f"connection {self.index} closed during handshake: {exc!r}"))
        if self.probed is not None and not self.probed.done():
            self.probed.set_exception(LoadgenError(f"connection {self.index} closed during the upgrade: {exc!r}"))

    def send(self, frame: bytes) -> None:
        if not self.closed:
            self.transport.write(frame)  # type: ignore[union-attr]

    def send_packet(self, payload: bytes) -> None:
        """One Engine.IO packet, framed (the interface the polling client shares)."""
        if not self.closed:
            self.transport.write(client_frame(payload))  # type: ignore[union-attr]

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                status = data[: data.find(b"\r\n")].decode(errors="replace")
                error = LoadgenError(f"upgrade refused: {status}")
                if not self.connected.done():
                    self.connected.set_exception(error)
                if self.probed is not None and not self.probed.done():
                    self.probed.set_exception(error)
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            data = data[end + 4 :]
            if self.sid:
                self.send(PROBE)
        now = time.perf_counter()
        n = len(data)
        pos = 0
        on_text = self.on_text
        while n - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[start : start + 8], "big")
                start += 8
            end = start + length
            if end > n:
                break
            pos = end
            opcode = b0 & 0x0F
            if b0 & 0x80 and opcode == 1:
                on_text(data[start:end], now)
            else:
                self.on_other_frame(b0, data[start:end], now)
        if pos < n:
            self.buf = data[pos:]

    def on_other_frame(self, b0: int, payload: bytes, now: float) -> None:
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode == 0x9:  # WebSocket ping
            self.send(client_frame(payload, 0xA))
        elif opcode == 0x8:
            self.transport.close()  # type: ignore[union-attr]
        elif opcode in (0x1, 0x2):  # first fragment of a fragmented message
            self.fragments = [payload] if opcode == 0x1 else None
        elif opcode == 0x0 and self.fragments is not None:
            self.fragments.append(payload)
            if fin:
                whole = b"".join(self.fragments)
                self.fragments = None
                self.on_text(whole, now)

    def on_text(self, payload: bytes, now: float) -> None:
        # Engine.IO type digit, then Socket.IO type digit for messages.
        if payload[:1] == b"4":  # message
            if payload[1:2] == b"2":  # event
                self.received += 1
                self.gen.on_event(self, payload, now)
            elif payload[1:2] == b"0" and not self.connected.done():  # namespace connected
                self.connected.set_result(None)
            elif payload[1:2] == b"4" and not self.connected.done():  # connect error
                self.connected.set_exception(LoadgenError(f"namespace refused: {payload!r}"))
        elif payload == b"2":  # ping
            self.send(EIO_PONG)
        elif payload[:1] == b"0":  # open
            self.send(SIO_CONNECT)
        elif payload[:1] == b"1":  # close
            self.transport.close()  # type: ignore[union-attr]
        elif payload == b"3probe" and self.probed is not None and not self.probed.done():
            self.probed.set_result(None)


# -- the generator -------------------------------------------------------------------------------


@dataclass
class Plan:
    """What to run: which rooms exist, who is in them, who publishes into them."""

    scenario: str
    targets: list[tuple[str, int]]
    subscribers: int = 1000
    rooms: int = 1000
    duration: float = 3.0
    ramp: float = 0.5
    window: int = 8
    latency_load: float = 0.5
    # Optional second latency phase at an absolute rate (deliveries/s), so two servers can be
    # compared at the same load as well as at the same fraction of their own saturation.
    latency_deliveries_per_s: float = 0.0
    pad: int = 64
    connect_concurrency: int = 200
    burst: int = 3
    idle: float = 1.0
    path: str = "/socket.io/"
    transport: str = "websocket"
    server_pids: list[int] = field(default_factory=list)
    # rooms: members only on the first `member_nodes` targets (0 = all of them); every further
    # target holds `idle_clients` connections that join no room (what a non-member node pays).
    member_nodes: int = 0
    idle_clients: int = 0


class Generator:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.server_pids = plan.server_pids
        self.clients: list[Client] = []
        self.targets_of: dict[int, tuple[str, int]] = {}
        self.pending: dict[int, Message] = {}
        self.by_payload: dict[bytes, Message | None] = {}
        self.seq = 0
        self.delivered = 0
        self.unknown = 0
        self.closed_connections = 0
        self.on_complete: Callable[[Message], None] | None = None
        self.pad = ("x" * plan.pad).encode()
        # room index -> (its members, the clients that take turns publishing into it)
        self.members: list[list[Client]] = []
        self.publishers: list[list[Client]] = []
        self.turn: list[int] = []
        self.expected: list[int] = []
        self._requests: dict[tuple[str, int], bytes] = {}

    def log(self, text: str) -> None:
        print(f"    [loadgen {self.plan.scenario}] {text}", file=sys.stderr, flush=True)

    def upgrade_request(self, client: Client) -> bytes:
        target = self.targets_of[client.index]
        request = self._requests.get(target)
        if request is None:
            request = self._requests[target] = UPGRADE_REQUEST.format(path=self.plan.path, host=target[0], port=target[1], sid="").encode()
        if client.sid:
            return UPGRADE_REQUEST.format(path=self.plan.path, host=target[0], port=target[1], sid=f"&sid={client.sid}").encode()
        return request

    # -- inbound ---------------------------------------------------------------------------------

    def on_event(self, client: Client, payload: bytes, now: float) -> None:
        by_payload = self.by_payload
        message = by_payload.get(payload)
        if message is None:
            if payload in by_payload:
                self.unknown += 1
                return
            message = by_payload[payload] = self._resolve(payload)
            if message is None:
                self.unknown += 1
                return
        message.remaining -= 1
        if message.warm:
            client.ready = True
            if message.remaining == 0:
                del self.pending[message.seq]
                del by_payload[payload]
            return
        self.delivered += 1
        latencies = message.latencies
        if latencies is not None:
            latencies.append(now - message.t)
        if message.remaining == 0:
            del self.pending[message.seq]
            del by_payload[payload]
            if self.on_complete is not None:
                self.on_complete(message)

    def _resolve(self, payload: bytes) -> Message | None:
        """First sight of a broadcast's bytes: find the message it carries."""
        try:
            event = orjson.loads(payload[2:])
            if event[0] != "message":
                return None
            return self.pending.get(event[1]["seq"])
        except (orjson.JSONDecodeError, LookupError, TypeError):
            return None

    # -- outbound --------------------------------------------------------------------------------

    def publish(self, room: int, warm: bool = False, latencies: list[float] | None = None) -> Message:
        self.seq += 1
        seq = self.seq
        t = time.perf_counter()
        clients = self.publishers[room]
        turn = self.turn[room]
        self.turn[room] = turn + 1
        publisher = clients[turn % len(clients)]
        message = self.pending[seq] = Message(seq, t, room, self.expected[room], warm, latencies)
        payload = b'42["publish",{"room":"r%d","t":%.6f,"seq":%d,"pad":"%s"}]' % (room, t, seq, self.pad)
        publisher.send_packet(payload)
        return message

    # -- set-up ----------------------------------------------------------------------------------

    async def connect(self, count: int, target_of: Callable[[int], int], kind: str | None = None) -> float:
        """Open `count` clients (a bounded number of handshakes at once); returns the seconds.
        `kind` is one of TRANSPORTS, the plan's transport unless given."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.plan.connect_concurrency)
        first = len(self.clients)
        kind = kind or self.plan.transport

        async def one(i: int) -> Any:
            host, port = self.targets_of[i] = self.plan.targets[target_of(i)]
            async with gate:
                if kind == "polling":
                    client: Any = PollingClient(self, i, (host, port), self.plan.path)
                    await asyncio.wait_for(client.open(), 30)
                elif kind == "default":
                    return await asyncio.wait_for(self.connect_default(i, host, port), 30)
                else:
                    _, client = await loop.create_connection(lambda: Client(self, i), host, port)
                await asyncio.wait_for(client.connected, 30)
            return client

        started = time.perf_counter()
        clients = await asyncio.gather(*(one(first + i) for i in range(count)))
        elapsed = time.perf_counter() - started
        self.clients.extend(clients)
        return elapsed

    async def connect_default(self, i: int, host: int | str, port: int) -> Client:
        """What a default socket.io-client does: the polling handshake, `40` by POST and the
        poll that brings the namespace's CONNECT, then (with a poll held, as the client keeps
        one) a WebSocket on the same session: `2probe`, `3probe`, the held poll released by the
        server, `5`. The HTTP connection is closed after the upgrade, as the client stops using it."""
        loop = asyncio.get_running_loop()
        path = self.plan.path
        _, link = await loop.create_connection(HttpLink, host, port)
        try:
            status, body = await link.fetch(handshake_request(path, str(host), port))
            if status != 200:
                raise LoadgenError(f"handshake refused: {status} {body[:120]!r}")
            info = parse_open(body)
            if "websocket" not in info.get("upgrades", ()):
                raise LoadgenError(f"the server offers no WebSocket upgrade: {body[:120]!r}")
            sid = info["sid"]
            status, body = await link.fetch(post_request(post_head(path, str(host), port, sid), b"40"))
            if status != 200:
                raise LoadgenError(f"POST 40 answered {status} {body[:120]!r}")
            poll = poll_request(path, str(host), port, sid)
            packets: list[bytes] = []
            while not any(p[:2] == b"40" for p in packets):
                status, body = await link.fetch(poll)
                if status != 200:
                    raise LoadgenError(f"poll answered {status} {body[:120]!r}")
                packets = body.split(SEPARATOR)
                if any(p[:2] == b"44" for p in packets):
                    raise LoadgenError(f"namespace refused: {body[:120]!r}")
            held = link.fetch(poll)
            _, client = await loop.create_connection(lambda: Client(self, i, sid=sid), host, port)
            await client.probed  # type: ignore[misc]
            status, body = await held
            now = time.perf_counter()
            for packet in body.split(SEPARATOR):
                if packet not in (b"6", b""):
                    client.on_text(packet, now)
            client.send(UPGRADE)
            if not client.connected.done():
                client.connected.set_result(None)
            return client
        finally:
            link.close()

    def join(self, client: Any, room: int) -> None:
        client.send_packet(b'42["join","r%d"]' % room)

    async def warm_up(self, timeout: float = 30.0) -> float:
        """Publish into every room until every member has received something: proves the joins
        (and, across nodes, the Redis subscriptions) are in place before anything is timed."""
        started = time.perf_counter()
        deadline = started + timeout
        waiting = [c for members in self.members for c in members]
        # Let the joins (sent just before) reach the server ahead of the first publish; a room
        # is published into again only with a growing delay, so a slow server is not buried
        # under warm-up traffic.
        await asyncio.sleep(0.05 + len(waiting) / 50_000)
        rooms = len(self.members)
        retry_at = [0.0] * rooms
        delay = [1.0] * rooms
        while True:
            now = time.perf_counter()
            for room in range(rooms):
                if now >= retry_at[room] and any(not c.ready for c in self.members[room]):
                    self.publish(room, warm=True)
                    retry_at[room] = now + delay[room]
                    delay[room] *= 2
            await asyncio.sleep(0.05)
            waiting = [c for c in waiting if not c.ready]
            if not waiting:
                break
            if time.perf_counter() > deadline:
                raise LoadgenError(f"{len(waiting)} subscribers got nothing within {timeout}s of warm-up (joins lost?)")
        # Warm-up messages published before a join took effect are never delivered to that
        # socket: wait only until the others stop arriving, and never count them as lost.
        await self.drain(timeout=5.0, warm=True, stall=0.3)
        return time.perf_counter() - started

    async def drain(self, timeout: float, warm: bool = False, stall: float = 3.0) -> None:
        """Wait for owed deliveries (of warm-up messages, or of measured ones): until none is
        owed, `timeout` passes, or nothing arrives for `stall` seconds (what is still owed then
        is lost)."""
        deadline = time.perf_counter() + timeout
        last_progress = time.perf_counter()
        owed = self.owed(warm)
        while owed and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            now_owed = self.owed(warm)
            if now_owed < owed:
                last_progress = time.perf_counter()
            elif time.perf_counter() - last_progress > stall:
                break
            owed = now_owed

    def owed(self, warm: bool = False) -> int:
        return sum(m.remaining for m in self.pending.values() if m.warm is warm)

    def lost(self) -> int:
        return self.owed(warm=False)

    # -- phases ----------------------------------------------------------------------------------

    async def saturate(self) -> dict[str, Any]:
        """Keep `window` messages in flight for the ramp plus `duration` seconds; each completed
        message (all its deliveries in) is replaced by one for the next room in turn."""
        plan = self.plan
        active = True
        rooms = len(self.members)
        next_room = 0

        def next_one(message: Message) -> None:
            nonlocal next_room
            if active:
                self.publish(next_room)
                next_room = (next_room + 1) % rooms

        self.on_complete = next_one
        for _ in range(plan.window):
            self.publish(next_room)
            next_room = (next_room + 1) % rooms
        await asyncio.sleep(plan.ramp)
        a = Sample.take(self)
        await asyncio.sleep(plan.duration)
        b = Sample.take(self)
        active = False
        self.on_complete = None
        drain_started = time.perf_counter()
        await self.drain(timeout=20.0)
        result = window(a, b)
        result["drain_s"] = round(time.perf_counter() - drain_started, 3)
        return result

    async def paced(self, rate: float) -> tuple[dict[str, Any], list[float]]:
        """Open loop: publish at `rate` messages/s (spread over the rooms) for `duration` s."""
        plan = self.plan
        latencies: list[float] = []
        rooms = len(self.members)
        sent = 0
        next_room = 0
        a = Sample.take(self)
        started = time.perf_counter()
        end = started + plan.duration
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            due = int((now - started) * rate) + 1
            while sent < due:
                self.publish(next_room, latencies=latencies)
                next_room = (next_room + 1) % rooms
                sent += 1
            await asyncio.sleep(0.002)
        b = Sample.take(self)
        drain_started = time.perf_counter()
        await self.drain(timeout=20.0)
        result = window(a, b)
        result["drain_s"] = round(time.perf_counter() - drain_started, 3)
        result["published"] = sent
        result["target_publish_rate"] = round(rate, 1)
        return result, latencies

    # -- scenarios -------------------------------------------------------------------------------

    def _rooms_layout(self, room_members: list[list[Client]], publishers: list[list[Client]]) -> None:
        self.members = room_members
        self.publishers = publishers
        self.turn = [0] * len(room_members)
        self.expected = [len(m) for m in room_members]

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        result: dict[str, Any] = {"scenario": plan.scenario, "nodes": len(plan.targets)}
        nodes = len(plan.targets)
        if plan.scenario == "fanout":
            # Subscribers alternate between the nodes; the publisher is on the first one and is
            # not a member of the room.
            result["connect_s"] = round(await self.connect(plan.subscribers, lambda i: i % nodes), 3)
            subs = self.clients[:]
            await self.connect(1, lambda i: 0, kind="websocket")
            publisher = self.clients[-1]
            for c in subs:
                self.join(c, 0)
            self._rooms_layout([subs], [[publisher]])
            result["subscribers"] = len(subs)
        elif plan.scenario == "rooms":
            # Two members per room; with two nodes, one on each. Both members take turns
            # publishing, and each message reaches both (the sender is in the room).
            result["connect_s"] = round(await self.connect(2 * plan.rooms, room_member_target(plan)), 3)
            members = [[self.clients[2 * r], self.clients[2 * r + 1]] for r in range(plan.rooms)]
            await self.connect_idle(result)
            for r, pair in enumerate(members):
                for c in pair:
                    self.join(c, r)
            self._rooms_layout(members, [pair[:] for pair in members])
            result["rooms"] = plan.rooms
        elif plan.scenario == "connections":
            return await self.run_connections(result)
        else:
            raise LoadgenError(f"unknown scenario {plan.scenario!r}")
        self.log(f"connected {len(self.clients)} in {result['connect_s']}s; warming up")
        result["warmup_s"] = round(await self.warm_up(), 3)
        self.log("saturation")
        saturation = await self.saturate()
        result["saturation"] = saturation
        fanout = sum(self.expected) / len(self.expected)
        publish_rate = saturation["deliveries_per_s"] / fanout
        self.log(f"saturation {saturation['deliveries_per_s']:.0f} deliveries/s; latency at {plan.latency_load:.0%} of it")
        latency_window, latencies = await self.paced(max(1.0, publish_rate * plan.latency_load))
        result["latency_phase"] = latency_window
        result["latency"] = percentiles(latencies)
        if plan.latency_deliveries_per_s:
            rate = plan.latency_deliveries_per_s / fanout
            self.log(f"latency at {plan.latency_deliveries_per_s:.0f} deliveries/s (equal load)")
            equal_window, equal_latencies = await self.paced(max(1.0, rate))
            result["latency_equal_load"] = {"deliveries_per_s": plan.latency_deliveries_per_s, "phase": equal_window, **percentiles(equal_latencies)}
        self.finish(result)
        return result

    async def run_connections(self, result: dict[str, Any]) -> dict[str, Any]:
        """Many idle clients: connect rate, server memory per connection, then a few broadcasts
        to all of them to prove they are alive."""
        plan = self.plan
        nodes = len(plan.targets)
        rss_before = sum(process_rss_kib(p) for p in self.server_pids)
        a = Sample.take(self)
        seconds = await self.connect(plan.subscribers, lambda i: i % nodes)
        b = Sample.take(self)
        result["connect_s"] = round(seconds, 3)
        result["connections"] = plan.subscribers
        result["connect_per_s"] = round(plan.subscribers / seconds, 1)
        # CPU while connecting: the server's per connection, and the generator's cores (near one,
        # the storm measures the generator, not the server).
        phase = window(a, b)
        result["connect_phase"] = {
            "server_cpu_s": phase["server_cpu_s"],
            "server_cpu_us_per_connection": round(phase["server_cpu_s"] * 1e6 / plan.subscribers, 1),
            "server_cpu_cores": phase["server_cpu_cores"],
            "gen_cpu_cores": phase["gen_cpu_cores"],
        }
        self.log(f"connected {plan.subscribers} in {seconds:.2f}s; joining")
        subs = self.clients[:]
        await self.connect(1, lambda i: 0, kind="websocket")
        publisher = self.clients[-1]
        for c in subs:
            self.join(c, 0)
        self._rooms_layout([subs], [[publisher]])
        result["warmup_s"] = round(await self.warm_up(timeout=60.0), 3)
        await asyncio.sleep(plan.idle)
        rss_after = sum(process_rss_kib(p) for p in self.server_pids)
        result["server_rss_before_kib"] = rss_before
        result["server_rss_after_kib"] = rss_after
        result["rss_kib_per_connection"] = round((rss_after - rss_before) / plan.subscribers, 3)
        self.log(f"{result['rss_kib_per_connection']} KiB per connection; {plan.burst} broadcasts to all")
        latencies: list[float] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        left = plan.burst

        def next_one(message: Message) -> None:
            nonlocal left
            left -= 1
            if left > 0:
                self.publish(0, latencies=latencies)
            elif not done.done():
                done.set_result(None)

        # One broadcast at a time, the next as soon as the last subscriber has the previous one.
        self.on_complete = next_one
        a = Sample.take(self)
        self.publish(0, latencies=latencies)
        try:
            await asyncio.wait_for(done, 60.0)
        except asyncio.TimeoutError:
            self.log("burst did not complete within 60s")
        b = Sample.take(self)
        self.on_complete = None
        await self.drain(timeout=10.0)
        result["saturation"] = window(a, b)
        result["latency"] = percentiles(latencies)
        self.finish(result)
        return result

    async def connect_idle(self, result: dict[str, Any]) -> None:
        """`idle_clients` connections on each target past the member nodes, in no room."""
        plan = self.plan
        members = plan.member_nodes or len(plan.targets)
        extra = len(plan.targets) - members
        if extra <= 0 or plan.idle_clients <= 0:
            return
        first = len(self.clients)
        await self.connect(extra * plan.idle_clients, lambda i: members + (i - first) % extra)
        result["idle_clients"] = extra * plan.idle_clients
        result["member_nodes"] = members

    def finish(self, result: dict[str, Any]) -> None:
        result["lost"] = self.lost()
        result["unknown_messages"] = self.unknown
        result["closed_connections"] = self.closed_connections
        result["published"] = self.seq
        polled = [c for c in self.clients if isinstance(c, PollingClient)]
        if polled:
            # How much a server packs into one poll answer (a server that batches answers fewer,
            # fuller polls for the same deliveries), over the whole run.
            polls = sum(c.polls for c in polled)
            events = sum(c.received for c in polled)
            result["polling"] = {
                "clients": len(polled),
                "polls": polls,
                "posts": sum(c.posts for c in polled),
                "events_per_poll": round(events / polls, 2) if polls else None,
            }

    def close(self) -> None:
        for c in self.clients:
            c.close()


def room_member_target(plan: Plan) -> Callable[[int], int]:
    """Client 2r and 2r+1 are room r's members: on two different nodes among the first
    `member_nodes` targets, room r's first member on node r mod M and its second one offset by
    1 + (r div M) mod (M - 1), so every ordered pair of nodes carries the same number of rooms
    (with two nodes: one member on each, as always)."""
    nodes = plan.member_nodes or len(plan.targets)

    def target(i: int) -> int:
        if nodes < 2:
            return 0
        room, second = divmod(i, 2)
        first = room % nodes
        if not second:
            return first
        return (first + 1 + (room // nodes) % (nodes - 1)) % nodes

    return target


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards the hard one when `needed` descriptors will not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < needed:
        raise LoadgenError(f"needs {needed} open files, the hard limit is {hard}")
    return soft


async def run_plan(plan: Plan) -> dict[str, Any]:
    # A polling client holds two connections (poll and POST), a default client two while it upgrades.
    per_client = 1 if plan.transport == "websocket" else 2
    raise_fd_limit(per_client * max(plan.subscribers, 2 * plan.rooms) + len(plan.targets) * plan.idle_clients + 256)
    gen = Generator(plan)
    try:
        return await gen.run()
    finally:
        gen.close()
        await asyncio.sleep(0.05)


def parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--target", action="append", required=True, help="host:port of a server node (repeat for several nodes)")
    parser.add_argument("--server-pids", default="", help="comma-separated PIDs whose CPU and memory count as the server's")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--ramp", type=float, default=0.5)
    parser.add_argument("--window", type=int, default=8, help="messages in flight at saturation")
    parser.add_argument("--latency-load", type=float, default=0.5)
    parser.add_argument("--latency-deliveries-per-s", type=float, default=0.0, help="also measure latency at this absolute load")
    parser.add_argument("--pad", type=int, default=64)
    parser.add_argument("--burst", type=int, default=3, help="broadcasts to all in the connections scenario")
    parser.add_argument("--idle", type=float, default=1.0)
    parser.add_argument("--connect-concurrency", type=int, default=200, help="handshakes in progress at once")
    parser.add_argument("--transport", choices=TRANSPORTS, default="websocket", help="how subscribers / room members connect")
    parser.add_argument("--member-nodes", type=int, default=0, help="rooms: members only on the first M targets (0 = all)")
    parser.add_argument("--idle-clients", type=int, default=0, help="rooms: idle connections (no room) on each target past --member-nodes")
    args = parser.parse_args(argv)
    plan = Plan(
        scenario=args.scenario,
        targets=[parse_target(t) for t in args.target],
        subscribers=args.subscribers,
        rooms=args.rooms,
        duration=args.duration,
        ramp=args.ramp,
        window=args.window,
        latency_load=args.latency_load,
        latency_deliveries_per_s=args.latency_deliveries_per_s,
        pad=args.pad,
        burst=args.burst,
        idle=args.idle,
        transport=args.transport,
        connect_concurrency=args.connect_concurrency,
        member_nodes=args.member_nodes,
        idle_clients=args.idle_clients,
        server_pids=[int(p) for p in args.server_pids.split(",") if p],
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        result = asyncio.run(run_plan(plan))
    except (LoadgenError, OSError, asyncio.TimeoutError) as exc:
        print(orjson.dumps({"scenario": plan.scenario, "error": f"{type(exc).__name__}: {exc}"}).decode(), flush=True)
        sys.exit(1)
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
