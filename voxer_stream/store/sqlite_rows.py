"""Rows to records and back for the SQLite backend: what both halves of it share.

The column lists and the functions that turn a row into a record live here so that
the core half (``sqlite.py``: accounts, threads, messages, chunks) and the service
half (``sqlite_service.py``: contacts, receipts, timeline, search, ...) read and
write the same tables the same way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, cast

from .base import (
    Account,
    AlreadyExists,
    Member,
    MessageKind,
    MessageRecord,
    MessageState,
    NewEvent,
    NotFound,
    Role,
    Session,
    Thread,
    ThreadKind,
)

ACCOUNT_COLUMNS = "id, username, password_hash, created, display_name, avatar"
SESSION_COLUMNS = "token_hash, account_id, created, expires, id, device, acked, last_seen"
MESSAGE_COLUMNS = (
    "id, thread_id, sender, codec, created, state, chunks, duration,"
    " kind, body, directed_to, recalled, forwarded_from, media_id"
)
MESSAGE_PLACEHOLDERS = ", ".join(["?"] * 14)
THREAD_COLUMNS = "id, title, created_by, created, kind, controlled"


def account_row(row: tuple[Any, ...]) -> Account:
    return Account(
        id=row[0],
        username=row[1],
        password_hash=row[2],
        created=row[3],
        display_name=row[4],
        avatar=row[5],
    )


def session_row(row: tuple[Any, ...]) -> Session:
    return Session(
        token_hash=row[0],
        account_id=row[1],
        created=row[2],
        expires=row[3],
        id=row[4],
        device=row[5],
        acked=row[6],
        last_seen=row[7],
    )


def message_row(row: tuple[Any, ...]) -> MessageRecord:
    return MessageRecord(
        id=row[0],
        thread_id=row[1],
        sender=row[2],
        codec=row[3],
        created=row[4],
        state=cast(MessageState, row[5]),
        chunks=row[6],
        duration=row[7],
        kind=cast(MessageKind, row[8]),
        body=row[9],
        directed_to=row[10],
        recalled=row[11],
        forwarded_from=row[12],
        media_id=row[13],
    )


def message_values(m: MessageRecord) -> tuple[Any, ...]:
    return (
        m.id,
        m.thread_id,
        m.sender,
        m.codec,
        m.created,
        m.state,
        m.chunks,
        m.duration,
        m.kind,
        m.body,
        m.directed_to,
        m.recalled,
        m.forwarded_from,
        m.media_id,
    )


def get_message(conn: sqlite3.Connection, message_id: str) -> MessageRecord | None:
    row = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    return None if row is None else message_row(row)


def integrity_error(exc: sqlite3.IntegrityError, what: str) -> Exception:
    """Map a constraint failure to the Store's errors; anything else stays as it is."""
    name = exc.sqlite_errorname
    if name in ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"):
        return AlreadyExists(f"{what}: {exc}")
    if name == "SQLITE_CONSTRAINT_FOREIGNKEY":
        return NotFound(f"{what}: the row it refers to does not exist")
    return exc


def insert_events(conn: sqlite3.Connection, events: Sequence[NewEvent]) -> None:
    """Append timeline events; a repeated (account, dedupe) is skipped by the unique
    index ``events_dedupe``."""
    if events:
        conn.executemany(
            "INSERT OR IGNORE INTO events"
            " (account_id, type, thread_id, message_id, data, created, dedupe)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (e.account_id, e.type, e.thread_id, e.message_id, e.data, e.created, e.dedupe)
                for e in events
            ],
        )


def read_threads(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> list[Thread]:
    """Threads from ``THREAD_COLUMNS`` rows, with their participants and roles."""
    rows = list(rows)
    members: dict[str, dict[str, Member]] = {row[0]: {} for row in rows}
    ids = list(members)
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        for thread_id, account_id, role, muted, joined in conn.execute(
            "SELECT thread_id, account_id, role, muted, joined FROM participants"
            f" WHERE thread_id IN ({', '.join(['?'] * len(part))})",
            part,
        ):
            members[thread_id][account_id] = Member(
                account_id=account_id, role=cast(Role, role), muted=bool(muted), joined=joined
            )
    return [
        Thread(
            id=row[0],
            title=row[1],
            created_by=row[2],
            created=row[3],
            kind=cast(ThreadKind, row[4]),
            controlled=bool(row[5]),
            participants=frozenset(members[row[0]]),
            members=members[row[0]],
        )
        for row in rows
    ]


def get_thread(conn: sqlite3.Connection, thread_id: str) -> Thread | None:
    rows = conn.execute(
        f"SELECT {THREAD_COLUMNS} FROM threads WHERE id = ?", (thread_id,)
    ).fetchall()
    threads = read_threads(conn, rows)
    return threads[0] if threads else None


def searchable_text(message: MessageRecord) -> str:
    """What full-text search indexes of a message: a text, an image's caption, a
    location's label."""
    if message.body is None or message.recalled is not None:
        return ""
    try:
        body = json.loads(message.body)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    parts = [body.get(key) for key in ("text", "caption", "label")]
    return " ".join(p for p in parts if isinstance(p, str) and p)


def index_message(conn: sqlite3.Connection, message: MessageRecord) -> None:
    text = searchable_text(message)
    if text:
        conn.execute(
            "INSERT INTO search_index (body, kind, thread_id, message_id, created)"
            " VALUES (?, 'message', ?, ?, ?)",
            (text, message.thread_id, message.id, message.created),
        )
