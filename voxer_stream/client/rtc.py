"""The WebRTC binding from a client (spec section 12): a WHIP talker, a WHEP listener.

Both are aiortc peers on an ``AsyncioThread``, driven from trio, and both deal in
Opus packets as they are: the talker's ``PacketTrack`` sends each packet as one RTP
payload with its media time as the RTP timestamp, and the listener taps RTP as it
arrives, before aiortc's jitter buffer and decoder (``RtpArrival``). Tests compare
what arrives with what was sent, byte for byte; benchmarks time the arrivals.

    async with RtcClient(url, token) as rtc:
        talker = await rtc.whip(thread_id)           # POST /v1/threads/{id}/whip
        talker.send(packet, ts)                      # one RTP packet, now
        closed = await talker.end()                  # DELETE: the message is closed

        listener = await rtc.whep(message_id, from_seq=0)
        async for arrival in listener.arrivals: ...  # until the server ends the track
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import httpx
import trio
from aiortc import RTCPeerConnection, RTCSessionDescription

from ..media.rtc import (
    AsyncioThread,
    PacketTrack,
    RtpArrival,
    close_quietly,
    drain,
    loopback_configuration,
    prefer_opus,
    tap_receiver,
    to_trio,
    trio_callback,
    use_host_addresses,
)
from .h2conn import ClientError, ConnectionLost
from .rest import _error

__all__ = ["RtcClient", "WhepListener", "WhipTalker"]

SDP = "application/sdp"
#: How long ICE and DTLS may take on loopback before the peer counts as unreachable.
CONNECT_TIMEOUT = 10.0


@dataclass(eq=False)
class _Peer:
    pc: RTCPeerConnection
    track: PacketTrack | None = None


async def _offer(
    *, send: bool, on_packet: Callable[[RtpArrival], None] | None, on_state: Any
) -> tuple[_Peer, str]:
    pc = RTCPeerConnection(loopback_configuration())
    peer = _Peer(pc)

    @pc.on("connectionstatechange")
    def changed() -> None:
        on_state(pc.connectionState)

    if send:
        peer.track = PacketTrack()
        transceiver = pc.addTransceiver(peer.track, direction="sendonly")
    else:
        transceiver = pc.addTransceiver("audio", direction="recvonly")
        assert on_packet is not None
        tap_receiver(transceiver.receiver, on_packet)

        @pc.on("track")
        def track(received: Any) -> None:
            drain(received)

    prefer_opus(transceiver)
    await pc.setLocalDescription(await pc.createOffer())
    return peer, pc.localDescription.sdp


async def _accept(peer: _Peer, answer: str) -> None:
    await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


async def _flush(peer: _Peer, limit: float) -> None:
    """Wait (at most ``limit`` s) until every packet pushed has gone out as RTP."""
    if peer.track is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.track.empty.wait(), limit)
    await asyncio.sleep(0.02)  # the last packet: from the sender's loop onto the socket


async def _close(peer: _Peer) -> None:
    if peer.track is not None:
        peer.track.end()
    await close_quietly(peer.pc)


@dataclass(eq=False, kw_only=True)
class _Session:
    client: RtcClient
    #: Set by the negotiation, once the server has answered.
    peer: _Peer = field(init=False)
    location: str = ""
    connection: str = "new"
    changed: trio.Event = field(default_factory=trio.Event)

    def _state(self, state: str) -> None:
        self.connection = state
        self.changed.set()
        self.changed = trio.Event()

    async def connected(self) -> None:
        """Wait until ICE and DTLS are up (``ConnectionLost`` if they fail or take more
        than ``CONNECT_TIMEOUT``)."""
        with trio.fail_after(CONNECT_TIMEOUT):
            while self.connection != "connected":
                if self.connection in ("failed", "closed"):
                    raise ConnectionLost(f"the peer connection is {self.connection}")
                await self.changed.wait()

    async def status(self) -> dict[str, Any]:
        """``GET`` the session resource (VXS-12-11)."""
        return await self.client._json("GET", self.location)

    async def close_peer(self) -> None:
        await self.client.aio.run(_close, self.peer)


@dataclass(eq=False, kw_only=True)
class WhipTalker(_Session):
    """A message being talked over WebRTC: ``send`` packets, then ``end``."""

    msg: str

    def send(self, packet: bytes, ts: int) -> None:
        """Send one Opus packet now, with its media time ``ts`` (48 kHz ticks from the
        start of the message) as its RTP timestamp."""
        assert self.peer.track is not None
        self.client.aio.call_soon(self.peer.track.push, packet, ts)

    async def end(self) -> dict[str, Any]:
        """``DELETE``: the server closes the message once everything received is durable,
        and answers with the session's final status (``chunks``, ``duration``). Packets
        still queued go out first: what arrives after the DELETE is not part of the
        message (VXS-12-4)."""
        await self.client.aio.run(_flush, self.peer, 2.0)
        try:
            return await self.client._json("DELETE", self.location)
        finally:
            await self.close_peer()


@dataclass(eq=False, kw_only=True)
class WhepListener(_Session):
    """A message (or a monitored thread) arriving as RTP; ``arrivals`` ends when the
    server ends the session (or the peer connection fails)."""

    arrivals: trio.MemoryReceiveChannel[RtpArrival]
    _arrivals_in: trio.MemorySendChannel[RtpArrival]

    def _state(self, state: str) -> None:
        super()._state(state)
        if state in ("failed", "closed"):
            self._arrivals_in.close()

    async def end(self) -> dict[str, Any]:
        try:
            return await self.client._json("DELETE", self.location)
        finally:
            await self.close_peer()
            self._arrivals_in.close()

    async def collect(self) -> list[RtpArrival]:
        """Every arrival until the server ends the session (bound it with a timeout)."""
        return [arrival async for arrival in self.arrivals]


class RtcClient:
    """The WebRTC signalling of one account, and the asyncio thread of its peers."""

    def __init__(self, url: str, token: str, *, host: str = "127.0.0.1") -> None:
        self.url = url.rstrip("/")
        self.token = token
        use_host_addresses([host])
        self.aio = AsyncioThread("voxer-rtc-client")
        self._http = httpx.AsyncClient(base_url=self.url, timeout=30.0)
        self._peers: list[_Peer] = []

    async def __aenter__(self) -> RtcClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for peer in self._peers:
                with trio.move_on_after(2):
                    await self.aio.run(_close, peer)
            await self._http.aclose()
            await trio.to_thread.run_sync(self.aio.stop)

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        try:
            response = await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionLost(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def _json(self, method: str, path: str) -> dict[str, Any]:
        result: dict[str, Any] = (await self._call(method, path)).json()
        return result

    async def _negotiate(
        self,
        session: _Session,
        path: str,
        *,
        send: bool,
        on_packet: Callable[[RtpArrival], None] | None = None,
    ) -> httpx.Response:
        """Offer, POST, accept the answer; ``session`` gets its peer and Location, and
        the peer's state changes from then on."""
        token = trio.lowlevel.current_trio_token()
        on_state = trio_callback(token, session._state)
        peer, offer = await self.aio.run(
            functools.partial(_offer, send=send, on_packet=on_packet, on_state=on_state)
        )
        session.peer = peer
        self._peers.append(peer)
        try:
            response = await self._call(
                "POST", path, content=offer.encode(), headers={"Content-Type": SDP}
            )
            if response.status_code != 201 or "location" not in response.headers:
                raise ClientError(f"expected 201 with a Location, got {response.status_code}")
            session.location = response.headers["location"]
            await self.aio.run(_accept, peer, response.text)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.aio.run(_close, peer)
            raise
        return response

    async def whip(self, thread_id: str, msg: str | None = None) -> WhipTalker:
        """Start a message in ``thread_id`` (``msg``: its id; the server picks one if
        None) and return once the peer is connected."""
        query = f"?{urlencode({'msg': msg})}" if msg is not None else ""
        talker = WhipTalker(client=self, msg=msg or "")
        response = await self._negotiate(talker, f"/v1/threads/{thread_id}/whip{query}", send=True)
        talker.msg = response.headers.get("voxer-message", talker.msg)
        await talker.connected()
        return talker

    async def whep(
        self,
        message_id: str | None = None,
        *,
        thread_id: str | None = None,
        from_seq: int | None = None,
        from_ts: int | None = None,
        live_edge: bool = False,
        speed: float | None = None,
        own: bool = False,
        buffer: int = 100_000,
    ) -> WhepListener:
        """Listen to ``message_id`` (from an offset, at a speed, or at the live edge) or
        monitor ``thread_id`` (``own``: your own messages too); returns once the peer is
        connected."""
        if (message_id is None) == (thread_id is None):
            raise ValueError("give a message id or a thread id")
        params: dict[str, Any] = {}
        if from_seq is not None:
            params["from_seq"] = from_seq
        if from_ts is not None:
            params["from_ts"] = from_ts
        if live_edge:
            params["live_edge"] = 1
        if speed is not None:
            params["speed"] = speed
        query = f"?{urlencode(params)}" if params else ""
        path = (
            f"/v1/messages/{message_id}/whep{query}"
            if message_id is not None
            else f"/v1/threads/{thread_id}/whep{'?own=1' if own else ''}"
        )
        send, receive = trio.open_memory_channel[RtpArrival](buffer)
        listener = WhepListener(client=self, arrivals=receive, _arrivals_in=send)
        on_packet = to_trio(send, trio.lowlevel.current_trio_token())
        await self._negotiate(listener, path, send=False, on_packet=on_packet)
        await listener.connected()
        return listener
