"""The client library against the real server: HTTP/2 full duplex, WebSocket, REST."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
import trio
from conftest import RunningServer, Tls, User, make_thread, make_user

from voxer_stream.client import (
    H2Connection,
    Rest,
    ServerError,
    chunks_from_packets,
    collect,
    realtime,
    talk,
    ws_collect,
    ws_talk,
)
from voxer_stream.client.listener import ListenResult
from voxer_stream.media.encode import encode_file, tone_wav
from voxer_stream.media.ogg import read_ogg_opus
from voxer_stream.transports.server import run_server
from voxer_stream.wire import Chunk, ErrorCode, Listen, Open


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    wav = tmp_path_factory.mktemp("media") / "tone.wav"
    tone_wav(wav, 1.0, 440.0)
    return encode_file(wav)


def open_frame(msg: str, thread: str) -> Open:
    return Open(msg=msg, thread=thread, created=int(time.time() * 1000))


def assert_complete(result: ListenResult, chunks: list[Chunk], start: int = 0) -> None:
    assert result.info is not None
    assert result.info.start_seq == start
    assert [c.seq for c in result.chunks] == list(range(start, len(chunks)))
    assert result.chunks == chunks[start:]
    assert result.end is not None
    assert result.end.chunks == len(chunks)


async def setup(server: RunningServer) -> tuple[User, User, str]:
    alice = await make_user(server.url, "alice")
    bob = await make_user(server.url, "bob")
    thread = await make_thread(server.url, alice, bob)
    return alice, bob, thread


def test_chunks_from_packets(packets: list[bytes]) -> None:
    chunks = chunks_from_packets(packets, 3)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [p for c in chunks for p in c.packets] == packets
    assert [c.ts for c in chunks[:3]] == [0, 2880, 5760]  # 3 x 20 ms packets
    with pytest.raises(ValueError, match="at least 1"):
        chunks_from_packets(packets, 0)


async def test_realtime_is_paced_open_loop(packets: list[bytes]) -> None:
    chunks = chunks_from_packets(packets[:10], 5)  # two chunks of 100 ms
    start = trio.current_time()
    times = []
    async for _ in realtime(chunks, speed=2.0):
        times.append(trio.current_time() - start)
    assert times[0] == pytest.approx(0.05, abs=0.03)
    assert times[1] == pytest.approx(0.10, abs=0.03)


async def test_live_listener_and_late_listener_get_every_packet(
    server: RunningServer, packets: list[bytes]
) -> None:
    alice, bob, thread = await setup(server)
    chunks = chunks_from_packets(packets, 2)
    results: list[ListenResult] = []
    acks: list[int] = []

    async def early_listener() -> None:
        # The message does not exist yet: poll until the talker has opened it.
        while True:
            try:
                results.append(await collect(server.url, bob.token, Listen(msg="m1")))
                return
            except ServerError as exc:
                if exc.code != ErrorCode.MESSAGE_NOT_FOUND:
                    raise
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(early_listener)
        await trio.sleep(0.05)
        closed = await talk(
            server.url,
            alice.token,
            open_frame("m1", thread),
            realtime(chunks, speed=4.0),
            on_ack=acks.append,
        )
    assert closed.msg == "m1"
    assert closed.chunks == len(chunks)
    assert acks == sorted(acks)
    assert acks and acks[-1] <= len(chunks) - 1
    (live,) = results
    assert live.packets == packets
    assert_complete(live, chunks)
    assert live.live_at is not None  # it joined while the message was live

    late = await collect(server.url, bob.token, Listen(msg="m1"))
    assert_complete(late, chunks)
    assert late.live_at is None
    assert late.end == live.end
    assert late.end is not None
    assert late.end.duration == closed.duration

    middle = len(chunks) // 2
    part = await collect(server.url, bob.token, Listen(msg="m1", from_seq=middle))
    assert_complete(part, chunks, middle)


async def test_websocket_and_h2_interoperate(server: RunningServer, packets: list[bytes]) -> None:
    alice, bob, thread = await setup(server)
    chunks = chunks_from_packets(packets)
    closed = await ws_talk(server.url, alice.token, open_frame("ws1", thread), chunks)
    assert closed.chunks == len(chunks)
    assert_complete(await collect(server.url, bob.token, Listen(msg="ws1")), chunks)
    assert_complete(await ws_collect(server.url, bob.token, Listen(msg="ws1")), chunks)

    closed = await talk(server.url, bob.token, open_frame("h2", thread), chunks)
    assert_complete(await ws_collect(server.url, alice.token, Listen(msg="h2")), chunks)
    tail = await ws_collect(server.url, alice.token, Listen(msg="h2", from_seq=10))
    assert_complete(tail, chunks, 10)


async def test_resume_skips_acknowledged_chunks(
    server: RunningServer, packets: list[bytes]
) -> None:
    """A talker restarted from its file: the server's next_seq says where to go on."""
    alice, bob, thread = await setup(server)
    chunks = chunks_from_packets(packets)

    async def first_half() -> None:
        # Uploads 20 chunks and then fails; the server keeps the message live.
        async def source():  # type: ignore[no-untyped-def]
            for chunk in chunks[:20]:
                yield chunk
            await trio.sleep(0.2)  # let the acks arrive
            raise RuntimeError("microphone unplugged")

        with pytest.raises(RuntimeError, match="unplugged"):
            await talk(server.url, alice.token, open_frame("r1", thread), source())

    await first_half()
    acks: list[int] = []
    closed = await talk(
        server.url, alice.token, open_frame("r1", thread), chunks, on_ack=acks.append
    )
    assert closed.chunks == len(chunks)
    assert acks and min(acks) >= 19  # nothing below seq 20 was sent again
    assert_complete(await collect(server.url, bob.token, Listen(msg="r1")), chunks)


async def test_error_frames_map_to_server_error(
    server: RunningServer, packets: list[bytes]
) -> None:
    alice, bob, thread = await setup(server)
    carol = await make_user(server.url, "carol")
    chunks = chunks_from_packets(packets[:5])
    await talk(server.url, alice.token, open_frame("e1", thread), chunks)

    # Carol is not in the thread: it and its messages are answered as if they did not exist.
    with pytest.raises(ServerError) as info:
        await collect(server.url, carol.token, Listen(msg="e1"))
    assert (info.value.code, info.value.name) == (301, "MESSAGE_NOT_FOUND")
    assert info.value.status == 404
    with pytest.raises(ServerError) as info:
        await ws_collect(server.url, carol.token, Listen(msg="e1"))
    assert info.value.code == ErrorCode.MESSAGE_NOT_FOUND

    with pytest.raises(ServerError) as info:
        await talk(server.url, carol.token, open_frame("e2", thread), chunks)
    assert info.value.code == ErrorCode.THREAD_NOT_FOUND
    assert info.value.status == 404
    with pytest.raises(ServerError) as info:
        await talk(server.url, "not-a-token", open_frame("e3", thread), chunks)
    assert info.value.code == ErrorCode.UNAUTHENTICATED
    assert info.value.status == 401
    with pytest.raises(ServerError) as info:
        await collect(server.url, bob.token, Listen(msg="nope"))
    assert info.value.code == ErrorCode.MESSAGE_NOT_FOUND
    # The server is still up after the refused streams.
    assert_complete(await collect(server.url, bob.token, Listen(msg="e1")), chunks)


async def test_rest(server: RunningServer, packets: list[bytes], tmp_path: Path) -> None:
    async with Rest(server.url) as rest:
        assert (await rest.health())["status"] == "ok"
        await rest.register("dora", "pw-dora-123")
        await rest.register("eve", "pw-eve-123")
        with pytest.raises(ServerError) as info:
            await rest.register("dora", "again-123")
        assert info.value.code == ErrorCode.USERNAME_TAKEN
        with pytest.raises(ServerError) as info:
            await rest.login("dora", "wrong")
        assert info.value.code == ErrorCode.INVALID_CREDENTIALS
        token = await rest.login("dora", "pw-dora-123")
        assert (await rest.me())["username"] == "dora"
        thread = await rest.create_thread("plans", ["eve"], id="plans")
        assert thread["id"] == "plans"
        assert [t["id"] for t in await rest.threads()] == ["plans"]
        chunks = chunks_from_packets(packets, 5)
        closed = await talk(server.url, token, open_frame("x1", "plans"), chunks)
        (message,) = await rest.messages("plans")
        assert message["id"] == "x1"
        assert message["chunks"] == closed.chunks
        assert (await rest.message("x1"))["state"] == "closed"
        _, exported = read_ogg_opus(await rest.export("x1"))
        assert exported == packets
        await rest.logout()
        with pytest.raises(ServerError) as info:
            await rest.me()
        assert info.value.code == ErrorCode.UNAUTHENTICATED


async def test_h2conn_flow_control_large_body(server: RunningServer) -> None:
    """More than the default 64 KiB window goes both ways on one connection."""
    async with await H2Connection.connect(server.url) as conn:
        streams = [await conn.request("GET", "/v1/health", end_stream=True) for _ in range(3)]
        for stream in streams:
            assert await stream.response_status() == 200
            assert b'"ok"' in await stream.read_all()


class CuttingProxy:
    """A TCP proxy in front of the server whose connections can be cut at will."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.scopes: set[trio.CancelScope] = set()
        self.connections = 0
        self.url = ""

    async def handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with client:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            async with upstream:
                with trio.CancelScope() as scope:
                    self.scopes.add(scope)
                    async with trio.open_nursery() as nursery:

                        async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                            try:
                                async for data in src:
                                    await dst.send_all(data)
                            except trio.BrokenResourceError:
                                pass
                            nursery.cancel_scope.cancel()

                        nursery.start_soon(pipe, client, upstream)
                        nursery.start_soon(pipe, upstream, client)
                self.scopes.discard(scope)

    def cut(self) -> None:
        for scope in self.scopes:
            scope.cancel()


async def test_talker_resumes_after_connection_drops(
    server: RunningServer, packets: list[bytes]
) -> None:
    alice, bob, thread = await setup(server)
    chunks = chunks_from_packets(packets)
    proxy = CuttingProxy(int(server.url.rsplit(":", 1)[1]))
    acks: list[int] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1"))
        proxy.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"

        async def cutter() -> None:
            for _ in range(2):
                await trio.sleep(0.25)
                proxy.cut()

        nursery.start_soon(cutter)
        closed = await talk(
            proxy.url,
            alice.token,
            open_frame("d1", thread),
            realtime(chunks, speed=2.0),  # about 0.5 s: cut twice on the way
            on_ack=acks.append,
        )
        nursery.cancel_scope.cancel()
    assert proxy.connections >= 3
    assert closed.chunks == len(chunks)
    assert_complete(await collect(server.url, bob.token, Listen(msg="d1")), chunks)


async def test_tls_with_alpn_h2(tls: Tls, packets: list[bytes]) -> None:
    """VXS-10-1: HTTP/2 over TLS with ALPN h2 (a trustme CA), upload and listen."""
    config, client_ctx = tls.config, tls.client_context
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(run_server, config)
        assert url.startswith("https://")
        async with Rest(url, ssl_context=client_ctx) as rest:
            await rest.register("tina", "pw-tina-123")
            token = await rest.login("tina", "pw-tina-123")
            await rest.create_thread("tls", id="tls")
        chunks = chunks_from_packets(packets, 5)
        opened = open_frame("s1", "tls")
        closed = await talk(url, token, opened, chunks, ssl_context=client_ctx)
        assert closed.chunks == len(chunks)
        result = await collect(url, token, Listen(msg="s1"), ssl_context=client_ctx)
        assert_complete(result, chunks)
        nursery.cancel_scope.cancel()
