"""SQLiteStore and the messaging service: the service storage contract, plus what only
this backend does (schema migrations 1 -> 2 -> 3, the FTS5 index, foreign keys, atomicity of
a change and its events inside one group commit)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing
from store_contract import FRAME, StoreFactory, chunk, chunks
from store_service_contract import (
    ServiceStoreContract,
    audio,
    event,
    group,
    hit_ids,
    text,
    types,
)

from voxer_stream.store import (
    Counts,
    Member,
    MessageRecord,
    NotFound,
    Reaction,
    Receipt,
    SQLiteStore,
)
from voxer_stream.store.sqlite import _MIGRATIONS, SCHEMA_VERSION, encode_packets


class TestSQLiteServiceContract(ServiceStoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: SQLiteStore(tmp_path / "contract.sqlite3")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "db.sqlite3") as s:
        yield s


@asynccontextmanager
async def writer_held(store: SQLiteStore) -> AsyncIterator[None]:
    """Hold the writer inside a transaction so that the writes issued meanwhile pile up
    into one batch (one transaction, a savepoint each)."""
    release, entered = threading.Event(), threading.Event()
    window, store.batch_window = store.batch_window, 60.0

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(30)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._write, hold)
        await trio.to_thread.run_sync(entered.wait)
        try:
            yield
        finally:
            release.set()
    store.batch_window = window


# -- schema migration 1 -> 2 -------------------------------------------------------------

V1_TOKEN = "ab" * 32


def make_v1_database(path: Path) -> None:
    """A database as the version-1 code left it, with a row in every table."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN")
        for statement in _MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO accounts (id, username, password_hash, created)"
            " VALUES ('acc-1', 'alice', '$argon2id$v1', 100)"
        )
        conn.execute(
            "INSERT INTO accounts (id, username, password_hash, created)"
            " VALUES ('acc-2', 'bob', '$argon2id$v1b', 110)"
        )
        conn.execute(
            "INSERT INTO sessions (token_hash, account_id, created, expires)"
            " VALUES (?, 'acc-1', 200, 9999999999999)",
            (V1_TOKEN,),
        )
        conn.execute(
            "INSERT INTO threads (id, title, created_by, created)"
            " VALUES ('thr-1', 'Old rides', 'acc-1', 300)"
        )
        conn.executemany(
            "INSERT INTO participants (thread_id, account_id) VALUES ('thr-1', ?)",
            [("acc-1",), ("acc-2",)],
        )
        conn.execute(
            "INSERT INTO messages (id, thread_id, sender, codec, created, state, chunks,"
            " duration) VALUES ('msg-1', 'thr-1', 'acc-1', 'opus', 400, 'closed', 1, ?)",
            (FRAME,),
        )
        c = chunk(0)
        conn.execute(
            "INSERT INTO chunks (message_id, seq, ts, duration, packets) VALUES (?, ?, ?, ?, ?)",
            ("msg-1", c.seq, c.ts, c.duration, encode_packets(c.packets)),
        )
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_version_1_database_migrates_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    make_v1_database(path)
    async with SQLiteStore(path) as store:
        version = await store._read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        assert version == SCHEMA_VERSION == 3
        alice = await store.get_account("acc-1")
        assert alice is not None
        assert (alice.username, alice.password_hash, alice.created) == (
            "alice",
            "$argon2id$v1",
            100,
        )
        assert (alice.display_name, alice.avatar) == ("", None)

        s = await store.get_session(V1_TOKEN)
        assert s is not None
        assert s.id  # the session got a public id
        assert (s.account_id, s.created, s.device, s.acked, s.last_seen) == ("acc-1", 200, "", 0, 0)
        assert await store.list_sessions("acc-1") == [s]

        t = await store.get_thread("thr-1")
        assert t is not None
        assert (t.title, t.kind, t.controlled) == ("Old rides", "group", False)
        assert t.participants == {"acc-1", "acc-2"}
        assert t.members["acc-1"] == Member(account_id="acc-1", role="admin", joined=300)
        assert t.members["acc-2"] == Member(account_id="acc-2", role="member", joined=300)

        m = await store.get_message("msg-1")
        assert m is not None
        assert (m.kind, m.body, m.directed_to, m.recalled, m.forwarded_from, m.media_id) == (
            "audio",
            None,
            None,
            None,
            None,
            None,
        )
        assert (m.state, m.chunks, m.duration) == ("closed", 1, FRAME)
        assert await store.read_chunks("msg-1", 0, 10) == [chunk(0)]

        def fts(conn: sqlite3.Connection) -> str:
            (sql,) = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'search_index'"
            ).fetchone()
            return str(sql)

        assert "fts5" in (await store._read(fts)).lower()

        # The migrated data works with the new methods.
        assert counts(await store.thread_counts("acc-2")) == {"thr-1": (0, 1)}
        assert await store.delete_sessions("acc-1", session_id=s.id) == 1
        assert await store.get_session(V1_TOKEN) is None
        await store.create_message(text(2, "thr-1", "new text", created=500))
        assert hit_ids(await store.search("acc-2", '"new"', before=None, limit=10)) == ["msg-2"]


def counts(found: dict[str, Counts]) -> dict[str, tuple[int, int]]:
    """Counts as (unread, unheard), without the threads that have nothing unread."""
    return {t: (c.unread, c.unheard) for t, c in found.items() if c != Counts()}


async def test_version_1_thread_titles_are_searchable(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    make_v1_database(path)
    async with SQLiteStore(path) as store:
        assert hit_ids(await store.search("acc-2", '"rides"', before=None, limit=10)) == [
            "thread:thr-1"
        ]
        await store.update_thread("thr-1", title="Renamed rides")
        assert hit_ids(await store.search("acc-2", '"renamed"', before=None, limit=10)) == [
            "thread:thr-1"
        ]


async def test_migration_is_done_once(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    make_v1_database(path)
    async with SQLiteStore(path) as store:
        await store.set_member("thr-1", "acc-1", role="member")
    async with SQLiteStore(path) as store:  # a second open does not migrate again
        t = await store.get_thread("thr-1")
        assert t is not None
        assert t.members["acc-1"].role == "member"


# -- schema migration 2 -> 3 -------------------------------------------------------------


def make_v2_database(path: Path) -> None:
    """A database as the version-2 code left it: audio messages live and closed, a text
    message (created closed), in two threads."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN")
        for statement in (*_MIGRATIONS[0], *_MIGRATIONS[1]):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO accounts (id, username, password_hash, created)"
            " VALUES ('acc-1', 'alice', '$argon2id$v2', 100)"
        )
        conn.executemany(
            "INSERT INTO threads (id, title, created_by, created) VALUES (?, ?, 'acc-1', 300)",
            [("thr-1", "One"), ("thr-2", "Two")],
        )
        conn.executemany(
            "INSERT INTO participants (thread_id, account_id, role) VALUES (?, 'acc-1', 'admin')",
            [("thr-1",), ("thr-2",)],
        )
        conn.executemany(
            "INSERT INTO messages (id, thread_id, sender, codec, created, state, chunks,"
            " duration, kind, body) VALUES (?, ?, 'acc-1', ?, ?, ?, ?, ?, ?, ?)",
            [
                ("msg-c", "thr-1", "opus", 400, "live", 1, FRAME, "audio", None),
                ("msg-a", "thr-2", "opus", 500, "live", 0, 0, "audio", None),
                ("msg-b", "thr-1", "opus", 450, "closed", 1, FRAME, "audio", None),
                ("msg-t", "thr-1", "", 460, "closed", 0, 0, "text", '{"text": "hi"}'),
            ],
        )
        c = chunk(0)
        conn.executemany(
            "INSERT INTO chunks (message_id, seq, ts, duration, packets) VALUES (?, ?, ?, ?, ?)",
            [(m, c.seq, c.ts, c.duration, encode_packets(c.packets)) for m in ("msg-c", "msg-b")],
        )
        conn.execute("PRAGMA user_version = 2")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_version_2_database_migrates_and_lists_its_live_messages(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    make_v2_database(path)
    async with SQLiteStore(path) as store:
        version = await store._read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        assert version == SCHEMA_VERSION == 3

        def index_sql(conn: sqlite3.Connection) -> str:
            (sql,) = conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'messages_live'"
            ).fetchone()
            return str(sql)

        assert "WHERE state = 'live'" in await store._read(index_sql)
        # The rows the old code left live are in the new index at once.
        assert await store.live_messages() == ["msg-a", "msg-c"]
        assert await store.live_messages(after="msg-a") == ["msg-c"]
        # The migrated data is otherwise untouched, and the new method follows changes.
        m = await store.get_message("msg-c")
        assert m is not None
        assert (m.state, m.chunks, m.duration) == ("live", 1, FRAME)
        assert await store.read_chunks("msg-c", 0, 10) == [chunk(0)]
        await store.close_message("msg-c", 1, FRAME)
        await store.create_message(replace(audio("d", "thr-1", created=600), state="live"))
        assert await store.live_messages() == ["msg-a", "msg-d"]
    async with SQLiteStore(path) as store:  # a second open does not migrate again
        assert await store.live_messages() == ["msg-a", "msg-d"]


# -- the schema's own guarantees ---------------------------------------------------------


async def test_writes_naming_missing_rows_are_not_found(store: SQLiteStore) -> None:
    """Foreign keys: SQLite-specific, the contract does not require it."""
    with pytest.raises(NotFound):
        await store.set_reaction(
            Reaction(message_id="msg-unknown", account_id="acc-1", emoji="x"),
            True,
            [event("acc-1")],
        )
    with pytest.raises(NotFound):
        await store.add_receipt(
            Receipt(message_id="msg-unknown", account_id="acc-1", kind="read"), [event("acc-1")]
        )
    assert await types(store, "acc-1") == []


async def test_events_use_autoincrement(store: SQLiteStore) -> None:
    def sql(conn: sqlite3.Connection) -> str:
        (s,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
        return str(s)

    assert "AUTOINCREMENT" in await store._read(sql)


async def test_failed_change_in_a_batch_appends_none_of_its_events(store: SQLiteStore) -> None:
    """One transaction, one savepoint a request: a change that fails takes its events
    with it, and its neighbours in the batch keep theirs."""
    await store.create_thread(group(1, ["acc-1", "acc-2"]))
    outcomes: list[str] = []

    async def rename(thread_id: str, who: str) -> None:
        try:
            await store.update_thread(thread_id, title="x", events=[event(who, "renamed")])
        except NotFound:
            outcomes.append(f"{thread_id}: not found")

    commits = store.commits
    async with trio.open_nursery() as nursery, writer_held(store):
        nursery.start_soon(rename, "thr-1", "acc-1")
        nursery.start_soon(rename, "thr-unknown", "acc-2")
        nursery.start_soon(store.add_events, [event("acc-2", "added")])
        await trio.testing.wait_all_tasks_blocked()
    assert store.commits - commits == 2  # the held request's, then the three together
    assert outcomes == ["thr-unknown: not found"]
    assert await types(store, "acc-1") == ["renamed"]
    assert await types(store, "acc-2") == ["added"]


async def test_recall_and_forward_chunks_in_sqlite(store: SQLiteStore) -> None:
    """The forwarded copy owns its chunk rows: recalling the source deletes only its own."""
    await store.create_thread(group(1, ["acc-1"]))
    src = await store.create_message(audio(1, "thr-1"))
    await store.append_chunks(src.id, chunks(0, 5))
    await store.close_message(src.id, 5, 5 * FRAME)
    closed = await store.get_message(src.id)
    assert closed is not None
    await store.forward_message(src.id, replace(closed, id="msg-2", forwarded_from=src.id))
    await store.recall_message(src.id, 9_000)

    def rows(conn: sqlite3.Connection) -> dict[str, int]:
        return dict(conn.execute("SELECT message_id, count(*) FROM chunks GROUP BY message_id"))

    assert await store._read(rows) == {"msg-2": 5}


async def test_search_index_rows_follow_messages(store: SQLiteStore) -> None:
    await store.create_thread(group(1, ["acc-1"], title="Title words"))
    await store.create_message(text(1, "thr-1", "hello there"))
    await store.create_message(text(1, "thr-1", "hello there"))  # a replay: not indexed twice
    m = await store.create_message(
        MessageRecord(
            id="msg-3",
            thread_id="thr-1",
            sender="acc-1",
            codec="",
            created=3_000,
            state="closed",
            kind="location",
            body=json.dumps({"lat": 1.0, "lon": 2.0, "label": "harbour"}),
        )
    )

    def index(conn: sqlite3.Connection) -> list[tuple[str, str | None]]:
        return list(conn.execute("SELECT kind, message_id FROM search_index ORDER BY rowid"))

    assert await store._read(index) == [("thread", None), ("message", "msg-1"), ("message", m.id)]
    await store.recall_message("msg-1", 9_000)
    assert await store._read(index) == [("thread", None), ("message", m.id)]
