"""Messages beyond the audio stream: text, image, location; recall, forward,
reactions, receipts; and audio messages' place on the timelines (13.3, 13.4).

Every create is idempotent on a client-chosen id (VXS-13.3-2): a device that queued
work offline replays it safely, and the replay answers with what is stored. The
timeline events of a change are committed with it (``Store`` takes them along), so
the events and the data never disagree.

Audio messages are made by the pipeline, which knows nothing of timelines: it tells
``audio_activity`` when a message goes live or closes, and ``run`` (a task of the
server's nursery) turns that into timeline events in order, deduplicated so that a
resumed upload does not announce its message twice.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, Final, Literal, cast

import trio

from ..store.base import (
    Account,
    MessageRecord,
    NewEvent,
    Reaction,
    Receipt,
    ReceiptKind,
    Store,
    Thread,
)
from ..wire import ErrorCode, ProtocolError
from ..wire.frames import ID_PATTERN
from .identity import now_ms
from .threads import Threads
from .timeline import Timeline
from .views import dumps, message_view

log = logging.getLogger(__name__)

MAX_TEXT: Final = 4000
MAX_EMOJI: Final = 32

#: Told (recipients, what, message, thread) after a change is committed: Web Push.
Notify = Callable[[Collection[str], str, MessageRecord, Thread], None]


def invalid(detail: str, requirement: str | None = None) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_REQUEST, detail, requirement)


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"location {key!r} must be a number", "VXS-13.3-1")
    if not (math.isfinite(value) and low <= value <= high):
        raise invalid(f"location {key!r} must be within {low}..{high}", "VXS-13.3-1")
    return float(value)


class Messages:
    def __init__(self, store: Store, threads: Threads, timeline: Timeline) -> None:
        self.store = store
        self.threads = threads
        self.timeline = timeline
        self.notify: Notify | None = None
        self._activity_send, self._activity_receive = trio.open_memory_channel[
            tuple[str, MessageRecord]
        ](math.inf)

    # -- helpers -------------------------------------------------------------------

    @staticmethod
    def audience(thread: Thread, record: MessageRecord) -> set[str]:
        """Who sees the message: everyone in the thread, or a directed message's two."""
        if record.directed_to is not None:
            return {record.sender, record.directed_to} & set(thread.participants)
        return set(thread.participants)

    async def view(self, record: MessageRecord, viewer: str | None = None) -> dict[str, Any]:
        reactions = await self.store.reactions([record.id])
        return message_view(record, reactions.get(record.id, ()), viewer)

    async def views(
        self, records: list[MessageRecord], viewer: str | None = None
    ) -> list[dict[str, Any]]:
        reactions = await self.store.reactions([r.id for r in records])
        return [message_view(r, reactions.get(r.id, ()), viewer) for r in records]

    def _tell(
        self, recipients: Collection[str], what: str, record: MessageRecord, thread: Thread
    ) -> None:
        if self.notify is not None:
            self.notify(recipients, what, record, thread)

    # -- posting -------------------------------------------------------------------

    async def _content(
        self, account: Account, data: dict[str, Any]
    ) -> tuple[Literal["text", "image", "location"], dict[str, Any], str | None]:
        kind = data.get("kind", "text")
        if kind == "text":
            text = data.get("text")
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
                raise invalid(f"'text' must be 1 to {MAX_TEXT} characters", "VXS-13.3-1")
            return "text", {"text": text}, None
        if kind == "location":
            where = data.get("location")
            if not isinstance(where, dict):
                raise invalid("'location' must be an object", "VXS-13.3-1")
            body: dict[str, Any] = {
                "lat": _number(where, "lat", -90, 90),
                "lon": _number(where, "lon", -180, 180),
            }
            if "accuracy" in where:
                body["accuracy"] = _number(where, "accuracy", 0, 1e7)
            label = where.get("label")
            if label is not None:
                if not isinstance(label, str) or len(label) > 200:
                    raise invalid("location 'label' must be a string of 200 characters at most")
                body["label"] = label
            return "location", body, None
        if kind == "image":
            media_id = data.get("media")
            if not isinstance(media_id, str):
                raise invalid("'media' must be the id of an uploaded image", "VXS-13.3-1")
            media = await self.store.get_media(media_id)
            if media is None or media.owner != account.id:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND, f"no image {media_id!r} of yours", "VXS-13.3-1"
                )
            body = {
                "content_type": media.content_type,
                "width": media.width,
                "height": media.height,
            }
            caption = data.get("caption")
            if caption is not None:
                if not isinstance(caption, str) or len(caption) > MAX_TEXT:
                    raise invalid("'caption' must be a string")
                body["caption"] = caption
            return "image", body, media_id
        raise invalid("'kind' must be 'text', 'image' or 'location'", "VXS-13.3-1")

    @staticmethod
    def _new_id(data: dict[str, Any]) -> str:
        message_id = data.get("id")
        if message_id is None:
            return uuid.uuid4().hex
        if not isinstance(message_id, str) or not ID_PATTERN.fullmatch(message_id):
            raise invalid("'id' must match [A-Za-z0-9_-]{1,64}", "VXS-2.3-1")
        return message_id

    async def _directed(self, thread: Thread, data: dict[str, Any]) -> str | None:
        to = data.get("to")
        if to is None:
            return None
        if not isinstance(to, str):
            raise invalid("'to' must be a username")
        account = await self.store.get_account_by_username(to)
        if account is None or account.id not in thread.participants:
            raise invalid(f"{to!r} is not a participant of this thread", "VXS-13.3-3")
        return account.id

    async def post(self, account: Account, thread_id: str, data: dict[str, Any]) -> MessageRecord:
        """A text, image or location message (VXS-13.3-1), idempotent on its id."""
        message_id = self._new_id(data)
        thread = await self.threads.can_post(account, thread_id)
        kind, body, media_id = await self._content(account, data)
        record = MessageRecord(
            id=message_id,
            thread_id=thread_id,
            sender=account.id,
            codec="",
            created=now_ms(),
            state="closed",
            kind=kind,
            body=dumps(body),
            directed_to=await self._directed(thread, data),
            media_id=media_id,
        )
        return await self._create(record, thread)

    async def _create(
        self, record: MessageRecord, thread: Thread, *, forwarded: bool = False
    ) -> MessageRecord:
        audience = self.audience(thread, record)
        events = self.timeline.fan_out(
            audience,
            "message",
            thread=thread.id,
            message=record.id,
            data=message_view(record),
            dedupe=f"message:{record.id}",
        )
        if forwarded:
            assert record.forwarded_from is not None
            stored = await self.store.forward_message(record.forwarded_from, record, events)
        else:
            stored = await self.store.create_message(record, events)
        same = ("thread_id", "sender", "kind", "body", "directed_to", "media_id", "forwarded_from")
        if any(getattr(stored, a) != getattr(record, a) for a in same):
            raise ProtocolError(
                ErrorCode.MESSAGE_CONFLICT,
                f"message id {record.id!r} exists with other content",
                "VXS-13.3-2",
            )
        if stored.created == record.created:  # this call made it (a replay has the old one)
            self.timeline.notify(events)
            self._tell(audience - {record.sender}, "message", stored, thread)
        return stored

    async def forward(
        self, account: Account, message_id: str, target: str, data: dict[str, Any]
    ) -> MessageRecord:
        source = await self.threads.message(account, message_id)
        if source.recalled is not None:
            raise ProtocolError(ErrorCode.MESSAGE_NOT_FOUND, "the message was recalled")
        if source.state == "live":
            raise ProtocolError(
                ErrorCode.MESSAGE_LIVE, "forward a message once it is closed", "VXS-13.3-5"
            )
        thread = await self.threads.can_post(account, target)
        record = replace(
            source,
            id=self._new_id(data),
            thread_id=target,
            sender=account.id,
            created=now_ms(),
            directed_to=None,
            forwarded_from=source.id,
        )
        return await self._create(record, thread, forwarded=True)

    async def recall(self, account: Account, message_id: str) -> MessageRecord:
        record = await self.threads.message(account, message_id)
        if record.sender != account.id:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "only its sender may recall a message", "VXS-13.3-4"
            )
        if record.recalled is not None:
            return record
        if record.state == "live":
            raise ProtocolError(
                ErrorCode.MESSAGE_LIVE, "recall a message once it is closed", "VXS-13.3-4"
            )
        thread = await self.threads.visible(account, record.thread_id)
        events = self.timeline.fan_out(
            self.audience(thread, record),
            "message.recalled",
            thread=thread.id,
            message=record.id,
            data={"id": record.id},
            dedupe=f"recalled:{record.id}",
        )
        recalled = await self.store.recall_message(record.id, now_ms(), events)
        self.timeline.notify(events)
        return recalled

    # -- reactions and receipts ------------------------------------------------------

    async def react(
        self, account: Account, message_id: str, emoji: str, on: bool
    ) -> dict[str, int]:
        if not emoji or len(emoji) > MAX_EMOJI or any(c.isspace() for c in emoji):
            raise invalid(f"an emoji is 1 to {MAX_EMOJI} characters, no spaces", "VXS-13.4-1")
        record = await self.threads.message(account, message_id)
        if record.recalled is not None:
            raise ProtocolError(ErrorCode.MESSAGE_NOT_FOUND, "the message was recalled")
        thread = await self.threads.visible(account, record.thread_id)
        before = (await self.store.reactions([message_id])).get(message_id, [])
        mine = any(r.account_id == account.id and r.emoji == emoji for r in before)
        counts = Counter(r.emoji for r in before)
        if on and not mine:
            counts[emoji] += 1
        elif mine and not on:
            counts[emoji] -= 1
        after = {e: n for e, n in sorted(counts.items()) if n > 0}
        reaction = Reaction(
            message_id=message_id, account_id=account.id, emoji=emoji, created=now_ms()
        )
        events = self.timeline.fan_out(
            self.audience(thread, record),
            "reaction",
            thread=thread.id,
            message=message_id,
            data={"account": account.id, "emoji": emoji, "on": on, "reactions": after},
        )
        if await self.store.set_reaction(reaction, on, events):
            self.timeline.notify(events)
        return after

    async def receipt(self, account: Account, message_id: str, kind: str) -> Receipt:
        receipt_kind(kind)
        record = await self.threads.message(account, message_id)
        if (kind == "heard") != (record.kind == "audio") and kind != "delivered":
            raise invalid("an audio message is heard, any other message is read", "VXS-13.4-2")
        receipt = Receipt(
            message_id=message_id, account_id=account.id, kind=receipt_kind(kind), created=now_ms()
        )
        # To the sender (its ticks) and to the reader's own devices (their counts).
        events = self.timeline.fan_out(
            {record.sender, account.id},
            "receipt",
            thread=record.thread_id,
            message=message_id,
            data={"account": account.id, "kind": kind, "at": receipt.created},
        )
        if await self.store.add_receipt(receipt, events):
            self.timeline.notify(events)
        return receipt

    # -- audio messages on the timeline ---------------------------------------------

    def audio_activity(self, what: str, record: MessageRecord) -> None:
        """The hub's ``activity`` callback: queue, never block the live path."""
        self._activity_send.send_nowait((what, record))

    async def run(self) -> None:
        """Turn audio activity into timeline events, one at a time, in order."""
        async for what, record in self._activity_receive:
            try:
                await self._audio_events(what, record)
            except Exception:
                log.exception("timeline events for message %s (%s) failed", record.id, what)

    async def _audio_events(self, what: str, record: MessageRecord) -> None:
        thread = await self.store.get_thread(record.thread_id)
        if thread is None:
            return
        audience = self.audience(thread, record)
        view = message_view(record)
        events: list[NewEvent] = self.timeline.fan_out(
            audience,
            "message",
            thread=thread.id,
            message=record.id,
            data=view,
            dedupe=f"message:{record.id}",
        )
        if what == "live":
            events += self.timeline.fan_out(
                audience, "message.live", thread=thread.id, message=record.id, data=view
            )
        else:
            events += self.timeline.fan_out(
                audience,
                "message.closed",
                thread=thread.id,
                message=record.id,
                data=view,
                dedupe=f"closed:{record.id}",
            )
        await self.timeline.append(events)
        if what == "live":
            self._tell(audience - {record.sender}, "live", record, thread)


def receipt_kind(value: str) -> ReceiptKind:
    if value in ("delivered", "heard", "read"):
        return cast(ReceiptKind, value)
    raise invalid("'kind' must be delivered, heard or read", "VXS-13.4-2")
