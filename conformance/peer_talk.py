"""The peer's side of an upload: every talker frame checked, whatever the scenario.

A ``Talk`` follows one message over every connection the talker makes for it. The body
must be ``open``, ``chunk``*, ``close``? (VXS-10-2, VXS-5.1-1, VXS-4.1-1); chunks are
numbered from 0 without gaps (VXS-2.2-1), their media time never goes back
(VXS-2.2-2), every packet is a valid Opus packet (VXS-4.2-2), and ``close`` comes last
with the right count (VXS-5.5-1, VXS-4.3-1). On a resumed upload the chunks after
``opened`` must start at ``next_seq`` (VXS-5.2-4) and be the very chunks sent before
(VXS-5.3-6). The scenarios (``peer_talker``) add one fault each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

from voxer_stream.media.opus import InvalidOpusPacket, packets_duration, parse_packet
from voxer_stream.wire import Ack, Chunk, Close, Closed, Open, Opened

from .case import Case, CaseSkipped, fail, note, recommend, skip
from .peer_core import PeerStream, Received, Signal, Timing, is_deterministic

__all__ = [
    "MIN_CHUNKS",
    "RESUME_IDS",
    "TALKER_IDS",
    "USAGE",
    "Talk",
    "blocked",
    "resume",
    "start",
    "talk_of",
    "violation",
]

#: The shortest message every talker scenario can play its fault in.
MIN_CHUNKS: Final = 12

#: What every talker scenario checks on each frame it receives.
TALKER_IDS: Final = (
    "VXS-2.1-1",
    "VXS-5.1-1",
    "VXS-4.1-1",
    "VXS-10-2",
    "VXS-2.2-1",
    "VXS-2.2-2",
    "VXS-4.2-2",
    "VXS-4.3-1",
    "VXS-5.5-1",
)
RESUME_IDS: Final = ("VXS-5.2-4", "VXS-5.3-6")
USAGE: Final = (
    f"Upload one message of at least {MIN_CHUNKS} chunks to POST /v1/upload with this "
    "scenario's name as the bearer token."
)


class Talk:
    """One message's upload, over every connection the talker makes for it."""

    def __init__(
        self,
        case: Case,
        first: PeerStream,
        incoming: trio.MemoryReceiveChannel[PeerStream],
        history: dict[str, list[Chunk]],
        timing: Timing,
    ) -> None:
        self.timing = timing
        self.cited = frozenset(case.requirements)
        self.first = first
        self.incoming = incoming
        self.history = history
        self.open: Open | None = None
        self.sent: dict[int, Chunk] = {}
        self.close: Close | None = None
        self.acked = -1
        self.streams: list[PeerStream] = []
        self.nondeterministic: list[str] = []
        self.pipelined: list[str] = []

    # -- streams -----------------------------------------------------------------------

    async def accept(self, stream: PeerStream) -> Open:
        """Read and check the ``open`` of a new upload stream of this message."""
        item = await stream.next(self.timing.idle)
        if item is None:
            skip(f"the talker sent no frame within {self.timing.idle:g} s")
        if not isinstance(item, Received):
            fail("VXS-5.1-1", f"the upload stream ended ({item.value}) before any frame")
        assert isinstance(item, Received)
        self._encoding(item)
        frame = item.frame
        if not isinstance(frame, Open):
            fail("VXS-5.1-1", f"the first frame of the upload is {frame.TYPE!r}, not 'open'")
        assert isinstance(frame, Open)
        if frame.codec != "opus":
            skip(f"the talker uploads codec {frame.codec!r}; the peer checks Opus uploads")
        if self.open is not None and (frame.msg, frame.thread) != (
            self.open.msg,
            self.open.thread,
        ):
            fail("VXS-2.1-1", f"the message was opened as {frame} after {self.open}")
        self.open = self.open or frame
        stream.resumed = bool(self.streams)
        self.streams.append(stream)
        return frame

    async def next_stream(self, within: float) -> PeerStream | None:
        stream: PeerStream | None = None
        with trio.move_on_after(within):
            stream = await self.incoming.receive()
        if stream is None:
            return None
        await self.accept(stream)
        return stream

    async def reaction(
        self, stream: PeerStream, within: float, *, body_end: bool = True
    ) -> Signal | PeerStream | None:
        """The first of: ``stream`` stops, or a new upload of the message arrives."""
        result: list[Signal | PeerStream] = []
        async with trio.open_nursery() as nursery:

            async def stopped() -> None:
                signal = await stream.wait_signal(within, body_end=body_end)
                if signal is not None:
                    result.append(signal)
                nursery.cancel_scope.cancel()

            async def reopened() -> None:
                with trio.move_on_after(within):
                    result.append(await self.incoming.receive())
                nursery.cancel_scope.cancel()

            nursery.start_soon(stopped)
            nursery.start_soon(reopened)
        if result and isinstance(result[0], PeerStream):
            await self.accept(result[0])
        return result[0] if result else None

    async def opened(self, stream: PeerStream, next_seq: int) -> None:
        assert self.open is not None
        stream.opened_sent = True
        stream.expected = next_seq
        self.acked = next_seq - 1  # opened acknowledges what it counts as stored
        await stream.send(Opened(msg=self.open.msg, next_seq=next_seq, state="live"))

    # -- the client's frames --------------------------------------------------------

    async def read(self, stream: PeerStream) -> Received | Signal:
        """The talker's next frame, checked, or the signal that ended its stream."""
        item = await stream.next(self.timing.idle)
        if item is None:
            raise CaseSkipped(f"the talker sent nothing for {self.timing.idle:g} s")
        if isinstance(item, Received):
            self.check(stream, item)
        return item

    def _encoding(self, item: Received) -> None:
        if not is_deterministic(item.raw):
            self.nondeterministic.append(item.raw.hex())

    def check(self, stream: PeerStream, item: Received) -> None:
        self._encoding(item)
        frame = item.frame
        if isinstance(frame, Chunk):
            self._check_chunk(stream, item, frame)
        elif isinstance(frame, Close):
            self._check_close(stream, frame)
        else:
            fail(
                "VXS-10-2",
                f"a {frame.TYPE!r} frame in the upload body, which is open, chunk*, close?",
            )

    def _check_chunk(self, stream: PeerStream, item: Received, chunk: Chunk) -> None:
        if stream.close_seen:
            fail("VXS-5.5-1", f"chunk {chunk.seq} after close")
        for packet in chunk.packets:
            try:
                parse_packet(packet)
            except InvalidOpusPacket as exc:
                fail("VXS-4.2-2", f"chunk {chunk.seq}: {exc} (packet {packet[:16].hex()})")
        known = self.sent.get(chunk.seq)
        if known is not None and known != chunk:
            rid = "VXS-5.3-6" if "VXS-5.3-6" in self.cited else "VXS-2.2-1"
            fail(
                rid,
                f"chunk {chunk.seq} sent again with other content (ts {chunk.ts} vs "
                f"{known.ts}, packets {'equal' if known.packets == chunk.packets else 'differ'})",
            )
        if item.before_opened:
            self.pipelined.append(f"chunk {chunk.seq}")
        expected = stream.expected if stream.expected is not None else 0
        if item.before_opened and chunk.seq < expected:
            pass  # sent before the talker knew next_seq: a harmless re-send (5.4)
        elif chunk.seq != expected:
            where = "after opened" if stream.resumed else "in the upload"
            rid = "VXS-5.2-4" if stream.resumed and "VXS-5.2-4" in self.cited else "VXS-2.2-1"
            fail(rid, f"chunk {chunk.seq} where {expected} was due ({where})")
        else:
            stream.expected = expected + 1
        previous = self.sent.get(chunk.seq - 1)
        if previous is not None and chunk.ts < previous.ts + packets_duration(previous.packets):
            fail(
                "VXS-2.2-2",
                f"chunk {chunk.seq} at ts {chunk.ts} starts before chunk {previous.seq} ends "
                f"({previous.ts} + {packets_duration(previous.packets)})",
            )
        following = self.sent.get(chunk.seq + 1)
        if following is not None and following.ts < chunk.ts + packets_duration(chunk.packets):
            fail("VXS-2.2-2", f"chunk {following.seq} starts before chunk {chunk.seq} ends")
        self.sent.setdefault(chunk.seq, chunk)

    def _check_close(self, stream: PeerStream, close: Close) -> None:
        if stream.close_seen:
            fail("VXS-10-2", "a second close in the upload body")
        expected = stream.expected if stream.expected is not None else 0
        if close.chunks != expected:
            known = max(self.sent, default=-1) + 1
            if stream.resumed and close.chunks == known and "VXS-5.2-4" in self.cited:
                fail(
                    "VXS-5.2-4",
                    f"close after opened without re-sending chunks {expected} to {known - 1}",
                )
            fail("VXS-4.3-1", f"close says {close.chunks} chunks; {expected} were sent")
        stream.close_seen = True
        self.close = close

    # -- the peer's side ------------------------------------------------------------

    def highest_seq(self) -> int:
        """The highest seq the talker has sent so far, read by the scenario or not."""
        seqs = [r.frame.seq for s in self.streams for r in s.frames if isinstance(r.frame, Chunk)]
        return max(seqs, default=-1)

    def duration(self) -> int:
        if not self.sent:
            return 0
        last = self.sent[max(self.sent)]
        return last.ts + packets_duration(last.packets)

    def closed_frame(self) -> Closed:
        assert self.open is not None and self.close is not None
        return Closed(msg=self.open.msg, chunks=self.close.chunks, duration=self.duration())

    async def serve(self, stream: PeerStream, *, ack: bool = True) -> Signal | None:
        """Serve the rest of an upload as a good server: ack each chunk, closed at close.

        Returns None once ``closed`` was sent, or the signal that stopped the stream.
        """
        while True:
            item = await self.read(stream)
            if isinstance(item, Signal):
                return item
            if isinstance(item.frame, Chunk) and ack:
                await self.ack(stream, item.frame.seq)
            elif isinstance(item.frame, Close):
                await stream.send(self.closed_frame(), end=True)
                # Whatever follows close on the stream is checked too (VXS-5.5-1).
                while isinstance(after := await stream.next(1.0), Received):
                    self.check(stream, after)
                return None

    async def play_until(self, stream: PeerStream, seq: int, *, ack_upto: int) -> None:
        """Serve chunks (acking those up to ``ack_upto``) until chunk ``seq``; then hold
        the window, so that the talker is stopped mid-upload."""
        while True:
            item = await self.read(stream)
            if isinstance(item, Signal) or isinstance(item.frame, Close):
                got = len(self.sent)
                what = item.value if isinstance(item, Signal) else "close"
                skip(f"the talker stopped ({what}) after {got} chunks: {USAGE}")
            assert isinstance(item, Received)
            chunk = item.frame
            if isinstance(chunk, Chunk):
                if chunk.seq <= ack_upto:
                    await self.ack(stream, chunk.seq)
                if chunk.seq >= seq:
                    stream.hold()
                    return

    async def ack(self, stream: PeerStream, seq: int) -> None:
        """Acknowledge up to ``seq``: acks are cumulative and strictly increasing (5.3-4)."""
        if seq > self.acked:
            self.acked = seq
            await stream.send(Ack(seq=seq))

    async def retried(self, within: float | None = None) -> PeerStream | None:
        """A new upload of the message soon after a fault (a talker that retries)."""
        return await self.next_stream(self.timing.grace if within is None else within)

    def end_checks(self) -> None:
        if self.nondeterministic:
            recommend(
                False,
                "VXS-3.1-1",
                f"{len(self.nondeterministic)} frame(s) not in the core deterministic "
                f"encoding, e.g. {self.nondeterministic[0][:80]}",
            )
        if self.pipelined:
            recommend(
                False,
                "VXS-5.2-6",
                f"{', '.join(self.pipelined[:3])} sent before opened",
            )


def talk_of(session: object) -> Talk:
    assert isinstance(session, Talk)
    return session


async def start(talk: Talk, next_seq: int = 0) -> PeerStream:
    stream = talk.first
    await talk.accept(stream)
    await talk.opened(stream, next_seq)
    return stream


async def blocked(talk: Talk, stream: PeerStream) -> bool:
    """Wait until the held window stops the talker; whether its body was open then.

    The frames that arrived meanwhile are checked too. A body that ended before the
    fault does not count as a reaction to it: then only RST_STREAM or closing the
    connection does.
    """
    await stream.wait_exhausted()
    while stream.has_frames:
        await talk.read(stream)
    if stream.gone:
        skip(f"the talker ended the stream ({stream.signal}) before the fault: {USAGE}")
    state = "its body blocked" if stream.signal is None else "its body ended"
    note(f"the fault came after chunk {talk.highest_seq()}, {state}")
    return stream.signal is None


async def violation(
    talk: Talk, stream: PeerStream, fault: Callable[[], bytes], rid: str, what: str
) -> None:
    """Send ``fault()`` while the talker's body is blocked; it must end the stream."""
    body_open = await blocked(talk, stream)
    await stream.send(fault())
    within = talk.timing.reaction
    signal = await stream.wait_signal(within, body_end=body_open)
    if signal is None:
        fail(
            rid,
            f"no RST_STREAM, END_STREAM or connection close within {within:g} s of {what}: "
            "the talker did not treat it as a protocol violation (or it does not read the "
            "response while it sends, VXS-10-3)",
        )
    note(f"the talker ended the stream with {signal.value} after {what}")
    again = await talk.retried()
    if again is None:
        return
    # A new stream is allowed; closing the message on it as if nothing had happened is
    # not. Its chunks are not judged here: only whether a close comes.
    assert talk.open is not None
    await again.send(Opened(msg=talk.open.msg, next_seq=talk.acked + 1, state="live"))
    while isinstance(item := await again.next(talk.timing.reaction), Received):
        if isinstance(item.frame, Close):
            fail(
                rid,
                f"after {what} the talker uploaded the message again and closed it, "
                "as if nothing had happened",
            )
    note(f"the talker opened the message again after {what}, without closing it")


async def resume(talk: Talk, stream: PeerStream, next_seq: int, since: float) -> None:
    """Serve a resumed upload that must start at ``next_seq`` and re-send what is due."""
    note(f"the talker came back after {trio.current_time() - since:.2f} s")
    await talk.opened(stream, next_seq)
    known = max(talk.sent, default=-1) + 1
    result = await talk.serve(stream)
    if (stream.expected or 0) < known:
        fail(
            "VXS-5.2-4",
            f"the resumed upload ended ({'closed' if result is None else result.value}) "
            f"after re-sending up to chunk {(stream.expected or 0) - 1}; chunks up to "
            f"{known - 1} were sent before and not acknowledged",
        )
    if result is not None:
        note(f"the resumed upload ended with {result.value}, without close")
    talk.end_checks()
