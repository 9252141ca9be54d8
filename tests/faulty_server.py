"""The reference server with one fault injected on purpose, to prove the conformance suite sees it.

    python tests/faulty_server.py FAULT serve --port 0 --data-dir DIR

patches one behaviour of the real server, in this process only, and then runs the
ordinary ``voxer-stream`` command line. The production code carries no fault hooks:
each fault replaces one method here, as a bug in that method would.

Faults (each one breaks one requirement of spec/protocol.md):

- ``drop-chunk``: listeners never receive chunk 3 of a message (VXS-6.2-1).
- ``duplicate-chunk``: listeners receive chunk 3 twice (VXS-6.2-1).
- ``reorder-chunks``: listeners receive chunk 4 before chunk 3 (VXS-6.2-1).
- ``ack-before-commit``: acks name every chunk received, durable or not, while
  commits lag by 30 ms (VXS-5.3-3, VXS-4.5-1).
- ``non-participant-listens``: anyone may listen to and read any message
  (VXS-6.1-1, VXS-8-2).
- ``swap-error-code``: a sequence gap is reported as CHUNK_CONFLICT (VXS-5.3-2).
- ``rtp-timestamp-jump``: WebRTC egress moves its RTP timestamps on by 20 ms at the
  switch to live chunks, as a restart of the timestamps would (VXS-12-7).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from voxer_stream.cli import main
from voxer_stream.pipeline import reader
from voxer_stream.pipeline.ingest import UploadSession
from voxer_stream.service.threads import Threads
from voxer_stream.store.sqlite import SQLiteStore
from voxer_stream.wire import Chunk, ErrorCode, ProtocolError, decode_frame
from voxer_stream.wire.upload import UploadServer

FAULTY_SEQ = 3


def _seq(frame: bytes) -> int | None:
    decoded = decode_frame(frame)
    return decoded.seq if isinstance(decoded, Chunk) else None


class FaultySink:
    """Wraps a listen stream's sink and rewrites the chunk frames that pass through it."""

    def __init__(self, sink: Any, rewrite: Callable[[list[bytes], dict[str, Any]], list[bytes]]):
        self._sink = sink
        self._rewrite = rewrite
        self._state: dict[str, Any] = {}

    async def send(self, frames: Sequence[bytes]) -> None:
        out = self._rewrite(list(frames), self._state)
        if out:
            await self._sink.send(out)

    async def fail(self, exc: ProtocolError, data: bytes) -> None:
        await self._sink.fail(exc, data)


def _drop(frames: list[bytes], state: dict[str, Any]) -> list[bytes]:
    return [f for f in frames if _seq(f) != FAULTY_SEQ]


def _duplicate(frames: list[bytes], state: dict[str, Any]) -> list[bytes]:
    out: list[bytes] = []
    for frame in frames:
        out.append(frame)
        if _seq(frame) == FAULTY_SEQ:
            out.append(frame)
    return out


def _reorder(frames: list[bytes], state: dict[str, Any]) -> list[bytes]:
    out: list[bytes] = []
    for frame in frames:
        if _seq(frame) == FAULTY_SEQ:
            state["held"] = frame
            continue
        out.append(frame)
        if "held" in state:
            out.append(state.pop("held"))
    return out


def _patch_listen(rewrite: Callable[[list[bytes], dict[str, Any]], list[bytes]]) -> None:
    original = reader.ListenSession.__init__

    def init(self: reader.ListenSession, hub: Any, request: Any, authorize: Any, sink: Any) -> None:
        original(self, hub, request, authorize, FaultySink(sink, rewrite))

    reader.ListenSession.__init__ = init  # type: ignore[method-assign]


def _ack_before_commit() -> None:
    async def send_ack(self: UploadSession, live: Any) -> None:
        async with self._send_lock:
            count = self.machine.next_seq  # received, not durable: the bug
            if count > 0 and (data := self.machine.ack(count - 1)):
                await self.sink.send([data])

    UploadSession._send_ack = send_ack  # type: ignore[method-assign]
    run_batch = SQLiteStore._run_batch

    def slow_batch(self: SQLiteStore, conn: Any, batch: Any) -> None:
        time.sleep(0.01)  # a slow disk: commits lag behind the acks
        run_batch(self, conn, batch)

    SQLiteStore._run_batch = slow_batch  # type: ignore[method-assign]


def _non_participant_listens() -> None:
    async def can_listen(self: Threads, account: Any, message: Any) -> Any:
        return await self.store.get_thread(message.thread_id)  # whoever asks

    Threads.can_listen = can_listen  # type: ignore[method-assign]


def _swap_error_code() -> None:
    check = UploadServer._check

    def swapped(self: UploadServer, frame: Any) -> None:
        try:
            check(self, frame)
        except ProtocolError as exc:
            if exc.code is ErrorCode.SEQUENCE_GAP:
                raise ProtocolError(
                    ErrorCode.CHUNK_CONFLICT, exc.detail, exc.requirement, seq=exc.seq
                ) from None
            raise

    UploadServer._check = swapped  # type: ignore[method-assign]


def _rtp_timestamp_jump() -> None:
    from voxer_stream.transports import webrtc

    try_send = webrtc._RtcSink.try_send

    def jumping(self: Any, frame: bytes) -> bool:
        if not getattr(self, "jumped", False):
            self.jumped = True
            self.session.base += 960  # the live part starts 20 ms later than it should
        return try_send(self, frame)

    webrtc._RtcSink.try_send = jumping  # type: ignore[method-assign]


FAULTS: dict[str, Callable[[], None]] = {
    "drop-chunk": lambda: _patch_listen(_drop),
    "duplicate-chunk": lambda: _patch_listen(_duplicate),
    "reorder-chunks": lambda: _patch_listen(_reorder),
    "ack-before-commit": _ack_before_commit,
    "non-participant-listens": _non_participant_listens,
    "swap-error-code": _swap_error_code,
    "rtp-timestamp-jump": _rtp_timestamp_jump,
}

if __name__ == "__main__":
    FAULTS[sys.argv[1]]()
    sys.exit(main(sys.argv[2:]))
