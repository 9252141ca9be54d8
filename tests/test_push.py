"""PushDispatch: who gets a push for a message, and what it says.

Everything is real but the browser: a SQLite store with accounts, sessions, a thread
and push subscriptions put in through the ``Store`` API, the ``Timeline`` that knows
which devices hold a sync open, the ``PushSender`` and the local push service of
``conformance.push_receiver``, which checks VAPID and decrypts what arrives.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio

from conformance.push_receiver import PushReceiver, Subscribed
from voxer_stream.service.notify import PushDispatch, build_payload, mentions, topic_for
from voxer_stream.service.timeline import Timeline
from voxer_stream.service.webpush import MAX_PAYLOAD, PushSender, PushSubscription, Vapid
from voxer_stream.store import (
    Account,
    MessageRecord,
    PushRecord,
    Session,
    SQLiteStore,
    Thread,
    open_store,
)

SUBJECT = "mailto:ops@voxer-stream.test"
NOW = 1_700_000_000_000


@pytest.fixture
async def sender(vapid: Vapid, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PushSender]:
    # The sender's own client honours proxy variables; none may send 127.0.0.1 elsewhere.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    async with PushSender(vapid, subject=SUBJECT, timeout=5) as sender:
        yield sender


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with open_store(tmp_path, synchronous="NORMAL") as store:
        yield store


@dataclass
class World:
    store: SQLiteStore
    timeline: Timeline
    dispatch: PushDispatch
    receiver: PushReceiver
    vapid: Vapid
    thread: Thread


async def add_user(store: SQLiteStore, name: str, display_name: str = "") -> None:
    await store.create_account(
        Account(
            id=f"acc-{name}",
            username=name,
            password_hash="$argon2id$not-used",
            created=NOW,
            display_name=display_name,
        )
    )


async def add_device(world: World, name: str, device: str) -> Subscribed:
    """A session of ``name``'s and a push subscription made on it."""
    session_id = f"sess-{name}-{device}"
    await world.store.create_session(
        Session(
            token_hash=f"{session_id:0<64}",
            account_id=f"acc-{name}",
            created=NOW,
            expires=NOW + 86_400_000,
            id=session_id,
            device=device,
        )
    )
    info, handle = world.receiver.subscribe(application_server_key=world.vapid.public_key)
    subscription = PushSubscription.from_json(info)
    await world.store.put_push_subscription(
        PushRecord(
            id=f"push-{name}-{device}",
            account_id=f"acc-{name}",
            session_id=session_id,
            endpoint=subscription.endpoint,
            p256dh=subscription.p256dh,
            auth=subscription.auth,
            created=NOW,
        )
    )
    return handle


@pytest.fixture
async def world(
    store: SQLiteStore, receiver: PushReceiver, sender: PushSender, vapid: Vapid
) -> AsyncIterator[World]:
    await add_user(store, "alice", "Alice Liddell")
    await add_user(store, "bob", "Bob")
    await add_user(store, "carol")
    await store.create_thread(
        Thread(
            id="thread-1",
            title="Tea party",
            created_by="acc-alice",
            created=NOW,
            participants=frozenset({"acc-alice", "acc-bob", "acc-carol"}),
        )
    )
    thread = await store.get_thread("thread-1")
    assert thread is not None
    timeline = Timeline(store)
    dispatch = PushDispatch(store, timeline, sender)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatch.run)
        yield World(store, timeline, dispatch, receiver, vapid, thread)
        nursery.cancel_scope.cancel()
    assert receiver.rejections == []


async def post(
    world: World, message_id: str, kind: str = "text", body: object = None, **fields: object
) -> MessageRecord:
    """A message of alice's in the thread, stored as ``Messages`` stores it."""
    record = MessageRecord(
        id=message_id,
        thread_id="thread-1",
        sender="acc-alice",
        codec="opus" if kind == "audio" else "",
        created=NOW,
        state="live" if kind == "audio" else "closed",
        kind=kind,  # type: ignore[arg-type]
        body=None if body is None else json.dumps(body),
        **fields,  # type: ignore[arg-type]
    )
    return await world.store.create_message(record)


async def settle(dispatch: PushDispatch) -> None:
    with trio.fail_after(10):
        await dispatch.wait_idle()


async def test_message_push_arrives_decrypted(world: World) -> None:
    bob = await add_device(world, "bob", "phone")
    record = await post(world, "msg-1", body={"text": "Have some wine"})
    world.dispatch(["acc-bob"], "message", record, world.thread)
    delivery = await bob.next_delivery(timeout=5)
    assert json.loads(delivery.payload) == {
        "type": "message",
        "thread": "thread-1",
        "title": "Tea party",
        "message": "msg-1",
        "kind": "text",
        "sender": {"id": "acc-alice", "username": "alice", "display_name": "Alice Liddell"},
        "text": "Have some wine",
    }
    assert b'": ' not in delivery.payload and b', "' not in delivery.payload  # compact
    assert delivery.urgency == "normal"
    assert delivery.topic == "msg-1"
    assert delivery.ttl == world.dispatch.ttl > 0
    assert delivery.key == world.vapid.public_key
    await settle(world.dispatch)
    assert world.dispatch.sent == 1


async def test_every_device_and_recipient_gets_one(world: World) -> None:
    bob_phone = await add_device(world, "bob", "phone")
    bob_laptop = await add_device(world, "bob", "laptop")
    carol = await add_device(world, "carol", "phone")
    alice = await add_device(world, "alice", "phone")
    record = await post(world, "msg-1", body={"text": "hi"})
    # The sender, if it is passed, is left out: it wrote the message.
    world.dispatch(["acc-bob", "acc-carol", "acc-alice"], "message", record, world.thread)
    await settle(world.dispatch)
    assert world.dispatch.sent == 3
    for handle in (bob_phone, bob_laptop, carol):
        assert len(handle.deliveries) == 1
    assert alice.deliveries == []


async def test_text_is_cut_and_utf8(world: World) -> None:
    bob = await add_device(world, "bob", "phone")
    text = "é" * 150 + "🫖" * 4000
    record = await post(world, "msg-1", body={"text": text})
    world.dispatch(["acc-bob"], "message", record, world.thread)
    payload = await bob.next(timeout=5)
    assert json.loads(payload)["text"] == "é" * 140
    assert "é".encode() in payload  # UTF-8, not \u escapes
    assert len(payload) < 1000


async def test_image_caption_and_location(world: World) -> None:
    bob = await add_device(world, "bob", "phone")
    image = await post(
        world,
        "img-1",
        kind="image",
        body={"content_type": "image/jpeg", "width": 1, "height": 1, "caption": "The Hatter"},
    )
    bare = await post(
        world, "img-2", kind="image", body={"content_type": "image/png", "width": 1, "height": 1}
    )
    where = await post(world, "loc-1", kind="location", body={"lat": 51.75, "lon": -1.25})
    for record in (image, bare, where):
        world.dispatch(["acc-bob"], "message", record, world.thread)
        data = json.loads(await bob.next(timeout=5))
        assert (data["type"], data["kind"], data["message"]) == ("message", record.kind, record.id)
        if record is image:
            assert data["text"] == "The Hatter"
        else:
            assert "text" not in data


async def test_muted_thread_gets_nothing(world: World) -> None:
    bob = await add_device(world, "bob", "phone")
    carol = await add_device(world, "carol", "phone")
    await world.store.set_member("thread-1", "acc-bob", muted=True)
    thread = await world.store.get_thread("thread-1")
    assert thread is not None
    record = await post(world, "msg-1", body={"text": "@bob wake up"})
    world.dispatch(["acc-bob", "acc-carol"], "message", record, thread)
    await carol.next(timeout=5)
    await settle(world.dispatch)
    assert bob.deliveries == []
    assert world.dispatch.skipped_muted == 1
    assert world.dispatch.sent == 1


async def test_device_with_a_sync_open_is_skipped(world: World) -> None:
    phone = await add_device(world, "bob", "phone")
    laptop = await add_device(world, "bob", "laptop")
    record = await post(world, "msg-1", body={"text": "hi"})
    with world.timeline.connected("acc-bob", "sess-bob-laptop"):
        world.dispatch(["acc-bob"], "message", record, world.thread)
        await settle(world.dispatch)
    assert len(phone.deliveries) == 1
    assert laptop.deliveries == []
    assert world.dispatch.skipped_online == 1
    # Once the sync is closed the laptop gets pushes again.
    second = await post(world, "msg-2", body={"text": "still there?"})
    world.dispatch(["acc-bob"], "message", second, world.thread)
    await settle(world.dispatch)
    assert len(laptop.deliveries) == 1
    assert world.dispatch.skipped_online == 1


async def test_mention(world: World) -> None:
    bob = await add_device(world, "bob", "phone")
    carol = await add_device(world, "carol", "phone")
    long = "x " * 100 + "and finally @Bob."  # found past the preview
    record = await post(world, "msg-1", body={"text": long})
    world.dispatch(["acc-bob", "acc-carol"], "message", record, world.thread)
    to_bob, to_carol = await bob.next_delivery(timeout=5), await carol.next_delivery(timeout=5)
    assert json.loads(to_bob.payload)["type"] == "mention"
    assert to_bob.urgency == "high"
    assert json.loads(to_carol.payload)["type"] == "message"
    assert to_carol.urgency == "normal"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@bob", True),
        ("hey @bob, tea?", True),
        ("(@bob)", True),
        ("thanks @bob.", True),
        ("@BOB!", True),
        ("@bobby", False),
        ("@bob_", False),
        ("@bob-smith", False),
        ("@bob.smith", False),
        ("mail bob@bob.com", False),
        ("x@bob", False),
        ("bob", False),
        ("@@bob", False),
    ],
)
def test_mentions(text: str, expected: bool) -> None:
    assert mentions(text, "bob") is expected


def test_mentions_a_name_with_dots() -> None:
    assert mentions("ask @mad.hatter now", "mad.hatter")
    assert not mentions("ask @madxhatter now", "mad.hatter")  # the dot is not a wildcard
    assert not mentions("@", "")


async def test_live_audio_is_urgent(world: World) -> None:
    bob = await add_device(world, "bob", "phone")
    record = await post(world, "audio-1", kind="audio")
    world.dispatch(["acc-bob"], "live", record, world.thread)
    delivery = await bob.next_delivery(timeout=5)
    data = json.loads(delivery.payload)
    assert (data["type"], data["kind"], data["message"]) == ("live", "audio", "audio-1")
    assert "text" not in data
    assert delivery.urgency == "high"


async def test_gone_subscription_is_deleted(world: World) -> None:
    phone = await add_device(world, "bob", "phone")
    laptop = await add_device(world, "bob", "laptop")
    phone.mark_gone()
    record = await post(world, "msg-1", body={"text": "hi"})
    world.dispatch(["acc-bob"], "message", record, world.thread)
    await settle(world.dispatch)
    assert phone.refused_gone == 1
    assert len(laptop.deliveries) == 1
    assert world.dispatch.gone == 1
    assert world.dispatch.sent == 1
    remaining = await world.store.list_push_subscriptions("acc-bob")
    assert [s.id for s in remaining] == ["push-bob-laptop"]


async def test_directed_message_reaches_its_addressee_only(world: World) -> None:
    bob = await add_device(world, "bob", "phone")
    carol = await add_device(world, "carol", "phone")
    record = await post(world, "msg-1", body={"text": "psst"}, directed_to="acc-bob")
    # Even if a caller passes too many recipients, carol must not learn of it.
    world.dispatch(["acc-bob", "acc-carol"], "message", record, world.thread)
    await settle(world.dispatch)
    assert len(bob.deliveries) == 1
    assert carol.deliveries == []


async def test_a_bad_subscription_or_job_does_not_stop_the_worker(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    bob = await add_device(world, "bob", "phone")
    broken = PushRecord(
        id="push-carol-broken",
        account_id="acc-carol",
        session_id="sess-none",
        endpoint="http://127.0.0.1:1/push/x",
        p256dh="not a key",
        auth="A" * 22,
        created=NOW,
    )
    await world.store.put_push_subscription(broken)
    record = await post(world, "msg-1", body={"text": "hi"})
    with caplog.at_level(logging.INFO, logger="voxer_stream.service.notify"):
        # A subscription whose key cannot be used: that one push fails.
        world.dispatch(["acc-carol"], "message", record, world.thread)
        # A record no store would give (its body is not JSON text): the job fails.
        world.dispatch(["acc-bob"], "message", replace(record, body=123), world.thread)  # type: ignore[arg-type]
        # A body that is not the JSON the server writes: pushed without a text.
        world.dispatch(["acc-bob"], "message", replace(record, body="{not json"), world.thread)
        world.dispatch(["acc-bob"], "message", record, world.thread)
        await settle(world.dispatch)
    assert world.dispatch.failed == 1
    assert "push to subscription push-carol-broken failed" in caplog.text
    assert "pushes for message msg-1 (message) failed" in caplog.text
    assert [json.loads(d.payload).get("text") for d in bob.deliveries] == [None, "hi"]
    assert world.dispatch.sent == 2


async def test_unreachable_push_service_is_logged_and_skipped(
    store: SQLiteStore, sender: PushSender, caplog: pytest.LogCaptureFixture
) -> None:
    await add_user(store, "alice")
    await add_user(store, "bob")
    await store.create_thread(
        Thread(
            id="t",
            title="",
            created_by="acc-alice",
            created=NOW,
            participants=frozenset({"acc-alice", "acc-bob"}),
        )
    )
    thread = await store.get_thread("t")
    assert thread is not None
    async with PushReceiver.start() as receiver:
        info, _ = receiver.subscribe()
    # The receiver has stopped: its port is closed now.
    subscription = PushSubscription.from_json(info)
    await store.put_push_subscription(
        PushRecord(
            id="push-bob",
            account_id="acc-bob",
            session_id="sess-bob",
            endpoint=subscription.endpoint,
            p256dh=subscription.p256dh,
            auth=subscription.auth,
            created=NOW,
        )
    )
    dispatch = PushDispatch(store, Timeline(store), sender)
    record = MessageRecord(
        id="m", thread_id="t", sender="acc-alice", codec="", created=NOW, state="closed"
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatch.run)
        with caplog.at_level(logging.INFO):
            dispatch(["acc-bob"], "message", record, thread)
            await settle(dispatch)
        nursery.cancel_scope.cancel()
    assert (dispatch.sent, dispatch.failed, dispatch.gone) == (0, 1, 0)
    assert [s.id for s in await store.list_push_subscriptions("acc-bob")] == ["push-bob"]
    assert "push-bob" in caplog.text


async def test_full_queue_drops_without_blocking(
    store: SQLiteStore,
    receiver: PushReceiver,
    sender: PushSender,
    vapid: Vapid,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await add_user(store, "alice")
    await add_user(store, "bob")
    await store.create_thread(
        Thread(
            id="thread-1",
            title="t",
            created_by="acc-alice",
            created=NOW,
            participants=frozenset({"acc-alice", "acc-bob"}),
        )
    )
    thread = await store.get_thread("thread-1")
    assert thread is not None
    dispatch = PushDispatch(store, Timeline(store), sender, queue_size=2)
    world = World(store, dispatch.timeline, dispatch, receiver, vapid, thread)
    bob = await add_device(world, "bob", "phone")
    records = [await post(world, f"msg-{i}", body={"text": f"n{i}"}) for i in range(5)]
    # The worker is not running: the queue fills up and the rest are dropped. The
    # callback is plain (it cannot wait), so it returns at once even then.
    assert not inspect.iscoroutinefunction(dispatch.__call__)
    with caplog.at_level(logging.WARNING, logger="voxer_stream.service.notify"):
        start = time.monotonic()
        for record in records:
            dispatch(["acc-bob"], "message", record, thread)
        assert time.monotonic() - start < 0.5
    assert dispatch.dropped == 3
    assert caplog.text.count("push queue is full") == 1  # warned once, not per drop
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatch.run)
        assert [json.loads(p)["text"] for p in await bob.take(2, timeout=5)] == ["n0", "n1"]
        await settle(dispatch)
        nursery.cancel_scope.cancel()
    assert dispatch.sent == 2
    assert len(bob.deliveries) == 2


async def test_sends_run_concurrently(world: World) -> None:
    """Several subscriptions of a slow push service: the sends overlap."""
    handles = [await add_device(world, "bob", f"device{i}") for i in range(4)]
    in_flight = peak = 0
    original = world.dispatch.sender.send

    async def slow_send(*args: object, **kwargs: object) -> object:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(0.2)
        try:
            return await original(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            in_flight -= 1

    world.dispatch.sender.send = slow_send  # type: ignore[assignment, method-assign]
    record = await post(world, "msg-1", body={"text": "hi"})
    world.dispatch(["acc-bob"], "message", record, world.thread)
    await settle(world.dispatch)
    assert peak == 4
    assert all(len(h.deliveries) == 1 for h in handles)


def test_topic() -> None:
    assert topic_for("0123456789abcdef0123456789abcdef") == "0123456789abcdef0123456789abcdef"
    assert topic_for("a.b/c d") == "abcd"
    assert topic_for("...") is None
    long_a, long_b = "device-1-" + "0" * 40 + "1", "device-1-" + "0" * 40 + "2"
    assert len(topic_for(long_a) or "") == 32
    assert topic_for(long_a) != topic_for(long_b)  # not cut to a shared prefix


def test_payload_stays_small_whatever_it_holds() -> None:
    worst = "\x01" * 10_000
    thread = Thread(
        id="t" * 64, title=worst, created_by="a", created=0, participants=frozenset({"a"})
    )
    record = MessageRecord(
        id="m" * 64, thread_id=thread.id, sender="s" * 64, codec="", created=0, state="closed"
    )
    sender = Account(
        id="s" * 64, username="u" * 32, password_hash="", created=0, display_name=worst
    )
    payload = build_payload("message", record, thread, sender, worst + "\ud800")
    assert len(payload) < MAX_PAYLOAD
    data = json.loads(payload)
    assert len(data["text"]) == 140
    lone = build_payload("message", record, thread, sender, "\ud800x")
    assert json.loads(lone)["text"] == "?x"


async def test_arguments(store: SQLiteStore, sender: PushSender) -> None:
    timeline = Timeline(store)
    with pytest.raises(ValueError, match="queue_size"):
        PushDispatch(store, timeline, sender, queue_size=0)
    with pytest.raises(ValueError, match="concurrency"):
        PushDispatch(store, timeline, sender, concurrency=0)
