"""Section 4: the fields of each frame, as the server reads them and as it writes them.

The talker-to-server frames (open, chunk, close, listen, auth) are checked for the fields
they must carry; the server's frames (ack, closed, message, live, end) for what their
fields must say about the message. The frame reader already validates every server frame
against the schema, so these cases check meaning: values, not shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import cbor2
import trio

from voxer_stream.wire import (
    Ack,
    Auth,
    Chunk,
    Close,
    Closed,
    End,
    Error,
    Frame,
    Listen,
    Live,
    MessageInfo,
    Open,
    Opened,
)

from ..case import case, expect
from ..context import Context
from ..net import Exchange, TransportFailure, as_bytes
from .encoding import (
    Problem,
    check_failures,
    cmap,
    error_name,
    invalid_vectors,
    item,
    open_bytes,
    refusal_problem,
    refused_first,
    refused_in_stream,
    rest_message,
    same_chunks,
    show,
    stored,
    stream_problem,
    tstr,
    vector_bytes,
)

#: Real Opus packets of several shapes (proto/README.md) and their durations in ticks.
CELT_20MS = bytes.fromhex("f8fffe")  # 960
HYBRID_20MS = bytes.fromhex("788f3a6c0b51e2")  # 960
SILK_20MS = bytes.fromhex("4803a1b2c3")  # 960
CODE1_40MS = bytes.fromhex("f9a1a2b3b4")  # 2 x 960
CODE3_60MS = bytes.fromhex("fb03aaaabbbbcccc")  # 3 x 960
LARGEST_FRAME = b"\xf8" + bytes(range(256)) * 4 + bytes(251)  # code 0, a 1275-byte frame


def varied_chunks() -> tuple[list[Chunk], int]:
    """Five chunks of different packet shapes and durations, with a gap; and the message's
    duration (the end of the last chunk, which is not the sum of the chunk durations)."""
    chunks = [
        Chunk(seq=0, ts=0, packets=(CELT_20MS,)),  # ends 960
        Chunk(seq=1, ts=960, packets=(HYBRID_20MS, SILK_20MS)),  # ends 2880
        Chunk(seq=2, ts=2880, packets=(CODE1_40MS,)),  # ends 4800
        Chunk(seq=3, ts=4800 + 4000, packets=(CODE3_60MS,)),  # a 4000-tick gap; ends 11680
        Chunk(seq=4, ts=11680, packets=(LARGEST_FRAME, CELT_20MS)),  # ends 13600
    ]
    return chunks, 13600


async def read_until(exchange: Exchange, *kinds: type[Frame]) -> list[Frame]:
    """Frames of a response up to and including the first of ``kinds`` (or its end)."""
    found: list[Frame] = []
    while (frame := await exchange.frame()) is not None:
        found.append(frame)
        if isinstance(frame, kinds):
            break
    return found


# -- 4.1 open ----------------------------------------------------------------------------


@case(
    "4.1/open-fields",
    "an open carries msg, thread, codec and created; none has a default",
    requirements=("VXS-4.1-1", "VXS-10-4"),
    accepts="an open without msg, without thread, without codec or without created (and the "
    "open-missing-codec vector) is answered 400 with exactly one error 102 INVALID_FRAME; "
    "the same open with all four fields is opened",
)
async def open_fields(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-4.1-1"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 102, "VXS-4.1-1", failures
        )
    for missing in ("msg", "thread", "codec", "created"):
        fields_ = cbor2.loads(open_bytes(thread, ctx.msg_id()))
        del fields_[missing]
        await refused_first(
            ctx, f"an open without {missing}", cbor2.dumps(fields_), 102, "VXS-4.1-1", failures
        )
    check_failures(failures)
    msg = ctx.msg_id()
    reply = await ctx.upload_all(ctx.alice.token, [open_bytes(thread, msg), Close(chunks=0)])
    expect(
        reply.frames and isinstance(reply.frames[0], Opened),
        "VXS-4.1-1",
        f"the complete open was refused: {show(reply.frames)}",
    )


# -- 4.2 chunk ---------------------------------------------------------------------------


@case(
    "4.2/chunk-fields",
    "a chunk carries seq, ts and packets, and the server forwards the packets byte for byte",
    requirements=("VXS-4.2-1",),
    accepts="after a valid open, a chunk without seq, ts or packets ends the 200 response "
    "with error 102 and stores nothing; five chunks of CELT, Hybrid, SILK, code 1, code 3 "
    "and 1275-byte-frame packets reach a live listener and a later listener with the same "
    "seq, ts and packets, byte for byte",
)
async def chunk_fields(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    whole = {"seq": 0, "ts": 0, "packets": [CELT_20MS]}
    for missing in ("seq", "ts", "packets"):
        fields_ = {k: v for k, v in whole.items() if k != missing}
        msg = await refused_in_stream(
            ctx,
            f"a chunk without {missing}",
            thread,
            item("chunk", **fields_),
            102,
            "VXS-4.2-1",
            failures,
        )
        chunks = (await rest_message(ctx, msg)).get("chunks")
        if chunks != 0:
            failures.append(Problem("VXS-4.2-1", f"a chunk without {missing} was stored"))
    check_failures(failures)

    sent, _ = varied_chunks()
    msg = ctx.msg_id()
    async with ctx.upload(ctx.alice.token) as upload:
        await upload.send(ctx.open_frame(thread, msg))
        await ctx.wait_acked(upload, -1)
        async with ctx.listen(ctx.bob.token, msg) as live:
            await read_until(live, MessageInfo)  # the listen is attached
            await upload.send(*sent, Close(chunks=len(sent)))
            upload_frames = await upload.frames()
            live_frames = await live.frames()
    expect(
        upload_frames and isinstance(upload_frames[-1], Closed),
        "VXS-4.2-1",
        f"the upload was not accepted: {show(upload_frames)}",
    )
    live_chunks = [f for f in live_frames if isinstance(f, Chunk)]
    expect(
        same_chunks(live_chunks, sent),
        "VXS-4.2-1",
        f"the live listener got {show(live_chunks)}, not the chunks sent byte for byte",
    )
    later = (await stored(ctx, msg, token=ctx.bob.token)).chunks
    expect(
        same_chunks(later, sent),
        "VXS-4.2-1",
        f"a later listener got {show(later)}, not the chunks sent byte for byte",
    )


@case(
    "4.2/packet-bytes-not-checked-by-the-codec",
    "a chunk is not rejected at the frame level because of its packet bytes",
    requirements=("VXS-4.2-3", "VXS-5.3-5"),
    accepts="after chunk 0 is acknowledged, a chunk 1 whose packet is not Opus (f9000000, "
    "0xf7 alone, 0xff alone) ends the upload with INVALID_OPUS (404) and error.seq 1, not "
    "a decoding error; chunk 0 (f8fffe, bytes that look like CBOR) stays stored",
)
async def packet_bytes_not_checked(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for packet in (bytes.fromhex("f9000000"), b"\xf7", b"\xff"):
        msg = ctx.msg_id()
        async with ctx.upload(ctx.alice.token) as upload:
            await upload.send(ctx.open_frame(thread, msg), Chunk(seq=0, ts=0, packets=(CELT_20MS,)))
            await ctx.wait_acked(upload, 0)
            await upload.send(Chunk(seq=1, ts=960, packets=(packet,)))
            frames = await upload.frames()
        error = frames[-1] if frames else None
        if not isinstance(error, Error) or error.code != 404 or error.seq != 1:
            failures.append(
                Problem(
                    "VXS-4.2-3",
                    f"packet {packet.hex()}: {show(frames)}, expected error 404 INVALID_OPUS seq=1",
                )
            )
            continue
        got = (await stored(ctx, msg)).chunks
        if [c.packets for c in got] != [(CELT_20MS,)]:
            failures.append(Problem("VXS-5.3-5", f"packet {packet.hex()}: stored {show(got)}"))
    check_failures(failures)


@case(
    "4.2/packet-count",
    "a chunk carries 1 to 50 packets, each a non-empty byte string",
    requirements=("VXS-4.2-4", "VXS-10-4"),
    accepts="each vector of VXS-4.2-4 (no packet, an empty packet, a text packet, packets not "
    "an array, 51 packets) is answered 400 with one error 102 as the upload body, and ends "
    "the 200 response with error 102 after a valid open; the 50-packet vector after open "
    "is acknowledged and closes with 48000 ticks, its 50 packets stored",
)
async def packet_count(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-4.2-4"):
        data = vector_bytes(vector["id"])
        label = f"vector {vector['id']}"
        await refused_first(ctx, label, data, 102, "VXS-4.2-4", failures)
        await refused_in_stream(
            ctx, f"{label} after open", thread, data, 102, "VXS-4.2-4", failures
        )
    check_failures(failures)
    msg = ctx.msg_id()
    reply = await ctx.upload_all(
        ctx.alice.token, [ctx.open_frame(thread, msg), vector_bytes("packets-50"), Close(chunks=1)]
    )
    last = reply.frames[-1] if reply.frames else None
    expect(
        isinstance(last, Closed) and (last.chunks, last.duration) == (1, 48000),
        "VXS-4.2-4",
        f"a chunk of 50 packets: {show(reply.frames)}, expected closed with 1 chunk, 48000 ticks",
    )
    got = (await stored(ctx, msg)).chunks
    expect(
        len(got) == 1 and got[0].packets == (CELT_20MS,) * 50,
        "VXS-4.2-4",
        f"stored {show(got)}, expected the 50 packets",
    )


# -- 4.3 close ---------------------------------------------------------------------------


@case(
    "4.3/close-count",
    "close.chunks is the number of chunks; any other count is CLOSE_MISMATCH",
    requirements=("VXS-4.3-1", "VXS-5.5-2"),
    accepts="for a live message of 3 chunks, close 2 and close 4 each end the upload with "
    "CLOSE_MISMATCH (407) and leave it live with 3 chunks, close 3 is answered closed with "
    "3 chunks; for a message without chunks close 1 is CLOSE_MISMATCH and close 0 is "
    "answered closed with 0 chunks and duration 0",
)
async def close_count(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for count in (3, 0):
        msg = await ctx.talk(thread, count, close=False) if count else ctx.msg_id()
        opening = ctx.open_frame(thread, msg)
        for wrong in (count - 1, count + 1):
            if wrong < 0:
                continue
            reply = await ctx.upload_all(ctx.alice.token, [opening, Close(chunks=wrong)])
            problem = stream_problem(reply, 407)
            if problem is not None:
                failures.append(Problem("VXS-5.5-2", f"close {wrong} of {count} chunks: {problem}"))
            body = await rest_message(ctx, msg)
            if (body.get("state"), body.get("chunks")) != ("live", count):
                failures.append(
                    Problem("VXS-5.5-2", f"after close {wrong} of {count} chunks: {body}")
                )
        reply = await ctx.upload_all(ctx.alice.token, [opening, Close(chunks=count)])
        last = reply.frames[-1] if reply.frames else None
        if not isinstance(last, Closed) or last.chunks != count or (count == 0 and last.duration):
            failures.append(
                Problem("VXS-4.3-1", f"close {count} of {count} chunks: {show(reply.frames)}")
            )
    check_failures(failures)


# -- 4.5 ack -----------------------------------------------------------------------------


@case(
    "4.5/ack-is-cumulative",
    "an ack with seq n means chunks 0 to n are all durably stored",
    requirements=("VXS-4.5-1",),
    accepts="while 8 chunks are uploaded without waiting, every ack n names a chunk sent and "
    "is followed by GET /v1/messages/{id} showing at least n+1 stored chunks; after the "
    "talker leaves, a new open gives next_seq >= last ack + 1 and a listen returns chunks "
    "0..n byte for byte",
)
async def ack_cumulative(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    sent = [ctx.chunk(seq, salt=b"ack", packets=2) for seq in range(8)]
    last_ack = -1
    async with ctx.upload(ctx.alice.token) as upload:
        await upload.send(ctx.open_frame(thread, msg), *sent)
        await upload.end()
        while (frame := await upload.frame()) is not None:
            if isinstance(frame, Error):
                raise TransportFailure(f"the upload was refused: {show([frame])}")
            if not isinstance(frame, Ack):
                continue
            expect(0 <= frame.seq < len(sent), "VXS-4.5-1", f"ack {frame.seq} of chunks 0..7")
            chunks = (await rest_message(ctx, msg)).get("chunks")
            expect(
                isinstance(chunks, int) and chunks >= frame.seq + 1,
                "VXS-4.5-1",
                f"after ack {frame.seq} the server reports {chunks} stored chunks",
            )
            last_ack = max(last_ack, frame.seq)
    expect(last_ack >= 0, "VXS-4.5-1", "no ack at all for 8 chunks")
    reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, msg)])
    first = reply.frames[0] if reply.frames else None
    expect(
        isinstance(first, Opened) and first.next_seq >= last_ack + 1,
        "VXS-4.5-1",
        f"after ack {last_ack} a new open answered {show(reply.frames[:1])}",
    )
    got = (await stored(ctx, msg)).chunks
    expect(
        same_chunks(got[: last_ack + 1], sent[: last_ack + 1]),
        "VXS-4.5-1",
        f"after ack {last_ack} a listen returned {show(got)}",
    )


# -- 4.6 closed --------------------------------------------------------------------------


@case(
    "4.6/closed-fields",
    "closed carries the message's final chunks and duration (the end of its last chunk)",
    requirements=("VXS-4.6-1",),
    accepts="for five chunks of 20 to 60 ms with a 4000-tick gap, closed says msg, chunks 5 "
    "and duration 13600 (last ts + last duration, not the sum of durations), as GET "
    "/v1/messages/{id} does; a repeated close gets the same closed; a message without "
    "chunks closes with chunks 0 and duration 0",
)
async def closed_fields(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    sent, duration = varied_chunks()
    opening = ctx.open_frame(thread, msg)
    wanted = Closed(msg=msg, chunks=len(sent), duration=duration)
    reply = await ctx.upload_all(ctx.alice.token, [opening, *sent, Close(chunks=len(sent))])
    last = reply.frames[-1] if reply.frames else None
    expect(last == wanted, "VXS-4.6-1", f"got {show(reply.frames[-1:])}, expected {show([wanted])}")
    body = await rest_message(ctx, msg)
    expect(
        (body.get("chunks"), body.get("duration")) == (len(sent), duration),
        "VXS-4.6-1",
        f"GET /v1/messages/{msg} says {body}, expected {len(sent)} chunks, {duration} ticks",
    )
    reply = await ctx.upload_all(ctx.alice.token, [opening, Close(chunks=len(sent))])
    last = reply.frames[-1] if reply.frames else None
    expect(last == wanted, "VXS-4.6-1", f"a repeated close got {show(reply.frames)}")
    empty = ctx.msg_id()
    reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, empty), Close(chunks=0)])
    last = reply.frames[-1] if reply.frames else None
    expect(
        last == Closed(msg=empty, chunks=0, duration=0),
        "VXS-4.6-1",
        f"an empty message closed with {show(reply.frames[-1:])}",
    )


# -- 4.7 listen --------------------------------------------------------------------------


def listen_item(msg: str, **fields_: object) -> bytes:
    return item("listen", msg=msg, **fields_)


def with_raw_speed(msg: str, speed: bytes) -> bytes:
    """A listen whose speed is the given encoded number (half, single, double or integer)."""
    return cmap((tstr("type"), tstr("listen")), (tstr("msg"), tstr(msg)), (tstr("speed"), speed))


@case(
    "4.7/listen-frame",
    "a listen frame carries msg; defaults and numeric forms are equivalent; speed is finite",
    requirements=("VXS-4.7-1",),
    accepts="over WebSocket, for a closed message of 3 chunks: live_edge false, speed 0, and "
    "speed 16 as an integer or a half, single or double float all give exactly the frames "
    "of a plain listen; integer speed 17 gets INVALID_LISTEN (409) like 17.0; NaN, "
    "infinities, a listen without msg and the vectors of VXS-4.7-1 get INVALID_FRAME (102)",
    group="websocket",
)
async def listen_frame(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 3)

    async def over_ws(data: bytes) -> list[Frame]:
        async with ctx.websocket(header_token=ctx.bob.token) as ws:
            await ws.send(data)
            return (await ws.frames()).frames

    baseline = await over_ws(listen_item(msg))
    expect(
        len(baseline) == 5
        and isinstance(baseline[0], MessageInfo)
        and isinstance(baseline[-1], End),
        "VXS-4.7-1",
        f"a plain listen frame got {show(baseline)}",
    )
    same = {
        "live_edge false": listen_item(msg, live_edge=False),
        "speed 0 (integer)": listen_item(msg, speed=0),
        "speed 0.0": with_raw_speed(msg, bytes.fromhex("f90000")),
        "speed 16 (integer)": with_raw_speed(msg, bytes.fromhex("10")),
        "speed 16.0 (half)": with_raw_speed(msg, bytes.fromhex("f94c00")),
        "speed 16.0 (single)": with_raw_speed(msg, bytes.fromhex("fa41800000")),
        "speed 16.0 (double)": with_raw_speed(msg, bytes.fromhex("fb4030000000000000")),
    }
    failures: list[Problem] = []
    for label, data in same.items():
        got = await over_ws(data)
        if got != baseline:
            failures.append(Problem("VXS-4.7-1", f"{label}: {show(got)}, not {show(baseline)}"))
    refused: dict[str, tuple[bytes, int]] = {
        "speed 17 (integer)": (with_raw_speed(msg, bytes.fromhex("1811")), 409),
        "speed NaN (half)": (with_raw_speed(msg, bytes.fromhex("f97e00")), 102),
        "speed NaN (double)": (with_raw_speed(msg, bytes.fromhex("fb7ff8000000000000")), 102),
        "speed +Infinity": (with_raw_speed(msg, bytes.fromhex("f97c00")), 102),
        "speed -Infinity": (with_raw_speed(msg, bytes.fromhex("f9fc00")), 102),
        "a listen without msg": (item("listen", from_seq=0), 102),
    }
    for vector in invalid_vectors("VXS-4.7-1"):
        refused[f"vector {vector['id']}"] = (vector_bytes(vector["id"]), 102)
    for label, (data, code) in refused.items():
        got = await over_ws(data)
        error = got[-1] if got else None
        if len(got) != 1 or not isinstance(error, Error) or error.code != code:
            failures.append(
                Problem("VXS-4.7-1", f"{label}: {show(got)}, expected error {error_name(code)}")
            )
    check_failures(failures)


# -- 4.8 message, 4.9 live, 4.10 end -----------------------------------------------------


@case(
    "4.8/message-frame",
    "the message frame describes the message as stored when the listen started",
    requirements=("VXS-4.8-1",),
    accepts="for a closed message of 3 chunks the message frame gives msg, thread, sender "
    "(alice's account id), codec opus, the open's created, state closed, and start_seq 0, "
    "2, 3 and 1 for no offset, from_seq 2, from_seq 3 (then only end) and from_ts 961, the "
    "first chunk sent being start_seq; for a live message state live, also when it is "
    "closed during the listen, and start_seq 2 with live_edge after 2 chunks",
)
async def message_frame(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    created = 1_711_111_111_111
    opening = Open(msg=msg, thread=thread, codec="opus", created=created)
    await ctx.upload_all(
        ctx.alice.token, [opening, *(ctx.chunk(s) for s in range(3)), Close(chunks=3)]
    )
    base = MessageInfo(
        msg=msg,
        thread=thread,
        sender=ctx.alice.id,
        codec="opus",
        created=created,
        state="closed",
        start_seq=0,
    )
    for query, start in (
        ({}, 0),
        ({"from_seq": 2}, 2),
        ({"from_seq": 3}, 3),
        ({"from_ts": 961}, 1),
    ):
        reply = await ctx.listen_all(ctx.bob.token, msg, **query)
        first = reply.frames[0] if reply.frames else None
        wanted = replace(base, start_seq=start)
        expect(
            first == wanted,
            "VXS-4.8-1",
            f"listen {query}: {show(reply.frames[:1])}, expected {show([wanted])}",
        )
        chunks = [f for f in reply.frames if isinstance(f, Chunk)]
        expect(
            [c.seq for c in chunks] == list(range(start, 3)) and isinstance(reply.frames[-1], End),
            "VXS-4.8-1",
            f"listen {query}: {show(reply.frames)}, expected chunks {start}..2 then end",
        )

    live_msg = ctx.msg_id()
    async with ctx.upload(ctx.alice.token) as upload:
        await upload.send(ctx.open_frame(thread, live_msg), ctx.chunk(0), ctx.chunk(1))
        await ctx.wait_acked(upload, 1)
        async with (
            ctx.listen(ctx.bob.token, live_msg) as whole,
            ctx.listen(ctx.bob.token, live_msg, live_edge="true") as edge,
        ):
            first = await whole.frame()
            edge_first = await edge.frame()
            await upload.send(ctx.chunk(2), Close(chunks=3))
            await upload.frames()
            rest = await whole.frames()
            edge_rest = await edge.frames()
    expect(
        isinstance(first, MessageInfo) and first.state == "live" and first.start_seq == 0,
        "VXS-4.8-1",
        f"a live message, closed during the listen: {show([first] if first else [])}",
    )
    expect(
        [c.seq for c in rest if isinstance(c, Chunk)] == [0, 1, 2] and isinstance(rest[-1], End),
        "VXS-4.8-1",
        f"the listen of the live message went on with {show(rest)}",
    )
    expect(
        isinstance(edge_first, MessageInfo) and edge_first.start_seq == 2,
        "VXS-4.8-1",
        f"live_edge after 2 chunks: {show([edge_first] if edge_first else [])}, "
        "expected start_seq 2",
    )
    edge_chunks = [c.seq for c in edge_rest if isinstance(c, Chunk)]
    expect(
        edge_chunks == [2], "VXS-4.8-1", f"live_edge then got chunks {edge_chunks}, expected [2]"
    )


@case(
    "4.9/live-seq",
    "live.seq is the seq of the next chunk the listener receives",
    requirements=("VXS-4.9-1",),
    accepts="on a live message of 2 chunks, a listen from the start gets chunks 0 and 1 then "
    "live with seq 2, listens with from_seq 2 and with live_edge get live with seq 2; when "
    "the talker sends chunk 2, it is the next frame of each listener",
)
async def live_seq(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    queries: list[dict[str, Any]] = [{}, {"from_seq": 2}, {"live_edge": "true"}]
    async with ctx.upload(ctx.alice.token) as upload:
        await upload.send(ctx.open_frame(thread, msg), ctx.chunk(0), ctx.chunk(1))
        await ctx.wait_acked(upload, 1)
        async with (
            ctx.listen(ctx.bob.token, msg, **queries[0]) as a,
            ctx.listen(ctx.bob.token, msg, **queries[1]) as b,
            ctx.listen(ctx.bob.token, msg, **queries[2]) as c,
        ):
            listeners = (a, b, c)
            heads = [await read_until(ex, Live, End, Error) for ex in listeners]
            await upload.send(ctx.chunk(2))
            nexts = [await ex.frame() for ex in listeners]
            await upload.send(Close(chunks=3))
            await upload.frames()
    for query, head_, next_ in zip(queries, heads, nexts, strict=True):
        live = head_[-1] if head_ else None
        expect(
            isinstance(live, Live) and live.seq == 2,
            "VXS-4.9-1",
            f"listen {query} on 2 live chunks: {show(head_)}, expected live with seq 2",
        )
        expect(
            isinstance(next_, Chunk) and next_.seq == 2,
            "VXS-4.9-1",
            f"listen {query}: after live seq 2 the next frame is {show([next_] if next_ else [])}",
        )
    whole = [f.seq for f in heads[0] if isinstance(f, Chunk)]
    expect(whole == [0, 1], "VXS-4.9-1", f"the listen from the start got {show(heads[0])}")


@case(
    "4.10/end-fields",
    "end carries the closed message's chunk count and duration",
    requirements=("VXS-4.10-1",),
    accepts="for five chunks of 20 to 60 ms with a gap (13600 ticks), the end of a listener "
    "attached while the message was live, of a later listen, and of a listen from_seq 5 "
    "(message then end) all say chunks 5 and duration 13600, as closed did",
)
async def end_fields(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    sent, duration = varied_chunks()
    async with ctx.upload(ctx.alice.token) as upload:
        await upload.send(ctx.open_frame(thread, msg), *sent[:2])
        await ctx.wait_acked(upload, 1)
        async with ctx.listen(ctx.bob.token, msg) as live:
            await read_until(live, Live, End, Error)
            await upload.send(*sent[2:], Close(chunks=len(sent)))
            closed = await upload.frames()
            live_frames = await live.frames()
    wanted = End(chunks=len(sent), duration=duration)
    expect(
        closed and closed[-1] == Closed(msg=msg, chunks=len(sent), duration=duration),
        "VXS-4.10-1",
        f"the upload ended with {show(closed[-1:])}",
    )
    ends: dict[str, Sequence[Frame]] = {"a listener attached while live": live_frames}
    ends["a later listen"] = (await ctx.listen_all(ctx.bob.token, msg)).frames
    from_end = (await ctx.listen_all(ctx.bob.token, msg, from_seq=len(sent))).frames
    ends["a listen from_seq 5"] = from_end
    for label, frames in ends.items():
        expect(
            frames and frames[-1] == wanted,
            "VXS-4.10-1",
            f"{label} ended with {show(frames[-1:])}, expected {show([wanted])}",
        )
    expect(
        len(from_end) == 2 and isinstance(from_end[0], MessageInfo),
        "VXS-4.10-1",
        f"a listen from_seq 5 of 5 chunks got {show(from_end)}, expected message then end",
    )


# -- 4.12 auth ---------------------------------------------------------------------------


@case(
    "4.12/auth-in-upload-body",
    "auth is allowed only as the first WebSocket frame: in an upload body it is unexpected",
    requirements=("VXS-4.12-1",),
    accepts="an auth frame as the first item of an upload body is answered 400 with one error "
    "103 UNEXPECTED_FRAME; after a valid open it ends the 200 response with error 103",
)
async def auth_in_upload_body(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    auth = Auth(token=ctx.alice.token)
    reply = await ctx.upload_all(ctx.alice.token, [auth, ctx.open_frame(thread, ctx.msg_id())])
    problem = refusal_problem(reply, 103, "VXS-4.12-1")
    if problem is not None:
        failures.append(Problem("VXS-4.12-1", f"auth first in a body: {problem.message}"))
    await refused_in_stream(
        ctx, "auth after open", thread, as_bytes(auth), 103, "VXS-4.12-1", failures
    )
    check_failures(failures)


@case(
    "4.12/auth-after-first-websocket-frame",
    "an auth frame anywhere but first on a WebSocket is UNEXPECTED_FRAME",
    requirements=("VXS-4.12-1",),
    accepts="a second auth after an accepted auth, an auth after open (after opened) and an "
    "auth during a listen of a live message (after message) are each answered with error "
    "103 UNEXPECTED_FRAME, the last frame before the close",
    group="websocket",
)
async def auth_after_first(ctx: Context) -> None:
    thread = await ctx.thread()
    live_msg = await ctx.talk(thread, 1, close=False)
    auth = Auth(token=ctx.alice.token)
    scripts: dict[str, tuple[list[Frame], type[Frame] | None]] = {
        "a second auth": ([auth, auth], None),
        "auth after open": ([auth, ctx.open_frame(thread, ctx.msg_id()), auth], Opened),
        "auth during a listen": ([auth, Listen(msg=live_msg), auth], MessageInfo),
    }
    failures: list[Problem] = []
    for label, (frames, wait_for) in scripts.items():
        async with ctx.websocket() as ws:
            await ws.send(*frames[:-1])
            if wait_for is not None:
                with trio.fail_after(ctx.timeout):
                    while (got := await ws.frame()) is not None and not isinstance(got, wait_for):
                        pass
            await ws.send(frames[-1])
            rest = (await ws.frames()).frames
        error = rest[-1] if rest else None
        if not isinstance(error, Error) or error.code != 103:
            failures.append(
                Problem("VXS-4.12-1", f"{label}: then {show(rest)}, expected error 103")
            )
    check_failures(failures)
