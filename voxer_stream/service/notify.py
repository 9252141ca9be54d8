"""Web Push dispatch: tell a recipient's browsers of a message when they are not looking.

``Messages`` calls its ``notify`` callback right after a message is committed (a text,
image or location message, a forward, or an audio message going live). That call sits
on the request path and the live audio path, and a push goes over the Internet to a
push service that may take seconds to answer, so ``PushDispatch.__call__`` only queues
the job and returns; ``run``, a task of the server's nursery, does the work.

The queue is bounded: a push is a courtesy (every message is on the timeline anyway,
and a device that syncs sees it), so under overload it is better to drop pushes than to
let memory grow or to slow posting down. A device that holds a sync open sees the
message there and gets no push; nor does a recipient that muted the thread.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

import trio

from ..store.base import Account, MessageRecord, PushRecord, Store, Thread
from .timeline import Timeline
from .webpush import MAX_PAYLOAD, PushSender, PushSubscription

log = logging.getLogger(__name__)

#: How much of a text message or caption a push carries: enough for the notification,
#: and the page fetches the rest when it is opened.
TEXT_PREVIEW: Final = 140
# Titles and display names are clipped too, so that the payload stays far below the
# 3993 octets every push service takes whatever characters they hold (an escaped
# control character is 6 octets of JSON).
_MAX_TITLE: Final = 200
_MAX_NAME: Final = 100
#: How long a push service keeps a push for a browser that is offline (s). A day: the
#: message is still worth knowing about when the laptop is opened the next morning.
DEFAULT_TTL: Final = 24 * 3600
#: Sends in flight at once, over all jobs: one slow push service must not hold up the
#: others, and a burst must not open thousands of connections.
DEFAULT_CONCURRENCY: Final = 16
#: The longest ``Topic`` (RFC 8030 section 5.4).
_TOPIC_MAX: Final = 32
_NOT_BASE64URL: Final = re.compile(r"[^A-Za-z0-9_-]")
# Characters a username may contain (identity.USERNAME, case-folded): a mention ends
# where they end, except that a final "." is punctuation ("thanks @bob.").
_NAME_CHAR: Final = r"[a-z0-9_-]"
#: Seconds between two warnings about a full queue: overload must not flood the log.
_DROP_WARNING_INTERVAL: Final = 10.0


@dataclass(frozen=True)
class _Job:
    recipients: tuple[str, ...]
    what: str
    record: MessageRecord
    thread: Thread
    #: The recipients' sessions that held a sync open when the change happened: they
    #: saw it live and need no push (taken then, not when the worker gets to it).
    online: frozenset[str] = frozenset()


def topic_for(message_id: str) -> str | None:
    """The ``Topic`` of a message's pushes: a later push about the same message (a
    replay) replaces one the push service has not delivered yet.

    The id without characters outside base64url; one longer than 32 characters is
    hashed rather than cut, since client-chosen ids such as ``<device>-<counter>``
    share long prefixes and cutting them would let one message's push replace
    another's. None for an id with nothing left (no topic then)."""
    cleaned = _NOT_BASE64URL.sub("", message_id)
    if not cleaned:
        return None
    if len(cleaned) <= _TOPIC_MAX:
        return cleaned
    digest = hashlib.sha256(cleaned.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:_TOPIC_MAX]


def mentions(text: str, username: str) -> bool:
    """Whether ``text`` names ``username`` as ``@username``, as a word of its own.

    Not inside an address (``x@bob.com``) nor as the start of a longer name
    (``@bobby``, ``@bob.smith``); case does not matter, usernames being lower case."""
    if not username:
        return False
    pattern = (
        rf"(?<![a-z0-9_.@-])@{re.escape(username)}"
        rf"(?!{_NAME_CHAR})(?!\.{_NAME_CHAR})"
    )
    return re.search(pattern, text, re.IGNORECASE) is not None


def _clip(value: str, limit: int) -> str:
    """At most ``limit`` characters, made encodable as UTF-8 (a lone surrogate that
    came in through JSON would otherwise fail the whole push)."""
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def message_text(record: MessageRecord) -> str | None:
    """A text message's text or an image's caption, whole (a mention may come late);
    None for anything else or a body that is not what the server writes."""
    if record.body is None or record.kind not in ("text", "image"):
        return None
    try:
        body = json.loads(record.body)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    text = body.get("text" if record.kind == "text" else "caption")
    if not isinstance(text, str) or not text:
        return None
    return text


def build_payload(
    kind: str, record: MessageRecord, thread: Thread, sender: Account | None, text: str | None
) -> bytes:
    """The JSON a service worker gets: enough to show a notification without a fetch,
    compact and UTF-8 so that it stays small. ``text`` is cut to ``TEXT_PREVIEW``."""
    payload: dict[str, Any] = {
        "type": kind,
        "thread": thread.id,
        "title": _clip(thread.title, _MAX_TITLE),
        "message": record.id,
        "kind": record.kind,
        "sender": {
            "id": record.sender,
            "username": sender.username if sender is not None else "",
            "display_name": _clip(sender.display_name, _MAX_NAME) if sender is not None else "",
        },
    }
    if text is not None:
        payload["text"] = _clip(text, TEXT_PREVIEW)
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_PAYLOAD:  # cannot happen with the limits above; never fail a push
        payload.pop("text", None)
        payload["title"] = ""
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return data


class PushDispatch:
    """The ``Notify`` callback of ``Messages``, and the worker that sends the pushes.

    Call it only from the trio thread (as ``Messages`` does). The counters say what
    happened to each recipient (``skipped_muted``) or subscription (the others), for
    tests and metrics."""

    def __init__(
        self,
        store: Store,
        timeline: Timeline,
        sender: PushSender,
        *,
        queue_size: int = 10000,
        ttl: int = DEFAULT_TTL,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if ttl < 0:
            raise ValueError("ttl must not be negative")
        self.store = store
        self.timeline = timeline
        self.sender = sender
        self.ttl = ttl
        self._send_jobs, self._receive_jobs = trio.open_memory_channel[_Job](queue_size)
        # A semaphore, not a CapacityLimiter: the worker acquires, the send task releases.
        self._slots = trio.Semaphore(concurrency)
        #: Pushes the push service accepted.
        self.sent = 0
        #: Subscriptions skipped because their device held a sync open.
        self.skipped_online = 0
        #: Recipients skipped because they muted the thread.
        self.skipped_muted = 0
        #: Subscriptions deleted because the push service said the browser dropped them.
        self.gone = 0
        #: Pushes that failed otherwise (network, timeout, an error status, a bad key).
        self.failed = 0
        #: Jobs dropped because the queue was full.
        self.dropped = 0
        self._dropped_unreported = 0
        self._last_drop_warning = -math.inf
        # Jobs queued or being handled plus sends in flight; ``wait_idle`` waits for 0.
        self._unfinished = 0
        self._idle = trio.Event()
        self._idle.set()

    # -- the callback ------------------------------------------------------------------

    def __call__(
        self, recipients: Collection[str], what: str, record: MessageRecord, thread: Thread
    ) -> None:
        """Queue a push job and return at once; a full queue drops it (and warns)."""
        if not recipients:
            return
        people = tuple(sorted(set(recipients)))
        job = _Job(people, what, record, thread, self.timeline.online_sessions(people))
        try:
            self._send_jobs.send_nowait(job)
        except trio.WouldBlock:
            self._drop(record, "the push queue is full")
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._drop(record, "the push worker has stopped")
            return
        self._begin()

    def _drop(self, record: MessageRecord, why: str) -> None:
        self.dropped += 1
        self._dropped_unreported += 1
        now = trio.current_time()
        if now - self._last_drop_warning >= _DROP_WARNING_INTERVAL:
            log.warning(
                "%s: dropped the pushes for %d message(s), the latest %s",
                why,
                self._dropped_unreported,
                record.id,
            )
            self._last_drop_warning = now
            self._dropped_unreported = 0

    def _begin(self) -> None:
        self._unfinished += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _end(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until every queued job is handled and every send has returned (tests,
        and a shutdown that wants the pushes out)."""
        while self._unfinished:
            await self._idle.wait()

    # -- the worker --------------------------------------------------------------------

    async def run(self) -> None:
        """Handle jobs until cancelled; a job that fails is logged and the next one runs.

        Jobs are prepared one at a time (store reads), and their sends run in this
        task's nursery, at most ``concurrency`` at once: when all slots are taken the
        worker waits, and new jobs pile up in the bounded queue, then get dropped."""
        async with trio.open_nursery() as nursery:
            async for job in self._receive_jobs:
                try:
                    await self._dispatch(job, nursery)
                except Exception:
                    log.exception("pushes for message %s (%s) failed", job.record.id, job.what)
                finally:
                    self._end()

    async def _dispatch(self, job: _Job, nursery: trio.Nursery) -> None:
        record, thread = job.record, job.thread
        text = message_text(record)
        sender: Account | None = None
        sender_read = False
        for recipient in job.recipients:
            member = thread.member(recipient)
            # Not (or no longer) in the thread, or not the addressee of a directed
            # message: it must learn nothing, not even that a message exists.
            if member is None or recipient == record.sender or not record.visible_to(recipient):
                continue
            if member.muted:
                self.skipped_muted += 1
                continue
            subscriptions = await self.store.list_push_subscriptions(recipient)
            targets: list[PushRecord] = []
            for subscription in subscriptions:
                if subscription.session_id in job.online:
                    self.skipped_online += 1
                else:
                    targets.append(subscription)
            if not targets:
                continue
            if not sender_read:
                sender = await self.store.get_account(record.sender)
                sender_read = True
            kind = await self._type(job.what, record, recipient, text)
            payload = build_payload(kind, record, thread, sender, text)
            urgency = "high" if kind in ("live", "mention") else "normal"
            for target in targets:
                await self._slots.acquire()
                self._begin()
                nursery.start_soon(self._send, target, payload, urgency, topic_for(record.id))

    async def _type(
        self, what: str, record: MessageRecord, recipient: str, text: str | None
    ) -> str:
        """What the push announces: an audio message that started ("live"), a text
        message that names the recipient ("mention"), or any other ("message")."""
        if what == "live":
            return "live"
        if record.kind == "text" and text is not None and "@" in text:
            account = await self.store.get_account(recipient)
            if account is not None and mentions(text, account.username):
                return "mention"
        return "message"

    async def _send(
        self, target: PushRecord, payload: bytes, urgency: str, topic: str | None
    ) -> None:
        """One push; never raises (but for cancellation), so the nursery and with it
        the worker survive a bad subscription."""
        try:
            subscription = PushSubscription(
                endpoint=target.endpoint, p256dh=target.p256dh, auth=target.auth
            )
            result = await self.sender.send(
                subscription, payload, ttl=self.ttl, urgency=urgency, topic=topic
            )
            if result.gone:
                self.gone += 1
                await self.store.delete_push_subscription(target.id)
            elif result.ok:
                self.sent += 1
            else:
                self.failed += 1
                log.info("push to subscription %s failed (status %d)", target.id, result.status)
        except Exception:
            self.failed += 1
            log.exception("push to subscription %s failed", target.id)
        finally:
            self._slots.release()
            self._end()
