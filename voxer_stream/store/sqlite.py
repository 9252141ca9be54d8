"""The embedded SQLite backend: WAL, one writer thread doing group commit, pooled readers.

How it works (and why):

* **One writer thread owns the only write connection.** Every write (``append_chunks``,
  ``close_message``, ``create_*``, ...) becomes a request on a queue. The writer takes
  the first request, then drains whatever else is queued at that moment (at most
  ``batch_max`` requests, for at most ``batch_window`` seconds), runs them all in one
  ``BEGIN IMMEDIATE`` ... ``COMMIT`` and only then completes each request. The batch
  forms by itself: while one COMMIT waits for its fsync, the next requests pile up. No
  timer delays a lone write.
* **One request's failure never fails its neighbours:** each runs inside its own
  ``SAVEPOINT``; an error (``AlreadyExists`` from a UNIQUE constraint, say) rolls back
  that savepoint only. Only a failed BEGIN or COMMIT fails the whole batch, and then
  nothing of it is durable.
* **Appends in a batch go in bulk:** two multi-row statements for all of them (one
  ``SAVEPOINT``); if that fails (an unknown message), it is rolled back and the appends
  run one savepoint each, so again only the faulty one fails.
* **Completion goes back to trio thread-safely:** the writer calls
  ``TrioToken.run_sync_soon`` once per batch, which sets each request's ``trio.Event``.
* **Durable on return:** ``synchronous=FULL`` (default) fsyncs the WAL on every COMMIT,
  so a returned write survives a kill -9 *and* a power cut. ``synchronous="NORMAL"``
  still survives a kill -9 of the process (the WAL is in the OS page cache) but a power
  cut may lose the last commits; it is faster on slow disks.
* **Cancellation (the trio.to_thread choice):** a write checks for cancellation *before*
  it is queued; once queued, its wait is shielded, so the call returns (or raises) what
  the commit produced, and a pending cancellation is delivered at the caller's next
  checkpoint. So a write that raised ``Cancelled`` never happened, and a write that
  returned is committed: the caller always knows. The shielded wait lasts one commit
  (a few ms on a sane disk).
* **Reads never wait for the writer:** WAL lets readers run beside the writer. Reads run
  in ``trio.to_thread.run_sync`` threads (at most ``read_threads`` at once, through a
  ``CapacityLimiter``), each on a connection checked out of a small pool; each read is one
  read transaction, so a read of several statements sees one snapshot.

Chunk payloads: ``chunks.packets`` is one BLOB, the packets concatenated, each preceded by
its length as an unsigned LEB128 varint (1 byte below 128 bytes, 2 bytes below 16 KiB).
An empty tuple is an empty blob; an empty packet is the single byte ``00``. See
:func:`encode_packets` / :func:`decode_packets`.

Schema versions live in ``PRAGMA user_version``; ``_MIGRATIONS[n]`` takes version ``n``
to ``n + 1`` inside one transaction. A database newer than this code is refused.

Foreign keys are on, for the containment relations only: sessions -> accounts,
participants -> threads, messages -> threads, chunks -> messages. A write that names a
missing parent raises ``NotFound`` (SQLite-specific: the ``Store`` contract does not
require it, since a Cassandra backend cannot check it for free).
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, cast

import trio

from .base import (
    Account,
    MessageRecord,
    NewEvent,
    NotFound,
    Role,
    Session,
    StoredChunk,
    StoreError,
    Thread,
)
from .sqlite_rows import (
    ACCOUNT_COLUMNS,
    MESSAGE_COLUMNS,
    MESSAGE_PLACEHOLDERS,
    SESSION_COLUMNS,
    THREAD_COLUMNS,
    account_row,
    get_message,
    get_thread,
    index_message,
    insert_events,
    integrity_error,
    message_row,
    message_values,
    read_threads,
    session_row,
)
from .sqlite_service import ServiceOps

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "decode_packets", "encode_packets"]

T = TypeVar("T")

Synchronous = Literal["FULL", "NORMAL", "OFF"]

# -- schema ------------------------------------------------------------------------------

#: ``_MIGRATIONS[n]`` upgrades a database at ``user_version == n`` to ``n + 1``.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            created INTEGER NOT NULL
        )""",
        """CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            created INTEGER NOT NULL,
            expires INTEGER NOT NULL
        )""",
        "CREATE INDEX sessions_by_account ON sessions(account_id)",
        """CREATE TABLE threads (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created INTEGER NOT NULL
        )""",
        """CREATE TABLE participants (
            thread_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
            account_id TEXT NOT NULL,
            PRIMARY KEY (thread_id, account_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX participants_by_account ON participants(account_id)",
        """CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            thread_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
            sender TEXT NOT NULL,
            codec TEXT NOT NULL,
            created INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('live', 'closed')),
            chunks INTEGER NOT NULL DEFAULT 0,
            duration INTEGER NOT NULL DEFAULT 0
        )""",
        # list_messages: a thread's messages by (created, id).
        "CREATE INDEX messages_by_thread ON messages(thread_id, created, id)",
        """CREATE TABLE chunks (
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            duration INTEGER NOT NULL,
            packets BLOB NOT NULL,
            PRIMARY KEY (message_id, seq)
        ) WITHOUT ROWID""",
    ),
    # 2: the messaging service (spec section 13).
    (
        "ALTER TABLE accounts ADD COLUMN display_name TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE accounts ADD COLUMN avatar TEXT",
        "ALTER TABLE sessions ADD COLUMN id TEXT",
        "ALTER TABLE sessions ADD COLUMN device TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE sessions ADD COLUMN acked INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE sessions ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0",
        "UPDATE sessions SET id = substr(token_hash, 1, 32)",
        "CREATE UNIQUE INDEX sessions_by_id ON sessions(id)",
        "ALTER TABLE threads ADD COLUMN kind TEXT NOT NULL DEFAULT 'group'",
        "ALTER TABLE threads ADD COLUMN controlled INTEGER NOT NULL DEFAULT 0",
        # A direct thread's two accounts, "a b" sorted: at most one such thread a pair.
        "ALTER TABLE threads ADD COLUMN pair TEXT",
        "CREATE UNIQUE INDEX threads_by_pair ON threads(pair) WHERE pair IS NOT NULL",
        "ALTER TABLE participants ADD COLUMN role TEXT NOT NULL DEFAULT 'member'",
        "ALTER TABLE participants ADD COLUMN muted INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE participants ADD COLUMN joined INTEGER NOT NULL DEFAULT 0",
        """UPDATE participants SET role = 'admin' WHERE account_id =
            (SELECT created_by FROM threads WHERE threads.id = participants.thread_id)""",
        """UPDATE participants SET joined =
            (SELECT created FROM threads WHERE threads.id = participants.thread_id)""",
        "ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'audio'",
        "ALTER TABLE messages ADD COLUMN body TEXT",
        "ALTER TABLE messages ADD COLUMN directed_to TEXT",
        "ALTER TABLE messages ADD COLUMN recalled INTEGER",
        "ALTER TABLE messages ADD COLUMN forwarded_from TEXT",
        "ALTER TABLE messages ADD COLUMN media_id TEXT",
        "CREATE INDEX messages_by_media ON messages(media_id) WHERE media_id IS NOT NULL",
        """CREATE TABLE contacts (
            owner TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            contact TEXT NOT NULL,
            blocked INTEGER NOT NULL DEFAULT 0,
            created INTEGER NOT NULL,
            PRIMARY KEY (owner, contact)
        ) WITHOUT ROWID""",
        """CREATE TABLE reactions (
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            account_id TEXT NOT NULL,
            emoji TEXT NOT NULL,
            created INTEGER NOT NULL,
            PRIMARY KEY (message_id, account_id, emoji)
        ) WITHOUT ROWID""",
        """CREATE TABLE receipts (
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            account_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('delivered', 'heard', 'read')),
            created INTEGER NOT NULL,
            PRIMARY KEY (message_id, account_id, kind)
        ) WITHOUT ROWID""",
        # The timeline: AUTOINCREMENT so that a position is never reused after a trim.
        """CREATE TABLE events (
            pos INTEGER PRIMARY KEY AUTOINCREMENT,
            account_id TEXT NOT NULL,
            type TEXT NOT NULL,
            thread_id TEXT,
            message_id TEXT,
            data TEXT NOT NULL,
            created INTEGER NOT NULL,
            dedupe TEXT
        )""",
        "CREATE INDEX events_by_account ON events(account_id, pos)",
        "CREATE INDEX events_by_created ON events(created)",
        """CREATE UNIQUE INDEX events_dedupe ON events(account_id, dedupe)
            WHERE dedupe IS NOT NULL""",
        """CREATE TABLE timeline_trimmed (
            account_id TEXT PRIMARY KEY,
            pos INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE media (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            content_type TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            data BLOB NOT NULL,
            thumbnail BLOB NOT NULL,
            thumbnail_type TEXT NOT NULL,
            created INTEGER NOT NULL
        )""",
        """CREATE TABLE push_subscriptions (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            session_id TEXT NOT NULL,
            endpoint TEXT NOT NULL UNIQUE,
            p256dh TEXT NOT NULL,
            auth TEXT NOT NULL,
            created INTEGER NOT NULL
        )""",
        "CREATE INDEX push_by_account ON push_subscriptions(account_id)",
        # Full-text search over text messages and thread titles (VXS-13.8-1).
        """CREATE VIRTUAL TABLE search_index USING fts5(
            body, kind UNINDEXED, thread_id UNINDEXED, message_id UNINDEXED,
            created UNINDEXED, tokenize = 'unicode61 remove_diacritics 2'
        )""",
        # The titles of the threads made before (version 1 had no text messages).
        """INSERT INTO search_index (body, kind, thread_id, message_id, created)
            SELECT title, 'thread', id, NULL, created FROM threads""",
    ),
    # 3: live_messages, the messages left live (what a process takes over from a dead
    # one, issue 7). Partial: closed rows (nearly all of them) are not in it, and a
    # listing walks live ids only, in id order.
    ("CREATE INDEX messages_live ON messages(id) WHERE state = 'live'",),
)

SCHEMA_VERSION = len(_MIGRATIONS)


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated meanwhile.
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this code "
                f"({SCHEMA_VERSION}); refusing to open it"
            )
        for step in _MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- packets blob ------------------------------------------------------------------------


def encode_packets(packets: Sequence[bytes]) -> bytes:
    """Packets as one blob: each one preceded by its length as an unsigned LEB128 varint."""
    out = bytearray()
    for packet in packets:
        n = len(packet)
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        out += packet
    return bytes(out)


def decode_packets(blob: bytes) -> tuple[bytes, ...]:
    """The inverse of :func:`encode_packets`; ``ValueError`` on a truncated blob."""
    packets: list[bytes] = []
    i, end = 0, len(blob)
    while i < end:
        n = shift = 0
        while True:
            if i >= end or shift > 56:
                raise ValueError("corrupt packets blob: bad length varint")
            b = blob[i]
            i += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        if i + n > end:
            raise ValueError("corrupt packets blob: packet runs past the end")
        packets.append(blob[i : i + n])
        i += n
    return tuple(packets)


# -- the writer's requests ---------------------------------------------------------------


#: What an append request carries for the bulk path: message id, its chunks as
#: (seq, ts, duration, packets), the chunk count and the media end they imply.
_Append = tuple[str, list[tuple[int, int, int, tuple[bytes, ...]]], int, int]

#: Rows per multi-row statement in the bulk path (5 parameters each; SQLite allows 32766).
_BULK_ROWS = 500

# UPDATE ... FROM needs SQLite 3.33; older libraries take the per-request path only.
_BULK_OK = sqlite3.sqlite_version_info >= (3, 33, 0)


class _WriteRequest(Generic[T]):
    """One write: a function run on the write connection inside its own savepoint.

    An append also carries its data in ``append``, so that a batch of appends can be
    written with a few multi-row statements instead of four statements per request.
    """

    __slots__ = ("append", "done", "error", "fn", "result")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], T], append: _Append | None = None
    ) -> None:
        self.fn = fn
        self.append = append
        self.done = trio.Event()  # set in the trio thread, via run_sync_soon
        self.result: T | None = None
        self.error: BaseException | None = None


def _set_done(batch: list[_WriteRequest[Any]]) -> None:
    for request in batch:
        request.done.set()


_STOP = None  # the queue's sentinel: finish what is queued, then exit


class SQLiteStore(ServiceOps):
    """The ``Store`` on one SQLite file. Use as ``async with SQLiteStore(path) as store:``.

    Options:
        synchronous: ``"FULL"`` (default: a commit survives power loss) or ``"NORMAL"``
            (survives a process kill only).
        busy_timeout: seconds a connection waits for a lock another process holds.
        batch_max: the most write requests one transaction groups.
        batch_window: the longest (seconds) the writer keeps draining the queue into one
            batch; it never waits for requests that have not arrived.
        read_threads: the most reads that run at once (and read connections kept).

    Counters for tests and metrics (written by the writer thread, read anywhere):
    ``commits`` (transactions committed), ``write_requests`` (requests in them),
    ``max_batch`` (largest batch so far).

    A store can be opened and closed again, sequentially; several stores (in this
    process or others) may open the same file, one writer at a time taking the lock.
    Use it from the trio run that opened it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        batch_max: int = 256,
        batch_window: float = 0.002,
        read_threads: int = 4,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError(f"synchronous must be 'FULL', 'NORMAL' or 'OFF', not {synchronous!r}")
        if batch_max < 1 or read_threads < 1:
            raise ValueError("batch_max and read_threads must be at least 1")
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise ValueError("SQLiteStore needs a file path (WAL and several connections)")
        self.synchronous: Synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.batch_max = batch_max
        self.batch_window = batch_window
        self.read_threads = read_threads

        self.commits = 0
        self.write_requests = 0
        self.max_batch = 0

        self._open = False
        self._queue: queue.SimpleQueue[_WriteRequest[Any] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._read_limiter: trio.CapacityLimiter | None = None
        self._pool_lock = threading.Lock()
        self._idle_readers: list[sqlite3.Connection] = []
        self._all_readers: list[sqlite3.Connection] = []

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<SQLiteStore {self.path!r} {state} synchronous={self.synchronous}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError("this SQLiteStore is open already")
        # Not abandoned on cancel: the connection is either returned or closed.
        conn = await trio.to_thread.run_sync(self._open_write_connection)
        token = trio.lowlevel.current_trio_token()
        self._queue = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._writer_main,
            args=(conn, self._queue, token),
            name=f"voxer-sqlite-writer:{os.path.basename(self.path)}",
            daemon=True,
        )
        self._writer.start()
        self._read_limiter = trio.CapacityLimiter(self.read_threads)
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit every queued write, stop the writer, close every connection."""
        if not self._open:
            return
        self._open = False  # from here on, new reads and writes raise StoreError
        writer, limiter = self._writer, self._read_limiter
        assert writer is not None
        assert limiter is not None
        self._queue.put(_STOP)
        # Shielded: a cancelled close must still drain and close, or data and file
        # handles leak.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.join)
            # Wait until no read is in flight before closing the read connections.
            for _ in range(self.read_threads):
                await limiter.acquire_on_behalf_of(object())
            await trio.to_thread.run_sync(self._close_readers)
        self._writer = None
        self._read_limiter = None

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False:
        # a connection is opened in one worker thread and used or closed in another,
        # never by two threads at once.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_write_connection(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            mode = self._switch_to_wal(conn)
            if str(mode).lower() != "wal":
                raise StoreError(f"could not switch {self.path} to WAL (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode = WAL``, retried while another process opening the same
        new database holds it: SQLite answers that pragma "database is locked" at once,
        without its busy handler (``serve --workers`` starts N processes together)."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return str(mode)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _close_readers(self) -> None:
        with self._pool_lock:
            readers, self._all_readers, self._idle_readers = self._all_readers, [], []
        for conn in readers:
            conn.close()

    # -- the writer thread ---------------------------------------------------------------

    def _writer_main(
        self,
        conn: sqlite3.Connection,
        requests: queue.SimpleQueue[_WriteRequest[Any] | None],
        token: trio.lowlevel.TrioToken,
    ) -> None:
        try:
            stopping = False
            while not stopping:
                first = requests.get()
                if first is None:
                    break
                batch = [first]
                deadline = time.monotonic() + self.batch_window
                while len(batch) < self.batch_max and time.monotonic() < deadline:
                    try:
                        item = requests.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                self._run_batch(conn, batch)
                with contextlib.suppress(trio.RunFinishedError):  # nobody left to tell
                    token.run_sync_soon(_set_done, batch)
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_WriteRequest[Any]]) -> None:
        """Run the batch in one transaction; never raises (errors go to the requests)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            for request in batch:
                request.error = StoreError(f"could not begin a write transaction: {exc}")
                request.error.__cause__ = exc
            return
        try:
            appends = [r for r in batch if r.append is not None] if len(batch) > 1 else []
            bulk = len(appends) > 1 and _BULK_OK and self._bulk_append(conn, appends)
            for request in batch:
                if bulk and request.append is not None:
                    continue  # written by _bulk_append
                conn.execute("SAVEPOINT request")
                try:
                    request.result = request.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO request")
                    request.error = exc
                conn.execute("RELEASE request")
            conn.execute("COMMIT")
        except Exception as exc:
            # COMMIT failed (disk full, I/O error) or SQLite rolled the transaction back
            # by itself: nothing of this batch is durable, so every request fails.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for request in batch:
                request.result = None
                request.error = StoreError(f"write transaction failed: {exc}")
                request.error.__cause__ = exc
            return
        self.commits += 1
        self.write_requests += len(batch)
        self.max_batch = max(self.max_batch, len(batch))

    def _bulk_append(self, conn: sqlite3.Connection, appends: list[_WriteRequest[Any]]) -> bool:
        """Write all the batch's appends with multi-row statements, in one savepoint.

        The fast path of group commit: two statements per batch instead of four per
        request (each statement is a GIL round trip, and under load the writer thread
        competes for the GIL with the trio thread). Requests in one batch are concurrent
        (each caller waits for its previous write), so running the appends before the
        batch's other requests is a valid order. If anything fails (an unknown
        message), the savepoint is rolled back and False tells the caller to run the
        appends one by one, so that only the faulty one fails.
        """
        rows: list[tuple[str, int, int, int, bytes]] = []
        ends: dict[str, tuple[int, int]] = {}
        for request in appends:
            assert request.append is not None
            message_id, items, count, end = request.append
            rows.extend((message_id, s, t, d, encode_packets(p)) for s, t, d, p in items)
            old_count, old_end = ends.get(message_id, (0, 0))
            ends[message_id] = (max(old_count, count), max(old_end, end))
        updates = [(m, c, e) for m, (c, e) in ends.items()]
        conn.execute("SAVEPOINT bulk")
        try:
            for i in range(0, len(rows), _BULK_ROWS):
                part = rows[i : i + _BULK_ROWS]
                conn.execute(
                    "INSERT OR IGNORE INTO chunks (message_id, seq, ts, duration, packets)"
                    " VALUES " + ",".join(["(?, ?, ?, ?, ?)"] * len(part)),
                    [value for row in part for value in row],
                )
            for i in range(0, len(updates), _BULK_ROWS):
                upart = updates[i : i + _BULK_ROWS]
                cursor = conn.execute(
                    "UPDATE messages SET chunks = max(messages.chunks, v.column2),"
                    " duration = max(messages.duration, v.column3)"
                    " FROM (VALUES " + ",".join(["(?, ?, ?)"] * len(upart)) + ") AS v"
                    " WHERE messages.id = v.column1",
                    [value for row in upart for value in row],
                )
                if cursor.rowcount != len(upart):
                    raise NotFound("a message of the batch does not exist")
        except (sqlite3.IntegrityError, StoreError):
            conn.execute("ROLLBACK TO bulk")
            conn.execute("RELEASE bulk")
            return False
        conn.execute("RELEASE bulk")
        return True

    async def _write(
        self, fn: Callable[[sqlite3.Connection], T], append: _Append | None = None
    ) -> T:
        # Cancelled before queueing: nothing happened. Queued: wait for the commit,
        # shielded, so the outcome is always known (see the module docstring).
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._open:
            raise StoreError("the store is not open")
        request = _WriteRequest(fn, append)
        self._queue.put(request)
        with trio.CancelScope(shield=True):
            await request.done.wait()
        if request.error is not None:
            raise request.error
        return cast(T, request.result)

    # -- reads -------------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._open:
            await trio.lowlevel.checkpoint()
            raise StoreError("the store is not open")
        return await trio.to_thread.run_sync(self._run_read, fn, limiter=self._read_limiter)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._pool_lock:
            conn = self._idle_readers.pop() if self._idle_readers else None
        if conn is None:
            conn = self._connect()
            try:
                conn.execute("PRAGMA query_only = ON")
            except BaseException:
                conn.close()
                raise
            with self._pool_lock:
                self._all_readers.append(conn)
        try:
            conn.execute("BEGIN")  # one snapshot for all statements of this read
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        finally:
            with self._pool_lock:
                self._idle_readers.append(conn)

    # -- accounts and sessions -----------------------------------------------------------

    async def create_account(self, account: Account) -> None:
        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        account.id,
                        account.username,
                        account.password_hash,
                        account.created,
                        account.display_name,
                        account.avatar,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, f"account {account.id!r}") from exc

        await self._write(op)

    async def get_account(self, account_id: str) -> Account | None:
        def op(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,)
            ).fetchone()
            return None if row is None else account_row(row)

        return await self._read(op)

    async def get_account_by_username(self, username: str) -> Account | None:
        def op(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE username = ?", (username,)
            ).fetchone()
            return None if row is None else account_row(row)

        return await self._read(op)

    async def create_session(self, session: Session) -> None:
        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        session.token_hash,
                        session.account_id,
                        session.created,
                        session.expires,
                        session.id or session.token_hash[:32],
                        session.device,
                        session.acked,
                        session.last_seen,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, "session") from exc

        await self._write(op)

    async def get_session(self, token_hash: str) -> Session | None:
        def op(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            return None if row is None else session_row(row)

        return await self._read(op)

    async def delete_session(self, token_hash: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

        await self._write(op)

    # -- threads -------------------------------------------------------------------------

    async def create_thread(self, thread: Thread, events: Sequence[NewEvent] = ()) -> None:
        members = [thread.member(a) for a in sorted(thread.participants)]
        pair = " ".join(sorted(thread.participants)) if thread.kind == "direct" else None

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO threads ({THREAD_COLUMNS}, pair) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        thread.id,
                        thread.title,
                        thread.created_by,
                        thread.created,
                        thread.kind,
                        int(thread.controlled),
                        pair,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, f"thread {thread.id!r}") from exc
            conn.executemany(
                "INSERT OR IGNORE INTO participants (thread_id, account_id, role, muted, joined)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (thread.id, m.account_id, m.role, int(m.muted), m.joined or thread.created)
                    for m in members
                    if m is not None
                ],
            )
            conn.execute(
                "INSERT INTO search_index (body, kind, thread_id, message_id, created)"
                " VALUES (?, 'thread', ?, NULL, ?)",
                (thread.title, thread.id, thread.created),
            )
            insert_events(conn, events)

        await self._write(op)

    async def get_thread(self, thread_id: str) -> Thread | None:
        return await self._read(lambda conn: get_thread(conn, thread_id))

    async def list_threads(self, account_id: str) -> list[Thread]:
        def op(conn: sqlite3.Connection) -> list[Thread]:
            rows = conn.execute(
                "SELECT t.id, t.title, t.created_by, t.created, t.kind, t.controlled"
                " FROM participants AS p JOIN threads AS t ON t.id = p.thread_id"
                " WHERE p.account_id = ?"
                " ORDER BY t.created DESC, t.id DESC",
                (account_id,),
            ).fetchall()
            return read_threads(conn, rows)

        return await self._read(op)

    async def add_participants(
        self,
        thread_id: str,
        account_ids: Sequence[str],
        *,
        role: Role = "member",
        joined: int = 0,
        events: Sequence[NewEvent] = (),
    ) -> None:
        rows = [(thread_id, account_id, role, joined) for account_id in account_ids]

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM threads WHERE id = ?", (thread_id,)).fetchone() is None:
                raise NotFound(f"thread {thread_id!r}")
            conn.executemany(
                "INSERT OR IGNORE INTO participants (thread_id, account_id, role, joined)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )
            insert_events(conn, events)

        await self._write(op)

    # -- messages and chunks -------------------------------------------------------------

    async def create_message(
        self, message: MessageRecord, events: Sequence[NewEvent] = ()
    ) -> MessageRecord:
        def op(conn: sqlite3.Connection) -> MessageRecord:
            try:
                cursor = conn.execute(
                    f"INSERT OR IGNORE INTO messages ({MESSAGE_COLUMNS})"
                    f" VALUES ({MESSAGE_PLACEHOLDERS})",
                    message_values(message),
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, f"message {message.id!r}") from exc
            if cursor.rowcount:
                index_message(conn, message)
                insert_events(conn, events)
            stored = get_message(conn, message.id)
            assert stored is not None
            return stored

        return await self._write(op)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        return await self._read(lambda conn: get_message(conn, message_id))

    async def list_messages(
        self,
        thread_id: str,
        limit: int = 100,
        *,
        before: str | None = None,
        viewer: str | None = None,
    ) -> list[MessageRecord]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []

        def op(conn: sqlite3.Connection) -> list[MessageRecord]:
            where = "thread_id = ?1"
            if viewer is not None:
                where += " AND (directed_to IS NULL OR directed_to = ?2 OR sender = ?2)"
            if before is not None:
                where += (
                    " AND (created, id) < (SELECT created, id FROM messages"
                    " WHERE id = ?3 AND thread_id = ?1)"
                )
            rows = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {where}"
                " ORDER BY created DESC, id DESC LIMIT ?4",
                (thread_id, viewer, before, limit),
            ).fetchall()
            return [message_row(row) for row in reversed(rows)]

        return await self._read(op)

    async def append_chunks(self, message_id: str, chunks: Sequence[StoredChunk]) -> None:
        if not chunks:
            await trio.lowlevel.checkpoint()
            return
        # Snapshot now (cheap, immutable parts); encode in the writer thread.
        items = [(c.seq, c.ts, c.duration, c.packets) for c in chunks]
        count = max(c.seq for c in chunks) + 1
        end = max(c.end_ts for c in chunks)

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO chunks (message_id, seq, ts, duration, packets)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(message_id, s, t, d, encode_packets(p)) for s, t, d, p in items],
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, f"message {message_id!r}") from exc
            cursor = conn.execute(
                "UPDATE messages SET chunks = max(chunks, ?), duration = max(duration, ?)"
                " WHERE id = ?",
                (count, end, message_id),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"message {message_id!r}")

        await self._write(op, append=(message_id, items, count, end))

    async def close_message(self, message_id: str, chunks: int, duration: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE messages SET state = 'closed', chunks = ?, duration = ? WHERE id = ?",
                (chunks, duration, message_id),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"message {message_id!r}")

        await self._write(op)

    async def live_messages(self, *, after: str = "", limit: int = 1000) -> list[str]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []

        def op(conn: sqlite3.Connection) -> list[str]:
            # The literal 'live' (not a parameter): only then may SQLite use the partial
            # index messages_live. It walks the index from ``after``; SQLite (3.40 here)
            # still reads each listed row, as ``state`` is not in the index.
            rows = conn.execute(
                "SELECT id FROM messages WHERE state = 'live' AND id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
            return [message_id for (message_id,) in rows]

        return await self._read(op)

    async def read_chunks(self, message_id: str, from_seq: int, limit: int) -> list[StoredChunk]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []

        def op(conn: sqlite3.Connection) -> list[StoredChunk]:
            rows = conn.execute(
                "SELECT seq, ts, duration, packets FROM chunks"
                " WHERE message_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (message_id, from_seq, limit),
            ).fetchall()
            return [
                StoredChunk(seq=seq, ts=ts, duration=dur, packets=decode_packets(blob))
                for seq, ts, dur, blob in rows
            ]

        return await self._read(op)

    async def seq_at_ts(self, message_id: str, ts: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            # Walks the message's chunks in seq order up to the answer: fine for seeking
            # (a 1-hour message is 180,000 rows); an index on (message_id, ts) would make
            # it O(log n) at the cost of every append.
            (seq,) = conn.execute(
                "SELECT coalesce("
                " (SELECT seq FROM chunks WHERE message_id = ?1 AND ts + duration > ?2"
                "  ORDER BY seq LIMIT 1),"
                " (SELECT count(*) FROM chunks WHERE message_id = ?1))",
                (message_id, ts),
            ).fetchone()
            return int(seq)

        return await self._read(op)
