"""RESP2 request encoding for the two Redis commands on the broadcast path.

The cluster bridge publishes and receives every cross-node message; building `PUBLISH` frames
here (plain bytes, no client-library call per message) and parsing replies in bulk with hiredis
keeps the per-message cost small. Sans-I/O: bytes out, nothing else.
"""

from __future__ import annotations


def encode_command(*args: bytes) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(arg)
        parts.append(b"\r\n")
    return b"".join(parts)


_PUBLISH_HEAD = b"*3\r\n$7\r\nPUBLISH\r\n"


def encode_publish(channel: bytes, payload: bytes) -> bytes:
    """`PUBLISH channel payload`, the hot command, without the generic loop."""
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (_PUBLISH_HEAD, len(channel), channel, len(payload), payload)
