"""Web Push: tell a browser that a message arrived while none of its pages is open.

A browser that subscribes (``PushManager.subscribe``) gets an endpoint URL at its
vendor's push service and two keys of its own; the page hands the three to us as
``PushSubscription.toJSON()``. To reach the browser we POST to that endpoint
(RFC 8030). The push service must not read what we send, so the body is encrypted
to the browser's keys (RFC 8291: ECDH with an ephemeral key per message, HKDF with
the browser's auth secret, one aes128gcm record of RFC 8188, done by ``http_ece``).
The push service must know that we are the server the browser subscribed for, so
each request carries a VAPID token (RFC 8292): a short-lived ES256 JWT naming the
push service's origin, signed with our long-lived key, whose public half the page
passed as ``applicationServerKey`` when it subscribed.

How: ``PushSubscription.from_json`` checks what a page sends before it is stored,
``Vapid.load_or_create`` keeps the server's key in a 0600 PEM file next to the data,
``encrypt`` builds the body and ``PushSender.send`` posts it under trio (httpx's
AsyncClient runs on trio through anyio). A push is best effort: ``send`` never
raises on the network, it answers a ``PushResult``, and ``gone`` tells the caller to
forget a subscription the browser has dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import http_ece  # type: ignore[import-untyped, unused-ignore]
import httpx
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

log = logging.getLogger(__name__)

P256DH_LENGTH: Final = 65
AUTH_LENGTH: Final = 16
# RFC 8291 section 4: a push service need only accept 4096 octets of body; the
# aes128gcm header with a 65-octet keyid is 86, the record's delimiter 1 and its
# tag 16, which leaves 3993 octets for the message.
MAX_PAYLOAD: Final = 3993
_RECORD_OVERHEAD: Final = 1 + 16
# RFC 8292 section 2: the token must not be valid for more than 24 hours.
MAX_VAPID_LIFETIME: Final = 24 * 3600
SEND_TIMEOUT: Final = 10.0
URGENCIES: Final = frozenset({"very-low", "low", "normal", "high"})
# RFC 8030 section 5.4: at most 32 characters of the URL-safe base64 alphabet.
_TOPIC: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, the form browsers and RFC 8292 use for keys and JWTs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding, refusing any other character.

    The standard library silently drops characters outside the alphabet, which
    would accept a mangled key as some other key; this raises ``ValueError``."""
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not base64url")
    unpadded = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except binascii.Error as exc:
        raise ValueError(f"not base64url: {exc}") from None


def origin(url: str) -> str:
    """The origin of ``url`` as RFC 6454 serializes it, VAPID's ``aud``.

    Scheme and host are lower case and a default port is left out, so the token
    names the push service exactly as the service names itself."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port  # raises ValueError for a port out of range
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


@dataclass(frozen=True, kw_only=True)
class PushSubscription:
    """Where and to whom a push goes: a browser's ``PushSubscription.toJSON()``.

    ``p256dh`` is the browser's P-256 public key (base64url of the 65-octet
    uncompressed point) and ``auth`` its 16-octet secret (base64url), exactly as
    they appear under ``keys``. Build one with ``from_json`` from untrusted input."""

    endpoint: str
    p256dh: str
    auth: str

    @classmethod
    def from_json(cls, data: object) -> PushSubscription:
        """Check a subscription a page sent before it is stored.

        A bad key would only show up later as a push that no browser can decrypt
        and no one notices, so it is refused here, with a message saying what is
        wrong. Other members (``expirationTime``) are ignored."""
        if not isinstance(data, dict):
            raise ValueError("a push subscription must be a JSON object")
        endpoint = data.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError("push subscription: 'endpoint' must be a non-empty string")
        try:
            origin(endpoint)
        except ValueError:
            raise ValueError(
                f"push subscription: 'endpoint' must be an http(s) URL, not {endpoint!r}"
            ) from None
        keys = data.get("keys")
        if not isinstance(keys, dict):
            raise ValueError("push subscription: 'keys' must be an object")
        p256dh, auth = keys.get("p256dh"), keys.get("auth")
        if not isinstance(p256dh, str) or not isinstance(auth, str):
            raise ValueError("push subscription: 'keys.p256dh' and 'keys.auth' must be strings")
        subscription = cls(endpoint=endpoint, p256dh=p256dh, auth=auth)
        subscription.user_agent_key()
        subscription.auth_secret()
        return subscription

    def to_json(self) -> dict[str, object]:
        """The same shape as ``PushSubscription.toJSON()``, for storage."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}

    def user_agent_key(self) -> ec.EllipticCurvePublicKey:
        """The browser's public key, checked to be a point on P-256."""
        try:
            raw = b64url_decode(self.p256dh)
        except ValueError:
            raise ValueError("push subscription: 'keys.p256dh' is not base64url") from None
        if len(raw) != P256DH_LENGTH or raw[0] != 0x04:
            raise ValueError(
                f"push subscription: 'keys.p256dh' must be an uncompressed P-256 point "
                f"({P256DH_LENGTH} octets starting with 0x04), got {len(raw)} octets"
            )
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise ValueError("push subscription: 'keys.p256dh' is not a point on P-256") from None

    def auth_secret(self) -> bytes:
        """The browser's 16-octet authentication secret."""
        try:
            raw = b64url_decode(self.auth)
        except ValueError:
            raise ValueError("push subscription: 'keys.auth' is not base64url") from None
        if len(raw) != AUTH_LENGTH:
            raise ValueError(
                f"push subscription: 'keys.auth' must be {AUTH_LENGTH} octets, got {len(raw)}"
            )
        return raw


def _check_subject(subject: str) -> None:
    """RFC 8292 section 2.1: ``sub`` is how the push service's operator reaches us."""
    if not (subject.startswith("mailto:") and len(subject) > len("mailto:")) and not (
        subject.startswith("https://") and len(subject) > len("https://")
    ):
        raise ValueError(f"the VAPID subject must be a mailto: or https: URI, not {subject!r}")


class Vapid:
    """The server's VAPID identity (RFC 8292): one EC P-256 key for all pushes.

    Every subscription is bound to the public key a page passed as
    ``applicationServerKey``; a new key would silently orphan them all, so the key
    lives in a file and is created once."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError(f"a VAPID key must be on P-256, not {private_key.curve.name}")
        self._private_key = private_key
        point = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self._public_key = b64url_encode(point)

    @classmethod
    def generate(cls) -> Vapid:
        """A fresh key that lives only in memory (tests, or a caller that stores it)."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load_or_create(cls, path: Path) -> Vapid:
        """The key in the PEM file at ``path``; created (mode 0600) if there is none.

        The file is written under a temporary name and linked into place, so a
        reader never sees half a key and two servers starting together end up with
        the same key (the second one loads the first one's file)."""
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        vapid = cls.generate()
        pem = vapid._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)  # whatever the umask
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                return cls._load(path)
        finally:
            temporary.unlink(missing_ok=True)
        return vapid

    @classmethod
    def _load(cls, path: Path) -> Vapid:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: not an EC private key")
        return cls(key)

    @property
    def public_key(self) -> str:
        """Unpadded base64url of the uncompressed public point: what a page passes to
        ``PushManager.subscribe`` as ``applicationServerKey`` and what goes in ``k=``."""
        return self._public_key

    def token(self, audience: str, *, subject: str, expires: int) -> str:
        """An ES256 JWT (RFC 7515/7518) with ``aud``, ``exp`` and ``sub``.

        Claims are serialized with sorted keys and no spaces, which some push
        services have been seen to require."""
        header = b64url_encode(b'{"typ":"JWT","alg":"ES256"}')
        claims = json.dumps(
            {"aud": audience, "exp": expires, "sub": subject}, separators=(",", ":"), sort_keys=True
        )
        signing_input = f"{header}.{b64url_encode(claims.encode())}"
        der = self._private_key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # JWS wants the raw 64-octet r || s, not the DER that cryptography gives.
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{b64url_encode(signature)}"

    def headers(
        self, endpoint: str, *, subject: str, expires_in: int = 12 * 3600
    ) -> dict[str, str]:
        """The ``Authorization`` header for a push to ``endpoint`` (RFC 8292 section 3).

        ``aud`` is the endpoint's origin, so a token taken from one push service
        cannot be replayed at another; ``exp`` is ``expires_in`` seconds from now
        (at most 24 hours); ``subject`` is a mailto: or https: URI for the push
        service's operator to reach us."""
        _check_subject(subject)
        if not 0 < expires_in <= MAX_VAPID_LIFETIME:
            raise ValueError(f"expires_in must be 1 to {MAX_VAPID_LIFETIME} seconds")
        token = self.token(origin(endpoint), subject=subject, expires=int(time.time()) + expires_in)
        return {"Authorization": f"vapid t={token}, k={self._public_key}"}


def encrypt(payload: bytes, subscription: PushSubscription, *, record_size: int = 4096) -> bytes:
    """The aes128gcm body of RFC 8291 for ``payload``, readable only by the subscriber.

    A fresh ephemeral key per message (RFC 8291 section 3.1: reusing one would let
    the push service link messages); its public half is the header's keyid. The
    message is one record, as section 4 requires, so ``record_size`` must exceed the
    payload by the delimiter and tag (17 octets); the payload is limited to 3993
    octets, what every push service must accept."""
    if not payload:
        raise ValueError("an empty push is sent without a body, not encrypted")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a push payload is at most {MAX_PAYLOAD} octets, got {len(payload)}")
    if not len(payload) + _RECORD_OVERHEAD < record_size <= 2**31 - 1:
        raise ValueError(
            f"record_size must exceed the payload by more than {_RECORD_OVERHEAD} octets "
            f"so that it is one record, got {record_size} for {len(payload)}"
        )
    receiver_key = subscription.user_agent_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    body: bytes = http_ece.encrypt(
        payload,
        salt=os.urandom(16),
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=receiver_key,
        auth_secret=subscription.auth_secret(),
        rs=record_size,
        version="aes128gcm",
    )
    return body


@dataclass(frozen=True)
class PushResult:
    """What the push service answered; ``status`` is 0 when it could not be reached.

    ``gone`` (404 or 410, RFC 8030 section 7.3) means the browser dropped the
    subscription: the caller deletes it rather than pushing to it forever."""

    status: int
    gone: bool

    @property
    def ok(self) -> bool:
        """The push service accepted the message (201, or another 2xx)."""
        return 200 <= self.status < 300


class PushSender:
    """Posts encrypted pushes with a VAPID token, under trio.

    It owns the httpx client unless one is given (then the caller closes it): one
    client keeps connections to a push service alive across messages."""

    def __init__(
        self,
        vapid: Vapid,
        *,
        subject: str,
        client: httpx.AsyncClient | None = None,
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        _check_subject(subject)
        self.vapid = vapid
        self.subject = subject
        self.timeout = timeout
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def send(
        self,
        subscription: PushSubscription,
        payload: bytes,
        *,
        ttl: int = 3600,
        urgency: str = "normal",
        topic: str | None = None,
    ) -> PushResult:
        """Push ``payload`` (at most 3993 octets; empty for a push without data).

        ``ttl`` is how long, in seconds, the push service keeps the message for a
        browser that is offline (0: deliver now or drop); ``urgency`` lets the
        browser save battery (RFC 8030 section 5.3); a message with the same
        ``topic`` replaces an undelivered one (section 5.4). Bad arguments raise
        ``ValueError``; the network never raises: a failure or a request that
        takes longer than the timeout is ``PushResult(0, gone=False)``."""
        if ttl < 0:
            raise ValueError("ttl must not be negative")
        if urgency not in URGENCIES:
            raise ValueError(f"urgency must be one of {sorted(URGENCIES)}, not {urgency!r}")
        if topic is not None and not _TOPIC.fullmatch(topic):
            raise ValueError("topic must be 1 to 32 characters of base64url")
        headers = self.vapid.headers(subscription.endpoint, subject=self.subject)
        headers["TTL"] = str(ttl)
        headers["Urgency"] = urgency
        if topic is not None:
            headers["Topic"] = topic
        if payload:
            body = encrypt(payload, subscription)
            headers["Content-Encoding"] = "aes128gcm"
            headers["Content-Type"] = "application/octet-stream"
        else:
            body = b""
        status = 0
        with trio.move_on_after(self.timeout) as deadline:
            try:
                # Streamed so that the response body, which we do not need, is
                # never read into memory whatever its size.
                async with self._client.stream(
                    "POST", subscription.endpoint, content=body, headers=headers
                ) as response:
                    status = response.status_code
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                log.info("push to %s failed: %r", origin(subscription.endpoint), exc)
        if deadline.cancelled_caught and status == 0:
            log.info("push to %s took over %g s", origin(subscription.endpoint), self.timeout)
        if status == 0:
            return PushResult(0, gone=False)
        if not 200 <= status < 300:
            log.info("push to %s answered %d", origin(subscription.endpoint), status)
        return PushResult(status, gone=status in (404, 410))

    async def aclose(self) -> None:
        """Close the client if this sender made it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> PushSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
