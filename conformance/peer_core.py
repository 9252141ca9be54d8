"""The reference peer's HTTP/2 server side and its scenario registry.

The peer must misbehave precisely (send any frame in any order, cut a connection at a
chosen point, hold back flow-control window), which no HTTP server framework allows,
so it drives the sans-IO ``h2`` state machine itself on trio sockets (h2c, prior
knowledge).

Two things make its observations exact rather than racy:

- It feeds ``h2`` one HTTP/2 frame at a time and, for a stream in ``lockstep``, lets the
  scenario react to each frame before h2 sees the next. So "the client's body was still
  open when the peer answered" is decided frame by frame (VXS-10-8), not by how the
  network happened to split the bytes.
- Each request stream starts with a small receive window that the peer replenishes as
  bytes arrive. A scenario that ``hold``s the window stops the client within a few
  hundred bytes; after ``wait_exhausted`` the client cannot send another body byte, so
  whatever it does after a fault (RST_STREAM, END_STREAM, closing the connection) is a
  reaction to the fault, and a ``close`` it would send "as if nothing happened" cannot
  slip through.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qsl, urlsplit

import cbor2
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from voxer_stream.wire import Frame, ProtocolError, decode_frame, encode_frame

from .case import Case, CaseFailed, case, skip
from .net import SCHEMA

if TYPE_CHECKING:
    from .context import Context

__all__ = [
    "CBOR_SEQ",
    "STREAM_WINDOW",
    "PeerConnection",
    "PeerStream",
    "Received",
    "Scenario",
    "Signal",
    "Timing",
    "check_client_item",
    "scenario",
    "scenarios",
]

CBOR_SEQ: Final = "application/cbor-seq"
#: The receive window each request stream gets (SETTINGS_INITIAL_WINDOW_SIZE) and keeps
#: while the peer replenishes it: small, so that a held window stops a client within a
#: few chunks.
STREAM_WINDOW: Final = 512
_MAX_WINDOW: Final = 2**31 - 1
_PREFACE_SIZE: Final = 24
_READ_SIZE: Final = 65536
#: How long the read loop waits for a scenario to take a frame before it reads on.
_CONSUME_PATIENCE: Final = 1.0


# -- scenarios ---------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """How long the peer waits for a client's reactions (shorter in the suite's tests)."""

    #: A talker must end the stream this soon after a fault (its body is blocked).
    reaction: float = 2.0
    #: How long the peer waits for a talker to come back after a drop or an error.
    reconnect: float = 5.0
    #: After a fault, a new upload of the same message this soon is taken as a retry.
    grace: float = 0.6
    #: The longest pause between two frames of a talker the peer waits out.
    idle: float = 10.0
    #: A listener must reset the stream (or close the connection) this soon after a fault.
    listen_reaction: float = 0.8


Kind = Literal["talker", "listener"]
Script = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """A client-role case: the peer plays ``script`` for requests bearing ``name``."""

    name: str
    case_id: str
    kind: Kind
    script: Script


_SCENARIOS: dict[str, Scenario] = {}


async def _client_only(ctx: Context) -> None:
    skip("run against a client: python -m conformance peer")


def scenario(
    name: str,
    section: str,
    title: str,
    *,
    kind: Kind,
    requirements: tuple[str, ...],
    accepts: str,
    strict: bool | None = None,
    timeout: float = 300.0,
) -> Callable[[Script], Script]:
    """Register a client-role case ``<section>/client-<name>`` and the script behind it.

    A client selects the scenario with ``Authorization: Bearer <name>``.
    """
    case_id = f"{section}/client-{name}"

    def register(script: Script) -> Script:
        if name in _SCENARIOS:
            raise ValueError(f"duplicate scenario {name}")
        case(
            case_id,
            title,
            requirements=requirements,
            accepts=accepts,
            role="client",
            strict=strict,
            timeout=timeout,
        )(_client_only)
        _SCENARIOS[name] = Scenario(name, case_id, kind, script)
        return script

    return register


def scenarios() -> dict[str, Scenario]:
    return dict(_SCENARIOS)


def case_of(item: Scenario) -> Case:
    from .case import all_cases

    return next(c for c in all_cases("client") if c.id == item.case_id)


# -- what the client sends ---------------------------------------------------------


def check_client_item(item: bytes) -> Frame:
    """One encoded client frame -> the frame, or ``CaseFailed`` naming what it breaks."""
    try:
        obj = cbor2.loads(item)
    except Exception:  # cbor2 refused it; the splitter already found its end
        obj = None
    if isinstance(obj, dict) and obj.get("type") == "open":
        missing = [k for k in ("msg", "thread", "codec", "created") if k not in obj]
        if missing:
            raise CaseFailed("VXS-4.1-1", f"the client's open frame lacks {missing}")
    try:
        SCHEMA.validate_cbor(item)
    except Exception as exc:  # pycddl raises a plain Exception
        raise CaseFailed(
            "VXS-3.1-4", f"the client sent a frame that proto/frames.cddl rejects: {exc}"
        ) from None
    try:
        return decode_frame(item)
    except ProtocolError as exc:
        raise CaseFailed(
            ("VXS-3.1-3", "VXS-3.1-4"), f"the client sent an invalid frame: {exc}"
        ) from None


def is_deterministic(item: bytes) -> bool:
    """Whether ``item`` is in the core deterministic encoding (RFC 8949 4.2.1).

    cbor2's canonical mode sorts map keys length first, which for the short text keys
    of frames is the same order as sorting their encoded bytes.
    """
    try:
        return bool(cbor2.dumps(cbor2.loads(item), canonical=True) == item)
    except Exception:
        return False


class Signal(Enum):
    """How a request stream stopped, from the client's side."""

    END = "END_STREAM"  # the request body ended
    RESET = "RST_STREAM"  # the client reset the stream
    CLOSED = "connection closed"  # the connection went away (or GOAWAY)


@dataclass
class Received:
    """A frame of the client's request body, as it arrived."""

    frame: Frame
    raw: bytes
    before_opened: bool  # the peer had not sent opened yet (a pipelining talker)


# -- streams -------------------------------------------------------------------------


class PeerStream:
    """One request as the peer sees it: the client's frames in, the peer's bytes out."""

    def __init__(self, conn: PeerConnection, stream_id: int, headers: list[tuple[str, str]]):
        self.conn = conn
        self.stream_id = stream_id
        self.headers = {k.lower(): v for k, v in headers}
        parts = urlsplit(self.headers.get(":path", ""))
        self.method = self.headers.get(":method", "")
        self.path = parts.path
        self.query_pairs = parse_qsl(parts.query, keep_blank_values=True)
        auth = self.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        self.token = token.strip() if scheme.lower() == "bearer" else ""
        self._buf = bytearray()
        self._queue: deque[Received | CaseFailed] = deque()
        self.frames: list[Received] = []
        self.signal: Signal | None = None
        self.signal_at: float | None = None
        self.reset_code: int | None = None
        self.held = False
        self.responded = False
        self.finished = False  # the peer ended or reset its side
        self.opened_sent = False
        self._changed = trio.Event()
        self._consumed = trio.Event()
        #: Feed h2 the client's next HTTP/2 frame only once the scenario has taken every
        #: frame of this stream (and reacted to it).
        self.lockstep = False
        # Per-stream bookkeeping of the talker checks (``peer_talker``).
        self.expected: int | None = None
        self.resumed = False
        self.close_seen = False

    # -- events from the connection --------------------------------------------------

    def _wake(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    def _on_data(self, data: bytes, flow: int) -> None:
        if flow and not self.held:
            self.conn.grant(self.stream_id, flow)
        self._buf += data
        while self._buf:
            source = io.BytesIO(bytes(self._buf))
            try:
                cbor2.CBORDecoder(source).decode()
            except cbor2.CBORDecodeEOF:
                break
            except Exception as exc:
                self._queue.append(
                    CaseFailed("VXS-3.1-1", f"the client sent bytes that are not CBOR: {exc}")
                )
                self._buf.clear()
                break
            size = source.tell()
            item = bytes(self._buf[:size])
            del self._buf[:size]
            try:
                frame = check_client_item(item)
            except CaseFailed as exc:
                self._queue.append(exc)
                self._buf.clear()
                break
            received = Received(frame, item, not self.opened_sent)
            self.frames.append(received)
            self._queue.append(received)
        self._wake()

    def _on_signal(self, signal: Signal, code: int | None = None) -> None:
        if self.signal is None or (self.signal is Signal.END and signal is not Signal.END):
            if signal is Signal.END and self._buf:
                self._queue.append(
                    CaseFailed(
                        "VXS-3.1-1",
                        f"the request body ended inside a CBOR item ({len(self._buf)} bytes)",
                    )
                )
            self.signal = signal
            self.signal_at = trio.current_time()
            if signal is Signal.RESET:
                self.reset_code = code
        self._wake()

    # -- the scenario's side -----------------------------------------------------------

    @property
    def gone(self) -> bool:
        """The client reset the stream or the connection is gone."""
        return self.signal in (Signal.RESET, Signal.CLOSED)

    async def next(self, within: float) -> Received | Signal | None:
        """The client's next frame; then the signal that ended the stream; None on timeout."""
        deadline = trio.current_time() + within
        while True:
            if self._queue:
                item = self._queue.popleft()
                if not self._queue:
                    event, self._consumed = self._consumed, trio.Event()
                    event.set()
                if isinstance(item, CaseFailed):
                    raise item
                return item
            if self.signal is not None:
                return self.signal
            with trio.move_on_at(deadline):
                await self._changed.wait()
            if trio.current_time() >= deadline and not self._queue and self.signal is None:
                return None

    @property
    def has_frames(self) -> bool:
        """Frames (or a decoding failure) have arrived that ``next`` has not returned."""
        return bool(self._queue)

    def unread(self, item: Received | CaseFailed) -> None:
        self._queue.appendleft(item)

    async def wait_signal(self, within: float, *, body_end: bool = True) -> Signal | None:
        """Wait for the stream to stop (ignoring frames); None when it does not."""
        with trio.move_on_after(within):
            while not (self.gone or (body_end and self.signal is Signal.END)):
                await self._changed.wait()
        if self.gone or (body_end and self.signal is Signal.END):
            return self.signal
        return None

    def hold(self) -> None:
        """Stop replenishing the receive window: the client is stopped within
        ``STREAM_WINDOW`` bytes."""
        self.held = True

    def inbound_window(self) -> int:
        state = self.conn.h2.streams.get(self.stream_id)
        return 0 if state is None else state.inbound_flow_control_window

    async def wait_exhausted(self, within: float = 1.0) -> bool:
        """After ``hold``: wait until the client has used up its window (or stopped)."""
        with trio.move_on_after(within):
            while self.inbound_window() > 0 and self.signal is None:
                await self._changed.wait()
        return self.inbound_window() <= 0 or self.signal is not None

    def respond_nowait(self, status: int = 200, content_type: str = CBOR_SEQ) -> None:
        if self.responded or self.finished:
            return
        self.responded = True
        self.conn.h2.send_headers(
            self.stream_id, [(":status", str(status)), ("content-type", content_type)]
        )

    def send_nowait(self, *items: Frame | bytes, end: bool = False) -> bool:
        """Queue response bytes in h2 at once (no scheduling point), if the window allows.

        Returns False (and queues nothing) when the client's window is too small; then
        use ``send``.
        """
        if self.finished or self.gone:
            return True
        data = b"".join(i if isinstance(i, bytes) else encode_frame(i) for i in items)
        try:
            self.respond_nowait()
            if len(data) > self.conn.h2.local_flow_control_window(self.stream_id):
                return False
            size = self.conn.h2.max_outbound_frame_size
            for start in range(0, len(data), size):
                self.conn.h2.send_data(self.stream_id, data[start : start + size])
            if end:
                self.conn.h2.end_stream(self.stream_id)
                self.finished = True
        except h2.exceptions.H2Error:
            self.finished = True
        return True

    async def send(self, *items: Frame | bytes, end: bool = False) -> None:
        """Send frames (or raw bytes) in the response body, in one write when possible."""
        data = b"".join(i if isinstance(i, bytes) else encode_frame(i) for i in items)
        while not self.send_nowait(data, end=end):
            # Not enough window for the whole write: send what fits, wait for more.
            try:
                window = self.conn.h2.local_flow_control_window(self.stream_id)
            except h2.exceptions.H2Error:
                return
            if window > 0:
                self.send_nowait(data[:window])
                data = data[window:]
            await self.conn.flush()
            if self.gone:
                return
            await self.conn.window_changed()
        await self.conn.flush()

    def reset_nowait(self, code: int = 0) -> bool:
        """RST_STREAM with ``code``; False when h2 says the stream is already closed."""
        if self.gone:
            return False
        try:
            self.conn.h2.reset_stream(self.stream_id, code)
        except h2.exceptions.H2Error:
            return False
        self.finished = True
        return True

    @property
    def body_open(self) -> bool:
        """The client has not ended its request body (h2's view, frame by frame)."""
        state = self.conn.h2.streams.get(self.stream_id)
        if state is None or self.gone:
            return False
        return self.signal is None and not state.closed

    async def flush(self) -> None:
        await self.conn.flush()

    async def drop(self) -> None:
        """Cut the TCP connection, as a crashed server would."""
        await self.conn.drop()


# -- connections -----------------------------------------------------------------


@dataclass
class PeerConnection:
    """One client connection: the read loop, h2, and the streams it carries."""

    sock: trio.SocketStream
    on_request: Callable[[PeerStream], None]
    h2: h2.connection.H2Connection = field(init=False)
    streams: dict[int, PeerStream] = field(default_factory=dict)
    closed: bool = False
    dropped: bool = False

    def __post_init__(self) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self._write_lock = trio.Lock()
        self._window = trio.Event()

    def grant(self, stream_id: int, size: int) -> None:
        with contextlib.suppress(h2.exceptions.H2Error, ValueError):
            self.h2.increment_flow_control_window(size, stream_id=stream_id)

    async def window_changed(self) -> None:
        with trio.move_on_after(1.0):
            await self._window.wait()

    async def flush(self) -> None:
        if self._write_lock.locked():
            return  # the holder writes until nothing is pending
        async with self._write_lock:
            while data := self.h2.data_to_send():
                if self.closed:
                    return
                try:
                    await self.sock.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._close()
                    return

    async def drop(self) -> None:
        self.dropped = True
        self._close()
        try:
            # SO_LINGER 0: the close is an immediate TCP reset, as when a server dies.
            linger = struct.pack("ii", 1, 0)
            self.sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        await trio.aclose_forcefully(self.sock)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            stream._on_signal(Signal.CLOSED)
        event, self._window = self._window, trio.Event()
        event.set()

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            }
        )
        # The connection window never limits: only the per-stream windows are held.
        self.h2.increment_flow_control_window(_MAX_WINDOW - self.h2.inbound_flow_control_window)
        await self.flush()
        buf = bytearray()
        preface = True
        try:
            while not self.closed:
                try:
                    data = await self.sock.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    break
                if not data:
                    break
                buf += data
                while not self.closed:
                    if preface:
                        if len(buf) < _PREFACE_SIZE:
                            break
                        size = _PREFACE_SIZE
                        preface = False
                    else:
                        if len(buf) < 9:
                            break
                        size = 9 + int.from_bytes(buf[:3], "big")
                        if len(buf) < size:
                            break
                    piece = bytes(buf[:size])
                    del buf[:size]
                    await self._feed(piece)
        finally:
            self._close()
            await trio.aclose_forcefully(self.sock)

    async def _feed(self, piece: bytes) -> None:
        """One HTTP/2 frame into h2; then let the scenarios react before the next one."""
        try:
            events = self.h2.receive_data(piece)
        except h2.exceptions.H2Error as exc:
            print(f"peer: HTTP/2 error on a connection ({exc}); is it h2c?", file=sys.stderr)
            await self.flush()  # h2 queued a GOAWAY
            self._close()
            return
        fed: list[PeerStream] = []
        for event in events:
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.RequestReceived):
                assert event.stream_id is not None
                headers = [(str(k), str(v)) for k, v in event.headers or []]
                stream = PeerStream(self, event.stream_id, headers)
                self.streams[event.stream_id] = stream
                self.on_request(stream)
            elif isinstance(event, h2.events.DataReceived):
                if stream is not None:
                    stream._on_data(event.data or b"", event.flow_controlled_length or 0)
                    if stream.lockstep and stream._queue:
                        fed.append(stream)
            elif isinstance(event, h2.events.StreamEnded):
                if stream is not None:
                    stream._on_signal(Signal.END)
            elif isinstance(event, h2.events.StreamReset):
                if stream is not None:
                    stream._on_signal(Signal.RESET, int(event.error_code or 0))
            elif isinstance(event, h2.events.ConnectionTerminated):
                for item in self.streams.values():
                    item._on_signal(Signal.CLOSED)
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                trigger, self._window = self._window, trio.Event()
                trigger.set()
        await self.flush()
        for stream in fed:
            # The scenario reacts (its h2 calls are synchronous) before h2 sees the
            # client's next frame.
            with trio.move_on_after(_CONSUME_PATIENCE):
                while stream._queue:
                    await stream._consumed.wait()
            await trio.lowlevel.checkpoint()
            await self.flush()
