"""Running a server until a signal: event loop choice and graceful shutdown.

Shared by the `sio-gateway` command, `bench.app` and the test apps, so every process behaves the
same on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable

log = logging.getLogger("gateway.runtime")


def install_uvloop() -> bool:
    """Use uvloop where it is installed; the default loop otherwise."""
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop_missing using=asyncio")
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve_until_signal(start: Callable[[], Awaitable[object]], stop: Callable[[], Awaitable[object]], deadline: float = 10.0) -> None:
    """Start, wait for SIGTERM or SIGINT, then stop within `deadline` seconds."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    await stopping.wait()
    log.info("shutdown_begin deadline_seconds=%s", deadline)
    try:
        await asyncio.wait_for(stop(), deadline)
    except asyncio.TimeoutError:
        log.error("shutdown_deadline_exceeded deadline_seconds=%s", deadline)
    log.info("shutdown_done")


def run(start: Callable[[], Awaitable[object]], stop: Callable[[], Awaitable[object]], deadline: float = 10.0) -> None:
    install_uvloop()
    asyncio.run(serve_until_signal(start, stop, deadline))
