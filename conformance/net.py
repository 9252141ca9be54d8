"""The suite's side of the wire: requests, streams and WebSocket, with every server frame checked.

Everything a server sends passes through ``FrameReader``, which splits the CBOR
sequence with cbor2 (not with the reference implementation's own scanner), validates
each item against ``proto/frames.cddl`` with pycddl, decodes it with the sans-IO
``wire`` package (as any client would), and checks each ``error`` frame's code and
name against the registry read from the spec. A server that emits a malformed or
invalid frame therefore fails whichever case received it, naming the requirement.

Transport trouble the case did not ask for (no answer in time, a reset stream, a
dropped connection) raises ``TransportFailure``; the runner turns it into a failure
of the case's own requirements.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import cbor2
import pycddl
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from voxer_stream.client.h2conn import H2Connection, H2ConnectionError, H2Stream, StreamReset
from voxer_stream.wire import Error, Frame, ProtocolError, decode_frame, encode_frame

from .case import CaseFailed
from .spec import CDDL_PATH, registry

__all__ = [
    "Exchange",
    "FrameReader",
    "Reply",
    "TransportFailure",
    "WebSocket",
    "WsReply",
    "as_bytes",
]

CBOR_SEQ: Final = "application/cbor-seq"


class TransportFailure(Exception):
    """The server did not answer as the binding requires (timeout, reset, connection lost)."""


def _schema() -> pycddl.Schema:
    text = CDDL_PATH.read_text(encoding="utf-8")
    # pycddl 0.6 does not anchor .regexp (RFC 8610 says the whole string must match).
    return pycddl.Schema(
        text.replace('.regexp "[A-Za-z0-9_-]{1,64}"', '.regexp "^[A-Za-z0-9_-]{1,64}$"')
    )


#: proto/frames.cddl, for whoever checks frames (server frames here, client frames in the peer).
SCHEMA: Final = _schema()


def as_bytes(frame: Frame | bytes) -> bytes:
    return frame if isinstance(frame, bytes) else encode_frame(frame)


def check_item(item: bytes) -> Frame:
    """One encoded server frame -> the frame, or ``CaseFailed`` naming what it breaks."""
    try:
        SCHEMA.validate_cbor(item)
    except Exception as exc:  # pycddl raises ValidationError (a plain Exception)
        raise CaseFailed(
            "VXS-3.1-4", f"the server sent a frame that proto/frames.cddl rejects: {exc}"
        ) from None
    try:
        frame = decode_frame(item)
    except ProtocolError as exc:
        raise CaseFailed(
            ("VXS-3.1-3", "VXS-3.1-4"), f"the server sent an invalid frame: {exc}"
        ) from None
    if isinstance(frame, Error):
        entry = registry().get(frame.code)
        if entry is None or entry.name != frame.name:
            raise CaseFailed(
                "VXS-9-1",
                f"error frame code {frame.code} with name {frame.name!r} is not a pair of "
                "the registry",
            )
    return frame


class FrameReader:
    """Bytes in, checked frames out: a CBOR-sequence splitter that trusts nothing."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.raw: list[bytes] = []

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while self._buf:
            source = io.BytesIO(bytes(self._buf))
            try:
                cbor2.CBORDecoder(source).decode()
            except cbor2.CBORDecodeEOF:
                break  # the rest of the item is still on its way
            except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
                raise CaseFailed(
                    "VXS-3.1-1", f"the server sent bytes that are not a CBOR item: {exc}"
                ) from None
            size = source.tell()
            item = bytes(self._buf[:size])
            del self._buf[:size]
            self.raw.append(item)
            frames.append(check_item(item))
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)

    def finish(self) -> None:
        if self._buf:
            raise CaseFailed(
                "VXS-3.1-1", f"the response ended inside a CBOR item ({len(self._buf)} bytes)"
            )


@dataclass
class Reply:
    """A whole HTTP/2 exchange: status, headers, the checked frames of the body."""

    status: int
    headers: dict[str, str]
    frames: list[Frame]
    raw: list[bytes] = field(default_factory=list)
    ended: bool = True  # END_STREAM received
    reset_code: int | None = None  # RST_STREAM after the response, if any

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def error(self) -> Error | None:
        last = self.frames[-1] if self.frames else None
        return last if isinstance(last, Error) else None


class Exchange:
    """One HTTP/2 request whose body the case writes and whose response it reads frame by frame.

    ``send`` treats RST_STREAM(NO_ERROR) after a complete response as the end of the
    request body (VXS-10-8), as a conforming client must.
    """

    def __init__(self, conn: H2Connection, stream: H2Stream, timeout: float) -> None:
        self.conn = conn
        self.stream = stream
        self.timeout = timeout
        self.reader = FrameReader()
        self._queue: list[Frame] = []
        self.ended = False
        self.body_stopped = False
        self.reset_code: int | None = None

    async def send(self, *frames: Frame | bytes) -> None:
        data = b"".join(as_bytes(f) for f in frames)
        if self.body_stopped:
            return
        try:
            with trio.fail_after(self.timeout):
                await self.stream.send(data)
        except StreamReset as exc:
            self.reset_code = exc.error_code
            self.body_stopped = True
        except trio.TooSlowError:
            raise TransportFailure(
                f"the server took no request body for {self.timeout:g} s"
            ) from None
        except H2ConnectionError as exc:
            raise TransportFailure(f"connection lost while sending: {exc}") from None

    async def end(self) -> None:
        if self.body_stopped:
            return
        try:
            await self.stream.end()
        except StreamReset as exc:
            self.reset_code = exc.error_code
            self.body_stopped = True
        except H2ConnectionError as exc:
            raise TransportFailure(f"connection lost while ending the body: {exc}") from None

    async def status(self) -> int:
        try:
            with trio.fail_after(self.timeout):
                return await self.stream.response_status()
        except trio.TooSlowError:
            raise TransportFailure(f"no response headers within {self.timeout:g} s") from None
        except (StreamReset, H2ConnectionError) as exc:
            raise TransportFailure(f"no response: {exc}") from None

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.stream.headers)

    async def frame(self, within: float | None = None) -> Frame | None:
        """The next frame of the response; None once the response has ended."""
        limit = self.timeout if within is None else within
        try:
            with trio.fail_after(limit):
                while not self._queue:
                    if self.ended:
                        return None
                    data = await self.stream.receive()
                    if data is None:
                        self.ended = True
                        self.reader.finish()
                        continue
                    self._queue.extend(self.reader.feed(data))
        except trio.TooSlowError:
            raise TransportFailure(f"no frame within {limit:g} s") from None
        except StreamReset as exc:
            raise TransportFailure(
                f"the server reset the stream (error code {exc.error_code}) "
                "before the response ended"
            ) from None
        except H2ConnectionError as exc:
            raise TransportFailure(f"connection lost: {exc}") from None
        return self._queue.pop(0)

    async def frames(self, within: float | None = None) -> list[Frame]:
        """Every remaining frame, up to the end of the response."""
        found: list[Frame] = []
        while (frame := await self.frame(within)) is not None:
            found.append(frame)
        return found

    async def no_frame_within(self, seconds: float) -> Frame | None:
        """The next frame if one arrives within ``seconds``, else None (nothing is lost)."""
        try:
            return await self.frame(within=seconds)
        except TransportFailure:
            if self._queue:
                return self._queue.pop(0)
            return None

    async def reply(self) -> Reply:
        status = await self.status()
        frames = await self.frames()
        return Reply(status, self.headers, frames, list(self.reader.raw), True, self.reset_code)

    async def cancel(self) -> None:
        await self.stream.reset()


@asynccontextmanager
async def open_exchange(
    url: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    end_stream: bool = False,
    patience: float = 10.0,
    window: int | None = None,
    conn: H2Connection | None = None,
) -> AsyncIterator[Exchange]:
    """One request on a new HTTP/2 connection (or on ``conn``, which the caller owns)."""
    all_headers = list(headers)
    if token is not None:
        all_headers.append(("authorization", f"Bearer {token}"))
    own = conn is None
    if conn is None:
        try:
            if window is None:
                conn = await H2Connection.connect(url)
            else:
                conn = await H2Connection.connect(url, window=window)
        except H2ConnectionError as exc:
            raise TransportFailure(str(exc)) from None
    try:
        stream = await conn.request(method, path, all_headers, end_stream=end_stream)
        try:
            yield Exchange(conn, stream, patience)
        finally:
            with trio.CancelScope(shield=True):
                await stream.reset()
    except H2ConnectionError as exc:
        raise TransportFailure(str(exc)) from None
    finally:
        if own:
            with trio.CancelScope(shield=True):
                await conn.aclose()


def listen_path(msg: str, **params: Any) -> str:
    """``/v1/messages/{msg}/listen?...``; values are sent as given (str() of each)."""
    query = urlencode({k: str(v) for k, v in params.items() if v is not None})
    return f"/v1/messages/{msg}/listen" + (f"?{query}" if query else "")


# -- WebSocket ------------------------------------------------------------------


def ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/v1/ws", "", ""))


@dataclass
class WsReply:
    frames: list[Frame]
    close_code: int | None
    text_messages: int = 0


class WebSocket:
    """A WebSocket on ``/v1/ws`` whose binary messages are checked one frame each (VXS-11-2)."""

    def __init__(self, ws: WebSocketConnection, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        self.text_messages = 0
        self.closed_code: int | None = None
        self.raw: list[bytes] = []

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    async def send(self, *frames: Frame | bytes | str) -> None:
        for frame in frames:
            try:
                if isinstance(frame, str):
                    await self.ws.send_message(frame)
                else:
                    await self.ws.send_message(as_bytes(frame))
            except ConnectionClosed:
                return  # the server closed first; what it said is read by frame()

    async def frame(self, within: float | None = None) -> Frame | None:
        """The next frame, or None once the server closed the WebSocket."""
        limit = self.timeout if within is None else within
        while True:
            try:
                with trio.fail_after(limit):
                    message = await self.ws.get_message()
            except ConnectionClosed as exc:
                self.closed_code = exc.reason.code if exc.reason else None
                return None
            except trio.TooSlowError:
                raise TransportFailure(f"no WebSocket message within {limit:g} s") from None
            if isinstance(message, str):
                self.text_messages += 1
                raise CaseFailed("VXS-11-6", "the server sent a text WebSocket message")
            item = bytes(message)
            self.raw.append(item)
            reader = FrameReader()
            frames = reader.feed(item)
            if len(frames) != 1 or reader.pending:
                raise CaseFailed(
                    "VXS-11-2",
                    f"a binary WebSocket message held {len(frames)} frames "
                    f"and {reader.pending} stray bytes, not exactly one frame",
                )
            return frames[0]

    async def frames(self, within: float | None = None) -> WsReply:
        """Every frame up to the server's close, and its close code."""
        found: list[Frame] = []
        while (frame := await self.frame(within)) is not None:
            found.append(frame)
        return WsReply(found, self.closed_code, self.text_messages)


@asynccontextmanager
async def open_websocket(
    url: str,
    *,
    header_token: str | None = None,
    subprotocols: Sequence[str] = ("voxer-stream.v1",),
    patience: float = 10.0,
) -> AsyncIterator[WebSocket]:
    headers = [(b"authorization", f"Bearer {header_token}".encode())] if header_token else None
    ws: Any = None
    try:
        async with open_websocket_url(
            ws_url(url),
            subprotocols=list(subprotocols) or None,
            extra_headers=headers,
            connect_timeout=patience,
            disconnect_timeout=patience,
        ) as ws:
            yield WebSocket(ws, patience)
    except (HandshakeError, OSError) as exc:
        raise TransportFailure(f"WebSocket handshake with {ws_url(url)} failed: {exc}") from None
    finally:
        # trio-websocket 0.12 leaks the TCP stream when the server closes first.
        stream = getattr(ws, "_stream", None)
        if stream is not None:
            await trio.aclose_forcefully(stream)
