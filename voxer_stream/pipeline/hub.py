"""The hub: every live message's in-memory tail, its committer, and its listeners.

Why a tail and cursors instead of a queue per listener: a listener is only a
position (the next seq it needs). Publishing a chunk appends it to the tail and
wakes whoever waits; each listener's task then sends from its own position. A
listener that stops reading blocks only its own task (its transport's send
buffer is the bounded per-listener buffer), so it can never delay the talker or
anyone else (VXS-6.5-1), and it loses nothing: when it reads again its position
is still valid, served from the tail or, once trimmed, from storage (VXS-6.5-2).
The same position makes the stored-to-live handoff exact (VXS-6.2-3): there is
no second copy of a chunk that could be sent twice.

At the live edge a listener whose binding can write without waiting (a
``DirectSink``) does not even wait: it lends its sink to ``LiveMessage.follow``
and ``publish`` writes each new chunk to it on the spot, so a delivery costs one
frame write and no task wake-up. The moment a sink cannot take a chunk at once
(flow control, a full buffer) the listener is detached, still at that chunk's
seq, and its task carries on as above; nothing is skipped or sent twice because
the position is still the only state.

Durability is the hub's too: each live message has one committer task that
appends published chunks to the store in batches and advances ``durable``; the
talker's connection only reads ``durable`` to ack (VXS-5.3-3). Chunks received
are committed even if their talker vanishes a moment later.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import trio

from ..store.base import MessageRecord, Store, StoredChunk
from ..wire import Chunk, ErrorCode, ProtocolError, encode_frame
from .sink import DirectSink

if TYPE_CHECKING:
    from .remote import Relay

log = logging.getLogger(__name__)

#: Messages a thread watcher may be behind before it misses one (``Hub.watch``).
WATCH_BUFFER = 64


@dataclass(eq=False)
class Uploader:
    """The upload stream attached to a live message; a newer one supersedes it."""

    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    superseded: bool = False

    def supersede(self) -> None:
        self.superseded = True
        self.cancel_scope.cancel()


@dataclass(eq=False)
class Follower:
    """A listener at the live edge whose chunks ``publish`` writes (see ``follow``)."""

    cursor: int
    sink: DirectSink
    detached: trio.Event = field(default_factory=trio.Event)


class LiveMessage:
    """A live message: its tail ``tail_start .. next_seq-1`` and its durable count."""

    def __init__(self, record: MessageRecord, *, tail_limit: int) -> None:
        self.record = record
        self.tail: list[StoredChunk] = []
        #: The encoded chunk frame of each tail chunk: encoded once, sent to every listener.
        self.tail_wire: list[bytes] = []
        self.tail_start = record.chunks
        self.next_seq = record.chunks
        self.end_ts = record.duration
        self.durable = record.chunks
        self.closed = False
        self.uploader: Uploader | None = None
        self.last_activity = trio.current_time()
        self.store_failure: BaseException | None = None
        self._tail_limit = tail_limit
        self._changed = trio.Event()
        self._uncommitted: list[StoredChunk] = []
        self._commit_wanted = trio.Event()
        self._followers: list[Follower] = []
        #: Owned by another process (issue 7): fed from the bus (or, if its talker is
        #: connected here, from that upload), committed by the owner, never here.
        self.mirror = False
        #: While its talker is connected to this process with ``serve --redis``: tells
        #: the owner and other processes each chunk frame as it is published
        #: (``remote.Relay``).
        self.announce: Callable[[bytes], None] | None = None
        #: For the owner with ``serve --redis``: told the durable count after each commit.
        self.on_durable: Callable[[int], None] | None = None
        self.committer_scope = trio.CancelScope()
        #: For the owner: the process where the message's talker is connected, if not
        #: this one (a message with a talker is not abandoned, VXS-5.7-3).
        self.remote_talker: str | None = None
        self._role_changed = trio.Event()

    @property
    def id(self) -> str:
        return self.record.id

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def publish(self, chunk: StoredChunk, *, commit: bool = True, relayed: bool = False) -> None:
        """Append the next chunk: live listeners get it now, the committer soon (a
        mirror's chunks are committed by their owner: ``commit=False``). A chunk that
        came from the bus (``relayed``) is not announced again."""
        assert chunk.seq == self.next_seq and not self.closed
        frame = chunk_frame(chunk)
        if self.announce is not None and not relayed:
            self.announce(frame)
        self.tail.append(chunk)
        self.tail_wire.append(frame)
        self.next_seq += 1
        self.end_ts = chunk.end_ts
        self.last_activity = trio.current_time()
        if commit:
            self._uncommitted.append(chunk)
            self._commit_wanted.set()
        else:
            self._trim()
            if len(self.tail) > self._tail_limit and self.uploader is None:
                # A mirror whose owner sends no durable counts (its talker is there, and
                # acked from its own commits): what is older than the tail's minute
                # was committed long ago, and readers find it in the store.
                del self.tail[0]
                del self.tail_wire[0]
                self.tail_start += 1
                self.durable = max(self.durable, self.tail_start)
        if self._followers:
            self._deliver(chunk.seq, frame)
        self._wake()

    def _deliver(self, seq: int, frame: bytes) -> None:
        """Write chunk ``seq`` to every follower whose sink takes it now; detach the rest.
        All writes first, then one flush each: listeners sharing a connection share its
        socket write."""
        refused = False
        for follower in self._followers:
            if follower.cursor == seq and follower.sink.try_send(frame):
                follower.cursor = seq + 1
            else:
                follower.detached.set()
                refused = True
        for follower in self._followers:
            follower.sink.flush()
        if refused:
            self._followers = [f for f in self._followers if not f.detached.is_set()]

    async def follow(self, cursor: int, sink: DirectSink) -> int:
        """Let ``publish`` write this listener's chunks from ``cursor`` (the live edge)
        until its sink refuses one or the message closes; returns the listener's
        cursor then, for its task to carry on from."""
        follower = Follower(cursor, sink)
        self._followers.append(follower)
        try:
            await follower.detached.wait()
        finally:
            if follower in self._followers:
                self._followers.remove(follower)
        return follower.cursor

    def chunk_at(self, seq: int) -> StoredChunk | None:
        """The chunk ``seq`` if it is in the tail."""
        if self.tail_start <= seq < self.next_seq:
            return self.tail[seq - self.tail_start]
        return None

    def tail_from(self, seq: int, limit: int) -> list[bytes]:
        """Up to ``limit`` encoded tail chunks from ``seq`` (in the tail or at its end)."""
        start = seq - self.tail_start
        return self.tail_wire[start : start + limit]

    async def wait_beyond(self, seq: int) -> None:
        """Wait until chunk ``seq`` is published or the message closes."""
        while self.next_seq <= seq and not self.closed:
            await self._changed.wait()

    async def wait_durable(self, count: int) -> None:
        """Wait until ``count`` chunks are durable (or the committer failed)."""
        while self.durable < count and self.store_failure is None:
            await self._changed.wait()

    @property
    def changed(self) -> trio.Event:
        """Set at the next change. Take it *before* an await whose outcome you then
        check, so that a change during that await is not missed."""
        return self._changed

    def role_changed(self) -> None:
        """Its owner or its talker changed here (what the relay's feed depends on)."""
        self._role_changed.set()
        self._role_changed = trio.Event()

    async def wait_role_change(self) -> None:
        await self._role_changed.wait()

    def set_durable(self, count: int) -> None:
        """A mirror learns from the owner (or the store) that ``count`` chunks are
        durable: its talker may be acked for them, its tail may drop them."""
        if count > self.durable:
            self.durable = count
            self._trim()
            self._wake()

    def start_committer(self, store: Store, nursery: trio.Nursery) -> None:
        """This process commits the message from now on (it owns it): first what its
        tail holds beyond ``durable`` (heard from the bus while another owned it)."""
        self.committer_scope = trio.CancelScope()
        self._uncommitted = [chunk for chunk in self.tail if chunk.seq >= self.durable]
        if self._uncommitted:
            self._commit_wanted.set()
        nursery.start_soon(self.run_committer, store)

    def stop_committer(self) -> None:
        """Another process owns the message now: what was not committed is its to do."""
        self.committer_scope.cancel()
        self._uncommitted = []

    def mark_closed(self) -> None:
        self.closed = True
        self.role_changed()
        for follower in self._followers:
            follower.detached.set()
        self._followers = []
        self._wake()

    async def run_committer(self, store: Store) -> None:
        """Append published chunks to the store in batches, in seq order, until closed
        (or, for a message another process took over, until cancelled)."""
        with self.committer_scope:
            await self._commit_until_closed(store)

    async def _commit_until_closed(self, store: Store) -> None:
        while True:
            if not self._uncommitted:
                if self.closed:
                    return
                self._commit_wanted = trio.Event()
                await self._commit_wanted.wait()
                continue
            batch, self._uncommitted = self._uncommitted, []
            try:
                await store.append_chunks(self.id, batch)
            except Exception as exc:
                # The talker gets no ack for these chunks and will re-send them.
                log.exception("store append failed for message %s", self.id)
                self.store_failure = exc
                self._wake()
                return
            self.durable = max(self.durable, batch[-1].seq + 1)
            self._trim()
            self._wake()
            if self.on_durable is not None:
                self.on_durable(self.durable)

    def _trim(self) -> None:
        """Keep at most ``tail_limit`` chunks; only durable ones are dropped."""
        excess = min(len(self.tail) - self._tail_limit, self.durable - self.tail_start)
        if excess > 0:
            del self.tail[:excess]
            del self.tail_wire[:excess]
            self.tail_start += excess


def chunk_frame(chunk: StoredChunk) -> bytes:
    """The wire encoding of a stored chunk (a ``chunk`` frame, VXS-4.2-1)."""
    return encode_frame(Chunk(seq=chunk.seq, ts=chunk.ts, packets=chunk.packets))


class _KeyedLock:
    """One ``trio.Lock`` per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (trio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Hub:
    """Owns the live messages of this process.

    ``get`` and ``close`` hold a per-message lock around their store access, so a
    listener can never attach to a message that a talker is closing at that
    moment and then wait forever for chunks that will not come.
    """

    def __init__(
        self,
        store: Store,
        nursery: trio.Nursery,
        *,
        tail_limit: int = 3000,
        abandon_after: float = 300.0,
    ) -> None:
        self.store = store
        self._nursery = nursery
        self._live: dict[str, LiveMessage] = {}
        self._lock = _KeyedLock()
        self.tail_limit = tail_limit
        self.abandon_after = abandon_after
        #: Set when the server begins a graceful shutdown (VXS-5.6-3).
        self.shutting_down = trio.Event()
        self._watchers: dict[str, list[trio.MemorySendChannel[LiveMessage]]] = {}
        #: Live messages across processes (``serve --redis``), or None alone.
        self.relay: Relay | None = None
        #: Told ``("live", record)`` when a talker starts or resumes a message and
        #: ``("closed", record)`` once it is closed durably: how the service layer
        #: puts audio messages on timelines without the pipeline knowing about them.
        #: It must not block (it queues).
        self.activity: Callable[[str, MessageRecord], None] | None = None
        #: Told when a talker attaches to or leaves a message here (presence).
        self.on_talkers: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._live)

    def peek(self, message_id: str) -> LiveMessage | None:
        return self._live.get(message_id)

    async def get(self, message_id: str) -> tuple[MessageRecord | None, LiveMessage | None]:
        """The message's stored record and, if it is live, its ``LiveMessage``."""
        live = self._live.get(message_id)
        if live is not None:
            if live.mirror and self.relay is not None:
                # Its owner may have closed it, with the end still on its way here: the
                # store says (a new listener must not be told ``live``, VXS-6.2-4).
                record = await self.store.get_message(message_id)
                if record is not None and record.state == "closed":
                    return record, None
            return live.record, live
        async with self._lock(message_id):
            live = self._live.get(message_id)
            if live is not None:
                return live.record, live
            if self.relay is not None:
                # Another process may own it: hold a mirror of it, fed from the bus
                # (``remote.Relay``); it becomes the owner if the ring says so.
                return await self.relay.mirror(message_id)
            record = await self.store.get_message(message_id)
            if record is None or record.state == "closed":
                return record, None
            live = LiveMessage(record, tail_limit=self.tail_limit)
            self._live[message_id] = live
            self._nursery.start_soon(live.run_committer, self.store)
            return record, live

    def adopt(self, live: LiveMessage) -> None:
        """Register a live message made elsewhere in this module (a mirror)."""
        self._live[live.id] = live

    def held(self) -> list[LiveMessage]:
        """Every live message this process holds (owned or mirrored)."""
        return list(self._live.values())

    def lock(self, message_id: str) -> AbstractAsyncContextManager[None]:
        """The per-message lock ``get`` and ``close`` hold (the relay's role changes)."""
        return self._lock(message_id)

    def forget(self, live: LiveMessage) -> None:
        if self._live.get(live.id) is live:
            del self._live[live.id]

    async def attach_talker(self, live: LiveMessage) -> None:
        """A talker's upload is attached to ``live`` here. Alone, nothing to do; with
        ``serve --redis`` the relay announces its chunks, and tells the message's
        owner (the ring's choice, perhaps this process) to commit them."""
        if self.relay is not None:
            await self.relay.attach_talker(live)

    async def close(self, live: LiveMessage) -> None:
        """Commit everything, mark the message closed durably, then tell listeners.
        A message another process owns is closed by its owner, asked by the relay."""
        await live.wait_durable(live.next_seq)
        if live.store_failure is not None:
            raise live.store_failure
        if live.mirror and self.relay is not None:
            await self.relay.close_remote(live)
            return
        async with self._lock(live.id):
            if live.closed:
                return
            await self.store.close_message(live.id, live.next_seq, live.end_ts)
            live.mark_closed()
            self.forget(live)
        if self.relay is not None:
            self.relay.announce_end(live)
        if self.activity is not None:
            closed = replace(
                live.record, state="closed", chunks=live.next_seq, duration=live.end_ts
            )
            self.activity("closed", closed)

    @contextmanager
    def watch(self, thread_id: str) -> Iterator[trio.MemoryReceiveChannel[LiveMessage]]:
        """The live messages that start in ``thread_id`` from now on, as they start
        (``announce``): what a monitoring listener plays. A watcher that falls more than
        ``WATCH_BUFFER`` messages behind misses the later ones rather than holding them."""
        send, receive = trio.open_memory_channel[LiveMessage](WATCH_BUFFER)
        self._watchers.setdefault(thread_id, []).append(send)
        try:
            yield receive
        finally:
            watchers = self._watchers[thread_id]
            watchers.remove(send)
            if not watchers:
                del self._watchers[thread_id]
            send.close()

    def announce(self, live: LiveMessage) -> None:
        """A talker started (or resumed) ``live``: tell the thread's watchers, here and
        (with a relay) on every process."""
        if self.activity is not None:
            self.activity("live", live.record)
        self.tell_watchers(live)
        if self.relay is not None:
            self.relay.announce_start(live)

    def watching(self, thread_id: str) -> bool:
        return thread_id in self._watchers

    def talking(self) -> list[MessageRecord]:
        """The live messages with a talker connected to this process (who speaks)."""
        return [
            live.record
            for live in self._live.values()
            if live.uploader is not None and not live.closed
        ]

    def talkers_changed(self, live: LiveMessage) -> None:
        """A talker attached to or left ``live`` here."""
        live.role_changed()
        if self.on_talkers is not None:
            self.on_talkers()
        if self.relay is not None and live.uploader is None:
            self.relay.talker_left(live)

    def tell_watchers(self, live: LiveMessage) -> None:
        for send in self._watchers.get(live.record.thread_id, ()):
            try:
                send.send_nowait(live)
            except trio.WouldBlock:
                log.warning(
                    "a watcher of thread %s missed message %s", live.record.thread_id, live.id
                )

    async def _hold_stored_live(self) -> None:
        after = ""
        while True:
            page = await self.store.live_messages(after=after, limit=500)
            for message_id in page:
                await self.get(message_id)
            if len(page) < 500:
                return
            after = page[-1]

    async def raise_on_shutdown(self) -> None:
        """For a stream's nursery: fail it with SHUTTING_DOWN when the server stops."""
        await self.shutting_down.wait()
        raise ProtocolError(
            ErrorCode.SHUTTING_DOWN, "the server is shutting down; resume later", "VXS-5.6-3"
        )

    async def run_abandon_watchdog(self) -> None:
        """Close live messages whose talker has been gone too long (VXS-5.7-3): those
        left live when the server last stopped too, counted from now (with a relay,
        the ring's owner of each takes them: ``Relay.rebalance``)."""
        if not math.isfinite(self.abandon_after):
            return
        if self.relay is None:
            await self._hold_stored_live()
        while True:
            await trio.sleep(max(1.0, self.abandon_after / 10))
            now = trio.current_time()
            for live in list(self._live.values()):
                idle = now - live.last_activity
                idle_owner = live.uploader is None and not live.mirror
                if idle_owner and self.relay is not None:
                    idle_owner = not self.relay.talker_elsewhere(live)
                if idle_owner and idle >= self.abandon_after and not live.closed:
                    log.info("closing abandoned message %s after %.0f s", live.id, idle)
                    try:
                        await self.close(live)
                    except Exception:
                        log.exception("could not close abandoned message %s", live.id)
