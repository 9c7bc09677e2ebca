"""tests.sio_app plus one event that blocks the event loop, for the loop-stall watchdog tests
(tests/integration/test_hung_node.py).

    .venv/bin/python -m tests.loop_stall_app --port 3000      # LOOP_STALL_MS from the environment

- `block-loop` (seconds, ack): `time.sleep(seconds)` right on the event loop, as a handler that
  makes a synchronous call would, then acknowledges `{"slept": seconds}` (if the process is
  still alive to do so).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from gateway.ops.logs import setup_logging
from gateway.runtime import run
from gateway import Server, Socket
from tests.sio_app import build, settings_for


def install_loop_blocker(server: Server) -> None:
    @server.of("/").on("connection")
    def connected(socket: Socket) -> None:
        @socket.on("block-loop")
        def block_loop(seconds: Any = 0, ack: Callable[..., None] | None = None) -> None:
            time.sleep(float(seconds))  # deliberately blocking: this is what the watchdog must catch
            if ack is not None:
                ack({"slept": seconds})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    settings = settings_for(args.port, args.host)
    setup_logging(settings.log_level)
    server = build(settings)
    install_loop_blocker(server)
    run(server.start, server.close, settings.shutdown_deadline_ms / 1000)


if __name__ == "__main__":
    main()
