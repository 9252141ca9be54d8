"""Each account's timeline: the ordered events that keep every device in sync (13.5).

Every change an account must see is appended to its timeline in the same commit as
the change itself (the store takes the events with the write), so a device that
has read up to position P has seen every change up to P: there is no window in
which a change is visible over REST but missing from the timeline.

Sync is Matrix's model made smaller: a since-token (a position) gives the next page
of at most ``limit`` events and the token to ask with next; ``more`` says another
page is ready; ``limited`` says events were trimmed between the token and the
first event returned, so the device must re-read its state (threads, messages)
over REST instead of trusting its cache. With nothing new, sync long-polls: the
request waits (at most ``timeout``) for the next append to the account's timeline.

Presence is kept here too: an account is online while one of its devices holds a
sync request or a sync stream open.

Several server processes (issue 7) share the store and a ``Bus``: an append on one
wakes the long-polls and streams on all (``voxer:timeline`` carries the account ids),
and each process announces who is online on it (``voxer:presence``, its whole set every
``PRESENCE_PERIOD`` seconds and at once on a change); the others keep what they heard
for ``PRESENCE_TTL`` seconds, so a process that dies stops counting soon after.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from ..bus import Bus, LocalBus, follow_json
from ..store.base import Event, MessageRecord, NewEvent, Store
from ..wire import ErrorCode, ProtocolError
from .identity import now_ms
from .views import dumps

#: The largest page a sync returns (VXS-13.5-2).
PAGE_MAX: Final = 1000
PAGE_DEFAULT: Final = 100
#: The longest a sync long-polls (ms).
TIMEOUT_MAX: Final = 60_000
TIMELINE_CHANNEL: Final = "voxer:timeline"
PRESENCE_CHANNEL: Final = "voxer:presence"
#: How often a process announces who is online on it, and how long others believe it.
PRESENCE_PERIOD: Final = 2.0
PRESENCE_TTL: Final = 5.0


def parse_token(token: str | None) -> int | None:
    """A since-token as a position; tokens are opaque to clients but are decimal
    positions to this server."""
    if token is None or token == "":
        return None
    if not (token.isascii() and token.isdigit()) or len(token) > 18:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"bad since token {token!r}", "VXS-13.5-3")
    return int(token)


@dataclass(frozen=True, kw_only=True)
class SyncPage:
    events: list[Event]
    next: int
    more: bool
    limited: bool


@dataclass
class _Peer:
    """What another process last said of who is online on it."""

    accounts: frozenset[str]
    sessions: dict[str, frozenset[str]]  # account -> its sessions online there
    until: float  # trio time
    #: Its live messages with a talker connected: (thread, message, sender, directed_to).
    speaking: tuple[tuple[str, str, str, str | None], ...] = ()


@dataclass(frozen=True)
class Speaking:
    """A live message with a talker connected, somewhere (VXS-13.6-1)."""

    message: str
    sender: str
    directed_to: str | None

    def visible_to(self, account_id: str) -> bool:
        return self.directed_to is None or account_id in (self.directed_to, self.sender)


class Timeline:
    def __init__(self, store: Store, bus: Bus | None = None) -> None:
        self.store = store
        self.bus: Bus = bus or LocalBus()
        #: Other processes may be listening: one process alone skips the bus.
        self.shared = not isinstance(self.bus, LocalBus)
        #: This process, on the bus.
        self.process = uuid.uuid4().hex
        self._peers: dict[str, _Peer] = {}
        self._presence_changed = trio.Event()
        self._waiters: dict[str, trio.Event] = {}
        self._online: Counter[str] = Counter()
        self._sessions: Counter[str] = Counter()
        self._by_account: dict[str, set[str]] = {}
        #: This process's talkers (``Hub.talking``), set by the server.
        self.local_talkers: Callable[[], list[MessageRecord]] = list

    # -- writing -------------------------------------------------------------------

    @staticmethod
    def fan_out(
        recipients: Iterable[str],
        type: str,
        *,
        thread: str | None = None,
        message: str | None = None,
        data: Any = None,
        dedupe: str | None = None,
    ) -> list[NewEvent]:
        """One event per recipient, all with the same content."""
        text = dumps(data if data is not None else {})
        created = now_ms()
        return [
            NewEvent(
                account_id=r,
                type=type,
                thread_id=thread,
                message_id=message,
                data=text,
                created=created,
                dedupe=dedupe,
            )
            for r in sorted(set(recipients))
        ]

    def notify(self, events: Sequence[NewEvent]) -> None:
        """Wake the long-polls and streams of the accounts these events went to; call
        it after the write that appended them has returned."""
        accounts = sorted({e.account_id for e in events})
        self._wake(accounts)
        if accounts and self.shared:
            message = json.dumps({"from": self.process, "accounts": accounts})
            self.bus.publish(TIMELINE_CHANNEL, message.encode())

    def _wake(self, accounts: Iterable[str]) -> None:
        for account_id in accounts:
            waiter = self._waiters.pop(account_id, None)
            if waiter is not None:
                waiter.set()

    # -- across processes --------------------------------------------------------------

    async def run(self) -> None:
        """Hear the other processes' appends and presence, and tell them ours (a task
        of the server's nursery)."""
        if not self.shared:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hear, TIMELINE_CHANNEL, self._heard_append)
            nursery.start_soon(self._hear, PRESENCE_CHANNEL, self._heard_presence)
            while True:
                self._announce()
                with trio.move_on_after(PRESENCE_PERIOD):
                    await self._presence_changed.wait()
                    await trio.sleep(0.05)  # a burst of connects: one announcement

    async def _hear(self, channel: str, heard: Callable[[dict[str, Any]], None]) -> None:
        """Follow a channel; one that overflowed (this process fell behind) is taken up
        again, and every waiter is woken to re-read rather than miss an append."""

        def wake_all() -> None:
            self._wake(list(self._waiters))

        async with aclosing(follow_json(self.bus, channel, on_gap=wake_all)) as messages:
            async for message in messages:
                if message.get("from") != self.process:
                    heard(message)

    def _heard_append(self, message: dict[str, Any]) -> None:
        self._wake(message.get("accounts", ()))

    def _heard_presence(self, message: dict[str, Any]) -> None:
        sender = message.get("from")
        if not isinstance(sender, str):
            return
        try:
            sessions = {a: frozenset(s) for a, s in message.get("sessions", {}).items()}
            speaking = tuple((str(t), str(m), str(s), d) for t, m, s, d in message["speaking"])
        except (AttributeError, KeyError, TypeError, ValueError):
            return
        self._peers[sender] = _Peer(
            accounts=frozenset(sessions),
            sessions=sessions,
            until=trio.current_time() + PRESENCE_TTL,
            speaking=speaking,
        )

    def _announce(self) -> None:
        self._presence_changed = trio.Event()
        sessions = {a: sorted(s) for a, s in self._by_account.items()}
        speaking = [[r.thread_id, r.id, r.sender, r.directed_to] for r in self.local_talkers()]
        message = json.dumps({"from": self.process, "sessions": sessions, "speaking": speaking})
        self.bus.publish(PRESENCE_CHANNEL, message.encode())

    def _live_peers(self) -> list[_Peer]:
        now = trio.current_time()
        for name in [n for n, p in self._peers.items() if p.until < now]:
            del self._peers[name]
        return list(self._peers.values())

    async def append(self, events: Sequence[NewEvent]) -> None:
        await self.store.add_events(events)
        self.notify(events)

    # -- reading -------------------------------------------------------------------

    def _waiter(self, account_id: str) -> trio.Event:
        waiter = self._waiters.get(account_id)
        if waiter is None:
            waiter = self._waiters[account_id] = trio.Event()
        return waiter

    async def page(self, account_id: str, since: int | None, limit: int) -> SyncPage:
        if not 1 <= limit <= PAGE_MAX:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, f"limit must be 1 to {PAGE_MAX}", "VXS-13.5-2"
            )
        bounds = await self.store.timeline_bounds(account_id)
        after = since or 0
        if after > bounds.latest:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST,
                "the since token is not one this server gave",
                "VXS-13.5-3",
            )
        limited = after < bounds.trimmed
        after = max(after, bounds.trimmed)
        events = await self.store.read_events(account_id, after, limit + 1)
        more = len(events) > limit
        del events[limit:]
        return SyncPage(
            events=events,
            next=events[-1].pos if events else after,
            more=more,
            limited=limited,
        )

    async def wait_page(
        self, account_id: str, since: int | None, limit: int, timeout_ms: int
    ) -> SyncPage:
        """A page; if it is empty, wait up to ``timeout_ms`` for events to arrive."""
        if not 0 <= timeout_ms <= TIMEOUT_MAX:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, f"timeout must be 0 to {TIMEOUT_MAX} ms", "VXS-13.5-5"
            )
        deadline = trio.current_time() + timeout_ms / 1000
        while True:
            waiter = self._waiter(account_id)  # before reading: no append slips between
            page = await self.page(account_id, since, limit)
            if page.events or page.limited or trio.current_time() >= deadline:
                return page
            with trio.move_on_at(deadline):
                await waiter.wait()
            since = page.next

    async def stream(self, account_id: str, since: int | None, *, keepalive: float = 15.0) -> Any:
        """Pages for a sync stream: each non-empty page as it becomes available, and
        an empty page every ``keepalive`` seconds of silence."""
        while True:
            waiter = self._waiter(account_id)
            page = await self.page(account_id, since, PAGE_DEFAULT)
            since = page.next
            if page.events or page.limited:
                yield page
                if page.more:
                    continue
            with trio.move_on_after(keepalive if math.isfinite(keepalive) else 1e9) as scope:
                await waiter.wait()
            if scope.cancelled_caught:
                yield page

    # -- presence ------------------------------------------------------------------

    @contextmanager
    def connected(self, account_id: str, session_id: str) -> Iterator[None]:
        """While open, the account and its session (device) are online: a sync
        request or stream is held (VXS-13.6-1)."""
        self._online[account_id] += 1
        self._sessions[session_id] += 1
        self._by_account.setdefault(account_id, set()).add(session_id)
        self._presence_changed.set()
        try:
            yield
        finally:
            for counter, key in ((self._online, account_id), (self._sessions, session_id)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]
            if session_id not in self._sessions:
                sessions = self._by_account.get(account_id, set())
                sessions.discard(session_id)
                if not sessions:
                    self._by_account.pop(account_id, None)
            self._presence_changed.set()

    def presence_changed(self) -> None:
        """Someone started or stopped talking here: tell the other processes now."""
        self._presence_changed.set()

    def speaking(self, thread_id: str) -> list[Speaking]:
        """The thread's live messages with a talker connected to any process."""
        found = {
            r.id: Speaking(r.id, r.sender, r.directed_to)
            for r in self.local_talkers()
            if r.thread_id == thread_id
        }
        for peer in self._live_peers():
            for thread, message, sender, directed_to in peer.speaking:
                if thread == thread_id:
                    found.setdefault(message, Speaking(message, sender, directed_to))
        return sorted(found.values(), key=lambda s: s.message)

    def online(self, account_ids: Iterable[str]) -> list[str]:
        """Those of ``account_ids`` online on this process or any other."""
        peers = self._live_peers()
        return sorted(
            a
            for a in set(account_ids)
            if self._online.get(a, 0) > 0 or any(a in p.accounts for p in peers)
        )

    def online_sessions(self, account_ids: Iterable[str]) -> frozenset[str]:
        """The sessions of these accounts that hold a sync open now, anywhere."""
        peers = self._live_peers()
        found: set[str] = set()
        for account_id in account_ids:
            found |= self._by_account.get(account_id, set())
            for peer in peers:
                found |= peer.sessions.get(account_id, frozenset())
        return frozenset(found)
