"""Section 13.7: Web Push subscriptions and the pushes a server sends.

Registering subscriptions needs no push service: the server must accept an ``https``
endpoint without calling it, so ``13.7/subscriptions`` uses endpoints under
``push.invalid`` (RFC 2606: a name that never resolves) for an account nobody writes to.

Receiving pushes needs a push service the server can reach. With ``--push`` the suite
runs one on 127.0.0.1 (``conformance/push_receiver.py``: it checks the RFC 8030
headers and the RFC 8292 VAPID token, decrypts the RFC 8291 ``aes128gcm`` body with the
subscription's keys, as a browser does, and refuses anything else); the server must then
accept ``http://127.0.0.1`` endpoints (the reference server: ``serve
--allow-local-push``). Without ``--push`` those cases (group ``push``) are skipped.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Final

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from voxer_stream.wire import Close

from ..case import case, expect, fail
from ..context import Account, Context
from ..push_receiver import PushReceiver, Subscribed, b64url_decode, b64url_encode
from .errors import expect_rest_error
from .service import body, group, need, read, say, shown, sync_token
from .timeline import event_stream, until

#: How long a push may take to arrive (the server sends it after the commit, in the
#: background, over a new connection).
PUSH_WAIT: Final = 10.0


def browser_keys() -> dict[str, str]:
    """A browser's half of a subscription: a P-256 public key and a 16-byte auth secret."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return {"p256dh": b64url_encode(point), "auth": b64url_encode(secrets.token_bytes(16))}


async def subscriptions(ctx: Context, who: Account) -> dict[str, str]:
    """id -> endpoint of the account's push subscriptions."""
    found = (await read(ctx, who, "/v1/push/subscriptions")).get("subscriptions", [])
    return {str(s.get("id")): str(s.get("endpoint")) for s in found if isinstance(s, dict)}


async def vapid_key(ctx: Context, who: Account, requirement: str) -> str:
    reply = await ctx.rest("GET", "/v1/push/vapid", token=who.token)
    key = body(reply, 200, requirement, "GET /v1/push/vapid").get("public_key")
    try:
        point = b64url_decode(key) if isinstance(key, str) else b""
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        fail(requirement, f"GET /v1/push/vapid gives {key!r}, not a P-256 public key")
    assert isinstance(key, str)
    return key


@case(
    "13.7/subscriptions",
    "a device registers a browser's PushSubscription; the server gives its VAPID key; a "
    "session's subscriptions end with it",
    requirements=("VXS-13.7-1", "VXS-8-11", "VXS-8-5"),
    accepts="GET /v1/push/vapid: a P-256 public key (base64url of the uncompressed point); "
    "POST /v1/push/subscriptions of {endpoint https://push.invalid/..., keys {p256dh, auth}} "
    "from a phone and from a browser session: 2xx with an id, both listed by GET with their "
    "endpoints; an http endpoint of another host, a p256dh that is no key and no keys: 400 "
    "INVALID_REQUEST; DELETE of the browser session drops its subscription (VXS-8-11), the "
    "phone's stays; DELETE of a subscription: 204, and again: 404 NOT_FOUND",
)
async def push_subscriptions(ctx: Context) -> None:
    phone = await ctx.register("pusher", device="phone")
    browser = await ctx.login(phone.username, phone.password, device="browser")
    await vapid_key(ctx, phone, "VXS-13.7-1")
    made: dict[str, str] = {}
    mine: dict[str, str] = {}
    for who in (phone, browser):
        endpoint = f"https://push.invalid/{ctx.prefix}/{secrets.token_hex(16)}"
        reply = await ctx.rest(
            "POST",
            "/v1/push/subscriptions",
            token=who.token,
            json={"endpoint": endpoint, "expirationTime": None, "keys": browser_keys()},
        )
        expect(
            reply.status in (200, 201) and isinstance(reply.body, dict) and reply.body.get("id"),
            "VXS-13.7-1",
            f"a subscription with an https endpoint: HTTP {reply.status} {shown(reply)!r}",
        )
        made[str(reply.body["id"])] = endpoint
        if who is phone:
            mine[str(reply.body["id"])] = endpoint
    listed = await subscriptions(ctx, phone)
    expect(listed == made, "VXS-13.7-1", f"GET /v1/push/subscriptions lists {listed}")
    bad: list[tuple[str, dict[str, Any]]] = [
        ("an http endpoint", {"endpoint": "http://push.invalid/x", "keys": browser_keys()}),
        (
            "a p256dh that is no key",
            {"endpoint": "https://push.invalid/y", "keys": {**browser_keys(), "p256dh": "nope"}},
        ),
        ("no keys", {"endpoint": "https://push.invalid/z"}),
    ]
    for label, data in bad:
        reply = await ctx.rest("POST", "/v1/push/subscriptions", token=phone.token, json=data)
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.7-1", f"a subscription with {label}")
    ended = await ctx.rest("DELETE", f"/v1/sessions/{browser.session_id}", token=phone.token)
    expect(ended.status == 204, "VXS-8-11", f"DELETE of the browser session: {ended.status}")
    left = await subscriptions(ctx, phone)
    expect(
        left == mine,
        "VXS-8-11",
        f"after the browser session ended the subscriptions are {left}, expected {mine}",
    )
    (sid,) = mine
    gone = await ctx.rest("DELETE", f"/v1/push/subscriptions/{sid}", token=phone.token)
    expect(gone.status == 204, "VXS-13.7-1", f"DELETE of a subscription: {gone.status}")
    expect(
        await subscriptions(ctx, phone) == {},
        "VXS-13.7-1",
        "a deleted subscription is still listed",
    )
    again = await ctx.rest("DELETE", f"/v1/push/subscriptions/{sid}", token=phone.token)
    expect_rest_error(again, "NOT_FOUND", "VXS-8-5", "DELETE of a deleted subscription")


async def subscribe(
    ctx: Context, receiver: PushReceiver, who: Account, key: str
) -> tuple[str, Subscribed]:
    """Subscribe ``who``'s session at the suite's push service; (server's id, handle)."""
    info, handle = receiver.subscribe(application_server_key=key)
    reply = await ctx.rest("POST", "/v1/push/subscriptions", token=who.token, json=info)
    expect(
        reply.status in (200, 201) and isinstance(reply.body, dict) and reply.body.get("id"),
        "VXS-13.7-1",
        f"a subscription at {receiver.origin} (--push): HTTP {reply.status} {shown(reply)!r}",
    )
    return str(reply.body["id"]), handle


async def next_push(handle: Subscribed, what: str) -> dict[str, Any]:
    try:
        payload = await handle.next(timeout=PUSH_WAIT)
    except trio.TooSlowError:
        fail("VXS-13.7-2", f"no push arrived within {PUSH_WAIT:g} s for {what}")
    try:
        found = json.loads(payload)
    except ValueError:
        fail("VXS-13.7-2", f"the push for {what} is not JSON: {payload[:200]!r}")
    expect(isinstance(found, dict), "VXS-13.7-2", f"the push for {what} is {found!r}")
    result: dict[str, Any] = found
    return result


def names(sender: object, who: Account) -> bool:
    """Whether a payload's sender stands for ``who`` (its id, username, or a view of it)."""
    if isinstance(sender, dict):
        return sender.get("id") == who.id or sender.get("username") == who.username
    return sender in (who.id, who.username)


@case(
    "13.7/delivery",
    "a new message, a live message and a mention are pushed, encrypted and VAPID-signed, to "
    "each recipient but the sender, a muted thread and a device holding a sync open",
    requirements=("VXS-13.7-2", "VXS-13.7-1", "VXS-13.2-6"),
    group="push",
    accepts="with subscriptions of a new sender and a new recipient at the suite's push "
    "service on 127.0.0.1: the sender's text gives the recipient a push that verifies (VAPID "
    "for the service's origin, signed with GET /v1/push/vapid's key) and decrypts (aes128gcm "
    "to the subscription's keys), JSON {type message, thread, title, message, kind text, "
    "sender, text}; a text naming @recipient: type mention; an audio message going live: "
    "type live, kind audio; while the recipient muted the thread, and while its device holds "
    "a sync stream, nothing; after both, the next text arrives; the sender gets no push; the "
    "push service refuses nothing",
)
async def delivery(ctx: Context) -> None:
    sender = await ctx.register("sender", device="phone")
    recipient = await ctx.register("recipient", device="browser")
    key = await vapid_key(ctx, recipient, "VXS-13.7-1")
    title = f"push {secrets.token_hex(3)}"
    thread = await group(ctx, sender, recipient, title=title)
    async with PushReceiver.start() as receiver:
        ids = []
        for who in (sender, recipient):
            sid, handle = await subscribe(ctx, receiver, who, key)
            ids.append((who, sid, handle))
        (_, _, own), (_, _, theirs) = ids

        msg = str((await say(ctx, sender, thread, "hello there"))["id"])
        push = await next_push(theirs, "a text message")
        expect(
            push.get("type") == "message"
            and push.get("thread") == thread
            and push.get("title") == title
            and push.get("message") == msg
            and push.get("kind") == "text"
            and names(push.get("sender"), sender)
            and push.get("text") in ("hello there", None),
            "VXS-13.7-2",
            f"the push for a text is {push}",
        )
        mention = str((await say(ctx, sender, thread, f"@{recipient.username} look"))["id"])
        push = await next_push(theirs, "a text that mentions the recipient")
        expect(
            push.get("type") == "mention" and push.get("message") == mention,
            "VXS-13.7-2",
            f"the push for a mention is {push}",
        )
        voice = ctx.msg_id()
        async with ctx.upload(sender.token) as talker:
            await talker.send(ctx.open_frame(thread, voice), ctx.chunk(0))
            await ctx.wait_acked(talker, 0)
            push = await next_push(theirs, "an audio message going live")
            await talker.send(Close(chunks=1))
            await talker.frames()
        expect(
            push.get("type") == "live"
            and push.get("message") == voice
            and push.get("kind") == "audio",
            "VXS-13.7-2",
            f"the push for an audio message going live is {push}",
        )

        need(
            await ctx.rest("PUT", f"/v1/threads/{thread}/mute", token=recipient.token),
            200,
            "muting the thread",
        )
        await say(ctx, sender, thread, "while muted")
        need(
            await ctx.rest("DELETE", f"/v1/threads/{thread}/mute", token=recipient.token),
            200,
            "unmuting the thread",
        )
        since = await sync_token(ctx, recipient)
        async with event_stream(ctx, recipient, since=since) as events:
            expect(events.status == 200, "VXS-13.7-2", f"the sync stream: {events.status}")

            async def connected() -> bool:
                found = (await read(ctx, sender, f"/v1/threads/{thread}")).get("online")
                return isinstance(found, list) and recipient.id in found

            expect(
                await until(connected),
                "VXS-13.7-2",
                "the recipient's device holds a sync stream, but online does not list it",
            )
            await say(ctx, sender, thread, "while connected")
            await events.event(ctx.timeout)  # it arrived on the stream

        async def gone() -> bool:
            found = (await read(ctx, sender, f"/v1/threads/{thread}")).get("online")
            return isinstance(found, list) and recipient.id not in found

        expect(
            await until(gone),
            "VXS-13.7-2",
            "online still lists the recipient 3 s after its stream's connection closed",
        )
        after = str((await say(ctx, sender, thread, "after"))["id"])
        push = await next_push(theirs, "a text after the mute and the stream")
        await trio.sleep(0.3)  # a push that should not have been sent would be here by now
        texts = [json.loads(d.payload).get("text") for d in theirs.deliveries]
        expect(
            push.get("message") == after,
            "VXS-13.7-2",
            f"after the muted and the connected messages the next push is {push}",
        )
        expect(
            "while muted" not in texts,
            ("VXS-13.7-2", "VXS-13.2-6"),
            "a recipient that muted the thread got a push",
        )
        expect(
            "while connected" not in texts,
            "VXS-13.7-2",
            "a device that held a sync stream open got a push",
        )
        expect(
            not own.deliveries,
            "VXS-13.7-2",
            f"the sender got {len(own.deliveries)} pushes of its own messages",
        )
        expect(
            not receiver.rejections,
            "VXS-13.7-2",
            f"the push service refused: {receiver.rejections}",
        )
        for who, sid, _ in ids:
            await ctx.rest("DELETE", f"/v1/push/subscriptions/{sid}", token=who.token)


@case(
    "13.7/gone",
    "a subscription the push service answers 404 or 410 for is dropped",
    requirements=("VXS-13.7-2",),
    group="push",
    accepts="two subscriptions of a new recipient at the suite's push service, one answered "
    "410 Gone (the browser unsubscribed) and one 404 (unknown to the service): after the next "
    "message to the recipient, GET /v1/push/subscriptions lists neither (within 10 s); a "
    "third, working one still gets its push and stays",
)
async def gone(ctx: Context) -> None:
    sender = await ctx.register("sender")
    recipient = await ctx.register("recipient", device="one")
    devices = [recipient] + [
        await ctx.login(recipient.username, recipient.password, device=d) for d in ("two", "three")
    ]
    key = await vapid_key(ctx, recipient, "VXS-13.7-2")
    thread = await group(ctx, sender, recipient)
    async with PushReceiver.start() as receiver:
        made = [await subscribe(ctx, receiver, who, key) for who in devices]
        (unsubscribed, first), (unknown, second), (working, third) = made
        first.mark_gone()
        del receiver.subscriptions[second.id]  # the push service no longer knows it
        await say(ctx, sender, thread, "is anyone there?")
        await next_push(third, "the working subscription")

        async def dropped() -> bool:
            return set(await subscriptions(ctx, recipient)) == {working}

        expect(
            await until(dropped, within=PUSH_WAIT),
            "VXS-13.7-2",
            f"{PUSH_WAIT:g} s after pushes answered 410 and 404, the subscriptions are "
            f"{sorted(await subscriptions(ctx, recipient))}, expected only {working!r} "
            f"(not {unsubscribed!r} nor {unknown!r})",
        )
        expect(
            first.refused_gone >= 1,
            "VXS-13.7-2",
            "the server never pushed to the subscription that is gone",
        )
        await ctx.rest("DELETE", f"/v1/push/subscriptions/{working}", token=recipient.token)
