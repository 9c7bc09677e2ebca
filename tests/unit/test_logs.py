"""KeyValueFormatter: one event is one line whatever its values hold, plain values stay plain.

Client-controlled text (request paths, room names, error messages) goes into log records as
arguments; none of it may start a line of its own (a forged `ts=... level=error`) or a field of
its own (`key=a level=error`).
"""

from __future__ import annotations

import logging
import re
import sys

import pytest

from gateway.ops.logs import MAX_EXCEPTION_CHARS, KeyValueFormatter, quote_value

FORGED = "/api/\nts=2020-01-01T00:00:00.000Z level=error logger=gateway.api forged=yes"
PREFIX = re.compile(r"^ts=\S+ level=info logger=gateway\.test ")


def record(msg: str, *args: object, level: int = logging.INFO, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("gateway.test", level, __file__, 1, msg, args or None, exc_info)  # type: ignore[arg-type]


def fmt(msg: str, *args: object, **kwargs: object) -> str:
    return KeyValueFormatter().format(record(msg, *args, **kwargs))  # type: ignore[arg-type]


def fields(line: str) -> list[str]:
    """The `key=value` fields of a line, reading `"..."` values the way logfmt parsers do."""
    return re.findall(r'(\S+?)=(?:"(?:[^"\\]|\\.)*"|\S*)', line)


def test_plain_values_stay_unquoted() -> None:
    line = fmt("sio_connect sid=%s nsp=%s count=%d took=%.2f ok=%s none=%s", "a1B2_c-3", "/chat", 3, 1.5, True, None)
    assert PREFIX.match(line)
    assert line.endswith("sio_connect sid=a1B2_c-3 nsp=/chat count=3 took=1.50 ok=True none=None")


@pytest.mark.parametrize(
    "value, written",
    [
        ("a b", '"a b"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("k=v", '"k=v"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("cr\rtab\tesc\x1bdel\x7f", '"cr\\rtab\\tesc\\x1bdel\\x7f"'),
        ("nul\x00", '"nul\\x00"'),
        ("sep\u2028par\u2029nel\x85", '"sep\\u2028par\\u2029nel\\x85"'),
        ("é✓", "é✓"),
    ],
)
def test_quote_value(value: str, written: str) -> None:
    assert quote_value(value) == written


@pytest.mark.parametrize("value", [FORGED, "r\r\nlevel=error", "x level=error", "\u2028level=error", 'q" level=error "'])
def test_str_argument_cannot_forge_a_line_or_a_field(value: str) -> None:
    line = fmt("api_unauthorized path=%s address=%s", value, "127.0.0.1")
    assert "\n" not in line and "\r" not in line and line.isprintable()
    assert [name for name in fields(line)] == ["ts", "level", "logger", "path", "address"]
    assert line.endswith(" address=127.0.0.1")


def test_repr_argument_stays_one_line() -> None:
    class Multiline:
        def __repr__(self) -> str:
            return "first\nts=x level=error"

    line = fmt("sio_bad_packet sid=%s error=%r thing=%r", "abc", "bad\nthing", Multiline())
    assert "\n" not in line
    assert "error='bad\\nthing'" in line  # a str's repr is kept as repr() writes it
    assert "thing=first\\nts=x level=error" in line


def test_containers_and_mapping_arguments() -> None:
    assert fmt("rooms=%s", ["a\nb", "c"]).endswith("""rooms="['a\\\\nb', 'c']\"""")
    assert "\n" not in fmt("data=%s", {"k": "v\nw"})
    assert fmt("a=%(a)s b=%(b)d", {"a": "x y", "b": 2}).endswith('a="x y" b=2')


def test_template_and_third_party_messages_are_made_one_line() -> None:
    # e.g. asyncio's "Task exception was never retrieved\nfuture: ..."
    line = fmt("multi\nline\r\nmessage")
    assert line.endswith("multi\\nline\\r\\nmessage")


def test_a_template_that_does_not_fit_its_arguments_is_one_line() -> None:
    line = fmt("oops a=%s b=%s", "only one")
    assert "log_format_failed" in line and "\n" not in line


def test_exception_is_one_capped_line() -> None:
    try:
        raise ValueError("boom\n" * 5000 + "the end")
    except ValueError:
        exc_info = sys.exc_info()
    line = fmt("http_handler_failed path=%s", "/x", level=logging.ERROR, exc_info=exc_info)
    assert "\n" not in line
    assert " exc='Traceback (most recent call last):" in line
    assert "the end" in line, "the tail of a traceback (the exception itself) is kept"
    assert len(line) < MAX_EXCEPTION_CHARS + 300


def test_formatter_is_what_setup_logging_installs() -> None:
    from gateway.ops.logs import setup_logging

    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        setup_logging("INFO")
        assert any(isinstance(h.formatter, KeyValueFormatter) for h in root.handlers)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
