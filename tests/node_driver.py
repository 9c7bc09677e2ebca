"""Asyncio controller for tests/interop/driver.mjs, the Node.js side of the interop harness.

Interop tests need the reference implementation (Node socket.io clients, a Node
socket.io server with @socket.io/redis-adapter, @socket.io/redis-emitter) to run
as real processes. The driver speaks JSON lines; this module hides that framing,
correlates replies to requests, queues asynchronous events for ``wait_event``,
and maps the ``{"$bin": hex}`` envelope to ``bytes`` so tests work with
ordinary Python values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import keyword
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

INTEROP_DIR = Path(__file__).resolve().parent / "interop"
DRIVER_SCRIPT = INTEROP_DIR / "driver.mjs"
REQUIRED_MODULES = (
    "socket.io",
    "socket.io-client",
    "@socket.io/redis-adapter",
    "@socket.io/redis-emitter",
    "redis",
)
# A reply can only come after the command's own timeout (in ms) has elapsed, so
# the Python-side wait gets this much slack on top of it.
REPLY_SLACK_S = 5.0
STDERR_TAIL_LINES = 200
_STREAM_LIMIT = 64 * 1024 * 1024  # large binary payloads arrive as one hex line

EventPredicate = Callable[[dict[str, Any]], bool]


class NodeDriverError(Exception):
    """The Node driver process could not be started, died, or did not answer in time."""


class NodeModulesMissing(NodeDriverError):
    """tests/interop/node_modules is absent: tests never install packages themselves."""


class NodeCallError(NodeDriverError):
    """The driver answered a command with ok:false."""

    def __init__(self, cmd: str, message: str, data: Any = None) -> None:
        super().__init__(f"{cmd}: {message}")
        self.cmd = cmd
        self.message = message
        self.data = data


def ensure_node_modules(interop_dir: Path = INTEROP_DIR) -> None:
    """Fail loudly, with the fix, when the npm dependencies are not installed."""
    modules = interop_dir / "node_modules"
    missing = [name for name in REQUIRED_MODULES if not (modules / name / "package.json").is_file()]
    if missing:
        raise NodeModulesMissing(
            f"Node packages missing in {interop_dir / 'node_modules'}: {', '.join(missing)}. "
            "Run `npm ci --prefix tests/interop` from the repository root first."
        )


def to_wire(value: Any) -> Any:
    """Encode bytes-like values as the driver's {"$bin": hex} envelope, recursively."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bin": bytes(value).hex()}
    if isinstance(value, Mapping):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    return value


def from_wire(value: Any) -> Any:
    """Decode {"$bin": hex} envelopes back to bytes, recursively."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bin"), str):
            return bytes.fromhex(value["$bin"])
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


def _field_name(name: str) -> str:
    if name.endswith("_") and keyword.iskeyword(name[:-1]):
        return name[:-1]
    return name


def _command_budget_s(fields: Mapping[str, Any]) -> float:
    """Longest wait the command itself may legitimately take, from its own timeouts."""
    budget_ms = 0.0
    for key in ("timeout", "requestsTimeout"):
        if isinstance(fields.get(key), (int, float)):
            budget_ms = max(budget_ms, float(fields[key]))
    opts = fields.get("opts")
    if isinstance(opts, Mapping):
        budget_ms = max(budget_ms, float(opts.get("replyTimeout", 5000)))
    return budget_ms / 1000.0


class NodeDriver:
    """One long-lived ``node tests/interop/driver.mjs`` process."""

    def __init__(
        self,
        *,
        node: str = "node",
        script: Path = DRIVER_SCRIPT,
        ready_timeout: float = 15.0,
        call_timeout: float = 10.0,
        label: str = "node",
    ) -> None:
        self.node = node
        self.script = Path(script).resolve()
        self.ready_timeout = ready_timeout
        self.call_timeout = call_timeout
        self.label = label
        self.events: list[dict[str, Any]] = []
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pending_events: deque[dict[str, Any]] = deque()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_req = 1
        self._changed: asyncio.Condition | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._stdout_task: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._eof = False

    # ------------------------------------------------------------ lifecycle

    async def start(self, cwd: str | os.PathLike[str] | None = None) -> NodeDriver:
        """Spawn the driver and wait for its ready line."""
        if self._proc is not None:
            raise NodeDriverError("driver already started")
        ensure_node_modules(self.script.parent)
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        self._ready = loop.create_future()
        self._proc = await asyncio.create_subprocess_exec(
            self.node,
            str(self.script),
            cwd=str(cwd) if cwd is not None else str(self.script.parent),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_STREAM_LIMIT,
            start_new_session=True,  # its own process group, killed as one (tests/conftest.py)
        )
        self.pid = self._proc.pid
        self._stdout_task = asyncio.create_task(self._read_stdout(), name=f"{self.label}-stdout")
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"{self.label}-stderr")
        try:
            await asyncio.wait_for(self._ready, self.ready_timeout)
        except (TimeoutError, NodeDriverError) as exc:
            await self.close()
            detail = str(exc) if isinstance(exc, NodeDriverError) else f"timeout after {self.ready_timeout}s"
            raise NodeDriverError(f"{self.label}: driver did not become ready: {detail}") from exc
        return self

    async def close(self, timeout: float = 5.0) -> int | None:
        """Ask the driver to exit, kill it by PID if it lingers, and always reap it."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None and proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                proc.stdin.write(b'{"cmd":"exit"}\n')
                await asyncio.wait_for(proc.stdin.drain(), 1.0)
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("%s: driver pid %s ignored exit, killing its process group", self.label, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        for task in (self._stdout_task, self._stderr_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, 2.0)
        self._fail_pending(NodeDriverError(f"{self.label}: driver closed"))
        return proc.returncode

    async def __aenter__(self) -> NodeDriver:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and not self._eof

    @property
    def stderr_tail(self) -> list[str]:
        return list(self._stderr_tail)

    # ------------------------------------------------------------- commands

    async def call(self, cmd: str, /, *, call_timeout: float | None = None, **fields: Any) -> Any:
        """Send one command and return its result; ok:false raises NodeCallError.

        ``call_timeout`` (seconds) bounds the wait on the Python side; by default
        it covers the command's own ``timeout``/``opts.replyTimeout`` plus slack.
        Fields named after Python keywords take a trailing underscore
        (``except_=[...]`` is sent as ``"except"``).
        """
        fields = {_field_name(k): v for k, v in fields.items()}
        if not self.running or self._proc is None or self._proc.stdin is None:
            raise NodeDriverError(f"{self.label}: driver is not running{self._stderr_note()}")
        req = self._next_req
        self._next_req += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[req] = future
        line = json.dumps({"cmd": cmd, "req": req, **to_wire(fields)}, separators=(",", ":"))
        try:
            self._proc.stdin.write(line.encode() + b"\n")
            await self._proc.stdin.drain()
            if call_timeout is None:
                call_timeout = max(self.call_timeout, _command_budget_s(fields) + REPLY_SLACK_S)
            reply = await asyncio.wait_for(future, call_timeout)
        except TimeoutError as exc:
            raise NodeDriverError(f"{self.label}: no reply to {cmd} within {call_timeout:.1f}s") from exc
        except (ConnectionError, BrokenPipeError) as exc:
            raise NodeDriverError(f"{self.label}: driver pipe closed during {cmd}{self._stderr_note()}") from exc
        finally:
            self._replies.pop(req, None)
        if not reply.get("ok"):
            raise NodeCallError(cmd, str(reply.get("error")), reply.get("data"))
        return reply.get("result")

    async def wait_event(
        self,
        predicate: EventPredicate | None = None,
        *,
        ev: str | None = None,
        name: str | None = None,
        event: str | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Consume and return the first queued event matching all given criteria.

        Events that do not match stay queued in arrival order for later waits.
        """

        def matches(item: dict[str, Any]) -> bool:
            if ev is not None and item.get("ev") != ev:
                return False
            if name is not None and item.get("name") != name:
                return False
            if event is not None and item.get("event") != event:
                return False
            return predicate is None or bool(predicate(item))

        found: list[dict[str, Any]] = []

        def take() -> bool:
            for item in self._pending_events:
                if matches(item):
                    self._pending_events.remove(item)
                    found.append(item)
                    return True
            return self._eof

        if self._changed is None:
            raise NodeDriverError(f"{self.label}: driver not started")
        criteria = {k: v for k, v in {"ev": ev, "name": name, "event": event}.items() if v is not None}
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(take), timeout)
        except TimeoutError as exc:
            raise NodeDriverError(
                f"{self.label}: no event matching {criteria or ''}{' + predicate' if predicate else ''} "
                f"within {timeout}s; unconsumed: {list(self._pending_events)[-10:]}"
            ) from exc
        if not found:
            raise NodeDriverError(f"{self.label}: driver exited while waiting for {criteria}{self._stderr_note()}")
        return found[0]

    def pending_events(self) -> list[dict[str, Any]]:
        """Events received but not yet consumed by wait_event."""
        return list(self._pending_events)

    def drain_events(self) -> list[dict[str, Any]]:
        """Consume every queued event (e.g. to ignore what a setup step produced)."""
        drained = list(self._pending_events)
        self._pending_events.clear()
        return drained

    # ------------------------------------------------------------ internals

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stream = self._proc.stdout
        try:
            while True:
                raw = await stream.readline()
                if not raw:
                    break
                try:
                    message = from_wire(json.loads(raw))
                except ValueError:
                    log.warning("%s: non-JSON stdout line: %r", self.label, raw[:200])
                    continue
                await self._dispatch(message)
        finally:
            self._eof = True
            if self._stderr_task is not None:
                # let the stderr reader catch up so the failure carries Node's own message
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
            self._fail_pending(NodeDriverError(f"{self.label}: driver exited{self._stderr_note()}"))
            if self._changed is not None:
                async with self._changed:
                    self._changed.notify_all()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("ev")
        if kind == "reply":
            future = self._replies.get(message.get("req"))  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(message)
            return
        if kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
            return
        self.events.append(message)
        assert self._changed is not None
        async with self._changed:
            self._pending_events.append(message)
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        stream = self._proc.stderr
        while True:
            raw = await stream.readline()
            if not raw:
                return
            text = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(text)
            log.debug("%s stderr: %s", self.label, text)

    def _fail_pending(self, error: NodeDriverError) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(error)

    def _stderr_note(self) -> str:
        if not self._stderr_tail:
            return ""
        return "\n--- driver stderr (tail) ---\n" + "\n".join(list(self._stderr_tail)[-20:])
