"""Authorization on every endpoint (VXS-8-1, VXS-8-2): no token, an expired token and a
revoked token are UNAUTHENTICATED; a thread, message or image the caller may not see is
answered exactly as one that does not exist, so nothing leaks, not even existence."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conftest import RunningServer
from PIL import Image
from service_api import Device, login, register

from voxer_stream.service.identity import token_hash
from voxer_stream.store import Session, open_store
from voxer_stream.wire import Error, decode_frame

#: (method, path, JSON body): every authenticated route; {t} {m} {a} {i} are alice's
#: thread, message, account id and image.
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/accounts/me", None),
    ("PATCH", "/v1/accounts/me", {"display_name": "x"}),
    ("POST", "/v1/accounts/me/password", {"old_password": "a" * 8, "new_password": "b" * 8}),
    ("GET", "/v1/accounts/alice", None),
    ("GET", "/v1/sessions", None),
    ("DELETE", "/v1/sessions/nope", None),
    ("GET", "/v1/contacts", None),
    ("PUT", "/v1/contacts/alice", {}),
    ("DELETE", "/v1/contacts/alice", None),
    ("POST", "/v1/threads", {"participants": []}),
    ("GET", "/v1/threads", None),
    ("GET", "/v1/threads/{t}", None),
    ("PATCH", "/v1/threads/{t}", {"title": "x"}),
    ("POST", "/v1/threads/{t}/participants", {"usernames": []}),
    ("PATCH", "/v1/threads/{t}/participants/{a}", {"role": "member"}),
    ("DELETE", "/v1/threads/{t}/participants/{a}", None),
    ("PUT", "/v1/threads/{t}/mute", None),
    ("DELETE", "/v1/threads/{t}/mute", None),
    ("GET", "/v1/threads/{t}/messages", None),
    ("POST", "/v1/threads/{t}/messages", {"kind": "text", "text": "hi"}),
    ("POST", "/v1/threads/{t}/whip", "v=0"),
    ("POST", "/v1/threads/{t}/whep", "v=0"),
    ("GET", "/v1/messages/{m}", None),
    ("DELETE", "/v1/messages/{m}", None),
    ("POST", "/v1/messages/{m}/forward", {"thread": "{t}"}),
    ("PUT", "/v1/messages/{m}/reactions/x", None),
    ("DELETE", "/v1/messages/{m}/reactions/x", None),
    ("POST", "/v1/messages/{m}/receipts", {"kind": "read"}),
    ("GET", "/v1/messages/{m}/receipts", None),
    ("GET", "/v1/messages/{m}/audio.opus", None),
    ("GET", "/v1/messages/{m}/listen", None),
    ("POST", "/v1/messages/{m}/whep", "v=0"),
    ("POST", "/v1/media", None),
    ("GET", "/v1/media/{i}", None),
    ("GET", "/v1/media/{i}/thumbnail", None),
    ("GET", "/v1/sync", None),
    ("GET", "/v1/sync/stream", None),
    ("POST", "/v1/sync/ack", {"token": "0"}),
    ("GET", "/v1/search?q=hello", None),
    ("GET", "/v1/push/vapid", None),
    ("GET", "/v1/push/subscriptions", None),
    ("POST", "/v1/push/subscriptions", {}),
    ("DELETE", "/v1/push/subscriptions/nope", None),
]


@dataclass
class World:
    http: httpx.AsyncClient
    alice: Device
    carol: Device
    ids: dict[str, str]


@pytest.fixture
async def world(server: RunningServer) -> AsyncIterator[World]:
    async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True) as http:
        for name in ("alice", "bob", "carol"):
            await register(http, name)
        alice, carol = await login(http, "alice"), await login(http, "carol")
        thread = await alice.post("/v1/threads", {"title": "secret plans", "participants": ["bob"]})
        message = await alice.post(
            f"/v1/threads/{thread['id']}/messages", {"kind": "text", "text": "the plan"}
        )
        out = io.BytesIO()
        Image.new("RGB", (8, 8)).save(out, "PNG")
        image = await alice.post("/v1/media", content=out.getvalue())
        ids = {"t": thread["id"], "m": message["id"], "a": alice.id, "i": image["id"]}
        yield World(http, alice, carol, ids)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The registry error of a REST answer (JSON) or of a listen (one CBOR error frame)."""
    if response.headers.get("content-type", "").startswith("application/cbor"):
        frame = decode_frame(response.content)
        assert isinstance(frame, Error)
        return {"code": frame.code, "name": frame.name}
    error: dict[str, Any] = response.json()["error"]
    return error


def fill(path: str, ids: dict[str, str]) -> str:
    for key, value in ids.items():
        path = path.replace("{" + key + "}", value)
    return path


async def send(
    http: httpx.AsyncClient, method: str, path: str, body: Any, token: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, str):
        return await http.request(method, path, content=body, headers=headers)
    return await http.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("who", ["none", "garbage", "expired", "revoked"])
async def test_every_endpoint_refuses_a_bad_token(
    world: World, server: RunningServer, who: str
) -> None:
    token: str | None = None
    if who == "garbage":
        token = "not-a-token"
    elif who == "expired":
        token = "expired-token-of-alice"
        async with open_store(server.data_dir) as store:
            await store.create_session(
                Session(
                    token_hash=token_hash(token),
                    account_id=world.alice.id,
                    created=1,
                    expires=2,
                    id="expired-session",
                )
            )
    elif who == "revoked":
        device = await login(world.http, "alice")
        await world.alice.call("DELETE", f"/v1/sessions/{device.session_id}")
        token = device.token
    for method, path, body in ROUTES:
        response = await send(world.http, method, fill(path, world.ids), body, token)
        assert response.status_code == 401, (method, path, response.text)
        assert error_of(response)["name"] == "UNAUTHENTICATED", (method, path)


async def test_what_a_stranger_cannot_see_does_not_exist(world: World) -> None:
    unknown = {"t": "no-such-thread", "m": "no-such-message", "a": world.alice.id, "i": "nope"}
    checked = 0
    for method, path, body in ROUTES:
        if not any(f"{{{k}}}" in path for k in "tmi"):
            continue
        seen = await send(world.http, method, fill(path, world.ids), body, world.carol.token)
        missing = await send(world.http, method, fill(path, unknown), body, world.carol.token)
        assert seen.status_code == missing.status_code == 404, (method, path, seen.text)
        a, b = error_of(seen), error_of(missing)
        assert (a["code"], a["name"]) == (b["code"], b["name"]), (method, path)
        # The detail names at most the id that was asked for: no title, text or owner.
        for secret in ("secret plans", "the plan", "alice", world.alice.id):
            assert secret not in seen.text, (method, path, seen.text)
        checked += 1
    assert checked == 23
    # Nor does search find it, nor the stranger's timeline hold it.
    found = await world.carol.get("/v1/search", params={"q": "plan"})
    assert found["results"] == []
    page = await world.carol.get("/v1/sync")
    assert page["events"] == []
