"""The messaging service's half of the SQLite backend (spec section 13).

Contacts, thread settings, recall and forward, reactions, receipts, images, the
timeline, search and push subscriptions. ``SQLiteStore`` inherits these methods; they
use its ``_read`` (a snapshot on a pooled reader) and ``_write`` (one savepoint of a
group commit), so each method is atomic: a write and the timeline events it causes
commit together or not at all, which is what lets a device trust its timeline.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from .base import (
    Contact,
    Counts,
    Event,
    Media,
    MessageRecord,
    NewEvent,
    NotFound,
    PushRecord,
    Reaction,
    Receipt,
    ReceiptKind,
    Role,
    SearchHit,
    Session,
    Thread,
    TimelineBounds,
)
from .sqlite_rows import (
    MESSAGE_COLUMNS,
    MESSAGE_PLACEHOLDERS,
    SESSION_COLUMNS,
    THREAD_COLUMNS,
    get_message,
    index_message,
    insert_events,
    integrity_error,
    message_values,
    read_threads,
    session_row,
)

T = TypeVar("T")

_PUSH_COLUMNS = "id, account_id, session_id, endpoint, p256dh, auth, created"


def _push(row: tuple[Any, ...]) -> PushRecord:
    return PushRecord(
        id=row[0],
        account_id=row[1],
        session_id=row[2],
        endpoint=row[3],
        p256dh=row[4],
        auth=row[5],
        created=row[6],
    )


class ServiceOps:
    """The ``Store`` methods of the messaging service, for ``SQLiteStore``."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    # -- accounts, sessions, contacts ----------------------------------------------------

    async def update_account(
        self,
        account_id: str,
        *,
        password_hash: str | None = None,
        display_name: str | None = None,
        avatar: str | None = None,
        clear_avatar: bool = False,
    ) -> None:
        sets: list[str] = []
        values: list[Any] = []
        for column, value in (("password_hash", password_hash), ("display_name", display_name)):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        if avatar is not None or clear_avatar:
            sets.append("avatar = ?")
            values.append(avatar)

        def op(conn: sqlite3.Connection) -> None:
            statement = f"UPDATE accounts SET {', '.join(sets) or 'id = id'} WHERE id = ?"
            if conn.execute(statement, (*values, account_id)).rowcount == 0:
                raise NotFound(f"account {account_id!r}")

        await self._write(op)

    async def list_sessions(self, account_id: str) -> list[Session]:
        def op(conn: sqlite3.Connection) -> list[Session]:
            rows = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE account_id = ?"
                " ORDER BY created DESC, id",
                (account_id,),
            ).fetchall()
            return [session_row(row) for row in rows]

        return await self._read(op)

    async def delete_sessions(
        self,
        account_id: str,
        *,
        session_id: str | None = None,
        keep_token_hash: str | None = None,
    ) -> int:
        def op(conn: sqlite3.Connection) -> int:
            if session_id is not None:
                cursor = conn.execute(
                    "DELETE FROM sessions WHERE account_id = ? AND id = ?",
                    (account_id, session_id),
                )
            else:
                cursor = conn.execute(
                    "DELETE FROM sessions WHERE account_id = ? AND token_hash IS NOT ?",
                    (account_id, keep_token_hash),
                )
            conn.execute(
                "DELETE FROM push_subscriptions WHERE account_id = ? AND session_id NOT IN"
                " (SELECT id FROM sessions WHERE account_id = ?)",
                (account_id, account_id),
            )
            return cursor.rowcount

        return await self._write(op)

    async def touch_session(
        self, token_hash: str, *, last_seen: int | None = None, acked: int | None = None
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE sessions SET last_seen = coalesce(?, last_seen),"
                " acked = max(acked, coalesce(?, acked)) WHERE token_hash = ?",
                (last_seen, acked, token_hash),
            )

        await self._write(op)

    async def put_contact(self, contact: Contact) -> None:
        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO contacts (owner, contact, blocked, created) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (owner, contact) DO UPDATE SET blocked = excluded.blocked",
                    (contact.owner, contact.contact, int(contact.blocked), contact.created),
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, "contact") from exc

        await self._write(op)

    async def get_contact(self, owner: str, contact: str) -> Contact | None:
        def op(conn: sqlite3.Connection) -> Contact | None:
            row = conn.execute(
                "SELECT blocked, created FROM contacts WHERE owner = ? AND contact = ?",
                (owner, contact),
            ).fetchone()
            if row is None:
                return None
            return Contact(owner=owner, contact=contact, blocked=bool(row[0]), created=row[1])

        return await self._read(op)

    async def delete_contact(self, owner: str, contact: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM contacts WHERE owner = ? AND contact = ?", (owner, contact)
            )
            return cursor.rowcount > 0

        return await self._write(op)

    async def list_contacts(self, owner: str) -> list[Contact]:
        def op(conn: sqlite3.Connection) -> list[Contact]:
            rows = conn.execute(
                "SELECT contact, blocked, created FROM contacts WHERE owner = ?"
                " ORDER BY created, contact",
                (owner,),
            ).fetchall()
            return [Contact(owner=owner, contact=c, blocked=bool(b), created=t) for c, b, t in rows]

        return await self._read(op)

    # -- threads -----------------------------------------------------------------------

    async def find_direct_thread(self, a: str, b: str) -> Thread | None:
        pair = " ".join(sorted((a, b)))

        def op(conn: sqlite3.Connection) -> Thread | None:
            rows = conn.execute(
                f"SELECT {THREAD_COLUMNS} FROM threads WHERE pair = ?", (pair,)
            ).fetchall()
            threads = read_threads(conn, rows)
            return threads[0] if threads else None

        return await self._read(op)

    async def update_thread(
        self,
        thread_id: str,
        *,
        title: str | None = None,
        controlled: bool | None = None,
        events: Sequence[NewEvent] = (),
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE threads SET title = coalesce(?, title),"
                " controlled = coalesce(?, controlled) WHERE id = ?",
                (title, None if controlled is None else int(controlled), thread_id),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"thread {thread_id!r}")
            if title is not None:
                conn.execute(
                    "UPDATE search_index SET body = ? WHERE kind = 'thread' AND thread_id = ?",
                    (title, thread_id),
                )
            insert_events(conn, events)

        await self._write(op)

    async def set_member(
        self,
        thread_id: str,
        account_id: str,
        *,
        role: Role | None = None,
        muted: bool | None = None,
        events: Sequence[NewEvent] = (),
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE participants SET role = coalesce(?, role), muted = coalesce(?, muted)"
                " WHERE thread_id = ? AND account_id = ?",
                (role, None if muted is None else int(muted), thread_id, account_id),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"{account_id!r} in thread {thread_id!r}")
            insert_events(conn, events)

        await self._write(op)

    async def remove_participant(
        self,
        thread_id: str,
        account_id: str,
        events: Sequence[NewEvent] = (),
        *,
        promote: str | None = None,
    ) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM participants WHERE thread_id = ? AND account_id = ?",
                (thread_id, account_id),
            )
            if cursor.rowcount == 0:
                return False
            if promote is not None:
                conn.execute(
                    "UPDATE participants SET role = 'admin' WHERE thread_id = ? AND account_id = ?",
                    (thread_id, promote),
                )
            insert_events(conn, events)
            return True

        return await self._write(op)

    async def thread_counts(self, account_id: str) -> dict[str, Counts]:
        def op(conn: sqlite3.Connection) -> dict[str, Counts]:
            rows = conn.execute(
                "SELECT m.thread_id,"
                " sum(m.kind != 'audio' AND NOT EXISTS (SELECT 1 FROM receipts AS r"
                "  WHERE r.message_id = m.id AND r.account_id = ?1 AND r.kind = 'read')),"
                " sum(m.kind = 'audio' AND NOT EXISTS (SELECT 1 FROM receipts AS r"
                "  WHERE r.message_id = m.id AND r.account_id = ?1 AND r.kind = 'heard'))"
                " FROM participants AS p JOIN messages AS m ON m.thread_id = p.thread_id"
                " WHERE p.account_id = ?1 AND m.sender != ?1 AND m.recalled IS NULL"
                " AND m.created >= p.joined"
                " AND (m.directed_to IS NULL OR m.directed_to = ?1)"
                " GROUP BY m.thread_id",
                (account_id,),
            ).fetchall()
            return {t: Counts(unread=r or 0, unheard=h or 0) for t, r, h in rows}

        return await self._read(op)

    # -- messages: recall, forward, reactions, receipts, media ---------------------------

    async def recall_message(
        self, message_id: str, at: int, events: Sequence[NewEvent] = ()
    ) -> MessageRecord:
        def op(conn: sqlite3.Connection) -> MessageRecord:
            cursor = conn.execute(
                "UPDATE messages SET recalled = coalesce(recalled, ?), body = NULL,"
                " media_id = NULL, chunks = 0, duration = 0 WHERE id = ?",
                (at, message_id),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"message {message_id!r}")
            conn.execute("DELETE FROM chunks WHERE message_id = ?", (message_id,))
            conn.execute("DELETE FROM reactions WHERE message_id = ?", (message_id,))
            conn.execute(
                "DELETE FROM search_index WHERE kind = 'message' AND message_id = ?",
                (message_id,),
            )
            insert_events(conn, events)
            stored = get_message(conn, message_id)
            assert stored is not None
            return stored

        return await self._write(op)

    async def forward_message(
        self, source_id: str, message: MessageRecord, events: Sequence[NewEvent] = ()
    ) -> MessageRecord:
        def op(conn: sqlite3.Connection) -> MessageRecord:
            try:
                cursor = conn.execute(
                    f"INSERT OR IGNORE INTO messages ({MESSAGE_COLUMNS})"
                    f" VALUES ({MESSAGE_PLACEHOLDERS})",
                    message_values(message),
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, f"message {message.id!r}") from exc
            if cursor.rowcount:
                conn.execute(
                    "INSERT INTO chunks (message_id, seq, ts, duration, packets)"
                    " SELECT ?, seq, ts, duration, packets FROM chunks WHERE message_id = ?",
                    (message.id, source_id),
                )
                index_message(conn, message)
                insert_events(conn, events)
            stored = get_message(conn, message.id)
            assert stored is not None
            return stored

        return await self._write(op)

    async def set_reaction(
        self, reaction: Reaction, on: bool, events: Sequence[NewEvent] = ()
    ) -> bool:
        key = (reaction.message_id, reaction.account_id, reaction.emoji)

        def op(conn: sqlite3.Connection) -> bool:
            if on:
                try:
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO reactions"
                        " (message_id, account_id, emoji, created) VALUES (?, ?, ?, ?)",
                        (*key, reaction.created),
                    )
                except sqlite3.IntegrityError as exc:
                    raise integrity_error(exc, f"message {reaction.message_id!r}") from exc
            else:
                cursor = conn.execute(
                    "DELETE FROM reactions WHERE message_id = ? AND account_id = ? AND emoji = ?",
                    key,
                )
            if cursor.rowcount == 0:
                return False
            insert_events(conn, events)
            return True

        return await self._write(op)

    async def reactions(self, message_ids: Sequence[str]) -> dict[str, list[Reaction]]:
        ids = list(message_ids)

        def op(conn: sqlite3.Connection) -> dict[str, list[Reaction]]:
            found: dict[str, list[Reaction]] = {}
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                for m, a, e, t in conn.execute(
                    "SELECT message_id, account_id, emoji, created FROM reactions"
                    f" WHERE message_id IN ({', '.join(['?'] * len(part))})"
                    " ORDER BY created, account_id",
                    part,
                ):
                    found.setdefault(m, []).append(
                        Reaction(message_id=m, account_id=a, emoji=e, created=t)
                    )
            return found

        return await self._read(op)

    async def add_receipt(self, receipt: Receipt, events: Sequence[NewEvent] = ()) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            try:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO receipts (message_id, account_id, kind, created)"
                    " VALUES (?, ?, ?, ?)",
                    (receipt.message_id, receipt.account_id, receipt.kind, receipt.created),
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, f"message {receipt.message_id!r}") from exc
            if cursor.rowcount == 0:
                return False
            insert_events(conn, events)
            return True

        return await self._write(op)

    async def list_receipts(self, message_id: str) -> list[Receipt]:
        def op(conn: sqlite3.Connection) -> list[Receipt]:
            rows = conn.execute(
                "SELECT account_id, kind, created FROM receipts WHERE message_id = ?"
                " ORDER BY created, account_id, kind",
                (message_id,),
            ).fetchall()
            return [
                Receipt(message_id=message_id, account_id=a, kind=cast(ReceiptKind, k), created=t)
                for a, k, t in rows
            ]

        return await self._read(op)

    async def put_media(self, media: Media) -> None:
        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO media (id, owner, content_type, width, height, data,"
                    " thumbnail, thumbnail_type, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        media.id,
                        media.owner,
                        media.content_type,
                        media.width,
                        media.height,
                        media.data,
                        media.thumbnail,
                        media.thumbnail_type,
                        media.created,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, f"media {media.id!r}") from exc

        await self._write(op)

    async def get_media(self, media_id: str) -> Media | None:
        def op(conn: sqlite3.Connection) -> Media | None:
            row = conn.execute(
                "SELECT id, owner, content_type, width, height, data, thumbnail,"
                " thumbnail_type, created FROM media WHERE id = ?",
                (media_id,),
            ).fetchone()
            if row is None:
                return None
            return Media(
                id=row[0],
                owner=row[1],
                content_type=row[2],
                width=row[3],
                height=row[4],
                data=row[5],
                thumbnail=row[6],
                thumbnail_type=row[7],
                created=row[8],
            )

        return await self._read(op)

    async def media_visible(self, media_id: str, account_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM media WHERE id = ?1 AND owner = ?2)"
                " OR EXISTS (SELECT 1 FROM accounts WHERE avatar = ?1)"
                " OR EXISTS (SELECT 1 FROM messages AS m JOIN participants AS p"
                "  ON p.thread_id = m.thread_id AND p.account_id = ?2"
                "  WHERE m.media_id = ?1 AND m.recalled IS NULL"
                "  AND (m.directed_to IS NULL OR m.directed_to = ?2 OR m.sender = ?2))",
                (media_id, account_id),
            ).fetchone()
            return bool(row[0])

        return await self._read(op)

    # -- the timeline ------------------------------------------------------------------

    async def add_events(self, events: Sequence[NewEvent]) -> None:
        items = list(events)

        def op(conn: sqlite3.Connection) -> None:
            insert_events(conn, items)

        await self._write(op)

    async def read_events(self, account_id: str, after: int, limit: int) -> list[Event]:
        def op(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                "SELECT pos, type, thread_id, message_id, data, created FROM events"
                " WHERE account_id = ? AND pos > ? ORDER BY pos LIMIT ?",
                (account_id, after, limit),
            ).fetchall()
            return [
                Event(
                    pos=p,
                    account_id=account_id,
                    type=t,
                    thread_id=th,
                    message_id=m,
                    data=d,
                    created=c,
                )
                for p, t, th, m, d, c in rows
            ]

        return await self._read(op)

    async def timeline_bounds(self, account_id: str) -> TimelineBounds:
        def op(conn: sqlite3.Connection) -> TimelineBounds:
            trimmed, latest = conn.execute(
                "SELECT (SELECT pos FROM timeline_trimmed WHERE account_id = ?1),"
                " (SELECT max(pos) FROM events WHERE account_id = ?1)",
                (account_id,),
            ).fetchone()
            trimmed = trimmed or 0
            return TimelineBounds(trimmed=trimmed, latest=max(latest or 0, trimmed))

        return await self._read(op)

    async def trim_events(self, before: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            conn.execute(
                "INSERT INTO timeline_trimmed (account_id, pos)"
                " SELECT account_id, max(pos) FROM events WHERE created < ? GROUP BY account_id"
                " ON CONFLICT (account_id) DO UPDATE SET pos = max(pos, excluded.pos)",
                (before,),
            )
            removed = conn.execute("DELETE FROM events WHERE created < ?", (before,)).rowcount
            # An event appended out of ``created`` order may sit below a mark: it goes
            # too, so that "positions <= trimmed are gone" holds.
            removed += conn.execute(
                "DELETE FROM events WHERE pos <="
                " (SELECT t.pos FROM timeline_trimmed AS t WHERE t.account_id = events.account_id)"
            ).rowcount
            return removed

        return await self._write(op)

    # -- search and push -------------------------------------------------------------

    async def search(
        self, account_id: str, query: str, *, before: tuple[int, int] | None, limit: int
    ) -> list[SearchHit]:
        created, rank = before if before is not None else (1 << 62, 1 << 62)

        def op(conn: sqlite3.Connection) -> list[SearchHit]:
            rows = conn.execute(
                "SELECT s.kind, s.thread_id, s.message_id, CAST(s.created AS INTEGER),"
                " snippet(search_index, 0, '[', ']', '...', 12), s.rowid"
                " FROM search_index AS s"
                " JOIN participants AS p ON p.thread_id = s.thread_id AND p.account_id = ?1"
                " LEFT JOIN messages AS m ON m.id = s.message_id"
                " WHERE search_index MATCH ?2"
                " AND (s.message_id IS NULL OR m.directed_to IS NULL"
                "  OR m.directed_to = ?1 OR m.sender = ?1)"
                " AND (CAST(s.created AS INTEGER), s.rowid) < (?3, ?4)"
                " ORDER BY CAST(s.created AS INTEGER) DESC, s.rowid DESC LIMIT ?5",
                (account_id, query, created, rank, limit),
            ).fetchall()
            return [
                SearchHit(
                    kind=cast(Literal["message", "thread"], k),
                    thread_id=t,
                    message_id=m,
                    created=c,
                    snippet=snip,
                    rank=r,
                )
                for k, t, m, c, snip, r in rows
            ]

        return await self._read(op)

    async def put_push_subscription(self, record: PushRecord) -> PushRecord:
        def op(conn: sqlite3.Connection) -> PushRecord:
            try:
                conn.execute(
                    f"INSERT INTO push_subscriptions ({_PUSH_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET"
                    " account_id = excluded.account_id, session_id = excluded.session_id,"
                    " p256dh = excluded.p256dh, auth = excluded.auth",
                    (
                        record.id,
                        record.account_id,
                        record.session_id,
                        record.endpoint,
                        record.p256dh,
                        record.auth,
                        record.created,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise integrity_error(exc, "push subscription") from exc
            row = conn.execute(
                f"SELECT {_PUSH_COLUMNS} FROM push_subscriptions WHERE endpoint = ?",
                (record.endpoint,),
            ).fetchone()
            return _push(row)

        return await self._write(op)

    async def list_push_subscriptions(self, account_id: str) -> list[PushRecord]:
        def op(conn: sqlite3.Connection) -> list[PushRecord]:
            rows = conn.execute(
                f"SELECT {_PUSH_COLUMNS} FROM push_subscriptions WHERE account_id = ?"
                " ORDER BY created, id",
                (account_id,),
            ).fetchall()
            return [_push(row) for row in rows]

        return await self._read(op)

    async def delete_push_subscription(self, subscription_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM push_subscriptions WHERE id = ?", (subscription_id,))

        await self._write(op)
