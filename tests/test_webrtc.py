"""The WebRTC binding (spec section 12) end to end: real aiortc peers on loopback, the
real server, HTTP/2 on the other side. What arrives is what was sent, in order."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import trio

from conformance.cases.webrtc import sample_offer, without_opus
from tests.conftest import RunningServer, make_thread, make_user, server_process
from voxer_stream.client import Rest, collect, talk
from voxer_stream.client.rtc import RtcClient
from voxer_stream.client.talker import chunks_from_packets, realtime
from voxer_stream.media.encode import encode_file, tone_wav
from voxer_stream.media.ogg import read_ogg_opus
from voxer_stream.media.rtc import RtpArrival, Unwrapper
from voxer_stream.transports.server import ServerConfig, run_server
from voxer_stream.wire import Listen, Open


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    wav = tmp_path_factory.mktemp("rtc") / "tone.wav"
    tone_wav(wav, 2.0, 440.0)
    return encode_file(wav)


def media_times(arrivals: list[RtpArrival]) -> list[int]:
    unwrap = Unwrapper()
    return [unwrap(a.timestamp) for a in arrivals]


async def test_whip_talker_to_http2_listener(server: RunningServer, packets: list[bytes]) -> None:
    alice = await make_user(server.url, "alice")
    bob = await make_user(server.url, "bob")
    thread = await make_thread(server.url, alice, bob)
    async with RtcClient(server.url, alice.token) as rtc:
        talker = await rtc.whip(thread, "m-rtc")
        assert talker.msg == "m-rtc"
        async with trio.open_nursery() as nursery:
            heard: list[object] = []

            async def listen() -> None:
                heard.append(await collect(server.url, bob.token, Listen(msg="m-rtc")))

            nursery.start_soon(listen)
            start = trio.current_time()
            for index, packet in enumerate(packets):
                await trio.sleep_until(start + index * 0.02)
                talker.send(packet, index * 960)
            await trio.sleep(0.3)
            closed = await talker.end()
        assert closed["state"] == "closed"
        assert closed["chunks"] == len(packets)
    (result,) = heard
    assert [p for c in result.chunks for p in c.packets] == packets  # type: ignore[attr-defined]
    assert [c.ts for c in result.chunks] == [i * 960 for i in range(len(packets))]  # type: ignore[attr-defined]


async def test_http2_talker_to_whep_listener(server: RunningServer, packets: list[bytes]) -> None:
    alice = await make_user(server.url, "alice")
    bob = await make_user(server.url, "bob")
    thread = await make_thread(server.url, alice, bob)
    open_frame = Open(msg="m-h2", thread=thread, codec="opus", created=1)
    chunks = chunks_from_packets(packets)
    async with RtcClient(server.url, bob.token) as rtc, trio.open_nursery() as nursery:
        nursery.start_soon(talk, server.url, alice.token, open_frame, realtime(chunks))
        await trio.sleep(0.2)
        listener = await rtc.whep("m-h2", from_seq=0)
        with trio.fail_after(10):
            arrivals = await listener.collect()
    assert [a.payload for a in arrivals] == packets
    times = media_times(arrivals)
    assert times == [i * 960 for i in range(len(packets))]
    seqs = [(a.sequence_number - arrivals[0].sequence_number) % 65536 for a in arrivals]
    assert seqs == list(range(len(packets)))


async def offer_sdp(*, send: bool, opus: bool = True) -> str:
    """A real aiortc offer (the conformance suite's), or one whose codec is not Opus."""
    offer = await sample_offer(send=send)
    return offer if opus else without_opus(offer)


async def post(url: str, path: str, token: str | None, body: str) -> httpx.Response:
    headers = {"Content-Type": "application/sdp"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=url) as http:
        return await http.post(path, content=body.encode(), headers=headers)


def error_of(response: httpx.Response) -> tuple[int, int, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["name"]


async def test_signalling_refusals_use_the_registry(server: RunningServer) -> None:
    """VXS-12-2, VXS-12-5: every refusal is a registry error, before any peer exists.

    VXS-8-2: a thread eve is not in is answered exactly as one that does not exist.
    """
    alice = await make_user(server.url, "alice")
    eve = await make_user(server.url, "eve")
    thread = await make_thread(server.url, alice)
    send_offer = await offer_sdp(send=True)
    receive_offer = await offer_sdp(send=False)
    pcmu_offer = await offer_sdp(send=True, opus=False)
    whip = f"/v1/threads/{thread}/whip"
    cases = [
        (whip, None, send_offer, (401, 200, "UNAUTHENTICATED")),
        (whip, "vxs_bogus", send_offer, (401, 200, "UNAUTHENTICATED")),
        (whip, eve.token, send_offer, (404, 300, "THREAD_NOT_FOUND")),
        ("/v1/threads/nope/whip", alice.token, send_offer, (404, 300, "THREAD_NOT_FOUND")),
        (whip, alice.token, "hello", (400, 104, "INVALID_REQUEST")),
        (
            whip,
            alice.token,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 opus/48000/2\r\n",
            (400, 104, "INVALID_REQUEST"),
        ),
        (
            whip,
            alice.token,
            pcmu_offer,
            (422, 405, "UNSUPPORTED_CODEC"),
        ),
        (whip, alice.token, receive_offer, (400, 104, "INVALID_REQUEST")),
        (f"{whip}?msg=not%20an%20id", alice.token, send_offer, (400, 104, "INVALID_REQUEST")),
        ("/v1/messages/nope/whep", alice.token, receive_offer, (404, 301, "MESSAGE_NOT_FOUND")),
        (f"/v1/threads/{thread}/whep", eve.token, receive_offer, (404, 300, "THREAD_NOT_FOUND")),
        ("/v1/threads/nope/whep", alice.token, receive_offer, (404, 300, "THREAD_NOT_FOUND")),
    ]
    for path, token, body, expected in cases:
        response = await post(server.url, path, token, body)
        assert error_of(response) == expected, (path, token, body[:20])


async def test_whep_listen_parameters_and_other_peoples_messages(
    server: RunningServer, packets: list[bytes]
) -> None:
    alice = await make_user(server.url, "alice")
    eve = await make_user(server.url, "eve")
    thread = await make_thread(server.url, alice)
    open_frame = Open(msg="m-closed", thread=thread, codec="opus", created=1)
    await talk(server.url, alice.token, open_frame, chunks_from_packets(packets[:5]))
    offer = await offer_sdp(send=False)
    whep = "/v1/messages/m-closed/whep"
    for query, expected in [
        ("?speed=0", (400, 409, "INVALID_LISTEN")),
        ("?speed=99", (400, 409, "INVALID_LISTEN")),
        ("?from_seq=1&live_edge=1", (400, 409, "INVALID_LISTEN")),
        ("?from_seq=6", (400, 409, "INVALID_LISTEN")),
        ("?from_seq=x", (400, 409, "INVALID_LISTEN")),
    ]:
        assert error_of(await post(server.url, whep + query, alice.token, offer)) == expected
    # A message in a thread eve is not in is answered as one that does not exist (VXS-8-2).
    not_found = (404, 301, "MESSAGE_NOT_FOUND")
    assert error_of(await post(server.url, whep, eve.token, offer)) == not_found
    # A closed message cannot be talked again over WHIP.
    response = await post(
        server.url,
        f"/v1/threads/{thread}/whip?msg=m-closed",
        alice.token,
        await offer_sdp(send=True),
    )
    assert error_of(response) == (409, 402, "MESSAGE_CLOSED")


async def test_sessions_belong_to_their_owner(server: RunningServer) -> None:
    """VXS-12-11: another account cannot read or end a session, nor learn it exists."""
    alice = await make_user(server.url, "alice")
    eve = await make_user(server.url, "eve")
    thread = await make_thread(server.url, alice)
    async with RtcClient(server.url, alice.token) as rtc:
        talker = await rtc.whip(thread)
        async with httpx.AsyncClient(base_url=server.url) as http:
            for method in ("GET", "DELETE"):
                for token in (eve.token, "vxs_bogus"):
                    response = await http.request(
                        method, talker.location, headers={"Authorization": f"Bearer {token}"}
                    )
                    expected = (
                        (404, 302, "NOT_FOUND")
                        if token == eve.token
                        else (401, 200, "UNAUTHENTICATED")
                    )
                    assert error_of(response) == expected
            response = await http.get(
                "/v1/whip/nope", headers={"Authorization": f"Bearer {alice.token}"}
            )
            assert error_of(response) == (404, 302, "NOT_FOUND")
        status = await talker.status()
        assert status["state"] == "live" and status["connection"] == "connected"
        closed = await talker.end()
        assert closed["chunks"] == 0


async def test_bad_and_late_rtp_packets_are_dropped_not_fatal(
    server: RunningServer, packets: list[bytes]
) -> None:
    """VXS-12-3: a payload that is not Opus, or that comes after a later one, is dropped
    and counted; the message goes on with the others, byte for byte."""
    alice = await make_user(server.url, "alice")
    thread = await make_thread(server.url, alice)
    async with RtcClient(server.url, alice.token) as rtc:
        talker = await rtc.whip(thread, "m-bad")
        for index, packet in enumerate(packets[:10]):
            talker.send(packet, index * 960)
            await trio.sleep(0.005)
        talker.send(b"\xfb\x00", 10 * 960)  # code 3 with no frame: not Opus (R5)
        talker.send(packets[0], 3 * 960)  # before the end of the last chunk: late
        for index, packet in enumerate(packets[10:20], start=11):
            talker.send(packet, index * 960)
            await trio.sleep(0.005)
        await trio.sleep(0.3)
        status = await talker.status()
        assert status["dropped"] == {"invalid_opus": 1, "late": 1}
        assert status["error"]["name"] == "INVALID_OPUS"
        closed = await talker.end()
    assert closed["chunks"] == 20
    result = await collect(server.url, alice.token, Listen(msg="m-bad"))
    assert [p for c in result.chunks for p in c.packets] == packets[:20]
    assert [c.ts for c in result.chunks] == [i * 960 for i in range(10)] + [
        i * 960 for i in range(11, 21)
    ]


async def test_whip_to_whep_catch_up_from_the_start_at_speed(
    server: RunningServer, packets: list[bytes]
) -> None:
    """VXS-12-7: a listener that joins a live message late, from its start at 1.5x, gets
    every packet once, in order, with RTP timestamps and sequence numbers that run on
    across the switch from stored to live."""
    alice = await make_user(server.url, "alice")
    bob = await make_user(server.url, "bob")
    thread = await make_thread(server.url, alice, bob)
    async with (
        RtcClient(server.url, alice.token) as talking,
        RtcClient(server.url, bob.token) as listening,
    ):
        talker = await talking.whip(thread, "m-live")
        got: list[RtpArrival] = []
        async with trio.open_nursery() as nursery:
            start = trio.current_time()

            async def talk_all() -> None:
                for index, packet in enumerate(packets):
                    await trio.sleep_until(start + index * 0.02)
                    talker.send(packet, index * 960)
                await trio.sleep(0.2)
                await talker.end()

            nursery.start_soon(talk_all)
            await trio.sleep(0.8)  # 40 packets in
            listener = await listening.whep("m-live", from_seq=0, speed=1.5)
            with trio.fail_after(10):
                got = await listener.collect()
    assert [a.payload for a in got] == packets
    assert media_times(got) == [i * 960 for i in range(len(packets))]
    seqs = [(a.sequence_number - got[0].sequence_number) % 65536 for a in got]
    assert seqs == list(range(len(packets)))
    # Faster than real time while catching up: the stored part came in at about 1.5x.
    first_40 = (got[39].arrival_ns - got[0].arrival_ns) / 1e9
    assert first_40 < 39 * 0.02


async def test_quiet_talker_and_vanished_peer_close_the_message(
    tmp_path: Path, packets: list[bytes]
) -> None:
    """VXS-12-4: a message closes when its talker goes quiet or its peer disappears."""
    config = ServerConfig(
        port=0, data_dir=tmp_path / "data", synchronous="NORMAL", rtc_idle_timeout=0.5
    )
    async with trio.open_nursery() as nursery:
        (url,) = (await nursery.start(run_server, config))[:1]
        alice = await make_user(url, "alice")
        thread = await make_thread(url, alice)
        async with RtcClient(url, alice.token) as rtc:
            quiet = await rtc.whip(thread, "m-quiet")
            for index, packet in enumerate(packets[:5]):
                quiet.send(packet, index * 960)
            with trio.fail_after(5):
                while (await quiet.status())["state"] != "closed":
                    await trio.sleep(0.1)
            status = await quiet.status()
            assert status["chunks"] == 5 and status["chunks_durable"] == 5

            gone = await rtc.whip(thread, "m-gone")
            for index, packet in enumerate(packets[:3]):
                gone.send(packet, index * 960)
            await trio.sleep(0.1)
            await gone.close_peer()  # no DELETE: the peer just goes away
            with trio.fail_after(5):
                while (await gone.status())["state"] != "closed":
                    await trio.sleep(0.1)
        result = await collect(url, alice.token, Listen(msg="m-gone"))
        assert [p for c in result.chunks for p in c.packets] == packets[:3]
        nursery.cancel_scope.cancel()


async def test_monitor_plays_each_message_that_starts(
    server: RunningServer, packets: list[bytes]
) -> None:
    """VXS-12-9: monitoring a thread plays every message that starts in it, in turn, on
    one track whose timestamps only move forward."""
    alice = await make_user(server.url, "alice")
    bob = await make_user(server.url, "bob")
    thread = await make_thread(server.url, alice, bob)
    async with RtcClient(server.url, bob.token) as rtc:
        monitor = await rtc.whep(thread_id=thread)
        for msg in ("m-one", "m-two"):
            open_frame = Open(msg=msg, thread=thread, codec="opus", created=1)
            await talk(
                server.url, alice.token, open_frame, realtime(chunks_from_packets(packets[:25]))
            )
        got: list[RtpArrival] = []
        with trio.move_on_after(1.0):
            async for arrival in monitor.arrivals:
                got.append(arrival)
        status = await monitor.status()
        assert status["messages"] == ["m-one", "m-two"]
        await monitor.end()
    assert [a.payload for a in got] == packets[:25] * 2
    times = media_times(got)
    assert times == sorted(times) and len(set(times)) == len(times)
    assert times[:25] == [i * 960 for i in range(25)]


@pytest.mark.slow
async def test_chunks_durable_over_whip_survive_a_kill(
    tmp_path: Path, packets: list[bytes]
) -> None:
    """Nothing acked is lost on this binding either: what a WHIP session reports durable
    (``chunks_durable``, its ack) is there after ``kill -9`` and a restart."""
    data = tmp_path / "data"
    with server_process(data) as first:
        alice = await make_user(first.url, "alice")
        thread = await make_thread(first.url, alice)
        async with RtcClient(first.url, alice.token) as rtc:
            talker = await rtc.whip(thread, "m-kill")
            for index, packet in enumerate(packets[:50]):
                talker.send(packet, index * 960)
                await trio.sleep(0.002)
            with trio.fail_after(10):
                while (durable := (await talker.status())["chunks_durable"]) < 50:
                    await trio.sleep(0.05)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait()
    with server_process(data) as second:
        async with Rest(second.url) as rest:
            await rest.login("alice", "correct horse")
            record = await rest.message("m-kill")
            _, stored = read_ogg_opus(await rest.export("m-kill"))
    assert durable == 50 and record["chunks"] >= durable
    assert stored[:durable] == packets[:durable]


async def test_delete_right_after_the_last_packet_keeps_it(
    server: RunningServer, packets: list[bytes]
) -> None:
    """VXS-12-4: a talker that DELETEs the moment it stops sending loses nothing that was
    already on its way: the server takes what arrives until the peer goes quiet."""
    alice = await make_user(server.url, "alice")
    thread = await make_thread(server.url, alice)
    async with RtcClient(server.url, alice.token) as rtc:
        talker = await rtc.whip(thread, "m-tail")
        for index, packet in enumerate(packets[:60]):
            talker.send(packet, index * 960)  # a burst, no pause before DELETE
        closed = await talker.end()
    assert closed["chunks"] == 60
    result = await collect(server.url, alice.token, Listen(msg="m-tail"))
    assert [p for c in result.chunks for p in c.packets] == packets[:60]


async def test_monitor_leaves_out_your_own_messages_unless_asked(
    server: RunningServer, packets: list[bytes]
) -> None:
    """VXS-12-9: alice's monitor plays bob, not herself; with own=1 it plays both."""
    alice = await make_user(server.url, "alice")
    bob = await make_user(server.url, "bob")
    thread = await make_thread(server.url, alice, bob)
    async with RtcClient(server.url, alice.token) as rtc:
        mine = await rtc.whep(thread_id=thread)
        everything = await rtc.whep(thread_id=thread, own=True)
        for msg, user in (("m-alice", alice), ("m-bob", bob)):
            open_frame = Open(msg=msg, thread=thread, codec="opus", created=1)
            await talk(server.url, user.token, open_frame, chunks_from_packets(packets[:10]))
        await trio.sleep(1.0)
        assert (await mine.status())["messages"] == ["m-bob"]
        assert (await everything.status())["messages"] == ["m-alice", "m-bob"]
    response = await post(server.url, f"/v1/threads/{thread}/whep?own=maybe", alice.token, "")
    assert error_of(response) == (400, 104, "INVALID_REQUEST")


async def test_a_talker_sending_on_after_delete_does_not_hold_the_close(
    server: RunningServer, packets: list[bytes]
) -> None:
    """VXS-12-4: what arrives after the DELETE is not part of the message, and the close
    does not wait for the talker to fall silent."""
    alice = await make_user(server.url, "alice")
    thread = await make_thread(server.url, alice)
    async with RtcClient(server.url, alice.token) as rtc, trio.open_nursery() as nursery:
        talker = await rtc.whip(thread, "m-on")

        async def keep_sending() -> None:
            for index, packet in enumerate(packets):
                talker.send(packet, index * 960)
                await trio.sleep(0.02)

        nursery.start_soon(keep_sending)
        await trio.sleep(0.5)
        with trio.fail_after(2):
            closed = await talker.end()
        nursery.cancel_scope.cancel()
    assert 15 <= closed["chunks"] <= 25 + 13  # 0.5 s sent, at most DRAIN_SLACK more
    result = await collect(server.url, alice.token, Listen(msg="m-on"))
    assert [p for c in result.chunks for p in c.packets] == packets[: closed["chunks"]]


async def test_an_account_at_the_session_limit_is_refused_until_one_ends(
    tmp_path: Path,
) -> None:
    """VXS-12-12: the third session of an account with a limit of 2 is TOO_MANY_SESSIONS
    (429); another account is not affected, and one DELETE makes room."""
    config = ServerConfig(
        port=0, data_dir=tmp_path / "data", synchronous="NORMAL", rtc_max_sessions=2
    )
    async with trio.open_nursery() as nursery:
        (url,) = (await nursery.start(run_server, config))[:1]
        alice = await make_user(url, "alice")
        bob = await make_user(url, "bob")
        thread = await make_thread(url, alice, bob)
        async with RtcClient(url, alice.token) as rtc, RtcClient(url, bob.token) as other:
            first, second = await rtc.whip(thread), await rtc.whip(thread)
            response = await post(
                url, f"/v1/threads/{thread}/whip", alice.token, await offer_sdp(send=True)
            )
            assert error_of(response) == (429, 503, "TOO_MANY_SESSIONS")
            bobs = await other.whip(thread)
            await first.end()
            third = await rtc.whip(thread)
            for talker in (second, third, bobs):
                await talker.end()
        nursery.cancel_scope.cancel()


async def test_the_server_at_its_total_limit_refuses_every_account(tmp_path: Path) -> None:
    """VXS-12-12: with 2 sessions in all, a third account's request is TOO_MANY_SESSIONS
    (429) although it has none open; one DELETE makes room."""
    config = ServerConfig(port=0, data_dir=tmp_path / "data", synchronous="NORMAL", rtc_max_total=2)
    async with trio.open_nursery() as nursery:
        (url,) = (await nursery.start(run_server, config))[:1]
        alice, bob, carol = [await make_user(url, name) for name in ("alice", "bob", "carol")]
        thread = await make_thread(url, alice, bob, carol)
        async with RtcClient(url, alice.token) as a, RtcClient(url, bob.token) as b:
            first, second = await a.whip(thread), await b.whip(thread)
            response = await post(
                url, f"/v1/threads/{thread}/whip", carol.token, await offer_sdp(send=True)
            )
            assert error_of(response) == (429, 503, "TOO_MANY_SESSIONS")
            await first.end()
            async with RtcClient(url, carol.token) as c:
                third = await c.whip(thread)
                for talker in (second, third):
                    await talker.end()
        nursery.cancel_scope.cancel()
