"""The listener: ``GET /v1/messages/{id}/listen`` over HTTP/2, every frame checked.

Every frame goes through ``wire.listen.ListenChecker``, so a dropped, doubled or
reordered chunk raises ``ProtocolError`` here rather than reaching the caller.
The connection has no background task, so ``listen`` is a plain async generator;
stop early with ``contextlib.aclosing`` to close the connection at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ssl import SSLContext
from urllib.parse import quote, urlencode

import trio

from ..wire import Chunk, End, Error, Frame, Listen, Live, MessageInfo
from ..wire.listen import ListenChecker
from .h2conn import ClientError, ConnectionLost, H2Connection, H2Stream, ServerError

__all__ = ["ListenInterrupted", "ListenResult", "collect", "listen", "listen_path"]


class ListenInterrupted(ConnectionLost):
    """The listen stream ended before its ``end`` frame."""


@dataclass
class ListenResult:
    info: MessageInfo | None = None
    chunks: list[Chunk] = field(default_factory=list)
    live_at: int | None = None
    end: End | None = None

    @property
    def packets(self) -> list[bytes]:
        return [p for c in self.chunks for p in c.packets]


def listen_path(request: Listen) -> str:
    """The request path with the listen parameters as the query (VXS-10-6)."""
    query: dict[str, str] = {}
    if request.from_seq is not None:
        query["from_seq"] = str(request.from_seq)
    if request.from_ts is not None:
        query["from_ts"] = str(request.from_ts)
    if request.live_edge:
        query["live_edge"] = "1"
    if request.speed:
        query["speed"] = repr(request.speed)
    path = f"/v1/messages/{quote(request.msg, safe='')}/listen"
    return f"{path}?{urlencode(query)}" if query else path


async def listen(
    url: str, token: str, request: Listen, *, ssl_context: SSLContext | None = None
) -> AsyncIterator[Frame]:
    """Yield the frames of one listen: message, chunk*, live?, chunk*, end.

    Raises ``ServerError`` for an error frame and ``ListenInterrupted`` when the
    stream stops before ``end``.
    """
    async with await H2Connection.connect(url, ssl_context=ssl_context) as conn:
        stream = await conn.request(
            "GET", listen_path(request), [("authorization", f"Bearer {token}")], end_stream=True
        )
        async with stream:
            status = await stream.response_status()
            content_type = stream.header("content-type") or ""
            if not content_type.startswith("application/cbor-seq"):
                body = await stream.read_all(65536)
                raise ClientError(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
            checker = ListenChecker()
            while (data := await stream.receive()) is not None:
                for frame in checker.receive_data(data):
                    if isinstance(frame, Error):
                        raise ServerError.from_frame(frame, status)
                    yield frame
                    if isinstance(frame, End):
                        await _drain(stream, checker)
                        return
            raise ListenInterrupted("the listen stream ended before its end frame")


async def _drain(stream: H2Stream, checker: ListenChecker) -> None:
    """Read to END_STREAM before closing the connection: a clean end for the server,
    which otherwise sees a connection reset in the middle of its last write (stock
    hypercorn 0.18 even crashed on that; our server guards against it, others may not).
    What arrives meanwhile still goes through the checker: a frame after ``end`` is a
    server violation (VXS-6.3-2, VXS-6.2-6), not something to skip.
    """
    with trio.move_on_after(1.0):
        try:
            while (data := await stream.receive()) is not None:
                checker.receive_data(data)
        except ClientError:
            pass


async def collect_frames(frames: AsyncIterator[Frame]) -> ListenResult:
    result = ListenResult()
    async for frame in frames:
        if isinstance(frame, MessageInfo):
            result.info = frame
        elif isinstance(frame, Chunk):
            result.chunks.append(frame)
        elif isinstance(frame, End):
            result.end = frame
        elif isinstance(frame, Live):
            result.live_at = frame.seq
    return result


async def collect(
    url: str, token: str, request: Listen, *, ssl_context: SSLContext | None = None
) -> ListenResult:
    """Listen to the end and return everything received."""
    return await collect_frames(listen(url, token, request, ssl_context=ssl_context))
