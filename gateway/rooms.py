"""RoomRegistry: room -> members and member -> rooms for one namespace on this process.

Plain dicts of sets, so joining, leaving and iterating members cost a hash operation each. Members
are the Socket objects themselves (not ids), so a broadcast walks a set and writes, with no
lookup per recipient. Room names are usually strings; numeric rooms coming from Node.js peers stay
ints, as in socket.io.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterable, TypeVar

from protocol.cluster.messages import Room

M = TypeVar("M")


class RoomRegistry(Generic[M]):
    """Both directions of membership, kept in step, with hooks for rooms appearing and going."""

    __slots__ = ("rooms", "memberships", "on_room_created", "on_room_deleted")

    def __init__(self) -> None:
        self.rooms: dict[Room, set[M]] = {}
        self.memberships: dict[M, set[Room]] = {}
        # Hooks for whoever mirrors rooms elsewhere (e.g. per-room Redis subscriptions).
        self.on_room_created: Callable[[Room], None] | None = None
        self.on_room_deleted: Callable[[Room], None] | None = None

    def join(self, member: M, rooms: Iterable[Room]) -> None:
        mine = self.memberships.get(member)
        if mine is None:
            mine = self.memberships[member] = set()
        for room in rooms:
            if room in mine:
                continue
            mine.add(room)
            members = self.rooms.get(room)
            if members is None:
                members = self.rooms[room] = set()
                if self.on_room_created is not None:
                    self.on_room_created(room)
            members.add(member)

    def leave(self, member: M, room: Room) -> None:
        mine = self.memberships.get(member)
        if mine is None or room not in mine:
            return
        mine.discard(room)
        self._drop(member, room)

    def leave_all(self, member: M) -> set[Room]:
        mine = self.memberships.pop(member, None)
        if not mine:
            return set()
        for room in mine:
            self._drop(member, room)
        return mine

    def _drop(self, member: M, room: Room) -> None:
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(member)
        if not members:
            del self.rooms[room]
            if self.on_room_deleted is not None:
                self.on_room_deleted(room)

    def rooms_of(self, member: M) -> set[Room]:
        return self.memberships.get(member, set())

    def members(self, rooms: Iterable[Room], except_rooms: Iterable[Room] = ()) -> set[M]:
        """Members of any of `rooms`, minus members of any of `except_rooms`."""
        found: set[M] = set()
        table = self.rooms
        for room in rooms:
            members = table.get(room)
            if members:
                found |= members
        for room in except_rooms:
            members = table.get(room)
            if members:
                found -= members
        return found

    def excluded(self, except_rooms: Iterable[Room]) -> set[M]:
        found: set[M] = set()
        for room in except_rooms:
            members = self.rooms.get(room)
            if members:
                found |= members
        return found
