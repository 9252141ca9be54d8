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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, Self

MessageState = Literal["live", "closed"]
MessageKind = Literal["audio", "text", "image", "location"]
ThreadKind = Literal["group", "direct"]
Role = Literal["admin", "member", "listen"]
ReceiptKind = Literal["delivered", "heard", "read"]


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
    display_name: str = ""
    #: The id of a stored image (``Media``), or None.
    avatar: str | None = None


@dataclass(frozen=True, kw_only=True)
class Session:
    #: SHA-256 of the bearer token, hex: a leaked database yields no usable token.
    token_hash: str
    account_id: str
    created: int  # ms
    expires: int  # ms
    #: The public id that lists and revokes the session (one per device); a backend
    #: derives it from ``token_hash`` when it is empty.
    id: str = ""
    device: str = ""
    #: The last timeline position this device acknowledged (VXS-13.5-6).
    acked: int = 0
    last_seen: int = 0  # ms


@dataclass(frozen=True, kw_only=True)
class Member:
    account_id: str
    role: Role = "member"
    muted: bool = False
    joined: int = 0  # ms


@dataclass(frozen=True, kw_only=True)
class Thread:
    id: str
    title: str
    created_by: str
    created: int  # ms
    participants: frozenset[str]
    kind: ThreadKind = "group"
    #: Only admins may post (VXS-13.2-5).
    controlled: bool = False
    #: Roles and settings by account id. A participant missing here is an admin if
    #: it created the thread and a member otherwise (what ``member`` answers).
    members: Mapping[str, Member] = field(default_factory=dict, compare=False)

    def member(self, account_id: str) -> Member | None:
        if account_id not in self.participants:
            return None
        found = self.members.get(account_id)
        if found is not None:
            return found
        role: Role = "admin" if account_id == self.created_by else "member"
        return Member(account_id=account_id, role=role, joined=self.created)


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
    kind: MessageKind = "audio"
    #: JSON text: a text, image or location message's content; None for audio.
    body: str | None = None
    #: A message directed to one participant: only it and the sender see it.
    directed_to: str | None = None
    #: When the sender recalled it (ms); its content is gone.
    recalled: int | None = None
    forwarded_from: str | None = None
    #: The image (``Media``) an image message shows.
    media_id: str | None = None

    def visible_to(self, account_id: str) -> bool:
        """Directed messages are seen by their sender and their addressee only."""
        return self.directed_to is None or account_id in (self.directed_to, self.sender)


@dataclass(frozen=True, kw_only=True)
class StoredChunk:
    seq: int
    ts: int  # media time of the first sample, 48 kHz ticks
    duration: int  # 48 kHz ticks, the sum of its packets' durations
    packets: tuple[bytes, ...]

    @property
    def end_ts(self) -> int:
        return self.ts + self.duration


@dataclass(frozen=True, kw_only=True)
class Contact:
    owner: str
    contact: str
    blocked: bool = False
    created: int = 0  # ms


@dataclass(frozen=True, kw_only=True)
class Reaction:
    message_id: str
    account_id: str
    emoji: str
    created: int = 0


@dataclass(frozen=True, kw_only=True)
class Receipt:
    message_id: str
    account_id: str
    kind: ReceiptKind
    created: int = 0


@dataclass(frozen=True, kw_only=True)
class NewEvent:
    """A timeline event to append for one account (the backend gives its position)."""

    account_id: str
    type: str
    thread_id: str | None = None
    message_id: str | None = None
    data: str = "{}"  # JSON text
    created: int = 0  # ms
    #: Appending an event whose (account_id, dedupe) is stored already does nothing:
    #: what makes "message went live" idempotent when ingest replays it.
    dedupe: str | None = None


@dataclass(frozen=True, kw_only=True)
class Event:
    pos: int  # increases with every event of the account, never reused
    account_id: str
    type: str
    thread_id: str | None
    message_id: str | None
    data: str
    created: int


@dataclass(frozen=True, kw_only=True)
class TimelineBounds:
    #: Events at positions <= ``trimmed`` are gone (retention): a since-token below it
    #: has a gap, which sync reports as ``limited`` (VXS-13.5-4).
    trimmed: int
    latest: int


@dataclass(frozen=True, kw_only=True)
class Counts:
    unread: int = 0
    unheard: int = 0


@dataclass(frozen=True, kw_only=True)
class Media:
    id: str
    owner: str
    content_type: str
    width: int
    height: int
    data: bytes
    thumbnail: bytes
    thumbnail_type: str
    created: int


@dataclass(frozen=True, kw_only=True)
class SearchHit:
    kind: Literal["message", "thread"]
    thread_id: str
    message_id: str | None
    created: int
    snippet: str
    #: Orders hits with the same ``created``; with it, a page cursor.
    rank: int


@dataclass(frozen=True, kw_only=True)
class PushRecord:
    id: str
    account_id: str
    session_id: str
    endpoint: str
    p256dh: str
    auth: str
    created: int


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
    async def create_thread(self, thread: Thread, events: Sequence[NewEvent] = ()) -> None:
        """Insert with its participants (and ``events``, in the same commit);
        ``AlreadyExists`` if the id is taken."""

    async def get_thread(self, thread_id: str) -> Thread | None: ...

    async def list_threads(self, account_id: str) -> list[Thread]:
        """The threads ``account_id`` takes part in, newest first."""

    async def add_participants(
        self,
        thread_id: str,
        account_ids: Sequence[str],
        *,
        role: Role = "member",
        joined: int = 0,
        events: Sequence[NewEvent] = (),
    ) -> None:
        """Idempotent (a participant keeps its role); ``NotFound`` if the thread does
        not exist."""

    # -- messages and chunks -----------------------------------------------------
    async def create_message(
        self, message: MessageRecord, events: Sequence[NewEvent] = ()
    ) -> MessageRecord:
        """Insert a new message and return it; if the id exists, return the stored
        record unchanged (the caller compares the attributes) and append no events.
        Durable on return; ``events`` are committed with the message."""

    async def get_message(self, message_id: str) -> MessageRecord | None: ...

    async def list_messages(
        self,
        thread_id: str,
        limit: int = 100,
        *,
        before: str | None = None,
        viewer: str | None = None,
    ) -> list[MessageRecord]:
        """A thread's messages, oldest first: the last ``limit`` of them, or the last
        ``limit`` before message ``before``; with ``viewer``, only those it may see
        (``MessageRecord.visible_to``)."""

    async def append_chunks(self, message_id: str, chunks: Sequence[StoredChunk]) -> None:
        """Store chunks durably; returns only once they are committed.

        Chunks come in seq order and extend the message contiguously (the caller
        guarantees it); a chunk whose seq is stored already is ignored (the caller
        has compared its bytes). Backends group concurrent calls into one commit.
        """

    async def close_message(self, message_id: str, chunks: int, duration: int) -> None:
        """Mark the message closed with its final count and duration. Durable on return;
        ``NotFound`` if the message does not exist."""

    async def live_messages(self, *, after: str = "", limit: int = 1000) -> list[str]:
        """The ids of messages still live (state 'live'), in id order, greater than
        ``after`` (paging), at most ``limit``. Why: when a server process dies, the process
        that now owns its messages (by the consistent-hash ring of issue 7) finds the ones
        left live and closes them once abandoned.

        Only audio messages are ever live (text, image and location messages are created
        closed). Ids compare as their UTF-8 bytes (code points), in every backend."""

    async def read_chunks(self, message_id: str, from_seq: int, limit: int) -> list[StoredChunk]:
        """Up to ``limit`` stored chunks with seq >= ``from_seq``, in seq order."""

    async def seq_at_ts(self, message_id: str, ts: int) -> int:
        """The seq of the first chunk that ends after media time ``ts`` (the chunk
        holding ``ts``), or the number of stored chunks when there is none."""

    # -- the messaging service: accounts, sessions, contacts -------------------------
    async def update_account(
        self,
        account_id: str,
        *,
        password_hash: str | None = None,
        display_name: str | None = None,
        avatar: str | None = None,
        clear_avatar: bool = False,
    ) -> None:
        """Change what is given; ``NotFound`` if there is no such account."""

    async def list_sessions(self, account_id: str) -> list[Session]:
        """The account's sessions (expired ones included), newest first."""

    async def delete_sessions(
        self,
        account_id: str,
        *,
        session_id: str | None = None,
        keep_token_hash: str | None = None,
    ) -> int:
        """Delete the account's session ``session_id``, or (without it) every session
        but ``keep_token_hash``; the number deleted."""

    async def touch_session(
        self, token_hash: str, *, last_seen: int | None = None, acked: int | None = None
    ) -> None:
        """Record activity; ``acked`` only ever moves forward."""

    async def put_contact(self, contact: Contact) -> None:
        """Insert or replace (the owner's ``blocked`` flag)."""

    async def get_contact(self, owner: str, contact: str) -> Contact | None: ...

    async def delete_contact(self, owner: str, contact: str) -> bool: ...

    async def list_contacts(self, owner: str) -> list[Contact]:
        """Oldest first (VXS-13.1-3)."""

    # -- threads -----------------------------------------------------------------------
    async def find_direct_thread(self, a: str, b: str) -> Thread | None:
        """The direct (1:1) thread of these two accounts, if there is one."""

    async def update_thread(
        self,
        thread_id: str,
        *,
        title: str | None = None,
        controlled: bool | None = None,
        events: Sequence[NewEvent] = (),
    ) -> None:
        """``NotFound`` if there is no such thread."""

    async def set_member(
        self,
        thread_id: str,
        account_id: str,
        *,
        role: Role | None = None,
        muted: bool | None = None,
        events: Sequence[NewEvent] = (),
    ) -> None:
        """``NotFound`` if the account is not a participant."""

    async def remove_participant(
        self,
        thread_id: str,
        account_id: str,
        events: Sequence[NewEvent] = (),
        *,
        promote: str | None = None,
    ) -> bool:
        """False if it was not a participant (and then nothing changes); ``promote``
        becomes admin in the same commit (the last admin left)."""

    async def thread_counts(self, account_id: str) -> dict[str, Counts]:
        """Per thread of the account: messages of others it may see, since it joined,
        not recalled, without its ``read`` (text, image, location) or ``heard`` (audio)
        receipt. Threads with nothing unread may be missing."""

    # -- messages: recall, forward, reactions, receipts, media ---------------------------
    async def recall_message(
        self, message_id: str, at: int, events: Sequence[NewEvent] = ()
    ) -> MessageRecord:
        """Drop the content (body, image, chunks, reactions, search entry) and mark it
        recalled;
        ``NotFound`` if there is no such message."""

    async def forward_message(
        self, source_id: str, message: MessageRecord, events: Sequence[NewEvent] = ()
    ) -> MessageRecord:
        """Create ``message`` as a copy of ``source_id``'s content (its chunks too);
        idempotent on ``message.id`` like ``create_message``."""

    async def set_reaction(
        self, reaction: Reaction, on: bool, events: Sequence[NewEvent] = ()
    ) -> bool:
        """Add (``on``) or remove it; False, and no events, if nothing changed."""

    async def reactions(self, message_ids: Sequence[str]) -> dict[str, list[Reaction]]: ...

    async def add_receipt(self, receipt: Receipt, events: Sequence[NewEvent] = ()) -> bool:
        """False, and no events, if that receipt is stored already."""

    async def list_receipts(self, message_id: str) -> list[Receipt]: ...

    async def put_media(self, media: Media) -> None: ...

    async def get_media(self, media_id: str) -> Media | None: ...

    async def media_visible(self, media_id: str, account_id: str) -> bool:
        """Whether ``account_id`` owns the image, sees a message showing it, or it is
        someone's avatar."""

    # -- the timeline ------------------------------------------------------------------
    async def add_events(self, events: Sequence[NewEvent]) -> None:
        """Append, skipping any whose (account, dedupe) is stored already."""

    async def read_events(self, account_id: str, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events of the account with ``pos > after``, in order."""

    async def timeline_bounds(self, account_id: str) -> TimelineBounds: ...

    async def trim_events(self, before: int) -> int:
        """Delete events created before ``before`` (ms), remembering per account up to
        which position they went; the number deleted."""

    # -- search and push -------------------------------------------------------------
    async def search(
        self, account_id: str, query: str, *, before: tuple[int, int] | None, limit: int
    ) -> list[SearchHit]:
        """Text messages and thread titles ``account_id`` may see that match ``query``
        (an FTS5 query of quoted terms), newest first, below the ``(created, rank)``
        cursor ``before``."""

    async def put_push_subscription(self, record: PushRecord) -> PushRecord:
        """Insert, or return the stored record with the same endpoint (re-registering
        a browser's subscription is idempotent; it then moves to this session)."""

    async def list_push_subscriptions(self, account_id: str) -> list[PushRecord]: ...

    async def delete_push_subscription(self, subscription_id: str) -> None: ...
