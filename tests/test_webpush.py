"""Web Push (RFC 8030/8291/8292) against a local push service that decrypts.

Every request goes to 127.0.0.1: the receiver in ``conformance.push_receiver``, a closed
port, or a listener that never answers.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from py_vapid import jwt as py_vapid_jwt  # type: ignore[import-untyped, unused-ignore]

from conformance.push_receiver import PushReceiver, Subscribed
from voxer_stream.service.webpush import (
    MAX_PAYLOAD,
    PushResult,
    PushSender,
    PushSubscription,
    Vapid,
    b64url_decode,
    b64url_encode,
    encrypt,
    origin,
)

SUBJECT = "mailto:ops@voxer-stream.test"


@pytest.fixture
async def sender(vapid: Vapid, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PushSender]:
    # The sender's own client honours proxy variables; none may send 127.0.0.1 elsewhere.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    async with PushSender(vapid, subject=SUBJECT) as sender:
        yield sender


def subscribe(receiver: PushReceiver, vapid: Vapid) -> tuple[PushSubscription, Subscribed]:
    info, handle = receiver.subscribe(application_server_key=vapid.public_key)
    return PushSubscription.from_json(info), handle


def rfc8291_decrypt(body: bytes, handle: Subscribed) -> bytes:
    """RFC 8291 section 3.4 and RFC 8188 written out, independent of http_ece, so
    that a fault shared by its encrypt and decrypt cannot pass."""
    salt, (rs,), idlen = body[:16], struct.unpack("!L", body[16:20]), body[20]
    sender_key, record = body[21 : 21 + idlen], body[21 + idlen :]
    assert idlen == 65 and len(record) <= rs
    ua_public = handle.private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    shared = handle.private_key.exchange(
        ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender_key)
    )
    info = b"WebPush: info\x00" + ua_public + sender_key
    ikm = HKDF(hashes.SHA256(), 32, handle.auth, info).derive(shared)
    cek = HKDF(hashes.SHA256(), 16, salt, b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt, b"Content-Encoding: nonce\x00").derive(ikm)
    plain = AESGCM(cek).decrypt(nonce, record, None).rstrip(b"\x00")
    assert plain.endswith(b"\x02"), "the last (only) record ends with delimiter 2"
    return plain[:-1]


async def test_round_trip(receiver: PushReceiver, sender: PushSender, vapid: Vapid) -> None:
    subscription, handle = subscribe(receiver, vapid)
    payload = json.dumps({"thread": "t1", "msg": "m1", "from": "alice"}).encode()
    result = await sender.send(subscription, payload, ttl=60, urgency="high", topic="t1")
    assert result == PushResult(201, gone=False) and result.ok
    assert await handle.next(timeout=5) == payload
    delivery = handle.deliveries[0]
    assert (delivery.ttl, delivery.urgency, delivery.topic) == (60, "high", "t1")
    assert delivery.key == vapid.public_key
    assert delivery.claims["aud"] == receiver.origin
    assert delivery.claims["sub"] == SUBJECT
    assert receiver.rejections == []


async def test_several_messages_and_subscriptions(
    receiver: PushReceiver, sender: PushSender, vapid: Vapid
) -> None:
    (first, first_handle), (second, second_handle) = (
        subscribe(receiver, vapid),
        subscribe(receiver, vapid),
    )
    assert first.p256dh != second.p256dh and first.auth != second.auth
    payloads = [b"one", b"\x00binary\xff" * 10, os.urandom(MAX_PAYLOAD), b"x"]
    for payload in payloads:
        assert (await sender.send(first, payload)).status == 201
    assert (await sender.send(second, b"other")).status == 201
    assert await first_handle.take(len(payloads), timeout=5) == payloads
    assert await second_handle.next(timeout=5) == b"other"
    assert receiver.rejections == []
    with pytest.raises(trio.TooSlowError):
        await first_handle.next(timeout=0.1)


async def test_empty_push_has_no_body(
    receiver: PushReceiver, sender: PushSender, vapid: Vapid
) -> None:
    subscription, handle = subscribe(receiver, vapid)
    assert (await sender.send(subscription, b"", ttl=0)).status == 201
    assert await handle.next(timeout=5) == b""
    assert handle.deliveries[0].ttl == 0
    assert receiver.rejections == []


async def test_encryption_matches_rfc8291(receiver: PushReceiver, vapid: Vapid) -> None:
    subscription, handle = subscribe(receiver, vapid)
    payload = b"hello, browser"
    first, second = encrypt(payload, subscription), encrypt(payload, subscription)
    assert rfc8291_decrypt(first, handle) == payload
    assert rfc8291_decrypt(second, handle) == payload
    # A fresh salt and ephemeral key per message: nothing links the two.
    assert first[:16] != second[:16] and first[21:86] != second[21:86]
    assert struct.unpack("!L", first[16:20]) == (4096,)
    assert len(first) == 86 + len(payload) + 17


async def test_vapid_header(receiver: PushReceiver, vapid: Vapid) -> None:
    endpoint = f"{receiver.origin}/push/abc?x=1"
    value = vapid.headers(endpoint, subject=SUBJECT, expires_in=600)["Authorization"]
    scheme, _, params = value.partition(" ")
    assert scheme == "vapid"
    parts = dict(item.strip().split("=", 1) for item in params.split(","))
    assert parts["k"] == vapid.public_key
    key = b64url_decode(vapid.public_key)
    assert len(key) == 65 and key[0] == 4 and "=" not in vapid.public_key
    header = json.loads(b64url_decode(parts["t"].split(".")[0]))
    assert header == {"typ": "JWT", "alg": "ES256"}
    # py_vapid's decoder verifies the signature independently.
    claims = py_vapid_jwt.decode(parts["t"], parts["k"])
    assert claims["aud"] == receiver.origin
    assert claims["sub"] == SUBJECT
    assert time.time() + 590 < claims["exp"] <= time.time() + 600
    # A token verifies only with its own key.
    with pytest.raises(InvalidSignature):
        py_vapid_jwt.decode(parts["t"], Vapid.generate().public_key)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Push.Example.COM/wpush/v2/abc", "https://push.example.com"),
        ("https://push.example.com:443/x", "https://push.example.com"),
        ("https://push.example.com:8443/x", "https://push.example.com:8443"),
        ("http://127.0.0.1:80/x", "http://127.0.0.1"),
        ("http://127.0.0.1:5000/push/1", "http://127.0.0.1:5000"),
        ("https://user:pw@[::1]:9000/x", "https://[::1]:9000"),
    ],
)
def test_origin(url: str, expected: str) -> None:
    assert origin(url) == expected


def test_vapid_arguments(vapid: Vapid) -> None:
    with pytest.raises(ValueError, match="mailto: or https:"):
        vapid.headers("https://push.example.com/x", subject="ops@example.com")
    with pytest.raises(ValueError, match="expires_in"):
        vapid.headers("https://push.example.com/x", subject=SUBJECT, expires_in=24 * 3600 + 1)
    with pytest.raises(ValueError, match="http"):
        vapid.headers("ftp://push.example.com/x", subject=SUBJECT)
    assert vapid.headers("https://push.example.com/x", subject="https://voxer.test/contact")
    with pytest.raises(ValueError, match="mailto: or https:"):
        PushSender(vapid, subject="nobody")


async def test_gone(receiver: PushReceiver, sender: PushSender, vapid: Vapid) -> None:
    subscription, handle = subscribe(receiver, vapid)
    assert (await sender.send(subscription, b"before")).status == 201
    handle.mark_gone()
    assert await sender.send(subscription, b"after") == PushResult(410, gone=True)
    assert handle.refused_gone == 1
    assert await handle.next(timeout=5) == b"before"
    assert receiver.rejections == []
    unknown = PushSubscription(
        endpoint=f"{receiver.origin}/push/{'0' * 32}", p256dh=subscription.p256dh, auth="A" * 22
    )
    assert await sender.send(unknown, b"x") == PushResult(404, gone=True)


async def test_unreachable_endpoint(vapid: Vapid) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    info = {**valid_info(), "endpoint": f"http://127.0.0.1:{port}/push/x"}
    subscription = PushSubscription.from_json(info)
    async with httpx.AsyncClient(trust_env=False) as client:
        sender = PushSender(vapid, subject=SUBJECT, client=client)
        assert await sender.send(subscription, b"x") == PushResult(0, gone=False)
        await sender.aclose()  # not its client: still usable
        assert not client.is_closed


async def test_silent_endpoint_times_out(vapid: Vapid, receiver: PushReceiver) -> None:
    subscription, _ = subscribe(receiver, vapid)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    # Accepted by the kernel, never answered.
    silent = PushSubscription(
        endpoint=f"http://127.0.0.1:{port}/push/x", p256dh=subscription.p256dh, auth="A" * 22
    )
    async with httpx.AsyncClient(trust_env=False) as client:
        sender = PushSender(vapid, subject=SUBJECT, client=client, timeout=0.5)
        start = trio.current_time()
        assert await sender.send(silent, b"x") == PushResult(0, gone=False)
        assert trio.current_time() - start < 5
    for listener in listeners:
        await listener.aclose()


async def test_receiver_refuses_bad_pushes(
    receiver: PushReceiver, sender: PushSender, vapid: Vapid
) -> None:
    subscription, handle = subscribe(receiver, vapid)
    # Another server's key: the subscription was made with vapid.public_key.
    async with PushSender(Vapid.generate(), subject=SUBJECT) as stranger:
        assert (await stranger.send(subscription, b"x")).status == 403
    body = encrypt(b"x", subscription)
    good = vapid.headers(subscription.endpoint, subject=SUBJECT)
    base = {"TTL": "60", "Content-Encoding": "aes128gcm", **good}
    expired = vapid.token(receiver.origin, subject=SUBJECT, expires=int(time.time()) - 1)
    elsewhere = vapid.headers("https://push.example.com/x", subject=SUBJECT)
    cases = [
        ({k: v for k, v in base.items() if k != "TTL"}, body, 400),
        ({**base, "Content-Encoding": "aesgcm"}, body, 400),
        ({**base, "Urgency": "urgent"}, body, 400),
        ({k: v for k, v in base.items() if k != "Authorization"}, body, 401),
        ({**base, "Authorization": f"vapid t={expired}, k={vapid.public_key}"}, body, 401),
        ({**base, **elsewhere}, body, 401),
        (base, body[:-1], 400),
        (base, encrypt(b"x", subscribe(receiver, vapid)[0]), 400),
    ]
    async with httpx.AsyncClient(trust_env=False) as client:
        for headers, content, status in cases:
            response = await client.post(subscription.endpoint, headers=headers, content=content)
            assert response.status_code == status, (headers, receiver.rejections[-1:])
        response = await client.post(subscription.endpoint, headers=base, content=body)
        assert response.status_code == 201
    assert [r.status for r in receiver.rejections] == [403] + [s for _, _, s in cases]
    assert await handle.next(timeout=5) == b"x"
    assert len(handle.deliveries) == 1


def valid_info() -> dict[str, object]:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return {
        "endpoint": "https://push.example.com/wpush/v2/abc",
        "expirationTime": None,
        "keys": {"p256dh": b64url_encode(point), "auth": b64url_encode(os.urandom(16))},
    }


def with_keys(**keys: str) -> dict[str, object]:
    info = valid_info()
    info["keys"] = {**info["keys"], **keys}  # type: ignore[dict-item]
    return info


def test_from_json_accepts_a_browser_subscription() -> None:
    info = valid_info()
    subscription = PushSubscription.from_json(info)
    assert subscription.endpoint == info["endpoint"]
    assert PushSubscription.from_json(subscription.to_json()) == subscription
    keys = info["keys"]
    assert isinstance(keys, dict)
    padded = with_keys(auth=keys["auth"] + "==")
    assert PushSubscription.from_json(padded).auth_secret() == b64url_decode(keys["auth"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "JSON object"),
        ({"keys": valid_info()["keys"]}, "'endpoint'"),
        ({**valid_info(), "endpoint": "ftp://push.example.com/x"}, "http"),
        ({**valid_info(), "endpoint": "push.example.com/x"}, "http"),
        ({**valid_info(), "endpoint": "https:///x"}, "http"),
        ({**valid_info(), "endpoint": "https://push.example.com:99999/x"}, "http"),
        ({"endpoint": "https://push.example.com/x"}, "'keys'"),
        ({"endpoint": "https://push.example.com/x", "keys": {"auth": "A" * 22}}, "strings"),
        (with_keys(p256dh="not base64!"), "p256dh' is not base64url"),
        (with_keys(p256dh=b64url_encode(b"\x04" + b"\x01" * 63)), "65"),
        (with_keys(p256dh=b64url_encode(b"\x02" + b"\x01" * 32)), "uncompressed"),
        (with_keys(p256dh=b64url_encode(b"\x04" + b"\x01" * 64)), "not a point"),
        (with_keys(auth=b64url_encode(b"\x01" * 15)), "16 octets"),
        (with_keys(auth="AAAA AAAA"), "auth' is not base64url"),
    ],
)
def test_from_json_refuses(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PushSubscription.from_json(data)


async def test_payload_limits(sender: PushSender) -> None:
    subscription = PushSubscription.from_json(valid_info())
    assert len(encrypt(b"x" * MAX_PAYLOAD, subscription)) == 4096
    with pytest.raises(ValueError, match="3993"):
        encrypt(b"x" * (MAX_PAYLOAD + 1), subscription)
    with pytest.raises(ValueError, match="3993"):
        await sender.send(subscription, b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="one record"):
        encrypt(b"x" * 100, subscription, record_size=117)
    assert encrypt(b"x" * 100, subscription, record_size=118)
    with pytest.raises(ValueError, match="empty"):
        encrypt(b"", subscription)


async def test_send_arguments(sender: PushSender) -> None:
    subscription = PushSubscription.from_json(valid_info())
    with pytest.raises(ValueError, match="urgency"):
        await sender.send(subscription, b"x", urgency="urgent")
    with pytest.raises(ValueError, match="topic"):
        await sender.send(subscription, b"x", topic="t" * 33)
    with pytest.raises(ValueError, match="topic"):
        await sender.send(subscription, b"x", topic="a/b")
    with pytest.raises(ValueError, match="ttl"):
        await sender.send(subscription, b"x", ttl=-1)


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "data" / "vapid.pem"
    created = Vapid.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert os.listdir(path.parent) == ["vapid.pem"]  # no temporary left behind
    loaded = Vapid.load_or_create(path)
    assert loaded.public_key == created.public_key
    token = loaded.token("https://push.example.com", subject=SUBJECT, expires=int(time.time()))
    assert py_vapid_jwt.decode(token, created.public_key)["aud"] == "https://push.example.com"


def test_load_refuses_another_curve(tmp_path: Path) -> None:
    path = tmp_path / "vapid.pem"
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="P-256"):
        Vapid.load_or_create(path)


async def test_receiver_survives_broken_clients(
    receiver: PushReceiver, sender: PushSender, vapid: Vapid
) -> None:
    subscription, handle = subscribe(receiver, vapid)
    port = int(receiver.origin.rsplit(":", 1)[1])
    for raw in (
        b"POST /push/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nshort",
        b"NOT HTTP AT ALL\r\n\r\n",
    ):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw)
        await stream.aclose()
    assert (await sender.send(subscription, b"still here")).status == 201
    assert await handle.next(timeout=5) == b"still here"
