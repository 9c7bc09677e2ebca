"""One-line structured logs.

Messages are written as `event key=value ...`; the formatter prefixes time, level and logger, so
every line is greppable and machine-parseable without a JSON dependency in the hot path.

One event is one line, whatever the values: many values come from clients (request paths, room
names, namespaces, error texts), and a value holding a newline could otherwise write a line of its
own, e.g. a forged `ts=... level=error ...`. So the formatter escapes the *arguments* of a record
before they are put into its `"event key=%s other=%r"` template: a `%s` value that is not a plain
token is written `"..."` with backslash escapes (logfmt style: plain values such as `sid=abc` stay
as they are), a `%r` value keeps its repr but on one line. As a last guarantee any line break or
control character still left in the line (from a template, a third-party library's message or a
traceback) is escaped too, and tracebacks are capped in length.

The formatter only runs for records that are actually emitted, so none of this costs anything on
the paths that log nothing.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

# A traceback is kept with its event on one line, but a client must not be able to make the node
# write a 166 KB line: past this many characters only its beginning and its end (where the
# exception and the innermost frames are) are kept.
MAX_EXCEPTION_CHARS = 2048

# A value written without quotes: no whitespace, no quote, no backslash, no `=` (so `key=a=b` and
# `key=a b=c` cannot be read as two fields), and every character printable.
_PLAIN_VALUE = re.compile(r'[^\s"\\=]+')

_ESCAPES = {i: f"\\x{i:02x}" for i in range(0x20)}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x7F: "\\x7f", ord('"'): '\\"', ord("\\"): "\\\\"})
# For the final pass over a whole line: only what could break it, quotes stay as they are.
_LINE_ESCAPES = {k: v for k, v in _ESCAPES.items() if k not in (ord('"'), ord("\\"))}


def _escape_unprintable(text: str) -> str:
    """Escape what str.translate left unprintable (non-ASCII line and paragraph separators,
    format characters, ...), the way repr() writes them."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def quote_value(value: str) -> str:
    """A string as one `key=value` value: as is when it is a plain token, else `"..."` with
    quotes, backslashes and control characters escaped, so it can neither end the line nor
    start a new field."""
    if value.isprintable() and _PLAIN_VALUE.fullmatch(value):
        return value
    escaped = value.translate(_ESCAPES)
    if not escaped.isprintable():
        escaped = _escape_unprintable(escaped)
    return f'"{escaped}"'


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped; everything else as is."""
    if text.isprintable():
        return text
    escaped = text.translate(_LINE_ESCAPES)
    if not escaped.isprintable():
        escaped = _escape_unprintable(escaped)
    return escaped


def cap(text: str, limit: int) -> str:
    """At most about `limit` characters of `text`: its head and its tail, with the cut marked."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]} ...[{len(text) - head - tail} chars cut]... {text[-tail:]}"


class _LogValue:
    """An argument of a log record, escaped for the conversion its template asks for."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:  # %s
        return quote_value(str(self.value))

    def __repr__(self) -> str:  # %r (and what a container's str() shows of its items)
        return one_line(repr(self.value))


def _escaped(value: Any) -> Any:
    # Numbers and None cannot break a line, and %d / %.3f need the number itself.
    if value is None or isinstance(value, (int, float)):
        return value
    return _LogValue(value)


def escaped_message(record: logging.LogRecord) -> str:
    """The record's message with every argument escaped before interpolation."""
    msg = str(record.msg)
    args = record.args
    if not args:
        return msg
    if isinstance(args, Mapping):
        if "%(" in msg:
            return msg % {key: _escaped(value) for key, value in args.items()}
        return msg % (_escaped(args),)  # a lone dict argument for a positional %s
    return msg % tuple(_escaped(value) for value in args)


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=... logger=... <event key=value ...>`, always exactly one line."""

    def __init__(self, max_exception_chars: int = MAX_EXCEPTION_CHARS) -> None:
        super().__init__()
        self.max_exception_chars = max_exception_chars

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        try:
            message = escaped_message(record)
        except Exception as exc:
            # A template that does not fit its arguments must not turn into logging's own
            # multi-line "--- Logging error ---" report.
            message = f"log_format_failed template={quote_value(str(record.msg))} error={quote_value(repr(exc))}"
        line = f"ts={ts} level={record.levelname.lower()} logger={quote_value(record.name)} {message}"
        if record.exc_info:
            # Tracebacks stay on one line so a log shipper keeps them with their event.
            line += " exc=" + cap(repr(self.formatException(record.exc_info)), self.max_exception_chars)
        if record.stack_info:
            line += " stack=" + cap(repr(self.formatStack(record.stack_info)), self.max_exception_chars)
        return one_line(line)


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # The websockets library logs every connection at INFO; that is per-client noise here.
    logging.getLogger("websockets").setLevel(logging.WARNING)
