"""A timeline of 100,000 events: a fresh device syncs all of it, page by page, with no
gap and no duplicate, in bounded memory (VXS-13.5-1, VXS-13.5-2)."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest
from conftest import RunningServer
from service_api import login, register

from voxer_stream.service.timeline import Timeline
from voxer_stream.store import open_store

EVENTS = 100_000
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.mark.slow
async def test_a_fresh_device_syncs_100k_events_in_pages(
    server: RunningServer, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True, timeout=60) as http:
        await register(http, "alice")
        first = await login(http, "alice", device="old phone")
        # The events go in through the store (the server's own database, a second
        # connection): what matters here is reading them back, not making them.
        async with open_store(server.data_dir) as store:
            for start in range(0, EVENTS, 10_000):
                await store.add_events(
                    [
                        event
                        for n in range(start, start + 10_000)
                        for event in Timeline.fan_out(
                            [first.id], "message", thread="t", message=f"m{n}", data={"n": n}
                        )
                    ]
                )
        fresh = await login(http, "alice", device="new laptop")
        tracemalloc.start()
        began = time.perf_counter()
        seen = 0
        last_pos = 0
        pages = 0
        token: str | None = None
        while True:
            params = {"limit": "1000"} | ({"since": token} if token else {})
            page = await fresh.get("/v1/sync", params=params)
            pages += 1
            for event in page["events"]:
                assert event["pos"] > last_pos  # in order, so no duplicate
                assert event["data"]["n"] == seen  # and no gap
                last_pos = event["pos"]
                seen += 1
            token = page["next"]
            assert page["limited"] is False
            if not page["more"]:
                break
        elapsed = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert seen == EVENTS and pages == EVENTS // 1000
    report = {
        "events": seen,
        "pages": pages,
        "seconds": round(elapsed, 2),
        "peak_traced_mib": round(peak / 2**20, 2),
    }
    print(json.dumps(report))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "timeline-100k.json").write_text(json.dumps(report, indent=2) + "\n")
    # Server and client share this process: the peak covers both. One page is about
    # 1000 events of ~150 bytes as JSON, parsed; 100,000 of them would be ~60 MiB.
    assert peak < 16 * 2**20, report
