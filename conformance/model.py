"""A stateful model of the protocol (sections 5 and 6): random interleavings, black-box.

``python -m conformance model --server URL`` (or ``run_model``) lets hypothesis drive any
server over HTTP/2 with random programs of talkers and listeners: new messages, chunks
sent with and without waiting for acks, uploads dropped (TCP cut, RST_STREAM, or
END_STREAM without ``close``) then resumed with a new ``open``, takeovers by a second
``open``, closes, listeners joining live or closed messages from the start, a seq, a
media time or the live edge, stalls (a 512-byte receive window, so the server's sender
really blocks), reads again, and hang-ups. A plain in-memory model (each message's
chunks as the talker sent them, its state, what the server has confirmed durable) says
what every listener must have received; each mismatch names the requirement it breaks.

Why a state machine and not more cases: the cases check one behaviour each on a quiet
server; the hand-over from stored to live chunks (VXS-6.2-3), resumes racing with
listeners (VXS-5.2-4, VXS-6.2-1) and slow readers (VXS-6.5-1, VXS-6.5-2) fail only in
interleavings nobody writes by hand, and hypothesis shrinks a failure to a short program.

Where the spec leaves timing open the model accepts every allowed answer: a listener that
joins while chunks are still in flight may start anywhere between what was acknowledged
and what was sent, and ``live`` is required only where the listener provably caught up
on a live message (a ``close`` with ``settle``, and every close of the teardown, first
waits until each reading listener has every chunk). At the teardown every still-live
message is resumed if needed, given the chunks its listeners asked for, and closed;
stalled listeners read again; then each listener must have received exactly ``message``,
its chunks from ``start_seq`` on, at most one ``live`` at the right seq, ``end`` and
END_STREAM (a listener that hung up: a correct prefix of that).

hypothesis rules are synchronous and trio objects cannot cross ``trio.run`` calls, so each
machine runs one trio loop in a background thread for its whole life; rules call into it
with ``trio.from_thread.run``, and listeners and upload readers are tasks of its nursery.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeVar, TypeVarTuple

import trio
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.reporting import with_reporter
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from voxer_stream.client.h2conn import H2ConnectionError, StreamReset
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

from .case import CaseFailed
from .context import CBOR_SEQ_HEADERS, Account, Context, account_arg, opus_packet
from .net import CBOR_SEQ, Exchange, TransportFailure, listen_path, open_exchange
from .spec import requirements

__all__ = [
    "Listener",
    "Message",
    "ModelResult",
    "ModelStats",
    "ProtocolModel",
    "Upload",
    "main",
    "make_machine",
    "run_model",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
Ids = str | tuple[str, ...]
MessageState = Literal["live", "closed"]

#: 20 ms Opus packets (``opus_packet``'s TOC 0x78): 960 ticks each.
PACKET_TICKS: Final = 960
#: A small receive window for listeners (a few chunks), so that a stalled one is real
#: backpressure on the server even on short messages.
LISTEN_WINDOW: Final = 512
MAX_MESSAGES: Final = 4
MAX_LISTENERS: Final = 10
CREATED: Final = 1_700_000_000_000
PAUSE: Final = 0.02
#: Ticks left between chunks: media time is monotonic, not contiguous (2.2).
GAPS: Final = (0, 0, 0, 480, 2400)
#: How a talker loses its upload stream before ``close``.
DETACHES: Final = ("sever", "cancel", "end")
JOINS: Final = ("start", "from_seq", "from_ts", "live_edge")
#: The requirement a start_seq of each kind of listen is checked against.
START_IDS: Final[dict[str, tuple[str, ...]]] = {
    "start": ("VXS-6.1-2", "VXS-4.8-1"),
    "from_seq": ("VXS-6.1-5", "VXS-4.8-1"),
    "from_ts": ("VXS-6.1-3", "VXS-6.1-6"),
    "live_edge": ("VXS-6.1-4", "VXS-4.8-1"),
}
#: Which requirement an error frame breaks when the model sent nothing wrong.
ERROR_BLAME: Final[dict[int, str]] = {
    102: "VXS-4.2-1",
    103: "VXS-5.1-2",
    400: "VXS-5.3-2",
    401: "VXS-5.4-1",
    402: "VXS-5.5-3",
    404: "VXS-5.3-5",
    406: "VXS-2.2-2",
    407: "VXS-5.5-2",
    408: "VXS-5.7-1",
}

PICK = st.integers(min_value=0, max_value=15)
PLAN_ITEM = st.tuples(st.sampled_from(GAPS), st.integers(min_value=1, max_value=3))
PLAN = st.lists(PLAN_ITEM, min_size=1, max_size=5)


def violation(ids: Ids, message: str) -> CaseFailed:
    """A failure naming requirement ids of the spec (checked: a typo is the model's bug)."""
    cited = (ids,) if isinstance(ids, str) else ids
    unknown = [rid for rid in cited if rid not in requirements()]
    if unknown:
        raise ValueError(f"the model cites ids that are not in the spec: {unknown}")
    return CaseFailed(ids, message)


def check(condition: object, ids: Ids, message: str) -> None:
    if not condition:
        raise violation(ids, message)


def describe(frame: Frame | None) -> str:
    if frame is None:
        return "the end of the stream"
    if isinstance(frame, Chunk):
        return f"chunk {frame.seq} (ts {frame.ts}, {len(frame.packets)} packets)"
    if isinstance(frame, Error):
        text = f"error {frame.code} {frame.name}"
        if frame.seq is not None:
            text += f" (seq {frame.seq})"
        return text + (f": {frame.detail}" if frame.detail else "")
    fields = ", ".join(f"{k}={v!r}" for k, v in vars(frame).items())
    return f"{frame.TYPE}({fields})"


def span(first: int, stop: int) -> str:
    return f"chunk {first}" if stop == first + 1 else f"chunks {first}..{stop - 1}"


def chunk_end(chunk: Chunk) -> int:
    return chunk.ts + PACKET_TICKS * len(chunk.packets)


# -- the model's state ---------------------------------------------------------------


@dataclass(eq=False)
class Upload:
    """One upload stream of a message; a resume or a takeover opens a new one."""

    message: Message
    number: int  # 1 for the first upload of the message, 2 after a resume...
    exchange: Exchange
    opened: Opened
    last_ack: int = -1
    #: Why the model ends this stream: a detach, "takeover" or "close".
    ending: str | None = None
    closed: Closed | None = None
    error: Error | None = None
    finished: bool = False  # END_STREAM received
    done: trio.Event = field(default_factory=trio.Event)  # the response was read to its end
    release: trio.Event = field(default_factory=trio.Event)  # the model is done with it
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass(eq=False)
class Message:
    """What the talker sent: the model's truth for every listener of the message."""

    number: int
    id: str
    created: int
    chunks: list[Chunk] = field(default_factory=list)
    state: MessageState = "live"
    upload: Upload | None = None  # None: detached (or closed)
    #: Chunks the server has said are durable (acks, opened.next_seq, closed): a lower
    #: bound of what it holds; ``len(chunks)`` is the upper bound.
    durable: int = 0
    uploads: int = 0

    @property
    def duration(self) -> int:
        return chunk_end(self.chunks[-1]) if self.chunks else 0


@dataclass(eq=False)
class Listener:
    """One listen request on its own connection, read by its own task."""

    number: int
    message: Message
    how: str
    query: dict[str, int | str]
    from_seq: int
    state: MessageState  # the message's state when the listen started
    starts: range  # the start_seq values the spec allows, given what was in flight
    held: int  # chunks the server held for sure when the listen started
    frames: list[Frame] = field(default_factory=list)
    reading: trio.Event = field(default_factory=trio.Event)
    stalled: bool = False
    was_stalled: bool = False
    cancelled: bool = False
    ended: bool = False  # END_STREAM received
    failure: CaseFailed | None = None  # the reader's own finding
    problem: CaseFailed | None = None  # the first mismatch the model noticed
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def start_seq(self) -> int | None:
        first = self.frames[0] if self.frames else None
        return first.start_seq if isinstance(first, MessageInfo) else None

    @property
    def live_seen(self) -> bool:
        return any(isinstance(f, Live) for f in self.frames)

    @property
    def chunks_received(self) -> int:
        return sum(isinstance(f, Chunk) for f in self.frames)


@dataclass
class ModelStats:
    """What the runs exercised, over every example hypothesis ran (shrinking included)."""

    examples: int = 0
    steps: int = 0
    messages: int = 0
    chunks_sent: int = 0
    listeners: int = 0
    chunks_checked: int = 0
    drops: int = 0
    resumes: int = 0
    takeovers: int = 0
    closes: int = 0
    stalls: int = 0
    hang_ups: int = 0
    live_required: int = 0  # listeners that had to get live before a settled close
    #: The first failure any example raised (hypothesis may report flakiness instead).
    first_failure: str | None = None

    def saw(self, exc: BaseException) -> None:
        if self.first_failure is None:
            self.first_failure = "".join(traceback.format_exception_only(exc)).strip()

    def summary(self) -> str:
        return (
            f"{self.examples} programs run, {self.steps} steps: {self.messages} messages, "
            f"{self.chunks_sent} chunks sent, {self.closes} closed; {self.listeners} "
            f"listeners received {self.chunks_checked} checked chunks; {self.drops} drops, "
            f"{self.resumes} resumes, {self.takeovers} takeovers, {self.stalls} stalls, "
            f"{self.hang_ups} hang-ups; {self.live_required} live frames required"
        )


# -- one trio loop per machine -------------------------------------------------------


class _TrioThread:
    """A trio loop in a background thread, serving the rules of one machine."""

    def __init__(self) -> None:
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self.crash: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="conformance-model", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._token is None:
            raise RuntimeError(f"the model's trio loop did not start: {self.crash!r}")

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self.crash = exc
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._started.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    def run(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def run_sync(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        """Cancel every task (their connections close) and wait for the thread."""
        if self._thread.is_alive() and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self.run_sync(self._stop.set)
        self._thread.join(timeout=30)


# -- the machine -----------------------------------------------------------------------


class ProtocolModel(RuleBasedStateMachine):
    """Talkers and listeners of one thread (alice talks, bob listens) on one server.

    Use ``make_machine(url)``; subclasses may override ``received`` (e.g. to show that
    the model catches a server that drops a chunk).
    """

    url: ClassVar[str] = ""
    accounts: ClassVar[dict[str, Account] | None] = None
    timeout: ClassVar[float] = 10.0
    stats: ClassVar[ModelStats | None] = None

    def __init__(self) -> None:
        super().__init__()
        if not self.url:
            raise TypeError("make a machine with make_machine(url)")
        self.messages: list[Message] = []
        self.listeners: list[Listener] = []
        self.violations: list[BaseException] = []
        self.counts = self.stats if self.stats is not None else ModelStats()
        self.step = 0
        self._broken = False
        self._loop = _TrioThread()
        try:
            self._loop.run(self._set_up)
        except BaseException:
            self._shut_down()
            raise
        self.counts.examples += 1

    # -- the loop side: set-up, waiting, reading ------------------------------------

    async def _set_up(self) -> None:
        self._progress = trio.Event()
        self.ctx = Context(url=self.url.rstrip("/"), timeout=self.timeout)
        if self.accounts is not None:
            self.ctx.accounts.update(self.accounts)
        else:
            for role in ("alice", "bob"):
                self.ctx.accounts[role] = await self.ctx.register(role)
        self.thread = await self.ctx.thread(self.ctx.bob)

    def _notify(self) -> None:
        event, self._progress = self._progress, trio.Event()
        event.set()

    async def _wait_for(self, predicate: Callable[[], object], seconds: float) -> bool:
        with trio.move_on_after(seconds):
            while not predicate():
                await self._progress.wait()
            return True
        return bool(predicate())

    def _raise_violations(self) -> None:
        if self.violations:
            raise self.violations[0]

    def received(self, listener: Listener, frames: list[Frame]) -> list[Frame]:
        """The frames a listener just read, as the model records them (a test hook)."""
        return frames

    async def _upload_task(
        self, msg: Message, *, task_status: trio.TaskStatus[Upload] = trio.TASK_STATUS_IGNORED
    ) -> None:
        upload: Upload | None = None
        frame = Open(msg=msg.id, thread=self.thread, codec="opus", created=msg.created)
        try:
            async with open_exchange(
                self.ctx.url,
                "POST",
                "/v1/upload",
                token=self.ctx.alice.token,
                headers=CBOR_SEQ_HEADERS,
                patience=self.timeout,
            ) as exchange:
                await exchange.send(frame)
                status = await exchange.status()
                if status != 200:
                    got = await exchange.frames()
                    raise violation(
                        ("VXS-4.4-1", "VXS-10-3"),
                        f"message {msg.number}: open answered {status}: "
                        f"{', '.join(map(describe, got))}",
                    )
                first = await exchange.frame()
                check(
                    isinstance(first, Opened),
                    "VXS-4.4-1",
                    f"message {msg.number}: the upload response starts with "
                    f"{describe(first)}, not opened",
                )
                assert isinstance(first, Opened)
                msg.uploads += 1
                upload = Upload(msg, msg.uploads, exchange, first)
                task_status.started(upload)
                with upload.scope:
                    try:
                        await self._read_upload(upload)
                    finally:
                        upload.done.set()
                        self._notify()
                    # Closing the connection now could race with a send of the rule
                    # that made the server end the response (close, END_STREAM).
                    await upload.release.wait()
        except Exception as exc:
            if upload is None:
                raise  # before started(): the rule that opened the upload gets it
            self.violations.append(exc)
        finally:
            if upload is not None:
                upload.done.set()
                self._notify()

    async def _read_upload(self, upload: Upload) -> None:
        msg = upload.message
        name = f"message {msg.number}, upload {upload.number}"
        while True:
            try:
                frame = await upload.exchange.frame(within=24 * 3600)
            except TransportFailure as exc:
                if upload.ending in ("sever", "cancel"):
                    return
                raise violation("VXS-10-3", f"{name}: the upload response was cut: {exc}") from None
            if frame is None:
                upload.finished = True
                check(
                    upload.ending in ("end", "takeover")
                    or upload.closed is not None
                    or upload.error is not None,
                    ("VXS-10-3", "VXS-5.1-4"),
                    f"{name}: the server ended the upload response with neither closed nor "
                    "an error while the talker was still sending",
                )
                return
            check(upload.error is None, "VXS-5.6-1", f"{name}: {describe(frame)} after an error")
            check(
                upload.closed is None,
                ("VXS-5.5-4", "VXS-10-7"),
                f"{name}: {describe(frame)} after closed",
            )
            if isinstance(frame, Ack):
                check(
                    frame.seq > upload.last_ack,
                    "VXS-5.3-4",
                    f"{name}: ack {frame.seq} after ack {upload.last_ack} on the same stream "
                    "(acks must be strictly increasing)",
                )
                check(
                    frame.seq < len(msg.chunks),
                    "VXS-5.3-4",
                    f"{name}: ack {frame.seq}, but only chunks up to {len(msg.chunks) - 1} "
                    "were ever sent",
                )
                upload.last_ack = frame.seq
                msg.durable = max(msg.durable, frame.seq + 1)
            elif isinstance(frame, Closed):
                check(
                    upload.ending == "close",
                    "VXS-5.5-4",
                    f"{name}: {describe(frame)} although the talker sent no close",
                )
                upload.closed = frame
            elif isinstance(frame, Error):
                upload.error = frame
                if not (upload.ending == "takeover" and frame.code == 408):
                    raise violation(
                        ERROR_BLAME.get(frame.code, "VXS-1-1"),
                        f"{name}: the server refused a valid upload with {describe(frame)} "
                        f"({len(msg.chunks)} chunks sent, {msg.durable} acknowledged)",
                    )
            elif isinstance(frame, Opened):
                raise violation("VXS-4.4-1", f"{name}: a second opened: {describe(frame)}")
            else:
                raise violation("VXS-10-3", f"{name}: {describe(frame)} on an upload response")
            self._notify()

    async def _listen_task(
        self, listener: Listener, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        path = listen_path(listener.message.id, **listener.query)
        try:
            async with open_exchange(
                self.ctx.url,
                "GET",
                path,
                token=self.ctx.bob.token,
                end_stream=True,
                patience=self.timeout,
                window=LISTEN_WINDOW,
            ) as exchange:
                task_status.started()
                started = True
                with listener.scope:
                    await self._read_listen(listener, exchange)
        except CaseFailed as exc:
            if not started:
                raise
            listener.failure = listener.failure or exc
        except Exception as exc:
            if not started:
                raise
            self.violations.append(exc)
        finally:
            listener.done.set()
            self._notify()

    async def _read_listen(self, listener: Listener, exchange: Exchange) -> None:
        name = f"listener {listener.number} (message {listener.message.number})"
        try:
            status = await exchange.status()
            content_type = exchange.headers.get("content-type", "")
            if status != 200 or content_type.split(";")[0].strip() != CBOR_SEQ:
                got = await exchange.frames()
                raise violation(
                    (*START_IDS[listener.how], "VXS-10-6"),
                    f"{name}: the listen {listener.query or '(no offset)'} was answered "
                    f"{status} {content_type!r}: {', '.join(map(describe, got))}",
                )
            while True:
                await listener.reading.wait()
                data = await exchange.stream.receive()
                if data is None:
                    exchange.reader.finish()
                    listener.ended = True
                    return
                frames = exchange.reader.feed(data)
                if frames:
                    listener.frames.extend(self.received(listener, frames))
                    self._notify()
        except (StreamReset, H2ConnectionError) as exc:
            if not listener.cancelled:
                listener.failure = violation(
                    ("VXS-6.2-1", "VXS-10-7"), f"{name}: the listen stream was cut: {exc}"
                )
        except TransportFailure as exc:
            listener.failure = violation("VXS-10-6", f"{name}: {exc}")
        except CaseFailed as exc:
            listener.failure = exc

    # -- the checks ---------------------------------------------------------------------

    def _check_listener(self, listener: Listener, *, final: bool) -> None:
        """What ``listener`` got so far is a prefix of what the spec says (all of it if
        ``final``). Needs no server state: only the model's."""
        if listener.failure is not None:
            raise listener.failure
        msg = listener.message
        how = f"{listener.how} {listener.query}" if listener.query else listener.how
        name = f"listener {listener.number} (message {msg.number}, {how})"
        frames = list(listener.frames)
        if not frames:
            check(not final and not listener.ended, "VXS-6.2-2", f"{name}: no message frame")
            return
        first = frames[0]
        check(
            isinstance(first, MessageInfo),
            "VXS-6.2-2",
            f"{name}: the first frame is {describe(first)}, not message",
        )
        assert isinstance(first, MessageInfo)
        expected = (msg.id, self.thread, self.ctx.alice.id, "opus", msg.created, listener.state)
        got = (first.msg, first.thread, first.sender, first.codec, first.created, first.state)
        check(
            got == expected,
            "VXS-4.8-1",
            f"{name}: message frame (msg, thread, sender, codec, created, state) = {got}, "
            f"expected {expected}",
        )
        check(
            first.start_seq in listener.starts,
            START_IDS[listener.how],
            f"{name}: start_seq {first.start_seq}, expected "
            + (
                f"{listener.starts.start}"
                if len(listener.starts) == 1
                else f"{listener.starts.start}..{listener.starts.stop - 1}"
            )
            + f" (the message had {len(msg.chunks)} chunks sent, {listener.held} durable, "
            f"state {listener.state})",
        )
        nxt = first.start_seq
        live: Live | None = None
        end: End | None = None
        for frame in frames[1:]:
            check(end is None, ("VXS-6.3-2",), f"{name}: {describe(frame)} after end")
            if isinstance(frame, Chunk):
                if frame.seq != nxt:
                    what = "dropped" if frame.seq > nxt else "doubled or reordered"
                    raise violation(
                        ("VXS-6.2-1", "VXS-6.2-3", "VXS-6.5-2")
                        if listener.was_stalled
                        else ("VXS-6.2-1", "VXS-6.2-3"),
                        f"{name}: chunk {frame.seq} arrived when {nxt} was next "
                        f"(a chunk {what}; received seqs "
                        f"{[f.seq for f in frames if isinstance(f, Chunk)]})",
                    )
                check(
                    frame.seq < len(msg.chunks),
                    "VXS-6.2-1",
                    f"{name}: {describe(frame)}, a chunk the talker never sent",
                )
                check(
                    frame == msg.chunks[frame.seq],
                    ("VXS-4.2-1", "VXS-7-4"),
                    f"{name}: {describe(frame)} differs from what the talker sent "
                    f"({describe(msg.chunks[frame.seq])}); packets must be forwarded byte "
                    "for byte",
                )
                nxt += 1
            elif isinstance(frame, Live):
                check(live is None, "VXS-6.2-4", f"{name}: a second live frame")
                check(
                    listener.state == "live",
                    "VXS-6.2-4",
                    f"{name}: {describe(frame)} on a message that was closed when the listen "
                    "started",
                )
                check(
                    frame.seq <= nxt,
                    ("VXS-6.2-1", "VXS-4.9-1"),
                    f"{name}: live.seq {frame.seq} after chunk {nxt - 1}: "
                    f"{span(nxt, frame.seq)} dropped (or live.seq is wrong)",
                )
                check(
                    frame.seq == nxt,
                    "VXS-4.9-1",
                    f"{name}: live.seq {frame.seq}, but the next chunk it gets is {nxt}",
                )
                check(
                    frame.seq >= listener.held,
                    "VXS-6.2-4",
                    f"{name}: live at seq {frame.seq} before it was sent every chunk the "
                    f"server held (at least {listener.held} when the listen started)",
                )
                live = frame
            elif isinstance(frame, End):
                check(
                    msg.state == "closed",
                    "VXS-6.3-1",
                    f"{name}: {describe(frame)} for a message that is still live",
                )
                check(
                    (frame.chunks, frame.duration) == (len(msg.chunks), msg.duration),
                    ("VXS-4.10-1", "VXS-6.3-1"),
                    f"{name}: {describe(frame)}, expected chunks {len(msg.chunks)} and "
                    f"duration {msg.duration}",
                )
                check(
                    nxt >= len(msg.chunks),
                    ("VXS-6.2-1", "VXS-6.3-1"),
                    f"{name}: end after chunk {nxt - 1}: {span(nxt, len(msg.chunks))} "
                    "never arrived",
                )
                end = frame
            elif isinstance(frame, MessageInfo):
                raise violation("VXS-6.2-2", f"{name}: a second message frame")
            elif isinstance(frame, Error):
                raise violation(
                    ("VXS-6.2-1", "VXS-6.5-2") if listener.was_stalled else "VXS-6.2-1",
                    f"{name}: {describe(frame)} in the middle of the listen "
                    f"(after {nxt - first.start_seq} chunks)",
                )
            else:
                raise violation("VXS-10-6", f"{name}: {describe(frame)} on a listen stream")
        check(
            not listener.ended or end is not None,
            ("VXS-6.3-1", "VXS-10-7"),
            f"{name}: the stream ended without end (after {describe(frames[-1])})",
        )
        if final:
            check(end is not None, "VXS-6.3-1", f"{name}: no end frame")
            check(listener.ended, ("VXS-6.3-2", "VXS-10-7"), f"{name}: no END_STREAM after end")

    def _watch(self, listener: Listener) -> None:
        """Note (not raise) the first mismatch of a listener's frames so far.

        When a listener's frames go wrong depends on the server's timing; raising at
        once would end the program at a different step on each replay, which hypothesis
        takes for a flaky test. The teardown raises what was noted, always at the same
        point of the program."""
        if listener.problem is not None:
            return
        try:
            self._check_listener(listener, final=False)
        except CaseFailed as exc:
            listener.problem = violation(
                exc.requirements, f"{exc.message} [noticed after step {self.step}]"
            )

    def _check_now(self) -> None:
        self._raise_violations()
        for listener in self.listeners:
            self._watch(listener)

    # -- the loop side of the rules -------------------------------------------------------

    async def _open_upload(self, msg: Message) -> Upload:
        upload: Upload = await self._loop.nursery.start(self._upload_task, msg)
        opened = upload.opened
        name = f"message {msg.number}"
        check(opened.msg == msg.id, "VXS-4.4-1", f"{name}: {describe(opened)} names another msg")
        check(
            opened.state == "live",
            ("VXS-2.1-2", "VXS-4.4-1"),
            f"{name}: {describe(opened)} for a message that was never closed",
        )
        check(
            opened.next_seq >= msg.durable,
            ("VXS-5.2-2", "VXS-5.3-3"),
            f"{name}: {describe(opened)}, but chunks 0..{msg.durable - 1} were acknowledged "
            "as durable",
        )
        check(
            opened.next_seq <= len(msg.chunks),
            ("VXS-5.2-2", "VXS-5.3-4"),
            f"{name}: {describe(opened)}, but only {len(msg.chunks)} chunks were ever sent",
        )
        msg.durable = max(msg.durable, opened.next_seq)
        return upload

    async def _new_message(self, plan: Sequence[tuple[int, int]]) -> None:
        number = len(self.messages)
        msg = Message(number=number, id=self.ctx.msg_id(), created=CREATED + number)
        msg.upload = await self._open_upload(msg)
        self.messages.append(msg)
        if plan:
            await self._send(msg, plan, wait=False)

    async def _send(self, msg: Message, plan: Sequence[tuple[int, int]], wait: bool) -> None:
        upload = msg.upload
        assert upload is not None
        ts = msg.duration
        salt = f"m{msg.number}".encode()
        new: list[Chunk] = []
        for gap, packets in plan:
            seq = len(msg.chunks) + len(new)
            ts += gap
            packet_list = tuple(opus_packet(seq * 100 + i, salt) for i in range(packets))
            new.append(Chunk(seq=seq, ts=ts, packets=packet_list))
            ts += packets * PACKET_TICKS
        # The model knows of a chunk before the server can: acks are checked against it.
        msg.chunks.extend(new)
        await upload.exchange.send(*new)
        if wait:
            await self._until_durable(msg, len(msg.chunks))

    async def _until_durable(self, msg: Message, count: int) -> None:
        upload = msg.upload
        assert upload is not None
        await self._wait_for(
            lambda: msg.durable >= count or self.violations or upload.done.is_set(),
            self.timeout,
        )
        self._raise_violations()
        if msg.durable < count:
            stalled = [x.number for x in self.listeners if x.stalled and not x.cancelled]
            raise violation(
                ("VXS-4.5-1", "VXS-6.5-1") if stalled else "VXS-4.5-1",
                f"message {msg.number}: no ack of chunk {count - 1} within {self.timeout:g} s "
                f"(acknowledged: {msg.durable})"
                + (f" while listeners {stalled} were not reading" if stalled else ""),
            )

    async def _detach(self, msg: Message, how: str) -> None:
        upload = msg.upload
        assert upload is not None
        msg.upload = None
        upload.ending = how
        if how == "sever":
            # No RST_STREAM, no GOAWAY: the TCP connection just goes away.
            await upload.exchange.conn.abort()
        elif how == "cancel":
            upload.scope.cancel()  # open_exchange resets the stream, closes the connection
        else:
            await upload.exchange.end()
        await self._wait_for(upload.done.is_set, self.timeout)
        upload.release.set()
        self._raise_violations()
        check(
            upload.done.is_set(),
            "VXS-5.1-4",
            f"message {msg.number}: the request body ended without close, but the server "
            f"did not end its side within {self.timeout:g} s",
        )

    async def _resume(self, msg: Message, plan: Sequence[tuple[int, int]] = ()) -> None:
        upload = await self._open_upload(msg)
        msg.upload = upload
        # VXS-5.2-4: every chunk not known durable, from next_seq on, in seq order,
        # then new ones.
        await upload.exchange.send(*msg.chunks[upload.opened.next_seq :])
        if plan:
            await self._send(msg, plan, wait=False)

    async def _take_over(self, msg: Message, plan: Sequence[tuple[int, int]]) -> None:
        old = msg.upload
        assert old is not None
        old.ending = "takeover"
        await self._resume(msg, plan)
        await self._wait_for(old.done.is_set, self.timeout)
        old.release.set()
        self._raise_violations()
        check(
            old.done.is_set() and old.error is not None and old.error.code == 408,
            "VXS-5.7-1",
            f"message {msg.number}: after a second open the earlier upload stream "
            + (
                f"ended with {describe(old.error)}"
                if old.done.is_set()
                else f"was not ended within {self.timeout:g} s"
            )
            + ", expected error 408 SUPERSEDED",
        )

    async def _settle(self, msg: Message) -> None:
        """Wait until every reading listener of ``msg`` caught up; each must get ``live``."""
        count = len(msg.chunks)
        await self._until_durable(msg, count)
        for listener in self.listeners:
            start = listener.start_seq
            if (
                listener.message is not msg
                or listener.cancelled
                or listener.stalled
                or listener.state != "live"
                or start is None
                or start > count
            ):
                continue
            if start == count and start > listener.held:
                # It asked for a chunk beyond those held when it joined, and that chunk
                # has not arrived yet. VXS-6.2-4 reads both ways here: "every chunk it
                # holds" is sent (none is due to it), yet it "gets live only once it has
                # reached the newest chunk", which may mean: once it received one.
                continue
            self.counts.live_required += 1
            await self._wait_for(
                lambda x=listener: x.live_seen or x.done.is_set(),  # type: ignore[misc]
                self.timeout,
            )
            self._watch(listener)
            if listener.live_seen or listener.problem is not None:
                continue  # a problem is reported by the teardown
            name = f"listener {listener.number} (message {msg.number})"
            got = start + listener.chunks_received
            stalled = [x.number for x in self.listeners if x.stalled and not x.cancelled]
            check(
                got >= count,
                ("VXS-6.2-5", "VXS-6.5-1") if stalled else "VXS-6.2-5",
                f"{name}: only chunks up to {got - 1} of the {count} acknowledged arrived "
                f"within {self.timeout:g} s"
                + (f" (listeners {stalled} were not reading)" if stalled else ""),
            )
            raise violation(
                "VXS-6.2-4",
                f"{name}: it has every chunk the server holds of the live message (up to "
                f"{count - 1}) but no live frame came within {self.timeout:g} s",
            )

    async def _close(self, msg: Message, settle: bool) -> None:
        upload = msg.upload
        assert upload is not None
        if settle:
            await self._settle(msg)
        count = len(msg.chunks)
        upload.ending = "close"
        await upload.exchange.send(Close(chunks=count))
        await self._wait_for(upload.done.is_set, self.timeout)
        upload.release.set()
        self._raise_violations()
        name = f"message {msg.number}"
        check(
            upload.closed is not None,
            "VXS-5.5-4",
            f"{name}: no closed within {self.timeout:g} s after close({count})",
        )
        assert upload.closed is not None
        check(
            upload.done.is_set(),
            "VXS-10-7",
            f"{name}: no END_STREAM within {self.timeout:g} s after closed",
        )
        closed = upload.closed
        check(
            (closed.msg, closed.chunks, closed.duration) == (msg.id, count, msg.duration),
            ("VXS-4.6-1", "VXS-5.5-4"),
            f"{name}: {describe(closed)}, expected chunks {count} and duration {msg.duration}",
        )
        msg.state = "closed"
        msg.upload = None
        msg.durable = count

    async def _join(self, msg: Message, how: str, where: int) -> None:
        sent = len(msg.chunks)
        low = sent if msg.state == "closed" else msg.durable
        query: dict[str, int | str] = {}
        from_seq = 0
        if how == "start":
            starts = range(0, 1)
        elif how == "from_seq":
            # On a live message from_seq may lie beyond what was sent: it waits (6.1-5);
            # the teardown sends that far before it closes the message.
            from_seq = where % ((sent if msg.state == "closed" else sent + 2) + 1)
            query["from_seq"] = from_seq
            starts = range(from_seq, from_seq + 1)
        elif how == "from_ts":
            from_ts = where % (msg.duration + 3 * PACKET_TICKS + 1)
            query["from_ts"] = from_ts
            first = next((c.seq for c in msg.chunks if chunk_end(c) > from_ts), sent)
            starts = range(min(first, low), min(first, sent) + 1)
        else:
            query["live_edge"] = "true" if where % 2 else 1
            starts = range(low, sent + 1)
        listener = Listener(
            number=len(self.listeners),
            message=msg,
            how=how,
            query=query,
            from_seq=from_seq,
            state=msg.state,
            starts=starts,
            held=low,
        )
        listener.reading.set()
        self.listeners.append(listener)
        await self._loop.nursery.start(self._listen_task, listener)
        await self._wait_for(lambda: listener.frames or listener.done.is_set(), self.timeout)
        if not listener.frames:
            if listener.failure is not None:
                raise listener.failure
            raise violation(
                "VXS-6.2-2",
                f"listener {listener.number}: no message frame within {self.timeout:g} s",
            )
        self._watch(listener)

    async def _hang_up(self, listener: Listener) -> None:
        listener.cancelled = True
        listener.scope.cancel()  # open_exchange sends RST_STREAM CANCEL
        with trio.fail_after(self.timeout):
            await listener.done.wait()

    async def _finish(self) -> None:
        """Close what is open, let everyone read, then hold every listener to the model."""
        self._check_now()
        for listener in self.listeners:
            if listener.problem is not None:
                raise listener.problem
        for listener in self.listeners:
            if listener.stalled and not listener.cancelled:
                listener.stalled = False
                listener.reading.set()
        for msg in self.messages:
            if msg.state != "live":
                continue
            if msg.upload is None:
                await self._resume(msg)
            need = max((x.from_seq for x in self.listeners if x.message is msg), default=0)
            if need > len(msg.chunks):
                await self._send(msg, [(0, 1)] * (need - len(msg.chunks)), wait=False)
            # Settled: every listener of a live message must have had its live frame.
            await self._close(msg, settle=True)
            self.counts.closes += 1
        for listener in self.listeners:
            if listener.cancelled:
                self._check_listener(listener, final=False)
                self.counts.chunks_checked += listener.chunks_received
                continue
            await self._wait_for(listener.done.is_set, self.timeout)
            self._raise_violations()
            self._check_listener(listener, final=False)
            msg = listener.message
            check(
                listener.done.is_set(),
                ("VXS-6.3-1", "VXS-6.5-2") if listener.was_stalled else "VXS-6.3-1",
                f"listener {listener.number} (message {msg.number}): the listen did not end "
                f"within {self.timeout:g} s of the close (it got "
                f"{listener.chunks_received} chunks, last frame "
                f"{describe(listener.frames[-1] if listener.frames else None)})",
            )
            self._check_listener(listener, final=True)
            self.counts.chunks_checked += listener.chunks_received

    # -- the rules -------------------------------------------------------------------

    def _do(self, fn: Callable[[*Ts], Awaitable[None]], *args: *Ts) -> None:
        self.counts.steps += 1
        self.step += 1
        try:
            self._loop.run(fn, *args)
        except BaseException as exc:
            self._broken = True
            # A reader may have seen the server go wrong before this rule tripped on it.
            if self.violations and self.violations[0] is not exc:
                self.counts.saw(self.violations[0])
                raise self.violations[0] from exc
            self.counts.saw(exc)
            raise

    def _attached(self) -> list[Message]:
        return [m for m in self.messages if m.state == "live" and m.upload is not None]

    def _detached(self) -> list[Message]:
        return [m for m in self.messages if m.state == "live" and m.upload is None]

    def _reading(self) -> list[Listener]:
        return [x for x in self.listeners if not x.cancelled and not x.stalled]

    def _stalled(self) -> list[Listener]:
        return [x for x in self.listeners if not x.cancelled and x.stalled]

    def _active(self) -> list[Listener]:
        return [x for x in self.listeners if not x.cancelled]

    @rule()
    def pause(self) -> None:
        """Let in-flight chunks and acks move (and keeps some rule always possible)."""
        self._do(trio.sleep, PAUSE)

    @precondition(lambda self: len(self.messages) < MAX_MESSAGES)
    @rule(plan=st.lists(PLAN_ITEM, max_size=5))
    def new_message(self, plan: list[tuple[int, int]]) -> None:
        self._do(self._new_message, plan)
        self.counts.messages += 1
        self.counts.chunks_sent += len(plan)

    @precondition(lambda self: bool(self._attached()))
    @rule(pick=PICK, plan=PLAN, wait=st.booleans())
    def send(self, pick: int, plan: list[tuple[int, int]], wait: bool) -> None:
        found = self._attached()
        self._do(self._send, found[pick % len(found)], plan, wait)
        self.counts.chunks_sent += len(plan)

    @precondition(lambda self: bool(self._attached()))
    @rule(pick=PICK, how=st.sampled_from(DETACHES))
    def drop(self, pick: int, how: str) -> None:
        found = self._attached()
        self._do(self._detach, found[pick % len(found)], how)
        self.counts.drops += 1

    @precondition(lambda self: bool(self._detached()))
    @rule(pick=PICK, plan=st.lists(PLAN_ITEM, max_size=3))
    def resume(self, pick: int, plan: list[tuple[int, int]]) -> None:
        found = self._detached()
        self._do(self._resume, found[pick % len(found)], plan)
        self.counts.resumes += 1
        self.counts.chunks_sent += len(plan)

    @precondition(lambda self: bool(self._attached()))
    @rule(pick=PICK, plan=st.lists(PLAN_ITEM, max_size=3))
    def take_over(self, pick: int, plan: list[tuple[int, int]]) -> None:
        found = self._attached()
        self._do(self._take_over, found[pick % len(found)], plan)
        self.counts.takeovers += 1
        self.counts.chunks_sent += len(plan)

    @precondition(lambda self: bool(self._attached()))
    @rule(pick=PICK, settle=st.booleans())
    def close(self, pick: int, settle: bool) -> None:
        found = self._attached()
        self._do(self._close, found[pick % len(found)], settle)
        self.counts.closes += 1

    @precondition(lambda self: bool(self.messages) and len(self.listeners) < MAX_LISTENERS)
    @rule(pick=PICK, how=st.sampled_from(JOINS), where=st.integers(0, 1 << 16))
    def join(self, pick: int, how: str, where: int) -> None:
        self._do(self._join, self.messages[pick % len(self.messages)], how, where)
        self.counts.listeners += 1

    @precondition(lambda self: bool(self._reading()))
    @rule(pick=PICK)
    def stall(self, pick: int) -> None:
        found = self._reading()
        listener = found[pick % len(found)]

        def stop() -> None:
            listener.stalled = listener.was_stalled = True
            listener.reading = trio.Event()

        self._loop.run_sync(stop)
        self.counts.stalls += 1

    @precondition(lambda self: bool(self._stalled()))
    @rule(pick=PICK)
    def read_again(self, pick: int) -> None:
        found = self._stalled()
        listener = found[pick % len(found)]

        def go() -> None:
            listener.stalled = False
            listener.reading.set()

        self._loop.run_sync(go)

    # At most half the listeners hang up, so that most are checked to their end.
    @precondition(lambda self: len(self._active()) > len(self.listeners) // 2)
    @rule(pick=PICK)
    def hang_up(self, pick: int) -> None:
        found = self._active()
        self._do(self._hang_up, found[pick % len(found)])
        self.counts.hang_ups += 1

    @invariant()
    def on_track(self) -> None:
        """Acks, uploads and every listener so far agree with the model (cheap: no I/O)."""
        try:
            self._loop.run_sync(self._check_now)
        except BaseException as exc:
            self._broken = True
            self.counts.saw(exc)
            raise

    def teardown(self) -> None:
        try:
            if not self._broken:
                self._loop.run(self._finish)
        except BaseException as exc:
            self.counts.saw(exc)
            raise
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._loop.run(ctx.aclose)
        self._loop.close()
        if self._loop.crash is not None:
            raise RuntimeError("the model's trio loop failed") from self._loop.crash


def make_machine(
    url: str,
    *,
    accounts: dict[str, Account] | None = None,
    timeout: float = 10.0,
    stats: ModelStats | None = None,
    base: type[ProtocolModel] = ProtocolModel,
) -> type[ProtocolModel]:
    """A state machine class for the server at ``url``.

    ``accounts`` (``{"alice": ..., "bob": ...}``) are used by every example; without them
    each example registers its own. ``base`` may be a subclass of ``ProtocolModel``.
    """

    class Model(base):  # type: ignore[valid-type,misc]
        pass

    Model.url = url
    Model.accounts = accounts
    Model.timeout = timeout
    Model.stats = stats
    return Model


# -- running it ----------------------------------------------------------------------


@dataclass
class ModelResult:
    ok: bool
    #: On failure: hypothesis' minimal failing program and the error naming the requirement.
    report: str
    stats: ModelStats
    seconds: float
    error: BaseException | None = None


async def _register(url: str, patience: float, given: Sequence[tuple[str, str]]) -> dict[str, Any]:
    ctx = Context(url=url.rstrip("/"), timeout=patience)
    try:
        for role, credentials in zip(("alice", "bob"), [*given, None, None], strict=False):
            if credentials is None:
                ctx.accounts[role] = await ctx.register(role)
            else:
                ctx.accounts[role] = await ctx.login(*credentials)
        return dict(ctx.accounts)
    finally:
        await ctx.aclose()


def run_model(
    url: str,
    *,
    examples: int = 20,
    steps: int = 30,
    seed: int | None = None,
    timeout: float = 10.0,
    accounts: Sequence[tuple[str, str]] = (),
    base: type[ProtocolModel] = ProtocolModel,
    shrink: bool = True,
) -> ModelResult:
    """Run ``examples`` random programs of up to ``steps`` rules against ``url``.

    ``accounts`` are (username, password) pairs for alice and bob; without them two are
    registered. ``seed`` makes the programs reproducible (the server's timing still
    varies). Must not be called from a running trio loop.
    """
    stats = ModelStats()
    started = time.monotonic()
    machine = make_machine(
        url,
        accounts=trio.run(_register, url, timeout, accounts),
        timeout=timeout,
        stats=stats,
        base=base,
    )
    if seed is not None:
        machine = hypothesis_seed(seed)(machine)
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    config = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=False,
    )
    lines: list[str] = []
    error: BaseException | None = None
    with with_reporter(lambda value: lines.append(str(value))):
        try:
            run_state_machine_as_test(machine, settings=config)
        except Exception as exc:
            error = exc
    report = "\n".join(lines)
    if error is not None:
        report += "\n" + "".join(traceback.format_exception_only(error)).rstrip()
        if not isinstance(error, CaseFailed) and stats.first_failure:
            # hypothesis may report a flaky replay (the server's timing differs from
            # run to run): the failure the model saw first is the finding.
            report += f"\nfirst failure the model saw: {stats.first_failure}"
    return ModelResult(error is None, report, stats, time.monotonic() - started, error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance model",
        description="Drive a server with random interleavings of talkers and listeners "
        "(hypothesis) and compare what every listener got with a model of the protocol.",
    )
    parser.add_argument("--server", required=True, help="the server's base URL")
    parser.add_argument("--examples", type=int, default=20, help="programs to run")
    parser.add_argument("--steps", type=int, default=30, help="rules per program, at most")
    parser.add_argument("--seed", type=int, help="reproduce the programs of this seed")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    parser.add_argument(
        "--account",
        type=account_arg,
        action="append",
        default=[],
        metavar="USER:PASS",
        help="use existing accounts (alice, then bob) instead of registering new ones",
    )
    parser.add_argument("--no-shrink", action="store_true", help="report the first failure")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 32)
    print(
        f"voxer-stream protocol model: {args.server}, {args.examples} examples x "
        f"{args.steps} steps, seed {seed}"
    )
    sys.stdout.flush()
    try:
        result = run_model(
            args.server,
            examples=args.examples,
            steps=args.steps,
            seed=seed,
            timeout=args.timeout,
            accounts=args.account,
            shrink=not args.no_shrink,
        )
    except TransportFailure as exc:
        print(f"ERROR: cannot set up accounts: {exc}")
        return 1
    if not result.ok:
        print(result.report)
    verdict = "PASS" if result.ok else "FAIL"
    print(f"{verdict}: {result.stats.summary()} ({result.seconds:.1f} s)")
    if not result.ok:
        print(f"reproduce: python -m conformance model --server {args.server} --seed {seed}")
    return 0 if result.ok else 1
