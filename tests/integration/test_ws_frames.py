"""Client WebSocket frames the fast path does not take: split across reads, fragmented messages
with control frames between the fragments, a close after all of it. The websockets library only
ever sees whole frames from us, so these are the cases where our own buffering decides.

Against the plain Engine.IO echo endpoint of the conformance app, over a real socket."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator

import pytest
from websockets.frames import Close, Frame, Opcode

from tests.gateway_process import GatewayProcess
from tests.ports import LOOPBACK

READ_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    server = GatewayProcess("tests.conformance_app", log_dir=tmp_path_factory.mktemp("ws-frames")).start()
    try:
        yield server
    finally:
        server.stop()


def masked(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])


async def open_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /engine.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    assert head.startswith(b"HTTP/1.1 101"), head
    opcode, payload = await read_frame(reader)
    assert opcode == Opcode.TEXT and payload.startswith(b"0{"), payload  # the Engine.IO open packet
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[Opcode, bytes]:
    head = await asyncio.wait_for(reader.readexactly(2), READ_TIMEOUT_S)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    payload = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S)
    return Opcode(head[0] & 0x0F), payload


async def next_data_frame(reader: asyncio.StreamReader) -> tuple[Opcode, bytes]:
    """The next frame that is not an Engine.IO ping (the echo app pings every 300 ms)."""
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == Opcode.TEXT and payload == b"2":
            continue
        return opcode, payload


async def test_a_frame_split_into_single_bytes_is_delivered_once_whole(echo_server: GatewayProcess) -> None:
    reader, writer = await open_websocket(echo_server.port)
    data = masked(Opcode.TEXT, b"4" + b"x" * 300)  # a 16-bit length header, split inside it too
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
    assert await next_data_frame(reader) == (Opcode.TEXT, b"4" + b"x" * 300)
    writer.close()


async def test_fragments_with_a_ping_between_them_then_simple_frames_again(echo_server: GatewayProcess) -> None:
    reader, writer = await open_websocket(echo_server.port)
    first = masked(Opcode.TEXT, b"4hel", fin=False)
    ping = masked(Opcode.PING, b"are you there")
    last = masked(Opcode.CONT, b"lo", fin=True)
    after = masked(Opcode.TEXT, b"4again")
    stream = first + ping + last + after
    # Cut the stream in the middle of the ping and of the last fragment.
    cuts = [len(first) + 3, len(first) + len(ping) + 2, len(stream)]
    start = 0
    for cut in cuts:
        writer.write(stream[start:cut])
        await writer.drain()
        await asyncio.sleep(0.02)
        start = cut
    seen = [await next_data_frame(reader) for _ in range(3)]
    assert (Opcode.PONG, b"are you there") in seen
    assert [frame for frame in seen if frame[0] == Opcode.TEXT] == [(Opcode.TEXT, b"4hello"), (Opcode.TEXT, b"4again")]
    # A close frame split in two completes the closing handshake: the server answers and hangs up.
    close = masked(Opcode.CLOSE, Close(1000, "bye").serialize())
    writer.write(close[:3])
    await writer.drain()
    await asyncio.sleep(0.02)
    writer.write(close[3:])
    await writer.drain()
    opcode, _ = await next_data_frame(reader)
    assert opcode == Opcode.CLOSE
    assert await asyncio.wait_for(reader.read(), READ_TIMEOUT_S) == b""
    writer.close()


async def test_a_frame_announcing_more_than_the_limit_is_refused_without_waiting_for_it(echo_server: GatewayProcess) -> None:
    reader, writer = await open_websocket(echo_server.port)
    # 100 MB announced, 10 bytes sent: the server must not wait (and buffer) for the rest.
    head = bytes([0x81, 0x80 | 127]) + (100_000_000).to_bytes(8, "big") + os.urandom(4)
    writer.write(head + b"0123456789")
    await writer.drain()
    opcode, payload = await next_data_frame(reader)
    assert opcode == Opcode.CLOSE
    assert Close.parse(payload).code == 1009  # message too big
    writer.close()
