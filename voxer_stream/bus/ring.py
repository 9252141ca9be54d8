"""Consistent hashing of message ids onto server processes (uhashring, ketama-style).

Every process builds the ring from the same member list and so names the same owner
for a message; when a member joins or leaves, only the messages hashed near it move
(about 1/N of them), the rest keep their owner.
"""

from __future__ import annotations

from collections.abc import Iterable

from uhashring import HashRing


class Ring:
    def __init__(self, members: Iterable[str] = ()) -> None:
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        self._ring = HashRing(nodes=list(self.members)) if self.members else None

    def owner(self, key: str) -> str | None:
        """The member that owns ``key``, or None when there is no member."""
        if self._ring is None:
            return None
        node = self._ring.get_node(key)
        return str(node) if node is not None else None

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"Ring({list(self.members)})"
