"""A store in the process's memory: nothing survives the process.

It exists to measure what storage costs (the durability benchmark runs the live path
on it and on SQLite, same run) and for tests that need no disk. It keeps the
``Store`` contract except durability: ``append_chunks`` returns at once, so a server
on it acknowledges chunks that a kill would lose. ``voxer-stream serve --storage
memory`` says so when it starts.

The data lives in a ``MemoryData`` that several ``MemoryStore`` objects may share,
so the contract's "reopen the same database" works within one process.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Self

import trio
import trio.lowlevel

from .base import (
    Account,
    AlreadyExists,
    MessageRecord,
    NotFound,
    Session,
    StoredChunk,
    Thread,
)

__all__ = ["MemoryData", "MemoryStore"]


@dataclass
class _Chunks:
    items: list[StoredChunk] = field(default_factory=list)  # seq order, contiguous from 0
    ends: list[int] = field(default_factory=list)  # end_ts of each, for seq_at_ts


@dataclass
class MemoryData:
    accounts: dict[str, Account] = field(default_factory=dict)
    usernames: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    threads: dict[str, Thread] = field(default_factory=dict)
    messages: dict[str, MessageRecord] = field(default_factory=dict)
    chunks: dict[str, _Chunks] = field(default_factory=dict)


class MemoryStore:
    """The ``Store`` protocol over dicts; every method is one checkpoint."""

    def __init__(self, data: MemoryData | None = None) -> None:
        self.data = data if data is not None else MemoryData()

    def __repr__(self) -> str:
        return f"MemoryStore({len(self.data.messages)} messages)"

    async def __aenter__(self) -> Self:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await trio.lowlevel.checkpoint()

    # -- accounts and sessions -----------------------------------------------------------

    async def create_account(self, account: Account) -> None:
        await trio.lowlevel.checkpoint()
        d = self.data
        if account.id in d.accounts or account.username in d.usernames:
            raise AlreadyExists(f"account {account.id!r}")
        d.accounts[account.id] = account
        d.usernames[account.username] = account.id

    async def get_account(self, account_id: str) -> Account | None:
        await trio.lowlevel.checkpoint()
        return self.data.accounts.get(account_id)

    async def get_account_by_username(self, username: str) -> Account | None:
        await trio.lowlevel.checkpoint()
        account_id = self.data.usernames.get(username)
        return None if account_id is None else self.data.accounts[account_id]

    async def create_session(self, session: Session) -> None:
        await trio.lowlevel.checkpoint()
        if session.token_hash in self.data.sessions:
            raise AlreadyExists("session")
        if session.account_id not in self.data.accounts:
            raise NotFound(f"account {session.account_id!r}")
        self.data.sessions[session.token_hash] = session

    async def get_session(self, token_hash: str) -> Session | None:
        await trio.lowlevel.checkpoint()
        return self.data.sessions.get(token_hash)

    async def delete_session(self, token_hash: str) -> None:
        await trio.lowlevel.checkpoint()
        self.data.sessions.pop(token_hash, None)

    # -- threads -------------------------------------------------------------------------

    async def create_thread(self, thread: Thread) -> None:
        await trio.lowlevel.checkpoint()
        if thread.id in self.data.threads:
            raise AlreadyExists(f"thread {thread.id!r}")
        self.data.threads[thread.id] = thread

    async def get_thread(self, thread_id: str) -> Thread | None:
        await trio.lowlevel.checkpoint()
        return self.data.threads.get(thread_id)

    async def list_threads(self, account_id: str) -> list[Thread]:
        await trio.lowlevel.checkpoint()
        mine = [t for t in self.data.threads.values() if account_id in t.participants]
        return sorted(mine, key=lambda t: (t.created, t.id), reverse=True)

    async def add_participants(self, thread_id: str, account_ids: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        thread = self.data.threads.get(thread_id)
        if thread is None:
            raise NotFound(f"thread {thread_id!r}")
        self.data.threads[thread_id] = replace(
            thread, participants=thread.participants | frozenset(account_ids)
        )

    # -- messages and chunks -------------------------------------------------------------

    async def create_message(self, message: MessageRecord) -> MessageRecord:
        await trio.lowlevel.checkpoint()
        stored = self.data.messages.get(message.id)
        if stored is not None:
            return stored
        if message.thread_id not in self.data.threads:
            raise NotFound(f"thread {message.thread_id!r}")
        self.data.messages[message.id] = message
        self.data.chunks[message.id] = _Chunks()
        return message

    async def get_message(self, message_id: str) -> MessageRecord | None:
        await trio.lowlevel.checkpoint()
        return self.data.messages.get(message_id)

    async def list_messages(self, thread_id: str, limit: int = 100) -> list[MessageRecord]:
        await trio.lowlevel.checkpoint()
        if limit <= 0:
            return []
        found = [m for m in self.data.messages.values() if m.thread_id == thread_id]
        found.sort(key=lambda m: (m.created, m.id))
        return found[-limit:]

    async def append_chunks(self, message_id: str, chunks: Sequence[StoredChunk]) -> None:
        await trio.lowlevel.checkpoint()
        if not chunks:
            return
        record = self.data.messages.get(message_id)
        if record is None:
            raise NotFound(f"message {message_id!r}")
        stored = self.data.chunks[message_id]
        for chunk in chunks:
            if chunk.seq < len(stored.items):
                continue  # already stored; the caller compared the bytes
            stored.items.append(chunk)
            stored.ends.append(chunk.end_ts)
        self.data.messages[message_id] = replace(
            record,
            chunks=max(record.chunks, len(stored.items)),
            duration=max(record.duration, stored.ends[-1] if stored.ends else 0),
        )

    async def close_message(self, message_id: str, chunks: int, duration: int) -> None:
        await trio.lowlevel.checkpoint()
        record = self.data.messages.get(message_id)
        if record is None:
            raise NotFound(f"message {message_id!r}")
        self.data.messages[message_id] = replace(
            record, state="closed", chunks=chunks, duration=duration
        )

    async def read_chunks(self, message_id: str, from_seq: int, limit: int) -> list[StoredChunk]:
        await trio.lowlevel.checkpoint()
        stored = self.data.chunks.get(message_id)
        if stored is None or limit <= 0:
            return []
        return stored.items[from_seq : from_seq + limit]

    async def seq_at_ts(self, message_id: str, ts: int) -> int:
        await trio.lowlevel.checkpoint()
        stored = self.data.chunks.get(message_id)
        if stored is None:
            return 0
        # The first chunk that ends after ts; ends are non-decreasing (VXS-2.2-2).
        return bisect.bisect_right(stored.ends, ts)
