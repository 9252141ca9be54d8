"""What a case works with: the server's URL, test accounts, and short ways to talk to it.

The runner makes one ``Context`` per run. Accounts are registered through the REST
API (``POST /v1/accounts``, ``POST /v1/sessions``) under a random prefix, or taken from
``--account`` for a server whose registration is closed. Cases get fresh threads and
message ids, so they never see each other's data and can run against a server that
holds other data already.
"""

from __future__ import annotations

import argparse
import secrets
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from voxer_stream.wire import Ack, Chunk, Close, Closed, Error, Frame, Open, Opened

from .net import (
    Exchange,
    Reply,
    TransportFailure,
    WebSocket,
    listen_path,
    open_exchange,
    open_websocket,
)

__all__ = ["Account", "Context", "RestReply", "opus_packet"]

CBOR_SEQ_HEADERS = (("content-type", "application/cbor-seq"),)


def opus_packet(seq: int, salt: bytes = b"", frames_ms: int = 20) -> bytes:
    """A valid Opus packet (RFC 6716 section 3, code 0) that names ``seq`` in its payload.

    TOC 0x78 is configuration 15 (hybrid, fullband, 20 ms), mono, one frame; a code-0
    packet may carry any 0 to 1275 bytes of frame data (R1-R7 hold). Distinct bytes per
    seq make a dropped, doubled or swapped packet visible byte for byte. ``frames_ms``
    10 uses configuration 14 (10 ms).
    """
    toc = 0x78 if frames_ms == 20 else 0x70
    return bytes([toc]) + seq.to_bytes(4, "big") + salt + bytes(27)


def account_arg(value: str) -> tuple[str, str]:
    """``--account USER:PASS`` on the command lines of the suite and the model."""
    username, sep, password = value.partition(":")
    if not sep or not username or not password:
        raise argparse.ArgumentTypeError("expected USERNAME:PASSWORD")
    return username, password


@dataclass
class Account:
    username: str
    password: str
    token: str
    id: str
    #: The session (device) this token belongs to (VXS-8-11), when the server said.
    session_id: str = ""


@dataclass
class RestReply:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    content: bytes = b""

    @property
    def error(self) -> dict[str, Any] | None:
        found = self.body.get("error") if isinstance(self.body, dict) else None
        return found if isinstance(found, dict) else None


@dataclass
class Context:
    """The server under test and the accounts the suite uses on it."""

    url: str
    timeout: float = 10.0
    tls_url: str | None = None
    cacert: Path | None = None
    #: The server's configured period before it closes a message nobody talks to
    #: (VXS-5.7-3), when the implementer tells the suite (``--abandon-after``).
    abandon_after: float | None = None
    rtc_connect_timeout: float | None = None
    rtc_max_sessions: int | None = None
    #: The server accepts Web Push endpoints on http://127.0.0.1 and can reach the
    #: suite's host (``--push``; the reference server: ``serve --allow-local-push``).
    push: bool = False
    #: Run the MUST cases that wait for a fixed timer of the spec (``--slow``).
    slow: bool = False
    strict: bool = False
    prefix: str = field(default_factory=lambda: "cf" + secrets.token_hex(4))
    accounts: dict[str, Account] = field(default_factory=dict)
    #: The results so far, for the case that sums up the run (``1/server-role``).
    results: list[Any] = field(default_factory=list)
    _http: httpx.AsyncClient | None = None

    # -- set-up ----------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.url, http2=True, timeout=self.timeout)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def alice(self) -> Account:
        """Creates threads; a participant of every thread ``ctx.thread()`` makes."""
        return self.accounts["alice"]

    @property
    def bob(self) -> Account:
        """A second participant."""
        return self.accounts["bob"]

    @property
    def carol(self) -> Account:
        """An outsider: a valid account that is in no thread of the suite."""
        return self.accounts["carol"]

    async def register(self, role: str, *, device: str | None = None) -> Account:
        """Register and log in a new account named after ``role``."""
        username = f"{self.prefix}-{role}-{secrets.token_hex(3)}"[:32].lower()
        password = secrets.token_urlsafe(16)
        reply = await self.rest(
            "POST", "/v1/accounts", json={"username": username, "password": password}
        )
        if reply.status != 201:
            raise TransportFailure(f"cannot register {username}: {reply.status} {reply.body}")
        return await self.login(username, password, device=device)

    async def login(self, username: str, password: str, *, device: str | None = None) -> Account:
        """A new session of the account (with the ``device`` label, if given)."""
        body = {"username": username, "password": password}
        if device is not None:
            body["device"] = device
        reply = await self.rest("POST", "/v1/sessions", json=body)
        if reply.status != 201 or not isinstance(reply.body, dict):
            raise TransportFailure(f"cannot log in {username}: {reply.status} {reply.body}")
        return Account(
            username,
            password,
            str(reply.body["token"]),
            str(reply.body["account_id"]),
            str(reply.body.get("session_id", "")),
        )

    async def set_up(self, given: Sequence[tuple[str, str]] = ()) -> None:
        """alice, bob and carol: the ``--account`` pairs in that order, else new accounts."""
        for role, credentials in zip(
            ("alice", "bob", "carol"), [*given, None, None, None], strict=False
        ):
            if credentials is None:
                self.accounts[role] = await self.register(role)
            else:
                self.accounts[role] = await self.login(*credentials)

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies ``--tls-server`` against ``--cacert`` (or the system's CAs)."""
        context = ssl.create_default_context(cafile=str(self.cacert) if self.cacert else None)
        context.set_alpn_protocols(["h2"])
        return context

    # -- REST --------------------------------------------------------------------

    async def rest(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> RestReply:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        for attempt in (1, 2):
            try:
                response = await self.http.request(
                    method, path, json=json, content=content, headers=all_headers
                )
                break
            except httpx.RemoteProtocolError as exc:
                # A server may close a kept-alive connection (after answering a request
                # whose body it did not read, say) while the next request is on its way;
                # RFC 9112 section 9.3.1 lets a client retry an idempotent request on a
                # new connection, as browsers do. Once only, and never a POST.
                if attempt == 2 or method not in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS"):
                    raise TransportFailure(f"{method} {path}: {exc!r}") from None
            except httpx.HTTPError as exc:
                raise TransportFailure(f"{method} {path}: {exc!r}") from None
        body: Any = None
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                body = response.json()
            except ValueError:
                body = None
        return RestReply(response.status_code, dict(response.headers), body, response.content)

    async def thread(self, *members: Account, owner: Account | None = None) -> str:
        """A new thread owned by ``owner`` (alice) with ``members`` (default: bob)."""
        owner = owner or self.alice
        people = members if members else (self.bob,)
        reply = await self.rest(
            "POST",
            "/v1/threads",
            token=owner.token,
            json={"title": "conformance", "participants": [m.username for m in people]},
        )
        if reply.status != 201 or not isinstance(reply.body, dict):
            raise TransportFailure(f"cannot create a thread: {reply.status} {reply.body}")
        return str(reply.body["id"])

    async def listen_only_thread(self) -> str:
        """A new thread of alice's (its admin) to which she added bob with the role
        ``listen`` (VXS-13.2-1): bob sees the thread but may not post in it (VXS-13.2-4)."""
        reply = await self.rest(
            "POST",
            "/v1/threads",
            token=self.alice.token,
            json={"title": "conformance, bob listens", "participants": []},
        )
        if reply.status != 201 or not isinstance(reply.body, dict):
            raise TransportFailure(f"cannot create a thread: {reply.status} {reply.body}")
        thread = str(reply.body["id"])
        added = await self.rest(
            "POST",
            f"/v1/threads/{thread}/participants",
            token=self.alice.token,
            json={"usernames": [self.bob.username], "role": "listen"},
        )
        people = added.body.get("participants") if isinstance(added.body, dict) else None
        roles = {p.get("username"): p.get("role") for p in people or [] if isinstance(p, dict)}
        if added.status != 200 or roles.get(self.bob.username) != "listen":
            raise TransportFailure(
                f"alice, the admin, cannot add bob with the role listen (VXS-13.2-1, "
                f"VXS-13.2-3): {added.status} {added.body}"
            )
        return thread

    def msg_id(self) -> str:
        """A fresh message id (96 random bits, VXS-2.1-1)."""
        return f"{self.prefix}-{secrets.token_urlsafe(12)}"

    # -- frames ------------------------------------------------------------------

    @staticmethod
    def chunk(seq: int, salt: bytes = b"", packets: int = 1) -> Chunk:
        """Chunk ``seq`` of 20 ms packets: ``ts`` = seq x packets x 960 ticks."""
        return Chunk(
            seq=seq,
            ts=seq * packets * 960,
            packets=tuple(opus_packet(seq * 100 + i, salt) for i in range(packets)),
        )

    def open_frame(self, thread: str, msg: str, codec: str = "opus") -> Open:
        return Open(msg=msg, thread=thread, codec=codec, created=1_700_000_000_000)

    # -- HTTP/2 ------------------------------------------------------------------

    @asynccontextmanager
    async def upload(
        self,
        token: str | None,
        *,
        headers: Sequence[tuple[str, str]] = CBOR_SEQ_HEADERS,
        path: str = "/v1/upload",
        **kwargs: Any,
    ) -> AsyncIterator[Exchange]:
        """An open ``POST /v1/upload`` whose body the case writes frame by frame."""
        async with open_exchange(
            self.url, "POST", path, token=token, headers=headers, patience=self.timeout, **kwargs
        ) as exchange:
            yield exchange

    async def upload_all(
        self,
        token: str | None,
        frames: Sequence[Frame | bytes],
        *,
        end: bool = True,
        headers: Sequence[tuple[str, str]] = CBOR_SEQ_HEADERS,
    ) -> Reply:
        """Send ``frames`` as one request body (ended unless ``end`` is false); the whole reply."""
        async with self.upload(token, headers=headers) as exchange:
            await exchange.send(*frames)
            if end:
                await exchange.end()
            return await exchange.reply()

    async def talk(
        self, thread: str, chunks: int, *, token: str | None = None, close: bool = True
    ) -> str:
        """Upload a message of ``chunks`` chunks (closed unless ``close`` is false); its id.

        Waits for the ack of the last chunk (or ``closed``), so the message is stored.
        """
        msg = self.msg_id()
        frames: list[Frame] = [self.open_frame(thread, msg)]
        frames += [self.chunk(seq) for seq in range(chunks)]
        if close:
            frames.append(Close(chunks=chunks))
        async with self.upload(token or self.alice.token) as exchange:
            await exchange.send(*frames)
            if close:
                got = await exchange.frames()
                if not got or not isinstance(got[-1], Closed):
                    raise TransportFailure(f"could not upload a message: {got[-1:]}")
            else:
                await self.wait_acked(exchange, chunks - 1)
        return msg

    async def wait_acked(self, exchange: Exchange, seq: int) -> None:
        """Read the upload's frames until an ack covers ``seq`` (-1: until ``opened``)."""
        while (frame := await exchange.frame()) is not None:
            if isinstance(frame, Error):
                raise TransportFailure(f"upload refused during set-up: {frame}")
            if (isinstance(frame, Ack) and frame.seq >= seq) or (
                seq < 0 and isinstance(frame, Opened)
            ):
                return
        raise TransportFailure("the upload ended before the last chunk was acknowledged")

    @asynccontextmanager
    async def listen(
        self, token: str | None, msg: str, *, window: int | None = None, **params: Any
    ) -> AsyncIterator[Exchange]:
        """A ``GET /v1/messages/{msg}/listen`` read frame by frame."""
        async with open_exchange(
            self.url,
            "GET",
            listen_path(msg, **params),
            token=token,
            end_stream=True,
            patience=self.timeout,
            window=window,
        ) as exchange:
            yield exchange

    async def listen_all(self, token: str | None, msg: str, **params: Any) -> Reply:
        async with self.listen(token, msg, **params) as exchange:
            return await exchange.reply()

    # -- WebSocket ---------------------------------------------------------------

    @asynccontextmanager
    async def websocket(
        self,
        *,
        header_token: str | None = None,
        subprotocols: Sequence[str] = ("voxer-stream.v1",),
    ) -> AsyncIterator[WebSocket]:
        async with open_websocket(
            self.url, header_token=header_token, subprotocols=subprotocols, patience=self.timeout
        ) as ws:
            yield ws

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)
