"""The storage contract: what every ``Store`` backend must do, as reusable tests.

Use it from a backend's test module by subclassing and providing one fixture::

    from store_contract import StoreContract, StoreFactory

    class TestMyBackendContract(StoreContract):
        @pytest.fixture
        def store_factory(self, tmp_path) -> StoreFactory:
            return lambda: MyBackend(...)

``store_factory()`` returns a new, *unopened* store over the same backing data each time
it is called within one test (a fresh, empty database per test): calling it twice
simulates a restart. The contract opens it with ``async with``.

Only what ``voxer_stream/store/base.py`` promises is tested here; backend-specific
behaviour (group commit counters, foreign keys, crash tests) belongs to the backend's
own module.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
import trio
import trio.lowlevel

from voxer_stream.store import (
    Account,
    AlreadyExists,
    MessageRecord,
    NotFound,
    Session,
    Store,
    StoredChunk,
    Thread,
)

StoreFactory = Callable[[], Store]

#: One 20 ms Opus frame at 48 kHz.
FRAME = 960


def account(n: int | str, *, username: str | None = None, created: int = 1_000) -> Account:
    return Account(
        id=f"acc-{n}",
        username=username if username is not None else f"user{n}",
        password_hash=f"$argon2id$v=19$m=65536,t=3,p=4$salt{n}$hash{n}",
        created=created,
    )


def thread(
    n: int | str, participants: set[str] | frozenset[str] = frozenset(), *, created: int = 1_000
) -> Thread:
    return Thread(
        id=f"thr-{n}",
        title=f"Thread {n} \N{STUDIO MICROPHONE}",
        created_by="acc-1",
        created=created,
        participants=frozenset(participants),
    )


def message(n: int | str, thread_id: str, *, created: int = 2_000) -> MessageRecord:
    return MessageRecord(
        id=f"msg-{n}",
        thread_id=thread_id,
        sender="acc-1",
        codec="opus",
        created=created,
        state="live",
    )


def packet(seq: int, i: int = 0) -> bytes:
    """A recognisable payload; sizes vary so length prefixes of 1 and 2 bytes occur."""
    size = (seq * 37 + i * 11) % 300 + 1
    return bytes((seq + i + k) % 256 for k in range(size))


def chunk(seq: int, *, ts: int | None = None, frames: int = 1) -> StoredChunk:
    """Chunk ``seq`` of ``frames`` 20 ms packets; by default chunks are back to back."""
    return StoredChunk(
        seq=seq,
        ts=seq * FRAME * frames if ts is None else ts,
        duration=FRAME * frames,
        packets=tuple(packet(seq, i) for i in range(frames)),
    )


def chunks(start: int, stop: int) -> list[StoredChunk]:
    return [chunk(seq) for seq in range(start, stop)]


_ids = itertools.count()


class StoreContract:
    """Subclass as ``Test<Backend>Contract`` and provide a ``store_factory`` fixture."""

    @pytest.fixture
    async def store(self, store_factory: StoreFactory) -> AsyncIterator[Store]:
        async with store_factory() as store:
            yield store

    async def _thread_with_message(
        self, store: Store, n: int | str = "t"
    ) -> tuple[Thread, MessageRecord]:
        t = thread(n, {"acc-1"})
        await store.create_thread(t)
        m = await store.create_message(message(n, t.id))
        return t, m

    # -- accounts ----------------------------------------------------------------------

    async def test_account_roundtrip(self, store: Store) -> None:
        a = account(1)
        await store.create_account(a)
        assert await store.get_account("acc-1") == a
        assert await store.get_account_by_username("user1") == a

    async def test_account_unknown_is_none(self, store: Store) -> None:
        assert await store.get_account("nobody") is None
        assert await store.get_account_by_username("nobody") is None

    async def test_account_duplicate_id(self, store: Store) -> None:
        await store.create_account(account(1))
        with pytest.raises(AlreadyExists):
            await store.create_account(account(1, username="other"))
        # The failed create left nothing behind.
        assert await store.get_account_by_username("other") is None
        assert await store.get_account("acc-1") == account(1)

    async def test_account_duplicate_username(self, store: Store) -> None:
        await store.create_account(account(1, username="alice"))
        with pytest.raises(AlreadyExists):
            await store.create_account(account(2, username="alice"))
        assert await store.get_account("acc-2") is None
        by_name = await store.get_account_by_username("alice")
        assert by_name is not None
        assert by_name.id == "acc-1"

    async def test_usernames_are_case_sensitive_keys(self, store: Store) -> None:
        # The store compares exactly; normalising usernames is the service's job.
        await store.create_account(account(1, username="Alice"))
        await store.create_account(account(2, username="alice"))
        a = await store.get_account_by_username("alice")
        assert a is not None
        assert a.id == "acc-2"

    # -- sessions ----------------------------------------------------------------------

    async def test_session_roundtrip_and_delete(self, store: Store) -> None:
        await store.create_account(account(1))
        s = Session(token_hash="ab" * 32, account_id="acc-1", created=5, expires=10, id="s-1")
        await store.create_session(s)
        assert await store.get_session("ab" * 32) == s
        await store.delete_session("ab" * 32)
        assert await store.get_session("ab" * 32) is None

    async def test_session_unknown(self, store: Store) -> None:
        assert await store.get_session("00" * 32) is None
        await store.delete_session("00" * 32)  # deleting nothing is fine

    async def test_session_expiry_is_the_callers(self, store: Store) -> None:
        await store.create_account(account(1))
        s = Session(token_hash="cd" * 32, account_id="acc-1", created=5, expires=6, id="s-2")
        await store.create_session(s)
        assert await store.get_session("cd" * 32) == s  # long expired, still returned

    # -- threads -----------------------------------------------------------------------

    async def test_thread_roundtrip(self, store: Store) -> None:
        t = thread(1, {"acc-1", "acc-2"})
        await store.create_thread(t)
        assert await store.get_thread("thr-1") == t
        assert await store.get_thread("thr-unknown") is None

    async def test_thread_without_participants(self, store: Store) -> None:
        t = thread(1)
        await store.create_thread(t)
        assert await store.get_thread("thr-1") == t

    async def test_thread_duplicate(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        with pytest.raises(AlreadyExists):
            await store.create_thread(thread(1, {"acc-9"}))
        got = await store.get_thread("thr-1")
        assert got is not None
        assert got.participants == {"acc-1"}
        assert await store.list_threads("acc-9") == []

    async def test_list_threads_newest_first_and_only_mine(self, store: Store) -> None:
        await store.create_thread(thread("old", {"acc-1", "acc-2"}, created=100))
        await store.create_thread(thread("new", {"acc-1"}, created=300))
        await store.create_thread(thread("mid", {"acc-1", "acc-3"}, created=200))
        await store.create_thread(thread("theirs", {"acc-2"}, created=400))
        mine = await store.list_threads("acc-1")
        assert [t.id for t in mine] == ["thr-new", "thr-mid", "thr-old"]
        # Each listed thread carries all of its participants, not just the asker.
        assert mine[2].participants == {"acc-1", "acc-2"}
        assert mine[1].participants == {"acc-1", "acc-3"}
        assert [t.id for t in await store.list_threads("acc-2")] == ["thr-theirs", "thr-old"]
        assert await store.list_threads("acc-nobody") == []

    async def test_add_participants(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        await store.add_participants("thr-1", ["acc-2", "acc-3"])
        await store.add_participants("thr-1", ["acc-2", "acc-1"])  # idempotent
        await store.add_participants("thr-1", [])
        got = await store.get_thread("thr-1")
        assert got is not None
        assert got.participants == {"acc-1", "acc-2", "acc-3"}
        assert [t.id for t in await store.list_threads("acc-3")] == ["thr-1"]

    async def test_add_participants_unknown_thread(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.add_participants("thr-unknown", ["acc-1"])
        with pytest.raises(NotFound):
            await store.add_participants("thr-unknown", [])
        assert await store.list_threads("acc-1") == []

    # -- messages ----------------------------------------------------------------------

    async def test_create_message_returns_it(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        m = message(1, "thr-1")
        assert await store.create_message(m) == m
        assert await store.get_message("msg-1") == m
        assert await store.get_message("msg-unknown") is None

    async def test_create_message_existing_returns_stored_unchanged(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        m = message(1, "thr-1", created=2_000)
        await store.create_message(m)
        await store.append_chunks("msg-1", chunks(0, 3))
        again = MessageRecord(
            id="msg-1", thread_id="thr-1", sender="acc-2", codec="pcm", created=9, state="live"
        )
        stored = await store.create_message(again)
        assert stored.sender == "acc-1"
        assert stored.codec == "opus"
        assert stored.created == 2_000
        assert stored.chunks == 3
        assert stored.duration == 3 * FRAME
        assert await store.get_message("msg-1") == stored

    async def test_list_messages_oldest_first_last_limit(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        await store.create_thread(thread(2, {"acc-1"}))
        # Inserted out of order: the list orders by created time.
        for n, created in [(3, 300), (1, 100), (5, 500), (2, 200), (4, 400)]:
            await store.create_message(message(n, "thr-1", created=created))
        await store.create_message(message("other", "thr-2", created=250))
        all_ = await store.list_messages("thr-1")
        assert [m.id for m in all_] == ["msg-1", "msg-2", "msg-3", "msg-4", "msg-5"]
        last2 = await store.list_messages("thr-1", limit=2)
        assert [m.id for m in last2] == ["msg-4", "msg-5"]
        assert [m.id for m in await store.list_messages("thr-1", limit=5)] == [m.id for m in all_]
        assert await store.list_messages("thr-1", limit=0) == []
        assert await store.list_messages("thr-empty") == []
        assert [m.id for m in await store.list_messages("thr-2")] == ["msg-other"]

    async def test_list_messages_reflects_chunks_and_state(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        await store.append_chunks(m.id, chunks(0, 2))
        await store.close_message(m.id, 2, 2 * FRAME)
        (listed,) = await store.list_messages(m.thread_id)
        assert listed.state == "closed"
        assert listed.chunks == 2
        assert listed.duration == 2 * FRAME

    # -- chunks ------------------------------------------------------------------------

    async def test_append_and_read_roundtrip(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        sent = [chunk(0, frames=3), chunk(1, ts=3 * FRAME, frames=1)]
        await store.append_chunks(m.id, sent)
        assert await store.read_chunks(m.id, 0, 100) == sent
        got = await store.get_message(m.id)
        assert got is not None
        assert got.chunks == 2
        assert got.duration == 4 * FRAME
        assert got.state == "live"

    async def test_packets_bytes_survive_exactly(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        odd = [
            StoredChunk(seq=0, ts=0, duration=FRAME, packets=(b"",)),
            StoredChunk(seq=1, ts=FRAME, duration=0, packets=()),
            StoredChunk(seq=2, ts=FRAME, duration=FRAME, packets=(b"\x00" * 127, b"\xff" * 128)),
            StoredChunk(
                seq=3, ts=2 * FRAME, duration=2 * FRAME, packets=(bytes(range(256)) * 80, b"x")
            ),
        ]
        await store.append_chunks(m.id, odd)
        assert await store.read_chunks(m.id, 0, 10) == odd

    async def test_append_in_several_calls_and_read_windows(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        for start in range(0, 50, 7):
            await store.append_chunks(m.id, chunks(start, min(start + 7, 50)))
        assert await store.read_chunks(m.id, 0, 1000) == chunks(0, 50)
        assert await store.read_chunks(m.id, 10, 5) == chunks(10, 15)
        assert await store.read_chunks(m.id, 45, 100) == chunks(45, 50)
        assert await store.read_chunks(m.id, 49, 1) == [chunk(49)]
        assert await store.read_chunks(m.id, 50, 10) == []
        assert await store.read_chunks(m.id, 999, 10) == []
        assert await store.read_chunks(m.id, 0, 0) == []
        got = await store.get_message(m.id)
        assert got is not None
        assert got.chunks == 50
        assert got.duration == 50 * FRAME

    async def test_read_chunks_unknown_message(self, store: Store) -> None:
        assert await store.read_chunks("msg-unknown", 0, 10) == []

    async def test_chunks_are_per_message(self, store: Store) -> None:
        t = thread(1, {"acc-1"})
        await store.create_thread(t)
        await store.create_message(message("a", t.id))
        await store.create_message(message("b", t.id))
        await store.append_chunks("msg-a", chunks(0, 3))
        await store.append_chunks("msg-b", [chunk(0, frames=2)])
        assert await store.read_chunks("msg-a", 0, 10) == chunks(0, 3)
        assert await store.read_chunks("msg-b", 0, 10) == [chunk(0, frames=2)]

    async def test_reappend_is_idempotent(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        await store.append_chunks(m.id, chunks(0, 5))
        before = await store.get_message(m.id)
        await store.append_chunks(m.id, chunks(0, 5))  # a resend after reconnect
        await store.append_chunks(m.id, chunks(2, 4))  # an old, partial resend
        assert await store.get_message(m.id) == before
        assert await store.read_chunks(m.id, 0, 10) == chunks(0, 5)
        # A resend that overlaps and extends: the stored part is ignored, the rest lands.
        await store.append_chunks(m.id, chunks(3, 8))
        assert await store.read_chunks(m.id, 0, 10) == chunks(0, 8)
        got = await store.get_message(m.id)
        assert got is not None
        assert got.chunks == 8
        assert got.duration == 8 * FRAME

    async def test_reappend_keeps_first_bytes(self, store: Store) -> None:
        # The caller compares bytes before it re-sends; the store keeps what it has.
        _, m = await self._thread_with_message(store)
        await store.append_chunks(m.id, [chunk(0)])
        other = StoredChunk(seq=0, ts=0, duration=FRAME, packets=(b"different",))
        await store.append_chunks(m.id, [other])
        assert await store.read_chunks(m.id, 0, 10) == [chunk(0)]

    async def test_append_nothing(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        await store.append_chunks(m.id, [])
        assert await store.get_message(m.id) == m

    async def test_close_message(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        await store.append_chunks(m.id, chunks(0, 4))
        await store.close_message(m.id, 4, 4 * FRAME)
        got = await store.get_message(m.id)
        assert got is not None
        assert (got.state, got.chunks, got.duration) == ("closed", 4, 4 * FRAME)
        await store.close_message(m.id, 4, 4 * FRAME)  # closing twice is harmless
        assert await store.get_message(m.id) == got
        assert await store.read_chunks(m.id, 0, 10) == chunks(0, 4)

    async def test_close_empty_message(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        await store.close_message(m.id, 0, 0)
        got = await store.get_message(m.id)
        assert got is not None
        assert (got.state, got.chunks, got.duration) == ("closed", 0, 0)

    async def test_close_unknown_message(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.close_message("msg-unknown", 1, FRAME)

    async def test_create_message_after_close_returns_closed(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        await store.close_message(m.id, 0, 0)
        stored = await store.create_message(m)
        assert stored.state == "closed"

    # -- live_messages -----------------------------------------------------------------

    async def test_live_messages_empty_store(self, store: Store) -> None:
        assert await store.live_messages() == []
        assert await store.live_messages(after="msg-a", limit=10) == []

    async def test_live_messages_lists_the_live_ones_in_id_order(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        await store.create_thread(thread(2, {"acc-1"}))
        # Created out of id order, in two threads: the listing is by id.
        await store.create_message(message("c", "thr-2", created=1_000))
        await store.create_message(message("a", "thr-1", created=3_000))
        await store.create_message(message("b", "thr-1", created=2_000))
        await store.close_message("msg-b", 0, 0)
        assert await store.live_messages() == ["msg-a", "msg-c"]

    async def test_live_messages_drops_a_closed_one(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        await store.create_message(message("a", "thr-1"))
        await store.create_message(message("b", "thr-1"))
        await store.append_chunks("msg-a", chunks(0, 3))
        assert await store.live_messages() == ["msg-a", "msg-b"]
        await store.close_message("msg-a", 3, 3 * FRAME)
        assert await store.live_messages() == ["msg-b"]
        await store.close_message("msg-a", 3, 3 * FRAME)  # closing twice changes nothing
        assert await store.live_messages() == ["msg-b"]
        await store.close_message("msg-b", 0, 0)
        assert await store.live_messages() == []

    async def test_live_messages_pages_with_after_and_limit(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        ids = [f"msg-{n:02d}" for n in range(12)]
        for n in (7, 0, 11, 3, 5, 9, 1, 10, 2, 8, 6, 4):  # any order of creation
            await store.create_message(message(f"{n:02d}", "thr-1"))
        for n in (4, 8):
            await store.close_message(f"msg-{n:02d}", 0, 0)
        live = [i for i in ids if i not in ("msg-04", "msg-08")]
        assert await store.live_messages() == live
        assert await store.live_messages(limit=3) == live[:3]
        assert await store.live_messages(after=live[2], limit=3) == live[3:6]
        # ``after`` need not be a listed id, nor an existing one: ids greater than it.
        assert await store.live_messages(after="msg-04", limit=2) == ["msg-05", "msg-06"]
        assert await store.live_messages(after="msg-075") == ["msg-09", "msg-10", "msg-11"]
        assert await store.live_messages(after="msg-11") == []
        assert await store.live_messages(after="msg-zz") == []
        assert await store.live_messages(limit=0) == []
        # Paged to the end, every live id once, in order.
        pages: list[list[str]] = []
        after = ""
        while True:
            page = await store.live_messages(after=after, limit=4)
            pages.append(page)
            if len(page) < 4:
                break
            after = page[-1]
        assert [len(p) for p in pages] == [4, 4, 2]
        assert [i for p in pages for i in p] == live

    async def test_live_messages_never_lists_text_messages(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        text = MessageRecord(
            id="msg-t",
            thread_id="thr-1",
            sender="acc-1",
            codec="",
            created=2_000,
            state="closed",  # as the service creates them (VXS-13.3-1)
            kind="text",
            body='{"text": "hello"}',
        )
        where = replace(text, id="msg-l", kind="location", body='{"lat": 52.5, "lon": 13.4}')
        for record in (text, where):
            assert (await store.create_message(record)).state == "closed"
        await store.create_message(message("audio", "thr-1"))
        assert await store.live_messages() == ["msg-audio"]

    async def test_live_messages_after_creating_again(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        m = await store.create_message(message("a", "thr-1"))
        await store.create_message(m)  # ingest replays a create: still listed once
        assert await store.live_messages() == ["msg-a"]
        await store.close_message(m.id, 0, 0)
        stored = await store.create_message(m)  # a create after the close: stays closed
        assert stored.state == "closed"
        assert await store.live_messages() == []

    async def test_live_messages_survive_a_reopen(self, store_factory: StoreFactory) -> None:
        # What the process taking over a dead one's messages reads: a new store.
        async with store_factory() as store:
            await store.create_thread(thread(1, {"acc-1"}))
            for n in ("a", "b", "c"):
                await store.create_message(message(n, "thr-1"))
            await store.append_chunks("msg-b", chunks(0, 2))
            await store.close_message("msg-c", 0, 0)
        async with store_factory() as store:
            assert await store.live_messages() == ["msg-a", "msg-b"]
            await store.close_message("msg-a", 0, 0)
        async with store_factory() as store:
            assert await store.live_messages() == ["msg-b"]

    # -- seq_at_ts ---------------------------------------------------------------------

    async def test_seq_at_ts_back_to_back(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        await store.append_chunks(m.id, chunks(0, 10))  # chunk k covers [k*960, (k+1)*960)
        assert await store.seq_at_ts(m.id, 0) == 0
        assert await store.seq_at_ts(m.id, 1) == 0
        assert await store.seq_at_ts(m.id, FRAME - 1) == 0
        assert await store.seq_at_ts(m.id, FRAME) == 1  # exact boundary: the next chunk
        assert await store.seq_at_ts(m.id, 5 * FRAME + 480) == 5
        assert await store.seq_at_ts(m.id, 10 * FRAME - 1) == 9
        assert await store.seq_at_ts(m.id, 10 * FRAME) == 10  # the end: the chunk count
        assert await store.seq_at_ts(m.id, 10**12) == 10
        assert await store.seq_at_ts(m.id, -5) == 0

    async def test_seq_at_ts_with_gaps(self, store: Store) -> None:
        # Silence between chunks (DTX, pauses): chunk 1 starts 1 s after chunk 0 ends.
        _, m = await self._thread_with_message(store)
        sent = [
            chunk(0, ts=0),  # [0, 960)
            chunk(1, ts=48_960),  # [48960, 49920)
            chunk(2, ts=49_920, frames=2),  # [49920, 51840)
        ]
        await store.append_chunks(m.id, sent)
        assert await store.seq_at_ts(m.id, 960) == 1  # the gap belongs to the next chunk
        assert await store.seq_at_ts(m.id, 20_000) == 1
        assert await store.seq_at_ts(m.id, 48_959) == 1
        assert await store.seq_at_ts(m.id, 48_960) == 1
        assert await store.seq_at_ts(m.id, 49_920) == 2
        assert await store.seq_at_ts(m.id, 51_839) == 2
        assert await store.seq_at_ts(m.id, 51_840) == 3

    async def test_seq_at_ts_starting_late(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        await store.append_chunks(m.id, [chunk(0, ts=9_600), chunk(1, ts=10_560)])
        assert await store.seq_at_ts(m.id, 0) == 0  # before the first chunk: the first chunk
        assert await store.seq_at_ts(m.id, 10_559) == 0
        assert await store.seq_at_ts(m.id, 10_560) == 1

    async def test_seq_at_ts_zero_length_chunk_is_skipped(self, store: Store) -> None:
        # A chunk of no media time holds no ts: "ends after ts" is false for it.
        _, m = await self._thread_with_message(store)
        await store.append_chunks(
            m.id,
            [
                chunk(0, ts=0),
                StoredChunk(seq=1, ts=FRAME, duration=0, packets=()),
                chunk(2, ts=FRAME),
            ],
        )
        assert await store.seq_at_ts(m.id, FRAME) == 2

    async def test_seq_at_ts_empty_and_unknown(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        assert await store.seq_at_ts(m.id, 0) == 0
        assert await store.seq_at_ts("msg-unknown", 0) == 0
        assert await store.seq_at_ts("msg-unknown", 12_345) == 0

    # -- restarts, concurrency, cancellation -------------------------------------------

    async def test_everything_survives_a_reopen(self, store_factory: StoreFactory) -> None:
        async with store_factory() as store:
            await store.create_account(account(1))
            await store.create_session(
                Session(token_hash="ef" * 32, account_id="acc-1", created=1, expires=2)
            )
            t, m = await self._thread_with_message(store)
            await store.append_chunks(m.id, chunks(0, 20))
            await store.close_message(m.id, 20, 20 * FRAME)
        async with store_factory() as store:
            assert await store.get_account("acc-1") == account(1)
            assert await store.get_session("ef" * 32) is not None
            assert await store.get_thread(t.id) == t
            got = await store.get_message(m.id)
            assert got is not None
            assert (got.state, got.chunks, got.duration) == ("closed", 20, 20 * FRAME)
            assert await store.read_chunks(m.id, 0, 100) == chunks(0, 20)

    async def test_concurrent_appends_to_many_messages(self, store: Store) -> None:
        await store.create_thread(thread(1, {"acc-1"}))
        talkers, per_talker = 20, 15
        for n in range(talkers):
            await store.create_message(message(n, "thr-1"))

        async def talk(n: int) -> None:
            for seq in range(per_talker):
                await store.append_chunks(f"msg-{n}", [chunk(seq)])

        async with trio.open_nursery() as nursery:
            for n in range(talkers):
                nursery.start_soon(talk, n)
        for n in range(talkers):
            assert await store.read_chunks(f"msg-{n}", 0, 100) == chunks(0, per_talker)
            got = await store.get_message(f"msg-{n}")
            assert got is not None
            assert got.chunks == per_talker

    async def test_reads_during_writes(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        seen: list[int] = []

        async def reader() -> None:
            while True:
                got = await store.read_chunks(m.id, 0, 1000)
                # Whatever a reader sees is a contiguous prefix.
                assert [c.seq for c in got] == list(range(len(got)))
                seen.append(len(got))
                if len(got) == 100:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for seq in range(100):
                await store.append_chunks(m.id, [chunk(seq)])
        assert seen[-1] == 100

    async def test_cancelled_append_is_all_or_nothing(self, store: Store) -> None:
        _, m = await self._thread_with_message(store)
        await store.append_chunks(m.id, chunks(0, 2))
        for attempt in range(20):
            with trio.move_on_after(0):  # cancelled at its first checkpoint
                await store.append_chunks(m.id, chunks(2, 6))
            if attempt % 2:  # and sometimes a little later
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(store.append_chunks, m.id, chunks(2, 6))
                        await trio.lowlevel.checkpoint()
                        scope.cancel()
            got = await store.read_chunks(m.id, 0, 100)
            assert len(got) in (2, 6)
            assert got == chunks(0, len(got))
        await store.append_chunks(m.id, chunks(2, 8))  # the store still works
        assert await store.read_chunks(m.id, 0, 100) == chunks(0, 8)
