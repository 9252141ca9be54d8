"""Records as the JSON objects of the REST surface and the timeline (spec section 13).

One place renders a message, a thread or an account, so that what ``GET
/v1/messages/{id}`` answers and what a timeline event carries are the same object;
a client keeps one parser. What differs per viewer (unread counts, the viewer's
role and mute) is added by the caller, never stored in a timeline event.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ..store.base import Account, Event, MessageRecord, Reaction, Thread


def account_view(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "username": account.username,
        "display_name": account.display_name,
        "avatar": account.avatar,
    }


def message_view(
    record: MessageRecord, reactions: Iterable[Reaction] = (), viewer: str | None = None
) -> dict[str, Any]:
    """The message object: the fields every message has, then its kind's content; for
    a ``viewer`` (a REST answer, not a timeline event) also the emoji it put on it."""
    reactions = list(reactions)
    view: dict[str, Any] = {
        "id": record.id,
        "thread": record.thread_id,
        "sender": record.sender,
        "kind": record.kind,
        "codec": record.codec,
        "created": record.created,
        "state": record.state,
        "chunks": record.chunks,
        "duration": record.duration,
        "to": record.directed_to,
        "recalled": record.recalled,
        "forwarded_from": record.forwarded_from,
        "reactions": dict(sorted(Counter(r.emoji for r in reactions).items())),
    }
    if viewer is not None:
        view["mine"] = sorted(r.emoji for r in reactions if r.account_id == viewer)
    body = json.loads(record.body) if record.body else None
    if isinstance(body, dict):
        if record.kind == "text":
            view["text"] = body.get("text", "")
        elif record.kind == "location":
            view["location"] = body
        elif record.kind == "image" and record.media_id is not None:
            view["image"] = {
                **body,
                "media": record.media_id,
                "url": f"/v1/media/{record.media_id}",
                "thumbnail": f"/v1/media/{record.media_id}/thumbnail",
            }
    return view


def thread_view(thread: Thread, people: Mapping[str, Account]) -> dict[str, Any]:
    """The thread as every participant sees it (``people``: accounts by id)."""
    participants = []
    for account_id in sorted(thread.participants):
        member = thread.member(account_id)
        account = people.get(account_id)
        if member is None or account is None:
            continue
        participants.append(
            {
                "id": account_id,
                "username": account.username,
                "display_name": account.display_name,
                "role": member.role,
            }
        )
    return {
        "id": thread.id,
        "title": thread.title,
        "kind": thread.kind,
        "controlled": thread.controlled,
        "created_by": thread.created_by,
        "created": thread.created,
        "participants": participants,
    }


def event_view(event: Event) -> dict[str, Any]:
    return {
        "pos": event.pos,
        "token": str(event.pos),
        "type": event.type,
        "thread": event.thread_id,
        "message": event.message_id,
        "created": event.created,
        "data": json.loads(event.data),
    }


def dumps(value: Any) -> str:
    """Compact JSON, as the timeline stores it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
