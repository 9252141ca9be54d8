"""The messaging service's storage contract: what every ``Store`` backend must do for
spec section 13 (accounts, sessions, contacts, thread settings, counts, recall, forward,
reactions, receipts, images, the timeline, search, push subscriptions), as reusable tests.

Use it like ``store_contract.StoreContract``: subclass it in a backend's test module and
provide a ``store_factory`` fixture that returns a new, *unopened* store over the same
backing data on every call within one test (a fresh, empty database per test)::

    from store_service_contract import ServiceStoreContract

    class TestMyBackendServiceContract(ServiceStoreContract):
        @pytest.fixture
        def store_factory(self, tmp_path) -> StoreFactory:
            return lambda: MyBackend(...)

Only what ``voxer_stream/store/base.py`` promises is tested here (where base.py is silent
and the spec relies on the store, e.g. the contacts' order, the test says so). The tests
create the parent rows (accounts, threads, messages) a backend with foreign keys needs,
and never rely on a backend checking them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import pytest
import trio
from store_contract import FRAME, StoreFactory, account, chunks

from voxer_stream.store import (
    AlreadyExists,
    Contact,
    Counts,
    Event,
    Media,
    Member,
    MessageRecord,
    NewEvent,
    NotFound,
    PushRecord,
    Reaction,
    Receipt,
    ReceiptKind,
    SearchHit,
    Session,
    Store,
    Thread,
    TimelineBounds,
)

# -- records -----------------------------------------------------------------------------


def token(n: int | str) -> str:
    """A session's token hash: 64 hex digits, as the service stores them."""
    return hashlib.sha256(f"token-{n}".encode()).hexdigest()


def session(
    n: int | str,
    account_id: str = "acc-1",
    *,
    created: int = 1_000,
    expires: int = 10**13,
    session_id: str | None = None,
) -> Session:
    return Session(
        token_hash=token(n),
        account_id=account_id,
        created=created,
        expires=expires,
        id=f"s-{n}" if session_id is None else session_id,
        device=f"device {n}",
    )


def text(
    n: int | str,
    thread_id: str,
    words: str,
    *,
    sender: str = "acc-1",
    created: int = 2_000,
    directed_to: str | None = None,
) -> MessageRecord:
    """A text message, its body as the service writes it."""
    return MessageRecord(
        id=f"msg-{n}",
        thread_id=thread_id,
        sender=sender,
        codec="",
        created=created,
        state="closed",
        kind="text",
        body=json.dumps({"text": words}),
        directed_to=directed_to,
    )


def audio(
    n: int | str,
    thread_id: str,
    *,
    sender: str = "acc-1",
    created: int = 2_000,
    directed_to: str | None = None,
) -> MessageRecord:
    return MessageRecord(
        id=f"msg-{n}",
        thread_id=thread_id,
        sender=sender,
        codec="opus",
        created=created,
        state="closed",
        directed_to=directed_to,
    )


def image_message(
    n: int | str,
    thread_id: str,
    media_id: str,
    *,
    sender: str = "acc-1",
    created: int = 2_000,
    directed_to: str | None = None,
) -> MessageRecord:
    return MessageRecord(
        id=f"msg-{n}",
        thread_id=thread_id,
        sender=sender,
        codec="",
        created=created,
        state="closed",
        kind="image",
        body=json.dumps({"content_type": "image/png", "width": 2, "height": 1}),
        directed_to=directed_to,
        media_id=media_id,
    )


def media(n: int | str, owner: str = "acc-1", *, created: int = 1_000) -> Media:
    return Media(
        id=f"img-{n}",
        owner=owner,
        content_type="image/png",
        width=2,
        height=1,
        data=b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + f"{n}".encode(),
        thumbnail=b"\xff\xd8\xff" + b"\x00" * 10 + f"{n}".encode(),
        thumbnail_type="image/jpeg",
        created=created,
    )


def event(
    account_id: str,
    type_: str = "test",
    *,
    created: int = 1_000,
    dedupe: str | None = None,
    thread_id: str | None = None,
    message_id: str | None = None,
    data: str = "{}",
) -> NewEvent:
    return NewEvent(
        account_id=account_id,
        type=type_,
        thread_id=thread_id,
        message_id=message_id,
        data=data,
        created=created,
        dedupe=dedupe,
    )


def push(
    n: int | str,
    account_id: str = "acc-1",
    session_id: str = "s-1",
    *,
    endpoint: str | None = None,
    created: int = 1_000,
) -> PushRecord:
    return PushRecord(
        id=f"push-{n}",
        account_id=account_id,
        session_id=session_id,
        endpoint=endpoint if endpoint is not None else f"https://push.example/ep/{n}",
        p256dh=f"p256dh-{n}",
        auth=f"auth-{n}",
        created=created,
    )


def group(
    n: int | str,
    participants: Sequence[str],
    *,
    created: int = 1_000,
    title: str | None = None,
    created_by: str = "acc-1",
) -> Thread:
    return Thread(
        id=f"thr-{n}",
        title=f"Thread {n}" if title is None else title,
        created_by=created_by,
        created=created,
        participants=frozenset(participants),
    )


def direct(n: int | str, a: str, b: str, *, created: int = 1_000) -> Thread:
    return Thread(
        id=f"dm-{n}",
        title="",
        created_by=a,
        created=created,
        participants=frozenset({a, b}),
        kind="direct",
        members={
            a: Member(account_id=a, role="member", joined=created),
            b: Member(account_id=b, role="member", joined=created),
        },
    )


async def types(store: Store, account_id: str) -> list[str]:
    """The types of the account's events, in timeline order."""
    return [e.type for e in await store.read_events(account_id, 0, 10_000)]


async def all_events(store: Store, account_id: str) -> list[Event]:
    return await store.read_events(account_id, 0, 10_000)


def counts_of(counts: dict[str, Counts], thread_id: str) -> Counts:
    """A thread's counts; "threads with nothing unread may be missing"."""
    return counts.get(thread_id, Counts())


def reacted(found: dict[str, list[Reaction]], message_id: str) -> set[tuple[str, str]]:
    return {(r.account_id, r.emoji) for r in found.get(message_id, [])}


def hit_ids(hits: Sequence[SearchHit]) -> list[str | None]:
    """Hits as message ids, or ``thread:<id>`` for a thread title hit."""
    return [h.message_id if h.kind == "message" else f"thread:{h.thread_id}" for h in hits]


class ServiceStoreContract:
    """Subclass as ``Test<Backend>ServiceContract`` and provide a ``store_factory``."""

    @pytest.fixture
    async def store(self, store_factory: StoreFactory) -> AsyncIterator[Store]:
        async with store_factory() as store:
            yield store

    async def _accounts(self, store: Store, *ns: int) -> None:
        for n in ns:
            await store.create_account(account(n))

    # -- accounts ----------------------------------------------------------------------

    async def test_update_account_fields(self, store: Store) -> None:
        await self._accounts(store, 1, 2)
        original = account(1)
        await store.update_account("acc-1", display_name="Alice \N{STUDIO MICROPHONE}")
        got = await store.get_account("acc-1")
        assert got == replace(original, display_name="Alice \N{STUDIO MICROPHONE}")
        await store.update_account("acc-1", avatar="img-1")
        await store.update_account("acc-1", password_hash="$argon2id$new")
        got = await store.get_account("acc-1")
        assert got == replace(
            original,
            display_name="Alice \N{STUDIO MICROPHONE}",
            avatar="img-1",
            password_hash="$argon2id$new",
        )
        # Nothing given changes nothing; avatar=None without clear_avatar keeps it.
        await store.update_account("acc-1")
        await store.update_account("acc-1", avatar=None, display_name="")
        got = await store.get_account("acc-1")
        assert got is not None
        assert (got.avatar, got.display_name) == ("img-1", "")
        await store.update_account("acc-1", clear_avatar=True)
        got = await store.get_account("acc-1")
        assert got is not None
        assert got.avatar is None
        assert got.password_hash == "$argon2id$new"
        assert await store.get_account("acc-2") == account(2)  # others untouched
        assert await store.get_account_by_username("user1") == got

    async def test_update_account_unknown(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.update_account("acc-nobody", display_name="x")
        with pytest.raises(NotFound):
            await store.update_account("acc-nobody")
        with pytest.raises(NotFound):
            await store.update_account("acc-nobody", clear_avatar=True)
        assert await store.get_account("acc-nobody") is None

    # -- sessions ----------------------------------------------------------------------

    async def test_session_fields_roundtrip(self, store: Store) -> None:
        await self._accounts(store, 1)
        s = replace(session(1), acked=7, last_seen=1_500)
        await store.create_session(s)
        assert await store.get_session(token(1)) == s
        assert await store.list_sessions("acc-1") == [s]

    async def test_list_sessions_newest_first(self, store: Store) -> None:
        await self._accounts(store, 1, 2)
        made = {
            "a": session("a", created=100, expires=150),  # expired: still listed
            "b": session("b", created=300),
            "c": session("c", created=200),
        }
        for s in made.values():
            await store.create_session(s)
        await store.create_session(session("theirs", "acc-2", created=400))
        assert await store.list_sessions("acc-1") == [made["b"], made["c"], made["a"]]
        assert [s.id for s in await store.list_sessions("acc-2")] == ["s-theirs"]
        assert await store.list_sessions("acc-nobody") == []

    async def test_session_id_derived_when_empty(self, store: Store) -> None:
        await self._accounts(store, 1)
        await store.create_session(session(1, session_id=""))
        await store.create_session(session(2, session_id=""))
        one, two = await store.get_session(token(1)), await store.get_session(token(2))
        assert one is not None
        assert two is not None
        assert one.id
        assert two.id
        assert one.id != two.id
        assert {s.id for s in await store.list_sessions("acc-1")} == {one.id, two.id}
        assert await store.delete_sessions("acc-1", session_id=one.id) == 1
        assert await store.get_session(token(1)) is None
        assert await store.get_session(token(2)) == two

    async def test_delete_sessions_by_id(self, store: Store) -> None:
        await self._accounts(store, 1, 2)
        for n in (1, 2):
            await store.create_session(session(n))
        await store.create_session(session(3, "acc-2"))
        assert await store.delete_sessions("acc-1", session_id="s-1") == 1
        assert await store.get_session(token(1)) is None
        assert await store.get_session(token(2)) == session(2)
        assert await store.delete_sessions("acc-1", session_id="s-1") == 0  # gone already
        assert await store.delete_sessions("acc-1", session_id="s-unknown") == 0
        # Another account's session is not this account's to delete.
        assert await store.delete_sessions("acc-1", session_id="s-3") == 0
        assert await store.get_session(token(3)) == session(3, "acc-2")
        assert [s.id for s in await store.list_sessions("acc-1")] == ["s-2"]

    async def test_delete_sessions_all_but_one(self, store: Store) -> None:
        await self._accounts(store, 1, 2)
        for n, created in ((1, 100), (2, 200), (3, 300)):
            await store.create_session(session(n, created=created))
        await store.create_session(session(4, "acc-2"))
        assert await store.delete_sessions("acc-1", keep_token_hash=token(2)) == 2
        assert await store.list_sessions("acc-1") == [session(2, created=200)]
        assert await store.delete_sessions("acc-1", keep_token_hash=token(2)) == 0
        assert await store.get_session(token(4)) == session(4, "acc-2")
        # Without a session to keep: all of them.
        assert await store.delete_sessions("acc-1") == 1
        assert await store.list_sessions("acc-1") == []
        assert await store.list_sessions("acc-2") == [session(4, "acc-2")]

    async def test_delete_sessions_drops_their_push_subscriptions(self, store: Store) -> None:
        await self._accounts(store, 1, 2)
        for n in (1, 2, 3):
            await store.create_session(session(n))
            await store.put_push_subscription(push(n, session_id=f"s-{n}"))
        await store.create_session(session(4, "acc-2"))
        await store.put_push_subscription(push(4, "acc-2", "s-4"))
        assert await store.delete_sessions("acc-1", session_id="s-1") == 1
        assert {p.id for p in await store.list_push_subscriptions("acc-1")} == {
            "push-2",
            "push-3",
        }
        assert await store.delete_sessions("acc-1", keep_token_hash=token(3)) == 1
        assert [p.id for p in await store.list_push_subscriptions("acc-1")] == ["push-3"]
        assert [p.id for p in await store.list_push_subscriptions("acc-2")] == ["push-4"]

    async def test_touch_session_acked_only_moves_forward(self, store: Store) -> None:
        await self._accounts(store, 1)
        await store.create_session(session(1))
        await store.create_session(session(2))
        await store.touch_session(token(1), acked=5, last_seen=1_100)
        got = await store.get_session(token(1))
        assert got is not None
        assert (got.acked, got.last_seen) == (5, 1_100)
        await store.touch_session(token(1), acked=3, last_seen=1_200)  # an old ack
        got = await store.get_session(token(1))
        assert got is not None
        assert (got.acked, got.last_seen) == (5, 1_200)
        await store.touch_session(token(1), last_seen=1_300)  # activity, no ack
        got = await store.get_session(token(1))
        assert got is not None
        assert (got.acked, got.last_seen) == (5, 1_300)
        await store.touch_session(token(1), acked=9)
        got = await store.get_session(token(1))
        assert got is not None
        assert (got.acked, got.last_seen) == (9, 1_300)
        assert await store.get_session(token(2)) == session(2)  # the other device
        await store.touch_session(token("unknown"), acked=1, last_seen=1)  # nothing to touch
        assert await store.get_session(token("unknown")) is None

    # -- contacts ----------------------------------------------------------------------

    async def test_contacts_put_replace_get_delete(self, store: Store) -> None:
        await self._accounts(store, 1, 2, 3)
        c = Contact(owner="acc-1", contact="acc-2", created=500)
        await store.put_contact(c)
        assert await store.get_contact("acc-1", "acc-2") == c
        assert await store.get_contact("acc-2", "acc-1") is None  # one-sided
        await store.put_contact(replace(c, blocked=True))
        got = await store.get_contact("acc-1", "acc-2")
        assert got is not None
        assert got.blocked
        await store.put_contact(replace(c, blocked=False))
        got = await store.get_contact("acc-1", "acc-2")
        assert got is not None
        assert not got.blocked
        assert [x.contact for x in await store.list_contacts("acc-1")] == ["acc-2"]
        assert await store.delete_contact("acc-1", "acc-2") is True
        assert await store.delete_contact("acc-1", "acc-2") is False
        assert await store.delete_contact("acc-1", "acc-3") is False
        assert await store.get_contact("acc-1", "acc-2") is None
        assert await store.list_contacts("acc-1") == []

    async def test_list_contacts_the_owners_oldest_first(self, store: Store) -> None:
        # base.py does not say the order; the spec's GET /v1/contacts is "oldest first"
        # (VXS-13.1-3) and the service lists the store's order as it is.
        await self._accounts(store, 1, 2, 3, 4, 5)
        made = [
            Contact(owner="acc-1", contact="acc-4", created=100, blocked=True),
            Contact(owner="acc-1", contact="acc-2", created=200),
            Contact(owner="acc-1", contact="acc-5", created=300),
        ]
        for c in (made[2], made[0], made[1]):
            await store.put_contact(c)
        await store.put_contact(Contact(owner="acc-3", contact="acc-1", created=50))
        assert await store.list_contacts("acc-1") == made
        assert [c.contact for c in await store.list_contacts("acc-3")] == ["acc-1"]
        assert await store.list_contacts("acc-2") == []

    # -- threads -----------------------------------------------------------------------

    async def test_thread_member_defaults(self, store: Store) -> None:
        t = group(1, ["acc-1", "acc-2"], created=1_234)
        await store.create_thread(t)
        got = await store.get_thread(t.id)
        assert got is not None
        assert got == t
        assert got.kind == "group"
        assert not got.controlled
        assert got.member("acc-1") == Member(account_id="acc-1", role="admin", joined=1_234)
        assert got.member("acc-2") == Member(account_id="acc-2", role="member", joined=1_234)
        assert got.member("acc-3") is None
        (listed,) = await store.list_threads("acc-2")
        assert listed.member("acc-1") == got.member("acc-1")

    async def test_thread_settings_and_members_roundtrip(self, store: Store) -> None:
        t = Thread(
            id="thr-1",
            title="Broadcast",
            created_by="acc-1",
            created=1_000,
            participants=frozenset({"acc-1", "acc-2", "acc-3"}),
            controlled=True,
            members={
                "acc-2": Member(account_id="acc-2", role="listen", muted=True, joined=1_500),
                "acc-3": Member(account_id="acc-3", role="admin", joined=1_600),
            },
        )
        await store.create_thread(t)
        got = await store.get_thread("thr-1")
        assert got is not None
        assert got == t
        assert got.controlled
        for a in ("acc-1", "acc-2", "acc-3"):
            assert got.member(a) == t.member(a)

    async def test_create_thread_events(self, store: Store) -> None:
        t = group(1, ["acc-1", "acc-2"])
        await store.create_thread(t, [event("acc-1", "thread"), event("acc-2", "thread")])
        assert await types(store, "acc-1") == ["thread"]
        assert await types(store, "acc-2") == ["thread"]
        with pytest.raises(AlreadyExists):
            await store.create_thread(t, [event("acc-1", "again"), event("acc-3", "again")])
        assert await types(store, "acc-1") == ["thread"]
        assert await types(store, "acc-3") == []

    async def test_find_direct_thread_either_order(self, store: Store) -> None:
        d = direct(1, "acc-1", "acc-2")
        await store.create_thread(d)
        await store.create_thread(group("g", ["acc-1", "acc-3"]))  # a pair, but a group
        for a, b in (("acc-1", "acc-2"), ("acc-2", "acc-1")):
            found = await store.find_direct_thread(a, b)
            assert found == d
            assert found is not None
            assert found.kind == "direct"
            assert found.member("acc-1") == d.member("acc-1")
        assert await store.find_direct_thread("acc-1", "acc-3") is None
        assert await store.find_direct_thread("acc-2", "acc-3") is None

    async def test_one_direct_thread_per_pair(self, store: Store) -> None:
        first = direct(1, "acc-1", "acc-2")
        await store.create_thread(first)
        await store.create_thread(direct(2, "acc-1", "acc-3"))  # another pair is fine
        second = direct(3, "acc-2", "acc-1", created=2_000)  # the same pair, other way
        with pytest.raises(AlreadyExists):
            await store.create_thread(second, [event("acc-1", "thread"), event("acc-2", "thread")])
        assert await store.get_thread("dm-3") is None
        assert await store.find_direct_thread("acc-2", "acc-1") == first
        assert [t.id for t in await store.list_threads("acc-2")] == ["dm-1"]
        assert await types(store, "acc-1") == []
        assert await types(store, "acc-2") == []
        # A group of the same two accounts is not a direct thread.
        await store.create_thread(group(4, ["acc-1", "acc-2"]))

    async def test_update_thread(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        await store.update_thread("thr-1", title="Renamed", events=[event("acc-2", "thread")])
        got = await store.get_thread("thr-1")
        assert got is not None
        assert (got.title, got.controlled) == ("Renamed", False)
        assert await types(store, "acc-2") == ["thread"]
        await store.update_thread("thr-1", controlled=True)  # keeps the title
        got = await store.get_thread("thr-1")
        assert got is not None
        assert (got.title, got.controlled) == ("Renamed", True)
        await store.update_thread("thr-1", controlled=False, title="")
        got = await store.get_thread("thr-1")
        assert got is not None
        assert (got.title, got.controlled) == ("", False)
        assert got.participants == {"acc-1", "acc-2"}
        assert got.member("acc-1") == Member(account_id="acc-1", role="admin", joined=1_000)

    async def test_update_unknown_thread_appends_nothing(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.update_thread("thr-unknown", title="x", events=[event("acc-1")])
        with pytest.raises(NotFound):
            await store.update_thread("thr-unknown", events=[event("acc-1")])
        assert await types(store, "acc-1") == []
        assert await store.get_thread("thr-unknown") is None

    async def test_set_member(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2", "acc-3"]))
        await store.set_member("thr-1", "acc-2", role="listen", events=[event("acc-2", "role")])
        await store.set_member("thr-1", "acc-2", muted=True)  # keeps the role
        got = await store.get_thread("thr-1")
        assert got is not None
        assert got.member("acc-2") == Member(
            account_id="acc-2", role="listen", muted=True, joined=1_000
        )
        await store.set_member("thr-1", "acc-2", role="admin", events=[event("acc-2", "role")])
        got = await store.get_thread("thr-1")
        assert got is not None
        assert got.member("acc-2") == Member(
            account_id="acc-2", role="admin", muted=True, joined=1_000
        )
        assert got.member("acc-1") == Member(account_id="acc-1", role="admin", joined=1_000)
        assert got.member("acc-3") == Member(account_id="acc-3", role="member", joined=1_000)
        assert await types(store, "acc-2") == ["role", "role"]

    async def test_set_member_of_a_non_participant(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1"]))
        with pytest.raises(NotFound):
            await store.set_member("thr-1", "acc-2", role="admin", events=[event("acc-2")])
        with pytest.raises(NotFound):
            await store.set_member("thr-unknown", "acc-1", muted=True, events=[event("acc-1")])
        assert await types(store, "acc-1") == []
        assert await types(store, "acc-2") == []
        got = await store.get_thread("thr-1")
        assert got is not None
        assert got.participants == {"acc-1"}

    async def test_remove_participant(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2", "acc-3"]))
        left = [event("acc-1", "left"), event("acc-2", "left")]
        assert await store.remove_participant("thr-1", "acc-2", left) is True
        got = await store.get_thread("thr-1")
        assert got is not None
        assert got.participants == {"acc-1", "acc-3"}
        assert got.member("acc-2") is None
        assert await store.list_threads("acc-2") == []
        assert await types(store, "acc-1") == ["left"]
        assert await types(store, "acc-2") == ["left"]
        # Not a participant (any more): False, and no events.
        assert await store.remove_participant("thr-1", "acc-2", left) is False
        assert await store.remove_participant("thr-1", "acc-9", left) is False
        assert await store.remove_participant("thr-unknown", "acc-1", left) is False
        assert await types(store, "acc-1") == ["left"]
        assert await types(store, "acc-2") == ["left"]
        # Removed, then added again: a participant once more.
        await store.add_participants("thr-1", ["acc-2"], joined=5_000)
        got = await store.get_thread("thr-1")
        assert got is not None
        assert got.member("acc-2") == Member(account_id="acc-2", role="member", joined=5_000)

    async def test_add_participants_role_joined_events(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        await store.add_participants(
            "thr-1",
            ["acc-3", "acc-1"],
            role="listen",
            joined=5_000,
            events=[event("acc-3", "joined")],
        )
        got = await store.get_thread("thr-1")
        assert got is not None
        assert got.member("acc-3") == Member(account_id="acc-3", role="listen", joined=5_000)
        # An existing participant keeps its role (and when it joined).
        assert got.member("acc-1") == Member(account_id="acc-1", role="admin", joined=1_000)
        assert await types(store, "acc-3") == ["joined"]
        with pytest.raises(NotFound):
            await store.add_participants("thr-unknown", ["acc-4"], events=[event("acc-4")])
        assert await types(store, "acc-4") == []

    # -- counts ------------------------------------------------------------------------

    async def test_thread_counts_rules(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"], created=1_000))
        await store.create_thread(group(2, ["acc-1", "acc-2"], created=1_000))
        await store.add_participants("thr-1", ["acc-3"], joined=5_000)
        t = "thr-1"
        await store.create_message(text(1, t, "hi", sender="acc-1", created=2_000))
        await store.create_message(audio(2, t, sender="acc-1", created=3_000))
        await store.create_message(text(3, t, "yo", sender="acc-2", created=4_000))
        await store.create_message(
            text(4, t, "psst", sender="acc-1", created=6_000, directed_to="acc-3")
        )
        await store.create_message(text(5, t, "oops", sender="acc-1", created=6_500))
        await store.recall_message("msg-5", 6_600)
        await store.create_message(audio(6, t, sender="acc-2", created=7_000))
        await store.create_message(audio(7, t, sender="acc-3", created=7_500, directed_to="acc-1"))
        await store.create_message(text(8, "thr-2", "elsewhere", sender="acc-2", created=2_000))
        await store.create_message(
            image_message(9, "thr-2", "img-1", sender="acc-2", created=2_100)
        )

        c1 = await store.thread_counts("acc-1")
        c2 = await store.thread_counts("acc-2")
        c3 = await store.thread_counts("acc-3")
        # acc-1: msg-3 unread; msg-6 and msg-7 (directed to it) unheard; its own not.
        assert counts_of(c1, "thr-1") == Counts(unread=1, unheard=2)
        assert counts_of(c1, "thr-2") == Counts(unread=2, unheard=0)  # an image is read
        # acc-2: msg-1 unread, msg-2 unheard; msg-4 and msg-7 are directed to others,
        # msg-5 is recalled.
        assert counts_of(c2, "thr-1") == Counts(unread=1, unheard=1)
        assert counts_of(c2, "thr-2") == Counts()
        # acc-3 joined at 5000: msg-1..3 are from before; msg-4 is directed to it.
        assert counts_of(c3, "thr-1") == Counts(unread=1, unheard=1)
        assert counts_of(c3, "thr-2") == Counts()  # not its thread
        assert set(c3) <= {"thr-1"}
        assert await store.thread_counts("acc-nobody") == {}

    async def test_thread_counts_receipts(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2", "acc-3"]))
        t = "thr-1"
        await store.create_message(text(1, t, "hi", sender="acc-1", created=2_000))
        await store.create_message(audio(2, t, sender="acc-1", created=3_000))
        # A text is read, an audio message heard; delivered counts as neither, and the
        # other kind of receipt does not either.
        not_read: tuple[ReceiptKind, ...] = ("delivered", "heard")
        not_heard: tuple[ReceiptKind, ...] = ("delivered", "read")
        for kind in not_read:
            await store.add_receipt(Receipt(message_id="msg-1", account_id="acc-2", kind=kind))
        for kind in not_heard:
            await store.add_receipt(Receipt(message_id="msg-2", account_id="acc-2", kind=kind))
        assert counts_of(await store.thread_counts("acc-2"), t) == Counts(unread=1, unheard=1)
        await store.add_receipt(Receipt(message_id="msg-1", account_id="acc-2", kind="read"))
        assert counts_of(await store.thread_counts("acc-2"), t) == Counts(unread=0, unheard=1)
        await store.add_receipt(Receipt(message_id="msg-2", account_id="acc-2", kind="heard"))
        assert counts_of(await store.thread_counts("acc-2"), t) == Counts()
        # acc-2's receipts are its own: acc-3 still has both.
        assert counts_of(await store.thread_counts("acc-3"), t) == Counts(unread=1, unheard=1)
        # A participant that leaves has no counts for the thread.
        await store.remove_participant(t, "acc-3")
        assert counts_of(await store.thread_counts("acc-3"), t) == Counts()

    # -- recall and forward ------------------------------------------------------------

    async def test_recall_drops_the_content(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        t = "thr-1"
        m = await store.create_message(text(1, t, "secret bicycle", created=2_000))
        a = await store.create_message(audio(2, t, created=3_000))
        await store.append_chunks(a.id, chunks(0, 3))
        for msg in (m, a):
            await store.set_reaction(
                Reaction(message_id=msg.id, account_id="acc-2", emoji="\N{THUMBS UP SIGN}"), True
            )
        assert hit_ids(await store.search("acc-2", '"bicycle"', before=None, limit=10)) == ["msg-1"]
        recalled = await store.recall_message(m.id, 9_000, [event("acc-2", "message.recalled")])
        assert recalled.recalled == 9_000
        assert recalled.body is None
        assert (recalled.id, recalled.thread_id, recalled.sender) == (m.id, t, "acc-1")
        assert (recalled.kind, recalled.created) == ("text", 2_000)
        assert await store.get_message(m.id) == recalled
        assert await types(store, "acc-2") == ["message.recalled"]
        assert await store.search("acc-2", '"bicycle"', before=None, limit=10) == []
        assert await store.search("acc-1", '"secret"', before=None, limit=10) == []

        gone = await store.recall_message(a.id, 9_100)
        assert gone.recalled == 9_100
        assert gone.chunks == 0  # seqs 0 .. chunks-1 are stored: none
        assert await store.read_chunks(a.id, 0, 100) == []
        assert await store.get_message(a.id) == gone
        found = await store.reactions([m.id, a.id])
        assert reacted(found, m.id) == set()
        assert reacted(found, a.id) == set()
        # Still listed, as a recalled message.
        assert [x.id for x in await store.list_messages(t)] == [m.id, a.id]

    async def test_recall_is_idempotent(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1"]))
        await store.create_message(text(1, "thr-1", "hello"))
        first = await store.recall_message("msg-1", 9_000)
        again = await store.recall_message("msg-1", 9_999)
        assert again == first
        assert again.recalled == 9_000  # when it was first recalled
        assert await store.get_message("msg-1") == first

    async def test_recall_unknown(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.recall_message("msg-unknown", 1, [event("acc-1")])
        assert await types(store, "acc-1") == []

    async def test_forward_copies_chunks(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        await store.create_thread(group(2, ["acc-2", "acc-3"], created_by="acc-2"))
        source = await store.create_message(audio(1, "thr-1", created=2_000))
        await store.append_chunks(source.id, chunks(0, 4))
        await store.close_message(source.id, 4, 4 * FRAME)
        closed = await store.get_message(source.id)
        assert closed is not None
        copy = replace(
            closed,
            id="msg-fwd",
            thread_id="thr-2",
            sender="acc-2",
            created=5_000,
            forwarded_from=source.id,
        )
        got = await store.forward_message(source.id, copy, [event("acc-3", "message")])
        assert got == copy
        assert await store.get_message("msg-fwd") == copy
        assert await store.read_chunks("msg-fwd", 0, 100) == chunks(0, 4)
        assert await store.seq_at_ts("msg-fwd", 2 * FRAME) == 2
        assert await types(store, "acc-3") == ["message"]
        assert [m.id for m in await store.list_messages("thr-2")] == ["msg-fwd"]
        # The source is untouched, and the copy is one: recalling the source leaves it.
        assert await store.get_message(source.id) == closed
        await store.recall_message(source.id, 6_000)
        assert await store.read_chunks("msg-fwd", 0, 100) == chunks(0, 4)
        fwd = await store.get_message("msg-fwd")
        assert fwd is not None
        assert fwd.recalled is None

    async def test_forward_is_idempotent_on_the_id(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        source = await store.create_message(audio(1, "thr-1"))
        await store.append_chunks(source.id, chunks(0, 2))
        await store.close_message(source.id, 2, 2 * FRAME)
        closed = await store.get_message(source.id)
        assert closed is not None
        copy = replace(closed, id="msg-fwd", created=5_000, forwarded_from=source.id)
        first = await store.forward_message(source.id, copy, [event("acc-2", "message")])
        again = await store.forward_message(
            source.id, replace(copy, created=6_000), [event("acc-2", "message")]
        )
        assert again == first
        assert again.created == 5_000  # the stored record, unchanged
        assert await store.read_chunks("msg-fwd", 0, 100) == chunks(0, 2)
        assert await types(store, "acc-2") == ["message"]

    async def test_forwarded_text_is_found(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1"]))
        await store.create_thread(group(2, ["acc-1", "acc-2"]))
        source = await store.create_message(text(1, "thr-1", "tandem bicycle"))
        copy = replace(source, id="msg-fwd", thread_id="thr-2", forwarded_from=source.id)
        got = await store.forward_message(source.id, copy)
        assert got == copy
        assert got.body == source.body
        hits = await store.search("acc-2", '"tandem"', before=None, limit=10)
        assert hit_ids(hits) == ["msg-fwd"]
        assert hits[0].thread_id == "thr-2"

    # -- reactions and receipts --------------------------------------------------------

    async def test_set_reaction(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        await store.create_message(text(1, "thr-1", "a"))
        await store.create_message(text(2, "thr-1", "b"))
        up, heart = "\N{THUMBS UP SIGN}", "\N{HEAVY BLACK HEART}\N{VARIATION SELECTOR-16}"

        def r(who: str, emoji: str) -> Reaction:
            return Reaction(message_id="msg-1", account_id=who, emoji=emoji, created=3_000)

        assert await store.set_reaction(r("acc-2", up), True, [event("acc-1", "reaction")])
        # The same again: nothing changes, no events.
        assert not await store.set_reaction(r("acc-2", up), True, [event("acc-1", "reaction")])
        assert not await store.set_reaction(r("acc-2", heart), False, [event("acc-1", "x")])
        assert await store.set_reaction(r("acc-2", heart), True)
        assert await store.set_reaction(r("acc-1", up), True)
        assert await types(store, "acc-1") == ["reaction"]
        found = await store.reactions(["msg-1", "msg-2", "msg-unknown"])
        assert reacted(found, "msg-1") == {("acc-2", up), ("acc-2", heart), ("acc-1", up)}
        assert reacted(found, "msg-2") == set()
        assert reacted(found, "msg-unknown") == set()
        assert all(x.message_id == "msg-1" for x in found["msg-1"])
        assert await store.set_reaction(r("acc-2", up), False, [event("acc-1", "reaction")])
        assert not await store.set_reaction(r("acc-2", up), False, [event("acc-1", "reaction")])
        assert await types(store, "acc-1") == ["reaction", "reaction"]
        found = await store.reactions(["msg-1"])
        assert reacted(found, "msg-1") == {("acc-2", heart), ("acc-1", up)}
        assert await store.reactions([]) == {}

    async def test_reactions_of_many_messages(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1"]))
        ids = [f"msg-{n}" for n in range(1_200)]
        for n in (0, 555, 1_199):
            await store.create_message(text(n, "thr-1", "x"))
            mark = Reaction(message_id=f"msg-{n}", account_id="acc-1", emoji="!")
            await store.set_reaction(mark, True)
        found = await store.reactions(ids)
        assert {m for m, rs in found.items() if rs} == {"msg-0", "msg-555", "msg-1199"}
        assert reacted(found, "msg-555") == {("acc-1", "!")}

    async def test_add_receipt_is_idempotent(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        await store.create_message(audio(1, "thr-1"))
        heard = Receipt(message_id="msg-1", account_id="acc-2", kind="heard", created=4_000)
        assert await store.add_receipt(heard, [event("acc-1", "receipt")])
        assert not await store.add_receipt(
            replace(heard, created=5_000), [event("acc-1", "receipt")]
        )
        delivered = replace(heard, kind="delivered", created=3_000)
        assert await store.add_receipt(delivered, [event("acc-1", "receipt")])
        assert await types(store, "acc-1") == ["receipt", "receipt"]
        got = await store.list_receipts("msg-1")
        assert {(x.account_id, x.kind) for x in got} == {("acc-2", "heard"), ("acc-2", "delivered")}
        assert next(x for x in got if x.kind == "heard") == heard  # the first one stays
        assert await store.list_receipts("msg-unknown") == []

    # -- images ------------------------------------------------------------------------

    async def test_media_roundtrip(self, store: Store) -> None:
        await self._accounts(store, 1)
        m = media(1)
        await store.put_media(m)
        assert await store.get_media("img-1") == m
        assert await store.get_media("img-unknown") is None

    async def test_media_visible_to_its_owner_only(self, store: Store) -> None:
        await self._accounts(store, 1, 2)
        await store.put_media(media(1, "acc-1"))
        assert await store.media_visible("img-1", "acc-1")
        assert not await store.media_visible("img-1", "acc-2")
        assert not await store.media_visible("img-unknown", "acc-1")

    async def test_media_visible_as_an_avatar(self, store: Store) -> None:
        await self._accounts(store, 1, 2, 3)
        await store.put_media(media(1, "acc-1"))
        await store.update_account("acc-1", avatar="img-1")
        assert await store.media_visible("img-1", "acc-3")  # anyone's to see
        await store.update_account("acc-1", clear_avatar=True)
        assert not await store.media_visible("img-1", "acc-3")
        assert await store.media_visible("img-1", "acc-1")

    async def test_media_visible_to_message_viewers(self, store: Store) -> None:
        await self._accounts(store, 1, 2, 3, 4)
        await store.put_media(media(1, "acc-1"))
        await store.put_media(media(2, "acc-1"))
        await store.create_thread(group(1, ["acc-1", "acc-2", "acc-3"]))
        await store.create_message(image_message(1, "thr-1", "img-1"))
        await store.create_message(image_message(2, "thr-1", "img-2", directed_to="acc-2"))
        assert await store.media_visible("img-1", "acc-2")
        assert await store.media_visible("img-1", "acc-3")
        assert not await store.media_visible("img-1", "acc-4")  # not in the thread
        # A directed message shows its image to its sender and addressee only.
        assert await store.media_visible("img-2", "acc-2")
        assert not await store.media_visible("img-2", "acc-3")
        assert await store.media_visible("img-2", "acc-1")
        # Who leaves the thread no longer sees its messages.
        await store.remove_participant("thr-1", "acc-3")
        assert not await store.media_visible("img-1", "acc-3")

    async def test_media_of_a_recalled_message(self, store: Store) -> None:
        await self._accounts(store, 1, 2)
        await store.put_media(media(1, "acc-1"))
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        await store.create_message(image_message(1, "thr-1", "img-1"))
        assert await store.media_visible("img-1", "acc-2")
        recalled = await store.recall_message("msg-1", 9_000)
        assert recalled.body is None
        assert recalled.media_id is None  # the image is content too (VXS-13.3-4)
        assert not await store.media_visible("img-1", "acc-2")
        assert await store.media_visible("img-1", "acc-1")  # still its owner's

    # -- the timeline ------------------------------------------------------------------

    async def test_event_fields_roundtrip(self, store: Store) -> None:
        e = event(
            "acc-1",
            "message",
            created=1_234,
            thread_id="thr-1",
            message_id="msg-1",
            data='{"text": "h\\u00e9 \\ud83c\\udf99"}',
            dedupe="message:msg-1",
        )
        await store.add_events([e, event("acc-1", "bare")])
        first, second = await all_events(store, "acc-1")
        assert first == Event(
            pos=first.pos,
            account_id="acc-1",
            type="message",
            thread_id="thr-1",
            message_id="msg-1",
            data=e.data,
            created=1_234,
        )
        assert (second.type, second.thread_id, second.message_id, second.data) == (
            "bare",
            None,
            None,
            "{}",
        )
        assert first.pos > 0

    async def test_positions_increase_per_account(self, store: Store) -> None:
        await store.add_events([event("acc-1", "a1"), event("acc-2", "b1"), event("acc-1", "a2")])
        await store.add_events([event("acc-2", "b2")])
        await store.add_events([event("acc-1", "a3")])
        await store.add_events([])
        one, two = await all_events(store, "acc-1"), await all_events(store, "acc-2")
        assert [e.type for e in one] == ["a1", "a2", "a3"]
        assert [e.type for e in two] == ["b1", "b2"]
        for events in (one, two):
            positions = [e.pos for e in events]
            assert positions == sorted(set(positions))
            assert all(e.account_id == events[0].account_id for e in events)

    async def test_concurrent_appends_get_distinct_increasing_positions(self, store: Store) -> None:
        async def writer(n: int) -> None:
            for i in range(10):
                await store.add_events([event("acc-1", f"w{n}-{i}"), event(f"acc-{n}", "own")])

        async with trio.open_nursery() as nursery:
            for n in range(2, 12):
                nursery.start_soon(writer, n)
        events = await all_events(store, "acc-1")
        positions = [e.pos for e in events]
        assert len(events) == 100
        assert positions == sorted(set(positions))
        for n in range(2, 12):  # each writer's events in the order it appended them
            mine = [e.type for e in events if e.type.startswith(f"w{n}-")]
            assert mine == [f"w{n}-{i}" for i in range(10)]

    async def test_dedupe_skips_stored_events(self, store: Store) -> None:
        await store.add_events([event("acc-1", "first", dedupe="message:1")])
        await store.add_events(
            [
                event("acc-1", "replayed", dedupe="message:1"),
                event("acc-2", "other account", dedupe="message:1"),  # per account
                event("acc-1", "no key"),
                event("acc-1", "no key"),  # without a key nothing is skipped
                event("acc-1", "new key", dedupe="message:2"),
                event("acc-1", "same batch", dedupe="message:2"),
            ]
        )
        assert await types(store, "acc-1") == ["first", "no key", "no key", "new key"]
        assert await types(store, "acc-2") == ["other account"]

    async def test_read_events_paging(self, store: Store) -> None:
        await store.add_events([event("acc-1", f"e{i}") for i in range(25)])
        await store.add_events([event("acc-2", "other")])
        seen: list[str] = []
        after = 0
        for _ in range(10):  # bounded: a cursor that does not move must fail, not hang
            page = await store.read_events("acc-1", after, 10)
            if not page:
                break
            assert len(page) <= 10
            assert all(e.pos > after for e in page)
            seen.extend(e.type for e in page)
            after = page[-1].pos
        assert seen == [f"e{i}" for i in range(25)]
        assert await store.read_events("acc-1", after, 10) == []
        everything = await all_events(store, "acc-1")
        middle = await store.read_events("acc-1", everything[4].pos, 3)
        assert middle == everything[5:8]
        assert await store.read_events("acc-nobody", 0, 10) == []

    async def test_timeline_bounds(self, store: Store) -> None:
        assert await store.timeline_bounds("acc-1") == TimelineBounds(trimmed=0, latest=0)
        await store.add_events([event("acc-1", f"e{i}", created=100 * i) for i in range(1, 6)])
        await store.add_events([event("acc-2", "late", created=10_000)])
        events = await all_events(store, "acc-1")
        assert await store.timeline_bounds("acc-1") == TimelineBounds(
            trimmed=0, latest=events[-1].pos
        )
        assert await store.trim_events(300) == 2  # created 100 and 200
        assert await store.timeline_bounds("acc-1") == TimelineBounds(
            trimmed=events[1].pos, latest=events[-1].pos
        )
        assert await all_events(store, "acc-1") == events[2:]
        assert await store.read_events("acc-1", 0, 1) == [events[2]]
        # All of them: the account's latest position stays, as trimmed.
        assert await store.trim_events(1_000) == 3
        assert await all_events(store, "acc-1") == []
        assert await store.timeline_bounds("acc-1") == TimelineBounds(
            trimmed=events[-1].pos, latest=events[-1].pos
        )
        late = await all_events(store, "acc-2")
        assert await store.timeline_bounds("acc-2") == TimelineBounds(trimmed=0, latest=late[0].pos)

    async def test_trim_events_count_and_boundary(self, store: Store) -> None:
        await store.add_events(
            [event("acc-1", "old", created=100), event("acc-2", "old", created=200)]
        )
        await store.add_events([event("acc-1", "edge", created=500)])
        assert await store.trim_events(100) == 0  # strictly before
        assert await store.trim_events(500) == 2
        assert await types(store, "acc-1") == ["edge"]
        assert await types(store, "acc-2") == []
        assert await store.trim_events(500) == 0

    async def test_positions_never_reused_after_trim(self, store: Store) -> None:
        await store.add_events([event("acc-1", f"e{i}", created=100) for i in range(3)])
        old = await all_events(store, "acc-1")
        assert await store.trim_events(200) == 3  # the latest event of all goes too
        await store.add_events([event("acc-1", "new", created=300)])
        (new,) = await all_events(store, "acc-1")
        assert new.pos > old[-1].pos
        bounds = await store.timeline_bounds("acc-1")
        assert bounds == TimelineBounds(trimmed=old[-1].pos, latest=new.pos)
        # Another account's position after the trim is not one of the trimmed ones either.
        await store.add_events([event("acc-2", "x", created=300)])
        (other,) = await all_events(store, "acc-2")
        assert other.pos not in {e.pos for e in old}

    async def test_dedupe_after_trim(self, store: Store) -> None:
        # A trimmed event is not stored any more: appending its key again appends it.
        await store.add_events([event("acc-1", "first", created=100, dedupe="k")])
        await store.trim_events(200)
        await store.add_events([event("acc-1", "again", created=300, dedupe="k")])
        await store.add_events([event("acc-1", "thrice", created=300, dedupe="k")])
        assert await types(store, "acc-1") == ["again"]

    async def test_trimmed_positions_are_gone(self, store: Store) -> None:
        # TimelineBounds: "events at positions <= trimmed are gone". Events need not be
        # appended in the order of their ``created`` (two writers race, the clock steps).
        await store.add_events([event("acc-1", "newer", created=400)])
        await store.add_events([event("acc-1", "older", created=100)])
        await store.add_events([event("acc-1", "newest", created=900)])
        await store.trim_events(200)
        bounds = await store.timeline_bounds("acc-1")
        remaining = await all_events(store, "acc-1")
        assert [e.pos for e in remaining if e.pos <= bounds.trimmed] == []
        assert "newest" in [e.type for e in remaining]

    async def test_create_message_events_only_when_new(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        m = text(1, "thr-1", "hello")
        fan_out = [event("acc-1", "message"), event("acc-2", "message")]
        assert await store.create_message(m, fan_out) == m
        assert await store.create_message(replace(m, created=9_999), fan_out) == m
        assert await types(store, "acc-1") == ["message"]
        assert await types(store, "acc-2") == ["message"]

    async def test_create_message_event_dedupe(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1"]))
        await store.add_events([event("acc-1", "message.live", dedupe="live:msg-1")])
        await store.create_message(
            audio(1, "thr-1"),
            [event("acc-1", "message.live", dedupe="live:msg-1"), event("acc-1", "other")],
        )
        assert await types(store, "acc-1") == ["message.live", "other"]

    # -- search ------------------------------------------------------------------------

    async def test_search_only_the_viewers_threads(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"]))
        await store.create_thread(group(2, ["acc-3"], created_by="acc-3"))
        await store.create_message(text(1, "thr-1", "red bicycle"))
        await store.create_message(text(2, "thr-2", "blue bicycle", sender="acc-3"))
        hits = await store.search("acc-2", '"bicycle"', before=None, limit=10)
        assert hit_ids(hits) == ["msg-1"]
        (hit,) = hits
        assert (hit.kind, hit.thread_id, hit.created) == ("message", "thr-1", 2_000)
        assert "bicycle" in hit.snippet
        assert hit_ids(await store.search("acc-3", '"bicycle"', before=None, limit=10)) == ["msg-2"]
        assert await store.search("acc-nobody", '"bicycle"', before=None, limit=10) == []
        # Who leaves a thread no longer finds what is in it.
        await store.remove_participant("thr-1", "acc-2")
        assert await store.search("acc-2", '"bicycle"', before=None, limit=10) == []

    async def test_search_directed_messages(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2", "acc-3"]))
        await store.create_message(
            text(1, "thr-1", "private bicycle", directed_to="acc-2", created=2_000)
        )
        await store.create_message(text(2, "thr-1", "public bicycle", created=1_500))
        for who, expected in (
            ("acc-1", ["msg-1", "msg-2"]),
            ("acc-2", ["msg-1", "msg-2"]),
            ("acc-3", ["msg-2"]),
        ):
            hits = await store.search(who, '"bicycle"', before=None, limit=10)
            assert hit_ids(hits) == expected, who

    async def test_search_newest_first_and_terms(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1"]))
        for n, created, words in (
            (1, 100, "an old bicycle"),
            (2, 300, "a bicycle bell"),
            (3, 200, "the bicycles are red"),
            (4, 400, "a red car"),
            (5, 500, "unicycle"),
        ):
            await store.create_message(text(n, "thr-1", words, created=created))

        async def ids(query: str) -> list[str | None]:
            return hit_ids(await store.search("acc-1", query, before=None, limit=10))

        assert await ids('"bicycle"') == ["msg-2", "msg-1"]
        assert await ids('"bicy"*') == ["msg-2", "msg-3", "msg-1"]  # a prefix
        assert await ids('"red" "bicy"*') == ["msg-3"]  # every term
        assert await ids('"red"') == ["msg-4", "msg-3"]
        assert await ids('"BICYCLE"') == ["msg-2", "msg-1"]  # case does not matter
        assert await ids('"tricycle"') == []
        hits = await store.search("acc-1", '"bicy"*', before=None, limit=10)
        assert [h.created for h in hits] == [300, 200, 100]

    async def test_search_cursor_paging(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1"], title="nothing to see"))
        # Ties on ``created``: the rank orders them, and the cursor pages through them.
        for n in range(13):
            await store.create_message(
                text(n, "thr-1", f"bicycle number {n}", created=1_000 + (n // 4) * 100)
            )
        everything = await store.search("acc-1", '"bicycle"', before=None, limit=100)
        assert len(everything) == 13
        keys = [(h.created, h.rank) for h in everything]
        assert keys == sorted(keys, reverse=True)
        assert len(set(keys)) == 13
        pages: list[list[SearchHit]] = []
        before: tuple[int, int] | None = None
        for _ in range(10):  # bounded: a cursor that does not move must fail, not hang
            page = await store.search("acc-1", '"bicycle"', before=before, limit=5)
            if not page:
                break
            pages.append(page)
            before = (page[-1].created, page[-1].rank)
        assert [len(p) for p in pages] == [5, 5, 3]
        assert [h for p in pages for h in p] == everything
        assert await store.search("acc-1", '"bicycle"', before=keys[-1], limit=5) == []
        # The cursor is a position: what came after it and is older is on the next page.
        middle = await store.search("acc-1", '"bicycle"', before=keys[6], limit=2)
        assert middle == everything[7:9]

    async def test_search_thread_titles(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1", "acc-2"], title="Weekend ride", created=700))
        await store.create_thread(group(2, ["acc-3"], title="Ride home", created_by="acc-3"))
        await store.create_message(text(1, "thr-1", "ride at noon?", created=800))
        hits = await store.search("acc-2", '"ride"', before=None, limit=10)
        assert hit_ids(hits) == ["msg-1", "thread:thr-1"]
        title = hits[1]
        assert (title.kind, title.thread_id, title.message_id, title.created) == (
            "thread",
            "thr-1",
            None,
            700,
        )
        assert hit_ids(await store.search("acc-2", '"weekend"', before=None, limit=10)) == [
            "thread:thr-1"
        ]
        # A new title is found, the old one is not.
        await store.update_thread("thr-1", title="Sunday trip")
        assert await store.search("acc-2", '"weekend"', before=None, limit=10) == []
        assert hit_ids(await store.search("acc-2", '"sunday"', before=None, limit=10)) == [
            "thread:thr-1"
        ]
        assert hit_ids(await store.search("acc-1", '"tri"*', before=None, limit=10)) == [
            "thread:thr-1"
        ]
        await store.update_thread("thr-1", controlled=True)  # keeps the title's entry
        assert hit_ids(await store.search("acc-2", '"sunday"', before=None, limit=10)) == [
            "thread:thr-1"
        ]

    async def test_search_skips_audio_and_finds_unicode(self, store: Store) -> None:
        await store.create_thread(group(1, ["acc-1"], title="t"))
        await store.create_message(audio(1, "thr-1"))
        await store.create_message(text(2, "thr-1", "Grüße aus München \N{BICYCLE}"))
        assert hit_ids(await store.search("acc-1", '"münchen"', before=None, limit=10)) == ["msg-2"]
        assert await store.search("acc-1", '"opus"', before=None, limit=10) == []

    # -- push subscriptions ------------------------------------------------------------

    async def test_push_subscriptions_put_list_delete(self, store: Store) -> None:
        await self._accounts(store, 1, 2)
        await store.create_session(session(1))
        await store.create_session(session(2, "acc-2"))
        one = push(1)
        assert await store.put_push_subscription(one) == one
        two = push(2, created=2_000)
        assert await store.put_push_subscription(two) == two
        theirs = push(3, "acc-2", "s-2")
        await store.put_push_subscription(theirs)
        assert sorted(await store.list_push_subscriptions("acc-1"), key=lambda p: p.id) == [
            one,
            two,
        ]
        assert await store.list_push_subscriptions("acc-2") == [theirs]
        await store.delete_push_subscription("push-1")
        assert await store.list_push_subscriptions("acc-1") == [two]
        await store.delete_push_subscription("push-1")  # deleting nothing is fine
        await store.delete_push_subscription("push-unknown")
        assert await store.list_push_subscriptions("acc-2") == [theirs]
        assert await store.list_push_subscriptions("acc-nobody") == []

    async def test_push_subscription_same_endpoint_is_idempotent(self, store: Store) -> None:
        await self._accounts(store, 1)
        await store.create_session(session(1))
        await store.create_session(session(2))
        first = push(1, session_id="s-1", endpoint="https://push.example/browser")
        assert await store.put_push_subscription(first) == first
        # The browser registers again, from another session of the account.
        again = push(2, session_id="s-2", endpoint="https://push.example/browser", created=5)
        stored = await store.put_push_subscription(again)
        assert stored.id == "push-1"  # the stored record
        assert stored.endpoint == first.endpoint
        assert stored.account_id == "acc-1"
        assert stored.session_id == "s-2"  # moved to this session
        assert await store.list_push_subscriptions("acc-1") == [stored]
        # It now goes with its new session, not with the old one.
        assert await store.delete_sessions("acc-1", session_id="s-1") == 1
        assert await store.list_push_subscriptions("acc-1") == [stored]
        assert await store.delete_sessions("acc-1", session_id="s-2") == 1
        assert await store.list_push_subscriptions("acc-1") == []

    # -- restarts ----------------------------------------------------------------------

    async def test_service_data_survives_a_reopen(self, store_factory: StoreFactory) -> None:
        async with store_factory() as store:
            for n in (1, 2, 3):
                await store.create_account(account(n))
            await store.update_account("acc-1", display_name="Alice", avatar="img-1")
            await store.create_session(session(1))
            await store.touch_session(token(1), acked=3, last_seen=1_500)
            await store.put_contact(Contact(owner="acc-1", contact="acc-2", blocked=True))
            await store.put_media(media(1))
            d = direct(1, "acc-1", "acc-2")
            await store.create_thread(d, [event("acc-2", "thread", created=100)])
            await store.create_thread(group(2, ["acc-1", "acc-2", "acc-3"], title="Picnic"))
            await store.set_member("thr-2", "acc-3", role="listen", muted=True)
            await store.update_thread("thr-2", controlled=True)
            await store.create_message(text(1, "dm-1", "see you at the lake", sender="acc-2"))
            a = await store.create_message(audio(2, "thr-2", created=2_500))
            await store.append_chunks(a.id, chunks(0, 3))
            await store.close_message(a.id, 3, 3 * FRAME)
            closed = await store.get_message(a.id)
            assert closed is not None
            fwd = replace(closed, id="msg-fwd", thread_id="dm-1", forwarded_from=a.id)
            await store.forward_message(a.id, fwd)
            await store.recall_message(a.id, 3_000)
            await store.set_reaction(
                Reaction(message_id="msg-1", account_id="acc-1", emoji="\N{OK HAND SIGN}"), True
            )
            await store.add_receipt(Receipt(message_id="msg-1", account_id="acc-1", kind="read"))
            await store.add_events([event("acc-2", "later", created=200, dedupe="k")])
            await store.trim_events(150)
            await store.put_push_subscription(push(1))
            bounds = await store.timeline_bounds("acc-2")
            events = await all_events(store, "acc-2")
        async with store_factory() as store:
            got = await store.get_account("acc-1")
            assert got is not None
            assert (got.display_name, got.avatar) == ("Alice", "img-1")
            s = await store.get_session(token(1))
            assert s is not None
            assert (s.id, s.acked, s.last_seen) == ("s-1", 3, 1_500)
            assert await store.list_sessions("acc-1") == [s]
            assert await store.get_contact("acc-1", "acc-2") == Contact(
                owner="acc-1", contact="acc-2", blocked=True
            )
            assert await store.get_media("img-1") == media(1)
            assert await store.media_visible("img-1", "acc-3")  # an avatar
            assert await store.find_direct_thread("acc-2", "acc-1") == d
            with pytest.raises(AlreadyExists):
                await store.create_thread(direct(9, "acc-2", "acc-1"))
            t2 = await store.get_thread("thr-2")
            assert t2 is not None
            assert t2.controlled
            assert t2.member("acc-3") == Member(
                account_id="acc-3", role="listen", muted=True, joined=1_000
            )
            recalled = await store.get_message(a.id)
            assert recalled is not None
            assert recalled.recalled == 3_000
            assert await store.read_chunks(a.id, 0, 10) == []
            assert await store.read_chunks("msg-fwd", 0, 10) == chunks(0, 3)
            assert reacted(await store.reactions(["msg-1"]), "msg-1") == {
                ("acc-1", "\N{OK HAND SIGN}")
            }
            assert [r.kind for r in await store.list_receipts("msg-1")] == ["read"]
            assert counts_of(await store.thread_counts("acc-1"), "dm-1") == Counts()
            assert await store.timeline_bounds("acc-2") == bounds
            assert await all_events(store, "acc-2") == events
            assert [e.type for e in events] == ["later"]
            await store.add_events([event("acc-2", "dup", dedupe="k"), event("acc-2", "next")])
            after = await all_events(store, "acc-2")
            assert [e.type for e in after] == ["later", "next"]
            assert after[-1].pos > bounds.latest
            assert hit_ids(await store.search("acc-1", '"lake"', before=None, limit=10)) == [
                "msg-1"
            ]
            assert hit_ids(await store.search("acc-3", '"picnic"', before=None, limit=10)) == [
                "thread:thr-2"
            ]
            assert await store.list_push_subscriptions("acc-1") == [push(1)]
