"""A small full-duplex HTTP/2 client: the sans-IO ``h2`` state machine on a trio stream.

httpx sends a whole request body before it reads the response (STACK-NOTES), so an
upload that reads acks while it still sends chunks needs its own client.

There is no background task: whichever task needs progress (a ``receive`` waiting
for data, a ``send`` waiting for flow-control window, ``response_status``) reads the
socket itself under a lock and dispatches the events to every stream; the others
wait for that round to finish. Writes are flushed by whoever holds the write lock,
until nothing is pending. Without a nursery a connection can live inside an async
generator (``listener.listen``) without a cancel scope crossing a ``yield``.

Received data is acknowledged (WINDOW_UPDATE) when the application takes it from
``receive``, so the window is real backpressure, and a long listen never stalls.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
from collections import deque
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ..wire import Error

__all__ = [
    "DEFAULT_WINDOW",
    "ClientError",
    "ConnectionLost",
    "H2Connection",
    "H2ConnectionError",
    "H2Stream",
    "ServerError",
    "StreamReset",
]

#: Receive window per stream and for the connection: a listener catching up on a
#: long message must not be throttled by the 64 KiB default (RFC 9113 6.9.2).
DEFAULT_WINDOW: Final = 16 * 1024 * 1024
_READ_SIZE: Final = 65536


class ClientError(Exception):
    """Base of the client's own errors."""


class ServerError(ClientError):
    """The server reported a registry error (an error frame or a REST error body)."""

    def __init__(self, code: int, name: str, detail: str = "", *, status: int | None = None):
        super().__init__(f"{name} ({code}): {detail}" if detail else f"{name} ({code})")
        self.code = code
        self.name = name
        self.detail = detail
        self.status = status

    @classmethod
    def from_frame(cls, frame: Error, status: int | None = None) -> ServerError:
        return cls(frame.code, frame.name, frame.detail, status=status)


class ConnectionLost(ClientError, ConnectionError):
    """The connection to the server failed or was closed (any binding)."""


class H2ConnectionError(ConnectionLost):
    """The HTTP/2 connection failed or was closed (peer, GOAWAY, or the network)."""


class StreamReset(ClientError):
    """The peer reset the stream (RST_STREAM) with ``error_code``."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        super().__init__(f"stream {stream_id} reset by the peer (error code {error_code})")
        self.stream_id = stream_id
        self.error_code = error_code


_Item = tuple[bytes, int] | None | BaseException


class H2Stream:
    """One request/response exchange on an ``H2Connection``."""

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self._items: deque[_Item] = deque()
        self._ended = False  # END_STREAM (or an error) has been taken by receive
        self._error: BaseException | None = None
        self._local_closed = False
        self._remote_ended = False  # the server sent END_STREAM

    # -- events from the connection ------------------------------------------

    def _put(self, item: _Item) -> None:
        self._items.append(item)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            self._items.append(exc)

    # -- the application side ----------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send request body bytes, waiting for flow-control window as needed."""
        conn = self._conn
        view = memoryview(data)
        while view:
            if self._error is not None:
                raise self._error
            state = conn._h2.streams.get(self.stream_id)
            if state is None or state.closed:
                # h2 keeps a closed stream around for a while and reports a window of
                # 0 for it: waiting for window there would wait forever. The server
                # answered and reset the stream (RFC 9113 8.1), or it was cut.
                raise self._error or StreamReset(self.stream_id, 0)
            try:
                window = conn._h2.local_flow_control_window(self.stream_id)
            except h2.exceptions.StreamClosedError:
                raise self._error or StreamReset(self.stream_id, 0) from None
            size = min(window, len(view), conn._h2.max_outbound_frame_size)
            if size <= 0:
                await conn._wait_progress()
                continue
            try:
                conn._h2.send_data(self.stream_id, bytes(view[:size]))
            except h2.exceptions.StreamClosedError:
                # Reset (RFC 9113 8.1: the server answered and wants no more body).
                raise self._error or StreamReset(self.stream_id, 0) from None
            view = view[size:]
            await conn._flush()

    async def end(self) -> None:
        """End the request body (END_STREAM)."""
        if self._local_closed:
            return
        if self._error is not None:
            raise self._error
        self._local_closed = True
        try:
            self._conn._h2.end_stream(self.stream_id)
        except h2.exceptions.StreamClosedError:
            if self._remote_ended:
                return  # RST_STREAM(NO_ERROR) after a complete response (RFC 9113 8.1)
            raise StreamReset(self.stream_id, 0) from None
        await self._conn._flush()

    async def response_status(self) -> int:
        """Wait for the response headers; the ``:status``."""
        while self.status is None:
            if self._error is not None:
                raise self._error
            await self._conn._wait_progress()
        return self.status

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def receive(self) -> bytes | None:
        """The next piece of the response body; None once the response has ended.

        Raises ``StreamReset`` or ``H2ConnectionError`` when the stream is cut.
        """
        while True:
            if self._items:
                item = self._items.popleft()
                if item is None:
                    self._ended = True
                    return None
                if isinstance(item, BaseException):
                    self._items.appendleft(item)  # stays failed
                    raise item
                data, flow = item
                if flow:
                    self._conn._h2.acknowledge_received_data(flow, self.stream_id)
                    await self._conn._flush()
                return data
            if self._ended:
                return None
            await self._conn._wait_progress()

    async def read_all(self, limit: int = 1 << 24) -> bytes:
        body = bytearray()
        while (data := await self.receive()) is not None:
            body += data
            if len(body) > limit:
                raise ClientError(f"response body larger than {limit} bytes")
        return bytes(body)

    async def reset(self) -> None:
        """Cancel the stream (RST_STREAM CANCEL) unless it has already closed."""
        self._conn._streams.pop(self.stream_id, None)
        if self._conn._failure is not None:
            return
        try:
            self._conn._h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.H2Error:
            return
        with contextlib.suppress(H2ConnectionError):
            await self._conn._flush()

    async def __aenter__(self) -> H2Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.reset()


class H2Connection:
    """A client HTTP/2 connection: h2c with prior knowledge, or TLS with ALPN h2."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        scheme: str,
        authority: str,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self._sock = stream
        self.scheme = scheme
        self.authority = authority
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config=config)
        self._streams: dict[int, H2Stream] = {}
        self._read_lock = trio.Lock()
        self._write_lock = trio.Lock()
        self._progress = trio.Event()
        self._failure: H2ConnectionError | None = None
        self._goaway_last_stream: int | None = None
        self._window = window
        self._closed = False
        self._ping_counter = 0
        self._ping_acks: set[bytes] = set()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        window: int = DEFAULT_WINDOW,
        connect_timeout: float = 10.0,
    ) -> H2Connection:
        """Open the TCP (and TLS) connection to ``url`` (``http://`` or ``https://``)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        host = parts.hostname
        port = parts.port or (443 if tls else 80)
        try:
            with trio.fail_after(connect_timeout):
                tcp = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise H2ConnectionError(f"cannot connect to {url}: {exc}") from exc
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream: trio.abc.Stream = tcp
        if tls:
            context = ssl_context or ssl.create_default_context()
            context.set_alpn_protocols(["h2"])
            tls_stream = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
            try:
                with trio.fail_after(connect_timeout):
                    await tls_stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                await trio.aclose_forcefully(tcp)
                raise H2ConnectionError(f"TLS handshake with {url} failed: {exc}") from exc
            if tls_stream.selected_alpn_protocol() != "h2":
                await trio.aclose_forcefully(tls_stream)
                raise H2ConnectionError(f"{url} did not negotiate HTTP/2 (ALPN h2)")
            stream = tls_stream
        default_port = 443 if tls else 80
        authority = host if port == default_port else f"{host}:{port}"
        if ":" in host:
            authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        conn = cls(stream, scheme=parts.scheme, authority=authority, window=window)
        try:
            await conn._start()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return conn

    async def _start(self) -> None:
        self._h2.initiate_connection()
        self._h2.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._window,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            }
        )
        increment = self._window - self._h2.inbound_flow_control_window
        if increment > 0:
            self._h2.increment_flow_control_window(increment)
        await self._flush()

    async def __aenter__(self) -> H2Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Send GOAWAY (best effort) and close the socket."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._failure is None:
                try:
                    self._h2.close_connection()
                    with trio.move_on_after(1):
                        await self._flush()
                except (h2.exceptions.H2Error, H2ConnectionError):
                    pass
        finally:
            # Even when cancelled while saying GOAWAY: the socket is closed.
            self._fail(H2ConnectionError("the connection was closed by the client"))
            await trio.aclose_forcefully(self._sock)

    async def abort(self) -> None:
        """Drop the TCP connection at once, without GOAWAY: what a network failure
        looks like to the server (tests and the conformance model use it)."""
        self._closed = True
        self._fail(H2ConnectionError("the connection was aborted by the client"))
        await trio.aclose_forcefully(self._sock)

    # -- requests --------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        end_stream: bool = False,
    ) -> H2Stream:
        """Start a request; with ``end_stream=False`` the body follows via ``send``."""
        if self._failure is not None:
            raise self._failure
        if self._goaway_last_stream is not None:
            raise H2ConnectionError("the server sent GOAWAY; open a new connection")
        stream_id = self._h2.get_next_available_stream_id()
        all_headers = [
            (":method", method),
            (":scheme", self.scheme),
            (":authority", self.authority),
            (":path", path),
            *((k.lower(), v) for k, v in (headers or [])),
        ]
        stream = H2Stream(self, stream_id)
        self._streams[stream_id] = stream
        self._h2.send_headers(stream_id, all_headers, end_stream=end_stream)
        stream._local_closed = end_stream
        await self._flush()
        return stream

    async def ping(self) -> None:
        """Send PING and wait for its ACK: the server has processed all sent before it."""
        if self._failure is not None:
            raise self._failure
        self._ping_counter += 1
        opaque = self._ping_counter.to_bytes(8, "big")
        self._h2.ping(opaque)
        await self._flush()
        while opaque not in self._ping_acks:
            await self._wait_progress()
        self._ping_acks.discard(opaque)

    # -- I/O -------------------------------------------------------------------

    def _fail(self, exc: H2ConnectionError) -> None:
        if self._failure is None:
            self._failure = exc
        for stream in self._streams.values():
            stream._fail(self._failure)
        self._streams.clear()
        self._wake()

    def _wake(self) -> None:
        event, self._progress = self._progress, trio.Event()
        event.set()

    async def _flush(self) -> None:
        """Write what h2 has pending; the holder of the write lock writes it all."""
        if self._write_lock.locked():
            return  # the holder loops until nothing is pending
        async with self._write_lock:
            while data := self._h2.data_to_send():
                if self._failure is not None:
                    raise self._failure
                try:
                    await self._sock.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._fail(H2ConnectionError(f"connection lost while sending: {exc}"))
                    raise self._failure from exc  # type: ignore[misc]

    async def _wait_progress(self) -> None:
        """Read one batch from the socket, or wait for the task that is reading."""
        if self._failure is not None:
            raise self._failure
        if self._read_lock.locked():
            await self._progress.wait()
            return
        try:
            async with self._read_lock:
                try:
                    data = await self._sock.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._fail(H2ConnectionError(f"connection lost: {exc}"))
                    raise self._failure from exc  # type: ignore[misc]
                if not data:
                    self._fail(H2ConnectionError("the server closed the connection"))
                    raise self._failure  # type: ignore[misc]
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.H2Error as exc:
                    self._fail(H2ConnectionError(f"HTTP/2 protocol error: {exc}"))
                    raise self._failure from exc  # type: ignore[misc]
                for event in events:
                    self._dispatch(event)
        finally:
            # Also when cancelled: whoever waited must get a chance to read.
            self._wake()
        await self._flush()

    def _dispatch(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        stream = self._streams.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived):
            if stream is not None:
                stream.headers = [(str(k), str(v)) for k, v in event.headers or []]
                status = stream.header(":status")
                stream.status = int(status) if status else 0
        elif isinstance(event, h2.events.DataReceived):
            data = event.data or b""
            flow = event.flow_controlled_length or 0
            if stream is not None:
                stream._put((data, flow))
            elif flow:
                self._h2.acknowledge_received_data(flow, event.stream_id or 0)
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                stream._remote_ended = True
                stream._put(None)
                self._streams.pop(stream.stream_id, None)
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                stream._fail(StreamReset(stream.stream_id, int(event.error_code or 0)))
                self._streams.pop(stream.stream_id, None)
        elif isinstance(event, h2.events.PingAckReceived):
            self._ping_acks.add(bytes(event.ping_data or b""))
        elif isinstance(event, h2.events.ConnectionTerminated):
            last = event.last_stream_id if event.last_stream_id is not None else math.inf
            self._goaway_last_stream = int(min(last, 2**31 - 1))
            error = H2ConnectionError(f"the server sent GOAWAY (error code {event.error_code})")
            for sid in [s for s in self._streams if s > self._goaway_last_stream]:
                self._streams.pop(sid)._fail(error)
