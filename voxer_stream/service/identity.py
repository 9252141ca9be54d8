"""Accounts and sessions: just enough identity to authorize (spec section 8).

Passwords are hashed with argon2id (memory-hard) and checked in a worker thread,
because one hash costs tens of milliseconds that must not stall the event loop.
Tokens are 256 random bits; only their SHA-256 is stored (VXS-8-4), so a copy of
the database cannot be used to log in.
"""

from __future__ import annotations

import collections
import hashlib
import math
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


#: Failed logins allowed per username, and per client address, in a window (VXS-8-9).
#: An address gets more: several people (or a conformance suite run after run) may
#: share it, and one of them mistyping must not lock the others out.
LOGIN_FAILURES: Final = 5
ADDRESS_FAILURES: Final = 100
LOGIN_WINDOW_S: Final = 15 * 60
MAX_DEVICE: Final = 100


@dataclass(frozen=True, kw_only=True)
class IssuedSession:
    token: str
    account: Account
    expires: int
    session_id: str


@dataclass(frozen=True, kw_only=True)
class Authenticated:
    account: Account
    session: Session


class FailureLimiter:
    """Failed attempts per key in a sliding window; past the limit, RATE_LIMITED.

    In memory, per process: a restart forgets, which only ever lets an attacker try
    ``LOGIN_FAILURES`` more times; with several processes each counts its own share.
    """

    def __init__(self, limit: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW_S) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, collections.deque[float]] = {}

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        times = self._failures.get(key)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.limit:
                retry = max(1, math.ceil(times[0] + self.window - now))
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"too many failed logins; retry in {retry} s",
                    "VXS-8-9",
                    retry_after=retry,
                )

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._failures.setdefault(key, collections.deque()).append(now)
            if len(self._failures) > 100_000:  # bounded: forget the oldest keys
                del self._failures[next(iter(self._failures))]


class Identity:
    """Registration, login, logout and bearer-token authentication."""

    def __init__(self, store: Store, *, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        # Lighter than argon2's default (64 MiB) so that a login storm cannot
        # exhaust memory; still memory-hard.
        self.hasher = hasher or PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
        self.limiter = FailureLimiter()
        self.address_limiter = FailureLimiter(ADDRESS_FAILURES)

    @staticmethod
    def _check_password(password: str) -> None:
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST,
                f"password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters",
                "VXS-8-7",
            )

    async def register(self, username: str, password: str) -> Account:
        if not USERNAME.fullmatch(username):
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, "username must match [a-z0-9_.-]{3,32}", "VXS-8-7"
            )
        self._check_password(password)
        password_hash = await trio.to_thread.run_sync(self.hasher.hash, password)
        account = Account(
            id=uuid.uuid4().hex, username=username, password_hash=password_hash, created=now_ms()
        )
        try:
            await self.store.create_account(account)
        except AlreadyExists:
            raise ProtocolError(ErrorCode.USERNAME_TAKEN, username) from None
        return account

    async def login(
        self, username: str, password: str, *, device: str = "", client: str = ""
    ) -> IssuedSession:
        """A new session (one per device) for the right password. Failed attempts are
        counted per username and per client address (VXS-8-9)."""
        if len(device) > MAX_DEVICE:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "device name too long")
        user, address = f"user:{username}", [f"client:{client}"] if client else []
        self.limiter.check(user)
        self.address_limiter.check(*address)
        account = await self.store.get_account_by_username(username)
        if account is None or not await self._verify(account.password_hash, password):
            self.limiter.fail(user)
            self.address_limiter.fail(*address)
            raise ProtocolError(ErrorCode.INVALID_CREDENTIALS, "wrong username or password")
        token = secrets.token_urlsafe(32)
        created = now_ms()
        session = Session(
            token_hash=token_hash(token),
            account_id=account.id,
            created=created,
            expires=created + SESSION_LIFETIME_MS,
            id=uuid.uuid4().hex,
            device=device,
            last_seen=created,
        )
        await self.store.create_session(session)
        return IssuedSession(
            token=token, account=account, expires=session.expires, session_id=session.id
        )

    async def change_password(self, who: Authenticated, old: str, new: str) -> int:
        """Check the old password, store the new one's hash and end every other session
        of the account (VXS-8-10); the number of sessions ended."""
        self._check_password(new)
        key = f"user:{who.account.username}"
        self.limiter.check(key)
        if not await self._verify(who.account.password_hash, old):
            self.limiter.fail(key)
            raise ProtocolError(ErrorCode.INVALID_CREDENTIALS, "wrong password", "VXS-8-10")
        password_hash = await trio.to_thread.run_sync(self.hasher.hash, new)
        await self.store.update_account(who.account.id, password_hash=password_hash)
        return await self.store.delete_sessions(
            who.account.id, keep_token_hash=who.session.token_hash
        )

    async def _verify(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return bool(self.hasher.verify(password_hash, password))
            except (VerificationError, InvalidHashError):
                return False

        return await trio.to_thread.run_sync(verify)

    async def authenticate(self, token: str | None) -> Account:
        """The account a bearer token stands for (VXS-8-1), or UNAUTHENTICATED."""
        return (await self.authenticate_session(token)).account

    async def authenticate_session(self, token: str | None) -> Authenticated:
        """The account and session (device) of a bearer token, or UNAUTHENTICATED."""
        if not token:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "no bearer token", "VXS-8-1")
        session = await self.store.get_session(token_hash(token))
        if session is None or session.expires <= now_ms():
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "unknown or expired token", "VXS-8-3")
        account = await self.store.get_account(session.account_id)
        if account is None:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "the account is gone", "VXS-8-1")
        return Authenticated(account=account, session=session)

    async def logout(self, token: str) -> None:
        await self.store.delete_session(token_hash(token))

    async def logout_session(self, who: Authenticated) -> None:
        await self.store.delete_sessions(who.account.id, session_id=who.session.id)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
