"""Client-side conformance of talkers (spec sections 2, 3, 5, 9 and 10.1): the scenarios.

Each scenario is a client-role case the peer plays for uploads whose bearer token is
its name: a well-behaved server, a dropped connection, a resumable error, an unknown
error code, a frame the talker must refuse, frames in unusual encodings, a reset after
a complete response. ``peer_talk.Talk`` checks every frame the talker sends meanwhile.

A talker under test uploads one message of at least ``MIN_CHUNKS`` chunks per scenario,
with ``Authorization: Bearer <scenario name>``.
"""

from __future__ import annotations

import math
from typing import Final

import cbor2
import trio

from voxer_stream.wire import Ack, Chunk, Close, Closed, Error, Frame, Opened, encode_frame

from .case import fail, note, recommend, skip
from .peer_core import CBOR_SEQ, PeerStream, Received, Signal, Timing, scenario
from .peer_talk import (
    MIN_CHUNKS,
    RESUME_IDS,
    TALKER_IDS,
    USAGE,
    Talk,
    blocked,
    resume,
    start,
    talk_of,
    violation,
)

__all__ = ["MIN_CHUNKS", "lenient_ack", "lenient_closed", "lenient_opened"]

#: The default waits, quoted in what the scenarios accept.
REACTION: Final = Timing().reaction
RECONNECT: Final = Timing().reconnect


# -- scenarios ------------------------------------------------------------------------


@scenario(
    "normal-upload",
    "5.1",
    "a talker's upload to a well-behaved server is well-formed from open to close",
    kind="talker",
    requirements=("VXS-3.1-1", "VXS-5.1-3", "VXS-5.2-6", *TALKER_IDS),
    accepts="POST /v1/upload whose body is open (all four fields, an id that matches the "
    "rules), chunks 0, 1, 2... without gap, ts never before the end of the previous chunk, "
    "valid Opus packets, then close with the chunk count; the talker reads opened, acks and "
    "closed and completes. SHOULD: deterministic CBOR, chunks only after opened, "
    "content-type application/cbor-seq, a message id of at least 96 bits",
)
async def normal_upload(session: object) -> None:
    talk = talk_of(session)
    stream = talk.first
    opening = await talk.accept(stream)
    recommend(
        (stream.headers.get("content-type") or "").startswith(CBOR_SEQ),
        "VXS-10-2",
        f"content-type {stream.headers.get('content-type')!r}, not {CBOR_SEQ}",
    )
    bits = _id_bits(opening.msg)
    recommend(
        bits >= 96,
        "VXS-2.1-1",
        f"message id {opening.msg!r} carries at most {bits} bits; 96 are RECOMMENDED",
    )
    # A pause before opened shows whether the talker waits for it (VXS-5.2-6).
    await trio.sleep(0.1)
    await talk.opened(stream, 0)
    result = await talk.serve(stream)
    if result is Signal.END:
        skip("the talker ended the upload without close; send a complete message")
    if result is not None:
        fail(
            "VXS-5.1-3",
            f"the talker ended the stream ({result.value}) before close, although the peer "
            "sent only frames its state allows (opened, ack)",
        )
    assert talk.close is not None
    earlier = talk.history.get(opening.msg)
    chunks = [talk.sent[s] for s in sorted(talk.sent)]
    if earlier is not None and earlier != chunks:
        fail("VXS-2.1-1", f"message id {opening.msg!r} reused for another recording")
    talk.history[opening.msg] = chunks
    note(f"{len(chunks)} chunks, {talk.duration()} ticks")
    talk.end_checks()


def _id_bits(msg: str) -> int:
    alphabet = set(msg.replace("-", "").replace("_", ""))
    if alphabet <= set("0123456789"):
        per = math.log2(10)
    elif alphabet <= set("0123456789abcdef") or alphabet <= set("0123456789ABCDEF"):
        per = 4.0
    elif alphabet <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ"):
        per = 5.0  # Crockford base32 (ULID)
    else:
        per = 6.0
    return int(len(msg) * per)


@scenario(
    "drop-mid-upload",
    "5.2",
    "after a dropped connection the talker re-sends every unacknowledged chunk from next_seq",
    kind="talker",
    requirements=(*RESUME_IDS, *TALKER_IDS),
    accepts="the peer acks chunks 0 and 1, holds the window from chunk 4 on, cuts the TCP "
    "connection once the talker is blocked and answers its next open with next_seq 2: the "
    f"talker reconnects within {RECONNECT:g} s and sends chunks 2, 3, 4... in order, each "
    "identical (ts and packets) to what it sent before, then its remaining chunks and close",
)
async def drop_mid_upload(session: object) -> None:
    await _drop_andresume(talk_of(session), ahead=0)


@scenario(
    "resume-ahead",
    "5.2",
    "a resumed talker starts at next_seq, also when it is past the last ack it received",
    kind="talker",
    requirements=(*RESUME_IDS, *TALKER_IDS),
    accepts="the peer acks chunks 0 and 1, cuts the connection after chunk 4 (or later) and "
    "answers the next open with next_seq 4 (chunks 2 and 3 were stored, their ack lost): the "
    "talker's first chunk after opened is chunk 4, identical to before, then the rest",
)
async def resume_ahead(session: object) -> None:
    await _drop_andresume(talk_of(session), ahead=2)


async def _drop_andresume(talk: Talk, ahead: int) -> None:
    stream = await start(talk)
    await talk.play_until(stream, 4, ack_upto=1)
    await blocked(talk, stream)
    note(f"the peer cut the connection after receiving chunks 0 to {talk.highest_seq()}")
    await stream.drop()
    dropped = trio.current_time()
    again = await talk.next_stream(talk.timing.reconnect)
    if again is None:
        fail(
            "VXS-5.3-6",
            f"the talker did not reconnect within {talk.timing.reconnect:g} s to re-send its "
            "unacknowledged chunks 2 and later",
        )
    assert again is not None
    await resume(talk, again, 2 + ahead, dropped)


def _resumable(name: str, code: int, error: str, detail: str, strict: bool) -> None:
    section = "9"
    first = ("VXS-9-3", "VXS-9-2", "VXS-4.11-1") if strict else ("VXS-9-3", "VXS-10-3")
    requirements = (*first, *RESUME_IDS, *TALKER_IDS)
    title = (
        f"after an unknown 5xx error ({code}) the talker resumes, as after INTERNAL_ERROR"
        if strict
        else f"after {error} the talker reconnects with backoff and resumes its upload"
    )

    async def play(session: object) -> None:
        talk = talk_of(session)
        stream = await start(talk)
        await talk.play_until(stream, 3, ack_upto=1)
        body_open = await blocked(talk, stream)
        await stream.send(Error(code=code, name=error, detail=detail), end=True)
        sent = trio.current_time()
        within = talk.timing.reaction
        reaction = await talk.reaction(stream, within, body_end=body_open)
        if reaction is None:
            fail(
                "VXS-9-3" if strict else "VXS-10-3",
                f"no reaction within {within:g} s to the error frame {code} {error} "
                "sent while the talker's body was blocked: it does not read the response "
                "while it sends",
            )
        again = reaction if isinstance(reaction, PeerStream) else None
        if again is None:
            again = await talk.next_stream(talk.timing.reconnect)
        if again is None:
            message = (
                f"the talker did not reconnect within {talk.timing.reconnect:g} s to resume after "
                f"{code} {error}"
            )
            if strict:
                fail("VXS-9-3", message + " (an unknown 5xx is a 5xx, VXS-9-2)")
            recommend(False, "VXS-9-3", message)
            return
        await resume(talk, again, 2, sent)

    scenario(
        name,
        section,
        title,
        kind="talker",
        requirements=requirements,
        accepts=f"after acks 0 and 1 and chunk 3 the peer sends error {code} {error} "
        f"(detail {detail!r}) and ends the response while the talker's body is blocked: the "
        f"talker {'SHOULD' if not strict else 'SHOULD, as for any 5xx,'} open the message "
        "again (a delay is fine) and re-send from next_seq 2, as after a drop",
        strict=strict,
    )(play)


_resumable("shutting-down", 501, "SHUTTING_DOWN", "the server is shutting down", strict=False)
_resumable("internal-error", 500, "INTERNAL_ERROR", "the store failed", strict=False)
_resumable("idle-timeout", 502, "IDLE_TIMEOUT", "no frame for 30 s", strict=False)
_resumable(
    "unknown-server-error",
    599,
    "PEER_FUTURE_OUTAGE",
    "permanent failure: do not retry this upload",
    strict=True,
)


@scenario(
    "unknown-error-code",
    "9",
    "a talker takes an unknown 4xx error code as a 4xx error, whatever its detail says",
    kind="talker",
    requirements=("VXS-9-2", "VXS-4.11-1", *TALKER_IDS),
    accepts="after chunk 2 the peer sends error 499 PEER_FUTURE_CONFLICT whose detail "
    "claims the server is shutting down and asks for a resume, and ends the response: the "
    f"talker ends its side within {REACTION:g} s and does not upload the message again "
    "(a 4xx is the talker's problem, and detail is for people)",
)
async def unknown_error_code(session: object) -> None:
    talk = talk_of(session)
    stream = await start(talk)
    await talk.play_until(stream, 2, ack_upto=0)
    body_open = await blocked(talk, stream)
    detail = "SHUTTING_DOWN (501): the server restarts, reconnect and resume the upload"
    await stream.send(Error(code=499, name="PEER_FUTURE_CONFLICT", detail=detail), end=True)
    within = talk.timing.reaction
    reaction = await talk.reaction(stream, within, body_end=body_open)
    if reaction is None:
        fail(
            "VXS-9-2",
            f"no reaction within {within:g} s to error 499 sent while the talker's body "
            "was blocked: it did not accept the unknown code as an error (or does not read "
            "the response while it sends, VXS-10-3)",
        )
    again = reaction if isinstance(reaction, PeerStream) else await talk.retried()
    if again is not None:
        fail(
            ("VXS-9-2", "VXS-4.11-1"),
            "the talker uploaded the message again after error 499: a 4xx is not resumable "
            "(it took the unknown code for a server error, or followed the detail)",
        )
    assert isinstance(reaction, Signal)
    note(f"the talker ended the stream with {reaction.value}")


def _violation_scenario(
    name: str,
    section: str,
    title: str,
    rid: str | tuple[str, ...],
    what: str,
    fault: bytes | None,
    *,
    at: int = 2,
    ack_upto: int = 0,
) -> None:
    ids = (rid,) if isinstance(rid, str) else rid

    async def play(session: object) -> None:
        talk = talk_of(session)
        stream = await start(talk)
        await talk.play_until(stream, at, ack_upto=ack_upto)
        # The fault is built once the talker is blocked: it may name the last chunk sent.
        await violation(talk, stream, lambda: fault or _fault_for(name, talk), ids[0], what)

    scenario(
        name,
        section,
        title,
        kind="talker",
        requirements=(*ids, *TALKER_IDS),
        accepts=f"after chunk {at} the peer holds the talker's window and sends {what}: the "
        f"talker ends the stream (RST_STREAM, END_STREAM or closing the connection) within "
        f"{REACTION:g} s, and does not upload and close the message again as if nothing "
        "had happened",
    )(play)


def _fault_for(name: str, talk: Talk) -> bytes:
    assert talk.open is not None
    last = talk.highest_seq()
    frame: Frame
    if name == "unexpected-frame":
        frame = talk.sent[0]
    elif name == "second-opened":
        frame = Opened(msg=talk.open.msg, next_seq=0, state="live")
    elif name == "early-closed":
        frame = Closed(msg=talk.open.msg, chunks=last + 1, duration=talk.duration())
    elif name == "ack-out-of-order":
        return cbor2.dumps({"type": "ack", "seq": 3}) + cbor2.dumps({"type": "ack", "seq": 1})
    elif name == "ack-unsent":
        frame = Ack(seq=last + 5)
    else:
        raise AssertionError(name)
    return encode_frame(frame)


_violation_scenario(
    "unexpected-frame",
    "5.1",
    "a talker treats a chunk frame from the server as a protocol violation",
    "VXS-5.1-3",
    "a chunk frame (a listen frame, never sent to a talker)",
    None,
)
_violation_scenario(
    "second-opened",
    "5.1",
    "a talker treats a second opened as a protocol violation",
    "VXS-5.1-3",
    "a second opened frame",
    None,
)
_violation_scenario(
    "early-closed",
    "5.1",
    "a talker treats closed before its close as a protocol violation",
    "VXS-5.1-3",
    "closed although the talker has not sent close",
    None,
)
_violation_scenario(
    "ack-out-of-order",
    "5.3",
    "a talker treats an ack that goes backwards as a protocol violation",
    "VXS-5.1-3",
    "ack 3 followed by ack 1",
    None,
    at=3,
    ack_upto=-1,
)
_violation_scenario(
    "ack-unsent",
    "5.3",
    "a talker treats an ack of a chunk it never sent as a protocol violation",
    "VXS-5.1-3",
    "an ack of a chunk the talker has not sent",
    None,
)
_violation_scenario(
    "malformed-frame",
    "3.1",
    "a talker rejects bytes that are not well-formed CBOR and does not resynchronize",
    ("VXS-3.1-2", "VXS-3.1-7"),
    "a CBOR item with reserved additional information 28",
    bytes.fromhex("a264747970656361636b63736571") + b"\x1c",
    at=1,
)
_violation_scenario(
    "invalid-frame",
    "3.1",
    "a talker rejects a well-formed item that is not a valid frame",
    ("VXS-3.1-4", "VXS-3.1-7"),
    'the item {"type": "ack", "seq": -1} (a negative seq)',
    cbor2.dumps({"type": "ack", "seq": -1}),
)
_violation_scenario(
    "unknown-frame-type",
    "3.1",
    "a talker rejects a frame whose type is not one of the twelve",
    ("VXS-3.1-6", "VXS-3.1-7"),
    'the frame {"type": "nudge", "seq": 1}',
    cbor2.dumps({"type": "nudge", "seq": 1}),
)


# -- lenient encodings ---------------------------------------------------------------


def _uint64(value: int) -> bytes:
    """An unsigned integer with a non-shortest 8-byte head."""
    return b"\x1b" + value.to_bytes(8, "big")


def _indefinite_text(text: str) -> bytes:
    half = len(text) // 2
    return b"\x7f" + cbor2.dumps(text[:half]) + cbor2.dumps(text[half:]) + b"\xff"


_UNKNOWN: Final = cbor2.dumps("x-peer-extension") + cbor2.dumps(
    [1, "two", b"\x03", 4.5, True, None, {"nested": [-1]}]
)


def lenient_opened(msg: str, next_seq: int) -> bytes:
    """opened as an indefinite-length map, keys in reverse order, an unknown key, a text
    string in chunks and a non-shortest integer."""
    return (
        b"\xbf"
        + cbor2.dumps("type")
        + _indefinite_text("opened")
        + cbor2.dumps("state")
        + cbor2.dumps("live")
        + _UNKNOWN
        + cbor2.dumps("next_seq")
        + _uint64(next_seq)
        + cbor2.dumps("msg")
        + cbor2.dumps(msg)
        + b"\xff"
    )


def lenient_ack(seq: int) -> bytes:
    return (
        b"\xa3"
        + cbor2.dumps("seq")
        + b"\x1a"
        + seq.to_bytes(4, "big")
        + _UNKNOWN
        + (cbor2.dumps("type") + cbor2.dumps("ack"))
    )


def lenient_closed(msg: str, chunks: int, duration: int) -> bytes:
    return (
        b"\xa5"
        + _UNKNOWN
        + cbor2.dumps("duration")
        + _uint64(duration)
        + cbor2.dumps("chunks")
        + b"\x19"
        + chunks.to_bytes(2, "big")
        + cbor2.dumps("msg")
        + _indefinite_text(msg)
        + cbor2.dumps("type")
        + cbor2.dumps("closed")
    )


@scenario(
    "lenient-encoding",
    "3.1",
    "a talker accepts any well-formed encoding of a valid frame, with unknown keys",
    kind="talker",
    requirements=("VXS-3.1-10", "VXS-3.1-5", *TALKER_IDS),
    accepts="opened, acks and closed come as indefinite-length maps and strings, keys in "
    "other orders, non-shortest integer heads and an unknown key with values of every "
    "allowed type: the talker uploads the whole message, closes it, and does not upload "
    "it again",
)
async def lenient_encoding(session: object) -> None:
    talk = talk_of(session)
    stream = talk.first
    opening = await talk.accept(stream)
    stream.opened_sent = True
    stream.expected = 0
    await stream.send(lenient_opened(opening.msg, 0))
    ids = ("VXS-3.1-10", "VXS-3.1-5")
    while True:
        item = await talk.read(stream)
        if isinstance(item, Signal):
            fail(
                ids,
                f"the talker stopped ({item.value}) after {len(talk.sent)} chunks, without "
                "close: it did not accept the peer's well-formed frames",
            )
        assert isinstance(item, Received)
        if isinstance(item.frame, Chunk) and item.frame.seq > talk.acked:
            talk.acked = item.frame.seq
            await stream.send(lenient_ack(item.frame.seq))
        elif isinstance(item.frame, Close):
            closed = talk.closed_frame()
            await stream.send(lenient_closed(closed.msg, closed.chunks, closed.duration), end=True)
            break
    await stream.wait_signal(1.0)
    if await talk.retried() is not None:
        fail(ids, "the talker uploaded the message again after closed: it rejected closed")


@scenario(
    "rst-after-complete",
    "10.1",
    "a talker takes RST_STREAM(NO_ERROR) after a complete response as the end of its body",
    kind="talker",
    requirements=("VXS-10-8", *TALKER_IDS),
    accepts="the peer answers close with closed and END_STREAM and at once resets the "
    "stream with NO_ERROR, before the talker's END_STREAM: the talker keeps the response "
    "(the message is closed) and does not upload it again; skipped when the talker ends its "
    "body in the frame that carries close (no reset can follow then)",
)
async def rst_after_complete(session: object) -> None:
    talk = talk_of(session)
    stream = talk.first
    # Each frame is answered before h2 reads the next one: the reset below is decided
    # on the frame that carries close, not on how the network split the bytes.
    stream.lockstep = True
    await talk.accept(stream)
    await talk.opened(stream, 0)
    reset = False
    while True:
        item = await talk.read(stream)
        if isinstance(item, Signal):
            skip(f"the talker stopped ({item.value}) before close: {USAGE}")
        assert isinstance(item, Received)
        if isinstance(item.frame, Chunk):
            await talk.ack(stream, item.frame.seq)
            continue
        # close: answer, end, and reset before h2 reads the talker's next frame.
        if not stream.send_nowait(talk.closed_frame(), end=True):
            await stream.send(talk.closed_frame(), end=True)
        if stream.body_open:
            reset = stream.reset_nowait(0)
        await stream.flush()
        break
    if not reset:
        skip("the talker ended its body with close; no RST_STREAM can follow the response")
    again = await talk.retried()
    if again is not None:
        fail(
            "VXS-10-8",
            "the talker uploaded the message again after closed, END_STREAM and "
            "RST_STREAM(NO_ERROR): it took the reset for a failure",
        )
    note("RST_STREAM(NO_ERROR) sent after closed and END_STREAM, with the body still open")
