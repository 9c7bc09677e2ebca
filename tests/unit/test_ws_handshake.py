"""The WebSocket opening handshake: our fast path answers exactly what the `websockets` library's
`ServerProtocol.accept` answers (status and bytes, the Date aside), for plain requests and for
every variant the fast path hands back to the library."""

from __future__ import annotations

import re

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

from gateway.engine import websocket
from gateway.engine.websocket import handshake

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample nonce
BASE = {"host": "x", "upgrade": "websocket", "connection": "Upgrade", "sec-websocket-key": KEY, "sec-websocket-version": "13"}


def library(path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    response = ServerProtocol(extensions=None).accept(WsRequest(path, Headers(list(headers.items()))))
    return response.status_code, response.serialize()


def without_date(data: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"", data)


VARIANTS = [
    {},
    {"connection": "keep-alive, Upgrade"},
    {"connection": "Upgrade, keep-alive"},
    {"connection": "upgrade"},
    {"upgrade": "WebSocket"},
    {"sec-websocket-extensions": "permessage-deflate; client_max_window_bits"},  # we negotiate none
    {"sec-websocket-protocol": "chat"},  # no subprotocol chosen
    {"upgrade": "websocket, h2c"},
    {"upgrade": " websocket"},
    {"upgrade": "h2c"},
    {"connection": "close"},
    {"connection": "keep-alive, upgraded"},
    {"sec-websocket-key": KEY[:-2]},
    {"sec-websocket-key": "dGhlIHNhbXBsZSBub25j$Q=="},
    {"sec-websocket-key": "dGhlIHNhbXBsZSBub25jZXg="},  # 17 bytes
    {"sec-websocket-key": f"{KEY}, {KEY}"},  # repeated: our head parser joins them
    {"sec-websocket-key": "é" * 24},
    {"sec-websocket-version": "12"},
    {"sec-websocket-version": "13, 13"},
]


@pytest.mark.parametrize("change", VARIANTS, ids=lambda c: repr(c) if c else "plain")
def test_same_answer_as_the_library(change: dict[str, str]) -> None:
    headers = {**BASE, **change}
    status, data = handshake("/socket.io/?EIO=4&transport=websocket", headers)
    expected_status, expected = library("/socket.io/?EIO=4&transport=websocket", headers)
    assert status == expected_status
    assert without_date(data) == without_date(expected)


@pytest.mark.parametrize("missing", ["upgrade", "connection", "sec-websocket-key", "sec-websocket-version"])
def test_missing_header_same_refusal(missing: str) -> None:
    headers = {k: v for k, v in BASE.items() if k != missing}
    status, data = handshake("/p", headers)
    expected_status, expected = library("/p", headers)
    assert status == expected_status != 101
    assert without_date(data) == without_date(expected)


def test_rfc6455_accept_value_and_date() -> None:
    status, data = handshake("/p", BASE)
    assert status == 101
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n" in data
    date = re.search(rb"\r\nDate: ([^\r]*)\r\n", data)
    assert date is not None and date.group(1).endswith(b" GMT")
    _, expected = library("/p", BASE)
    # The library's date, made in the same second or the next.
    assert len(date.group(1)) == len(re.search(rb"\r\nDate: ([^\r]*)\r\n", expected).group(1))  # type: ignore[union-attr]


def test_fast_path_taken_for_plain_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain request never builds the library's protocol object."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("library used for a plain request")

    monkeypatch.setattr(websocket, "ServerProtocol", forbidden)
    assert handshake("/p", BASE)[0] == 101
