"""Who may be in which room, and which client events may reach other clients.

The gateway trusts nothing a client says about itself: what a socket may join comes only from its
verified token's claims. Three claims grant rooms:

- `companies: ["acme", 42]`        -> `company:acme`, `company:42`
- `conversations: ["c-1"]`         -> `conversation:c-1`
- `rooms: ["team:7:*", "lobby"]`   -> room patterns, `*` matching any run of characters

Clients talk to each other only through `CLIENT_EVENTS` rules such as `typing:conversation:*`:
the event `typing` may be relayed to a room matching `conversation:*` that the socket has joined.
Everything else reaches clients through the backend (the publish API or the Emitter).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

COMPANY_PREFIX = "company:"
CONVERSATION_PREFIX = "conversation:"
USER_PREFIX = "user:"
MAX_ROOM_LENGTH = 200
MAX_ID_LENGTH = 128


class PolicyError(ValueError):
    """A room name or identifier that no rule could ever grant (malformed, too long)."""


def compile_pattern(pattern: str) -> "re.Pattern[str]":
    """A room pattern: literal text where `*` matches any run of characters (none included).
    No other character is special, so room names with dots or brackets mean themselves."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _ids(value: Any) -> frozenset[str]:
    """A claim listing identifiers; strings and integers count, anything else is ignored."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return frozenset()
    return frozenset(str(v) for v in value if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v))


def room_id(value: Any) -> str:
    """The identifier a `join:company` / `join:conversation` event names, as text."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PolicyError("the identifier must be a string or an integer")
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH:
        raise PolicyError(f"the identifier must have 1 to {MAX_ID_LENGTH} characters")
    return text


def room_name(value: Any) -> str:
    """A room named by `subscribe` / `presence:list`."""
    if not isinstance(value, str) or not value:
        raise PolicyError("room must be a non-empty string")
    if len(value) > MAX_ROOM_LENGTH:
        raise PolicyError(f"room names are at most {MAX_ROOM_LENGTH} characters")
    return value


def company_room(company: Any) -> str:
    return COMPANY_PREFIX + room_id(company)


def conversation_room(conversation: Any) -> str:
    return CONVERSATION_PREFIX + room_id(conversation)


@dataclass(frozen=True)
class Grants:
    """The rooms one socket may join, decided once from its token."""

    companies: frozenset[str] = frozenset()
    conversations: frozenset[str] = frozenset()
    patterns: tuple["re.Pattern[str]", ...] = ()
    unrestricted: bool = False
    user: str | None = None

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> "Grants":
        raw_patterns = claims.get("rooms")
        if isinstance(raw_patterns, str):
            raw_patterns = [raw_patterns]
        patterns = tuple(compile_pattern(p) for p in raw_patterns or () if isinstance(p, str) and p) if isinstance(raw_patterns, (list, tuple)) else ()
        sub = claims.get("sub")
        return cls(
            companies=_ids(claims.get("companies")),
            conversations=_ids(claims.get("conversations")),
            patterns=patterns,
            user=str(sub) if isinstance(sub, (str, int)) and not isinstance(sub, bool) else None,
        )

    @classmethod
    def everything(cls, user: str | None = None) -> "Grants":
        """AUTH_MODE=none: any room (development only)."""
        return cls(unrestricted=True, user=user)

    def allows(self, room: str) -> bool:
        if self.unrestricted:
            return True
        if room.startswith(COMPANY_PREFIX) and room[len(COMPANY_PREFIX):] in self.companies:
            return True
        if room.startswith(CONVERSATION_PREFIX) and room[len(CONVERSATION_PREFIX):] in self.conversations:
            return True
        if self.user is not None and room == USER_PREFIX + self.user:
            return True
        return any(p.fullmatch(room) for p in self.patterns)

    def home_rooms(self) -> list[str]:
        """Rooms a socket is put in on connect: its user's room and its companies' rooms."""
        rooms = [USER_PREFIX + self.user] if self.user is not None else []
        rooms.extend(COMPANY_PREFIX + c for c in sorted(self.companies))
        return rooms


@dataclass(frozen=True)
class ClientEventRule:
    """`event` may be relayed by a client to a joined room matching `room_pattern`."""

    event: str
    room_pattern: str
    _compiled: "re.Pattern[str]" = field(compare=False, repr=False, default=None)  # type: ignore[assignment]

    @classmethod
    def parse(cls, text: str) -> "ClientEventRule":
        event, _, pattern = text.partition(":")
        if not event or not pattern:
            raise PolicyError(f"a client event rule is event:room-pattern, got {text!r}")
        return cls(event, pattern, compile_pattern(pattern))

    def covers(self, room: str) -> bool:
        return self._compiled.fullmatch(room) is not None


class ClientEventPolicy:
    """The CLIENT_EVENTS rules, by event name."""

    def __init__(self, rules: Iterable[str]) -> None:
        self.rules: dict[str, list[ClientEventRule]] = {}
        for text in rules:
            rule = ClientEventRule.parse(text)
            self.rules.setdefault(rule.event, []).append(rule)

    @property
    def events(self) -> list[str]:
        return list(self.rules)

    def allows(self, event: str, room: str, joined: Iterable[Any]) -> bool:
        """Relaying `event` to `room` needs a rule for it and the sender's membership."""
        rules = self.rules.get(event)
        if not rules or room not in set(joined):
            return False
        return any(rule.covers(room) for rule in rules)


class RoomPatterns:
    """A set of room patterns (PRESENCE_ROOMS)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self._compiled = [compile_pattern(p) for p in patterns if p]

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def matches(self, room: Any) -> bool:
        return isinstance(room, str) and any(p.fullmatch(room) for p in self._compiled)
