"""The storage interface every backend implements (SQLite now, Cassandra later).

Why an interface and not an ORM: the two backends differ in everything but the
operations the server needs, and those are few. Each method says what it
promises, in particular when a write is durable: the pipeline acks a chunk to
its talker only after ``append_chunks`` has returned (VXS-5.3-3), so a backend
must not return from it before the data would survive a kill -9 of the process.

All methods are async and must never block the trio event loop: a backend does
its blocking work in threads (``trio.to_thread``) or with a native async driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, Self

MessageState = Literal["live", "closed"]


class StoreError(Exception):
    """Base of the errors a backend raises on purpose."""


class AlreadyExists(StoreError):
    """A create with a key (id or username) that is taken."""


class NotFound(StoreError):
    """An update of a row that does not exist."""


@dataclass(frozen=True, kw_only=True)
class Account:
    id: str
    username: str
    #: An argon2 PHC string; the store never sees a password.
    password_hash: str
    created: int  # ms since the Unix epoch


@dataclass(frozen=True, kw_only=True)
class Session:
    #: SHA-256 of the bearer token, hex: a leaked database yields no usable token.
    token_hash: str
    account_id: str
    created: int  # ms
    expires: int  # ms


@dataclass(frozen=True, kw_only=True)
class Thread:
    id: str
    title: str
    created_by: str
    created: int  # ms
    participants: frozenset[str]


@dataclass(frozen=True, kw_only=True)
class MessageRecord:
    id: str
    thread_id: str
    sender: str
    codec: str
    created: int  # ms, the talker's clock
    state: MessageState
    #: Durable chunks: seqs 0 .. chunks-1 are stored.
    chunks: int = 0
    #: Media time of the end of the last stored chunk, 48 kHz ticks.
    duration: int = 0


@dataclass(frozen=True, kw_only=True)
class StoredChunk:
    seq: int
    ts: int  # media time of the first sample, 48 kHz ticks
    duration: int  # 48 kHz ticks, the sum of its packets' durations
    packets: tuple[bytes, ...]

    @property
    def end_ts(self) -> int:
        return self.ts + self.duration


class Store(Protocol):
    """What the server needs from storage. See the module docstring for the rules."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    # -- accounts and sessions -------------------------------------------------
    async def create_account(self, account: Account) -> None:
        """Insert; ``AlreadyExists`` if the id or the username is taken."""

    async def get_account(self, account_id: str) -> Account | None: ...

    async def get_account_by_username(self, username: str) -> Account | None: ...

    async def create_session(self, session: Session) -> None: ...

    async def get_session(self, token_hash: str) -> Session | None:
        """The session, or None if unknown. Expiry is the caller's to check."""

    async def delete_session(self, token_hash: str) -> None: ...

    # -- threads -----------------------------------------------------------------
    async def create_thread(self, thread: Thread) -> None:
        """Insert with its participants; ``AlreadyExists`` if the id is taken."""

    async def get_thread(self, thread_id: str) -> Thread | None: ...

    async def list_threads(self, account_id: str) -> list[Thread]:
        """The threads ``account_id`` takes part in, newest first."""

    async def add_participants(self, thread_id: str, account_ids: Sequence[str]) -> None:
        """Idempotent; ``NotFound`` if the thread does not exist."""

    # -- messages and chunks -----------------------------------------------------
    async def create_message(self, message: MessageRecord) -> MessageRecord:
        """Insert a new live message and return it; if the id exists, return the stored
        record unchanged (the caller compares the attributes). Durable on return."""

    async def get_message(self, message_id: str) -> MessageRecord | None: ...

    async def list_messages(self, thread_id: str, limit: int = 100) -> list[MessageRecord]:
        """A thread's messages, oldest first (the last ``limit`` of them)."""

    async def append_chunks(self, message_id: str, chunks: Sequence[StoredChunk]) -> None:
        """Store chunks durably; returns only once they are committed.

        Chunks come in seq order and extend the message contiguously (the caller
        guarantees it); a chunk whose seq is stored already is ignored (the caller
        has compared its bytes). Backends group concurrent calls into one commit.
        """

    async def close_message(self, message_id: str, chunks: int, duration: int) -> None:
        """Mark the message closed with its final count and duration. Durable on return;
        ``NotFound`` if the message does not exist."""

    async def read_chunks(self, message_id: str, from_seq: int, limit: int) -> list[StoredChunk]:
        """Up to ``limit`` stored chunks with seq >= ``from_seq``, in seq order."""

    async def seq_at_ts(self, message_id: str, ts: int) -> int:
        """The seq of the first chunk that ends after media time ``ts`` (the chunk
        holding ``ts``), or the number of stored chunks when there is none."""
