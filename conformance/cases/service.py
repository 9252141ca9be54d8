"""Section 13: the messaging service (profiles, contacts, threads and roles, messages).

Every case works on threads and accounts of its own: the accounts it blocks, lists as
contacts or counts unread messages for are registered for the case (``ctx.register``),
so that a run never sees another's data and alice, bob and carol stay as the other
groups expect them (carol in no thread of the suite). An account the case registers as
a third participant is called erin, as in ``rest.py``.

The timeline (13.5) and presence (13.6) are in ``timeline.py``, Web Push (13.7) in
``push.py``; they reuse the helpers below.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Final
from urllib.parse import quote as url_quote

from voxer_stream.wire import Chunk, Close, Closed, Open

from ..case import case, expect
from ..context import Account, Context, RestReply
from ..images import gif, image_size, png, sniff
from ..net import TransportFailure
from .errors import expect_refusal, expect_rest_error, expect_unseen, rest_answer

ACCOUNT_VIEW: Final = frozenset({"id", "username", "display_name", "avatar"})
THREAD_FIELDS: Final = frozenset(
    {"id", "title", "kind", "controlled", "created_by", "created", "participants"}
)
MESSAGE_FIELDS: Final = frozenset(
    {
        "id",
        "thread",
        "sender",
        "kind",
        "codec",
        "created",
        "state",
        "chunks",
        "duration",
        "to",
        "recalled",
        "forwarded_from",
        "reactions",
    }
)
MEDIA_FIELDS: Final = frozenset(
    {"id", "content_type", "width", "height", "size", "url", "thumbnail"}
)
IMAGE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


# -- helpers shared by the section 13 modules --------------------------------------------


def shown(reply: RestReply) -> object:
    return reply.body if reply.body is not None else reply.content[:200]


def body(reply: RestReply, status: int, requirement: str | tuple[str, ...], what: str) -> Any:
    """The JSON body of a reply that must have ``status``."""
    expect(
        reply.status == status and isinstance(reply.body, dict),
        requirement,
        f"{what}: HTTP {reply.status} {shown(reply)!r}, expected {status} with a JSON object",
    )
    return reply.body


def need(reply: RestReply, status: int, what: str) -> Any:
    """The JSON body of a set-up step; anything else is a transport failure of the case."""
    if reply.status != status or not isinstance(reply.body, dict):
        raise TransportFailure(f"{what}: HTTP {reply.status} {shown(reply)!r}")
    return reply.body


async def talk(ctx: Context, who: Account, thread: str, chunks: int) -> str:
    """A closed audio message of ``who``'s, created now, as a real talker's is.

    ``ctx.talk`` dates its messages in November 2023, before any account of the run
    joined any thread; a message "sent since it joined" (VXS-13.4-3) must be sent later."""
    msg = ctx.msg_id()
    opening = Open(msg=msg, thread=thread, codec="opus", created=int(time.time() * 1000))
    frames = [opening, *(ctx.chunk(seq) for seq in range(chunks)), Close(chunks=chunks)]
    async with ctx.upload(who.token) as exchange:
        await exchange.send(*frames)
        got = await exchange.frames()
    if not got or not isinstance(got[-1], Closed):
        raise TransportFailure(f"could not upload an audio message: {got[-1:]}")
    return msg


def word(ctx: Context) -> str:
    """A word no other run and no other case uses (for search)."""
    return f"w{ctx.prefix}{secrets.token_hex(4)}"


async def group(ctx: Context, owner: Account, *members: Account, **extra: Any) -> str:
    """A new group thread of ``owner`` with ``members``; its id."""
    reply = await ctx.rest(
        "POST",
        "/v1/threads",
        token=owner.token,
        json={"title": "conformance", "participants": [m.username for m in members], **extra},
    )
    return str(need(reply, 201, "creating a thread")["id"])


async def post(ctx: Context, who: Account, thread: str, content: dict[str, Any]) -> dict[str, Any]:
    """POST a message in set-up: 201 and the message, or a transport failure."""
    reply = await ctx.rest("POST", f"/v1/threads/{thread}/messages", token=who.token, json=content)
    found: dict[str, Any] = need(reply, 201, f"posting {content}")
    return found


async def say(ctx: Context, who: Account, thread: str, words: str, **extra: Any) -> dict[str, Any]:
    return await post(ctx, who, thread, {"kind": "text", "text": words, **extra})


async def upload_image(ctx: Context, who: Account, data: bytes) -> dict[str, Any]:
    reply = await ctx.rest(
        "POST",
        "/v1/media",
        token=who.token,
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    found: dict[str, Any] = need(reply, 201, "uploading an image")
    return found


async def read(ctx: Context, who: Account, path: str) -> dict[str, Any]:
    found: dict[str, Any] = need(await ctx.rest("GET", path, token=who.token), 200, f"GET {path}")
    return found


def roles(thread: Any) -> dict[str, str]:
    """username -> role of a thread's JSON form."""
    people = thread.get("participants") if isinstance(thread, dict) else None
    return {str(p.get("username")): str(p.get("role")) for p in people or [] if isinstance(p, dict)}


def message_ids(listing: Any) -> list[str]:
    found = listing.get("messages") if isinstance(listing, dict) else None
    return [str(m.get("id")) for m in found or [] if isinstance(m, dict)]


async def listed(ctx: Context, who: Account, thread: str) -> list[str]:
    return message_ids(await read(ctx, who, f"/v1/threads/{thread}/messages"))


async def unseen_message(ctx: Context, who: Account, path: str, msg: str, rid: str) -> None:
    """``who`` gets, for ``path`` of ``msg``, exactly what an unknown message id gets."""
    reply = await ctx.rest("GET", path.format(msg), token=who.token)
    expect_rest_error(reply, "MESSAGE_NOT_FOUND", rid, f"GET {path.format('<msg>')}")
    other = ctx.msg_id()
    unknown = await ctx.rest("GET", path.format(other), token=who.token)
    expect_unseen(
        rest_answer(reply, msg), rest_answer(unknown, other), rid, f"GET {path.format('<msg>')}"
    )


# -- 13.1 Profiles, contacts and blocks --------------------------------------------------


@case(
    "13.1/profile",
    "an account sets its display name and avatar; any account reads its view, and the avatar",
    requirements=("VXS-13.1-1", "VXS-13.1-2", "VXS-13.3-6", "VXS-8-5"),
    accepts="PATCH /v1/accounts/me with a display_name of 64 characters, then with avatar the "
    "id of an image it uploaded: 200 and the account view (id, username, display_name, avatar) "
    "with both; carol's GET /v1/accounts/{username}: 200 with the same view and GET of the "
    "avatar image 200; avatar bob's image or an unknown id: refused (4xx), the avatar "
    "unchanged; avatar null: removed, after which carol gets 404 NOT_FOUND for the image, "
    "as for an unknown image id; an unknown username: 404 NOT_FOUND",
)
async def profile(ctx: Context) -> None:
    me = await ctx.register("profile")
    name = "é" * 63 + "!"
    reply = await ctx.rest("PATCH", "/v1/accounts/me", token=me.token, json={"display_name": name})
    view = body(reply, 200, "VXS-13.1-1", "a display_name of 64 characters")
    expect(
        view.get("display_name") == name and set(view) >= ACCOUNT_VIEW,
        "VXS-13.1-1",
        f"PATCH display_name answered {view}",
    )
    image = await upload_image(ctx, me, png(48, 48))
    reply = await ctx.rest("PATCH", "/v1/accounts/me", token=me.token, json={"avatar": image["id"]})
    view = body(reply, 200, "VXS-13.1-1", "an avatar of an image the account uploaded")
    expect(
        view.get("avatar") == image["id"] and view.get("display_name") == name,
        "VXS-13.1-1",
        f"after PATCH avatar the view is {view}",
    )
    seen = await ctx.rest("GET", f"/v1/accounts/{me.username}", token=ctx.carol.token)
    other = body(seen, 200, "VXS-13.1-2", "carol's GET of the account view")
    expect(
        set(other) >= ACCOUNT_VIEW
        and {k: other.get(k) for k in ACCOUNT_VIEW}
        == {"id": me.id, "username": me.username, "display_name": name, "avatar": image["id"]},
        "VXS-13.1-2",
        f"carol sees the account as {other}",
    )
    expect(
        not {"password", "password_hash", "token"} & set(other),
        "VXS-13.1-2",
        f"the account view shows secrets: {sorted(other)}",
    )
    avatar = await ctx.rest("GET", f"/v1/media/{image['id']}", token=ctx.carol.token)
    expect(
        avatar.status == 200 and sniff(avatar.content) == "image/png",
        ("VXS-13.1-1", "VXS-13.3-6"),
        f"carol's GET of the avatar image: HTTP {avatar.status} {avatar.content[:60]!r}",
    )
    bobs = await upload_image(ctx, ctx.bob, png(16, 16))
    for label, media in (("bob's image", bobs["id"]), ("an unknown image id", ctx.msg_id())):
        reply = await ctx.rest("PATCH", "/v1/accounts/me", token=me.token, json={"avatar": media})
        expect(
            400 <= reply.status < 500,
            "VXS-13.1-1",
            f"avatar {label}: HTTP {reply.status} {shown(reply)!r}, expected a refusal",
        )
    now = await read(ctx, me, "/v1/accounts/me")
    expect(
        now.get("avatar") == image["id"],
        "VXS-13.1-1",
        f"a refused avatar changed it to {now.get('avatar')!r}",
    )
    reply = await ctx.rest("PATCH", "/v1/accounts/me", token=me.token, json={"avatar": None})
    view = body(reply, 200, "VXS-13.1-1", "avatar null")
    expect(view.get("avatar") is None, "VXS-13.1-1", f"avatar null left {view.get('avatar')!r}")
    hidden = await ctx.rest("GET", f"/v1/media/{image['id']}", token=ctx.carol.token)
    expect_rest_error(hidden, "NOT_FOUND", "VXS-13.3-6", "carol's GET of a former avatar")
    unknown_id = ctx.msg_id()
    unknown = await ctx.rest("GET", f"/v1/media/{unknown_id}", token=ctx.carol.token)
    expect_unseen(
        rest_answer(hidden, image["id"]),
        rest_answer(unknown, unknown_id),
        "VXS-13.3-6",
        "carol's GET of a former avatar",
    )
    nobody = await ctx.rest(
        "GET", f"/v1/accounts/{ctx.prefix}-nobody-{secrets.token_hex(3)}", token=me.token
    )
    expect_rest_error(nobody, "NOT_FOUND", "VXS-13.1-2", "GET of an unknown username")


@case(
    "13.1/contacts",
    "contacts are one-sided, listed oldest first, and carry a blocked flag",
    requirements=("VXS-13.1-3",),
    accepts="a new account puts bob, then carol with blocked true: each 200 with the account "
    "view, blocked and added; putting bob again changes nothing (the same added); GET "
    "/v1/contacts lists bob then carol with those flags and bob's own contacts do not list "
    "the account; a PUT without blocked keeps the flag, with blocked sets it; DELETE bob: "
    "204, and only carol is listed",
)
async def contacts(ctx: Context) -> None:
    me = await ctx.register("contacts")

    async def put(username: str, data: dict[str, Any] | None) -> dict[str, Any]:
        reply = await ctx.rest("PUT", f"/v1/contacts/{username}", token=me.token, json=data)
        view: dict[str, Any] = body(reply, 200, "VXS-13.1-3", f"PUT /v1/contacts/{username}")
        expect(
            ACCOUNT_VIEW | {"blocked", "added"} <= set(view),
            "VXS-13.1-3",
            f"a contact is an account view with blocked and added, got {view}",
        )
        return view

    async def contacts_of(who: Account) -> list[tuple[str, object]]:
        found = (await read(ctx, who, "/v1/contacts")).get("contacts")
        return [
            (str(c.get("username")), c.get("blocked")) for c in found or [] if isinstance(c, dict)
        ]

    bob, carol = ctx.bob.username, ctx.carol.username
    first = await put(bob, {})
    expect(first.get("blocked") is False, "VXS-13.1-3", f"a new contact is {first}")
    await ctx.sleep(0.01)
    again = await put(bob, None)
    expect(
        again.get("added") == first.get("added") and again.get("blocked") is False,
        "VXS-13.1-3",
        f"putting bob again changed the contact: {first} then {again}",
    )
    blocked = await put(carol, {"blocked": True})
    expect(blocked.get("blocked") is True, "VXS-13.1-3", f"blocked carol is {blocked}")
    want = [(bob, False), (carol, True)]
    expect(
        await contacts_of(me) == want,
        "VXS-13.1-3",
        f"GET /v1/contacts lists {await contacts_of(me)}, expected {want} (oldest first)",
    )
    expect(
        me.username not in [name for name, _ in await contacts_of(ctx.bob)],
        "VXS-13.1-3",
        "bob's contacts list the account that added him: contacts are one-sided",
    )
    kept = await put(carol, {})
    expect(kept.get("blocked") is True, "VXS-13.1-3", f"a PUT without blocked unblocked: {kept}")
    flagged = await put(bob, {"blocked": True})
    unflagged = await put(bob, {"blocked": False})
    expect(
        flagged.get("blocked") is True and unflagged.get("blocked") is False,
        "VXS-13.1-3",
        f"blocked true then false gave {flagged.get('blocked')} and {unflagged.get('blocked')}",
    )
    removed = await ctx.rest("DELETE", f"/v1/contacts/{bob}", token=me.token)
    expect(removed.status == 204, "VXS-13.1-3", f"DELETE of a contact: {removed.status}")
    expect(
        await contacts_of(me) == [(carol, True)],
        "VXS-13.1-3",
        f"after DELETE GET /v1/contacts lists {await contacts_of(me)}",
    )


@case(
    "13.1/blocks",
    "a blocked account cannot start a thread with the blocker nor post into their direct "
    "thread, on any binding; the blocker is not restricted and the block is not told",
    requirements=("VXS-13.1-4", "VXS-10-4"),
    accepts="pia blocks quinn: quinn creating a direct thread with pia, or a group with pia and "
    "bob: 403 FORBIDDEN with a detail naming neither pia's username nor id, and no thread; "
    "quinn's group with bob alone and pia's group with quinn: 201; pia unblocks, quinn creates "
    "their direct thread and posts (201), pia blocks again: quinn's text, location and image "
    "messages, a forward into it and an HTTP/2 upload into it: FORBIDDEN (the upload: HTTP 403, "
    "one error frame); pia posts there: 201; quinn's timeline gets no event from the block and "
    "pia's account view shows quinn no blocked flag; after pia deletes the contact, quinn "
    "posts again",
)
async def blocks(ctx: Context) -> None:
    pia, quinn = await ctx.register("pia"), await ctx.register("quinn")
    block = {"blocked": True}
    need(
        await ctx.rest("PUT", f"/v1/contacts/{quinn.username}", token=pia.token, json=block),
        200,
        "pia blocking quinn",
    )

    def no_names(reply: RestReply, what: str) -> None:
        expect_rest_error(reply, "FORBIDDEN", "VXS-13.1-4", what)
        detail = str((reply.error or {}).get("detail") or "")
        expect(
            pia.username not in detail and pia.id not in detail,
            "VXS-13.1-4",
            f"{what}: the detail {detail!r} says who blocked",
        )

    for kind, people in (("direct", [pia]), ("group", [pia, ctx.bob])):
        reply = await ctx.rest(
            "POST",
            "/v1/threads",
            token=quinn.token,
            json={"kind": kind, "participants": [p.username for p in people]},
        )
        no_names(reply, f"quinn creating a {kind} thread with the account that blocked him")
    pias = await read(ctx, pia, "/v1/threads")
    expect(
        not [t for t in pias.get("threads", []) if isinstance(t, dict)],
        "VXS-13.1-4",
        f"pia is in threads after quinn's refused creates: {pias}",
    )
    elsewhere = await group(ctx, quinn, ctx.bob)
    await group(ctx, pia, quinn)

    unblock = {"blocked": False}
    await ctx.rest("PUT", f"/v1/contacts/{quinn.username}", token=pia.token, json=unblock)
    direct = await ctx.rest(
        "POST",
        "/v1/threads",
        token=quinn.token,
        json={"kind": "direct", "participants": [pia.username]},
    )
    thread = str(body(direct, 201, "VXS-13.1-4", "quinn's direct thread after the unblock")["id"])
    await say(ctx, quinn, thread, "hello pia")
    image = await upload_image(ctx, quinn, png(8, 8))
    source = await say(ctx, quinn, elsewhere, "to forward")
    before = await read(ctx, quinn, f"/v1/accounts/{pia.username}")
    mark = await sync_token(ctx, quinn)
    await ctx.rest("PUT", f"/v1/contacts/{quinn.username}", token=pia.token, json=block)
    news = await read(ctx, quinn, f"/v1/sync?since={quote(mark)}")
    expect(
        news.get("events") == [],
        "VXS-13.1-4",
        f"quinn's timeline tells of the block: {news.get('events')}",
    )
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("a text message", f"/v1/threads/{thread}/messages", {"kind": "text", "text": "hi"}),
        (
            "a location message",
            f"/v1/threads/{thread}/messages",
            {"kind": "location", "location": {"lat": 1.5, "lon": 2.5}},
        ),
        (
            "an image message",
            f"/v1/threads/{thread}/messages",
            {"kind": "image", "media": image["id"]},
        ),
        ("a forward", f"/v1/messages/{source['id']}/forward", {"thread": thread}),
    ]
    for label, path, data in attempts:
        reply = await ctx.rest("POST", path, token=quinn.token, json=data)
        no_names(reply, f"quinn posting {label} into the direct thread with pia, who blocked him")
    msg = ctx.msg_id()
    upload = await ctx.upload_all(
        quinn.token, [ctx.open_frame(thread, msg), ctx.chunk(0), Close(chunks=1)]
    )
    expect_refusal(upload, "FORBIDDEN", "VXS-13.1-4", "quinn's HTTP/2 upload into the thread")
    messages = await listed(ctx, pia, thread)
    expect(
        len(messages) == 1 and msg not in messages,
        "VXS-13.1-4",
        f"the direct thread holds {len(messages)} messages after quinn's refused posts",
    )
    after = await read(ctx, quinn, f"/v1/accounts/{pia.username}")
    expect(
        after == before and "blocked" not in after,
        "VXS-13.1-4",
        f"pia's account view changed for quinn with the block: {before} then {after}",
    )
    mine = await ctx.rest(
        "POST",
        f"/v1/threads/{thread}/messages",
        token=pia.token,
        json={"kind": "text", "text": "the blocker may write"},
    )
    body(mine, 201, "VXS-13.1-4", "pia (the blocker) posting into the direct thread")
    removed = await ctx.rest("DELETE", f"/v1/contacts/{quinn.username}", token=pia.token)
    expect(removed.status == 204, "VXS-13.1-4", f"pia deleting the contact: {removed.status}")
    again = await ctx.rest(
        "POST",
        f"/v1/threads/{thread}/messages",
        token=quinn.token,
        json={"kind": "text", "text": "unblocked"},
    )
    body(again, 201, "VXS-13.1-4", "quinn posting after pia deleted the contact")


# -- 13.2 Threads and roles ----------------------------------------------------------------


@case(
    "13.2/kinds-and-roles",
    'a thread is a "group" (default) or "direct"; the creator of a group is admin, others '
    "member unless added with another role",
    requirements=("VXS-13.2-1", "VXS-8-5"),
    accepts="a thread created without kind: 201, kind group, not controlled, the thread fields "
    "(id, title, kind, controlled, created_by, created, participants), the creator admin "
    "(also its own role), bob member (his own role too); erin added with role listen, fay with "
    "role admin, gus with none: listen, admin, member; kind 'direct': kind direct; kind "
    "'channel' and role 'owner': 400 INVALID_REQUEST, nothing created or added",
)
async def kinds_and_roles(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    created = await ctx.rest(
        "POST", "/v1/threads", token=alice.token, json={"participants": [bob.username]}
    )
    view = body(created, 201, "VXS-13.2-1", "a thread without kind")
    thread = str(view.get("id"))
    missing = THREAD_FIELDS - set(view)
    expect(not missing, "VXS-13.2-1", f"the thread lacks {sorted(missing)}: {view}")
    expect(
        view.get("kind") == "group" and view.get("controlled") is False,
        "VXS-13.2-1",
        f"a thread without kind is kind {view.get('kind')!r}, "
        f"controlled {view.get('controlled')!r}",
    )
    want = {alice.username: "admin", bob.username: "member"}
    expect(roles(view) == want, "VXS-13.2-1", f"roles {roles(view)}, expected {want}")
    for who, role in ((alice, "admin"), (bob, "member")):
        own = await read(ctx, who, f"/v1/threads/{thread}")
        expect(
            own.get("role") == role,
            "VXS-13.2-1",
            f"{who.username}'s own role in the thread is {own.get('role')!r}, expected {role!r}",
        )
    erin, fay, gus = [await ctx.register(n) for n in ("erin", "fay", "gus")]
    added: list[tuple[Account, str | None]] = [(erin, "listen"), (fay, "admin"), (gus, None)]
    for who, given in added:
        data: dict[str, Any] = {"usernames": [who.username]}
        if given is not None:
            data["role"] = given
        reply = await ctx.rest(
            "POST", f"/v1/threads/{thread}/participants", token=alice.token, json=data
        )
        got = roles(body(reply, 200, "VXS-13.2-1", f"adding {who.username} with role {given}"))
        expect(
            got.get(who.username) == (given or "member"),
            "VXS-13.2-1",
            f"added with role {given}, {who.username} is {got.get(who.username)!r}",
        )
    refused = await ctx.rest(
        "POST",
        f"/v1/threads/{thread}/participants",
        token=alice.token,
        json={"usernames": [ctx.carol.username], "role": "owner"},
    )
    expect_rest_error(refused, "INVALID_REQUEST", "VXS-13.2-1", "role 'owner'")
    now = roles(await read(ctx, alice, f"/v1/threads/{thread}"))
    expect(ctx.carol.username not in now, "VXS-13.2-1", "carol was added with role 'owner'")

    pair = await ctx.register("pair")
    direct = await ctx.rest(
        "POST",
        "/v1/threads",
        token=pair.token,
        json={"kind": "direct", "participants": [bob.username]},
    )
    expect(
        body(direct, 201, "VXS-13.2-1", "kind direct").get("kind") == "direct",
        "VXS-13.2-1",
        f"kind direct gave {direct.body}",
    )
    channel_id = f"{ctx.prefix}-k-{secrets.token_hex(6)}"
    channel = await ctx.rest(
        "POST",
        "/v1/threads",
        token=alice.token,
        json={"id": channel_id, "kind": "channel", "participants": [bob.username]},
    )
    expect_rest_error(channel, "INVALID_REQUEST", "VXS-13.2-1", "kind 'channel'")
    stored = await ctx.rest("GET", f"/v1/threads/{channel_id}", token=alice.token)
    expect_rest_error(stored, "THREAD_NOT_FOUND", "VXS-13.2-1", "the refused kind's thread")


@case(
    "13.2/direct",
    "a direct thread has exactly two participants, one per pair, which never change; it "
    "cannot be controlled",
    requirements=("VXS-13.2-2", "VXS-8-5"),
    accepts="pia creates a direct thread with quinn: 201, kind direct, exactly the two; pia "
    "again and quinn (naming pia): 201 with the same id; a direct thread naming nobody, or "
    "quinn and rex: 400 INVALID_REQUEST; adding rex, removing quinn, pia leaving: 403 "
    "FORBIDDEN; a direct thread created controlled, and PATCH controlled true: refused "
    "(FORBIDDEN or INVALID_REQUEST); the thread still has the two, not controlled",
)
async def direct(ctx: Context) -> None:
    pia, quinn, rex = [await ctx.register(n) for n in ("pia", "quinn", "rex")]

    async def create(who: Account, *others: Account, **extra: Any) -> RestReply:
        data = {"kind": "direct", "participants": [o.username for o in others], **extra}
        return await ctx.rest("POST", "/v1/threads", token=who.token, json=data)

    first = body(await create(pia, quinn), 201, "VXS-13.2-2", "pia's direct thread with quinn")
    thread = str(first.get("id"))
    pair = {pia.username, quinn.username}
    expect(
        first.get("kind") == "direct" and set(roles(first)) == pair,
        "VXS-13.2-2",
        f"the direct thread is {first}",
    )
    for who, other, label in ((pia, quinn, "pia again"), (quinn, pia, "quinn, naming pia")):
        again = body(await create(who, other), 201, "VXS-13.2-2", f"the direct thread, {label}")
        expect(
            again.get("id") == thread,
            "VXS-13.2-2",
            f"creating the direct thread ({label}) gave {again.get('id')!r}, not {thread!r}",
        )
    for label, others in (("naming nobody", ()), ("with quinn and rex", (quinn, rex))):
        reply = await create(pia, *others)
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.2-2", f"a direct thread {label}")
    changes: list[tuple[str, str, str, dict[str, Any] | None]] = [
        ("adding rex", "POST", f"/v1/threads/{thread}/participants", {"usernames": [rex.username]}),
        ("removing quinn", "DELETE", f"/v1/threads/{thread}/participants/{quinn.id}", None),
        ("pia leaving", "DELETE", f"/v1/threads/{thread}/participants/{pia.id}", None),
    ]
    for label, method, path, data in changes:
        reply = await ctx.rest(method, path, token=pia.token, json=data)
        expect_rest_error(reply, "FORBIDDEN", "VXS-13.2-2", f"{label} in a direct thread")
    controlled = await create(pia, rex, controlled=True)
    patch = await ctx.rest(
        "PATCH", f"/v1/threads/{thread}", token=pia.token, json={"controlled": True}
    )
    for label, reply in (("created controlled", controlled), ("PATCH controlled true", patch)):
        name = (reply.error or {}).get("name")
        expect(
            name in ("FORBIDDEN", "INVALID_REQUEST"),
            "VXS-13.2-2",
            f"a direct thread {label}: HTTP {reply.status} {shown(reply)!r}, expected a refusal",
        )
    now = await read(ctx, quinn, f"/v1/threads/{thread}")
    expect(
        set(roles(now)) == pair and now.get("controlled") is False,
        "VXS-13.2-2",
        f"after the refused changes the direct thread is {now}",
    )
    rexes = await read(ctx, rex, "/v1/threads")
    expect(
        not rexes.get("threads"),
        "VXS-13.2-2",
        f"rex is in threads after the refused direct threads: {rexes.get('threads')}",
    )


@case(
    "13.2/admins",
    "only an admin manages a group, which always keeps an admin; a listen participant reads, "
    "reacts and sends receipts but does not post; anyone may leave",
    requirements=("VXS-13.2-3", "VXS-13.2-4"),
    accepts="in alice's group with bob (member), erin (listen, added later) and fay (member, "
    "added later): bob changing erin's role, removing erin, changing the title or controlled: "
    "403 FORBIDDEN, nothing changed; alice changing the title: 200; alice making herself member "
    "(the last admin): 403 FORBIDDEN, still admin; erin posting: 403 FORBIDDEN, erin reading "
    "the messages, reacting and sending a read receipt: 200; erin leaving: 204; alice leaving: "
    "204 and bob (who joined first) is admin, fay still member",
)
async def admins(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    erin, fay = await ctx.register("erin"), await ctx.register("fay")
    thread = await group(ctx, alice, bob)
    await ctx.sleep(0.02)  # erin and fay join later than bob
    for who, role in ((erin, "listen"), (fay, "member")):
        need(
            await ctx.rest(
                "POST",
                f"/v1/threads/{thread}/participants",
                token=alice.token,
                json={"usernames": [who.username], "role": role},
            ),
            200,
            f"alice adding {who.username}",
        )
    before = await read(ctx, alice, f"/v1/threads/{thread}")
    refused: list[tuple[str, str, str, dict[str, Any] | None]] = [
        (
            "changing erin's role",
            "PATCH",
            f"/v1/threads/{thread}/participants/{erin.id}",
            {"role": "member"},
        ),
        ("removing erin", "DELETE", f"/v1/threads/{thread}/participants/{erin.id}", None),
        ("changing the title", "PATCH", f"/v1/threads/{thread}", {"title": "bob's"}),
        ("making the thread controlled", "PATCH", f"/v1/threads/{thread}", {"controlled": True}),
    ]
    for label, method, path, data in refused:
        reply = await ctx.rest(method, path, token=bob.token, json=data)
        expect_rest_error(reply, "FORBIDDEN", "VXS-13.2-3", f"bob, a member, {label}")
    after = await read(ctx, alice, f"/v1/threads/{thread}")
    expect(
        {k: after.get(k) for k in THREAD_FIELDS} == {k: before.get(k) for k in THREAD_FIELDS},
        "VXS-13.2-3",
        f"bob's refused changes changed the thread: {before} then {after}",
    )
    titled = await ctx.rest(
        "PATCH", f"/v1/threads/{thread}", token=alice.token, json={"title": "renamed"}
    )
    expect(
        body(titled, 200, "VXS-13.2-3", "alice changing the title").get("title") == "renamed",
        "VXS-13.2-3",
        f"alice's title change answered {titled.body}",
    )
    demoted = await ctx.rest(
        "PATCH",
        f"/v1/threads/{thread}/participants/{alice.id}",
        token=alice.token,
        json={"role": "member"},
    )
    expect_rest_error(demoted, "FORBIDDEN", "VXS-13.2-3", "the last admin making herself member")
    expect(
        roles(await read(ctx, alice, f"/v1/threads/{thread}")).get(alice.username) == "admin",
        "VXS-13.2-3",
        "the last admin is no longer admin",
    )

    msg = (await say(ctx, alice, thread, "for everyone"))["id"]
    listening = await ctx.rest(
        "POST",
        f"/v1/threads/{thread}/messages",
        token=erin.token,
        json={"kind": "text", "text": "may I?"},
    )
    expect_rest_error(listening, "FORBIDDEN", "VXS-13.2-4", "erin (listen) posting a text")
    allowed: list[tuple[str, str, str, dict[str, Any] | None]] = [
        ("reading the messages", "GET", f"/v1/threads/{thread}/messages", None),
        ("reading a message", "GET", f"/v1/messages/{msg}", None),
        ("reacting", "PUT", f"/v1/messages/{msg}/reactions/ok", None),
        ("sending a read receipt", "POST", f"/v1/messages/{msg}/receipts", {"kind": "read"}),
    ]
    for label, method, path, data in allowed:
        reply = await ctx.rest(method, path, token=erin.token, json=data)
        expect(
            200 <= reply.status < 300,
            "VXS-13.2-4",
            f"erin (listen) {label}: HTTP {reply.status} {shown(reply)!r}",
        )
    expect(
        message_ids(await read(ctx, alice, f"/v1/threads/{thread}/messages")) == [msg],
        "VXS-13.2-4",
        "erin's refused post is in the thread",
    )
    for who in (erin, alice):
        left = await ctx.rest(
            "DELETE", f"/v1/threads/{thread}/participants/{who.id}", token=who.token
        )
        expect(
            left.status == 204,
            "VXS-13.2-3",
            f"{who.username} leaving: HTTP {left.status} {shown(left)!r}",
        )
    now = roles(await read(ctx, bob, f"/v1/threads/{thread}"))
    want = {bob.username: "admin", fay.username: "member"}
    expect(
        now == want,
        "VXS-13.2-3",
        f"after the last admin left the roles are {now}, expected {want} (bob joined first)",
    )


@case(
    "13.2/controlled",
    "in a controlled thread only admins post, over REST and HTTP/2",
    requirements=("VXS-13.2-5", "VXS-10-4"),
    accepts="alice's group with bob and erin created controlled: bob's text: 403 FORBIDDEN, "
    "bob's upload over HTTP/2: HTTP 403 with one error frame 201 FORBIDDEN, neither stored; "
    "alice's (the admin's) text and upload: accepted; bob made admin posts and uploads; erin "
    "(a member) is still refused, and posts once PATCH controlled false",
)
async def controlled(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    erin = await ctx.register("erin")
    made = await ctx.rest(
        "POST",
        "/v1/threads",
        token=alice.token,
        json={"participants": [bob.username, erin.username], "controlled": True},
    )
    thread = str(body(made, 201, "VXS-13.2-5", "a controlled thread")["id"])
    expect(made.body.get("controlled") is True, "VXS-13.2-5", f"created as {made.body}")

    async def text_of(who: Account) -> RestReply:
        return await ctx.rest(
            "POST",
            f"/v1/threads/{thread}/messages",
            token=who.token,
            json={"kind": "text", "text": f"from {who.username}"},
        )

    async def upload_of(who: Account) -> tuple[str, Any]:
        msg = ctx.msg_id()
        reply = await ctx.upload_all(
            who.token, [ctx.open_frame(thread, msg), ctx.chunk(0), Close(chunks=1)]
        )
        return msg, reply

    expect_rest_error(await text_of(bob), "FORBIDDEN", "VXS-13.2-5", "bob's text")
    refused, reply = await upload_of(bob)
    expect_refusal(reply, "FORBIDDEN", "VXS-13.2-5", "bob's upload over HTTP/2")
    body(await text_of(alice), 201, "VXS-13.2-5", "alice's (the admin's) text")
    mine, reply = await upload_of(alice)
    expect(
        reply.status == 200 and reply.error is None,
        "VXS-13.2-5",
        f"alice's (the admin's) upload: HTTP {reply.status} {reply.frames}",
    )
    stored = await listed(ctx, alice, thread)
    expect(
        refused not in stored and mine in stored and len(stored) == 2,
        "VXS-13.2-5",
        f"the controlled thread holds {stored}",
    )
    need(
        await ctx.rest(
            "PATCH",
            f"/v1/threads/{thread}/participants/{bob.id}",
            token=alice.token,
            json={"role": "admin"},
        ),
        200,
        "making bob admin",
    )
    body(await text_of(bob), 201, "VXS-13.2-5", "bob's text as admin")
    _, reply = await upload_of(bob)
    expect(
        reply.status == 200 and reply.error is None,
        "VXS-13.2-5",
        f"bob's upload as admin: HTTP {reply.status} {reply.frames}",
    )
    expect_rest_error(await text_of(erin), "FORBIDDEN", "VXS-13.2-5", "erin's text (a member)")
    need(
        await ctx.rest(
            "PATCH", f"/v1/threads/{thread}", token=alice.token, json={"controlled": False}
        ),
        200,
        "PATCH controlled false",
    )
    body(await text_of(erin), 201, "VXS-13.2-5", "erin's text once not controlled")


@case(
    "13.2/mute-and-leave",
    "mute is the caller's own; a participant removed or gone sees the thread no longer",
    requirements=("VXS-13.2-6", "VXS-8-5"),
    accepts="bob's PUT .../mute: 200, muted true for him (GET of the thread and GET "
    "/v1/threads), false for alice; DELETE .../mute: muted false; erin removed by alice and bob "
    "after leaving: GET of the thread and of its messages 404 THREAD_NOT_FOUND and a message "
    "of it 404 MESSAGE_NOT_FOUND, each the same answer as for an unknown id, and GET "
    "/v1/threads no longer lists it",
)
async def mute_and_leave(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    erin = await ctx.register("erin")
    thread = await group(ctx, alice, bob, erin)
    msg = (await say(ctx, alice, thread, "before anyone leaves"))["id"]

    async def muted(who: Account) -> tuple[object, object]:
        one = (await read(ctx, who, f"/v1/threads/{thread}")).get("muted")
        every = (await read(ctx, who, "/v1/threads")).get("threads", [])
        entry = next((t for t in every if isinstance(t, dict) and t.get("id") == thread), {})
        return one, entry.get("muted")

    reply = await ctx.rest("PUT", f"/v1/threads/{thread}/mute", token=bob.token)
    expect(200 <= reply.status < 300, "VXS-13.2-6", f"PUT mute: {reply.status} {shown(reply)!r}")
    expect(await muted(bob) == (True, True), "VXS-13.2-6", f"bob's muted: {await muted(bob)}")
    expect(
        await muted(alice) == (False, False),
        "VXS-13.2-6",
        f"bob's mute muted the thread for alice too: {await muted(alice)}",
    )
    reply = await ctx.rest("DELETE", f"/v1/threads/{thread}/mute", token=bob.token)
    expect(200 <= reply.status < 300, "VXS-13.2-6", f"DELETE mute: {reply.status} {shown(reply)!r}")
    expect(
        await muted(bob) == (False, False),
        "VXS-13.2-6",
        f"after DELETE mute bob's muted is {await muted(bob)}",
    )

    removed = await ctx.rest(
        "DELETE", f"/v1/threads/{thread}/participants/{erin.id}", token=alice.token
    )
    expect(removed.status == 204, "VXS-13.2-6", f"alice removing erin: {removed.status}")
    left = await ctx.rest("DELETE", f"/v1/threads/{thread}/participants/{bob.id}", token=bob.token)
    expect(left.status == 204, "VXS-13.2-6", f"bob leaving: {left.status}")
    nowhere, nothing = f"{ctx.prefix}-nothread-{secrets.token_hex(6)}", ctx.msg_id()
    for who, how in ((erin, "removed"), (bob, "gone")):
        for pattern, hidden, unknown_id, name in (
            ("/v1/threads/{}", thread, nowhere, "THREAD_NOT_FOUND"),
            ("/v1/threads/{}/messages", thread, nowhere, "THREAD_NOT_FOUND"),
            ("/v1/messages/{}", msg, nothing, "MESSAGE_NOT_FOUND"),
        ):
            what = f"{who.username} ({how}) GET {pattern.format('<id>')}"
            reply = await ctx.rest("GET", pattern.format(hidden), token=who.token)
            expect_rest_error(reply, name, "VXS-13.2-6", what)
            unknown = await ctx.rest("GET", pattern.format(unknown_id), token=who.token)
            expect_unseen(
                rest_answer(reply, hidden), rest_answer(unknown, unknown_id), "VXS-13.2-6", what
            )
        every = (await read(ctx, who, "/v1/threads")).get("threads", [])
        expect(
            thread not in [t.get("id") for t in every if isinstance(t, dict)],
            "VXS-13.2-6",
            f"GET /v1/threads still lists the thread for {who.username} ({how})",
        )


# -- 13.3 Messages ---------------------------------------------------------------------------


@case(
    "13.3/post-kinds",
    "text, location and image messages are posted as closed messages; anything else is "
    "INVALID_REQUEST",
    requirements=("VXS-13.3-1", "VXS-8-5"),
    accepts="201 with the message (id, thread, sender, kind, codec, created, state closed, "
    "chunks, duration, to, recalled, forwarded_from, reactions and the kind's content) for a "
    "text of 1 and of 4000 characters, locations at (90, -180) and (-12.5, 33.25) with "
    "accuracy and label, an image of the sender's with a caption; bob reads each the same; "
    "400 INVALID_REQUEST for an empty, a blank, a 4001-character and a non-string text, "
    "latitude 90.5, longitude -180.5, a latitude string, a missing longitude, NaN and "
    "Infinity, a kind 'video' or 'audio', an image without media; an unknown image id or "
    "another account's image: the same refusal for both (INVALID_REQUEST or NOT_FOUND); "
    "no refused message is stored",
)
async def post_kinds(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    thread = await ctx.thread()
    image = await upload_image(ctx, alice, png(32, 20))
    good: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"kind": "text", "text": "x"}, {"text": "x"}),
        ({"kind": "text", "text": "é" * 4000}, {"text": "é" * 4000}),
        (
            {"kind": "location", "location": {"lat": 90, "lon": -180}},
            {"location": {"lat": 90, "lon": -180}},
        ),
        (
            {
                "kind": "location",
                "location": {"lat": -12.5, "lon": 33.25, "accuracy": 12.5, "label": "Here"},
            },
            {"location": {"lat": -12.5, "lon": 33.25, "accuracy": 12.5, "label": "Here"}},
        ),
    ]
    made: list[str] = []
    for content, want in good:
        reply = await ctx.rest(
            "POST", f"/v1/threads/{thread}/messages", token=alice.token, json=content
        )
        shown_content = {k: (v[:20] if isinstance(v, str) else v) for k, v in content.items()}
        message = body(reply, 201, "VXS-13.3-1", f"posting {shown_content}")
        missing = MESSAGE_FIELDS - set(message)
        expect(not missing, "VXS-13.3-1", f"the message lacks {sorted(missing)}: {message}")
        expect(
            message.get("kind") == content["kind"]
            and message.get("state") == "closed"
            and message.get("sender") == alice.id
            and message.get("thread") == thread
            and all(message.get(k) == v for k, v in want.items()),
            "VXS-13.3-1",
            f"posting {shown_content} answered {message}",
        )
        made.append(str(message["id"]))
        again = await read(ctx, bob, f"/v1/messages/{message['id']}")
        expect(
            all(again.get(k) == v for k, v in want.items())
            and again.get("kind") == content["kind"],
            "VXS-13.3-1",
            f"bob reads {again}",
        )
    photo = body(
        await ctx.rest(
            "POST",
            f"/v1/threads/{thread}/messages",
            token=alice.token,
            json={"kind": "image", "media": image["id"], "caption": "a caption"},
        ),
        201,
        "VXS-13.3-1",
        "an image message",
    )
    shown_image = photo.get("image") if isinstance(photo.get("image"), dict) else {}
    expect(
        photo.get("kind") == "image"
        and photo.get("state") == "closed"
        and shown_image.get("media") == image["id"]
        and shown_image.get("content_type") == "image/png"
        and (shown_image.get("width"), shown_image.get("height")) == (32, 20)
        and shown_image.get("caption") == "a caption"
        and {"url", "thumbnail"} <= set(shown_image),
        "VXS-13.3-1",
        f"the image message is {photo}",
    )
    made.append(str(photo["id"]))

    json_header = {"content-type": "application/json"}
    bad: list[tuple[str, dict[str, Any]]] = [
        ("an empty text", {"json": {"kind": "text", "text": ""}}),
        ("a blank text", {"json": {"kind": "text", "text": "   "}}),
        ("a text of 4001 characters", {"json": {"kind": "text", "text": "é" * 4001}}),
        ("a text that is a number", {"json": {"kind": "text", "text": 42}}),
        ("latitude 90.5", {"json": {"kind": "location", "location": {"lat": 90.5, "lon": 0}}}),
        (
            "longitude -180.5",
            {"json": {"kind": "location", "location": {"lat": 0, "lon": -180.5}}},
        ),
        (
            "a latitude string",
            {"json": {"kind": "location", "location": {"lat": "1", "lon": 0}}},
        ),
        ("no longitude", {"json": {"kind": "location", "location": {"lat": 1}}}),
        (
            "latitude NaN",
            {
                "content": b'{"kind": "location", "location": {"lat": NaN, "lon": 0}}',
                "headers": json_header,
            },
        ),
        (
            "longitude Infinity",
            {
                "content": b'{"kind": "location", "location": {"lat": 0, "lon": Infinity}}',
                "headers": json_header,
            },
        ),
        ("kind 'video'", {"json": {"kind": "video", "text": "x"}}),
        ("kind 'audio'", {"json": {"kind": "audio", "text": "x"}}),
        ("an image without media", {"json": {"kind": "image", "caption": "x"}}),
    ]
    for label, extra in bad:
        reply = await ctx.rest("POST", f"/v1/threads/{thread}/messages", token=alice.token, **extra)
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.3-1", label)
    bobs = await upload_image(ctx, bob, png(8, 8))
    unknown_id = ctx.msg_id()
    answers = []
    for label, media in (("bob's image", bobs["id"]), ("an unknown image id", unknown_id)):
        reply = await ctx.rest(
            "POST",
            f"/v1/threads/{thread}/messages",
            token=alice.token,
            json={"kind": "image", "media": media},
        )
        name = (reply.error or {}).get("name")
        expect(
            name in ("INVALID_REQUEST", "NOT_FOUND"),
            "VXS-13.3-1",
            f"an image message with {label}: HTTP {reply.status} {shown(reply)!r}",
        )
        answers.append(rest_answer(reply, media))
    expect_unseen(answers[0], answers[1], "VXS-13.3-1", "an image message with bob's image")
    stored = await listed(ctx, alice, thread)
    expect(
        stored == made,
        "VXS-13.3-1",
        f"the thread holds {len(stored)} messages, expected the {len(made)} accepted ones",
    )


@case(
    "13.3/idempotent",
    "a message, a reaction and a receipt posted again with the same id or content change "
    "nothing; other content under the same id is MESSAGE_CONFLICT",
    requirements=("VXS-13.3-2", "VXS-8-5"),
    accepts="a text posted twice with the same client id: 201 both times with the same "
    "message (same created), listed once, one message event on bob's timeline; the same id "
    "with another text or as a location: 409 MESSAGE_CONFLICT, the stored text unchanged; an "
    "id that is not an identifier: 400 INVALID_REQUEST; bob's reaction put twice counts once; "
    "his read receipt posted twice is listed once",
)
async def idempotent(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    thread = await ctx.thread()
    start = await sync_token(ctx, bob)
    msg = ctx.msg_id()
    content = {"id": msg, "kind": "text", "text": "once"}
    answers = []
    for attempt in ("first", "second"):
        reply = await ctx.rest(
            "POST", f"/v1/threads/{thread}/messages", token=alice.token, json=content
        )
        answers.append(body(reply, 201, "VXS-13.3-2", f"the {attempt} post of id {msg}"))
    first, second = answers
    expect(
        second.get("id") == msg and second.get("created") == first.get("created"),
        "VXS-13.3-2",
        f"the replay answered {second}, expected the stored {first}",
    )
    expect(
        await listed(ctx, alice, thread) == [msg],
        "VXS-13.3-2",
        f"the thread lists {await listed(ctx, alice, thread)} after the replay",
    )
    events, _ = await sync_events(ctx, bob, start)
    made = [e for e in events if e.get("type") == "message" and e.get("message") == msg]
    expect(
        len(made) == 1,
        "VXS-13.3-2",
        f"bob's timeline has {len(made)} message events for a message posted twice",
    )
    for label, other in (
        ("another text", {"id": msg, "kind": "text", "text": "twice"}),
        ("a location", {"id": msg, "kind": "location", "location": {"lat": 1, "lon": 2}}),
    ):
        reply = await ctx.rest(
            "POST", f"/v1/threads/{thread}/messages", token=alice.token, json=other
        )
        expect_rest_error(reply, "MESSAGE_CONFLICT", "VXS-13.3-2", f"the same id with {label}")
    stored = await read(ctx, bob, f"/v1/messages/{msg}")
    expect(stored.get("text") == "once", "VXS-13.3-2", f"the stored message is now {stored}")
    bad_id = await ctx.rest(
        "POST",
        f"/v1/threads/{thread}/messages",
        token=alice.token,
        json={"id": "not an id", "kind": "text", "text": "x"},
    )
    expect_rest_error(bad_id, "INVALID_REQUEST", "VXS-13.3-2", "a message id with spaces")
    for attempt in ("first", "second"):
        reply = await ctx.rest("PUT", f"/v1/messages/{msg}/reactions/ok", token=bob.token)
        got = body(reply, 200, "VXS-13.3-2", f"bob's {attempt} reaction")
        expect(
            got.get("reactions") == {"ok": 1},
            "VXS-13.3-2",
            f"bob's {attempt} reaction: {got}, expected {{'reactions': {{'ok': 1}}}}",
        )
        reply = await ctx.rest(
            "POST", f"/v1/messages/{msg}/receipts", token=bob.token, json={"kind": "read"}
        )
        expect(
            200 <= reply.status < 300,
            "VXS-13.3-2",
            f"bob's {attempt} read receipt: {reply.status} {shown(reply)!r}",
        )
    receipts = (await read(ctx, alice, f"/v1/messages/{msg}/receipts")).get("receipts", [])
    mine = [r for r in receipts if isinstance(r, dict) and r.get("account") == bob.id]
    expect(
        len(mine) == 1 and mine[0].get("kind") == "read",
        "VXS-13.3-2",
        f"bob's read receipt posted twice is listed as {mine}",
    )


@case(
    "13.3/directed",
    'a message "to" one participant is seen only by its sender and that participant',
    requirements=("VXS-13.3-3", "VXS-8-5"),
    accepts="alice's text to bob in a thread with erin: 201 with to naming bob; bob and alice "
    "read it and list it; for erin GET, reactions and receipts of it are 404 "
    "MESSAGE_NOT_FOUND, the same answer as for an unknown id, her listing leaves it out, her "
    "timeline has no event of it and her search does not find it (bob's does); to carol (no "
    "participant): 400 INVALID_REQUEST",
)
async def directed(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    erin = await ctx.register("erin")
    thread = await group(ctx, alice, bob, erin)
    start = await sync_token(ctx, erin)
    secret = word(ctx)
    everyone = (await say(ctx, alice, thread, f"{secret} for all"))["id"]
    reply = await ctx.rest(
        "POST",
        f"/v1/threads/{thread}/messages",
        token=alice.token,
        json={"kind": "text", "text": f"{secret} only for bob", "to": bob.username},
    )
    message = body(reply, 201, "VXS-13.3-3", "a text to bob")
    msg = str(message["id"])
    expect(
        message.get("to") in (bob.id, bob.username),
        "VXS-13.3-3",
        f"the directed message's to is {message.get('to')!r}, expected bob",
    )
    for who in (alice, bob):
        expect(
            await listed(ctx, who, thread) == [everyone, msg],
            "VXS-13.3-3",
            f"{who.username} lists {await listed(ctx, who, thread)}",
        )
        seen = await ctx.rest("GET", f"/v1/messages/{msg}", token=who.token)
        expect(seen.status == 200, "VXS-13.3-3", f"{who.username} reads it: {seen.status}")
    await unseen_message(ctx, erin, "/v1/messages/{}", msg, "VXS-13.3-3")
    await unseen_message(ctx, erin, "/v1/messages/{}/receipts", msg, "VXS-13.3-3")
    for method, path, data in (
        ("PUT", f"/v1/messages/{msg}/reactions/ok", None),
        ("POST", f"/v1/messages/{msg}/receipts", {"kind": "read"}),
    ):
        reply = await ctx.rest(method, path, token=erin.token, json=data)
        expect_rest_error(reply, "MESSAGE_NOT_FOUND", "VXS-13.3-3", f"erin's {method} {path}")
    expect(
        await listed(ctx, erin, thread) == [everyone],
        "VXS-13.3-3",
        f"erin lists {await listed(ctx, erin, thread)}",
    )
    events, _ = await sync_events(ctx, erin, start)
    about = [e.get("type") for e in events if e.get("message") == msg]
    expect(not about, "VXS-13.3-3", f"erin's timeline has events {about} of the message")
    for who, want in ((erin, {everyone}), (bob, {everyone, msg})):
        found = await read(ctx, who, f"/v1/search?q={secret}")
        ids = {r.get("message") for r in found.get("results", []) if isinstance(r, dict)}
        expect(
            ids == want,
            "VXS-13.3-3",
            f"{who.username}'s search finds {sorted(map(str, ids))}, expected {sorted(want)}",
        )
    outsider = await ctx.rest(
        "POST",
        f"/v1/threads/{thread}/messages",
        token=alice.token,
        json={"kind": "text", "text": "to carol", "to": ctx.carol.username},
    )
    expect_rest_error(outsider, "INVALID_REQUEST", "VXS-13.3-3", "a text to a non-participant")


@case(
    "13.3/recall",
    "only the sender recalls a message; its content goes, the message stays as recalled",
    requirements=("VXS-13.3-4",),
    accepts="bob recalling alice's text: 403 FORBIDDEN, unchanged; alice recalling it: 200 with "
    "recalled a time, the same id, thread, sender, kind and created, no text, no reactions "
    "(bob's is gone), and bob reads the same; nobody's search finds it; recalling again: 200 "
    "with the same recalled time; a recalled image message shows no image and bob gets 404 "
    "for the image; a recalled audio message is listened to with no chunk; a live one: 409 "
    "MESSAGE_LIVE and it stays",
)
async def recall(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    thread = await ctx.thread()
    secret = word(ctx)
    text = await say(ctx, alice, thread, f"{secret} regret")
    msg = str(text["id"])
    need(await ctx.rest("PUT", f"/v1/messages/{msg}/reactions/ok", token=bob.token), 200, "react")
    refused = await ctx.rest("DELETE", f"/v1/messages/{msg}", token=bob.token)
    expect_rest_error(refused, "FORBIDDEN", "VXS-13.3-4", "bob recalling alice's message")
    kept = await read(ctx, alice, f"/v1/messages/{msg}")
    expect(
        kept.get("text") == f"{secret} regret" and kept.get("recalled") is None,
        "VXS-13.3-4",
        f"bob's refused recall changed the message: {kept}",
    )
    reply = await ctx.rest("DELETE", f"/v1/messages/{msg}", token=alice.token)
    recalled = body(reply, 200, "VXS-13.3-4", "alice recalling her message")
    stays = ("id", "thread", "sender", "kind", "created")
    expect(
        type(recalled.get("recalled")) is int
        and all(recalled.get(k) == text.get(k) for k in stays)
        and not recalled.get("text")
        and not recalled.get("reactions")
        and secret not in str(recalled),
        "VXS-13.3-4",
        f"the recalled message is {recalled}",
    )
    seen = await read(ctx, bob, f"/v1/messages/{msg}")
    expect(
        seen.get("recalled") == recalled.get("recalled") and secret not in str(seen),
        "VXS-13.3-4",
        f"bob reads the recalled message as {seen}",
    )
    for who in (alice, bob):
        found = await read(ctx, who, f"/v1/search?q={secret}")
        expect(
            not found.get("results"),
            "VXS-13.3-4",
            f"{who.username}'s search still finds the recalled text: {found.get('results')}",
        )
    again = body(
        await ctx.rest("DELETE", f"/v1/messages/{msg}", token=alice.token),
        200,
        "VXS-13.3-4",
        "recalling again",
    )
    expect(
        again.get("recalled") == recalled.get("recalled"),
        "VXS-13.3-4",
        f"recalling again answered {again}",
    )

    image = await upload_image(ctx, alice, png(8, 8))
    photo = await post(ctx, alice, thread, {"kind": "image", "media": image["id"]})
    visible = await ctx.rest("GET", f"/v1/media/{image['id']}", token=bob.token)
    expect(visible.status == 200, "VXS-13.3-4", f"bob's GET of the image: {visible.status}")
    gone = body(
        await ctx.rest("DELETE", f"/v1/messages/{photo['id']}", token=alice.token),
        200,
        "VXS-13.3-4",
        "recalling the image message",
    )
    expect(not gone.get("image"), "VXS-13.3-4", f"the recalled image message shows {gone}")
    hidden = await ctx.rest("GET", f"/v1/media/{image['id']}", token=bob.token)
    expect(
        hidden.status == 404,
        "VXS-13.3-4",
        f"bob still gets the image of a recalled message: HTTP {hidden.status}",
    )

    voice = await ctx.talk(thread, 2)
    body(
        await ctx.rest("DELETE", f"/v1/messages/{voice}", token=alice.token),
        200,
        "VXS-13.3-4",
        "recalling a closed audio message",
    )
    heard = await ctx.listen_all(bob.token, voice)
    chunks = [f for f in heard.frames if isinstance(f, Chunk)]
    expect(
        not chunks,
        "VXS-13.3-4",
        f"a listen to the recalled audio message delivered {len(chunks)} chunks",
    )
    live = await ctx.talk(thread, 1, close=False)
    reply = await ctx.rest("DELETE", f"/v1/messages/{live}", token=alice.token)
    expect_rest_error(reply, "MESSAGE_LIVE", "VXS-13.3-4", "recalling a live message")
    still = await read(ctx, bob, f"/v1/messages/{live}")
    expect(
        still.get("recalled") is None and still.get("chunks") == 1,
        "VXS-13.3-4",
        f"the live message after the refused recall: {still}",
    )


@case(
    "13.3/forward",
    "a forward makes a new message of the caller's in the target thread, with the same content",
    requirements=("VXS-13.3-5",),
    accepts="bob forwarding alice's text, location, image and closed audio message into his "
    "thread with alice: 201, a new id (or the one he chose), that thread, bob the sender, "
    "forwarded_from the original, the same kind and content (the audio: the same chunks, "
    "packet for packet, when listened to); the same forward id again: the same message "
    "(created unchanged); a live message: 409 MESSAGE_LIVE; into a thread where bob only "
    "listens: 403 FORBIDDEN; into a thread he is not in: 404 THREAD_NOT_FOUND",
)
async def forward(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    source = await ctx.thread()
    target = await ctx.thread(alice, owner=bob)
    image = await upload_image(ctx, alice, png(8, 8))
    originals = [
        await say(ctx, alice, source, "pass it on"),
        await post(ctx, alice, source, {"kind": "location", "location": {"lat": 1, "lon": 2}}),
        await post(ctx, alice, source, {"kind": "image", "media": image["id"], "caption": "c"}),
    ]
    voice = await ctx.talk(source, 3)
    originals.append(await read(ctx, alice, f"/v1/messages/{voice}"))
    content = ("kind", "text", "location", "codec", "chunks", "duration")
    for original in originals:
        chosen = ctx.msg_id()
        answers = []
        for attempt in ("first", "second"):
            reply = await ctx.rest(
                "POST",
                f"/v1/messages/{original['id']}/forward",
                token=bob.token,
                json={"thread": target, "id": chosen},
            )
            answers.append(
                body(reply, 201, "VXS-13.3-5", f"the {attempt} forward of a {original['kind']}")
            )
        copy, replay = answers
        expect(
            copy.get("id") == chosen
            and copy.get("thread") == target
            and copy.get("sender") == bob.id
            and copy.get("forwarded_from") == original["id"]
            and all(copy.get(k) == original.get(k) for k in content),
            "VXS-13.3-5",
            f"forwarding {original} gave {copy}",
        )
        if original["kind"] == "image":
            expect(
                isinstance(copy.get("image"), dict)
                and copy["image"].get("media") == image["id"]
                and copy["image"].get("caption") == "c",
                "VXS-13.3-5",
                f"the forwarded image message is {copy}",
            )
        expect(
            replay.get("id") == chosen and replay.get("created") == copy.get("created"),
            "VXS-13.3-5",
            f"the same forward again answered {replay}, expected {copy}",
        )
    heard = [
        [f.packets for f in (await ctx.listen_all(alice.token, m)).frames if isinstance(f, Chunk)]
        for m in (voice, chosen)
    ]
    expect(
        len(heard[0]) == 3 and heard[0] == heard[1],
        "VXS-13.3-5",
        f"listened to, the forwarded audio message has {len(heard[1])} chunks and the "
        f"original {len(heard[0])} (of 3): {'the same' if heard[0] == heard[1] else 'they differ'}",
    )
    live = await ctx.talk(source, 1, close=False)
    reply = await ctx.rest(
        "POST", f"/v1/messages/{live}/forward", token=bob.token, json={"thread": target}
    )
    expect_rest_error(reply, "MESSAGE_LIVE", "VXS-13.3-5", "forwarding a live message")
    text_id = originals[0]["id"]
    listening = await ctx.listen_only_thread()
    reply = await ctx.rest(
        "POST", f"/v1/messages/{text_id}/forward", token=bob.token, json={"thread": listening}
    )
    expect_rest_error(reply, "FORBIDDEN", "VXS-13.3-5", "forwarding into a thread bob listens to")
    hers = await group(ctx, alice)
    reply = await ctx.rest(
        "POST", f"/v1/messages/{text_id}/forward", token=bob.token, json={"thread": hers}
    )
    expect_rest_error(reply, "THREAD_NOT_FOUND", "VXS-13.3-5", "forwarding into alice's thread")
    expect(
        await listed(ctx, alice, listening) == [] and await listed(ctx, alice, hers) == [],
        "VXS-13.3-5",
        "a refused forward was stored",
    )


@case(
    "13.3/images",
    "images are identified by their bytes, bounded, thumbnailed without metadata, and seen "
    "only by who may",
    requirements=("VXS-13.3-6", "VXS-8-5"),
    accepts="a 640x400 PNG carrying a text chunk, sent as application/octet-stream: 201 with "
    "id, content_type image/png, width 640, height 400, size, url, thumbnail; a 1x1 GIF sent as "
    "image/png: image/gif; the url gives the image (640x400), the thumbnail a PNG, JPEG, GIF or "
    "WebP of at most 320 pixels a side, wider than high, without the text chunk's bytes; 400 "
    "INVALID_REQUEST for bytes that are no image (sent as image/png), a truncated PNG, a PNG of "
    "48 megapixels and a body over 10 MiB; bob gets 404 NOT_FOUND for the image (as for an "
    "unknown id) until it is in a message of his thread, then 200 for it and its thumbnail; "
    "carol still 404",
)
async def images(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    secret = f"metadata-{secrets.token_hex(8)}".encode()
    data = png(640, 400, text=secret)
    reply = await ctx.rest(
        "POST",
        "/v1/media",
        token=alice.token,
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    media = body(reply, 201, "VXS-13.3-6", "a 640x400 PNG")
    missing = MEDIA_FIELDS - set(media)
    expect(not missing, "VXS-13.3-6", f"the image lacks {sorted(missing)}: {media}")
    expect(
        (media.get("content_type"), media.get("width"), media.get("height"), media.get("size"))
        == ("image/png", 640, 400, len(data)),
        "VXS-13.3-6",
        f"the PNG is described as {media}",
    )
    tiny = await ctx.rest(
        "POST", "/v1/media", token=alice.token, content=gif(), headers={"content-type": "image/png"}
    )
    described = body(tiny, 201, "VXS-13.3-6", "a 1x1 GIF sent as image/png")
    expect(
        described.get("content_type") == "image/gif",
        "VXS-13.3-6",
        f"a GIF sent as image/png is described as {described.get('content_type')!r}",
    )
    original = await ctx.rest("GET", str(media["url"]), token=alice.token)
    expect(
        original.status == 200 and image_size(original.content) == (640, 400),
        "VXS-13.3-6",
        f"GET of the url: HTTP {original.status}, an image of {image_size(original.content)}",
    )
    thumb = await ctx.rest("GET", str(media["thumbnail"]), token=alice.token)
    size = image_size(thumb.content)
    expect(
        thumb.status == 200 and sniff(thumb.content) in IMAGE_TYPES and size is not None,
        "VXS-13.3-6",
        f"GET of the thumbnail: HTTP {thumb.status} {thumb.content[:40]!r}",
    )
    assert size is not None
    expect(
        max(size) <= 320 and size[0] > size[1],
        "VXS-13.3-6",
        f"the thumbnail of a 640x400 image is {size[0]}x{size[1]}",
    )
    expect(
        secret not in thumb.content,
        "VXS-13.3-6",
        "the thumbnail carries the original's text chunk (metadata)",
    )
    truncated = png(64, 64)[:60]
    bad: list[tuple[str, bytes]] = [
        ("bytes that are no image", b"this is not an image, whatever its type says"),
        ("a truncated PNG", truncated),
        ("a PNG of 8000x6000 pixels (48 megapixels)", png(8000, 6000)),
        (
            "a body of 10 MiB and 1 byte",
            png(8, 8) + bytes(10 * 1024 * 1024 + 1 - len(png(8, 8))),
        ),
    ]
    for label, content in bad:
        reply = await ctx.rest(
            "POST",
            "/v1/media",
            token=alice.token,
            content=content,
            headers={"content-type": "image/png"},
        )
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.3-6", label)

    image_id = str(media["id"])
    unknown_id = ctx.msg_id()

    async def hidden_from(who: Account, when: str) -> None:
        for suffix in ("", "/thumbnail"):
            reply = await ctx.rest("GET", f"/v1/media/{image_id}{suffix}", token=who.token)
            what = f"{who.username}'s GET /v1/media/<id>{suffix} {when}"
            expect_rest_error(reply, "NOT_FOUND", "VXS-13.3-6", what)
            unknown = await ctx.rest("GET", f"/v1/media/{unknown_id}{suffix}", token=who.token)
            expect_unseen(
                rest_answer(reply, image_id),
                rest_answer(unknown, unknown_id),
                "VXS-13.3-6",
                what,
            )

    await hidden_from(bob, "before any message shows it")
    thread = await ctx.thread()
    await post(ctx, alice, thread, {"kind": "image", "media": image_id})
    for suffix in ("", "/thumbnail"):
        reply = await ctx.rest("GET", f"/v1/media/{image_id}{suffix}", token=bob.token)
        expect(
            reply.status == 200 and sniff(reply.content) in IMAGE_TYPES,
            "VXS-13.3-6",
            f"bob's GET /v1/media/<id>{suffix} once it is in his thread: HTTP {reply.status}",
        )
    await hidden_from(ctx.carol, "in a thread she is not in")


# -- 13.4 Reactions and receipts ------------------------------------------------------------


@case(
    "13.4/reactions",
    "a reaction is one per account and emoji; the counts say how many",
    requirements=("VXS-13.4-1", "VXS-8-5"),
    accepts="bob's and alice's 👍 and bob's 🎉 on alice's text: {reactions: {emoji: count}} "
    "after each, 👍 2 and 🎉 1 at the end, bob's second 👍 counting once; GET of the message "
    "shows the same counts; bob's DELETE of 👍: 👍 1, again: unchanged; an emoji of 32 "
    "characters: 200; of 33 characters, or with a space: 400 INVALID_REQUEST",
)
async def reactions(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    thread = await ctx.thread()
    msg = (await say(ctx, alice, thread, "react to me"))["id"]
    steps: list[tuple[Account, str, str, dict[str, int]]] = [
        (bob, "PUT", "👍", {"👍": 1}),
        (alice, "PUT", "👍", {"👍": 2}),
        (bob, "PUT", "👍", {"👍": 2}),
        (bob, "PUT", "🎉", {"👍": 2, "🎉": 1}),
        (bob, "DELETE", "👍", {"👍": 1, "🎉": 1}),
        (bob, "DELETE", "👍", {"👍": 1, "🎉": 1}),
    ]
    for who, method, emoji, want in steps:
        reply = await ctx.rest(method, f"/v1/messages/{msg}/reactions/{emoji}", token=who.token)
        got = body(reply, 200, "VXS-13.4-1", f"{who.username}'s {method} {emoji}")
        expect(
            got.get("reactions") == want,
            "VXS-13.4-1",
            f"{who.username}'s {method} {emoji} answered {got}, expected reactions {want}",
        )
        if method == "PUT" and emoji == "🎉":
            shown_now = (await read(ctx, alice, f"/v1/messages/{msg}")).get("reactions")
            expect(
                shown_now == want,
                "VXS-13.4-1",
                f"the message shows reactions {shown_now}, expected {want}",
            )
    long = await ctx.rest("PUT", f"/v1/messages/{msg}/reactions/{'x' * 32}", token=bob.token)
    body(long, 200, "VXS-13.4-1", "an emoji of 32 characters")
    for label, emoji in (("of 33 characters", "y" * 33), ("with a space", "a b")):
        reply = await ctx.rest("PUT", f"/v1/messages/{msg}/reactions/{emoji}", token=bob.token)
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.4-1", f"an emoji {label}")


@case(
    "13.4/receipts",
    "receipts: delivered for any message, heard for audio, read for the others; listed",
    requirements=("VXS-13.4-2", "VXS-8-5"),
    accepts="bob's delivered and read receipts on a text and delivered and heard on an audio "
    "message: 2xx; heard on the text, read on the audio, kind 'seen' and no kind: 400 "
    "INVALID_REQUEST; GET .../receipts lists exactly bob's two receipts of each, each "
    "{account, kind, at} with at an integer time",
)
async def receipts(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    thread = await ctx.thread()
    text = (await say(ctx, alice, thread, "did you read this?"))["id"]
    voice = await ctx.talk(thread, 1)
    for msg, kinds, wrong in (
        (text, ("delivered", "read"), "heard"),
        (voice, ("delivered", "heard"), "read"),
    ):
        for kind in kinds:
            reply = await ctx.rest(
                "POST", f"/v1/messages/{msg}/receipts", token=bob.token, json={"kind": kind}
            )
            expect(
                200 <= reply.status < 300,
                "VXS-13.4-2",
                f"a {kind} receipt: HTTP {reply.status} {shown(reply)!r}",
            )
        for label, data in ((wrong, {"kind": wrong}), ("seen", {"kind": "seen"}), ("no kind", {})):
            reply = await ctx.rest(
                "POST", f"/v1/messages/{msg}/receipts", token=bob.token, json=data
            )
            expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.4-2", f"a receipt {label}")
        found = (await read(ctx, alice, f"/v1/messages/{msg}/receipts")).get("receipts", [])
        got = sorted(
            (str(r.get("account")), str(r.get("kind")))
            for r in found
            if isinstance(r, dict) and type(r.get("at")) is int
        )
        want = sorted((bob.id, kind) for kind in kinds)
        expect(
            got == want and len(found) == 2,
            "VXS-13.4-2",
            f"GET .../receipts lists {found}, expected bob's {list(kinds)} with times",
        )


@case(
    "13.4/counts",
    "unread counts others' non-audio messages without a read receipt, unheard the audio ones",
    requirements=("VXS-13.4-3",),
    accepts="in alice's thread with bob: 3 texts, an image and 2 audio messages of alice's and "
    "a text of bob's give bob unread 4 and unheard 2, alice unread 1 and unheard 0 (GET of the "
    "thread and GET /v1/threads alike); after bob's read receipt on one text, a delivered "
    "receipt on another, alice recalling a third and bob's heard receipt on one audio message: "
    "bob unread 2, unheard 1; erin, added later, counts only what came after she joined, "
    "including a text to her, which bob does not count",
)
async def counts(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    erin = await ctx.register("erin")
    thread = await ctx.thread()
    texts = [(await say(ctx, alice, thread, f"text {i}"))["id"] for i in range(3)]
    image = await upload_image(ctx, alice, png(8, 8))
    await post(ctx, alice, thread, {"kind": "image", "media": image["id"]})
    voices = [await talk(ctx, alice, thread, 1) for _ in range(2)]
    await say(ctx, bob, thread, "bob's own")

    async def count(who: Account, want: tuple[int, int], when: str) -> None:
        one = await read(ctx, who, f"/v1/threads/{thread}")
        every = (await read(ctx, who, "/v1/threads")).get("threads", [])
        entry = next((t for t in every if isinstance(t, dict) and t.get("id") == thread), {})
        for label, view in (("GET of the thread", one), ("GET /v1/threads", entry)):
            got = (view.get("unread"), view.get("unheard"))
            expect(
                got == want,
                "VXS-13.4-3",
                f"{who.username}'s (unread, unheard) {when} in {label}: {got}, expected {want}",
            )

    await count(bob, (4, 2), "after 4 non-audio and 2 audio messages of alice's")
    await count(alice, (1, 0), "after bob's text")
    for msg, kind in ((texts[0], "read"), (texts[1], "delivered"), (voices[0], "heard")):
        need(
            await ctx.rest(
                "POST", f"/v1/messages/{msg}/receipts", token=bob.token, json={"kind": kind}
            ),
            200,
            f"bob's {kind} receipt",
        )
    need(await ctx.rest("DELETE", f"/v1/messages/{texts[2]}", token=alice.token), 200, "recall")
    await count(bob, (2, 1), "after a read receipt, a delivered receipt, a recall, a heard receipt")
    await ctx.sleep(0.02)
    need(
        await ctx.rest(
            "POST",
            f"/v1/threads/{thread}/participants",
            token=alice.token,
            json={"usernames": [erin.username]},
        ),
        200,
        "adding erin",
    )
    await ctx.sleep(0.02)
    await say(ctx, alice, thread, "welcome erin")
    await say(ctx, alice, thread, "just for erin", to=erin.username)
    await count(erin, (2, 0), "after joining late (a text and a text to her since)")
    await count(bob, (3, 1), "after a text to everyone and one to erin")


# -- 13.8 Search -------------------------------------------------------------------------------


@case(
    "13.8/search",
    "search finds the texts, captions, labels and titles the account sees that hold every word",
    requirements=("VXS-13.8-1", "VXS-8-5"),
    accepts="with a word W nobody else uses: bob's search for W finds, newest first, each "
    "{kind, thread, message, created, snippet}: 2 texts, an image caption and a location label "
    "in a thread with erin, a text to bob, a text in another thread of his, and the first "
    "thread's title; erin's finds the same but the text to bob and the other thread; carol's "
    "nothing; W without its last 2 letters finds the same (the last word is a prefix), but not "
    "as the first of two words; 'alpha W' finds the one text with both; W and an unknown word "
    "nothing; q empty or blank: 400 INVALID_REQUEST",
)
async def search(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    erin = await ctx.register("erin")
    key = word(ctx)
    thread = await group(ctx, alice, bob, erin, title=f"Club {key}")
    other = await ctx.thread()
    image = await upload_image(ctx, alice, png(8, 8))
    shared = [
        (await say(ctx, alice, thread, f"alpha {key} one"))["id"],
        (await say(ctx, bob, thread, f"beta {key} two"))["id"],
        (
            await post(
                ctx,
                alice,
                thread,
                {"kind": "image", "media": image["id"], "caption": f"{key} photo"},
            )
        )["id"],
        (
            await post(
                ctx,
                alice,
                thread,
                {"kind": "location", "location": {"lat": 1, "lon": 2, "label": f"{key} spot"}},
            )
        )["id"],
    ]
    to_bob = (await say(ctx, alice, thread, f"{key} for bob", to=bob.username))["id"]
    elsewhere = (await say(ctx, alice, other, f"{key} elsewhere"))["id"]
    await say(ctx, alice, thread, "nothing to find here")

    async def results(who: Account, q: str) -> list[dict[str, Any]]:
        found = await ctx.rest("GET", f"/v1/search?q={quote(q)}", token=who.token)
        page = body(found, 200, "VXS-13.8-1", f"{who.username}'s search for {q!r}")
        hits = [r for r in page.get("results", []) if isinstance(r, dict)]
        for hit in hits:
            missing = {"kind", "thread", "message", "created", "snippet"} - set(hit)
            expect(not missing, "VXS-13.8-1", f"a search result lacks {sorted(missing)}: {hit}")
        times = [h.get("created") for h in hits]
        expect(
            all(isinstance(t, int) for t in times)
            and times == sorted((int(t) for t in times if isinstance(t, int)), reverse=True),
            "VXS-13.8-1",
            f"the results of {q!r} are not newest first: created {times}",
        )
        return hits

    def found(hits: list[dict[str, Any]]) -> set[str]:
        return {str(h.get("message")) for h in hits if h.get("message")}

    def titles(hits: list[dict[str, Any]]) -> list[object]:
        return [h.get("thread") for h in hits if not h.get("message")]

    for who, want in (
        (bob, {*shared, to_bob, elsewhere}),
        (erin, set(shared)),
    ):
        hits = await results(who, key)
        expect(
            found(hits) == want and titles(hits) == [thread],
            "VXS-13.8-1",
            f"{who.username}'s search finds messages {sorted(found(hits))} and thread titles "
            f"{titles(hits)}, expected {sorted(want)} and [{thread}]",
        )
        prefix = await results(who, key[:-2])
        expect(
            found(prefix) == want,
            "VXS-13.8-1",
            f"{who.username}'s search for the prefix {key[:-2]!r} finds {sorted(found(prefix))}",
        )
    outsider = await results(ctx.carol, key)
    expect(not outsider, "VXS-13.8-1", f"carol's search finds {outsider}")
    both = await results(bob, f"alpha {key}")
    expect(
        found(both) == {shared[0]} and not titles(both),
        "VXS-13.8-1",
        f"'alpha W' finds {both}, expected only the text with both words",
    )
    for q in (f"{key} zz{secrets.token_hex(6)}", f"{key[:-2]} alpha"):
        none = await results(bob, q)
        expect(not none, "VXS-13.8-1", f"a search for {q!r} finds {none}, expected nothing")
    for q in ("", "   "):
        reply = await ctx.rest("GET", f"/v1/search?q={quote(q)}", token=bob.token)
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.8-1", f"q={q!r}")


@case(
    "13.8/pages",
    "search results come in pages of limit; next is the cursor of the following page, null on "
    "the last",
    requirements=("VXS-13.8-2", "VXS-8-5"),
    accepts="5 texts with a word W: limit 2 gives pages of 2, 2 and 1 results, next a string "
    "on the first two and null on the third, each text once, newest first across the pages; "
    "26 texts with another word: 20 results without limit (and a next), 26 with limit 100 "
    "(next null); limit 0 and 101: 400 INVALID_REQUEST",
)
async def pages(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    thread = await ctx.thread()
    key = word(ctx)
    made = [(await say(ctx, alice, thread, f"{key} number {i}"))["id"] for i in range(5)]

    async def page(q: str, **params: Any) -> dict[str, Any]:
        query = "&".join(f"{k}={quote(str(v))}" for k, v in {"q": q, **params}.items())
        reply = await ctx.rest("GET", f"/v1/search?{query}", token=bob.token)
        found: dict[str, Any] = body(reply, 200, "VXS-13.8-2", f"GET /v1/search?{query}")
        return found

    seen: list[str] = []
    times: list[int] = []
    sizes: list[int] = []
    cursors: list[object] = []
    cursor: object = None
    for _ in range(3):
        extra = {"limit": 2} if cursor is None else {"limit": 2, "before": cursor}
        got = await page(key, **extra)
        hits = [r for r in got.get("results", []) if isinstance(r, dict)]
        sizes.append(len(hits))
        seen += [str(h.get("message")) for h in hits]
        times += [int(h.get("created") or 0) for h in hits]
        cursor = got.get("next")
        cursors.append(cursor)
        if cursor is None:
            break
    expect(
        sizes == [2, 2, 1],
        "VXS-13.8-2",
        f"5 results in pages of limit 2 came as pages of {sizes}",
    )
    expect(
        isinstance(cursors[0], str) and isinstance(cursors[1], str) and cursors[-1] is None,
        "VXS-13.8-2",
        f"the pages' next cursors were {cursors}, expected two strings then null",
    )
    expect(
        sorted(seen) == sorted(made) and times == sorted(times, reverse=True),
        "VXS-13.8-2",
        f"the pages gave {seen} (created {times}), expected each of {made} once, newest first",
    )
    many = word(ctx)
    for i in range(26):
        await say(ctx, alice, thread, f"{many} {i}")
    default = await page(many)
    expect(
        len(default.get("results", [])) == 20 and isinstance(default.get("next"), str),
        "VXS-13.8-2",
        f"without limit: {len(default.get('results', []))} results and next "
        f"{default.get('next')!r}, expected 20 and a cursor",
    )
    every = await page(many, limit=100)
    expect(
        len(every.get("results", [])) == 26 and every.get("next") is None,
        "VXS-13.8-2",
        f"limit 100: {len(every.get('results', []))} results and next {every.get('next')!r}, "
        "expected 26 and null",
    )
    for limit in (0, 101):
        reply = await ctx.rest("GET", f"/v1/search?q={key}&limit={limit}", token=bob.token)
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.8-2", f"limit {limit}")


# -- the timeline, for the cases above and timeline.py -----------------------------------------


async def sync_events(
    ctx: Context, who: Account, since: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Every event of ``who`` after ``since``, page by page; the events and the last next."""
    events: list[dict[str, Any]] = []
    token = since
    for _ in range(1000):
        path = "/v1/sync?limit=1000" + (f"&since={quote(token)}" if token is not None else "")
        page = need(await ctx.rest("GET", path, token=who.token), 200, f"GET {path}")
        events += [e for e in page.get("events", []) if isinstance(e, dict)]
        token = str(page.get("next"))
        if not page.get("more"):
            return events, token
    raise TransportFailure("GET /v1/sync kept answering more: true")


async def sync_token(ctx: Context, who: Account) -> str:
    """The token after the last event of ``who``'s timeline."""
    return (await sync_events(ctx, who))[1]


def quote(text: str) -> str:
    """``text`` for a query string or a path segment."""
    return url_quote(text, safe="")
