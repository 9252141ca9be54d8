"""The messaging service end to end over real HTTP/2 (spec section 13).

Each test reads like the requirement it checks: accounts and devices, contacts and
blocks, thread roles, message kinds, receipts and counts, the timeline (pages, long
poll, stream, per-device ack), idempotent replays, search.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import trio
from conftest import RunningServer
from PIL import Image
from service_api import ApiError, Device, login, register

from voxer_stream.client import chunks_from_packets, talk
from voxer_stream.media.encode import encode_file, tone_wav
from voxer_stream.wire import Open


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    wav = tmp_path_factory.mktemp("media") / "tone.wav"
    tone_wav(wav, 0.5, 440.0)
    return encode_file(wav)


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    # http1=False: HTTP/2 with prior knowledge (h2c), as the server speaks it on http://.
    async with httpx.AsyncClient(
        base_url=server.url, http1=False, http2=True, timeout=30
    ) as client:
        yield client


async def people(http: httpx.AsyncClient, *names: str) -> list[Device]:
    devices = []
    for name in names:
        await register(http, name)
        devices.append(await login(http, name, device=f"{name}-phone"))
    return devices


async def group(owner: Device, *others: Device, **extra: Any) -> str:
    body = {"title": "crew", "participants": [o.username for o in others], **extra}
    thread = await owner.post("/v1/threads", body)
    return str(thread["id"])


async def text(device: Device, thread: str, words: str, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = await device.post(
        f"/v1/threads/{thread}/messages", {"kind": "text", "text": words, **extra}
    )
    return result


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# -- accounts, sessions, devices ---------------------------------------------------------


async def test_devices_are_sessions_listed_and_revocable(http: httpx.AsyncClient) -> None:
    await register(http, "alice")
    phone = await login(http, "alice", device="phone")
    laptop = await login(http, "alice", device="laptop")
    listed = (await phone.get("/v1/sessions"))["sessions"]
    assert {s["device"]: s["current"] for s in listed} == {"phone": True, "laptop": False}
    await phone.call("DELETE", f"/v1/sessions/{laptop.session_id}")
    with pytest.raises(ApiError) as refused:
        await laptop.get("/v1/accounts/me")
    assert (refused.value.status, refused.value.name) == (401, "UNAUTHENTICATED")
    assert (await phone.get("/v1/accounts/me"))["username"] == "alice"
    # Someone else's session id is not found, and revoking it does nothing.
    await register(http, "bob")
    bob = await login(http, "bob")
    with pytest.raises(ApiError) as other:
        await bob.call("DELETE", f"/v1/sessions/{phone.session_id}")
    assert other.value.name == "NOT_FOUND"
    assert (await phone.get("/v1/accounts/me"))["username"] == "alice"


async def test_password_change_ends_the_other_sessions(http: httpx.AsyncClient) -> None:
    await register(http, "alice")
    phone, laptop = await login(http, "alice"), await login(http, "alice")
    with pytest.raises(ApiError) as wrong:
        await phone.post(
            "/v1/accounts/me/password",
            {"old_password": "not it at all", "new_password": "new password 1"},
        )
    assert wrong.value.name == "INVALID_CREDENTIALS"
    changed = await phone.post(
        "/v1/accounts/me/password",
        {"old_password": "correct horse", "new_password": "new password 1"},
    )
    assert changed == {"sessions_ended": 1}
    with pytest.raises(ApiError):
        await laptop.get("/v1/accounts/me")
    await phone.get("/v1/accounts/me")
    response = await http.post(
        "/v1/sessions", json={"username": "alice", "password": "correct horse"}
    )
    assert response.status_code == 401
    await login(http, "alice", "new password 1")


async def test_failed_logins_are_rate_limited(http: httpx.AsyncClient) -> None:
    await register(http, "alice")
    for _ in range(5):
        response = await http.post("/v1/sessions", json={"username": "alice", "password": "x" * 8})
        assert response.status_code == 401
    response = await http.post(
        "/v1/sessions", json={"username": "alice", "password": "correct horse"}
    )
    assert response.status_code == 429
    assert response.json()["error"]["name"] == "RATE_LIMITED"
    assert 1 <= int(response.headers["Retry-After"]) <= 15 * 60


# -- profiles, contacts, blocks ----------------------------------------------------------


async def test_profile_contacts_and_blocking(http: httpx.AsyncClient) -> None:
    alice, bob, carol = await people(http, "alice", "bob", "carol")
    me = await alice.call("PATCH", "/v1/accounts/me", {"display_name": "Alice A."})
    assert me["display_name"] == "Alice A."
    assert (await bob.get("/v1/accounts/alice"))["display_name"] == "Alice A."
    await alice.call("PUT", "/v1/contacts/bob", {})
    await alice.call("PUT", "/v1/contacts/carol", {"blocked": True})
    listed = (await alice.get("/v1/contacts"))["contacts"]
    assert [(c["username"], c["blocked"]) for c in listed] == [("bob", False), ("carol", True)]
    # carol cannot start a thread with alice, 1:1 or group...
    for body in (
        {"kind": "direct", "participants": ["alice"]},
        {"title": "hi", "participants": ["alice", "bob"]},
    ):
        with pytest.raises(ApiError) as refused:
            await carol.post("/v1/threads", body)
        assert refused.value.name == "FORBIDDEN"
    # ...nor post into their 1:1 thread made before the block.
    await alice.call("PUT", "/v1/contacts/carol", {"blocked": False})
    direct = await carol.post("/v1/threads", {"kind": "direct", "participants": ["alice"]})
    again = await alice.post("/v1/threads", {"kind": "direct", "participants": ["carol"]})
    assert again["id"] == direct["id"]  # one 1:1 thread per pair
    await text(carol, direct["id"], "hello")
    await alice.call("PUT", "/v1/contacts/carol", {"blocked": True})
    with pytest.raises(ApiError) as blocked:
        await text(carol, direct["id"], "hello again")
    assert blocked.value.name == "FORBIDDEN"
    await text(alice, direct["id"], "alice may still write")
    await alice.call("DELETE", "/v1/contacts/carol")
    await text(carol, direct["id"], "unblocked")


# -- threads and roles -------------------------------------------------------------------


async def test_roles_controlled_threads_and_leaving(http: httpx.AsyncClient) -> None:
    alice, bob, carol, dave = await people(http, "alice", "bob", "carol", "dave")
    thread = await group(alice, bob)
    with pytest.raises(ApiError) as not_admin:
        await bob.post(f"/v1/threads/{thread}/participants", {"usernames": ["carol"]})
    assert not_admin.value.name == "FORBIDDEN"
    view = await alice.post(
        f"/v1/threads/{thread}/participants", {"usernames": ["carol"], "role": "listen"}
    )
    roles = {p["username"]: p["role"] for p in view["participants"]}
    assert roles == {"alice": "admin", "bob": "member", "carol": "listen"}
    with pytest.raises(ApiError) as listen_only:
        await text(carol, thread, "may I?")
    assert listen_only.value.name == "FORBIDDEN"
    await alice.call("PATCH", f"/v1/threads/{thread}", {"controlled": True, "title": "news"})
    with pytest.raises(ApiError) as controlled:
        await text(bob, thread, "me too")
    assert controlled.value.name == "FORBIDDEN"
    await text(alice, thread, "announcement")
    await alice.call("PATCH", f"/v1/threads/{thread}/participants/{bob.id}", {"role": "admin"})
    await text(bob, thread, "now I can")
    # The last admin leaving hands over; a removed participant no longer sees the thread.
    await alice.call("DELETE", f"/v1/threads/{thread}/participants/{alice.id}")
    await bob.call("DELETE", f"/v1/threads/{thread}/participants/{bob.id}")
    view = await carol.get(f"/v1/threads/{thread}")
    assert [(p["username"], p["role"]) for p in view["participants"]] == [("carol", "admin")]
    for outsider in (alice, bob, dave):
        with pytest.raises(ApiError) as gone:
            await outsider.get(f"/v1/threads/{thread}")
        assert (gone.value.status, gone.value.name) == (404, "THREAD_NOT_FOUND")
    muted = await carol.call("PUT", f"/v1/threads/{thread}/mute")
    assert muted["muted"] is True


# -- messages ------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


async def test_message_kinds_directed_recall_forward_react(http: httpx.AsyncClient) -> None:
    alice, bob, carol = await people(http, "alice", "bob", "carol")
    thread = await group(alice, bob, carol)
    other = await group(alice, bob)
    hello = await text(alice, thread, "hello crew")
    where = await alice.post(
        f"/v1/threads/{thread}/messages",
        {"kind": "location", "location": {"lat": 48.85, "lon": 2.35, "label": "Paris"}},
    )
    assert where["location"] == {"lat": 48.85, "lon": 2.35, "label": "Paris"}
    image = await alice.post(
        "/v1/media", content=png(1200, 800), headers={"Content-Type": "image/png"}
    )
    assert (image["width"], image["height"], image["content_type"]) == (1200, 800, "image/png")
    photo = await alice.post(
        f"/v1/threads/{thread}/messages",
        {"kind": "image", "media": image["id"], "caption": "the view"},
    )
    thumb = Image.open(io.BytesIO(await bob.get(photo["image"]["thumbnail"])))
    assert max(thumb.size) <= 320 and thumb.size[0] > thumb.size[1]
    assert await bob.get(photo["image"]["url"]) == png(1200, 800)
    secret = await text(alice, thread, "only for bob", to="bob")
    assert secret["to"] == bob.id
    listed = [m["id"] for m in (await carol.get(f"/v1/threads/{thread}/messages"))["messages"]]
    assert listed == [hello["id"], where["id"], photo["id"]]
    assert secret["id"] in [
        m["id"] for m in (await bob.get(f"/v1/threads/{thread}/messages"))["messages"]
    ]
    with pytest.raises(ApiError) as hidden:
        await carol.get(f"/v1/messages/{secret['id']}")
    assert hidden.value.name == "MESSAGE_NOT_FOUND"
    # Reactions are counted per emoji; adding twice counts once.
    for who, emoji in ((bob, "👍"), (carol, "👍"), (carol, "🎉"), (carol, "🎉")):
        await who.call("PUT", f"/v1/messages/{hello['id']}/reactions/{emoji}")
    assert (await alice.get(f"/v1/messages/{hello['id']}"))["reactions"] == {"🎉": 1, "👍": 2}
    assert (await carol.get(f"/v1/messages/{hello['id']}"))["mine"] == ["🎉", "👍"]
    assert (await alice.get(f"/v1/messages/{hello['id']}"))["mine"] == []
    await carol.call("DELETE", f"/v1/messages/{hello['id']}/reactions/👍")
    assert (await alice.get(f"/v1/messages/{hello['id']}"))["reactions"] == {"🎉": 1, "👍": 1}
    # Forward, then recall the original: the copy stays.
    copy = await bob.post(f"/v1/messages/{hello['id']}/forward", {"thread": other})
    assert (copy["thread"], copy["sender"], copy["text"]) == (other, bob.id, "hello crew")
    assert copy["forwarded_from"] == hello["id"]
    with pytest.raises(ApiError) as not_sender:
        await bob.call("DELETE", f"/v1/messages/{hello['id']}")
    assert not_sender.value.name == "FORBIDDEN"
    recalled = await alice.call("DELETE", f"/v1/messages/{hello['id']}")
    assert recalled["recalled"] and "text" not in recalled
    assert (await carol.get(f"/v1/messages/{hello['id']}"))["recalled"]
    assert (await alice.get(f"/v1/messages/{copy['id']}"))["text"] == "hello crew"
    with pytest.raises(ApiError) as bad:
        await alice.post("/v1/media", content=b"not an image at all")
    assert bad.value.name == "INVALID_REQUEST"


async def test_receipts_drive_unread_and_unheard_counts(
    http: httpx.AsyncClient, server: RunningServer, packets: list[bytes]
) -> None:
    alice, bob = await people(http, "alice", "bob")
    thread = await group(alice, bob)
    words = [await text(alice, thread, f"message {i}") for i in range(3)]
    opened = Open(msg="voice1", thread=thread, created=int(time.time() * 1000))
    await talk(server.url, alice.token, opened, chunks_from_packets(packets[:20], 5))
    view = await bob.get(f"/v1/threads/{thread}")
    assert (view["unread"], view["unheard"]) == (3, 1)
    assert (await alice.get(f"/v1/threads/{thread}"))["unread"] == 0  # one's own
    for message in words[:2]:
        await bob.post(f"/v1/messages/{message['id']}/receipts", {"kind": "read"})
    await bob.post("/v1/messages/voice1/receipts", {"kind": "heard"})
    await bob.post("/v1/messages/voice1/receipts", {"kind": "heard"})  # idempotent
    view = (await bob.get("/v1/threads"))["threads"][0]
    assert (view["unread"], view["unheard"]) == (1, 0)
    with pytest.raises(ApiError) as wrong_kind:
        await bob.post(f"/v1/messages/{words[2]['id']}/receipts", {"kind": "heard"})
    assert wrong_kind.value.name == "INVALID_REQUEST"
    receipts = (await alice.get("/v1/messages/voice1/receipts"))["receipts"]
    assert [(r["account"], r["kind"]) for r in receipts] == [(bob.id, "heard")]


# -- the timeline ------------------------------------------------------------------------


async def test_two_devices_of_one_user_stay_in_sync(http: httpx.AsyncClient) -> None:
    alice, bob = await people(http, "alice", "bob")
    bob_laptop = await login(http, "bob", device="laptop")
    thread = await group(alice, bob)
    hello = await text(alice, thread, "hello bob")
    phone_events, phone_token = await bob.sync_all()
    laptop_events, laptop_token = await bob_laptop.sync_all()
    assert types(phone_events) == types(laptop_events) == ["thread", "message"]
    assert phone_events[1]["data"]["text"] == "hello bob"
    # The phone reads it; the laptop learns it from its timeline and its count drops.
    await bob.post(f"/v1/messages/{hello['id']}/receipts", {"kind": "read"})
    news, laptop_token = await bob_laptop.sync_all(laptop_token)
    assert [(e["type"], e["data"]["kind"]) for e in news] == [("receipt", "read")]
    assert (await bob_laptop.get(f"/v1/threads/{thread}"))["unread"] == 0
    # Alice, the sender, got the receipt too (her ticks).
    alice_events, _ = await alice.sync_all()
    assert types(alice_events) == ["thread", "message", "receipt"]
    # Acknowledging is per device: the laptop's ack does not move the phone's.
    await bob_laptop.post("/v1/sync/ack", {"token": laptop_token})
    sessions = {s["device"]: s["acked"] for s in (await bob.get("/v1/sessions"))["sessions"]}
    assert sessions == {"laptop": laptop_token, "bob-phone": "0"}
    resumed = await bob_laptop.get("/v1/sync", params={"since": "acked"})
    assert resumed["events"] == [] and resumed["next"] == laptop_token
    assert phone_token != laptop_token


async def test_long_poll_wakes_on_the_next_event(http: httpx.AsyncClient) -> None:
    alice, bob = await people(http, "alice", "bob")
    thread = await group(alice, bob)
    _, token = await bob.sync_all()
    start = trio.current_time()
    got: dict[str, Any] = {}

    async def poll() -> None:
        got.update(await bob.get("/v1/sync", params={"since": token, "timeout": "20000"}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(0.3)
        await text(alice, thread, "wake up")
    waited = trio.current_time() - start
    assert types(got["events"]) == ["message"] and 0.3 <= waited < 5
    empty = await bob.get("/v1/sync", params={"since": got["next"], "timeout": "200"})
    assert empty["events"] == [] and empty["next"] == got["next"]
    with pytest.raises(ApiError) as future:
        await bob.get("/v1/sync", params={"since": "999999999"})
    assert future.value.name == "INVALID_REQUEST"


# httpcore leaves its body generator to the garbage collector when a streamed response
# is closed early (httpx's issue, not ours); the stream is closed properly here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_sync_stream_pushes_events_as_they_happen(
    http: httpx.AsyncClient, server: RunningServer, packets: list[bytes]
) -> None:
    alice, bob = await people(http, "alice", "bob")
    thread = await group(alice, bob)
    seen: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {bob.token}"}
    async with http.stream("GET", "/v1/sync/stream", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        online = await alice.get(f"/v1/threads/{thread}")
        assert online["online"] == [bob.id]
        opened = Open(msg="live1", thread=thread, created=int(time.time() * 1000))
        await talk(server.url, alice.token, opened, chunks_from_packets(packets[:10], 5))
        await text(alice, thread, "after the voice")
        with trio.fail_after(10):
            async with aclosing(response.aiter_lines()) as lines:
                async for line in lines:
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                    last = seen[-1] if seen else None
                    if last and last["type"] == "message" and last["data"]["kind"] == "text":
                        break
    assert types(seen) == ["thread", "message", "message.live", "message.closed", "message"]
    assert [e["pos"] for e in seen] == sorted({e["pos"] for e in seen})
    assert seen[3]["data"]["state"] == "closed" and seen[3]["data"]["chunks"] == 2
    # A reconnect with Last-Event-ID resumes after the last event seen: nothing again.
    page = await bob.get("/v1/sync", headers={"Last-Event-ID": str(seen[-1]["pos"])})
    assert page["events"] == []


async def test_offline_queue_replayed_twice_makes_one_of_each(http: httpx.AsyncClient) -> None:
    alice, bob = await people(http, "alice", "bob")
    queue = [
        ("POST", "/v1/threads", {"id": "trip", "title": "trip", "participants": ["bob"]}),
        ("POST", "/v1/threads/trip/messages", {"id": "m1", "kind": "text", "text": "one"}),
        ("POST", "/v1/threads/trip/messages", {"id": "m2", "kind": "text", "text": "two"}),
        ("PUT", "/v1/messages/m1/reactions/👍", None),
        ("POST", "/v1/messages/m1/receipts", {"kind": "read"}),
    ]
    answers = []
    for _ in range(2):
        answers.append([await alice.call(method, path, body) for method, path, body in queue])
    first, replay = answers
    assert [a.get("id") for a in first[:3]] == [a.get("id") for a in replay[:3]]
    assert first[3] == replay[3] == {"reactions": {"👍": 1}}
    assert first[4] == replay[4]
    messages = (await bob.get("/v1/threads/trip/messages"))["messages"]
    assert [m["id"] for m in messages] == ["m1", "m2"]
    assert messages[0]["reactions"] == {"👍": 1}
    events, _ = await bob.sync_all()
    assert types(events) == ["thread", "message", "message", "reaction"]
    with pytest.raises(ApiError) as conflict:
        await alice.post("/v1/threads/trip/messages", {"id": "m1", "kind": "text", "text": "1"})
    assert conflict.value.name == "MESSAGE_CONFLICT"


# -- search --------------------------------------------------------------------------------


async def test_search_sees_only_what_the_account_sees(http: httpx.AsyncClient) -> None:
    alice, bob, carol = await people(http, "alice", "bob", "carol")
    shared = await group(alice, bob)
    await alice.call("PATCH", f"/v1/threads/{shared}", {"title": "Bicycle club"})
    mine = await group(alice, carol)
    for i in range(5):
        await text(alice, shared, f"bicycle ride number {i}")
    await text(alice, mine, "bicycle secret")
    await text(alice, shared, "bicycle for carol's eyes only", to="bob")
    found = await bob.get("/v1/search", params={"q": "bicycle", "limit": "3"})
    first = [r["snippet"] for r in found["results"]]
    assert first[0] == "[bicycle] for carol's eyes only"
    more = await bob.get(
        "/v1/search", params={"q": "bicycle", "limit": "3", "before": found["next"]}
    )
    rest = [r["snippet"] for r in more["results"]]
    assert (len(first + rest) == 6 and more["next"] is None) or len(rest) == 3
    every = first + rest
    if more["next"]:
        last = await bob.get(
            "/v1/search", params={"q": "bicycle", "limit": "3", "before": more["next"]}
        )
        every += [r["snippet"] for r in last["results"]]
    assert len(every) == 7  # 5 rides, the directed one, the thread title
    assert not any("secret" in s for s in every)
    assert any(
        r["kind"] == "thread"
        for r in (await bob.get("/v1/search", params={"q": "club"}))["results"]
    )
    assert (await carol.get("/v1/search", params={"q": "ride"}))["results"] == []
    prefix = await bob.get("/v1/search", params={"q": "bicyc"})
    assert prefix["results"]
    with pytest.raises(ApiError):
        await bob.get("/v1/search", params={"q": "   "})
