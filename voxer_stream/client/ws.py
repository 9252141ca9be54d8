"""Talk and listen over the WebSocket binding (``/v1/ws``, subprotocol voxer-stream.v1).

One frame per binary message; an ``auth`` frame first, then ``open`` (an upload)
or ``listen``. The upload shares ``talker.run_upload`` (with its resume logic).
``ws_listen`` holds trio-websocket's connection (which runs a background task)
across its ``yield``: consume it to the end, or wrap it in ``contextlib.aclosing``
in the same task.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from ssl import SSLContext
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from ..wire import Auth, Chunk, Closed, End, Error, Frame, Listen, Open, encode_frame
from ..wire.listen import ListenChecker
from .h2conn import ConnectionLost, ServerError
from .listener import ListenInterrupted, ListenResult, collect_frames
from .talker import AckCallback, Opener, UploadChannel, run_upload

__all__ = ["SUBPROTOCOL", "open_ws", "ws_collect", "ws_listen", "ws_talk", "ws_url"]

SUBPROTOCOL: Final = "voxer-stream.v1"


def ws_url(url: str) -> str:
    """``http://host:port`` -> ``ws://host:port/v1/ws`` (``https`` -> ``wss``)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/v1/ws", "", ""))


@asynccontextmanager
async def open_ws(
    url: str, token: str | None, ssl_context: SSLContext | None = None
) -> AsyncIterator[Any]:
    """A trio-websocket connection to ``/v1/ws``; sends the ``auth`` frame if ``token``."""
    ws: Any = None
    try:
        async with open_websocket_url(
            ws_url(url), ssl_context=ssl_context, subprotocols=[SUBPROTOCOL]
        ) as ws:
            if token is not None:
                await ws.send_message(encode_frame(Auth(token=token)))
            yield ws
    except (HandshakeError, OSError) as exc:
        raise ConnectionLost(f"WebSocket connection to {url} failed: {exc}") from exc
    finally:
        # trio-websocket 0.12.2 never closes the TCP stream when the server closes
        # the WebSocket first (its reader stops at EOF, and aclose() returns early
        # once a close reason is set): the socket leaks with a ResourceWarning.
        stream = getattr(ws, "_stream", None)
        if stream is not None:
            await trio.aclose_forcefully(stream)


class _WsUploadChannel:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, frames: Sequence[bytes]) -> None:
        try:
            for frame in frames:
                await self.ws.send_message(frame)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"WebSocket closed: {exc.reason}") from exc

    async def receive(self) -> bytes | None:
        try:
            message = await self.ws.get_message()
        except ConnectionClosed:
            return None
        return message if isinstance(message, bytes) else message.encode()

    async def end(self) -> None:
        return None


async def ws_talk(
    url: str,
    token: str,
    open_frame: Open,
    chunks: AsyncIterable[Chunk] | Iterable[Chunk],
    *,
    ssl_context: SSLContext | None = None,
    max_resumes: int = 5,
    on_ack: AckCallback | None = None,
) -> Closed:
    """``talker.talk`` over WebSocket."""

    @asynccontextmanager
    async def opener() -> AsyncIterator[UploadChannel]:
        async with open_ws(url, token, ssl_context) as ws:
            yield _WsUploadChannel(ws)

    open_: Opener = opener
    return await run_upload(open_, open_frame, chunks, max_resumes=max_resumes, on_ack=on_ack)


async def ws_listen(
    url: str, token: str, request: Listen, *, ssl_context: SSLContext | None = None
) -> AsyncIterator[Frame]:
    """``listener.listen`` over WebSocket."""
    async with open_ws(url, token, ssl_context) as ws:
        await ws.send_message(encode_frame(request))
        checker = ListenChecker()
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                break
            for frame in checker.receive_data(message):
                if isinstance(frame, Error):
                    raise ServerError.from_frame(frame)
                yield frame
                if isinstance(frame, End):
                    return
        await trio.lowlevel.checkpoint()
        raise ListenInterrupted("the WebSocket closed before the end frame")


async def ws_collect(
    url: str, token: str, request: Listen, *, ssl_context: SSLContext | None = None
) -> ListenResult:
    return await collect_frames(ws_listen(url, token, request, ssl_context=ssl_context))
