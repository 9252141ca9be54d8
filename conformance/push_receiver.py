"""A push service and user agent in one, on 127.0.0.1, for checking Web Push.

A test (or a conformance case, VXS-13.7-2) must not reach a real push service, and a
real one could not tell us whether the message decrypts. This one checks what a
browser's push service and the browser together would (RFC 8030 headers, the RFC 8292
VAPID token, the RFC 8291 encryption), decrypts each message with the subscription's private key
and auth secret, and records it, so a test can wait for the plaintext. Anything
it refuses is answered 400/401/403/404 and kept in ``rejections``: a test that
expects none asserts the list is empty.

It is a plain trio TCP server speaking HTTP/1.1 through h11, which keeps the
whole exchange under the test's control (no worker, no ASGI layer). It imports
nothing of the server (the conformance suite reaches a server only over the network)::

    async with PushReceiver.start() as receiver:
        info, handle = receiver.subscribe(application_server_key=vapid.public_key)
        sub = PushSubscription.from_json(info)
        assert (await sender.send(sub, b"hi")).status == 201
        assert await handle.next(timeout=5) == b"hi"
"""

# ruff: noqa: ASYNC109  (``timeout=`` reads better than a cancel scope in every caller)

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import http_ece  # type: ignore[import-untyped, unused-ignore]
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# RFC 8291 section 4: what every push service must accept, and no more here, so
# that a sender that exceeds it is caught.
MAX_BODY = 4096
# Drained (and refused) beyond MAX_BODY before the connection is given up.
MAX_DRAIN = 1 << 20
MAX_VAPID_LIFETIME = 24 * 3600
CLOCK_SKEW = 60
URGENCIES = frozenset({"very-low", "low", "normal", "high"})
TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
DIGITS = re.compile(r"[0-9]{1,10}")
PATH = re.compile(r"/push/([0-9a-f]{32})")
BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, the form browsers and RFC 8292 use for keys and JWTs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """base64url with or without padding; ``ValueError`` for any other character."""
    if not BASE64URL.fullmatch(text):
        raise ValueError("not base64url")
    unpadded = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except binascii.Error as exc:
        raise ValueError(f"not base64url: {exc}") from None


class Refused(Exception):
    """A request the push service answers with an error status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    """One message as the browser would see it, with the headers it came with."""

    payload: bytes
    ttl: int
    urgency: str | None
    topic: str | None
    claims: dict[str, object]
    key: str  # the VAPID k= (the application server's public key)


@dataclass(frozen=True)
class Rejection:
    status: int
    reason: str
    target: str


@dataclass
class Subscribed:
    """One subscription: its keys (the browser's half) and what it received."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: str | None
    gone: bool = False
    refused_gone: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    _send: trio.MemorySendChannel[Delivery] = field(init=False, repr=False)
    _receive: trio.MemoryReceiveChannel[Delivery] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Delivery](math.inf)

    def info(self) -> dict[str, object]:
        """What ``PushSubscription.toJSON()`` gives a page."""
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url_encode(point), "auth": b64url_encode(self.auth)},
        }

    def mark_gone(self) -> None:
        """The browser unsubscribed: from now on pushes are answered 410."""
        self.gone = True

    def _deliver(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._send.send_nowait(delivery)

    async def next_delivery(self, timeout: float = 5.0) -> Delivery:
        """The next message not yet taken; ``trio.TooSlowError`` after ``timeout``."""
        with trio.fail_after(timeout):
            return await self._receive.receive()

    async def next(self, timeout: float = 5.0) -> bytes:
        """The plaintext of the next message not yet taken."""
        return (await self.next_delivery(timeout)).payload

    async def take(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """The next ``count`` plaintexts, all within ``timeout``."""
        with trio.fail_after(timeout):
            return [(await self._receive.receive()).payload for _ in range(count)]


class PushReceiver:
    """The push service: one endpoint per subscription, under ``origin``."""

    def __init__(self, port: int) -> None:
        self.origin = f"http://127.0.0.1:{port}"
        self.subscriptions: dict[str, Subscribed] = {}
        self.rejections: list[Rejection] = []
        self.requests = 0

    @classmethod
    @asynccontextmanager
    async def start(cls) -> AsyncIterator[PushReceiver]:
        """Listen on 127.0.0.1, port 0, until the block ends."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        receiver = cls(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, receiver._connection, listeners)
            yield receiver
            nursery.cancel_scope.cancel()

    def subscribe(
        self, *, application_server_key: str | None = None
    ) -> tuple[dict[str, object], Subscribed]:
        """A new subscription with a fresh P-256 key pair and auth secret.

        Returns what the page would send the server (``toJSON()``) and the handle
        that receives. With ``application_server_key``, pushes signed with any
        other VAPID key are refused (403), as a browser's push service does for a
        subscription made with that ``applicationServerKey``."""
        sub_id = secrets.token_hex(16)
        subscribed = Subscribed(
            id=sub_id,
            endpoint=f"{self.origin}/push/{sub_id}",
            private_key=ec.generate_private_key(ec.SECP256R1()),
            auth=secrets.token_bytes(16),
            application_server_key=application_server_key,
        )
        self.subscriptions[sub_id] = subscribed
        return subscribed.info(), subscribed

    async def _connection(self, stream: trio.SocketStream) -> None:
        """One HTTP/1.1 connection, kept alive across requests as httpx expects."""
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                try:
                    event = await _next_event(conn, stream)
                    if not isinstance(event, h11.Request):
                        return  # ConnectionClosed, or the client gave up
                    target = event.target.decode("latin-1")
                    headers = {
                        name.decode("latin-1").lower(): value.decode("latin-1")
                        for name, value in event.headers
                    }
                    body, too_large = await _read_body(conn, stream)
                    if body is None:
                        return
                    self.requests += 1
                    try:
                        if too_large:
                            raise Refused(413, f"body over {MAX_BODY} octets")
                        status, extra = self._handle(
                            event.method.decode("latin-1"), target, headers, body
                        )
                    except Refused as refused:
                        self.rejections.append(Rejection(refused.status, refused.reason, target))
                        status, extra = refused.status, []
                    except Exception as exc:  # a bug here must show, not hang the test
                        self.rejections.append(Rejection(500, repr(exc), target))
                        status, extra = 500, []
                    await _respond(conn, stream, status, extra)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                except h11.RemoteProtocolError as exc:
                    self.rejections.append(Rejection(400, f"HTTP: {exc}", ""))
                    if conn.our_state is h11.SEND_RESPONSE:
                        with contextlib.suppress(trio.BrokenResourceError):
                            await _respond(conn, stream, 400, [], close=True)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    def _handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]]]:
        match = PATH.fullmatch(target)
        subscribed = self.subscriptions.get(match.group(1)) if match else None
        if subscribed is None:
            raise Refused(404, "no such subscription")
        if method != "POST":
            raise Refused(405, f"{method} on a push resource")
        if subscribed.gone:
            subscribed.refused_gone += 1
            return 410, []
        ttl = headers.get("ttl")
        if ttl is None or not DIGITS.fullmatch(ttl):
            raise Refused(400, f"TTL must be a number of seconds, got {ttl!r}")
        urgency = headers.get("urgency")
        if urgency is not None and urgency not in URGENCIES:
            raise Refused(400, f"bad Urgency {urgency!r}")
        topic = headers.get("topic")
        if topic is not None and not TOPIC.fullmatch(topic):
            raise Refused(400, f"bad Topic {topic!r}")
        claims, key = self._verify_vapid(headers.get("authorization"))
        expected = subscribed.application_server_key
        if expected is not None and key != expected:
            raise Refused(403, "VAPID key is not the subscription's applicationServerKey")
        if body:
            encoding = headers.get("content-encoding")
            if encoding != "aes128gcm":
                raise Refused(400, f"Content-Encoding must be aes128gcm, got {encoding!r}")
            payload = _decrypt(body, subscribed)
        else:
            payload = b""
        subscribed._deliver(Delivery(payload, int(ttl), urgency, topic, claims, key))
        return 201, [("location", f"/message/{secrets.token_hex(8)}")]

    def _verify_vapid(self, value: str | None) -> tuple[dict[str, object], str]:
        """RFC 8292: ``vapid t=<ES256 JWT>, k=<key>``, signed by ``k``, for us."""
        if value is None:
            raise Refused(401, "no Authorization header")
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() != "vapid":
            raise Refused(401, f"Authorization scheme {scheme!r}, not vapid")
        params: dict[str, str] = {}
        for item in rest.split(","):
            name, sep, param = item.strip().partition("=")
            if not sep:
                raise Refused(401, f"bad auth-param {item!r}")
            params[name.strip().lower()] = param.strip()
        token, key = params.get("t"), params.get("k")
        if token is None or key is None:
            raise Refused(401, "vapid needs t= and k=")
        try:
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b64url_decode(key)
            )
        except ValueError:
            raise Refused(401, "k= is not a P-256 public key") from None
        pieces = token.split(".")
        if len(pieces) != 3:
            raise Refused(401, "t= is not a JWS compact serialization")
        try:
            header = json.loads(b64url_decode(pieces[0]))
            claims = json.loads(b64url_decode(pieces[1]))
            signature = b64url_decode(pieces[2])
        except ValueError:
            raise Refused(401, "t= does not decode") from None
        if not isinstance(header, dict) or header.get("alg") != "ES256":
            raise Refused(401, f"JWT header {header!r} is not ES256")
        if header.get("typ", "JWT") != "JWT":
            raise Refused(401, f"JWT typ {header.get('typ')!r}")
        if len(signature) != 64:
            raise Refused(401, f"ES256 signature of {len(signature)} octets, not 64")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            public_key.verify(
                der, f"{pieces[0]}.{pieces[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            raise Refused(401, "JWT signature does not verify with k=") from None
        if not isinstance(claims, dict):
            raise Refused(401, "JWT claims are not an object")
        if claims.get("aud") != self.origin:
            raise Refused(401, f"aud {claims.get('aud')!r} is not {self.origin!r}")
        exp, now = claims.get("exp"), time.time()
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise Refused(401, f"exp {exp!r} is not a number of seconds")
        if not now < exp <= now + MAX_VAPID_LIFETIME + CLOCK_SKEW:
            raise Refused(401, f"exp {exp} is not in the next 24 hours (now {int(now)})")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
            raise Refused(401, f"sub {sub!r} is not a mailto: or https: URI")
        return claims, key


def _decrypt(body: bytes, subscribed: Subscribed) -> bytes:
    """RFC 8291 as the browser does it, plus its one-record, keyid rules."""
    if len(body) < 21 or len(body) < 21 + body[20]:
        raise Refused(400, "body shorter than its aes128gcm header")
    (record_size,) = struct.unpack("!L", body[16:20])
    keyid_length = body[20]
    if keyid_length != 65:
        raise Refused(400, f"keyid of {keyid_length} octets, not a 65-octet P-256 key")
    records = body[21 + keyid_length :]
    if record_size < 18 or len(records) > record_size:
        raise Refused(400, f"not one record (rs {record_size}, {len(records)} octets)")
    try:
        payload: bytes = http_ece.decrypt(
            body,
            private_key=subscribed.private_key,
            auth_secret=subscribed.auth,
            version="aes128gcm",
        )
    except (http_ece.ECEException, ValueError) as exc:
        raise Refused(400, f"does not decrypt: {getattr(exc, 'message', exc)}") from None
    return payload


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))


async def _read_body(conn: h11.Connection, stream: trio.SocketStream) -> tuple[bytes | None, bool]:
    """The request body, or None if the connection ended first; drained past
    MAX_BODY (flagged) so that the answer still reaches the client."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_DRAIN:
                return None, True
            if size <= MAX_BODY:
                chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks), size > MAX_BODY
        else:
            return None, False


async def _respond(
    conn: h11.Connection,
    stream: trio.SocketStream,
    status: int,
    extra: list[tuple[str, str]],
    *,
    close: bool = False,
) -> None:
    headers = [("content-length", "0"), *extra]
    if close:
        headers.append(("connection", "close"))
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.send_all(conn.send(h11.EndOfMessage()))
