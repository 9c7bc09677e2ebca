"""Room grants from token claims, and the client event rules."""

from __future__ import annotations

import pytest

from gateway.policy import ClientEventPolicy, Grants, PolicyError, RoomPatterns, company_room, compile_pattern, conversation_room, room_name


def test_companies_and_conversations_grant_their_rooms_only() -> None:
    grants = Grants.from_claims({"sub": "u1", "companies": ["A", 42], "conversations": ["c-1"]})
    assert grants.allows("company:A") and grants.allows("company:42") and grants.allows("conversation:c-1")
    assert not grants.allows("company:B")
    assert not grants.allows("company:A2")
    assert not grants.allows("conversation:c-2")
    assert not grants.allows("company:")


def test_the_users_own_room_is_granted() -> None:
    grants = Grants.from_claims({"sub": "u1"})
    assert grants.allows("user:u1")
    assert not grants.allows("user:u2")
    assert grants.home_rooms() == ["user:u1"]


def test_home_rooms_are_the_user_room_and_the_company_rooms() -> None:
    grants = Grants.from_claims({"sub": "u1", "companies": ["B", "A"]})
    assert grants.home_rooms() == ["user:u1", "company:A", "company:B"]


def test_room_patterns_use_star_only() -> None:
    grants = Grants.from_claims({"sub": "u", "rooms": ["team:7:*", "lobby", "a.b"]})
    assert grants.allows("team:7:general") and grants.allows("team:7:")
    assert grants.allows("lobby") and not grants.allows("lobby2")
    assert grants.allows("a.b") and not grants.allows("aXb")  # '.' is literal
    assert not grants.allows("team:8:general")


def test_malformed_claims_grant_nothing() -> None:
    grants = Grants.from_claims({"sub": "u", "companies": {"A": True}, "conversations": [True, None, ""], "rooms": 5})
    assert not grants.allows("company:A")
    assert not grants.allows("conversation:True")
    assert grants.companies == frozenset() and grants.conversations == frozenset() and grants.patterns == ()


def test_single_string_claims_are_accepted() -> None:
    grants = Grants.from_claims({"sub": "u", "companies": "A", "rooms": "x:*"})
    assert grants.allows("company:A") and grants.allows("x:1")


def test_unrestricted_grants_allow_everything() -> None:
    assert Grants.everything("dev").allows("company:anything")


def test_room_names_from_events_are_validated() -> None:
    assert company_room(5) == "company:5"
    assert conversation_room("x") == "conversation:x"
    for bad in (None, True, 1.5, "", "x" * 129, ["A"]):
        with pytest.raises(PolicyError):
            company_room(bad)
    with pytest.raises(PolicyError):
        room_name("r" * 201)
    with pytest.raises(PolicyError):
        room_name(7)


def test_client_events_need_a_rule_and_membership() -> None:
    policy = ClientEventPolicy(["typing:conversation:*"])
    assert policy.events == ["typing"]
    assert policy.allows("typing", "conversation:1", {"sid", "conversation:1"})
    assert not policy.allows("typing", "conversation:2", {"sid", "conversation:1"})  # not joined
    assert not policy.allows("typing", "company:A", {"company:A"})  # no rule for that room
    assert not policy.allows("message:new", "conversation:1", {"conversation:1"})  # no rule for that event


def test_rule_syntax_is_checked() -> None:
    with pytest.raises(PolicyError):
        ClientEventPolicy(["typing"])


def test_presence_room_patterns() -> None:
    patterns = RoomPatterns(["company:*", "conversation:*"])
    assert patterns.matches("company:A") and patterns.matches("conversation:1")
    assert not patterns.matches("user:1") and not patterns.matches(5)
    assert not RoomPatterns([])
    assert compile_pattern("*").fullmatch("anything\nat all")
