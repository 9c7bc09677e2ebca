"""`sio-gateway cluster` (what `make cluster` runs) keeps the local cluster up: a node that is
SIGKILLed comes back after a backoff, says so in one line, and serves /health again; Ctrl-C
(SIGINT) stops everything it ever started and exits 0, and `make cluster` then reports no error.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import stop_process_group
from tests.gateway_process import REPO
from tests.integration.test_topologies import accepts, alive, consecutive_free_ports
from tests.ports import LOOPBACK

LINE_TIMEOUT_S = 40.0
RESTART_INITIAL_MS = 300
MEMBER = re.compile(r"\s+(redis|node \d|nginx)\s+pid (\d+)\s+(\S+)")


class ClusterCommand:
    """A `sio-gateway cluster` (or `make cluster`) process, its output read line by line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env, start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._queue.put(raw.decode(errors="replace").rstrip())
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = LINE_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"output ended before {pattern!r} (code {self.proc.poll()}):\n" + "\n".join(self.lines))
            self.lines.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def members(self) -> dict[str, int]:
        self.expect(r"^URL: ")
        return {m.group(1): int(m.group(2)) for line in self.lines if (m := MEMBER.match(line))}

    def interrupt(self, whole_group: bool = False, timeout: float = 30.0) -> int:
        """SIGINT, as Ctrl-C sends it (to the terminal's whole process group with `whole_group`)."""
        if whole_group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        self.drain()
        return code

    def drain(self, timeout: float = 5.0) -> None:
        """Collect the rest of the output, up to its end (the process has exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def close(self) -> None:
        stop_process_group(self.proc, signal.SIGKILL)


def cluster_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "AUTH_MODE": "none", "PYTHONUNBUFFERED": "1", "SHUTDOWN_DEADLINE_MS": "2000", **extra}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def health_status(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=1) as response:
            json.loads(response.read())
            return response.status
    except (OSError, ValueError):
        return None


def test_a_killed_node_is_restarted_with_backoff_and_serves_again(tmp_path: Path) -> None:
    base, proxy = consecutive_free_ports(2), consecutive_free_ports(1)
    argv = [sys.executable, "-m", "gateway", "cluster", "--nodes", "2", "--base-port", str(base), "--proxy-port", str(proxy), "--workdir", str(tmp_path / "cluster")]
    cluster = ClusterCommand(argv, cluster_env(CLUSTER_RESTART_INITIAL_MS=str(RESTART_INITIAL_MS), CLUSTER_RESTART_MAX_MS="5000"))
    every_pid: set[int] = set()
    try:
        pids = cluster.members()
        assert set(pids) == {"redis", "node 1", "node 2", "nginx"}, cluster.lines
        every_pid.update(pids.values())
        killed = pids["node 1"]
        for restart, delay in ((1, 0.3), (2, 0.6)):  # the second death comes quickly: the wait doubles
            os.kill(killed, signal.SIGKILL)
            line = cluster.expect(rf"node 1 \(pid {killed}\) exited with -9; restarted after ([\d.]+)s as pid (\d+) \(restart (\d+)\)")
            assert (float(line.group(1)), int(line.group(3))) == (delay, restart), line.group(0)
            killed = int(line.group(2))
            every_pid.add(killed)
            deadline = time.monotonic() + 15
            while health_status(base) != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert health_status(base) == 200, (tmp_path / "cluster" / "node-1.log").read_text()[-3000:]
            assert alive(killed)
        # The other members never went away, and nginx still answers in front.
        assert all(alive(pids[name]) for name in ("redis", "node 2", "nginx"))
        assert health_status(base + 1) == 200 and accepts(proxy)

        assert cluster.interrupt() == 0, cluster.lines
        assert any(line.startswith("sio-gateway cluster: stopped; logs kept in") for line in cluster.lines), cluster.lines
        assert not any(alive(pid) for pid in every_pid), {pid: alive(pid) for pid in every_pid}
        assert not accepts(proxy) and not accepts(base)
    finally:
        cluster.close()


def test_ctrl_c_on_make_cluster_is_a_clean_stop(tmp_path: Path) -> None:
    """Ctrl-C reaches make and the cluster command together; the command stops everything and
    exits 0, so make reports no `*** Interrupt` (make itself still ends by the SIGINT it got)."""
    base, proxy = consecutive_free_ports(1), consecutive_free_ports(1)
    # `-o .venv/.installed`: run the recipe as it is, without re-installing the package here.
    argv = ["make", "--no-print-directory", "-o", ".venv/.installed", "cluster", "NODES=1", f"PROXY_PORT={proxy}"]
    cluster = ClusterCommand(argv, cluster_env(PORT=str(base)))
    try:
        pids = cluster.members()
        assert set(pids) == {"redis", "node 1", "nginx"}, cluster.lines
        cluster.interrupt(whole_group=True)
        output = "\n".join(cluster.lines)
        assert "sio-gateway cluster: stopped" in output, output
        assert "Interrupt" not in output and "Error" not in output, output
        assert not any(alive(pid) for pid in pids.values())
    finally:
        cluster.close()


def test_restart_backoff_settings_are_validated() -> None:
    from gateway.config import ConfigError, Settings

    settings = Settings.from_env({"AUTH_MODE": "none"})
    assert (settings.cluster_restart_initial_ms, settings.cluster_restart_max_ms) == (500, 10000)
    with pytest.raises(ConfigError, match="CLUSTER_RESTART_INITIAL_MS"):
        Settings.from_env({"AUTH_MODE": "none", "CLUSTER_RESTART_INITIAL_MS": "5000", "CLUSTER_RESTART_MAX_MS": "1000"})
    with pytest.raises(ConfigError, match="CLUSTER_RESTART_MAX_MS"):
        Settings.from_env({"AUTH_MODE": "none", "CLUSTER_RESTART_MAX_MS": "0"})
