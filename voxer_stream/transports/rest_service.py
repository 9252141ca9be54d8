"""The messaging service's REST routes (spec section 13, ``spec/openapi.yaml``).

Thin on purpose: each route authenticates, checks the shape of its input, calls the
service layer and renders what it returns. The rules (who may see or do what) live
in ``voxer_stream/service``; the JSON objects in ``service/views.py``.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
from quart import Response, request
from quart_trio import QuartTrio

from ..media.image import MAX_BYTES as IMAGE_MAX_BYTES
from ..media.image import ImageError, probe, thumbnail
from ..service.identity import Authenticated, now_ms
from ..service.timeline import PAGE_DEFAULT, parse_token
from ..service.views import account_view, event_view
from ..service.webpush import PushSubscription
from ..store.base import Account, Counts, Media, PushRecord, Thread
from ..wire import ErrorCode, ProtocolError
from .streams import Services

#: The largest JSON body; images may be larger (``IMAGE_MAX_BYTES``).
JSON_BODY_LIMIT: Final = 1 << 20
SEARCH_MAX: Final = 100
#: Images decoded at once (each up to 40 megapixels, about 160 MB of bitmap).
IMAGE_WORKERS: Final = 2
#: A sync stream's comment line after this much silence keeps proxies from closing it.
STREAM_KEEPALIVE: Final = 15.0
_TERM = re.compile(r"\w+", re.UNICODE)

Auth = Callable[[], Awaitable[Authenticated]]


def invalid(detail: str, requirement: str | None = None) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_REQUEST, detail, requirement)


async def raw_body() -> bytes:
    data = await request.get_data(as_text=False)
    return data if isinstance(data, bytes) else data.encode()


async def json_body() -> dict[str, Any]:
    """The request's JSON object. Whatever cannot be stored as UTF-8 text (a lone
    surrogate such as ``"\\ud800"`` is valid JSON) or nests too deep for the parser is
    refused here, once, rather than failing deep in the store."""
    data = await raw_body()
    if len(data) > JSON_BODY_LIMIT:
        raise invalid("a JSON body is at most 1 MiB")
    try:
        value = json.loads(data) if data else None
        if value is not None:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        value = None
    if not isinstance(value, dict):
        raise invalid("the body must be a JSON object of UTF-8 text", "VXS-8-5")
    return value


def decimal(raw: str, what: str, digits: int = 18) -> int:
    """A non-negative decimal integer of ASCII digits (``str.isdigit`` also takes
    "²" and Arabic-Indic digits), at most ``digits`` long."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > digits:
        raise invalid(f"{what} must be a decimal integer")
    return int(raw)


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    value = decimal(raw, name, 9)
    if not low <= value <= high:
        raise invalid(f"{name} must be an integer from {low} to {high}")
    return value


def fts_query(text: str) -> str:
    """A user's words as an FTS5 query: every word quoted (no query syntax gets
    through), all required, the last one as a prefix (search as you type)."""
    terms = _TERM.findall(text)[:16]
    if not terms:
        raise invalid("q must contain at least one word", "VXS-13.8-1")
    quoted = ['"' + t.replace('"', '""') + '"' for t in terms]
    quoted[-1] += "*"
    return " ".join(quoted)


def add_service_routes(app: QuartTrio, services: Services, authed: Auth) -> None:
    store = services.hub.store
    image_limiter = trio.CapacityLimiter(IMAGE_WORKERS)
    threads = services.threads
    messages = services.messages
    timeline = services.timeline

    async def current() -> Account:
        return (await authed()).account

    async def thread_for(
        account: Account, thread: Thread, all_counts: dict[str, Counts] | None = None
    ) -> dict[str, Any]:
        """The thread as ``account`` sees it: its own role and mute, its counts, who is
        online and who is speaking now (VXS-13.2-6)."""
        view = await threads.view(thread)
        member = thread.member(account.id)
        if all_counts is None:
            all_counts = await store.thread_counts(account.id)
        counts = all_counts.get(thread.id)
        return {
            **view,
            "role": member.role if member else None,
            "muted": member.muted if member else False,
            "unread": counts.unread if counts else 0,
            "unheard": counts.unheard if counts else 0,
            "speaking": [
                {"message": s.message, "sender": s.sender}
                for s in timeline.speaking(thread.id)
                if s.visible_to(account.id)
            ],
            "online": timeline.online(thread.participants),
        }

    # -- accounts, sessions, profiles, contacts --------------------------------------

    @app.post("/v1/sessions")
    async def login() -> Any:
        data = await json_body()
        username, password, device = (
            data.get("username"),
            data.get("password"),
            data.get("device", ""),
        )
        if not isinstance(username, str) or not isinstance(password, str):
            raise invalid("'username' and 'password' must be strings")
        if not isinstance(device, str):
            raise invalid("'device' must be a string")
        issued = await services.identity.login(
            username, password, device=device, client=request.remote_addr or ""
        )
        return {
            "token": issued.token,
            "account_id": issued.account.id,
            "session_id": issued.session_id,
            "expires": issued.expires,
        }, 201

    @app.get("/v1/sessions")
    async def sessions() -> Any:
        who = await authed()
        return {
            "sessions": [
                {
                    "id": s.id,
                    "device": s.device,
                    "created": s.created,
                    "expires": s.expires,
                    "last_seen": s.last_seen,
                    "acked": str(s.acked),
                    "current": s.token_hash == who.session.token_hash,
                }
                for s in await store.list_sessions(who.account.id)
            ]
        }

    @app.delete("/v1/sessions/<session_id>")
    async def revoke(session_id: str) -> Any:
        who = await authed()
        if session_id == "current":
            await services.identity.logout_session(who)
            return "", 204
        if not await store.delete_sessions(who.account.id, session_id=session_id):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no session {session_id!r}", "VXS-8-11")
        return "", 204

    @app.post("/v1/accounts/me/password")
    async def change_password() -> Any:
        who = await authed()
        data = await json_body()
        old, new = data.get("old_password"), data.get("new_password")
        if not isinstance(old, str) or not isinstance(new, str):
            raise invalid("'old_password' and 'new_password' must be strings")
        ended = await services.identity.change_password(who, old, new)
        return {"sessions_ended": ended}

    @app.get("/v1/accounts/me")
    async def me() -> Any:
        return account_view(await current())

    @app.patch("/v1/accounts/me")
    async def update_me() -> Any:
        account = await current()
        data = await json_body()
        updated = await services.contacts.update_profile(
            account, display_name=data.get("display_name"), avatar=data.get("avatar", ...)
        )
        return account_view(updated)

    @app.get("/v1/accounts/<username>")
    async def profile(username: str) -> Any:
        await current()
        return await services.contacts.profile(username)

    @app.get("/v1/contacts")
    async def contacts() -> Any:
        return {"contacts": await services.contacts.list(await current())}

    @app.put("/v1/contacts/<username>")
    async def put_contact(username: str) -> Any:
        account = await current()
        data = await json_body() if await request.get_data() else {}
        return await services.contacts.put(account, username, data.get("blocked"))

    @app.delete("/v1/contacts/<username>")
    async def delete_contact(username: str) -> Any:
        await services.contacts.remove(await current(), username)
        return "", 204

    # -- threads -----------------------------------------------------------------------

    def names(data: dict[str, Any], key: str) -> list[str]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise invalid(f"{key!r} must be a list of strings")
        return value

    def flag(data: dict[str, Any], key: str) -> bool | None:
        value = data.get(key)
        if value is not None and not isinstance(value, bool):
            raise invalid(f"{key!r} must be true or false")
        return value

    def optional_text(data: dict[str, Any], key: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise invalid(f"{key!r} must be a string")
        return value

    @app.post("/v1/threads")
    async def create_thread() -> Any:
        account = await current()
        data = await json_body()
        thread = await threads.create(
            account,
            title=optional_text(data, "title") or "",
            participants=names(data, "participants"),
            thread_id=optional_text(data, "id"),
            kind=optional_text(data, "kind") or "group",
            controlled=flag(data, "controlled") or False,
        )
        return await thread_for(account, thread), 201

    @app.get("/v1/threads")
    async def list_threads() -> Any:
        account = await current()
        counts = await store.thread_counts(account.id)
        found = await store.list_threads(account.id)
        return {"threads": [await thread_for(account, t, counts) for t in found]}

    @app.get("/v1/threads/<thread_id>")
    async def get_thread(thread_id: str) -> Any:
        account = await current()
        return await thread_for(account, await threads.visible(account, thread_id))

    @app.patch("/v1/threads/<thread_id>")
    async def update_thread(thread_id: str) -> Any:
        account = await current()
        data = await json_body()
        thread = await threads.update(
            account,
            thread_id,
            title=optional_text(data, "title"),
            controlled=flag(data, "controlled"),
        )
        return await thread_for(account, thread)

    @app.post("/v1/threads/<thread_id>/participants")
    async def add_participants(thread_id: str) -> Any:
        account = await current()
        data = await json_body()
        thread = await threads.add_participants(
            account, thread_id, names(data, "usernames"), optional_text(data, "role") or "member"
        )
        return await thread_for(account, thread)

    @app.patch("/v1/threads/<thread_id>/participants/<account_id>")
    async def set_role(thread_id: str, account_id: str) -> Any:
        account = await current()
        data = await json_body()
        role = optional_text(data, "role")
        if role is None:
            raise invalid("'role' is required", "VXS-13.2-3")
        thread = await threads.set_role(account, thread_id, account_id, role)
        return await thread_for(account, thread)

    @app.delete("/v1/threads/<thread_id>/participants/<account_id>")
    async def remove_participant(thread_id: str, account_id: str) -> Any:
        account = await current()
        await threads.remove(account, thread_id, account_id)
        return "", 204

    @app.put("/v1/threads/<thread_id>/mute")
    async def mute(thread_id: str) -> Any:
        account = await current()
        return await thread_for(account, await threads.mute(account, thread_id, True))

    @app.delete("/v1/threads/<thread_id>/mute")
    async def unmute(thread_id: str) -> Any:
        account = await current()
        return await thread_for(account, await threads.mute(account, thread_id, False))

    # -- messages ----------------------------------------------------------------------

    @app.get("/v1/threads/<thread_id>/messages")
    async def list_messages(thread_id: str) -> Any:
        account = await current()
        await threads.visible(account, thread_id)
        limit = int_arg("limit", 100, 1, 500)
        records = await store.list_messages(
            thread_id, limit, before=request.args.get("before"), viewer=account.id
        )
        return {"messages": await messages.views(records, account.id)}

    @app.post("/v1/threads/<thread_id>/messages")
    async def post_message(thread_id: str) -> Any:
        account = await current()
        record = await messages.post(account, thread_id, await json_body())
        return await messages.view(record, account.id), 201

    @app.get("/v1/messages/<message_id>")
    async def get_message(message_id: str) -> Any:
        account = await current()
        return await messages.view(await threads.message(account, message_id), account.id)

    @app.delete("/v1/messages/<message_id>")
    async def recall(message_id: str) -> Any:
        account = await current()
        return await messages.view(await messages.recall(account, message_id), account.id)

    @app.post("/v1/messages/<message_id>/forward")
    async def forward(message_id: str) -> Any:
        account = await current()
        data = await json_body()
        target = optional_text(data, "thread")
        if target is None:
            raise invalid("'thread' is required", "VXS-13.3-5")
        record = await messages.forward(account, message_id, target, data)
        return await messages.view(record, account.id), 201

    @app.put("/v1/messages/<message_id>/reactions/<emoji>")
    async def react(message_id: str, emoji: str) -> Any:
        account = await current()
        return {"reactions": await messages.react(account, message_id, emoji, True)}

    @app.delete("/v1/messages/<message_id>/reactions/<emoji>")
    async def unreact(message_id: str, emoji: str) -> Any:
        account = await current()
        return {"reactions": await messages.react(account, message_id, emoji, False)}

    @app.post("/v1/messages/<message_id>/receipts")
    async def receipt(message_id: str) -> Any:
        account = await current()
        data = await json_body()
        kind = optional_text(data, "kind") or ""
        made = await messages.receipt(account, message_id, kind)
        return {"message": made.message_id, "account": made.account_id, "kind": made.kind}

    @app.get("/v1/messages/<message_id>/receipts")
    async def receipts(message_id: str) -> Any:
        account = await current()
        await threads.message(account, message_id)
        return {
            "receipts": [
                {"account": r.account_id, "kind": r.kind, "at": r.created}
                for r in await store.list_receipts(message_id)
            ]
        }

    # -- images ------------------------------------------------------------------------

    def media_view(media: Media) -> dict[str, Any]:
        return {
            "id": media.id,
            "content_type": media.content_type,
            "width": media.width,
            "height": media.height,
            "size": len(media.data),
            "url": f"/v1/media/{media.id}",
            "thumbnail": f"/v1/media/{media.id}/thumbnail",
        }

    @app.post("/v1/media")
    async def upload_media() -> Any:
        account = await current()
        data = await raw_body()
        if len(data) > IMAGE_MAX_BYTES:
            raise invalid(f"an image is at most {IMAGE_MAX_BYTES} bytes", "VXS-13.3-6")
        try:
            # At most IMAGE_WORKERS at once: each may hold a 40-megapixel bitmap.
            info = await trio.to_thread.run_sync(probe, data, limiter=image_limiter)
            thumb, thumb_info = await trio.to_thread.run_sync(
                thumbnail, data, limiter=image_limiter
            )
        except ImageError as exc:
            raise invalid(str(exc), "VXS-13.3-6") from None
        media = Media(
            id=uuid.uuid4().hex,
            owner=account.id,
            content_type=info.content_type,
            width=info.width,
            height=info.height,
            data=data,
            thumbnail=thumb,
            thumbnail_type=thumb_info.content_type,
            created=now_ms(),
        )
        await store.put_media(media)
        return media_view(media), 201

    async def visible_media(media_id: str) -> Media:
        account = await current()
        media = await store.get_media(media_id)
        if media is None or not await store.media_visible(media_id, account.id):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no image {media_id!r}", "VXS-8-2")
        return media

    @app.get("/v1/media/<media_id>")
    async def get_media(media_id: str) -> Any:
        media = await visible_media(media_id)
        return Response(media.data, content_type=media.content_type)

    @app.get("/v1/media/<media_id>/thumbnail")
    async def get_thumbnail(media_id: str) -> Any:
        media = await visible_media(media_id)
        return Response(media.thumbnail, content_type=media.thumbnail_type)

    # -- the timeline ------------------------------------------------------------------

    def since(who: Authenticated) -> int | None:
        token = request.args.get("since") or request.headers.get("Last-Event-ID")
        if token == "acked":
            return who.session.acked
        return parse_token(token)

    @app.get("/v1/sync")
    async def sync() -> Any:
        who = await authed()
        limit = int_arg("limit", PAGE_DEFAULT, 1, 1000)
        timeout = int_arg("timeout", 0, 0, 60_000)
        with timeline.connected(who.account.id, who.session.id):
            page = await timeline.wait_page(who.account.id, since(who), limit, timeout)
        await store.touch_session(who.session.token_hash, last_seen=now_ms())
        return {
            "events": [event_view(e) for e in page.events],
            "next": str(page.next),
            "more": page.more,
            "limited": page.limited,
        }

    @app.get("/v1/sync/stream")
    async def sync_stream() -> Any:
        who = await authed()
        start = since(who)
        await timeline.page(who.account.id, start, 1)  # a bad token fails here, as JSON

        async def events() -> Any:
            with timeline.connected(who.account.id, who.session.id):
                yield b": voxer-stream sync\n\n"
                async for page in timeline.stream(
                    who.account.id, start, keepalive=STREAM_KEEPALIVE
                ):
                    if page.limited:
                        data = json.dumps({"next": str(page.next)})
                        yield f"event: limited\ndata: {data}\n\n".encode()
                    if not page.events:
                        yield b": keep-alive\n\n"
                    for event in page.events:
                        data = json.dumps(event_view(event), ensure_ascii=False)
                        yield f"id: {event.pos}\nevent: {event.type}\ndata: {data}\n\n".encode()

        return Response(
            events(),
            content_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/sync/ack")
    async def ack() -> Any:
        who = await authed()
        data = await json_body()
        token = optional_text(data, "token")
        position = parse_token(token)
        if position is None:
            raise invalid("'token' is required", "VXS-13.5-6")
        bounds = await store.timeline_bounds(who.account.id)
        if position > bounds.latest:
            raise invalid("the token is not one this server gave", "VXS-13.5-6")
        await store.touch_session(who.session.token_hash, acked=position, last_seen=now_ms())
        return {"acked": str(max(position, who.session.acked))}

    # -- search ------------------------------------------------------------------------

    @app.get("/v1/search")
    async def search() -> Any:
        account = await current()
        query = fts_query(request.args.get("q", ""))
        limit = int_arg("limit", 20, 1, SEARCH_MAX)
        before = None
        cursor = request.args.get("before")
        if cursor:
            created, _, rank = cursor.partition(".")
            what = "before (a cursor this server gave)"
            before = (decimal(created, what), decimal(rank, what))
        hits = await store.search(account.id, query, before=before, limit=limit)
        return {
            "results": [
                {
                    "kind": h.kind,
                    "thread": h.thread_id,
                    "message": h.message_id,
                    "created": h.created,
                    "snippet": h.snippet,
                }
                for h in hits
            ],
            "next": f"{hits[-1].created}.{hits[-1].rank}" if len(hits) == limit else None,
        }

    # -- Web Push --------------------------------------------------------------------

    @app.get("/v1/push/vapid")
    async def vapid() -> Any:
        await current()
        return {"public_key": services.vapid_public_key}

    def push_view(record: PushRecord) -> dict[str, Any]:
        return {"id": record.id, "endpoint": record.endpoint, "session": record.session_id}

    @app.post("/v1/push/subscriptions")
    async def subscribe() -> Any:
        who = await authed()
        data = await json_body()
        try:
            subscription = PushSubscription.from_json(data)
        except ValueError as exc:
            raise invalid(str(exc), "VXS-13.7-1") from None
        if not services.push_endpoint_allowed(subscription.endpoint):
            raise invalid("a push endpoint must be an https URL", "VXS-13.7-1")
        record = await store.put_push_subscription(
            PushRecord(
                id=base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
                account_id=who.account.id,
                session_id=who.session.id,
                endpoint=subscription.endpoint,
                p256dh=subscription.p256dh,
                auth=subscription.auth,
                created=now_ms(),
            )
        )
        return push_view(record), 201

    @app.get("/v1/push/subscriptions")
    async def subscriptions() -> Any:
        account = await current()
        records = await store.list_push_subscriptions(account.id)
        return {"subscriptions": [push_view(r) for r in records]}

    @app.delete("/v1/push/subscriptions/<subscription_id>")
    async def unsubscribe(subscription_id: str) -> Any:
        account = await current()
        records = await store.list_push_subscriptions(account.id)
        if not any(r.id == subscription_id for r in records):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no subscription {subscription_id!r}")
        await store.delete_push_subscription(subscription_id)
        return "", 204
