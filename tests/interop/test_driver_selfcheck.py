"""End-to-end checks of the Node harness itself, Node talking only to Node.

If these fail, interop failures against the gateway would be meaningless, so
they exercise every driver feature the gateway tests lean on: transports and
upgrade, rooms, broadcast with except, acks in both directions, binary
payloads, the Redis adapter across two Node processes, and the emitter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.node_driver import NodeCallError, NodeDriver
from tests.ports import free_port

BINARY = bytes(range(256))


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 3.0) -> Any:
    """Retry an async check until it returns a truthy value (cross-process effects are asynchronous)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_node_server_and_clients_without_redis() -> None:
    async with NodeDriver(label="solo") as node:
        port = (await node.call("server.start", port=free_port(), host="127.0.0.1", adapter="none"))["port"]
        url = f"http://127.0.0.1:{port}"

        a = await node.call("client.connect", name="a", url=url, opts={"auth": {"token": "a"}})
        b = await node.call(
            "client.connect", name="b", url=url, opts={"transports": ["websocket"], "auth": {"token": "b"}}
        )
        assert a["id"] != b["id"]

        # default transports start with long-polling and upgrade; websocket-only never upgrades
        upgrade = await node.wait_event(ev="upgrade", name="a")
        assert upgrade["transport"] == "websocket"
        assert await node.call("client.transport", name="a") == "websocket"
        assert b["transport"] == "websocket"
        for name, info in (("a", a), ("b", b)):
            welcome = await node.wait_event(ev="event", name=name, event="welcome")
            assert welcome["args"] == [{"id": info["id"], "nsp": "/"}]
            assert welcome["ack"] is False
        assert await node.call("client.list") == {
            "a": {"connected": True, "id": a["id"]},
            "b": {"connected": True, "id": b["id"]},
        }

        # rooms, with the server acknowledging the resulting room set
        rooms_a = await node.call("client.emit", name="a", event="join", args=["room1"], ack=True)
        assert sorted(rooms_a[0]) == sorted([a["id"], "room1"])
        await node.call("client.emit", name="b", event="join", args=["room1"], ack=True)
        rooms_b = await node.call("client.emit", name="b", event="join", args=["room2"], ack=True)
        assert sorted(rooms_b[0]) == sorted([b["id"], "room1", "room2"])

        # broadcast to room1 except room2 reaches a only; the marker proves b saw nothing before it
        spec = {"rooms": ["room1"], "except": ["room2"], "event": "news", "args": ["hi", 1]}
        assert await node.call("client.emit", name="a", event="broadcast", args=[spec], ack=True) == [True]
        news = await node.wait_event(ev="event", name="a", event="news")
        assert news["args"] == ["hi", 1]
        await node.call("server.broadcast", rooms=["room2"], event="marker", args=[])
        await node.wait_event(ev="event", name="b", event="marker")
        assert not [e for e in node.pending_events() if e.get("name") == "b" and e.get("event") == "news"]

        # client -> server ack with every ack argument, binary nested at any depth
        payload = ["x", BINARY, {"nested": [b"\x00\xff"], "n": None}]
        assert await node.call("client.emit", name="b", event="echo", args=payload, ack=True) == payload
        # no ack requested -> the server emits "echo" back, binary intact
        await node.call("client.emit", name="a", event="echo", args=[b"\x01\x02", 3])
        echoed = await node.wait_event(ev="event", name="a", event="echo")
        assert echoed["args"] == [b"\x01\x02", 3]

        # server -> client acks: b answers with its configured reply, a with the default
        await node.call("client.ack_reply", name="b", event="question", args=["b-answer", b"\x09"])
        answers = await node.call("server.broadcast_ack", rooms=["room1"], event="question", args=[7], timeout=2000)
        assert sorted(answers) == ["ack:question", "b-answer"]
        asked = await node.wait_event(ev="event", name="a", event="question")
        assert asked["ack"] is True and asked["args"] == [7]

        # an unanswered ack times out on the client side as an error reply
        with pytest.raises(NodeCallError, match="timed out"):
            await node.call("client.emit", name="a", event="nobody-answers", args=[], ack=True, timeout=200)

        # server-side selectors
        fetched = await node.call("server.fetch_sockets", rooms=["room2"])
        assert fetched == [
            {
                "id": b["id"],
                "rooms": fetched[0]["rooms"],
                "data": {"server": "node", "auth": {"token": "b"}},
                "auth": {"token": "b"},
            }
        ]
        assert sorted(fetched[0]["rooms"]) == sorted([b["id"], "room1", "room2"])
        await node.call("server.sockets_join", rooms=[a["id"]], join=["joined-by-server"])
        assert [s["id"] for s in await node.call("server.fetch_sockets", rooms=["joined-by-server"])] == [a["id"]]
        await node.call("server.sockets_leave", rooms=[a["id"]], leave="joined-by-server")
        assert await node.call("server.fetch_sockets", rooms=["joined-by-server"]) == []

        # the /chat namespace runs the same test app; unknown namespaces are refused
        chat = await node.call("client.connect", name="c", url=url, nsp="/chat", opts={"transports": ["websocket"]})
        welcome = await node.wait_event(ev="event", name="c", event="welcome")
        assert welcome["args"] == [{"id": chat["id"], "nsp": "/chat"}]
        with pytest.raises(NodeCallError, match="Invalid namespace"):
            await node.call("client.connect", name="bad", url=url, nsp="/nope", opts={"reconnection": False})

        # server-initiated disconnect reaches the client
        await node.call("server.disconnect_sockets", rooms=["room2"], close=False)
        gone = await node.wait_event(ev="disconnect", name="b")
        assert gone["reason"] == "io server disconnect"

        with pytest.raises(NodeCallError, match="unknown command"):
            await node.call("no.such.command")
        with pytest.raises(NodeCallError, match="unknown client"):
            await node.call("client.emit", name="ghost", event="x", args=[])
        await node.call("server.stop")
    assert node.running is False


@pytest.mark.asyncio
async def test_two_node_servers_over_redis_adapter(redis_server: Any) -> None:
    async with NodeDriver(label="n1") as n1, NodeDriver(label="n2") as n2:
        common = {"host": "127.0.0.1", "adapter": "redis", "redisUrl": redis_server.url, "requestsTimeout": 2000}
        port1 = (await n1.call("server.start", port=free_port(), **common))["port"]
        port2 = (await n2.call("server.start", port=free_port(), **common))["port"]
        assert port1 != port2

        # clients live in n1's process but connect to different servers
        x = await n1.call("client.connect", name="x", url=f"http://127.0.0.1:{port1}", opts={"auth": {"who": "x"}})
        y = await n1.call(
            "client.connect",
            name="y",
            url=f"http://127.0.0.1:{port2}",
            opts={"transports": ["websocket"], "auth": {"who": "y"}},
        )
        for name in ("x", "y"):
            await n1.call("client.emit", name=name, event="join", args=["shared"], ack=True)

        # broadcast from server 1 reaches the socket held by server 2, and vice versa via a client request
        await n1.call("server.broadcast", rooms=["shared"], except_=[x["id"]], event="cross", args=[BINARY])
        cross = await n1.wait_event(ev="event", name="y", event="cross")
        assert cross["args"] == [BINARY]
        spec = {"rooms": ["shared"], "except": [y["id"]], "event": "from-y", "args": ["hey"]}
        await n1.call("client.emit", name="y", event="broadcast", args=[spec], ack=True)
        assert (await n1.wait_event(ev="event", name="x", event="from-y"))["args"] == ["hey"]
        # x was excluded from "cross", which server 1 would have delivered locally before "from-y"
        assert not [e for e in n1.pending_events() if e.get("name") == "x" and e.get("event") == "cross"]

        # fetchSockets on either server sees both sockets with their data
        for driver in (n1, n2):
            sockets = await driver.call("server.fetch_sockets", rooms=["shared"])
            assert sorted(s["id"] for s in sockets) == sorted([x["id"], y["id"]])
            assert sorted(s["auth"]["who"] for s in sockets) == ["x", "y"]
            assert all(s["data"]["server"] == "node" for s in sockets)

        # serverSideEmit with ack returns the other server's answer, which logs the event
        responses = await n1.call("server.server_side_emit", event="ping-servers", args=["p1"], ack=True, timeout=3000)
        assert responses == [{"server": "node", "arg": "p1"}]
        seen = await n2.wait_event(ev="server_side", event="ping-servers")
        assert seen["args"] == ["p1"]

        # remote room management through the adapter
        await n1.call("server.sockets_join", rooms=[y["id"]], join=["remote-joined"])
        joined = await eventually(lambda: n2.call("server.fetch_sockets", rooms=["remote-joined"]))
        assert [s["id"] for s in joined] == [y["id"]]

        # the emitter (no Socket.IO server of its own) reaches clients on both servers
        await n2.call("emitter.start", redisUrl=redis_server.url)
        await n2.call("emitter.emit", rooms=["shared"], event="from-emitter", args=[b"\x00\x01", "e"])
        for name in ("x", "y"):
            got = await n1.wait_event(ev="event", name=name, event="from-emitter")
            assert got["args"] == [b"\x00\x01", "e"]
        await n2.call("emitter.disconnect_sockets", rooms=[x["id"]], close=False)
        assert (await n1.wait_event(ev="disconnect", name="x"))["reason"] == "io server disconnect"

        await n1.call("server.stop")
        await n2.call("server.stop")
