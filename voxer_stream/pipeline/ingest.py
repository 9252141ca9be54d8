"""Ingest: one talker's upload stream, from bytes to the hub, the store and acks.

The order of things is the point (ARCHITECTURE, "ack after commit, fan-out
before"): a chunk is validated, then published to the hub at once, which both
wakes live listeners and queues it for the message's committer; acks are sent
by a separate task that follows the message's durable count (VXS-5.3-3). The
transport only moves bytes in and out.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Final

import trio

from ..media.opus import InvalidOpusPacket, parse_packet
from ..store.base import MessageRecord, Store, StoredChunk
from ..wire import Chunk, Close, ErrorCode, Open, ProtocolError
from ..wire.upload import UploadServer
from .hub import Hub, LiveMessage, Uploader
from .sink import AuthorizePost, FrameSink

log = logging.getLogger(__name__)

#: Chunks published but not yet durable before ingest stops reading (backpressure).
MAX_UNDURABLE: Final = 2000
#: How long a talker that ended its stream without close waits for its last acks.
FINAL_ACK_WAIT: Final = 5.0
#: The only codec of this protocol version (VXS-5.2-1).
CODECS: Final = frozenset({"opus"})


def validate_chunk(chunk: Chunk) -> StoredChunk:
    """Check every packet is Opus and compute the chunk's duration (VXS-7-1, VXS-7-2)."""
    duration = 0
    for index, packet in enumerate(chunk.packets):
        try:
            duration += parse_packet(packet).duration
        except InvalidOpusPacket as exc:
            raise ProtocolError(
                ErrorCode.INVALID_OPUS, f"packet {index}: {exc}", "VXS-5.3-5", seq=chunk.seq
            ) from None
    return StoredChunk(seq=chunk.seq, ts=chunk.ts, duration=duration, packets=chunk.packets)


class UploadSession:
    """Drives one upload stream end to end; see ``run``."""

    def __init__(
        self,
        hub: Hub,
        account_id: str,
        authorize: AuthorizePost,
        sink: FrameSink,
        *,
        idle_timeout: float = 30.0,
    ) -> None:
        self.hub = hub
        self.store: Store = hub.store
        self.account_id = account_id
        self.authorize = authorize
        self.sink = sink
        self.machine = UploadServer()
        self.idle_timeout = idle_timeout
        self.live: LiveMessage | None = None
        self.record: MessageRecord | None = None
        self._uploader = Uploader()
        self._send_lock = trio.Lock()
        self._input: AsyncIterator[bytes] | None = None

    async def _send(self, data: bytes) -> None:
        if data:
            async with self._send_lock:
                await self.sink.send([data])

    async def run(self, source: AsyncIterator[bytes]) -> None:
        """Read the talker's bytes from ``source`` until close or end; never raises
        ``ProtocolError``: it is reported through the sink (VXS-5.6-1)."""
        self._input = source
        try:
            await self._run()
        except* ProtocolError as group:
            # except* also catches a bare ProtocolError (raised outside the nursery).
            await self._fail(first_protocol_error(group))
        finally:
            self._detach()
            if isinstance(source, AsyncGenerator):
                # Finalize the transport's generator now, not at garbage collection.
                with trio.CancelScope(shield=True):
                    await source.aclose()

    async def _fail(self, exc: ProtocolError) -> None:
        async with self._send_lock:
            await self.sink.fail(exc, self.machine.error(exc))

    async def _next_frame(self) -> object | None:
        """The next frame the machine admits, reading more bytes as needed."""
        assert self._input is not None
        while True:
            frame = self.machine.next_frame()
            if frame is not None:
                return frame
            with trio.move_on_after(self.idle_timeout) as scope:
                data = await anext(self._input, None)
            if scope.cancelled_caught:
                raise ProtocolError(
                    ErrorCode.IDLE_TIMEOUT, f"no frame for {self.idle_timeout:g} s", "VXS-5.7-2"
                )
            if data is None:
                self.machine.receive_eof()
                return None
            self.machine.receive_data(data)

    async def _run(self) -> None:
        first = await self._next_frame()
        if first is None:
            raise ProtocolError(
                ErrorCode.UNEXPECTED_FRAME, "the stream ended before an open frame", "VXS-5.1-1"
            )
        assert isinstance(first, Open)
        await self.authorize(first.thread)
        live = await self._open(first)
        if live is None:
            await self._after_close()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ack_loop, live)
            nursery.start_soon(self._stop_on_shutdown, live)
            with self._uploader.cancel_scope:
                close = await self._receive_chunks(live)
            if self._uploader.superseded:
                raise ProtocolError(
                    ErrorCode.SUPERSEDED, "another upload stream took over", "VXS-5.7-1"
                )
            if close is None:
                # The talker ended its stream without close: the message stays live,
                # the talker may resume (VXS-5.2-4); flush the acks it can still get.
                with trio.move_on_after(FINAL_ACK_WAIT):
                    await live.wait_durable(self.machine.next_seq)
                await self._send_ack(live)
                nursery.cancel_scope.cancel()
                return
            await self.hub.close(live)
            nursery.cancel_scope.cancel()
        await self._send(self.machine.closed(live.end_ts))

    async def _open(self, frame: Open) -> LiveMessage | None:
        if frame.codec not in CODECS:
            raise ProtocolError(ErrorCode.UNSUPPORTED_CODEC, f"codec {frame.codec!r}", "VXS-5.2-1")
        wanted = MessageRecord(
            id=frame.msg,
            thread_id=frame.thread,
            sender=self.account_id,
            codec=frame.codec,
            created=frame.created,
            state="live",
        )
        record = await self.store.create_message(wanted)
        if (record.thread_id, record.sender, record.codec) != (
            wanted.thread_id,
            wanted.sender,
            wanted.codec,
        ):
            raise ProtocolError(
                ErrorCode.MESSAGE_CONFLICT,
                "a message with this id exists with another thread, sender or codec",
                "VXS-5.2-3",
            )
        current, live = await self.hub.get(frame.msg)
        assert current is not None
        self.record = current
        if live is None:
            await self._send(self.machine.accept_open(current.chunks, closed=True))
            return None
        if live.uploader is not None:
            live.uploader.supersede()
        else:
            self.hub.announce(live)  # someone starts (or resumes) talking
        live.uploader = self._uploader
        self.hub.talkers_changed(live)
        self.live = live
        await self.hub.attach_talker(live)
        if live.closed:  # closed by its owner on another process meanwhile
            self._detach()
            self.record = replace(
                current, state="closed", chunks=live.next_seq, duration=live.end_ts
            )
            await self._send(self.machine.accept_open(live.next_seq, closed=True))
            return None
        await self._send(self.machine.accept_open(live.durable, closed=False))
        return live

    async def _after_close(self) -> None:
        """A closed message: only a repeated close is answered (VXS-5.5-5)."""
        assert self.record is not None
        frame = await self._next_frame()
        if isinstance(frame, Close):
            await self._send(self.machine.closed(self.record.duration))

    async def _receive_chunks(self, live: LiveMessage) -> Close | None:
        while True:
            frame = await self._next_frame()
            if frame is None or isinstance(frame, Close):
                if isinstance(frame, Close) and frame.chunks < live.next_seq:
                    raise ProtocolError(
                        ErrorCode.CLOSE_MISMATCH,
                        f"close says {frame.chunks}, the message has {live.next_seq} chunks",
                        "VXS-5.5-2",
                    )
                return frame
            assert isinstance(frame, Chunk)
            await self._chunk(live, frame)

    async def _chunk(self, live: LiveMessage, chunk: Chunk) -> None:
        stored = validate_chunk(chunk)
        if chunk.seq < live.next_seq:
            await self._compare_resent(live, stored)
            return
        if chunk.ts < live.end_ts:
            raise ProtocolError(
                ErrorCode.TIMESTAMP_REGRESSION,
                f"chunk {chunk.seq} starts at {chunk.ts}, the previous one ends at {live.end_ts}",
                "VXS-2.2-2",
                seq=chunk.seq,
            )
        if live.next_seq - live.durable >= MAX_UNDURABLE:
            await live.wait_durable(live.next_seq - MAX_UNDURABLE + 1)
        if live.store_failure is not None:
            raise ProtocolError(ErrorCode.INTERNAL_ERROR, "storage failed; resume later")
        if live.closed:
            # Closed by its owner meanwhile (abandoned, VXS-5.7-3, or by another upload).
            raise ProtocolError(
                ErrorCode.MESSAGE_CLOSED, f"message {live.id!r} is closed", "VXS-5.5-3"
            )
        live.publish(stored)

    async def _compare_resent(self, live: LiveMessage, chunk: StoredChunk) -> None:
        """A re-sent chunk must be identical to the one we have (VXS-5.4-1, VXS-5.4-2)."""
        existing = live.chunk_at(chunk.seq)
        if existing is None:
            found = await self.store.read_chunks(live.id, chunk.seq, 1)
            existing = found[0] if found else None
        if existing is None or (existing.ts, existing.packets) != (chunk.ts, chunk.packets):
            raise ProtocolError(
                ErrorCode.CHUNK_CONFLICT,
                f"chunk {chunk.seq} differs from the one stored",
                "VXS-5.4-2",
                seq=chunk.seq,
            )

    async def _send_ack(self, live: LiveMessage) -> None:
        # Under the send lock from the machine's ack to the write: the machine records
        # an ack as sent, so two tasks acking at once must not let one record it while
        # the other's (cancellable) write of it is still pending.
        async with self._send_lock:
            count = min(live.durable, self.machine.next_seq)
            if count > 0 and (data := self.machine.ack(count - 1)):
                await self.sink.send([data])

    async def _ack_loop(self, live: LiveMessage) -> None:
        while True:
            changed = live.changed  # before the send: a commit during it must wake us
            await self._send_ack(live)
            if live.store_failure is not None:
                raise ProtocolError(ErrorCode.INTERNAL_ERROR, "storage failed; resume later")
            await changed.wait()

    async def _stop_on_shutdown(self, live: LiveMessage) -> None:
        """Graceful shutdown (VXS-5.6-3): ack what is durable, then SHUTTING_DOWN; the
        message stays live and the talker resumes on another server or after restart."""
        await self.hub.shutting_down.wait()
        with trio.move_on_after(FINAL_ACK_WAIT):
            await live.wait_durable(self.machine.next_seq)
        await self._send_ack(live)
        await self.hub.raise_on_shutdown()

    def _detach(self) -> None:
        live = self.live
        if live is not None and live.uploader is self._uploader:
            live.uploader = None
            self.hub.talkers_changed(live)
            live.last_activity = trio.current_time()


def first_protocol_error(group: BaseExceptionGroup[ProtocolError]) -> ProtocolError:
    """The first ``ProtocolError`` of a (possibly nested) group: the one to report."""
    for exc in group.exceptions:
        if isinstance(exc, ProtocolError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            return first_protocol_error(exc)
    raise group
