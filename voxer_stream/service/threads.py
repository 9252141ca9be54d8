"""Threads, their participants, and the one authorization rule of this version.

Only a thread's participants may post into it or hear its messages (VXS-8-2).
Every binding calls ``can_post`` / ``can_listen`` here, so the rule lives in
one place whatever the transport.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

from ..store.base import Account, AlreadyExists, MessageRecord, NotFound, Store, Thread
from ..wire import ErrorCode, ProtocolError
from ..wire.frames import ID_PATTERN
from .identity import now_ms

MAX_TITLE: Final = 200
MAX_PARTICIPANTS: Final = 1000


class Threads:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _accounts(self, usernames: Sequence[str]) -> list[Account]:
        accounts = []
        for username in usernames:
            account = await self.store.get_account_by_username(username)
            if account is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no account {username!r}")
            accounts.append(account)
        return accounts

    async def create(
        self,
        creator: Account,
        *,
        title: str,
        participants: Sequence[str],
        thread_id: str | None = None,
    ) -> Thread:
        """Create a thread with ``creator`` and ``participants`` (usernames).

        Idempotent on a client-chosen id: the same creator creating the same id
        again gets the existing thread (offline-first clients replay creates).
        """
        if thread_id is not None and not ID_PATTERN.fullmatch(thread_id):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "id must match [A-Za-z0-9_-]{1,64}")
        if len(title) > MAX_TITLE or len(participants) > MAX_PARTICIPANTS:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "title or participant list too long")
        members = await self._accounts(participants)
        thread = Thread(
            id=thread_id or uuid.uuid4().hex,
            title=title,
            created_by=creator.id,
            created=now_ms(),
            participants=frozenset([creator.id, *(a.id for a in members)]),
        )
        try:
            await self.store.create_thread(thread)
        except AlreadyExists:
            existing = await self.store.get_thread(thread.id)
            if existing is None or existing.created_by != creator.id:
                raise ProtocolError(
                    ErrorCode.INVALID_REQUEST, f"thread id {thread.id!r} is taken"
                ) from None
            return existing
        return thread

    async def visible(self, account: Account, thread_id: str) -> Thread:
        """The thread if ``account`` takes part in it (VXS-8-2)."""
        thread = await self.store.get_thread(thread_id)
        if thread is None:
            raise ProtocolError(ErrorCode.THREAD_NOT_FOUND, f"thread {thread_id!r}", "VXS-5.2-1")
        if account.id not in thread.participants:
            raise ProtocolError(ErrorCode.FORBIDDEN, "not a participant of this thread", "VXS-8-2")
        return thread

    async def can_post(self, account: Account, thread_id: str) -> None:
        await self.visible(account, thread_id)

    async def can_listen(self, account: Account, message: MessageRecord) -> None:
        thread = await self.store.get_thread(message.thread_id)
        if thread is None or account.id not in thread.participants:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "not a participant of the message's thread", "VXS-6.1-1"
            )

    async def add_participants(
        self, account: Account, thread_id: str, usernames: Sequence[str]
    ) -> Thread:
        await self.visible(account, thread_id)
        members = await self._accounts(usernames)
        try:
            await self.store.add_participants(thread_id, [a.id for a in members])
        except NotFound:
            raise ProtocolError(ErrorCode.THREAD_NOT_FOUND, thread_id) from None
        return await self.visible(account, thread_id)

    async def message(self, account: Account, message_id: str) -> MessageRecord:
        record = await self.store.get_message(message_id)
        if record is None:
            raise ProtocolError(ErrorCode.MESSAGE_NOT_FOUND, f"message {message_id!r}")
        await self.can_listen(account, record)
        return record
