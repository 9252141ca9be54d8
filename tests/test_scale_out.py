"""Server processes on one store and one Redis (issue 7): a change made on one wakes the
long-polls and streams held on the others, presence is one view, and a live message is
owned by the process the ring names for it, whichever process its talker and listeners
are on, and whichever of them dies."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import make_thread, make_user, server_process
from service_api import Device, login, register

from conformance.cases.webrtc import sample_offer
from voxer_stream.bus import Ring
from voxer_stream.client import (
    ConnectionLost,
    H2ConnectionError,
    ListenInterrupted,
    ListenResult,
    Rest,
    ServerError,
    chunks_from_packets,
    collect,
    listen,
    realtime,
    talk,
)
from voxer_stream.client.rtc import RtcClient
from voxer_stream.client.talker import UploadChannel, _h2_opener, run_upload
from voxer_stream.media.encode import encode_file, tone_wav
from voxer_stream.media.ogg import read_ogg_opus
from voxer_stream.service.timeline import PRESENCE_TTL
from voxer_stream.wire import Chunk, End, Listen, Open


async def online(device: Device, thread: str) -> list[str]:
    return list((await device.get(f"/v1/threads/{thread}"))["online"])


# httpcore leaves a streamed response's body generator to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_two_processes_share_timelines_and_presence(tmp_path: Path, redis_url: str) -> None:
    data = tmp_path / "data"
    options = ("--synchronous", "NORMAL", "--redis", redis_url)
    with server_process(data, *options) as a, server_process(data, *options) as b:
        async with (
            httpx.AsyncClient(base_url=a.url, http1=False, http2=True, timeout=30) as on_a,
            httpx.AsyncClient(base_url=b.url, http1=False, http2=True, timeout=30) as on_b,
        ):
            await register(on_a, "alice")
            await register(on_a, "bob")
            alice = await login(on_a, "alice")
            bob = await login(on_b, "bob")  # the same store: a token works on both
            thread = (await alice.post("/v1/threads", {"participants": ["bob"]}))["id"]
            _, token = await bob.sync_all()

            # A long-poll held on B wakes when alice posts on A.
            got: dict[str, object] = {}

            async def poll() -> None:
                got.update(await bob.get("/v1/sync", params={"since": token, "timeout": "20000"}))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.sleep(0.5)
                posted = trio.current_time()
                await alice.post(f"/v1/threads/{thread}/messages", {"kind": "text", "text": "hi"})
            woke_after = trio.current_time() - posted
            assert [e["type"] for e in got["events"]] == ["message"]  # type: ignore[attr-defined]
            assert woke_after < 1.0, woke_after

            # Bob holds a stream on B: alice, on A, sees him online; then not.
            headers = {"Authorization": f"Bearer {bob.token}"}
            async with (
                httpx.AsyncClient(base_url=b.url, http1=False, http2=True) as device,
                device.stream("GET", "/v1/sync/stream", headers=headers) as stream,
                aclosing(stream.aiter_lines()) as lines,
            ):
                async for _ in lines:
                    break
                with trio.fail_after(3):
                    while bob.id not in await online(alice, thread):
                        await trio.sleep(0.05)
            with trio.fail_after(3):
                while bob.id in await online(alice, thread):
                    await trio.sleep(0.05)

        # B dies holding bob's stream: A forgets him within PRESENCE_TTL.
        async with (
            httpx.AsyncClient(base_url=a.url, http1=False, http2=True, timeout=30) as on_a,
            httpx.AsyncClient(base_url=b.url, http1=False, http2=True) as device,
            device.stream("GET", "/v1/sync/stream", headers=headers) as stream,
            aclosing(stream.aiter_lines()) as lines,
        ):
            alice.http = on_a
            async for _ in lines:
                break
            with trio.fail_after(3):
                while bob.id not in await online(alice, thread):
                    await trio.sleep(0.05)
            os.kill(b.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            with trio.fail_after(PRESENCE_TTL + 3):
                while bob.id in await online(alice, thread):
                    await trio.sleep(0.1)
            assert time.monotonic() - killed <= PRESENCE_TTL + 1.0


def tone_packets(tmp_path: Path, seconds: float) -> list[bytes]:
    wav = tmp_path / "tone.wav"
    tone_wav(wav, seconds, 440.0)
    return encode_file(wav)


async def test_listeners_on_other_processes_hear_a_live_message(
    tmp_path: Path, redis_url: str
) -> None:
    """A talker on A; listeners on A and B from the start while it is live, and one on
    B that joins late and catches up: each gets every chunk once, in order."""
    chunks = chunks_from_packets(tone_packets(tmp_path, 3.0), 1)
    data = tmp_path / "data"
    options = ("--synchronous", "NORMAL", "--redis", redis_url)
    with server_process(data, *options) as a, server_process(data, *options) as b:
        alice = await make_user(a.url, "alice")
        bob = await make_user(a.url, "bob")
        thread = await make_thread(a.url, alice, bob)
        results: dict[str, ListenResult] = {}

        async def hear(name: str, url: str, delay: float) -> None:
            await trio.sleep(delay)
            results[name] = await collect(url, bob.token, Listen(msg="m-live"))

        opened = Open(msg="m-live", thread=thread, created=int(time.time() * 1000))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk, a.url, alice.token, opened, realtime(chunks))
            nursery.start_soon(hear, "on A", a.url, 0.3)
            nursery.start_soon(hear, "on B", b.url, 0.3)
            nursery.start_soon(hear, "on B, late", b.url, 1.5)
        for name, result in results.items():
            assert [c.seq for c in result.chunks] == list(range(len(chunks))), name
            assert result.chunks == chunks, name
            assert result.end is not None and result.end.chunks == len(chunks), name
        assert results["on B"].live_at is not None  # it was live on B, not a replay


async def test_a_talker_whose_process_dies_resumes_on_another(
    tmp_path: Path, redis_url: str
) -> None:
    """A is killed mid-message: the talker reconnects to B and resumes from what is
    durable; a listener on B hears every chunk once; the stored message is whole."""
    packets = tone_packets(tmp_path, 3.0)
    chunks = chunks_from_packets(packets, 1)
    data = tmp_path / "data"
    options = ("--synchronous", "NORMAL", "--redis", redis_url)
    with server_process(data, *options) as a, server_process(data, *options) as b:
        alice = await make_user(a.url, "alice")
        bob = await make_user(a.url, "bob")
        thread = await make_thread(a.url, alice, bob)
        urls = iter([a.url, b.url, b.url, b.url, b.url, b.url])

        @asynccontextmanager
        async def opener() -> AsyncIterator[UploadChannel]:
            async with _h2_opener(next(urls), alice.token, None)() as channel:
                yield channel

        heard: dict[str, ListenResult] = {}

        async def hear() -> None:
            await trio.sleep(0.3)
            heard["on B"] = await collect(b.url, bob.token, Listen(msg="m-moves"))

        async def kill_a() -> None:
            await trio.sleep(1.2)
            os.kill(a.process.pid, signal.SIGKILL)

        opened = Open(msg="m-moves", thread=thread, created=int(time.time() * 1000))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hear)
            nursery.start_soon(kill_a)
            closed = await run_upload(opener, opened, realtime(chunks))
        assert closed.chunks == len(chunks)
        result = heard["on B"]
        assert [c.seq for c in result.chunks] == list(range(len(chunks)))
        assert result.chunks == chunks
        async with Rest(b.url, bob.token) as rest:
            stored = await rest.message("m-moves")
            audio = await rest.export("m-moves")
        assert (stored["state"], stored["chunks"]) == ("closed", len(chunks))
        assert read_ogg_opus(audio)[1] == packets


async def hear_all(url: str, token: str, msg: str) -> list[Chunk]:
    """Listen to the end, reconnecting (to whichever worker the kernel picks) from the
    next seq after an interruption: a listener that was on a killed process resumes."""
    got: list[Chunk] = []
    for _ in range(20):
        try:
            request = Listen(msg=msg, from_seq=len(got))
            async with aclosing(listen(url, token, request)) as frames:
                async for frame in frames:
                    if isinstance(frame, Chunk):
                        assert frame.seq == len(got), (frame.seq, len(got))  # no gap, no dup
                        got.append(frame)
                    elif isinstance(frame, End):
                        return got
        except (ConnectionLost, ListenInterrupted, ServerError):
            await trio.sleep(0.1)
    raise AssertionError(f"{msg}: no end after 20 tries ({len(got)} chunks)")


async def members(url: str) -> tuple[str, list[str]]:
    async with httpx.AsyncClient(base_url=url) as http:  # a new connection: any worker
        health = (await http.get("/v1/health")).json()
    return health["member"], health["members"]


@pytest.mark.slow
async def test_three_workers_lose_one_mid_message_and_nothing_is_lost(
    tmp_path: Path, redis_url: str
) -> None:
    """serve --workers 3 on one Redis: 3 talkers and 6 listeners spread over the
    workers by the kernel; one worker is SIGKILLed mid-message. Every talker finishes
    (resuming on another worker), every listener ends with the exact chunks, the
    stored messages are whole, and the ring drops the dead worker."""
    chunks = chunks_from_packets(tone_packets(tmp_path, 4.0), 1)
    data = tmp_path / "data"
    options = ("--synchronous", "NORMAL", "--redis", redis_url, "--workers", "3")
    with server_process(data, *options) as service:
        url = service.url
        with trio.fail_after(10):
            while len((await members(url))[1]) < 3:
                await trio.sleep(0.1)
        alice = await make_user(url, "alice")
        bob = await make_user(url, "bob")
        thread = await make_thread(url, alice, bob)
        talked: dict[str, int] = {}
        heard: dict[str, list[Chunk]] = {}
        victim: list[str] = []

        async def talker(msg: str) -> None:
            opened = Open(msg=msg, thread=thread, created=int(time.time() * 1000))
            closed = await run_upload(
                _h2_opener(url, alice.token, None), opened, realtime(chunks), max_resumes=20
            )
            talked[msg] = closed.chunks

        async def listener(name: str, msg: str, delay: float) -> None:
            await trio.sleep(delay)
            heard[name] = await hear_all(url, bob.token, msg)

        async def kill_one() -> None:
            await trio.sleep(1.5)
            member, _ = await members(url)
            victim.append(member)
            os.kill(int(member.rsplit("/", 1)[1]), signal.SIGKILL)

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(talker, f"m{n}")
                nursery.start_soon(listener, f"m{n} early", f"m{n}", 0.3)
                nursery.start_soon(listener, f"m{n} late", f"m{n}", 1.0 + n * 0.5)
            nursery.start_soon(kill_one)
        assert talked == {f"m{n}": len(chunks) for n in range(3)}
        for name, got in heard.items():
            assert got == chunks, name
        async with Rest(url, bob.token) as rest:
            for n in range(3):
                stored = await rest.message(f"m{n}")
                assert (stored["state"], stored["chunks"]) == ("closed", len(chunks))
        # The ring converges: the dead worker is gone from every live worker's view.
        with trio.fail_after(10):
            while True:
                views = [await members(url) for _ in range(9)]
                if all(victim[0] not in ring for _, ring in views):
                    break
                await trio.sleep(0.2)
        assert service.stop() == 0  # SIGTERM: every worker stops gracefully


async def health(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http:
        answer: dict[str, Any] = (await http.get("/v1/health")).json()
        return answer


async def ring_of(*urls: str) -> list[str]:
    """Each process's member name, once every one of them sees all the others."""
    with trio.fail_after(10):
        while True:
            views = [await health(url) for url in urls]
            names = [view["member"] for view in views]
            if all(sorted(view["members"]) == sorted(names) for view in views):
                return names
            await trio.sleep(0.1)


def owned_by(owner: str, members: list[str], prefix: str) -> str:
    """A message id the ring gives to ``owner``."""
    ring = Ring(members)
    return next(f"{prefix}-{n}" for n in range(1000) if ring.owner(f"{prefix}-{n}") == owner)


async def test_the_ring_owner_holds_a_message_and_its_death_costs_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    """3 processes: the talker on A, listeners on A and B, the message hashed to C.
    C (not A) commits it; C is SIGKILLed mid-message: the talker on A goes on without
    even reconnecting, A or B takes the message over, every listener gets every chunk
    once, the stored message is whole, and the ring drops C."""
    packets = tone_packets(tmp_path, 4.0)
    chunks = chunks_from_packets(packets, 1)
    data = tmp_path / "data"
    options = ("--synchronous", "NORMAL", "--redis", redis_url)
    with (
        server_process(data, *options) as a,
        server_process(data, *options) as b,
        server_process(data, *options) as c,
    ):
        names = await ring_of(a.url, b.url, c.url)
        msg = owned_by(names[2], names, "m-ring")
        alice = await make_user(a.url, "alice")
        bob = await make_user(a.url, "bob")
        thread = await make_thread(a.url, alice, bob)
        heard: dict[str, ListenResult] = {}
        owned: dict[str, int] = {}

        async def hear(name: str, url: str) -> None:
            await trio.sleep(0.3)
            heard[name] = await collect(url, bob.token, Listen(msg=msg))

        async def look_then_kill_c() -> None:
            await trio.sleep(1.0)
            for name, url in (("A", a.url), ("B", b.url), ("C", c.url)):
                owned[name] = (await health(url))["owned_messages"]
            os.kill(c.process.pid, signal.SIGKILL)

        opened = Open(msg=msg, thread=thread, created=int(time.time() * 1000))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hear, "on A", a.url)
            nursery.start_soon(hear, "on B", b.url)
            nursery.start_soon(look_then_kill_c)
            closed = await talk(a.url, alice.token, opened, realtime(chunks))  # no resume
        assert owned == {"A": 0, "B": 0, "C": 1}  # the ring's owner, not the talker's process
        assert closed.chunks == len(chunks)
        for name, result in heard.items():
            assert [x.seq for x in result.chunks] == list(range(len(chunks))), name
            assert result.chunks == chunks, name
            assert result.end is not None and result.end.chunks == len(chunks), name
        async with Rest(b.url, bob.token) as rest:
            stored = await rest.message(msg)
            audio = await rest.export(msg)
        assert (stored["state"], stored["chunks"]) == ("closed", len(chunks))
        assert read_ogg_opus(audio)[1] == packets
        with trio.fail_after(5):  # the ring converges: C is gone from every view
            while names[2] in (await health(a.url))["members"] + (await health(b.url))["members"]:
                await trio.sleep(0.1)


async def test_a_message_whose_process_died_with_its_talker_is_closed_by_the_ring(
    tmp_path: Path, redis_url: str
) -> None:
    """The talker's process is also the message's owner, and dies; the talker never
    comes back, and nobody listens. The ring gives the message to B, which finds it live
    in the store with no holder and closes it once abandoned (VXS-5.7-3), keeping every
    chunk that was acked."""
    chunks = chunks_from_packets(tone_packets(tmp_path, 4.0), 1)
    data = tmp_path / "data"
    options = ("--synchronous", "NORMAL", "--redis", redis_url, "--abandon-after", "1")
    with server_process(data, *options) as a, server_process(data, *options) as b:
        names = await ring_of(a.url, b.url)
        msg = owned_by(names[0], names, "m-orphan")
        alice = await make_user(a.url, "alice")
        bob = await make_user(a.url, "bob")
        thread = await make_thread(a.url, alice, bob)

        async def kill_a() -> None:
            await trio.sleep(1.0)
            os.kill(a.process.pid, signal.SIGKILL)

        opened = Open(msg=msg, thread=thread, created=int(time.time() * 1000))
        acked: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_a)
            with pytest.raises((ConnectionLost, ServerError, H2ConnectionError)):
                await talk(
                    a.url, alice.token, opened, realtime(chunks), max_resumes=0, on_ack=acked.append
                )
        killed = trio.current_time()
        # Nobody holds it now: B's reaper finds it in the store (no listener is asking).
        async with Rest(b.url, bob.token) as rest:
            with trio.fail_after(15):
                while (stored := await rest.message(msg))["state"] == "live":
                    await trio.sleep(0.1)
        closed_after = trio.current_time() - killed
        count = stored["chunks"]
        assert acked and acked[-1] < count < len(chunks)  # every acked chunk is kept
        result = await collect(b.url, bob.token, Listen(msg=msg))
        assert result.end is not None and result.end.chunks == count
        assert result.chunks == chunks[:count]
        # Dropped from the ring (ttl + period), then abandoned, then the watchdog's tick.
        assert closed_after < 4.0 + 1.0 + 1.0 + 2.0, closed_after


async def test_a_process_that_joins_takes_its_share_of_live_messages(
    tmp_path: Path, redis_url: str
) -> None:
    """6 live messages on A and B; C starts mid-message: the 3 the new ring gives to C
    move there (their old owner commits what it heard, then C takes them from what
    is durable), and every talker and listener still gets exactly every chunk."""
    chunks = chunks_from_packets(tone_packets(tmp_path, 4.0), 1)
    data = tmp_path / "data"
    options = ("--synchronous", "NORMAL", "--redis", redis_url)
    before, after = Ring(["a", "b"]), Ring(["a", "b", "c"])
    ids = [f"m-join-{n}" for n in range(1000)]
    moving = [m for m in ids if before.owner(m) != after.owner(m)][:3]
    staying = [m for m in ids if after.owner(m) != "c"][:3]
    msgs = moving + staying
    assert len(msgs) == 6
    with (
        server_process(data, *options, "--member", "a") as a,
        server_process(data, *options, "--member", "b") as b,
    ):
        await ring_of(a.url, b.url)
        alice = await make_user(a.url, "alice")
        bob = await make_user(a.url, "bob")
        thread = await make_thread(a.url, alice, bob)
        talked: dict[str, int] = {}
        heard: dict[str, ListenResult] = {}
        moved: list[int] = []

        async def talker(msg: str, url: str) -> None:
            opened = Open(msg=msg, thread=thread, created=int(time.time() * 1000))
            talked[msg] = (await talk(url, alice.token, opened, realtime(chunks))).chunks

        async def hear(msg: str) -> None:
            await trio.sleep(0.3)
            heard[msg] = await collect(b.url, bob.token, Listen(msg=msg))

        async def join_c() -> None:
            await trio.sleep(0.8)
            with server_process(data, *options, "--member", "c") as c:
                await ring_of(a.url, b.url, c.url)
                with trio.fail_after(2):
                    while (await health(c.url))["owned_messages"] != len(moving):
                        await trio.sleep(0.05)
                moved.append(len(moving))
                while len(talked) < len(msgs):
                    await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join_c)
            for n, msg in enumerate(msgs):
                nursery.start_soon(talker, msg, (a.url, b.url)[n % 2])
                nursery.start_soon(hear, msg)
        assert moved == [3]  # C took the three the new ring gives it
        assert talked == dict.fromkeys(msgs, len(chunks))
        for msg in msgs:
            assert heard[msg].chunks == chunks, msg
            assert heard[msg].end is not None and heard[msg].end.chunks == len(chunks)


async def test_a_webrtc_session_answers_from_every_process_and_counts_everywhere(
    tmp_path: Path, redis_url: str
) -> None:
    """A WHIP session negotiated on A is read and ended through B (its resource answers
    from any process: with --workers a new connection may reach any of them,
    VXS-12-11), is NOT_FOUND there for a stranger, and counts against the account's
    limit on B too (VXS-12-12)."""
    packets = tone_packets(tmp_path, 0.4)
    data = tmp_path / "data"
    options = ("--synchronous", "NORMAL", "--redis", redis_url, "--rtc-max-sessions", "1")
    with server_process(data, *options) as a, server_process(data, *options) as b:
        await ring_of(a.url, b.url)
        alice = await make_user(a.url, "alice")
        bob = await make_user(a.url, "bob")
        thread = await make_thread(a.url, alice, bob)
        offer = await sample_offer(send=True)
        async with RtcClient(a.url, alice.token) as rtc, httpx.AsyncClient(base_url=b.url) as on_b:
            talker = await rtc.whip(thread, "m-whip-b")
            await talker.connected()
            for index, packet in enumerate(packets):
                talker.send(packet, index * 960)
                await trio.sleep(0.02)
            await trio.sleep(0.3)
            as_alice = {"Authorization": f"Bearer {alice.token}"}
            status = (await on_b.get(talker.location, headers=as_alice)).json()
            assert (status["kind"], status["msg"], status["state"]) == ("whip", "m-whip-b", "live")
            as_bob = {"Authorization": f"Bearer {bob.token}"}
            stranger = await on_b.get(talker.location, headers=as_bob)
            assert (stranger.status_code, stranger.json()["error"]["name"]) == (404, "NOT_FOUND")
            second = await on_b.post(
                f"/v1/threads/{thread}/whip",
                content=offer.encode(),
                headers={**as_alice, "Content-Type": "application/sdp"},
            )
            refused = (second.status_code, second.json()["error"]["name"])
            assert refused == (429, "TOO_MANY_SESSIONS")
            ended = (await on_b.delete(talker.location, headers=as_alice)).json()
            assert (ended["state"], ended["chunks"]) == ("closed", len(packets))
            again = await on_b.post(  # the limit counts it no more
                f"/v1/threads/{thread}/whip",
                content=offer.encode(),
                headers={**as_alice, "Content-Type": "application/sdp"},
            )
            assert again.status_code == 201, again.text
            await on_b.delete(again.headers["Location"], headers=as_alice)
