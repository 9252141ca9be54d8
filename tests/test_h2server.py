"""The port's two servers: HTTP/2 on ``h2server``, everything else on hypercorn.

What these tests pin down is what a client sees of the split: prior-knowledge
HTTP/2, HTTP/1.1 and TLS (ALPN ``h2`` or ``http/1.1``) all answered on one port;
an HTTP/2 protocol error ends that connection with GOAWAY and nothing else; a
stream reset by its client stops only that stream.
"""

from __future__ import annotations

import struct
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import httpx
import pytest
import trio
import trio.testing
from conftest import RunningServer, Tls, make_thread, make_user
from test_streaming import RawTalker, chunk

from voxer_stream.client.h2conn import H2Connection, H2Stream
from voxer_stream.transports.accept import is_websocket_upgrade
from voxer_stream.transports.h2server import PREFACE, Http2Connection, Http2Settings, Http2Stream
from voxer_stream.transports.peer import Peer
from voxer_stream.transports.server import run_server
from voxer_stream.wire import Chunk, End, Frame, FrameDecoder, Live, MessageInfo, Open


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_http1_and_prior_knowledge_http2_share_the_port(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http1:
        response = await http1.get("/v1/health")
        assert response.http_version == "HTTP/1.1" and response.status_code == 200
    async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True) as http2:
        response = await http2.get("/v1/health")
        assert response.http_version == "HTTP/2" and response.status_code == 200


async def test_a_protocol_error_ends_its_connection_with_goaway_only(
    server: RunningServer,
) -> None:
    """RFC 9113 section 5.4.1: a connection error is answered with GOAWAY; the server
    goes on serving everyone else."""
    stream = await trio.open_tcp_stream("127.0.0.1", _port(server.url))
    async with stream:
        # A DATA frame on stream 0 is a connection error of type PROTOCOL_ERROR.
        await stream.send_all(PREFACE + struct.pack(">I", 4)[1:] + b"\x00\x00" + bytes(4) + b"oops")
        received = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                received += data
    frames = []
    while len(received) >= 9:
        length = int.from_bytes(received[:3], "big")
        frames.append((received[3], received[9 : 9 + length]))
        received = received[9 + length :]
    goaways = [payload for kind, payload in frames if kind == 7]
    assert goaways, frames
    assert int.from_bytes(goaways[0][4:8], "big") == h2.errors.ErrorCodes.PROTOCOL_ERROR
    async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True) as http2:
        assert (await http2.get("/v1/health")).status_code == 200


async def test_a_silent_or_garbage_connection_costs_nothing(server: RunningServer) -> None:
    """Neither an HTTP/2 preface cut short nor bytes that are no protocol at all hang
    the acceptor for anyone else."""
    half = await trio.open_tcp_stream("127.0.0.1", _port(server.url))
    await half.send_all(PREFACE[:10])
    junk = await trio.open_tcp_stream("127.0.0.1", _port(server.url))
    await junk.send_all(b"\x16\x03\x01garbage\r\n\r\n")
    with trio.fail_after(5):
        # hypercorn answers the junk as a bad HTTP/1.1 request and closes.
        reply = b""
        while data := await junk.receive_some(65536):
            reply += data
        assert reply.startswith(b"HTTP/1.1 400"), reply[:40]
    async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True) as http2:
        assert (await http2.get("/v1/health")).status_code == 200
    await half.aclose()
    await junk.aclose()


async def test_reset_listen_stream_stops_only_itself(server: RunningServer) -> None:
    """Two listeners on one connection, at the live edge (written by the talker's
    ``publish``): one resets its stream; the other still gets every chunk."""
    alice, bob = await make_user(server.url, "alice"), await make_user(server.url, "bob")
    thread = await make_thread(server.url, alice, bob)
    auth = [("authorization", f"Bearer {bob.token}")]
    async with (
        await H2Connection.connect(server.url) as talker_conn,
        await H2Connection.connect(server.url) as conn,
    ):
        talker = await RawTalker.open(
            talker_conn, alice.token, Open(msg="m", thread=thread, created=1)
        )
        await talker.chunk(chunk(0))
        await talker.read_until(lambda: talker.client.acked >= 0)
        path = "/v1/messages/m/listen?from_seq=0"
        quitter = await conn.request("GET", path, auth, end_stream=True)
        stayer = await conn.request("GET", path, auth, end_stream=True)
        decoders = {quitter: FrameDecoder(), stayer: FrameDecoder()}
        seen: dict[H2Stream, list[Frame]] = {quitter: [], stayer: []}

        async def read_until_live(stream: H2Stream) -> None:
            while not any(isinstance(f, Live) for f in seen[stream]):
                data = await stream.receive()
                assert data is not None
                decoders[stream].feed(data)
                seen[stream].extend(decoders[stream])

        with trio.fail_after(10):
            await read_until_live(quitter)
            await read_until_live(stayer)
            await quitter.reset()
            for seq in range(1, 60):
                await talker.chunk(chunk(seq))
            await talker.read_until(lambda: talker.client.acked == 59)
            await talker.close()
            while (data := await stayer.receive()) is not None:
                decoders[stayer].feed(data)
                seen[stayer].extend(decoders[stayer])
    frames = seen[stayer]
    assert isinstance(frames[0], MessageInfo) and isinstance(frames[-1], End)
    assert [f.seq for f in frames if isinstance(f, Chunk)] == list(range(60))


async def test_tls_alpn_chooses_the_server(tls: Tls) -> None:
    """Over TLS, ALPN ``h2`` goes to ``h2server`` and ``http/1.1`` to hypercorn."""
    config, client_ctx = tls.config, tls.client_context
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(run_server, config)
        for http2, version in ((False, "HTTP/1.1"), (True, "HTTP/2")):
            async with httpx.AsyncClient(
                base_url=url, verify=client_ctx, http1=not http2, http2=http2
            ) as http:
                response = await http.get("/v1/health")
                assert response.status_code == 200 and response.http_version == version
        nursery.cancel_scope.cancel()


async def test_live_data_frames_are_what_h2_would_send() -> None:
    """``Http2Stream.try_send`` builds DATA frames without ``h2``: the bytes on the wire
    and both send windows afterwards must be exactly those of ``send_data``, and once a
    window is too small it must refuse, as ``send_data`` would."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [(":method", "GET"), (":path", "/x"), (":scheme", "http"), (":authority", "a")],
        end_stream=True,
    )
    hello = client.data_to_send()
    reference = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    left, _right = trio.testing.memory_stream_pair()
    peer = Peer("http", None, None, {})
    ours = Http2Connection(left, cast(Any, None), peer, settings=Http2Settings())
    for machine in (reference, ours.h2):
        machine.initiate_connection()
        machine.receive_data(hello)
        machine.send_headers(1, [(b":status", b"200")])
        machine.data_to_send()
    stream = Http2Stream(ours, 1, headers_sent=True)
    refused = 0
    for size in (1, 100, 16384, 30000, 16384, 16384, 16384, 3000, 16384):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        expect_ok = size <= reference.local_flow_control_window(1) and size <= 16384
        assert stream.try_send(payload) is expect_ok, size
        refused += not expect_ok
        if expect_ok:
            reference.send_data(1, payload)
        assert b"".join(ours._queued) == reference.data_to_send()
        ours._queued.clear()
        assert ours.h2.local_flow_control_window(1) == reference.local_flow_control_window(1)
        assert ours.h2.outbound_flow_control_window == reference.outbound_flow_control_window
    assert refused == 3  # too large a frame, then twice out of window


@pytest.mark.parametrize(
    ("head", "websocket"),
    [
        (b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n", True),
        (b"GET /v1/ws?x=1 HTTP/1.1\r\nhost: x\r\nUPGRADE:  WebSocket\r\n\r\n", True),
        (b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", False),
        (b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"POST /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", False),
        (b"GET /v1/wsx HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", False),
        (b"GET /v1/health HTTP/1.1\r\nX-Note: Upgrade: websocket\r\n\r\n", False),
        (b"garbage", False),
    ],
)
def test_only_a_websocket_upgrade_of_v1_ws_goes_to_wsserver(head: bytes, websocket: bool) -> None:
    assert is_websocket_upgrade(head) is websocket


def test_the_quiet_connection_copies_the_h2_it_runs_on() -> None:
    """``QuietH2Connection._receive_frame`` is h2's method minus one eager ``repr``; if h2's
    method changed, the copy must be redone (and this hash updated), not left to drift."""
    import hashlib
    import inspect

    import h2.connection

    from voxer_stream.transports import h2quiet

    source = inspect.getsource(h2.connection.H2Connection._receive_frame)
    assert hashlib.sha256(source.encode()).hexdigest() == h2quiet.COPIED_FROM
    assert "repr(frame)" in source and "repr(" not in inspect.getsource(
        h2quiet.QuietH2Connection._receive_frame
    )
