"""The official socket.io-protocol (32 tests) and engine.io-protocol (24 tests) suites against
the gateway, through the runner in ../shared/conformance (see its README).

The suites are not part of this repository: they live beside the checkout (`../shared/conformance`)
or wherever SIO_CONFORMANCE_DIR points. A plain clone without them skips this test and says how
to get them; CI (CI=true) and anyone who sets SIO_CONFORMANCE_DIR get a failure instead when they
are missing, so a CI run can never pass by silently skipping them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.gateway_process import REPO, GatewayProcess

CONFORMANCE_DIR_VAR = "SIO_CONFORMANCE_DIR"
DEFAULT_CONFORMANCE_DIR = REPO.parent / "shared" / "conformance"
RUNNER_NAME = "run"
RUNNER_TIMEOUT_S = 600


class ConformanceSuitesMissing(LookupError):
    """The suites are required here (CI, or SIO_CONFORMANCE_DIR set) and are not there."""


def find_conformance_runner(env: Mapping[str, str], default_dir: Path = DEFAULT_CONFORMANCE_DIR) -> Path | None:
    """The suites' runner, or None when they are optional here and absent (the caller skips).

    Required (ConformanceSuitesMissing when absent) when `SIO_CONFORMANCE_DIR` is set, since
    someone asked for these very suites, or when `CI` is true, since CI always has them and a
    skipped conformance run there would hide a broken checkout of the suites."""
    configured = env.get(CONFORMANCE_DIR_VAR, "").strip()
    directory = Path(configured) if configured else default_dir
    runner = directory / RUNNER_NAME
    if runner.is_file() and os.access(runner, os.X_OK):
        return runner
    if configured:
        raise ConformanceSuitesMissing(f"{CONFORMANCE_DIR_VAR}={configured} but no executable {runner}")
    if env.get("CI", "").strip().lower() in ("1", "true", "yes"):
        raise ConformanceSuitesMissing(f"CI is set but the conformance suites are missing: no executable {runner} (set {CONFORMANCE_DIR_VAR})")
    return None


def how_to_get_suites(default_dir: Path = DEFAULT_CONFORMANCE_DIR) -> str:
    return (
        f"conformance suites not found at {default_dir}: put the shared/ folder (with conformance/run, "
        f"socket.io-protocol, engine.io-protocol) beside this checkout, or set {CONFORMANCE_DIR_VAR}=/path/to/conformance"
    )


def conformance_runner() -> Path:
    """Resolved before the server starts: a missing suite fails (required) or skips at once."""
    try:
        runner = find_conformance_runner(os.environ)
    except ConformanceSuitesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    if runner is None:
        pytest.skip(how_to_get_suites())
    return runner


def test_official_suites_pass(tmp_path: Path) -> None:
    runner = conformance_runner()
    server = GatewayProcess("tests.conformance_app", log_dir=tmp_path).start()
    try:
        result = subprocess.run([str(runner), server.url], capture_output=True, text=True, timeout=RUNNER_TIMEOUT_S)
        output = result.stdout + result.stderr
        sio = re.search(r"socket\.io-protocol: (\d+) passed, (\d+) failed", output)
        eio = re.search(r"engine\.io-protocol: (\d+) passed, (\d+) failed", output)
        assert sio and eio, output
        assert (int(sio.group(1)), int(sio.group(2))) == (32, 0), output
        assert (int(eio.group(1)), int(eio.group(2))) == (24, 0), output
        assert result.returncode == 0, output
        # The server survived the malformed input the suites send.
        assert server.get("/health")[0] == 200, server.log_tail()
    finally:
        server.stop()


# -- when the suites are there, and when not --------------------------------------------------------


def _runner_in(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    runner = directory / RUNNER_NAME
    runner.write_text("#!/bin/sh\nexit 0\n")
    runner.chmod(0o755)
    return runner


def test_suites_beside_the_checkout_are_found(tmp_path: Path) -> None:
    runner = _runner_in(tmp_path / "shared" / "conformance")
    assert find_conformance_runner({}, default_dir=runner.parent) == runner


def test_suites_named_by_the_variable_are_found(tmp_path: Path) -> None:
    runner = _runner_in(tmp_path / "elsewhere")
    assert find_conformance_runner({CONFORMANCE_DIR_VAR: str(runner.parent), "CI": "true"}, default_dir=tmp_path / "none") == runner


def test_plain_clone_without_suites_skips(tmp_path: Path) -> None:
    assert find_conformance_runner({}, default_dir=tmp_path / "none") is None
    assert CONFORMANCE_DIR_VAR in how_to_get_suites(tmp_path / "none")


@pytest.mark.parametrize("env", [{CONFORMANCE_DIR_VAR: "/nonexistent/conformance"}, {"CI": "true"}, {"CI": "1", CONFORMANCE_DIR_VAR: ""}])
def test_missing_suites_fail_when_required(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConformanceSuitesMissing):
        find_conformance_runner(env, default_dir=tmp_path / "none")


def test_a_runner_that_is_not_executable_does_not_count(tmp_path: Path) -> None:
    runner = _runner_in(tmp_path / "conformance")
    runner.chmod(0o644)
    assert find_conformance_runner({}, default_dir=runner.parent) is None
    with pytest.raises(ConformanceSuitesMissing):
        find_conformance_runner({"CI": "true"}, default_dir=runner.parent)


def test_ci_set_and_suites_missing_fails_the_run(tmp_path: Path) -> None:
    """End to end: with SIO_CONFORMANCE_DIR pointing nowhere, pytest reports a failure, not a skip."""
    env = {**os.environ, CONFORMANCE_DIR_VAR: str(tmp_path / "missing"), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::test_official_suites_pass"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert f"{CONFORMANCE_DIR_VAR}={tmp_path / 'missing'}" in result.stdout, result.stdout
