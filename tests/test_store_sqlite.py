"""SQLiteStore: the storage contract, plus what only this backend promises (group commit,
per-request savepoints, durability across a kill -9, PRAGMAs, schema versioning)."""

from __future__ import annotations

import inspect
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from store_contract import (
    FRAME,
    StoreContract,
    StoreFactory,
    account,
    chunk,
    chunks,
    message,
    thread,
)

from voxer_stream.store import (
    AlreadyExists,
    NotFound,
    Session,
    SQLiteStore,
    StoredChunk,
    StoreError,
    open_store,
)
from voxer_stream.store.sqlite import SCHEMA_VERSION, decode_packets, encode_packets

REPO = Path(__file__).resolve().parents[1]


class TestSQLiteContract(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: SQLiteStore(tmp_path / "contract.sqlite3")


class TestSQLiteNormalContract(StoreContract):
    """The contract holds with synchronous=NORMAL and with no batching at all too."""

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: SQLiteStore(tmp_path / "n.sqlite3", synchronous="NORMAL", batch_max=1)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "db.sqlite3") as s:
        yield s


async def _setup_message(store: SQLiteStore, n: int | str = 1) -> str:
    await store.create_thread(thread(n, {"acc-1"}))
    m = await store.create_message(message(n, f"thr-{n}"))
    return m.id


@asynccontextmanager
async def writer_held(store: SQLiteStore) -> AsyncIterator[threading.Event]:
    """Hold the writer thread inside a transaction until the yielded event is set, so
    that the writes issued meanwhile pile up into one batch."""
    release, entered = threading.Event(), threading.Event()
    # Tests count batches exactly: let the writer drain everything that piled up even
    # on a loaded machine (the window only bounds draining; it never waits for writes).
    window, store.batch_window = store.batch_window, 60.0

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(30)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._write, hold)
        await trio.to_thread.run_sync(entered.wait)
        try:
            yield release
        finally:
            release.set()
    store.batch_window = window


# -- the packets blob --------------------------------------------------------------------


@given(st.lists(st.binary(max_size=20_000), max_size=8))
def test_packets_blob_roundtrip(packets: list[bytes]) -> None:
    assert decode_packets(encode_packets(packets)) == tuple(packets)


def test_packets_blob_format() -> None:
    assert encode_packets([]) == b""
    assert encode_packets([b""]) == b"\x00"
    assert encode_packets([b"ab", b"c"]) == b"\x02ab\x01c"
    assert encode_packets([b"x" * 300]) == b"\xac\x02" + b"x" * 300  # LEB128 of 300


@pytest.mark.parametrize("blob", [b"\x05abc", b"\x80", b"\xff" * 10, b"\x01a\x02b"])
def test_packets_blob_corrupt(blob: bytes) -> None:
    with pytest.raises(ValueError, match="corrupt"):
        decode_packets(blob)


# -- opening, PRAGMAs, schema ------------------------------------------------------------


async def test_pragmas_and_schema(store: SQLiteStore) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[object, ...]:
        return tuple(
            conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        )

    assert await store._write(pragmas) == ("wal", 2, 1, 5000)  # synchronous 2 = FULL

    def schema(conn: sqlite3.Connection) -> dict[str, str]:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
        return {name: sql for name, sql in rows}

    tables = await store._read(schema)
    core = {"accounts", "sessions", "threads", "participants", "messages", "chunks"}
    service = {"contacts", "reactions", "receipts", "events", "timeline_trimmed", "media"}
    search = {name for name in tables if name.startswith("search_index")}
    assert set(tables) == core | service | search | {"push_subscriptions", "sqlite_sequence"}
    assert "fts5" in tables["search_index"]
    assert "WITHOUT ROWID" in tables["chunks"]
    version = await store._read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    assert version == SCHEMA_VERSION == 3


LIVE_QUERY = "SELECT id FROM messages WHERE state = 'live' AND id > ? ORDER BY id LIMIT ?"


async def test_live_messages_uses_the_partial_index(store: SQLiteStore) -> None:
    # The query live_messages runs (the test fails if the two drift apart), and its plan:
    # a search of the partial index from ``after``, no scan of messages, no sort.
    assert LIVE_QUERY in inspect.getsource(SQLiteStore.live_messages)
    await store.create_thread(thread(1, {"acc-1"}))
    for n in range(50):
        await store.create_message(message(n, "thr-1"))
        if n % 5:
            await store.close_message(f"msg-{n}", 0, 0)

    def plan(conn: sqlite3.Connection) -> list[str]:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + LIVE_QUERY, ("", 10))]

    def indexed(conn: sqlite3.Connection) -> int:
        (n,) = conn.execute(
            "SELECT count(*) FROM messages INDEXED BY messages_live WHERE state = 'live'"
        ).fetchone()
        return int(n)

    (step,) = await store._read(plan)
    assert step.startswith("SEARCH messages USING ") and "INDEX messages_live (id>?)" in step
    assert await store._read(indexed) == 10  # only the live rows are in the index
    assert len(await store.live_messages()) == 10


async def test_synchronous_normal(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "db", synchronous="NORMAL") as store:
        assert await store._write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "db", synchronous="EXTRA")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="file path"):
        SQLiteStore(":memory:")
    with pytest.raises(ValueError, match="at least 1"):
        SQLiteStore(tmp_path / "db", batch_max=0)


async def test_open_store_creates_the_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    async with open_store(data_dir, synchronous="NORMAL") as store:
        assert store.synchronous == "NORMAL"
        await store.create_account(account(1))
    assert (data_dir / "voxer.sqlite3").is_file()
    async with open_store(str(data_dir)) as store:
        assert await store.get_account("acc-1") == account(1)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with SQLiteStore(path):
        pass
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(StoreError, match="newer"):
        async with SQLiteStore(path):
            pass  # pragma: no cover


async def test_open_close_many_times_and_reuse_object(tmp_path: Path) -> None:
    path = tmp_path / "db"
    reused = SQLiteStore(path)
    for i in range(5):
        async with SQLiteStore(path) as store:
            if i == 0:
                await _setup_message(store)
            await store.append_chunks("msg-1", [chunk(i)])
        async with reused as store:
            assert [c.seq for c in await store.read_chunks("msg-1", 0, 10)] == list(range(i + 1))
    assert threading.active_count() < 40  # writer threads end with their store


async def test_open_twice_is_an_error(store: SQLiteStore) -> None:
    with pytest.raises(RuntimeError, match="open already"):
        await store.__aenter__()


async def test_use_after_close(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "db") as store:
        pass
    with pytest.raises(StoreError, match="not open"):
        await store.create_account(account(1))
    with pytest.raises(StoreError, match="not open"):
        await store.get_account("acc-1")
    await store.aclose()  # closing again is fine


# -- foreign keys and errors specific to SQLite ------------------------------------------


async def test_foreign_keys_raise_not_found(store: SQLiteStore) -> None:
    with pytest.raises(NotFound):
        await store.append_chunks("msg-unknown", [chunk(0)])
    with pytest.raises(NotFound):
        await store.create_message(message(1, "thr-unknown"))
    with pytest.raises(NotFound):
        await store.create_session(
            Session(token_hash="aa", account_id="acc-unknown", created=0, expires=1)
        )
    assert await store.read_chunks("msg-unknown", 0, 10) == []
    assert await store.get_message("msg-1") is None


async def test_duplicate_session(store: SQLiteStore) -> None:
    await store.create_account(account(1))
    s = Session(token_hash="aa", account_id="acc-1", created=0, expires=1, id="s-1")
    await store.create_session(s)
    with pytest.raises(AlreadyExists):
        await store.create_session(s)


# -- group commit ------------------------------------------------------------------------


async def test_group_commit_fewer_commits_than_requests(store: SQLiteStore) -> None:
    await store.create_thread(thread(1, {"acc-1"}))
    talkers, per_talker = 50, 20
    for n in range(talkers):
        await store.create_message(message(n, "thr-1"))
    commits, requests = store.commits, store.write_requests

    async def talk(n: int) -> None:
        for seq in range(per_talker):
            await store.append_chunks(f"msg-{n}", [chunk(seq)])

    async with trio.open_nursery() as nursery:
        for n in range(talkers):
            nursery.start_soon(talk, n)
    made = store.commits - commits
    assert store.write_requests - requests == talkers * per_talker
    assert made < talkers * per_talker / 4, made  # typically ~per_talker: one per round
    assert store.max_batch > 1
    for n in range(talkers):
        assert await store.read_chunks(f"msg-{n}", 0, 100) == chunks(0, per_talker)


async def test_failed_request_does_not_fail_its_batch(store: SQLiteStore) -> None:
    await store.create_account(account("taken", username="taken"))
    msg = await _setup_message(store)
    outcomes: dict[str, str] = {}

    async def create(n: int, username: str) -> None:
        try:
            await store.create_account(account(n, username=username))
        except AlreadyExists:
            outcomes[f"acc-{n}"] = "exists"
        else:
            outcomes[f"acc-{n}"] = "ok"

    async def close_unknown() -> None:
        with pytest.raises(NotFound):
            await store.close_message("msg-unknown", 1, 1)
        outcomes["close"] = "not found"

    commits = store.commits
    async with trio.open_nursery() as nursery, writer_held(store):
        for n in range(10):
            nursery.start_soon(create, n, "taken" if n % 3 == 0 else f"user{n}")
        nursery.start_soon(create, 100, "user1")  # clashes with acc-1, same batch
        nursery.start_soon(store.append_chunks, msg, chunks(0, 3))
        nursery.start_soon(close_unknown)
        await trio.testing.wait_all_tasks_blocked()
    # One commit for the held request's batch, one for the 13 that piled up behind it.
    assert store.commits - commits == 2
    assert store.max_batch == 13
    assert outcomes["close"] == "not found"
    failed = {k for k, v in outcomes.items() if v == "exists"}
    # acc-1 and acc-100 race for "user1" inside one transaction: trio starts tasks in
    # random order, so exactly one of them (either) wins.
    assert failed - {"acc-1", "acc-100"} == {"acc-0", "acc-3", "acc-6", "acc-9"}
    assert len(failed & {"acc-1", "acc-100"}) == 1
    winner = (await store.get_account_by_username("user1")) or pytest.fail("no user1")
    assert {winner.id} == {"acc-1", "acc-100"} - failed
    for n in (2, 4, 5, 7, 8):
        assert await store.get_account(f"acc-{n}") == account(n)
    assert await store.read_chunks(msg, 0, 10) == chunks(0, 3)


async def test_not_found_in_batch(store: SQLiteStore) -> None:
    msg = await _setup_message(store)
    errors: list[BaseException] = []

    async def close_unknown() -> None:
        try:
            await store.close_message("msg-unknown", 1, 1)
        except NotFound as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery, writer_held(store):
        nursery.start_soon(close_unknown)
        nursery.start_soon(store.close_message, msg, 0, 0)
        await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 1
    got = await store.get_message(msg)
    assert got is not None
    assert got.state == "closed"


async def test_batch_max_is_respected(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "db", batch_max=4) as store:
        msg = await _setup_message(store)
        commits = store.commits
        async with trio.open_nursery() as nursery, writer_held(store):
            for seq in range(10):
                nursery.start_soon(store.append_chunks, msg, [chunk(seq)])
            await trio.testing.wait_all_tasks_blocked()
        assert store.max_batch == 4
        assert store.commits - commits == 1 + 3  # the held one, then 4 + 4 + 2
        assert await store.read_chunks(msg, 0, 100) == chunks(0, 10)


async def test_bulk_append_path_and_its_fallback(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of appends is written with multi-row statements; if one of them fails
    (an unknown message), the batch falls back to one savepoint per request and only
    the faulty request fails."""
    bulk_results: list[bool] = []
    real = SQLiteStore._bulk_append

    def spy(self: SQLiteStore, conn: sqlite3.Connection, appends: list[object]) -> bool:
        result = real(self, conn, appends)  # type: ignore[arg-type]
        bulk_results.append(result)
        return result

    monkeypatch.setattr(SQLiteStore, "_bulk_append", spy)
    await store.create_thread(thread(1, {"acc-1"}))
    for n in range(3):
        await store.create_message(message(n, "thr-1"))
    not_found: list[str] = []

    async def append(message_id: str, sent: list[StoredChunk]) -> None:
        try:
            await store.append_chunks(message_id, sent)
        except NotFound:
            not_found.append(message_id)

    for round_, bad in enumerate([False, True]):
        base = round_ * 10
        async with trio.open_nursery() as nursery, writer_held(store):
            for n in range(3):
                nursery.start_soon(append, f"msg-{n}", chunks(base, base + 5))
            # Two concurrent appends to one message land in the same batch.
            nursery.start_soon(append, "msg-0", chunks(base + 5, base + 10))
            if bad:
                nursery.start_soon(append, "msg-unknown", chunks(0, 2))
            await trio.testing.wait_all_tasks_blocked()
    assert bulk_results == [True, False]
    assert not_found == ["msg-unknown"]
    assert await store.read_chunks("msg-0", 0, 100) == chunks(0, 20)
    for n in (1, 2):
        assert await store.read_chunks(f"msg-{n}", 0, 100) == chunks(0, 5) + chunks(10, 15)
    m0 = await store.get_message("msg-0")
    assert m0 is not None
    assert (m0.chunks, m0.duration) == (20, 20 * FRAME)
    m1 = await store.get_message("msg-1")
    assert m1 is not None
    assert (m1.chunks, m1.duration) == (15, 15 * FRAME)  # max seq + 1 (gaps are the caller's)
    assert await store.read_chunks("msg-unknown", 0, 10) == []


async def test_bulk_append_larger_than_one_statement(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "db", batch_max=1000) as store:
        await store.create_thread(thread(1, {"acc-1"}))
        for n in range(300):
            await store.create_message(message(n, "thr-1"))
        async with trio.open_nursery() as nursery, writer_held(store):
            for n in range(300):  # 300 requests x 3 chunks: 900 rows, two INSERTs
                nursery.start_soon(store.append_chunks, f"msg-{n}", chunks(0, 3))
            await trio.testing.wait_all_tasks_blocked()
        assert store.max_batch == 300
        for n in range(0, 300, 37):
            assert await store.read_chunks(f"msg-{n}", 0, 10) == chunks(0, 3)
            got = await store.get_message(f"msg-{n}")
            assert got is not None
            assert got.chunks == 3


async def test_reads_do_not_wait_for_the_writer(store: SQLiteStore) -> None:
    msg = await _setup_message(store)
    await store.append_chunks(msg, chunks(0, 2))
    async with writer_held(store):  # the writer sits in an open write transaction
        with trio.fail_after(5):
            assert await store.read_chunks(msg, 0, 10) == chunks(0, 2)
            assert await store.seq_at_ts(msg, FRAME) == 1


# -- cancellation ------------------------------------------------------------------------


async def test_cancelled_before_queueing_writes_nothing(store: SQLiteStore) -> None:
    msg = await _setup_message(store)
    requests = store.write_requests
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.append_chunks(msg, [chunk(0)])
    assert scope.cancelled_caught
    assert store.write_requests == requests
    assert await store.read_chunks(msg, 0, 10) == []


async def test_cancel_while_waiting_for_commit_returns_after_commit(store: SQLiteStore) -> None:
    """Once queued, a write is not abandoned: the call returns when the commit has
    happened, and the cancellation arrives at the caller's next checkpoint."""
    msg = await _setup_message(store)
    returned = trio.Event()

    async def talker(scope_box: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            await store.append_chunks(msg, [chunk(0)])
            returned.set()
            await trio.lowlevel.checkpoint()  # the pending cancellation lands here
            raise AssertionError("not reached")  # pragma: no cover

    box: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery, writer_held(store):
        nursery.start_soon(talker, box)
        await trio.testing.wait_all_tasks_blocked()
        box[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert not returned.is_set()  # still waiting for the commit, shielded
    assert returned.is_set()
    assert box[0].cancelled_caught
    assert await store.read_chunks(msg, 0, 10) == [chunk(0)]


async def test_close_drains_pending_writes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = SQLiteStore(path)
    async with store:
        msg = await _setup_message(store)
        async with trio.open_nursery() as nursery, writer_held(store):
            for seq in range(20):
                nursery.start_soon(store.append_chunks, msg, [chunk(seq)])
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(store.aclose)  # queued behind the 20 appends
            await trio.testing.wait_all_tasks_blocked()
    async with SQLiteStore(path) as store:
        assert await store.read_chunks(msg, 0, 100) == chunks(0, 20)


async def test_close_is_not_cancellable(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with trio.CancelScope() as scope:
        async with SQLiteStore(path) as store:
            msg = await _setup_message(store)
            scope.cancel()
            # __aexit__ runs cancelled, but must still stop the writer and close cleanly.
    async with SQLiteStore(path) as store:
        assert await store.get_message(msg) is not None


# -- durability across kill -9 -----------------------------------------------------------


def _kill_packets(m: int, seq: int) -> tuple[bytes, ...]:
    """The chunk payload the killed writer stores; shared with it via inspect."""
    import hashlib

    digest = hashlib.sha256(f"{m}:{seq}".encode()).digest()
    return (digest * (1 + seq % 9), bytes([seq % 256]) * (seq % 200))


_KILL_CHILD = """
import sys
import trio
from voxer_stream.store import MessageRecord, SQLiteStore, StoredChunk, Thread

async def main(path, talkers):
    async with SQLiteStore(path) as store:
        await store.create_thread(
            Thread(id="t", title="t", created_by="a", created=0, participants=frozenset("a"))
        )
        for m in range(talkers):
            await store.create_message(MessageRecord(
                id=f"m{m}", thread_id="t", sender="a", codec="opus", created=m, state="live"
            ))

        async def talk(m):
            seq = 0
            while True:
                chunk = StoredChunk(seq=seq, ts=seq * 960, duration=960,
                                    packets=_kill_packets(m, seq))
                await store.append_chunks(f"m{m}", [chunk])
                print(m, seq, flush=True)  # acked: it must survive what comes next
                seq += 1

        async with trio.open_nursery() as nursery:
            for m in range(talkers):
                nursery.start_soon(talk, m)

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


async def test_acked_chunks_survive_kill_9(tmp_path: Path) -> None:
    path, talkers, wanted = tmp_path / "killed.sqlite3", 4, 400
    script = textwrap.dedent(inspect.getsource(_kill_packets)) + _KILL_CHILD
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    stderr = tmp_path / "child.stderr"
    err = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", script, str(path), str(talkers)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    finally:
        os.close(err)
    assert proc.stdout is not None
    out = b""
    try:
        with trio.fail_after(60):
            while out.count(b"\n") < wanted:
                data = await proc.stdout.receive_some()
                assert data, f"child exited early: {stderr.read_text()}"
                out += data
        proc.send_signal(signal.SIGKILL)  # mid-stream: no close, no checkpoint
        await proc.wait()
        while data := await proc.stdout.receive_some():  # lines printed before death
            out += data
    finally:
        if proc.returncode is None:  # pragma: no cover
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()
    assert proc.returncode == -signal.SIGKILL
    acked: dict[int, int] = {}
    for line in out.decode().splitlines(keepends=True):
        if line.endswith("\n"):  # a torn last line was never fully printed
            m, seq = map(int, line.split())
            assert seq == acked.get(m, -1) + 1  # each talker acks in order
            acked[m] = seq
    assert sum(seq + 1 for seq in acked.values()) >= wanted
    async with SQLiteStore(path) as store:
        for m, last in acked.items():
            stored = await store.read_chunks(f"m{m}", 0, 100_000)
            assert len(stored) >= last + 1  # acked ones, perhaps a few committed unprinted
            for c in stored:
                assert c == StoredChunk(
                    seq=c.seq, ts=c.seq * 960, duration=960, packets=_kill_packets(m, c.seq)
                )
            record = await store.get_message(f"m{m}")
            assert record is not None
            assert record.chunks == len(stored)


def test_processes_opening_one_new_database_together_all_open_it(tmp_path: Path) -> None:
    """``serve --workers N`` starts N processes on a new data directory at once: each
    one's switch to WAL and the migration wait for the others instead of failing with
    "database is locked" (found by the workers benchmark)."""
    script = textwrap.dedent(
        """
        import sys, time, trio
        from voxer_stream.store import SQLiteStore

        async def main() -> None:
            time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all at once
            async with SQLiteStore(sys.argv[1]) as store:
                await store.live_messages()

        trio.run(main)
        """
    )
    for attempt in range(2):
        path, at = tmp_path / f"db-{attempt}.sqlite3", str(time.time() + 1.0)
        procs = [
            subprocess.Popen([sys.executable, "-c", script, str(path), at], stderr=subprocess.PIPE)
            for _ in range(6)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()[-2000:]
