"""The upload state machine (spec section 5), both sides, sans-IO.

Transitions are a table keyed by ``(state, frame type)``; any pair not in the
table is ``UNEXPECTED_FRAME`` (VXS-5.1-2), as h2 treats a ``(state, input)``
pair it does not know. A side that raised moves to ``ERROR`` and accepts
nothing more (VXS-5.6-1).

Server side::

    AWAIT_OPEN --open--> OPENING --accept_open()--> STREAMING --close--> CLOSING
                                                    (chunk)*            --closed()--> DONE
    (a message already closed opens straight into DONE; close then is answered again)

The talker side mirrors it and keeps every chunk that is not yet acked, so that
after a reconnect it can re-send from the server's ``next_seq`` (VXS-5.2-4).
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum, auto

from .codec import FrameDecoder, encode_frame
from .errors import ErrorCode, ProtocolError
from .frames import Ack, Chunk, Close, Closed, Error, Frame, Open, Opened


class UploadState(Enum):
    AWAIT_OPEN = auto()
    OPENING = auto()
    STREAMING = auto()
    CLOSING = auto()
    DONE = auto()
    ERROR = auto()


# (state, frame the talker sent) -> state after it; everything else is unexpected.
_SERVER_TRANSITIONS: dict[tuple[UploadState, type[Frame]], UploadState] = {
    (UploadState.AWAIT_OPEN, Open): UploadState.OPENING,
    (UploadState.STREAMING, Chunk): UploadState.STREAMING,
    (UploadState.STREAMING, Close): UploadState.CLOSING,
    (UploadState.DONE, Close): UploadState.CLOSING,
}


def _unexpected(frame: Frame, state: UploadState, requirement: str = "VXS-5.1-2") -> ProtocolError:
    return ProtocolError(
        ErrorCode.UNEXPECTED_FRAME,
        f"{frame.TYPE!r} frame not allowed in state {state.name}",
        requirement,
    )


class UploadServer:
    """Server side of one upload stream.

    Feed bytes with ``receive_data``; pull frames with ``next_frame`` (None
    means more bytes are needed). The frames it returns are already checked
    against the state machine: chunks are contiguous from ``next_seq`` (a chunk
    below it is a re-send, which the caller compares with what it holds), a
    close names the right count.
    """

    def __init__(self) -> None:
        self.state = UploadState.AWAIT_OPEN
        self.next_seq = 0
        self.msg: str | None = None
        self._decoder = FrameDecoder()
        self._acked = -1

    def receive_data(self, data: bytes) -> None:
        self._decoder.feed(data)

    def receive_eof(self) -> None:
        """The body ended. Bytes of an unfinished item are malformed CBOR (VXS-3.1-2):
        only an end between frames is the clean end of VXS-5.1-4."""
        if self._decoder.buffered:
            self.state = UploadState.ERROR
            raise ProtocolError(
                ErrorCode.MALFORMED_CBOR,
                f"the stream ended inside a CBOR item ({self._decoder.buffered} bytes)",
                "VXS-3.1-2",
            )

    def next_frame(self) -> Frame | None:
        if self.state in (UploadState.ERROR, UploadState.OPENING, UploadState.CLOSING):
            # OPENING and CLOSING wait for the caller's answer before reading on.
            return None
        try:
            frame = next(self._decoder, None)
            if frame is None:
                return None
            self._check(frame)
        except ProtocolError:
            self.state = UploadState.ERROR
            raise
        return frame

    def _check(self, frame: Frame) -> None:
        after = _SERVER_TRANSITIONS.get((self.state, type(frame)))
        if after is None:
            if self.state is UploadState.DONE and isinstance(frame, Chunk):
                raise ProtocolError(
                    ErrorCode.MESSAGE_CLOSED, "the message is closed", "VXS-5.5-3", seq=frame.seq
                )
            raise _unexpected(frame, self.state)
        if isinstance(frame, Open):
            self.msg = frame.msg
        elif isinstance(frame, Chunk):
            if frame.seq > self.next_seq:
                raise ProtocolError(
                    ErrorCode.SEQUENCE_GAP,
                    f"chunk {frame.seq} arrived when {self.next_seq} was expected",
                    "VXS-5.3-2",
                    seq=frame.seq,
                )
            if frame.seq == self.next_seq:
                self.next_seq += 1
        elif isinstance(frame, Close) and frame.chunks != self.next_seq:
            raise ProtocolError(
                ErrorCode.CLOSE_MISMATCH,
                f"close says {frame.chunks} chunks, {self.next_seq} were received",
                "VXS-5.5-2",
            )
        self.state = after

    def accept_open(self, next_seq: int, closed: bool) -> bytes:
        """Answer the open: the talker goes on from ``next_seq`` (VXS-5.2-2)."""
        if self.state is not UploadState.OPENING or self.msg is None:
            raise RuntimeError(f"accept_open in state {self.state.name}")
        self.next_seq = next_seq
        self._acked = next_seq - 1
        self.state = UploadState.DONE if closed else UploadState.STREAMING
        return encode_frame(
            Opened(msg=self.msg, next_seq=next_seq, state="closed" if closed else "live")
        )

    def ack(self, seq: int) -> bytes:
        """Acknowledge every chunk up to ``seq`` as durable; empty if nothing new."""
        if seq <= self._acked:
            return b""
        if seq >= self.next_seq:
            raise RuntimeError(f"ack {seq} for a chunk not received (next {self.next_seq})")
        self._acked = seq
        return encode_frame(Ack(seq=seq))

    def closed(self, duration: int) -> bytes:
        """Confirm the close once the whole message is durable (VXS-5.5-4)."""
        if self.state is not UploadState.CLOSING or self.msg is None:
            raise RuntimeError(f"closed in state {self.state.name}")
        self.state = UploadState.DONE
        return encode_frame(Closed(msg=self.msg, chunks=self.next_seq, duration=duration))

    def error(self, exc: ProtocolError) -> bytes:
        """The error frame to send; the stream ends after it (VXS-5.6-1)."""
        self.state = UploadState.ERROR
        return encode_frame(Error.from_exception(exc))


class UploadClient:
    """Talker side: remembers unacked chunks and checks the server's answers.

    A server that acks a chunk it was never sent, or moves an ack backwards,
    breaks VXS-5.3-4; the talker raises ``ProtocolError`` for it.
    """

    def __init__(self, open_frame: Open) -> None:
        self.open_frame = open_frame
        self.state = UploadState.AWAIT_OPEN
        self.unacked: OrderedDict[int, Chunk] = OrderedDict()
        self.acked = -1
        self.next_seq = 0
        self.closed: Closed | None = None
        self._decoder = FrameDecoder()

    def start(self) -> bytes:
        """Bytes of the open frame for a new connection (first or resumed)."""
        self.state = UploadState.OPENING
        self._decoder = FrameDecoder()
        return encode_frame(self.open_frame)

    def send_chunk(self, chunk: Chunk) -> bytes:
        if chunk.seq != self.next_seq:
            raise ValueError(f"chunk {chunk.seq} sent when {self.next_seq} is next")
        self.unacked[chunk.seq] = chunk
        self.next_seq += 1
        return encode_frame(chunk) if self.state is UploadState.STREAMING else b""

    def close(self) -> bytes:
        self.state = UploadState.CLOSING
        return encode_frame(Close(chunks=self.next_seq))

    def receive_data(self, data: bytes) -> list[Frame]:
        """Frames from the server, checked; an ``Error`` frame is returned, not raised."""
        self._decoder.feed(data)
        frames = list(self._decoder)
        for frame in frames:
            self._apply(frame)
        return frames

    def _apply(self, frame: Frame) -> None:
        if isinstance(frame, Opened) and self.state is UploadState.OPENING:
            if frame.msg != self.open_frame.msg:
                raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, "opened for another message")
            # A talker restarted from its source (say, a file) may know less than
            # the server: it skips ahead to the server's position.
            self._acked_up_to(frame.next_seq - 1)
            self.next_seq = max(self.next_seq, frame.next_seq)
            self.state = UploadState.DONE if frame.state == "closed" else UploadState.STREAMING
        elif isinstance(frame, Ack) and self.state in (UploadState.STREAMING, UploadState.CLOSING):
            if frame.seq <= self.acked or frame.seq >= self.next_seq:
                raise ProtocolError(
                    ErrorCode.UNEXPECTED_FRAME,
                    f"ack {frame.seq} after ack {self.acked} with {self.next_seq} chunks sent",
                    "VXS-5.3-4",
                )
            self._acked_up_to(frame.seq)
        elif isinstance(frame, Closed) and self.state is UploadState.CLOSING:
            if frame.chunks != self.next_seq:
                raise ProtocolError(
                    ErrorCode.UNEXPECTED_FRAME, "closed names another chunk count", "VXS-5.5-4"
                )
            self._acked_up_to(frame.chunks - 1)
            self.closed = frame
            self.state = UploadState.DONE
        elif isinstance(frame, Error):
            self.state = UploadState.ERROR
        else:
            raise _unexpected(frame, self.state)

    def _acked_up_to(self, seq: int) -> None:
        self.acked = max(self.acked, seq)
        while self.unacked and next(iter(self.unacked)) <= seq:
            self.unacked.popitem(last=False)

    def resend(self) -> bytes:
        """After ``opened``: every chunk the server does not have yet, in order."""
        return b"".join(encode_frame(c) for c in self.unacked.values())
