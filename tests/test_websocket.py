"""The WebSocket binding (spec section 11) over real sockets: one frame per binary
message, auth by frame, one operation per connection, and close codes that mirror
the error registry (4000 + code)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
from conftest import RunningServer, User, make_thread, make_user
from test_streaming import SCHEMA, RawTalker, chunk, exchange, upload_body
from trio_websocket import ConnectionClosed

from voxer_stream.client.h2conn import H2Connection
from voxer_stream.client.ws import open_ws
from voxer_stream.wire import (
    Chunk,
    Close,
    End,
    Error,
    ErrorCode,
    Frame,
    Listen,
    Live,
    MessageInfo,
    Open,
    decode_frame,
    encode_frame,
)


async def receive_all(ws: Any) -> tuple[list[Frame], int | None]:
    """Every frame until the server closes, each validated against the CDDL schema."""
    frames: list[Frame] = []
    with trio.fail_after(10):
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as closed:
                return frames, closed.reason.code
            assert isinstance(message, bytes), "VXS-11-6: frames travel as binary messages"
            SCHEMA.validate_cbor(message)
            frames.append(decode_frame(message))


@pytest.fixture
async def stored(server: RunningServer) -> tuple[User, User, str]:
    return await store_w1(server)


async def store_w1(server: RunningServer) -> tuple[User, User, str]:
    """Alice stored a closed 3-chunk message "w1" in a thread with bob; eve is outside."""
    alice = await make_user(server.url, "alice")
    bob = await make_user(server.url, "bob")
    await make_user(server.url, "eve")
    thread = await make_thread(server.url, alice, bob)
    status, _ = await exchange(
        server.url,
        alice.token,
        upload_body(thread, "w1", chunk(0), chunk(1), chunk(2), Close(chunks=3)),
    )
    assert status == 200
    return alice, bob, thread


async def test_listen_with_auth_frame(server: RunningServer, stored) -> None:
    _, bob, _ = stored
    async with open_ws(server.url, bob.token) as ws:
        await ws.send_message(encode_frame(Listen(msg="w1")))
        frames, code = await receive_all(ws)
    assert isinstance(frames[0], MessageInfo) and frames[0].start_seq == 0
    assert [f.seq for f in frames if isinstance(f, Chunk)] == [0, 1, 2]
    assert frames[-1] == End(chunks=3, duration=3 * 960)
    assert code == 1000  # VXS-11-5


async def test_live_marker_and_live_chunks_over_websocket(server: RunningServer, stored) -> None:
    """Join a live message at its live edge over WebSocket; chunks arrive as talked."""
    alice, bob, thread = stored
    async with (
        await H2Connection.connect(server.url) as conn,
        open_ws(server.url, bob.token) as ws,
    ):
        talker = await RawTalker.open(
            conn, alice.token, Open(msg="w-live", thread=thread, created=1)
        )
        await talker.chunk(chunk(0))
        await talker.read_until(lambda: talker.client.acked >= 0)
        await ws.send_message(encode_frame(Listen(msg="w-live", live_edge=True)))
        first = decode_frame(await ws.get_message())
        assert isinstance(first, MessageInfo) and first.state == "live" and first.start_seq == 1
        assert decode_frame(await ws.get_message()) == Live(seq=1)
        for seq in (1, 2):
            await talker.chunk(chunk(seq))
            got = decode_frame(await ws.get_message())
            assert isinstance(got, Chunk) and got.seq == seq
        await talker.close()
        frames, code = await receive_all(ws)
        assert frames == [End(chunks=3, duration=3 * 960)] and code == 1000


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        pytest.param("text", None, ErrorCode.INVALID_FRAME, id="text-message"),
        pytest.param(b"\x1c", None, ErrorCode.MALFORMED_CBOR, id="malformed"),
        pytest.param(
            encode_frame(Listen(msg="w1")) + encode_frame(Listen(msg="w1")),
            None,
            ErrorCode.MALFORMED_CBOR,
            id="two-frames-in-one-message",
        ),
        pytest.param(encode_frame(Listen(msg="w1")), None, ErrorCode.UNAUTHENTICATED, id="no-auth"),
        pytest.param(
            "auth:eve", encode_frame(Listen(msg="w1")), ErrorCode.MESSAGE_NOT_FOUND, id="eve"
        ),
        pytest.param("auth:bob", encode_frame(chunk(0)), ErrorCode.UNEXPECTED_FRAME, id="chunk"),
        pytest.param(
            "auth:bob", encode_frame(Listen(msg="nope")), ErrorCode.MESSAGE_NOT_FOUND, id="unknown"
        ),
        pytest.param(
            "auth:bob",
            encode_frame(Listen(msg="w1", from_seq=9)),
            ErrorCode.INVALID_LISTEN,
            id="beyond-end",
        ),
    ],
)
async def test_errors_close_with_the_registry_code(
    server: RunningServer, stored, first: object, second: bytes | None, code: ErrorCode
) -> None:
    """VXS-11-2, VXS-11-3, VXS-11-4, VXS-11-5: an error frame, then close 4000 + code."""
    token: str | None = None
    if isinstance(first, str) and first.startswith("auth:"):
        token = await login(server.url, first.removeprefix("auth:"))
    async with open_ws(server.url, token) as ws:
        if token is None:
            await ws.send_message(first)
        if second is not None:
            await ws.send_message(second)
        frames, close_code = await receive_all(ws)
    assert len(frames) == 1 and isinstance(frames[0], Error)
    assert (frames[0].code, frames[0].name) == (int(code), code.name)
    assert close_code == 4000 + int(code)


async def test_listener_may_not_send_more_frames(server: RunningServer, stored) -> None:
    """VXS-11-4: one operation per connection."""
    alice, _, thread = stored
    # a live message, so that the listen stream stays open while we misbehave

    async with await H2Connection.connect(server.url) as conn:
        upload = await conn.request(
            "POST",
            "/v1/upload",
            [("content-type", "application/cbor-seq"), ("authorization", f"Bearer {alice.token}")],
        )
        await upload.send(upload_body(thread, "w2", chunk(0)))
        assert await upload.receive()  # opened: the message exists
        async with open_ws(server.url, alice.token) as ws:
            await ws.send_message(encode_frame(Listen(msg="w2", live_edge=True)))
            assert isinstance(decode_frame(await ws.get_message()), MessageInfo)
            await ws.send_message(encode_frame(Listen(msg="w2")))
            frames, close_code = await receive_all(ws)
        await upload.reset()
    assert isinstance(frames[-1], Error) and frames[-1].code == ErrorCode.UNEXPECTED_FRAME
    assert close_code == 4000 + int(ErrorCode.UNEXPECTED_FRAME)


async def login(url: str, username: str) -> str:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/sessions", json={"username": username, "password": "correct horse"}
        )
    assert response.status_code == 201
    return str(response.json()["token"])
