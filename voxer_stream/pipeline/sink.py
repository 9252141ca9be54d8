"""What the pipeline needs of a transport: somewhere to send encoded frames.

The pipeline speaks frames; each binding (HTTP/2 stream, WebSocket, later
WebRTC) decides how an error is reported: an HTTP status plus one error frame
before a response has started (VXS-10-4), an error frame then a close code on a
WebSocket (VXS-11-5).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from ..store.base import MessageRecord
from ..wire import ProtocolError


class FrameSink(Protocol):
    async def send(self, frames: Sequence[bytes]) -> None:
        """Send encoded frames, in order; may block while the peer is not reading.

        A batch lets a stream binding write many frames at once; a message
        binding (WebSocket) sends one message per frame (VXS-11-2)."""

    async def fail(self, exc: ProtocolError, data: bytes) -> None:
        """Send the error frame ``data`` for ``exc`` and end the stream (VXS-5.6-1)."""


@runtime_checkable
class DirectSink(Protocol):
    """A sink that can take a frame synchronously: what ``LiveMessage.publish`` needs to
    deliver a chunk to a listener at the live edge without waking the listener's task.

    Why: at the live edge every listener's task would otherwise wake for every chunk
    only to write one frame; the wake-up costs more than the write. A binding that can
    tell at once whether its transport takes a frame (flow-control credit, room in its
    buffer) implements this; the others are served by their task (``FrameSink.send``).
    """

    def try_send(self, frame: bytes) -> bool:
        """Write ``frame`` now, or return False having written nothing."""

    def flush(self) -> None:
        """Push what ``try_send`` wrote towards the peer (called once per batch)."""


#: Raises ``ProtocolError`` (THREAD_NOT_FOUND, FORBIDDEN) unless the talker may post.
AuthorizePost = Callable[[str], Awaitable[None]]
#: Raises ``ProtocolError`` (FORBIDDEN) unless the listener may hear the message.
AuthorizeListen = Callable[[MessageRecord], Awaitable[None]]
