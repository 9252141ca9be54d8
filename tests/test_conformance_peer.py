"""The reference peer (``python -m conformance peer``) judging client implementations.

The reference client library (``voxer_stream.client``) plays every scenario and must
pass it. Naive clients written here, each wrong in one way, must fail the scenario
that targets it, naming the right requirement: the peer is not blind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import cbor2
import pytest
import trio

from conformance.case import CaseSkipped, Verdict, all_cases
from conformance.context import opus_packet
from conformance.net import check_item
from conformance.peer import Peer
from conformance.peer_core import Timing, scenarios
from conformance.peer_talker import lenient_ack, lenient_closed, lenient_opened
from conformance.runner import Result
from voxer_stream.client import ClientError, ServerError, collect, talk
from voxer_stream.client.h2conn import H2Connection, H2Stream
from voxer_stream.wire import (
    Ack,
    Chunk,
    Close,
    Closed,
    Error,
    Frame,
    FrameDecoder,
    Listen,
    Open,
    Opened,
    ProtocolError,
    encode_frame,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
#: Short waits: the clients here react in milliseconds.
FAST = Timing(reaction=1.0, reconnect=1.0, grace=0.4, idle=5.0, listen_reaction=0.5)
CHUNKS = 30
NAMES = sorted(scenarios())
TALKERS = [n for n in NAMES if scenarios()[n].kind == "talker"]


def message(n: int = CHUNKS, salt: bytes = b"") -> list[Chunk]:
    return [Chunk(seq=i, ts=i * 960, packets=(opus_packet(i, salt),)) for i in range(n)]


def new_open(name: str) -> Open:
    msg = f"m-{name}-{secrets.token_hex(12)}"
    return Open(msg=msg, thread="t-peer-test", created=int(time.time() * 1000))


@asynccontextmanager
async def running_peer(timing: Timing = FAST) -> AsyncIterator[Peer]:
    peer = Peer(timing=timing)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve, 0)
        yield peer
        nursery.cancel_scope.cancel()


# -- the reference client library against every scenario --------------------------

#: What the reference client returns or raises in each scenario.
EXPECTED_CLIENT = {
    name: "closed"
    for name in (
        "normal-upload",
        "drop-mid-upload",
        "resume-ahead",
        "shutting-down",
        "internal-error",
        "idle-timeout",
        "unknown-server-error",
        "lenient-encoding",
        "rst-after-complete",
    )
} | {"unknown-error-code": "ServerError 499", "listen-normal": "end"}

XFAIL: dict[str, str] = {}


async def _reference_talk(peer: Peer, name: str) -> str:
    try:
        closed = await talk(peer.url, name, new_open(name), message())
    except ServerError as exc:
        return f"ServerError {exc.code}"
    except (ProtocolError, ClientError) as exc:
        return type(exc).__name__
    return "closed" if closed.chunks == CHUNKS else f"closed with {closed.chunks} chunks"


async def _reference_listen(peer: Peer, name: str) -> str:
    try:
        result = await collect(peer.url, name, Listen(msg="m-listen"))
    except (ProtocolError, ClientError) as exc:
        return type(exc).__name__
    packets = [c.packets for c in result.chunks]
    return "end" if result.end is not None and len(packets) == 6 else f"partial {result}"


async def _reference_run() -> dict[str, tuple[Result, str]]:
    outcomes: dict[str, str] = {}
    async with running_peer() as peer:

        async def play(name: str) -> None:
            with trio.fail_after(20):
                if scenarios()[name].kind == "talker":
                    outcomes[name] = await _reference_talk(peer, name)
                else:
                    outcomes[name] = await _reference_listen(peer, name)

        async with trio.open_nursery() as nursery:
            for name in NAMES:
                nursery.start_soon(play, name)
        return {n: (await peer.wait_result(n), outcomes[n]) for n in NAMES}


@pytest.fixture(scope="module")
def reference() -> dict[str, tuple[Result, str]]:
    """Every scenario played at once by the reference client library."""
    return trio.run(_reference_run)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=XFAIL[n])) if n in XFAIL else n
        for n in NAMES
    ],
)
def test_reference_client_passes(reference: dict[str, tuple[Result, str]], name: str) -> None:
    result, outcome = reference[name]
    assert outcome == EXPECTED_CLIENT.get(name, "ProtocolError")
    assert result.verdict is Verdict.PASS, (result.message, result.notes)
    assert not result.recommendations


def test_scenarios_are_client_cases() -> None:
    cases = {c.id: c for c in all_cases("client")}
    assert {s.case_id for s in scenarios().values()} <= set(cases)
    cited = {rid for s in scenarios().values() for rid in cases[s.case_id].requirements}
    client_ids = {
        *("VXS-5.1-3", "VXS-5.2-4", "VXS-5.3-6", "VXS-5.5-1", "VXS-10-3", "VXS-10-8"),
        *("VXS-3.1-1", "VXS-4.2-2", "VXS-2.1-1", "VXS-2.2-1", "VXS-2.2-2", "VXS-4.11-1"),
        *("VXS-9-2", "VXS-5.2-6", "VXS-6.2-6", "VXS-9-3"),
    }
    assert client_ids <= cited
    assert all(c.role == "client" for c in cases.values())


async def test_client_cases_skip_in_the_server_runner() -> None:
    case = next(iter(all_cases("client")))
    with pytest.raises(CaseSkipped, match="conformance peer"):
        await case.func(None)  # type: ignore[arg-type]


def test_lenient_frames_are_valid() -> None:
    """The non-deterministic encodings of lenient-encoding are valid frames."""
    assert check_item(lenient_opened("m1", 3)) == Opened(msg="m1", next_seq=3, state="live")
    assert check_item(lenient_ack(7)) == Ack(seq=7)
    assert check_item(lenient_closed("m1", 3, 2880)) == Closed(msg="m1", chunks=3, duration=2880)
    assert cbor2.loads(lenient_ack(7))["x-peer-extension"][3] == 4.5


async def test_unknown_token_is_refused() -> None:
    async with running_peer() as peer:
        with pytest.raises(ServerError) as info:
            await talk(peer.url, "no-such-scenario", new_open("x"), message(3))
        assert info.value.code == 200
        assert "normal-upload" in info.value.detail


# -- naive clients: the peer is not blind -----------------------------------------


class RawUpload:
    """An upload stream driven by hand, as a naive talker would."""

    def __init__(self, stream: H2Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, *frames: Frame | bytes) -> None:
        for frame in frames:
            await self.stream.send(frame if isinstance(frame, bytes) else encode_frame(frame))

    async def frame(self) -> Frame | None:
        while (frame := next(self.decoder, None)) is None:
            data = await self.stream.receive()
            if data is None:
                return None
            self.decoder.feed(data)
        return frame

    async def frames(self) -> list[Frame]:
        found: list[Frame] = []
        while (frame := await self.frame()) is not None:
            found.append(frame)
        return found


@asynccontextmanager
async def raw_upload(url: str, token: str) -> AsyncIterator[RawUpload]:
    async with await H2Connection.connect(url) as conn:
        headers = [("content-type", "application/cbor-seq"), ("authorization", f"Bearer {token}")]
        yield RawUpload(await conn.request("POST", "/v1/upload", headers))


async def failed(peer: Peer, name: str, requirement: str) -> Result:
    result = await peer.wait_result(name)
    assert result.verdict is Verdict.FAIL, (result.verdict, result.message)
    assert requirement in result.failed_requirements, result
    return result


async def test_talker_that_never_resumes() -> None:
    opening = new_open("never")
    async with running_peer() as peer:
        with pytest.raises(ClientError):
            async with raw_upload(peer.url, "drop-mid-upload") as up:
                await up.send(opening)
                assert isinstance(await up.frame(), Opened)
                await up.send(*message())
        await failed(peer, "drop-mid-upload", "VXS-5.3-6")


async def _drop_then(peer: Peer, opening: Open) -> int:
    """Upload until the peer cuts the connection; how many chunks were sent."""
    sent = 0
    with pytest.raises(ClientError):
        async with raw_upload(peer.url, "drop-mid-upload") as up:
            await up.send(opening)
            assert isinstance(await up.frame(), Opened)
            for chunk in message():
                await up.send(chunk)
                sent = chunk.seq + 1
    return sent


async def test_talker_that_resumes_where_it_stopped() -> None:
    """It ignores next_seq: it goes on after the last chunk it sent."""
    opening = new_open("ahead")
    async with running_peer() as peer:
        sent = await _drop_then(peer, opening)
        with pytest.raises(ClientError):
            async with raw_upload(peer.url, "drop-mid-upload") as up:
                await up.send(opening)
                opened = await up.frame()
                assert isinstance(opened, Opened) and opened.next_seq == 2
                await up.send(*message()[sent:], Close(chunks=CHUNKS))
                await up.frames()
        await failed(peer, "drop-mid-upload", "VXS-5.2-4")


async def test_talker_that_did_not_keep_its_chunks() -> None:
    """It re-sends from next_seq, but not the chunks it sent before."""
    opening = new_open("forgot")
    async with running_peer() as peer:
        await _drop_then(peer, opening)
        with pytest.raises(ClientError):
            async with raw_upload(peer.url, "drop-mid-upload") as up:
                await up.send(opening)
                assert isinstance(await up.frame(), Opened)
                await up.send(*message(salt=b"again")[2:], Close(chunks=CHUNKS))
                await up.frames()
        await failed(peer, "drop-mid-upload", "VXS-5.3-6")


async def _deaf_talker(url: str, name: str) -> None:
    """Reads opened, then only sends: it never sees what the server says next."""
    with pytest.raises(ClientError):
        async with raw_upload(url, name) as up:
            await up.send(new_open(name))
            assert isinstance(await up.frame(), Opened)
            await up.send(*message(), Close(chunks=CHUNKS))


async def test_talker_that_ignores_faults() -> None:
    expected = {
        "unexpected-frame": "VXS-5.1-3",
        "ack-out-of-order": "VXS-5.1-3",
        "ack-unsent": "VXS-5.1-3",
        "malformed-frame": "VXS-3.1-2",
        "unknown-error-code": "VXS-9-2",
        "shutting-down": "VXS-10-3",
    }
    async with running_peer() as peer, trio.open_nursery() as nursery:
        for name in expected:
            nursery.start_soon(_deaf_talker, peer.url, name)
        for name, requirement in expected.items():
            await failed(peer, name, requirement)


async def test_talker_that_retries_after_a_4xx() -> None:
    """It takes the unknown 499 for a server error (or believes its detail)."""
    opening = new_open("retry")
    async with running_peer() as peer:
        async with raw_upload(peer.url, "unknown-error-code") as up:
            await up.send(opening)
            assert isinstance(await up.frame(), Opened)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(up.send, *message())
                while not isinstance(await up.frame(), Error):
                    pass
                nursery.cancel_scope.cancel()
        with pytest.raises(ClientError):
            async with raw_upload(peer.url, "unknown-error-code") as up:
                await up.send(opening)
                await up.frames()
        result = await failed(peer, "unknown-error-code", "VXS-9-2")
        assert "VXS-4.11-1" in result.failed_requirements


async def test_talker_that_carries_on_after_a_violation() -> None:
    """It ends the stream at the unexpected frame, then uploads the message again."""
    opening = new_open("carry-on")
    async with running_peer() as peer:
        async with raw_upload(peer.url, "unexpected-frame") as up:
            await up.send(opening)
            assert isinstance(await up.frame(), Opened)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(up.send, *message())
                while not isinstance(await up.frame(), Chunk):
                    pass
                nursery.cancel_scope.cancel()
        with pytest.raises(ClientError):
            async with raw_upload(peer.url, "unexpected-frame") as up:
                await up.send(opening)
                opened = await up.frame()
                assert isinstance(opened, Opened)
                await up.send(*message()[opened.next_seq :], Close(chunks=CHUNKS))
                await up.frames()
        result = await failed(peer, "unexpected-frame", "VXS-5.1-3")
        assert "as if nothing had happened" in result.message


async def test_talker_that_takes_the_reset_for_a_failure() -> None:
    opening = new_open("rst")
    async with running_peer() as peer:
        async with raw_upload(peer.url, "rst-after-complete") as up:
            await up.send(opening)
            assert isinstance(await up.frame(), Opened)
            await up.send(*message(), Close(chunks=CHUNKS))
            assert isinstance((await up.frames())[-1], Closed)
        with pytest.raises(ClientError):
            async with raw_upload(peer.url, "rst-after-complete") as up:
                await up.send(opening)
                await up.frames()
        await failed(peer, "rst-after-complete", "VXS-10-8")


async def test_talker_that_reuses_a_message_id() -> None:
    opening = new_open("reuse")
    async with running_peer() as peer:
        await talk(peer.url, "normal-upload", opening, message(CHUNKS))
        assert (await peer.wait_result("normal-upload")).verdict is Verdict.PASS
        await talk(peer.url, "normal-upload", opening, message(CHUNKS, salt=b"other"))
        result = await peer.wait_result("normal-upload", count=2)
        assert result.verdict is Verdict.FAIL
        assert result.failed_requirements == ("VXS-2.1-1",)


async def test_talker_that_does_not_wait_for_opened() -> None:
    """Chunks pipelined behind open are allowed, but a SHOULD is not met (VXS-5.2-6)."""
    async with running_peer() as peer:
        async with raw_upload(peer.url, "normal-upload") as up:
            await up.send(new_open("eager"), *message(), Close(chunks=CHUNKS))
            assert isinstance((await up.frames())[-1], Closed)
        result = await peer.wait_result("normal-upload")
        assert result.verdict is Verdict.NON_STRICT, result
        assert [rid for rid, _ in result.recommendations] == ["VXS-5.2-6"]


def _open_bytes() -> bytes:
    """An open in a non-deterministic key order (allowed; noted as a SHOULD unmet)."""
    opening = {"type": "open", "msg": "m-bad-0123456789abcdef", "thread": "t1", "codec": "opus"}
    return cbor2.dumps({**opening, "created": 1718000000000})


_GOOD = message(12)
BAD_UPLOADS = {
    "gap": ([*_GOOD[:3], *_GOOD[4:]], "VXS-2.2-1"),
    "ts-regression": (
        [*_GOOD[:5], Chunk(seq=5, ts=4 * 960, packets=(b"\xf8\xff\xfe",))],
        "VXS-2.2-2",
    ),
    "invalid-opus": ([*_GOOD[:3], Chunk(seq=3, ts=3 * 960, packets=(b"\x7b",))], "VXS-4.2-2"),
    "close-count": ([*_GOOD, Close(chunks=11)], "VXS-4.3-1"),
    "chunk-after-close": ([*_GOOD[:2], Close(chunks=2), _GOOD[2]], "VXS-5.5-1"),
    "listen-in-body": ([*_GOOD[:2], Listen(msg="m1")], "VXS-10-2"),
    "not-cbor": ([*_GOOD[:2], b"\x1c"], "VXS-3.1-1"),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
async def test_talker_with_a_bad_upload(kind: str) -> None:
    body, requirement = BAD_UPLOADS[kind]
    async with running_peer() as peer:
        try:
            async with raw_upload(peer.url, "normal-upload") as up:
                await up.send(_open_bytes())
                assert isinstance(await up.frame(), Opened)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(up.frames)
                    await up.send(*body)
                    await up.stream.end()
        except* ClientError:
            pass  # the peer resets the stream once its verdict is in
        await failed(peer, "normal-upload", requirement)


@pytest.mark.parametrize(
    ("body", "requirement"),
    [
        pytest.param([_GOOD[0]], "VXS-5.1-1", id="no-open"),
        pytest.param([], "VXS-5.1-1", id="empty"),
    ],
)
async def test_talker_without_open(body: list[Frame | bytes], requirement: str) -> None:
    async with running_peer() as peer:
        with pytest.raises(ClientError):
            async with raw_upload(peer.url, "normal-upload") as up:
                await up.send(*body)
                await up.stream.end()
                await up.frames()
        await failed(peer, "normal-upload", requirement)


async def test_open_without_created() -> None:
    opening = cbor2.loads(_open_bytes())
    del opening["created"]
    async with running_peer() as peer:
        with pytest.raises(ClientError):
            async with raw_upload(peer.url, "normal-upload") as up:
                await up.send(cbor2.dumps(opening))
                await up.frames()
        await failed(peer, "normal-upload", "VXS-4.1-1")


async def _raw_listen(url: str, token: str, path: str) -> bytes:
    async with await H2Connection.connect(url) as conn:
        stream = await conn.request(
            "GET", path, [("authorization", f"Bearer {token}")], end_stream=True
        )
        await stream.response_status()
        return await stream.read_all()


async def test_listener_that_accepts_a_doubled_chunk() -> None:
    async with running_peer() as peer:
        body = await _raw_listen(peer.url, "listen-duplicate", "/v1/messages/m1/listen")
        assert len(body) > 100  # it read the whole stream, end included
        await failed(peer, "listen-duplicate", "VXS-6.2-6")


@pytest.mark.parametrize(
    ("query", "requirement"),
    [
        ("from_seq=1&live_edge=1", "VXS-6.1-2"),
        ("speed=20", "VXS-6.4-2"),
        ("from_seq=one", "VXS-10-6"),
    ],
)
async def test_listener_with_a_bad_request(query: str, requirement: str) -> None:
    async with running_peer() as peer:
        with pytest.raises(ClientError):
            await _raw_listen(peer.url, "listen-normal", f"/v1/messages/m1/listen?{query}")
        await failed(peer, "listen-normal", requirement)


# -- the command line ----------------------------------------------------------------


async def test_cli_peer_writes_a_report(tmp_path: Path) -> None:
    """``python -m conformance peer --port 0 --json``, one scenario, SIGTERM, the report."""
    report = tmp_path / "peer.json"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "conformance", "peer", "--port", "0", "--json", str(report)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"},
    )
    assert process.stdout is not None
    output = bytearray()

    async def line() -> str:
        assert process.stdout is not None
        while b"\n" not in output:
            data = await process.stdout.receive_some()
            assert data, "the peer's output ended"
            output.extend(data)
        end = output.index(b"\n") + 1
        text = output[:end].decode()
        del output[:end]
        return text

    try:
        with trio.fail_after(20):
            first = await line()
            match = re.fullmatch(r"peer listening on (http://127\.0\.0\.1:\d+)\n", first)
            assert match, first
            closed = await talk(match.group(1), "normal-upload", new_open("cli"), message())
            assert closed.chunks == CHUNKS
            while "client-normal-upload" not in (text := await line()):
                pass
            assert "pass" in text
            process.send_signal(signal.SIGTERM)
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
    assert code == 0
    data = json.loads(report.read_text(encoding="utf-8"))
    verdicts = {r["id"]: r["verdict"] for r in data["results"]}
    assert verdicts.pop("5.1/client-normal-upload") == "pass"
    assert set(verdicts.values()) == {"skip"}
    assert len(verdicts) == len(NAMES) - 1
    assert data["summary"]["pass"] == 1
    assert all(r["role"] == "client" for r in data["results"])
