"""Shared fixtures: real redis-server processes on free loopback ports, process-group handling
for everything the tests start, and the end-of-run check that none of it is left running.

Every server a test starts runs in a session (and so a process group) of its own
(`start_new_session=True`) and is stopped through that group (`stop_process_group`), so the
children it forked (nginx workers, a Redis fork) stop with it instead of outliving the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import LOOPBACK, free_port

log = logging.getLogger("tests.processes")

REDIS_START_TIMEOUT_S = 10.0
REDIS_STOP_TIMEOUT_S = 5.0
PROCESS_STOP_TIMEOUT_S = 5.0
# Processes signalled by the last teardown may need a moment to go before counting as left over.
LEFTOVER_GRACE_S = 3.0
# Set to a fresh id for each test run and inherited by every process the run starts.
TEST_RUN_VAR = "SIO_TEST_RUN"
PR_SET_CHILD_SUBREAPER = 36


# -- process groups ------------------------------------------------------------------------------


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal `proc`'s whole process group (it leads one: started with start_new_session=True).

    Only while the leader is not reaped, so its PID (the group id) cannot belong to anyone else;
    a leader that is not a group leader gets the signal alone."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)


def stop_process_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = PROCESS_STOP_TIMEOUT_S) -> int | None:
    """Stop `proc` and everything in its process group: `sig` to the group, SIGKILL to the group
    if the leader outlives `timeout`, then SIGKILL to the group once more before the leader is
    reaped, for members that outlive it (the workers of a SIGKILLed nginx master). Always reaps."""
    if proc.returncode is None:  # not reaped yet, so its PID is still its group's id
        _signal_group(proc, sig)
        if not _wait_exited(proc.pid, timeout):
            log.warning("process_group_kill pid=%d timeout_seconds=%s", proc.pid, timeout)
            _signal_group(proc, signal.SIGKILL)
            _wait_exited(proc.pid, PROCESS_STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(PROCESS_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(PROCESS_STOP_TIMEOUT_S)
    return proc.returncode


def _wait_exited(pid: int, timeout: float) -> bool:
    """Wait (bounded) until our child `pid` has exited, without reaping it (WNOWAIT)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:
            return True  # already reaped
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


# -- the end-of-run check -------------------------------------------------------------------------


@dataclass(frozen=True)
class LeftoverProcess:
    pid: int
    ppid: int
    found_by: str  # "descendant" or "marker"
    cmdline: str

    def __str__(self) -> str:
        return f"pid {self.pid} (parent {self.ppid}, {self.found_by}): {self.cmdline}"


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process, from /proc/PID/stat."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "<gone>"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or "<no command line>"


def _carries_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def leftover_processes(root: int, marker: str | None) -> list[LeftoverProcess]:
    """Living processes this run started: descendants of `root` (the test process) and any
    process whose environment carries `TEST_RUN_VAR=marker`. Zombies do not count."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found[pid] = "descendant"
        stack.extend(children.get(pid, []))
    if marker is not None:
        ancestors = {root}
        pid = root
        while pid in table and table[pid][0] not in ancestors and table[pid][0] > 0:
            pid = table[pid][0]
            ancestors.add(pid)
        needle = f"{TEST_RUN_VAR}={marker}".encode()
        for pid in table:
            if pid not in found and pid not in ancestors and _carries_marker(pid, needle):
                found[pid] = "marker"
    return [
        LeftoverProcess(pid, table[pid][0], how, _cmdline(pid))
        for pid, how in sorted(found.items())
        if table[pid][1] not in ("Z", "X")
    ]


def reap_zombie_children() -> None:
    """Reap exited children nobody waits for: with the subreaper flag, orphans of the processes
    the tests started end here when they exit."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def become_subreaper() -> bool:
    """Make orphaned descendants (the workers of a SIGKILLed nginx master, a daemon's double
    fork) children of this process instead of init, so their parent chain still leads here."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def check_no_leftover_processes(root: int, marker: str | None, grace: float = LEFTOVER_GRACE_S) -> list[LeftoverProcess]:
    """Wait up to `grace` for the run's processes to go; SIGKILL and return those that do not."""
    deadline = time.monotonic() + grace
    while True:
        leftovers = leftover_processes(root, marker)
        if not leftovers or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for process in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while leftover_processes(root, marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return leftovers


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """The run leaves no process behind: every process started during it carries
    `SIO_TEST_RUN=<id>` in its environment and, with this process a child subreaper, stays its
    descendant even when orphaned. At the end, any such process still alive is a failure (named
    with its command line) and is killed."""
    marker = uuid.uuid4().hex
    previous = os.environ.get(TEST_RUN_VAR)
    os.environ[TEST_RUN_VAR] = marker
    if not become_subreaper():
        log.warning("subreaper_unavailable leftover check relies on the environment marker only")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(TEST_RUN_VAR, None)
        else:
            os.environ[TEST_RUN_VAR] = previous
    leftovers = check_no_leftover_processes(os.getpid(), marker)
    reap_zombie_children()
    if leftovers:
        pytest.fail("processes left running by the tests (now killed):\n" + "\n".join(f"  {p}" for p in leftovers), pytrace=False)


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
            self._proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
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
        """Stop its process group (SIGTERM by default, SIGKILL to simulate a crash) and reap it."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        stop_process_group(proc, sig, REDIS_STOP_TIMEOUT_S)

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
