"""The WebRTC binding (spec section 12): WHIP-style ingest, WHEP-style egress.

A third binding of the same pipeline, not a second pipeline. A WHIP session turns
each Opus RTP payload it receives into a ``chunk`` frame and feeds the frames to an
``UploadSession``, exactly as if a talker had sent them over HTTP/2: the same
checks, the same hub, the same committer and durability. A WHEP session is a
``ListenSession`` whose sink turns ``chunk`` frames back into RTP packets on an
Opus track: stored chunks first, paced in real time, then live ones the moment
``publish`` hands them over (it is a ``DirectSink``). Monitor mode chains listens:
each message that starts in a thread plays in turn on the same track.

aiortc is asyncio-only, the server trio: every peer connection lives on one
asyncio loop in its own thread (``AsyncioThread``). Trio drives it with ``run``
(negotiation) and ``call_soon`` (packets out); RTP arrivals and connection-state
changes come back over trio memory channels (``to_trio``). No call here blocks the
trio loop.

RTP timestamps of egress are the chunks' media time (``ts``, 48 kHz ticks, VXS-12-7)
plus aiortc's random origin, and sequence numbers run on by one per packet, so the
switch from stored to live is invisible to a jitter buffer: the timestamps are
those of one recording. In monitor mode each next message starts where the
previous one ended, or at the wall-clock time it is played if later (VXS-12-9).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

import trio
from aiortc import RTCPeerConnection, RTCSessionDescription

from ..media.opus import InvalidOpusPacket, parse_packet
from ..media.rtc import (
    AsyncioThread,
    PacketTrack,
    RtpArrival,
    Unwrapper,
    audio_direction,
    close_quietly,
    drain,
    has_opus,
    loopback_configuration,
    prefer_opus,
    tap_receiver,
    to_trio,
    trio_callback,
    use_host_addresses,
)
from ..pipeline import Hub, ListenSession, UploadSession
from ..store.base import Account, MessageRecord
from ..wire import (
    Ack,
    Chunk,
    Close,
    Closed,
    ErrorCode,
    Frame,
    Listen,
    MessageInfo,
    Open,
    Opened,
    ProtocolError,
    decode_frame,
    encode_frame,
)
from ..wire.frames import ID_PATTERN
from .rtc_shared import SharedSessions
from .streams import FLAGS, Services, parse_listen

log = logging.getLogger(__name__)

#: A WHIP session with no RTP packet for this long closes its message (VXS-12-4).
IDLE_TIMEOUT: Final = 5.0
#: After a stop, packets that arrived before it are still taken until none came for this
#: long (they cross from aiortc's thread within microseconds; this bounds the wait).
DRAIN_QUIET: Final = 0.1
#: ... and those aiortc's loop saw up to this long after the stop: a loaded process sees a
#: packet later than the kernel got it (on loopback 0.25 s is 12 packets of 20 ms).
DRAIN_SLACK_NS: Final = 250_000_000
#: How long a peer has to connect (ICE + DTLS) after the answer (VXS-12-10).
CONNECT_TIMEOUT: Final = 30.0
#: WebRTC sessions one account may have open at once (VXS-12-12): each is a peer with
#: its own UDP sockets and tasks, so an unbounded number could exhaust the process.
MAX_SESSIONS: Final = 20
#: WebRTC sessions the whole server has open at once (each is a peer connection with
#: its DTLS and SRTP state on the one asyncio thread).
MAX_TOTAL_SESSIONS: Final = 500
#: How long an ended session's status stays readable with GET.
LINGER: Final = 60.0
#: RTP packets buffered between aiortc's loop and trio (about 20 s of 20 ms packets).
ARRIVAL_BUFFER: Final = 1000
#: The WebRTC default listening speed: real time (VXS-12-6).
DEFAULT_SPEED: Final = 1.0
SDP: Final = "application/sdp"
ConnectionState = Literal["new", "connecting", "connected", "failed", "closed"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A random identifier (VXS-2.3-1): 128 bits in URL-safe base64, 22 characters."""
    return secrets.token_urlsafe(16)


def check_identifier(value: str, what: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"{what} {value!r} is not an identifier", "VXS-2.3-1"
        )
    return value


def check_offer(sdp: str) -> None:
    """The offer's shape, before aiortc sees it: an SDP with an audio section offering
    Opus (VXS-12-2); anything else is refused with the registry's code."""
    if not sdp.startswith("v=0") or "\nm=" not in sdp:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "the body is not an SDP offer", "VXS-12-2")
    if not has_opus(sdp):
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_CODEC, "the offer has no Opus audio section", "VXS-12-2"
        )


def monitor_own(query: bytes) -> bool:
    """``own`` of a monitor request (VXS-12-9): ``1`` or ``true``, ``0`` or ``false``."""
    own = False
    for key, value in parse_qsl(query.decode("ascii", "replace"), keep_blank_values=True):
        if key == "own":
            if value.lower() not in FLAGS:
                raise ProtocolError(
                    ErrorCode.INVALID_REQUEST, f"bad query parameter own={value!r}", "VXS-12-9"
                )
            own = FLAGS[value.lower()]
    return own


def whep_listen(message_id: str, query: bytes) -> Listen:
    """A WHEP request's query (the parameters of VXS-10-6) as a listen; the speed is 1
    (real time) unless given, and 0 ("as fast as possible") has no meaning for a
    real-time track (VXS-12-6)."""
    listen = parse_listen(message_id, query)
    pairs = parse_qsl(query.decode("ascii", "replace"), keep_blank_values=True)
    if not any(key == "speed" for key, _ in pairs):
        return dataclasses.replace(listen, speed=DEFAULT_SPEED)
    if listen.speed == 0.0:
        raise ProtocolError(
            ErrorCode.INVALID_LISTEN, "speed 0 is not a real-time speed", "VXS-12-6"
        )
    return listen


@dataclass(frozen=True, slots=True)
class SentFrame:
    """A frame the pipeline sends, decoded; for a chunk, its packets with each one's media
    time, and the chunk's end."""

    frame: Frame
    packets: tuple[tuple[bytes, int], ...] = ()
    end_ts: int = 0


@functools.lru_cache(maxsize=512)
def decode_sent(frame: bytes) -> SentFrame:
    """Cached: at the live edge ``publish`` hands the same frame bytes to every WebRTC
    listener, which then decode it (and time its packets) once between them."""
    decoded = decode_frame(frame)
    if not isinstance(decoded, Chunk):
        return SentFrame(decoded)
    out = []
    ts = decoded.ts
    for packet in decoded.packets:
        out.append((packet, ts))
        ts += parse_packet(packet).duration
    return SentFrame(decoded, tuple(out), ts)


# -- the asyncio side ----------------------------------------------------------------


@dataclass(eq=False)
class Peer:
    """One aiortc peer connection, touched only on the asyncio thread."""

    pc: RTCPeerConnection
    track: PacketTrack | None = None


async def _answer(offer: str, *, send: bool, on_packet: Any, on_state: Any) -> tuple[Peer, str]:
    """Create the answering peer for ``offer`` (on the asyncio loop): receive-only with an
    RTP tap (WHIP), or send-only with a ``PacketTrack`` (WHEP). Returns the answer SDP."""
    pc = RTCPeerConnection(loopback_configuration())
    peer = Peer(pc)

    @pc.on("connectionstatechange")
    def changed() -> None:
        on_state(pc.connectionState)

    @pc.on("track")
    def track(received: Any) -> None:
        drain(received)

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise ProtocolError(ErrorCode.UNSUPPORTED_CODEC, "no audio section", "VXS-12-2")
        transceiver = audio[0]
        prefer_opus(transceiver)
        offered = audio_direction(offer)
        if send:
            if offered not in ("recvonly", "sendrecv"):
                raise ProtocolError(
                    ErrorCode.INVALID_REQUEST, "the offer does not receive audio", "VXS-12-5"
                )
            peer.track = PacketTrack()
            transceiver.sender.replaceTrack(peer.track)
            transceiver.direction = "sendonly"
        else:
            if offered not in ("sendonly", "sendrecv"):
                raise ProtocolError(
                    ErrorCode.INVALID_REQUEST, "the offer does not send audio", "VXS-12-2"
                )
            transceiver.direction = "recvonly"
            tap_receiver(transceiver.receiver, on_packet)
        await pc.setLocalDescription(await pc.createAnswer())
    except ProtocolError:
        await close_quietly(pc)
        raise
    except Exception as exc:  # aiortc's parse and negotiation errors: a bad offer
        await close_quietly(pc)
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"the offer cannot be answered: {exc}", "VXS-12-2"
        ) from None
    return peer, pc.localDescription.sdp


async def _close(peer: Peer) -> None:
    await close_quietly(peer.pc)


# -- sessions --------------------------------------------------------------------------


@dataclass(eq=False, kw_only=True)
class RtcSession:
    """What WHIP and WHEP sessions share: an id, an owner, a peer and a state."""

    id: str = field(default_factory=new_id)
    account: Account
    peer: Peer | None = None
    connection: ConnectionState = "new"
    error: ProtocolError | None = None
    ended: trio.Event = field(default_factory=trio.Event)
    stop_requested: trio.Event = field(default_factory=trio.Event)
    ended_at: float | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    connected: trio.Event = field(default_factory=trio.Event)
    connected_ns: int = 0
    #: When ``stop`` was called (``time.monotonic_ns``, the clock of ``RtpArrival``).
    stopped_ns: int = 0
    #: The scope of whatever the session waits on (cancelled by ``stop``).
    waiting: trio.CancelScope | None = None

    def state_changed(self, state: str) -> None:
        """On the trio side: aiortc's connection state (new, connecting, connected,
        failed, closed)."""
        self.connection = state  # type: ignore[assignment]
        self.changed.set()
        self.changed = trio.Event()
        if state in ("failed", "closed"):
            self.stop()

    def stop(self) -> None:
        """End the session (DELETE, or the peer went away)."""
        if not self.stop_requested.is_set():
            self.stopped_ns = time.monotonic_ns()
        self.stop_requested.set()
        if self.waiting is not None:
            self.waiting.cancel()

    def error_json(self) -> dict[str, Any] | None:
        if self.error is None:
            return None
        return {
            "code": int(self.error.code),
            "name": self.error.code.name,
            "detail": self.error.detail,
        }


@dataclass(eq=False, kw_only=True)
class WhipSession(RtcSession):
    """Ingest: the RTP packets of one peer become the chunks of one message."""

    thread_id: str
    msg: str
    arrivals: trio.MemoryReceiveChannel[RtpArrival]
    received: int = 0
    durable: int = 0
    dropped_invalid: int = 0
    dropped_late: int = 0
    state: Literal["opening", "live", "closed", "failed"] = "opening"
    closed: Closed | None = None
    opened: trio.Event = field(default_factory=trio.Event)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kind": "whip",
            "msg": self.msg,
            "thread": self.thread_id,
            "state": self.state,
            "connection": self.connection,
            "chunks_received": self.received,
            "chunks_durable": self.durable,
            "dropped": {"invalid_opus": self.dropped_invalid, "late": self.dropped_late},
        }
        if self.closed is not None:
            out["chunks"] = self.closed.chunks
            out["duration"] = self.closed.duration
        if (error := self.error_json()) is not None:
            out["error"] = error
        return out


class _WhipSink:
    """The upload's replies (``opened``, ``ack``, ``closed``, ``error``) as session state:
    WHIP has no back channel, so the talker reads them with GET and DELETE (VXS-12-3)."""

    def __init__(self, session: WhipSession) -> None:
        self.session = session

    async def send(self, frames: Sequence[bytes]) -> None:
        for data in frames:
            frame = decode_frame(data)
            if isinstance(frame, Opened):
                self.session.state = "live" if frame.state == "live" else "closed"
                self.session.opened.set()
            elif isinstance(frame, Ack):
                self.session.durable = frame.seq + 1
            elif isinstance(frame, Closed):
                self.session.closed = frame
                self.session.durable = frame.chunks
                self.session.state = "closed"

    async def fail(self, exc: ProtocolError, data: bytes) -> None:
        self.session.error = exc
        self.session.state = "failed"
        self.session.opened.set()


@dataclass(eq=False, kw_only=True)
class WhepSession(RtcSession):
    """Egress: a message (or, in monitor mode, a thread) played as an Opus track."""

    request: Listen | None = None
    thread_id: str | None = None
    #: Monitor mode: play the monitoring account's own messages too (VXS-12-9).
    own: bool = False
    state: Literal["connecting", "playing", "ended", "failed"] = "connecting"
    packets_sent: int = 0
    messages: list[str] = field(default_factory=list)
    #: Media time offset of the current message on the track (monitor mode).
    base: int = 0
    #: The track's end so far, in ticks (where the next message may start).
    track_end: int = 0

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kind": "whep",
            "state": self.state,
            "connection": self.connection,
            "packets_sent": self.packets_sent,
            "messages": list(self.messages),
        }
        if self.request is not None:
            out["msg"] = self.request.msg
        if self.thread_id is not None:
            out["thread"] = self.thread_id
        if (error := self.error_json()) is not None:
            out["error"] = error
        return out


class _Outbox:
    """Packets for WHEP tracks, carried to aiortc's loop in one call per batch.

    At the live edge ``publish`` writes a chunk to every listener (``try_send``) and then
    flushes each: one cross-thread call for all of them, not one per listener (each is a
    lock and a wake-up write on the loop's self-pipe)."""

    def __init__(self, aio: AsyncioThread) -> None:
        self.aio = aio
        self.pending: list[tuple[PacketTrack, list[tuple[bytes, int]]]] = []

    def put(self, track: PacketTrack, items: list[tuple[bytes, int]]) -> None:
        self.pending.append((track, items))

    def flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self.aio.call_soon(_push_all, batch)


def _push_all(batch: list[tuple[PacketTrack, list[tuple[bytes, int]]]]) -> None:
    for track, items in batch:
        track.push_many(items)


class _RtcSink:
    """A listen's frames onto a WHEP session's track: each chunk's packets are pushed to
    the ``PacketTrack`` on the asyncio loop. A ``DirectSink``: UDP has no flow control to
    wait for, so a chunk is always taken at once (VXS-12-8).

    The listen starts before the peer is negotiated, so that its refusals (an unknown
    message, an offset beyond a closed one) are the POST's answer; ``send`` holds every
    frame after ``message`` until the peer is connected, so nothing is sent into the void
    and pacing starts with the first packet that can arrive."""

    def __init__(self, session: WhepSession, outbox: _Outbox) -> None:
        self.session = session
        self.outbox = outbox
        self.track: PacketTrack | None = None
        #: Set at the listen's first frame (``message``) or its refusal.
        self.settled = trio.Event()

    def _push(self, sent: SentFrame) -> None:
        assert self.track is not None
        base = self.session.base
        items = [(packet, ts + base) for packet, ts in sent.packets]
        self.session.packets_sent += len(items)
        self.session.track_end = sent.end_ts + base
        self.outbox.put(self.track, items)

    async def send(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            sent = decode_sent(frame)
            if isinstance(sent.frame, MessageInfo):
                self.session.messages.append(sent.frame.msg)
                self.settled.set()
                continue
            await self.session.connected.wait()
            self.session.state = "playing"
            if isinstance(sent.frame, Chunk):
                self._push(sent)
                self.outbox.flush()

    def try_send(self, frame: bytes) -> bool:
        self._push(decode_sent(frame))
        return True

    def flush(self) -> None:
        self.outbox.flush()

    async def fail(self, exc: ProtocolError, data: bytes) -> None:
        self.session.error = exc
        self.settled.set()


class RtcGateway:
    """The WHIP and WHEP sessions of this server process, and their asyncio thread.

    Sessions run as tasks of the gateway's nursery, so a peer outlives the HTTP request
    that created it; ``serve`` owns that nursery. Each session is found by id and only by
    its owner: any other account gets ``NOT_FOUND``, as for an id that never existed."""

    def __init__(
        self,
        services: Services,
        *,
        host: str = "127.0.0.1",
        idle_timeout: float = IDLE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
        max_total: int = MAX_TOTAL_SESSIONS,
    ) -> None:
        self.services = services
        self.hub: Hub = services.hub
        self.host = host
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.max_sessions = max_sessions
        self.max_total = max_total
        self.sessions: dict[str, WhipSession | WhepSession] = {}
        #: With ``serve --redis``: the sessions of the other processes (``rtc_shared``).
        self.shared: SharedSessions | None = None
        self._aio: AsyncioThread | None = None
        self._nursery: trio.Nursery | None = None
        self._outbox: _Outbox | None = None

    @property
    def aio(self) -> AsyncioThread:
        if self._aio is None:
            # Started on first use: a server that never sees WebRTC starts no thread.
            use_host_addresses([self.host])
            self._aio = AsyncioThread("voxer-rtc")
        return self._aio

    @property
    def outbox(self) -> _Outbox:
        if self._outbox is None:
            self._outbox = _Outbox(self.aio)
        return self._outbox

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reap)
                if self.shared is not None:
                    nursery.start_soon(self.shared.serve, self._answer_here)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            if self._aio is not None:
                aio, self._aio, self._outbox = self._aio, None, None
                peers = [s.peer for s in self.sessions.values() if s.peer is not None]
                # Shielded: this runs while the server is being cancelled, and an await
                # that is not would raise at once, leaving the loop and its peers running.
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(2):
                        for peer in peers:
                            await aio.run(_close, peer)
                    await trio.to_thread.run_sync(aio.stop)

    async def _reap(self) -> None:
        """Forget ended sessions ``LINGER`` seconds after they ended."""
        while True:
            await trio.sleep(LINGER / 4)
            now = trio.current_time()
            for key, session in list(self.sessions.items()):
                if session.ended_at is not None and now - session.ended_at >= LINGER:
                    del self.sessions[key]

    def find(self, account_id: str, session_id: str, kind: type[RtcSession]) -> Any:
        session = self.sessions.get(session_id)
        if session is None or session.account.id != account_id or not isinstance(session, kind):
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such session", "VXS-12-11")
        return session

    async def status(self, account: Account, session_id: str, kind: str) -> dict[str, Any]:
        """``GET /v1/{whip,whep}/{id}``, for a session of this process or another's."""
        return await self._on_session("status", kind, account.id, session_id)

    async def end(self, account: Account, session_id: str, kind: str) -> dict[str, Any]:
        """``DELETE /v1/{whip,whep}/{id}``, for a session of this process or another's."""
        return await self._on_session("end", kind, account.id, session_id)

    async def _on_session(
        self, op: str, kind: str, account_id: str, session_id: str
    ) -> dict[str, Any]:
        local = self.sessions.get(session_id)
        if local is None and self.shared is not None:
            return await self.shared.ask(op, kind, account_id, session_id)
        return await self._answer_here(op, kind, account_id, session_id)

    async def _answer_here(
        self, op: str, kind: str, account_id: str, session_id: str
    ) -> dict[str, Any]:
        """What this process answers for one of its own sessions (asked here or elsewhere)."""
        found = self.find(account_id, session_id, WhipSession if kind == "whip" else WhepSession)
        if op == "status":
            return found.status()  # type: ignore[no-any-return]
        if isinstance(found, WhipSession):
            session = await self.end_whip(found)
            if session.closed is None and session.error is not None:
                raise session.error
            return session.status()
        return (await self.end_whep(found)).status()

    async def _shared_start(self, session: WhipSession | WhepSession) -> None:
        if self.shared is not None:
            await self.shared.started(session.account.id, session.id)

    async def _shared_end(self, session: WhipSession | WhepSession) -> None:
        if self.shared is not None:
            await self.shared.ended(session.account.id, session.id)

    async def _start(
        self,
        session: WhipSession | WhepSession,
        offer: str,
        *,
        send: bool,
        on_packet: Callable[[RtpArrival], None] | None = None,
    ) -> str:
        """Negotiate ``session``'s peer; the answer SDP."""
        token = trio.lowlevel.current_trio_token()
        on_state = trio_callback(token, session.state_changed)
        peer, answer = await self.aio.run(
            functools.partial(_answer, offer, send=send, on_packet=on_packet, on_state=on_state)
        )
        session.peer = peer
        return answer

    async def check_room(self, account: Account) -> None:
        """Refuse a new session beyond ``max_sessions`` open ones of the account, or
        ``max_total`` open ones in all (VXS-12-12), on every process of the service."""
        live = [s for s in self.sessions.values() if not s.ended.is_set()]
        open_ = sum(1 for session in live if session.account.id == account.id)
        total = len(live)
        if self.shared is not None:
            account_elsewhere, total_elsewhere = await self.shared.elsewhere(account.id)
            open_ += account_elsewhere
            total += total_elsewhere
        if total >= self.max_total:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SESSIONS,
                f"the server has {total} WebRTC sessions open; retry later",
                "VXS-12-12",
            )
        if open_ >= self.max_sessions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SESSIONS,
                f"{open_} WebRTC sessions are open; end one first (DELETE)",
                "VXS-12-12",
            )

    def _nursery_or_fail(self) -> trio.Nursery:
        if self._nursery is None:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is stopping", "VXS-5.6-3")
        return self._nursery

    # -- WHIP ----------------------------------------------------------------------------

    async def whip(
        self, account: Account, thread_id: str, msg: str | None, offer: str
    ) -> tuple[WhipSession, str]:
        """``POST /v1/threads/{thread}/whip``: a new session and the answer (VXS-12-2)."""
        nursery = self._nursery_or_fail()
        check_identifier(thread_id, "thread")
        msg = check_identifier(msg, "msg") if msg is not None else new_id()
        await self.services.threads.can_post(account, thread_id)
        await self.check_room(account)
        check_offer(offer)
        send, receive = trio.open_memory_channel[RtpArrival](ARRIVAL_BUFFER)
        session = WhipSession(account=account, thread_id=thread_id, msg=msg, arrivals=receive)
        on_packet = to_trio(send, trio.lowlevel.current_trio_token())
        answer = await self._start(session, offer, send=False, on_packet=on_packet)
        self.sessions[session.id] = session
        try:
            await nursery.start(self._run_whip, session, send)
        except BaseException:
            del self.sessions[session.id]  # its task closed the peer
            raise
        await self._shared_start(session)
        return session, answer

    async def _run_whip(
        self,
        session: WhipSession,
        arrivals_in: trio.MemorySendChannel[RtpArrival],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Run the upload; ``started`` once the message is open (or raise its error)."""
        account = session.account

        async def authorize(thread_id: str) -> None:
            await self.services.threads.can_post(account, thread_id)

        upload = UploadSession(
            self.hub,
            account.id,
            authorize,
            _WhipSink(session),
            idle_timeout=max(30.0, self.idle_timeout * 2),
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload.run, self._frames(session))
                await session.opened.wait()
                refusal = session.error
                if refusal is None and session.state == "closed":
                    refusal = ProtocolError(
                        ErrorCode.MESSAGE_CLOSED, f"message {session.msg!r} is closed", "VXS-12-2"
                    )
                if refusal is None:
                    task_status.started()
            if refusal is not None:
                raise refusal
        except ProtocolError:
            raise
        except Exception:
            log.exception("WHIP session %s failed", session.id)
            session.error = ProtocolError(ErrorCode.INTERNAL_ERROR, "the session failed")
            session.state = "failed"
        finally:
            with trio.CancelScope(shield=True):
                await arrivals_in.aclose()
                if session.peer is not None and self._aio is not None:
                    await self._aio.run(_close, session.peer)
            session.ended_at = trio.current_time()
            session.ended.set()
            await self._shared_end(session)

    async def _frames(self, session: WhipSession) -> AsyncIterator[bytes]:
        """The talker's frames, made from RTP: ``open``, a ``chunk`` per Opus payload,
        ``close`` when the talker ends, goes quiet or disconnects (VXS-12-3, VXS-12-4)."""
        yield encode_frame(
            Open(msg=session.msg, thread=session.thread_id, codec="opus", created=now_ms())
        )
        live = self.hub.peek(session.msg)
        if live is None:  # the open failed; the upload reports why and stops reading
            return
        # A resumed message continues after its last chunk (VXS-12-3).
        seq, base = live.next_seq, live.end_ts
        end_ts = base
        unwrap = Unwrapper()
        while True:
            # Once stopped (DELETE, or the peer went away), what the talker sent before the
            # stop but is still on its way (in the socket, in aiortc's loop, on this
            # channel) is the talker's: take it, until quiet or a packet that aiortc saw
            # more than DRAIN_SLACK after the stop. A talker that keeps sending after its
            # DELETE does not hold the close up.
            stopping = session.stop_requested.is_set()
            with trio.move_on_after(DRAIN_QUIET if stopping else self.idle_timeout) as scope:
                if not stopping:
                    session.waiting = scope
                try:
                    arrival = await session.arrivals.receive()
                except trio.EndOfChannel:
                    break
                finally:
                    session.waiting = None
            if scope.cancelled_caught:
                if stopping or not session.stop_requested.is_set():
                    break  # quiet after a stop, or quiet for idle_timeout
                continue  # stopped while waiting: take what is left first
            if session.stop_requested.is_set() and (
                arrival.arrival_ns > session.stopped_ns + DRAIN_SLACK_NS
            ):
                break
            ts = base + unwrap(arrival.timestamp)
            try:
                duration = parse_packet(arrival.payload).duration
            except InvalidOpusPacket as exc:
                session.dropped_invalid += 1
                session.error = ProtocolError(
                    ErrorCode.INVALID_OPUS,
                    f"RTP packet {arrival.sequence_number}: {exc}",
                    "VXS-12-3",
                )
                continue
            if ts < end_ts:  # reordered, duplicated or from before the resume
                session.dropped_late += 1
                continue
            yield encode_frame(Chunk(seq=seq, ts=ts, packets=(arrival.payload,)))
            seq += 1
            end_ts = ts + duration
            session.received += 1
        yield encode_frame(Close(chunks=seq))

    async def end_whip(self, session: WhipSession) -> WhipSession:
        """``DELETE``: stop reading, close the message, wait until that is durable."""
        session.stop()
        await session.ended.wait()
        return session

    # -- WHEP ----------------------------------------------------------------------------

    async def whep_message(
        self, account: Account, request: Listen, offer: str
    ) -> tuple[WhepSession, str]:
        """``POST /v1/messages/{id}/whep``: play one message (VXS-12-5)."""
        check_identifier(request.msg, "message")
        return await self._whep(WhepSession(account=account, request=request), offer)

    async def whep_thread(
        self, account: Account, thread_id: str, offer: str, *, own: bool = False
    ) -> tuple[WhepSession, str]:
        """``POST /v1/threads/{id}/whep``: monitor a thread (VXS-12-9)."""
        check_identifier(thread_id, "thread")
        await self.services.threads.visible(account, thread_id)
        session = WhepSession(account=account, thread_id=thread_id, own=own)
        return await self._whep(session, offer)

    async def _whep(self, session: WhepSession, offer: str) -> tuple[WhepSession, str]:
        """Start the listen (its refusal is the answer), then check the offer and negotiate
        the peer (the order of VXS-12-2)."""
        nursery = self._nursery_or_fail()
        sink = _RtcSink(session, self.outbox)
        await self.check_room(session.account)
        await nursery.start(self._run_whep, session, sink)
        try:
            check_offer(offer)
            answer = await self._start(session, offer, send=True)
        except BaseException:
            session.stop()
            raise
        assert session.peer is not None
        sink.track = session.peer.track
        self.sessions[session.id] = session
        await self._shared_start(session)
        return session, answer

    async def _run_whep(
        self, session: WhepSession, sink: _RtcSink, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The session's life: ``started`` once the listen is under way (for monitor mode
        at once), raising the listen's refusal instead if it has one."""
        refusal: ProtocolError | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when, session.stop_requested, nursery.cancel_scope)
                nursery.start_soon(self._connect_or_stop, session)
                if session.request is not None:
                    nursery.start_soon(self._play_then_cancel, session, sink, nursery.cancel_scope)
                    await sink.settled.wait()
                    refusal = session.error
                    if refusal is not None:
                        nursery.cancel_scope.cancel()
                    else:
                        task_status.started()
                else:
                    task_status.started()
                    await self._monitor(session, sink)
                    nursery.cancel_scope.cancel()
            if refusal is not None:
                raise refusal
            session.state = "ended" if session.error is None else "failed"
        except ProtocolError:
            session.state = "failed"
            if refusal is not None:
                raise
        except Exception:
            log.exception("WHEP session %s failed", session.id)
            session.error = ProtocolError(ErrorCode.INTERNAL_ERROR, "the session failed")
            session.state = "failed"
        finally:
            with trio.CancelScope(shield=True):
                if session.peer is not None and self._aio is not None:
                    await self._aio.run(_finish, session.peer, 2.0)
            session.ended_at = trio.current_time()
            session.ended.set()
            await self._shared_end(session)

    async def _connect_or_stop(self, session: RtcSession) -> None:
        """Set ``connected`` when ICE and DTLS are up; give the session up if they fail,
        or take longer than ``connect_timeout`` (VXS-12-10)."""
        with trio.move_on_after(self.connect_timeout):
            while session.connection not in ("connected", "failed", "closed"):
                await session.changed.wait()
        if session.connection == "connected":
            session.connected_ns = time.monotonic_ns()
            session.connected.set()
            return
        session.error = ProtocolError(
            ErrorCode.IDLE_TIMEOUT,
            f"the peer did not connect (connection {session.connection})",
            "VXS-12-10",
        )
        session.stop()

    async def _play_then_cancel(
        self, session: WhepSession, sink: _RtcSink, scope: trio.CancelScope
    ) -> None:
        assert session.request is not None
        await self._play(session, session.request, sink)
        scope.cancel()

    async def _play(self, session: WhepSession, request: Listen, sink: _RtcSink) -> None:
        account = session.account

        async def authorize(record: MessageRecord) -> None:
            await self.services.threads.can_listen(account, record)

        await ListenSession(self.hub, request, authorize, sink).run()

    async def _monitor(self, session: WhepSession, sink: _RtcSink) -> None:
        """Play each message that starts in the thread, one after another, from its start."""
        assert session.thread_id is not None
        with self.hub.watch(session.thread_id) as started:
            async for live in started:
                if live.id in session.messages:
                    continue  # resumed by its talker: it is playing or has played
                if live.record.sender == session.account.id and not session.own:
                    continue  # a walkie-talkie does not play you back to yourself
                await session.connected.wait()
                # Start where the track ended, or now if the track has been quiet since.
                elapsed = (time.monotonic_ns() - session.connected_ns) * 48 // 1_000_000
                session.base = max(session.track_end, elapsed)
                request = Listen(msg=live.id, from_seq=0, speed=DEFAULT_SPEED)
                session.error = None
                await self._play(session, request, sink)

    async def end_whep(self, session: WhepSession) -> WhepSession:
        session.stop()
        await session.ended.wait()
        return session


async def _finish(peer: Peer, grace: float) -> None:
    """End the track once its queue has gone out (bounded by ``grace``), then close the
    peer: aiortc sends RTCP BYE, which ends the listener's track (VXS-12-8)."""
    track = peer.track
    if track is not None:
        track.end()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(track.finished.wait(), grace)
    await close_quietly(peer.pc)


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


__all__ = ["SDP", "RtcGateway", "WhepSession", "WhipSession", "monitor_own", "whep_listen"]
