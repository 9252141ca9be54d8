"""Live messages across server processes (``serve --redis``, issue 7).

**The owner** of a live message is the process the ring names for its id (consistent
hashing over the live members, ``bus.Ring``; the talker's process when it is alone). It
holds the message's tail, commits its chunks and closes it; nobody else writes them.
Every other process that has a talker or listeners for the message holds a **mirror**:
a ``LiveMessage`` with the same tail, fed from the bus, that the reader and every
binding use unchanged. All of it goes over one channel per message, ``live:<id>``:

* **Chunks** (the ``chunk`` frame of the wire) come from the process the talker is
  connected to (its *ingress*). It validates them, publishes them to its own mirror at
  once (its listeners do not wait for a round trip) and announces them on the channel.
  The owner commits what it hears, in seq order, and answers every commit with a
  **durable** count, which the ingress acks the talker from (VXS-5.3-3 across
  processes) and mirrors trim their tails by.
* **Owner** messages say who owns the message and from which seq it needs chunks: an
  ingress re-announces what it holds from there. That one mechanism covers a new owner
  (it subscribed after some chunks went by), an owner whose subscription fell behind
  and a gap (a chunk arrived ahead of the next one it needs).
* **Close** asks the owner to close the message with its count; the owner commits the
  rest, closes it durably and announces an ``end`` frame (the final count), on which
  every mirror finishes, the ingress's talker is told ``closed``.
* A mirror that is not the ingress fills a gap from the store (once the owner commits
  it), and polls the store if the bus fails it: slower, never wrong.

How ownership moves: an ingress asks the ring's owner to take the message (on
``voxer:own:<member>``) when its talker opens it, when the ring changes, and when its
acks stall. When the ring changes, or every ``REAP_PERIOD``, each process gives up the
messages the ring gives to another (after committing what it heard) and takes those it
is given, **including messages the store says are live that no process holds** (their
owner died with them): the new owner closes them once abandoned (VXS-5.7-3). A talker
that reconnects elsewhere moves only the ingress (``voxer:takeover`` supersedes the old
upload), never the owner. Nothing is ever sent twice: a mirror, like a listener, is only
a position; a re-announced chunk below it is ignored.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import AsyncIterable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

import trio

from ..bus import Bus, follow_json
from ..store.base import MessageRecord
from ..wire import Chunk, End, ErrorCode, ProtocolError, decode_frame, encode_frame
from .hub import Hub, LiveMessage
from .ingest import validate_chunk

if TYPE_CHECKING:
    from ..bus import Membership

log = logging.getLogger(__name__)

TAKEOVER_CHANNEL: Final = "voxer:takeover"
#: A talker started a message (what a thread's monitors play, VXS-12-9).
STARTED_CHANNEL: Final = "voxer:started"
#: How often a mirror without its bus looks at the store, and waits for a missing chunk.
POLL: Final = 0.05
#: An ingress whose durable count has not moved for this long asks for an owner again.
STALL: Final = 1.0
#: How often each process looks for messages it should own or give up, besides at
#: every change of the ring (the reaper of messages left live by a dead process).
REAP_PERIOD: Final = 10.0
#: How long a close waits for its owner before the talker is told to resume later.
CLOSE_WAIT: Final = 30.0
#: The shortest interval between two "send me chunks from n" of one owner.
REQUEST_INTERVAL: Final = 0.2
#: Ids read from the store per page when looking for live messages.
REAP_PAGE: Final = 500


def live_channel(message_id: str) -> str:
    return f"live:{message_id}"


def own_channel(member: str) -> str:
    return f"voxer:own:{member}"


def control(kind: str, **fields: Any) -> bytes:
    """A control message on ``live:<id>``: JSON, so never confused with a wire frame
    (a CBOR map, whose first byte is never ``{``)."""
    return json.dumps({"t": kind, **fields}, separators=(",", ":")).encode()


class Relay:
    def __init__(
        self,
        hub: Hub,
        bus: Bus,
        nursery: trio.Nursery,
        membership: Membership | None = None,
        *,
        member: str = "",
    ) -> None:
        self.hub = hub
        self.bus = bus
        self.membership = membership
        self.member = membership.member if membership is not None else member or uuid.uuid4().hex
        self._nursery = nursery
        self._feeds: dict[str, trio.CancelScope] = {}
        self._closing: set[str] = set()
        self._requested: dict[str, float] = {}

    def owner_of(self, message_id: str) -> str:
        """The member the ring names for the message (this one while it knows no ring)."""
        if self.membership is None:
            return self.member
        return self.membership.owner(message_id) or self.member

    # -- the talker's side (the ingress) ------------------------------------------------

    async def attach_talker(self, live: LiveMessage) -> None:
        """A talker opened ``live`` here: announce its chunks, supersede its upload on
        any other process, and make sure the message has an owner."""
        channel = live_channel(live.id)
        live.announce = lambda frame: self.bus.publish(channel, frame)
        self.bus.publish(
            TAKEOVER_CHANNEL, json.dumps({"msg": live.id, "from": self.member}).encode()
        )
        await self._ensure_owner(live)
        if live.mirror:
            # The talker is told to go on from what is durable (VXS-5.2-2), never less
            # than it was acked for on another process: the store's count. A mirror
            # that has not heard all of those yet takes them from the store first.
            record = await self.hub.store.get_message(live.id)
            if record is not None:
                live.set_durable(record.chunks)
            await self._fill(live, live.durable)
            self._tell_talker(live)
        self._nursery.start_soon(self._watch_acks, live, live.uploader)

    def _tell_talker(self, live: LiveMessage) -> None:
        """Tell the owner whether this process has the message's talker."""
        talking = 1 if live.uploader is not None else 0
        self.bus.publish(live_channel(live.id), control("talker", by=self.member, n=talking))

    def talker_left(self, live: LiveMessage) -> None:
        if live.mirror and not live.closed:
            self._tell_talker(live)

    def talker_elsewhere(self, live: LiveMessage) -> bool:
        """Whether another live process has the message's talker (as it said)."""
        members = self.membership.ring.members if self.membership is not None else ()
        return live.remote_talker is not None and live.remote_talker in members

    async def _ensure_owner(self, live: LiveMessage) -> None:
        owner = self.owner_of(live.id)
        if owner == self.member:
            await self._promote(live)
        elif not live.mirror:
            await self._release(live, owner)
        else:
            self.bus.publish(own_channel(owner), json.dumps({"msg": live.id}).encode())

    async def _watch_acks(self, live: LiveMessage, uploader: object) -> None:
        """While this process's talker waits for acks, an owner that went quiet (it
        died, or never heard of the message) is asked for again."""
        last = live.durable
        while not live.closed and live.uploader is uploader:
            await trio.sleep(STALL)
            if live.mirror and live.durable == last and live.next_seq > live.durable:
                log.info("message %s: no commit for %.1f s, asking its owner", live.id, STALL)
                await self._ensure_owner(live)
            last = live.durable

    async def close_remote(self, live: LiveMessage) -> None:
        """Ask the owner to close the message (its talker sent ``close`` here); return
        once it is closed, as told by the owner's ``end``."""
        request = control("close", n=live.next_seq, end=live.end_ts)
        with trio.move_on_after(CLOSE_WAIT):
            while not live.closed:
                self.bus.publish(live_channel(live.id), request)
                with trio.move_on_after(STALL):
                    while not live.closed:
                        await live.changed.wait()
                if not live.closed:
                    await self._ensure_owner(live)
                    if not live.mirror:  # it is ours now
                        await self.hub.close(live)
        if not live.closed:
            raise ProtocolError(
                ErrorCode.INTERNAL_ERROR, "the message's owner did not close it; resume later"
            )

    def _reannounce(self, live: LiveMessage, start: int) -> None:
        """Send the owner the chunks it lacks, from ``start``, as the tail holds them."""
        if start < live.tail_start:
            log.warning("message %s: chunk %d is no longer in the tail", live.id, start)
            start = live.tail_start
        channel = live_channel(live.id)
        for frame in live.tail_from(start, live.next_seq - start):
            self.bus.publish(channel, frame)

    # -- the owner's side ----------------------------------------------------------------

    async def _promote(self, live: LiveMessage) -> None:
        """This process owns ``live`` from now on: commit from what the store holds."""
        async with self.hub.lock(live.id):
            if not live.mirror or live.closed:
                return
            record = await self.hub.store.get_message(live.id)
            if record is None or record.state == "closed":
                if record is not None:
                    self._finish(live, record.chunks, record.duration)
                return
            # What the store holds is the owner's to serve too: a mirror that lagged
            # takes it from there, so the owner never asks for chunks below its count.
            await self._fill(live, record.chunks)
            log.info("message %s: owned here from chunk %d", live.id, record.chunks)
            live.mirror = False
            live.set_durable(record.chunks)
            live.on_durable = lambda count: self._tell_durable(live, count)
            live.last_activity = trio.current_time()
            live.start_committer(self.hub.store, self._nursery)
            live.role_changed()
            self._ask_from(live, force=True)

    def _tell_durable(self, live: LiveMessage, count: int) -> None:
        """After a commit: the talker's process acks from this, mirrors trim by it. An
        owner whose talker is connected here acks it itself, and says nothing."""
        if live.uploader is None:
            self.bus.publish(live_channel(live.id), control("durable", n=count))

    async def _release(self, live: LiveMessage, owner: str) -> None:
        """The ring gives ``live`` to ``owner``: commit what was heard, then mirror it."""
        async with self.hub.lock(live.id):
            if live.mirror or live.closed:
                return
            with trio.move_on_after(2 * STALL):
                await live.wait_durable(live.next_seq)
            if live.closed:
                return
            log.info("message %s: handed to %s", live.id, owner)
            live.stop_committer()
            live.on_durable = None
            live.mirror = True
            live.role_changed()
        self.bus.publish(own_channel(owner), json.dumps({"msg": live.id}).encode())

    def _ask_from(self, live: LiveMessage, *, force: bool = False) -> None:
        """Tell the ingress to send chunks from the next one this owner needs."""
        now = trio.current_time()
        if force or now - self._requested.get(live.id, -math.inf) >= REQUEST_INTERVAL:
            self._requested[live.id] = now
            message = control("owner", by=self.member, n=live.next_seq)
            self.bus.publish(live_channel(live.id), message)

    async def _close_for_ingress(self, live: LiveMessage, count: int, end_ts: int) -> None:
        """The ingress asked to close at ``count`` chunks: once they are all here."""
        try:
            while live.next_seq < count and not live.closed and not live.mirror:
                with trio.move_on_after(STALL / 2):
                    await live.wait_beyond(count - 1)
                if live.next_seq < count:
                    self._ask_from(live)
            if live.closed:
                end = End(chunks=live.next_seq, duration=live.end_ts)
                self.bus.publish(live_channel(live.id), encode_frame(end))
            elif not live.mirror:
                live.end_ts = max(live.end_ts, end_ts)
                await self.hub.close(live)
        except Exception:
            log.exception("could not close message %s", live.id)
        finally:
            self._closing.discard(live.id)

    def announce_end(self, live: LiveMessage) -> None:
        """The owner closed ``live`` durably: every mirror finishes."""
        end = encode_frame(End(chunks=live.next_seq, duration=live.end_ts))
        self.bus.publish(live_channel(live.id), end)
        self._drop(live.id)

    async def _adopt(self, message_id: str) -> None:
        """Own a message this process does not hold (asked to, or found by the reaper)."""
        record, live = await self.hub.get(message_id)
        if live is None:
            if record is not None:  # closed: an ingress waiting on it learns it is
                end = End(chunks=record.chunks, duration=record.duration)
                self.bus.publish(live_channel(message_id), encode_frame(end))
            return
        if live.mirror:
            await self._promote(live)
        else:
            self._ask_from(live, force=True)

    # -- the process's loops ---------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hear_takeovers)
            nursery.start_soon(self._hear_requests)
            nursery.start_soon(self._hear_starts)
            nursery.start_soon(self._rebalance_loop)

    async def _hear_takeovers(self) -> None:
        """A talker of a message this process had the upload of moved elsewhere."""
        async with aclosing(follow_json(self.bus, TAKEOVER_CHANNEL)) as takeovers:
            async for message in takeovers:
                if message.get("from") == self.member:
                    continue
                live = self.hub.peek(str(message.get("msg")))
                if live is not None and live.uploader is not None and not live.closed:
                    log.info("message %s: its talker moved to %s", live.id, message.get("from"))
                    live.uploader.supersede()
                    live.uploader = None
                    live.announce = None
                    live.role_changed()
                    if self.hub.on_talkers is not None:
                        self.hub.on_talkers()  # not talker_left: the talker is elsewhere

    async def _hear_requests(self) -> None:
        """Another process (an ingress, or a former owner) says this one owns a message."""
        async with aclosing(follow_json(self.bus, own_channel(self.member))) as requests:
            async for message in requests:
                if isinstance(message_id := message.get("msg"), str):
                    self._nursery.start_soon(self._adopt_logged, message_id)

    def announce_start(self, live: LiveMessage) -> None:
        started = {"msg": live.id, "thread": live.record.thread_id, "from": self.member}
        self.bus.publish(STARTED_CHANNEL, json.dumps(started).encode())

    async def _hear_starts(self) -> None:
        """A talker started a message on another process: a thread watched here (a
        WebRTC monitor) plays it from a mirror."""
        async with aclosing(follow_json(self.bus, STARTED_CHANNEL)) as starts:
            async for message in starts:
                thread, message_id = message.get("thread"), message.get("msg")
                if message.get("from") == self.member or not isinstance(message_id, str):
                    continue
                if isinstance(thread, str) and self.hub.watching(thread):
                    await self._tell_watchers(message_id)  # in turn: in the order they started

    async def _tell_watchers(self, message_id: str) -> None:
        try:
            _, live = await self.hub.get(message_id)
        except Exception:
            log.exception("could not follow message %s", message_id)
            return
        if live is not None:
            self.hub.tell_watchers(live)

    async def _adopt_logged(self, message_id: str) -> None:
        try:
            await self._adopt(message_id)
        except Exception:
            log.exception("could not take message %s", message_id)

    async def _rebalance_loop(self) -> None:
        while True:
            changed = self.membership.changed if self.membership is not None else trio.Event()
            with trio.move_on_after(REAP_PERIOD):
                await changed.wait()
            try:
                await self.rebalance()
            except Exception:
                log.exception("rebalancing live messages failed")

    async def rebalance(self) -> None:
        """Give up what the ring gives to others, take what it gives to this process:
        the messages held here, and the ones live in the store that nobody holds."""
        for live in self.hub.held():
            if live.closed:
                continue
            owner = self.owner_of(live.id)
            if not live.mirror and owner != self.member:
                await self._release(live, owner)
            elif live.mirror and owner == self.member:
                await self._promote(live)
            elif live.mirror and live.uploader is not None:
                await self._ensure_owner(live)  # this process's talker: tell its owner
        after = ""
        while True:
            page = await self.hub.store.live_messages(after=after, limit=REAP_PAGE)
            for message_id in page:
                if self.hub.peek(message_id) is None and self.owner_of(message_id) == self.member:
                    log.info("message %s: live with no holder, taken by this process", message_id)
                    await self._adopt_logged(message_id)
            if len(page) < REAP_PAGE:
                return
            after = page[-1]

    # -- one feed per message held ---------------------------------------------------

    async def mirror(self, message_id: str) -> tuple[MessageRecord | None, LiveMessage | None]:
        """The message's record and, if it is live, a mirror of it (made here)."""
        return await self._nursery.start(self._run_feed, message_id)  # type: ignore[no-any-return]

    async def _run_feed(
        self,
        message_id: str,
        *,
        task_status: trio.TaskStatus[tuple[MessageRecord | None, LiveMessage | None]],
    ) -> None:
        with trio.CancelScope() as scope:
            # Subscribe first, then read the store: nothing falls in between (VXS-6.2-3).
            async with self.bus.subscribe(live_channel(message_id)) as frames:
                record = await self.hub.store.get_message(message_id)
                if record is None or record.state == "closed":
                    task_status.started((record, None))
                    return
                live = LiveMessage(record, tail_limit=self.hub.tail_limit)
                live.mirror = True
                self.hub.adopt(live)
                self._feeds[message_id] = scope
                task_status.started((record, live))
                failed = await self._follow_while_needed(live, frames)
            while not live.closed:
                if self._quiet(live):
                    await live.wait_role_change()
                elif live.mirror and failed:
                    await self._poll(live)  # until it closes, or is owned here
                    failed = False
                else:
                    async with self.bus.subscribe(live_channel(message_id)) as frames:
                        if live.mirror:
                            await self._fill(live, None)  # what went by meanwhile
                        else:
                            self._ask_from(live, force=True)
                        failed = await self._follow_while_needed(live, frames)

    @staticmethod
    def _quiet(live: LiveMessage) -> bool:
        """The owner, with its talker connected here: it needs nothing from the bus
        (it is the source of every chunk), so it does not hear its own chunks echoed.
        A takeover (the talker moved) ends that."""
        return not live.mirror and live.uploader is not None

    async def _follow_while_needed(self, live: LiveMessage, frames: AsyncIterable[bytes]) -> bool:
        """Follow until the message closes or goes quiet; True if the bus failed the
        subscription first (it fell behind, or Redis went away)."""
        async with trio.open_nursery() as nursery:

            async def until_quiet() -> None:
                while not self._quiet(live):
                    await live.wait_role_change()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_quiet)
            await self._follow(live, frames)
            nursery.cancel_scope.cancel()
        return not live.closed and not self._quiet(live)

    def _drop(self, message_id: str) -> None:
        scope = self._feeds.pop(message_id, None)
        if scope is not None:
            scope.cancel()
        self._requested.pop(message_id, None)

    async def _follow(self, live: LiveMessage, frames: AsyncIterable[bytes]) -> None:
        async for data in frames:
            if data[:1] == b"{":
                self._control(live, data)
            else:
                try:
                    frame = decode_frame(bytes(data))
                except ProtocolError:
                    log.warning("a bad frame on the bus for message %s", live.id)
                    continue
                if isinstance(frame, Chunk):
                    await self._chunk(live, frame)
                elif isinstance(frame, End) and not live.closed:
                    if live.mirror:
                        await self._fill(live, frame.chunks)
                    else:  # closed by another owner (the ring moved meanwhile)
                        live.stop_committer()
                    self._finish(live, frame.chunks, frame.duration)
            if live.closed:
                return

    def _control(self, live: LiveMessage, data: bytes) -> None:
        try:
            message = json.loads(data)
            kind, count = message["t"], int(message["n"])
        except (ValueError, KeyError, TypeError):
            log.warning("a bad control message on the bus for message %s", live.id)
            return
        if kind == "durable" and live.mirror:
            live.set_durable(min(count, live.next_seq))
        elif kind == "owner" and message.get("by") != self.member:
            if live.uploader is not None and live.mirror:
                self._reannounce(live, count)
                self._tell_talker(live)
        elif kind == "talker" and not live.mirror and (by := message.get("by")) != self.member:
            if count:
                live.remote_talker = str(by)
            elif live.remote_talker == by:
                live.remote_talker = None
                live.last_activity = trio.current_time()
        elif kind == "close" and not live.mirror and live.id not in self._closing:
            self._closing.add(live.id)
            self._nursery.start_soon(
                self._close_for_ingress, live, count, int(message.get("end", 0))
            )

    async def _chunk(self, live: LiveMessage, frame: Chunk) -> None:
        if live.uploader is not None or frame.seq < live.next_seq or live.closed:
            return  # this process's own talker is the source; or a chunk it has
        try:
            chunk = validate_chunk(frame)
        except ProtocolError:
            log.warning("message %s: an invalid chunk %d on the bus", live.id, frame.seq)
            return
        if not live.mirror:
            if frame.seq == live.next_seq:
                live.publish(chunk, relayed=True)
            else:
                self._ask_from(live)  # a gap: the ingress sends them again
            return
        if frame.seq > live.next_seq:
            await self._fill(live, frame.seq)
        if frame.seq == live.next_seq and not live.closed:
            live.publish(chunk, commit=not live.mirror, relayed=True)

    async def _fill(self, live: LiveMessage, upto: int | None) -> None:
        """A mirror publishes stored chunks from ``live.next_seq`` up to ``upto``
        (exclusive; None: what is stored now), waiting for ones not yet durable."""
        while live.mirror and not live.closed and (upto is None or live.next_seq < upto):
            want = 256 if upto is None else min(256, upto - live.next_seq)
            batch = await self.hub.store.read_chunks(live.id, live.next_seq, want)
            for chunk in batch:
                if chunk.seq == live.next_seq and not live.closed:
                    live.publish(chunk, commit=False, relayed=True)
                    live.set_durable(chunk.seq + 1)
            if upto is None and len(batch) < want:
                return
            if not batch:
                await trio.sleep(POLL)

    async def _poll(self, live: LiveMessage) -> None:
        """No bus: follow the store until the message closes (or is owned here)."""
        while live.mirror and not live.closed:
            await self._fill(live, None)
            record = await self.hub.store.get_message(live.id)
            if record is None:
                return
            live.set_durable(min(record.chunks, live.next_seq))
            if record.state == "closed":
                await self._fill(live, record.chunks)
                self._finish(live, record.chunks, record.duration)
                return
            await trio.sleep(POLL)

    def _finish(self, live: LiveMessage, chunks: int, duration: int) -> None:
        if chunks != live.next_seq:
            log.warning("message %s closed at %d chunks, held %d", live.id, chunks, live.next_seq)
        live.end_ts = max(live.end_ts, duration)
        live.set_durable(live.next_seq)
        live.mark_closed()
        self.hub.forget(live)
        self._drop(live.id)
