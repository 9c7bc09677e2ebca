"""One admin dashboard over a mixed cluster: a Node.js socket.io 4.8 server instrumented with
@socket.io/admin-ui 0.5.1 (`instrument(io, ...)`, @socket.io/redis-adapter) and a gateway node
(`python -m gateway`, ADMIN_UI=true) on one redis-server.

The admin client (Node socket.io-client, what the UI runs) logs in on either server and sees
both servers' `server_stats` and both servers' sockets in `all_sockets`: the gateway answers
fetchSockets with `data._admin` ({clientId, transport}) as instrument() sets it in Node.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServerProcess
from tests.gateway_process import GatewayProcess
from tests.integration.test_admin import PASSWORD, PASSWORD_HASH, USERNAME, admin_env, stats_from, wait_args
from tests.node_driver import NodeDriver

WS = {"transports": ["websocket"]}
NODE_SERVER_ID = "node-admin-ui"
STEP = 5.0


@dataclass
class Dashboard:
    driver: NodeDriver
    gateway: GatewayProcess
    node_url: str

    @property
    def gateway_id(self) -> str:
        return f"{socket.gethostname()}#{self.gateway.pid}"

    async def login(self, name: str, url: str) -> None:
        await self.driver.call("client.connect", name=name, url=url, nsp="/admin", opts={**WS, "auth": {"username": USERNAME, "password": PASSWORD}})


async def wait_admin_servers(url: str, count: int, timeout: float = STEP) -> None:
    """Both servers subscribe to /admin's and /'s request channels (fetchSockets counts on it)."""
    client = aioredis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            numsub = dict(await client.pubsub_numsub("socket.io-request#/admin#", "socket.io-request#/#"))
            if all(n == count for n in numsub.values()):
                return
            assert time.monotonic() < deadline, f"expected {count} servers, NUMSUB says {numsub}"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@pytest.fixture
async def dashboard(redis_server: RedisServerProcess, tmp_path: Path) -> AsyncIterator[Dashboard]:
    driver = NodeDriver(label="admin-mixed")
    await driver.start()
    gateway = GatewayProcess("gateway", env=admin_env(redis_server.url), log_dir=tmp_path)
    try:
        started = await driver.call(
            "server.start",
            adapter="redis",
            redisUrl=redis_server.url,
            admin={"auth": {"type": "basic", "username": USERNAME, "password": PASSWORD_HASH}, "mode": "development", "serverId": NODE_SERVER_ID},
        )
        gateway.start()
        await wait_admin_servers(redis_server.url, 2)
        yield Dashboard(driver, gateway, f"http://127.0.0.1:{started['port']}")
    finally:
        gateway.stop(timeout=5)
        await driver.close()
        redis_server.stop(signal.SIGKILL)


def sockets_by_id(sockets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in sockets}


@pytest.mark.parametrize("login_on", ["gateway", "node"])
async def test_one_dashboard_shows_node_and_gateway_servers_and_sockets(dashboard: Dashboard, login_on: str) -> None:
    driver = dashboard.driver
    on_gateway = await driver.call("client.connect", name="on-gateway", url=dashboard.gateway.url, opts=WS)
    on_node = await driver.call("client.connect", name="on-node", url=dashboard.node_url, opts=WS)

    await dashboard.login("ui", dashboard.gateway.url if login_on == "gateway" else dashboard.node_url)
    (config,) = await wait_args(driver, "ui", "config")
    assert "ALL_EVENTS" in config["supportedFeatures"] and "MDISCONNECT" in config["supportedFeatures"]

    stats = await stats_from(driver, "ui", {NODE_SERVER_ID, dashboard.gateway_id})
    assert stats[dashboard.gateway_id]["pid"] == dashboard.gateway.pid
    assert any(n["name"] == "/" and n["socketsCount"] >= 1 for n in stats[NODE_SERVER_ID]["namespaces"])
    assert any(n["name"] == "/" and n["socketsCount"] >= 1 for n in stats[dashboard.gateway_id]["namespaces"])

    (sockets,) = await wait_args(driver, "ui", "all_sockets")
    found = sockets_by_id(sockets)
    assert on_gateway["id"] in found and on_node["id"] in found, sorted(found)
    for sid in (on_gateway["id"], on_node["id"]):
        entry = found[sid]
        assert entry["nsp"] == "/" and entry["transport"] == "websocket", entry
        assert isinstance(entry["clientId"], str) and len(entry["clientId"]) == 12, entry
        assert sid in entry["rooms"]
    # The admin sockets are listed too, whichever server holds them.
    assert any(s["nsp"] == "/admin" for s in sockets)

    # A socket connecting later is announced by its own server to the admin on either one.
    later = await driver.call("client.connect", name="later", url=dashboard.gateway.url, opts=WS)
    (announced, _when) = await wait_args(driver, "ui", "socket_connected", lambda args: args[0]["id"] == later["id"])
    assert announced["transport"] == "websocket" and announced["nsp"] == "/"

