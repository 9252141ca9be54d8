"""HTTP/2 connections served with the ``h2`` state machine directly on trio sockets.

Why not hypercorn for HTTP/2: fanning one chunk out to N listeners is the number
this server is judged on, and hypercorn's per-stream machinery (an app task, an
ASGI message, a stream buffer, a send task and a lock per frame) cost about
100 us of CPU per delivered chunk, five times a raw socket write. Here a
listener at the live edge costs one ``h2`` DATA frame and, for a connection of
its own, one non-blocking ``send``, made synchronously from the talker's
``publish`` (see ``Http2Stream.try_send`` and ``LiveMessage.follow``): no task
wakes up per delivery.

Everything that is not the live path keeps going through the ASGI app (REST on
Quart, upload and listen in ``streams.py``): each request runs the app in a
task of its own with an ASGI ``scope``/``receive``/``send`` built here, the way
hypercorn would. The listen handler finds this connection's stream in
``scope["extensions"]["voxer.h2"]`` and uses it as its sink.

Output: every change to the ``h2`` state is followed by ``flush``, which hands
``data_to_send()`` to ``output.Output``: to the socket at once when it takes it,
else to the connection's writer task. A stream whose connection holds more than
``HIGH_WATER`` unsent bytes waits (``send``) or is refused (``try_send``).

Input: one reader task per connection feeds ``h2`` and dispatches its events.
Request bodies reach the app through an unbounded memory channel, bounded in
fact by the flow-control window we advertise; a piece's window credit is given
back when the app has taken it, so a slow consumer slows its sender instead of
growing a buffer. A response that ends before its request body does resets
the stream with NO_ERROR (RFC 9113 section 8.1), and the connection window is
returned for whatever arrives afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import trio

from .h2quiet import QuietH2Connection
from .output import HIGH_WATER, Output
from .peer import Peer

log = logging.getLogger(__name__)

#: The HTTP/2 client connection preface (RFC 9113 section 3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RECEIVE_SIZE: Final = 65536
#: A DATA frame's header: 24-bit length (as 8 + 16 bits), type 0, flags, stream id.
_DATA_HEADER: Final = struct.Struct(">BHBBL")
#: Stream states in which a DATA frame may be sent (RFC 9113 section 5.1).
_SENDING_STATES: Final = frozenset(
    {h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE}
)
#: Connection-specific header fields, which HTTP/2 forbids (RFC 9113 section 8.2.2);
#: an ASGI app written for HTTP/1.1 may still set them.
CONNECTION_HEADERS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Http2Settings:
    max_streams: int = 2000
    #: Seconds a connection with no open stream is kept before GOAWAY.
    keep_alive: float = 75.0
    max_header_list_size: int = 65536


@dataclass(eq=False)
class Http2Stream:
    """One request/response exchange on an ``Http2Connection``."""

    conn: Http2Connection
    id: int
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    headers_sent: bool = False
    #: We have sent END_STREAM (or given up on the stream).
    ended: bool = False
    #: The client has sent END_STREAM.
    remote_ended: bool = False
    #: The client reset the stream or the connection went away.
    gone: bool = False
    #: Set when the client is gone (reset, connection lost) or the response is done:
    #: what ASGI calls ``http.disconnect``.
    closed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._body_in, self._body_out = trio.open_memory_channel[tuple[bytes, int]](math.inf)

    # -- request body ---------------------------------------------------------

    async def receive_body(self) -> bytes | None:
        """The next piece of the request body; None at its end (or once the stream is gone)."""
        try:
            data, credit = await self._body_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None
        self.conn.give_credit(self.id, credit)
        return data

    def _drop_body(self) -> None:
        """Return the window credit of body pieces nobody will read."""
        while True:
            try:
                _, credit = self._body_out.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            self.conn.give_credit(self.id, credit)
        self._body_out.close()

    # -- response -------------------------------------------------------------

    def start(self, status: int, headers: list[tuple[bytes, bytes]], *, end: bool = False) -> None:
        if self.gone or self.headers_sent:
            return
        self.headers_sent = True
        self.ended = end
        try:
            self.conn.h2.send_headers(
                self.id, [(b":status", str(status).encode()), *headers], end_stream=end
            )
        except h2.exceptions.H2Error:
            log.exception("could not send the response headers of stream %d", self.id)
            self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        self.conn.flush()

    def try_send(self, data: bytes) -> bool:
        """Write ``data`` as one DATA frame now if flow control and the connection's
        buffer allow it; False (nothing written) otherwise. Never waits: this is what
        ``LiveMessage.publish`` calls for every listener at the live edge. The caller
        calls ``flush`` after a batch of these.

        The frame is built here rather than by ``H2Connection.send_data``, which costs
        about 6 us of object building per call, most of a delivery's cost at 1,000
        listeners: a plain DATA frame (no padding, no END_STREAM) changes nothing in
        ``h2``'s state machines, only the two send windows, which are decremented here
        exactly as ``send_data`` would (``tests/test_h2server.py`` checks the frames
        and windows against ``send_data`` itself)."""
        conn = self.conn
        if self.gone or self.ended or not self.headers_sent or conn.buffered > HIGH_WATER:
            return False
        size = len(data)
        machine = conn.h2
        stream = machine.streams.get(self.id)
        if (
            stream is None
            or size > machine.max_outbound_frame_size
            or size > machine.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
            or stream.state_machine.state not in _SENDING_STATES
            or machine.state_machine.state is not h2.connection.ConnectionState.SERVER_OPEN
        ):
            return False
        machine.outbound_flow_control_window -= size
        stream.outbound_flow_control_window -= size
        conn.queue(_DATA_HEADER.pack(size >> 16, size & 0xFFFF, 0, 0, self.id) + data)
        return True

    def flush(self) -> None:
        self.conn.flush()

    async def send(self, data: bytes, *, end: bool = False) -> None:
        """Write ``data``, waiting for flow-control credit and buffer room as needed.
        A stream that is gone swallows what is sent (its task is being cancelled).

        Every frame written is followed by a checkpoint: a listener catching up on a
        long backlog from memory would otherwise hold the event loop for the whole of
        it (nothing else it does waits), and the live path, the talker's ``publish``
        included, would wait behind it."""
        conn = self.conn
        view = memoryview(data)
        await trio.lowlevel.checkpoint_if_cancelled()
        while view or end:
            if self.gone or self.ended:
                return
            try:
                window = conn.h2.local_flow_control_window(self.id)
            except h2.exceptions.H2Error:
                self.gone = True
                return
            room = min(window, conn.h2.max_outbound_frame_size)
            if (room <= 0 and view) or conn.buffered > HIGH_WATER:
                await conn.wait_progress()
                continue
            piece = view[:room]
            view = view[len(piece) :]
            last = end and not view
            try:
                if piece:
                    conn.h2.send_data(self.id, piece.tobytes(), end_stream=last)
                elif last:
                    conn.h2.end_stream(self.id)
            except h2.exceptions.H2Error:
                self.gone = True
                return
            if last:
                self.ended = True
                end = False
            conn.flush()
            await trio.lowlevel.checkpoint()

    def reset(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        if self.gone:
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self.conn.h2.reset_stream(self.id, code)
        self.gone = self.ended = True
        self.conn.flush()


class Http2Connection:
    """The server side of one HTTP/2 connection (prior knowledge, or ALPN ``h2``)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        app: App,
        peer: Peer,
        *,
        settings: Http2Settings,
        initial: bytes = b"",
    ) -> None:
        self.stream = stream
        self.app = app
        self.settings = settings
        self.peer = peer
        self._initial = initial
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = QuietH2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.streams: dict[int, Http2Stream] = {}
        self.output = Output(stream, self._lost)
        self._queued: list[bytes] = []

    @property
    def buffered(self) -> int:
        return self.output.buffered

    def queue(self, frame: bytes) -> None:
        """A frame built outside ``h2`` (``Http2Stream.try_send``), sent at ``flush``,
        after whatever ``h2`` had to send before it."""
        if not self._queued:
            self._queued.append(self.h2.data_to_send())
        self._queued.append(frame)

    def flush(self) -> None:
        """Hand what ``h2`` has to send (and what was queued) to the output."""
        data = self.h2.data_to_send()
        if self._queued:
            self._queued.append(data)
            data = b"".join(self._queued)
            self._queued.clear()
        self.output.write(data)

    async def wait_progress(self) -> None:
        """Wait until flow-control credit arrives, the output drains, or a stream closes."""
        await self.output.wait_progress()

    def give_credit(self, stream_id: int, credit: int) -> None:
        if credit and not self.output.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.acknowledge_received_data(credit, stream_id)
            self.flush()

    def _lost(self) -> None:
        """The socket is gone (``Output`` calls this once): every stream is too."""
        for stream in self.streams.values():
            self._stream_gone(stream)

    def _stream_gone(self, stream: Http2Stream) -> None:
        stream.gone = True
        stream.closed.set()
        stream._body_in.close()
        stream.cancel_scope.cancel()

    # -- input ----------------------------------------------------------------

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.flush()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.output.run)
                if not self._initial or self._receive(self._initial):
                    await self._read_loop()
                else:
                    await self.output.drain()
                # The client closed or broke the connection (or we said GOAWAY):
                # nothing more arrives and nothing more can be sent.
                self.output.lost()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await self.output.aclose()

    async def _read_loop(self) -> None:
        while not self.output.closed:
            idle = self.settings.keep_alive if not self.streams else math.inf
            with trio.move_on_after(idle) as timer:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if timer.cancelled_caught:
                self.h2.close_connection()
                self.flush()
                await self.output.drain()
                return
            if not data:
                return
            if not self._receive(data):
                await self.output.drain()
                return

    def _receive(self, data: bytes | bytearray) -> bool:
        """Feed ``h2``; False when the connection must end (a protocol error: GOAWAY sent)."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("HTTP/2 connection error from %s: %s", self.peer.client, exc)
            self.flush()
            return False
        for event in events:
            self._dispatch(event)
        self.flush()
        return not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            stream = Http2Stream(self, event.stream_id)
            self.streams[stream.id] = stream
            self._nursery.start_soon(self._serve, stream, list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.data is not None
            credit = event.flow_controlled_length or 0
            target = self.streams.get(event.stream_id)
            try:
                if target is None:
                    raise trio.ClosedResourceError
                target._body_in.send_nowait((event.data, credit))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self.give_credit(event.stream_id, credit)
        elif isinstance(event, h2.events.StreamEnded):
            target = self.streams.get(event.stream_id or 0)
            if target is not None:
                target.remote_ended = True
                target._body_in.close()
        elif isinstance(event, h2.events.StreamReset):
            target = self.streams.get(event.stream_id or 0)
            if target is not None:
                self._stream_gone(target)
            self.output.wake()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.output.wake()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.output.lost()

    # -- the ASGI bridge ------------------------------------------------------

    def _scope(self, stream: Http2Stream, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        method = path = b""
        plain: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                plain.insert(0, (b"host", value))
            elif not name.startswith(b":"):
                plain.append((name, value))
        raw_path, _, query = path.partition(b"?")
        return {
            "type": "http",
            "asgi": {"spec_version": "2.1", "version": "3.0"},
            "http_version": "2",
            "method": method.decode("ascii").upper(),
            "scheme": self.peer.scheme,
            "path": unquote(raw_path.decode("ascii", "replace")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": plain,
            "client": self.peer.client,
            "server": self.peer.server,
            "state": dict(self.peer.state),
            "extensions": {"http.response.trailers": {}, "voxer.h2": stream},
        }

    async def _serve(self, stream: Http2Stream, headers: list[tuple[bytes, bytes]]) -> None:
        scope = self._scope(stream, headers)
        body_done = False

        async def receive() -> dict[str, Any]:
            nonlocal body_done
            if not body_done:
                data = await stream.receive_body()
                if data is not None:
                    return {"type": "http.request", "body": data, "more_body": True}
                body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await stream.closed.wait()
            return {"type": "http.disconnect"}

        response: dict[str, Any] = {}

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                response.update(message)
                return
            if kind != "http.response.body":
                return
            more = bool(message.get("more_body", False))
            data = bytes(message.get("body", b""))
            if not stream.headers_sent:
                headers = [(bytes(k).lower(), bytes(v)) for k, v in response.get("headers", [])]
                stream.start(
                    int(response.get("status", 200)),
                    [(k, v) for k, v in headers if k not in CONNECTION_HEADERS],
                    end=not more and not data,
                )
            if data or not more:
                await stream.send(data, end=not more)

        try:
            with stream.cancel_scope:
                await self.app(scope, receive, send)
        except Exception:
            log.exception("error serving %s %s", scope["method"], scope["path"])
            if not stream.headers_sent:
                stream.start(500, [(b"content-length", b"0")], end=True)
            else:
                stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        finally:
            self._finish(stream)

    def _finish(self, stream: Http2Stream) -> None:
        """The app is done with ``stream``: end or reset it, and forget it."""
        if not stream.gone and not self.output.closed:
            if not stream.headers_sent:
                stream.start(500, [(b"content-length", b"0")], end=True)
            elif not stream.ended:
                stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
            if not stream.remote_ended:
                # A response complete before its request (RFC 9113 section 8.1).
                stream.reset(h2.errors.ErrorCodes.NO_ERROR)
        stream._drop_body()
        stream.closed.set()
        self.streams.pop(stream.id, None)
        self.flush()
        self.output.wake()
