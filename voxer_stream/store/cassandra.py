"""The Cassandra / ScyllaDB backend: the ``Store`` protocol for storage beyond one machine.

Open it with :func:`open_cassandra_store` (``hosts`` as ``host[:port]``)::

    async with open_cassandra_store(["10.0.0.1", "10.0.0.2:9042"]) as store:
        await store.append_chunks(message_id, chunks)  # on a quorum of replicas on return

The schema and every statement are in ``cassandra_schema.py``.

**Consistency.** Every read and write runs at ``QUORUM`` (or ``LOCAL_QUORUM`` with
``consistency="LOCAL_QUORUM"``: then a data centre's quorum, and lightweight transactions
at ``LOCAL_SERIAL`` instead of ``SERIAL``). A quorum write followed by a quorum read sees
the write, so a chunk is acknowledged (``append_chunks`` returns) only once a quorum of
replicas has it in its commit log. A kill -9 of this server or of a minority of nodes
loses nothing acknowledged; surviving a power cut of a quorum at once needs the nodes'
``commitlog_sync: batch`` (or ``group``), since the default ``periodic`` fsyncs every 10 s.

**The trio side never blocks.** Requests go out with ``Session.execute_async``; the
driver's own event loop thread (libev) does the I/O and calls the ``ResponseFuture``'s
callbacks, which hand the result to trio with ``TrioToken.run_sync_soon``; the task waits
on a ``trio.Event``. Paging (``fetch_size``) goes the same way, one
``start_fetching_next_page`` at a time. ``execute_async`` itself may wait for a free
stream id, which it only does with 32,768 requests in flight on a connection: a
``trio.Semaphore`` (``max_in_flight``, default 512) keeps far below that. Connecting,
preparing statements and the schema migration are blocking driver calls and run in
``trio.to_thread.run_sync`` when the store opens; so does ``Cluster.shutdown`` at close.

**Cancellation.** As in the SQLite backend: a write checks for cancellation before its
first request and is shielded after, so a write that raised ``Cancelled`` never started
and one that returned is complete. (A write may still fail half done: see below.)
Reads are not shielded; a cancelled read's requests finish unobserved.

**Idempotence.** Plain writes are upserts of the same values, so retrying them is safe
(they are prepared with ``is_idempotent``); chunk rows are keyed by (message, seq). What
must happen once is a lightweight transaction (LWT, Paxos): creating an account, a
username, a thread, a direct pair, a message, a reaction, a receipt, a contact, an image,
an endpoint, a dedupe key, and every timeline append. On a conflict the stored row is read
back (``create_message`` returns it). A cell is written either only by LWTs or only by
plain writes, never both (an LWT's timestamp comes from the coordinator's clock, a plain
write's from ours, and mixing them lets clock skew reorder writes); the one exception is
trimming, whose plain deletes hit timeline rows older than the retention. (A test checks
this rule on the statements.)

**What SQLite gets from SQL, and how this does it:**

* *Timeline positions* (``Event.pos``, an int, increasing per account, never reused):
  an account's timeline is partitioned by ``(account, bucket)``; the partition's static
  columns are its allocator. An append is **one conditional batch on that partition**:
  ``UPDATE ... SET next_n = n + k IF next_n = n AND closed = false`` plus the ``k`` event
  rows, so events become visible exactly when their positions are taken (a counter
  allocated first and written after would let a reader see position 7 before 6 lands,
  and skip 6 forever). A position is ``bucket << 40 | n << 20 | salt(account)``. A bucket
  is closed (a CAS on the same row, so no append can slip in after) when it holds
  ``BUCKET_CAPACITY`` events or its first event is a day old, and the next one starts:
  partitions stay bounded and about a day each, and clock skew between writers only
  moves *when* a bucket closes. Appends of one account are serialised in this process
  (no LWT contention with itself); several processes contend through Paxos and retry.
  Time-based positions (timeuuids) were the alternative: two servers' clocks disagree,
  so a later event could get a lower position, which breaks sync.
* *Dedupe keys*: an ``event_dedupe`` row per (account, key), claimed with ``IF NOT
  EXISTS`` before the append and given its position after; a key whose event was
  trimmed (position <= ``trimmed``) can be claimed again.
* *Trimming*: whole closed buckets older than the cut are one partition delete each;
  the bucket at the cut loses its rows with a range delete (``pos <= mark``); the
  account's ``trimmed`` mark is moved (CAS) before anything is deleted. It scans the
  ``timelines`` table (a background job, hourly) and reads each bucket's statics.
* *Unread counts* (``thread_counts``): an ``unread`` row per (account, thread, message)
  is written for every participant that may see a new message (not its sender, joined
  no later than its ``created``, the addressee only if directed); a ``read`` receipt
  (text, image, location) or ``heard`` (audio) deletes it, as do recall and leaving the
  thread. Counting is reading one partition per account.
* *Search* (FTS5 in SQLite): an inverted index ``search_terms`` partitioned by
  ``(thread_id, term)``, clustered by ``(created DESC, rank DESC)``, where ``term`` is
  every prefix (1 .. 12 characters) of every word, so prefix search is a key lookup. A
  query scans the partition of its longest term in each thread of the viewer and checks
  all its terms on the stored text. Words are ``\\w+`` runs, lowercased, without
  diacritics (FTS5: ``unicode61 remove_diacritics 2``, which also splits at ``_``); a
  quoted phrase needs its words, not their adjacency; ``rank`` is a stable 63-bit hash
  of the entry. Cost: one partition read per thread of the viewer.
* *Live messages* (``live_messages``, a partial index in SQLite): a ``live_messages``
  row per live message, in one of 16 partitions by a hash of its id, clustered by id;
  written before the message's state is set 'live', deleted after it is set 'closed'.
  A listing reads the 16 partitions from ``after`` and merges them; each id is checked
  against the message (a closed one's row, left by a crash, is skipped and deleted).
* *Direct threads, usernames, push endpoints*: uniqueness is a claim row taken with
  ``IF NOT EXISTS`` before the row it protects; a claim left by a crashed create (its
  target missing for over a minute) is taken over with a CAS.
* *Media*: images are rows of at most 1 MiB in ``media_parts`` (Cassandra reads a cell
  whole and caps a mutation at half a commit log segment; the service allows 10 MiB
  images); the ``media`` row is claimed first and marked ready after the parts.
* *Lists* (``list_threads``, ``list_messages``, sessions, push subscriptions) read an
  index partition and then the rows it names, verifying each (an index row left by a
  crash or a race is skipped).

**What is not atomic** (SQLite commits each method as one transaction; here a method is
several requests, each durable on its own):

* *A change and its events*: the change is written first, its events after (a
  timeline append is a conditional batch on one partition, which cannot join other
  partitions). A crash in between loses the events; a failure raises and the caller
  sees an error though the change is stored.
* *A create and its index rows* (thread participants' ``threads_by_account``, a
  message's ``messages_by_thread``, search entries, ``unread`` rows): written after the
  LWT that creates the row. A crash in between leaves the row unlisted; creating it
  again (``create_message`` with the same id) writes the index rows again (but not its
  events, nor ``unread`` rows, which receipts may have deleted).
* *Multi-row changes* (``remove_participant`` with ``promote``, ``recall_message``'s
  deletes, a session and its index row, an account's avatar change) are several
  requests; where they are small and plain they go as one LOGGED batch (atomic, not
  isolated). Recall deletes the content first and marks the message recalled last, so a
  retry finishes it.
* *``append_chunks``* writes the chunk rows (one single-partition batch: atomic), then
  the message's ``chunks``/``duration``; readers may see the chunks before the count,
  never the count before the chunks. The count is read, maxed and written: two
  processes appending to one message at once (the pipeline never does) could move it
  back.
* An LWT that times out has an unknown outcome: the store raises ``StoreError`` and the
  caller retries (dedupe keys and the id-keyed creates make that safe).
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast

import trio
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, dict_factory

from .base import (
    Account,
    AlreadyExists,
    Contact,
    Counts,
    Event,
    Media,
    Member,
    MessageKind,
    MessageRecord,
    MessageState,
    NewEvent,
    NotFound,
    PushRecord,
    Reaction,
    Receipt,
    ReceiptKind,
    Role,
    SearchHit,
    Session,
    StoredChunk,
    StoreError,
    Thread,
    ThreadKind,
    TimelineBounds,
)
from .cassandra_schema import (
    BOOTSTRAP,
    BUCKET_CAPACITY,
    BUCKET_SPAN_MS,
    LIVE_SHARDS,
    MEDIA_PART_SIZE,
    MIGRATION_STATEMENTS,
    MIGRATIONS,
    SCHEMA_VERSION,
    STATEMENTS,
    bucket_of,
    index_keys,
    keyspace_ddl,
    live_shard,
    lookup_key,
    matches,
    parse_query,
    position,
    rank_of,
    snippet,
)
from .sqlite import decode_packets, encode_packets
from .sqlite_rows import searchable_text

__all__ = [
    "DEFAULT_PORT",
    "CassandraStore",
    "Consistency",
    "open_cassandra_store",
    "parse_hosts",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
Row = dict[str, Any]
Consistency = Literal["QUORUM", "LOCAL_QUORUM"]

DEFAULT_PORT = 9042
#: A claim row (username, direct pair, push endpoint, dedupe key) whose target is still
#: missing after this long was left by a crashed create, and may be taken over.
CLAIM_STALE_MS = 60_000
#: Events of one account appended in one conditional batch at most.
APPEND_BATCH = 1_000
#: Chunk rows per single-partition batch, at most (and at most _CHUNK_BATCH_BYTES).
_CHUNK_BATCH_ROWS = 200
_CHUNK_BATCH_BYTES = 512 * 1024
#: Statements per LOGGED batch, at most (batches are for a few small rows).
_LOGGED_MAX = 100
_FAR = 1 << 62
_CAS_ATTEMPTS = 64

_HOST = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?$")


def parse_hosts(
    spec: str | Sequence[str], default_port: int = DEFAULT_PORT
) -> list[tuple[str, int]]:
    """``"a,b:9043,[::1]:9042"`` (or a list of such entries) as ``(host, port)`` pairs."""
    entries = spec.split(",") if isinstance(spec, str) else [e for s in spec for e in s.split(",")]
    hosts: list[tuple[str, int]] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        match = _HOST.match(entry)
        if match is None:
            raise ValueError(f"not host[:port]: {entry!r}")
        port = int(match.group("port") or default_port)
        if not 0 < port < 65536:
            raise ValueError(f"bad port in {entry!r}")
        hosts.append((match.group("v6") or match.group("host"), port))
    if not hosts:
        raise ValueError("no Cassandra hosts given")
    return hosts


def open_cassandra_store(
    hosts: str | Sequence[str],
    *,
    keyspace: str = "voxer",
    replication: dict[str, str | int] | None = None,
    consistency: Consistency = "QUORUM",
    **options: Any,
) -> CassandraStore:
    """A :class:`CassandraStore` on ``hosts`` (``host[:port]`` entries, or one string of
    them separated by commas). Open it with ``async with``.

    ``replication`` is the keyspace's replication map, used only when the keyspace is
    created (default ``{"class": "SimpleStrategy", "replication_factor": 3}``; for
    several data centres ``{"class": "NetworkTopologyStrategy", "dc1": 3, ...}`` and
    ``consistency="LOCAL_QUORUM"``). ``options`` go to :class:`CassandraStore`
    (``local_dc``, ``username``, ``password``, ``request_timeout``, ``connect_timeout``,
    ``max_in_flight``, ``serial_timeline_reads``).
    """
    return CassandraStore(
        parse_hosts(hosts),
        keyspace=keyspace,
        replication=replication,
        consistency=consistency,
        **options,
    )


# -- bridging the driver's callbacks to trio ---------------------------------------------


class _Call:
    """One page of one request, completed on the trio thread."""

    __slots__ = ("done", "error", "rows")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.rows: list[Row] = []
        self.error: BaseException | None = None


class _Request:
    """A ``ResponseFuture`` whose pages arrive on the trio thread, one ``_Call`` each."""

    def __init__(self, store: CassandraStore, future: Any) -> None:
        self.future = future
        self.call = _Call()
        self._store = store
        # Either runs now (the result is in already: this thread) or later in the
        # driver's event loop thread; both only schedule work on the trio thread.
        future.add_callbacks(self._on_rows, self._on_error)

    def _on_rows(self, rows: Any) -> None:
        self._store._hand_over(self.call, rows, None)

    def _on_error(self, exc: BaseException) -> None:
        self._store._hand_over(self.call, None, exc)


class _KeyedLocks:
    """A ``trio.Lock`` per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (trio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass(frozen=True)
class _Statics:
    """A timeline bucket's allocator (the static columns of its partition)."""

    next_n: int
    closed: bool
    opened: int
    min_created: int
    max_created: int


@dataclass(frozen=True)
class _Timeline:
    first_bucket: int
    head: int
    trimmed: int


def _now_ms() -> int:
    return int(time.time() * 1000)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(group)
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return None


# -- rows to records ---------------------------------------------------------------------


def _account(row: Row | None) -> Account | None:
    if row is None or row.get("username") is None or row.get("password_hash") is None:
        return None
    return Account(
        id=row["id"],
        username=row["username"],
        password_hash=row["password_hash"],
        created=row["created"] or 0,
        display_name=row["display_name"] or "",
        avatar=row["avatar"],
    )


def _session(row: Row | None) -> Session | None:
    # A row without account_id is what a touch racing a delete leaves: no session.
    if row is None or row.get("account_id") is None or row.get("created") is None:
        return None
    return Session(
        token_hash=row["token_hash"],
        account_id=row["account_id"],
        created=row["created"],
        expires=row["expires"] or 0,
        id=row["id"] or row["token_hash"][:32],
        device=row["device"] or "",
        acked=row["acked"] or 0,
        last_seen=row["last_seen"] or 0,
    )


def _message(row: Row | None) -> MessageRecord | None:
    if row is None or row.get("thread_id") is None or row.get("sender") is None:
        return None
    return MessageRecord(
        id=row["id"],
        thread_id=row["thread_id"],
        sender=row["sender"],
        codec=row["codec"] or "",
        created=row["created"] or 0,
        state=cast(MessageState, row["state"] or "live"),
        chunks=row["chunks"] or 0,
        duration=row["duration"] or 0,
        kind=cast(MessageKind, row["kind"] or "audio"),
        body=row["body"],
        directed_to=row["directed_to"],
        recalled=row["recalled"],
        forwarded_from=row["forwarded_from"],
        media_id=row["media_id"],
    )


def _push(row: Row | None) -> PushRecord | None:
    if row is None or row.get("account_id") is None or row.get("endpoint") is None:
        return None
    return PushRecord(
        id=row["id"],
        account_id=row["account_id"],
        session_id=row["session_id"] or "",
        endpoint=row["endpoint"],
        p256dh=row["p256dh"] or "",
        auth=row["auth"] or "",
        created=row["created"] or 0,
    )


def _statics(row: Row | None) -> _Statics | None:
    if row is None or row.get("next_n") is None:
        return None
    return _Statics(
        next_n=row["next_n"],
        closed=bool(row["closed"]),
        opened=row["opened"] or 0,
        min_created=row["min_created"] if row["min_created"] is not None else _FAR,
        max_created=row["max_created"] if row["max_created"] is not None else -_FAR,
    )


def _unset(value: Any) -> Any:
    return UNSET_VALUE if value is None else value


class CassandraStore:
    """The ``Store`` protocol on Cassandra or ScyllaDB (see the module docstring).

    ``contact_points`` are ``(host, port)`` pairs (:func:`parse_hosts`). The keyspace is
    created if missing (with ``replication``) and migrated to ``SCHEMA_VERSION`` when
    the store opens; a keyspace newer than this code is refused.
    """

    def __init__(
        self,
        contact_points: Sequence[tuple[str, int]],
        *,
        keyspace: str = "voxer",
        replication: dict[str, str | int] | None = None,
        consistency: Consistency = "QUORUM",
        local_dc: str | None = None,
        username: str | None = None,
        password: str | None = None,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        migration_timeout: float = 300.0,
        max_in_flight: int = 512,
        serial_timeline_reads: bool = False,
    ) -> None:
        if consistency not in ("QUORUM", "LOCAL_QUORUM"):
            raise ValueError(f"consistency must be QUORUM or LOCAL_QUORUM, not {consistency!r}")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not contact_points:
            raise ValueError("no contact points")
        self.contact_points = [(str(h), int(p)) for h, p in contact_points]
        self.replication: dict[str, str | int] = dict(
            replication or {"class": "SimpleStrategy", "replication_factor": 3}
        )
        self.keyspace_ddl = keyspace_ddl(keyspace, self.replication)  # validates both
        self.keyspace = keyspace
        self.consistency: Consistency = consistency
        self.local_dc = local_dc
        self.username = username
        self.password = password
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.migration_timeout = migration_timeout
        self.max_in_flight = max_in_flight
        #: Read the timeline at SERIAL (a Paxos read per page): linearizable, so a
        #: reader never sees an event before one with a lower position. At QUORUM
        #: that holds except in a race of a few milliseconds with a node that is
        #: applying a commit; sync re-reads from its position, so it is the default.
        self.serial_timeline_reads = serial_timeline_reads

        self._cl = getattr(ConsistencyLevel, consistency)
        self._serial = (
            ConsistencyLevel.LOCAL_SERIAL
            if consistency == "LOCAL_QUORUM"
            else ConsistencyLevel.SERIAL
        )
        self._open = False
        self._cluster: Any = None
        self._session: Any = None
        self._ps: dict[str, Any] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._slots = trio.Semaphore(max_in_flight)
        self._writing = 0
        self._writes_done = trio.Event()
        self._timeline_locks = _KeyedLocks()
        self._session_locks = _KeyedLocks()
        #: The statics this process last wrote per (account, bucket), and the bucket it
        #: last appended to per account: saves a read per append while nobody else
        #: appends (a stale entry only costs a failed CAS).
        self._statics_cache: dict[tuple[str, int], _Statics] = {}
        self._bucket_cache: dict[str, int] = {}

    def __repr__(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.contact_points)
        state = "open" if self._open else "closed"
        return f"<CassandraStore {hosts} keyspace={self.keyspace} {state} {self.consistency}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError("this CassandraStore is open already")
        self._token = trio.lowlevel.current_trio_token()
        self._slots = trio.Semaphore(self.max_in_flight)
        cluster, session, prepared = await trio.to_thread.run_sync(self._connect)
        self._cluster, self._session, self._ps = cluster, session, prepared
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
        """Wait for the requests in flight, then shut the driver down."""
        if not self._open:
            return
        self._open = False  # from here on, new reads and writes raise StoreError
        cluster = self._cluster
        # Shielded: a cancelled close must still let the writes started finish (each
        # is several requests) and shut the driver's threads down.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.request_timeout * 4):
                while self._writing:
                    self._writes_done = trio.Event()
                    await self._writes_done.wait()
                for _ in range(self.max_in_flight):
                    await self._slots.acquire()
            await trio.to_thread.run_sync(cluster.shutdown)
        self._cluster = self._session = None
        self._ps = {}
        # A read still paging when the slots were drained wakes up and fails.
        for _ in range(self.max_in_flight):
            self._slots.release()

    def make_cluster(self) -> Any:
        """The driver's ``Cluster`` for this store, not connected yet (no I/O)."""
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(
                DCAwareRoundRobinPolicy(local_dc=self.local_dc or "")
            ),
            consistency_level=self._cl,
            serial_consistency_level=self._serial,
            request_timeout=self.request_timeout,
            row_factory=dict_factory,
        )
        auth = None
        if self.username is not None:
            auth = PlainTextAuthProvider(username=self.username, password=self.password or "")
        cluster = Cluster(
            contact_points=self.contact_points,
            port=self.contact_points[0][1],
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            auth_provider=auth,
            connect_timeout=self.connect_timeout,
        )
        return cluster

    def _connect(self) -> tuple[Any, Any, dict[str, Any]]:
        """Connect, create and migrate the keyspace, prepare the statements (a thread)."""
        cluster = self.make_cluster()
        try:
            session = cluster.connect()
            if cluster.protocol_version < 4:
                raise StoreError(
                    f"native protocol v{cluster.protocol_version}: v4 or newer is needed"
                    " (Cassandra 3.0+, ScyllaDB)"
                )
            self._migrate(session)
            prepared: dict[str, Any] = {}
            for name, cql in STATEMENTS.items():
                if name in MIGRATION_STATEMENTS:
                    continue
                statement = session.prepare(cql)
                statement.is_idempotent = " IF " not in cql
                prepared[name] = statement
        except BaseException:
            cluster.shutdown()
            raise
        return cluster, session, prepared

    def _migrate(self, session: Any) -> None:
        """Bring the keyspace to ``SCHEMA_VERSION`` (blocking; runs in a thread).

        ``schema_version`` holds the version and a lock taken with an LWT (with a TTL,
        so a crashed migrator's lock expires): of several servers starting at once one
        migrates and the others wait for it. Each step's statements are idempotent.
        """
        ddl_timeout = max(60.0, self.request_timeout)
        session.execute(self.keyspace_ddl, timeout=ddl_timeout)
        session.set_keyspace(self.keyspace)
        session.execute(BOOTSTRAP, timeout=ddl_timeout)
        # Prepared: only prepared statements take ``?`` markers.
        ps = {name: session.prepare(STATEMENTS[name]) for name in sorted(MIGRATION_STATEMENTS)}
        me = f"{uuid.uuid4()}@{threading.get_ident()}"
        deadline = time.monotonic() + self.migration_timeout
        while True:
            read = ps["schema_read"].bind(())
            read.consistency_level = self._serial  # linearizable with the LWTs below
            row = session.execute(read).one()
            version = 0 if row is None else int(row["version"] or 0)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"keyspace {self.keyspace} has schema version {version}, newer than this"
                    f" code ({SCHEMA_VERSION}); refusing to open it"
                )
            if version == SCHEMA_VERSION:
                return
            if row is None:
                session.execute(ps["schema_init"])
                continue
            locked = session.execute(ps["schema_lock"], (me, version)).was_applied
            if not locked:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"keyspace {self.keyspace}: another process has been migrating it for"
                        f" {self.migration_timeout:g} s (schema_version.migrating)"
                    )
                time.sleep(1.0)
                continue
            log.info(
                "migrating keyspace %s from version %d to %d",
                self.keyspace,
                version,
                SCHEMA_VERSION,
            )
            try:
                for step in range(version, SCHEMA_VERSION):
                    for ddl in MIGRATIONS[step]:
                        try:
                            session.execute(ddl, timeout=ddl_timeout)
                        except InvalidRequest as exc:
                            # An ADD of a column a cut-short run added already.
                            text = str(exc).lower()
                            added = "conflicts with an existing column" in text
                            if not (
                                ddl.lstrip().upper().startswith("ALTER")
                                and (added or "already exist" in text)
                            ):
                                raise
                    if not session.execute(ps["schema_step"], (step + 1, me)).was_applied:
                        raise StoreError(f"lost the migration lock of keyspace {self.keyspace}")
            finally:
                session.execute(ps["schema_unlock"], (me,))

    # -- requests ----------------------------------------------------------------------

    def _hand_over(self, call: _Call, rows: Any, exc: BaseException | None) -> None:
        """From any thread: complete ``call`` on the trio thread."""
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._complete, call, rows, exc)

    def _complete(self, call: _Call, rows: Any, exc: BaseException | None) -> None:
        # The trio thread (a run_sync_soon callback): no blocking, no raising.
        call.rows = list(rows) if rows else []
        call.error = exc
        self._slots.release()
        call.done.set()

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("the store is not open")

    def _statement(self, name: str, params: Sequence[Any], fetch_size: int | None) -> Any:
        if self._session is None:
            raise StoreError("the store is not open")
        bound = self._ps[name].bind(params)
        if fetch_size is not None:
            bound.fetch_size = fetch_size
        return bound

    async def _start(self, statement: Any) -> _Request:
        if self._session is None:
            raise StoreError("the store is not open")
        await self._slots.acquire()
        if self._session is None:
            self._slots.release()
            raise StoreError("the store is not open")
        try:
            future = self._session.execute_async(statement)
        except BaseException:
            self._slots.release()
            raise
        return _Request(self, future)

    async def _wait(self, request: _Request) -> list[Row]:
        call = request.call
        await call.done.wait()
        if call.error is not None:
            if isinstance(call.error, StoreError):
                raise call.error
            raise StoreError(f"cassandra: {call.error}") from call.error
        return call.rows

    async def _next_page(self, request: _Request) -> bool:
        """Ask for the next page; False when there is none."""
        if not request.future.has_more_pages:
            return False
        await self._slots.acquire()
        if self._session is None:
            self._slots.release()
            raise StoreError("the store is not open")
        request.call = _Call()
        try:
            request.future.start_fetching_next_page()
        except BaseException:
            self._slots.release()
            raise
        return True

    async def _rows(
        self,
        name: str,
        params: Sequence[Any] = (),
        *,
        limit: int | None = None,
        fetch_size: int | None = None,
        serial: bool = False,
    ) -> list[Row]:
        """Every row (or the first ``limit``), across pages."""
        statement = self._statement(name, params, fetch_size)
        if serial:
            statement.consistency_level = self._serial
        request = await self._start(statement)
        rows: list[Row] = []
        while True:
            rows.extend(await self._wait(request))
            if limit is not None and len(rows) >= limit:
                return rows[:limit]
            if not await self._next_page(request):
                return rows

    async def _pages(
        self, name: str, params: Sequence[Any], *, fetch_size: int
    ) -> AsyncGenerator[list[Row], None]:
        """The result page by page; the caller stops when it has enough (use it with
        ``contextlib.aclosing``: no request is in flight between pages)."""
        request = await self._start(self._statement(name, params, fetch_size))
        first = True
        while True:
            if not first and not await self._next_page(request):
                return
            first = False
            yield await self._wait(request)

    async def _one(self, name: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self._rows(name, params, limit=1)
        return rows[0] if rows else None

    async def _exec(self, name: str, params: Sequence[Any] = ()) -> None:
        await self._wait(await self._start(self._statement(name, params, None)))

    async def _lwt(self, name: str, params: Sequence[Any] = ()) -> tuple[bool, Row]:
        rows = await self._wait(await self._start(self._statement(name, params, None)))
        row = rows[0] if rows else {}
        return bool(row.get("[applied]")), row

    async def _batch(
        self, items: Sequence[tuple[str, Sequence[Any]]], *, kind: str = "logged"
    ) -> tuple[bool, Row]:
        """One batch; ``kind`` is "logged", "unlogged" (one partition) or "conditional"
        (one partition, LWT statements in it: returns ``[applied]``)."""
        if not items:
            return True, {}
        batch_type = BatchType.UNLOGGED if kind == "unlogged" else BatchType.LOGGED
        if self._session is None:
            raise StoreError("the store is not open")
        batch = BatchStatement(batch_type=batch_type)
        for name, params in items:
            batch.add(self._ps[name], params)
        batch.is_idempotent = kind != "conditional"
        rows = await self._wait(await self._start(batch))
        row = rows[0] if rows else {}
        return (bool(row.get("[applied]")) if kind == "conditional" else True), row

    async def _logged(self, items: Sequence[tuple[str, Sequence[Any]]]) -> None:
        for i in range(0, len(items), _LOGGED_MAX):
            await self._batch(items[i : i + _LOGGED_MAX])

    async def _gather(self, thunks: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run concurrently (requests are bounded by ``max_in_flight``); results in order."""
        fns = list(thunks)
        if not fns:
            await trio.lowlevel.checkpoint()
            return []
        if len(fns) == 1:
            return [await fns[0]()]
        results: list[Any] = [None] * len(fns)

        async def run(i: int, fn: Callable[[], Awaitable[T]]) -> None:
            results[i] = await fn()

        try:
            async with trio.open_nursery() as nursery:
                for i, fn in enumerate(fns):
                    nursery.start_soon(run, i, fn)
        except BaseExceptionGroup as group:
            first = _first_error(group)
            if first is None:
                raise
            raise first from None
        return cast(list[T], results)

    async def _pair(
        self, a: Callable[[], Awaitable[A]], b: Callable[[], Awaitable[B]]
    ) -> tuple[A, B]:
        first: list[A] = []
        second: list[B] = []

        async def run_a() -> None:
            first.append(await a())

        async def run_b() -> None:
            second.append(await b())

        await self._gather([run_a, run_b])
        return first[0], second[0]

    async def _each(self, items: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run plain statements concurrently."""
        await self._gather([self._thunk_exec(name, params) for name, params in items])

    def _thunk_exec(self, name: str, params: Sequence[Any]) -> Callable[[], Awaitable[None]]:
        return lambda: self._exec(name, params)

    async def _write(self, fn: Callable[[], Awaitable[T]]) -> T:
        """A write: cancellable until it starts, shielded after (see the docstring)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        self._writing += 1
        try:
            with trio.CancelScope(shield=True):
                result = await fn()
            return result
        finally:
            self._writing -= 1
            if self._writing == 0:
                self._writes_done.set()

    # -- accounts and sessions ---------------------------------------------------------

    async def _claim(
        self,
        claim: str,
        take: str,
        column: str,
        key: str,
        value: str,
        holder_alive: Callable[[str], Awaitable[bool]],
    ) -> bool:
        """Claim a unique ``key`` for ``value`` (usernames, direct pairs, endpoints):
        True if claimed here, False if ``value`` held it already; ``AlreadyExists`` if
        something else that exists holds it."""
        now = _now_ms()
        applied, row = await self._lwt(claim, (key, value, now))
        if applied:
            return True
        holder = row.get(column)
        if holder == value:
            return False
        if holder is not None and await holder_alive(holder):
            raise AlreadyExists(f"{key!r} is taken")
        if holder is not None and now - (row.get("claimed_at") or 0) < CLAIM_STALE_MS:
            raise AlreadyExists(f"{key!r} is being taken")
        taken, _ = await self._lwt(take, (value, now, key, holder))
        if not taken:
            raise AlreadyExists(f"{key!r} is taken")
        return True

    async def create_account(self, account: Account) -> None:
        async def username_alive(holder: str) -> bool:
            other = await self._get_account(holder)
            return other is not None and other.username == account.username

        async def op() -> None:
            claimed = await self._claim(
                "username_claim",
                "username_take",
                "account_id",
                account.username,
                account.id,
                username_alive,
            )
            applied, _ = await self._lwt(
                "account_insert",
                (
                    account.id,
                    account.username,
                    account.password_hash,
                    account.created,
                    account.display_name,
                    account.avatar,
                ),
            )
            if not applied:
                if claimed:
                    await self._lwt("username_release", (account.username, account.id))
                raise AlreadyExists(f"account {account.id!r}")
            if account.avatar:
                await self._exec("avatar_insert", (account.avatar, account.id))

        await self._write(op)

    async def _get_account(self, account_id: str) -> Account | None:
        return _account(await self._one("account_get", (account_id,)))

    async def get_account(self, account_id: str) -> Account | None:
        return await self._get_account(account_id)

    async def get_account_by_username(self, username: str) -> Account | None:
        row = await self._one("username_get", (username,))
        if row is None or row["account_id"] is None:
            return None
        found = await self._get_account(row["account_id"])
        return found if found is not None and found.username == username else None

    async def update_account(
        self,
        account_id: str,
        *,
        password_hash: str | None = None,
        display_name: str | None = None,
        avatar: str | None = None,
        clear_avatar: bool = False,
    ) -> None:
        changes_avatar = avatar is not None or clear_avatar

        async def op() -> None:
            current = await self._get_account(account_id)
            if current is None:
                raise NotFound(f"account {account_id!r}")
            if password_hash is None and display_name is None and not changes_avatar:
                return
            if avatar is not None:
                # The index first: it is verified against accounts.avatar when read.
                await self._exec("avatar_insert", (avatar, account_id))
            applied, _ = await self._lwt(
                "account_update",
                (
                    _unset(password_hash),
                    _unset(display_name),
                    avatar if changes_avatar else UNSET_VALUE,
                    account_id,
                ),
            )
            if not applied:
                raise NotFound(f"account {account_id!r}")
            if changes_avatar and current.avatar and current.avatar != avatar:
                await self._exec("avatar_delete", (current.avatar, account_id))

        await self._write(op)

    async def create_session(self, session: Session) -> None:
        sid = session.id or session.token_hash[:32]

        async def op() -> None:
            await self._batch(
                [
                    (
                        "session_insert",
                        (
                            session.token_hash,
                            session.account_id,
                            session.created,
                            session.expires,
                            sid,
                            session.device,
                            session.acked,
                            session.last_seen,
                        ),
                    ),
                    ("session_index_insert", (session.account_id, sid, session.token_hash)),
                ]
            )

        await self._write(op)

    async def _get_session(self, token_hash: str) -> Session | None:
        return _session(await self._one("session_get", (token_hash,)))

    async def get_session(self, token_hash: str) -> Session | None:
        return await self._get_session(token_hash)

    async def _drop_session(self, token_hash: str, found: Session | None) -> None:
        items: list[tuple[str, Sequence[Any]]] = [("session_delete", (token_hash,))]
        if found is not None:
            items.append(("session_index_delete", (found.account_id, found.id)))
        await self._batch(items)

    async def delete_session(self, token_hash: str) -> None:
        async def op() -> None:
            await self._drop_session(token_hash, await self._get_session(token_hash))

        await self._write(op)

    async def list_sessions(self, account_id: str) -> list[Session]:
        index = await self._rows("session_index_list", (account_id,))
        found = await self._gather(
            [self._thunk_session(r["token_hash"]) for r in index if r["token_hash"]]
        )
        sessions = [s for s in found if s is not None and s.account_id == account_id]
        return sorted(sessions, key=lambda s: (-s.created, s.id))

    def _thunk_session(self, token_hash: str) -> Callable[[], Awaitable[Session | None]]:
        return lambda: self._get_session(token_hash)

    async def delete_sessions(
        self,
        account_id: str,
        *,
        session_id: str | None = None,
        keep_token_hash: str | None = None,
    ) -> int:
        async def op() -> int:
            if session_id is not None:
                row = await self._one("session_index_get", (account_id, session_id))
                targets = [(session_id, row["token_hash"])] if row is not None else []
            else:
                rows = await self._rows("session_index_list", (account_id,))
                targets = [
                    (r["session_id"], r["token_hash"])
                    for r in rows
                    if r["token_hash"] != keep_token_hash
                ]

            async def drop(sid: str, token_hash: str) -> int:
                found = await self._get_session(token_hash)
                if found is None or found.account_id != account_id or found.id != sid:
                    await self._exec("session_index_delete", (account_id, sid))
                    return 0
                await self._drop_session(token_hash, found)
                return 1

            removed = sum(await self._gather([self._bind2(drop, sid, th) for sid, th in targets]))
            remaining = {
                r["session_id"] for r in await self._rows("session_index_list", (account_id,))
            }
            for record in await self.list_push_subscriptions(account_id):
                if record.session_id not in remaining:
                    await self._drop_push(record)
            return removed

        return await self._write(op)

    @staticmethod
    def _bind2(
        fn: Callable[[str, str], Awaitable[T]], a: str, b: str
    ) -> Callable[[], Awaitable[T]]:
        return lambda: fn(a, b)

    async def touch_session(
        self, token_hash: str, *, last_seen: int | None = None, acked: int | None = None
    ) -> None:
        async def op() -> None:
            # Serialised per token here; acked is read, compared and written, so two
            # processes acking one device's session at once could interleave.
            async with self._session_locks.hold(token_hash):
                found = await self._get_session(token_hash)
                if found is None:
                    return
                if last_seen is not None:
                    await self._exec("session_seen", (last_seen, token_hash))
                if acked is not None and acked > found.acked:
                    await self._exec("session_ack", (acked, token_hash))

        await self._write(op)

    # -- contacts ----------------------------------------------------------------------

    async def put_contact(self, contact: Contact) -> None:
        async def op() -> None:
            key = (contact.owner, contact.contact)
            for _ in range(3):
                applied, _ = await self._lwt(
                    "contact_insert", (*key, contact.blocked, contact.created)
                )
                if applied:
                    return
                applied, _ = await self._lwt("contact_block", (contact.blocked, *key))
                if applied:
                    return
            raise StoreError(f"contact {key!r}: concurrent changes, try again")

        await self._write(op)

    async def get_contact(self, owner: str, contact: str) -> Contact | None:
        row = await self._one("contact_get", (owner, contact))
        if row is None or row["created"] is None:
            return None
        return Contact(
            owner=owner, contact=contact, blocked=bool(row["blocked"]), created=row["created"]
        )

    async def delete_contact(self, owner: str, contact: str) -> bool:
        async def op() -> bool:
            applied, _ = await self._lwt("contact_delete", (owner, contact))
            return applied

        return await self._write(op)

    async def list_contacts(self, owner: str) -> list[Contact]:
        rows = await self._rows("contact_list", (owner,))
        found = [
            Contact(
                owner=owner, contact=r["contact"], blocked=bool(r["blocked"]), created=r["created"]
            )
            for r in rows
            if r["created"] is not None
        ]
        return sorted(found, key=lambda c: (c.created, c.contact))

    # -- threads -----------------------------------------------------------------------

    async def _thread_row(self, thread_id: str) -> Row | None:
        row = await self._one("thread_get", (thread_id,))
        return None if row is None or row["created_by"] is None else row

    async def _get_thread(self, thread_id: str) -> Thread | None:
        row, members = await self._pair(
            lambda: self._thread_row(thread_id),
            lambda: self._rows("participant_list", (thread_id,)),
        )
        if row is None:
            return None
        found: dict[str, Member] = {}
        for m in members:
            if m["role"] is None:
                continue
            found[m["account_id"]] = Member(
                account_id=m["account_id"],
                role=cast(Role, m["role"]),
                muted=bool(m["muted"]),
                joined=m["joined"] or 0,
            )
        return Thread(
            id=row["id"],
            title=row["title"] or "",
            created_by=row["created_by"],
            created=row["created"] or 0,
            kind=cast(ThreadKind, row["kind"] or "group"),
            controlled=bool(row["controlled"]),
            participants=frozenset(found),
            members=found,
        )

    async def create_thread(self, thread: Thread, events: Sequence[NewEvent] = ()) -> None:
        members = [m for m in (thread.member(a) for a in sorted(thread.participants)) if m]
        pair = " ".join(sorted(thread.participants)) if thread.kind == "direct" else None

        async def pair_alive(holder: str) -> bool:
            row = await self._thread_row(holder)
            return row is not None and row["kind"] == "direct"

        async def op() -> None:
            claimed = False
            if pair is not None:
                claimed = await self._claim(
                    "pair_claim", "pair_take", "thread_id", pair, thread.id, pair_alive
                )
            applied, _ = await self._lwt(
                "thread_insert",
                (
                    thread.id,
                    thread.title,
                    thread.created_by,
                    thread.created,
                    thread.kind,
                    thread.controlled,
                ),
            )
            if not applied:
                if claimed:
                    await self._lwt("pair_release", (pair, thread.id))
                raise AlreadyExists(f"thread {thread.id!r}")
            # All participants in one conditional batch: one partition, one Paxos round.
            await self._batch(
                [
                    (
                        "participant_insert",
                        (thread.id, m.account_id, m.role, m.muted, m.joined or thread.created),
                    )
                    for m in members
                ],
                kind="conditional",
            )
            await self._each(
                ("account_thread_insert", (m.account_id, thread.created, thread.id))
                for m in members
            )
            await self._index_text(
                thread.id, "thread", None, thread.created, None, None, thread.title
            )
            await self._append_events(events)

        await self._write(op)

    async def get_thread(self, thread_id: str) -> Thread | None:
        return await self._get_thread(thread_id)

    async def list_threads(self, account_id: str) -> list[Thread]:
        index = await self._rows("account_thread_list", (account_id,))
        ids = list(dict.fromkeys(r["thread_id"] for r in index))
        found = await self._gather([self._thunk_thread(t) for t in ids])
        threads = [t for t in found if t is not None and account_id in t.participants]
        return sorted(threads, key=lambda t: (t.created, t.id), reverse=True)

    def _thunk_thread(self, thread_id: str) -> Callable[[], Awaitable[Thread | None]]:
        return lambda: self._get_thread(thread_id)

    async def add_participants(
        self,
        thread_id: str,
        account_ids: Sequence[str],
        *,
        role: Role = "member",
        joined: int = 0,
        events: Sequence[NewEvent] = (),
    ) -> None:
        accounts = list(dict.fromkeys(account_ids))

        async def op() -> None:
            row = await self._thread_row(thread_id)
            if row is None:
                raise NotFound(f"thread {thread_id!r}")

            async def add(account_id: str) -> None:
                # IF NOT EXISTS: a participant keeps its role and when it joined.
                await self._lwt("participant_insert", (thread_id, account_id, role, False, joined))
                await self._exec("account_thread_insert", (account_id, row["created"], thread_id))

            await self._gather([self._bind1(add, a) for a in accounts])
            await self._append_events(events)

        await self._write(op)

    @staticmethod
    def _bind1(fn: Callable[[str], Awaitable[T]], a: str) -> Callable[[], Awaitable[T]]:
        return lambda: fn(a)

    async def find_direct_thread(self, a: str, b: str) -> Thread | None:
        row = await self._one("pair_get", (" ".join(sorted((a, b))),))
        if row is None or row["thread_id"] is None:
            return None
        found = await self._get_thread(row["thread_id"])
        return found if found is not None and found.kind == "direct" else None

    async def update_thread(
        self,
        thread_id: str,
        *,
        title: str | None = None,
        controlled: bool | None = None,
        events: Sequence[NewEvent] = (),
    ) -> None:
        async def op() -> None:
            old = await self._thread_row(thread_id)
            if old is None:
                raise NotFound(f"thread {thread_id!r}")
            if title is not None or controlled is not None:
                applied, _ = await self._lwt(
                    "thread_update", (_unset(title), _unset(controlled), thread_id)
                )
                if not applied:
                    raise NotFound(f"thread {thread_id!r}")
            if title is not None and title != (old["title"] or ""):
                created = old["created"] or 0
                await self._unindex_text(thread_id, "thread", None, created, old["title"] or "")
                await self._index_text(thread_id, "thread", None, created, None, None, title)
            await self._append_events(events)

        await self._write(op)

    async def set_member(
        self,
        thread_id: str,
        account_id: str,
        *,
        role: Role | None = None,
        muted: bool | None = None,
        events: Sequence[NewEvent] = (),
    ) -> None:
        async def op() -> None:
            if role is None and muted is None:
                if await self._one("participant_get", (thread_id, account_id)) is None:
                    raise NotFound(f"{account_id!r} in thread {thread_id!r}")
            else:
                applied, _ = await self._lwt(
                    "participant_update", (_unset(role), _unset(muted), thread_id, account_id)
                )
                if not applied:
                    raise NotFound(f"{account_id!r} in thread {thread_id!r}")
            await self._append_events(events)

        await self._write(op)

    async def remove_participant(
        self,
        thread_id: str,
        account_id: str,
        events: Sequence[NewEvent] = (),
        *,
        promote: str | None = None,
    ) -> bool:
        async def op() -> bool:
            applied, _ = await self._lwt("participant_delete", (thread_id, account_id))
            if not applied:
                return False
            row = await self._thread_row(thread_id)
            items: list[tuple[str, Sequence[Any]]] = [
                ("unread_delete_thread", (account_id, thread_id))
            ]
            if row is not None:
                items.append(("account_thread_delete", (account_id, row["created"], thread_id)))
            await self._batch(items)
            if promote is not None:
                await self._lwt("participant_update", ("admin", UNSET_VALUE, thread_id, promote))
            await self._append_events(events)
            return True

        return await self._write(op)

    async def thread_counts(self, account_id: str) -> dict[str, Counts]:
        unread, mine = await self._pair(
            lambda: self._rows("unread_list", (account_id,), fetch_size=5000),
            lambda: self._rows("account_thread_list", (account_id,)),
        )
        threads = {r["thread_id"] for r in mine}
        tally: dict[str, list[int]] = {}
        for r in unread:
            if r["thread_id"] in threads:
                counts = tally.setdefault(r["thread_id"], [0, 0])
                counts[1 if r["audio"] else 0] += 1
        return {t: Counts(unread=u, unheard=h) for t, (u, h) in tally.items()}

    # -- messages and chunks -------------------------------------------------------------

    def _message_values(self, m: MessageRecord) -> tuple[Any, ...]:
        return (
            m.id,
            m.thread_id,
            m.sender,
            m.codec,
            m.created,
            m.kind,
            m.body,
            m.directed_to,
            m.forwarded_from,
            m.media_id,
            m.recalled,
        )

    async def _get_message(self, message_id: str) -> MessageRecord | None:
        return _message(await self._one("message_get", (message_id,)))

    async def _index_message(self, m: MessageRecord) -> None:
        """The message's index rows (idempotent): its thread's list, search, images."""
        items: list[tuple[str, Sequence[Any]]] = [
            ("message_index_insert", (m.thread_id, m.created, m.id, m.sender, m.directed_to))
        ]
        if m.media_id is not None and m.recalled is None:
            items.append(("media_message_insert", (m.media_id, m.id, m.thread_id)))
        await self._each(items)
        if m.recalled is None:
            text = searchable_text(m)
            await self._index_text(
                m.thread_id, "message", m.id, m.created, m.sender, m.directed_to, text
            )

    async def _fan_out_unread(self, m: MessageRecord) -> None:
        """An ``unread`` row for each participant that may see ``m`` (thread_counts)."""
        participants = await self._rows("participant_list", (m.thread_id,))
        audio = m.kind == "audio"
        await self._each(
            ("unread_insert", (p["account_id"], m.thread_id, m.id, audio))
            for p in participants
            if p["role"] is not None
            and p["account_id"] != m.sender
            and (p["joined"] or 0) <= m.created
            and (m.directed_to is None or m.directed_to == p["account_id"])
        )

    async def _insert_message(
        self, message: MessageRecord, events: Sequence[NewEvent]
    ) -> MessageRecord:
        applied, _ = await self._lwt("message_insert", self._message_values(message))
        if not applied:
            row = await self._one("message_get", (message.id,))
            stored = _message(row)
            if row is None or stored is None:
                raise StoreError(f"message {message.id!r} exists but cannot be read")
            if row["state"] is None:
                # A create cut short after its LWT: finish it (but no events: they
                # are only ever appended by the create that inserted the row).
                await self._list_live(message)
                await self._exec(
                    "message_progress",
                    (message.state, message.chunks, message.duration, message.id),
                )
                stored = replace(
                    stored, state=message.state, chunks=message.chunks, duration=message.duration
                )
            await self._index_message(stored)
            return stored
        await self._list_live(message)
        await self._exec(
            "message_progress", (message.state, message.chunks, message.duration, message.id)
        )
        await self._index_message(message)
        await self._fan_out_unread(message)
        await self._append_events(events)
        return message

    async def _list_live(self, message: MessageRecord) -> None:
        """A live message's ``live_messages`` row, written *before* its state: a crash
        in between leaves a row that readers skip, never a live message unlisted."""
        if message.state == "live":
            await self._exec("live_insert", (live_shard(message.id), message.id))

    async def create_message(
        self, message: MessageRecord, events: Sequence[NewEvent] = ()
    ) -> MessageRecord:
        return await self._write(lambda: self._insert_message(message, events))

    async def get_message(self, message_id: str) -> MessageRecord | None:
        return await self._get_message(message_id)

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
        if before is not None:
            anchor = await self._get_message(before)
            if anchor is None or anchor.thread_id != thread_id:
                return []
            name = "message_index_page"
            params: tuple[Any, ...] = (thread_id, anchor.created, anchor.id)
        else:
            name, params = "message_index_top", (thread_id,)
        picked: list[str] = []
        async with contextlib.aclosing(
            self._pages(name, params, fetch_size=max(limit, 50))
        ) as pages:
            async for page in pages:
                for r in page:
                    directed = r["directed_to"]
                    if viewer is None or directed is None or viewer in (directed, r["sender"]):
                        picked.append(r["message_id"])
                if len(picked) >= limit:
                    break
        found = await self._gather([self._thunk_message(i) for i in picked[:limit]])
        return [m for m in reversed(found) if m is not None and m.thread_id == thread_id]

    def _thunk_message(self, message_id: str) -> Callable[[], Awaitable[MessageRecord | None]]:
        return lambda: self._get_message(message_id)

    async def _write_chunks(self, message_id: str, chunks: Sequence[StoredChunk]) -> None:
        """Chunk rows in single-partition batches (each atomic), in seq order."""
        group: list[tuple[str, Sequence[Any]]] = []
        size = 0
        for c in chunks:
            blob = encode_packets(c.packets)
            if group and (len(group) >= _CHUNK_BATCH_ROWS or size + len(blob) > _CHUNK_BATCH_BYTES):
                await self._batch(group, kind="unlogged")
                group, size = [], 0
            group.append(("chunk_insert", (message_id, c.seq, c.ts, c.duration, blob)))
            size += len(blob)
        if group:
            await self._batch(group, kind="unlogged")

    async def append_chunks(self, message_id: str, chunks: Sequence[StoredChunk]) -> None:
        if not chunks:
            await trio.lowlevel.checkpoint()
            return
        items = list(chunks)

        async def op() -> None:
            stored = await self._get_message(message_id)
            if stored is None:
                raise NotFound(f"message {message_id!r}")
            if stored.recalled is not None:
                return  # its content is gone for good
            # Seqs below the stored count are stored (contiguity): the first bytes stay.
            fresh = [c for c in items if c.seq >= stored.chunks]
            if not fresh:
                return
            await self._write_chunks(message_id, fresh)
            count = max(stored.chunks, max(c.seq for c in fresh) + 1)
            end = max(stored.duration, max(c.end_ts for c in fresh))
            # After the rows: a reader never sees a count ahead of the chunks.
            await self._exec("message_counts", (count, end, message_id))

        await self._write(op)

    async def close_message(self, message_id: str, chunks: int, duration: int) -> None:
        async def op() -> None:
            if await self._get_message(message_id) is None:
                raise NotFound(f"message {message_id!r}")
            await self._exec("message_progress", ("closed", chunks, duration, message_id))
            # After the state: a crash in between leaves a row that readers skip (and
            # delete). Always, not only when it was live: a retry finishes the job.
            await self._exec("live_delete", (live_shard(message_id), message_id))

        await self._write(op)

    async def live_messages(self, *, after: str = "", limit: int = 1000) -> list[str]:
        # Each shard's first ``want`` ids after the cursor, merged: the first ``want`` of
        # the merge are the first ``want`` overall. Each id is then checked against its
        # message (the index may hold rows of closed messages: a crashed close, a write
        # reordered by clock skew, a resurrected tombstone); those are skipped, deleted,
        # and the next ids read, so a short answer still means "no more".
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        found: list[str] = []
        cursor = after
        while len(found) < limit:
            want = limit - len(found)
            pages = await self._gather(
                [self._thunk_live_page(shard, cursor, want) for shard in range(LIVE_SHARDS)]
            )
            ids = sorted(i for page in pages for i in page)[:want]
            if not ids:
                break
            records = await self._gather([self._thunk_message(i) for i in ids])
            stale = []
            for message_id, record in zip(ids, records, strict=True):
                if record is not None and record.state == "live":
                    found.append(message_id)
                elif record is not None:
                    stale.append(message_id)
                # (None: a row without its message, which never happens: the message's
                # LWT comes first. Left alone.)
            await self._each(("live_delete", (live_shard(i), i)) for i in stale)
            if len(ids) < want:
                break  # every shard gave fewer than asked: none has more
            cursor = ids[-1]
        return found

    async def _live_page(self, shard: int, after: str, limit: int) -> list[str]:
        rows = await self._rows("live_page", (shard, after, limit), fetch_size=min(limit, 1000))
        return [r["id"] for r in rows]

    def _thunk_live_page(
        self, shard: int, after: str, limit: int
    ) -> Callable[[], Awaitable[list[str]]]:
        return lambda: self._live_page(shard, after, limit)

    async def read_chunks(self, message_id: str, from_seq: int, limit: int) -> list[StoredChunk]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        rows = await self._rows(
            "chunk_read", (message_id, max(from_seq, 0), limit), fetch_size=min(limit, 500)
        )
        return [
            StoredChunk(
                seq=r["seq"],
                ts=r["ts"],
                duration=r["duration"],
                packets=decode_packets(r["packets"] or b""),
            )
            for r in rows
        ]

    async def seq_at_ts(self, message_id: str, ts: int) -> int:
        last = await self._one("chunk_last", (message_id,))
        if last is None:
            return 0
        count = last["seq"] + 1
        # Chunks extend the message in media time, so "ends after ts" is false, then
        # true, along the seqs: a binary search of single-row reads (log2 n requests).
        lo, hi = 0, count
        while lo < hi:
            mid = (lo + hi) // 2
            row = await self._one("chunk_end", (message_id, mid))
            if row is None:
                return await self._seq_at_ts_scan(message_id, ts)  # not contiguous
            if row["ts"] + row["duration"] > ts:
                hi = mid
            else:
                lo = mid + 1
        return lo

    async def _seq_at_ts_scan(self, message_id: str, ts: int) -> int:
        seen = 0
        async with contextlib.aclosing(
            self._pages("chunk_scan", (message_id, 0), fetch_size=1000)
        ) as pages:
            async for page in pages:
                for r in page:
                    if r["ts"] + r["duration"] > ts:
                        return int(r["seq"])
                    seen += 1
        return seen

    # -- recall, forward, reactions, receipts ------------------------------------------

    async def recall_message(
        self, message_id: str, at: int, events: Sequence[NewEvent] = ()
    ) -> MessageRecord:
        async def op() -> MessageRecord:
            m = await self._get_message(message_id)
            if m is None:
                raise NotFound(f"message {message_id!r}")
            participants = await self._rows("participant_list", (m.thread_id,))
            # The content first, marked recalled last: a retry after a crash finds the
            # body and finishes the job.
            # Reactions are written by LWTs, so they go by LWTs too (a plain delete's
            # timestamp is this clock's, and could lose to a reaction's Paxos ballot).
            for r in await self._rows("reaction_list", (message_id,)):
                await self._lwt("reaction_delete", (message_id, r["account_id"], r["emoji"]))
            deletes: list[tuple[str, Sequence[Any]]] = [("chunk_delete_all", (message_id,))]
            deletes += [
                ("unread_delete", (p["account_id"], m.thread_id, message_id)) for p in participants
            ]
            if m.media_id is not None:
                deletes.append(("media_message_delete", (m.media_id, message_id)))
            text = searchable_text(m) if m.recalled is None else ""
            rank = rank_of("message", message_id)
            deletes += [
                ("search_delete", (m.thread_id, key, m.created, rank)) for key in index_keys(text)
            ]
            await self._logged(deletes)
            # IF recalled = null: the first recall's time stays.
            await self._lwt("message_recall", (at, message_id))
            await self._exec("message_counts", (0, 0, message_id))
            await self._append_events(events)
            stored = await self._get_message(message_id)
            assert stored is not None
            return stored

        return await self._write(op)

    async def forward_message(
        self, source_id: str, message: MessageRecord, events: Sequence[NewEvent] = ()
    ) -> MessageRecord:
        async def op() -> MessageRecord:
            existing = await self._get_message(message.id)
            if existing is None:
                # The copy's chunks before its row: a listed copy has its chunks.
                async with contextlib.aclosing(
                    self._pages("chunk_read", (source_id, 0, 1 << 30), fetch_size=_CHUNK_BATCH_ROWS)
                ) as pages:
                    async for page in pages:
                        copied = [
                            StoredChunk(
                                seq=r["seq"],
                                ts=r["ts"],
                                duration=r["duration"],
                                packets=decode_packets(r["packets"] or b""),
                            )
                            for r in page
                        ]
                        await self._write_chunks(message.id, copied)
            return await self._insert_message(message, events)

        return await self._write(op)

    async def set_reaction(
        self, reaction: Reaction, on: bool, events: Sequence[NewEvent] = ()
    ) -> bool:
        key = (reaction.message_id, reaction.account_id, reaction.emoji)

        async def op() -> bool:
            if on:
                applied, _ = await self._lwt("reaction_insert", (*key, reaction.created))
            else:
                applied, _ = await self._lwt("reaction_delete", key)
            if applied:
                await self._append_events(events)
            return applied

        return await self._write(op)

    async def reactions(self, message_ids: Sequence[str]) -> dict[str, list[Reaction]]:
        ids = list(dict.fromkeys(message_ids))

        async def of(message_id: str) -> list[Reaction]:
            rows = await self._rows("reaction_list", (message_id,))
            found = [
                Reaction(
                    message_id=message_id,
                    account_id=r["account_id"],
                    emoji=r["emoji"],
                    created=r["created"] or 0,
                )
                for r in rows
            ]
            return sorted(found, key=lambda x: (x.created, x.account_id, x.emoji))

        lists = await self._gather([self._bind1(of, i) for i in ids])
        return {i: rs for i, rs in zip(ids, lists, strict=True) if rs}

    async def add_receipt(self, receipt: Receipt, events: Sequence[NewEvent] = ()) -> bool:
        async def op() -> bool:
            applied, _ = await self._lwt(
                "receipt_insert",
                (receipt.message_id, receipt.account_id, receipt.kind, receipt.created),
            )
            if not applied:
                return False
            if receipt.kind in ("read", "heard"):
                m = await self._get_message(receipt.message_id)
                if m is not None and (m.kind == "audio") == (receipt.kind == "heard"):
                    await self._exec("unread_delete", (receipt.account_id, m.thread_id, m.id))
            await self._append_events(events)
            return True

        return await self._write(op)

    async def list_receipts(self, message_id: str) -> list[Receipt]:
        rows = await self._rows("receipt_list", (message_id,))
        found = [
            Receipt(
                message_id=message_id,
                account_id=r["account_id"],
                kind=cast(ReceiptKind, r["kind"]),
                created=r["created"] or 0,
            )
            for r in rows
        ]
        return sorted(found, key=lambda x: (x.created, x.account_id, x.kind))

    # -- media -------------------------------------------------------------------------

    async def put_media(self, media: Media) -> None:
        parts = [
            media.data[i : i + MEDIA_PART_SIZE] for i in range(0, len(media.data), MEDIA_PART_SIZE)
        ]

        async def op() -> None:
            applied, _ = await self._lwt(
                "media_claim",
                (
                    media.id,
                    media.owner,
                    media.content_type,
                    media.width,
                    media.height,
                    media.thumbnail,
                    media.thumbnail_type,
                    media.created,
                    len(media.data),
                    len(parts),
                ),
            )
            if not applied:
                raise AlreadyExists(f"media {media.id!r}")
            await self._each(
                ("media_part_insert", (media.id, n, part)) for n, part in enumerate(parts)
            )
            await self._lwt("media_ready", (media.id,))

        await self._write(op)

    async def get_media(self, media_id: str) -> Media | None:
        row = await self._one("media_get", (media_id,))
        if row is None or not row["ready"]:
            return None
        # Four 1 MiB parts a page.
        rows = await self._rows("media_part_list", (media_id,), fetch_size=4)
        data = b"".join(r["data"] or b"" for r in sorted(rows, key=lambda r: r["part"]))
        if len(rows) != (row["parts"] or 0) or len(data) != (row["size"] or 0):
            raise StoreError(f"media {media_id!r}: {len(rows)} of {row['parts']} parts stored")
        return Media(
            id=row["id"],
            owner=row["owner"],
            content_type=row["content_type"],
            width=row["width"],
            height=row["height"],
            data=data,
            thumbnail=row["thumbnail"] or b"",
            thumbnail_type=row["thumbnail_type"],
            created=row["created"] or 0,
        )

    async def media_visible(self, media_id: str, account_id: str) -> bool:
        row = await self._one("media_get", (media_id,))
        if row is not None and row["owner"] == account_id:
            return True
        for r in await self._rows("avatar_list", (media_id,)):
            holder = await self._get_account(r["account_id"])
            if holder is not None and holder.avatar == media_id:
                return True
        for r in await self._rows("media_message_list", (media_id,)):
            m = await self._get_message(r["message_id"])
            if m is None or m.media_id != media_id or m.recalled is not None:
                continue
            if not m.visible_to(account_id):
                continue
            if await self._one("participant_get", (m.thread_id, account_id)) is not None:
                return True
        return False

    # -- the timeline --------------------------------------------------------------------

    async def _timeline(self, account_id: str, *, create: bool) -> _Timeline | None:
        row = await self._one("timeline_get", (account_id,))
        if row is None:
            if not create:
                return None
            await self._lwt("timeline_init", (account_id,))
            row = await self._one("timeline_get", (account_id,))
            if row is None:
                raise StoreError(f"the timeline row of {account_id!r} cannot be read")
        return _Timeline(
            first_bucket=row["first_bucket"] or 0,
            head=row["head"] or 0,
            trimmed=row["trimmed"] or 0,
        )

    async def _read_statics(self, account_id: str, bucket: int) -> _Statics | None:
        return _statics(await self._one("bucket_statics", (account_id, bucket)))

    async def add_events(self, events: Sequence[NewEvent]) -> None:
        items = list(events)
        if not items:
            await trio.lowlevel.checkpoint()
            return
        await self._write(lambda: self._append_events(items))

    async def _append_events(self, events: Sequence[NewEvent]) -> None:
        by_account: dict[str, list[NewEvent]] = {}
        for e in events:
            by_account.setdefault(e.account_id, []).append(e)
        await self._gather([self._thunk_append(a, evs) for a, evs in by_account.items()])

    def _thunk_append(
        self, account_id: str, events: list[NewEvent]
    ) -> Callable[[], Awaitable[None]]:
        return lambda: self._append_account(account_id, events)

    async def _append_account(self, account_id: str, events: list[NewEvent]) -> None:
        async with self._timeline_locks.hold(account_id):
            timeline = await self._timeline(account_id, create=True)
            assert timeline is not None
            kept: list[NewEvent] = []
            claims: dict[str, uuid.UUID] = {}
            for e in events:
                if e.dedupe is not None:
                    if e.dedupe in claims:
                        continue  # the same key twice in one call
                    claim = await self._claim_dedupe(account_id, e.dedupe, timeline.trimmed)
                    if claim is None:
                        continue  # stored already (or being stored by another writer)
                    claims[e.dedupe] = claim
                kept.append(e)
            try:
                for i in range(0, len(kept), APPEND_BATCH):
                    part = kept[i : i + APPEND_BATCH]
                    bucket, n = await self._allocate(account_id, timeline, part)
                    stored = {e.dedupe: claims.pop(e.dedupe) for e in part if e.dedupe is not None}
                    await self._each(
                        (
                            "dedupe_stored",
                            (
                                position(account_id, bucket, n + j),
                                stored[e.dedupe],
                                account_id,
                                e.dedupe,
                            ),
                        )
                        for j, e in enumerate(part)
                        if e.dedupe is not None
                    )
            except BaseException:
                # The claims of what was not appended go (an LWT that timed out may
                # have been applied after all: then a retry appends it twice).
                with contextlib.suppress(Exception):
                    await self._each(
                        ("dedupe_release", (account_id, key, claim))
                        for key, claim in claims.items()
                    )
                raise

    async def _claim_dedupe(self, account_id: str, key: str, trimmed: int) -> uuid.UUID | None:
        """Claim (account, key) for an append; None if its event is stored already."""
        claim, now = uuid.uuid4(), _now_ms()
        applied, row = await self._lwt("dedupe_claim", (account_id, key, claim, now))
        if applied:
            return claim
        held, pos = row.get("claim"), row.get("pos")
        if pos is not None and row.get("pos_claim") == held:
            if pos > trimmed:
                return None  # its event is there
            # Its event was trimmed away: the key is free again.
        elif now - (row.get("claimed_at") or 0) < CLAIM_STALE_MS:
            return None  # another writer is appending it right now
        taken, _ = await self._lwt("dedupe_take", (claim, now, account_id, key, held))
        return claim if taken else None

    def _event_rows(
        self, account_id: str, bucket: int, n: int, events: Sequence[NewEvent]
    ) -> list[tuple[str, Sequence[Any]]]:
        return [
            (
                "event_insert",
                (
                    account_id,
                    bucket,
                    position(account_id, bucket, n + i),
                    e.type,
                    e.thread_id,
                    e.message_id,
                    e.data,
                    e.created,
                    e.dedupe,
                ),
            )
            for i, e in enumerate(events)
        ]

    async def _allocate(
        self, account_id: str, timeline: _Timeline, events: Sequence[NewEvent]
    ) -> tuple[int, int]:
        """Append ``events`` in one conditional batch; their bucket and first ``n``."""
        k = len(events)
        lo = min(e.created for e in events)
        hi = max(e.created for e in events)
        bucket = max(self._bucket_cache.get(account_id, timeline.head), timeline.first_bucket)
        statics = self._statics_cache.get((account_id, bucket))
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                await trio.sleep(random.uniform(0, 0.002 * min(attempt, 20)))
            if statics is None:
                statics = await self._read_statics(account_id, bucket)
            now = _now_ms()
            if statics is None:
                # Never made, or trimmed away: a trim moves first_bucket before it
                # deletes, so reading it again tells which.
                fresh = await self._timeline(account_id, create=True)
                assert fresh is not None
                if bucket < fresh.first_bucket:
                    bucket = fresh.first_bucket
                    continue
                applied, _ = await self._batch(
                    [
                        ("bucket_open", (account_id, bucket, 1 + k, now, lo, hi)),
                        *self._event_rows(account_id, bucket, 1, events),
                    ],
                    kind="conditional",
                )
                if applied:
                    await self._appended(
                        account_id, timeline, bucket, _Statics(1 + k, False, now, lo, hi)
                    )
                    return bucket, 1
                continue
            if statics.closed:
                bucket, statics = bucket + 1, None
                continue
            if statics.next_n - 1 + k > BUCKET_CAPACITY or now - statics.opened > BUCKET_SPAN_MS:
                await self._lwt("bucket_close", (account_id, bucket, statics.next_n))
                statics = None  # closed by us or by someone else: read again
                continue
            n = statics.next_n
            low, high = min(statics.min_created, lo), max(statics.max_created, hi)
            applied, _ = await self._batch(
                [
                    ("bucket_advance", (n + k, low, high, account_id, bucket, n)),
                    *self._event_rows(account_id, bucket, n, events),
                ],
                kind="conditional",
            )
            if applied:
                await self._appended(
                    account_id,
                    timeline,
                    bucket,
                    replace(statics, next_n=n + k, min_created=low, max_created=high),
                )
                return bucket, n
            statics = None  # another process appended: read again
        raise StoreError(f"timeline of {account_id!r}: too much contention, try again")

    async def _appended(
        self, account_id: str, timeline: _Timeline, bucket: int, statics: _Statics
    ) -> None:
        if len(self._statics_cache) > 50_000:
            self._statics_cache.clear()
            self._bucket_cache.clear()
        self._statics_cache.pop((account_id, bucket - 1), None)
        self._statics_cache[(account_id, bucket)] = statics
        self._bucket_cache[account_id] = bucket
        if timeline.head < bucket:
            await self._exec("timeline_head", (bucket, account_id))  # a hint: plain write

    async def read_events(self, account_id: str, after: int, limit: int) -> list[Event]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        timeline = await self._timeline(account_id, create=False)
        if timeline is None:
            return []
        bucket = max(bucket_of(after), timeline.first_bucket)
        out: list[Event] = []
        while len(out) < limit:
            rows = await self._rows(
                "event_read",
                (account_id, bucket, after, limit - len(out)),
                fetch_size=min(limit, 1000),
                serial=self.serial_timeline_reads,
            )
            out.extend(
                Event(
                    pos=r["pos"],
                    account_id=account_id,
                    type=r["type"],
                    thread_id=r["thread_id"],
                    message_id=r["message_id"],
                    data=r["data"],
                    created=r["created"],
                )
                for r in rows
                if r["pos"] is not None
            )
            if len(out) >= limit:
                break
            if rows:
                closed = bool(rows[-1]["closed"])
            else:
                statics = await self._read_statics(account_id, bucket)
                closed = statics is not None and statics.closed
            if not closed:
                break
            bucket += 1
        return out

    async def timeline_bounds(self, account_id: str) -> TimelineBounds:
        timeline = await self._timeline(account_id, create=False)
        if timeline is None:
            return TimelineBounds(trimmed=0, latest=0)
        bucket = max(timeline.head, timeline.first_bucket)
        latest = 0
        while True:
            statics = await self._read_statics(account_id, bucket)
            if statics is None:
                break
            if statics.next_n > 1:
                latest = position(account_id, bucket, statics.next_n - 1)
            if not statics.closed:
                break
            bucket += 1
        return TimelineBounds(trimmed=timeline.trimmed, latest=max(latest, timeline.trimmed))

    async def trim_events(self, before: int) -> int:
        # A scan of every timeline: each account's trim is a write of its own (checked
        # for cancellation, then shielded), so cancelling the scan stops it between
        # accounts and never halfway through one.
        self._check_open()
        removed = 0
        async with contextlib.aclosing(self._pages("timeline_all", (), fetch_size=500)) as pages:
            async for page in pages:
                counts = await self._gather(
                    [self._thunk_trim(r, before) for r in page if r["account_id"] is not None]
                )
                removed += sum(counts)
        return removed

    def _thunk_trim(self, row: Row, before: int) -> Callable[[], Awaitable[int]]:
        timeline = _Timeline(
            first_bucket=row["first_bucket"] or 0,
            head=row["head"] or 0,
            trimmed=row["trimmed"] or 0,
        )
        return lambda: self._write(lambda: self._trim_account(row["account_id"], timeline, before))

    async def _trim_account(self, account_id: str, timeline: _Timeline, before: int) -> int:
        buckets: list[tuple[int, _Statics]] = []
        bucket = timeline.first_bucket
        while True:
            statics = await self._read_statics(account_id, bucket)
            if statics is None:
                break
            buckets.append((bucket, statics))
            if not statics.closed:
                break
            bucket += 1
        # The newest position among the events created before the cut: everything up
        # to it goes ("positions <= trimmed are gone"), out-of-order ones included.
        mark = timeline.trimmed
        for b, st in buckets:
            if st.next_n <= 1 or st.min_created >= before:
                continue
            if st.max_created < before:
                mark = max(mark, position(account_id, b, st.next_n - 1))
                continue
            for r in await self._rows("event_positions", (account_id, b), fetch_size=5000):
                if r["created"] < before:
                    mark = max(mark, r["pos"])
        mark_bucket = bucket_of(mark)
        whole = [
            b
            for b, st in buckets
            if st.closed
            and (b < mark_bucket or position(account_id, b, max(st.next_n - 1, 1)) <= mark)
        ]
        first = max(whole) + 1 if whole else timeline.first_bucket
        if (first, mark) != (timeline.first_bucket, timeline.trimmed):
            # The mark and the first bucket move before anything is deleted: a reader
            # (and an appender) sees that first.
            applied, _ = await self._lwt(
                "timeline_trim",
                (first, mark, account_id, timeline.first_bucket, timeline.trimmed),
            )
            if not applied:
                return 0  # another trim moved it: that one does the deleting
        removed = 0
        for b in whole:
            rows = await self._rows("event_positions", (account_id, b), fetch_size=5000)
            removed += len(rows)
            await self._forget_dedupe(account_id, rows)
            await self._exec("bucket_delete", (account_id, b))
            self._statics_cache.pop((account_id, b), None)
        if mark_bucket not in whole and any(b == mark_bucket for b, _ in buckets):
            rows = await self._rows("event_positions", (account_id, mark_bucket), fetch_size=5000)
            doomed = [r for r in rows if r["pos"] <= mark]
            if doomed:
                removed += len(doomed)
                await self._forget_dedupe(account_id, doomed)
                await self._exec("event_delete_upto", (account_id, mark_bucket, mark))
        return removed

    async def _forget_dedupe(self, account_id: str, rows: Sequence[Row]) -> None:
        """Drop the dedupe claims of trimmed events (a claim that moved on stays)."""

        async def forget(key: str, pos: int) -> None:
            row = await self._one_dedupe(account_id, key)
            if (
                row is not None
                and row.get("pos") == pos
                and row.get("pos_claim") == row.get("claim")
            ):
                await self._lwt("dedupe_release", (account_id, key, row["claim"]))

        await self._gather(
            [self._bind_forget(forget, r["dedupe"], r["pos"]) for r in rows if r["dedupe"]]
        )

    @staticmethod
    def _bind_forget(
        fn: Callable[[str, int], Awaitable[None]], key: str, pos: int
    ) -> Callable[[], Awaitable[None]]:
        return lambda: fn(key, pos)

    async def _one_dedupe(self, account_id: str, key: str) -> Row | None:
        return await self._one("dedupe_get", (account_id, key))

    # -- search --------------------------------------------------------------------------

    async def _index_text(
        self,
        thread_id: str,
        kind: str,
        message_id: str | None,
        created: int,
        sender: str | None,
        directed_to: str | None,
        text: str,
    ) -> None:
        rank = rank_of(kind, message_id if message_id is not None else thread_id)
        await self._each(
            (
                "search_insert",
                (thread_id, key, created, rank, kind, message_id, sender, directed_to, text),
            )
            for key in index_keys(text)
        )

    async def _unindex_text(
        self, thread_id: str, kind: str, message_id: str | None, created: int, text: str
    ) -> None:
        rank = rank_of(kind, message_id if message_id is not None else thread_id)
        await self._each(
            ("search_delete", (thread_id, key, created, rank)) for key in index_keys(text)
        )

    async def search(
        self, account_id: str, query: str, *, before: tuple[int, int] | None, limit: int
    ) -> list[SearchHit]:
        terms = parse_query(query)
        if not terms or limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        key = lookup_key(terms)
        created, rank = before if before is not None else (_FAR, _FAR)
        mine = await self._rows("account_thread_list", (account_id,))
        threads = list(dict.fromkeys(r["thread_id"] for r in mine))

        async def scan(thread_id: str) -> list[Row]:
            hits: list[Row] = []
            async with contextlib.aclosing(
                self._pages(
                    "search_scan", (thread_id, key, created, rank), fetch_size=max(limit, 50)
                )
            ) as pages:
                async for page in pages:
                    for r in page:
                        if r["kind"] != "thread":
                            directed = r["directed_to"]
                            if directed is not None and account_id not in (directed, r["sender"]):
                                continue
                        if matches(terms, r["body"] or ""):
                            hits.append({**r, "thread_id": thread_id})
                    if len(hits) >= limit:
                        break
            return hits[:limit]

        found = [
            h
            for hits in await self._gather([self._bind_scan(scan, t) for t in threads])
            for h in hits
        ]
        found.sort(key=lambda r: (r["created"], r["rank"]), reverse=True)
        verified = await self._gather(
            [self._thunk_verify(account_id, r) for r in found[: limit * 2]]
        )
        return [
            SearchHit(
                kind=cast(Literal["message", "thread"], r["kind"]),
                thread_id=r["thread_id"],
                message_id=r["message_id"],
                created=r["created"],
                snippet=snippet(terms, r["body"] or ""),
                rank=r["rank"],
            )
            for r, ok in zip(found[: limit * 2], verified, strict=True)
            if ok
        ][:limit]

    @staticmethod
    def _bind_scan(
        fn: Callable[[str], Awaitable[list[Row]]], thread_id: str
    ) -> Callable[[], Awaitable[list[Row]]]:
        return lambda: fn(thread_id)

    def _thunk_verify(self, account_id: str, hit: Row) -> Callable[[], Awaitable[bool]]:
        return lambda: self._verify_hit(account_id, hit)

    async def _verify_hit(self, account_id: str, hit: Row) -> bool:
        """An index entry still says what its row says (a rename or recall that raced,
        or a crash, can leave one behind), and the viewer still takes part."""
        thread_id = hit["thread_id"]
        if await self._one("participant_get", (thread_id, account_id)) is None:
            return False
        if hit["kind"] == "thread":
            row = await self._thread_row(thread_id)
            return row is not None and (row["title"] or "") == hit["body"]
        m = await self._get_message(hit["message_id"])
        return (
            m is not None
            and m.thread_id == thread_id
            and m.recalled is None
            and m.visible_to(account_id)
            and searchable_text(m) == hit["body"]
        )

    # -- push subscriptions ------------------------------------------------------------

    async def _get_push(self, subscription_id: str) -> PushRecord | None:
        return _push(await self._one("push_get", (subscription_id,)))

    async def put_push_subscription(self, record: PushRecord) -> PushRecord:
        async def op() -> PushRecord:
            for _ in range(3):
                now = _now_ms()
                applied, row = await self._lwt("push_claim", (record.endpoint, record.id, now))
                holder = record.id if applied else row.get("id")
                stored = None if holder is None else await self._get_push(holder)
                if stored is not None and holder != record.id:
                    # The same browser again: the stored record moves to this session.
                    moved = replace(
                        stored,
                        account_id=record.account_id,
                        session_id=record.session_id,
                        p256dh=record.p256dh,
                        auth=record.auth,
                    )
                    items: list[tuple[str, Sequence[Any]]] = [
                        (
                            "push_update",
                            (
                                moved.account_id,
                                moved.session_id,
                                moved.p256dh,
                                moved.auth,
                                moved.id,
                            ),
                        ),
                        ("push_index_insert", (moved.account_id, moved.id)),
                    ]
                    if stored.account_id != moved.account_id:
                        items.append(("push_index_delete", (stored.account_id, stored.id)))
                    await self._batch(items)
                    return moved
                if holder != record.id:
                    # A claim whose record is missing: in flight, or left by a crash.
                    if now - (row.get("claimed_at") or 0) < CLAIM_STALE_MS:
                        await trio.sleep(0.05)
                        continue
                    taken, _ = await self._lwt(
                        "push_take", (record.id, now, record.endpoint, holder)
                    )
                    if not taken:
                        continue
                await self._batch(
                    [
                        (
                            "push_insert",
                            (
                                record.id,
                                record.account_id,
                                record.session_id,
                                record.endpoint,
                                record.p256dh,
                                record.auth,
                                record.created,
                            ),
                        ),
                        ("push_index_insert", (record.account_id, record.id)),
                    ]
                )
                return record
            raise StoreError(f"push endpoint {record.endpoint!r}: concurrent changes, try again")

        return await self._write(op)

    async def list_push_subscriptions(self, account_id: str) -> list[PushRecord]:
        index = await self._rows("push_index_list", (account_id,))
        found = await self._gather([self._thunk_push(r["id"]) for r in index])
        records = [p for p in found if p is not None and p.account_id == account_id]
        return sorted(records, key=lambda p: (p.created, p.id))

    def _thunk_push(self, subscription_id: str) -> Callable[[], Awaitable[PushRecord | None]]:
        return lambda: self._get_push(subscription_id)

    async def _drop_push(self, record: PushRecord) -> None:
        await self._batch(
            [
                ("push_delete", (record.id,)),
                ("push_index_delete", (record.account_id, record.id)),
            ]
        )
        await self._lwt("push_release", (record.endpoint, record.id))

    async def delete_push_subscription(self, subscription_id: str) -> None:
        async def op() -> None:
            record = await self._get_push(subscription_id)
            if record is not None:
                await self._drop_push(record)

        await self._write(op)
