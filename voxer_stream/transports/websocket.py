"""The WebSocket binding (spec section 11): the same frames, one per message.

One operation per connection (VXS-11-4): after an optional ``auth`` frame the
first frame is ``open`` (the connection is an upload, exactly as the HTTP/2
request body) or ``listen``. Browsers cannot set an Authorization header on a
WebSocket, hence the ``auth`` frame (VXS-11-3).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

import trio

from ..pipeline import ListenSession, UploadSession
from ..store.base import Account, MessageRecord
from ..wire import (
    MAX_FRAME_SIZE,
    Auth,
    Error,
    ErrorCode,
    Frame,
    Listen,
    Open,
    ProtocolError,
    decode_frame,
    encode_frame,
)
from .streams import Receive, Scope, Send, Services, authenticate, header
from .wsserver import WebSocketConnection

SUBPROTOCOL: Final = "voxer-stream.v1"
CLOSE_NORMAL: Final = 1000
CLOSE_ERROR_BASE: Final = 4000


class WebSocketSink:
    """Frames as binary WebSocket messages; an error closes with 4000 + code."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.closed = False

    async def send(self, frames: Sequence[bytes]) -> None:
        if self.closed:
            return  # the peer is gone; its task is being cancelled
        for frame in frames:
            await self._send({"type": "websocket.send", "bytes": frame})

    async def fail(self, exc: ProtocolError, data: bytes) -> None:
        if self.closed:
            return
        await self._send({"type": "websocket.send", "bytes": data})
        await self.close(CLOSE_ERROR_BASE + int(exc.code), exc.code.name)

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class DirectWebSocketSink(WebSocketSink):
    """A ``WebSocketSink`` on a ``wsserver`` connection, which is also a ``DirectSink``:
    at the live edge ``publish`` writes each chunk to the connection itself."""

    def __init__(self, send: Send, connection: WebSocketConnection) -> None:
        super().__init__(send)
        self._connection = connection

    def try_send(self, frame: bytes) -> bool:
        return not self.closed and self._connection.try_send(frame)

    def flush(self) -> None:
        self._connection.flush()


class _Disconnected(Exception):
    pass


async def _next_message(receive: Receive) -> bytes:
    """The next binary message; a text message is not a frame (VXS-11-2)."""
    message = await receive()
    if message["type"] == "websocket.disconnect":
        raise _Disconnected
    data = message.get("bytes")
    if data is None:
        raise ProtocolError(ErrorCode.INVALID_FRAME, "frames travel in binary messages", "VXS-11-2")
    if len(data) > MAX_FRAME_SIZE:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"message of {len(data)} bytes", "VXS-3.2-1")
    return bytes(data)


async def _next_frame(receive: Receive) -> tuple[Frame, bytes]:
    data = await _next_message(receive)
    return decode_frame(data), data


async def serve_websocket(scope: Scope, receive: Receive, send: Send, services: Services) -> None:
    """``/v1/ws``: accept, authenticate, then run one upload or one listen."""
    if (await receive())["type"] != "websocket.connect":
        return
    offered = scope.get("subprotocols") or []
    accept: dict[str, object] = {"type": "websocket.accept"}
    if SUBPROTOCOL in offered:
        accept["subprotocol"] = SUBPROTOCOL
    await send(accept)
    connection = scope.get("extensions", {}).get("voxer.ws")
    sink = (
        DirectWebSocketSink(send, connection)
        if isinstance(connection, WebSocketConnection)
        else WebSocketSink(send)
    )
    try:
        await _run(scope, receive, sink, services)
    except _Disconnected:
        sink.closed = True
    except ProtocolError as exc:
        await sink.fail(exc, encode_frame(Error.from_exception(exc)))
    await sink.close()


async def _run(scope: Scope, receive: Receive, sink: WebSocketSink, services: Services) -> None:
    frame, data = await _next_frame(receive)
    if isinstance(frame, Auth):  # the frame wins over a header (VXS-11-3)
        account = await authenticate(services, f"Bearer {frame.token}")
        frame, data = await _next_frame(receive)
    else:
        account = await authenticate(services, header(scope, b"authorization"))
    if isinstance(frame, Open):
        await _upload(receive, sink, services, account, data)
    elif isinstance(frame, Listen):
        await _listen(receive, sink, services, account, frame)
    else:
        raise ProtocolError(
            ErrorCode.UNEXPECTED_FRAME, f"{frame.TYPE!r} cannot start an operation", "VXS-11-4"
        )


async def _upload(
    receive: Receive, sink: WebSocketSink, services: Services, account: Account, first: bytes
) -> None:
    async def authorize(thread_id: str) -> None:
        await services.threads.can_post(account, thread_id)

    async def frames() -> AsyncIterator[bytes]:
        yield first
        while True:
            try:
                _, data = await _next_frame(receive)
            except _Disconnected:
                sink.closed = True
                return
            yield data

    session = UploadSession(services.hub, account.id, authorize, sink)
    await session.run(frames())


async def _listen(
    receive: Receive, sink: WebSocketSink, services: Services, account: Account, request: Listen
) -> None:
    async def authorize(record: MessageRecord) -> None:
        await services.threads.can_listen(account, record)

    violations: list[ProtocolError] = []

    async def watch(cancel_scope: trio.CancelScope) -> None:
        # A listener sends nothing more; anything but a disconnect is a mistake.
        try:
            await _next_message(receive)
            violations.append(
                ProtocolError(ErrorCode.UNEXPECTED_FRAME, "no frames after listen", "VXS-11-4")
            )
        except _Disconnected:
            sink.closed = True
        except ProtocolError as exc:
            violations.append(exc)
        cancel_scope.cancel()

    session = ListenSession(services.hub, request, authorize, sink)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        await session.run()
        nursery.cancel_scope.cancel()
    if violations:
        raise violations[0]
