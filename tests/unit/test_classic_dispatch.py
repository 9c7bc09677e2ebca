"""What the classic transport does with a message its pattern subscription brings, before any
decoding: our own broadcasts and broadcasts to rooms without a member here are dropped on their
first bytes and channel name (spec 2.3 rule 2); everything else reaches the namespace.

No Redis is involved: the transport's dispatch takes the arrays the RESP parser produces, and
the rooms come from the same registry hooks the cluster adapter installs."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest

from gateway.cluster.classic import ClassicTransport
from gateway.config import Settings
from gateway.rooms import RoomRegistry
from protocol.cluster import Broadcast, classic
from protocol.cluster.messages import BroadcastOptions


class Member:
    """A namespace's side of the transport: records the broadcasts that got through."""

    def __init__(self, transport: ClassicTransport, uid: str = "ownuid", name: str = "/") -> None:
        self.uid = uid
        self.name = name
        self.registry: RoomRegistry[Any] = RoomRegistry()
        self.registry.on_room_created = lambda room: transport.watch(self, room)
        self.registry.on_room_deleted = lambda room: transport.unwatch(self, room)
        self.received: list[Broadcast] = []
        transport.register(self)

    def on_broadcast(self, message: Broadcast) -> None:
        self.received.append(message)

    def on_message(self, message: Any) -> None:
        pass


@pytest.fixture
def transport() -> ClassicTransport:
    return ClassicTransport(Settings(redis_url="redis://127.0.0.1:1"))


def pmessage(channel: str, payload: bytes, pattern: str = "socket.io#/#*") -> list[Any]:
    """The array hiredis parses from the push Redis sends a pattern subscriber."""
    raw = b"*4\r\n$8\r\npmessage\r\n"
    for part in (pattern.encode(), channel.encode(), payload):
        raw += b"$%d\r\n%s\r\n" % (len(part), part)
    reader = hiredis.Reader()
    reader.feed(raw)
    return reader.gets()


def broadcast(uid: str, rooms: list[Any]) -> bytes:
    return classic.encode_classic_broadcast(uid, "/", ["message", {"text": "hi"}], BroadcastOptions(rooms, [], {}))


def test_member_room_gets_through_and_others_are_dropped(transport: ClassicTransport) -> None:
    member = Member(transport)
    sock = object()
    member.registry.join(sock, ["company:1"])
    transport._dispatch(pmessage("socket.io#/#company:1#", broadcast("peer01", ["company:1"])))
    transport._dispatch(pmessage("socket.io#/#company:2#", broadcast("peer01", ["company:2"])))
    assert [m.opts.rooms for m in member.received] == [["company:1"]]
    # The room empties: its channel is forgotten with it.
    member.registry.leave(sock, "company:1")
    transport._dispatch(pmessage("socket.io#/#company:1#", broadcast("peer01", ["company:1"])))
    assert len(member.received) == 1


def test_own_broadcast_is_dropped_undecoded(transport: ClassicTransport) -> None:
    member = Member(transport, uid="ownuid")
    member.registry.join(object(), ["r"])
    # Not even decodable past its prefix: proof that nothing but the first bytes were read.
    own = classic.broadcast_prefix("ownuid") + b"\xc1garbage"
    transport._dispatch(pmessage("socket.io#/#r#", own))
    assert member.received == [] and transport.stats.bad_messages == 0
    transport._dispatch(pmessage("socket.io#/#r#", broadcast("ownuie", ["r"])))  # one letter off
    assert len(member.received) == 1


def test_broadcast_to_everyone_and_to_several_rooms_is_decoded(transport: ClassicTransport) -> None:
    member = Member(transport)
    transport._dispatch(pmessage("socket.io#/#", broadcast("peer01", [])))
    transport._dispatch(pmessage("socket.io#/#", broadcast("peer01", ["a", "b"])))
    assert len(member.received) == 2


def test_shared_channel_of_room_5_and_room_text_5(transport: ClassicTransport) -> None:
    member = Member(transport)
    a, b = object(), object()
    member.registry.join(a, [5])
    member.registry.join(b, ["5"])
    member.registry.leave(a, 5)  # "5" still has a member: the channel stays known
    transport._dispatch(pmessage("socket.io#/#5#", broadcast("peer01", ["5"])))
    assert len(member.received) == 1


def test_numeric_room_spelled_otherwise_is_rechecked(transport: ClassicTransport) -> None:
    # Node delivers "5.0" to a local numeric room 5 (rooms.has(parseFloat(room))).
    member = Member(transport)
    member.registry.join(object(), [5])
    transport._dispatch(pmessage("socket.io#/#5.0#", broadcast("peer01", ["5.0"])))
    assert len(member.received) == 1
