"""JS values on the Redis adapter's wire: numbers, dates, binary, and the msgpack / JSON codecs.

Node has one number type and writes `2.0` as the integer 2; Python would write a float, and Node
peers and the golden vectors compare bytes, so every encoder goes through `js_numbers`. Dates are
msgpack timestamps (ext -1) or the JS ISO text on JSON paths; on JSON paths `bytes` become
`{"type":"Buffer","data":[...]}` as Node's `Buffer#toJSON` writes them.

Decoding never lets msgpack/orjson exceptions escape: anything undecodable raises
`ClusterMessageError`, which the caller counts and drops.
"""

from __future__ import annotations

import re
import struct
from datetime import datetime, timedelta, timezone
from typing import Any

import msgpack
import orjson

from ..errors import ClusterMessageError

MISSING: Any = object()
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_BINARY = (bytes, bytearray, memoryview)
# Errors the codecs may raise on hostile or malformed input; all become ClusterMessageError.
_CODEC_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, KeyError, IndexError)

# -- values: JS numbers, dates, binary ----------------------------------------------------------

# Integral floats outside this range stay floats: msgpack/orjson cannot write them as integers,
# and Node would not produce integers there either (beyond 2^64 JS prints exponents).
_INT_MIN = -(2**63)
_INT_MAX = 2**64


def js_float(value: float) -> int | float:
    if value.is_integer() and _INT_MIN <= value < _INT_MAX:
        return int(value)
    return value


# Types `js_numbers` never needs to look into or change.
_SCALARS = frozenset({str, int, bool, type(None), bytes})


def js_numbers(value: Any) -> Any:
    """Return `value` with integral floats turned into ints, recursively, the way JS sees them.

    Node writes `2.0` as the integer 2 (msgpack fixint, JSON `2`); Python would write a float.
    Copy-on-write: containers without floats are returned as the same object, so the common
    case (strings, ints, small dicts) costs one walk and no allocation; scalars inside a
    container are passed over without a call. Tuples come back as lists when something inside
    changed (both encode as arrays anyway).
    """
    kind = type(value)
    if kind is float:
        return js_float(value)
    if kind is dict:
        changed: dict[Any, Any] | None = None
        for key, item in value.items():
            kind = type(item)
            if kind in _SCALARS:
                continue
            new = js_float(item) if kind is float else js_numbers(item)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if kind is list or kind is tuple:
        out: list[Any] | None = None
        for index, item in enumerate(value):
            kind = type(item)
            if kind in _SCALARS:
                continue
            new = js_float(item) if kind is float else js_numbers(item)
            if new is not item:
                if out is None:
                    out = list(value)
                out[index] = new
        return value if out is None else out
    return value


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC: JS Dates are instants, and UTC is the only safe guess."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=_UTC)
    return moment.astimezone(_UTC)


def js_iso_string(moment: datetime) -> str:
    """`Date#toISOString()` (what `JSON.stringify` writes for a Date): millisecond precision, Z."""
    utc = _as_utc(moment)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def js_date_string(moment: datetime | int | float) -> str:
    """`Date#toString()` of a Node process running in UTC, as socket.io puts in `handshake.time`.

    `moment` is a datetime or milliseconds since the epoch. Always rendered in UTC: the zone's
    long name in parentheses comes from ICU and cannot be reproduced for other zones.
    """
    if isinstance(moment, datetime):
        utc = _as_utc(moment)
    else:
        utc = _EPOCH + timedelta(milliseconds=moment)
    return (
        f"{_WEEKDAYS[utc.weekday()]} {_MONTHS[utc.month - 1]} {utc.day:02d} {utc.year:04d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} GMT+0000 (Coordinated Universal Time)"
    )


def _timestamp_of(moment: datetime) -> msgpack.Timestamp:
    # Exact integer arithmetic (no float timestamp), so negative instants and sub-second parts
    # come out as notepack writes them: floor seconds plus non-negative nanoseconds.
    delta = _as_utc(moment) - _EPOCH
    return msgpack.Timestamp(delta.days * 86400 + delta.seconds, delta.microseconds * 1000)


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _timestamp_of(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} for the Redis adapter")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return js_iso_string(value)
    if isinstance(value, _BINARY):
        # Node's JSON.stringify of a Buffer (classic JSON paths flatten binary this way).
        return {"type": "Buffer", "data": list(bytes(value))}
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} for the Redis adapter")


def _ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _ext_hook(code: int, data: bytes) -> Any:
    """notepack's non-timestamp extensions (spec 5): type 0 is undefined / legacy date / bytes."""
    if code == 0:
        if data == b"\x00":  # d4 00 00: undefined
            return None
        if len(data) == 8:  # fixext 8 type 0: legacy millisecond date (hi int32, lo uint32)
            high = int.from_bytes(data[:4], "big", signed=True)
            low = int.from_bytes(data[4:], "big")
            ms = high * 2**32 + low
            try:
                return _ms_to_datetime(ms)
            except OverflowError:
                seconds, rest = divmod(ms, 1000)
                return msgpack.Timestamp(seconds, rest * 1_000_000)
        return bytes(data)  # ArrayBuffer
    return [code, bytes(data)]


_FLOAT64 = struct.Struct(">d")


def may_hold_integral_float(packed: bytes) -> bool:
    """Whether msgpack bytes may hold a float64 that JS would have written as an integer.

    Every float msgpack writes is the marker byte 0xcb and 8 bytes of IEEE double. Each 0xcb
    is read as such a double; the answer is no only when none of them is integral in the
    integer range, so a message whose floats are all fractional (a timestamp in milliseconds
    with a fraction, a price) needs no walk of its value in Python. A 0xcb that is part of a
    string or another number reads as some double too: at worst a needless walk, never a
    missed one.
    """
    at = packed.find(b"\xcb")
    end = len(packed) - 8
    unpack_from = _FLOAT64.unpack_from
    while 0 <= at < end:
        (value,) = unpack_from(packed, at + 1)
        if value.is_integer() and _INT_MIN <= value < _INT_MAX:
            return True
        at = packed.find(b"\xcb", at + 1)
    return False


# Where orjson's text may hold a float JS writes as an integer: `2.0` (an integral float below
# 1e16 always ends in `.0` before a delimiter) or a positive exponent (every float from 1e16 up
# is integral; orjson writes `1e+16`). Two searches, each with a literal prefix the re engine
# skips ahead to, cost a fifth of one for the alternation.
_INTEGRAL_POINT = re.compile(rb"\.0[,\]}]")
_POSITIVE_EXPONENT = re.compile(rb"e\+")


def json_may_hold_integral_float(text: bytes) -> bool:
    """`may_hold_integral_float` for orjson's text: no means the JS-number walk would change
    nothing. A match inside a string only costs a needless walk, never a wrong byte."""
    return _INTEGRAL_POINT.search(text) is not None or _POSITIVE_EXPONENT.search(text) is not None


def pack_as_is(obj: Any) -> bytes:
    """msgpack of a value whose floats are already as JS would write them (no walk)."""
    try:
        return msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)
    except _CODEC_ERRORS as exc:
        raise ClusterMessageError(f"cannot encode message as msgpack: {exc}") from exc


def pack(obj: Any) -> bytes:
    """msgpack as notepack writes it. Packed as is first: only when the result may hold an
    integral float64 (see `may_hold_integral_float`) is the value walked for integral floats
    and packed again if the walk changed something. A message without floats, or with
    fractional ones only, costs no walk in Python."""
    try:
        packed = msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)
        if may_hold_integral_float(packed):
            js = js_numbers(obj)
            if js is not obj:
                packed = msgpack.packb(js, use_bin_type=True, default=_msgpack_default)
        return packed
    except _CODEC_ERRORS as exc:
        raise ClusterMessageError(f"cannot encode message as msgpack: {exc}") from exc


def dump_json(obj: Any) -> bytes:
    try:
        return orjson.dumps(
            js_numbers(obj), default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME
        )
    except _CODEC_ERRORS as exc:  # orjson.JSONEncodeError is a TypeError
        raise ClusterMessageError(f"cannot encode message as JSON: {exc}") from exc


def unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, timestamp=3, ext_hook=_ext_hook)
    except _CODEC_ERRORS as exc:
        first = exc
    # A timestamp outside datetime's range (years < 1 or > 9999) fails only the datetime
    # conversion: decode again keeping timestamps as msgpack.Timestamp. Garbage fails twice.
    try:
        return msgpack.unpackb(payload, raw=False, timestamp=0, ext_hook=_ext_hook)
    except _CODEC_ERRORS:
        raise ClusterMessageError(f"undecodable msgpack payload: {first}") from first


def load_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ClusterMessageError(f"undecodable JSON payload: {exc}") from exc


def sniff(payload: bytes | bytearray | memoryview) -> Any:
    """Decode a request/response/sharded payload: `{` means JSON, anything else msgpack."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ClusterMessageError(f"payload must be bytes, not {type(payload).__name__}")
    data = bytes(payload)
    if not data:
        raise ClusterMessageError("empty payload")
    if data[0] == 0x7B:
        return load_json(data)
    return unpack(data)


def contains_binary(value: Any) -> bool:
    """True if bytes-like values are nested anywhere in `value` (sharded msgpack switch)."""
    if isinstance(value, _BINARY):
        return True
    if isinstance(value, (list, tuple)):
        return any(contains_binary(item) for item in value)
    if isinstance(value, dict):
        return any(contains_binary(item) for item in value.values())
    return False
