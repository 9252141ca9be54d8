"""Sections 2 and 3: the data model (messages, chunks, identifiers) and the frame encoding.

The encoding cases send bytes no ordinary encoder produces: the malformed and invalid
items of ``proto/vectors/`` (each must get exactly the registry code the vector names),
non-deterministic but valid encodings built head by head (which must be accepted), and
heads that announce more bytes than a frame may hold (which must be refused before the
bytes arrive). The helpers at the top are shared with ``frames.py`` (section 4).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

import cbor2

from voxer_stream.wire import (
    Ack,
    Chunk,
    Close,
    Closed,
    End,
    Error,
    Frame,
    Live,
    MessageInfo,
    Open,
    Opened,
)

from ..case import case, expect, fail, recommend
from ..context import Context, opus_packet
from ..net import Reply, TransportFailure
from ..spec import CDDL_PATH, registry

# -- hand-made CBOR ---------------------------------------------------------------
# cbor2 always writes the shortest definite form; these write the other legal ones.

BREAK = b"\xff"


def head(major: int, value: int, size: int | None = None) -> bytes:
    """A CBOR head; ``size`` (1, 2, 4 or 8 argument bytes) forces a non-shortest one."""
    if size is None:
        if value < 24:
            return bytes([major << 5 | value])
        size = 1 if value < 0x100 else 2 if value < 0x10000 else 4 if value < 2**32 else 8
    info = {1: 24, 2: 25, 4: 26, 8: 27}[size]
    return bytes([major << 5 | info]) + value.to_bytes(size, "big")


def uint(value: int, size: int | None = None) -> bytes:
    return head(0, value, size)


def tstr(text: str, size: int | None = None) -> bytes:
    data = text.encode("utf-8")
    return head(3, len(data), size) + data


def bstr(data: bytes, size: int | None = None) -> bytes:
    return head(2, len(data), size) + data


def tstr_chunks(*parts: str) -> bytes:
    """An indefinite-length text string made of ``parts``."""
    return b"\x7f" + b"".join(tstr(p) for p in parts) + BREAK


def bstr_chunks(*parts: bytes) -> bytes:
    """An indefinite-length byte string made of ``parts``."""
    return b"\x5f" + b"".join(bstr(p) for p in parts) + BREAK


def cmap(*pairs: tuple[bytes, bytes], indefinite: bool = False, size: int | None = None) -> bytes:
    """A map of already encoded (key, value) pairs, in the order given."""
    body = b"".join(k + v for k, v in pairs)
    if indefinite:
        return b"\xbf" + body + BREAK
    return head(5, len(pairs), size) + body


def carr(*items: bytes, indefinite: bool = False, size: int | None = None) -> bytes:
    body = b"".join(items)
    if indefinite:
        return b"\x9f" + body + BREAK
    return head(4, len(items), size) + body


def item(type_: str, **fields_: Any) -> bytes:
    """A frame-shaped map written by cbor2 (keys in the order given, "type" first)."""
    return cbor2.dumps({"type": type_, **fields_})


def chunk_bytes(seq: Any, ts: Any, packets: Sequence[bytes], **extra: Any) -> bytes:
    """A chunk written by cbor2; ``seq`` and ``ts`` may be of any type (for invalid ones)."""
    return item("chunk", seq=seq, ts=ts, packets=list(packets), **extra)


def open_bytes(thread: Any, msg: Any, **extra: Any) -> bytes:
    fields_ = {"msg": msg, "thread": thread, "codec": "opus", "created": 1_700_000_000_000}
    fields_.update(extra)
    return item("open", **fields_)


# -- vectors ------------------------------------------------------------------------


@cache
def vectors() -> dict[str, dict[str, Any]]:
    """Every vector of proto/vectors/, by id."""
    found: dict[str, dict[str, Any]] = {}
    for name in ("valid_frames.json", "invalid_frames.json", "limits.json"):
        for vector in json.loads((CDDL_PATH.parent / "vectors" / name).read_text("utf-8")):
            found[vector["id"]] = vector
    return found


def vector_bytes(vector_id: str) -> bytes:
    return bytes.fromhex(vectors()[vector_id]["cbor_hex"])


def invalid_vectors(requirement: str, *, leave_out: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The invalid vectors that name ``requirement``, minus ``leave_out``."""
    return [
        v
        for v in vectors().values()
        if not v["valid"] and requirement in v["requirements"] and v["id"] not in leave_out
    ]


# -- what the server said -------------------------------------------------------------


def show(frames: Sequence[Frame]) -> str:
    """Frames in a short form for failure messages."""
    parts: list[str] = []
    for frame in frames:
        if isinstance(frame, Error):
            seq = "" if frame.seq is None else f" seq={frame.seq}"
            parts.append(f"error {frame.code} {frame.name}{seq}")
        elif isinstance(frame, Chunk):
            parts.append(f"chunk seq={frame.seq} ts={frame.ts} ({len(frame.packets)} packets)")
        else:
            values = ", ".join(f"{f.name}={getattr(frame, f.name)!r}" for f in fields(frame))
            parts.append(f"{frame.TYPE}({values})")
    return "[" + "; ".join(parts) + "]"


def error_name(code: int) -> str:
    entry = registry().get(code)
    return f"{code} {entry.name}" if entry else str(code)


@dataclass
class Problem:
    requirement: str
    message: str


def refusal_problem(reply: Reply, code: int, requirement: str) -> Problem | None:
    """Why ``reply`` is not error ``code`` found before the response started, or None.

    VXS-10-4: the registry's HTTP status and a body of exactly one error frame. A wrong
    code is a fault against ``requirement``; the right code in the wrong shape is one
    against VXS-10-4.
    """
    entry = registry()[code]
    errors = [f for f in reply.frames if isinstance(f, Error)]
    got = f"status {reply.status}, {show(reply.frames)}"
    if not errors or errors[-1].code != code:
        return Problem(requirement, f"{got}; expected error {error_name(code)}")
    if reply.status != entry.http_status or len(reply.frames) != 1:
        return Problem(
            "VXS-10-4", f"{got}; expected status {entry.http_status} and one error frame"
        )
    return None


def stream_problem(reply: Reply, code: int, seq: int | None = None) -> str | None:
    """Why ``reply`` is not an upload answered with opened and then error ``code``."""
    got = f"status {reply.status}, {show(reply.frames)}"
    error = reply.error
    if reply.status != 200 or not reply.frames or not isinstance(reply.frames[0], Opened):
        return f"{got}; expected status 200 with opened first"
    if error is None or error.code != code:
        return f"{got}; expected the upload to end with error {error_name(code)}"
    if seq is not None and error.seq != seq:
        return f"{got}; expected error.seq {seq}"
    return None


def check_failures(failures: Sequence[Problem]) -> None:
    """Fail with every problem found (a vector case reports all its vectors at once)."""
    if failures:
        ids = tuple(dict.fromkeys(p.requirement for p in failures))
        fail(ids, " | ".join(p.message for p in failures))


async def first_item(
    ctx: Context, data: bytes, *, end: bool = True, within: float | None = None
) -> Reply:
    """``data`` as the whole body of an upload (ended unless ``end`` is false)."""
    limit = ctx.timeout if within is None else within
    async with ctx.upload(ctx.alice.token) as exchange:
        exchange.timeout = limit
        await exchange.send(data)
        if end:
            await exchange.end()
        return await exchange.reply()


async def refused_first(
    ctx: Context,
    label: str,
    data: bytes,
    code: int,
    requirement: str,
    failures: list[Problem],
    *,
    end: bool = True,
    within: float | None = None,
) -> None:
    """Send ``data`` as the body; record a problem unless it gets exactly error ``code``."""
    try:
        reply = await first_item(ctx, data, end=end, within=within)
    except TransportFailure as exc:
        failures.append(Problem(requirement, f"{label}: {exc}"))
        return
    problem = refusal_problem(reply, code, requirement)
    if problem is not None:
        failures.append(Problem(problem.requirement, f"{label}: {problem.message}"))


async def refused_in_stream(
    ctx: Context,
    label: str,
    thread: str,
    data: bytes,
    code: int,
    requirement: str,
    failures: list[Problem],
    *,
    seq: int | None = None,
) -> str:
    """A new message: open, then ``data``; record a problem unless error ``code`` ends it."""
    msg = ctx.msg_id()
    reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, msg), data])
    problem = stream_problem(reply, code, seq)
    if problem is not None:
        failures.append(Problem(requirement, f"{label}: {problem}"))
    return msg


@dataclass
class Stored:
    """What a listen from seq 0 shows of a message: its frames up to ``end`` or ``live``."""

    info: MessageInfo
    chunks: list[Chunk]
    last: Frame


async def stored(ctx: Context, msg: str, *, token: str | None = None, **query: Any) -> Stored:
    async with ctx.listen(token or ctx.alice.token, msg, **query) as exchange:
        status = await exchange.status()
        frames: list[Frame] = []
        while (frame := await exchange.frame()) is not None:
            frames.append(frame)
            if isinstance(frame, End | Live | Error):
                break
    if status != 200 or not frames or not isinstance(frames[0], MessageInfo):
        raise TransportFailure(f"cannot listen to {msg}: status {status}, {show(frames)}")
    chunks = [f for f in frames if isinstance(f, Chunk)]
    return Stored(frames[0], chunks, frames[-1])


async def rest_message(ctx: Context, msg: str) -> dict[str, Any]:
    reply = await ctx.rest("GET", f"/v1/messages/{msg}", token=ctx.alice.token)
    if reply.status != 200 or not isinstance(reply.body, dict):
        raise TransportFailure(f"GET /v1/messages/{msg}: {reply.status} {reply.body}")
    return reply.body


def same_chunks(got: Sequence[Chunk], sent: Sequence[Chunk]) -> bool:
    return [(c.seq, c.ts, c.packets) for c in got] == [(c.seq, c.ts, c.packets) for c in sent]


# -- 2.1 Messages ---------------------------------------------------------------------


@case(
    "2.1/message-attributes",
    "a message keeps the talker's id, one thread, one sender, one codec and its created time",
    requirements=("VXS-2.1-1", "VXS-5.2-3"),
    accepts="GET /v1/messages/{id} and the listen's message frame give the talker's id, the "
    "thread, sender = the uploading account, codec opus and the first open's created; a "
    "second open with another created changes nothing; bob's open of alice's message id "
    "is refused with MESSAGE_CONFLICT and the sender stays alice",
)
async def message_attributes(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = f"{ctx.prefix}-AttR_{secrets.token_hex(8)}"
    created = 1_712_345_678_901
    first = Open(msg=msg, thread=thread, codec="opus", created=created)
    reply = await ctx.upload_all(ctx.alice.token, [first, ctx.chunk(0), Close(chunks=1)])
    expect(
        reply.frames and isinstance(reply.frames[-1], Closed),
        "VXS-2.1-1",
        f"the upload of {msg} was not accepted: {show(reply.frames)}",
    )
    opened = reply.frames[0]
    expect(
        isinstance(opened, Opened) and opened.msg == msg,
        "VXS-2.1-1",
        f"opened does not name the talker's id {msg!r}: {show(reply.frames[:1])}",
    )
    again = Open(msg=msg, thread=thread, codec="opus", created=created + 5000)
    reply = await ctx.upload_all(ctx.alice.token, [again])
    expect(
        reply.frames and isinstance(reply.frames[0], Opened),
        "VXS-2.1-1",
        f"a second open by the sender with another created was refused: {show(reply.frames)}",
    )
    intruder = await ctx.upload_all(ctx.bob.token, [Open(msg=msg, thread=thread, created=created)])
    problem = refusal_problem(intruder, 403, "VXS-5.2-3")
    expect(
        problem is None,
        "VXS-5.2-3",
        f"bob's open of alice's message: {problem.message if problem else ''}",
    )

    body = await rest_message(ctx, msg)
    wanted = {
        "id": msg,
        "thread": thread,
        "sender": ctx.alice.id,
        "codec": "opus",
        "created": created,
    }
    got = {k: body.get(k) for k in wanted}
    expect(got == wanted, "VXS-2.1-1", f"GET /v1/messages/{msg} gives {got}, expected {wanted}")
    info = (await stored(ctx, msg, token=ctx.bob.token)).info
    got_frame = {
        "id": info.msg,
        "thread": info.thread,
        "sender": info.sender,
        "codec": info.codec,
        "created": info.created,
    }
    expect(
        got_frame == wanted,
        "VXS-2.1-1",
        f"the listen's message frame gives {got_frame}, expected {wanted}",
    )


@case(
    "2.1/live-then-closed",
    "a message is live from its first open until it is closed, and closed afterwards",
    requirements=("VXS-2.1-2",),
    accepts="opened.state live and REST state live while uploading (also after the talker "
    "left without close); after closed, REST state closed and a new open answers opened "
    "with state closed",
)
async def live_then_closed(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    async with ctx.upload(ctx.alice.token) as ex:
        await ex.send(ctx.open_frame(thread, msg), ctx.chunk(0))
        first = await ex.frame()
        expect(
            isinstance(first, Opened) and first.state == "live",
            "VXS-2.1-2",
            f"a new message was not opened live: {first}",
        )
        await ctx.wait_acked(ex, 0)
        state = (await rest_message(ctx, msg)).get("state")
        expect(state == "live", "VXS-2.1-2", f"REST state {state!r} while uploading")
        await ex.end()
        await ex.frames()
    state = (await rest_message(ctx, msg)).get("state")
    expect(state == "live", "VXS-2.1-2", f"REST state {state!r} after the talker left")
    reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, msg), Close(chunks=1)])
    expect(
        reply.frames
        and isinstance(reply.frames[0], Opened)
        and reply.frames[0].state == "live"
        and isinstance(reply.frames[-1], Closed),
        "VXS-2.1-2",
        f"resume and close of a live message: {show(reply.frames)}",
    )
    state = (await rest_message(ctx, msg)).get("state")
    expect(state == "closed", "VXS-2.1-2", f"REST state {state!r} after closed")
    reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, msg)])
    first = reply.frames[0] if reply.frames else None
    expect(
        isinstance(first, Opened) and first.state == "closed",
        "VXS-2.1-2",
        f"an open of the closed message answered {show(reply.frames)}, expected opened closed",
    )


@case(
    "2.1/closed-is-final",
    "a closed message never gains, loses or changes a chunk",
    requirements=("VXS-2.1-2", "VXS-5.5-3"),
    accepts="after close, a new chunk, a changed chunk 0 and an identical chunk 1 are each "
    "refused with MESSAGE_CLOSED (402) after opened (state closed); the message's chunks, "
    "packets and end stay exactly as closed",
)
async def closed_is_final(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 2)
    before = await stored(ctx, msg)
    attempts = {
        "a new chunk 2": ctx.chunk(2),
        "chunk 0 with other packets": ctx.chunk(0, salt=b"changed"),
        "chunk 1 re-sent unchanged": ctx.chunk(1),
    }
    for label, chunk in attempts.items():
        reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, msg), chunk])
        first = reply.frames[0] if reply.frames else None
        expect(
            isinstance(first, Opened) and first.state == "closed",
            "VXS-2.1-2",
            f"{label}: the open was answered {show(reply.frames)}",
        )
        error = reply.error
        expect(
            error is not None and error.code == 402,
            "VXS-5.5-3",
            f"{label}: {show(reply.frames)}, expected error 402 MESSAGE_CLOSED",
        )
        expect(
            not any(isinstance(f, Ack) for f in reply.frames),
            "VXS-2.1-2",
            f"{label}: the server acknowledged a chunk of a closed message",
        )
    after = await stored(ctx, msg)
    expect(
        same_chunks(after.chunks, before.chunks) and after.last == before.last,
        "VXS-2.1-2",
        f"the closed message changed: {show([*before.chunks, before.last])} became "
        f"{show([*after.chunks, after.last])}",
    )


# -- 2.2 Chunks -----------------------------------------------------------------------


@case(
    "2.2/numbered-from-zero",
    "chunks are numbered from 0 consecutively",
    requirements=("VXS-2.2-1",),
    accepts="a first chunk with seq 1 is refused with SEQUENCE_GAP (400), error.seq 1, and "
    "nothing is stored; chunks 0 to 4 in order are all acknowledged and listen returns "
    "exactly them",
)
async def numbered_from_zero(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, msg), ctx.chunk(1)])
    problem = stream_problem(reply, 400, seq=1)
    expect(problem is None, "VXS-2.2-1", f"a first chunk with seq 1: {problem}")
    chunks = (await rest_message(ctx, msg)).get("chunks")
    expect(chunks == 0, "VXS-2.2-1", f"REST chunks {chunks} after the refused chunk 1")

    msg = ctx.msg_id()
    sent = [ctx.chunk(seq) for seq in range(5)]
    reply = await ctx.upload_all(
        ctx.alice.token, [ctx.open_frame(thread, msg), *sent, Close(chunks=5)]
    )
    expect(
        reply.frames and isinstance(reply.frames[-1], Closed),
        "VXS-2.2-1",
        f"chunks 0..4 were not all accepted: {show(reply.frames)}",
    )
    got = (await stored(ctx, msg)).chunks
    expect(same_chunks(got, sent), "VXS-2.2-1", f"listen returned {show(got)}")


@case(
    "2.2/ts-not-before-previous-end",
    "a chunk's ts must not be before the previous chunk's ts plus its duration",
    requirements=("VXS-2.2-2",),
    accepts="TIMESTAMP_REGRESSION (406) with error.seq the chunk's seq for ts one tick before "
    "the previous end, for ts equal to the previous ts, and for ts inside a two-packet "
    "chunk; ts exactly at the previous end and ts after a gap are accepted; refused chunks "
    "are not stored",
)
async def ts_regression(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    opening = ctx.open_frame(thread, msg)
    p = [opus_packet(9000 + i) for i in range(6)]  # 20 ms each
    accepted = [
        Chunk(seq=0, ts=0, packets=(p[0], p[1])),  # 1920 ticks
        Chunk(seq=1, ts=1920, packets=(p[2],)),  # exactly at the end
        Chunk(seq=2, ts=10_000, packets=(p[3],)),  # after a gap
    ]
    refused = [
        (0, Chunk(seq=1, ts=960, packets=(p[2],)), "ts inside the previous two-packet chunk"),
        (0, Chunk(seq=1, ts=1919, packets=(p[2],)), "ts one tick before the previous end"),
        (1, Chunk(seq=2, ts=1920, packets=(p[3],)), "ts equal to the previous ts"),
        (2, Chunk(seq=3, ts=10_959, packets=(p[4],)), "ts one tick before the end after a gap"),
    ]
    for upto, chunk, label in refused:
        reply = await ctx.upload_all(
            ctx.alice.token, [opening, *accepted[: upto + 1], chunk], end=True
        )
        problem = stream_problem(reply, 406, seq=chunk.seq)
        expect(problem is None, "VXS-2.2-2", f"{label}: {problem}")
    reply = await ctx.upload_all(ctx.alice.token, [opening, *accepted, Close(chunks=3)])
    last = reply.frames[-1] if reply.frames else None
    expect(
        isinstance(last, Closed),
        "VXS-2.2-2",
        f"ts at the previous end and after a gap were refused: {show(reply.frames)}",
    )
    got = (await stored(ctx, msg)).chunks
    expect(
        same_chunks(got, accepted),
        "VXS-2.2-2",
        f"stored {show(got)}, expected only the three accepted chunks",
    )


# -- 2.3 Identifiers --------------------------------------------------------------------


def bad_ids(prefix: str) -> dict[str, str]:
    """Identifiers the pattern [A-Za-z0-9_-]{1,64} does not match, whole-string."""
    return {
        "65 characters": "a" * 65,
        "empty": "",
        "a dot": f"{prefix}.x",
        "a space": f"{prefix} x",
        "a slash": f"{prefix}/x",
        "a trailing newline": f"{prefix}x\n",
        "a non-ASCII letter": f"{prefix}-\u00e9",
        "an Arabic-Indic digit": f"{prefix}-\u0661",
        "a fullwidth letter": f"{prefix}-\uff4d",
        "a NUL": f"{prefix}\x00",
    }


@case(
    "2.3/identifier-syntax",
    "identifiers match [A-Za-z0-9_-]{1,64} over the whole string, else INVALID_FRAME",
    requirements=("VXS-2.3-1", "VXS-10-4"),
    accepts="each invalid-id vector and each open whose msg or thread is not a whole-string "
    "match (65 chars, empty, '.', ' ', '/', trailing newline, non-ASCII letter or digit, "
    "NUL) is answered 400 with one error 102 INVALID_FRAME; a 64-character msg id of every "
    "allowed class is accepted and kept verbatim",
)
async def identifier_syntax(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-2.3-1"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 102, "VXS-2.3-1", failures
        )
    for label, bad in bad_ids("m").items():
        await refused_first(
            ctx, f"msg with {label}", open_bytes(thread, bad), 102, "VXS-2.3-1", failures
        )
        await refused_first(
            ctx, f"thread with {label}", open_bytes(bad, ctx.msg_id()), 102, "VXS-2.3-1", failures
        )
    check_failures(failures)
    body = "_-" + secrets.token_hex(8) + "AZaz09"
    msg = (body * 8)[:64]
    reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, msg), Close(chunks=0)])
    first = reply.frames[0] if reply.frames else None
    expect(
        isinstance(first, Opened) and first.msg == msg,
        "VXS-2.3-1",
        f"a valid 64-character id was not accepted verbatim: {show(reply.frames)}",
    )
    got = (await rest_message(ctx, msg)).get("id")
    expect(got == msg, "VXS-2.3-1", f"REST id {got!r}, expected {msg!r}")


@case(
    "2.3/case-sensitive",
    "identifiers are compared as exact strings: M1 and m1 are two messages",
    requirements=("VXS-2.3-2",),
    accepts="two ids that differ only in letter case open two new messages (each opened "
    "live with next_seq 0) that keep their own chunks; a thread id in another case is "
    "THREAD_NOT_FOUND (300), a message id in another case MESSAGE_NOT_FOUND",
)
async def case_sensitive(ctx: Context) -> None:
    thread_id = f"{ctx.prefix}-Th{secrets.token_hex(4)}"
    created = await ctx.rest(
        "POST",
        "/v1/threads",
        token=ctx.alice.token,
        json={"id": thread_id, "title": "case", "participants": [ctx.bob.username]},
    )
    if created.status != 201:
        raise TransportFailure(f"cannot create thread {thread_id}: {created.status}")
    upper = f"{ctx.prefix}-CaSe{secrets.token_hex(6)}"
    lower = upper.swapcase()
    uploads = {upper: [ctx.chunk(0, b"U")], lower: [ctx.chunk(0, b"l"), ctx.chunk(1, b"l")]}
    for msg, chunks in uploads.items():
        reply = await ctx.upload_all(
            ctx.alice.token,
            [ctx.open_frame(thread_id, msg), *chunks, Close(chunks=len(chunks))],
        )
        first = reply.frames[0] if reply.frames else None
        expect(
            isinstance(first, Opened) and first.state == "live" and first.next_seq == 0,
            "VXS-2.3-2",
            f"{msg} was not opened as a new message: {show(reply.frames)}",
        )
        expect(
            isinstance(reply.frames[-1], Closed),
            "VXS-2.3-2",
            f"{msg} was not uploaded: {show(reply.frames)}",
        )
    for msg, chunks in uploads.items():
        got = (await stored(ctx, msg)).chunks
        expect(
            same_chunks(got, chunks),
            "VXS-2.3-2",
            f"{msg} holds {show(got)}, expected its own {len(chunks)} chunk(s)",
        )
    reply = await ctx.upload_all(
        ctx.alice.token, [ctx.open_frame(thread_id.swapcase(), ctx.msg_id())]
    )
    problem = refusal_problem(reply, 300, "VXS-2.3-2")
    expect(
        problem is None,
        "VXS-2.3-2",
        f"open into {thread_id.swapcase()!r}: {problem and problem.message}",
    )
    other = f"{ctx.prefix}-NoNe{secrets.token_hex(6)}"
    await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread_id, other), Close(chunks=0)])
    swapped = other.swapcase()
    rest = await ctx.rest("GET", f"/v1/messages/{swapped}", token=ctx.alice.token)
    code = rest.error.get("code") if rest.error else None
    expect(
        rest.status == 404 and code == 301,
        "VXS-2.3-2",
        f"GET /v1/messages/{swapped} (only {other} exists): {rest.status} {rest.body}",
    )


# -- 3.1 CBOR sequences -------------------------------------------------------------------


def deterministic(raw: bytes) -> bytes:
    """The core deterministic encoding of RFC 8949 section 4.2.1 of one item."""
    return cbor2.dumps(cbor2.loads(raw), canonical=True)


@case(
    "3.1/server-frames-one-item",
    "every server frame is one CBOR item; servers should use the deterministic encoding",
    requirements=("VXS-3.1-1",),
    accepts="the upload and listen responses split into whole CBOR items with nothing left "
    "over, each a valid frame; frames not in the core deterministic encoding make the "
    "verdict non-strict (SHOULD)",
)
async def server_frames_one_item(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    frames: list[Frame | bytes] = [ctx.open_frame(thread, msg)]
    frames += [ctx.chunk(seq, packets=2) for seq in range(3)]
    upload = await ctx.upload_all(ctx.alice.token, [*frames, Close(chunks=3)])
    listen = await ctx.listen_all(ctx.bob.token, msg)
    raws = upload.raw + listen.raw
    expect(
        len(raws) == len(upload.frames) + len(listen.frames) and raws,
        "VXS-3.1-1",
        "the responses did not split into one item per frame",
    )
    for raw in raws:
        recommend(
            deterministic(raw) == raw,
            "VXS-3.1-1",
            f"server frame {raw.hex()} is not in the deterministic encoding "
            f"({deterministic(raw).hex()})",
        )


TRUNCATED = ("truncated-map", "truncated-head", "frame-at-limit-truncated")


@case(
    "3.1/malformed-cbor",
    "bytes that are not a well-formed CBOR item are refused with MALFORMED_CBOR",
    requirements=("VXS-3.1-2", "VXS-10-4"),
    accepts="every malformed vector that is not cut short (reserved heads, misplaced breaks, "
    "mixed string chunks, low two-byte simple values) sent as the upload body is answered "
    "400 with exactly one error 100 MALFORMED_CBOR; such an item after a valid open ends "
    "the 200 response with error 100; the server keeps serving afterwards",
)
async def malformed_cbor(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    # empty-input and trailing-bytes are about one-item messages: see the WebSocket case.
    leave_out = ("empty-input", "trailing-bytes", *TRUNCATED)
    for vector in invalid_vectors("VXS-3.1-2", leave_out=leave_out):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 100, "VXS-3.1-2", failures
        )
    after_open = {
        "reserved additional information 29": bytes.fromhex("a1637365711d"),
        "a break code where a frame starts": BREAK,
        "a two-byte simple value 31 under an unknown key": bytes.fromhex(
            "a3637365710164747970656361636b6178f81f"
        ),
        "an indefinite text string with an integer chunk": bytes.fromhex("a1617a7f01ff"),
    }
    for label, data in after_open.items():
        await refused_in_stream(ctx, label, thread, data, 100, "VXS-3.1-2", failures)
    check_failures(failures)
    await ctx.talk(thread, 1)


@case(
    "3.1/truncated-item",
    "a body that ends inside an item is a truncated item: MALFORMED_CBOR",
    requirements=("VXS-3.1-2", "VXS-10-4"),
    accepts="the truncated vectors (truncated-map, truncated-head, frame-at-limit-truncated) "
    "as the whole upload body are answered 400 with exactly one error 100 MALFORMED_CBOR; "
    "a chunk cut off by the end of the body after a valid open ends the 200 response with "
    "error 100 (the stream did not end cleanly between frames, so VXS-5.1-4 does not apply)",
)
async def truncated_item(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector_id in TRUNCATED:
        await refused_first(
            ctx, f"vector {vector_id}", vector_bytes(vector_id), 100, "VXS-3.1-2", failures
        )
    cut = chunk_bytes(0, 0, [opus_packet(1)])[:-3]
    await refused_in_stream(
        ctx, "a chunk cut off by the end of the body", thread, cut, 100, "VXS-3.1-2", failures
    )
    check_failures(failures)


@case(
    "3.1/malformed-cbor-websocket",
    "a WebSocket message that is empty or holds more than one item is MALFORMED_CBOR",
    requirements=("VXS-3.1-2", "VXS-11-2"),
    accepts="the vectors empty-input and trailing-bytes, each the first message of a "
    "WebSocket authenticated by header, are answered with one error frame 100 "
    "MALFORMED_CBOR and the close",
    group="websocket",
)
async def malformed_cbor_websocket(ctx: Context) -> None:
    failures: list[Problem] = []
    for vector_id in ("empty-input", "trailing-bytes"):
        async with ctx.websocket(header_token=ctx.alice.token) as ws:
            await ws.send(vector_bytes(vector_id))
            got = await ws.frames()
        error = got.frames[-1] if got.frames else None
        if len(got.frames) != 1 or not isinstance(error, Error) or error.code != 100:
            failures.append(
                Problem(
                    "VXS-3.1-2",
                    f"vector {vector_id}: {show(got.frames)} (close {got.close_code}), "
                    "expected one error 100 MALFORMED_CBOR",
                )
            )
    check_failures(failures)


@case(
    "3.1/invalid-utf8",
    "text strings must be valid UTF-8, else MALFORMED_CBOR",
    requirements=("VXS-3.1-8", "VXS-10-4"),
    accepts="the invalid-utf8 vector, an open whose msg holds 0xff, an overlong encoding, "
    "an encoded surrogate and a cut-off sequence (in a known field or an unknown key) are "
    "each answered 400 with one error 100 MALFORMED_CBOR",
)
async def invalid_utf8(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-3.1-8"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 100, "VXS-3.1-8", failures
        )
    good = cbor2.loads(open_bytes(thread, ctx.msg_id()))
    bad_texts = {
        "0xff in msg": (b"msg", b"m-\xff1"),
        "an overlong '/' (c0 af) in thread": (b"thread", b"t\xc0\xaf"),
        "a surrogate (ed a0 80) in codec": (b"codec", b"op\xed\xa0\x80"),
        "a cut-off sequence (e2 82) under an unknown key": (b"note", b"x\xe2\x82"),
    }
    for label, (key, raw) in bad_texts.items():
        pairs = [(tstr(k), cbor2.dumps(v)) for k, v in good.items() if k.encode() != key]
        pairs.append((tstr(key.decode()), head(3, len(raw)) + raw))
        await refused_first(ctx, label, cmap(*pairs), 100, "VXS-3.1-8", failures)
    check_failures(failures)


@case(
    "3.1/frame-is-map-with-type",
    "a frame is a map with text keys and a text type, else INVALID_FRAME",
    requirements=("VXS-3.1-3", "VXS-10-4"),
    accepts="every vector of VXS-3.1-3 (array, integer, no type, integer type, integer key) "
    "and an open whose type key is a byte string are answered 400 with one error 102 "
    "INVALID_FRAME",
)
async def frame_is_map(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-3.1-3"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 102, "VXS-3.1-3", failures
        )
    good = cbor2.loads(open_bytes(thread, ctx.msg_id()))
    byte_key = cmap(
        *[(bstr(k.encode()) if k == "type" else tstr(k), cbor2.dumps(v)) for k, v in good.items()]
    )
    await refused_first(
        ctx, "an open whose type key is bytes", byte_key, 102, "VXS-3.1-3", failures
    )
    text_key_bytes_value = open_bytes(thread, ctx.msg_id(), type=b"open")
    await refused_first(
        ctx, "an open whose type is a byte string", text_key_bytes_value, 102, "VXS-3.1-3", failures
    )
    check_failures(failures)


@case(
    "3.1/schema",
    "a well-formed item that does not match its frame's schema is INVALID_FRAME",
    requirements=("VXS-3.1-4", "VXS-10-4"),
    accepts="every vector of VXS-3.1-4 (missing field, wrong types, duplicate keys, tags, "
    "undefined and other simple values, even under unknown keys) as the upload body, and "
    "opens with a float, text or tagged created, are answered 400 with one error 102; a "
    "close with chunks true after open ends the 200 response with error 102",
)
async def schema(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-3.1-4"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 102, "VXS-3.1-4", failures
        )
    opens = {
        "created as a float": open_bytes(thread, ctx.msg_id(), created=1.7e12),
        "created as text": open_bytes(thread, ctx.msg_id(), created="1700000000000"),
        "created under tag 1": open_bytes(
            thread, ctx.msg_id(), created=cbor2.CBORTag(1, 1_700_000_000)
        ),
        "msg as an integer": open_bytes(thread, 12345),
        "a duplicate msg key": cmap(
            (tstr("type"), tstr("open")),
            (tstr("msg"), tstr(ctx.msg_id())),
            (tstr("thread"), tstr(thread)),
            (tstr("codec"), tstr("opus")),
            (tstr("created"), uint(1)),
            (tstr("msg"), tstr(ctx.msg_id())),
        ),
        "the whole open under tag 55799": b"\xd9\xd9\xf7" + open_bytes(thread, ctx.msg_id()),
    }
    for label, data in opens.items():
        await refused_first(ctx, label, data, 102, "VXS-3.1-4", failures)
    await refused_in_stream(
        ctx,
        "close with chunks true",
        thread,
        item("close", chunks=True),
        102,
        "VXS-3.1-4",
        failures,
    )
    check_failures(failures)


#: Unknown keys of every CBOR type a frame may hold (VXS-3.1-5), including keys that are
#: known in other frame types and a case variant of a known key.
UNKNOWN_KEYS: dict[str, Any] = {
    "x-int": 7,
    "x-negative": -7,
    "x-float": 1.5,
    "x-text": "later",
    "x-bytes": b"\x00\xff",
    "x-true": True,
    "x-false": False,
    "x-null": None,
    "x-array": [1, "a", [b"b"]],
    "x-map": {"a": {"b": [1, {"c": None}]}},
    "x-deep": [[[[[[[]]]]]]],  # the frame map plus 7 arrays: depth 8, the limit
    "SEQ": 99,
    "Type": "close",
}


@case(
    "3.1/unknown-keys-ignored",
    "receivers ignore map keys they do not know, with values of any allowed type",
    requirements=("VXS-3.1-5",),
    accepts="an open, two chunks and a close that each carry unknown keys (integers, float, "
    "text, bytes, booleans, null, arrays, nested maps, depth 8, keys known in other frame "
    "types) are accepted exactly as without them: opened live next_seq 0, closed with 2 "
    "chunks and 1920 ticks, the packets stored byte for byte",
)
async def unknown_keys_ignored(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    sent = [ctx.chunk(0), ctx.chunk(1)]
    body = [
        open_bytes(thread, msg, created=1_700_000_000_555, chunks=3, **UNKNOWN_KEYS),
        *(
            chunk_bytes(c.seq, c.ts, c.packets, msg="m-other", chunks=5, **UNKNOWN_KEYS)
            for c in sent
        ),
        item("close", chunks=2, seq=7, msg="m-other", **UNKNOWN_KEYS),
    ]
    reply = await ctx.upload_all(ctx.alice.token, body)
    frames = reply.frames
    first = frames[0] if frames else None
    last = frames[-1] if frames else None
    expect(
        isinstance(first, Opened) and first.msg == msg and first.next_seq == 0,
        "VXS-3.1-5",
        f"frames with unknown keys were not accepted: {show(frames)}",
    )
    expect(
        isinstance(last, Closed) and (last.chunks, last.duration) == (2, 1920),
        "VXS-3.1-5",
        f"expected closed with 2 chunks and 1920 ticks: {show(frames)}",
    )
    got = await stored(ctx, msg)
    expect(same_chunks(got.chunks, sent), "VXS-3.1-5", f"stored {show(got.chunks)}")
    expect(
        got.info.created == 1_700_000_000_555 and got.info.codec == "opus",
        "VXS-3.1-5",
        f"the open's fields were not kept: {show([got.info])}",
    )


@case(
    "3.1/unknown-type",
    "a frame whose type is not one of the twelve is INVALID_FRAME; types are case-sensitive",
    requirements=("VXS-3.1-6", "VXS-10-4"),
    accepts="the vectors of VXS-3.1-6 and complete opens typed 'Open', 'OPEN' and 'open ' are "
    "answered 400 with one error 102; a complete chunk typed 'Chunk' after a valid open "
    "ends the 200 response with error 102 and is not stored",
)
async def unknown_type(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-3.1-6"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 102, "VXS-3.1-6", failures
        )
    for variant in ("Open", "OPEN", "open "):
        fields_ = cbor2.loads(open_bytes(thread, ctx.msg_id()))
        fields_["type"] = variant
        await refused_first(
            ctx, f"an open typed {variant!r}", cbor2.dumps(fields_), 102, "VXS-3.1-6", failures
        )
    data = cbor2.dumps({"type": "Chunk", "seq": 0, "ts": 0, "packets": [opus_packet(0)]})
    msg = await refused_in_stream(
        ctx, "a chunk typed 'Chunk'", thread, data, 102, "VXS-3.1-6", failures
    )
    check_failures(failures)
    chunks = (await rest_message(ctx, msg)).get("chunks")
    expect(chunks == 0, "VXS-3.1-6", f"the chunk typed 'Chunk' was stored (REST chunks {chunks})")


@case(
    "3.1/no-resynchronization",
    "after a decoding error the server sends error and ends the stream, never resynchronizes",
    requirements=("VXS-3.1-7",),
    accepts="open, chunk 0, then a bad item followed by a valid chunk 1 and close: the 200 "
    "response ends with the decoding error (100 for a reserved head byte, 102 for an "
    "invalid chunk), no ack names chunk 1, no closed; the message stays live with chunk 1 "
    "not stored",
)
async def no_resynchronization(ctx: Context) -> None:
    thread = await ctx.thread()
    bad_items = {
        "a reserved head byte 0x1c": (b"\x1c", 100),
        "a chunk with ts as text": (chunk_bytes(1, "960", [opus_packet(1)]), 102),
    }
    for label, (bad, code) in bad_items.items():
        msg = ctx.msg_id()
        body: list[Frame | bytes] = [
            ctx.open_frame(thread, msg),
            ctx.chunk(0),
            bad,
            ctx.chunk(1),
            Close(chunks=2),
        ]
        reply = await ctx.upload_all(ctx.alice.token, body)
        problem = stream_problem(reply, code)
        expect(problem is None, "VXS-3.1-7", f"{label}: {problem}")
        expect(
            not any(isinstance(f, Ack) and f.seq >= 1 for f in reply.frames),
            "VXS-3.1-7",
            f"{label}: the server read on after the error: {show(reply.frames)}",
        )
        body_ = await rest_message(ctx, msg)
        expect(
            body_.get("state") == "live" and body_.get("chunks") in (0, 1),
            "VXS-3.1-7",
            f"{label}: after the error the message is {body_}",
        )


@case(
    "3.1/null-known-field",
    "null as the value of a known field is INVALID_FRAME",
    requirements=("VXS-3.1-9", "VXS-10-4"),
    accepts="the optional-null vector and opens with msg, codec or created null are answered "
    "400 with one error 102; after a valid open, a chunk with ts null and a close with "
    "chunks null end the 200 response with error 102",
)
async def null_known_field(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-3.1-9"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 102, "VXS-3.1-9", failures
        )
    for key in ("msg", "codec", "created"):
        fields_ = cbor2.loads(open_bytes(thread, ctx.msg_id()))
        fields_[key] = None
        data = cbor2.dumps(fields_)
        await refused_first(ctx, f"an open with {key} null", data, 102, "VXS-3.1-9", failures)
    in_stream = {
        "a chunk with ts null": chunk_bytes(0, None, [opus_packet(0)]),
        "a close with chunks null": item("close", chunks=None),
    }
    for label, data in in_stream.items():
        await refused_in_stream(ctx, label, thread, data, 102, "VXS-3.1-9", failures)
    check_failures(failures)


def loose_upload(thread: str, msg: str, p0: bytes, p1: bytes, p2: bytes) -> list[bytes]:
    """open, chunk 0 (p0, ts 0), chunk 1 (p1 + p2, ts 960), close: valid, never deterministic."""
    type_key = tstr_chunks("ty", "pe")
    opening = cmap(
        (tstr("created"), uint(1234, 8)),
        (tstr("codec", 2), tstr("opus", 4)),
        (type_key, tstr_chunks("op", "", "en")),
        (tstr("thread"), tstr_chunks(thread[:3], thread[3:])),
        (tstr("msg"), tstr_chunks(*msg)),
        indefinite=True,
    )
    chunk0 = cmap(
        (tstr("seq"), uint(0, 8)),
        (tstr("packets"), carr(bstr_chunks(p0[:1], p0[1:]), indefinite=True)),
        (tstr("type"), tstr("chunk", 1)),
        (tstr("ts"), uint(0, 2)),
        size=4,
    )
    chunk1 = cmap(
        (tstr("packets"), carr(bstr(p1, 2), bstr(p2, 4), size=8)),
        (tstr("ts"), uint(960, 4)),
        (type_key, tstr_chunks("ch", "unk")),
        (tstr("seq"), uint(1, 1)),
        indefinite=True,
    )
    close = cmap((tstr("chunks"), uint(2, 8)), (tstr("type"), tstr("close")), indefinite=True)
    return [opening, chunk0, chunk1, close]


@case(
    "3.1/non-deterministic-accepted",
    "receivers accept every well-formed encoding of a valid frame",
    requirements=("VXS-3.1-10",),
    accepts="an open, two chunks and a close written with indefinite-length maps, arrays, "
    "text and byte strings (keys included), non-shortest heads and unsorted keys are "
    "accepted: opened live next_seq 0, closed with 2 chunks and 2880 ticks, and the "
    "listen returns the same seq, ts and packets byte for byte and created 1234",
)
async def non_deterministic_accepted(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    p0, p1, p2 = opus_packet(1, b"nd"), opus_packet(2, b"nd"), opus_packet(3, b"nd")
    reply = await ctx.upload_all(ctx.alice.token, loose_upload(thread, msg, p0, p1, p2))
    frames = reply.frames
    first = frames[0] if frames else None
    last = frames[-1] if frames else None
    expect(
        isinstance(first, Opened) and first.msg == msg and first.next_seq == 0,
        "VXS-3.1-10",
        f"the open was not accepted: {show(frames)}",
    )
    expect(
        isinstance(last, Closed) and (last.chunks, last.duration) == (2, 2880),
        "VXS-3.1-10",
        f"expected closed with 2 chunks and 2880 ticks: {show(frames)}",
    )
    got = await stored(ctx, msg)
    sent = [Chunk(seq=0, ts=0, packets=(p0,)), Chunk(seq=1, ts=960, packets=(p1, p2))]
    expect(
        same_chunks(got.chunks, sent),
        "VXS-3.1-10",
        f"stored {show(got.chunks)}, expected the packets byte for byte",
    )
    expect(got.info.created == 1234, "VXS-3.1-10", f"created {got.info.created}, sent 1234")


# -- 3.2 Limits --------------------------------------------------------------------------

MAX_FRAME = 65536


def padded_packet(size: int) -> bytes:
    """A valid Opus packet of ``size`` bytes: code 3, one 20 ms CELT frame, then padding.

    RFC 6716 section 3.2.5: padding is a chain of length bytes (255 = 254 more bytes and
    another length byte) and the padding itself at the end; only the packet's size limits it.
    """
    frame = bytes(100)
    chain, last = divmod(size - 2 - len(frame) + 254, 255)
    padding = 254 * (chain - 1) + last
    packet = b"\xfb\x41" + b"\xff" * (chain - 1) + bytes([last]) + frame + bytes(padding)
    assert len(packet) == size
    return packet


def chunk_of_size(size: int) -> tuple[bytes, bytes]:
    """Chunk 0 encoded in exactly ``size`` bytes, and that encoding's bytes up to the packet."""
    base = len(chunk_bytes(0, 0, [b""])) - 1  # without the empty packet's 1-byte head
    packet = padded_packet(size - base - 3)  # a 3-byte head (0x59 + 16 bits)
    data = chunk_bytes(0, 0, [packet])
    assert len(data) == size
    return data, data[: size - len(packet)]


async def refused_promptly_in_stream(
    ctx: Context, label: str, thread: str, partial: bytes, failures: list[Problem]
) -> None:
    """open, then ``partial`` (a head announcing too much) and nothing more: 101 at once."""
    async with ctx.upload(ctx.alice.token) as exchange:
        exchange.timeout = 3.0
        await exchange.send(ctx.open_frame(thread, ctx.msg_id()), partial)
        try:
            frames = await exchange.frames()
        except TransportFailure as exc:
            failures.append(Problem("VXS-3.2-1", f"{label}: {exc} (waiting for the bytes?)"))
            return
    error = frames[-1] if frames else None
    if not isinstance(error, Error) or error.code != 101:
        failures.append(Problem("VXS-3.2-1", f"{label}: {show(frames)}, expected error 101"))


@case(
    "3.2/frame-size",
    "a frame over 65536 bytes is FRAME_TOO_LARGE, detected from the head alone",
    requirements=("VXS-3.2-1", "VXS-10-4"),
    accepts="a chunk of exactly 65536 bytes (one valid padded Opus packet) is acknowledged and "
    "stored byte for byte; the same chunk one byte larger ends the upload with error 101 "
    "and is not stored; the over-limit vector as the body is answered 413 with one error "
    "101; heads announcing a 65536-byte packet, a 2^32-byte text, a 10 MB byte string or a "
    "frame end beyond the limit get error 101 within 3 s while the announced bytes are "
    "never sent",
)
async def frame_size(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    at_limit, _ = chunk_of_size(MAX_FRAME)
    msg = ctx.msg_id()
    reply = await ctx.upload_all(
        ctx.alice.token, [ctx.open_frame(thread, msg), at_limit, Close(chunks=1)]
    )
    last = reply.frames[-1] if reply.frames else None
    expect(
        isinstance(last, Closed) and last.chunks == 1,
        "VXS-3.2-1",
        f"a frame of exactly 65536 bytes was not accepted: {show(reply.frames)}",
    )
    got = (await stored(ctx, msg)).chunks
    packet = cbor2.loads(at_limit)["packets"][0]
    expect(
        len(got) == 1 and got[0].packets == (packet,),
        "VXS-3.2-1",
        f"the 65536-byte chunk was stored as {show(got)}",
    )

    over, over_head = chunk_of_size(MAX_FRAME + 1)
    msg = await refused_in_stream(
        ctx, "a chunk of 65537 bytes", thread, over, 101, "VXS-3.2-1", failures
    )
    chunks = (await rest_message(ctx, msg)).get("chunks")
    if chunks != 0:
        failures.append(Problem("VXS-3.2-1", f"the 65537-byte chunk was stored ({chunks})"))
    await refused_first(
        ctx,
        "vector frame-over-size-limit",
        vector_bytes("frame-over-size-limit"),
        101,
        "VXS-3.2-1",
        failures,
    )
    heads = {
        "vector frame-too-large-by-head": vector_bytes("frame-too-large-by-head"),
        "vector text-head-announces-4gib": vector_bytes("text-head-announces-4gib"),
        "an open whose unknown key announces a 10 MB byte string": open_with(
            thread, ctx.msg_id(), "x", head(2, 10_000_000)
        ),
    }
    for label, data in heads.items():
        await refused_first(
            ctx,
            f"{label} (body not ended)",
            data,
            101,
            "VXS-3.2-1",
            failures,
            end=False,
            within=3.0,
        )
    await refused_promptly_in_stream(
        ctx, "a 65537-byte chunk's bytes up to its packet", thread, over_head, failures
    )
    check_failures(failures)
    await ctx.talk(thread, 1)


def nested(depth: int, kind: str) -> bytes:
    """``depth`` nested containers: "array" (81...80), "map" ({"a": ...}), "indefinite"."""
    if kind == "array":
        return b"\x81" * (depth - 1) + b"\x80"
    if kind == "map":
        return b"\xa1\x61\x61" * (depth - 1) + b"\xa0"
    return b"\x9f" * depth + BREAK * depth


def open_with(thread: str, msg: str, key: str, value: bytes) -> bytes:
    """An open with one more (unknown) key whose value is already encoded."""
    return cmap(
        (tstr("type"), tstr("open")),
        (tstr("msg"), tstr(msg)),
        (tstr("thread"), tstr(thread)),
        (tstr("codec"), tstr("opus")),
        (tstr("created"), uint(1_700_000_000_000)),
        (tstr(key), value),
    )


@case(
    "3.2/nesting-depth",
    "frames nest at most 8 deep, counting the frame's map; deeper is INVALID_FRAME",
    requirements=("VXS-3.2-2", "VXS-10-4"),
    accepts="depth 9 under an unknown key (the vector, nested maps, indefinite arrays) is "
    "answered 400 with one error 102, and ends an upload with 102 inside a chunk; depth 8 "
    "passes the decoder: the depth-8 ack vector gets UNEXPECTED_FRAME (103), an open with "
    "depth 8 (maps or indefinite arrays) is opened",
)
async def nesting_depth(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-3.2-2"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 102, "VXS-3.2-2", failures
        )
    await refused_first(
        ctx,
        "vector nesting-depth-8 (an ack: a valid frame, not allowed first)",
        vector_bytes("nesting-depth-8"),
        103,
        "VXS-3.2-2",
        failures,
    )
    for kind in ("map", "indefinite"):
        deep = open_with(thread, ctx.msg_id(), "x", nested(8, kind))
        await refused_first(
            ctx, f"an open with 9 levels of {kind}s", deep, 102, "VXS-3.2-2", failures
        )
        msg = ctx.msg_id()
        reply = await first_item(ctx, open_with(thread, msg, "x", nested(7, kind)))
        first = reply.frames[0] if reply.frames else None
        if not isinstance(first, Opened):
            failures.append(
                Problem("VXS-3.2-2", f"an open with 8 levels of {kind}s: {show(reply.frames)}")
            )
    deep_chunk = chunk_bytes(0, 0, [opus_packet(0)])
    deep_chunk = cmap(
        *[(tstr(k), cbor2.dumps(v)) for k, v in cbor2.loads(deep_chunk).items()],
        (tstr("x"), nested(8, "array")),
    )
    await refused_in_stream(ctx, "a chunk 9 deep", thread, deep_chunk, 102, "VXS-3.2-2", failures)
    check_failures(failures)


MAX_U53 = 2**53 - 1


@case(
    "3.2/integer-range",
    "unsigned integers are at most 2^53-1; larger or negative is INVALID_FRAME",
    requirements=("VXS-3.2-3", "VXS-10-4"),
    accepts="the vectors of VXS-3.2-3 and opens with created 2^53 or -1 are answered 400 with "
    "one error 102; an open with created 2^53-1 is opened and the message frame gives it "
    "back exactly; after open, chunk seq 2^53 and close chunks 2^53 end the upload with 102 "
    "while seq 2^53-1 is SEQUENCE_GAP (400, error.seq 2^53-1) and close chunks 2^53-1 is "
    "CLOSE_MISMATCH (407)",
)
async def integer_range(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-3.2-3"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 102, "VXS-3.2-3", failures
        )
    for value in (MAX_U53 + 1, -1):
        data = open_bytes(thread, ctx.msg_id(), created=value)
        await refused_first(ctx, f"an open with created {value}", data, 102, "VXS-3.2-3", failures)
    in_stream = [
        ("chunk seq 2^53", chunk_bytes(MAX_U53 + 1, 0, [opus_packet(0)]), 102, None),
        ("close chunks 2^53", item("close", chunks=MAX_U53 + 1), 102, None),
        ("vector seq-max (seq and ts 2^53-1)", vector_bytes("seq-max"), 400, MAX_U53),
        ("close chunks 2^53-1", item("close", chunks=MAX_U53), 407, None),
    ]
    for label, data, code, seq in in_stream:
        msg = ctx.msg_id()
        reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, msg), data])
        problem = stream_problem(reply, code, seq)
        if problem is not None:
            failures.append(Problem("VXS-3.2-3", f"{label}: {problem}"))
    msg = ctx.msg_id()
    reply = await first_item(ctx, open_bytes(thread, msg, created=MAX_U53))
    if not reply.frames or not isinstance(reply.frames[0], Opened):
        failures.append(Problem("VXS-3.2-3", f"created 2^53-1: {show(reply.frames)}"))
    else:
        created = (await stored(ctx, msg)).info.created
        if created != MAX_U53:
            failures.append(Problem("VXS-3.2-3", f"created 2^53-1 came back as {created}"))
    check_failures(failures)


@case(
    "3.2/text-lengths",
    "text limits are counted in code points, not bytes",
    requirements=("VXS-3.2-4", "VXS-10-4"),
    accepts="the over-limit vectors (token 513, codec 33, name 65, detail 1025 code points) "
    "are answered 400 with one error 102, the 512-code-point auth vector passes the decoder "
    "(UNEXPECTED_FRAME, 103, in an upload body); opens whose codec has 32 two-byte or 8 "
    "four-byte code points are valid frames refused with UNSUPPORTED_CODEC (422, 405), "
    "33 two-byte code points with 102",
)
async def text_lengths(ctx: Context) -> None:
    thread = await ctx.thread()
    failures: list[Problem] = []
    for vector in invalid_vectors("VXS-3.2-4"):
        await refused_first(
            ctx, f"vector {vector['id']}", vector_bytes(vector["id"]), 102, "VXS-3.2-4", failures
        )
    await refused_first(
        ctx, "vector token-512", vector_bytes("token-512"), 103, "VXS-3.2-4", failures
    )
    codecs = {
        "32 x U+00E9 (64 bytes)": ("\u00e9" * 32, 405),
        "8 x U+1F600 (32 bytes)": ("\U0001f600" * 8, 405),
        "32 ASCII letters": ("o" * 32, 405),
        "33 x U+00E9": ("\u00e9" * 33, 102),
    }
    for label, (codec, code) in codecs.items():
        data = open_bytes(thread, ctx.msg_id(), codec=codec)
        await refused_first(ctx, f"an open with codec {label}", data, code, "VXS-3.2-4", failures)
    check_failures(failures)


@case(
    "3.2/token-length-websocket",
    "an auth token is limited to 512 code points, not bytes",
    requirements=("VXS-3.2-4",),
    accepts="an auth frame whose token is 512 x U+00E9 (1024 bytes) is a valid frame with an "
    "unknown token: UNAUTHENTICATED (200); 513 x U+00E9 is INVALID_FRAME (102)",
    group="websocket",
)
async def token_length_websocket(ctx: Context) -> None:
    failures: list[Problem] = []
    for count, code in ((512, 200), (513, 102)):
        async with ctx.websocket() as ws:
            await ws.send(item("auth", token="\u00e9" * count))
            got = await ws.frames()
        error = got.frames[-1] if got.frames else None
        if not isinstance(error, Error) or error.code != code or len(got.frames) != 1:
            failures.append(
                Problem(
                    "VXS-3.2-4",
                    f"auth with {count} x U+00E9: {show(got.frames)}, expected one error "
                    f"{error_name(code)}",
                )
            )
    check_failures(failures)
