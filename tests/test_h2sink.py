"""benchmarks.h2sink (the load generator's minimal HTTP/2 sink) against the real server.

Each sink's body is checked against what the project's own client (``H2Connection``,
the full ``h2`` state machine) reads for the same listen: same status, same bytes.
"""

from __future__ import annotations

import socket
import time
import zlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import hpack
import pytest
import trio
from conftest import RunningServer, User, make_thread, make_user

from benchmarks.h2sink import SinkResult, run_sinks
from voxer_stream.client import H2Connection, chunks_from_packets, talk
from voxer_stream.media.encode import encode_file, tone_wav
from voxer_stream.wire import Chunk, Open


@pytest.fixture(scope="module")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> list[Chunk]:
    wav = tmp_path_factory.mktemp("media") / "tone.wav"
    tone_wav(wav, 1.0, 440.0)
    result = chunks_from_packets(encode_file(wav))
    assert 45 <= len(result) <= 55
    return result


def open_frame(msg: str, thread: str) -> Open:
    return Open(msg=msg, thread=thread, created=int(time.time() * 1000))


def address(server: RunningServer) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def setup(server: RunningServer) -> tuple[User, User, str]:
    alice = await make_user(server.url, "alice")
    bob = await make_user(server.url, "bob")
    return alice, bob, await make_thread(server.url, alice, bob)


async def full_client_body(
    server: RunningServer, token: str, path: str, first_data: trio.Event | None = None
) -> tuple[int, bytes]:
    """Status and whole body of one GET with the project's own HTTP/2 client."""
    async with await H2Connection.connect(server.url) as conn:
        stream = await conn.request(
            "GET", path, [("authorization", f"Bearer {token}")], end_stream=True
        )
        status = await stream.response_status()
        body = bytearray()
        while (data := await stream.receive()) is not None:
            body += data
            if first_data is not None:
                first_data.set()
        return status, bytes(body)


def assert_same_body(results: list[SinkResult], status: int, body: bytes) -> None:
    for result in results:
        assert result.error == ""
        assert result.status == status
        assert result.ended
        assert result.body_bytes == len(body)
        assert result.crc32 == zlib.crc32(body)
        assert result.data_frames >= 1


POLL = pytest.mark.parametrize("poll_interval", [0.0, 0.005], ids=["events", "polled"])


@POLL
async def test_sinks_read_a_closed_message_like_the_full_client(
    server: RunningServer, chunks: list[Chunk], poll_interval: float
) -> None:
    alice, bob, thread = await setup(server)
    closed = await talk(server.url, alice.token, open_frame("m1", thread), chunks)
    assert closed.chunks == len(chunks)
    path = "/v1/messages/m1/listen?from_seq=0"
    status, body = await full_client_body(server, bob.token, path)
    assert status == 200
    assert len(body) > sum(len(p) for c in chunks for p in c.packets)

    readies: list[float] = []
    host, port = address(server)
    with trio.fail_after(20):
        results = await run_sinks(
            host,
            port,
            path,
            auth(bob.token),
            7,
            3,
            lambda: readies.append(trio.current_time()),
            poll_interval=poll_interval,
        )
    assert len(results) == 7  # three connections: 3 + 3 + 1 streams
    assert len(readies) == 1
    assert_same_body(results, 200, body)


@POLL
async def test_sinks_on_a_live_message(
    server: RunningServer, chunks: list[Chunk], poll_interval: float
) -> None:
    """Joined while the message is live (after chunk 0), ready before chunk 1 is sent:
    every sink gets the same bytes as a full client that joined at the same point."""
    alice, bob, thread = await setup(server)
    path = "/v1/messages/live1/listen?from_seq=0"
    host, port = address(server)
    first_acked = trio.Event()
    sinks_ready = trio.Event()
    reference_ready = trio.Event()

    async def source() -> AsyncIterator[Chunk]:
        yield chunks[0]
        await sinks_ready.wait()
        await reference_ready.wait()
        for chunk in chunks[1:]:
            await trio.sleep(0.002)
            yield chunk

    reference: list[tuple[int, bytes]] = []
    results: list[SinkResult] = []

    async def sinks() -> None:
        results.extend(
            await run_sinks(
                host,
                port,
                path,
                auth(bob.token),
                7,
                3,
                sinks_ready.set,
                poll_interval=poll_interval,
            )
        )

    async def full_client() -> None:
        reference.append(await full_client_body(server, bob.token, path, reference_ready))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: talk(
                    server.url,
                    alice.token,
                    open_frame("live1", thread),
                    source(),
                    on_ack=lambda _seq: first_acked.set(),
                )
            )
            await first_acked.wait()  # the message exists
            nursery.start_soon(sinks)
            nursery.start_soon(full_client)
    ((status, body),) = reference
    assert status == 200
    assert len(results) == 7
    assert_same_body(results, status, body)
    # Every chunk went to every sink as (at least) one DATA frame of its own.
    assert all(r.data_frames >= len(chunks) for r in results)


async def test_wrong_token_gives_401_and_ends(server: RunningServer, chunks: list[Chunk]) -> None:
    alice, _bob, thread = await setup(server)
    await talk(server.url, alice.token, open_frame("m2", thread), chunks[:3])
    path = "/v1/messages/m2/listen?from_seq=0"
    status, body = await full_client_body(server, "not-a-token", path)
    assert status == 401
    readies: list[int] = []
    host, port = address(server)
    with trio.fail_after(10):
        results = await run_sinks(
            host, port, path, auth("not-a-token"), 2, 1, lambda: readies.append(1)
        )
    assert readies == [1]
    assert_same_body(results, 401, body)


async def test_no_streams_is_ready_at_once(server: RunningServer) -> None:
    readies: list[int] = []
    host, port = address(server)
    assert await run_sinks(host, port, "/", [], 0, 3, lambda: readies.append(1)) == []
    assert readies == [1]


# -- the frame parser alone, on frames the server does not send (padding, CONTINUATION)


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each frame in ``data``."""
    frames = []
    while data:
        length = int.from_bytes(data[:3], "big")
        sid = int.from_bytes(data[5:9], "big")
        frames.append((data[3], data[4], sid, data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


def test_parser_padding_continuation_control_frames_and_split_input() -> None:
    from benchmarks import h2sink
    from benchmarks.h2sink import _Connection, _Ready, frame

    readies: list[int] = []
    results = [SinkResult() for _ in range(3)]
    conn = _Connection(results, _Ready(3, lambda: readies.append(1)))
    request = conn.request_bytes("127.0.0.1", 8080, "/x", auth("t"))
    assert request.startswith(h2sink.PREFACE)
    sent = parse_frames(request[len(h2sink.PREFACE) :])
    assert [(t, f, sid) for t, f, sid, _ in sent] == [
        (h2sink.SETTINGS, 0, 0),
        (h2sink.WINDOW_UPDATE, 0, 0),
        *((h2sink.HEADERS, h2sink.END_STREAM | h2sink.END_HEADERS, sid) for sid in (1, 3, 5)),
    ]
    assert sent[0][3] == bytes.fromhex("00020000000000047fffffff")
    assert int.from_bytes(sent[1][3], "big") == 2**31 - 1 - 65535
    decoder = hpack.Decoder()
    for *_, block in sent[2:]:
        assert decoder.decode(block, raw=True) == [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1:8080"),
            (b":path", b"/x"),
            (b"authorization", b"Bearer t"),
        ]

    encoder = hpack.Encoder()
    block = encoder.encode([(b":status", b"200"), (b"content-type", b"application/cbor-seq")])
    second = encoder.encode([(b":status", b"200"), (b"content-type", b"application/cbor-seq")])
    assert len(second) < len(block)  # indexed: the decoder must have followed the table
    wire = b"".join(
        [
            frame(h2sink.SETTINGS, 0, 0, bytes(6)),
            frame(h2sink.SETTINGS, h2sink.ACK, 0),
            frame(h2sink.PING, 0, 0, b"12345678"),
            # stream 1: HEADERS split over a CONTINUATION, then padded DATA
            frame(h2sink.HEADERS, 0, 1, block[:3]),
            frame(h2sink.CONTINUATION, h2sink.END_HEADERS, 1, block[3:]),
            frame(h2sink.DATA, h2sink.PADDED, 1, b"\x04abc" + bytes(4)),
            frame(h2sink.DATA, h2sink.END_STREAM, 1, b"def"),
            # stream 3: padded, prioritised HEADERS with the indexed block
            frame(
                h2sink.HEADERS,
                h2sink.PADDED | h2sink.PRIORITY | h2sink.END_HEADERS,
                3,
                b"\x02" + bytes(5) + second + b"\x00\x00",
            ),
            frame(h2sink.DATA, 0, 3, b"xyz"),
            frame(h2sink.RST_STREAM, 0, 3, (2).to_bytes(4, "big")),
            frame(h2sink.DATA, 0, 3, b"late"),  # after RST_STREAM: a server bug
            frame(h2sink.WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big")),
            frame(h2sink.GOAWAY, 0, 0, (3).to_bytes(4, "big") + bytes(4) + b"bye"),
        ]
    )
    replies = b""
    for i in range(0, len(wire), 7):  # frames split anywhere, headers included
        replies += conn.feed(wire[i : i + 7])
    assert conn.rest == b""
    assert replies == frame(h2sink.SETTINGS, h2sink.ACK, 0) + frame(
        h2sink.PING, h2sink.ACK, 0, b"12345678"
    )
    one, three, five = results
    assert (one.status, one.body_bytes, one.crc32, one.ended, one.error) == (
        200,
        6,
        zlib.crc32(b"abcdef"),
        True,
        "",
    )
    assert one.data_frames == 2
    assert three.status == 200 and three.body_bytes == 3 and not three.ended
    assert three.error.startswith("RST_STREAM INTERNAL_ERROR; DATA on stream 3 after it ended")
    assert five.error.startswith("not processed: GOAWAY NO_ERROR last_stream_id=3")
    assert not conn.open
    assert readies == [1]


def test_parser_tops_up_the_connection_window(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import h2sink
    from benchmarks.h2sink import _Connection, _Ready, frame

    monkeypatch.setattr(h2sink, "REFILL_AFTER", 10)
    conn = _Connection([SinkResult(status=200)], _Ready(1, lambda: None))
    assert conn.feed(frame(h2sink.DATA, 0, 1, bytes(6))) == b""
    replies = conn.feed(frame(h2sink.DATA, 0, 1, bytes(6)))
    assert replies == frame(h2sink.WINDOW_UPDATE, 0, 0, (12).to_bytes(4, "big"))


async def test_refused_connection_is_an_error_and_still_ready() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens once closed
    readies: list[int] = []
    results = await run_sinks("127.0.0.1", port, "/", [], 3, 2, lambda: readies.append(1))
    assert readies == [1]
    assert [r.ended for r in results] == [False] * 3
    assert all(r.error.startswith("cannot connect") for r in results)
