"""The HTTP/2 binding of upload and listen (spec section 10), as raw ASGI.

These two routes are the live path, so they bypass Quart's request and response
machinery: no request context, no response timeout, no body size limit to
switch off. Served by ``h2server`` (every HTTP/2 connection), they go further
and bypass ASGI messages too: the scope carries the connection's stream
(``extensions["voxer.h2"]``), which ``H2Sink`` writes to directly, and which a
listener at the live edge lends to ``LiveMessage.publish`` (``try_send``).
Over HTTP/1.1 (hypercorn) they are plain ASGI, one send per batch of frames.
Everything else in the binding (REST) is the Quart app in ``app.py``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import trio

from ..bus import Membership
from ..pipeline import Hub, ListenSession, UploadSession
from ..service.contacts import Contacts
from ..service.identity import Identity, bearer_token
from ..service.messages import Messages
from ..service.threads import Threads
from ..service.timeline import Timeline
from ..store.base import Account, MessageRecord
from ..wire import Error, ErrorCode, Listen, ProtocolError, encode_frame
from .h2server import Http2Stream

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

CBOR_SEQ = b"application/cbor-seq"


@dataclass(frozen=True)
class Services:
    """What the transports need from the layers below."""

    hub: Hub
    identity: Identity
    threads: Threads
    timeline: Timeline
    messages: Messages
    contacts: Contacts
    #: The VAPID key a page passes to ``pushManager.subscribe`` (VXS-13.7-1).
    vapid_public_key: str = ""
    #: Push endpoints over plain http on loopback: for tests and local development.
    allow_local_push: bool = False
    #: The ring of server processes sharing a Redis (``serve --redis``), if any.
    membership: Membership | None = None

    def push_endpoint_allowed(self, endpoint: str) -> bool:
        """https only (a push service is a public HTTPS endpoint, RFC 8030), or http
        on 127.0.0.1 when ``allow_local_push``."""
        parts = urlsplit(endpoint)
        if parts.scheme == "https":
            return True
        return (
            self.allow_local_push
            and parts.scheme == "http"
            and parts.hostname
            in (
                "127.0.0.1",
                "localhost",
            )
        )


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class HttpSink:
    """Frames into one streaming HTTP response (VXS-10-4, VXS-10-7)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.ended = False

    async def _start(self, status: int) -> None:
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", CBOR_SEQ), (b"cache-control", b"no-store")],
            }
        )

    async def send(self, frames: Sequence[bytes]) -> None:
        if not self.started:
            await self._start(200)
        body = frames[0] if len(frames) == 1 else b"".join(frames)
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def fail(self, exc: ProtocolError, data: bytes) -> None:
        if not self.started:
            await self._start(exc.code.http_status)
        await self.finish(data)

    async def finish(self, data: bytes = b"") -> None:
        if self.ended:
            return
        if not self.started:
            await self._start(200)
        self.ended = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})


class H2Sink:
    """Frames straight into an ``h2server`` stream, no ASGI messages in between.

    ``try_send`` and ``flush`` make it a ``DirectSink``: at the live edge the
    talker's ``publish`` writes each chunk to it synchronously."""

    def __init__(self, stream: Http2Stream) -> None:
        self.stream = stream

    def _start(self, status: int) -> None:
        self.stream.start(status, [(b"content-type", CBOR_SEQ), (b"cache-control", b"no-store")])

    async def send(self, frames: Sequence[bytes]) -> None:
        if not self.stream.headers_sent:
            self._start(200)
        await self.stream.send(frames[0] if len(frames) == 1 else b"".join(frames))

    def try_send(self, frame: bytes) -> bool:
        return self.stream.try_send(frame)  # refuses before the headers and after the end

    def flush(self) -> None:
        self.stream.flush()

    async def fail(self, exc: ProtocolError, data: bytes) -> None:
        if not self.stream.headers_sent:
            self._start(exc.code.http_status)
        await self.finish(data)

    async def finish(self, data: bytes = b"") -> None:
        if not self.stream.headers_sent:
            self._start(200)
        await self.stream.send(data, end=True)  # nothing once ended or gone


def make_sink(scope: Scope, send: Send) -> HttpSink | H2Sink:
    stream = scope.get("extensions", {}).get("voxer.h2")
    return H2Sink(stream) if isinstance(stream, Http2Stream) else HttpSink(send)


async def refuse(sink: HttpSink | H2Sink, exc: ProtocolError) -> None:
    await sink.fail(exc, encode_frame(Error.from_exception(exc)))


async def request_body(scope: Scope, receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives; ends at the end of the body or a disconnect."""
    stream = scope.get("extensions", {}).get("voxer.h2")
    if isinstance(stream, Http2Stream):
        while (data := await stream.receive_body()) is not None:
            yield data
        return
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        if body := message.get("body", b""):
            yield body
        if not message.get("more_body", False):
            return


async def cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """Stop a response the client has gone away from (it would otherwise wait forever)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def authenticate(services: Services, authorization: str | None) -> Account:
    return await services.identity.authenticate(bearer_token(authorization))


async def upload(scope: Scope, receive: Receive, send: Send, services: Services) -> None:
    """``POST /v1/upload`` (VXS-10-2, VXS-10-3)."""
    sink = make_sink(scope, send)
    try:
        account = await authenticate(services, header(scope, b"authorization"))
    except ProtocolError as exc:
        await refuse(sink, exc)
        return

    async def authorize(thread_id: str) -> None:
        await services.threads.can_post(account, thread_id)

    session = UploadSession(services.hub, account.id, authorize, sink)
    await session.run(request_body(scope, receive))
    await sink.finish()


_DECIMAL_INT = re.compile(r"[0-9]{1,16}")
_DECIMAL = re.compile(r"[0-9]{1,16}(\.[0-9]{1,16})?")
#: The spellings of a boolean query parameter (``live_edge``, WHEP monitor ``own``).
FLAGS = {"1": True, "true": True, "0": False, "false": False}


def parse_listen(message_id: str, query: bytes) -> Listen:
    """Query parameters of ``GET /v1/messages/{id}/listen`` as a listen frame (VXS-10-6).

    Strict decimal syntax: Python's ``int`` and ``float`` would also take ``0_1``,
    ``nan`` or `` 7``, which other implementations would not, so a client that relied
    on them would not be portable.
    """
    fields: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ProtocolError(
            ErrorCode.INVALID_LISTEN, "the query string is not ASCII", "VXS-10-6"
        ) from None
    for key, value in pairs:
        if key in ("from_seq", "from_ts") and _DECIMAL_INT.fullmatch(value):
            fields[key] = int(value)
        elif key == "live_edge" and value.lower() in FLAGS:
            fields[key] = FLAGS[value.lower()]
        elif key == "speed" and _DECIMAL.fullmatch(value):
            fields[key] = float(value)
        elif key in ("from_seq", "from_ts", "live_edge", "speed"):
            raise ProtocolError(
                ErrorCode.INVALID_LISTEN, f"bad query parameter {key}={value!r}", "VXS-10-6"
            )
    return Listen(msg=message_id, **fields)


async def listen(
    scope: Scope, receive: Receive, send: Send, services: Services, message_id: str
) -> None:
    """``GET /v1/messages/{id}/listen`` (VXS-10-6)."""
    sink = make_sink(scope, send)
    try:
        request = parse_listen(message_id, scope.get("query_string", b""))
        account = await authenticate(services, header(scope, b"authorization"))
    except ProtocolError as exc:
        await refuse(sink, exc)
        return

    async def authorize(record: MessageRecord) -> None:
        await services.threads.can_listen(account, record)

    session = ListenSession(services.hub, request, authorize, sink)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope)
        await session.run()
        nursery.cancel_scope.cancel()
    await sink.finish()
