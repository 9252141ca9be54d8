"""Storage: the ``Store`` protocol, its records and errors, and the backends.

``open_store(data_dir)`` gives the embedded default, SQLite in ``data_dir/voxer.sqlite3``::

    async with open_store("/var/lib/voxer") as store:
        await store.append_chunks(message_id, chunks)  # durable on return
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import (
    Account,
    AlreadyExists,
    Contact,
    Counts,
    Event,
    Media,
    Member,
    MessageKind,
    MessageRecord,
    MessageState,
    NewEvent,
    NotFound,
    PushRecord,
    Reaction,
    Receipt,
    ReceiptKind,
    Role,
    SearchHit,
    Session,
    Store,
    StoredChunk,
    StoreError,
    Thread,
    ThreadKind,
    TimelineBounds,
)
from .sqlite import SQLiteStore

__all__ = [
    "DB_FILENAME",
    "Account",
    "AlreadyExists",
    "Contact",
    "Counts",
    "Event",
    "Media",
    "Member",
    "MessageKind",
    "MessageRecord",
    "MessageState",
    "NewEvent",
    "NotFound",
    "PushRecord",
    "Reaction",
    "Receipt",
    "ReceiptKind",
    "Role",
    "SQLiteStore",
    "SearchHit",
    "Session",
    "Store",
    "StoreError",
    "StoredChunk",
    "Thread",
    "ThreadKind",
    "TimelineBounds",
    "open_store",
]

#: The database file ``open_store`` uses inside its data directory.
DB_FILENAME = "voxer.sqlite3"


def open_store(data_dir: str | os.PathLike[str], **options: Any) -> SQLiteStore:
    """A ``SQLiteStore`` on ``data_dir/voxer.sqlite3``, creating ``data_dir`` if needed.

    ``options`` go to :class:`SQLiteStore` (``synchronous``, ``busy_timeout``,
    ``batch_max``, ``batch_window``, ``read_threads``). Open it with ``async with``.
    """
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(directory / DB_FILENAME, **options)
