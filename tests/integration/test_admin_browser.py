"""A real browser on the admin UI the gateway serves: headless Chromium (Debian's `chromium`,
driven by puppeteer-core, which downloads no browser) opens /admin/ on node A of a two-node
cluster (`python -m gateway`, ADMIN_UI=true, ADMIN_UI_DIR = the UI `make admin-ui` installs, one
redis-server), is refused with a wrong password, logs in with the right one, and shows both
nodes on the servers page and the sockets of both nodes (Node.js socket.io-client) on the
sockets page.

The browser script (tests/browser/admin_ui.mjs) reports what the page showed; the assertions are
here. Its screenshots go to the test's folder; with SIO_ADMIN_SCREENSHOTS=<folder> they are also
copied there (`SIO_ADMIN_SCREENSHOTS=docs` makes docs/admin-ui*.png).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServerProcess
from tests.gateway_process import REPO, GatewayProcess
from tests.integration.test_admin import PASSWORD, USERNAME, admin_env
from tests.node_driver import NodeDriver

BROWSER_DIR = REPO / "tests" / "browser"
BROWSER_SCRIPT = BROWSER_DIR / "admin_ui.mjs"
ADMIN_UI_DIR = REPO / "admin-ui" / "node_modules" / "@socket.io" / "admin-ui" / "ui" / "dist"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
STEP_MS = 15000
# What the browser script saves, and the names `SIO_ADMIN_SCREENSHOTS=docs` publishes them under.
SCREENSHOTS = {"servers.png": "admin-ui.png", "sockets.png": "admin-ui-sockets.png"}
# The whole browser run: launch, two logins, three pages; killed (its process group) beyond.
BROWSER_BUDGET_S = 60.0


def require_installed() -> None:
    """The pieces `make install-test` (and .ci/run) install; missing ones fail, never skip."""
    missing = []
    if not (BROWSER_DIR / "node_modules" / "puppeteer-core").is_dir():
        missing.append("tests/browser/node_modules (make install-test)")
    if not (ADMIN_UI_DIR / "index.html").is_file():
        missing.append(f"{ADMIN_UI_DIR.relative_to(REPO)} (make admin-ui)")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    assert not missing, "admin UI browser test needs: " + ", ".join(missing)


class Cluster:
    def __init__(self, redis: RedisServerProcess, log_dir: Path) -> None:
        env = admin_env(redis.url, ADMIN_UI_DIR=str(ADMIN_UI_DIR))
        self.a = GatewayProcess("gateway", env=env, log_dir=log_dir)
        self.b = GatewayProcess("gateway", env=env, log_dir=log_dir)

    def nodes(self) -> tuple[GatewayProcess, GatewayProcess]:
        return self.a, self.b

    @staticmethod
    def server_id(node: GatewayProcess) -> str:
        """The admin UI's serverId of a node: hostname#pid, as @socket.io/admin-ui names them."""
        return f"{socket.gethostname()}#{node.pid}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_installed()
    redis = RedisServerProcess(tmp_path)
    redis.start()
    nodes = Cluster(redis, tmp_path)
    try:
        for node in nodes.nodes():
            node.start()
        yield nodes
    finally:
        for node in nodes.nodes():
            node.stop(timeout=5)
        redis.stop(signal.SIGKILL)


@pytest.fixture
async def clients() -> AsyncIterator[NodeDriver]:
    driver = NodeDriver(label="admin-browser-clients")
    await driver.start()
    try:
        yield driver
    finally:
        await driver.close()


async def run_browser(options: dict[str, Any]) -> dict[str, Any]:
    """Run the browser script with `options`; its report, or a failure naming its output."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(BROWSER_SCRIPT),
        json.dumps(options),
        cwd=BROWSER_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHROMIUM": str(CHROMIUM)},
        start_new_session=True,  # node and its chromium, stopped as one group
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BROWSER_BUDGET_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise AssertionError(f"browser run took more than {BROWSER_BUDGET_S}s")
    finally:
        # Chromium's helpers may outlive a crashed node: the group goes in any case.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = out.decode(errors="replace").strip().splitlines()
    assert lines, f"browser script printed nothing (exit {proc.returncode}): {err.decode(errors='replace')[-2000:]}"
    report = json.loads(lines[-1])
    assert report["ok"], f"browser run failed: {report.get('error')}\nsteps: {report['steps']}\n{err.decode(errors='replace')[-2000:]}"
    return report


def steps(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [step for step in report["steps"] if step["name"] == name]


async def test_browser_logs_in_and_shows_both_nodes_and_their_sockets(cluster: Cluster, clients: NodeDriver, tmp_path: Path) -> None:
    ids = []
    for i, node in enumerate(cluster.nodes() * 2):  # two sockets on each node
        connected = await clients.call("client.connect", name=f"user-{i}", url=node.url, opts={"transports": ["websocket"]})
        ids.append(connected["id"])

    public_url = cluster.a.url
    report = await run_browser(
        {
            "ui": public_url + "/admin/",
            "serverUrl": public_url,
            "logins": [{"username": USERNAME, "password": "not-" + PASSWORD}, {"username": USERNAME, "password": PASSWORD}],
            "expectServers": 2,
            "expectSockets": ids,
            "screenshots": str(tmp_path),
            "timeoutMs": STEP_MS,
        }
    )

    (opened,) = steps(report, "open")
    assert opened["status"] == 200 and opened["contentType"].startswith("text/html")
    (loaded,) = steps(report, "loaded")
    assert loaded["title"] == "Socket.IO Admin UI"
    # Served by the gateway, the UI starts pointed at the origin it came from.
    assert loaded["seeded"] == {"serverUrl": public_url, "path": "/socket.io", "origin": public_url}
    assert report["pageErrors"] == []
    # Only foreign requests were aborted (the CDN font links of the page), none to the gateway.
    assert all(not url.startswith(public_url) for url in report["blocked"])

    wrong, right = steps(report, "login")
    assert wrong["open"] and any("Invalid credentials" in text for text in wrong["error"]), wrong
    assert right == {"name": "login", "username": USERNAME, "open": False}

    (servers,) = steps(report, "servers")
    # One row per node (ID, hostname, PID, uptime, clients, last ping, status): each node's two
    # users, and on node A the browser's own admin connection too.
    clients_by_server = {row[0]: row[4] for row in servers["rows"]}
    assert clients_by_server == {cluster.server_id(cluster.a): "3", cluster.server_id(cluster.b): "2"}, servers["rows"]
    assert all(row[6] == "Healthy" for row in servers["rows"]), servers["rows"]
    (sockets,) = steps(report, "sockets")
    shown = {cell for row in sockets["rows"] for cell in row}
    assert set(ids) <= shown, (ids, sockets["rows"])

    for name in (*SCREENSHOTS, "dashboard.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
    docs = os.environ.get("SIO_ADMIN_SCREENSHOTS")
    if docs:
        for name, published in SCREENSHOTS.items():
            shutil.copyfile(tmp_path / name, Path(docs) / published)
