"""Section 6: the listen state machine, as a listener sees it over HTTP/2.

Most cases judge a whole listen stream with ``Transcript``: one ``message`` frame
first, then chunks with consecutive seqs from ``start_seq``, each exactly the chunk
the talker uploaded (ts and packets byte for byte), at most one ``live`` whose seq is
the next chunk, ``end`` with the message's count and duration, and nothing after it.
Each kind of deviation names the sentence it breaks, so a dropped chunk fails
VXS-6.2-1, a missing ``live`` VXS-6.2-4, a frame after ``end`` VXS-6.3-2.

Talkers are driven by the suite (``Talker``), so every case knows exactly which
chunks exist and when each one was sent. Timing checks are one-sided where they
judge a lower bound (pacing is measured from the listen request, which no chunk can
precede) and generous where they judge promptness (6.2-5, 6.5: seconds, not
milliseconds), so that a loaded machine does not fail a conforming server.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, Literal

import trio

from voxer_stream.wire import Ack, Chunk, Close, Closed, End, Error, Frame, Live, MessageInfo

from ..case import case, expect, fail, note
from ..context import Context, opus_packet
from ..net import Exchange, Reply, TransportFailure
from ..spec import registry
from .errors import expect_unseen, stream_answer

__all__ = [
    "TRANSCRIPT_IDS",
    "Talker",
    "Transcript",
    "check_listen_reply",
    "cites",
    "read_to_end",
    "read_until",
    "series",
    "talking",
]

#: Every id a transcript check can fail on; a case that uses ``Transcript`` cites them.
TRANSCRIPT_IDS: Final = (
    "VXS-4.8-1",
    "VXS-6.2-1",
    "VXS-6.2-2",
    "VXS-6.2-4",
    "VXS-6.3-1",
    "VXS-6.3-2",
    "VXS-7-4",
)

#: Ticks of one ``opus_packet`` (configuration 15: one 20 ms frame).
PACKET_TICKS: Final = 960
CLOCK_RATE: Final = 48000
#: How long a live chunk may take from the talker's send to the listener (VXS-6.2-5).
PROMPT: Final = 2.0


def cites(*ids: str) -> tuple[str, ...]:
    """``ids`` and then ``TRANSCRIPT_IDS``, each once."""
    return tuple(dict.fromkeys((*ids, *TRANSCRIPT_IDS)))


def series(
    count: int,
    *,
    first: int = 0,
    ts: int = 0,
    packets: int = 1,
    gaps: Mapping[int, int] | None = None,
    salt: bytes = b"",
    pad: int = 0,
) -> list[Chunk]:
    """Chunks ``first`` .. ``first+count-1`` of ``packets`` 20 ms packets each, from ``ts``.

    ``gaps[seq]`` ticks of silence are left before chunk ``seq`` (media time may leave
    gaps, VXS-2.2-2); ``pad`` zero bytes make each packet larger. Every packet names
    its chunk and position, so a swapped or doubled one is visible byte for byte.
    """
    out: list[Chunk] = []
    for seq in range(first, first + count):
        ts += (gaps or {}).get(seq, 0)
        body = salt + bytes(pad)
        out.append(
            Chunk(
                seq=seq,
                ts=ts,
                packets=tuple(opus_packet(seq * 100 + i, body) for i in range(packets)),
            )
        )
        ts += packets * PACKET_TICKS
    return out


def end_of(chunks: Sequence[Chunk] | Mapping[int, Chunk]) -> int:
    """The duration of a message made of ``chunks`` of ``opus_packet``s (2.2)."""
    values = list(chunks.values()) if isinstance(chunks, Mapping) else list(chunks)
    if not values:
        return 0
    last = max(values, key=lambda c: c.seq)
    return last.ts + len(last.packets) * PACKET_TICKS


# -- the talker ------------------------------------------------------------------


class Talker:
    """One open upload of a live message; ``sent`` is what the server was given."""

    def __init__(self, ctx: Context, exchange: Exchange, thread: str, msg: str) -> None:
        self.ctx = ctx
        self.exchange = exchange
        self.thread = thread
        self.msg = msg
        self.sent: dict[int, Chunk] = {}
        self.acked = -1
        self.closed: Closed | None = None
        self._next_seq = 0
        self._next_ts = 0

    def make(self, count: int, *, gap: int = 0, **kwargs: Any) -> list[Chunk]:
        """The next ``count`` chunks after those made so far (``gap`` ticks before them)."""
        made = series(count, first=self._next_seq, ts=self._next_ts + gap, **kwargs)
        self._next_seq += count
        self._next_ts = end_of(made)
        return made

    @property
    def duration(self) -> int:
        """The message's duration, for chunks of ``opus_packet``s (``series``, ``make``)."""
        return end_of(self.sent)

    async def send(self, *chunks: Chunk, wait: bool = True) -> None:
        """Upload ``chunks``; with ``wait``, until an ack covers the last (it is stored)."""
        for chunk in chunks:
            self.sent[chunk.seq] = chunk
            if chunk.seq >= self._next_seq:
                self._next_seq = chunk.seq + 1
                self._next_ts = end_of([chunk])
        await self.exchange.send(*chunks)
        if wait and chunks:
            await self.wait_ack(chunks[-1].seq)

    async def wait_ack(self, seq: int, within: float | None = None) -> None:
        while self.acked < seq:
            frame = await self.exchange.frame(within)
            if isinstance(frame, Ack):
                self.acked = frame.seq
            elif frame is None or isinstance(frame, Error | Closed):
                raise TransportFailure(f"the upload ended before ack {seq}: {frame}")

    async def close(self, within: float | None = None) -> Closed:
        """Send ``close`` and wait for ``closed``."""
        await self.exchange.send(Close(chunks=len(self.sent)))
        while True:
            frame = await self.exchange.frame(within)
            if isinstance(frame, Ack):
                self.acked = frame.seq
            elif isinstance(frame, Closed):
                self.closed = frame
                return frame
            else:
                raise TransportFailure(f"close was answered with {frame}")


@asynccontextmanager
async def talking(
    ctx: Context, thread: str | None = None, *, token: str | None = None
) -> AsyncIterator[Talker]:
    """A new message opened by alice (``opened`` received) in ``thread`` (a new one)."""
    thread = thread or await ctx.thread()
    msg = ctx.msg_id()
    async with ctx.upload(token or ctx.alice.token) as exchange:
        await exchange.send(ctx.open_frame(thread, msg))
        await ctx.wait_acked(exchange, -1)
        yield Talker(ctx, exchange, thread, msg)


# -- the transcript ----------------------------------------------------------------

LiveRule = int | Literal["any"] | None


class Transcript:
    """One listen stream, checked frame by frame against section 6.

    ``sent`` maps seq to the chunk the talker uploaded (it may grow while the listen
    runs). ``live`` is the seq the one ``live`` frame must carry, ``"any"`` when the
    moment the listener catches up is a race (then at most one, naming the next
    chunk), or None when the message was closed before the listener could catch up
    (then none). ``end`` is the expected (chunks, duration) of ``end``. A chunk out of
    order fails ``order_id``, an error frame ``error_id``: the sentence the case is about.
    """

    def __init__(
        self,
        msg: str,
        sent: Mapping[int, Chunk],
        *,
        start_seq: int,
        live: LiveRule = None,
        end: tuple[int, int] | None = None,
        state: str | None = None,
        info: Mapping[str, object] | None = None,
        start_id: str = "VXS-6.2-2",
        error_id: str = "VXS-6.2-1",
        order_id: str = "VXS-6.2-1",
        name: str = "listener",
    ) -> None:
        self.msg = msg
        self.sent = sent
        self.start_seq = start_seq
        self.live = live
        self.expected_end = end
        self.state = state
        self.info = info or {}
        self.start_id = start_id
        self.error_id = error_id
        self.order_id = order_id
        self.name = name
        self.message: MessageInfo | None = None
        self.next_seq = start_seq
        self.live_seq: int | None = None
        self.ended: End | None = None
        self.frames: list[Frame] = []

    def _where(self) -> str:
        return f"{self.name}, frame {len(self.frames)}"

    def feed(self, frame: Frame) -> None:
        self.frames.append(frame)
        where = self._where()
        if self.ended is not None:
            fail("VXS-6.3-2", f"{where}: a frame ({frame.TYPE}) after end")
        if isinstance(frame, Error):
            fail(
                self.error_id,
                f"{where}: the listen failed with error {frame.code} {frame.name} "
                f"({frame.detail!r}) after chunks up to {self.next_seq - 1}",
            )
        if self.message is None:
            self._first(frame, where)
        elif isinstance(frame, MessageInfo):
            fail("VXS-6.2-2", f"{where}: a second message frame")
        elif isinstance(frame, Chunk):
            self._chunk(frame, where)
        elif isinstance(frame, Live):
            self._live(frame, where)
        elif isinstance(frame, End):
            self._end(frame, where)
        else:
            fail("VXS-6.2-1", f"{where}: a {frame.TYPE} frame in a listen stream")

    def _first(self, frame: Frame, where: str) -> None:
        expect(
            isinstance(frame, MessageInfo),
            "VXS-6.2-2",
            f"{where}: the first frame is {frame.TYPE}, expected message",
        )
        assert isinstance(frame, MessageInfo)
        self.message = frame
        expect(frame.msg == self.msg, "VXS-6.2-2", f"{where}: message.msg {frame.msg!r}")
        expect(
            frame.start_seq == self.start_seq,
            self.start_id,
            f"{where}: message.start_seq {frame.start_seq}, expected {self.start_seq}",
        )
        if self.state is not None:
            expect(
                frame.state == self.state,
                "VXS-4.8-1",
                f"{where}: message.state {frame.state!r}, expected {self.state!r}",
            )
        for key, value in self.info.items():
            got = getattr(frame, key)
            expect(got == value, "VXS-4.8-1", f"{where}: message.{key} {got!r}, expected {value!r}")

    def _chunk(self, frame: Chunk, where: str) -> None:
        if isinstance(self.live, int) and self.live_seq is None and frame.seq >= self.live:
            fail(
                "VXS-6.2-4",
                f"{where}: chunk {frame.seq} arrived with no live frame before it "
                f"(live {self.live} was due once the listener had caught up)",
            )
        if frame.seq != self.next_seq:
            kind = "a duplicate or reordered chunk" if frame.seq < self.next_seq else "a gap"
            fail(
                self.order_id,
                f"{where}: chunk {frame.seq} where chunk {self.next_seq} was due ({kind})",
            )
        sent = self.sent.get(frame.seq)
        expect(
            sent is not None, "VXS-6.2-1", f"{where}: chunk {frame.seq}, which was never uploaded"
        )
        assert sent is not None
        expect(
            frame.ts == sent.ts,
            "VXS-6.2-1",
            f"{where}: chunk {frame.seq} has ts {frame.ts}, it was uploaded with ts {sent.ts}",
        )
        if frame.packets != sent.packets:
            fail(
                "VXS-7-4",
                f"{where}: chunk {frame.seq} carries other packets than uploaded "
                f"({len(frame.packets)} packets, {sum(map(len, frame.packets))} bytes; "
                f"uploaded {len(sent.packets)}, {sum(map(len, sent.packets))} bytes)",
            )
        self.next_seq += 1

    def _live(self, frame: Live, where: str) -> None:
        expect(
            self.live is not None,
            "VXS-6.2-4",
            f"{where}: live {frame.seq} for a message that was closed before the listener "
            "caught up",
        )
        expect(self.live_seq is None, "VXS-6.2-4", f"{where}: a second live frame")
        expect(
            frame.seq == self.next_seq,
            "VXS-6.2-4",
            f"{where}: live.seq {frame.seq}, but the next chunk to arrive is {self.next_seq}",
        )
        if isinstance(self.live, int):
            expect(
                frame.seq == self.live,
                "VXS-6.2-4",
                f"{where}: live {frame.seq}, expected live {self.live}",
            )
        self.live_seq = frame.seq

    def _end(self, frame: End, where: str) -> None:
        if isinstance(self.live, int) and self.live_seq is None:
            fail("VXS-6.2-4", f"{where}: end without the live frame {self.live} before it")
        expect(
            frame.chunks == self.next_seq,
            "VXS-6.3-1",
            f"{where}: end.chunks {frame.chunks}, but the chunks sent end at {self.next_seq}",
        )
        if self.expected_end is not None:
            chunks, duration = self.expected_end
            expect(
                (frame.chunks, frame.duration) == (chunks, duration),
                "VXS-6.3-1",
                f"{where}: end ({frame.chunks} chunks, {frame.duration} ticks), expected "
                f"({chunks}, {duration})",
            )
        self.ended = frame

    def finish(self) -> None:
        """The response has ended: it must have ended with ``end``."""
        expect(self.message is not None, "VXS-6.2-2", f"{self.name}: no message frame at all")
        expect(
            self.ended is not None,
            "VXS-6.3-1",
            f"{self.name}: the response ended after chunk {self.next_seq - 1} without end",
        )

    @property
    def got_chunk(self) -> int:
        """The seq of the newest chunk received (start_seq - 1 if none)."""
        return self.next_seq - 1


class Timed(Transcript):
    """A transcript that also notes when each chunk arrived (``trio.current_time``)."""

    def __init__(self, *args: Any, asked: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: When the listen request was sent: no chunk can have been sent before.
        self.asked = asked
        self.arrivals: dict[int, float] = {}
        #: Called before a live frame is judged (a pacing fault explains an early live).
        self.before_live: Callable[[Timed], object] | None = None

    def feed(self, frame: Frame) -> None:
        if isinstance(frame, Chunk):
            self.arrivals.setdefault(frame.seq, trio.current_time())
        elif isinstance(frame, Live) and self.before_live is not None:
            self.before_live(self)
        super().feed(frame)


async def read_until(
    exchange: Exchange,
    transcript: Transcript,
    done: Callable[[Transcript], bool],
    *,
    within: float,
    rid: str,
    what: str,
    pause: float = 0.0,
) -> None:
    """Feed frames to ``transcript`` until ``done``; else fail ``rid`` after ``within`` s."""
    deadline = trio.current_time() + within
    while not done(transcript):
        left = max(deadline - trio.current_time(), 0.001)
        try:
            frame = await exchange.frame(within=left)
        except TransportFailure as exc:
            fail(rid, f"{transcript.name}: {what}: {exc}")
        if frame is None:
            fail(rid, f"{transcript.name}: {what}: the response ended")
        else:
            transcript.feed(frame)
        if pause:
            await trio.sleep(pause)


async def read_until_live(
    exchange: Exchange, transcript: Transcript, what: str, rid: str = "VXS-6.2-4"
) -> None:
    """Read until the ``live`` frame (VXS-6.2-4), failing after ``PROMPT`` s."""
    await read_until(
        exchange, transcript, lambda t: t.live_seq is not None, within=PROMPT, rid=rid, what=what
    )


async def read_chunk(
    exchange: Exchange, transcript: Transcript, seq: int, rid: str, what: str
) -> None:
    """Read until chunk ``seq`` has arrived, failing ``rid`` after ``PROMPT`` s."""
    await read_until(
        exchange, transcript, lambda t: t.got_chunk >= seq, within=PROMPT, rid=rid, what=what
    )


async def read_to_end(
    exchange: Exchange, transcript: Transcript, *, within: float = 10.0, pause: float = 0.0
) -> None:
    """Read up to ``end`` and then the end of the response, which must follow at once."""
    await read_until(
        exchange,
        transcript,
        lambda t: t.ended is not None,
        within=within,
        rid="VXS-6.3-1",
        what="waiting for end",
        pause=pause,
    )
    try:
        frame = await exchange.frame(within=PROMPT)
    except TransportFailure:
        fail("VXS-6.3-2", f"{transcript.name}: the response did not end after end")
    if frame is not None:
        transcript.feed(frame)  # fails VXS-6.3-2


def check_listen_reply(reply: Reply, transcript: Transcript, rid: str = "VXS-6.2-2") -> None:
    """A whole listen response: status 200 and a transcript that ends with ``end``."""
    if reply.status != 200:
        detail = reply.error.name if reply.error else f"{len(reply.frames)} frames"
        fail(rid, f"{transcript.name}: HTTP {reply.status} ({detail}), expected 200")
    for frame in reply.frames:
        transcript.feed(frame)
    transcript.finish()


def check_refused(reply: Reply, code: int, rid: str, what: str) -> None:
    """A refused listen: the registry's HTTP status and exactly one error frame ``code``."""
    entry = registry()[code]
    names = [f.TYPE for f in reply.frames]
    expect(
        reply.status == entry.http_status,
        rid,
        f"{what}: HTTP {reply.status} with frames {names}, "
        f"expected {entry.http_status} {entry.name}",
    )
    expect(
        len(reply.frames) == 1 and isinstance(reply.frames[0], Error),
        rid,
        f"{what}: the body holds {names}, expected exactly one error frame",
    )
    error = reply.frames[0]
    assert isinstance(error, Error)
    expect(
        error.code == code,
        rid,
        f"{what}: error {error.code} {error.name}, expected {code} {entry.name}",
    )


async def listen_closed(ctx: Context, talker: Talker, **query: Any) -> Reply:
    """Bob's whole listen of the talker's message."""
    return await ctx.listen_all(ctx.bob.token, talker.msg, **query)


# -- 6.1 Starting --------------------------------------------------------------------


@case(
    "6.1/outsider",
    "a listen by an account that is not a participant of the message's thread is answered "
    "as for a message that does not exist",
    requirements=("VXS-6.1-1", "VXS-8-2", "VXS-13.2-4"),
    accepts="carol (no participant) listening to a live and to a closed message: HTTP 404 "
    "and a body of exactly one error frame 301 MESSAGE_NOT_FOUND, no message or chunk, the "
    "same answer (status, frames, code, name, detail but for the id) as for a message id "
    "nobody used, with the same listen parameters; bob (a participant) gets status 200 and a "
    "message frame, also where his role is listen",
)
async def outsider(ctx: Context) -> None:
    async def unseen(reply: Reply, msg: str, what: str, **query: Any) -> None:
        check_refused(reply, 301, "VXS-6.1-1", what)
        other = ctx.msg_id()
        unknown = await ctx.listen_all(ctx.carol.token, other, **query)
        expect_unseen(stream_answer(reply, msg), stream_answer(unknown, other), "VXS-8-2", what)

    async with talking(ctx) as talker:
        await talker.send(*talker.make(3))
        reply = await ctx.listen_all(ctx.carol.token, talker.msg)
        await unseen(reply, talker.msg, "carol, live message")
        await talker.close()
    for query in ({}, {"from_seq": 1}, {"live_edge": 1}):
        reply = await ctx.listen_all(ctx.carol.token, talker.msg, **query)
        await unseen(reply, talker.msg, f"carol, closed message, query {query}", **query)
    reply = await ctx.listen_all(ctx.bob.token, talker.msg)
    first = reply.frames[0] if reply.frames else None
    expect(
        reply.status == 200 and isinstance(first, MessageInfo),
        "VXS-6.1-1",
        f"bob, a participant, got HTTP {reply.status} and {first!r}",
    )
    async with talking(ctx, await ctx.listen_only_thread()) as talker:
        await talker.send(*talker.make(2))
        await talker.close()
    reply = await ctx.listen_all(ctx.bob.token, talker.msg)
    first = reply.frames[0] if reply.frames else None
    expect(
        reply.status == 200 and isinstance(first, MessageInfo),
        "VXS-13.2-4",
        f"bob, a listen-only participant, got HTTP {reply.status} and {first!r}",
    )


@case(
    "6.1/message-not-found",
    "a listen to an unknown message gets MESSAGE_NOT_FOUND",
    requirements=("VXS-6.1-1",),
    accepts="HTTP 404 and a body of exactly one error frame 301 MESSAGE_NOT_FOUND, for a "
    "message id never used, with and without listen parameters",
)
async def message_not_found(ctx: Context) -> None:
    for query in ({}, {"from_seq": 0}, {"live_edge": 1}, {"speed": 1}):
        reply = await ctx.listen_all(ctx.bob.token, ctx.msg_id(), **query)
        check_refused(reply, 301, "VXS-6.1-1", f"unknown message, query {query}")


@case(
    "6.1/one-offset",
    "a listen with more than one of from_seq, from_ts and live_edge gets INVALID_LISTEN",
    requirements=cites("VXS-6.1-2"),
    accepts="each pair of the three and all three: HTTP 400 and exactly one error frame "
    "409 INVALID_LISTEN; each of them alone is accepted and starts where it says; "
    "none of them starts at seq 0",
)
async def one_offset(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(5))
        await talker.close()
    for query in (
        {"from_seq": 1, "from_ts": 960},
        {"from_seq": 0, "live_edge": 1},
        {"from_ts": 0, "live_edge": "true"},
        {"from_seq": 2, "from_ts": 1920, "live_edge": 1},
    ):
        reply = await listen_closed(ctx, talker, **query)
        check_refused(reply, 409, "VXS-6.1-2", f"query {query}")
    end = (5, talker.duration)
    for query, start in (
        ({}, 0),
        ({"from_seq": 2}, 2),
        ({"from_ts": 3 * PACKET_TICKS}, 3),
        ({"live_edge": 1}, 5),
    ):
        transcript = Transcript(
            talker.msg, talker.sent, start_seq=start, end=end, name=f"query {query}"
        )
        check_listen_reply(await listen_closed(ctx, talker, **query), transcript, "VXS-6.1-2")


#: Chunks of three packets (2880 ticks), with 1000 ticks of silence before chunk 4:
#: ts 0, 2880, 5760, 8640, 12520, 15400; the message ends at 18280.
TS_CHUNKS: Final = series(6, packets=3, gaps={4: 1000})
#: from_ts -> the seq it must start with (VXS-6.1-3): inside a chunk, on its first and
#: last tick, exactly at a chunk's end (the next chunk), inside a gap.
TS_PROBES: Final = (
    (0, 0),
    (1, 0),
    (2879, 0),
    (2880, 1),
    (4000, 1),
    (8641, 3),
    (11519, 3),
    (11520, 4),
    (12000, 4),
    (12520, 4),
    (18279, 5),
)


@case(
    "6.1/from-ts",
    "with from_ts the listener starts with the chunk that contains that media time",
    requirements=cites("VXS-6.1-3"),
    accepts="on a closed message of 3-packet chunks with a gap in media time: start_seq "
    "is the first chunk with ts + duration > from_ts (a chunk that ends exactly at "
    "from_ts is skipped; a from_ts in a gap starts with the next chunk), then every chunk "
    "from there and end",
)
async def from_ts(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*TS_CHUNKS)
        await talker.close()
    for ts, start in TS_PROBES:
        transcript = Transcript(
            talker.msg,
            talker.sent,
            start_seq=start,
            end=(6, 18280),
            state="closed",
            start_id="VXS-6.1-3",
            name=f"from_ts {ts}",
        )
        check_listen_reply(await listen_closed(ctx, talker, from_ts=ts), transcript, "VXS-6.1-3")


@case(
    "6.1/from-ts-live",
    "with from_ts on a live message the listener starts with the chunk holding that time",
    requirements=cites("VXS-6.1-3"),
    accepts="on a live message of 3-packet chunks with a gap: the same start_seq as on a "
    "closed one, then every chunk from there, then live 6 (all chunks held were sent)",
)
async def from_ts_live(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*TS_CHUNKS)
        for ts, start in TS_PROBES:
            async with ctx.listen(ctx.bob.token, talker.msg, from_ts=ts) as exchange:
                transcript = Transcript(
                    talker.msg,
                    talker.sent,
                    start_seq=start,
                    live=6,
                    state="live",
                    start_id="VXS-6.1-3",
                    name=f"from_ts {ts}",
                )
                await read_until_live(exchange, transcript, "waiting for live 6")


@case(
    "6.1/from-ts-beyond",
    "a from_ts after the end of every stored chunk starts at the number of stored chunks",
    requirements=cites("VXS-6.1-6"),
    accepts="live message of 6 chunks, from_ts far beyond: start_seq 6, live 6, then "
    "chunk 6 as it arrives although its ts is before from_ts, then end; the message closed "
    "with 7 chunks: start_seq 7 then end only, for from_ts equal to its duration, one tick "
    "more and far beyond",
)
async def from_ts_beyond(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*TS_CHUNKS)
        beyond = 48000 * 3600
        async with ctx.listen(ctx.bob.token, talker.msg, from_ts=beyond) as exchange:
            transcript = Transcript(
                talker.msg,
                talker.sent,
                start_seq=6,
                live=6,
                end=(7, 18280 + PACKET_TICKS),
                state="live",
                start_id="VXS-6.1-6",
                name=f"live message, from_ts {beyond}",
            )
            await read_until_live(exchange, transcript, "waiting for live 6")
            await talker.send(*talker.make(1), wait=False)
            await read_until(
                exchange,
                transcript,
                lambda t: t.got_chunk >= 6,
                within=PROMPT,
                rid="VXS-6.1-6",
                what="waiting for chunk 6 (ts before from_ts)",
            )
            await talker.close()
            await read_to_end(exchange, transcript)
    duration = 18280 + PACKET_TICKS
    for ts in (duration, duration + 1, beyond):
        transcript = Transcript(
            talker.msg,
            talker.sent,
            start_seq=7,
            end=(7, duration),
            start_id="VXS-6.1-6",
            name=f"closed message, from_ts {ts}",
        )
        ts_reply = await listen_closed(ctx, talker, from_ts=ts)
        check_listen_reply(ts_reply, transcript, "VXS-6.1-6")
        expect(
            len(transcript.frames) == 2,
            "VXS-6.1-6",
            f"{transcript.name}: frames {[f.TYPE for f in transcript.frames]}, expected "
            "message and end",
        )


@case(
    "6.1/live-edge",
    "with live_edge the listener starts with the next chunk to arrive",
    requirements=cites("VXS-6.1-4"),
    accepts="live message with 4 chunks stored: message start_seq 4, live 4, then chunks "
    "4 and 5 as the talker sends them (none of 0-3), then end; the same closed: "
    "message (start_seq 6) and end, nothing else; live_edge=true is live_edge=1",
)
async def live_edge(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(4))
        async with ctx.listen(ctx.bob.token, talker.msg, live_edge=1) as exchange:
            transcript = Transcript(
                talker.msg,
                talker.sent,
                start_seq=4,
                live=4,
                end=(6, 6 * PACKET_TICKS),
                state="live",
                start_id="VXS-6.1-4",
                name="live_edge on a live message",
            )
            await read_until(
                exchange,
                transcript,
                lambda t: t.message is not None,
                within=PROMPT,
                rid="VXS-6.1-4",
                what="waiting for the message frame",
            )
            for chunk in talker.make(2):
                await talker.send(chunk, wait=False)
                await read_chunk(
                    exchange, transcript, chunk.seq, "VXS-6.1-4", f"waiting for chunk {chunk.seq}"
                )
            await talker.close()
            await read_to_end(exchange, transcript)
    for value in ("1", "true"):
        transcript = Transcript(
            talker.msg,
            talker.sent,
            start_seq=6,
            end=(6, 6 * PACKET_TICKS),
            state="closed",
            start_id="VXS-6.1-4",
            name=f"live_edge={value} on a closed message",
        )
        check_listen_reply(
            await listen_closed(ctx, talker, live_edge=value), transcript, "VXS-6.1-4"
        )
        expect(
            len(transcript.frames) == 2,
            "VXS-6.1-4",
            f"{transcript.name}: frames {[f.TYPE for f in transcript.frames]}",
        )


@case(
    "6.1/from-seq-beyond",
    "a from_seq beyond the chunk count is INVALID_LISTEN when closed and waits when live",
    requirements=cites("VXS-6.1-5"),
    accepts="live message of 3 chunks: from_seq 3 gets message and live 3; from_seq 5 gets "
    "message start_seq 5, nothing while chunks 3 and 4 arrive, then chunk 5, live 6 (only "
    "once it reached the newest chunk), chunk 6, end; the message closed with 7 chunks: "
    "from_seq 8 and 2^53-1 get HTTP 400 and one error frame 409 INVALID_LISTEN, from_seq 7 "
    "gets message (start_seq 7) and end",
)
async def from_seq_beyond(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(3))
        async with ctx.listen(ctx.bob.token, talker.msg, from_seq=3) as at_count:
            at = Transcript(
                talker.msg, talker.sent, start_seq=3, live=3, state="live", name="from_seq 3"
            )
            await read_until_live(at_count, at, "waiting for live 3")
        async with ctx.listen(ctx.bob.token, talker.msg, from_seq=5) as exchange:
            transcript = Transcript(
                talker.msg,
                talker.sent,
                start_seq=5,
                live=6,
                end=(7, 7 * PACKET_TICKS),
                state="live",
                start_id="VXS-6.1-5",
                name="from_seq 5 on a live message of 3 chunks",
            )
            await read_until(
                exchange,
                transcript,
                lambda t: t.message is not None,
                within=PROMPT,
                rid="VXS-6.1-5",
                what="waiting for the message frame",
            )
            await talker.send(*talker.make(2))
            early = await exchange.no_frame_within(0.2)
            if early is not None:
                transcript.feed(early)  # a chunk below 5 or an early live fails here
                fail("VXS-6.2-4", f"{transcript.name}: {early.TYPE} before chunk 5 existed")
            await talker.send(*talker.make(1), wait=False)
            await read_until_live(exchange, transcript, "waiting for chunk 5 and then live 6")
            await talker.send(*talker.make(1), wait=False)
            await talker.close()
            await read_to_end(exchange, transcript)
    for seq in (8, 2**53 - 1):
        reply = await listen_closed(ctx, talker, from_seq=seq)
        check_refused(reply, 409, "VXS-6.1-5", f"from_seq {seq} on a closed message of 7 chunks")
    transcript = Transcript(
        talker.msg,
        talker.sent,
        start_seq=7,
        end=(7, 7 * PACKET_TICKS),
        start_id="VXS-6.1-5",
        name="from_seq 7 on a closed message of 7",
    )
    check_listen_reply(await listen_closed(ctx, talker, from_seq=7), transcript, "VXS-6.1-5")


@case(
    "6.1/from-seq-beyond-closed-shorter",
    "a listener waiting beyond a live message that closes shorter gets INVALID_LISTEN, not end",
    requirements=("VXS-6.1-5", "VXS-5.6-1"),
    accepts="live message of 2 chunks, from_seq 5: message (start_seq 5), no chunk; the "
    "talker closes at 3 chunks: an error frame 409 INVALID_LISTEN, then the end of the "
    "response, with no end frame and nothing after the error",
)
async def from_seq_beyond_closed_shorter(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(2))
        async with ctx.listen(ctx.bob.token, talker.msg, from_seq=5) as exchange:
            first = await exchange.frame(within=PROMPT)
            expect(
                isinstance(first, MessageInfo) and first.start_seq == 5,
                "VXS-6.1-5",
                f"from_seq 5 on a live message of 2 chunks began with {first!r}",
            )
            await talker.send(*talker.make(1))
            await talker.close()
            rest = await exchange.frames(within=PROMPT)
    expect(
        len(rest) == 1 and isinstance(rest[0], Error) and rest[0].code == 409,
        "VXS-6.1-5",
        f"after the message closed with 3 chunks the listener got {rest!r}, "
        "expected one error frame 409 INVALID_LISTEN",
    )


# -- 6.2 Delivery --------------------------------------------------------------------


@case(
    "6.2/message-first",
    "the first frame is message, describing the message, with start_seq the first chunk sent",
    requirements=cites(),
    accepts="live and closed message: the first frame is message with msg, thread, sender "
    "(alice's account id), codec opus, created as in the first open, state live/closed, "
    "start_seq equal to from_seq (2) and the first chunk sent; then chunks 2-4",
)
async def message_first(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(5))
        info = {
            "thread": talker.thread,
            "sender": ctx.alice.id,
            "codec": "opus",
            "created": ctx.open_frame(talker.thread, talker.msg).created,
        }
        async with ctx.listen(ctx.bob.token, talker.msg, from_seq=2) as exchange:
            transcript = Transcript(
                talker.msg,
                talker.sent,
                start_seq=2,
                live=5,
                state="live",
                info=info,
                name="live message",
            )
            await read_until_live(exchange, transcript, "waiting for live 5")
        await talker.close()
    transcript = Transcript(
        talker.msg,
        talker.sent,
        start_seq=2,
        end=(5, talker.duration),
        state="closed",
        info=info,
        name="closed message",
    )
    check_listen_reply(await listen_closed(ctx, talker, from_seq=2), transcript)


async def _follow(
    ctx: Context,
    talker: Talker,
    name: str,
    *,
    delay: float = 0.0,
    pause: float = 0.0,
    window: int | None = None,
    total: int,
    done: Callable[[], bool] = lambda: False,
    order_id: str = "VXS-6.2-1",
    ready: trio.Event | None = None,
) -> None:
    """One listener from seq 0 joining after ``delay`` s, reading to ``end``.

    The moment it catches up races with the talker, so ``live`` may come at any seq
    (or not at all, if the message closed first), but at most once and naming the
    next chunk. ``ready`` is set once the message frame arrived.
    """
    await trio.sleep(delay)
    closed_before = done()
    async with ctx.listen(ctx.bob.token, talker.msg, window=window) as exchange:
        transcript = Transcript(
            talker.msg,
            talker.sent,
            start_seq=0,
            live=None if closed_before else "any",
            end=(total, end_of(talker.sent) if closed_before else -1),
            order_id=order_id,
            name=name,
        )
        if not closed_before:
            transcript.expected_end = None  # the duration is known once the talker closed
        if ready is not None:
            await read_until(
                exchange,
                transcript,
                lambda t: t.message is not None,
                within=PROMPT,
                rid="VXS-6.2-2",
                what="waiting for the message frame",
            )
            ready.set()
        await read_to_end(exchange, transcript, pause=pause)
        end = transcript.ended
        assert end is not None
        expect(
            (end.chunks, end.duration) == (total, talker.duration),
            "VXS-6.3-1",
            f"{name}: end ({end.chunks} chunks, {end.duration} ticks), expected "
            f"({total}, {talker.duration})",
        )


@case(
    "6.2/every-chunk-once",
    "every chunk from start_seq is received exactly once and in order, whenever the "
    "listener joined and however fast it reads",
    requirements=cites(),
    accepts="listeners joining before the first chunk, while the talker sends 40 chunks "
    "and after the close, each reading at once or slowly (a pause per frame, or a 512-byte "
    "window): message start_seq 0, chunks 0-39 each once in order and byte for byte, at "
    "most one live naming the next chunk (none for the listener that joined after the "
    "close), end 40",
)
async def every_chunk_once(ctx: Context) -> None:
    total = 40
    async with talking(ctx) as talker:
        plan = talker.make(total)

        early = [trio.Event(), trio.Event()]

        async def talk() -> None:
            for event in early:  # the listeners that join before have their message frame
                await event.wait()
            for chunk in plan:
                await talker.send(chunk, wait=False)
                await trio.sleep(0.004)
            await talker.close()

        def closed() -> bool:
            return talker.closed is not None

        async with trio.open_nursery() as nursery:
            for label, delay, pause, window, ready in (
                ("joined before, fast", 0.0, 0.0, None, early[0]),
                ("joined before, slow", 0.0, 0.006, None, early[1]),
                ("joined during, fast", 0.06, 0.0, None, None),
                ("joined during, slow", 0.06, 0.01, None, None),
                ("joined during, 512-byte window", 0.1, 0.002, 512, None),
            ):
                nursery.start_soon(
                    partial(
                        _follow,
                        ctx,
                        talker,
                        label,
                        delay=delay,
                        pause=pause,
                        window=window,
                        total=total,
                        done=closed,
                        ready=ready,
                    )
                )
            nursery.start_soon(talk)
    for label, pause in (("joined after, fast", 0.0), ("joined after, slow", 0.003)):
        await _follow(ctx, talker, label, pause=pause, total=total, done=lambda: True)


def _is_closed(talker: Talker) -> bool:
    return talker.closed is not None


@case(
    "6.2/stored-to-live",
    "the switch from stored to live chunks has no gap and no duplicate",
    requirements=cites("VXS-6.2-3"),
    accepts="in 3 rounds, 12 listeners from seq 0 start while the talker keeps sending 60 "
    "chunks (one every 2 ms): each gets chunks 0-59 exactly once in order, at most one "
    "live naming the next chunk, and end 60",
    timeout=60,
)
async def stored_to_live(ctx: Context) -> None:
    thread = await ctx.thread()
    total = 60
    for round_ in range(3):
        async with talking(ctx, thread) as talker:
            plan = talker.make(total)

            async def talk(talker: Talker = talker, plan: list[Chunk] = plan) -> None:
                for chunk in plan:
                    await talker.send(chunk, wait=False)
                    await trio.sleep(0.002)
                await talker.close()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(talk)
                for i in range(12):
                    nursery.start_soon(
                        partial(
                            _follow,
                            ctx,
                            talker,
                            f"round {round_ + 1}, listener {i + 1}",
                            delay=0.003 + i * 0.009 + round_ * 0.002,
                            pause=0.001 if i % 3 == 2 else 0.0,
                            total=total,
                            done=partial(_is_closed, talker),
                            order_id="VXS-6.2-3",
                        )
                    )


@case(
    "6.2/live-once",
    "one live frame, once, when every chunk held was sent; its seq is the next chunk",
    requirements=cites(),
    accepts="live message with 5 chunks stored: chunks 0-4, then live 5 before the talker "
    "sends more, then chunks 5-7 as they arrive with no second live, then end 8; a closed "
    "message: no live at all",
)
async def live_once(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(5))
        async with ctx.listen(ctx.bob.token, talker.msg) as exchange:
            transcript = Transcript(
                talker.msg, talker.sent, start_seq=0, live=5, end=(8, 8 * PACKET_TICKS)
            )
            await read_until_live(exchange, transcript, "waiting for live 5 after chunks 0-4")
            for chunk in talker.make(3):
                await talker.send(chunk, wait=False)
                await read_chunk(
                    exchange, transcript, chunk.seq, "VXS-6.2-1", f"waiting for chunk {chunk.seq}"
                )
            await talker.close()
            await read_to_end(exchange, transcript)
    transcript = Transcript(
        talker.msg, talker.sent, start_seq=0, end=(8, 8 * PACKET_TICKS), name="closed"
    )
    check_listen_reply(await listen_closed(ctx, talker), transcript)


@case(
    "6.2/no-live-after-close",
    "live is never sent for a message that was closed when the listener caught up",
    requirements=cites("VXS-6.4-1"),
    accepts="a listener at speed 1 on a live message of 25 stored chunks (it cannot catch up "
    "before 0.48 s); the talker closes the message at once: chunks 0-24 then end 25, "
    "no live frame",
)
async def no_live_after_close(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(25))
        span = 24 * PACKET_TICKS / CLOCK_RATE
        asked = trio.current_time()
        async with ctx.listen(ctx.bob.token, talker.msg, speed=1) as exchange:
            transcript = Timed(
                talker.msg,
                talker.sent,
                start_seq=0,
                live=None,
                end=(25, 25 * PACKET_TICKS),
                asked=asked,
            )
            await read_until(
                exchange,
                transcript,
                lambda t: t.got_chunk >= 0,
                within=PROMPT,
                rid="VXS-6.2-1",
                what="waiting for chunk 0",
            )
            await talker.close()
            closed_at = trio.current_time() - asked
            if closed_at > span - 0.05:
                note(f"the close took {closed_at:.3f} s: the race is not decided, live accepted")
                transcript.live = "any"
            transcript.before_live = lambda t: _check_paced(t, 1.0)
            await read_to_end(exchange, transcript)
            _check_paced(transcript, 1.0)


@case(
    "6.2/no-wait-for-end",
    "delivery of a live message does not wait for its end",
    requirements=cites("VXS-6.2-5"),
    accepts="a listener that joined right after open receives message and live 0, then "
    f"each of 10 chunks within {PROMPT:g} s of the talker sending it, before the talker "
    "sends the next one and long before close; then end 10",
)
async def no_wait_for_end(ctx: Context) -> None:
    async with talking(ctx) as talker, ctx.listen(ctx.bob.token, talker.msg) as exchange:
        transcript = Transcript(
            talker.msg, talker.sent, start_seq=0, live=0, end=(10, 10 * PACKET_TICKS)
        )
        await read_until_live(
            exchange, transcript, "waiting for live 0 on a message without chunks"
        )
        for chunk in talker.make(10):
            await talker.send(chunk, wait=False)
            await read_chunk(
                exchange,
                transcript,
                chunk.seq,
                "VXS-6.2-5",
                f"chunk {chunk.seq} not delivered while the message is open",
            )
        await talker.close()
        await read_to_end(exchange, transcript)


# -- 6.3 End ------------------------------------------------------------------------


@case(
    "6.3/end",
    "end carries the chunk count and duration of the closed message, and nothing follows",
    requirements=cites(),
    accepts="a closed message of 3-packet chunks with a gap: end (6, 18280) after chunk "
    "5, then END_STREAM; from_seq 6: message then end; a closed message without chunks: "
    "message (start_seq 0) and end (0, 0); a listener on a live message when the talker "
    "closes: the last chunk, end (3, 2880), END_STREAM",
)
async def end_frame(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*TS_CHUNKS)
        await talker.close()
    for query, start in (({}, 0), ({"from_seq": 6}, 6)):
        async with ctx.listen(ctx.bob.token, talker.msg, **query) as exchange:
            transcript = Transcript(
                talker.msg, talker.sent, start_seq=start, end=(6, 18280), name=f"query {query}"
            )
            await read_to_end(exchange, transcript)
    async with talking(ctx) as empty:
        await empty.close()
    transcript = Transcript(empty.msg, {}, start_seq=0, end=(0, 0), name="empty message")
    check_listen_reply(await listen_closed(ctx, empty), transcript)
    async with talking(ctx) as talker:
        await talker.send(*talker.make(2))
        async with ctx.listen(ctx.bob.token, talker.msg) as exchange:
            transcript = Transcript(
                talker.msg,
                talker.sent,
                start_seq=0,
                live=2,
                end=(3, 3 * PACKET_TICKS),
                name="live message closed while listening",
            )
            await read_until_live(exchange, transcript, "waiting for live 2")
            await talker.send(*talker.make(1))
            await talker.close()
            await read_to_end(exchange, transcript)


# -- 6.4 Pacing -----------------------------------------------------------------------


@case(
    "6.4/speed-zero",
    "with speed 0 chunks are sent as fast as the listener reads",
    requirements=cites("VXS-6.4-1"),
    accepts="100 stored chunks of 200 ms each (20 s of media), without speed and with "
    "speed=0: every chunk and end within 0.6 s (the fastest allowed pacing, 16, would "
    "need 1.24 s)",
)
async def speed_zero(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(100, packets=10))
        await talker.close()
    for query in ({}, {"speed": 0}, {"speed": "0.0"}):
        started = trio.current_time()
        async with ctx.listen(ctx.bob.token, talker.msg, **query) as exchange:
            transcript = Transcript(
                talker.msg,
                talker.sent,
                start_seq=0,
                end=(100, talker.duration),
                name=f"query {query}",
            )
            await read_to_end(exchange, transcript)
        took = trio.current_time() - started
        expect(
            took < 0.6,
            "VXS-6.4-1",
            f"query {query}: 20 s of stored media took {took:.3f} s to arrive",
        )


async def _paced(ctx: Context, talker: Talker, speed: float, from_seq: int) -> Timed:
    asked = trio.current_time()
    async with ctx.listen(ctx.bob.token, talker.msg, speed=speed, from_seq=from_seq) as exchange:
        transcript = Timed(
            talker.msg,
            talker.sent,
            start_seq=from_seq,
            end=(len(talker.sent), talker.duration),
            name=f"speed {speed:g}",
            asked=asked,
        )
        await read_to_end(exchange, transcript)
    return transcript


def _check_paced(transcript: Timed, speed: float) -> float:
    """Each chunk no earlier than its media time / speed after the first (VXS-6.4-1).

    The first chunk cannot have been sent before the request, so chunk k must arrive no
    earlier than (ts_k - ts_first) / (48000 speed) after the request was sent: a bound
    that network and scheduling delays can only make later, never earlier, so it needs
    no slack. Returns how close to that bound the earliest chunk came (seconds).
    """
    times = transcript.arrivals
    first = min(times)
    ts0 = transcript.sent[first].ts
    worst = math.inf
    for seq, at in sorted(times.items()):
        due = (transcript.sent[seq].ts - ts0) / (CLOCK_RATE * speed)
        elapsed = at - transcript.asked
        worst = min(worst, elapsed - due)
        expect(
            elapsed >= due,
            "VXS-6.4-1",
            f"speed {speed:g}: chunk {seq} arrived {elapsed * 1000:.1f} ms after the listen "
            f"request, but it was due no earlier than {due * 1000:.1f} ms after chunk {first} "
            "was sent",
        )
    return worst


@case(
    "6.4/speed-pacing",
    "with speed s a stored chunk is sent no earlier than its media time divided by s",
    requirements=cites("VXS-6.4-1"),
    accepts="25 stored 20 ms chunks with 100 ms of silence before chunk 12 (0.58 s of "
    "media): at speed 1 from seq 0 and at speed 2 from seq 4, each chunk k arrives no "
    "earlier than (ts_k - ts_first) / (48000 s) s after the listen request (which is before "
    "the first chunk was sent); any lateness is allowed",
)
async def speed_pacing(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(25, gaps={12: 4800}))
        await talker.close()
    runs = ((1.0, 0), (2.0, 4))
    done: list[Timed] = []

    async def run(speed: float, first: int) -> None:
        done.append(await _paced(ctx, talker, speed, first))

    async with trio.open_nursery() as nursery:
        for speed, first in runs:
            nursery.start_soon(run, speed, first)
    for transcript in sorted(done, key=lambda t: t.start_seq):
        speed = 1.0 if transcript.start_seq == 0 else 2.0
        worst = _check_paced(transcript, speed)
        times, ts0 = transcript.arrivals, talker.sent[transcript.start_seq].ts
        late = (times[24] - times[transcript.start_seq]) - (talker.sent[24].ts - ts0) / (
            CLOCK_RATE * speed
        )
        note(
            f"speed {speed:g}: closest to due {worst * 1000:.1f} ms after the request; last "
            f"chunk {late * 1000:.1f} ms after its due time (from the first chunk's arrival)"
        )


@case(
    "6.4/live-not-paced",
    "live chunks are sent when they arrive, whatever the speed",
    requirements=cites("VXS-6.4-1"),
    accepts="at speed 0.25 on a live message of one chunk: message, chunk 0, live 1; then "
    "chunk 1, whose ts is 5 s of media later (paced it would be due 20 s later), arrives "
    f"within {PROMPT:g} s of being sent; end 2",
)
async def live_not_paced(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(1))
        async with ctx.listen(ctx.bob.token, talker.msg, speed=0.25) as exchange:
            transcript = Transcript(talker.msg, talker.sent, start_seq=0, live=1)
            await read_until_live(exchange, transcript, "waiting for live 1")
            await talker.send(*talker.make(1, gap=5 * CLOCK_RATE), wait=False)
            await read_until(
                exchange,
                transcript,
                lambda t: t.got_chunk >= 1,
                within=PROMPT,
                rid="VXS-6.4-1",
                what="the live chunk 1 was held back",
            )
            await talker.close()
            transcript.expected_end = (2, talker.duration)
            await read_to_end(exchange, transcript)


@case(
    "6.4/speed-range",
    "speed must be 0 or within [0.25, 16]; other values are INVALID_LISTEN",
    requirements=cites("VXS-6.4-2"),
    accepts="speed 0.2, 0.24, 16.5, 17, -1, -0.25, 1e400 and the non-numbers nan, NaN, inf, "
    "-inf, Infinity: HTTP 400 and exactly one error frame 409 INVALID_LISTEN; speed 0.25, "
    "0.5, 1, 2.5, 16 and 16.0: the whole message",
)
async def speed_range(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(2))
        await talker.close()
    for value in (
        "0.2",
        "0.24",
        "16.5",
        "17",
        "-1",
        "-0.25",
        "1e400",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
    ):
        reply = await listen_closed(ctx, talker, speed=value)
        check_refused(reply, 409, "VXS-6.4-2", f"speed={value}")
    for value in ("0.25", "0.5", "1", "2.5", "16", "16.0"):
        transcript = Transcript(
            talker.msg, talker.sent, start_seq=0, end=(2, talker.duration), name=f"speed={value}"
        )
        check_listen_reply(await listen_closed(ctx, talker, speed=value), transcript, "VXS-6.4-2")


# -- 6.5 Slow listeners ------------------------------------------------------------------

#: A receive window small enough that a listener that does not read blocks its stream
#: after a chunk of ``SLOW_PAD``-byte packets; the talker then sends far more than a
#: server's send buffers (a socket's, a stream's: tens of KiB) so that the server's own
#: sending to that listener really blocks.
TINY_WINDOW: Final = 1024
SLOW_PAD: Final = 1000


async def _with_other_listener(
    ctx: Context, talker: Talker, count: int, *, step: float = 0.0
) -> None:
    """The talker sends ``count`` chunks and closes while another listener follows.

    Each ack and each delivery to the other listener must come within ``PROMPT`` s:
    a server that lets the slow listener hold up the fan-out fails here.
    """
    async with ctx.listen(ctx.alice.token, talker.msg) as exchange:
        other = Transcript(
            talker.msg, talker.sent, start_seq=0, live=len(talker.sent), name="other listener"
        )
        await read_until(
            exchange,
            other,
            lambda t: t.live_seq is not None,
            within=PROMPT,
            rid="VXS-6.5-1",
            what="waiting for live",
        )
        for chunk in talker.make(count, pad=SLOW_PAD):
            await talker.send(chunk, wait=False)
            try:
                await talker.wait_ack(chunk.seq, within=PROMPT)
            except TransportFailure as exc:
                fail("VXS-6.5-1", f"the talker got no ack of chunk {chunk.seq}: {exc}")
            await read_chunk(exchange, other, chunk.seq, "VXS-6.5-1", f"chunk {chunk.seq} held up")
            if step:
                await trio.sleep(step)
        try:
            await talker.close(within=PROMPT)
        except TransportFailure as exc:
            fail("VXS-6.5-1", f"the close was held up: {exc}")
        other.expected_end = (len(talker.sent), talker.duration)
        await read_to_end(exchange, other)


@case(
    "6.5/stalled-listener",
    "a listener that stops reading delays neither the talker's acks nor another "
    "listener, and gets every chunk once it reads again",
    requirements=cites("VXS-6.5-1", "VXS-6.5-2"),
    accepts=f"a listener on its own connection with a {TINY_WINDOW}-byte receive window "
    "that reads nothing while the talker sends 120 more chunks of ~1 KB and closes: "
    f"every ack, and each chunk to another listener, within {PROMPT:g} s; the close "
    "answered; then the stalled listener reads message, chunks 0-124 once in order and "
    "byte for byte, at most one live naming the next chunk, end 125",
)
async def stalled_listener(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(5, pad=SLOW_PAD))
        async with ctx.listen(ctx.bob.token, talker.msg, window=TINY_WINDOW) as stalled:
            await stalled.status()
            await _with_other_listener(ctx, talker, 120)
            transcript = Transcript(
                talker.msg,
                talker.sent,
                start_seq=0,
                live="any",
                end=(125, talker.duration),
                error_id="VXS-6.5-2",
                order_id="VXS-6.5-2",
                name="stalled listener",
            )
            await read_to_end(stalled, transcript)


@case(
    "6.5/slow-listener",
    "a listener that reads slowly delays neither the talker nor another listener, and "
    "gets every chunk exactly once",
    requirements=cites("VXS-6.5-1", "VXS-6.5-2"),
    accepts=f"a listener with a {TINY_WINDOW}-byte window reading one frame every 20 ms "
    "while the talker sends 40 chunks every 2 ms: every ack, and each chunk to another "
    f"listener, within {PROMPT:g} s; the slow listener gets chunks 0-44 once in order, at "
    "most one live naming the next chunk, end 45",
)
async def slow_listener(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(5, pad=SLOW_PAD))
        async with ctx.listen(ctx.bob.token, talker.msg, window=TINY_WINDOW) as slow:
            transcript = Transcript(
                talker.msg,
                talker.sent,
                start_seq=0,
                live="any",
                error_id="VXS-6.5-2",
                order_id="VXS-6.5-2",
                name="slow listener",
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(read_to_end, slow, transcript, within=20.0, pause=0.02))
                await _with_other_listener(ctx, talker, 40, step=0.002)
            assert transcript.ended is not None
            expect(
                (transcript.ended.chunks, transcript.ended.duration) == (45, talker.duration),
                "VXS-6.3-1",
                f"slow listener: end {transcript.ended}, expected 45 chunks, "
                f"{talker.duration} ticks",
            )


@case(
    "6.5/idle-timeout",
    "a listen stream is ended with IDLE_TIMEOUT only after 60 s without progress",
    requirements=("VXS-6.5-3",),
    accepts="a listener that reads nothing for 2 s and then reads again is not ended with "
    "IDLE_TIMEOUT (the 60 s bound itself is not waited for); it then gets the whole "
    "message",
)
async def idle_timeout(ctx: Context) -> None:
    async with talking(ctx) as talker:
        await talker.send(*talker.make(20, pad=SLOW_PAD))
        async with ctx.listen(ctx.bob.token, talker.msg, window=TINY_WINDOW) as stalled:
            await stalled.status()
            await trio.sleep(2.0)
            await talker.close()
            frames = await stalled.frames()
        errors = [f for f in frames if isinstance(f, Error)]
        expect(
            not errors,
            "VXS-6.5-3",
            f"the stalled listen was ended after 2 s with {errors}, before 60 s",
        )
        expect(
            bool(frames)
            and isinstance(frames[-1], End)
            and sum(isinstance(f, Chunk) for f in frames) == 20,
            "VXS-6.5-3",
            f"after the stall the listener got {[f.TYPE for f in frames]}",
        )
        note("whether the server ends a listen stalled for 60 s is not waited for (MAY)")
