"""Section 9: the error registry, and the checks of an error every other group reuses.

Every error a server reports, in a REST body or an ``error`` frame, must be a (code,
name) pair of the registry, and wherever a binding reports it with an HTTP status (the
REST surface, a streaming request refused before its response started) that status is
the registry's too. The helpers below check all three at once, so a server that swaps a
name, a code or a status fails whichever case provoked the error.

VXS-9-2 and VXS-9-3 are client requirements (the peer mode checks clients).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import cbor2

from voxer_stream.wire import Chunk, Close, Error, Frame, Opened

from ..case import CaseFailed, case, expect, fail
from ..context import Context, RestReply
from ..net import Reply, WsReply
from ..spec import code_of, registry

__all__ = [
    "expect_error",
    "expect_refusal",
    "expect_rest_error",
    "expect_stream_error",
    "expect_unseen",
    "rest_answer",
    "status_of",
    "stream_answer",
    "ws_answer",
]

CBOR_SEQ: Final = "application/cbor-seq"
#: A chunk whose only packet announces 65536 bytes: FRAME_TOO_LARGE at once (VXS-3.2-1).
TOO_LARGE: Final = bytes.fromhex(
    "a4 62 7473 00 63 736571 00 64 74797065 65 6368756e6b 67 7061636b657473 81 5a 00010000"
)


def status_of(name: str) -> int:
    """The registry's HTTP status of the error ``name``."""
    return registry()[code_of(name)].http_status


def expect_error(frame: Frame | None, name: str, requirement: str, what: str) -> Error:
    """``frame`` is the error frame ``name`` (its registry code and name)."""
    expect(
        isinstance(frame, Error),
        requirement,
        f"{what}: got {frame!r}, expected an error frame {code_of(name)} {name}",
    )
    assert isinstance(frame, Error)
    expect(
        frame.code == code_of(name) and frame.name == name,
        requirement,
        f"{what}: error {frame.code} {frame.name}, expected {code_of(name)} {name}",
    )
    return frame


def expect_rest_error(reply: RestReply, name: str, requirement: str, what: str) -> None:
    """A REST error: the registry's HTTP status and a JSON body ``{"error": {...}}``.

    A request that was not refused at all, or refused with another error, breaks
    ``requirement``; a refusal of the wrong shape or status breaks VXS-8-5 (which the
    calling case must cite).
    """
    shown = reply.body if reply.body is not None else reply.content[:200]
    expected = f"expected {status_of(name)} with {code_of(name)} {name}"
    expect(reply.status >= 400, requirement, f"{what}: HTTP {reply.status} {shown!r}, {expected}")
    content_type = reply.headers.get("content-type", "")
    expect(
        content_type.startswith("application/json"),
        "VXS-8-5",
        f"{what}: HTTP {reply.status} with a body of type {content_type!r}, "
        "expected application/json",
    )
    error = reply.error
    expect(
        error is not None,
        "VXS-8-5",
        f"{what}: HTTP {reply.status} {shown!r} is not {{'error': {{...}}}}",
    )
    assert error is not None
    code, err_name, detail = error.get("code"), error.get("name"), error.get("detail")
    expect(
        type(code) is int and isinstance(err_name, str),
        "VXS-8-5",
        f"{what}: error code {code!r} and name {err_name!r} are not an integer and a string",
    )
    entry = registry().get(code) if isinstance(code, int) else None
    if entry is None or entry.name != err_name:
        fail("VXS-9-1", f"{what}: REST error {code} {err_name!r} is not a pair of the registry")
    expect(
        detail is None or isinstance(detail, str),
        "VXS-8-5",
        f"{what}: error detail {detail!r} is not a string",
    )
    expect(err_name == name, requirement, f"{what}: HTTP {reply.status} {err_name}, {expected}")
    expect(
        reply.status == status_of(name),
        "VXS-8-5",
        f"{what}: {name} answered with HTTP {reply.status}, the registry says {status_of(name)}",
    )


def expect_refusal(reply: Reply, name: str, requirement: str, what: str) -> Error:
    """A streaming request refused before its response started (VXS-10-4).

    The registry's HTTP status, ``application/cbor-seq`` and a body of exactly one
    error frame. No refusal, or another error, breaks ``requirement``; a refusal of the
    wrong shape or status breaks VXS-10-4 (which the calling case must cite).
    """
    frames = ", ".join(type(f).__name__ for f in reply.frames) or "no frame"
    error = expect_error(reply.error, name, requirement, f"{what}: HTTP {reply.status} ({frames})")
    expect(
        reply.status == status_of(name),
        "VXS-10-4",
        f"{what}: HTTP {reply.status} ({frames}), expected {status_of(name)} with {name}",
    )
    expect(
        (reply.content_type or "").split(";")[0].strip() == CBOR_SEQ,
        "VXS-10-4",
        f"{what}: content-type {reply.content_type!r}, expected {CBOR_SEQ}",
    )
    expect(
        len(reply.raw) == 1,
        "VXS-10-4",
        f"{what}: a body of {len(reply.raw)} items ({frames}), expected exactly one error frame",
    )
    return error


def expect_stream_error(reply: Reply, name: str, requirement: str, what: str) -> Error:
    """An error found after the response started: 200, then the error frame last."""
    expect(reply.status == 200, requirement, f"{what}: HTTP {reply.status}, expected 200")
    return expect_error(reply.error, name, requirement, what)


# -- VXS-8-2: what cannot be seen does not exist ----------------------------------------
#
# A thread or message the account may not see must be answered exactly as one that does
# not exist, so that an outsider learns nothing, not even that the id is taken. The
# suite compares the two answers as a whole: status, frames, code, name, the detail
# with the id masked, and (WebSocket) the close code.

Answer = tuple[object, ...]


def _masked(detail: object, ids: Sequence[str]) -> object:
    if not isinstance(detail, str):
        return detail
    for each in ids:
        detail = detail.replace(each, "<id>")
    return detail


def rest_answer(reply: RestReply, *ids: str) -> Answer:
    """What a REST answer tells: status, error code, name and detail (``ids`` masked)."""
    error = reply.error or {}
    shown = error.get("detail") if error else reply.content[:200]
    return (reply.status, error.get("code"), error.get("name"), _masked(shown, ids))


def _frames_answer(frames: Sequence[Frame], ids: Sequence[str]) -> Answer:
    last = frames[-1] if frames else None
    error = last if isinstance(last, Error) else None
    return (
        tuple(f.TYPE for f in frames),
        error.code if error else None,
        error.name if error else None,
        _masked(error.detail, ids) if error else None,
    )


def stream_answer(reply: Reply, *ids: str) -> Answer:
    """What an HTTP/2 (or WHIP/WHEP) streaming answer tells, ``ids`` masked."""
    return (reply.status, *_frames_answer(reply.frames, ids))


def ws_answer(reply: WsReply, *ids: str) -> Answer:
    """What a WebSocket answer tells: its frames, the error's fields and the close code."""
    return (*_frames_answer(reply.frames, ids), reply.close_code)


def expect_unseen(answer: Answer, unknown: Answer, requirement: str, what: str) -> None:
    """``answer`` (about an id the account cannot see) is the one an unknown id gets."""
    expect(
        answer == unknown,
        requirement,
        f"{what}: answered {answer}, but an id that does not exist is answered {unknown}: "
        "the difference tells that the id exists",
    )


@case(
    "9/every-error",
    "every error the server reports is a pair of the registry, with the registry's HTTP status",
    requirements=("VXS-9-1", "VXS-8-5", "VXS-10-4"),
    accepts="for each provokable code: the exact code and name; REST errors and streaming "
    "requests refused before the response with the registry's HTTP status (one error frame); "
    "errors after opened as the last frame of a 200 response. INTERNAL_ERROR, SHUTTING_DOWN "
    "and IDLE_TIMEOUT cannot be provoked and are not checked; TOO_MANY_SESSIONS needs the "
    "server's limit and is checked by 12/session-limit; RATE_LIMITED locks an account out for "
    "15 minutes and is checked by 8/login-rate-limit, on accounts of its own",
)
async def every_error(ctx: Context) -> None:
    # Every mismatch is collected, so that one run shows every code a server gets wrong.
    problems: list[CaseFailed] = []
    seen: set[str] = set()

    def check(name: str, verify: Callable[[], object]) -> None:
        seen.add(name)
        try:
            verify()
        except CaseFailed as exc:
            problems.append(exc)

    async def rest(name: str, what: str, method: str, path: str, **kw: Any) -> None:
        reply = await ctx.rest(method, path, **kw)
        check(name, lambda: expect_rest_error(reply, name, "VXS-9-1", f"REST {what}"))

    async def refused(name: str, what: str, frames: list[Frame | bytes], **kw: Any) -> None:
        reply = await ctx.upload_all(kw.get("token", alice.token), frames)
        check(name, lambda: expect_refusal(reply, name, "VXS-9-1", f"upload {what}"))

    def in_stream(name: str, what: str, reply: Reply) -> None:
        def verify() -> None:
            first = reply.frames[0] if reply.frames else None
            expect(
                isinstance(first, Opened),
                "VXS-9-1",
                f"upload {what}: HTTP {reply.status} {reply.frames}, expected opened first",
            )
            expect_stream_error(reply, name, "VXS-9-1", f"upload {what}")

        check(name, verify)

    alice, bob, carol = ctx.alice, ctx.bob, ctx.carol
    thread = await ctx.thread()
    other_thread = await ctx.thread()
    managed = await ctx.thread()
    listening = await ctx.listen_only_thread()
    closed_msg = await ctx.talk(thread, 1)
    live_msg = await ctx.talk(thread, 1, close=False)
    unrecallable = await ctx.talk(thread, 1, close=False)
    opening = ctx.open_frame(thread, ctx.msg_id())

    # -- REST -----------------------------------------------------------------------
    await rest(
        "INVALID_REQUEST",
        "registration with a body that is not JSON",
        "POST",
        "/v1/accounts",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    await rest("UNAUTHENTICATED", "GET /v1/accounts/me without a token", "GET", "/v1/accounts/me")
    await rest(
        "FORBIDDEN",
        "a member (not an admin) adds a participant",
        "POST",
        f"/v1/threads/{managed}/participants",
        token=bob.token,
        json={"usernames": [carol.username]},
    )
    await rest(
        "THREAD_NOT_FOUND",
        "an outsider reads a thread",
        "GET",
        f"/v1/threads/{thread}",
        token=carol.token,
    )
    await rest(
        "INVALID_CREDENTIALS",
        "login with a wrong password",
        "POST",
        "/v1/sessions",
        json={"username": alice.username, "password": alice.password + "x"},
    )
    await rest(
        "USERNAME_TAKEN",
        "registration of a taken username",
        "POST",
        "/v1/accounts",
        json={"username": alice.username, "password": "another password"},
    )
    await rest(
        "THREAD_NOT_FOUND",
        "an unknown thread",
        "GET",
        f"/v1/threads/{ctx.msg_id()}",
        token=alice.token,
    )
    await rest(
        "MESSAGE_NOT_FOUND",
        "an unknown message",
        "GET",
        f"/v1/messages/{ctx.msg_id()}",
        token=alice.token,
    )
    await rest("NOT_FOUND", "an unknown path", "GET", "/v1/no-such-path", token=alice.token)
    await rest(
        "MESSAGE_LIVE",
        "the sender recalls a live message",
        "DELETE",
        f"/v1/messages/{unrecallable}",
        token=alice.token,
    )

    # -- streams refused before the response started ----------------------------------
    await refused("MALFORMED_CBOR", "of a break code", [b"\xff"])
    await refused("FRAME_TOO_LARGE", "of a frame announcing a 65536-byte packet", [TOO_LARGE])
    await refused("INVALID_FRAME", "of a frame of type 'nope'", [cbor2.dumps({"type": "nope"})])
    await refused("UNEXPECTED_FRAME", "starting with a chunk", [ctx.chunk(0)])
    await refused("UNAUTHENTICATED", "without a token", [opening, Close(chunks=0)], token=None)
    await refused(
        "THREAD_NOT_FOUND", "by an outsider", [opening, Close(chunks=0)], token=carol.token
    )
    await refused(
        "FORBIDDEN",
        "by a listen-only participant",
        [ctx.open_frame(listening, ctx.msg_id()), Close(chunks=0)],
        token=bob.token,
    )
    await refused(
        "THREAD_NOT_FOUND", "into an unknown thread", [ctx.open_frame(ctx.msg_id(), ctx.msg_id())]
    )
    await refused(
        "MESSAGE_CONFLICT",
        "opening a message in another thread",
        [ctx.open_frame(other_thread, closed_msg)],
    )
    await refused(
        "UNSUPPORTED_CODEC",
        "opening with codec 'speex'",
        [ctx.open_frame(thread, ctx.msg_id(), codec="speex")],
    )
    unknown = await ctx.listen_all(alice.token, ctx.msg_id())
    check(
        "MESSAGE_NOT_FOUND",
        lambda: expect_refusal(unknown, "MESSAGE_NOT_FOUND", "VXS-9-1", "listen to a new id"),
    )
    too_fast = await ctx.listen_all(alice.token, closed_msg, speed=100)
    check(
        "INVALID_LISTEN",
        lambda: expect_refusal(too_fast, "INVALID_LISTEN", "VXS-9-1", "listen at speed 100"),
    )

    # -- streams, after opened ------------------------------------------------------
    def fresh(*more: Frame) -> list[Frame]:
        return [ctx.open_frame(thread, ctx.msg_id()), ctx.chunk(0), *more]

    async def upload(*frames: Frame) -> Reply:
        return await ctx.upload_all(alice.token, frames)

    in_stream("SEQUENCE_GAP", "chunk 2 after chunk 0", await upload(*fresh(ctx.chunk(2))))
    in_stream(
        "CHUNK_CONFLICT",
        "re-sending chunk 0 with other packets",
        await upload(ctx.open_frame(thread, live_msg), ctx.chunk(0, salt=b"x")),
    )
    in_stream(
        "MESSAGE_CLOSED",
        "chunk 1 of a closed message",
        await upload(ctx.open_frame(thread, closed_msg), ctx.chunk(1)),
    )
    bad_opus = Chunk(seq=1, ts=960, packets=(b"\x79\x00",))  # code 1, even length (R3)
    in_stream("INVALID_OPUS", "a code-1 packet of even length", await upload(*fresh(bad_opus)))
    regress = Chunk(seq=1, ts=100, packets=ctx.chunk(1).packets)
    in_stream("TIMESTAMP_REGRESSION", "chunk 1 at ts 100", await upload(*fresh(regress)))
    in_stream("CLOSE_MISMATCH", "close of 3 chunks after 1", await upload(*fresh(Close(chunks=3))))

    taken = ctx.msg_id()
    async with ctx.upload(alice.token) as first:
        await first.send(ctx.open_frame(thread, taken))
        await ctx.wait_acked(first, -1)
        async with ctx.upload(alice.token) as second:
            await second.send(ctx.open_frame(thread, taken))
            await ctx.wait_acked(second, -1)
            rest_of_first = await first.frames()
            check(
                "SUPERSEDED",
                lambda: expect_error(
                    rest_of_first[-1] if rest_of_first else None,
                    "SUPERSEDED",
                    "VXS-9-1",
                    "the earlier upload of a message another upload took over",
                ),
            )

    unprovoked = {entry.name for entry in registry().values()} - seen
    expect(
        unprovoked
        == {"INTERNAL_ERROR", "SHUTTING_DOWN", "IDLE_TIMEOUT", "TOO_MANY_SESSIONS", "RATE_LIMITED"},
        "VXS-9-1",
        f"suite bug: codes not provoked {sorted(unprovoked)}",
    )
    if problems:
        ids = tuple(dict.fromkeys(rid for p in problems for rid in p.requirements))
        fail(ids, f"{len(problems)} error(s) wrong: " + " | ".join(p.message for p in problems))
