"""The official socket.io-protocol (32 tests) and engine.io-protocol (24 tests) suites against
the gateway, through the runner in ../shared/conformance (see its README)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.gateway_process import REPO, GatewayProcess

RUNNER = REPO.parent / "shared" / "conformance" / "run"


@pytest.fixture
def conformance_server(tmp_path):
    server = GatewayProcess("tests.conformance_app", log_dir=tmp_path).start()
    yield server
    server.stop()


def test_official_suites_pass(conformance_server):
    assert RUNNER.exists(), f"conformance runner missing at {RUNNER}"
    result = subprocess.run([str(RUNNER), conformance_server.url], capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    sio = re.search(r"socket\.io-protocol: (\d+) passed, (\d+) failed", output)
    eio = re.search(r"engine\.io-protocol: (\d+) passed, (\d+) failed", output)
    assert sio and eio, output
    assert (int(sio.group(1)), int(sio.group(2))) == (32, 0), output
    assert (int(eio.group(1)), int(eio.group(2))) == (24, 0), output
    assert result.returncode == 0, output
    # The server survived the malformed input the suites send.
    assert conformance_server.get("/health")[0] == 200, conformance_server.log_tail()
