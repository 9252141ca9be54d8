"""The catch-up-to-live reader: one listener's stream, stored then live.

A listener is a cursor (the next seq it needs). While the cursor is behind,
chunks come from storage (below the live tail) or from the tail in memory; when
it reaches the newest chunk of a live message the reader says ``live`` once and
then waits for each next chunk (VXS-6.2-3, VXS-6.2-4). Because the cursor is
the only state, there is nothing to merge at the switch and no chunk can be
sent twice or skipped (VXS-6.2-1).

Pacing (VXS-6.4-1): with speed ``s`` a chunk is due ``(ts - ts_first) / s``
seconds after the first was sent; once live, chunks go out as they arrive.
"""

from __future__ import annotations

import bisect
from typing import Final

import trio

from ..store.base import MessageRecord, StoredChunk
from ..wire import (
    End,
    Error,
    ErrorCode,
    Listen,
    Live,
    MessageInfo,
    ProtocolError,
    encode_frame,
)
from .hub import Hub, LiveMessage, chunk_frame
from .ingest import first_protocol_error
from .sink import AuthorizeListen, DirectSink, FrameSink

#: Chunks read from storage per query.
STORE_BATCH: Final = 256
#: Chunks taken from the tail per wake-up (bounds one send's size).
TAIL_BATCH: Final = 64
#: The media clock of the protocol (VXS-2.2-2).
CLOCK_RATE: Final = 48000


def _info(record: MessageRecord, start_seq: int, live: LiveMessage | None) -> MessageInfo:
    return MessageInfo(
        msg=record.id,
        thread=record.thread_id,
        sender=record.sender,
        codec=record.codec,
        created=record.created,
        state="live" if live is not None else "closed",
        start_seq=start_seq,
    )


class _Pacer:
    """Holds a chunk back until it is due at the requested speed."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._origin: tuple[float, int] | None = None

    async def wait(self, chunk: StoredChunk) -> None:
        if self.speed == 0.0 or self._origin is None:
            return
        start, ts0 = self._origin
        await trio.sleep_until(start + (chunk.ts - ts0) / CLOCK_RATE / self.speed)

    def sent(self, chunk: StoredChunk) -> None:
        """The clock starts when the first chunk has been *sent* (VXS-6.4-1), not when
        it was due: a first send that blocks must not make the second one early."""
        if self._origin is None:
            self._origin = (trio.current_time(), chunk.ts)


class ListenSession:
    """One listen stream; ``run`` reports every ``ProtocolError`` through the sink."""

    def __init__(
        self, hub: Hub, request: Listen, authorize: AuthorizeListen, sink: FrameSink
    ) -> None:
        self.hub = hub
        self.request = request
        self.authorize = authorize
        self.sink = sink

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.hub.raise_on_shutdown)
                await self._run()
                nursery.cancel_scope.cancel()
        except* ProtocolError as group:
            exc = first_protocol_error(group)
            await self.sink.fail(exc, encode_frame(Error.from_exception(exc)))

    async def _run(self) -> None:
        record, live = await self.hub.get(self.request.msg)
        if record is None:
            raise ProtocolError(
                ErrorCode.MESSAGE_NOT_FOUND, f"message {self.request.msg!r}", "VXS-6.1-1"
            )
        await self.authorize(record)
        cursor = await self._start_seq(record, live)
        await self.sink.send([encode_frame(_info(record, cursor, live))])
        pacer = _Pacer(self.request.speed)
        if live is not None:
            cursor = await self._follow(live, cursor, pacer)
            chunks, duration = live.next_seq, live.end_ts
        else:
            chunks, duration = record.chunks, record.duration
        if cursor > chunks:
            raise ProtocolError(
                ErrorCode.INVALID_LISTEN,
                f"the message closed with {chunks} chunks, before chunk {cursor}",
                "VXS-6.1-5",
            )
        cursor = await self._from_store(record.id, cursor, chunks, pacer)
        await self.sink.send([encode_frame(End(chunks=chunks, duration=duration))])

    async def _start_seq(self, record: MessageRecord, live: LiveMessage | None) -> int:
        request = self.request
        count = live.next_seq if live is not None else record.chunks
        if request.live_edge:
            return count
        if request.from_ts is not None:
            return await self._seq_at_ts(record, live, request.from_ts)
        start = request.from_seq or 0
        if live is None and start > count:
            raise ProtocolError(
                ErrorCode.INVALID_LISTEN,
                f"from_seq {start} is beyond the {count} chunks of a closed message",
                "VXS-6.1-5",
            )
        return start

    async def _seq_at_ts(self, record: MessageRecord, live: LiveMessage | None, ts: int) -> int:
        """The chunk holding media time ``ts`` (VXS-6.1-3): tail first, then storage."""
        if live is not None and live.tail and ts >= live.tail[0].ts:
            ends = [chunk.end_ts for chunk in live.tail]
            return live.tail_start + bisect.bisect_right(ends, ts)
        return await self.hub.store.seq_at_ts(record.id, ts)

    async def _send_chunks(self, chunks: list[StoredChunk], pacer: _Pacer) -> None:
        await self._send_wire([chunk_frame(chunk) for chunk in chunks], chunks, pacer)

    async def _send_wire(
        self, frames: list[bytes], chunks: list[StoredChunk], pacer: _Pacer
    ) -> None:
        """Send encoded chunks; ``chunks`` gives their media times for pacing."""
        if pacer.speed == 0.0:
            # As fast as possible: one send for the whole batch.
            await self.sink.send(frames)
        else:
            for frame, chunk in zip(frames, chunks, strict=True):
                await pacer.wait(chunk)
                await self.sink.send([frame])
                pacer.sent(chunk)

    async def _follow(self, live: LiveMessage, cursor: int, pacer: _Pacer) -> int:
        """Send from ``cursor`` while the message is live; returns the cursor at close."""
        said_live = False
        direct = self.sink if isinstance(self.sink, DirectSink) else None
        while True:
            if cursor < live.tail_start:
                batch = await self.hub.store.read_chunks(
                    live.id, cursor, min(STORE_BATCH, live.tail_start - cursor)
                )
                if not batch or batch[0].seq != cursor:
                    raise ProtocolError(ErrorCode.INTERNAL_ERROR, f"chunk {cursor} is missing")
                await self._send_chunks(batch, pacer)
                cursor = batch[-1].seq + 1
            elif cursor < live.next_seq:
                frames = live.tail_from(cursor, TAIL_BATCH)
                if pacer.speed == 0.0:
                    await self.sink.send(frames)  # the live path: encoded once, one send
                else:
                    # The chunks (for their media times) in the same step as their
                    # encodings: no await in between, so a trim cannot shift them apart.
                    start = cursor - live.tail_start
                    chunks = live.tail[start : start + len(frames)]
                    await self._send_wire(frames, chunks, pacer)
                cursor += len(frames)
            elif live.closed:
                return cursor
            elif not said_live and cursor == live.next_seq:
                said_live = True
                pacer.speed = 0.0  # at the live edge: real time by nature
                await self.sink.send([encode_frame(Live(seq=cursor))])
            elif direct is not None and cursor == live.next_seq:
                cursor = await live.follow(cursor, direct)
            else:
                await live.wait_beyond(cursor)

    async def _from_store(self, msg: str, cursor: int, count: int, pacer: _Pacer) -> int:
        """Send the stored chunks ``cursor .. count-1`` of a closed message."""
        while cursor < count:
            batch = await self.hub.store.read_chunks(msg, cursor, min(STORE_BATCH, count - cursor))
            if not batch or batch[0].seq != cursor:
                raise ProtocolError(ErrorCode.INTERNAL_ERROR, f"chunk {cursor} is missing")
            await self._send_chunks(batch, pacer)
            cursor = batch[-1].seq + 1
        return cursor
