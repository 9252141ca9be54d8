"""Invariant 1 over real HTTP/2 sockets, driven by hypothesis.

Random interleavings of a talker's chunks and connection drops (then resume) with
listeners that join (from the start, a seq, a media time or the live edge), stall
(stop reading with a 2 KiB window, so the server's sender for them really blocks)
and reconnect (hang up, listen again from the next seq they need). Whatever
happened, each listener ends with the talker's chunks from its start, exactly once,
in order, then the end marker (VXS-6.2-1, VXS-6.3-1); the store has them all.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from conftest import make_thread, make_user
from hypothesis import HealthCheck, given, settings
from test_pipeline import ACTIONS
from test_streaming import SCHEMA, RawTalker, chunk, opus, stored_packets

from voxer_stream.client.h2conn import H2Connection, H2Stream
from voxer_stream.transports.server import ServerConfig, run_server
from voxer_stream.wire import Chunk, End, Frame, FrameDecoder, MessageInfo, Open, encode_frame
from voxer_stream.wire.upload import UploadClient

FRAME = 960


@dataclass
class Connection:
    """One listen request on its own HTTP/2 connection, read by its own task."""

    conn: H2Connection
    stream: H2Stream
    frames: list[Frame] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    reading: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def run(self) -> None:
        decoder = FrameDecoder()
        with self.scope:
            while True:
                await self.reading.wait()
                data = await self.stream.receive()
                if data is None:
                    break
                decoder.feed(data)
                for frame in decoder:
                    SCHEMA.validate_cbor(encode_frame(frame))
                    self.frames.append(frame)
        self.done.set()


@dataclass
class Listener:
    connections: list[Connection] = field(default_factory=list)

    def seqs(self) -> list[int]:
        return [f.seq for c in self.connections for f in c.frames if isinstance(f, Chunk)]

    def start(self) -> int:
        first = self.connections[0].frames[0]
        assert isinstance(first, MessageInfo)
        return first.start_seq


async def wait_until(predicate: object, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.002)


class Scenario:
    def __init__(self, url: str, talker_token: str, listener_token: str, thread: str) -> None:
        self.url = url
        self.talker_token = talker_token
        self.auth = [("authorization", f"Bearer {listener_token}")]
        self.msg = uuid.uuid4().hex
        self.client = UploadClient(Open(msg=self.msg, thread=thread, created=1))
        self.sent = 0
        self.upload: H2Stream | None = None
        self.talker_conn: H2Connection | None = None

    async def talker_connect(self) -> None:
        self.talker_conn = await H2Connection.connect(self.url)
        talker = await RawTalker.open(self.talker_conn, self.talker_token, self.client)
        self.upload = talker.stream

    async def talker_drop(self) -> None:
        assert self.talker_conn is not None
        with trio.CancelScope(shield=True):
            await self.talker_conn.aclose()  # abrupt: no close frame, no END_STREAM

    async def listen(self, nursery: trio.Nursery, path: str) -> Connection:
        conn = await H2Connection.connect(self.url, window=2048)
        stream = await conn.request("GET", path, self.auth, end_stream=True)
        connection = Connection(conn, stream)
        connection.reading.set()
        nursery.start_soon(connection.run)
        await wait_until(lambda: bool(connection.frames))
        return connection

    async def hang_up(self, connection: Connection) -> None:
        connection.scope.cancel()
        await connection.done.wait()
        with trio.CancelScope(shield=True):
            await connection.conn.aclose()


async def run_actions(scenario: Scenario, actions: list[tuple[object, ...]]) -> None:
    base = f"/v1/messages/{scenario.msg}/listen"
    listeners: list[Listener] = []
    async with trio.open_nursery() as nursery:
        await scenario.talker_connect()
        await scenario.upload.send(scenario.client.send_chunk(chunk(0)))  # type: ignore[union-attr]
        scenario.sent = 1
        for action in actions:
            kind = action[0]
            if kind == "chunk":
                assert scenario.upload is not None
                await scenario.upload.send(scenario.client.send_chunk(chunk(scenario.sent)))
                scenario.sent += 1
            elif kind == "drop":
                await scenario.talker_drop()
                await scenario.talker_connect()
            elif kind == "join":
                _, how, n = action
                assert isinstance(n, int)
                query = {
                    "start": "",
                    "seq": f"?from_seq={min(n, scenario.sent)}",
                    "ts": f"?from_ts={n * FRAME // 2}",
                    "edge": "?live_edge=1",
                }[str(how)]
                listener = Listener()
                listener.connections.append(await scenario.listen(nursery, base + query))
                listeners.append(listener)
            elif listeners:
                index = action[1]
                assert isinstance(index, int)
                listener = listeners[index % len(listeners)]
                current = listener.connections[-1]
                if kind == "stall" and current.reading.is_set():
                    # A second stall must not orphan the reader waiting on the first.
                    current.reading = trio.Event()
                elif kind == "resume":
                    current.reading.set()
                elif kind == "reconnect":
                    await scenario.hang_up(current)
                    next_seq = listener.start() + len(listener.seqs())
                    listener.connections.append(
                        await scenario.listen(nursery, f"{base}?from_seq={next_seq}")
                    )
        assert scenario.upload is not None
        await scenario.upload.send(scenario.client.close())
        await scenario.upload.end()
        while (data := await scenario.upload.receive()) is not None:
            scenario.client.receive_data(data)
        assert scenario.client.closed is not None
        assert scenario.client.closed.chunks == scenario.sent
        late = Listener()
        late.connections.append(await scenario.listen(nursery, base))
        listeners.append(late)
        for listener in listeners:
            current = listener.connections[-1]
            current.reading.set()
            with trio.fail_after(20):
                await current.done.wait()
            start = listener.start()
            assert listener.seqs() == list(range(start, scenario.sent))
            assert current.frames[-1] == End(chunks=scenario.sent, duration=scenario.sent * FRAME)
            with trio.CancelScope(shield=True):
                await current.conn.aclose()
        assert scenario.talker_conn is not None
        await scenario.talker_conn.aclose()


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS)
async def test_random_interleavings_over_http2(actions: list[tuple[object, ...]]) -> None:
    # Each example runs in its own trio run (pytest-trio with hypothesis), so each
    # starts its own server on a fresh data directory.
    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(port=0, data_dir=Path(tmp), synchronous="NORMAL")
        async with trio.open_nursery() as nursery:
            url = (await nursery.start(run_server, config))[0]
            alice = await make_user(url, "alice")
            bob = await make_user(url, "bob")
            thread = await make_thread(url, alice, bob)
            scenario = Scenario(url, alice.token, bob.token, thread)
            await run_actions(scenario, actions)
            assert await stored_packets(url, alice, scenario.msg) == [
                opus(s) for s in range(scenario.sent)
            ]
            nursery.cancel_scope.cancel()
