"""The talker: upload a message over HTTP/2, full duplex, resuming after a drop.

``talk`` sends ``open``, reads ``opened``, re-sends what the server lacks, then
streams chunks while it reads acks on the same stream (spec section 5). When the
connection drops (or the server restarts) it reconnects with a short backoff and
opens again: the server's ``opened.next_seq`` says where to go on, and chunks the
server has acknowledged are never sent twice.

The upload loop is written against a two-method ``UploadChannel`` so that the
WebSocket binding (``ws.ws_talk``) shares it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ssl import SSLContext
from typing import Final, Protocol

import trio

from ..media.opus import packet_duration, packets_duration
from ..wire import Ack, Chunk, Closed, Error, ErrorCode, Open, Opened, encode_frame
from ..wire.upload import UploadClient, UploadState
from .h2conn import (
    ClientError,
    ConnectionLost,
    H2Connection,
    H2Stream,
    ServerError,
    StreamReset,
)

__all__ = [
    "TICKS_PER_SECOND",
    "UploadChannel",
    "UploadInterrupted",
    "chunks_from_packets",
    "realtime",
    "run_upload",
    "talk",
]

TICKS_PER_SECOND: Final = 48000
CBOR_SEQ: Final = "application/cbor-seq"


class UploadInterrupted(ConnectionLost):
    """The server ended the upload stream before ``closed``."""


class UploadChannel(Protocol):
    """One connection's worth of an upload: frames out, bytes in."""

    async def send(self, frames: Sequence[bytes]) -> None: ...

    async def receive(self) -> bytes | None:
        """Bytes of server frames; None when the server has ended the stream."""
        ...

    async def end(self) -> None: ...


Opener = Callable[[], AbstractAsyncContextManager[UploadChannel]]
AckCallback = Callable[[int], object]


# -- chunks -------------------------------------------------------------------


def chunks_from_packets(packets: Iterable[bytes], packets_per_chunk: int = 1) -> list[Chunk]:
    """Group Opus packets into chunks, seq from 0, ts the 48 kHz time of the first packet."""
    if packets_per_chunk < 1:
        raise ValueError("packets_per_chunk must be at least 1")
    chunks: list[Chunk] = []
    batch: list[bytes] = []
    ts = 0
    start = 0
    for packet in packets:
        if not batch:
            start = ts
        batch.append(packet)
        ts += packet_duration(packet)
        if len(batch) == packets_per_chunk:
            chunks.append(Chunk(seq=len(chunks), ts=start, packets=tuple(batch)))
            batch = []
    if batch:
        chunks.append(Chunk(seq=len(chunks), ts=start, packets=tuple(batch)))
    return chunks


def chunk_end(chunk: Chunk) -> int:
    """Media time (48 kHz ticks) at the end of ``chunk``."""
    return chunk.ts + packets_duration(chunk.packets)


async def realtime(
    chunks: Iterable[Chunk] | AsyncIterable[Chunk], *, speed: float = 1.0
) -> AsyncIterator[Chunk]:
    """Yield each chunk when a microphone would have finished recording it.

    Open loop: chunk times are scheduled from the start, not from the previous
    send, so a slow consumer catches up instead of drifting.
    """
    start = trio.current_time()
    source = _aiter(chunks)
    async with _closing(source):
        async for chunk in source:
            await trio.sleep_until(start + chunk_end(chunk) / TICKS_PER_SECOND / speed)
            yield chunk


def _aiter(chunks: Iterable[Chunk] | AsyncIterable[Chunk]) -> AsyncIterator[Chunk]:
    if isinstance(chunks, AsyncIterable):
        return aiter(chunks)
    return _from_sync(chunks)


@asynccontextmanager
async def _closing(source: AsyncIterator[Chunk]) -> AsyncIterator[AsyncIterator[Chunk]]:
    """Close an async generator source when done with it (even half consumed)."""
    try:
        yield source
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


async def _from_sync(chunks: Iterable[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


# -- the upload loop ----------------------------------------------------------

_Item = Chunk | BaseException | None


async def _pump(
    chunks: Iterable[Chunk] | AsyncIterable[Chunk], out: trio.MemorySendChannel[_Item]
) -> None:
    """Read the source in its own task, so a reconnect never cancels it mid-chunk."""
    source = _aiter(chunks)
    async with out, _closing(source):
        try:
            async for chunk in source:
                await out.send(chunk)
        except Exception as exc:
            await out.send(exc)
            return
        await out.send(None)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ServerError):
        # The 5xx group is the server's own condition (INTERNAL_ERROR, SHUTTING_DOWN,
        # IDLE_TIMEOUT): resume (VXS-9-3). A 5xx code this client does not know is
        # treated as its group (VXS-9-2), whatever its detail says (VXS-4.11-1).
        return exc.code // 100 == 5
    return isinstance(exc, ConnectionLost | StreamReset)


async def run_upload(
    opener: Opener,
    open_frame: Open,
    chunks: Iterable[Chunk] | AsyncIterable[Chunk],
    *,
    max_resumes: int = 5,
    on_ack: AckCallback | None = None,
) -> Closed:
    """Upload with resume over connections made by ``opener`` (any binding).

    ``max_resumes`` bounds consecutive reconnects that make no progress (no new ack).
    """
    client = UploadClient(open_frame)
    send_chunks, receive_chunks = trio.open_memory_channel[_Item](0)
    result: Closed | None = None
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, chunks, send_chunks)
        upload = _Upload(client, receive_chunks, on_ack)
        try:
            failures = 0
            while result is None:
                acked_before = client.acked
                try:
                    async with opener() as channel:
                        result = await upload.run_once(channel)
                except Exception as exc:
                    if not _is_retryable(exc):
                        raise
                    failures = 0 if client.acked > acked_before else failures + 1
                    if failures > max_resumes:
                        raise
                    await trio.sleep(min(0.05 * 2**failures, 2.0))
        except Exception as exc:
            error = exc
        nursery.cancel_scope.cancel()
    await receive_chunks.aclose()
    if error is not None:
        raise error
    assert result is not None
    return result


class _Upload:
    """State kept across the connections of one upload."""

    def __init__(
        self,
        client: UploadClient,
        source: trio.MemoryReceiveChannel[_Item],
        on_ack: AckCallback | None,
    ) -> None:
        self.client = client
        self.source = source
        self.on_ack = on_ack
        self.source_done = False
        self.close_sent = False
        self.last_chunk: Chunk | None = None

    def _handle(self, frames: list[object], status: int | None = None) -> Closed | None:
        for frame in frames:
            if isinstance(frame, Error):
                raise ServerError.from_frame(frame, status)
            if isinstance(frame, Ack) and self.on_ack is not None:
                self.on_ack(frame.seq)
            if isinstance(frame, Closed):
                return frame
        return None

    async def run_once(self, channel: UploadChannel) -> Closed:
        client = self.client
        await channel.send([client.start()])
        # Phase 1: until ``opened``.
        while client.state is UploadState.OPENING:
            data = await channel.receive()
            if data is None:
                raise UploadInterrupted("the server ended the stream before opened")
            frames: list[object] = list(client.receive_data(data))
            opened = next((f for f in frames if isinstance(f, Opened)), None)
            done = self._handle(frames, getattr(channel, "status", None))
            if done is not None:
                return done
            if opened is not None and opened.state == "closed":
                return self._already_closed(opened)
        # Phase 2: send and receive at once.
        sender_error: list[BaseException] = []
        receiver_error: BaseException | None = None
        closed: Closed | None = None
        async with trio.open_nursery() as nursery:

            async def run_sender() -> None:
                try:
                    await self._send(channel)
                except (ConnectionLost, StreamReset) as exc:
                    sender_error.append(exc)  # the receiver sees the same failure
                except Exception as exc:
                    sender_error.append(exc)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(run_sender)
            try:
                closed = await self._receive(channel)
            except Exception as exc:
                receiver_error = exc
            nursery.cancel_scope.cancel()
        if isinstance(receiver_error, ServerError):
            raise receiver_error
        if sender_error and not isinstance(sender_error[0], ConnectionLost | StreamReset):
            raise sender_error[0]
        if receiver_error is not None:
            raise receiver_error
        if sender_error:
            raise sender_error[0]
        if closed is None:
            raise UploadInterrupted("the upload was cut before closed")
        return closed

    def _already_closed(self, opened: Opened) -> Closed:
        if not (self.close_sent or self.source_done):
            raise ServerError(
                int(ErrorCode.MESSAGE_CLOSED),
                ErrorCode.MESSAGE_CLOSED.name,
                f"message {opened.msg} is already closed",
            )
        duration = chunk_end(self.last_chunk) if self.last_chunk is not None else 0
        return Closed(msg=opened.msg, chunks=opened.next_seq, duration=duration)

    async def _send(self, channel: UploadChannel) -> None:
        client = self.client
        pending = [encode_frame(c) for c in client.unacked.values()]
        if pending:
            await channel.send(pending)
        while not self.source_done:
            item = await self.source.receive()
            if item is None:
                self.source_done = True
                break
            if isinstance(item, BaseException):
                self.source_done = True
                raise item
            if item.seq < client.next_seq:
                continue  # the server has it already (a restarted talker)
            self.last_chunk = item
            data = client.send_chunk(item)
            if data:
                await channel.send([data])
        self.close_sent = True
        await channel.send([client.close()])
        await channel.end()

    async def _receive(self, channel: UploadChannel) -> Closed:
        while True:
            data = await channel.receive()
            if data is None:
                raise UploadInterrupted("the server ended the upload stream before closed")
            closed = self._handle(list(self.client.receive_data(data)))
            if closed is not None:
                # Read to the end of the response before the connection closes, so
                # that the server's last write is not cut (see listener._drain).
                with trio.move_on_after(1.0):
                    while await channel.receive() is not None:
                        pass
                return closed


# -- HTTP/2 --------------------------------------------------------------------


class _H2UploadChannel:
    def __init__(self, stream: H2Stream) -> None:
        self.stream = stream
        self.checked = False
        self.status: int | None = None

    async def send(self, frames: Sequence[bytes]) -> None:
        await self.stream.send(b"".join(frames))

    async def end(self) -> None:
        await self.stream.end()

    async def receive(self) -> bytes | None:
        if not self.checked:
            status = self.status = await self.stream.response_status()
            self.checked = True
            content_type = self.stream.header("content-type") or ""
            if status != 200 and not content_type.startswith(CBOR_SEQ):
                body = await self.stream.read_all(65536)
                raise ClientError(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        return await self.stream.receive()


def _h2_opener(url: str, token: str, ssl_context: SSLContext | None) -> Opener:
    @asynccontextmanager
    async def opener() -> AsyncIterator[UploadChannel]:
        async with await H2Connection.connect(url, ssl_context=ssl_context) as conn:
            stream = await conn.request(
                "POST",
                "/v1/upload",
                [("content-type", CBOR_SEQ), ("authorization", f"Bearer {token}")],
            )
            async with stream:
                yield _H2UploadChannel(stream)

    return opener


async def talk(
    url: str,
    token: str,
    open_frame: Open,
    chunks: AsyncIterable[Chunk] | Iterable[Chunk],
    *,
    ssl_context: SSLContext | None = None,
    max_resumes: int = 5,
    on_ack: AckCallback | None = None,
) -> Closed:
    """Upload one message over ``POST /v1/upload``; returns the server's ``closed``.

    Raises ``ServerError`` for an error frame the talker cannot resume from, and
    ``ConnectionLost`` after ``max_resumes`` reconnects without progress.
    """
    return await run_upload(
        _h2_opener(url, token, ssl_context),
        open_frame,
        chunks,
        max_resumes=max_resumes,
        on_ack=on_ack,
    )


def media_seconds(ticks: int) -> float:
    return ticks / TICKS_PER_SECOND
