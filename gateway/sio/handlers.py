"""How the Socket.IO layer calls application code: listeners, their acknowledgement rule, and the
errors an application raises or receives.

Shared by sockets, namespaces and broadcasts, so that a handler is called, logged and
acknowledged by one rule wherever it is registered.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from typing import Any, Callable, Iterable

from protocol.cluster.messages import Room

log = logging.getLogger("gateway.server")  # the name operators filter on, kept across modules

Handler = Callable[..., Any]


class ConnectionRefused(Exception):
    """Raised by a middleware to refuse a connection; sent to the client as CONNECT_ERROR."""

    def __init__(self, message: str = "refused", data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class AckTimeout(asyncio.TimeoutError):
    """An acknowledgement did not arrive in time."""


def as_rooms(value: Room | Iterable[Room]) -> list[Room]:
    """One room or several, as the list the adapter takes (a string is one room, not letters)."""
    if isinstance(value, (str, int)):
        return [value]
    return list(value)  # type: ignore[arg-type]


class Listener:
    """A registered handler plus how to call it: whether it takes the `ack` keyword, and whether
    its return value is the acknowledgement even when it is None (`on(event, fn, ack=True)`).

    Without `ack=True` a handler returning None does not acknowledge, like a Node.js listener that
    never calls its callback: the client's emitWithAck times out instead of getting an empty ack
    it cannot tell from a real one."""

    __slots__ = ("fn", "wants_ack", "always_ack")

    def __init__(self, fn: Handler, always_ack: bool = False) -> None:
        self.fn = fn
        self.always_ack = always_ack
        code = getattr(fn, "__code__", None)
        if type(fn) is types.FunctionType and code is not None and not hasattr(fn, "__wrapped__") and not hasattr(fn, "__signature__"):
            # A plain function (most handlers, registered per connection): its code object says
            # what inspect.signature would, without building a Signature (9 % of a connection
            # storm's CPU). Names: positional, keyword-only, then *args (co_varnames' order).
            flags = code.co_flags
            named = code.co_argcount + code.co_kwonlyargcount + (1 if flags & inspect.CO_VARARGS else 0)
            self.wants_ack = "ack" in code.co_varnames[:named] or bool(flags & inspect.CO_VARKEYWORDS)
            return
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            params = []  # type: ignore[assignment]
        self.wants_ack = any(p.name == "ack" or p.kind is p.VAR_KEYWORD for p in params)


# What `run_handler` returns for a handler that raised: not a value to acknowledge with, even for
# a handler registered with `ack=True` (a Node.js listener that throws never calls its callback).
FAILED: Any = object()


def run_handler(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a handler; schedule it if it is a coroutine. Errors are logged, never raised: a
    faulty handler must not take the connection or the node down."""
    try:
        result = fn(*args, **kwargs)
    except Exception:
        log.exception("handler_failed handler=%s", getattr(fn, "__qualname__", fn))
        return FAILED
    if result is None:  # a plain handler that returned nothing: most calls, no awaitable check
        return None
    if inspect.isawaitable(result):
        task = asyncio.ensure_future(result)
        task.add_done_callback(_log_task_error)
        return task
    return result


def _log_task_error(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("handler_failed error=%r", exc, exc_info=exc)
