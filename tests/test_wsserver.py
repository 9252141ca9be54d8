"""The WebSocket server (``transports/wsserver.py``) as a client meets it: the live
edge written by ``publish``, pings, oversized messages, a bad handshake, and an
upgrade that comes after a REST request on a kept-alive connection (hypercorn's)."""

from __future__ import annotations

import httpx
import pytest
import trio
from conftest import RunningServer, User
from test_streaming import RawTalker, chunk
from test_websocket import receive_all, store_w1
from trio_websocket import ConnectionClosed

from voxer_stream.client.h2conn import H2Connection
from voxer_stream.client.ws import open_ws
from voxer_stream.transports.wsserver import MAX_MESSAGE, WebSocketConnection
from voxer_stream.wire import MAX_FRAME_SIZE, Chunk, End, Listen, Live, Open, encode_frame


@pytest.fixture
async def stored(server: RunningServer) -> tuple[User, User, str]:
    return await store_w1(server)


async def test_live_listeners_are_written_by_publish(
    server: RunningServer, stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three WebSocket listeners at the live edge: every chunk reaches each, in order,
    and most of them by ``try_send`` from the talker's ``publish``."""
    direct = 0
    try_send = WebSocketConnection.try_send

    def counted(self: WebSocketConnection, frame: bytes) -> bool:
        nonlocal direct
        taken = try_send(self, frame)
        direct += taken
        return taken

    monkeypatch.setattr(WebSocketConnection, "try_send", counted)
    alice, bob, thread = stored
    async with await H2Connection.connect(server.url) as conn:
        talker = await RawTalker.open(
            conn, alice.token, Open(msg="w-pub", thread=thread, created=1)
        )
        await talker.chunk(chunk(0))
        await talker.read_until(lambda: talker.client.acked >= 0)
        async with (
            open_ws(server.url, bob.token) as a,
            open_ws(server.url, bob.token) as b,
            open_ws(server.url, bob.token) as c,
        ):
            for ws in (a, b, c):
                await ws.send_message(encode_frame(Listen(msg="w-pub", live_edge=True)))
                await ws.get_message()  # message_info
                assert (await ws.get_message()) == encode_frame(Live(seq=1))
            for seq in range(1, 41):
                await talker.chunk(chunk(seq))
                await trio.sleep(0.002)
            await talker.close()
            for ws in (a, b, c):
                frames, code = await receive_all(ws)
                assert [f.seq for f in frames if isinstance(f, Chunk)] == list(range(1, 41))
                assert frames[-1] == End(chunks=41, duration=41 * 960) and code == 1000
    assert direct >= 60, direct  # most of the 120; the rest went through the tail


async def test_ping_is_answered(server: RunningServer, stored) -> None:
    _, bob, _ = stored
    async with open_ws(server.url, bob.token) as ws:
        with trio.fail_after(5):
            await ws.ping(b"are you there")


async def test_message_beyond_the_limit_closes_with_1009(server: RunningServer, stored) -> None:
    """Up to ``MAX_MESSAGE`` the binding answers FRAME_TOO_LARGE (a test of its own in
    test_websocket.py); beyond, the server does not buffer it: close 1009."""
    assert MAX_MESSAGE > MAX_FRAME_SIZE
    _, bob, _ = stored
    async with open_ws(server.url, bob.token) as ws:
        await ws.send_message(bytes(MAX_MESSAGE + 1))
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
    assert closed.value.reason.code == 1009


async def test_bad_handshake_gets_400(server: RunningServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        reply = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                reply += data
    assert reply.startswith(b"HTTP/1.1 400"), reply[:60]


async def test_upgrade_after_a_rest_request_on_one_connection(server: RunningServer) -> None:
    """Only a connection's first request is looked at; a later upgrade on a kept-alive
    connection is hypercorn's, and works as before."""
    port = int(server.url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        with trio.fail_after(5):
            while b'"status"' not in reply:
                reply += await stream.receive_some(65536)
        await stream.send_all(
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reply = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in reply:
                reply += await stream.receive_some(65536)
    assert reply.startswith(b"HTTP/1.1 101"), reply[:60]
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/v1/health")).status_code == 200
