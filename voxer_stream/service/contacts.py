"""Profiles, contacts and blocking (13.1).

A contact is one-sided (Alice may list Bob without Bob listing Alice), like a phone's
address book. Blocking is a flag on the blocker's own contact entry: what it stops is
decided in ``Threads`` (a blocked account cannot start a thread with the blocker nor
post into their 1:1 thread), and the blocked account is never told.
"""

from __future__ import annotations

from typing import Any, Final

from ..store.base import Account, Contact, Store
from ..wire import ErrorCode, ProtocolError
from .identity import now_ms
from .views import account_view

MAX_DISPLAY_NAME: Final = 64


class Contacts:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _account(self, username: str) -> Account:
        account = await self.store.get_account_by_username(username)
        if account is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no account {username!r}", "VXS-13.1-2")
        return account

    async def profile(self, username: str) -> dict[str, Any]:
        return account_view(await self._account(username))

    async def update_profile(
        self,
        account: Account,
        *,
        display_name: Any = None,
        avatar: Any = ...,
    ) -> Account:
        if display_name is not None and (
            not isinstance(display_name, str) or len(display_name) > MAX_DISPLAY_NAME
        ):
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST,
                f"display_name must be a string of {MAX_DISPLAY_NAME} characters at most",
                "VXS-13.1-1",
            )
        clear = avatar is None
        if avatar is not ... and avatar is not None:
            if not isinstance(avatar, str):
                raise ProtocolError(ErrorCode.INVALID_REQUEST, "avatar must be an image id")
            media = await self.store.get_media(avatar)
            if media is None or media.owner != account.id:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND, f"no image {avatar!r} of yours", "VXS-13.1-1"
                )
        await self.store.update_account(
            account.id,
            display_name=display_name,
            avatar=avatar if isinstance(avatar, str) else None,
            clear_avatar=clear,
        )
        updated = await self.store.get_account(account.id)
        assert updated is not None
        return updated

    async def view(self, contact: Contact) -> dict[str, Any] | None:
        account = await self.store.get_account(contact.contact)
        if account is None:
            return None
        return {**account_view(account), "blocked": contact.blocked, "added": contact.created}

    async def put(self, owner: Account, username: str, blocked: Any = None) -> dict[str, Any]:
        """Add a contact, or change whether it is blocked (VXS-13.1-3)."""
        if blocked is not None and not isinstance(blocked, bool):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "'blocked' must be true or false")
        other = await self._account(username)
        if other.id == owner.id:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "you cannot add yourself")
        existing = await self.store.get_contact(owner.id, other.id)
        contact = Contact(
            owner=owner.id,
            contact=other.id,
            blocked=bool(blocked) if blocked is not None else bool(existing and existing.blocked),
            created=existing.created if existing else now_ms(),
        )
        await self.store.put_contact(contact)
        view = await self.view(contact)
        assert view is not None
        return view

    async def remove(self, owner: Account, username: str) -> None:
        other = await self._account(username)
        if not await self.store.delete_contact(owner.id, other.id):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"{username!r} is not a contact")

    async def list(self, owner: Account) -> list[dict[str, Any]]:
        views = []
        for contact in await self.store.list_contacts(owner.id):
            view = await self.view(contact)
            if view is not None:
                views.append(view)
        return views
