"""rtc-latency: one WebRTC talker, N aiortc subscribers; voxer-stream side by side with Janus.

``python -m benchmarks rtc-latency [--quick] [--duration 20] [--subscribers 1 10 50]
[--rounds 2]``

What is measured: the latency of the live path over WebRTC, from the moment a talker
means to send a 20 ms Opus packet to the moment its RTP packet reaches a subscriber,
for voxer-stream's WHIP/WHEP binding (``voxer_stream/transports/webrtc.py``) and for
Janus 1.1.2's Streaming plugin (``benchmarks/baselines/janus.py``), with the same
packets, the same schedule and the same subscribers. For each N the two variants
alternate in one invocation (voxer, janus, voxer, janus ... ``--rounds`` times), each
run with fresh processes, so a drift of the shared machine hits both; rounds of a
variant are merged (percentiles from the merged histograms) and reported with the
ratios voxer / janus.

One run:

* the server: ``voxer-stream serve`` as ``live_latency.Server`` starts it (plus
  ``--rtc-idle-timeout``, see below), accounts and a thread over REST; or Janus with
  a generated configuration (HTTP transport and Streaming plugin only, one Opus RTP
  mountpoint, ICE on 127.0.0.1 only);
* subscriber processes (``subscriber_main``, plain asyncio, one aiortc peer per
  subscriber, ``--subscriber-procs``) start first, so that importing aiortc overlaps
  the talker's set-up;
* the talker process: voxer, ``POST /v1/threads/{id}/whip?msg=...`` with a sendonly
  Opus offer, a ``PacketTrack`` that hands aiortc the encoded packets (no re-encoding),
  ``DELETE`` of the session at the end; Janus, plain RTP over UDP to the mountpoint
  (PT 111, seq i, timestamp i * 960). The talker connects *before* the subscribers
  join: for voxer the WHIP POST creates the message they listen to;
* every subscriber joins and gets connected (ICE + DTLS) before the first packet:
  voxer, ``POST /v1/messages/{msg}/whep?live_edge=1`` with a recvonly Opus offer;
  Janus, ``create`` / ``attach`` / ``watch`` / ``start`` with aiortc's answer to
  Janus's offer. Then the parent picks ``t0`` (500 ms ahead) and both talker and
  subscribers get it;
* open loop: packet i is handed to the socket (Janus) or to aiortc's sender (voxer) at
  ``t0 + i * 20 ms`` whatever happens, ``time.monotonic_ns()`` (system-wide, so it
  compares across processes); a stall shows up as latency of every packet behind it.

Each subscriber taps RTP *before* aiortc's jitter buffer (``media.rtc.tap_receiver``;
the jitter buffer would add about 80 ms of its own): latency = arrival - intended
send time. The packet index is (unwrapped RTP timestamp - first RTP timestamp) / 960:
both servers keep the talker's media time in the RTP timestamp (voxer: the chunk's
``ts`` plus a random origin, VXS-12-7; Janus: the source's timestamps plus a constant
offset per subscriber, checked here by the payload comparison). Every packet's payload
is compared byte for byte with the talker's packet of that index; lost, reordered,
duplicated, mismatched and out-of-range (a timestamp that is not a whole packet
from the first) packets are counted: all must be 0.

The first ``--warmup`` seconds are discarded. Server CPU (``live_latency.cpu_seconds``,
all threads) is read over the measured window and divided by the deliveries in it
(packets x subscribers). Every server must bind 127.0.0.1 only: the sockets each
holds are read from ``/proc`` during the run and recorded; any other address fails
the run. Results: ``<out>/rtc-latency.json`` and ``<out>/rtc-latency.png``.

What differs between the variants, on purpose: the talker leg. A WHIP talker is a
WebRTC peer (ICE, DTLS, SRTP through aiortc in the talker process); Janus's Streaming
plugin takes plain RTP from its source. voxer's figures therefore include the
talker's aiortc sender and SRTP both ways, and the server's Opus check, SQLite commit
and ack path; Janus relays from memory. That is the comparison: the whole live path a
client of each would use.

``--rtc-idle-timeout`` (60 s, passed to ``serve``): a WHIP session closes its message
after 5 s without RTP by default (VXS-12-4), and the talker is connected before the
subscribers negotiate, which at N = 50 on 2 cores can take longer than that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import shlex
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .live_latency import (
    FRAME_NS,
    SPIN_S,
    Conn,
    TalkerResult,
    _latency_fields,
    _plain,
    latency_histograms,
    listener_processes,
    machine,
    marginal_cpu,
    measure_window,
    merge_rounds,
    ratios,
    stop_processes,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: One Opus packet of 20 ms in RTP timestamp ticks (48 kHz).
TICKS = 960
VARIANTS = ("voxer", "janus")
#: Packages whose versions the result records, besides ``live_latency.PACKAGES``.
RTC_PACKAGES = ("aiortc", "aioice", "pylibsrtp", "httpx")
#: How far ahead of "everyone is connected" the schedule starts.
START_AHEAD_NS = 500_000_000
#: Per subscriber: signalling and ICE + DTLS, on a loaded 2-core machine.
CONNECT_TIMEOUT_S = 20.0
#: Per subscriber process: every subscriber joined (they negotiate a few at a time).
JOIN_TIMEOUT_S = 120.0
#: Concurrent negotiations per subscriber process.
JOIN_CONCURRENCY = 8
#: The talker waits this long after its last packet left aiortc before ``DELETE``.
TALKER_LINGER_S = 0.3
TEARDOWN_TIMEOUT_S = 20.0
#: After the last intended send, how long subscribers wait for late packets and (voxer)
#: for the server to end the track once the talker's DELETE closed the message.
GRACE_S = 5.0
REQUEST_TIMEOUT_S = 15.0
SDP = "application/sdp"


# -- asyncio load generators ------------------------------------------------------


def run_asyncio_in_process(
    pipe: Conn, what: str, main: Callable[..., Coroutine[Any, Any, Any]], *args: Any
) -> None:
    """``live_latency.run_in_process`` for asyncio (aiortc is asyncio-only): run
    ``main(*args)`` and send ``("done", result)`` or ``("error", ...)`` before
    re-raising, so the parent never waits for a dead child."""
    try:
        result = asyncio.run(main(*args))
        pipe.send(("done", _plain(result)))
    except BaseException as exc:
        pipe.send(("error", f"{what}: {exc!r}"))
        raise


async def receive(pipe: Conn, kind: str, within_s: float) -> tuple[Any, ...]:
    """The parent's next message, which must be ``kind``; polled in a thread so the
    loop (and aiortc's peers on it) keeps running. Bounded by ``within_s``."""
    ready = await asyncio.to_thread(pipe.poll, within_s)
    if not ready:
        raise TimeoutError(f"no {kind!r} from the parent within {within_s} s")
    message: tuple[Any, ...] = pipe.recv()
    if message[0] != kind:
        raise RuntimeError(f"expected {kind!r} from the parent, got {message!r}")
    return message


async def receive_go(pipe: Conn, within_s: float = JOIN_TIMEOUT_S + 60) -> int:
    """``t0`` (monotonic ns) from the parent's ``("go", t0)``."""
    t0: int = (await receive(pipe, "go", within_s))[1]
    return t0


async def send_on_schedule(
    packets: list[bytes],
    t0: int,
    send: Callable[[int, int, bytes], None],
    result: TalkerResult,
) -> None:
    """Open loop: ``send(seq, ts, packet)`` at ``t0 + seq * FRAME_NS``, whatever happens.

    ``live_latency.send_on_schedule`` on asyncio, for both talkers here: the same
    schedule and lag accounting. ``ts`` is the packet's media time (48 kHz ticks from
    the first packet). asyncio's timers wake up to ~1 ms late (epoll's timeout is in
    whole milliseconds), so it sleeps to ``SPIN_S`` before and spins the rest."""
    from voxer_stream.media.opus import packet_duration

    lags: list[int] = []
    ts = 0
    for seq, packet in enumerate(packets):
        intended = t0 + seq * FRAME_NS
        delay = (intended - time.monotonic_ns()) / 1e9 - SPIN_S
        if delay > 0:
            await asyncio.sleep(delay)
        while time.monotonic_ns() < intended:
            pass
        now = time.monotonic_ns()
        lags.append(now - intended)
        result.sent_at.append(now)
        send(seq, ts, packet)
        ts += packet_duration(packet)
    worst = max(range(len(lags)), key=lags.__getitem__, default=0)
    result.worst_lag_seq = worst
    lags.sort()
    result.chunks = len(packets)
    if lags:
        result.send_lag_us_p50 = lags[len(lags) // 2] / 1000
        result.send_lag_us_p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] / 1000
        result.send_lag_us_max = lags[-1] / 1000


async def wait_connected(pc: Any, within_s: float) -> None:
    """Until ``pc`` (an RTCPeerConnection) is connected; raises if it fails or takes
    longer than ``within_s``."""
    changed = asyncio.Event()
    pc.add_listener("connectionstatechange", changed.set)
    try:
        async with asyncio.timeout(within_s):
            while pc.connectionState != "connected":
                if pc.connectionState in ("failed", "closed"):
                    raise RuntimeError(f"peer connection {pc.connectionState}")
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise TimeoutError(
            f"peer not connected within {within_s} s ({pc.connectionState})"
        ) from None
    finally:
        pc.remove_listener("connectionstatechange", changed.set)


# -- the voxer talker: WHIP ---------------------------------------------------------


@dataclass
class RtcTalkerResult(TalkerResult):
    #: The WHIP session's final status (``DELETE``'s answer): chunks, duration, drops.
    whip_status: dict[str, Any] = field(default_factory=dict)


def voxer_talker_main(
    url: str, token: str, thread: str, msg: str, packets: list[bytes], pipe: Conn
) -> None:
    """The voxer variant's talker process (``janus.janus_talker_main`` is the other)."""
    run_asyncio_in_process(
        pipe, "voxer talker", _voxer_talk, url, token, thread, msg, packets, pipe
    )


async def _voxer_talk(
    url: str, token: str, thread: str, msg: str, packets: list[bytes], pipe: Conn
) -> RtcTalkerResult:
    import httpx
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from voxer_stream.media.rtc import (
        PacketTrack,
        close_quietly,
        loopback_configuration,
        prefer_opus,
        use_host_addresses,
    )

    use_host_addresses(["127.0.0.1"])
    result = RtcTalkerResult()
    headers = {"Authorization": f"Bearer {token}"}
    pc = RTCPeerConnection(loopback_configuration())
    track = PacketTrack()
    try:
        # trust_env=False: no proxy from the environment for a server on 127.0.0.1.
        client = httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, trust_env=False)
        async with client as http:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            prefer_opus(transceiver)
            await pc.setLocalDescription(await pc.createOffer())
            response = await http.post(
                f"/v1/threads/{thread}/whip",
                params={"msg": msg},
                content=pc.localDescription.sdp.encode(),
                headers={**headers, "Content-Type": SDP},
            )
            _check_created(response, "WHIP")
            location = response.headers["location"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
            await wait_connected(pc, CONNECT_TIMEOUT_S)
            pipe.send(("opened",))
            t0 = await receive_go(pipe)
            await send_on_schedule(packets, t0, lambda _seq, ts, p: track.push(p, ts), result)
            # Every packet taken by aiortc's sender (the end marker is taken after the
            # last one), then a moment on the wire: a DELETE stops the session's reading
            # at once (VXS-12-4), so it must come after. Ending the track stops RTP only;
            # the peer (and its RTCP) lives on until the DELETE has been answered.
            track.end()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(track.finished.wait(), 5.0)
            await asyncio.sleep(TALKER_LINGER_S)
            response = await http.delete(location, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"WHIP DELETE: HTTP {response.status_code} {response.text}")
            result.whip_status = response.json()
            result.closed = result.whip_status.get("chunks") == len(packets)
            result.acked = int(result.whip_status.get("chunks", 0)) - 1
    finally:
        if not track.finished.is_set():
            track.end()
        await close_quietly(pc)
    return result


def _check_created(response: Any, what: str) -> None:
    if response.status_code != 201 or "location" not in response.headers:
        raise RuntimeError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    kind = response.headers.get("content-type", "")
    if not kind.startswith(SDP):
        raise RuntimeError(f"{what}: answer Content-Type {kind!r}, not {SDP}")


# -- subscribers ----------------------------------------------------------------------


@dataclass
class SubscriberResult:
    index: int
    received: int = 0
    distinct: int = 0
    lost: int = 0
    reordered: int = 0
    duplicated: int = 0
    #: Payload differs from the talker's packet of that index.
    mismatched: int = 0
    #: RTP timestamp not a whole number of packets from the first, or beyond the last.
    out_of_range: int = 0
    #: voxer: the server ended the track (RTCP BYE) after the talker's DELETE.
    ended_by_server: bool = False
    connect_ms: float = 0.0
    error: str = ""
    payload_types: list[int] = field(default_factory=list)
    ssrcs: int = 0
    #: (packet index, monotonic_ns at arrival), first arrival of each index.
    arrivals: list[tuple[int, int]] = field(default_factory=list)


class Tap:
    """One subscriber's checks, called for every RTP packet before the jitter buffer."""

    def __init__(self, result: SubscriberResult, packets: list[bytes]) -> None:
        from voxer_stream.media.rtc import Unwrapper

        self.result = result
        self.packets = packets
        self.unwrap = Unwrapper()
        self.seen: set[int] = set()
        self.highest = -1
        self.ssrcs: set[int] = set()
        self.complete = asyncio.Event()
        self.ended = asyncio.Event()
        #: Set before the subscriber's own teardown: a track ending after it is not the
        #: server's doing.
        self.closing = False

    def __call__(self, arrival: Any) -> None:
        result = self.result
        result.received += 1
        self.ssrcs.add(arrival.ssrc)
        if arrival.payload_type not in result.payload_types:
            result.payload_types.append(arrival.payload_type)
        delta = self.unwrap(arrival.timestamp)
        index, rest = divmod(delta, TICKS)
        if rest or not 0 <= index < len(self.packets):
            result.out_of_range += 1
            return
        if index in self.seen:
            result.duplicated += 1
            return
        if index < self.highest:
            result.reordered += 1
        self.seen.add(index)
        self.highest = max(self.highest, index)
        if arrival.payload != self.packets[index]:
            result.mismatched += 1
        result.arrivals.append((index, arrival.arrival_ns))
        if len(self.seen) == len(self.packets):
            self.complete.set()

    def finish(self) -> None:
        result = self.result
        result.distinct = len(self.seen)
        result.lost = len(self.packets) - len(self.seen)
        result.ssrcs = len(self.ssrcs)


def subscriber_main(
    variant: str, indexes: list[int], packets: list[bytes], receiver: str, pipe: Conn
) -> None:
    """A subscriber process: ``len(indexes)`` aiortc peers of ``variant``. It gets
    ``("join", url, token, target)`` (target: the message id, or Janus's mountpoint)
    once the talker is connected, then ``("go", t0)``. ``receiver``: see ``RECEIVERS``."""
    args = (variant, indexes, packets, receiver, pipe)
    run_asyncio_in_process(pipe, f"{variant} subscribers", _subscribe_all, *args)


@dataclass(eq=False)
class _Peer:
    pc: Any
    tap: Tap
    close: Callable[[], Coroutine[Any, Any, None]] | None = None


async def _subscribe_all(
    variant: str, indexes: list[int], packets: list[bytes], receiver: str, pipe: Conn
) -> list[SubscriberResult]:
    import httpx

    from voxer_stream.media.rtc import close_quietly, use_host_addresses

    use_host_addresses(["127.0.0.1"])
    results = [SubscriberResult(index=i) for i in indexes]
    _, url, token, target = await receive(pipe, "join", JOIN_TIMEOUT_S + 60)
    peers: list[_Peer] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits, trust_env=False)
    async with client as http:
        try:
            gate = asyncio.Semaphore(JOIN_CONCURRENCY)

            async def join(result: SubscriberResult) -> None:
                async with gate:
                    start = time.monotonic()
                    try:
                        peer = await _join(
                            variant, http, url, token, target, result, packets, receiver
                        )
                    except Exception as exc:
                        result.error = f"subscriber {result.index}: join: {exc!r}"
                        result.lost = len(packets)  # it got nothing
                        return
                    peers.append(peer)
                    result.connect_ms = round((time.monotonic() - start) * 1000, 1)

            await asyncio.wait_for(asyncio.gather(*(join(r) for r in results)), JOIN_TIMEOUT_S)
            pipe.send(("ready", len(peers)))
            t0 = await receive_go(pipe)
            deadline_ns = t0 + len(packets) * FRAME_NS + int(GRACE_S * 1e9)

            async def done(peer: _Peer) -> None:
                await peer.tap.complete.wait()
                if variant == "voxer":
                    await peer.tap.ended.wait()  # the server ends the track itself

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(done(p) for p in peers)),
                    max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9),
                )
        finally:
            for peer in peers:
                peer.tap.closing = True
                peer.tap.finish()

            async def teardown(peer: _Peer) -> None:
                if peer.close is not None:
                    with contextlib.suppress(Exception):
                        await peer.close()
                await close_quietly(peer.pc)

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(teardown(p) for p in peers)), TEARDOWN_TIMEOUT_S
                )
    for result in results:
        if not result.error and result.lost:
            result.error = f"subscriber {result.index}: {result.lost} packets never arrived"
        elif not result.error and variant == "voxer" and not result.ended_by_server:
            result.error = (
                f"subscriber {result.index}: the server did not end the track within "
                f"{GRACE_S} s of the last packet (the talker's DELETE closed the message)"
            )
    return results


async def _join(
    variant: str,
    http: Any,
    url: str,
    token: str | None,
    target: Any,
    result: SubscriberResult,
    packets: list[bytes],
    receiver: str,
) -> _Peer:
    """One subscriber, connected: its peer with the RTP tap on, and how to end it."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from voxer_stream.media.rtc import (
        close_quietly,
        drain,
        loopback_configuration,
        prefer_opus,
    )

    tap = Tap(result, packets)
    pc = RTCPeerConnection(loopback_configuration())
    peer = _Peer(pc, tap)

    @pc.on("track")
    def on_track(track: Any) -> None:
        task = drain(track)
        # drain ends when the track does: for voxer, the server's RTCP BYE (VXS-12-8).
        task.add_done_callback(lambda _: _ended(tap))

    try:
        if variant == "voxer":
            transceiver = pc.addTransceiver("audio", direction="recvonly")
            prefer_opus(transceiver)
            listen(transceiver.receiver, tap, receiver)
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"Authorization": f"Bearer {token}"}
            response = await http.post(
                f"{url}/v1/messages/{target}/whep",
                params={"live_edge": "1"},
                content=pc.localDescription.sdp.encode(),
                headers={**headers, "Content-Type": SDP},
            )
            _check_created(response, "WHEP")
            location = f"{url}{response.headers['location']}"
            await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))

            async def end_whep() -> None:
                await http.delete(location, headers=headers, timeout=5.0)

            peer.close = end_whep
        else:
            from benchmarks.baselines.janus import JanusSubscription

            subscription = JanusSubscription(url)

            async def answer(offer: str) -> str:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
                audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
                if len(audio) != 1:
                    raise RuntimeError(f"janus offered {len(audio)} audio sections")
                audio[0].direction = "recvonly"
                prefer_opus(audio[0])
                listen(audio[0].receiver, tap, receiver)
                await pc.setLocalDescription(await pc.createAnswer())
                sdp: str = pc.localDescription.sdp
                return sdp

            async def end_janus() -> None:
                await subscription.close(http)

            peer.close = end_janus
            await subscription.open(http, answer)
        await wait_connected(pc, CONNECT_TIMEOUT_S)
    except BaseException:
        if peer.close is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.close(), 5.0)
        await close_quietly(pc)
        raise
    return peer


#: ``--receiver``: what a subscriber's aiortc receiver does with each RTP packet after the
#: tap has timed it (``media.rtc.tap_receiver``). ``tap`` (the default): aiortc's own
#: path (statistics for RTCP reports, jitter buffer) without decoding, so that 50 peers on
#: 2 cores leave the CPU to the servers being measured; ``decode``: an Opus decoder
#: thread per peer too, as a client that plays the audio (frames dropped by
#: ``media.rtc.drain``). RTCP BYE ends the track in both.
RECEIVERS = ("tap", "decode")


def listen(receiver: Any, tap: Tap, mode: str) -> None:
    """Time every RTP packet ``receiver`` gets, before its jitter buffer (``mode``: see
    ``RECEIVERS``)."""
    from voxer_stream.media.rtc import tap_receiver

    tap_receiver(receiver, tap, decode=mode == "decode")


def _ended(tap: Tap) -> None:
    if not tap.closing:
        tap.result.ended_by_server = True
        tap.ended.set()


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, not idle or iowait),
    from ``/proc/stat``: with the server's and the load generators' own, what the rest
    of a shared machine took during a run."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4]  # idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


# -- sockets: every server on 127.0.0.1 ------------------------------------------------


def bound_addresses(pid: int) -> list[str]:
    """The local address of every TCP and UDP socket process ``pid`` holds, as
    ``"udp 127.0.0.1:40000"`` (listening or connected), from ``/proc``: the check that
    a server binds loopback only."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found: set[str] = set()
    for proto in ("tcp", "udp", "tcp6", "udp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{proto}") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) > 9 and parts[9] in inodes:
                    found.add(f"{proto} {_address(parts[1])}")
    return sorted(found)


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, raw[::-1])}:{int(port, 16)}"
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return f"[{socket.inet_ntop(socket.AF_INET6, words)}]:{int(port, 16)}"


def not_loopback(addresses: list[str]) -> list[str]:
    return [a for a in addresses if not a.split(" ", 1)[1].startswith("127.0.0.1:")]


# -- one run ------------------------------------------------------------------------


def expect(pipe: Conn, proc: Any, kind: str, within_s: float, what: str) -> Any:
    """``live_latency._expect`` that also gives up as soon as ``proc`` (the process at
    the other end of ``pipe``) is dead with nothing sent: a child that died before it
    could report (a crash while spawning, a kill) fails the run at once, not after
    ``within_s``."""
    deadline = time.monotonic() + within_s
    while not pipe.poll(0.25):
        if not proc.is_alive() and not pipe.poll(0):
            raise RuntimeError(f"{what}: exited ({proc.exitcode}) before sending {kind!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: no {kind!r} within {within_s} s")
    message = pipe.recv()
    if message[0] != kind:
        raise RuntimeError(f"{what}: {message}")
    return message[1] if len(message) > 1 else None


def _voxer_server(args: argparse.Namespace, data_dir: Path) -> Any:
    from .live_latency import Server

    options = ["--rtc-idle-timeout", str(args.rtc_idle_timeout)]
    return Server(data_dir, stderr_name=f"{data_dir.name}.stderr", options=options)


def measure(
    args: argparse.Namespace,
    n: int,
    packets: list[bytes],
    workdir: Path,
    variant: str,
    tag: str = "",
) -> tuple[dict[str, Any], Any, Any]:
    """One run of N subscribers against ``variant``: (result, latency histogram,
    latency-from-send histogram), HDR in microseconds, for ``merge_rounds``."""
    import trio

    from .baselines.janus import MOUNTPOINT_ID, Janus, janus_talker_main
    from .live_latency import setup_accounts

    data_dir = workdir / f"data-{variant}-{n}{tag}"
    data_dir.mkdir()
    server: Any = Janus(workdir, name=data_dir.name) if variant == "janus" else None
    if server is None:
        server = _voxer_server(args, data_dir)
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    finished = False
    nprocs = listener_processes(n, args.subscriber_procs)
    try:
        sub_pipes, sub_procs = [], []
        for p in range(nprocs):
            indexes = [i for i in range(n) if i % nprocs == p]
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=subscriber_main, args=(variant, indexes, packets, args.receiver, child)
            )
            proc.start()
            procs.append(proc)
            sub_procs.append(proc)
            sub_pipes.append(parent)
        talker_pipe, child = ctx.Pipe()
        msg = f"rtc-{uuid.uuid4().hex[:16]}"
        if variant == "voxer":
            talk_token, listen_token, thread = trio.run(setup_accounts, server.url)
            talker = ctx.Process(
                target=voxer_talker_main,
                args=(server.url, talk_token, thread, msg, packets, child),
            )
            join: tuple[Any, ...] = ("join", server.url, listen_token, msg)
        else:
            talker = ctx.Process(target=janus_talker_main, args=(server.rtp_port, packets, child))
            join = ("join", server.url, None, MOUNTPOINT_ID)
        talker.start()
        procs.append(talker)
        expect(talker_pipe, talker, "opened", 60, "talker")
        join_start = time.monotonic()
        for pipe in sub_pipes:
            pipe.send(join)
        connected = sum(
            expect(pipe, proc, "ready", JOIN_TIMEOUT_S + 30, "subscribers")
            for pipe, proc in zip(sub_pipes, sub_procs, strict=True)
        )
        join_s = time.monotonic() - join_start
        bound = bound_addresses(server.proc.pid)  # with every peer up
        stray = not_loopback(bound)
        if stray:
            raise RuntimeError(f"{variant} holds sockets off loopback: {stray}")

        t0 = time.monotonic_ns() + START_AHEAD_NS
        for pipe in [talker_pipe, *sub_pipes]:
            pipe.send(("go", t0))
        warm_end = t0 + int(args.warmup * 1e9)
        window_end = t0 + len(packets) * FRAME_NS
        time.sleep(max(0.0, (warm_end - time.monotonic_ns()) / 1e9))
        busy_start = busy_seconds()
        cpu, clients_cpu = measure_window(server, procs, warm_end, window_end)
        busy = busy_seconds() - busy_start

        timeout = 60 + GRACE_S + TEARDOWN_TIMEOUT_S
        talker_result = expect(talker_pipe, talker, "done", timeout, "talker")
        subscribers: list[dict[str, Any]] = []
        for pipe, proc in zip(sub_pipes, sub_procs, strict=True):
            subscribers.extend(expect(pipe, proc, "done", timeout, "subscribers"))
        finished = True
    finally:
        stop_processes(procs, finished)
        server.stop()

    first_measured = math.ceil((warm_end - t0) / FRAME_NS)
    histogram, from_send = latency_histograms(
        [subscriber["arrivals"] for subscriber in subscribers],
        t0,
        first_measured,
        talker_result["sent_at"],
    )
    measured_chunks = len(packets) - first_measured
    deliveries = measured_chunks * n
    errors = [x["error"] for x in subscribers if x["error"]]
    if variant == "voxer":
        server_command = shlex.join(
            ["python", *["TMP" if c == str(data_dir) else c for c in server.command[1:]]]
        )
        whip = talker_result.get("whip_status", {})
        if whip.get("chunks") != len(packets):
            errors.append(f"WHIP closed the message with {whip.get('chunks')} chunks: {whip}")
    else:
        server_command = shlex.join(["janus", "-F", "TMP/conf", "-C", "TMP/conf/janus.jcfg"])
    window_s = (window_end - warm_end) / 1e9
    result = {
        "variant": variant,
        "listeners": n,  # the key live_latency's merge_rounds and ratios use
        "subscriber_processes": nprocs,
        "connected": connected,
        "join_s": round(join_s, 2),
        "connect_ms_max": max((x["connect_ms"] for x in subscribers), default=0.0),
        "chunks_sent": talker_result["chunks"],
        "measured_chunks": measured_chunks,
        "deliveries_expected": n * len(packets),
        "deliveries_received": sum(x["received"] for x in subscribers),
        "lost": sum(x["lost"] for x in subscribers) + (n - len(subscribers)) * len(packets),
        "reordered": sum(x["reordered"] for x in subscribers),
        "duplicated": sum(x["duplicated"] for x in subscribers),
        "mismatched": sum(x["mismatched"] for x in subscribers),
        "out_of_range": sum(x["out_of_range"] for x in subscribers),
        # voxer: subscribers whose track the server ended; janus: an RTP mountpoint has
        # no end, so every subscriber that got every packet.
        "ended": sum(
            1
            for x in subscribers
            if (x["ended_by_server"] if variant == "voxer" else not x["lost"] and not x["error"])
        ),
        "payload_types": sorted({pt for x in subscribers for pt in x["payload_types"]}),
        "ssrcs_per_subscriber_max": max((x["ssrcs"] for x in subscribers), default=0),
        "errors": errors[:5],
        **_latency_fields(histogram, from_send),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "server_cpu_s": round(cpu, 6),
        "server_cpu_us_per_delivery": round(cpu / deliveries * 1e6, 2) if deliveries else None,
        "server_cpu_us_per_chunk": round(cpu / measured_chunks * 1e6, 1),
        "server_cpu_share": round(cpu / window_s, 3),
        "clients_cpu_share": round(clients_cpu / window_s, 3),
        # Everything else the machine ran in the window (other users' load): noise.
        "other_cpu_share": round(max(0.0, busy - cpu - clients_cpu) / window_s, 3),
        "receiver": args.receiver,
        "talker_send_lag_us": {
            "p50": talker_result["send_lag_us_p50"],
            "p99": talker_result["send_lag_us_p99"],
            "max": talker_result["send_lag_us_max"],
            "worst_seq": talker_result["worst_lag_seq"],
        },
        "talker_closed": talker_result["closed"],
        "whip_status": talker_result.get("whip_status") if variant == "voxer" else None,
        "server_bound": bound,
        "server_exit": server.proc.returncode,
        "server_stderr_tail": server.stderr_tail() if errors else "",
        "server_command": server_command,
    }
    if variant == "janus":
        result["janus"] = server.loaded()
    return result, histogram, from_send


EXTRA_SUMMED = ("mismatched", "out_of_range", "connected")


def merge(runs: list[tuple[dict[str, Any], Any, Any]]) -> dict[str, Any]:
    """``live_latency.merge_rounds`` plus this scenario's own counts."""
    merged = merge_rounds(runs)
    results = [r for r, _, _ in runs]
    for key in EXTRA_SUMMED:
        merged[key] = sum(r[key] for r in results)
    merged["other_cpu_share"] = round(sum(r["other_cpu_share"] for r in results) / len(results), 3)
    merged["join_s"] = max(r["join_s"] for r in results)
    merged["connect_ms_max"] = max(r["connect_ms_max"] for r in results)
    merged["server_bound"] = sorted({a for r in results for a in r["server_bound"]})
    return merged


def _summary(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    return (
        f"p50 {lat['p50']} ms  p99 {lat['p99']} ms  p99.9 {lat['p99_9']} ms"
        f"  max {lat['max']} ms  samples {result['samples']}  lost {result['lost']}"
        f"  mismatched {result['mismatched']}  cpu {result['server_cpu_us_per_delivery']}"
        f" us/delivery  server {result['server_cpu_share']} cores"
        f"  clients {result['clients_cpu_share']} cores  others {result['other_cpu_share']} cores"
        f"  talker lag p99 {result['talker_send_lag_us']['p99']} us  join {result['join_s']} s"
    )


def run_n(args: argparse.Namespace, n: int, packets: list[bytes], workdir: Path) -> dict[str, Any]:
    """All runs for one N, voxer and janus alternately (A, B, A, B ... ``--rounds``)."""
    runs: dict[str, list[tuple[dict[str, Any], Any, Any]]] = {v: [] for v in VARIANTS}
    for k in range(args.rounds):
        for variant in VARIANTS:
            start = time.monotonic()
            run = measure(args, n, packets, workdir, variant, tag=f"-r{k}")
            runs[variant].append(run)
            print(
                f"N={n:<3} {variant:<5} round {k + 1}/{args.rounds} "
                f"({time.monotonic() - start:.0f} s)  {_summary(run[0])}",
                flush=True,
            )
    voxer = merge(runs["voxer"])
    janus = merge(runs["janus"])
    voxer["baseline"] = {"name": "janus", **janus}
    voxer["ratio"] = {"of": "voxer / janus", **ratios(voxer, janus)}
    return voxer


# -- report -------------------------------------------------------------------------


LATENCY_KEYS = (("p50", "p50"), ("p99", "p99"), ("p99_9", "p99.9"))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Latency percentiles vs N (voxer solid, Janus dashed, same colours) and server
    CPU per delivery of both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["listeners"] for r in results]
    fig, (ax, cpu_ax) = plt.subplots(1, 2, figsize=(11, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (key, label), colour in zip(LATENCY_KEYS, colours, strict=False):
        values = [r["latency_ms"][key] for r in results]
        ax.plot(ns, values, marker="o", color=colour, label=f"voxer {label}")
        ax.plot(
            ns,
            [r["baseline"]["latency_ms"][key] for r in results],
            marker="s",
            linestyle="--",
            color=colour,
            label=f"janus {label}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers (aiortc peers)")
    ax.set_ylabel("latency, intended send to RTP arrival (ms)")
    ax.set_title("WebRTC live latency, 20 ms Opus: voxer WHIP/WHEP vs Janus", fontsize="medium")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    cpu_ax.plot(ns, [r["server_cpu_us_per_delivery"] for r in results], marker="o", label="voxer")
    cpu_ax.plot(
        ns,
        [r["baseline"]["server_cpu_us_per_delivery"] for r in results],
        marker="s",
        linestyle="--",
        label="janus",
    )
    for n, r in zip(ns, results, strict=True):
        if r["ratio"]["cpu_per_delivery"]:
            cpu_ax.annotate(
                f"x{r['ratio']['cpu_per_delivery']}",
                (n, r["server_cpu_us_per_delivery"]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize="small",
            )
    cpu_ax.margins(x=0.15)
    cpu_ax.set_xscale("log")
    cpu_ax.set_yscale("log")
    cpu_ax.set_xlabel("subscribers (aiortc peers)")
    cpu_ax.set_ylabel("server CPU per delivered packet (us)")
    cpu_ax.set_title("server CPU per delivered packet")
    cpu_ax.grid(True, which="both", alpha=0.3)
    cpu_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: list[dict[str, Any]]) -> str:
    """voxer | janus | voxer/janus for p50, p99, p99.9 and server CPU per delivery."""
    lines = [
        "voxer (WHIP/WHEP) vs janus (Streaming plugin), all rounds merged; x = voxer / janus",
        "| N | p50 ms voxer | janus | x | p99 ms voxer | janus | x | p99.9 ms voxer | janus | x "
        "| CPU us/delivery voxer | janus | x | samples each "
        "| lost/reord/dup/mismatch voxer, janus |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b, x = r["baseline"], r["ratio"]
        lat, blat = r["latency_ms"], b["latency_ms"]
        lines.append(
            f"| {r['listeners']} | {lat['p50']} | {blat['p50']} | {x['latency_p50']} "
            f"| {lat['p99']} | {blat['p99']} | {x['latency_p99']} "
            f"| {lat['p99_9']} | {blat['p99_9']} | {x['latency_p99_9']} "
            f"| {r['server_cpu_us_per_delivery']} | {b['server_cpu_us_per_delivery']} "
            f"| {x['cpu_per_delivery']} | {r['samples']}, {b['samples']} "
            f"| {_counts(r)}, {_counts(b)} |"
        )
    return "\n".join(lines)


def _counts(r: dict[str, Any]) -> str:
    return f"{r['lost']}/{r['reordered']}/{r['duplicated']}/{r['mismatched']}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks rtc-latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s runs, N = 1 and 10, 1 round")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per run (20: at N = 50 and 2 rounds, about 95,000 samples per variant)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds discarded (1)")
    parser.add_argument(
        "--subscribers", type=int, nargs="+", default=None, help="N (1 10 50; --quick: 1 10)"
    )
    parser.add_argument(
        "--subscriber-procs",
        type=int,
        default=None,
        help="subscriber processes (default: 1 for N <= 10, else 2-4 by core count)",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="voxer/janus rounds per N (2; --quick: 1)"
    )
    parser.add_argument(
        "--receiver",
        choices=RECEIVERS,
        default="tap",
        help="tap: packets are timed and checked before each subscriber's jitter buffer, "
        "which runs, with no decoder (default: the load generators stay light); decode: an "
        "Opus decoder per subscriber too, as a client that plays the audio",
    )
    parser.add_argument(
        "--rtc-idle-timeout",
        type=float,
        default=60.0,
        help="passed to voxer-stream serve: the talker's WHIP session must outlive the "
        "subscribers' negotiation before the first packet (60)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 20.0
    if args.subscribers is None:
        args.subscribers = [1, 10] if args.quick else [1, 10, 50]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if any(n < 1 for n in args.subscribers):
        parser.error("--subscribers must be at least 1")
    if args.duration <= args.warmup:
        parser.error("--duration must be longer than --warmup")
    return args


def versions() -> dict[str, Any]:
    """``live_latency.machine()`` with the WebRTC packages and Janus's version added."""
    from .baselines.janus import janus_version

    info = machine()
    for name in RTC_PACKAGES:
        try:
            info["packages"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info["packages"][name] = None
    info["packages"]["janus"] = janus_version()
    return info


def main(argv: list[str]) -> int:
    from .baselines.janus import KEEP, janus_binary
    from .live_latency import opus_packets

    args = parse_args(argv)
    janus_binary()  # fail before any run if Janus is missing
    command = shlex.join([Path(sys.executable).name, "-m", "benchmarks", "rtc-latency", *argv])
    count = round(args.duration / 0.02)
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="voxer-rtc-bench-") as tmp:
        workdir = Path(tmp)
        packets = opus_packets(count, workdir)
        for n in args.subscribers:
            results.append(run_n(args, n, packets, workdir))
    config: dict[str, Any] = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "chunk_ms": 20,
        "packets": count,
        "opus_bytes_mean": round(sum(map(len, packets)) / len(packets), 1),
        "rounds": args.rounds,
        "order": "per N: " + ", ".join(list(VARIANTS) * args.rounds),
        "subscriber_processes": {
            str(n): listener_processes(n, args.subscriber_procs) for n in args.subscribers
        },
        "grace_s": GRACE_S,
        "receiver": args.receiver,
        "voxer_server": results[0]["server_command"] if results else "",
        "voxer_talker": "aiortc peer, POST /v1/threads/{id}/whip?msg=..., sendonly Opus, "
        "PacketTrack (encoded packets, media time = RTP timestamp), DELETE at the end",
        "voxer_subscribers": "aiortc peers, POST /v1/messages/{msg}/whep?live_edge=1, recvonly "
        "Opus, joined after the WHIP session is connected and before the first packet",
        "janus_server": results[0]["baseline"]["server_command"] if results else "",
        "janus_config": "janus.jcfg: interface 127.0.0.1, ice_enforce_list lo, ignore_mdns, "
        "no STUN/TURN, IPv6 off, every plugin/transport/event handler/logger disabled but "
        f"{', '.join(KEEP)}; HTTP transport on 127.0.0.1 (admin off); Streaming plugin: "
        "one rtp mountpoint, audio only, opus, pt 111, audioiface 127.0.0.1",
        "janus_loopback_shim": "LD_PRELOAD of a getifaddrs wrapper (benchmarks/baselines/"
        "janus.py SHIM_SOURCE): 127.0.0.1 shown without IFF_LOOPBACK, every other address "
        "down, because Janus never gathers ICE candidates on loopback interfaces",
        "janus_talker": "plain RTP over UDP to the mountpoint: PT 111, seq i, timestamp "
        "i * 960, one SSRC",
        "janus_subscribers": "aiortc peers via the Janus HTTP API: create, attach "
        "janus.plugin.streaming, watch (Janus offers), start with aiortc's recvonly answer; "
        "long-poll plus keepalive every 25 s",
        "latency": "RTP arrival before aiortc's jitter buffer (media.rtc.tap_receiver) - "
        "(t0 + i * 20 ms), monotonic_ns; i = (unwrapped RTP ts - first RTP ts) / 960",
    }
    report: dict[str, Any] = {
        "scenario": "rtc-latency",
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "took_s": round(time.monotonic() - started, 1),
        "machine": versions(),
        "config": config,
        "results": results,
    }
    if len(results) >= 2:
        report["marginal_cpu_us_per_subscriber"] = marginal_cpu(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rtc-latency.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / "rtc-latency.png")
    print(table(results))
    if "marginal_cpu_us_per_subscriber" in report:
        m = report["marginal_cpu_us_per_subscriber"]
        print(
            f"server CPU per extra subscriber (N = {m['between'][0]} to {m['between'][1]}): "
            f"voxer {m['voxer']} us, janus {m['janus']} us, x {m['ratio']}"
        )
    print(f"wrote {args.out / 'rtc-latency.json'} and {args.out / 'rtc-latency.png'}")
    failed = [
        f"N={r['listeners']} {v['variant']}"
        for r in results
        for v in (r, r["baseline"])
        if v["errors"] or v["lost"] or v["mismatched"] or v["duplicated"] or v["out_of_range"]
    ]
    if failed:
        print(f"delivery problems (see errors in the JSON): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
