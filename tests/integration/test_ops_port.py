"""The internal operations port and the Kubernetes-style probes, against real servers on loopback.

- With OPS_PORT set, /health, /health/live, /health/ready, /stats and /metrics answer on the ops
  port only; the public port answers 404 for them and still serves Socket.IO; unset, everything
  stays on the public port (today's behaviour).
- /health/ready is 503 until the cluster adapter has joined (Redis reachable: publisher and
  subscriber up, the probe come back), 200 after, and stays 200 through a later Redis outage
  (while /health says degraded); /health/live is 200 throughout.
- SIGTERM: the ops port keeps answering (ready 503 `draining`) after the public port stopped
  accepting, until the process ends.
- The shipped nginx.conf (rendered as the tests and `make cluster` run it) never lets the ops
  endpoints through, however the path is spelled, while Socket.IO through it still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import socketio

from gateway import Server
from gateway.app import build_server
from gateway.config import ConfigError, Settings
from tests.conftest import RedisServerProcess
from tests.gateway_process import REPO, GatewayProcess, GatewayProcessError
from tests.integration.test_topologies import (  # noqa: F401  (fixtures: started, clients)
    EVENT_TIMEOUT,
    Started,
    clients,
    started,
    wait_health,
)
from tests.ports import LOOPBACK, free_port

OPS_PATHS = ("/health", "/health/live", "/health/ready", "/stats", "/metrics")
STEP_TIMEOUT = 10.0


def get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """GET `url`: (status, body), errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def aget(url: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(get, url)


async def wait_status(url: str, status: int, timeout: float = STEP_TIMEOUT) -> bytes:
    deadline = time.monotonic() + timeout
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        last = await aget(url)
        if last[0] == status:
            return last[1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} not {status} within {timeout}s; last {last}")


class OpsPortProcess(GatewayProcess):
    """A gateway process with OPS_PORT set. Its /health lives on the ops port (the public one
    answers 404), so it is waited for there; everything else is GatewayProcess's."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.ops_port = free_port()
        super().__init__(module, *args, env={**(env or {}), "OPS_PORT": str(self.ops_port)}, log_dir=log_dir)

    @property
    def ops_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ops_port}"

    def start(self, timeout: float = 15.0) -> "OpsPortProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", self.module, "--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayProcessError(f"{self.module} exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                if get(self.ops_url + "/health/ready", 1.0)[0] == 200:
                    return self
            time.sleep(0.05)
        self.kill()
        raise GatewayProcessError(f"{self.module} was not ready on its ops port within {timeout}s: {self.log_tail()}")


@pytest.fixture
async def ops_server() -> AsyncIterator[Server]:
    io = build_server(Settings(port=0, ops_port=0))
    await io.start()
    try:
        yield io
    finally:
        await io.close()


# -- the ops port ----------------------------------------------------------------------------------


async def test_ops_endpoints_answer_only_on_the_ops_port(ops_server: Server) -> None:
    public = f"http://{LOOPBACK}:{ops_server.port}"
    assert ops_server.ops_port is not None and ops_server.ops_port != ops_server.port
    ops = f"http://{LOOPBACK}:{ops_server.ops_port}"

    client = socketio.AsyncClient(reconnection=False)
    await client.connect(public, transports=["websocket"], wait_timeout=EVENT_TIMEOUT)
    try:
        for path in OPS_PATHS:
            status, body = await aget(public + path)
            assert status == 404, (path, status, body)
            status, body = await aget(ops + path)
            assert status == 200, (path, status, body)
        # The Engine.IO endpoint is not on the ops port.
        assert (await aget(ops + "/socket.io/?EIO=4&transport=polling"))[0] == 404

        _, body = await aget(ops + "/health")
        health = json.loads(body)
        assert health["status"] == "healthy" and health["connections"] == 1 and health["adapter"]["mode"] == "memory", health
        assert json.loads((await aget(ops + "/health/live"))[1]) == {"status": "live"}
        assert json.loads((await aget(ops + "/health/ready"))[1]) == {"status": "ready"}
        # The public clients are what the ops port's /metrics counts.
        metrics = (await aget(ops + "/metrics"))[1].decode()
        assert 'sio_gateway_connections{transport="websocket"} 1.0' in metrics, metrics[:2000]
        # Probes only read.
        request = urllib.request.Request(ops + "/health/ready", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=3)
        assert refused.value.code == 405
    finally:
        await client.disconnect()


async def test_without_ops_port_everything_stays_on_the_public_port() -> None:
    io = build_server(Settings(port=0))
    await io.start()
    try:
        assert io.ops_port is None
        public = f"http://{LOOPBACK}:{io.port}"
        for path in OPS_PATHS:
            status, body = await aget(public + path)
            assert status == 200, (path, status, body)
        assert json.loads((await aget(public + "/health"))[1])["status"] == "healthy"
    finally:
        await io.close()


async def test_ready_waits_for_the_cluster_then_outlives_a_redis_outage(tmp_path: Path) -> None:
    redis = RedisServerProcess(tmp_path)  # its port is chosen; nothing listens there yet
    settings = Settings(port=0, ops_port=0, redis_url=redis.url, reconnect_initial_ms=50, reconnect_max_ms=200, watchdog_ms=600)
    io = build_server(settings)
    await io.start()
    try:
        ops = f"http://{LOOPBACK}:{io.ops_port}"
        status, body = await aget(ops + "/health/ready")
        assert status == 503, body
        assert json.loads(body)["reason"] == "joining cluster"
        assert (await aget(ops + "/health/live"))[0] == 200
        status, body = await aget(ops + "/health")
        assert status == 200 and json.loads(body)["status"] == "degraded", body

        redis.start()
        assert json.loads(await wait_status(ops + "/health/ready", 200)) == {"status": "ready"}
        assert json.loads((await aget(ops + "/health"))[1])["status"] == "healthy"

        # Once joined, a Redis outage degrades /health but leaves the node ready: it still
        # serves its own clients, and every node failing its probe at once would empty the
        # balancer.
        redis.stop(signal.SIGKILL)
        deadline = time.monotonic() + STEP_TIMEOUT
        while json.loads((await aget(ops + "/health"))[1])["status"] != "degraded":
            assert time.monotonic() < deadline, "/health never said degraded after Redis died"
            await asyncio.sleep(0.05)
        assert (await aget(ops + "/health/ready"))[0] == 200
        assert (await aget(ops + "/health/live"))[0] == 200
    finally:
        await io.close()
        redis.stop(signal.SIGKILL)


def test_sigterm_drain_keeps_the_ops_port_answering_until_the_end(tmp_path: Path) -> None:
    node = OpsPortProcess("tests.sio_app", env={"SHUTDOWN_DEADLINE_MS": "3000"}, log_dir=tmp_path).start()
    try:
        assert get(node.url + "/health")[0] == 404
        # One keep-alive connection to the ops port, asked again and again through the drain.
        probe = http.client.HTTPConnection(LOOPBACK, node.ops_port, timeout=3)
        answers: list[tuple[int, dict[str, Any]]] = []

        def ask() -> tuple[int, dict[str, Any]]:
            probe.request("GET", "/health/ready")
            response = probe.getresponse()
            return response.status, json.loads(response.read())

        assert ask() == (200, {"status": "ready"})
        node.signal(signal.SIGTERM)
        public_refused = False
        answered_after_public_refused = False
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                answers.append(ask())
            except (OSError, http.client.HTTPException):
                break  # the ops server closed: the end of the drain
            if answers[-1][0] == 503:
                if public_refused:
                    answered_after_public_refused = True
                elif not accepts_connections(node.port):
                    public_refused = True
        probe.close()
        draining = [body for status, body in answers if status == 503]
        assert draining and all(body == {"status": "not ready", "reason": "draining"} for body in draining), answers[-5:]
        # The public port stopped accepting at the start of the drain; the ops port still
        # answered after that.
        assert public_refused and answered_after_public_refused, answers[-5:]
        assert node.wait(10) == 0, node.log_tail()
    finally:
        node.stop()


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- nginx -----------------------------------------------------------------------------------------


async def test_shipped_nginx_conf_never_exposes_the_ops_endpoints(started: Started, redis_server: RedisServerProcess, clients: Callable[..., Any]) -> None:
    # Nodes without OPS_PORT (the default): nginx alone keeps the endpoints in.
    node = started.gateway(redis_server.url)
    await wait_health(node, "healthy")
    _, url = started.nginx([node.port])

    spellings = [*OPS_PATHS, "/metrics?x=1", "/metrics/", "/%68ealth", "/%6detrics", "//stats", "/socket.io/../metrics", "/health/ready?sid=x"]
    for path in spellings:
        status, body = await aget(url + path)
        assert status == 404, (path, status, body[:200])
        assert b"sio_gateway" not in body and b"adapter" not in body, (path, body[:200])
    for path in OPS_PATHS:  # the node itself still serves them, to the internal network
        assert (await aget(node.url + path))[0] == 200, path

    # Socket.IO through nginx still works: long-polling first, then the upgrade.
    client = await clients(url)
    assert await client.call("echo", "through nginx") == "through nginx"
    assert client.sio.transport() in ("polling", "websocket")


# -- settings --------------------------------------------------------------------------------------


def test_ops_settings_are_validated_and_listed() -> None:
    base = {"AUTH_MODE": "none"}
    assert Settings.from_env(base).ops_port is None
    settings = Settings.from_env({**base, "OPS_PORT": "9100", "OPS_HOST": "0.0.0.0"})
    assert (settings.ops_port, settings.ops_host) == (9100, "0.0.0.0")
    assert Settings.from_env({**base, "OPS_PORT": ""}).ops_port is None
    with pytest.raises(ConfigError, match="OPS_PORT"):
        Settings.from_env({**base, "OPS_PORT": "http"})
    with pytest.raises(ConfigError, match="OPS_PORT"):
        Settings.from_env({**base, "OPS_PORT": "70000"})
    with pytest.raises(ConfigError, match="OPS_PORT"):
        Settings.from_env({**base, "PORT": "3001", "OPS_PORT": "3001"})

    shown = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True, cwd=REPO, timeout=30, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "OPS_HOST" in shown.stdout and "OPS_PORT" in shown.stdout
