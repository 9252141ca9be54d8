"""The WebRTC binding (spec section 12) end to end: real aiortc peers on loopback, the
real server, HTTP/2 on the other side. What arrives is what was sent, in order."""

from __future__ import annotations

import pytest
import trio

from tests.conftest import RunningServer, make_thread, make_user
from voxer_stream.client import collect, talk
from voxer_stream.client.rtc import RtcClient
from voxer_stream.client.talker import chunks_from_packets, realtime
from voxer_stream.media.encode import encode_file, tone_wav
from voxer_stream.media.rtc import RtpArrival, Unwrapper
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
