"""A minimal HTTP/2 "sink" client for load generation: many GET streams, bodies counted.

The live-latency listeners parse HTTP/2 with the full ``h2`` client state machine and
decode every CBOR frame, ~14 us per chunk: with 1,000 listeners on a 2-core machine the
load generator, not the server, is the bottleneck. Most listeners only need to be a
sink that keeps the server's streams open and drains them; this module is that sink.

Sockets are plain non-blocking ``socket.socket``s (TCP_NODELAY), connected by trio,
read with a synchronous ``recv`` after ``trio.lowlevel.wait_readable``: a
``trio.SocketStream`` adds a checkpoint and wrappers to every read, which measured
34 against 22 us of CPU per frame with a connection per stream and 4.5 against 3.6 us
with 50 streams per connection. By default a task per connection waits for its
socket; with ``poll_interval`` one task drains every socket periodically (see
``run_sinks``). Each read is walked in place:

* 9-byte frame headers read with one ``struct`` call (24-bit length, type, flags,
  31-bit stream id);
* DATA: byte count, ``zlib.crc32`` over the payload (padding excluded), END_STREAM;
  nothing is copied, decoded or queued;
* HEADERS / CONTINUATION: every header block goes through the connection's
  ``hpack.Decoder`` (its dynamic table must follow the server's), ``:status`` kept;
* SETTINGS acknowledged, PING answered, RST_STREAM ends a stream, GOAWAY fails the
  streams above its last stream id, WINDOW_UPDATE / PRIORITY / unknown types skipped.

Flow control is opened wide at the start (SETTINGS_INITIAL_WINDOW_SIZE 2**31 - 1, the
connection window raised to the same) and topped up once more than 1 GiB has arrived
on a connection, so a benchmark never sends a WINDOW_UPDATE in practice. This is a
benchmark tool, not a conforming client: it trusts the server's framing (a frame
larger than our SETTINGS_MAX_FRAME_SIZE is accepted) and validates nothing but what
it needs to count.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import hpack
import trio

__all__ = ["SinkResult", "run_sinks"]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW: Final = 2**31 - 1
#: Connection-level bytes received after which the window is topped up again.
REFILL_AFTER: Final = 1 << 30
RECEIVE_SIZE: Final = 65536

# Frame types (RFC 9113 section 6).
DATA: Final = 0x0
HEADERS: Final = 0x1
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9
# Flags.
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY: Final = 0x20
# Settings.
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4

#: length (high byte, low 16 bits), type, flags, stream id (R bit included).
_HEADER = struct.Struct(">BHBBL")
_U32 = struct.Struct(">L")
#: What malformed input raises in ``feed`` (a short frame, a bad header block).
_PROTOCOL_ERRORS = (hpack.HPACKError, struct.error, ValueError, IndexError)

_ERROR_NAMES: Final = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}


@dataclass
class SinkResult:
    status: int = 0  # :status of the response
    body_bytes: int = 0  # DATA payload bytes received (padding excluded)
    crc32: int = 0  # zlib.crc32 over the whole response body, incrementally
    ended: bool = False  # END_STREAM seen
    error: str = ""
    data_frames: int = 0  # DATA frames received (empty ones included)


def frame(type_: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: the 9-byte header and ``payload``."""
    n = len(payload)
    return _HEADER.pack(n >> 16, n & 0xFFFF, type_, flags, stream_id) + payload


def _error_name(code: int) -> str:
    return _ERROR_NAMES.get(code, hex(code))


class _Ready:
    """Calls ``on_ready`` once every stream is ready (or has failed / ended first)."""

    def __init__(self, count: int, on_ready: Callable[[], None]) -> None:
        self.remaining = count
        self.on_ready = on_ready
        if count == 0:
            on_ready()

    def mark(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.on_ready()


class _Connection:
    """One TCP connection's streams: ids 1, 3, 5 ... in the order of ``results``."""

    def __init__(self, results: list[SinkResult], ready: _Ready) -> None:
        self.ready = ready
        #: Every stream, and those not ended yet, by id.
        self.streams: dict[int, SinkResult] = {2 * i + 1: r for i, r in enumerate(results)}
        self.open = dict(self.streams)
        #: Streams that have not yet had both their response HEADERS and DATA.
        self.unready: set[int] = set(self.open)
        self.decoder = hpack.Decoder()
        self.rest = b""  # the start of a frame not received whole yet
        self.received = 0  # connection-level flow-controlled bytes since the last top-up
        self.block = bytearray()  # a header block, CONTINUATIONs appended
        self.block_sid = 0
        self.block_end_stream = False
        self.sock: socket.socket | None = None
        self.unsent = b""  # replies the socket did not take yet (polled mode)
        self.goaway = ""  # the server's GOAWAY, if any, for the error of a cut stream

    def fail_all(self, message: str) -> None:
        if self.goaway:
            message = f"{message} (after {self.goaway})"
        for sid in list(self.open):
            self._finish(sid, message)

    def _after_end(self, sid: int, what: str) -> None:
        """A frame on a stream that has ended: the server broke RFC 9113 section 5.1
        (only PRIORITY may follow END_STREAM or RST_STREAM). Recorded, not raised."""
        result = self.streams.get(sid)
        if result is not None and "after it ended" not in result.error:
            error = f"{what} on stream {sid} after it ended (RFC 9113 section 5.1)"
            result.error = f"{result.error}; {error}" if result.error else error

    def _finish(self, sid: int, error: str = "") -> None:
        """The stream is over: END_STREAM (``error`` empty), reset, or cut."""
        result = self.open.pop(sid, None)
        if result is None:
            return
        if error:
            result.error = error
        else:
            result.ended = True
        if sid in self.unready:
            self.unready.discard(sid)
            self.ready.mark()

    def request_bytes(
        self, host: str, port: int, path: str, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        settings = struct.pack(">HL", SETTINGS_ENABLE_PUSH, 0) + struct.pack(
            ">HL", SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW
        )
        out = [
            PREFACE,
            frame(SETTINGS, 0, 0, settings),
            frame(WINDOW_UPDATE, 0, 0, _U32.pack(MAX_WINDOW - 65535)),
        ]
        authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        request = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", authority),
            (b":path", path.encode()),
            *((name.lower(), value) for name, value in headers),
        ]
        encoder = hpack.Encoder()
        for sid in self.open:
            block = encoder.encode(request)
            if len(block) > 16384:
                raise ValueError("request headers larger than one frame (16 KiB)")
            out.append(frame(HEADERS, END_STREAM | END_HEADERS, sid, block))
        return b"".join(out)

    def feed(self, data: bytes) -> bytes:
        """Parse what arrived; the frames to send back (SETTINGS / PING ACK, a window
        top-up), usually none. This is the per-DATA-frame path: keep it short."""
        open_ = self.open
        unready = self.unready
        unpack_header = _HEADER.unpack_from
        crc32 = zlib.crc32
        if self.rest:
            data = self.rest + data
        view = memoryview(data)
        end = len(data)
        pos = 0
        replies = b""
        while end - pos >= 9:
            hi, lo, type_, flags, sid = unpack_header(data, pos)
            start = pos + 9
            stop = start + ((hi << 16) | lo)
            if stop > end:
                break
            pos = stop
            if type_ == DATA:
                sid &= 0x7FFFFFFF
                self.received += stop - start
                result = open_.get(sid)
                if result is not None:
                    if flags & PADDED:
                        stop -= data[start]
                        start += 1
                    result.data_frames += 1
                    if stop > start:
                        result.body_bytes += stop - start
                        result.crc32 = crc32(view[start:stop], result.crc32)
                        if sid in unready and result.status:
                            unready.discard(sid)
                            self.ready.mark()
                    if flags & END_STREAM:
                        self._finish(sid)
                else:
                    self._after_end(sid, "DATA")
                if self.received > REFILL_AFTER:
                    replies += frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.received))
                    self.received = 0
            elif type_ == HEADERS:
                if flags & PADDED:
                    stop -= data[start]
                    start += 1
                if flags & PRIORITY:
                    start += 5
                self.block[:] = view[start:stop]
                self.block_sid = sid & 0x7FFFFFFF
                self.block_end_stream = bool(flags & END_STREAM)
                if flags & END_HEADERS:
                    self._headers()
            elif type_ == CONTINUATION:
                self.block += view[start:stop]
                if flags & END_HEADERS:
                    self._headers()
            elif type_ == SETTINGS:
                if not flags & ACK:
                    replies += frame(SETTINGS, ACK, 0)
            elif type_ == PING:
                if not flags & ACK:
                    replies += frame(PING, ACK, 0, bytes(view[start:stop]))
            elif type_ == RST_STREAM:
                (code,) = _U32.unpack_from(data, start)
                self._finish(sid & 0x7FFFFFFF, f"RST_STREAM {_error_name(code)}")
            elif type_ == GOAWAY:
                (last,) = _U32.unpack_from(data, start)
                (code,) = _U32.unpack_from(data, start + 4)
                last &= 0x7FFFFFFF
                debug = bytes(view[start + 8 : stop])
                # Streams above ``last`` were not processed (RFC 9113 section 6.8);
                # those at or below it may still complete.
                self.goaway = f"GOAWAY {_error_name(code)} last_stream_id={last} {debug!r}"
                for other in [s for s in open_ if s > last]:
                    self._finish(other, f"not processed: {self.goaway}")
            # WINDOW_UPDATE, PRIORITY, PUSH_PROMISE (disabled), unknown: ignored.
        view.release()
        self.rest = data[pos:] if pos < end else b""
        return replies

    def _headers(self) -> None:
        """A complete header block: always decoded (HPACK state), ``:status`` kept."""
        headers = self.decoder.decode(bytes(self.block), raw=True)
        self.block.clear()
        sid = self.block_sid
        result = self.open.get(sid)
        if result is None:
            self._after_end(sid, "HEADERS")
            return
        if result.status < 200:  # none yet, or an informational (1xx) response
            for name, value in headers:
                if name == b":status":
                    result.status = int(value)
                    break
        if self.block_end_stream:
            self._finish(sid)


async def _connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket with TCP_NODELAY.

    A plain ``socket.socket`` rather than a ``trio.SocketStream``: reading with a
    synchronous ``recv`` and waiting with ``trio.lowlevel.wait_readable`` skips the
    stream's per-call checkpoint, and lets one task poll many sockets (``poll_interval``).
    trio still does the resolving and the connect (cancellable).
    """
    family, type_, proto, _, addr = (
        await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    )[0]
    raw = socket.socket(family, type_, proto)
    try:
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await trio.socket.from_stdlib_socket(raw).connect(addr)
    except BaseException:
        raw.close()
        raise
    return raw


async def _send_all(raw: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[raw.send(view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(raw)


def _close(conn: _Connection) -> None:
    """Close the socket, with a GOAWAY first (best effort) if every stream ended."""
    raw = conn.sock
    if raw is None:
        return
    conn.sock = None
    if not conn.open:
        with contextlib.suppress(OSError):
            raw.send(frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(0)))
    trio.lowlevel.notify_closing(raw)
    raw.close()


async def _read_events(conn: _Connection, raw: socket.socket) -> None:
    """One connection, woken by the socket: one recv per wake-up, as a rule."""
    recv = raw.recv
    feed = conn.feed
    wait_readable = trio.lowlevel.wait_readable
    try:
        while conn.open:
            await wait_readable(raw)
            while True:
                try:
                    data = recv(RECEIVE_SIZE)
                except BlockingIOError:
                    break
                if not data:
                    conn.fail_all("the server closed the connection")
                    return
                replies = feed(data)
                if replies:
                    await _send_all(raw, replies)
                if len(data) < RECEIVE_SIZE:
                    break  # most likely drained: wait rather than fail a recv
    except OSError as exc:
        conn.fail_all(f"connection lost: {exc!r}")
    except _PROTOCOL_ERRORS as exc:
        conn.fail_all(f"cannot parse the server's frames: {exc!r}")
    finally:
        _close(conn)


def _poll_one(conn: _Connection) -> None:
    """Read whatever ``conn``'s socket holds, without blocking (polled mode)."""
    raw = conn.sock
    assert raw is not None
    try:
        while True:
            try:
                data = raw.recv(RECEIVE_SIZE)
            except BlockingIOError:
                break
            if not data:
                conn.fail_all("the server closed the connection")
                break
            conn.unsent += conn.feed(data)
            if len(data) < RECEIVE_SIZE or not conn.open:
                break
        if conn.unsent and conn.open:
            with contextlib.suppress(BlockingIOError):
                conn.unsent = conn.unsent[raw.send(conn.unsent) :]
    except OSError as exc:
        conn.fail_all(f"connection lost: {exc!r}")
    except _PROTOCOL_ERRORS as exc:
        conn.fail_all(f"cannot parse the server's frames: {exc!r}")
    if not conn.open:
        _close(conn)


async def _read_polled(conns: list[_Connection], interval: float) -> None:
    """All connections from one task: every ``interval`` s, each socket drained."""
    try:
        while conns := [c for c in conns if c.sock is not None]:
            await trio.sleep(interval)
            for conn in conns:
                _poll_one(conn)
    finally:
        for conn in conns:
            _close(conn)


async def run_sinks(
    host: str,
    port: int,
    path: str,
    headers: list[tuple[bytes, bytes]],
    count: int,
    streams_per_conn: int,
    on_ready: Callable[[], None],
    *,
    poll_interval: float = 0.0,
) -> list[SinkResult]:
    """Open `count` GET listen streams (HTTP/2 prior knowledge, plain TCP), up to
    `streams_per_conn` per connection; call on_ready() once every stream has received
    its response HEADERS and at least the first DATA bytes (the server sends a
    message_info frame at once); then read until every stream has ended (END_STREAM or
    RST_STREAM) or its connection closed; return one result per stream, in open order.

    A stream that fails or ends before it is ready counts as ready, so ``on_ready`` is
    called once every stream has either started or given up (check ``error``).
    Connections are opened one after the other, each sending all its requests at once.
    There is no timeout: bound the call with a cancel scope (the results are then lost)
    if the server may never end a stream.

    ``poll_interval`` 0 (the default): a task per connection, woken when its socket
    is readable, so every frame is read as soon as it arrives. ``poll_interval`` > 0:
    one task for all connections wakes every ``poll_interval`` seconds and drains every
    socket without blocking. Frames then wait up to that long in the kernel (the server
    is not affected: its writes are absorbed by the socket buffers), and the cost per
    wake-up is shared by every frame that arrived meanwhile, which is what makes a
    connection per listener (``streams_per_conn`` 1) cheap. The server's socket buffer
    plus ours must hold ``poll_interval`` seconds of data.
    """
    if streams_per_conn < 1:
        raise ValueError("streams_per_conn must be at least 1")
    results = [SinkResult() for _ in range(count)]
    ready = _Ready(count, on_ready)
    conns: list[_Connection] = []
    try:
        async with trio.open_nursery() as nursery:
            for first in range(0, count, streams_per_conn):
                conn = _Connection(results[first : first + streams_per_conn], ready)
                conns.append(conn)
                request = conn.request_bytes(host, port, path, headers)
                try:
                    raw = await _connect(host, port)
                except OSError as exc:
                    conn.fail_all(f"cannot connect: {exc!r}")
                    continue
                conn.sock = raw
                try:
                    await _send_all(raw, request)
                except OSError as exc:
                    conn.fail_all(f"cannot send the requests: {exc!r}")
                    _close(conn)
                    continue
                if not poll_interval:
                    nursery.start_soon(_read_events, conn, raw)
            if poll_interval:
                nursery.start_soon(_read_polled, conns, poll_interval)
    finally:
        for conn in conns:
            _close(conn)
    return results
