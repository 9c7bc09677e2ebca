"""Typed protocol errors.

Every codec in `protocol/` raises one of these instead of guessing: a malformed packet is a fact
the caller must act on (close the session, answer CONNECT_ERROR, count it), never something to
silently reinterpret.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Input that does not follow the protocol."""


class EngineIOError(ProtocolError):
    """A malformed Engine.IO packet or payload."""


class SocketIOError(ProtocolError):
    """A malformed Socket.IO packet, or attachments that do not match their placeholders."""


class PayloadTooLarge(ProtocolError):
    """Input larger than the configured maximum payload."""


class ClusterMessageError(ProtocolError):
    """A Redis adapter message that cannot be decoded or lacks required fields."""
