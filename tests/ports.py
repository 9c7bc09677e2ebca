"""Loopback port allocation for tests that start real servers (redis-server, Node, the gateway)."""

from __future__ import annotations

import contextlib
import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port the kernel considers free on ``host``.

    The port is released before returning, so a racing process could take it;
    on a test machine that window is small enough and avoids hard-coded ports
    that collide between parallel runs.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct free ports.

    All sockets stay bound until every port is chosen, so the kernel cannot hand
    out the same port twice (calling free_port() in a loop could).
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports
