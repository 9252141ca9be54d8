"""Web Push end to end (VXS-13.7-1, VXS-13.7-2): a device registers a browser-style
subscription over REST; the server encrypts and signs what it pushes; a local push
service (conformance/push_receiver.py) checks VAPID and decrypts it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from service_api import ApiError, login, register

from conformance.push_receiver import PushReceiver
from voxer_stream.client import chunks_from_packets, talk
from voxer_stream.media.encode import encode_file, tone_wav
from voxer_stream.transports.server import ServerConfig, run_server
from voxer_stream.wire import Open


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    config = ServerConfig(
        port=0, data_dir=tmp_path / "data", synchronous="NORMAL", allow_local_push=True
    )
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run_server, config)
        yield binds[0]
        nursery.cancel_scope.cancel()


# httpcore leaves a streamed response's body generator to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_pushes_reach_a_device_that_is_not_connected(url: str, tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    tone_wav(wav, 0.3, 440.0)
    packets = encode_file(wav)
    async with (
        httpx.AsyncClient(base_url=url, http1=False, http2=True, timeout=30) as http,
        PushReceiver.start() as receiver,
    ):
        for name in ("alice", "bob"):
            await register(http, name)
        alice, bob = await login(http, "alice"), await login(http, "bob", device="browser")
        key = (await bob.get("/v1/push/vapid"))["public_key"]
        subscription, handle = receiver.subscribe(application_server_key=key)
        made = await bob.post("/v1/push/subscriptions", subscription)
        again = await bob.post("/v1/push/subscriptions", subscription)  # idempotent
        assert made["id"] == again["id"]
        assert [s["id"] for s in (await bob.get("/v1/push/subscriptions"))["subscriptions"]] == [
            made["id"]
        ]
        thread = (await alice.post("/v1/threads", {"title": "ops", "participants": ["bob"]}))["id"]

        async def say(words: str) -> None:
            await alice.post(f"/v1/threads/{thread}/messages", {"kind": "text", "text": words})

        await say("hello bob")
        push = json.loads(await handle.next(timeout=10))
        assert push["type"] == "message" and push["text"] == "hello bob"
        who = (push["thread"], push["title"], push["sender"]["username"])
        assert who == (thread, "ops", "alice")
        await say("@bob are you there?")
        assert json.loads(await handle.next(timeout=10))["type"] == "mention"
        opened = Open(msg="v1", thread=thread, created=int(time.time() * 1000))
        await talk(url, alice.token, opened, chunks_from_packets(packets, 5))
        live = await handle.next_delivery(timeout=10)
        assert json.loads(live.payload)["type"] == "live" and live.urgency == "high"

        # Muted: nothing; a device holding a sync stream open: nothing either.
        await bob.call("PUT", f"/v1/threads/{thread}/mute")
        await say("while muted")
        await bob.call("DELETE", f"/v1/threads/{thread}/mute")
        headers = {"Authorization": f"Bearer {bob.token}"}
        # The device's own connection: closing it is the device going away (httpx does
        # not reset an HTTP/2 stream it stops reading, a browser does).
        async with (
            httpx.AsyncClient(base_url=url, http1=False, http2=True) as device,
            device.stream("GET", "/v1/sync/stream", headers=headers) as stream,
            aclosing(stream.aiter_lines()) as lines,
        ):
            async for _ in lines:  # the stream's first comment: it is open
                break
            await say("while connected")
        with trio.fail_after(5):
            while (await alice.get(f"/v1/threads/{thread}"))["online"]:
                await trio.sleep(0.02)
        await say("after")
        assert json.loads(await handle.next(timeout=10))["text"] == "after"
        assert receiver.rejections == []

        # The subscription goes away when the push service says it is gone.
        handle.mark_gone()
        await say("into the void")
        with trio.fail_after(10):
            while (await bob.get("/v1/push/subscriptions"))["subscriptions"]:
                await trio.sleep(0.05)


async def test_subscriptions_need_https_and_valid_keys(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, http1=False, http2=True) as http:
        await register(http, "alice")
        alice = await login(http, "alice")
        bad: list[dict[str, Any]] = [
            {"endpoint": "http://push.example/x", "keys": {"p256dh": "A" * 87, "auth": "A" * 22}},
            {"endpoint": "https://push.example/x", "keys": {"p256dh": "nope", "auth": "A" * 22}},
            {"endpoint": "https://push.example/x"},
        ]
        for body in bad:
            with pytest.raises(ApiError) as refused:
                await alice.post("/v1/push/subscriptions", body)
            assert refused.value.name == "INVALID_REQUEST"
