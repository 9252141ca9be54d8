"""Section 8: accounts, sessions and authorization over the REST surface.

Authentication and authorization are checked on every endpoint of the table in section 8
and on the streaming ones (HTTP/2 here, WebSocket in ``websocket.py``), each time with
a resource that exists, so a server that checks existence before the token, or skips the
participant check, answers something else than the refusal the case expects. To a
non-participant a thread or message must look exactly like one that does not exist
(VXS-8-2): the cases compare its answer with the one an unknown id gets.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any, Final

from voxer_stream.wire import Ack, Close, Closed, End

from ..case import case, expect, note
from ..context import Account, Context, RestReply
from ..net import Reply, TransportFailure, listen_path, open_exchange
from .errors import (
    expect_refusal,
    expect_rest_error,
    expect_unseen,
    rest_answer,
    stream_answer,
)

THIRTY_DAYS_MS: Final = 30 * 24 * 3600 * 1000
DAY_MS: Final = 24 * 3600 * 1000


def endpoints(
    thread: str, msg: str, newcomer: str, new_thread: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """Every non-public REST endpoint of section 8, on resources that exist."""
    return [
        ("GET", "/v1/accounts/me", {}),
        ("POST", "/v1/threads", {"json": {"id": new_thread, "participants": []}}),
        ("GET", "/v1/threads", {}),
        ("GET", f"/v1/threads/{thread}", {}),
        ("POST", f"/v1/threads/{thread}/participants", {"json": {"usernames": [newcomer]}}),
        ("GET", f"/v1/threads/{thread}/messages", {}),
        ("GET", f"/v1/messages/{msg}", {}),
        ("GET", f"/v1/messages/{msg}/audio.opus", {}),
        ("DELETE", "/v1/sessions/current", {}),
    ]


def usernames(thread: Any) -> set[str]:
    """The usernames of a thread's JSON form."""
    people = thread.get("participants") if isinstance(thread, dict) else None
    if not isinstance(people, list):
        return set()
    return {str(p.get("username")) for p in people if isinstance(p, dict)}


async def participants(ctx: Context, thread: str) -> set[str]:
    reply = await ctx.rest("GET", f"/v1/threads/{thread}", token=ctx.alice.token)
    if reply.status != 200:
        raise TransportFailure(f"alice cannot read her own thread: {reply.status} {reply.body}")
    return usernames(reply.body)


async def listen_with(ctx: Context, msg: str, headers: tuple[tuple[str, str], ...]) -> Reply:
    """A whole listen sent with exactly ``headers`` (no token of the suite's own)."""
    async with open_exchange(
        ctx.url, "GET", listen_path(msg), headers=headers, end_stream=True, patience=ctx.timeout
    ) as exchange:
        return await exchange.reply()


def random_name(length: int, alphabet: str = string.ascii_lowercase + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


# -- VXS-8-1: authentication ------------------------------------------------------------


@case(
    "8/unauthenticated-rest",
    "every non-public REST request without a valid bearer token is UNAUTHENTICATED",
    requirements=("VXS-8-1", "VXS-8-5"),
    accepts="for every endpoint of section 8 but health, accounts and sessions, and each of: "
    "no Authorization, an unknown token, a mangled token, an empty Bearer, a Basic "
    "credential: HTTP 401 with a JSON error 200 UNAUTHENTICATED; nothing changes. "
    "GET /v1/health answers 200 without a token",
)
async def unauthenticated_rest(ctx: Context) -> None:
    thread = await ctx.thread()
    msg = await ctx.talk(thread, 1)
    outsider = ctx.carol.username
    bad: list[tuple[str, dict[str, str]]] = [
        ("no Authorization header", {}),
        ("an unknown token", {"authorization": "Bearer " + secrets.token_urlsafe(32)}),
        ("alice's token with one more character", {"authorization": f"Bearer {ctx.alice.token}x"}),
        ("'Bearer' and no token", {"authorization": "Bearer"}),
        ("a Basic credential", {"authorization": "Basic YWxpY2U6c2VjcmV0"}),
    ]
    new_thread = f"{ctx.prefix}-n-{secrets.token_hex(6)}"
    for method, path, extra in endpoints(thread, msg, outsider, new_thread):
        for label, headers in bad:
            reply = await ctx.rest(method, path, headers=headers, **extra)
            expect_rest_error(reply, "UNAUTHENTICATED", "VXS-8-1", f"{method} {path} with {label}")
    expect(
        outsider not in await participants(ctx, thread),
        "VXS-8-1",
        "an unauthenticated POST .../participants added a participant",
    )
    created = await ctx.rest("GET", f"/v1/threads/{new_thread}", token=ctx.alice.token)
    expect_rest_error(created, "THREAD_NOT_FOUND", "VXS-8-1", "a thread created without a token")
    me = await ctx.rest("GET", "/v1/accounts/me", token=ctx.alice.token)
    expect(me.status == 200, "VXS-8-1", f"alice's token stopped working: {me.status} {me.body}")
    health = await ctx.rest("GET", "/v1/health")
    expect(
        health.status == 200 and isinstance(health.body, dict) and "status" in health.body,
        "VXS-8-1",
        f"GET /v1/health without a token: {health.status} {health.body}",
    )


@case(
    "8/unauthenticated-streams",
    "an upload or listen without a valid bearer token is UNAUTHENTICATED",
    requirements=("VXS-8-1", "VXS-10-4"),
    accepts="POST /v1/upload and GET .../listen with no token, an unknown token or a Basic "
    "credential: HTTP 401, application/cbor-seq, one error frame 200 UNAUTHENTICATED; "
    "the refused upload stores nothing",
)
async def unauthenticated_streams(ctx: Context) -> None:
    thread = await ctx.thread()
    closed = await ctx.talk(thread, 1)
    live = await ctx.talk(thread, 1, close=False)
    cases: list[tuple[str, tuple[tuple[str, str], ...]]] = [
        ("no token", ()),
        ("an unknown token", (("authorization", f"Bearer {secrets.token_urlsafe(32)}"),)),
        ("a mangled token", (("authorization", f"Bearer {ctx.alice.token}x"),)),
        ("a Basic credential", (("authorization", "Basic YWxpY2U6c2VjcmV0"),)),
    ]
    for label, auth in cases:
        msg = ctx.msg_id()
        async with ctx.upload(
            None, headers=(("content-type", "application/cbor-seq"), *auth)
        ) as ex:
            await ex.send(ctx.open_frame(thread, msg), ctx.chunk(0), Close(chunks=1))
            await ex.end()
            reply = await ex.reply()
        expect_refusal(reply, "UNAUTHENTICATED", "VXS-8-1", f"upload with {label}")
        stored = await ctx.rest("GET", f"/v1/messages/{msg}", token=ctx.alice.token)
        expect(
            stored.status == 404,
            "VXS-8-1",
            f"the refused upload with {label} created message {msg}: {stored.status}",
        )
        for target in (closed, live):
            reply = await listen_with(ctx, target, auth)
            expect_refusal(reply, "UNAUTHENTICATED", "VXS-8-1", f"listen with {label}")


# -- VXS-8-2: authorization -----------------------------------------------------------


@case(
    "8/outsider-rest",
    "to a non-participant a thread, its messages and their audio do not exist; only an admin "
    "adds participants",
    requirements=("VXS-8-2", "VXS-8-5", "VXS-13.2-3"),
    accepts="carol (no participant) gets HTTP 404 with a JSON error, 300 THREAD_NOT_FOUND on GET "
    "of the thread and of its messages and on POST participants (which adds nobody), 301 "
    "MESSAGE_NOT_FOUND on GET of a live and a closed message and of their audio.opus; each the "
    "same answer (status, code, name, detail but for the id) as for an id nobody created; GET "
    "/v1/threads does not list the thread for her; bob (a participant) gets 200 on the same "
    "reads; bob (a member) adding a participant is 403 FORBIDDEN and adds nobody, alice (the "
    "creator, admin) adding one is 200",
)
async def outsider_rest(ctx: Context) -> None:
    thread = await ctx.thread()
    closed = await ctx.talk(thread, 2)
    live = await ctx.talk(thread, 1, close=False)
    nowhere = f"{ctx.prefix}-nothread-{secrets.token_hex(6)}"
    nothing = ctx.msg_id()
    reads = [
        ("/v1/threads/{}", thread, nowhere, "THREAD_NOT_FOUND"),
        ("/v1/threads/{}/messages", thread, nowhere, "THREAD_NOT_FOUND"),
        ("/v1/messages/{}", closed, nothing, "MESSAGE_NOT_FOUND"),
        ("/v1/messages/{}", live, nothing, "MESSAGE_NOT_FOUND"),
        ("/v1/messages/{}/audio.opus", closed, nothing, "MESSAGE_NOT_FOUND"),
        ("/v1/messages/{}/audio.opus", live, nothing, "MESSAGE_NOT_FOUND"),
    ]
    for pattern, hidden, unknown_id, name in reads:
        path = pattern.format(hidden)
        reply = await ctx.rest("GET", path, token=ctx.carol.token)
        expect_rest_error(reply, name, "VXS-8-2", f"carol's GET {path}")
        unknown = await ctx.rest("GET", pattern.format(unknown_id), token=ctx.carol.token)
        expect_unseen(
            rest_answer(reply, hidden),
            rest_answer(unknown, unknown_id),
            "VXS-8-2",
            f"carol's GET {path}",
        )
        ok = await ctx.rest("GET", path, token=ctx.bob.token)
        expect(ok.status == 200, "VXS-8-2", f"bob, a participant, got {ok.status} on GET {path}")
    for names in ([ctx.carol.username], [ctx.alice.username]):
        reply = await ctx.rest(
            "POST",
            f"/v1/threads/{thread}/participants",
            token=ctx.carol.token,
            json={"usernames": names},
        )
        expect_rest_error(reply, "THREAD_NOT_FOUND", "VXS-8-2", f"carol adding {names}")
        unknown = await ctx.rest(
            "POST",
            f"/v1/threads/{nowhere}/participants",
            token=ctx.carol.token,
            json={"usernames": names},
        )
        expect_unseen(
            rest_answer(reply, thread),
            rest_answer(unknown, nowhere),
            "VXS-8-2",
            f"carol adding {names} to alice's thread",
        )
    expect(
        ctx.carol.username not in await participants(ctx, thread),
        "VXS-8-2",
        "carol is a participant after her refused POST .../participants",
    )
    listing = await ctx.rest("GET", "/v1/threads", token=ctx.carol.token)
    expect(listing.status == 200, "VXS-8-2", f"carol's GET /v1/threads: {listing.status}")
    ids = [t.get("id") for t in (listing.body or {}).get("threads", []) if isinstance(t, dict)]
    expect(thread not in ids, "VXS-8-2", "GET /v1/threads lists a thread carol is not in")
    # Bob sees the thread, but as a member he may not add anyone; alice, its admin, may.
    erin = await ctx.register("erin")
    refused = await ctx.rest(
        "POST",
        f"/v1/threads/{thread}/participants",
        token=ctx.bob.token,
        json={"usernames": [erin.username]},
    )
    expect_rest_error(refused, "FORBIDDEN", "VXS-13.2-3", "bob, a member, adding a participant")
    expect(
        erin.username not in await participants(ctx, thread),
        "VXS-13.2-3",
        "erin is a participant after bob's refused POST .../participants",
    )
    added = await ctx.rest(
        "POST",
        f"/v1/threads/{thread}/participants",
        token=ctx.alice.token,
        json={"usernames": [erin.username]},
    )
    expect(
        added.status == 200 and erin.username in usernames(added.body),
        "VXS-13.2-3",
        f"alice, the thread's admin, could not add a participant: {added.status} {added.body}",
    )


@case(
    "8/outsider-upload",
    "a non-participant's upload into a thread is answered as for a thread that does not "
    "exist, over HTTP/2",
    requirements=("VXS-8-2", "VXS-10-4"),
    accepts="carol's open of a new message, and of alice's live message, in alice's thread: "
    "HTTP 404, one error frame 300 THREAD_NOT_FOUND, the same answer (status, frames, code, "
    "name, detail but for the ids) as her open into a thread id nobody created; the new "
    "message does not exist afterwards and alice's upload of the live message goes on "
    "undisturbed (ack, closed)",
)
async def outsider_upload(ctx: Context) -> None:
    thread = await ctx.thread()
    new = ctx.msg_id()

    async def unseen(reply: Reply, msg: str, what: str) -> None:
        expect_refusal(reply, "THREAD_NOT_FOUND", "VXS-8-2", what)
        nowhere, other = f"{ctx.prefix}-nothread-{secrets.token_hex(6)}", ctx.msg_id()
        unknown = await ctx.upload_all(
            ctx.carol.token, [ctx.open_frame(nowhere, other), ctx.chunk(0), Close(chunks=1)]
        )
        expect_unseen(
            stream_answer(reply, thread, msg),
            stream_answer(unknown, nowhere, other),
            "VXS-8-2",
            what,
        )

    reply = await ctx.upload_all(
        ctx.carol.token, [ctx.open_frame(thread, new), ctx.chunk(0), Close(chunks=1)]
    )
    await unseen(reply, new, "carol's upload into alice's thread")
    stored = await ctx.rest("GET", f"/v1/messages/{new}", token=ctx.alice.token)
    expect(stored.status == 404, "VXS-8-2", f"carol's refused upload created {new}")

    live = ctx.msg_id()
    async with ctx.upload(ctx.alice.token) as alice:
        await alice.send(ctx.open_frame(thread, live), ctx.chunk(0))
        await ctx.wait_acked(alice, 0)
        reply = await ctx.upload_all(
            ctx.carol.token, [ctx.open_frame(thread, live), ctx.chunk(1, salt=b"carol")]
        )
        await unseen(reply, live, "carol's open of alice's live message")
        await alice.send(ctx.chunk(1), Close(chunks=2))
        rest = await alice.frames()
    expect(
        rest and isinstance(rest[-1], Closed) and rest[-1].chunks == 2,
        "VXS-8-2",
        f"alice's upload after carol's refused open: {rest}",
    )
    expect(
        all(isinstance(f, Ack | Closed) for f in rest),
        "VXS-8-2",
        f"alice's upload got {rest} after carol's refused open",
    )


@case(
    "8/outsider-listen",
    "a non-participant's listen over HTTP/2 is answered as for a message that does not exist",
    requirements=("VXS-8-2", "VXS-10-4"),
    accepts="carol's GET .../listen of a closed and of a live message of alice's thread, with "
    "and without query parameters: HTTP 404, one error frame 301 MESSAGE_NOT_FOUND, no chunk, "
    "the same answer (status, frames, code, name, detail but for the id) as for a message id "
    "nobody used with the same parameters",
)
async def outsider_listen(ctx: Context) -> None:
    thread = await ctx.thread()
    closed = await ctx.talk(thread, 2)
    live = await ctx.talk(thread, 1, close=False)
    for msg in (closed, live):
        for params in ({}, {"from_seq": 0}, {"live_edge": 1}):
            what = f"carol's listen with {params or 'no'} parameters"
            reply = await ctx.listen_all(ctx.carol.token, msg, **params)
            expect_refusal(reply, "MESSAGE_NOT_FOUND", "VXS-8-2", what)
            other = ctx.msg_id()
            unknown = await ctx.listen_all(ctx.carol.token, other, **params)
            expect_unseen(stream_answer(reply, msg), stream_answer(unknown, other), "VXS-8-2", what)
    bob = await ctx.listen_all(ctx.bob.token, closed)
    expect(
        bob.status == 200 and isinstance(bob.frames[-1:][0] if bob.frames else None, End),
        "VXS-8-2",
        f"bob, a participant, could not listen: {bob.status} {bob.frames}",
    )


# -- VXS-8-3, VXS-8-4: sessions -------------------------------------------------------


@case(
    "8/logout",
    "a session expires about 30 days after login and ends at logout",
    requirements=("VXS-8-3", "VXS-8-5", "VXS-10-4"),
    accepts="login: 201 with expires an integer 30 days (+-1 day) after now; DELETE "
    "/v1/sessions/current: 204; then the token is UNAUTHENTICATED (HTTP 401) on REST, "
    "upload and listen, and a second logout is UNAUTHENTICATED too",
)
async def logout(ctx: Context) -> None:
    dave = await ctx.register("dave")
    before = int(time.time() * 1000)
    login = await ctx.rest(
        "POST", "/v1/sessions", json={"username": dave.username, "password": dave.password}
    )
    after = int(time.time() * 1000)
    expect(login.status == 201, "VXS-8-3", f"login: {login.status} {login.body}")
    body = login.body if isinstance(login.body, dict) else {}
    expires, token = body.get("expires"), body.get("token")
    expect(type(expires) is int, "VXS-8-3", f"expires {expires!r} is not an integer (ms)")
    assert isinstance(expires, int) and isinstance(token, str)
    expect(
        before + THIRTY_DAYS_MS - DAY_MS <= expires <= after + THIRTY_DAYS_MS + DAY_MS,
        "VXS-8-3",
        f"expires is {(expires - before) / DAY_MS:.2f} days after the login, expected 30",
    )
    thread = await ctx.thread(Account(dave.username, "", token, dave.id))
    msg = await ctx.talk(thread, 1)
    me = await ctx.rest("GET", "/v1/accounts/me", token=token)
    expect(me.status == 200, "VXS-8-3", f"the new token does not work: {me.status}")
    listened = await ctx.listen_all(token, msg)
    expect(listened.status == 200, "VXS-8-3", f"the new token cannot listen: {listened.status}")

    out = await ctx.rest("DELETE", "/v1/sessions/current", token=token)
    expect(out.status == 204, "VXS-8-3", f"logout: {out.status} {out.body}, expected 204")
    again = await ctx.rest("GET", "/v1/accounts/me", token=token)
    expect_rest_error(again, "UNAUTHENTICATED", "VXS-8-3", "GET /v1/accounts/me after logout")
    reads = await ctx.rest("GET", f"/v1/threads/{thread}", token=token)
    expect_rest_error(reads, "UNAUTHENTICATED", "VXS-8-3", "GET of a thread after logout")
    twice = await ctx.rest("DELETE", "/v1/sessions/current", token=token)
    expect_rest_error(twice, "UNAUTHENTICATED", "VXS-8-3", "a second logout with the token")
    listened = await ctx.listen_all(token, msg)
    expect_refusal(listened, "UNAUTHENTICATED", "VXS-8-3", "listen after logout")
    upload = await ctx.upload_all(token, [ctx.open_frame(thread, ctx.msg_id()), Close(chunks=0)])
    expect_refusal(upload, "UNAUTHENTICATED", "VXS-8-3", "upload after logout")
    note("expiry itself (30 days) cannot be waited for; the expires field is checked")


@case(
    "8/secrets",
    "what is observable of token and password storage: fresh tokens, no password echoed",
    requirements=("VXS-8-4",),
    accepts="two logins of one account give two different tokens, both valid; no response "
    "(registration, login, accounts/me, thread) contains the password. That the server "
    "stores only a SHA-256 of tokens and an argon2 hash of passwords is not observable",
)
async def secrets_not_echoed(ctx: Context) -> None:
    username = f"{ctx.prefix}-s-{secrets.token_hex(3)}"
    password = "pw-" + secrets.token_hex(12)
    replies: list[RestReply] = []
    replies.append(
        await ctx.rest("POST", "/v1/accounts", json={"username": username, "password": password})
    )
    expect(replies[0].status == 201, "VXS-8-4", f"registration: {replies[0].status}")
    tokens = []
    for _ in range(2):
        login = await ctx.rest(
            "POST", "/v1/sessions", json={"username": username, "password": password}
        )
        expect(login.status == 201, "VXS-8-4", f"login: {login.status} {login.body}")
        replies.append(login)
        tokens.append(str(login.body["token"]))
    expect(tokens[0] != tokens[1], "VXS-8-4", "two logins gave the same token")
    for token in tokens:
        expect(password not in token, "VXS-8-4", "a token contains the password")
        me = await ctx.rest("GET", "/v1/accounts/me", token=token)
        expect(me.status == 200, "VXS-8-4", f"a token of a second login does not work: {me.status}")
        replies.append(me)
    replies.append(
        await ctx.rest(
            "POST",
            "/v1/threads",
            token=tokens[0],
            json={"title": "t", "participants": [ctx.alice.username]},
        )
    )
    for reply in replies:
        expect(
            password.encode() not in reply.content,
            "VXS-8-4",
            f"a response echoes the password: {reply.content[:200]!r}",
        )
    note("VXS-8-4 (hashes only in storage) is not observable over the wire")


# -- VXS-8-5: errors ---------------------------------------------------------------


@case(
    "8/invalid-request",
    "an invalid REST body is INVALID_REQUEST; wrong credentials and a taken name have their own",
    requirements=("VXS-8-5",),
    accepts="HTTP 400 with a JSON error 104 INVALID_REQUEST for a body that is not JSON, a JSON "
    "array, a missing or non-text field, a non-list participants or usernames; 401 "
    "INVALID_CREDENTIALS for a wrong password and an unknown username; 409 USERNAME_TAKEN",
)
async def invalid_request(ctx: Context) -> None:
    thread = await ctx.thread()
    alice = ctx.alice
    fresh = f"{ctx.prefix}-r-{secrets.token_hex(3)}"
    json_header = {"content-type": "application/json"}
    bodies: list[tuple[str, str, str | None, dict[str, Any]]] = [
        ("POST", "/v1/accounts", None, {"content": b"{not json", "headers": json_header}),
        ("POST", "/v1/accounts", None, {"json": [fresh, "password1"]}),
        ("POST", "/v1/accounts", None, {"json": {"username": fresh}}),
        ("POST", "/v1/accounts", None, {"json": {"password": "password1"}}),
        ("POST", "/v1/accounts", None, {"json": {"username": 12345, "password": "password1"}}),
        ("POST", "/v1/sessions", None, {"content": b"", "headers": json_header}),
        ("POST", "/v1/sessions", None, {"json": {"username": alice.username}}),
        ("POST", "/v1/threads", alice.token, {"content": b"[", "headers": json_header}),
        ("POST", "/v1/threads", alice.token, {"json": {"title": "t", "participants": "bob"}}),
        (
            "POST",
            f"/v1/threads/{thread}/participants",
            alice.token,
            {"json": {"usernames": ctx.carol.username}},
        ),
    ]
    for method, path, token, extra in bodies:
        reply = await ctx.rest(method, path, token=token, **extra)
        shown = extra.get("json", extra.get("content"))
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-8-5", f"{method} {path} with {shown!r}")
    gone = await ctx.rest("POST", "/v1/sessions", json={"username": fresh, "password": "password1"})
    expect_rest_error(gone, "INVALID_CREDENTIALS", "VXS-8-5", "a refused registration's login")
    wrong = await ctx.rest(
        "POST", "/v1/sessions", json={"username": alice.username, "password": alice.password + "!"}
    )
    expect_rest_error(wrong, "INVALID_CREDENTIALS", "VXS-8-5", "login with a wrong password")
    taken = await ctx.rest(
        "POST", "/v1/accounts", json={"username": alice.username, "password": "password1"}
    )
    expect_rest_error(taken, "USERNAME_TAKEN", "VXS-8-5", "registration of alice's username")
    expect(
        ctx.carol.username not in await participants(ctx, thread),
        "VXS-8-5",
        "a refused POST .../participants added carol",
    )


@case(
    "8/not-found",
    "an unknown path, thread or message is NOT_FOUND, THREAD_NOT_FOUND or MESSAGE_NOT_FOUND",
    requirements=("VXS-8-5", "VXS-8-8"),
    accepts="HTTP 404 with a JSON error 302 NOT_FOUND for unknown paths, with no token, a "
    "valid one or an unknown one; 300 THREAD_NOT_FOUND for GET of an unknown thread, its "
    "messages and POST of its participants; 301 MESSAGE_NOT_FOUND for GET of an unknown "
    "message and its audio.opus",
)
async def not_found(ctx: Context) -> None:
    thread = await ctx.thread()
    unknown = ctx.msg_id()
    for path in ("/v1/no-such-endpoint", "/no-such-path", f"/v1/threads/{thread}/no-such"):
        for label, token in (
            ("no token", None),
            ("alice's token", ctx.alice.token),
            ("an unknown token", secrets.token_urlsafe(32)),
        ):
            reply = await ctx.rest("GET", path, token=token)
            expect_rest_error(reply, "NOT_FOUND", "VXS-8-8", f"GET {path} with {label}")
    for method, path in (
        ("GET", f"/v1/threads/{unknown}"),
        ("GET", f"/v1/threads/{unknown}/messages"),
        ("POST", f"/v1/threads/{unknown}/participants"),
    ):
        body = {"usernames": [ctx.bob.username]} if method == "POST" else None
        reply = await ctx.rest(method, path, token=ctx.alice.token, json=body)
        expect_rest_error(reply, "THREAD_NOT_FOUND", "VXS-8-5", f"{method} {path}")
    for path in (f"/v1/messages/{unknown}", f"/v1/messages/{unknown}/audio.opus"):
        reply = await ctx.rest("GET", path, token=ctx.alice.token)
        expect_rest_error(reply, "MESSAGE_NOT_FOUND", "VXS-8-5", f"GET {path}")


@case(
    "8/unknown-method",
    "a method an endpoint does not have is NOT_FOUND with the registry's status",
    requirements=("VXS-8-5", "VXS-8-8"),
    accepts="PUT /v1/health, DELETE /v1/accounts/me and PATCH /v1/threads: HTTP 404 with a "
    "JSON error 302 NOT_FOUND (no registry entry has HTTP 405, and REST errors carry the "
    "registry's status)",
)
async def unknown_method(ctx: Context) -> None:
    for method, path in (
        ("PUT", "/v1/health"),
        ("DELETE", "/v1/accounts/me"),
        ("PATCH", "/v1/threads"),
    ):
        reply = await ctx.rest(method, path, token=ctx.alice.token)
        expect_rest_error(reply, "NOT_FOUND", "VXS-8-8", f"{method} {path}")


# -- VXS-8-6, VXS-8-7, VXS-8-8: accounts and threads ---------------------------------------


@case(
    "8/thread-idempotent",
    "creating a thread again with the same client id returns the stored thread",
    requirements=("VXS-8-6", "VXS-8-5"),
    accepts="the second POST /v1/threads of alice with the same id: 201 with the first title "
    "and participants (alice, bob), not the new ones; GET lists the thread once; the same id "
    "from bob (a participant) or carol: 400 INVALID_REQUEST, the thread unchanged (carol, "
    "still no participant, gets 404 THREAD_NOT_FOUND on GET of it)",
)
async def thread_idempotent(ctx: Context) -> None:
    thread = f"{ctx.prefix}-t-{secrets.token_hex(6)}"
    first = await ctx.rest(
        "POST",
        "/v1/threads",
        token=ctx.alice.token,
        json={"id": thread, "title": "first", "participants": [ctx.bob.username]},
    )
    expect(first.status == 201, "VXS-8-6", f"first create: {first.status} {first.body}")
    created = first.body.get("id") if isinstance(first.body, dict) else None
    expect(created == thread, "VXS-8-6", f"created id {created!r}, expected {thread!r}")
    want = {ctx.alice.username, ctx.bob.username}
    second = await ctx.rest(
        "POST",
        "/v1/threads",
        token=ctx.alice.token,
        json={"id": thread, "title": "second", "participants": [ctx.carol.username]},
    )
    expect(second.status == 201, "VXS-8-6", f"second create: {second.status} {second.body}")
    body = second.body if isinstance(second.body, dict) else {}
    expect(
        body.get("id") == thread and body.get("title") == "first" and usernames(body) == want,
        "VXS-8-6",
        f"the second create answered {body}, expected the stored thread (title 'first', "
        f"participants {sorted(want)})",
    )
    for intruder in (ctx.bob, ctx.carol):
        reply = await ctx.rest(
            "POST",
            "/v1/threads",
            token=intruder.token,
            json={"id": thread, "title": "mine", "participants": [ctx.carol.username]},
        )
        expect_rest_error(
            reply, "INVALID_REQUEST", "VXS-8-6", f"{intruder.username} creating alice's thread id"
        )
    stored = await ctx.rest("GET", f"/v1/threads/{thread}", token=ctx.alice.token)
    expect(
        stored.status == 200
        and stored.body.get("title") == "first"
        and usernames(stored.body) == want,
        "VXS-8-6",
        f"the stored thread changed: {stored.status} {stored.body}",
    )
    listing = await ctx.rest("GET", "/v1/threads", token=ctx.alice.token)
    ids = [t.get("id") for t in listing.body.get("threads", []) if isinstance(t, dict)]
    expect(
        ids.count(thread) == 1,
        "VXS-8-6",
        f"alice's GET /v1/threads lists it {ids.count(thread)} times",
    )
    carol_sees = await ctx.rest("GET", f"/v1/threads/{thread}", token=ctx.carol.token)
    expect_rest_error(carol_sees, "THREAD_NOT_FOUND", "VXS-8-6", "carol after the repeated creates")


@case(
    "8/registration-rules",
    "usernames match [a-z0-9_.-]{3,32} and passwords have 8 to 1024 characters",
    requirements=("VXS-8-7", "VXS-8-5"),
    accepts="201 (or 409 USERNAME_TAKEN for a valid name an earlier run took) for usernames of "
    "3 and 32 characters and one using '.', '_' and '-', and for passwords of 8 and 1024 "
    "characters (also 1024 two-byte characters); 400 INVALID_REQUEST for usernames of 0, 2 "
    "and 33 characters, with a capital, a space, '@' or 'é', and for passwords of 7 and 1025 "
    "characters (also 7 two-byte characters); a refused registration creates no account",
)
async def registration_rules(ctx: Context) -> None:
    async def register(username: str, password: str) -> RestReply:
        return await ctx.rest(
            "POST", "/v1/accounts", json={"username": username, "password": password}
        )

    good_password = "password-" + secrets.token_hex(4)
    tail = random_name(20)
    valid_names = [random_name(3), (ctx.prefix + tail + random_name(12))[:32], f"a._-{tail}"]
    for username in valid_names:
        reply = await register(username, good_password)
        accepted = reply.status == 201 or (
            reply.error is not None and reply.error.get("name") == "USERNAME_TAKEN"
        )
        expect(
            accepted,
            "VXS-8-7",
            f"username {username!r} ({len(username)} characters) refused: {reply.status} "
            f"{reply.body}",
        )
    invalid_names = [
        "",
        random_name(2),
        random_name(33),
        "A" + random_name(10),
        f"{random_name(5)} {random_name(5)}",
        f"{random_name(5)}@{random_name(5)}",
        f"{random_name(5)}é{random_name(5)}",
    ]
    for username in invalid_names:
        reply = await register(username, good_password)
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-8-7", f"username {username!r}")

    for password in ("x" * 8, "y" * 1024, "é" * 1024):
        username = f"{ctx.prefix}-p{random_name(8)}"
        reply = await register(username, password)
        expect(
            reply.status == 201,
            "VXS-8-7",
            f"a password of {len(password)} characters ({len(password.encode())} bytes) "
            f"refused: {reply.status} {reply.body}",
        )
    for password in ("x" * 7, "y" * 1025, "é" * 7, ""):
        username = f"{ctx.prefix}-p{random_name(8)}"
        reply = await register(username, password)
        expect_rest_error(
            reply,
            "INVALID_REQUEST",
            "VXS-8-7",
            f"a password of {len(password)} characters ({len(password.encode())} bytes)",
        )
        retry = await register(username, good_password)
        expect(
            retry.status == 201,
            "VXS-8-7",
            f"the refused registration of {username!r} left an account: {retry.status}",
        )


@case(
    "8/thread-create",
    "a thread's title is optional, its participants exist, its creator takes part",
    requirements=("VXS-8-8", "VXS-8-5"),
    accepts="POST /v1/threads without title: 201, title ''; the creator is a participant "
    "whether or not listed (once), created_by is the creator's id; an unknown participant "
    "username: 404 NOT_FOUND and no thread; an id that is not an identifier: 400 "
    "INVALID_REQUEST",
)
async def thread_create(ctx: Context) -> None:
    alice, bob = ctx.alice, ctx.bob
    untitled = await ctx.rest(
        "POST", "/v1/threads", token=alice.token, json={"participants": [bob.username]}
    )
    expect(untitled.status == 201, "VXS-8-8", f"no title: {untitled.status} {untitled.body}")
    body = untitled.body if isinstance(untitled.body, dict) else {}
    expect(body.get("title") == "", "VXS-8-8", f"title {body.get('title')!r}, expected ''")
    expect(
        usernames(body) == {alice.username, bob.username},
        "VXS-8-8",
        f"participants {sorted(usernames(body))}, expected alice and bob",
    )
    expect(
        body.get("created_by") == alice.id,
        "VXS-8-8",
        f"created_by {body.get('created_by')!r}, expected alice's id {alice.id!r}",
    )
    for listed in ([], [alice.username, bob.username]):
        reply = await ctx.rest(
            "POST", "/v1/threads", token=alice.token, json={"title": "t", "participants": listed}
        )
        expect(reply.status == 201, "VXS-8-8", f"participants {listed}: {reply.status}")
        people = reply.body.get("participants", [])
        names = [p.get("username") for p in people if isinstance(p, dict)]
        expect(
            names.count(alice.username) == 1,
            "VXS-8-8",
            f"participants {listed} gave {names}: the creator must be in it once",
        )

    thread = f"{ctx.prefix}-u-{secrets.token_hex(6)}"
    ghost = f"{ctx.prefix}-nobody-{secrets.token_hex(4)}"
    reply = await ctx.rest(
        "POST",
        "/v1/threads",
        token=alice.token,
        json={"id": thread, "title": "t", "participants": [bob.username, ghost]},
    )
    expect_rest_error(reply, "NOT_FOUND", "VXS-8-8", "a thread with an unknown participant")
    stored = await ctx.rest("GET", f"/v1/threads/{thread}", token=alice.token)
    expect_rest_error(stored, "THREAD_NOT_FOUND", "VXS-8-8", "the refused thread afterwards")

    for bad_id in ("has space", "x" * 65, "é"):
        reply = await ctx.rest(
            "POST", "/v1/threads", token=alice.token, json={"id": bad_id, "participants": []}
        )
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-8-5", f"thread id {bad_id!r}")


# -- VXS-8-9, VXS-8-10, VXS-8-11: failed logins, password changes, devices ----------------


async def _new_account(ctx: Context, role: str) -> tuple[str, str, Account]:
    """A new account, logged in once; (username, password, that session)."""
    account = await ctx.register(role)
    return account.username, account.password, account


async def _try_login(ctx: Context, username: str, password: str) -> RestReply:
    return await ctx.rest("POST", "/v1/sessions", json={"username": username, "password": password})


def _retry_after(reply: RestReply, what: str) -> int:
    value = reply.headers.get("retry-after", "")
    expect(
        value.isascii() and value.isdigit(),
        "VXS-8-9",
        f"{what}: Retry-After {value or None!r}, expected a number of seconds",
    )
    seconds = int(value)
    expect(
        1 <= seconds <= 15 * 60,
        "VXS-8-9",
        f"{what}: Retry-After {seconds} s; the oldest failure is 15 minutes old in 1 to 900 s",
    )
    return seconds


@case(
    "8/login-rate-limit",
    "after 5 failed logins for a username its logins are RATE_LIMITED, even with the right "
    "password; a wrong old password in a password change counts",
    requirements=("VXS-8-9", "VXS-8-10", "VXS-8-5"),
    accepts="on a new account of its own: 5 logins with a wrong password, each 401 "
    "INVALID_CREDENTIALS; then a login with the right password and one with a wrong one: HTTP "
    "429 RATE_LIMITED with Retry-After 1 to 900 seconds. On a second new account: 4 wrong "
    "logins, a password change with a wrong old password (401 INVALID_CREDENTIALS), then a "
    "login with the right password: 429 RATE_LIMITED. Another account still logs in (the "
    "limit is per username; the run stays far below 100 failures per address). 9 failed "
    "logins and 1 failed change in all",
)
async def login_rate_limit(ctx: Context) -> None:
    username, password, _ = await _new_account(ctx, "locked")
    for attempt in range(1, 6):
        wrong = await _try_login(ctx, username, password + "!")
        expect_rest_error(wrong, "INVALID_CREDENTIALS", "VXS-8-9", f"failed login {attempt} of 5")
    right = await _try_login(ctx, username, password)
    expect_rest_error(
        right, "RATE_LIMITED", "VXS-8-9", "a login with the right password after 5 failures"
    )
    _retry_after(right, "the refused login with the right password")
    again = await _try_login(ctx, username, password + "?")
    expect_rest_error(again, "RATE_LIMITED", "VXS-8-9", "a sixth wrong login")
    _retry_after(again, "the sixth wrong login")

    username, password, session = await _new_account(ctx, "changer")
    for attempt in range(1, 5):
        wrong = await _try_login(ctx, username, password + "!")
        expect_rest_error(wrong, "INVALID_CREDENTIALS", "VXS-8-9", f"failed login {attempt} of 4")
    change = await ctx.rest(
        "POST",
        "/v1/accounts/me/password",
        token=session.token,
        json={"old_password": password + "!", "new_password": "new-" + password},
    )
    expect_rest_error(
        change, "INVALID_CREDENTIALS", "VXS-8-10", "a password change with a wrong old password"
    )
    right = await _try_login(ctx, username, password)
    expect_rest_error(
        right,
        "RATE_LIMITED",
        "VXS-8-9",
        "a login with the right password after 4 failed logins and a password change with a "
        "wrong old password (which counts as a failure)",
    )
    _retry_after(right, "the refused login after the failed password change")
    other = await _try_login(ctx, ctx.alice.username, ctx.alice.password)
    expect(
        other.status == 201,
        "VXS-8-9",
        f"alice's login after another username was rate limited: {other.status} {other.body}",
    )


@case(
    "8/password-change",
    "a password change checks the old password, replaces it and ends every other session",
    requirements=("VXS-8-10", "VXS-8-5"),
    accepts="an account with three sessions: a change with a wrong old password is 401 "
    "INVALID_CREDENTIALS and changes nothing (every session still works); with the right one "
    "200 {sessions_ended: 2}; then the other two tokens are 401 UNAUTHENTICATED, the asking "
    "session still works and is the only one GET /v1/sessions lists; a login with the old "
    "password is 401 INVALID_CREDENTIALS, with the new one 201",
)
async def password_change(ctx: Context) -> None:
    username, password, phone = await _new_account(ctx, "pw")
    others = [await ctx.login(username, password, device=d) for d in ("laptop", "tablet")]
    new_password = "changed-" + secrets.token_hex(8)
    wrong = await ctx.rest(
        "POST",
        "/v1/accounts/me/password",
        token=phone.token,
        json={"old_password": password[::-1], "new_password": new_password},
    )
    expect_rest_error(wrong, "INVALID_CREDENTIALS", "VXS-8-10", "a wrong old password")
    for device in (phone, *others):
        me = await ctx.rest("GET", "/v1/accounts/me", token=device.token)
        expect(
            me.status == 200,
            "VXS-8-10",
            f"a session stopped working after a refused password change: {me.status}",
        )
    changed = await ctx.rest(
        "POST",
        "/v1/accounts/me/password",
        token=phone.token,
        json={"old_password": password, "new_password": new_password},
    )
    expect(
        changed.status == 200
        and isinstance(changed.body, dict)
        and changed.body.get("sessions_ended") == 2,
        "VXS-8-10",
        f"the password change: {changed.status} {changed.body}, expected 200 "
        "{'sessions_ended': 2}",
    )
    for device, label in zip(others, ("laptop", "tablet"), strict=True):
        me = await ctx.rest("GET", "/v1/accounts/me", token=device.token)
        expect_rest_error(
            me, "UNAUTHENTICATED", "VXS-8-10", f"the {label}'s token after the password change"
        )
    me = await ctx.rest("GET", "/v1/accounts/me", token=phone.token)
    expect(
        me.status == 200,
        "VXS-8-10",
        f"the session that changed the password stopped working: {me.status} {me.body}",
    )
    listed = await ctx.rest("GET", "/v1/sessions", token=phone.token)
    ids = [s.get("id") for s in (listed.body or {}).get("sessions", []) if isinstance(s, dict)]
    expect(
        listed.status == 200 and ids == [phone.session_id],
        "VXS-8-10",
        f"GET /v1/sessions after the change lists {ids}, expected only {phone.session_id!r}",
    )
    old = await _try_login(ctx, username, password)
    expect_rest_error(old, "INVALID_CREDENTIALS", "VXS-8-10", "a login with the old password")
    new = await _try_login(ctx, username, new_password)
    expect(
        new.status == 201,
        "VXS-8-10",
        f"a login with the new password: {new.status} {new.body}",
    )


SESSION_FIELDS: Final = {"id", "device", "created", "expires", "last_seen", "acked", "current"}


@case(
    "8/sessions",
    "each login is a session of its own (a device), listed by GET /v1/sessions and ended by "
    "DELETE /v1/sessions/{id}",
    requirements=("VXS-8-11", "VXS-8-5"),
    accepts="three logins of one account with the devices 'phone', 'laptop' and a 100-character "
    "label: three different session ids and tokens, all valid; GET /v1/sessions lists exactly "
    "those three (and the registration's login), each with id, device (its label), created, "
    "expires, last_seen, acked and current (true only for the asking session); DELETE of the "
    "laptop's id from the phone: 204, then the laptop's token is 401 UNAUTHENTICATED and no "
    "longer listed; another account deleting the phone's id, or an unknown id: 404 NOT_FOUND, "
    "and the phone still works",
)
async def sessions(ctx: Context) -> None:
    username, password, first = await _new_account(ctx, "devices")
    labels = ("phone", "laptop", "d" * 100)
    devices = [await ctx.login(username, password, device=label) for label in labels]
    phone, laptop, _ = devices
    ids = [d.session_id for d in devices]
    expect(
        all(ids) and len({*ids, first.session_id}) == 4,
        "VXS-8-11",
        f"the logins' session ids {[*ids, first.session_id]} are not four different ids",
    )
    expect(
        len({d.token for d in devices} | {first.token}) == 4,
        "VXS-8-11",
        "two logins gave the same token",
    )
    for device in (phone, laptop):
        listed = await ctx.rest("GET", "/v1/sessions", token=device.token)
        expect(listed.status == 200, "VXS-8-11", f"GET /v1/sessions: {listed.status}")
        found = [s for s in (listed.body or {}).get("sessions", []) if isinstance(s, dict)]
        by_id = {s.get("id"): s for s in found}
        expect(
            len(found) == 4 and set(by_id) == {*ids, first.session_id},
            "VXS-8-11",
            f"GET /v1/sessions lists {sorted(map(str, by_id))}, expected the account's 4 "
            f"sessions {sorted([*ids, first.session_id])}",
        )
        for entry in found:
            missing = SESSION_FIELDS - set(entry)
            expect(not missing, "VXS-8-11", f"a listed session lacks {sorted(missing)}: {entry}")
        for label, session_id in zip(labels, ids, strict=True):
            expect(
                by_id[session_id].get("device") == label,
                "VXS-8-11",
                f"session {session_id} lists device {by_id[session_id].get('device')!r}, "
                f"expected {label!r}",
            )
        current = [s.get("id") for s in found if s.get("current") is True]
        expect(
            current == [device.session_id],
            "VXS-8-11",
            f"current is true for {current}, expected only the asking {device.session_id}",
        )
    ended = await ctx.rest("DELETE", f"/v1/sessions/{laptop.session_id}", token=phone.token)
    expect(ended.status == 204, "VXS-8-11", f"DELETE of the laptop's session: {ended.status}")
    gone = await ctx.rest("GET", "/v1/accounts/me", token=laptop.token)
    expect_rest_error(gone, "UNAUTHENTICATED", "VXS-8-11", "the ended session's token")
    listed = await ctx.rest("GET", "/v1/sessions", token=phone.token)
    left = {s.get("id") for s in (listed.body or {}).get("sessions", []) if isinstance(s, dict)}
    expect(
        laptop.session_id not in left and phone.session_id in left,
        "VXS-8-11",
        f"after DELETE of the laptop's session GET /v1/sessions lists {sorted(map(str, left))}",
    )
    for label, token, target in (
        ("alice deleting the phone's session", ctx.alice.token, phone.session_id),
        ("an unknown session id", phone.token, secrets.token_hex(16)),
    ):
        refused = await ctx.rest("DELETE", f"/v1/sessions/{target}", token=token)
        expect_rest_error(refused, "NOT_FOUND", "VXS-8-11", label)
    me = await ctx.rest("GET", "/v1/accounts/me", token=phone.token)
    expect(
        me.status == 200,
        "VXS-8-11",
        f"the phone's session after the refused deletes: {me.status} {me.body}",
    )
