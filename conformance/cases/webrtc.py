"""Section 12: the WebRTC binding (optional feature group ``webrtc``).

Real aiortc peers on the suite's side (``voxer_stream.client.rtc``), negotiated over
the server's WHIP and WHEP endpoints, media over loopback UDP (DTLS-SRTP). What the
suite compares is the Opus packets themselves: each RTP payload against the chunk it
came from or goes to, byte for byte, with RTP timestamps against media times.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from voxer_stream.client.rtc import RtcClient
from voxer_stream.media.rtc import RtpArrival, Unwrapper
from voxer_stream.wire import Chunk, Close

from ..case import case, expect, skip
from ..context import Account, Context, RestReply, opus_packet
from .errors import expect_unseen, rest_answer

GROUP = "webrtc"
SDP_HEADERS = {"content-type": "application/sdp"}


@asynccontextmanager
async def rtc_client(ctx: Context, account: Account) -> AsyncIterator[RtcClient]:
    async with RtcClient(ctx.url, account.token) as client:
        yield client


def media_times(arrivals: list[RtpArrival]) -> list[int]:
    unwrap = Unwrapper()
    return [unwrap(a.timestamp) for a in arrivals]


def sequence_steps(arrivals: list[RtpArrival]) -> list[int]:
    return [
        (b.sequence_number - a.sequence_number) % 65536 for a, b in itertools.pairwise(arrivals)
    ]


async def post_offer(ctx: Context, path: str, token: str | None, offer: str) -> RestReply:
    """POST ``offer`` (SDP) to a WHIP or WHEP endpoint."""
    return await ctx.rest("POST", path, token=token, content=offer.encode(), headers=SDP_HEADERS)


async def refusal(ctx: Context, path: str, token: str | None, body: str) -> tuple[int, str]:
    """POST ``body`` as an offer; the HTTP status and the registry name of the error."""
    reply = await post_offer(ctx, path, token, body)
    error = reply.error
    return reply.status, str(error["name"]) if error else f"(no error body: {reply.body!r})"


async def sample_offer(*, send: bool) -> str:
    """A real offer from a peer that is then dropped (the refusals never need its media)."""
    from aiortc import RTCPeerConnection

    from voxer_stream.media.rtc import (
        AsyncioThread,
        PacketTrack,
        loopback_configuration,
        prefer_opus,
    )

    async def make() -> str:
        pc = RTCPeerConnection(loopback_configuration())
        if send:
            transceiver = pc.addTransceiver(PacketTrack(), direction="sendonly")
        else:
            transceiver = pc.addTransceiver("audio", direction="recvonly")
        prefer_opus(transceiver)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = str(pc.localDescription.sdp)
        await pc.close()
        return sdp

    aio = AsyncioThread("conformance-offer")
    try:
        return await aio.run(make)
    finally:
        await trio.to_thread.run_sync(aio.stop)


def without_opus(sdp: str) -> str:
    """The same offer with its Opus payload type renamed (a codec the server lacks)."""
    return sdp.replace("opus/48000/2", "x-nonesuch/48000/2")


@case(
    "12/signalling-refusals",
    "WHIP and WHEP requests are refused with the registry's errors before any peer exists",
    requirements=("VXS-12-2", "VXS-12-6", "VXS-8-2", "VXS-13.2-4"),
    group=GROUP,
    accepts="no token 401 UNAUTHENTICATED; WHIP into a thread the account is not in, and WHEP "
    "monitor of it, 404 THREAD_NOT_FOUND, as for an unknown thread; WHIP by a participant "
    "whose role is listen 403 FORBIDDEN; an unknown thread 404 THREAD_NOT_FOUND; a body that "
    "is not SDP 400 INVALID_REQUEST; an offer without Opus 422 UNSUPPORTED_CODEC; WHEP of an "
    "unknown message, and of a message of a thread the account is not in, 404 "
    "MESSAGE_NOT_FOUND; WHEP at speed 0 400 INVALID_LISTEN",
)
async def signalling_refusals(ctx: Context) -> None:
    thread = await ctx.thread()
    listening = await ctx.listen_only_thread()
    msg = await ctx.talk(thread, 2)
    send_offer = await sample_offer(send=True)
    receive_offer = await sample_offer(send=False)
    whip = f"/v1/threads/{thread}/whip?msg={ctx.msg_id()}"
    nowhere = f"/v1/threads/{ctx.prefix}-none"
    checks = [
        ("no token", whip, None, send_offer, (401, "UNAUTHENTICATED")),
        ("WHIP, not a participant", whip, ctx.carol.token, send_offer, (404, "THREAD_NOT_FOUND")),
        (
            "WHEP monitor, not a participant",
            f"/v1/threads/{thread}/whep",
            ctx.carol.token,
            receive_offer,
            (404, "THREAD_NOT_FOUND"),
        ),
        (
            "WHIP, listen-only participant",
            f"/v1/threads/{listening}/whip?msg={ctx.msg_id()}",
            ctx.bob.token,
            send_offer,
            (403, "FORBIDDEN"),
        ),
        (
            "unknown thread",
            f"{nowhere}/whip",
            ctx.alice.token,
            send_offer,
            (404, "THREAD_NOT_FOUND"),
        ),
        ("not SDP", whip, ctx.alice.token, "hello", (400, "INVALID_REQUEST")),
        ("no Opus", whip, ctx.alice.token, without_opus(send_offer), (422, "UNSUPPORTED_CODEC")),
        (
            "WHEP, unknown message",
            f"/v1/messages/{ctx.prefix}-none/whep",
            ctx.bob.token,
            receive_offer,
            (404, "MESSAGE_NOT_FOUND"),
        ),
        (
            "WHEP, not a participant",
            f"/v1/messages/{msg}/whep",
            ctx.carol.token,
            receive_offer,
            (404, "MESSAGE_NOT_FOUND"),
        ),
        (
            "WHEP at speed 0",
            f"/v1/messages/{msg}/whep?speed=0",
            ctx.bob.token,
            receive_offer,
            (400, "INVALID_LISTEN"),
        ),
    ]
    for what, path, token, body, expected in checks:
        got = await refusal(ctx, path, token, body)
        if "speed" in what:
            requirement = "VXS-12-6"
        elif "not a participant" in what:
            requirement = "VXS-8-2"
        elif "listen-only" in what:
            requirement = "VXS-13.2-4"
        else:
            requirement = "VXS-12-2"
        expect(got == expected, requirement, f"{what}: {got}, expected {expected}")
    # What a stranger is told about a thread or message is what an unknown id gets.
    none = f"{ctx.prefix}-none"
    pairs = [
        ("WHIP", f"/v1/threads/{thread}/whip", thread, f"{nowhere}/whip", send_offer),
        ("WHEP monitor", f"/v1/threads/{thread}/whep", thread, f"{nowhere}/whep", receive_offer),
        ("WHEP", f"/v1/messages/{msg}/whep", msg, f"/v1/messages/{none}/whep", receive_offer),
    ]
    for what, path, hidden, unknown_path, body in pairs:
        seen = await post_offer(ctx, path, ctx.carol.token, body)
        never = await post_offer(ctx, unknown_path, ctx.carol.token, body)
        expect_unseen(
            rest_answer(seen, hidden),
            rest_answer(never, none),
            "VXS-8-2",
            f"carol's {what} offer about alice's thread",
        )


@case(
    "12/whip-to-http2",
    "each RTP payload a WHIP talker sends becomes one chunk, stored and heard over HTTP/2",
    requirements=("VXS-12-3", "VXS-12-4", "VXS-12-11"),
    group=GROUP,
    accepts="30 Opus packets sent 20 ms apart over WHIP; DELETE answers with state closed and "
    "chunks 30; an HTTP/2 listen of the message then gets 30 chunks whose packets are the sent "
    "ones byte for byte, with ts equal to each packet's RTP media time",
)
async def whip_to_http2(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    packets = [opus_packet(seq, b"rtc") for seq in range(30)]
    async with rtc_client(ctx, ctx.alice) as rtc:
        talker = await rtc.whip(thread, msg)
        expect(talker.msg == msg, "VXS-12-3", f"Voxer-Message {talker.msg!r}, expected {msg!r}")
        start = trio.current_time()
        for index, packet in enumerate(packets):
            await trio.sleep_until(start + index * 0.02)
            talker.send(packet, index * 960)
        await trio.sleep(0.3)
        final = await talker.end()
    expect(
        final.get("state") == "closed" and final.get("chunks") == len(packets),
        "VXS-12-4",
        f"DELETE answered {final}",
    )
    reply = await ctx.listen_all(ctx.bob.token, msg)
    chunks = [f for f in reply.frames if isinstance(f, Chunk)]
    expect(
        [p for c in chunks for p in c.packets] == packets,
        "VXS-12-3",
        f"{len(chunks)} chunks heard, not the {len(packets)} packets sent, in order",
    )
    expect(
        [c.ts for c in chunks] == [i * 960 for i in range(len(packets))],
        "VXS-12-3",
        f"ts {[c.ts for c in chunks][:5]}..., expected the RTP media times 0, 960, ...",
    )


@case(
    "12/whep-stored-message",
    "a WHEP listener gets a stored message as RTP: the packets, their media times, one "
    "sequence, then the session ends",
    requirements=("VXS-12-5", "VXS-12-7", "VXS-12-8"),
    group=GROUP,
    accepts="a closed message of 25 chunks, WHEP from_seq 5 at speed 2: 20 RTP packets whose "
    "payloads are chunks 5..24's packets, timestamps 960 apart from the first, sequence "
    "numbers one apart; the server ends the session (the track ends) and its status says ended",
)
async def whep_stored_message(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 25)
    async with rtc_client(ctx, ctx.bob) as rtc:
        listener = await rtc.whep(msg, from_seq=5, speed=2.0)
        got: list[RtpArrival] = []
        with trio.move_on_after(ctx.timeout):
            got = await listener.collect()
        status = await listener.status()
    expect(
        [a.payload for a in got] == [ctx.chunk(seq).packets[0] for seq in range(5, 25)],
        "VXS-12-5",
        f"{len(got)} RTP packets, not chunks 5..24 in order",
    )
    expect(
        media_times(got) == [i * 960 for i in range(len(got))],
        "VXS-12-7",
        f"RTP timestamps {media_times(got)[:5]}... do not follow the chunks' media times",
    )
    expect(
        all(step == 1 for step in sequence_steps(got)),
        "VXS-12-7",
        "RTP sequence numbers do not increase by one per packet",
    )
    expect(status.get("state") == "ended", "VXS-12-8", f"the session's status is {status}")


@case(
    "12/whep-catch-up-to-live",
    "a WHEP listener that joins a live message from its start hears it all, once, in order, "
    "across the switch from stored to live",
    requirements=("VXS-12-5", "VXS-12-7"),
    group=GROUP,
    accepts="a live message over HTTP/2 with 10 chunks stored, WHEP from_seq 0 at speed 2 "
    "(so it catches up), then 40 more chunks 20 ms apart and close: 50 packets, the sent ones "
    "in order, timestamps and sequence numbers without a break",
)
async def whep_catch_up(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    got: list[RtpArrival] = []
    async with ctx.upload(ctx.alice.token) as upload, rtc_client(ctx, ctx.bob) as rtc:
        await upload.send(ctx.open_frame(thread, msg), *[ctx.chunk(s) for s in range(10)])
        await ctx.wait_acked(upload, 9)
        listener = await rtc.whep(msg, from_seq=0, speed=2.0)
        for seq in range(10, 50):
            await upload.send(ctx.chunk(seq))
            await trio.sleep(0.02)
        await upload.send(Close(chunks=50))
        await upload.reply()
        with trio.move_on_after(ctx.timeout):
            got = await listener.collect()
    expect(
        [a.payload for a in got] == [ctx.chunk(seq).packets[0] for seq in range(50)],
        "VXS-12-5",
        f"{len(got)} RTP packets, not the 50 chunks in order",
    )
    expect(
        media_times(got) == [i * 960 for i in range(len(got))]
        and all(step == 1 for step in sequence_steps(got)),
        "VXS-12-7",
        "RTP timestamps or sequence numbers break at the switch to live",
    )


@case(
    "12/session-owner",
    "only the account that created a session can read or end it; others get NOT_FOUND",
    requirements=("VXS-12-11",),
    group=GROUP,
    accepts="GET and DELETE of alice's WHIP session with bob's token: 404 NOT_FOUND; GET of a "
    "session id that never existed: 404 NOT_FOUND; alice's GET: 200 with kind whip and her msg",
)
async def session_owner(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    async with rtc_client(ctx, ctx.alice) as rtc:
        talker = await rtc.whip(thread, msg)
        try:
            for method in ("GET", "DELETE"):
                reply = await ctx.rest(method, talker.location, token=ctx.bob.token)
                name = reply.error["name"] if reply.error else None
                expect(
                    (reply.status, name) == (404, "NOT_FOUND"),
                    "VXS-12-11",
                    f"bob's {method}: {reply.status} {name}",
                )
            reply = await ctx.rest("GET", "/v1/whip/nonesuch", token=ctx.alice.token)
            expect(reply.status == 404, "VXS-12-11", f"an unknown session: {reply.status}")
            status = await talker.status()
            expect(
                status.get("kind") == "whip" and status.get("msg") == msg,
                "VXS-12-11",
                f"alice's GET: {status}",
            )
        finally:
            await talker.end()


@case(
    "12/monitor",
    "monitoring a thread plays each message that starts in it, in turn, on one track",
    requirements=("VXS-12-9",),
    group=GROUP,
    accepts="bob monitors a thread; alice talks two messages of 10 chunks over HTTP/2; bob's "
    "track carries the 20 packets in order with timestamps that only increase, and the "
    "session's status lists both messages",
)
async def monitor(ctx: Context) -> None:
    thread = await ctx.thread()
    async with rtc_client(ctx, ctx.bob) as rtc:
        listener = await rtc.whep(thread_id=thread)
        msgs = [await ctx.talk(thread, 10), await ctx.talk(thread, 10)]
        got: list[RtpArrival] = []
        with trio.move_on_after(1.5):
            async for arrival in listener.arrivals:
                got.append(arrival)
        status = await listener.status()
        await listener.end()
    expect(
        [a.payload for a in got] == [ctx.chunk(s).packets[0] for s in range(10)] * 2,
        "VXS-12-9",
        f"{len(got)} packets on the monitor's track, not both messages' 20 in order",
    )
    times = media_times(got)
    expect(
        all(b > a for a, b in itertools.pairwise(times)),
        "VXS-12-9",
        "the track's media time went backwards",
    )
    expect(status.get("messages") == msgs, "VXS-12-9", f"status {status}, expected {msgs}")


@case(
    "12/answer",
    "the server answers a complete offer with a complete answer: Opus, its ICE candidates, "
    "its DTLS fingerprint",
    requirements=("VXS-12-1",),
    group=GROUP,
    accepts="a WHIP offer and a WHEP offer: each answer is 201 application/sdp with one audio "
    "section, an rtpmap for opus/48000/2, at least one a=candidate line and an "
    "a=fingerprint line (DTLS-SRTP)",
)
async def answer(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 2)
    for what, path, offer in (
        (
            "WHIP",
            f"/v1/threads/{thread}/whip?msg={ctx.msg_id()}",
            await sample_offer(send=True),
        ),
        ("WHEP", f"/v1/messages/{msg}/whep", await sample_offer(send=False)),
    ):
        reply = await post_offer(ctx, path, ctx.alice.token, offer)
        sdp = reply.content.decode("utf-8", "replace")
        lines = sdp.splitlines()
        expect(
            reply.status == 201
            and reply.headers.get("content-type", "").startswith("application/sdp"),
            "VXS-12-1",
            f"{what}: {reply.status} {reply.headers.get('content-type')}",
        )
        expect(
            sum(line.startswith("m=audio ") for line in lines) == 1
            and any(
                "opus/48000/2" in line.lower() for line in lines if line.startswith("a=rtpmap:")
            )
            and any(line.startswith("a=candidate:") for line in lines)
            and any(line.startswith("a=fingerprint:") for line in lines),
            "VXS-12-1",
            f"{what}: the answer lacks an audio section with Opus, a candidate or a fingerprint",
        )
        if location := reply.headers.get("location"):
            await ctx.rest("DELETE", location, token=ctx.alice.token)


@case(
    "12/connect-timeout",
    "a WHEP peer that never connects is given up with IDLE_TIMEOUT",
    requirements=("VXS-12-10",),
    group=GROUP,
    strict=True,
    accepts="only with the server's period known to the suite (--rtc-connect-timeout, at most "
    "20 s): a WHEP session whose offerer goes away after the answer ends within the period "
    "plus 2 s, its status state failed with error 502 IDLE_TIMEOUT; otherwise skipped",
    timeout=60,
)
async def connect_timeout(ctx: Context) -> None:
    period = ctx.rtc_connect_timeout
    if period is None or not 0 < period <= 20:
        skip(
            "the default period is 30 s; run the server with a short one and pass it with "
            "--rtc-connect-timeout to check VXS-12-10"
        )
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 2)
    offer = await sample_offer(send=False)  # its peer is closed at once: never connects
    reply = await post_offer(ctx, f"/v1/messages/{msg}/whep", ctx.bob.token, offer)
    location = reply.headers.get("location")
    expect(reply.status == 201 and location, "VXS-12-10", f"the WHEP POST answered {reply.status}")
    assert location is not None
    deadline = trio.current_time() + period + 2.0
    status: dict[str, object] = {}
    while trio.current_time() < deadline:
        got = await ctx.rest("GET", location, token=ctx.bob.token)
        status = got.body if isinstance(got.body, dict) else {}
        if status.get("state") in ("ended", "failed"):
            break
        await trio.sleep(0.25)
    error = status.get("error")
    expect(
        status.get("state") == "failed"
        and isinstance(error, dict)
        and (error.get("code"), error.get("name")) == (502, "IDLE_TIMEOUT"),
        "VXS-12-10",
        f"{period:g} s after an answer nobody used, the session is {status}",
    )


@case(
    "12/session-limit",
    "an account at the server's session limit is refused with TOO_MANY_SESSIONS until one ends",
    requirements=("VXS-12-12",),
    group=GROUP,
    strict=True,
    accepts="only with the server's limit known to the suite (--rtc-max-sessions, at most 10): "
    "alice opens that many WHIP sessions; one more WHIP or WHEP POST is 429 "
    "TOO_MANY_SESSIONS; after she DELETEs one, a new session is 201; otherwise skipped",
    timeout=60,
)
async def session_limit(ctx: Context) -> None:
    limit = ctx.rtc_max_sessions
    if limit is None or not 0 < limit <= 10:
        skip(
            "the server's limit is not known; run it with a small one and pass it with "
            "--rtc-max-sessions to check VXS-12-12"
        )
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 2)
    async with rtc_client(ctx, ctx.alice) as rtc:
        talkers = [await rtc.whip(thread) for _ in range(limit)]
        try:
            for what, path, offer in (
                ("WHIP", f"/v1/threads/{thread}/whip", await sample_offer(send=True)),
                ("WHEP", f"/v1/messages/{msg}/whep", await sample_offer(send=False)),
            ):
                got = await refusal(ctx, path, ctx.alice.token, offer)
                expect(
                    got == (429, "TOO_MANY_SESSIONS"),
                    "VXS-12-12",
                    f"a {what} session beyond the limit of {limit}: {got}",
                )
            await talkers.pop().end()
            again = await rtc.whip(thread)
            expect(bool(again.location), "VXS-12-12", "no new session after one ended")
            talkers.append(again)
        finally:
            for talker in talkers:
                await talker.end()
