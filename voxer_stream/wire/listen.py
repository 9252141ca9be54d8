"""The listen state machine (spec section 6), listener side, sans-IO.

What a listener must see, whatever moment it joins (VXS-6.2-1): one
``message`` frame, then chunks with consecutive seqs from ``start_seq``, at most
one ``live`` marker, and, once the message is closed, an ``end`` frame whose
count is the seq after the last chunk. ``ListenChecker`` enforces exactly that,
so that a client, the conformance suite and the property tests all judge a
server by the same rule: a dropped, doubled or reordered chunk raises.
"""

from __future__ import annotations

from enum import Enum, auto

from .codec import FrameDecoder
from .errors import ErrorCode, ProtocolError
from .frames import Chunk, End, Error, Frame, Live, MessageInfo


class ListenState(Enum):
    AWAIT_MESSAGE = auto()
    STORED = auto()
    LIVE = auto()
    ENDED = auto()
    ERROR = auto()


def _violation(detail: str, requirement: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNEXPECTED_FRAME, detail, requirement)


class ListenChecker:
    """Listener side of one listen stream: bytes in, checked frames out."""

    def __init__(self) -> None:
        self.state = ListenState.AWAIT_MESSAGE
        self.info: MessageInfo | None = None
        self.next_seq = 0
        self.live_at: int | None = None
        self.end: End | None = None
        self.error: Error | None = None
        self._decoder = FrameDecoder()

    def receive_data(self, data: bytes) -> list[Frame]:
        self._decoder.feed(data)
        frames = list(self._decoder)
        for frame in frames:
            self.apply(frame)
        return frames

    def apply(self, frame: Frame) -> None:
        """Check one frame against the listen state machine."""
        state = self.state
        if isinstance(frame, Error):
            self.error = frame
            self.state = ListenState.ERROR
        elif state is ListenState.AWAIT_MESSAGE:
            if not isinstance(frame, MessageInfo):
                raise _violation(f"{frame.TYPE!r} before the message frame", "VXS-6.2-2")
            self.info = frame
            self.next_seq = frame.start_seq
            self.state = ListenState.STORED
        elif state in (ListenState.STORED, ListenState.LIVE):
            if isinstance(frame, Chunk):
                if frame.seq != self.next_seq:
                    kind = "doubled" if frame.seq < self.next_seq else "skipped"
                    raise _violation(
                        f"chunk {frame.seq} where {self.next_seq} was due ({kind})", "VXS-6.2-1"
                    )
                self.next_seq += 1
            elif isinstance(frame, Live) and state is ListenState.STORED:
                if frame.seq != self.next_seq:
                    raise _violation(f"live at {frame.seq}, next is {self.next_seq}", "VXS-6.2-4")
                self.live_at = frame.seq
                self.state = ListenState.LIVE
            elif isinstance(frame, End):
                if frame.chunks != self.next_seq:
                    raise _violation(
                        f"end says {frame.chunks} chunks, {self.next_seq} were due", "VXS-6.3-1"
                    )
                self.end = frame
                self.state = ListenState.ENDED
            else:
                raise _violation(f"{frame.TYPE!r} in state {state.name}", "VXS-6.2-2")
        else:
            raise _violation(f"{frame.TYPE!r} after the stream ended", "VXS-6.3-2")
