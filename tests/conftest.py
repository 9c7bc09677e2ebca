"""Shared fixtures: real redis-server processes on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import LOOPBACK, free_port

REDIS_START_TIMEOUT_S = 10.0
REDIS_STOP_TIMEOUT_S = 5.0


class RedisServerError(RuntimeError):
    """redis-server could not be started or did not answer PING in time."""


class RedisServerProcess:
    """A throwaway redis-server bound to 127.0.0.1 with persistence disabled.

    The port is fixed at construction so that ``stop()`` + ``start()`` simulates
    a Redis restart that clients can reconnect to at the same address.
    """

    def __init__(self, workdir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.port = port if port is not None else free_port()
        self.host = LOOPBACK
        self.workdir = workdir
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        """Start (or restart) on the same port and wait until it answers PING."""
        if self.running:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server)")
        args = [
            binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            *self.extra_args,
        ]
        with open(self._log_path, "ab") as log_file:
            self._proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RedisServerError(f"redis-server exited with {self._proc.returncode}: {self._log_tail()}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server on port {self.port} did not answer PING: {self._log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop by PID (SIGTERM by default, SIGKILL to simulate a crash) and reap it."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(REDIS_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "<no log>"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServerProcess]:
    """A fresh redis-server per test, killed by PID at teardown whatever the outcome."""
    server = RedisServerProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)
