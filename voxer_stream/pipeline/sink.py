"""What the pipeline needs of a transport: somewhere to send encoded frames.

The pipeline speaks frames; each binding (HTTP/2 stream, WebSocket, later
WebRTC) decides how an error is reported: an HTTP status plus one error frame
before a response has started (VXS-10-4), an error frame then a close code on a
WebSocket (VXS-11-5).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ..store.base import MessageRecord
from ..wire import ProtocolError


class FrameSink(Protocol):
    async def send(self, frames: Sequence[bytes]) -> None:
        """Send encoded frames, in order; may block while the peer is not reading.

        A batch lets a stream binding write many frames at once; a message
        binding (WebSocket) sends one message per frame (VXS-11-2)."""

    async def fail(self, exc: ProtocolError, data: bytes) -> None:
        """Send the error frame ``data`` for ``exc`` and end the stream (VXS-5.6-1)."""


#: Raises ``ProtocolError`` (THREAD_NOT_FOUND, FORBIDDEN) unless the talker may post.
AuthorizePost = Callable[[str], Awaitable[None]]
#: Raises ``ProtocolError`` (FORBIDDEN) unless the listener may hear the message.
AuthorizeListen = Callable[[MessageRecord], Awaitable[None]]
