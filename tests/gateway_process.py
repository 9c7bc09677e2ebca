"""Start a gateway application (`python -m <module> --port P ...`) as a real process.

Tests talk to it over loopback like any client would; it runs in a process group of its own and
is stopped through that group (SIGTERM, then SIGKILL; see tests.conftest.stop_process_group), and
its log is kept for failure messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import stop_process_group
from tests.ports import LOOPBACK, free_port

REPO = Path(__file__).resolve().parent.parent


class GatewayProcessError(RuntimeError):
    """The process did not come up, or died."""


class GatewayProcess:
    def __init__(self, module: str, *args: str, port: int | None = None, env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.module = module
        self.args = args
        self.port = port or free_port()
        self.env = env or {}
        self.log_path = (log_dir or Path("/tmp")) / f"gateway-{self.port}-{os.getpid()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout: float = 15.0) -> "GatewayProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", self.module, "--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayProcessError(f"{self.module} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status in (200, 503):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise GatewayProcessError(f"{self.module} did not answer /health within {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def signal(self, sig: int) -> None:
        """`sig` to the gateway's process group (SIGTERM to drain it, SIGKILL to crash it)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to its process group, then SIGKILL after `timeout`; always reaps."""
        if self.proc is None:
            return None
        return stop_process_group(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL to its process group (a crash), and reap."""
        if self.proc is not None:
            stop_process_group(self.proc, signal.SIGKILL)
