"""What the channel-name check costs by itself, in process: the part of a non-member message
that is ours to make cheap.

In classic mode every node hears every broadcast (one pattern subscription per namespace) and
must drop those for rooms it has no member of. The `rooms-non-member` run measures the whole
bill of such a node (the kernel's receive, the event loop's wake-up, our code); this measures
our code alone, on the same objects the node uses: raw pushes as Redis sends them, parsed by
hiredis in batches as one socket read brings them, handed to the classic transport's dispatch
with a namespace that holds `rooms` rooms, none of them the message's.

    .venv/bin/python -m bench.channel_check
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import hiredis

from gateway.cluster.classic import ClassicTransport
from gateway.config import Settings
from gateway.rooms import RoomRegistry
from protocol.cluster import Broadcast, classic
from protocol.cluster.messages import BroadcastOptions

BATCH = 8  # messages per socket read at the bench's rates (a read carries a few)


class IdleNamespace:
    """A namespace's side of the transport holding members in other rooms only."""

    def __init__(self, transport: ClassicTransport, rooms: int) -> None:
        self.uid = "idle00"
        self.name = "/"
        self.registry: RoomRegistry[Any] = RoomRegistry()
        self.registry.on_room_created = lambda room: transport.watch(self, room)
        self.registry.on_room_deleted = lambda room: transport.unwatch(self, room)
        self.delivered = 0
        transport.register(self)
        for index in range(rooms):
            self.registry.join(object(), [f"idle-room-{index}"])

    def on_broadcast(self, message: Broadcast) -> None:
        self.delivered += 1

    def on_message(self, message: Any) -> None:
        pass


def push(channel: str, payload: bytes, pattern: str = "socket.io#/#*") -> bytes:
    """The bytes of the push Redis sends a pattern subscriber."""
    raw = b"*4\r\n$8\r\npmessage\r\n"
    for part in (pattern.encode(), channel.encode(), payload):
        raw += b"$%d\r\n%s\r\n" % (len(part), part)
    return raw


def measure(messages: int = 200_000, rooms: int = 1000) -> dict[str, float]:
    """µs per message: `check` (dispatch of an already parsed push) and `parse_and_check`
    (hiredis parse of a read's worth of pushes, then dispatch), best of five rounds."""
    transport = ClassicTransport(Settings(redis_url="redis://127.0.0.1:1"))
    namespace = IdleNamespace(transport, rooms)
    payloads = []
    for index in range(BATCH):
        room = f"conversation:{index}"
        data = ["message", {"room": room, "t": 1796209253753.4583, "seq": index, "pad": "x" * 64}]
        wire = classic.encode_classic_broadcast("peer01", "/", data, BroadcastOptions([room], [], {}))
        payloads.append(push(f"socket.io#/#{room}#", wire))
    read = b"".join(payloads)
    parser = hiredis.Reader()
    parser.feed(read)
    parsed = [parser.gets() for _ in range(BATCH)]
    dispatch = transport._dispatch
    rounds = max(1, messages // BATCH)

    def check() -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            for reply in parsed:
                dispatch(reply)
        return time.perf_counter() - start

    def parse_and_check() -> float:
        reader = hiredis.Reader()
        start = time.perf_counter()
        for _ in range(rounds):
            reader.feed(read)
            reply = reader.gets()
            while reply is not False:
                dispatch(reply)
                reply = reader.gets()
        return time.perf_counter() - start

    results = {}
    for name, fn in (("check", check), ("parse_and_check", parse_and_check)):
        best = min(fn() for _ in range(5))
        results[f"{name}_us_per_message"] = round(best * 1e6 / (rounds * BATCH), 3)
    if namespace.delivered:
        raise AssertionError("a message for a room without a member got through the check")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rooms", type=int, default=1000)
    args = parser.parse_args()
    for key, value in measure(args.messages, args.rooms).items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
