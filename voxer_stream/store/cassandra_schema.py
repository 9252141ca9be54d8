"""The Cassandra / ScyllaDB backend's CQL: its schema, its statements and the pure helpers
they need (timeline positions, search tokens, ranks, snippets).

Everything here is plain data or pure functions, so it is checked without a node:
``tests/test_store_cassandra.py`` parses every ``CREATE TABLE`` below and checks that
each statement in ``STATEMENTS`` names tables and columns that exist, restricts whole
partition keys and binds as many values as its callers pass.

Conventions the statements follow (see ``cassandra.py`` for why):

* A cell is written either only by lightweight transactions (``IF ...``) or only by
  plain writes, never both: an LWT's write timestamp comes from the Paxos ballot (the
  coordinator's clock), a plain write's from this process's clock, and mixing the two
  on one cell lets clock skew reorder them.
* Lookup tables (``accounts_by_username``, ``direct_pairs``, ``push_by_endpoint``,
  ``sessions_by_account``, ``threads_by_account``, ``avatars``, ``media_messages``,
  ``messages_by_thread``, ``search_terms``, ``unread``, ``live_messages``) are indexes:
  readers verify what they find against the row they point to, so an index row left
  behind by a crash or a race is harmless.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "BOOTSTRAP",
    "BUCKET_CAPACITY",
    "BUCKET_SHIFT",
    "BUCKET_SPAN_MS",
    "LIVE_SHARDS",
    "MEDIA_PART_SIZE",
    "MIGRATIONS",
    "PREFIX_MAX",
    "SCHEMA_VERSION",
    "STATEMENTS",
    "TABLES",
    "bucket_of",
    "index_keys",
    "keyspace_ddl",
    "live_shard",
    "parse_query",
    "position",
    "rank_of",
    "salt_of",
    "snippet",
    "tokens",
]

# -- the timeline's positions ------------------------------------------------------------

#: A position is ``(bucket << 40) | (n << 20) | salt``: ``n`` counts from 1 inside the
#: bucket, so positions grow with (bucket, n) and "after position p" starts in bucket
#: ``p >> 40`` and walks forward; ``salt`` is 20 bits of a hash of the account id, so two
#: accounts' positions differ too (almost always: nothing relies on it).
N_BITS: Final = 20
SALT_BITS: Final = 20
BUCKET_SHIFT: Final = N_BITS + SALT_BITS
#: Events one bucket (one partition) takes at most: bounds the partition's size.
BUCKET_CAPACITY: Final = 50_000
#: A bucket is closed once its first event is older than this (by the appending
#: writer's clock): each partition holds about a day, so retention drops whole
#: partitions. Clock skew only moves *when* a bucket closes, never a position's order.
BUCKET_SPAN_MS: Final = 86_400_000


def salt_of(account_id: str) -> int:
    digest = hashlib.blake2b(account_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & ((1 << SALT_BITS) - 1)


def position(account_id: str, bucket: int, n: int) -> int:
    assert 0 < n < (1 << N_BITS)
    return (bucket << BUCKET_SHIFT) | (n << SALT_BITS) | salt_of(account_id)


def bucket_of(pos: int) -> int:
    return max(pos, 0) >> BUCKET_SHIFT


# -- live messages -------------------------------------------------------------------------

#: ``live_messages`` is partitioned by ``live_shard(id)``, 0 .. LIVE_SHARDS - 1. Not one
#: partition: every create and close of an audio message in the cluster would hit the
#: same replicas, and its tombstones (one per close) would pile up in one place. Not a
#: partition per message: then listing them would be a full scan. Sixteen bounds each
#: partition to a sixteenth of what is live (plus recent tombstones), and one listing
#: reads sixteen partitions, concurrently.
LIVE_SHARDS: Final = 16


def live_shard(message_id: str) -> int:
    """A stable hash of the id (not ``hash()``, which differs between processes)."""
    digest = hashlib.blake2b(message_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % LIVE_SHARDS


# -- media ---------------------------------------------------------------------------------

#: Image bytes go in rows of at most this much: Cassandra's cells are read whole, and
#: a mutation may be at most half a commit log segment (16 MiB by default); 1 MiB rows
#: keep every write and read small.
MEDIA_PART_SIZE: Final = 1 << 20

# -- search ----------------------------------------------------------------------------------

#: Index keys are token prefixes of 1 .. PREFIX_MAX characters; a longer query term is
#: looked up by its first PREFIX_MAX characters and checked against the stored text.
PREFIX_MAX: Final = 12

_WORD = re.compile(r"\w+", re.UNICODE)
_QUOTED = re.compile(r'"((?:[^"]|"")*)"(\*?)')


def _fold(word: str) -> str:
    """Lowercase without diacritics, like FTS5's ``unicode61 remove_diacritics 2``."""
    decomposed = unicodedata.normalize("NFKD", word.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def tokens(text: str) -> list[str]:
    """The words of ``text`` as the index sees them: ``\\w+`` runs, lowercased and
    without diacritics. (FTS5's unicode61 also splits on ``_``; this does not.)"""
    out = []
    for match in _WORD.finditer(text):
        folded = _fold(match.group())
        out.extend(_WORD.findall(folded))  # folding can split (e.g. a ligature mark)
    return out


def index_keys(text: str) -> set[str]:
    """The ``search_terms.term`` keys a document is stored under: every prefix of every
    token, up to ``PREFIX_MAX`` characters."""
    keys: set[str] = set()
    for token in tokens(text):
        for n in range(1, min(len(token), PREFIX_MAX) + 1):
            keys.add(token[:n])
    return keys


def parse_query(query: str) -> list[tuple[str, bool]]:
    """An FTS5 query of quoted terms (what the service sends: ``"red" "bicy"*``) as
    ``(token, is_prefix)`` pairs, all of which must match. A quoted phrase of several
    words requires each word (FTS5 would require them adjacent); a ``*`` makes the last
    word of its phrase a prefix. Text outside quotes is taken as bare words."""
    terms: list[tuple[str, bool]] = []
    rest = _QUOTED.sub(" ", query)
    for match in _QUOTED.finditer(query):
        words = tokens(match.group(1).replace('""', '"'))
        for i, word in enumerate(words):
            terms.append((word, bool(match.group(2)) and i == len(words) - 1))
    terms.extend((word, False) for word in tokens(rest.replace("*", " ")))
    return terms


def matches(terms: Sequence[tuple[str, bool]], text: str) -> bool:
    have = set(tokens(text))
    for word, prefix in terms:
        if prefix:
            if not any(t.startswith(word) for t in have):
                return False
        elif word not in have:
            return False
    return bool(terms)


def lookup_key(terms: Sequence[tuple[str, bool]]) -> str:
    """The one index key a search scans: the most selective (longest) term's prefix;
    the other terms are checked on the stored text."""
    word, _ = max(terms, key=lambda t: min(len(t[0]), PREFIX_MAX))
    return word[:PREFIX_MAX]


def rank_of(kind: str, item_id: str) -> int:
    """A search entry's ``rank``: a stable 63-bit hash of what it indexes, which orders
    entries of the same ``created`` and makes ``(created, rank)`` a page cursor."""
    digest = hashlib.blake2b(f"{kind}:{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def snippet(terms: Sequence[tuple[str, bool]], text: str, width: int = 12) -> str:
    """Up to ``width`` words of ``text`` around the first match, matches in ``[...]``,
    ``...`` where it is cut (the shape of FTS5's ``snippet(..., '[', ']', '...', 12)``)."""
    words = text.split()
    if not words:
        return ""

    def hit(word: str) -> bool:
        found = tokens(word)
        return any((t.startswith(w) if prefix else t == w) for t in found for w, prefix in terms)

    marks = [hit(w) for w in words]
    first = marks.index(True) if any(marks) else 0
    start = max(0, min(first - width // 3, len(words) - width))
    end = min(len(words), start + width)
    shown = [f"[{w}]" if m else w for w, m in zip(words[start:end], marks[start:end], strict=True)]
    return ("..." if start > 0 else "") + " ".join(shown) + ("..." if end < len(words) else "")


# -- the schema --------------------------------------------------------------------------------

_KEYSPACE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
_REPLICATION_KEY = re.compile(r"[A-Za-z0-9_.\-]+")


def keyspace_ddl(keyspace: str, replication: dict[str, str | int]) -> str:
    """``CREATE KEYSPACE IF NOT EXISTS`` with the given replication map. An existing
    keyspace keeps its replication: change it with ``ALTER KEYSPACE`` and a repair."""
    if not _KEYSPACE_NAME.fullmatch(keyspace):
        raise ValueError(f"not a keyspace name: {keyspace!r} (letters, digits, _; 48 at most)")
    if "class" not in replication:
        raise ValueError("replication needs a 'class' (SimpleStrategy, NetworkTopologyStrategy)")
    items = []
    for key, value in replication.items():
        if not _REPLICATION_KEY.fullmatch(key) or not _REPLICATION_KEY.fullmatch(str(value)):
            raise ValueError(f"bad replication option {key!r}: {value!r}")
        items.append(f"'{key}': '{value}'")
    return (
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace}"
        f" WITH replication = {{{', '.join(items)}}} AND durable_writes = true"
    )


#: Created before any migration runs: where the schema's version and the migration
#: lock live. ``migrating`` is written with a TTL, so a crashed migrator's lock expires.
BOOTSTRAP: Final = """CREATE TABLE IF NOT EXISTS schema_version (
    id int PRIMARY KEY,
    version int,
    migrating text
)"""

#: ``MIGRATIONS[n]`` takes the keyspace from version ``n`` to ``n + 1``. Statements are
#: idempotent (``IF NOT EXISTS``; an ``ALTER TABLE ... ADD`` of a column that exists is
#: tolerated), so a migration cut short is simply run again.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        # -- accounts and sessions --
        """CREATE TABLE IF NOT EXISTS accounts (
            id text PRIMARY KEY,
            username text,
            password_hash text,
            created bigint,
            display_name text,
            avatar text
        )""",
        # Claimed with IF NOT EXISTS before the account row: usernames are unique.
        """CREATE TABLE IF NOT EXISTS accounts_by_username (
            username text PRIMARY KEY,
            account_id text,
            claimed_at bigint
        )""",
        # Which accounts show an image as their avatar (media_visible), verified
        # against accounts.avatar when read.
        """CREATE TABLE IF NOT EXISTS avatars (
            media_id text,
            account_id text,
            PRIMARY KEY (media_id, account_id)
        )""",
        """CREATE TABLE IF NOT EXISTS sessions (
            token_hash text PRIMARY KEY,
            account_id text,
            created bigint,
            expires bigint,
            id text,
            device text,
            acked bigint,
            last_seen bigint
        )""",
        """CREATE TABLE IF NOT EXISTS sessions_by_account (
            account_id text,
            session_id text,
            token_hash text,
            PRIMARY KEY (account_id, session_id)
        )""",
        """CREATE TABLE IF NOT EXISTS contacts (
            owner text,
            contact text,
            blocked boolean,
            created bigint,
            PRIMARY KEY (owner, contact)
        )""",
        # -- threads --
        """CREATE TABLE IF NOT EXISTS threads (
            id text PRIMARY KEY,
            title text,
            created_by text,
            created bigint,
            kind text,
            controlled boolean
        )""",
        # A direct thread's two accounts, "a b" sorted: at most one direct thread a pair.
        """CREATE TABLE IF NOT EXISTS direct_pairs (
            pair text PRIMARY KEY,
            thread_id text,
            claimed_at bigint
        )""",
        """CREATE TABLE IF NOT EXISTS participants (
            thread_id text,
            account_id text,
            role text,
            muted boolean,
            joined bigint,
            PRIMARY KEY (thread_id, account_id)
        )""",
        """CREATE TABLE IF NOT EXISTS threads_by_account (
            account_id text,
            created bigint,
            thread_id text,
            PRIMARY KEY (account_id, created, thread_id)
        ) WITH CLUSTERING ORDER BY (created DESC, thread_id DESC)""",
        # -- messages and chunks --
        # id .. media_id and recalled are written by LWTs only; state, chunks and
        # duration by plain writes only (appends are on the hot path).
        """CREATE TABLE IF NOT EXISTS messages (
            id text PRIMARY KEY,
            thread_id text,
            sender text,
            codec text,
            created bigint,
            kind text,
            body text,
            directed_to text,
            forwarded_from text,
            media_id text,
            recalled bigint,
            state text,
            chunks int,
            duration bigint
        )""",
        """CREATE TABLE IF NOT EXISTS messages_by_thread (
            thread_id text,
            created bigint,
            message_id text,
            sender text,
            directed_to text,
            PRIMARY KEY (thread_id, created, message_id)
        ) WITH CLUSTERING ORDER BY (created DESC, message_id DESC)""",
        # Partitioned by message, clustered by seq: a message's chunks are one
        # partition, read in seq order. packets: LEB128-length-prefixed, as in SQLite.
        """CREATE TABLE IF NOT EXISTS chunks (
            message_id text,
            seq int,
            ts bigint,
            duration bigint,
            packets blob,
            PRIMARY KEY (message_id, seq)
        )""",
        # thread_counts: one row per message an account has not read (text, image,
        # location) or heard (audio), written when the message is created.
        """CREATE TABLE IF NOT EXISTS unread (
            account_id text,
            thread_id text,
            message_id text,
            audio boolean,
            PRIMARY KEY (account_id, thread_id, message_id)
        )""",
        """CREATE TABLE IF NOT EXISTS reactions (
            message_id text,
            account_id text,
            emoji text,
            created bigint,
            PRIMARY KEY (message_id, account_id, emoji)
        )""",
        """CREATE TABLE IF NOT EXISTS receipts (
            message_id text,
            account_id text,
            kind text,
            created bigint,
            PRIMARY KEY (message_id, account_id, kind)
        )""",
        # -- media --
        # The row is claimed (IF NOT EXISTS, ready = false) before the parts are
        # written and made ready after: a half-written image is never served.
        """CREATE TABLE IF NOT EXISTS media (
            id text PRIMARY KEY,
            owner text,
            content_type text,
            width int,
            height int,
            thumbnail blob,
            thumbnail_type text,
            created bigint,
            size bigint,
            parts int,
            ready boolean
        )""",
        """CREATE TABLE IF NOT EXISTS media_parts (
            media_id text,
            part int,
            data blob,
            PRIMARY KEY (media_id, part)
        )""",
        """CREATE TABLE IF NOT EXISTS media_messages (
            media_id text,
            message_id text,
            thread_id text,
            PRIMARY KEY (media_id, message_id)
        )""",
        # -- the timeline --
        """CREATE TABLE IF NOT EXISTS timelines (
            account_id text PRIMARY KEY,
            first_bucket bigint,
            head bigint,
            trimmed bigint
        )""",
        # Partitioned by (account, bucket). The static columns are the bucket's
        # allocator: an append is one conditional batch on the partition (IF next_n =
        # n AND closed = false) that inserts the events and moves next_n, so events
        # become visible exactly when their positions are allocated.
        """CREATE TABLE IF NOT EXISTS events (
            account_id text,
            bucket bigint,
            pos bigint,
            type text,
            thread_id text,
            message_id text,
            data text,
            created bigint,
            dedupe text,
            next_n int STATIC,
            closed boolean STATIC,
            opened bigint STATIC,
            min_created bigint STATIC,
            max_created bigint STATIC,
            PRIMARY KEY ((account_id, bucket), pos)
        )""",
        # (account, dedupe) claims. claim and claimed_at: LWT only; pos and pos_claim
        # (the claim that wrote pos): plain writes only.
        """CREATE TABLE IF NOT EXISTS event_dedupe (
            account_id text,
            dedupe text,
            claim uuid,
            claimed_at bigint,
            pos bigint,
            pos_claim uuid,
            PRIMARY KEY ((account_id, dedupe))
        )""",
        # -- search: an inverted index of token prefixes, a partition per (thread, key)
        """CREATE TABLE IF NOT EXISTS search_terms (
            thread_id text,
            term text,
            created bigint,
            rank bigint,
            kind text,
            message_id text,
            sender text,
            directed_to text,
            body text,
            PRIMARY KEY ((thread_id, term), created, rank)
        ) WITH CLUSTERING ORDER BY (created DESC, rank DESC)""",
        # -- push subscriptions --
        """CREATE TABLE IF NOT EXISTS push_subscriptions (
            id text PRIMARY KEY,
            account_id text,
            session_id text,
            endpoint text,
            p256dh text,
            auth text,
            created bigint
        )""",
        """CREATE TABLE IF NOT EXISTS push_by_endpoint (
            endpoint text PRIMARY KEY,
            id text,
            claimed_at bigint
        )""",
        """CREATE TABLE IF NOT EXISTS push_by_account (
            account_id text,
            id text,
            PRIMARY KEY (account_id, id)
        )""",
    ),
    # 2: the messages left live (``live_messages``: what a process takes over from a
    # dead one, issue 7), an index by state that Cassandra cannot query otherwise. A
    # message's row goes in before its state is written 'live' and out after it is
    # written 'closed', so a crash leaves a row too many, never one too few; readers
    # check each row against messages.state. That check also makes a resurrected
    # tombstone harmless, hence the short gc_grace_seconds: closes delete rows all day,
    # and a listing reads past the tombstones of its partition until they are purged.
    # (A message live while its keyspace goes from 1 to 2 has no row here and is not
    # listed: migrate with no message live.)
    (
        """CREATE TABLE IF NOT EXISTS live_messages (
            shard int,
            id text,
            PRIMARY KEY (shard, id)
        ) WITH gc_grace_seconds = 3600""",
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)

_TABLE_NAME = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


def _tables(statements: Iterable[str]) -> tuple[str, ...]:
    found = []
    for statement in statements:
        match = _TABLE_NAME.match(statement)
        if match:
            found.append(match.group(1))
    return tuple(found)


#: Every table of the schema but ``schema_version`` (what a test truncates).
TABLES: Final = _tables(s for step in MIGRATIONS for s in step)

# -- the statements ------------------------------------------------------------------------

_EVENT_STATICS = "next_n, closed, opened, min_created, max_created"

#: Every statement the backend prepares, by name. LWTs end in ``IF ...``.
STATEMENTS: Final[dict[str, str]] = {
    # schema_version (run as simple statements by the migration, in a thread)
    "schema_read": "SELECT version, migrating FROM schema_version WHERE id = 0",
    "schema_init": "INSERT INTO schema_version (id, version) VALUES (0, 0) IF NOT EXISTS",
    "schema_lock": (
        "UPDATE schema_version USING TTL 600 SET migrating = ? WHERE id = 0"
        " IF migrating = null AND version = ?"
    ),
    "schema_step": "UPDATE schema_version SET version = ? WHERE id = 0 IF migrating = ?",
    "schema_unlock": "UPDATE schema_version SET migrating = null WHERE id = 0 IF migrating = ?",
    # accounts
    "account_insert": (
        "INSERT INTO accounts (id, username, password_hash, created, display_name, avatar)"
        " VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
    ),
    "account_get": (
        "SELECT id, username, password_hash, created, display_name, avatar"
        " FROM accounts WHERE id = ?"
    ),
    "account_update": (
        "UPDATE accounts SET password_hash = ?, display_name = ?, avatar = ? WHERE id = ? IF EXISTS"
    ),
    "username_claim": (
        "INSERT INTO accounts_by_username (username, account_id, claimed_at) VALUES (?, ?, ?)"
        " IF NOT EXISTS"
    ),
    "username_get": "SELECT account_id, claimed_at FROM accounts_by_username WHERE username = ?",
    "username_take": (
        "UPDATE accounts_by_username SET account_id = ?, claimed_at = ? WHERE username = ?"
        " IF account_id = ?"
    ),
    "username_release": "DELETE FROM accounts_by_username WHERE username = ? IF account_id = ?",
    "avatar_insert": "INSERT INTO avatars (media_id, account_id) VALUES (?, ?)",
    "avatar_delete": "DELETE FROM avatars WHERE media_id = ? AND account_id = ?",
    "avatar_list": "SELECT account_id FROM avatars WHERE media_id = ?",
    # sessions
    "session_insert": (
        "INSERT INTO sessions (token_hash, account_id, created, expires, id, device, acked,"
        " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    "session_get": (
        "SELECT token_hash, account_id, created, expires, id, device, acked, last_seen"
        " FROM sessions WHERE token_hash = ?"
    ),
    "session_delete": "DELETE FROM sessions WHERE token_hash = ?",
    "session_seen": "UPDATE sessions SET last_seen = ? WHERE token_hash = ?",
    "session_ack": "UPDATE sessions SET acked = ? WHERE token_hash = ?",
    "session_index_insert": (
        "INSERT INTO sessions_by_account (account_id, session_id, token_hash) VALUES (?, ?, ?)"
    ),
    "session_index_get": (
        "SELECT token_hash FROM sessions_by_account WHERE account_id = ? AND session_id = ?"
    ),
    "session_index_list": (
        "SELECT session_id, token_hash FROM sessions_by_account WHERE account_id = ?"
    ),
    "session_index_delete": (
        "DELETE FROM sessions_by_account WHERE account_id = ? AND session_id = ?"
    ),
    # contacts
    "contact_insert": (
        "INSERT INTO contacts (owner, contact, blocked, created) VALUES (?, ?, ?, ?) IF NOT EXISTS"
    ),
    "contact_block": ("UPDATE contacts SET blocked = ? WHERE owner = ? AND contact = ? IF EXISTS"),
    "contact_get": "SELECT blocked, created FROM contacts WHERE owner = ? AND contact = ?",
    "contact_delete": "DELETE FROM contacts WHERE owner = ? AND contact = ? IF EXISTS",
    "contact_list": "SELECT contact, blocked, created FROM contacts WHERE owner = ?",
    # threads
    "thread_insert": (
        "INSERT INTO threads (id, title, created_by, created, kind, controlled)"
        " VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
    ),
    "thread_get": (
        "SELECT id, title, created_by, created, kind, controlled FROM threads WHERE id = ?"
    ),
    "thread_update": "UPDATE threads SET title = ?, controlled = ? WHERE id = ? IF EXISTS",
    "pair_claim": (
        "INSERT INTO direct_pairs (pair, thread_id, claimed_at) VALUES (?, ?, ?) IF NOT EXISTS"
    ),
    "pair_get": "SELECT thread_id FROM direct_pairs WHERE pair = ?",
    "pair_take": (
        "UPDATE direct_pairs SET thread_id = ?, claimed_at = ? WHERE pair = ? IF thread_id = ?"
    ),
    "pair_release": "DELETE FROM direct_pairs WHERE pair = ? IF thread_id = ?",
    "participant_insert": (
        "INSERT INTO participants (thread_id, account_id, role, muted, joined)"
        " VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
    ),
    "participant_update": (
        "UPDATE participants SET role = ?, muted = ? WHERE thread_id = ? AND account_id = ?"
        " IF EXISTS"
    ),
    "participant_delete": (
        "DELETE FROM participants WHERE thread_id = ? AND account_id = ? IF EXISTS"
    ),
    "participant_get": ("SELECT role FROM participants WHERE thread_id = ? AND account_id = ?"),
    "participant_list": (
        "SELECT account_id, role, muted, joined FROM participants WHERE thread_id = ?"
    ),
    "account_thread_insert": (
        "INSERT INTO threads_by_account (account_id, created, thread_id) VALUES (?, ?, ?)"
    ),
    "account_thread_delete": (
        "DELETE FROM threads_by_account WHERE account_id = ? AND created = ? AND thread_id = ?"
    ),
    "account_thread_list": (
        "SELECT created, thread_id FROM threads_by_account WHERE account_id = ?"
    ),
    # messages
    "message_insert": (
        "INSERT INTO messages (id, thread_id, sender, codec, created, kind, body, directed_to,"
        " forwarded_from, media_id, recalled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " IF NOT EXISTS"
    ),
    "message_get": (
        "SELECT id, thread_id, sender, codec, created, kind, body, directed_to, forwarded_from,"
        " media_id, recalled, state, chunks, duration FROM messages WHERE id = ?"
    ),
    "message_progress": "UPDATE messages SET state = ?, chunks = ?, duration = ? WHERE id = ?",
    "message_counts": "UPDATE messages SET chunks = ?, duration = ? WHERE id = ?",
    "message_recall": (
        "UPDATE messages SET recalled = ?, body = null, media_id = null WHERE id = ?"
        " IF recalled = null"
    ),
    "message_index_insert": (
        "INSERT INTO messages_by_thread (thread_id, created, message_id, sender, directed_to)"
        " VALUES (?, ?, ?, ?, ?)"
    ),
    "message_index_page": (
        "SELECT created, message_id, sender, directed_to FROM messages_by_thread"
        " WHERE thread_id = ? AND (created, message_id) < (?, ?)"
    ),
    "message_index_top": (
        "SELECT created, message_id, sender, directed_to FROM messages_by_thread"
        " WHERE thread_id = ?"
    ),
    # live messages (one partition a shard, ids in order)
    "live_insert": "INSERT INTO live_messages (shard, id) VALUES (?, ?)",
    "live_delete": "DELETE FROM live_messages WHERE shard = ? AND id = ?",
    "live_page": "SELECT id FROM live_messages WHERE shard = ? AND id > ? LIMIT ?",
    # chunks
    "chunk_insert": (
        "INSERT INTO chunks (message_id, seq, ts, duration, packets) VALUES (?, ?, ?, ?, ?)"
    ),
    "chunk_read": (
        "SELECT seq, ts, duration, packets FROM chunks WHERE message_id = ? AND seq >= ? LIMIT ?"
    ),
    "chunk_end": "SELECT seq, ts, duration FROM chunks WHERE message_id = ? AND seq = ?",
    "chunk_last": "SELECT seq FROM chunks WHERE message_id = ? ORDER BY seq DESC LIMIT 1",
    "chunk_scan": "SELECT seq, ts, duration FROM chunks WHERE message_id = ? AND seq >= ?",
    "chunk_delete_all": "DELETE FROM chunks WHERE message_id = ?",
    # unread counts
    "unread_insert": (
        "INSERT INTO unread (account_id, thread_id, message_id, audio) VALUES (?, ?, ?, ?)"
    ),
    "unread_delete": (
        "DELETE FROM unread WHERE account_id = ? AND thread_id = ? AND message_id = ?"
    ),
    "unread_delete_thread": "DELETE FROM unread WHERE account_id = ? AND thread_id = ?",
    "unread_list": "SELECT thread_id, audio FROM unread WHERE account_id = ?",
    # reactions and receipts
    "reaction_insert": (
        "INSERT INTO reactions (message_id, account_id, emoji, created) VALUES (?, ?, ?, ?)"
        " IF NOT EXISTS"
    ),
    "reaction_delete": (
        "DELETE FROM reactions WHERE message_id = ? AND account_id = ? AND emoji = ? IF EXISTS"
    ),
    "reaction_list": "SELECT account_id, emoji, created FROM reactions WHERE message_id = ?",
    "receipt_insert": (
        "INSERT INTO receipts (message_id, account_id, kind, created) VALUES (?, ?, ?, ?)"
        " IF NOT EXISTS"
    ),
    "receipt_list": "SELECT account_id, kind, created FROM receipts WHERE message_id = ?",
    # media
    "media_claim": (
        "INSERT INTO media (id, owner, content_type, width, height, thumbnail, thumbnail_type,"
        " created, size, parts, ready) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, false)"
        " IF NOT EXISTS"
    ),
    "media_ready": "UPDATE media SET ready = true WHERE id = ? IF ready = false",
    "media_get": (
        "SELECT id, owner, content_type, width, height, thumbnail, thumbnail_type, created,"
        " size, parts, ready FROM media WHERE id = ?"
    ),
    "media_part_insert": "INSERT INTO media_parts (media_id, part, data) VALUES (?, ?, ?)",
    "media_part_list": "SELECT part, data FROM media_parts WHERE media_id = ?",
    "media_message_insert": (
        "INSERT INTO media_messages (media_id, message_id, thread_id) VALUES (?, ?, ?)"
    ),
    "media_message_delete": ("DELETE FROM media_messages WHERE media_id = ? AND message_id = ?"),
    "media_message_list": ("SELECT message_id, thread_id FROM media_messages WHERE media_id = ?"),
    # the timeline
    "timeline_init": (
        "INSERT INTO timelines (account_id, first_bucket, trimmed) VALUES (?, 0, 0) IF NOT EXISTS"
    ),
    "timeline_get": (
        "SELECT account_id, first_bucket, head, trimmed FROM timelines WHERE account_id = ?"
    ),
    "timeline_head": "UPDATE timelines SET head = ? WHERE account_id = ?",
    "timeline_trim": (
        "UPDATE timelines SET first_bucket = ?, trimmed = ? WHERE account_id = ?"
        " IF first_bucket = ? AND trimmed = ?"
    ),
    "timeline_all": "SELECT account_id, first_bucket, head, trimmed FROM timelines",
    "bucket_statics": (
        f"SELECT {_EVENT_STATICS} FROM events WHERE account_id = ? AND bucket = ? LIMIT 1"
    ),
    "bucket_open": (
        f"INSERT INTO events (account_id, bucket, {_EVENT_STATICS})"
        " VALUES (?, ?, ?, false, ?, ?, ?) IF NOT EXISTS"
    ),
    "bucket_advance": (
        "UPDATE events SET next_n = ?, min_created = ?, max_created = ?"
        " WHERE account_id = ? AND bucket = ? IF next_n = ? AND closed = false"
    ),
    "bucket_close": (
        "UPDATE events SET closed = true WHERE account_id = ? AND bucket = ?"
        " IF next_n = ? AND closed = false"
    ),
    "bucket_delete": "DELETE FROM events WHERE account_id = ? AND bucket = ?",
    "event_insert": (
        "INSERT INTO events (account_id, bucket, pos, type, thread_id, message_id, data,"
        " created, dedupe) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    "event_read": (
        "SELECT pos, type, thread_id, message_id, data, created, closed FROM events"
        " WHERE account_id = ? AND bucket = ? AND pos > ? LIMIT ?"
    ),
    "event_positions": (
        "SELECT pos, created, dedupe FROM events WHERE account_id = ? AND bucket = ?"
    ),
    "event_delete_upto": ("DELETE FROM events WHERE account_id = ? AND bucket = ? AND pos <= ?"),
    "dedupe_claim": (
        "INSERT INTO event_dedupe (account_id, dedupe, claim, claimed_at) VALUES (?, ?, ?, ?)"
        " IF NOT EXISTS"
    ),
    "dedupe_take": (
        "UPDATE event_dedupe SET claim = ?, claimed_at = ? WHERE account_id = ? AND dedupe = ?"
        " IF claim = ?"
    ),
    "dedupe_stored": (
        "UPDATE event_dedupe SET pos = ?, pos_claim = ? WHERE account_id = ? AND dedupe = ?"
    ),
    "dedupe_get": (
        "SELECT claim, claimed_at, pos, pos_claim FROM event_dedupe"
        " WHERE account_id = ? AND dedupe = ?"
    ),
    "dedupe_release": ("DELETE FROM event_dedupe WHERE account_id = ? AND dedupe = ? IF claim = ?"),
    # search
    "search_insert": (
        "INSERT INTO search_terms (thread_id, term, created, rank, kind, message_id, sender,"
        " directed_to, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    "search_delete": (
        "DELETE FROM search_terms WHERE thread_id = ? AND term = ? AND created = ? AND rank = ?"
    ),
    "search_scan": (
        "SELECT created, rank, kind, message_id, sender, directed_to, body FROM search_terms"
        " WHERE thread_id = ? AND term = ? AND (created, rank) < (?, ?)"
    ),
    # push subscriptions
    "push_insert": (
        "INSERT INTO push_subscriptions (id, account_id, session_id, endpoint, p256dh, auth,"
        " created) VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    "push_update": (
        "UPDATE push_subscriptions SET account_id = ?, session_id = ?, p256dh = ?, auth = ?"
        " WHERE id = ?"
    ),
    "push_get": (
        "SELECT id, account_id, session_id, endpoint, p256dh, auth, created"
        " FROM push_subscriptions WHERE id = ?"
    ),
    "push_delete": "DELETE FROM push_subscriptions WHERE id = ?",
    "push_claim": (
        "INSERT INTO push_by_endpoint (endpoint, id, claimed_at) VALUES (?, ?, ?) IF NOT EXISTS"
    ),
    "push_take": (
        "UPDATE push_by_endpoint SET id = ?, claimed_at = ? WHERE endpoint = ? IF id = ?"
    ),
    "push_release": "DELETE FROM push_by_endpoint WHERE endpoint = ? IF id = ?",
    "push_index_insert": "INSERT INTO push_by_account (account_id, id) VALUES (?, ?)",
    "push_index_delete": "DELETE FROM push_by_account WHERE account_id = ? AND id = ?",
    "push_index_list": "SELECT id FROM push_by_account WHERE account_id = ?",
}

#: The statements the migration runs itself (not prepared by the store).
MIGRATION_STATEMENTS: Final = frozenset(name for name in STATEMENTS if name.startswith("schema_"))
