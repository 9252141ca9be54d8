"""Accounts and sessions: just enough identity to authorize (spec section 8).

Passwords are hashed with argon2id (memory-hard) and checked in a worker thread,
because one hash costs tens of milliseconds that must not stall the event loop.
Tokens are 256 random bits; only their SHA-256 is stored (VXS-8-4), so a copy of
the database cannot be used to log in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Final

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..store.base import Account, AlreadyExists, Session, Store
from ..wire import ErrorCode, ProtocolError

USERNAME: Final = re.compile(r"[a-z0-9_.-]{3,32}")
SESSION_LIFETIME_MS: Final = 30 * 24 * 3600 * 1000
MIN_PASSWORD: Final = 8
MAX_PASSWORD: Final = 1024


def now_ms() -> int:
    return int(time.time() * 1000)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class IssuedSession:
    token: str
    account: Account
    expires: int


class Identity:
    """Registration, login, logout and bearer-token authentication."""

    def __init__(self, store: Store, *, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        # Lighter than argon2's default (64 MiB) so that a login storm cannot
        # exhaust memory; still memory-hard.
        self.hasher = hasher or PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)

    async def register(self, username: str, password: str) -> Account:
        if not USERNAME.fullmatch(username):
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, "username must match [a-z0-9_.-]{3,32}", "VXS-8-7"
            )
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST,
                f"password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters",
                "VXS-8-7",
            )
        password_hash = await trio.to_thread.run_sync(self.hasher.hash, password)
        account = Account(
            id=uuid.uuid4().hex, username=username, password_hash=password_hash, created=now_ms()
        )
        try:
            await self.store.create_account(account)
        except AlreadyExists:
            raise ProtocolError(ErrorCode.USERNAME_TAKEN, username) from None
        return account

    async def login(self, username: str, password: str) -> IssuedSession:
        account = await self.store.get_account_by_username(username)
        if account is None or not await self._verify(account.password_hash, password):
            raise ProtocolError(ErrorCode.INVALID_CREDENTIALS, "wrong username or password")
        token = secrets.token_urlsafe(32)
        created = now_ms()
        session = Session(
            token_hash=token_hash(token),
            account_id=account.id,
            created=created,
            expires=created + SESSION_LIFETIME_MS,
        )
        await self.store.create_session(session)
        return IssuedSession(token=token, account=account, expires=session.expires)

    async def _verify(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return bool(self.hasher.verify(password_hash, password))
            except (VerificationError, InvalidHashError):
                return False

        return await trio.to_thread.run_sync(verify)

    async def authenticate(self, token: str | None) -> Account:
        """The account a bearer token stands for (VXS-8-1), or UNAUTHENTICATED."""
        if not token:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "no bearer token", "VXS-8-1")
        session = await self.store.get_session(token_hash(token))
        if session is None or session.expires <= now_ms():
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "unknown or expired token", "VXS-8-3")
        account = await self.store.get_account(session.account_id)
        if account is None:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "the account is gone", "VXS-8-1")
        return account

    async def logout(self, token: str) -> None:
        await self.store.delete_session(token_hash(token))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
