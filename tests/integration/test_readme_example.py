"""The README's Python example is the file `example.py`, and running it as the README says
(`.venv/bin/python example.py`) serves and says so: `listening ...` on stderr (the runtime sets up
key=value logging for an app that configured none), then a client gets the `welcome` event."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import socketio

from tests.conftest import stop_process_group
from tests.gateway_process import REPO
from tests.ports import LOOPBACK, free_port

EXAMPLE = REPO / "example.py"
LISTEN_TIMEOUT_S = 15.0


def test_readme_shows_example_py_as_it_is() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(# example\.py.*?)```", readme, re.DOTALL)
    assert block is not None, "no example.py block in the README"
    assert block.group(1) == EXAMPLE.read_text()


async def test_example_logs_listening_and_serves(tmp_path: Path) -> None:
    port = free_port()
    source = EXAMPLE.read_text()
    assert "Settings(port=3001)" in source
    script = tmp_path / "example.py"
    script.write_text(source.replace("Settings(port=3001)", f"Settings(port={port})"))  # a free port, else as written
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "example.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while f"listening host={LOOPBACK} port={port}" not in log_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            await asyncio.sleep(0.05)
        output = log_path.read_text()
        assert re.search(rf"level=info logger=gateway\.server listening host={LOOPBACK} port={port}\b", output), output

        client = socketio.AsyncClient(reconnection=False)
        welcomed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        client.on("welcome", lambda data: welcomed.done() or welcomed.set_result(data), namespace="/chat")
        await client.connect(f"http://{LOOPBACK}:{port}", namespaces=["/chat"], auth={"token": "s3cret"}, wait_timeout=5)
        try:
            assert (await asyncio.wait_for(welcomed, 5))["id"] == client.get_sid("/chat")
        finally:
            await client.disconnect()
    finally:
        code = await asyncio.to_thread(stop_process_group, proc, signal.SIGINT)
    assert code == 0, log_path.read_text()
    assert "shutdown_done" in log_path.read_text()
