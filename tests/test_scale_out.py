"""Two server processes on one store and one Redis (issue 7, first part): a change made
on one wakes the long-polls and streams held on the other, and presence is one view."""

from __future__ import annotations

import os
import signal
import time
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest
import trio
from conftest import server_process
from service_api import Device, login, register

from voxer_stream.service.timeline import PRESENCE_TTL


async def online(device: Device, thread: str) -> list[str]:
    return list((await device.get(f"/v1/threads/{thread}"))["online"])


# httpcore leaves a streamed response's body generator to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_two_processes_share_timelines_and_presence(tmp_path: Path, redis_url: str) -> None:
    data = tmp_path / "data"
    options = ("--synchronous", "NORMAL", "--redis", redis_url)
    with server_process(data, *options) as a, server_process(data, *options) as b:
        async with (
            httpx.AsyncClient(base_url=a.url, http1=False, http2=True, timeout=30) as on_a,
            httpx.AsyncClient(base_url=b.url, http1=False, http2=True, timeout=30) as on_b,
        ):
            await register(on_a, "alice")
            await register(on_a, "bob")
            alice = await login(on_a, "alice")
            bob = await login(on_b, "bob")  # the same store: a token works on both
            thread = (await alice.post("/v1/threads", {"participants": ["bob"]}))["id"]
            _, token = await bob.sync_all()

            # A long-poll held on B wakes when alice posts on A.
            got: dict[str, object] = {}

            async def poll() -> None:
                got.update(await bob.get("/v1/sync", params={"since": token, "timeout": "20000"}))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.sleep(0.5)
                posted = trio.current_time()
                await alice.post(f"/v1/threads/{thread}/messages", {"kind": "text", "text": "hi"})
            woke_after = trio.current_time() - posted
            assert [e["type"] for e in got["events"]] == ["message"]  # type: ignore[attr-defined]
            assert woke_after < 1.0, woke_after

            # Bob holds a stream on B: alice, on A, sees him online; then not.
            headers = {"Authorization": f"Bearer {bob.token}"}
            async with (
                httpx.AsyncClient(base_url=b.url, http1=False, http2=True) as device,
                device.stream("GET", "/v1/sync/stream", headers=headers) as stream,
                aclosing(stream.aiter_lines()) as lines,
            ):
                async for _ in lines:
                    break
                with trio.fail_after(3):
                    while bob.id not in await online(alice, thread):
                        await trio.sleep(0.05)
            with trio.fail_after(3):
                while bob.id in await online(alice, thread):
                    await trio.sleep(0.05)

        # B dies holding bob's stream: A forgets him within PRESENCE_TTL.
        async with (
            httpx.AsyncClient(base_url=a.url, http1=False, http2=True, timeout=30) as on_a,
            httpx.AsyncClient(base_url=b.url, http1=False, http2=True) as device,
            device.stream("GET", "/v1/sync/stream", headers=headers) as stream,
            aclosing(stream.aiter_lines()) as lines,
        ):
            alice.http = on_a
            async for _ in lines:
                break
            with trio.fail_after(3):
                while bob.id not in await online(alice, thread):
                    await trio.sleep(0.05)
            os.kill(b.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            with trio.fail_after(PRESENCE_TTL + 3):
                while bob.id in await online(alice, thread):
                    await trio.sleep(0.1)
            assert time.monotonic() - killed <= PRESENCE_TTL + 1.0
