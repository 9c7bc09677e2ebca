"""The Socket.IO package's seams: the ack collector of a broadcast, and the import graph (the
adapter knows sockets and namespaces only through Protocols; serving is wired in serve.py)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

from gateway.sio.broadcast import AckCollector
from gateway.sio.handlers import AckTimeout

ROOT = Path(__file__).resolve().parents[2]


def _collect(callback_log: list[Any]) -> Any:
    def callback(err: Exception | None, responses: list[Any]) -> None:
        callback_log.append((err, list(responses)))

    return callback


def test_ack_collector_waits_for_every_server_then_every_ack() -> None:
    async def scenario() -> list[Any]:
        calls: list[Any] = []
        collector = AckCollector(_collect(calls), timeout=60)
        collector.on_client_count(2)  # this node reached 2 clients
        collector.on_ack("a")
        collector.on_ack("b")
        assert calls == []  # the cluster is not counted yet: another node may report clients
        collector.set_servers(2)
        assert calls == []
        collector.on_client_count(1)  # the other node reached 1 client
        assert calls == []
        collector.on_ack("c")
        collector.on_ack("late")  # after completion: no second callback
        collector.finish(AckTimeout("too late"))
        assert collector.timer.cancelled()
        return calls

    calls = asyncio.run(scenario())
    assert calls == [(None, ["a", "b", "c"])]


def test_ack_collector_reports_a_timeout_once_with_the_acks_so_far() -> None:
    async def scenario() -> list[Any]:
        calls: list[Any] = []
        collector = AckCollector(_collect(calls), timeout=60)
        collector.set_servers(1)
        collector.on_client_count(3)
        collector.on_ack(1)
        collector._timed_out()  # what the loop's timer calls
        collector.on_ack(2)
        return calls

    calls = asyncio.run(scenario())
    assert len(calls) == 1
    err, responses = calls[0]
    assert isinstance(err, AckTimeout) and "1 acknowledgement" in str(err)
    assert responses == [1]


def test_ack_collector_fails_when_the_cluster_cannot_be_counted() -> None:
    class Unreachable:
        async def server_count(self) -> int:
            raise ConnectionError("redis down")

    async def scenario() -> list[Any]:
        calls: list[Any] = []
        collector = AckCollector(_collect(calls), timeout=60)
        collector.on_client_count(0)
        await collector.count_servers(Unreachable())  # type: ignore[arg-type]
        return calls

    calls = asyncio.run(scenario())
    assert len(calls) == 1 and isinstance(calls[0][0], ConnectionError)


def _imports(path: Path) -> set[str]:
    """Modules `path` imports, TYPE_CHECKING blocks included (a type-only import is still a
    dependency a reader follows), resolved to dotted names."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_the_adapter_depends_on_protocols_not_on_the_server_classes() -> None:
    imports = _imports(ROOT / "gateway/sio/adapter.py")
    for other in ("server", "namespace", "socket", "client", "broadcast"):
        assert f"gateway.sio.{other}" not in imports, other
    assert "gateway.serve" not in imports


def test_no_import_circle_in_the_sio_package_and_serving() -> None:
    paths = sorted((ROOT / "gateway/sio").glob("*.py")) + [ROOT / "gateway/serve.py", ROOT / "gateway/ops/endpoints.py"]
    modules = {_module(p): p for p in paths}
    graph = {name: {m for m in _imports(p) if m in modules and m != name} for name, p in modules.items()}
    graph["gateway.sio"] = set()  # the package facade re-exports; nothing inside imports it

    def visit(name: str, trail: list[str]) -> None:
        assert name not in trail, " -> ".join(trail + [name])
        for dep in graph.get(name, ()):
            visit(dep, trail + [name])

    for name in graph:
        visit(name, [])
    # Serving is wired in one place: the Socket.IO modules never import HTTP serving or ops.
    for name, path in modules.items():
        if name.startswith("gateway.sio"):
            imports = _imports(path)
            assert not any(m.startswith(("gateway.ops", "gateway.serve")) for m in imports), name
