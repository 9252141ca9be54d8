"""Section 10: the HTTP/2 binding of uploads and listens.

The cases keep request bodies open wherever the spec says the server answers without
waiting for them (the response starts before the body ends, an error ends the response,
``closed`` ends it), so a server that buffers a body, or waits for its end, runs into the
case's time limit instead of passing. VXS-10-8 is a client requirement.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from voxer_stream.client.h2conn import H2Connection, H2ConnectionError
from voxer_stream.wire import (
    Ack,
    Chunk,
    Close,
    Closed,
    End,
    Frame,
    Live,
    MessageInfo,
    Opened,
)

from ..case import CaseFailed, case, expect, note, skip
from ..context import Context
from ..net import Exchange, Reply, TransportFailure, listen_path, open_exchange
from .errors import expect_error, expect_refusal

CBOR_SEQ = "application/cbor-seq"
#: The client connection preface of RFC 9113 section 3.4, then an empty SETTINGS frame.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def kinds(frames: list[Frame]) -> list[str]:
    return [type(f).__name__ for f in frames]


def chunks_of(frames: list[Frame]) -> list[Chunk]:
    return [f for f in frames if isinstance(f, Chunk)]


def expect_listen(reply: Reply, sent: list[Chunk], requirement: str, what: str) -> None:
    """200, cbor-seq, ``message``, exactly ``sent`` (byte for byte), ``end``."""
    shown = kinds(reply.frames)
    expect(reply.status == 200, requirement, f"{what}: HTTP {reply.status} {reply.frames[-1:]}")
    expect(
        media_type(reply.headers) == CBOR_SEQ,
        requirement,
        f"{what}: content-type {reply.content_type!r}, expected {CBOR_SEQ}",
    )
    expect(
        len(reply.frames) >= 2
        and isinstance(reply.frames[0], MessageInfo)
        and isinstance(reply.frames[-1], End)
        and all(isinstance(f, Chunk) for f in reply.frames[1:-1]),
        requirement,
        f"{what}: frames {shown}, expected message, chunk*, end",
    )
    got = chunks_of(reply.frames)
    expect(
        got == sent,
        requirement,
        f"{what}: chunks {[c.seq for c in got]}, expected {[c.seq for c in sent]} byte for byte",
    )


async def lockstep(ex: Exchange, frame: Frame, expected: type[Frame], what: str) -> Frame:
    """Send one frame (the body stays open) and read the one frame it must bring."""
    await ex.send(frame)
    got = await ex.frame()
    expect(
        isinstance(got, expected),
        "VXS-10-3",
        f"{what}: got {got!r} while the body was open, expected {expected.TYPE}",
    )
    assert got is not None
    return got


@case(
    "10/h2c-prior-knowledge",
    "the server offers HTTP/2 over cleartext TCP with prior knowledge",
    requirements=("VXS-10-1",),
    accepts="after the client preface the server's first frame is SETTINGS on stream 0; on one "
    "h2c connection GET /v1/health answers 200 and an upload answers opened and closed",
)
async def h2c_prior_knowledge(ctx: Context) -> None:
    host, port = ctx.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with trio.fail_after(ctx.timeout):
        stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        async with stream:
            await stream.send_all(PREFACE)
            head = b""
            while len(head) < 9:
                data = await stream.receive_some(9 - len(head))
                expect(data, "VXS-10-1", f"the server closed after the preface ({head!r})")
                head += data
    kind, stream_id = head[3], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
    expect(
        kind == 4 and stream_id == 0,
        "VXS-10-1",
        f"the first frame after the h2c preface has type {kind} on stream {stream_id}, "
        "expected SETTINGS (4) on stream 0",
    )
    thread = await ctx.thread()
    msg = ctx.msg_id()
    try:
        conn = await H2Connection.connect(ctx.url)
    except H2ConnectionError as exc:
        raise TransportFailure(str(exc)) from None
    async with conn:
        async with open_exchange(ctx.url, "GET", "/v1/health", end_stream=True, conn=conn) as ex:
            status = await ex.status()
            expect(status == 200, "VXS-10-1", f"GET /v1/health over h2c: {status}")
        async with open_exchange(
            ctx.url, "POST", "/v1/upload", token=ctx.alice.token, conn=conn
        ) as ex:
            await ex.send(ctx.open_frame(thread, msg), ctx.chunk(0), Close(chunks=1))
            reply = await ex.reply()
    expect(
        reply.status == 200 and kinds(reply.frames[:1] + reply.frames[-1:]) == ["Opened", "Closed"],
        "VXS-10-1",
        f"an upload over h2c: {reply.status} {reply.frames}",
    )


async def h2_json(conn: H2Connection, url: str, path: str, body: object, token: str = "") -> Any:
    """A REST call on ``conn``; the parsed JSON answer (accounts on a TLS-only server)."""
    headers = [("content-type", "application/json")]
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    async with open_exchange(url, "POST", path, headers=headers, conn=conn) as ex:
        await ex.stream.send(json.dumps(body).encode())
        await ex.stream.end()
        status = await ex.status()
        content = await ex.stream.read_all()
    if status != 201:
        raise TransportFailure(f"POST {path} over TLS: {status} {content[:200]!r}")
    return json.loads(content)


@case(
    "10/tls-alpn-h2",
    "the server offers HTTP/2 over TLS with ALPN h2",
    requirements=("VXS-10-1",),
    group="tls",
    accepts="the TLS handshake with --tls-server (verified with --cacert) selects ALPN 'h2'; "
    "over that one connection two accounts register, log in and make a thread, and an "
    "upload and a listen of it work",
)
async def tls_alpn_h2(ctx: Context) -> None:
    if not ctx.tls_url:
        skip("no --tls-server given")
    url = ctx.tls_url
    assert url is not None
    msg = ctx.msg_id()
    sent = [ctx.chunk(0), ctx.chunk(1)]
    try:
        conn = await H2Connection.connect(url, ssl_context=ctx.ssl_context())
    except H2ConnectionError as exc:  # includes "did not negotiate HTTP/2 (ALPN h2)"
        raise TransportFailure(str(exc)) from None
    async with conn:
        # Accounts of its own: --tls-server may be another process with its own storage.
        tokens = []
        for role in ("talker", "listener"):
            account = {"username": f"{ctx.prefix}-tls-{role}", "password": "tls-" + ctx.prefix}
            await h2_json(conn, url, "/v1/accounts", account)
            tokens.append((await h2_json(conn, url, "/v1/sessions", account))["token"])
        thread = await h2_json(
            conn,
            url,
            "/v1/threads",
            {"title": "tls", "participants": [f"{ctx.prefix}-tls-listener"]},
            tokens[0],
        )
        async with open_exchange(url, "POST", "/v1/upload", token=tokens[0], conn=conn) as ex:
            await ex.send(ctx.open_frame(thread["id"], msg), *sent, Close(chunks=2))
            upload = await ex.reply()
        async with open_exchange(
            url, "GET", listen_path(msg), token=tokens[1], end_stream=True, conn=conn
        ) as ex:
            listened = await ex.reply()
    expect(
        upload.status == 200 and upload.frames and isinstance(upload.frames[-1], Closed),
        "VXS-10-1",
        f"an upload over TLS: {upload.status} {upload.frames}",
    )
    expect_listen(listened, sent, "VXS-10-1", "a listen over TLS")


@case(
    "10/body-label",
    "the server reads an upload body as a CBOR sequence whatever its Content-Type",
    requirements=("VXS-10-2",),
    accepts="with Content-Type application/octet-stream, application/x-www-form-urlencoded "
    "(curl --data-binary) or none: 200, opened, acks, closed with 2 chunks; a listen then "
    "returns both chunks byte for byte",
)
async def body_label(ctx: Context) -> None:
    thread = await ctx.thread()
    labels: list[tuple[tuple[str, str], ...]] = [
        (("content-type", "application/octet-stream"),),
        (("content-type", "application/x-www-form-urlencoded"),),
        (),
    ]
    for headers in labels:
        label = headers[0][1] if headers else "no Content-Type"
        msg = ctx.msg_id()
        sent = [ctx.chunk(0, salt=b"a"), ctx.chunk(1, salt=b"b")]
        async with ctx.upload(ctx.alice.token, headers=headers) as ex:
            await ex.send(ctx.open_frame(thread, msg), *sent, Close(chunks=2))
            await ex.end()
            reply = await ex.reply()
        got = kinds(reply.frames)
        closed = reply.frames[-1] if reply.frames else None
        expect(
            reply.status == 200
            and got[:1] == ["Opened"]
            and isinstance(closed, Closed)
            and closed.chunks == 2,
            "VXS-10-2",
            f"an upload labelled {label}: HTTP {reply.status} {got} {reply.frames[-1:]}",
        )
        expect_listen(await ctx.listen_all(ctx.bob.token, msg), sent, "VXS-10-2", label)


@case(
    "10/full-duplex",
    "the upload response starts before the request body ends",
    requirements=("VXS-10-3",),
    accepts="with the request body open throughout: HTTP 200 and Content-Type "
    "application/cbor-seq, then opened after open, ack 0 after chunk 0, ack 1 after chunk 1, "
    "closed after close, then the end of the response",
)
async def full_duplex(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    async with ctx.upload(ctx.alice.token) as ex:
        await lockstep(ex, ctx.open_frame(thread, msg), Opened, "open")
        status = await ex.status()
        expect(status == 200, "VXS-10-3", f"HTTP {status}, expected 200")
        expect(
            media_type(ex.headers) == CBOR_SEQ,
            "VXS-10-3",
            f"content-type {ex.headers.get('content-type')!r}, expected {CBOR_SEQ}",
        )
        for seq in (0, 1):
            ack = await lockstep(ex, ctx.chunk(seq), Ack, f"chunk {seq}")
            assert isinstance(ack, Ack)
            expect(ack.seq == seq, "VXS-10-3", f"ack {ack.seq} after chunk {seq}")
        closed = await lockstep(ex, Close(chunks=2), Closed, "close")
        expect(
            await ex.frame() is None,
            "VXS-10-3",
            f"the response went on after {closed!r}",
        )


@case(
    "10/error-before-response",
    "an error before the response is the registry's status and exactly one error frame",
    requirements=("VXS-10-4",),
    accepts="with the request body still open: an open by bob in a thread where his role is "
    "listen is HTTP 403, carol's open in alice's thread (she is no participant) and an open "
    "in an unknown thread 404, a first frame that is a chunk 400, a listen with from_seq=x "
    "400; each Content-Type application/cbor-seq and a body of exactly one error frame "
    "(FORBIDDEN, THREAD_NOT_FOUND twice, UNEXPECTED_FRAME, INVALID_LISTEN)",
)
async def error_before_response(ctx: Context) -> None:
    thread = await ctx.thread()
    listening = await ctx.listen_only_thread()
    msg = await ctx.talk(thread, 1)
    attempts: list[tuple[str, str, Frame]] = [
        ("FORBIDDEN", ctx.bob.token, ctx.open_frame(listening, ctx.msg_id())),
        ("THREAD_NOT_FOUND", ctx.carol.token, ctx.open_frame(thread, ctx.msg_id())),
        ("THREAD_NOT_FOUND", ctx.alice.token, ctx.open_frame(ctx.msg_id(), ctx.msg_id())),
        ("UNEXPECTED_FRAME", ctx.alice.token, ctx.chunk(0)),
    ]
    for name, token, first in attempts:
        async with ctx.upload(token) as ex:
            await ex.send(first)
            reply = await ex.reply()  # the body is never ended
        expect_refusal(reply, name, "VXS-10-4", f"an upload whose first frame is {first!r}")
    reply = await ctx.listen_all(ctx.alice.token, msg, from_seq="x")
    expect_refusal(reply, "INVALID_LISTEN", "VXS-10-4", "a listen with from_seq=x")


@case(
    "10/error-after-response",
    "an error after the response started is an error frame followed by END_STREAM",
    requirements=("VXS-10-4", "VXS-10-7"),
    accepts="with the request body still open: HTTP 200, opened, at most an ack 0, an error "
    "frame 400 SEQUENCE_GAP with seq 2, then END_STREAM with nothing after the error",
)
async def error_after_response(ctx: Context) -> None:
    thread = await ctx.thread()
    async with ctx.upload(ctx.alice.token) as ex:
        await ex.send(ctx.open_frame(thread, ctx.msg_id()), ctx.chunk(0), ctx.chunk(2))
        reply = await ex.reply()  # read to END_STREAM; the body is never ended
    expect(reply.status == 200, "VXS-10-4", f"HTTP {reply.status}, expected 200")
    got = kinds(reply.frames)
    acks = [f.seq for f in reply.frames if isinstance(f, Ack)]
    expect(
        got in (["Opened", "Error"], ["Opened", "Ack", "Error"]) and acks in ([], [0]),
        "VXS-10-4",
        f"frames {got} (acks {acks}), expected opened, ack 0 (optional), error, END_STREAM",
    )
    error = expect_error(reply.frames[-1], "SEQUENCE_GAP", "VXS-10-4", "chunk 2 after chunk 0")
    expect(error.seq == 2, "VXS-10-4", f"error.seq {error.seq}, expected 2")


@case(
    "10/other-streams",
    "after answering a stream early the server keeps serving the connection's other streams",
    requirements=("VXS-10-5",),
    accepts="on one connection: stream A gets SEQUENCE_GAP while its body is open (later body "
    "bytes may be refused with RST_STREAM NO_ERROR); stream B, opened before, then finishes its "
    "upload (ack 1, closed), and stream C, opened after, listens to B's message; no GOAWAY",
)
async def other_streams(ctx: Context) -> None:
    thread = await ctx.thread()
    first, second = ctx.msg_id(), ctx.msg_id()
    try:
        conn = await H2Connection.connect(ctx.url)
    except H2ConnectionError as exc:
        raise TransportFailure(str(exc)) from None
    async with conn:
        upload = ("POST", "/v1/upload")
        async with (
            open_exchange(ctx.url, *upload, token=ctx.alice.token, conn=conn) as a,
            open_exchange(ctx.url, *upload, token=ctx.alice.token, conn=conn) as b,
        ):
            await b.send(ctx.open_frame(thread, second), ctx.chunk(0))
            await ctx.wait_acked(b, 0)
            await a.send(ctx.open_frame(thread, first), ctx.chunk(0), ctx.chunk(2))
            got = await a.frames()
            expect_error(got[-1] if got else None, "SEQUENCE_GAP", "VXS-10-5", "stream A")
            await a.send(ctx.chunk(3))  # the rest of A's body: read and dropped, or reset
            if a.reset_code not in (None, 0):
                note(f"stream A was reset with error code {a.reset_code} after its response")
            await b.send(ctx.chunk(1), Close(chunks=2))
            rest = await b.frames()
            expect(
                rest and isinstance(rest[-1], Closed) and rest[-1].chunks == 2,
                "VXS-10-5",
                f"stream B after stream A's error: {rest}",
            )
        async with open_exchange(
            ctx.url, "GET", listen_path(second), token=ctx.bob.token, end_stream=True, conn=conn
        ) as c:
            listened = await c.reply()
    expect_listen(listened, [ctx.chunk(0), ctx.chunk(1)], "VXS-10-5", "stream C")


@case(
    "10/listen-query",
    "a listen takes from_seq, from_ts, live_edge and speed as query parameters",
    requirements=("VXS-10-6",),
    accepts="on a closed message of 5 chunks of 20 ms: no parameter gives chunks 0-4; "
    "from_seq=2 and from_ts=2000 give chunks 2-4 (start_seq 2); live_edge=1 and "
    "live_edge=true give message and end only (start_seq 5); speed=1.5 and speed=16 give "
    "chunks 0-4; every response 200, application/cbor-seq, message, chunk*, end",
)
async def listen_query(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 5)
    every = [ctx.chunk(seq) for seq in range(5)]
    queries: list[tuple[dict[str, str], list[Chunk]]] = [
        ({}, every),
        ({"from_seq": "2"}, every[2:]),
        ({"from_ts": "2000"}, every[2:]),
        ({"live_edge": "1"}, []),
        ({"live_edge": "true"}, []),
        ({"speed": "1.5"}, every),
        ({"speed": "16"}, every),
    ]
    for params, sent in queries:
        what = listen_path(msg, **params).split("/")[-1]
        reply = await ctx.listen_all(ctx.bob.token, msg, **params)
        expect_listen(reply, sent, "VXS-10-6", what)
        first = reply.frames[0]
        assert isinstance(first, MessageInfo)
        start = sent[0].seq if sent else 5
        expect(first.start_seq == start, "VXS-10-6", f"{what}: start_seq {first.start_seq}")


@case(
    "10/listen-query-invalid",
    "a listen query parameter that does not parse is INVALID_LISTEN",
    requirements=("VXS-10-6", "VXS-10-4"),
    accepts="HTTP 400, application/cbor-seq and one error frame 409 INVALID_LISTEN for from_seq "
    "'x', '-1', '1.5', '0_1' and '' (empty), from_ts 'x', speed 'fast', 'nan', 'inf' and "
    "'0x10', live_edge 'banana' (neither 1 nor true), speed 100 (out of range, as in the "
    "listen frame) and from_seq with from_ts (two offsets)",
)
async def listen_query_invalid(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 2)
    queries: list[dict[str, str]] = [
        {"from_seq": "x"},
        {"from_seq": "-1"},
        {"from_seq": "1.5"},
        {"from_seq": "0_1"},
        {"from_seq": ""},
        {"from_ts": "x"},
        {"speed": "fast"},
        {"speed": "nan"},
        {"speed": "inf"},
        {"speed": "0x10"},
        {"live_edge": "banana"},
        {"speed": "100"},
        {"from_seq": "1", "from_ts": "0"},
    ]
    # Every query is tried, so that one run names each value a server lets through.
    wrong: list[str] = []
    for params in queries:
        what = "?" + listen_path(msg, **params).split("?", 1)[1]
        reply = await ctx.listen_all(ctx.bob.token, msg, **params)
        try:
            expect_refusal(reply, "INVALID_LISTEN", "VXS-10-6", what)
        except CaseFailed as exc:
            wrong.append(exc.message)
    expect(not wrong, "VXS-10-6", f"{len(wrong)} of {len(queries)} wrong: " + " | ".join(wrong))


@case(
    "10/end-stream",
    "the server ends the response stream after closed, end or error",
    requirements=("VXS-10-7",),
    accepts="an upload whose body stays open ends with closed and END_STREAM; a listen of a "
    "closed message ends with end and END_STREAM; a listen of a live message ends with end "
    "and END_STREAM once the talker closes it",
)
async def end_stream(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    async with ctx.upload(ctx.alice.token) as ex:
        await ex.send(ctx.open_frame(thread, msg), ctx.chunk(0), Close(chunks=1))
        frames = await ex.frames()  # END_STREAM must come while the body is open
    expect(
        frames and isinstance(frames[-1], Closed),
        "VXS-10-7",
        f"upload frames {frames}, expected closed last",
    )
    reply = await ctx.listen_all(ctx.bob.token, msg)
    expect(
        kinds(reply.frames) == ["MessageInfo", "Chunk", "End"],
        "VXS-10-7",
        f"a listen of a closed message gave {kinds(reply.frames)}, expected message, chunk, end",
    )

    live = ctx.msg_id()
    async with ctx.upload(ctx.alice.token) as talker:
        await talker.send(ctx.open_frame(thread, live), ctx.chunk(0))
        await ctx.wait_acked(talker, 0)
        async with ctx.listen(ctx.bob.token, live) as listener:
            seen: list[Frame] = []
            while not any(isinstance(f, Live) for f in seen):
                frame = await listener.frame()
                expect(frame is not None, "VXS-10-7", f"the listen ended early: {seen}")
                assert frame is not None
                seen.append(frame)
            await talker.send(ctx.chunk(1), Close(chunks=2))
            rest = await listener.frames()
    expect(
        kinds(seen + rest) == ["MessageInfo", "Chunk", "Live", "Chunk", "End"],
        "VXS-10-7",
        f"a live listen gave {kinds(seen + rest)}, expected message, chunk, live, chunk, end",
    )
