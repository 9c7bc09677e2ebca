"""An outgoing Engine.IO message, encoded once for every transport.

A broadcast builds one `Outbound` and hands the same object to every recipient session: WebSocket
sessions write `ws` (ready frame bytes, built on first use and then shared), polling sessions
queue the object and render `polling` records when their GET is answered.

`size` (bytes on the wire, about) is computed once per message so that a polling session can
bound what it has queued with one integer add per recipient (MAX_BUFFERED_BYTES).
"""

from __future__ import annotations

from protocol import engineio
from protocol.wsframe import binary_frame, text_frame


class Outbound:
    __slots__ = ("text", "binaries", "size", "_ws", "_polling")

    def __init__(self, text: bytes | None, binaries: list[bytes] | tuple[bytes, ...] = ()) -> None:
        # `text` is a complete Engine.IO text packet, type digit included (b"4..." for a message);
        # None for a message that is only binary (a plain Engine.IO binary message).
        self.text = text
        self.binaries = binaries
        size = len(text) if text is not None else 0
        if binaries:
            size += sum([len(b) for b in binaries]) * 4 // 3  # base64 over polling
        self.size = size
        self._ws: bytes | None = None
        self._polling: list[bytes] | None = None

    @property
    def ws(self) -> bytes:
        frames = self._ws
        if frames is None:
            frames = text_frame(self.text) if self.text is not None else b""
            if self.binaries:
                frames += b"".join([binary_frame(b) for b in self.binaries])
            self._ws = frames
        return frames

    @property
    def polling(self) -> list[bytes]:
        records = self._polling
        if records is None:
            records = [self.text] if self.text is not None else []
            for b in self.binaries:
                records.append(engineio.binary_record(b))
            self._polling = records
        return records

    @classmethod
    def message(cls, sio_text: bytes, binaries: list[bytes] | tuple[bytes, ...] = ()) -> "Outbound":
        """An Engine.IO MESSAGE carrying an encoded Socket.IO packet."""
        return cls(engineio.encode_message(sio_text), binaries)

    @classmethod
    def binary(cls, data: bytes) -> "Outbound":
        """A plain Engine.IO binary message (the plain Engine.IO echo endpoint sends these)."""
        return cls(None, (data,))

