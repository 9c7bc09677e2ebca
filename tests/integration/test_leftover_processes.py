"""No process outlives the tests: a daemon is stopped with everything it forked, and the end-of-run
check (tests/conftest.py `no_leftover_processes`) names and kills whatever a test left running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import TEST_RUN_VAR, leftover_processes
from tests.gateway_process import REPO
from tests.integration.test_topologies import Started, alive, started  # noqa: F401  (fixture)
from tests.ports import free_port

INNER_RUN_TIMEOUT_S = 60


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def test_nginx_workers_stop_with_a_killed_master(started: Started) -> None:
    """The leak seen after `make test`: SIGKILL of the nginx master alone left its workers
    listening. Stopping its process group stops them too."""
    daemon, _ = started.nginx([free_port()])
    master = daemon.proc.pid  # type: ignore[union-attr]
    deadline = time.monotonic() + 5
    while not (workers := children_of(master)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers, "nginx started no worker"
    started.stop_all()  # SIGKILL, as the topology tests' teardown does
    assert not alive(master)
    assert wait_gone(workers) == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers if alive(pid)]


def test_processes_carrying_the_run_marker_are_found(tmp_path: Path) -> None:
    marker = "marker-" + os.urandom(6).hex()
    env = {**os.environ, TEST_RUN_VAR: marker}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        found = []
        while not found and time.monotonic() < deadline:
            # root -1: no process descends from it, so only the marker can find the child.
            found = [p for p in leftover_processes(-1, marker) if p.pid == proc.pid]
            time.sleep(0.02)
        assert found and found[0].found_by == "marker", found
        assert "time.sleep(30)" in found[0].cmdline
        assert [p for p in leftover_processes(-1, "another-run") if p.pid == proc.pid] == []
    finally:
        proc.kill()
        proc.wait(5)


INNER_CONFTEST = "from tests.conftest import no_leftover_processes  # noqa: F401\n"
INNER_TEST = '''
import subprocess
from pathlib import Path

def test_leaves_processes_behind():
    # one in a session of its own, as the test daemons run; one orphaned by its shell
    own = subprocess.Popen(["sleep", "61"], start_new_session=True)
    shell = subprocess.Popen(["sh", "-c", "sleep 62 >/dev/null & echo $!"], stdout=subprocess.PIPE, start_new_session=True)
    orphan = int(shell.stdout.readline())
    shell.wait(5)
    Path("pids").write_text(f"{own.pid} {orphan}")
'''


def test_a_run_that_leaks_fails_names_them_and_kills_them(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_leaky.py").write_text(INNER_TEST)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=INNER_RUN_TIMEOUT_S,
    )  # fmt: skip
    output = result.stdout + result.stderr
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    try:
        assert result.returncode == 1, output
        assert "1 passed, 1 error" in result.stdout, output
        assert "processes left running by the tests (now killed)" in result.stdout, output
        assert "sleep 61" in result.stdout and "sleep 62" in result.stdout, output
        assert f"pid {pids[0]} " in result.stdout and f"pid {pids[1]} " in result.stdout, output
        assert wait_gone(pids, timeout=2) == [], output
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)
