"""Section 11: the WebSocket binding (optional feature group ``websocket``).

One connection carries one operation: after the token (handshake header, or an ``auth``
frame that wins over it) comes ``open`` or ``listen``, then the same frames as over
HTTP/2, one per binary message, and a close whose code says how it ended (1000, or 4000
plus the registry code right after an error frame). Every case here also reads every
server message through ``net.WebSocket``, which fails on a text message (VXS-11-6) and
on a message that is not exactly one frame (VXS-11-2).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

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
    Opened,
    encode_frame,
)

from ..case import case, expect
from ..context import Context
from ..net import WsReply
from ..spec import code_of
from .errors import expect_error, expect_unseen, ws_answer

SUBPROTOCOL = "voxer-stream.v1"


async def ws_exchange(
    ctx: Context, *frames: Frame | bytes | str, header_token: str | None = None
) -> WsReply:
    """Send ``frames`` on a new WebSocket; every frame up to the server's close."""
    async with ctx.websocket(header_token=header_token) as ws:
        await ws.send(*frames)
        return await ws.frames()


def kinds(frames: Sequence[Frame]) -> list[str]:
    return [type(f).__name__ for f in frames]


def expect_ws_error(reply: WsReply, name: str, requirement: str, what: str) -> Error:
    """The error frame ``name`` last, then a close with 4000 + its code (VXS-11-5)."""
    error = expect_error(
        reply.frames[-1] if reply.frames else None,
        name,
        requirement,
        f"{what}: frames {kinds(reply.frames)}",
    )
    expect(
        reply.close_code == 4000 + code_of(name),
        "VXS-11-5",
        f"{what}: close code {reply.close_code} after {name}, expected {4000 + code_of(name)}",
    )
    return error


async def stored_chunks(ctx: Context, msg: str) -> int | None:
    """The message's stored chunk count (REST), None if it does not exist."""
    reply = await ctx.rest("GET", f"/v1/messages/{msg}", token=ctx.alice.token)
    if reply.status == 404:
        return None
    return int(reply.body["chunks"]) if isinstance(reply.body, dict) else None


@case(
    "11/upgrade",
    "GET /v1/ws upgrades from HTTP/1.1, selecting the subprotocol voxer-stream.v1 if offered",
    requirements=("VXS-11-1",),
    group="websocket",
    accepts="the handshake succeeds offering voxer-stream.v1 (selected), offering another "
    "protocol first and then voxer-stream.v1 (voxer-stream.v1 selected) and offering none "
    "(none selected); each connection then serves a listen: message, chunk 0, end, close 1000",
)
async def upgrade(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 1)
    for offered, selected in (
        ((SUBPROTOCOL,), SUBPROTOCOL),
        (("chat.example", SUBPROTOCOL), SUBPROTOCOL),
        ((), None),
    ):
        async with ctx.websocket(header_token=ctx.bob.token, subprotocols=offered) as ws:
            expect(
                ws.subprotocol == selected,
                "VXS-11-1",
                f"offering {list(offered)} the server selected {ws.subprotocol!r}",
            )
            await ws.send(Listen(msg=msg))
            reply = await ws.frames()
        expect(
            kinds(reply.frames) == ["MessageInfo", "Chunk", "End"] and reply.close_code == 1000,
            "VXS-11-1",
            f"a listen offering {list(offered)}: {kinds(reply.frames)}, close {reply.close_code}",
        )


@case(
    "11/text-message",
    "a text WebSocket message is INVALID_FRAME",
    requirements=("VXS-11-2", "VXS-11-5"),
    group="websocket",
    accepts="a text message holding a valid open, as the first message and in the middle of an "
    "upload: error 102 INVALID_FRAME, close 4102; the chunk acked before stays stored and "
    "nothing of the text is",
)
async def text_message(ctx: Context) -> None:
    thread = await ctx.thread()
    first = await ws_exchange(
        ctx, encode_frame(ctx.open_frame(thread, ctx.msg_id())).hex(), header_token=ctx.alice.token
    )
    expect_ws_error(first, "INVALID_FRAME", "VXS-11-2", "a text message first")
    expect(len(first.frames) == 1, "VXS-11-2", f"frames {kinds(first.frames)} before the error")

    msg = ctx.msg_id()
    async with ctx.websocket(header_token=ctx.alice.token) as ws:
        await ws.send(ctx.open_frame(thread, msg), ctx.chunk(0))
        got = [await ws.frame(), await ws.frame()]
        expect(
            kinds([f for f in got if f]) == ["Opened", "Ack"],
            "VXS-11-2",
            f"the upload before the text message: {got}",
        )
        await ws.send('{"type": "chunk", "seq": 1}')
        reply = await ws.frames()
    expect_ws_error(reply, "INVALID_FRAME", "VXS-11-2", "a text message in an upload")
    expect(await stored_chunks(ctx, msg) == 1, "VXS-11-2", "the stored message changed")


@case(
    "11/malformed-message",
    "an empty, truncated or two-item binary message is MALFORMED_CBOR",
    requirements=("VXS-11-2", "VXS-11-5", "VXS-5.6-2"),
    group="websocket",
    accepts="as the first message (an empty one, an open cut after 10 bytes, an open and a "
    "chunk in one message) and after chunk 0 of an upload (chunks 1 and 2 in one message): "
    "error 100 MALFORMED_CBOR, close 4100; the message keeps its one acked chunk",
)
async def malformed_message(ctx: Context) -> None:
    thread = await ctx.thread()
    opening = encode_frame(ctx.open_frame(thread, ctx.msg_id()))
    for label, data in (
        ("an empty binary message", b""),
        ("an open cut after 10 bytes", opening[:10]),
        ("an open and a chunk in one message", opening + encode_frame(ctx.chunk(0))),
    ):
        reply = await ws_exchange(ctx, data, header_token=ctx.alice.token)
        expect_ws_error(reply, "MALFORMED_CBOR", "VXS-11-2", label)
        expect(len(reply.frames) == 1, "VXS-11-2", f"{label}: {kinds(reply.frames)}")

    msg = ctx.msg_id()
    async with ctx.websocket(header_token=ctx.alice.token) as ws:
        await ws.send(ctx.open_frame(thread, msg), ctx.chunk(0))
        got = [await ws.frame(), await ws.frame()]
        expect(
            kinds([f for f in got if f]) == ["Opened", "Ack"],
            "VXS-11-2",
            f"the upload before the two-item message: {got}",
        )
        await ws.send(encode_frame(ctx.chunk(1)) + encode_frame(ctx.chunk(2)))
        reply = await ws.frames()
    expect_ws_error(reply, "MALFORMED_CBOR", "VXS-11-2", "chunks 1 and 2 in one message")
    stored = await stored_chunks(ctx, msg)
    expect(stored == 1, "VXS-5.6-2", f"{stored} chunks stored after the rejected message")


@case(
    "11/auth",
    "the token comes in the handshake header or an auth frame, and the auth frame wins",
    requirements=("VXS-11-3", "VXS-11-5"),
    group="websocket",
    accepts="a header token alone and an auth frame alone each serve a listen (message, chunk, "
    "end); with both, the auth frame decides: bob's header and an unknown token in the frame "
    "is UNAUTHENTICATED (4200), a garbage header and bob's frame works, bob's header and "
    "carol's frame (she is no participant) is MESSAGE_NOT_FOUND (4301)",
)
async def auth(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 1)
    listen = Listen(msg=msg)
    ok = ["MessageInfo", "Chunk", "End"]
    header = await ws_exchange(ctx, listen, header_token=ctx.bob.token)
    expect(kinds(header.frames) == ok, "VXS-11-3", f"header token: {kinds(header.frames)}")
    frame = await ws_exchange(ctx, Auth(token=ctx.bob.token), listen)
    expect(kinds(frame.frames) == ok, "VXS-11-3", f"auth frame: {kinds(frame.frames)}")

    unknown = Auth(token=secrets.token_urlsafe(32))
    both = await ws_exchange(ctx, unknown, listen, header_token=ctx.bob.token)
    expect_ws_error(both, "UNAUTHENTICATED", "VXS-11-3", "bob's header, an unknown auth frame")
    expect(len(both.frames) == 1, "VXS-11-3", f"frames {kinds(both.frames)}")
    garbage = secrets.token_urlsafe(32)
    rescued = await ws_exchange(ctx, Auth(token=ctx.bob.token), listen, header_token=garbage)
    expect(
        kinds(rescued.frames) == ok,
        "VXS-11-3",
        f"an unknown header token and bob's auth frame: {kinds(rescued.frames)}",
    )
    carol = await ws_exchange(ctx, Auth(token=ctx.carol.token), listen, header_token=ctx.bob.token)
    expect_ws_error(carol, "MESSAGE_NOT_FOUND", "VXS-11-3", "bob's header, carol's auth frame")


@case(
    "11/unauthenticated",
    "a WebSocket operation without a valid token is UNAUTHENTICATED",
    requirements=("VXS-8-1", "VXS-8-3", "VXS-11-3", "VXS-11-5"),
    group="websocket",
    accepts="no header and no auth frame (an open, a listen), an unknown header token, an "
    "unknown auth frame token, and a logged-out token in the header or an auth frame: error "
    "200 UNAUTHENTICATED as the only frame, close 4200; the refused open stores nothing",
)
async def unauthenticated(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 1)
    dave = await ctx.register("dave")
    out = await ctx.rest("DELETE", "/v1/sessions/current", token=dave.token)
    expect(out.status == 204, "VXS-8-3", f"logout: {out.status}")
    new = ctx.msg_id()
    attempts: list[tuple[str, list[Frame], str | None]] = [
        ("an open with no token", [ctx.open_frame(thread, new), ctx.chunk(0)], None),
        ("a listen with no token", [Listen(msg=msg)], None),
        ("an unknown header token", [Listen(msg=msg)], secrets.token_urlsafe(32)),
        ("an unknown auth frame", [Auth(token=secrets.token_urlsafe(32)), Listen(msg=msg)], None),
        ("a logged-out header token", [Listen(msg=msg)], dave.token),
        ("a logged-out auth frame", [Auth(token=dave.token), Listen(msg=msg)], None),
    ]
    for label, frames, header in attempts:
        reply = await ws_exchange(ctx, *frames, header_token=header)
        requirement = "VXS-8-3" if "logged-out" in label else "VXS-8-1"
        expect_ws_error(reply, "UNAUTHENTICATED", requirement, label)
        expect(len(reply.frames) == 1, requirement, f"{label}: {kinds(reply.frames)}")
    expect(await stored_chunks(ctx, new) is None, "VXS-8-1", "the refused open created a message")


@case(
    "11/outsider",
    "a non-participant's upload or listen over WebSocket is answered as for a thread or "
    "message that does not exist",
    requirements=("VXS-8-2", "VXS-11-5"),
    group="websocket",
    accepts="carol (header token or auth frame) listening to a closed and a live message: "
    "error 301 MESSAGE_NOT_FOUND as the only frame, close 4301; opening a new message or "
    "alice's live message in alice's thread: error 300 THREAD_NOT_FOUND as the only frame, "
    "close 4300; each the same answer (frames, code, name, detail but for the ids, close "
    "code) as for an id nobody created; nothing is stored",
)
async def outsider(ctx: Context) -> None:
    thread = await ctx.thread()
    closed = await ctx.talk(thread, 1)
    live = await ctx.talk(thread, 1, close=False)
    new = ctx.msg_id()
    nowhere, other = f"{ctx.prefix}-nothread-{secrets.token_hex(6)}", ctx.msg_id()
    carol = ctx.carol.token
    # (what, frames, header token, error, the same request about ids that do not exist)
    attempts: list[tuple[str, list[Frame], str | None, str, list[Frame]]] = [
        (
            "listen to a closed message",
            [Listen(msg=closed)],
            carol,
            "MESSAGE_NOT_FOUND",
            [Listen(msg=other)],
        ),
        (
            "listen to a live message",
            [Auth(token=carol), Listen(msg=live)],
            None,
            "MESSAGE_NOT_FOUND",
            [Auth(token=carol), Listen(msg=other)],
        ),
        (
            "open a new message",
            [ctx.open_frame(thread, new), ctx.chunk(0)],
            carol,
            "THREAD_NOT_FOUND",
            [ctx.open_frame(nowhere, other), ctx.chunk(0)],
        ),
        (
            "open alice's live message",
            [Auth(token=carol), ctx.open_frame(thread, live), ctx.chunk(1, salt=b"c")],
            None,
            "THREAD_NOT_FOUND",
            [Auth(token=carol), ctx.open_frame(nowhere, other), ctx.chunk(1, salt=b"c")],
        ),
    ]
    hidden = (thread, closed, live, new)
    for label, frames, header, name, unknown_frames in attempts:
        reply = await ws_exchange(ctx, *frames, header_token=header)
        expect_ws_error(reply, name, "VXS-8-2", f"carol's {label}")
        expect(len(reply.frames) == 1, "VXS-8-2", f"carol's {label}: {kinds(reply.frames)}")
        unknown = await ws_exchange(ctx, *unknown_frames, header_token=header)
        expect_unseen(
            ws_answer(reply, *hidden),
            ws_answer(unknown, nowhere, other),
            "VXS-8-2",
            f"carol's {label}",
        )
    expect(await stored_chunks(ctx, new) is None, "VXS-8-2", "carol's refused open was stored")
    expect(await stored_chunks(ctx, live) == 1, "VXS-8-2", "carol's refused open changed alice's")


@case(
    "11/one-operation",
    "a WebSocket connection carries one operation, started by open or listen",
    requirements=("VXS-11-4", "VXS-11-5", "VXS-4.12-1"),
    group="websocket",
    accepts="UNEXPECTED_FRAME (103) and close 4103 for: a first frame (after a header token or "
    "an auth frame) that is chunk, close, opened or a second auth; a listen after an upload's "
    "opened (the acked chunk stays stored); an open during a listen of a live message",
)
async def one_operation(ctx: Context) -> None:
    thread = await ctx.thread()
    live = await ctx.talk(thread, 1, close=False)
    bob = ctx.bob.token
    starts: list[tuple[str, list[Frame], str | None]] = [
        ("a chunk first", [ctx.chunk(0)], bob),
        ("a close first", [Close(chunks=0)], bob),
        ("an opened first", [Opened(msg=live, next_seq=0, state="live")], bob),
        ("a chunk after auth", [Auth(token=bob), ctx.chunk(0)], None),
        ("a second auth", [Auth(token=bob), Auth(token=bob), Listen(msg=live)], None),
    ]
    for label, frames, header in starts:
        reply = await ws_exchange(ctx, *frames, header_token=header)
        requirement = "VXS-4.12-1" if "second auth" in label else "VXS-11-4"
        expect_ws_error(reply, "UNEXPECTED_FRAME", requirement, label)
        expect(len(reply.frames) == 1, requirement, f"{label}: {kinds(reply.frames)}")

    msg = ctx.msg_id()
    async with ctx.websocket(header_token=ctx.alice.token) as ws:
        await ws.send(ctx.open_frame(thread, msg), ctx.chunk(0))
        got = [await ws.frame(), await ws.frame()]
        expect(
            kinds([f for f in got if f]) == ["Opened", "Ack"],
            "VXS-11-4",
            f"the upload before the listen frame: {got}",
        )
        await ws.send(Listen(msg=live))
        reply = await ws.frames()
    expect_ws_error(reply, "UNEXPECTED_FRAME", "VXS-11-4", "a listen after an upload's opened")
    expect(
        not any(isinstance(f, MessageInfo | Chunk) for f in reply.frames),
        "VXS-11-4",
        f"the upload connection started a listen: {kinds(reply.frames)}",
    )
    expect(await stored_chunks(ctx, msg) == 1, "VXS-11-4", "the upload's stored chunk changed")

    async with ctx.websocket(header_token=bob) as ws:
        await ws.send(Listen(msg=live))
        seen = [await ws.frame(), await ws.frame(), await ws.frame()]
        expect(
            kinds([f for f in seen if f]) == ["MessageInfo", "Chunk", "Live"],
            "VXS-11-4",
            f"the listen before the open frame: {seen}",
        )
        await ws.send(ctx.open_frame(thread, ctx.msg_id()))
        reply = await ws.frames()
    expect_ws_error(reply, "UNEXPECTED_FRAME", "VXS-11-4", "an open during a listen")


@case(
    "11/close-codes",
    "the server closes with 1000 after closed or end, with 4000 + code after an error",
    requirements=("VXS-11-5",),
    group="websocket",
    accepts="an upload ending with closed: close 1000; a listen ending with end: close 1000; "
    "an upload refused with SEQUENCE_GAP after opened: the error frame last, close 4400; a "
    "listen of an unknown message: MESSAGE_NOT_FOUND, close 4301",
)
async def close_codes(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    upload = await ws_exchange(
        ctx,
        ctx.open_frame(thread, msg),
        ctx.chunk(0),
        Close(chunks=1),
        header_token=ctx.alice.token,
    )
    expect(
        upload.frames and isinstance(upload.frames[-1], Closed) and upload.close_code == 1000,
        "VXS-11-5",
        f"an upload: {kinds(upload.frames)}, close code {upload.close_code}, expected closed, 1000",
    )
    listen = await ws_exchange(ctx, Listen(msg=msg), header_token=ctx.bob.token)
    expect(
        listen.frames and isinstance(listen.frames[-1], End) and listen.close_code == 1000,
        "VXS-11-5",
        f"a listen: {kinds(listen.frames)}, close code {listen.close_code}, expected end, 1000",
    )
    gap = await ws_exchange(
        ctx,
        ctx.open_frame(thread, ctx.msg_id()),
        ctx.chunk(0),
        ctx.chunk(2),
        header_token=ctx.alice.token,
    )
    error = expect_ws_error(gap, "SEQUENCE_GAP", "VXS-11-5", "chunk 2 after chunk 0")
    expect(error.seq == 2, "VXS-11-5", f"error.seq {error.seq}, expected 2")
    unknown = await ws_exchange(ctx, Listen(msg=ctx.msg_id()), header_token=ctx.bob.token)
    expect_ws_error(unknown, "MESSAGE_NOT_FOUND", "VXS-11-5", "a listen of an unknown message")


@case(
    "11/binary-only",
    "every server frame travels as one binary WebSocket message",
    requirements=("VXS-11-6", "VXS-11-4"),
    group="websocket",
    accepts="a live upload and a listen joined during it, both over WebSocket: only binary "
    "messages, each one frame (opened, ack*, closed; message, chunk*, live, chunk*, end); "
    "the listener gets the talker's chunks byte for byte, and so does a listen over HTTP/2",
)
async def binary_only(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    sent = [ctx.chunk(seq, salt=b"ws") for seq in range(4)]
    async with (
        ctx.websocket(header_token=ctx.alice.token) as talker,
        ctx.websocket(header_token=ctx.bob.token) as listener,
    ):
        await talker.send(ctx.open_frame(thread, msg), *sent[:2])
        upload: list[Frame] = []
        while not any(isinstance(f, Ack) and f.seq == 1 for f in upload):
            frame = await talker.frame()
            expect(frame is not None, "VXS-11-4", f"the upload ended early: {kinds(upload)}")
            assert frame is not None
            upload.append(frame)
        await listener.send(Listen(msg=msg))
        heard: list[Frame] = []
        while not any(isinstance(f, Live) for f in heard):
            frame = await listener.frame()
            expect(frame is not None, "VXS-11-4", f"the listen ended early: {kinds(heard)}")
            assert frame is not None
            heard.append(frame)
        await talker.send(*sent[2:], Close(chunks=4))
        upload += (await talker.frames()).frames
        heard += (await listener.frames()).frames
        texts = talker.text_messages + listener.text_messages
        messages = len(talker.raw) + len(listener.raw)
    expect(texts == 0, "VXS-11-6", f"{texts} text messages")
    expect(
        messages == len(upload) + len(heard),
        "VXS-11-6",
        f"{messages} binary messages for {len(upload) + len(heard)} frames",
    )
    expect(
        isinstance(upload[0], Opened) and isinstance(upload[-1], Closed),
        "VXS-11-4",
        f"the upload gave {kinds(upload)}",
    )
    expect(
        kinds(heard) == ["MessageInfo", "Chunk", "Chunk", "Live", "Chunk", "Chunk", "End"],
        "VXS-11-4",
        f"the listen gave {kinds(heard)}",
    )
    expect(
        [f for f in heard if isinstance(f, Chunk)] == sent,
        "VXS-11-4",
        "the listener's chunks differ from the talker's",
    )
    over_h2 = await ctx.listen_all(ctx.bob.token, msg)
    expect(
        [f for f in over_h2.frames if isinstance(f, Chunk)] == sent,
        "VXS-11-4",
        "a listen over HTTP/2 of the WebSocket upload differs from what was sent",
    )
