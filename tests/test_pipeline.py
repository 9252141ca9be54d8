"""The pipeline's central promise, as properties (ARCHITECTURE invariants 1-4).

These tests drive the real pipeline (hub, ingest, reader) on a real SQLite store,
without sockets, so that hypothesis can try many interleavings of chunk
arrivals, joins, stalls, reconnects and talker drops quickly. The same
properties are checked over HTTP/2 and WebSocket in test_streaming.py.

Property (VXS-6.2-1, VXS-6.3-1): whatever the moment a listener joins and the
offset it asks for, it receives the message's chunks from that offset exactly
once, in order, then the end marker.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxer_stream.pipeline import Hub, ListenSession, UploadSession
from voxer_stream.store import SQLiteStore
from voxer_stream.store.base import MessageRecord, Thread
from voxer_stream.wire import (
    Chunk,
    End,
    Error,
    ErrorCode,
    Frame,
    Listen,
    Live,
    Open,
    ProtocolError,
    decode_frame,
    encode_frame,
)
from voxer_stream.wire.listen import ListenChecker
from voxer_stream.wire.upload import UploadClient

THREAD = "t1"
TALKER = "alice"
LISTENER = "bob"
FRAME = 960  # 20 ms at 48 kHz


def opus_chunk(seq: int, *, salt: bytes = b"") -> Chunk:
    """A chunk of one code-0 CELT fullband 20 ms packet (TOC 0x78), unique per seq."""
    packet = b"\x78" + seq.to_bytes(4, "big") + salt + bytes(30)
    return Chunk(seq=seq, ts=seq * FRAME, packets=(packet,))


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.001)


class MemorySink:
    """A transport that keeps decoded frames; ``stall`` makes it stop reading."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.error: Error | None = None
        self._open = trio.Event()
        self._open.set()

    def stall(self) -> None:
        if self._open.is_set():  # a second stall must not orphan the first waiter
            self._open = trio.Event()

    def resume(self) -> None:
        self._open.set()

    async def send(self, frames: Sequence[bytes]) -> None:
        await self._open.wait()
        for data in frames:
            self.frames.append(decode_frame(data))

    async def fail(self, exc: ProtocolError, data: bytes) -> None:
        frame = decode_frame(data)
        assert isinstance(frame, Error)
        self.error = frame


class DirectMemorySink(MemorySink):
    """A ``MemorySink`` that is also a ``DirectSink``: at the live edge ``publish`` writes
    to it. It refuses every ``refuse_every``-th frame (and every frame while stalled),
    as a transport out of flow-control credit or buffer room would."""

    def __init__(self, refuse_every: int = 5) -> None:
        super().__init__()
        self.refuse_every = refuse_every
        self.direct = 0
        self._offers = 0

    def try_send(self, frame: bytes) -> bool:
        self._offers += 1
        if not self._open.is_set() or self._offers % self.refuse_every == 0:
            return False
        self.frames.append(decode_frame(frame))
        self.direct += 1
        return True

    def flush(self) -> None:
        pass


async def allow(_: object) -> None:
    return None


@dataclass
class Harness:
    hub: Hub
    nursery: trio.Nursery

    async def listen(
        self, request: Listen, sink: MemorySink
    ) -> tuple[trio.CancelScope, trio.Event]:
        """Start a listen session; cancel the scope to disconnect, the event says it ended."""
        scope, done = trio.CancelScope(), trio.Event()

        async def run() -> None:
            with scope:
                await ListenSession(self.hub, request, allow, sink).run()
            done.set()

        self.nursery.start_soon(run)
        return scope, done


@dataclass
class Talker:
    """A talker connection driven frame by frame, with resume (VXS-5.2-4)."""

    harness: Harness
    client: UploadClient = field(default_factory=lambda: UploadClient(OPEN))
    sink: MemorySink = field(default_factory=MemorySink)
    scope: trio.CancelScope | None = None
    _send: trio.MemorySendChannel[bytes] | None = None
    _seen: int = 0

    async def connect(self) -> None:
        send, receive = trio.open_memory_channel[bytes](1000)
        self._send, self.sink, self.scope = send, MemorySink(), trio.CancelScope()
        self._seen = 0
        scope, sink = self.scope, self.sink

        async def source() -> AsyncIterator[bytes]:
            async for data in receive:
                yield data

        async def run() -> None:
            with scope:
                await UploadSession(self.harness.hub, TALKER, allow, sink).run(source())

        self.harness.nursery.start_soon(run)
        await send.send(self.client.start())
        await wait_until(lambda: bool(sink.frames) or sink.error is not None)
        self.absorb()
        assert self._send is not None
        if resend := self.client.resend():
            await self._send.send(resend)

    def absorb(self) -> None:
        """Feed the server's new frames to the talker's state machine."""
        for frame in self.sink.frames[self._seen :]:
            self.client.receive_data(encode_frame(frame))
        self._seen = len(self.sink.frames)

    async def chunk(self, chunk: Chunk) -> None:
        assert self._send is not None
        await self._send.send(self.client.send_chunk(chunk))

    def drop(self) -> None:
        assert self.scope is not None
        self.absorb()
        self.scope.cancel()

    async def close(self) -> None:
        assert self._send is not None
        await self._send.send(self.client.close())
        await wait_until(lambda: self.absorb() or self.client.closed is not None)


OPEN = Open(msg="m1", thread=THREAD, created=1_700_000_000_000)


@asynccontextmanager
async def running_hub(
    data_dir: Path, **options: Any
) -> AsyncIterator[tuple[SQLiteStore, Hub, trio.Nursery]]:
    """A real SQLite store with the test thread, and a hub running on it."""
    async with SQLiteStore(data_dir / "db.sqlite3", synchronous="NORMAL") as store:
        await setup_store(store)
        async with trio.open_nursery() as nursery:
            yield store, Hub(store, nursery, **options), nursery
            nursery.cancel_scope.cancel()


async def setup_store(store: SQLiteStore) -> None:
    await store.create_thread(
        Thread(
            id=THREAD,
            title="t",
            created_by=TALKER,
            created=0,
            participants=frozenset({TALKER, LISTENER}),
        )
    )


def received_seqs(frames: list[Frame]) -> list[int]:
    return [f.seq for f in frames if isinstance(f, Chunk)]


@dataclass
class Listener:
    """One listener across reconnects: the checker spans all its connections."""

    request: Listen
    sink: MemorySink = field(default_factory=MemorySink)
    scope: trio.CancelScope | None = None
    done: trio.Event | None = None
    connections: list[MemorySink] = field(default_factory=list)
    start: int | None = None
    seqs: list[int] = field(default_factory=list)

    def next_seq(self) -> int | None:
        """The next seq this listener needs, once its first connection said where it starts."""
        self.collect()
        if self.start is None:
            return None
        return self.start + len(self.seqs)

    def collect(self) -> None:
        self.seqs = []
        for sink in self.connections:
            frames = sink.frames
            if frames and self.start is None:
                self.start = frames[0].start_seq  # type: ignore[attr-defined]
            self.seqs.extend(received_seqs(frames))


ACTIONS = st.lists(
    st.one_of(
        st.just(("chunk",)),
        st.just(("chunk",)),
        st.just(("chunk",)),
        st.tuples(
            st.just("join"), st.sampled_from(["start", "seq", "ts", "edge"]), st.integers(0, 40)
        ),
        st.tuples(st.just("stall"), st.integers(0, 5)),
        st.tuples(st.just("resume"), st.integers(0, 5)),
        st.tuples(st.just("reconnect"), st.integers(0, 5)),
        st.just(("drop",)),
    ),
    max_size=60,
)


async def run_scenario(data_dir: Path, actions: list[tuple[object, ...]]) -> None:
    async with running_hub(data_dir, tail_limit=8) as (
        store,
        hub,
        nursery,
    ):  # a small tail exercises storage reads
        harness = Harness(hub, nursery)
        talker = Talker(harness)
        await talker.connect()
        listeners: list[Listener] = []
        sent = 0

        async def connect(listener: Listener, request: Listen) -> None:
            # Half the connections are written by ``publish`` at the live edge.
            direct = (len(listeners) + len(listener.connections)) % 2 == 1
            sink = DirectMemorySink() if direct else MemorySink()
            listener.connections.append(sink)
            listener.scope, listener.done = await harness.listen(request, sink)
            await wait_until(lambda: bool(sink.frames) or sink.error is not None)
            assert sink.error is None, sink.error

        for action in actions:
            kind = action[0]
            if kind == "chunk":
                await talker.chunk(opus_chunk(sent))
                sent += 1
                live = hub.peek(OPEN.msg)
                assert live is not None
                await wait_until(lambda live=live, sent=sent: live.next_seq >= sent)
            elif kind == "join":
                _, how, n = action
                assert isinstance(n, int)
                request = {
                    "start": Listen(msg=OPEN.msg),
                    "seq": Listen(msg=OPEN.msg, from_seq=min(n, sent)),
                    "ts": Listen(msg=OPEN.msg, from_ts=n * FRAME // 2),
                    "edge": Listen(msg=OPEN.msg, live_edge=True),
                }[str(how)]
                listener = Listener(request)
                listeners.append(listener)
                await connect(listener, request)
                listener.collect()
                # VXS-6.1-3, VXS-6.1-4: the stream starts where it was asked to
                expected = {
                    "start": 0,
                    "seq": min(n, sent),
                    "ts": min(n // 2, sent),
                    "edge": sent,
                }[str(how)]
                assert listener.start == expected, (how, n, sent, listener.start)
            elif kind in ("stall", "resume", "reconnect") and listeners:
                index = action[1]
                assert isinstance(index, int)
                listener = listeners[index % len(listeners)]
                sink = listener.connections[-1]
                if kind == "stall":
                    sink.stall()
                elif kind == "resume":
                    sink.resume()
                else:
                    assert listener.scope is not None and listener.done is not None
                    listener.scope.cancel()
                    await listener.done.wait()  # the old connection is really gone
                    next_seq = listener.next_seq()
                    assert next_seq is not None
                    await connect(listener, Listen(msg=OPEN.msg, from_seq=next_seq))
            elif kind == "drop":
                talker.drop()
                await talker.connect()
        for listener in listeners:
            listener.connections[-1].resume()
        await talker.close()
        closed = talker.client.closed
        assert closed is not None and closed.chunks == sent
        late = Listener(Listen(msg=OPEN.msg))
        listeners.append(late)
        await connect(late, late.request)
        for listener in listeners:
            sink = listener.connections[-1]
            await wait_until(
                lambda sink=sink: bool(sink.frames) and isinstance(sink.frames[-1], End)
            )
            listener.collect()
            assert listener.start is not None
            # exactly once, in order, from the listener's start to the end
            assert listener.seqs == list(range(listener.start, sent)), listener.request
            end = sink.frames[-1]
            assert isinstance(end, End) and end.chunks == sent
            # each connection on its own also obeys the listen state machine
            for connection in listener.connections:
                checker = ListenChecker()
                for frame in connection.frames:
                    checker.apply(frame)
        stored = await store.read_chunks(OPEN.msg, 0, 10_000)
        assert [c.seq for c in stored] == list(range(sent))
        assert all(c.packets == opus_chunk(c.seq).packets for c in stored)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=ACTIONS)
async def test_every_listener_gets_every_chunk_once_in_order(
    actions: list[tuple[object, ...]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await run_scenario(Path(tmp), actions)


async def test_stalled_listener_delays_neither_talker_nor_others(tmp_path: Path) -> None:
    """VXS-6.5-1, VXS-6.5-2: a listener that stops reading costs nobody anything."""
    async with running_hub(tmp_path, tail_limit=50) as (_store, hub, nursery):
        harness = Harness(hub, nursery)
        talker = Talker(harness)
        await talker.connect()
        stalled, healthy = DirectMemorySink(), DirectMemorySink()
        stalled.stall()
        await harness.listen(Listen(msg=OPEN.msg), stalled)
        await harness.listen(Listen(msg=OPEN.msg), healthy)
        for seq in range(500):
            await talker.chunk(opus_chunk(seq))
        await wait_until(lambda: talker.absorb() or talker.client.acked == 499)
        await wait_until(lambda: len(received_seqs(healthy.frames)) == 500)
        assert stalled.frames == []
        await talker.close()
        await wait_until(lambda: bool(healthy.frames) and isinstance(healthy.frames[-1], End))
        stalled.resume()
        await wait_until(lambda: bool(stalled.frames) and isinstance(stalled.frames[-1], End))
        assert received_seqs(stalled.frames) == list(range(500))
        assert healthy.direct > 100 and stalled.direct == 0


@pytest.mark.parametrize("refuse_every", [10**9, 2, 3])
async def test_live_edge_listeners_are_written_by_publish(
    tmp_path: Path, refuse_every: int
) -> None:
    """At the live edge a ``DirectSink`` gets each chunk from ``publish`` itself; when it
    refuses one the listener's task takes over from that very chunk and comes back to
    the edge: nothing skipped, nothing twice (VXS-6.2-1)."""
    async with running_hub(tmp_path, tail_limit=50) as (_store, hub, nursery):
        harness = Harness(hub, nursery)
        talker = Talker(harness)
        await talker.connect()
        sinks = [DirectMemorySink(refuse_every) for _ in range(3)]
        for sink in sinks:
            await harness.listen(Listen(msg=OPEN.msg), sink)
        await wait_until(lambda: all(len(s.frames) == 2 for s in sinks))  # info, live
        for seq in range(200):
            await talker.chunk(opus_chunk(seq))
            if seq % 7 == 0:
                await trio.sleep(0.001)  # now and then let the hub and listeners catch up
        await talker.close()
        for sink in sinks:
            await wait_until(lambda sink=sink: isinstance(sink.frames[-1], End))
            assert received_seqs(sink.frames) == list(range(200))
            checker = ListenChecker()
            for frame in sink.frames:
                checker.apply(frame)
            if refuse_every > 200:
                assert sink.direct == 200
            else:
                assert 0 < sink.direct < 200


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param([opus_chunk(0), opus_chunk(2)], ErrorCode.SEQUENCE_GAP, id="gap"),
        pytest.param(
            [opus_chunk(0), opus_chunk(0, salt=b"other")], ErrorCode.CHUNK_CONFLICT, id="conflict"
        ),
        pytest.param(
            [opus_chunk(0), Chunk(seq=1, ts=0, packets=(b"\x78" + bytes(5),))],
            ErrorCode.TIMESTAMP_REGRESSION,
            id="ts-regression",
        ),
        pytest.param(
            [opus_chunk(0), Chunk(seq=1, ts=FRAME, packets=(b"\x03",))],
            ErrorCode.INVALID_OPUS,
            id="not-opus",
        ),
    ],
)
async def test_rejected_chunk_changes_nothing_stored(
    tmp_path: Path, frames: list[Chunk], code: ErrorCode
) -> None:
    """VXS-5.6-2: the error is reported and what was stored stays as it was."""
    async with running_hub(tmp_path) as (store, hub, _nursery):
        sink = MemorySink()
        data = encode_frame(OPEN) + b"".join(encode_frame(f) for f in frames)

        async def source() -> AsyncIterator[bytes]:
            yield data
            await trio.sleep_forever()

        with trio.fail_after(5):
            await UploadSession(hub, TALKER, allow, sink).run(source())
        assert sink.error is not None and sink.error.code == code
        live = hub.peek(OPEN.msg)
        assert live is not None
        await live.wait_durable(1)
        stored = await store.read_chunks(OPEN.msg, 0, 10)
        assert [(c.seq, c.packets) for c in stored] == [(0, opus_chunk(0).packets)]


async def test_resent_identical_chunk_is_harmless(tmp_path: Path) -> None:
    """VXS-5.4-1."""
    async with running_hub(tmp_path) as (store, hub, nursery):
        talker = Talker(Harness(hub, nursery))
        await talker.connect()
        await talker.chunk(opus_chunk(0))
        await talker.chunk(opus_chunk(1))
        assert talker._send is not None
        await talker._send.send(encode_frame(opus_chunk(0)))
        await talker.close()
        assert talker.sink.error is None
        record = await store.get_message(OPEN.msg)
        assert record == MessageRecord(
            id=OPEN.msg,
            thread_id=THREAD,
            sender=TALKER,
            codec="opus",
            created=OPEN.created,
            state="closed",
            chunks=2,
            duration=2 * FRAME,
        )


async def closed_message(store: SQLiteStore, hub: Hub, nursery: trio.Nursery, count: int) -> None:
    talker = Talker(Harness(hub, nursery))
    await talker.connect()
    for seq in range(count):
        await talker.chunk(opus_chunk(seq))
    await talker.close()


async def timed_listen(hub: Hub, request: Listen) -> tuple[float, MemorySink]:
    sink = MemorySink()
    start = trio.current_time()
    with trio.fail_after(10):
        await ListenSession(hub, request, allow, sink).run()
    return trio.current_time() - start, sink


async def test_speed_paces_stored_chunks(tmp_path: Path) -> None:
    """VXS-6.4-1: at speed s a chunk is not sent before (ts - ts_first) / s; speed 0 is
    as fast as possible. 50 chunks are 1 s of audio; the last is due at 0.98 s / s."""
    async with running_hub(tmp_path) as (store, hub, nursery):
        await closed_message(store, hub, nursery, 50)
        fast, sink = await timed_listen(hub, Listen(msg=OPEN.msg))
        assert received_seqs(sink.frames) == list(range(50))
        double, sink = await timed_listen(hub, Listen(msg=OPEN.msg, speed=2.0))
        assert received_seqs(sink.frames) == list(range(50))
        assert double >= 0.98 / 2
        real, _ = await timed_listen(hub, Listen(msg=OPEN.msg, from_seq=25, speed=1.0))
        assert real >= 24 * 0.02
        assert fast < double  # nothing holds an as-fast-as-possible listener back


async def test_catch_up_at_speed_then_live(tmp_path: Path) -> None:
    """Play faster until caught up, then live (FEATURES: catch up to live): a listener
    joining a live message 0.5 s in at 2x goes live, then gets the rest as it comes."""
    async with running_hub(tmp_path) as (_store, hub, nursery):
        harness = Harness(hub, nursery)
        talker = Talker(harness)
        await talker.connect()
        sink = MemorySink()
        for seq in range(75):  # 1.5 s of audio in real time
            if seq == 25:
                await harness.listen(Listen(msg=OPEN.msg, speed=2.0), sink)
            await talker.chunk(opus_chunk(seq))
            await trio.sleep(0.02)
        await talker.close()
        await wait_until(lambda: bool(sink.frames) and isinstance(sink.frames[-1], End))
        assert received_seqs(sink.frames) == list(range(75))
        live = [f for f in sink.frames if isinstance(f, Live)]
        assert len(live) == 1 and 25 < live[0].seq < 75


async def test_second_open_supersedes_the_first_upload(tmp_path: Path) -> None:
    """VXS-5.7-1: a talker that reconnects while its old connection still hangs takes over."""
    async with running_hub(tmp_path) as (_store, hub, nursery):
        first = Talker(Harness(hub, nursery))
        await first.connect()
        await first.chunk(opus_chunk(0))
        second = Talker(Harness(hub, nursery), client=first.client)
        await second.connect()
        await wait_until(lambda: first.sink.error is not None)
        assert first.sink.error is not None
        assert first.sink.error.code == ErrorCode.SUPERSEDED
        await second.chunk(opus_chunk(1))
        await second.close()
        assert second.client.closed is not None and second.client.closed.chunks == 2


async def test_idle_upload_times_out_and_stays_resumable(tmp_path: Path) -> None:
    """VXS-5.7-2: no frame for the idle timeout ends the stream; the message stays live."""
    async with running_hub(tmp_path) as (store, hub, _nursery):
        sink = MemorySink()

        async def source() -> AsyncIterator[bytes]:
            yield encode_frame(OPEN) + encode_frame(opus_chunk(0))
            await trio.sleep_forever()

        session = UploadSession(hub, TALKER, allow, sink, idle_timeout=0.2)
        with trio.fail_after(5):
            await session.run(source())
        assert sink.error is not None and sink.error.code == ErrorCode.IDLE_TIMEOUT
        record = await store.get_message(OPEN.msg)
        assert record is not None and record.state == "live"


async def test_a_message_left_live_by_a_stopped_server_is_closed_after_restart(
    tmp_path: Path,
) -> None:
    """VXS-5.7-3 across a restart: a message live in the store when the server stopped
    is taken back at start and closed once abandoned, with the chunks it has stored,
    though nobody talks or listens to it."""
    async with running_hub(tmp_path) as (store, hub, nursery):
        talker = Talker(Harness(hub, nursery))
        await talker.connect()
        for seq in range(2):
            await talker.chunk(opus_chunk(seq))
        await wait_until(lambda: talker.absorb() or talker.client.acked == 1)
    async with (
        SQLiteStore(tmp_path / "db.sqlite3", synchronous="NORMAL") as store,
        trio.open_nursery() as nursery,
    ):
        hub = Hub(store, nursery, abandon_after=0.5)
        nursery.start_soon(hub.run_abandon_watchdog)
        with trio.fail_after(5):
            while (record := await store.get_message(OPEN.msg)) and record.state == "live":
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert record is not None and (record.state, record.chunks) == ("closed", 2)


async def test_abandoned_live_message_is_closed(tmp_path: Path) -> None:
    """VXS-5.7-3: no talker for ``abandon_after``: the server closes the message with the
    chunks it has, and a listener waiting at the live edge gets its end."""
    async with running_hub(tmp_path, abandon_after=0.5) as (store, hub, nursery):
        nursery.start_soon(hub.run_abandon_watchdog)
        harness = Harness(hub, nursery)
        talker = Talker(harness)
        await talker.connect()
        for seq in range(3):
            await talker.chunk(opus_chunk(seq))
        listener = MemorySink()
        await harness.listen(Listen(msg=OPEN.msg, live_edge=True), listener)
        await wait_until(lambda: talker.absorb() or talker.client.acked == 2)
        talker.drop()
        await wait_until(lambda: bool(listener.frames) and isinstance(listener.frames[-1], End))
        assert listener.frames[-1] == End(chunks=3, duration=3 * FRAME)
        record = await store.get_message(OPEN.msg)
        assert record is not None and (record.state, record.chunks) == ("closed", 3)
