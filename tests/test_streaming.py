"""The HTTP/2 binding over real sockets: bad input, refusals, and a killed server.

Every case here is one line of the issue's acceptance list: the peer gets the
registry's error (as an HTTP status plus one error frame before the response
started, or as an error frame in the stream), the stream ends cleanly, the
server keeps serving, and nothing stored changes. Every byte the server sends
is validated against proto/frames.cddl (VXS-3.1-4 for our own output).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import cbor2
import httpx
import pycddl
import pytest
import trio
from conftest import RunningServer, User, make_thread, make_user, server_process

from voxer_stream.client.h2conn import H2Connection, H2Stream, StreamReset
from voxer_stream.transports.h2server import HIGH_WATER, Http2Connection
from voxer_stream.wire import (
    Ack,
    Chunk,
    Close,
    Closed,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    Open,
    Opened,
    encode_frame,
)
from voxer_stream.wire.upload import UploadClient, UploadState

ROOT = Path(__file__).resolve().parent.parent
CDDL = (ROOT / "proto" / "frames.cddl").read_text(encoding="utf-8")
# pycddl's .regexp is not anchored (see tests/test_vectors.py); anchor it.
SCHEMA = pycddl.Schema(
    CDDL.replace('.regexp "[A-Za-z0-9_-]{1,64}"', '.regexp "^[A-Za-z0-9_-]{1,64}$"')
)


def opus(seq: int, salt: bytes = b"") -> bytes:
    return b"\x78" + seq.to_bytes(4, "big") + salt + bytes(40)


def chunk(seq: int, salt: bytes = b"") -> Chunk:
    return Chunk(seq=seq, ts=seq * 960, packets=(opus(seq, salt),))


def decode_all(data: bytes) -> list[Frame]:
    """Decode the server's bytes, validating each item against the CDDL schema."""
    decoder = FrameDecoder()
    decoder.feed(data)
    frames = list(decoder)
    assert decoder.buffered == 0, "trailing partial frame"
    for frame in frames:
        SCHEMA.validate_cbor(encode_frame(frame))
    return frames


async def exchange(
    url: str, token: str | None, body: bytes, path: str = "/v1/upload"
) -> tuple[int, list[Frame]]:
    """Send ``body`` as one upload request and read the whole response."""
    headers = [("content-type", "application/cbor-seq")]
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    with trio.fail_after(10):
        async with await H2Connection.connect(url) as conn:
            stream = await conn.request("POST", path, headers)
            try:
                await stream.send(body)
                await stream.end()
            except StreamReset as exc:
                # RFC 9113 8.1: a complete response, then RST_STREAM(NO_ERROR) to
                # stop the rest of the body (VXS-10-5).
                assert exc.error_code == 0
            status = await stream.response_status()
            data = await stream.read_all()
    return status, decode_all(data) if path == "/v1/upload" else []


async def assert_serving(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/v1/health")
    assert response.status_code == 200


async def stored_packets(url: str, user: User, message_id: str) -> list[bytes]:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get(
            f"/v1/messages/{message_id}/audio.opus",
            headers={"Authorization": f"Bearer {user.token}"},
        )
    assert response.status_code == 200, response.text
    from voxer_stream.media.ogg import read_ogg_opus

    return read_ogg_opus(response.content)[1]


@pytest.fixture
async def people(server: RunningServer) -> tuple[User, User, User, str]:
    alice = await make_user(server.url, "alice")
    bob = await make_user(server.url, "bob")
    eve = await make_user(server.url, "eve")
    thread = await make_thread(server.url, alice, bob)
    return alice, bob, eve, thread


class RawTalker:
    """A talker driven step by step on one HTTP/2 upload stream (UploadClient inside)."""

    def __init__(self, stream: H2Stream, client: UploadClient) -> None:
        self.stream = stream
        self.client = client

    @classmethod
    async def open(cls, conn: H2Connection, token: str, upload: Open | UploadClient) -> RawTalker:
        """Start (or resume, given the talker's ``UploadClient``) an upload, wait for
        ``opened`` (VXS-5.2-6) and re-send what the server does not have (VXS-5.2-4)."""
        client = upload if isinstance(upload, UploadClient) else UploadClient(upload)
        headers = [("content-type", "application/cbor-seq"), ("authorization", f"Bearer {token}")]
        talker = cls(await conn.request("POST", "/v1/upload", headers), client)
        await talker.stream.send(talker.client.start())
        await talker.read_until(lambda: talker.client.state is UploadState.STREAMING)
        if resend := talker.client.resend():
            await talker.stream.send(resend)
        return talker

    async def read_until(self, done: Callable[[], bool]) -> None:
        while not done():
            data = await self.stream.receive()
            assert data is not None, "the server ended the upload response"
            self.client.receive_data(data)

    async def chunk(self, chunk: Chunk) -> None:
        await self.stream.send(self.client.send_chunk(chunk))

    async def close(self) -> Closed:
        await self.stream.send(self.client.close())
        await self.stream.end()
        while (data := await self.stream.receive()) is not None:
            self.client.receive_data(data)
        assert self.client.closed is not None
        return self.client.closed


def upload_body(thread: str, msg: str, *frames: Frame) -> bytes:
    return encode_frame(Open(msg=msg, thread=thread, created=1)) + b"".join(
        encode_frame(f) for f in frames
    )


async def test_full_upload_gets_opened_acks_closed(server: RunningServer, people) -> None:
    alice, _, _, thread = people
    status, frames = await exchange(
        server.url, alice.token, upload_body(thread, "m1", chunk(0), chunk(1), Close(chunks=2))
    )
    assert status == 200
    assert frames[0] == Opened(msg="m1", next_seq=0, state="live")
    assert frames[-1] == Closed(msg="m1", chunks=2, duration=1920)
    acks = [f.seq for f in frames if isinstance(f, Ack)]
    assert acks == sorted(set(acks)) and all(a <= 1 for a in acks)


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [
        pytest.param(None, 401, ErrorCode.UNAUTHENTICATED, id="no-token"),
        pytest.param("not-a-token", 401, ErrorCode.UNAUTHENTICATED, id="wrong-token"),
        pytest.param("eve", 404, ErrorCode.THREAD_NOT_FOUND, id="non-participant"),
    ],
)
async def test_refused_upload_keeps_server_alive(
    server: RunningServer, people, token: str | None, status: int, code: ErrorCode
) -> None:
    """VXS-8-1, VXS-8-2, VXS-10-4, VXS-10-5: refused early, and the server keeps serving.

    The body is far larger than the connection window, so the client is still
    sending DATA after the refusal: the case that killed hypercorn 0.18.
    """
    alice, _, eve, thread = people
    bearer = eve.token if token == "eve" else token
    body = upload_body(thread, "m-refused", *(chunk(s) for s in range(3000)))
    got, frames = await exchange(server.url, bearer, body)
    assert got == status
    assert len(frames) == 1 and isinstance(frames[0], Error) and frames[0].code == code
    await assert_serving(server.url)
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get(
            "/v1/messages/m-refused", headers={"Authorization": f"Bearer {alice.token}"}
        )
    assert response.status_code == 404  # nothing was stored


async def test_streamed_upload_to_unknown_path_keeps_server_alive(
    server: RunningServer, people
) -> None:
    alice, _, _, thread = people
    body = upload_body(thread, "m2", *(chunk(s) for s in range(3000)))
    for _ in range(3):
        status, _ = await exchange(server.url, alice.token, body, path="/v1/nowhere")
        assert status == 404
    await assert_serving(server.url)


async def test_listeners_hanging_up_mid_stream_keep_server_alive(
    server: RunningServer, people
) -> None:
    """A listener that closes its connection while chunks are being written must not
    take the server down (hypercorn's unguarded send_eof raced send_all)."""
    alice, _, _, thread = people
    body = upload_body(thread, "m-hangup", *(chunk(s) for s in range(300)), Close(chunks=300))
    await exchange(server.url, alice.token, body)
    for _ in range(20):
        async with await H2Connection.connect(server.url) as conn:
            stream = await conn.request(
                "GET",
                "/v1/messages/m-hangup/listen",
                [("authorization", f"Bearer {alice.token}")],
                end_stream=True,
            )
            await stream.receive()  # the first DATA, then hang up at once
    await assert_serving(server.url)


async def test_unknown_thread(server: RunningServer, people) -> None:
    alice, *_ = people
    status, frames = await exchange(server.url, alice.token, upload_body("nope", "m3", chunk(0)))
    assert status == 404
    assert isinstance(frames[0], Error) and frames[0].code == ErrorCode.THREAD_NOT_FOUND


def oversized() -> bytes:
    # A byte string head announcing 100,000 bytes: refused from the head alone (VXS-3.2-1).
    return b"\x5a" + (100_000).to_bytes(4, "big") + bytes(100)


@pytest.mark.parametrize(
    ("tail", "code"),
    [
        pytest.param(b"\xff\xff", ErrorCode.MALFORMED_CBOR, id="malformed-cbor"),
        pytest.param(oversized(), ErrorCode.FRAME_TOO_LARGE, id="oversized"),
        pytest.param(
            encode_frame(Chunk(seq=2, ts=1920, packets=(b"RIFF....WAVEfmt ",))),
            ErrorCode.INVALID_OPUS,
            id="not-opus",
        ),
        pytest.param(encode_frame(chunk(3)), ErrorCode.SEQUENCE_GAP, id="gap"),
        pytest.param(encode_frame(chunk(1, b"x")), ErrorCode.CHUNK_CONFLICT, id="conflict"),
        pytest.param(
            cbor2.dumps({"type": "chunk", "seq": "2"}), ErrorCode.INVALID_FRAME, id="bad-field"
        ),
        pytest.param(
            encode_frame(Open(msg="m4", thread="t", created=1)),
            ErrorCode.UNEXPECTED_FRAME,
            id="second-open",
        ),
        pytest.param(encode_frame(Close(chunks=5)), ErrorCode.CLOSE_MISMATCH, id="close-mismatch"),
    ],
)
async def test_bad_input_mid_stream(
    server: RunningServer, people, tail: bytes, code: ErrorCode
) -> None:
    """The error frame ends the stream (VXS-5.6-1); chunks 0 and 1 stay stored (VXS-5.6-2)."""
    alice, _, _, thread = people
    body = upload_body(thread, "m4", chunk(0), chunk(1)) + tail
    status, frames = await exchange(server.url, alice.token, body)
    assert status == 200
    assert isinstance(frames[-1], Error) and frames[-1].code == code
    assert frames[-1].name == code.name
    await assert_serving(server.url)
    # The message is still live and intact: the talker can resume and finish it.
    status, frames = await exchange(
        server.url, alice.token, upload_body(thread, "m4", Close(chunks=2))
    )
    assert frames[0] == Opened(msg="m4", next_seq=2, state="live")
    assert frames[-1] == Closed(msg="m4", chunks=2, duration=1920)
    assert await stored_packets(server.url, alice, "m4") == [opus(0), opus(1)]


async def test_closed_message_refuses_chunks_and_reanswers_close(
    server: RunningServer, people
) -> None:
    """VXS-5.2-5, VXS-5.5-3, VXS-5.5-5."""
    alice, _, _, thread = people
    await exchange(server.url, alice.token, upload_body(thread, "m5", chunk(0), Close(chunks=1)))
    _, frames = await exchange(server.url, alice.token, upload_body(thread, "m5", chunk(1)))
    assert frames[0] == Opened(msg="m5", next_seq=1, state="closed")
    assert isinstance(frames[-1], Error) and frames[-1].code == ErrorCode.MESSAGE_CLOSED
    _, frames = await exchange(server.url, alice.token, upload_body(thread, "m5", Close(chunks=1)))
    assert frames[-1] == Closed(msg="m5", chunks=1, duration=960)
    assert await stored_packets(server.url, alice, "m5") == [opus(0)]


async def test_message_id_in_another_thread_conflicts(server: RunningServer, people) -> None:
    """VXS-5.2-3: the same message id cannot move to another thread."""
    alice, bob, _, thread = people
    other = await make_thread(server.url, alice)
    await exchange(server.url, alice.token, upload_body(thread, "m6", chunk(0)))
    _, frames = await exchange(server.url, alice.token, upload_body(other, "m6", chunk(0)))
    assert isinstance(frames[-1], Error) and frames[-1].code == ErrorCode.MESSAGE_CONFLICT
    _, frames = await exchange(server.url, bob.token, upload_body(thread, "m6", chunk(0)))
    assert isinstance(frames[-1], Error) and frames[-1].code == ErrorCode.MESSAGE_CONFLICT


async def test_listen_refusals(server: RunningServer, people) -> None:
    alice, _, eve, thread = people
    await exchange(server.url, alice.token, upload_body(thread, "m7", chunk(0), Close(chunks=1)))
    cases = [
        (eve.token, "/v1/messages/m7/listen", 404, ErrorCode.MESSAGE_NOT_FOUND),
        (None, "/v1/messages/m7/listen", 401, ErrorCode.UNAUTHENTICATED),
        (alice.token, "/v1/messages/nope/listen", 404, ErrorCode.MESSAGE_NOT_FOUND),
        (alice.token, "/v1/messages/m7/listen?from_seq=5", 400, ErrorCode.INVALID_LISTEN),
        (alice.token, "/v1/messages/m7/listen?speed=99", 400, ErrorCode.INVALID_LISTEN),
        (alice.token, "/v1/messages/m7/listen?from_seq=1&from_ts=0", 400, ErrorCode.INVALID_LISTEN),
    ]
    async with await H2Connection.connect(server.url) as conn:
        for token, path, status, code in cases:
            headers = [("authorization", f"Bearer {token}")] if token else []
            stream = await conn.request("GET", path, headers, end_stream=True)
            assert await stream.response_status() == status, path
            frames = decode_all(await stream.read_all())
            assert len(frames) == 1 and isinstance(frames[0], Error) and frames[0].code == code


# -- kill -9 in the middle of an upload ----------------------------------------------


@pytest.mark.slow
async def test_kill_9_mid_upload_loses_no_acked_chunk(tmp_path: Path) -> None:
    """VXS-5.3-3 and invariant 3: ack means durable, even across SIGKILL.

    The talker streams chunks; the server is killed with SIGKILL in the middle;
    a new server process on the same data directory has every acked chunk; the
    talker resumes from the reported position and the message completes with
    exactly the packets that were sent.
    """
    data_dir = tmp_path / "data"
    with server_process(data_dir) as first:
        url = first.url
        alice = await make_user(url, "alice")
        thread = await make_thread(url, alice)
        conn = await H2Connection.connect(url)
        raw = await RawTalker.open(conn, alice.token, Open(msg="durable", thread=thread, created=1))
        talker, stream = raw.client, raw.stream
        total = 400

        async def read_acks() -> None:
            while (data := await stream.receive()) is not None:
                talker.receive_data(data)

        with pytest.raises(Exception):  # noqa: PT011, B017 - whatever the dead socket raises
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_acks)
                for seq in range(total):
                    await stream.send(talker.send_chunk(chunk(seq)))
                    await trio.sleep(0.002)
                    if seq == 200:
                        with trio.fail_after(5):
                            while talker.acked < 150:
                                await trio.sleep(0.01)
                        first.process.send_signal(signal.SIGKILL)
                        first.process.wait()
        with trio.CancelScope(shield=True):
            await conn.aclose()
        acked = talker.acked
        assert acked >= 150

    with server_process(data_dir) as second:
        url = second.url
        # Every acked chunk is there (VXS-5.3-3) ...
        assert (await stored_packets(url, alice, "durable"))[: acked + 1] == [
            opus(s) for s in range(acked + 1)
        ]
        # ... and the talker resumes from the server's position (VXS-5.2-2, VXS-5.2-4).
        async with await H2Connection.connect(url) as conn:
            resumed = await RawTalker.open(conn, alice.token, talker)
            # opened.next_seq covers every chunk acked before the kill and none never sent
            assert acked <= talker.acked <= 200
            for seq in range(talker.next_seq, total):
                await resumed.chunk(chunk(seq))
            await resumed.close()
        assert talker.closed == Closed(msg="durable", chunks=total, duration=total * 960)
        assert await stored_packets(url, alice, "durable") == [opus(s) for s in range(total)]


# -- a listener that stops reading, over real HTTP/2 flow control ---------------------


async def read_frames(stream: H2Stream) -> list[Frame]:
    return decode_all(await stream.read_all())


async def test_stalled_listener_over_http2_delays_nobody_and_misses_nothing(
    server: RunningServer, people, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VXS-6.5-1, VXS-6.5-2 over sockets: a listener whose HTTP/2 window is full (it
    stopped reading) delays neither the talker's acks nor another listener; when it
    reads again it gets every chunk once, in order, then the end. Meanwhile the server
    holds a bounded amount for it: what a connection holds unsent stays under its high
    water mark instead of growing with the message (the rest waits in storage)."""
    largest = 0
    flush = Http2Connection.flush

    def measured_flush(self: Http2Connection) -> None:
        nonlocal largest
        flush(self)
        largest = max(largest, self.buffered)

    monkeypatch.setattr(Http2Connection, "flush", measured_flush)
    alice, bob, _, thread = people
    auth = [("authorization", f"Bearer {bob.token}")]
    total = 500

    def big(seq: int) -> Chunk:
        # 500 chunks of ~450 bytes: far more than the 1 KiB window plus what a socket
        # buffers, so the server's sender for this listener really blocks.
        return chunk(seq, salt=bytes(400))

    with trio.fail_after(30):
        # The stalled listener: a 1 KiB window it never reopens until the end.
        stalled_conn = await H2Connection.connect(server.url, window=1024)
        healthy_conn = await H2Connection.connect(server.url)
        try:
            # Join before the message exists? Not possible: listen needs the message,
            # so open it with its first chunk, then join both listeners from seq 0.
            talker_conn = await H2Connection.connect(server.url)
            talker = await RawTalker.open(
                talker_conn, alice.token, Open(msg="m-stall", thread=thread, created=1)
            )
            await talker.chunk(big(0))
            await talker.read_until(lambda: talker.client.acked >= 0)
            stalled = await stalled_conn.request(
                "GET", "/v1/messages/m-stall/listen", auth, end_stream=True
            )
            healthy = await healthy_conn.request(
                "GET", "/v1/messages/m-stall/listen", auth, end_stream=True
            )
            assert await stalled.response_status() == 200
            healthy_frames: list[Frame] = []

            async def read_healthy() -> None:
                healthy_frames.extend(await read_frames(healthy))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_healthy)
                for seq in range(1, total):
                    await talker.chunk(big(seq))
                # every chunk is acked although one listener reads nothing
                await talker.read_until(lambda: talker.client.acked == total - 1)
                closed = await talker.close()
                assert closed == Closed(msg="m-stall", chunks=total, duration=total * 960)
            # the healthy listener already has everything, then the end
            assert [f.seq for f in healthy_frames if isinstance(f, Chunk)] == list(range(total))
            # the stalled one reads now: everything it missed, once, in order, then the end
            stalled_frames = await read_frames(stalled)
            assert [f.seq for f in stalled_frames if isinstance(f, Chunk)] == list(range(total))
            assert stalled_frames[-1] == healthy_frames[-1]
            assert all(
                f.packets == big(f.seq).packets for f in stalled_frames if isinstance(f, Chunk)
            )
            # ~225 KB went past the stalled listener; no connection held more than its
            # high water mark plus one batch.
            assert largest <= HIGH_WATER + 65536, largest
        finally:
            with trio.CancelScope(shield=True):
                for conn in (stalled_conn, healthy_conn, talker_conn):
                    await conn.aclose()


async def test_http11_clients_upload_and_listen(server: RunningServer, people) -> None:
    """Stock tools without HTTP/2 (curl's default, httpx): a whole upload in one
    request and a listen both work over HTTP/1.1, with the same frames."""
    alice, _, _, thread = people
    auth = {"authorization": f"Bearer {alice.token}", "content-type": "application/cbor-seq"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        body = upload_body(thread, "h11", chunk(0), chunk(1), Close(chunks=2))
        response = await http.post("/v1/upload", content=body, headers=auth)
        assert (response.status_code, response.http_version) == (200, "HTTP/1.1")
        frames = decode_all(response.content)
        assert frames[0] == Opened(msg="h11", next_seq=0, state="live")
        assert frames[-1] == Closed(msg="h11", chunks=2, duration=1920)
        response = await http.get("/v1/messages/h11/listen", headers=auth)
        frames = decode_all(response.content)
        assert [f.seq for f in frames if isinstance(f, Chunk)] == [0, 1]
        response = await http.post("/v1/upload", content=b"\xff" * 100_000)
        assert response.status_code == 401
        assert decode_all(response.content)[0].code == ErrorCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    await assert_serving(server.url)


@pytest.mark.slow
async def test_sigterm_shuts_down_gracefully(tmp_path: Path) -> None:
    """VXS-5.6-3: on SIGTERM the server acks every durable chunk, ends uploads and
    listens with SHUTTING_DOWN, and exits; the message stays live and resumable."""
    data_dir = tmp_path / "data"
    with server_process(data_dir) as first:
        url = first.url
        alice = await make_user(url, "alice")
        thread = await make_thread(url, alice)
        async with (
            await H2Connection.connect(url) as talker_conn,
            await H2Connection.connect(url) as listener_conn,
        ):
            talker = await RawTalker.open(
                talker_conn, alice.token, Open(msg="bye", thread=thread, created=1)
            )
            for seq in range(20):
                await talker.chunk(chunk(seq))
            listen = await listener_conn.request(
                "GET",
                "/v1/messages/bye/listen",
                [("authorization", f"Bearer {alice.token}")],
                end_stream=True,
            )
            assert await listen.response_status() == 200
            decoder, heard = FrameDecoder(), []
            with trio.fail_after(10):
                while sum(isinstance(f, Chunk) for f in heard) < 20:  # the server has them all
                    data = await listen.receive()
                    assert data is not None
                    decoder.feed(data)
                    heard.extend(decoder)
                first.process.send_signal(signal.SIGTERM)
                frames = talker.client.receive_data(await talker.stream.read_all())
                decoder.feed(await listen.read_all())
                heard.extend(decoder)
                assert decoder.buffered == 0
        assert talker.client.acked == 19  # every chunk acked before the goodbye
        for last in (frames[-1], heard[-1]):
            assert isinstance(last, Error) and last.code == ErrorCode.SHUTTING_DOWN
        assert [f.seq for f in heard if isinstance(f, Chunk)] == list(range(20))
        assert await trio.to_thread.run_sync(first.process.wait, 10) == 0
    with server_process(data_dir) as second:
        async with await H2Connection.connect(second.url) as conn:
            resumed = await RawTalker.open(conn, alice.token, talker.client)
            assert talker.client.acked == 19
            closed = await resumed.close()
        assert closed == Closed(msg="bye", chunks=20, duration=20 * 960)


async def test_empty_upload_body_is_an_error(server: RunningServer, people) -> None:
    """VXS-5.1-1: the first frame of an upload is open; a body without one is refused."""
    alice, *_ = people
    status, frames = await exchange(server.url, alice.token, b"")
    assert status == 400
    assert isinstance(frames[0], Error) and frames[0].code == ErrorCode.UNEXPECTED_FRAME
