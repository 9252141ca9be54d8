"""Section 5: the upload state machine, as a talker sees it over HTTP/2."""

from __future__ import annotations

from voxer_stream.wire import Ack, Close, Closed, Error, Opened

from ..case import case, expect
from ..context import Context


@case(
    "5.2/opened-first",
    "an accepted open is answered by exactly one opened, first, for the same msg",
    requirements=("VXS-4.4-1", "VXS-5.2-2"),
    accepts="status 200; the first frame is opened with msg equal to the open's msg, "
    "state live and next_seq 0 for a new message; no second opened",
)
async def opened_first(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    reply = await ctx.upload_all(ctx.alice.token, [ctx.open_frame(thread, msg), Close(chunks=0)])
    expect(reply.status == 200, "VXS-4.4-1", f"status {reply.status}, expected 200")
    first = reply.frames[0] if reply.frames else None
    expect(isinstance(first, Opened), "VXS-4.4-1", f"first frame {first!r}, expected opened")
    assert isinstance(first, Opened)
    expect(first.msg == msg, "VXS-4.4-1", f"opened.msg {first.msg!r} != {msg!r}")
    expect(first.next_seq == 0, "VXS-5.2-2", f"next_seq {first.next_seq} for a new message")
    expect(
        sum(isinstance(f, Opened) for f in reply.frames) == 1,
        "VXS-4.4-1",
        "more than one opened frame",
    )


@case(
    "5.3/sequence-gap",
    "a chunk whose seq skips one is refused with SEQUENCE_GAP naming its seq",
    requirements=("VXS-5.3-2", "VXS-5.6-1"),
    accepts="after opened and the ack of chunk 0, an error frame with code 400 "
    "SEQUENCE_GAP and seq 2, then the end of the response; nothing after the error",
)
async def sequence_gap(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = ctx.msg_id()
    reply = await ctx.upload_all(
        ctx.alice.token, [ctx.open_frame(thread, msg), ctx.chunk(0), ctx.chunk(2)]
    )
    error = reply.error
    expect(error is not None, "VXS-5.3-2", f"no error frame at the end: {reply.frames}")
    assert error is not None
    expect(error.code == 400, "VXS-5.3-2", f"error {error.code} {error.name}, expected 400")
    expect(error.seq == 2, "VXS-5.3-2", f"error.seq {error.seq}, expected 2")
    acked = [f.seq for f in reply.frames if isinstance(f, Ack)]
    expect(all(s == 0 for s in acked), "VXS-5.3-2", f"acks {acked} name chunks never stored")
    expect(
        not any(isinstance(f, Closed | Error) for f in reply.frames[:-1]),
        "VXS-5.6-1",
        "frames after the error",
    )
