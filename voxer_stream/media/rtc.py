"""Opus packets in and out of aiortc, untouched: the media half of the WebRTC binding.

aiortc decodes what it receives and encodes what it sends; the protocol forbids
both (VXS-7-4: the server forwards the talker's packets byte for byte). So:

* ``PacketTrack`` is an audio track that hands aiortc's sender *encoded* Opus
  packets (``av.Packet``), which the sender only packs into RTP: the RTP payload
  is the packet and the RTP timestamp is its media time (``ts`` in 48 kHz ticks)
  plus the sender's random origin (RFC 3550).
* ``tap_receiver`` sees every RTP packet a receiver gets *before* its jitter buffer
  and decoder: the payload is the talker's Opus packet, and the arrival time is the
  network's, not the jitter buffer's (about 80 ms later, see STACK-NOTES).

Everything here runs on an asyncio loop (aiortc is asyncio-only). ``AsyncioThread``
is how a trio program drives one: a loop in its own thread, coroutines submitted
from trio and awaited without blocking trio, results and callbacks carried back
with trio's token.

ICE: ``use_host_addresses`` restricts aioice's host candidates (aioice skips
127.0.0.1 by default, and a server bound to loopback must offer only loopback);
``loopback_configuration`` has no STUN or TURN server, so nothing leaves the host.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fractions
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import aioice.ice
import av
import trio
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The RTP clock of Opus (RFC 7587 section 4.1) and of the protocol's ticks.
CLOCK_RATE: Final = 48000
TIME_BASE: Final = fractions.Fraction(1, CLOCK_RATE)
OPUS_MIME: Final = "audio/opus"


# -- ICE on the host's own addresses -------------------------------------------------


def use_host_addresses(addresses: Iterable[str]) -> None:
    """Make every ICE agent of this process offer host candidates on ``addresses`` only.

    aioice has no setting for this: it asks the OS for every interface and leaves out
    127.0.0.1, so a server on loopback could not be reached and one on a public
    address would also offer its private ones. Process-wide, as aioice's lookup is."""
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def loopback_configuration() -> RTCConfiguration:
    """No STUN or TURN server: host candidates only (otherwise aiortc asks a public one)."""
    return RTCConfiguration(iceServers=[])


def prefer_opus(transceiver: RTCRtpTransceiver) -> None:
    """Offer (or answer with) Opus alone, so the payload is always an Opus packet."""
    capabilities = RTCRtpSender.getCapabilities("audio")
    opus = [c for c in capabilities.codecs if c.mimeType.lower() == OPUS_MIME]
    transceiver.setCodecPreferences(opus)


def has_opus(sdp: str) -> bool:
    """Whether an SDP offers Opus on an audio section (``a=rtpmap:<pt> opus/48000/2``)."""
    in_audio = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_audio = line.startswith("m=audio ")
        elif in_audio and line.lower().startswith("a=rtpmap:") and " opus/48000" in line.lower():
            return True
    return False


def audio_direction(sdp: str) -> str:
    """The direction of an SDP's first audio section (RFC 8866 section 6.7; ``sendrecv``
    when it says none), from the offerer's side."""
    in_audio = False
    direction = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            if in_audio:
                break
            in_audio = line.startswith("m=audio ")
        elif in_audio and line.strip() in (
            "a=sendrecv",
            "a=sendonly",
            "a=recvonly",
            "a=inactive",
        ):
            direction = line.strip()[2:]
    return direction or "sendrecv"


# -- sending encoded packets ---------------------------------------------------------


class PacketTrack(MediaStreamTrack):
    """An audio track of already encoded Opus packets, each with its media time.

    ``push`` (on the loop's thread, e.g. through ``call_soon_threadsafe``) queues a
    packet; aiortc's sender takes it from ``recv`` as soon as it is queued, so pacing
    is the pusher's business. ``end`` ends the track once the queue is empty."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        #: Set once ``end``'s marker has been taken: every packet before it went out.
        self.finished = asyncio.Event()
        #: Set while nothing is queued: every packet pushed so far was taken by the sender.
        self.empty = asyncio.Event()
        self.empty.set()

    def push(self, packet: bytes, ts: int) -> None:
        self.empty.clear()
        self._queue.put_nowait((packet, ts))

    def push_many(self, packets: Iterable[tuple[bytes, int]]) -> None:
        for item in packets:
            self.empty.clear()
            self._queue.put_nowait(item)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def recv(self) -> av.Packet:  # type: ignore[type-arg]
        if self.readyState != "live":
            raise MediaStreamError
        item = await self._queue.get()
        if self._queue.empty():
            self.empty.set()
        if item is None:
            self.finished.set()
            self.stop()
            raise MediaStreamError
        data, ts = item
        packet = av.Packet(data)
        packet.pts = ts
        packet.time_base = TIME_BASE
        return packet


# -- receiving RTP before the jitter buffer -------------------------------------------


@dataclass(frozen=True, slots=True)
class RtpArrival:
    """One RTP packet as it arrived: ``arrival_ns`` is ``time.monotonic_ns()`` (system
    wide on Linux, so comparable across processes), ``payload`` the Opus packet."""

    arrival_ns: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: int
    payload_type: int
    payload: bytes


class _DiscardQueue:
    """Stands in for the queue aiortc's decoder thread reads: it holds nothing but the
    stop marker, so the thread decodes nothing and ends (and ends the track) on stop."""

    def __init__(self) -> None:
        self._stopped = threading.Event()

    def put(self, item: object) -> None:
        if item is None:
            self._stopped.set()

    def get(self) -> None:
        self._stopped.wait()


def tap_receiver(
    receiver: RTCRtpReceiver, on_packet: Callable[[RtpArrival], None], *, decode: bool = False
) -> None:
    """Call ``on_packet`` with every RTP packet ``receiver`` gets, before aiortc's own
    handling (statistics for RTCP reports, jitter buffer), which then goes on as usual.

    aiortc offers no hook for encoded media; the DTLS transport's router calls the
    receiver's ``_handle_rtp_packet`` for each packet, which this wraps. Unless ``decode``,
    nothing is decoded either: aiortc would decode every packet in a thread of its own
    (tens of microseconds each, under the GIL) into frames nobody here listens to.
    Call this before the connection is made (aiortc starts the decoder thread then)."""
    if not decode:
        # aiortc 1.16 gives its decoder thread this queue when the receiver starts.
        receiver._RTCRtpReceiver__decoder_queue = _DiscardQueue()  # type: ignore[attr-defined]
    original = receiver._handle_rtp_packet

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        on_packet(
            RtpArrival(
                arrival_ns=time.monotonic_ns(),
                sequence_number=packet.sequence_number,
                timestamp=packet.timestamp,
                ssrc=packet.ssrc,
                marker=packet.marker,
                payload_type=packet.payload_type,
                payload=bytes(packet.payload),
            )
        )
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


def drain(track: MediaStreamTrack) -> asyncio.Task[None]:
    """Read and drop a received track's decoded frames: nobody else reads them, and
    aiortc queues them without bound otherwise."""

    async def run() -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            pass

    return asyncio.ensure_future(run())


class Unwrapper:
    """RTP's 32-bit timestamps as a growing count (they wrap every ~24.9 h at 48 kHz)."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._value = 0

    def __call__(self, timestamp: int) -> int:
        if self._last is None:
            self._last = timestamp
            return 0
        delta = (timestamp - self._last) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000  # an earlier packet (reordered): a negative step
        self._last = timestamp
        self._value += delta
        return self._value


async def close_quietly(pc: RTCPeerConnection) -> None:
    # Closing a half-negotiated connection can raise; it is gone either way.
    with contextlib.suppress(Exception):
        await pc.close()


# -- an asyncio loop driven from trio --------------------------------------------------


class AsyncioThread:
    """One asyncio event loop in a daemon thread, for the aiortc peers of a trio program.

    Why a thread and not trio-asyncio: aiortc's sender and receiver loops, DTLS and
    ICE run for as long as a peer lives, and they should not run on the trio loop that
    serves everything else; a thread also keeps aiortc's blocking calls (its decoder
    threads join, OpenSSL handshakes) off it. No call here blocks trio."""

    def __init__(self, name: str = "aiortc") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop's thread (from any thread); never blocks."""
        self.loop.call_soon_threadsafe(fn, *args)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` on the asyncio loop, from trio. Cancelling the trio task
        cancels the coroutine (and waits for it to finish cancelling)."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        async def call() -> T:
            return await fn(*args)

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future = self.submit(call())
        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        return future.result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def trio_callback(token: trio.lowlevel.TrioToken, fn: Callable[[T], object]) -> Callable[[T], None]:
    """A function for the asyncio side that runs ``fn(item)`` on the trio loop, soon and
    without blocking either loop (a no-op once trio has stopped)."""

    def call(item: T) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(fn, item)

    return call


def to_trio(send: trio.MemorySendChannel[T], token: trio.lowlevel.TrioToken) -> Callable[[T], None]:
    """A function for the asyncio side that puts an item on a trio channel. An item that
    finds the channel full or closed is dropped (and logged): a stalled trio consumer
    must not grow memory without bound, nor block aiortc's loop."""

    def put(item: T) -> None:
        try:
            send.send_nowait(item)
        except trio.WouldBlock:
            log.warning("trio side is not keeping up: an item from aiortc was dropped")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    return trio_callback(token, put)
