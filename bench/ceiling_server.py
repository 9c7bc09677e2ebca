"""A trivial server that does the least a gateway could: the load generator's ceiling.

    .venv/bin/python -m bench.ceiling_server --port P

It speaks just enough Engine.IO/Socket.IO for the bench contract (open, namespace connect, pong,
`join`, `publish`) and turns a `publish` into one pre-encoded WebSocket frame written as-is to
every member of the room: no packet objects, no JSON re-encoding (the object is sliced out of the
inbound text), no timers. What the generator reaches against it is the most this box can show for
a scenario, so a result near it is generator-bound rather than server-bound.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import signal

import orjson

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
OPEN = b'0{"sid":"%s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'
PUBLISH_PREFIX = b'42["publish",'
JOIN_PREFIX = b'42["join",'


def server_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def unmask(payload: bytes, key: bytes) -> bytes:
    if key == b"\0\0\0\0":
        return payload
    n = len(payload)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


class CeilingConnection(asyncio.Protocol):
    ids = itertools.count(1)

    def __init__(self, rooms: dict[bytes, set["CeilingConnection"]]) -> None:
        self.rooms = rooms
        self.joined: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.sid = b"c%d" % next(self.ids)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for room in self.joined:
            members = self.rooms.get(room)
            if members is not None:
                members.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            self.handshake(data[:end])
            data = data[end + 4 :]
            if self.transport is None or self.transport.is_closing():
                return
        n = len(data)
        pos = 0
        while n - pos >= 6:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 8:
                    break
                length = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif length == 127:
                if n - pos < 14:
                    break
                length = int.from_bytes(data[start : start + 8], "big")
                start += 8
            end = start + 4 + length
            if end > n:
                break
            payload = unmask(data[start + 4 : end], data[start : start + 4])
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x1:
                self.on_text(payload)
            elif opcode == 0x8:
                self.transport.close()  # type: ignore[union-attr]
                return
        if pos < n:
            self.buf = data[pos:]

    def handshake(self, head: bytes) -> None:
        key = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if not key:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]
            return
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept
            + b"\r\n\r\n"
            + server_frame(OPEN % self.sid)
        )
        self.upgraded = True

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(PUBLISH_PREFIX):
            body = payload[len(PUBLISH_PREFIX) : -1]
            room = str(orjson.loads(body)["room"]).encode()
            frame = server_frame(b'42["message",' + body + b"]")
            for member in self.rooms.get(room, ()):
                member.transport.write(frame)  # type: ignore[union-attr]
        elif payload.startswith(JOIN_PREFIX):
            room = str(orjson.loads(payload[len(JOIN_PREFIX) : -1])).encode()
            self.rooms.setdefault(room, set()).add(self)
            self.joined.append(room)
        elif payload == b"40":
            self.transport.write(server_frame(b'40{"sid":"%s"}' % self.sid))  # type: ignore[union-attr]


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    rooms: dict[bytes, set[CeilingConnection]] = {}
    server = await loop.create_server(lambda: CeilingConnection(rooms), host, port, backlog=4096)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
