"""Threads, their participants and roles, and who may do what in them (13.2).

Every binding asks ``can_post`` / ``can_listen`` here, so the rules live in one
place whatever the transport. Two kinds of refusal, on purpose:

* a thread (or message) the account cannot see is ``THREAD_NOT_FOUND``
  (``MESSAGE_NOT_FOUND``), exactly as if it did not exist (VXS-8-2): a stranger
  learns nothing, not even that the id is taken;
* in a thread it sees, something its role does not allow (posting as listen-only,
  posting in a controlled thread as a non-admin, managing as a non-admin, posting
  into a 1:1 thread whose other side blocked it) is ``FORBIDDEN``.

Changes are appended to the timeline of everyone concerned in the same commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Final

from ..store.base import (
    Account,
    AlreadyExists,
    Member,
    MessageRecord,
    NewEvent,
    NotFound,
    Role,
    Store,
    Thread,
)
from ..wire import ErrorCode, ProtocolError
from ..wire.frames import ID_PATTERN
from .identity import now_ms
from .timeline import Timeline
from .views import thread_view

MAX_TITLE: Final = 200
MAX_PARTICIPANTS: Final = 1000


def parse_role(value: object) -> Role:
    if value == "admin" or value == "member" or value == "listen":
        return value
    raise ProtocolError(
        ErrorCode.INVALID_REQUEST, "role must be admin, member or listen", "VXS-13.2-3"
    )


def not_found(thread_id: str) -> ProtocolError:
    return ProtocolError(ErrorCode.THREAD_NOT_FOUND, f"thread {thread_id!r}", "VXS-8-2")


class Threads:
    def __init__(self, store: Store, timeline: Timeline | None = None) -> None:
        self.store = store
        self.timeline = timeline or Timeline(store)

    # -- reading and rules -------------------------------------------------------------

    async def _accounts(self, usernames: Sequence[str]) -> list[Account]:
        accounts = []
        for username in usernames:
            account = await self.store.get_account_by_username(username)
            if account is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no account {username!r}", "VXS-8-8")
            accounts.append(account)
        return accounts

    async def people(self, account_ids: Iterable[str]) -> dict[str, Account]:
        found = {}
        for account_id in sorted(set(account_ids)):
            account = await self.store.get_account(account_id)
            if account is not None:
                found[account_id] = account
        return found

    async def view(self, thread: Thread) -> dict[str, Any]:
        return thread_view(thread, await self.people(thread.participants))

    async def visible(self, account: Account, thread_id: str) -> Thread:
        """The thread if ``account`` takes part in it, else THREAD_NOT_FOUND (VXS-8-2)."""
        thread = await self.store.get_thread(thread_id)
        if thread is None or account.id not in thread.participants:
            raise not_found(thread_id)
        return thread

    async def _blocked_by(self, account: Account, others: Iterable[str]) -> bool:
        for other in others:
            contact = await self.store.get_contact(other, account.id)
            if contact is not None and contact.blocked:
                return True
        return False

    async def can_post(self, account: Account, thread_id: str) -> Thread:
        thread = await self.visible(account, thread_id)
        member = thread.member(account.id)
        assert member is not None
        if member.role == "listen":
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "listen-only members may not post", "VXS-13.2-4"
            )
        if thread.controlled and member.role != "admin":
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "only admins post in a controlled thread", "VXS-13.2-5"
            )
        if thread.kind == "direct" and await self._blocked_by(
            account, thread.participants - {account.id}
        ):
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "you may not post into this thread", "VXS-13.1-4"
            )
        return thread

    async def can_listen(self, account: Account, message: MessageRecord) -> Thread:
        thread = await self.store.get_thread(message.thread_id)
        if thread is None or account.id not in thread.participants:
            raise ProtocolError(ErrorCode.MESSAGE_NOT_FOUND, f"message {message.id!r}", "VXS-8-2")
        if not message.visible_to(account.id):
            raise ProtocolError(
                ErrorCode.MESSAGE_NOT_FOUND, f"message {message.id!r}", "VXS-13.3-3"
            )
        return thread

    async def message(self, account: Account, message_id: str) -> MessageRecord:
        record = await self.store.get_message(message_id)
        if record is None:
            raise ProtocolError(ErrorCode.MESSAGE_NOT_FOUND, f"message {message_id!r}")
        await self.can_listen(account, record)
        return record

    def _admin(self, account: Account, thread: Thread) -> None:
        member = thread.member(account.id)
        if member is None or member.role != "admin":
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "only the thread's admins may do this", "VXS-13.2-3"
            )

    def _group(self, thread: Thread) -> None:
        if thread.kind == "direct":
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "a 1:1 thread has exactly its two people", "VXS-13.2-2"
            )

    async def _events(
        self, thread: Thread, type: str, recipients: Iterable[str] | None = None
    ) -> list[NewEvent]:
        return self.timeline.fan_out(
            thread.participants if recipients is None else recipients,
            type,
            thread=thread.id,
            data=await self.view(thread),
        )

    # -- changes -----------------------------------------------------------------------

    async def create(
        self,
        creator: Account,
        *,
        title: str,
        participants: Sequence[str],
        thread_id: str | None = None,
        kind: str = "group",
        controlled: bool = False,
    ) -> Thread:
        """Create a thread with ``creator`` and ``participants`` (usernames).

        Idempotent on a client-chosen id (VXS-8-6): the same creator creating the same
        id again gets the existing thread (offline-first clients replay creates). A
        1:1 thread is unique per pair: creating it again gives the existing one.
        """
        if thread_id is not None and not ID_PATTERN.fullmatch(thread_id):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "id must match [A-Za-z0-9_-]{1,64}")
        if len(title) > MAX_TITLE or len(participants) > MAX_PARTICIPANTS:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "title or participant list too long")
        if kind not in ("group", "direct"):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "kind must be 'group' or 'direct'")
        if thread_id is not None:
            existing = await self.store.get_thread(thread_id)
            if existing is not None:
                return self._replayed(creator, existing)
        members = await self._accounts(participants)
        others = {a.id for a in members} - {creator.id}
        if kind == "direct":
            if len(others) != 1 or controlled:
                raise ProtocolError(
                    ErrorCode.INVALID_REQUEST,
                    "a 1:1 thread names exactly one other participant and is not controlled",
                    "VXS-13.2-2",
                )
            (other,) = others
            pair = await self.store.find_direct_thread(creator.id, other)
            if pair is not None:
                return pair
        if await self._blocked_by(creator, others):
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "you may not start a thread with these people", "VXS-13.1-4"
            )
        created = now_ms()
        roles = {
            creator.id: Member(
                account_id=creator.id,
                role="member" if kind == "direct" else "admin",
                joined=created,
            )
        }
        for other in others:
            roles[other] = Member(account_id=other, role="member", joined=created)
        thread = Thread(
            id=thread_id or uuid.uuid4().hex,
            title=title,
            created_by=creator.id,
            created=created,
            participants=frozenset(roles),
            kind="direct" if kind == "direct" else "group",
            controlled=controlled,
            members=roles,
        )
        try:
            await self.store.create_thread(thread, events := await self._events(thread, "thread"))
        except AlreadyExists:
            existing = await self.store.get_thread(thread.id)
            if existing is not None:
                return self._replayed(creator, existing)
            pair = await self.store.find_direct_thread(*sorted(thread.participants))
            if pair is None:
                raise
            return pair
        self.timeline.notify(events)
        return thread

    @staticmethod
    def _replayed(creator: Account, existing: Thread) -> Thread:
        if existing.created_by != creator.id:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, f"thread id {existing.id!r} is taken", "VXS-8-6"
            )
        return existing

    async def update(
        self,
        account: Account,
        thread_id: str,
        *,
        title: str | None = None,
        controlled: bool | None = None,
    ) -> Thread:
        thread = await self.visible(account, thread_id)
        if thread.kind == "group":
            self._admin(account, thread)
        elif controlled:
            self._group(thread)
        if title is not None and len(title) > MAX_TITLE:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "title too long")
        changed = replace(
            thread,
            title=thread.title if title is None else title,
            controlled=thread.controlled if controlled is None else controlled,
        )
        events = await self._events(changed, "thread")
        await self.store.update_thread(thread_id, title=title, controlled=controlled, events=events)
        self.timeline.notify(events)
        return changed

    async def add_participants(
        self, account: Account, thread_id: str, usernames: Sequence[str], role: str = "member"
    ) -> Thread:
        thread = await self.visible(account, thread_id)
        self._group(thread)
        self._admin(account, thread)
        granted = parse_role(role)
        members = await self._accounts(usernames)
        new = [a.id for a in members if a.id not in thread.participants]
        if len(thread.participants) + len(new) > MAX_PARTICIPANTS:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "too many participants")
        if not new:
            return thread
        joined = now_ms()
        roles = dict(thread.members)
        for account_id in new:
            roles[account_id] = Member(account_id=account_id, role=granted, joined=joined)
        changed = replace(thread, participants=thread.participants | set(new), members=roles)
        events = await self._events(changed, "thread")
        try:
            await self.store.add_participants(
                thread_id,
                new,
                role=granted,
                joined=joined,
                events=events,
            )
        except NotFound:
            raise not_found(thread_id) from None
        self.timeline.notify(events)
        return changed

    async def set_role(self, account: Account, thread_id: str, target: str, role: str) -> Thread:
        thread = await self.visible(account, thread_id)
        self._group(thread)
        self._admin(account, thread)
        granted = parse_role(role)
        member = thread.member(target)
        if member is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"{target!r} is not a participant")
        self._keeps_an_admin(thread, target, granted)
        roles = dict(thread.members)
        roles[target] = replace(member, role=granted)
        changed = replace(thread, members=roles)
        events = await self._events(changed, "thread")
        await self.store.set_member(thread_id, target, role=granted, events=events)
        self.timeline.notify(events)
        return changed

    @staticmethod
    def _keeps_an_admin(thread: Thread, target: str, role: str) -> None:
        admins = {a for a in thread.participants if (m := thread.member(a)) and m.role == "admin"}
        if role != "admin" and admins == {target}:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "a group keeps at least one admin", "VXS-13.2-3"
            )

    async def remove(self, account: Account, thread_id: str, target: str) -> Thread:
        """An admin removes ``target``, or an account leaves (``target`` is itself). The
        last admin leaving hands the role to the longest-standing participant."""
        thread = await self.visible(account, thread_id)
        self._group(thread)
        if target != account.id:
            self._admin(account, thread)
        if thread.member(target) is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"{target!r} is not a participant")
        roles = {k: thread.member(k) for k in thread.participants if k != target}
        successor: Member | None = None
        if roles and not any(m.role == "admin" for m in roles.values() if m is not None):
            successor = min(
                (m for m in roles.values() if m is not None),
                key=lambda m: (m.joined, m.account_id),
            )
            roles[successor.account_id] = replace(successor, role="admin")
        changed = replace(
            thread,
            participants=thread.participants - {target},
            members={k: m for k, m in roles.items() if m is not None},
        )
        events = await self._events(changed, "thread")
        events += await self._events(changed, "thread.removed", [target])
        await self.store.remove_participant(
            thread_id,
            target,
            events,
            promote=None if successor is None else successor.account_id,
        )
        self.timeline.notify(events)
        return changed

    async def mute(self, account: Account, thread_id: str, muted: bool) -> Thread:
        thread = await self.visible(account, thread_id)
        member = thread.member(account.id)
        assert member is not None
        events = self.timeline.fan_out(
            [account.id], "thread.settings", thread=thread_id, data={"muted": muted}
        )
        await self.store.set_member(thread_id, account.id, muted=muted, events=events)
        self.timeline.notify(events)
        roles = dict(thread.members)
        roles[account.id] = replace(member, muted=muted)
        return replace(thread, members=roles)
