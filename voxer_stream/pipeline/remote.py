"""Live messages across server processes (``serve --redis``, issue 7).

The process a talker is connected to owns the message: its hub holds the tail,
commits the chunks and acks them. Every other process that has listeners for it holds
a **mirror**: a ``LiveMessage`` with the same tail, fed from the bus instead of an
upload, that the reader and every binding use unchanged.

* The owner announces each chunk frame on ``live:<id>`` as it publishes it, and an
  ``end`` frame (the final count) once the message is closed durably.
* A mirror subscribes to ``live:<id>`` *first*, then reads the stored count (the
  handoff of VXS-6.2-3 once more): what was published before it subscribed is in the
  store or soon will be; what comes after, the bus brings. A chunk that arrives beyond
  the next expected seq (the bus dropped some, or they were published before the
  subscription) is preceded by the missing ones read from the store as they become
  durable. Nothing is sent twice: a mirror, like a listener, is only a position.
* If the bus fails a mirror (it fell behind, Redis went away) the mirror polls the
  store until the message closes: slower, never wrong.
* A talker that reconnects to another process and opens the message there takes it
  over: that process turns its mirror into the owner and says so on
  ``voxer:takeover``; the former owner supersedes its upload (if it still had one)
  and turns its own copy into a mirror. Only the owner ever closes the message.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Final

import trio

from ..bus import Bus
from ..store.base import MessageRecord
from ..wire import Chunk, End, ProtocolError, decode_frame, encode_frame
from .hub import Hub, LiveMessage
from .ingest import validate_chunk

log = logging.getLogger(__name__)

TAKEOVER_CHANNEL: Final = "voxer:takeover"
#: How often a mirror without its bus looks at the store, and waits for a missing chunk.
POLL: Final = 0.05


def live_channel(message_id: str) -> str:
    return f"live:{message_id}"


class Relay:
    def __init__(self, hub: Hub, bus: Bus, nursery: trio.Nursery) -> None:
        self.hub = hub
        self.bus = bus
        self.process = uuid.uuid4().hex
        self._nursery = nursery
        self._feeds: dict[str, trio.CancelScope] = {}

    # -- the owner's side --------------------------------------------------------------

    def own(self, live: LiveMessage) -> None:
        channel = live_channel(live.id)
        live.mirror = False
        live.announce = lambda frame: self.bus.publish(channel, frame)

    def announce_end(self, live: LiveMessage) -> None:
        if not live.mirror:
            end = encode_frame(End(chunks=live.next_seq, duration=live.end_ts))
            self.bus.publish(live_channel(live.id), end)

    def take_over(self, live: LiveMessage) -> None:
        scope = self._feeds.pop(live.id, None)
        if scope is not None:
            scope.cancel()
        self.own(live)
        self.bus.publish(
            TAKEOVER_CHANNEL, json.dumps({"msg": live.id, "from": self.process}).encode()
        )

    async def run(self) -> None:
        """Hear takeovers: a message this process owned is now another's."""
        while True:
            async with self.bus.subscribe(TAKEOVER_CHANNEL) as takeovers:
                async for data in takeovers:
                    try:
                        message = json.loads(data)
                    except ValueError:
                        continue
                    if message.get("from") != self.process:
                        await self._lost(str(message.get("msg")))

    async def _lost(self, message_id: str) -> None:
        live = self.hub.peek(message_id)
        if live is None or live.mirror or live.closed:
            return
        log.info("message %s was taken over by another process", message_id)
        if live.uploader is not None:
            live.uploader.supersede()
            live.uploader = None
        live.announce = None
        live.mirror = True
        # What this process received is committed before its committer stops; the
        # new owner's talker re-sends anything it was not acked for.
        await live.wait_durable(live.next_seq)
        live.committer_scope.cancel()
        self._start_feed(live)

    # -- mirrors -----------------------------------------------------------------------

    async def mirror(self, message_id: str) -> tuple[MessageRecord | None, LiveMessage | None]:
        """The message's record and, if it is live, a mirror of it (made here)."""
        return await self._nursery.start(self._run_mirror, message_id)  # type: ignore[no-any-return]

    async def _run_mirror(
        self,
        message_id: str,
        *,
        task_status: trio.TaskStatus[tuple[MessageRecord | None, LiveMessage | None]],
    ) -> None:
        with trio.CancelScope() as scope:
            async with self.bus.subscribe(live_channel(message_id)) as feed:
                record = await self.hub.store.get_message(message_id)
                if record is None or record.state == "closed":
                    task_status.started((record, None))
                    return
                live = LiveMessage(record, tail_limit=self.hub.tail_limit)
                live.mirror = True
                self.hub.adopt(live)
                self._feeds[message_id] = scope
                task_status.started((record, live))
                await self._follow(live, feed)
            await self._poll(live)

    def _start_feed(self, live: LiveMessage) -> None:
        async def feed() -> None:
            with trio.CancelScope() as scope:
                self._feeds[live.id] = scope
                async with self.bus.subscribe(live_channel(live.id)) as frames:
                    await self._fill(live, None)  # what was published before it subscribed
                    await self._follow(live, frames)
                await self._poll(live)

        self._nursery.start_soon(feed)

    async def _follow(self, live: LiveMessage, frames: object) -> None:
        async for data in frames:  # type: ignore[attr-defined]
            try:
                frame = decode_frame(bytes(data))
            except ProtocolError:
                log.warning("a bad frame on the bus for message %s", live.id)
                continue
            if isinstance(frame, Chunk):
                if frame.seq > live.next_seq:
                    await self._fill(live, frame.seq)
                if frame.seq == live.next_seq:
                    live.publish(validate_chunk(frame), commit=False)
            elif isinstance(frame, End):
                await self._fill(live, frame.chunks)
                self._finish(live, frame.duration)
                return
            if live.closed:
                return

    async def _fill(self, live: LiveMessage, upto: int | None) -> None:
        """Publish stored chunks from ``live.next_seq`` up to ``upto`` (exclusive;
        None: what is stored now), waiting for ones not yet durable."""
        while upto is None or live.next_seq < upto:
            want = 256 if upto is None else min(256, upto - live.next_seq)
            batch = await self.hub.store.read_chunks(live.id, live.next_seq, want)
            for chunk in batch:
                if chunk.seq == live.next_seq:
                    live.publish(chunk, commit=False)
            if upto is None and len(batch) < want:
                return
            if not batch:
                await trio.sleep(POLL)

    async def _poll(self, live: LiveMessage) -> None:
        """No bus: follow the store until the message closes."""
        while not live.closed:
            await self._fill(live, None)
            record = await self.hub.store.get_message(live.id)
            if record is None:
                return
            if record.state == "closed":
                await self._fill(live, record.chunks)
                self._finish(live, record.duration)
                return
            await trio.sleep(POLL)

    def _finish(self, live: LiveMessage, duration: int) -> None:
        live.end_ts = max(live.end_ts, duration)
        live.mark_closed()
        self.hub.forget(live)
        self._feeds.pop(live.id, None)
