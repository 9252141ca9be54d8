"""Sections 13.5 and 13.6: the timeline (pages, tokens, long-poll, acks, the event stream)
and presence.

Each case reads the timeline of accounts it registers, so it knows every event they
can have. The server-sent events stream is read over a connection of its own: closing
that connection is the device going away (VXS-13.6-1). Dropping old events (VXS-13.5-4)
takes the server's retention period (90 days for the reference server), so no case can
provoke it: the cases check that a page or stream of a fresh account is never
``limited``, and say so.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final, cast

import httpx
import trio

from voxer_stream.wire import Close

from ..case import case, expect, fail, note, skip
from ..context import Account, Context
from ..net import TransportFailure
from .errors import expect_rest_error
from .service import (
    body,
    group,
    need,
    quote,
    read,
    say,
    shown,
    sync_events,
    sync_token,
    talk,
)

EVENT_FIELDS: Final = frozenset({"pos", "token", "type", "thread", "message", "created", "data"})
#: The longest silence a sync stream may keep (VXS-13.5-7), and the suite's slack.
KEEPALIVE: Final = 15.0
SLACK: Final = 1.0


def types(events: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("type")) for e in events]


async def wait_events(
    ctx: Context, who: Account, since: str, want: int, within: float = 5.0
) -> tuple[list[dict[str, Any]], str]:
    """At least ``want`` events after ``since`` (long-polling), or what came ``within``."""
    events: list[dict[str, Any]] = []
    token = since
    deadline = trio.current_time() + within
    while len(events) < want:
        left = int((deadline - trio.current_time()) * 1000)
        if left <= 0:
            break
        path = f"/v1/sync?since={quote(token)}&timeout={min(left, 60_000)}"
        page = need(await ctx.rest("GET", path, token=who.token), 200, f"GET {path}")
        events += [e for e in page.get("events", []) if isinstance(e, dict)]
        token = str(page.get("next"))
    return events, token


# -- server-sent events --------------------------------------------------------------------


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: list[str] = field(default_factory=list)


class EventStream:
    """``GET /v1/sync/stream`` read line by line (the HTML server-sent events format)."""

    def __init__(self, response: httpx.Response, lines: AsyncGenerator[str, None]) -> None:
        self.response = response
        self._lines = lines
        self.comments: list[float] = []  # when each comment line arrived
        self.events: list[SseEvent] = []

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def content_type(self) -> str:
        return str(self.response.headers.get("content-type", ""))

    async def line(self, within: float) -> str:
        """The next line (without its end); ``TransportFailure`` after ``within`` seconds."""
        try:
            with trio.fail_after(within):
                line = await self._lines.__anext__()
        except trio.TooSlowError:
            raise TransportFailure(f"no line of the event stream within {within:g} s") from None
        except StopAsyncIteration:
            raise TransportFailure("the server ended the event stream") from None
        except httpx.HTTPError as exc:
            raise TransportFailure(f"the event stream broke: {exc!r}") from None
        if line.startswith(":"):
            self.comments.append(trio.current_time())
        return line

    async def event(self, within: float) -> SseEvent:
        """The next event (comments skipped), within ``within`` seconds."""
        deadline = trio.current_time() + within
        found = SseEvent(None, None)
        fields = False
        while True:
            line = await self.line(max(0.01, deadline - trio.current_time()))
            if line == "":
                if fields:
                    self.events.append(found)
                    return found
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields = True
            if name == "id":
                found.id = value
            elif name == "event":
                found.event = value
            elif name == "data":
                found.data.append(value)

    async def error_body(self) -> Any:
        """The JSON body of a refused stream request."""
        try:
            with trio.fail_after(10):
                await self.response.aread()
            return self.response.json()
        except (trio.TooSlowError, httpx.HTTPError, ValueError):
            return None


@asynccontextmanager
async def event_stream(
    ctx: Context, who: Account, *, since: str | None = None, last_event_id: str | None = None
) -> AsyncIterator[EventStream]:
    """A sync stream on a connection of its own; leaving the block closes that connection."""
    headers = {"authorization": f"Bearer {who.token}", "accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    path = "/v1/sync/stream" + (f"?since={quote(since)}" if since is not None else "")
    timeout = httpx.Timeout(ctx.timeout, read=None)
    try:
        async with (
            httpx.AsyncClient(base_url=ctx.url, http2=True, timeout=timeout) as client,
            client.stream("GET", path, headers=headers) as response,
            aclosing(cast(AsyncGenerator[str, None], response.aiter_lines())) as lines,
        ):
            yield EventStream(response, lines)
    except httpx.HTTPError as exc:
        raise TransportFailure(f"GET {path}: {exc!r}") from None


def event_of(sse: SseEvent, requirement: str) -> dict[str, Any]:
    """The timeline event an SSE event carries: id its token, event its type, one data line."""
    expect(
        len(sse.data) == 1,
        requirement,
        f"an SSE event has {len(sse.data)} data lines, expected the event object on one: {sse}",
    )
    try:
        data = json.loads(sse.data[0])
    except ValueError:
        fail(requirement, f"an SSE event's data is not JSON: {sse.data[0][:200]!r}")
    expect(
        isinstance(data, dict) and set(data) >= EVENT_FIELDS,
        requirement,
        f"an SSE event's data is not a timeline event: {sse.data[0][:200]!r}",
    )
    expect(
        sse.id == data.get("token") and sse.event == data.get("type"),
        requirement,
        f"an SSE event has id {sse.id!r} and event {sse.event!r}, but its data has token "
        f"{data.get('token')!r} and type {data.get('type')!r}",
    )
    result: dict[str, Any] = data
    return result


# -- 13.5 The timeline and sync ------------------------------------------------------------


@case(
    "13.5/events",
    "every change lands on the timeline of each account concerned, as it is made, at "
    "increasing positions",
    requirements=("VXS-13.5-1",),
    accepts="for a new thread of alice's with bob and each change after it, right after the "
    "change's request returns: bob's timeline gets thread (creation, title, participants), "
    "message, reaction, receipt, thread.settings (his mute; alice gets nothing), "
    "message.recalled, thread.removed (when removed); alice gets reaction, receipt and thread; "
    "the participant added gets thread; for an audio message bob gets message, message.live "
    "and message.closed (waited for, up to 5 s); each event has pos, token, type, thread, "
    "message, created, data, with the right thread, message and data; positions strictly "
    "increase and no token repeats",
)
async def events(ctx: Context) -> None:
    alice, bob, erin = [await ctx.register(n) for n in ("author", "reader", "erin")]
    marks = {who.id: "" for who in (alice, bob, erin)}
    timeline: list[dict[str, Any]] = []

    async def news(who: Account, want: list[str], what: str) -> list[dict[str, Any]]:
        """The events ``who`` got since the last look: exactly ``want`` (by type)."""
        since = marks[who.id] or None
        got, marks[who.id] = await sync_events(ctx, who, since)
        expect(
            types(got) == want,
            "VXS-13.5-1",
            f"after {what}, {who.username}'s timeline got {types(got)}, expected {want}",
        )
        for event in got:
            missing = EVENT_FIELDS - set(event)
            expect(not missing, "VXS-13.5-1", f"an event lacks {sorted(missing)}: {event}")
        if who is bob:
            timeline.extend(got)
        return got

    made = await ctx.rest(
        "POST",
        "/v1/threads",
        token=alice.token,
        json={"title": "events", "participants": [bob.username]},
    )
    thread = str(need(made, 201, "creating the thread")["id"])
    (created,) = await news(bob, ["thread"], "the thread's creation")
    expect(
        created.get("thread") == thread and created["data"].get("id") == thread,
        "VXS-13.5-1",
        f"the thread event is {created}",
    )
    await news(alice, ["thread"], "the thread's creation")
    msg = str((await say(ctx, alice, thread, "on the timeline"))["id"])
    (message,) = await news(bob, ["message"], "a text message")
    expect(
        message.get("message") == msg
        and message.get("thread") == thread
        and message["data"].get("id") == msg
        and message["data"].get("text") == "on the timeline",
        "VXS-13.5-1",
        f"the message event is {message}",
    )
    await news(alice, ["message"], "her own text message")
    need(
        await ctx.rest("PATCH", f"/v1/threads/{thread}", token=alice.token, json={"title": "new"}),
        200,
        "renaming the thread",
    )
    (renamed,) = await news(bob, ["thread"], "a title change")
    expect(renamed["data"].get("title") == "new", "VXS-13.5-1", f"the event is {renamed}")
    await news(alice, ["thread"], "her title change")
    need(await ctx.rest("PUT", f"/v1/messages/{msg}/reactions/ok", token=bob.token), 200, "react")
    for who in (alice, bob):
        (reaction,) = await news(who, ["reaction"], "bob's reaction")
        data = reaction.get("data") or {}
        expect(
            reaction.get("message") == msg
            and data.get("account") == bob.id
            and data.get("emoji") == "ok"
            and data.get("on") is True
            and data.get("reactions") == {"ok": 1},
            "VXS-13.5-1",
            f"{who.username}'s reaction event is {reaction}",
        )
    need(
        await ctx.rest(
            "POST", f"/v1/messages/{msg}/receipts", token=bob.token, json={"kind": "read"}
        ),
        200,
        "a read receipt",
    )
    for who in (alice, bob):
        (receipt,) = await news(who, ["receipt"], "bob's read receipt")
        data = receipt.get("data") or {}
        expect(
            receipt.get("message") == msg
            and data.get("account") == bob.id
            and data.get("kind") == "read"
            and type(data.get("at")) is int,
            "VXS-13.5-1",
            f"{who.username}'s receipt event is {receipt}",
        )
    reply = await ctx.rest("PUT", f"/v1/threads/{thread}/mute", token=bob.token)
    expect(200 <= reply.status < 300, "VXS-13.5-1", f"bob's mute: {reply.status}")
    (settings,) = await news(bob, ["thread.settings"], "bob's mute")
    expect(
        settings.get("thread") == thread and settings["data"] == {"muted": True},
        "VXS-13.5-1",
        f"the thread.settings event is {settings}",
    )
    await news(alice, [], "bob's mute (his own setting)")
    need(await ctx.rest("DELETE", f"/v1/messages/{msg}", token=alice.token), 200, "recall")
    (recalled,) = await news(bob, ["message.recalled"], "a recall")
    expect(
        recalled.get("message") == msg and recalled["data"] == {"id": msg},
        "VXS-13.5-1",
        f"the message.recalled event is {recalled}",
    )
    await news(alice, ["message.recalled"], "her recall")

    voice = await talk(ctx, alice, thread, 2)
    got, marks[bob.id] = await wait_events(ctx, bob, marks[bob.id], 3)
    timeline.extend(got)
    expect(
        types(got) == ["message", "message.live", "message.closed"]
        and all(e.get("message") == voice for e in got),
        "VXS-13.5-1",
        f"an audio message (opened, 2 chunks, closed) gave bob {types(got)} within 5 s, "
        "expected message, message.live, message.closed",
    )
    expect(
        got[-1]["data"].get("state") == "closed" and got[-1]["data"].get("chunks") == 2,
        "VXS-13.5-1",
        f"the message.closed event's message is {got[-1]['data']}",
    )
    _, marks[alice.id] = await wait_events(ctx, alice, marks[alice.id], 3)

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
    (joined,) = await news(bob, ["thread"], "erin's joining")
    names = {p.get("username") for p in joined["data"].get("participants", [])}
    expect(erin.username in names, "VXS-13.5-1", f"the thread event is {joined}")
    await news(erin, ["thread"], "being added to the thread")
    await news(alice, ["thread"], "adding erin")
    gone = await ctx.rest(
        "DELETE", f"/v1/threads/{thread}/participants/{bob.id}", token=alice.token
    )
    expect(gone.status == 204, "VXS-13.5-1", f"removing bob: {gone.status}")
    (removed,) = await news(bob, ["thread.removed"], "his removal")
    expect(removed.get("thread") == thread, "VXS-13.5-1", f"the event is {removed}")
    await news(alice, ["thread"], "removing bob")

    positions = [e.get("pos") for e in timeline]
    tokens = [e.get("token") for e in timeline]
    numbers = [p for p in positions if isinstance(p, int)]
    expect(
        len(numbers) == len(positions) and all(a < b for a, b in pairwise(numbers)),
        "VXS-13.5-1",
        f"bob's positions do not strictly increase: {positions}",
    )
    expect(len(set(tokens)) == len(tokens), "VXS-13.5-1", f"bob's tokens repeat: {tokens}")
    whole, _ = await sync_events(ctx, bob)
    expect(
        [e.get("pos") for e in whole] == positions,
        "VXS-13.5-1",
        f"bob's whole timeline read again has positions {[e.get('pos') for e in whole]}, "
        f"expected {positions}",
    )


@case(
    "13.5/pages",
    "a sync page holds at most limit events after the token, oldest first; next and more "
    "chain the pages",
    requirements=("VXS-13.5-2", "VXS-13.5-4", "VXS-8-5"),
    accepts="a new account's timeline of 5 events (a thread and 4 texts): without since and "
    "limit, {events, next, more, limited} with the 5 oldest first, more false, limited false, "
    "next the last event's token; limit 2: pages of 2, 2 and 1 (more true, true, false) that "
    "add up to the same events; since the last next: no event, more false, the same next; "
    "with 102 events: 100 without limit (more true), 102 with limit 1000; limit 0, 1001 or "
    "'²': 400 INVALID_REQUEST. Trimming (limited true, VXS-13.5-4) needs events older than "
    "the server's retention period and is not provoked: only that no page is limited is "
    "checked",
)
async def pages(ctx: Context) -> None:
    alice = ctx.alice
    reader = await ctx.register("reader")
    thread = await group(ctx, alice, reader)
    for i in range(4):
        await say(ctx, alice, thread, f"page text {i}")

    async def page(**params: Any) -> dict[str, Any]:
        query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
        reply = await ctx.rest("GET", f"/v1/sync?{query}", token=reader.token)
        found: dict[str, Any] = body(reply, 200, "VXS-13.5-2", f"GET /v1/sync?{query}")
        missing = {"events", "next", "more", "limited"} - set(found)
        expect(not missing, "VXS-13.5-2", f"a sync page lacks {sorted(missing)}: {found}")
        expect(
            found.get("limited") is False,
            "VXS-13.5-4",
            f"a page of a new account's timeline (nothing dropped) is limited: {found}",
        )
        return found

    whole = await page()
    events = whole["events"]
    expect(
        types(events) == ["thread"] + ["message"] * 4
        and whole["more"] is False
        and whole["next"] == events[-1].get("token"),
        "VXS-13.5-2",
        f"the first page is {types(events)}, more {whole['more']}, next {whole['next']!r}, "
        "expected the thread and 4 messages, more false and the last token",
    )
    chained: list[dict[str, Any]] = []
    shape: list[tuple[int, object]] = []
    since: str | None = None
    for _ in range(4):
        got = await page(limit=2, **({"since": since} if since is not None else {}))
        chained += got["events"]
        shape.append((len(got["events"]), got["more"]))
        since = str(got["next"])
        if not got["more"]:
            break
    expect(
        shape == [(2, True), (2, True), (1, False)]
        and [e.get("pos") for e in chained] == [e.get("pos") for e in events],
        "VXS-13.5-2",
        f"limit 2 gave pages of (events, more) {shape}, expected (2, true), (2, true), "
        "(1, false), adding up to the first page",
    )
    empty = await page(since=since)
    expect(
        empty["events"] == [] and empty["more"] is False and empty["next"] == since,
        "VXS-13.5-2",
        f"a sync since the last token answered {empty}",
    )
    for i in range(97):
        await say(ctx, alice, thread, f"more {i}")
    default = await page()
    expect(
        len(default["events"]) == 100 and default["more"] is True,
        "VXS-13.5-2",
        f"102 events without limit: {len(default['events'])} events, more {default['more']}, "
        "expected 100 and true",
    )
    rest = await page(since=default["next"])
    most = await page(limit=1000)
    expect(
        len(rest["events"]) == 2 and rest["more"] is False and len(most["events"]) == 102,
        "VXS-13.5-2",
        f"after the first 100 came {len(rest['events'])} (more {rest['more']}); limit 1000 "
        f"gave {len(most['events'])}; expected 2 (false) and 102",
    )
    for limit in ("0", "1001", "²"):
        reply = await ctx.rest("GET", f"/v1/sync?limit={quote(limit)}", token=reader.token)
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.5-2", f"limit {limit!r}")
    note("trimming (limited: true) cannot be provoked without waiting the retention period")


@case(
    "13.5/tokens",
    "a since token the server never gave, or beyond the account's last event, is "
    "INVALID_REQUEST on sync, stream and ack",
    requirements=("VXS-13.5-3", "VXS-8-5"),
    accepts="for 'not-a-token', '-1', '²', the account's last token with a '0' appended and 30 "
    "nines: GET /v1/sync?since=, GET /v1/sync/stream?since= and with Last-Event-ID (but '²', "
    "not a header value), and POST /v1/sync/ack: 400 INVALID_REQUEST (as JSON, before any "
    "stream); the last token itself: 200 and no event",
)
async def tokens(ctx: Context) -> None:
    reader = await ctx.register("reader")
    await group(ctx, ctx.alice, reader)
    last = await sync_token(ctx, reader)
    for bad in ("not-a-token", "-1", "²", last + "0", "9" * 30):
        reply = await ctx.rest("GET", f"/v1/sync?since={quote(bad)}", token=reader.token)
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.5-3", f"GET /v1/sync?since={bad}")
        streams = [(f"GET /v1/sync/stream?since={bad}", {"since": bad})]
        if bad.isascii():  # a header value is ASCII
            streams.append(
                (f"GET /v1/sync/stream with Last-Event-ID {bad}", {"last_event_id": bad})
            )
        for label, params in streams:
            async with event_stream(ctx, reader, **params) as stream:
                status, content_type = stream.status, stream.content_type
                answer = await stream.error_body() if status != 200 else None
            error = answer.get("error") if isinstance(answer, dict) else None
            expect(
                status == 400
                and content_type.startswith("application/json")
                and isinstance(error, dict)
                and error.get("name") == "INVALID_REQUEST",
                "VXS-13.5-3",
                f"{label}: HTTP {status} {content_type!r} {answer!r}, expected 400 INVALID_REQUEST",
            )
        reply = await ctx.rest("POST", "/v1/sync/ack", token=reader.token, json={"token": bad})
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.5-3", f"POST /v1/sync/ack {bad}")
    fine = await ctx.rest("GET", f"/v1/sync?since={quote(last)}", token=reader.token)
    expect(
        fine.status == 200 and isinstance(fine.body, dict) and fine.body.get("events") == [],
        "VXS-13.5-3",
        f"a sync since the last token: HTTP {fine.status} {shown(fine)!r}",
    )


@case(
    "13.5/long-poll",
    "with timeout, a sync with nothing new waits for the next event, or answers an empty "
    "page when the time is up",
    requirements=("VXS-13.5-5", "VXS-8-5"),
    accepts="timeout 0: at once (under 1 s), no event; timeout 300: no event, next the same "
    "token, after 0.3 s or more; timeout 10000 while alice posts 0.3 s later: the page with "
    "her message, within 2 s of the post; events already there: answered at once; timeout "
    "60001 or -1: 400 INVALID_REQUEST",
)
async def long_poll(ctx: Context) -> None:
    reader = await ctx.register("reader")
    thread = await group(ctx, ctx.alice, reader)
    since = await sync_token(ctx, reader)

    async def poll(wait_ms: int, token: str) -> tuple[dict[str, Any], float]:
        started = time.monotonic()
        reply = await ctx.rest(
            "GET", f"/v1/sync?since={quote(token)}&timeout={wait_ms}", token=reader.token
        )
        page = body(reply, 200, "VXS-13.5-5", f"a sync with timeout {wait_ms}")
        return page, time.monotonic() - started

    page, took = await poll(0, since)
    expect(
        page.get("events") == [] and took < 1.0,
        "VXS-13.5-5",
        f"timeout 0 answered after {took:.2f} s with {page}",
    )
    page, took = await poll(300, since)
    expect(
        page.get("events") == [] and page.get("next") == since and took >= 0.28,
        "VXS-13.5-5",
        f"timeout 300 with nothing new answered after {took:.2f} s with {page}, expected no "
        f"event and next {since!r} after 0.3 s",
    )
    result: dict[str, Any] = {}
    posted: list[float] = []

    async def waiting() -> None:
        result["page"], result["took"] = await poll(10_000, since)
        result["at"] = time.monotonic()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiting)
        await ctx.sleep(0.3)
        msg = str((await say(ctx, ctx.alice, thread, "wake up"))["id"])
        posted.append(time.monotonic())
    got = result["page"].get("events", [])
    late = result["at"] - posted[0]
    expect(
        [e.get("message") for e in got] == [msg] and late < 2.0 and result["took"] >= 0.28,
        "VXS-13.5-5",
        f"a long-poll while alice posted answered {types(got)} {late:.2f} s after the post "
        f"({result['took']:.2f} s in all), expected her message at once",
    )
    page, took = await poll(5_000, since)
    expect(
        [e.get("message") for e in page.get("events", [])] == [msg] and took < 1.0,
        "VXS-13.5-5",
        f"a long-poll with an event waiting answered after {took:.2f} s with {page}",
    )
    for timeout in ("60001", "-1"):
        reply = await ctx.rest(
            "GET", f"/v1/sync?since={quote(since)}&timeout={timeout}", token=reader.token
        )
        expect_rest_error(reply, "INVALID_REQUEST", "VXS-13.5-5", f"timeout {timeout}")


@case(
    "13.5/ack",
    "a device acknowledges the position it processed; since=acked starts after it; each "
    "device has its own",
    requirements=("VXS-13.5-6",),
    accepts="an account with a phone and a laptop: the phone acks its last token (2xx); GET "
    "/v1/sessions shows the phone's acked equal to it and the laptop's not; the phone's "
    "since=acked gives no event, then after alice's next message exactly that one; the "
    "laptop's since=acked gives its whole timeline; an ack of an earlier token leaves the "
    "phone's acked where it was",
)
async def ack(ctx: Context) -> None:
    phone = await ctx.register("acker", device="phone")
    laptop = await ctx.login(phone.username, phone.password, device="laptop")
    thread = await group(ctx, ctx.alice, phone)
    for i in range(2):
        await say(ctx, ctx.alice, thread, f"to ack {i}")
    events, last = await sync_events(ctx, phone)
    first = str(events[0].get("token"))
    reply = await ctx.rest("POST", "/v1/sync/ack", token=phone.token, json={"token": last})
    expect(200 <= reply.status < 300, "VXS-13.5-6", f"the ack: {reply.status} {shown(reply)!r}")

    async def acked() -> dict[str, object]:
        found = (await read(ctx, phone, "/v1/sessions")).get("sessions", [])
        return {str(s.get("id")): s.get("acked") for s in found if isinstance(s, dict)}

    async def after_ack(who: Account) -> list[dict[str, Any]]:
        page = body(
            await ctx.rest("GET", "/v1/sync?since=acked&limit=1000", token=who.token),
            200,
            "VXS-13.5-6",
            f"{who.username}'s sync since=acked",
        )
        found: list[dict[str, Any]] = page.get("events", [])
        return found

    shown_acked = await acked()
    expect(
        shown_acked.get(phone.session_id) == last and shown_acked.get(laptop.session_id) != last,
        "VXS-13.5-6",
        f"GET /v1/sessions shows acked {shown_acked}, expected the phone's {last!r} and the "
        "laptop's other",
    )
    expect(
        await after_ack(phone) == [],
        "VXS-13.5-6",
        "the phone's since=acked right after its ack gave events",
    )
    msg = str((await say(ctx, ctx.alice, thread, "after the ack"))["id"])
    newer = await after_ack(phone)
    expect(
        [e.get("message") for e in newer] == [msg],
        "VXS-13.5-6",
        f"the phone's since=acked gave {types(newer)}, expected alice's new message",
    )
    everything = await after_ack(laptop)
    expect(
        len(everything) == len(events) + 1,
        "VXS-13.5-6",
        f"the laptop (no ack) got {len(everything)} events since=acked, expected all "
        f"{len(events) + 1}",
    )
    await ctx.rest("POST", "/v1/sync/ack", token=phone.token, json={"token": first})
    expect(
        (await acked()).get(phone.session_id) == last,
        "VXS-13.5-6",
        f"an ack of an earlier token moved the phone's acked back: {await acked()}",
    )
    expect(
        [e.get("message") for e in await after_ack(phone)] == [msg],
        "VXS-13.5-6",
        "after an ack of an earlier token, since=acked no longer starts after the later one",
    )


@case(
    "13.5/stream",
    "the sync stream sends each event as it is appended, as SSE with its token and type, and "
    "resumes after Last-Event-ID or since",
    requirements=("VXS-13.5-7", "VXS-13.5-4"),
    accepts="GET /v1/sync/stream?since=<token>: 200 text/event-stream; alice's message and "
    "bob's reaction arrive as two SSE events (id the token, event the type, data the event "
    "object on one line) within the timeout; reconnected with Last-Event-ID the last id "
    "after 2 more messages: those 2 first, not the old ones; reconnected with since the "
    "first of them: the second; no event: limited (nothing was dropped; dropping is not "
    "provoked)",
)
async def stream(ctx: Context) -> None:
    alice = ctx.alice
    reader = await ctx.register("reader")
    thread = await group(ctx, alice, reader)
    since = await sync_token(ctx, reader)
    seen: list[SseEvent] = []
    async with event_stream(ctx, reader, since=since) as events:
        expect(
            events.status == 200 and events.content_type.startswith("text/event-stream"),
            "VXS-13.5-7",
            f"GET /v1/sync/stream: HTTP {events.status} {events.content_type!r}",
        )
        msg = str((await say(ctx, alice, thread, "streamed"))["id"])
        first = event_of(await events.event(ctx.timeout), "VXS-13.5-7")
        need(
            await ctx.rest("PUT", f"/v1/messages/{msg}/reactions/ok", token=reader.token),
            200,
            "react",
        )
        second = event_of(await events.event(ctx.timeout), "VXS-13.5-7")
        seen = list(events.events)
    expect(
        (first.get("type"), first.get("message")) == ("message", msg)
        and (second.get("type"), second.get("message")) == ("reaction", msg)
        and first["pos"] < second["pos"],
        "VXS-13.5-7",
        f"the stream sent {first} and {second}, expected the message then the reaction",
    )
    later = [str((await say(ctx, alice, thread, f"while away {i}"))["id"]) for i in range(2)]
    last_id = str(seen[-1].id)
    async with event_stream(ctx, reader, last_event_id=last_id) as events:
        resumed = [event_of(await events.event(ctx.timeout), "VXS-13.5-7") for _ in later]
        seen += events.events
    expect(
        [e.get("message") for e in resumed] == later,
        "VXS-13.5-7",
        f"reconnected with Last-Event-ID {last_id!r}, the stream sent "
        f"{[(e.get('type'), e.get('message')) for e in resumed]}, expected the 2 messages "
        "posted meanwhile",
    )
    async with event_stream(ctx, reader, since=str(resumed[0].get("token"))) as events:
        again = event_of(await events.event(ctx.timeout), "VXS-13.5-7")
        seen += events.events
    expect(
        again.get("message") == later[1],
        "VXS-13.5-7",
        f"reconnected with since the first of them, the stream sent {again}",
    )
    limited = [e for e in seen if e.event == "limited"]
    expect(
        not limited,
        "VXS-13.5-4",
        f"a stream of a new account's timeline sent event: limited {limited}",
    )


@case(
    "13.5/stream-keepalive",
    "a silent sync stream gets a comment line at least every 15 seconds",
    requirements=("VXS-13.5-7",),
    accepts="a stream of a new account nothing happens to, watched for 16.2 s: no silence "
    "(from the response's start, between lines, to the end of the watch) longer than 16 s "
    "(15 s and 1 s of slack), and the lines are comments. It waits 16 s: skipped unless "
    "--slow is given",
    timeout=40.0,
)
async def stream_keepalive(ctx: Context) -> None:
    if not ctx.slow:
        skip("it watches a silent sync stream for 16 s: run with --slow to check VXS-13.5-7")
    reader = await ctx.register("reader")
    since = await sync_token(ctx, reader)
    async with event_stream(ctx, reader, since=since) as events:
        expect(events.status == 200, "VXS-13.5-7", f"GET /v1/sync/stream: HTTP {events.status}")
        started = last = trio.current_time()
        end = started + KEEPALIVE + SLACK + 0.2
        lines: list[tuple[float, str]] = []
        while (now := trio.current_time()) < end:
            try:
                line = await events.line(min(end - now, KEEPALIVE + SLACK - (now - last)))
            except TransportFailure:
                break
            if line:
                last = trio.current_time()
                lines.append((last - started, line))
    times = [t for t, _ in lines]
    gaps = [b - a for a, b in zip([0.0, *times], [*times, end - started], strict=True)]
    expect(
        max(gaps) <= KEEPALIVE + SLACK,
        "VXS-13.5-7",
        f"a silent stream sent lines at {[round(t, 1) for t, _ in lines]} s: a silence of "
        f"{max(gaps):.1f} s, more than 15 s",
    )
    expect(
        all(line.startswith(":") for _, line in lines),
        "VXS-13.5-7",
        f"a stream with no event sent {[line for _, line in lines]}",
    )


# -- 13.6 Presence and live activity ---------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], within: float = 3.0) -> bool:
    """Whether ``check()`` comes true within ``within`` seconds (polled)."""
    deadline = trio.current_time() + within
    while not await check():
        if trio.current_time() > deadline:
            return False
        await trio.sleep(0.05)
    return True


@case(
    "13.6/presence",
    "an account is online while a device holds a sync open; speaking lists live messages with "
    "a talker; message.live reaches the timeline as a talker starts",
    requirements=("VXS-13.6-1",),
    accepts="in alice's thread with a new account: online without it at first; with it while "
    "its sync stream is open and while a long-poll is held (within 3 s), without it again "
    "within 3 s of the stream's connection closing and of the long-poll answering; alice "
    "talking (open and a chunk, not closed): speaking lists {message, sender alice} and the "
    "account's long-poll gets message.live within 3 s; her connection dropped: speaking no "
    "longer lists it (within 3 s) and the message stays live; resumed: listed again with a "
    "new message.live; closed: no longer listed",
)
async def presence(ctx: Context) -> None:
    alice = ctx.alice
    other = await ctx.register("present")
    thread = await group(ctx, alice, other)

    async def online() -> list[object]:
        found = (await read(ctx, alice, f"/v1/threads/{thread}")).get("online")
        return list(found) if isinstance(found, list) else []

    async def speaking() -> list[object]:
        found = (await read(ctx, alice, f"/v1/threads/{thread}")).get("speaking")
        return list(found) if isinstance(found, list) else []

    async def is_online() -> bool:
        return other.id in await online()

    async def is_offline() -> bool:
        return other.id not in await online()

    expect(await is_offline(), "VXS-13.6-1", f"online is {await online()} with no sync open")
    since = await sync_token(ctx, other)
    async with event_stream(ctx, other, since=since) as events:
        expect(events.status == 200, "VXS-13.6-1", f"the sync stream: HTTP {events.status}")
        expect(
            await until(is_online),
            "VXS-13.6-1",
            f"online is {await online()}: it does not list an account whose stream is open",
        )
    expect(
        await until(is_offline),
        "VXS-13.6-1",
        "online still lists the account 3 s after its stream's connection closed",
    )

    result: dict[str, Any] = {}

    async def hold(token: str, wait_ms: int) -> None:
        path = f"/v1/sync?since={quote(token)}&timeout={wait_ms}"
        result["page"] = need(await ctx.rest("GET", path, token=other.token), 200, f"GET {path}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, since, 10_000)
        expect(
            await until(is_online),
            "VXS-13.6-1",
            f"online is {await online()}: it does not list an account holding a long-poll",
        )
        await say(ctx, alice, thread, "end the long-poll")
    since = str(result["page"].get("next"))
    expect(
        await until(is_offline),
        "VXS-13.6-1",
        "online still lists the account 3 s after its long-poll was answered",
    )

    voice = ctx.msg_id()
    want = {"message": voice, "sender": alice.id}

    async def is_speaking() -> bool:
        return want in await speaking()

    async def is_silent() -> bool:
        return want not in await speaking()

    async def live_event(token: str) -> None:
        got, result["next"] = await wait_events(ctx, other, token, 1, within=3.0)
        while got and "message.live" not in types(got):
            more, result["next"] = await wait_events(ctx, other, result["next"], 1, within=3.0)
            if not more:
                break
            got += more
        result["live"] = [e for e in got if e.get("type") == "message.live"]

    for attempt, frames in (("starts", [ctx.chunk(0)]), ("resumes", [ctx.chunk(1)])):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live_event, since)
            await ctx.sleep(0.1)
            async with ctx.upload(alice.token) as talker:
                await talker.send(ctx.open_frame(thread, voice), *frames)
                await ctx.wait_acked(talker, frames[-1].seq)
                expect(
                    await until(is_speaking),
                    "VXS-13.6-1",
                    f"speaking is {await speaking()} 3 s after a talker {attempt}: it does "
                    f"not list {want}",
                )
        since = str(result["next"])
        expect(
            [e.get("message") for e in result["live"]] == [voice],
            "VXS-13.6-1",
            f"when the talker {attempt}, the account's long-poll got "
            f"{result['live']}, expected a message.live event within 3 s",
        )
        expect(
            await until(is_silent),
            "VXS-13.6-1",
            f"speaking is {await speaking()} 3 s after the talker's connection closed",
        )
        state = (await read(ctx, alice, f"/v1/messages/{voice}")).get("state")
        expect(state == "live", "VXS-13.6-1", f"the message whose talker left is {state!r}")
    async with ctx.upload(alice.token) as talker:
        await talker.send(ctx.open_frame(thread, voice), Close(chunks=2))
        await talker.frames()
    expect(await is_silent(), "VXS-13.6-1", f"speaking lists a closed message: {await speaking()}")
